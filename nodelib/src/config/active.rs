//! The `[active]` table: active checks run on idle nodes through Slurm
//! ([`crate::active`]).
//!
//! ```toml
//! [active]
//! partition = "maint"              # the maintenance partition sgpu's jobs go to (required)
//! qos = "maint"                    # optional: a QOS for them (needs slurmdbd)
//! pending_timeout_s = 600          # a job still pending after this is cancelled
//! sbatch = "/usr/bin/sbatch"       # default: the sbatch beside scontrol
//!
//! [[active.check]]
//! name = "dcgm-r2"                 # letters, digits, - _ . ; the check id is active.dcgm-r2
//! command = ["/usr/bin/dcgmi", "diag", "-r", "2", "-j"]
//! format = "dcgmi"                 # exit (default) | dcgmi | json
//! interval_h = 24                  # each node runs it every 24 hours...
//! stagger_h = 24                   # ...at an offset of its own in the first 24 h (default: interval_h)
//! deadline_s = 600                 # killed (process group) and failed past this
//! severity = "drain"               # drain (default) | warn | info
//! ```
//!
//! Unknown keys are errors, as everywhere in `sgpu.toml`; errors name the file, the line and
//! the key (`active.check[1].deadline_s`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::accounting::Invalid;
use crate::active::{ActiveCheck, ActiveSettings, DEFAULT_PENDING_TIMEOUT_S, OutputFormat};
use crate::catalogue::Severity;

/// One `[[active.check]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    name: Spanned<String>,
    command: Spanned<Vec<String>>,
    interval_h: Spanned<f64>,
    stagger_h: Option<Spanned<f64>>,
    deadline_s: Spanned<u64>,
    format: Option<Spanned<String>>,
    severity: Option<Spanned<String>>,
}

/// The table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawActive {
    partition: Option<Spanned<String>>,
    qos: Option<Spanned<String>>,
    pending_timeout_s: Option<Spanned<u64>>,
    sbatch: Option<Spanned<PathBuf>>,
    #[serde(default)]
    check: Vec<Spanned<RawCheck>>,
}

/// Longest interval: a year.
const MAX_INTERVAL_H: f64 = 8760.0;
/// Shortest interval: 3.6 s (the cluster tests run checks seconds apart; a site, hours).
const MIN_INTERVAL_H: f64 = 0.001;
/// Longest deadline: a day.
const MAX_DEADLINE_S: u64 = 86_400;

/// A Slurm name (partition, QOS): letters, digits, `-`, `_`, `.`.
fn slurm_name(v: &Spanned<String>, key: &str) -> Result<String, Invalid> {
    let s = v.get_ref();
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err((
            v.span().start,
            key.into(),
            format!("{s:?} is not a Slurm name (letters, digits, - _ .)"),
        ));
    }
    Ok(s.clone())
}

fn hours(v: &Spanned<f64>, key: String, lo: f64) -> Result<Duration, Invalid> {
    let h = *v.get_ref();
    if !(h.is_finite() && h >= lo && h <= MAX_INTERVAL_H) {
        return Err((
            v.span().start,
            key,
            format!("{h} is out of range ({lo} to {MAX_INTERVAL_H} hours)"),
        ));
    }
    Ok(Duration::from_secs_f64(h * 3600.0))
}

impl RawCheck {
    fn validate(self, i: usize, taken: &[ActiveCheck]) -> Result<ActiveCheck, Invalid> {
        let key = |k: &str| format!("active.check[{i}].{k}");
        let name = check_name(self.name, &key, taken)?;
        let command = check_command(self.command, &key)?;
        let (interval, stagger, deadline) = schedule(
            &self.interval_h,
            self.stagger_h.as_ref(),
            &self.deadline_s,
            &key,
        )?;
        let format = match &self.format {
            Some(f) => OutputFormat::parse(f.get_ref()).ok_or_else(|| {
                (
                    f.span().start,
                    key("format"),
                    format!(
                        "{:?} is not one of \"exit\", \"dcgmi\", \"json\"",
                        f.get_ref()
                    ),
                )
            })?,
            None => OutputFormat::Exit,
        };
        let severity = match &self.severity {
            Some(s) => check_severity(s, &key)?,
            None => Severity::Drain,
        };
        Ok(ActiveCheck {
            name,
            command,
            interval,
            stagger,
            deadline,
            format,
            severity,
        })
    }
}

/// A check's `name`: a valid check name not taken by an earlier check.
fn check_name(
    name: Spanned<String>,
    key: &impl Fn(&str) -> String,
    taken: &[ActiveCheck],
) -> Result<String, Invalid> {
    let name_span = name.span();
    let name = name.into_inner();
    if !crate::active::valid_name(&name) {
        return Err((
            name_span.start,
            key("name"),
            format!(
                "{name:?} is not a check name (1 to 64 letters, digits, - _ . ; not \
                 starting with .)"
            ),
        ));
    }
    if taken.iter().any(|c| c.name == name) {
        return Err((
            name_span.start,
            key("name"),
            format!("{name:?} is listed twice"),
        ));
    }
    Ok(name)
}

/// A check's `command`: a program by its absolute path and its arguments, no NUL byte.
fn check_command(
    command: Spanned<Vec<String>>,
    key: &impl Fn(&str) -> String,
) -> Result<Vec<String>, Invalid> {
    let cmd_span = command.span();
    let command = command.into_inner();
    match command.first() {
        None => {
            return Err((
                cmd_span.start,
                key("command"),
                "is empty: give the program and its arguments, e.g. [\"/usr/bin/dcgmi\", \
                 \"diag\", \"-r\", \"1\", \"-j\"]"
                    .into(),
            ));
        }
        Some(p) if !p.starts_with('/') => {
            return Err((
                cmd_span.start,
                key("command"),
                format!(
                    "{p:?} is not an absolute path (the check runs as root with a fixed \
                     PATH; name the program by its full path)"
                ),
            ));
        }
        Some(_) => {}
    }
    if command.iter().any(|a| a.contains('\0')) {
        return Err((
            cmd_span.start,
            key("command"),
            "an argument holds a NUL byte".into(),
        ));
    }
    Ok(command)
}

/// A check's `interval_h`, `stagger_h` (default: the interval; not longer) and `deadline_s`
/// (shorter than the interval), as (interval, stagger, deadline).
fn schedule(
    interval_h: &Spanned<f64>,
    stagger_h: Option<&Spanned<f64>>,
    deadline_s: &Spanned<u64>,
    key: &impl Fn(&str) -> String,
) -> Result<(Duration, Duration, Duration), Invalid> {
    let interval = hours(interval_h, key("interval_h"), MIN_INTERVAL_H)?;
    let stagger = match stagger_h {
        Some(s) => {
            let d = hours(s, key("stagger_h"), 0.0)?;
            if d > interval {
                return Err((
                    s.span().start,
                    key("stagger_h"),
                    format!(
                        "{} is longer than interval_h ({}): the runs of one interval \
                         would spill into the next",
                        s.get_ref(),
                        interval_h.get_ref()
                    ),
                ));
            }
            d
        }
        None => interval,
    };
    let d = *deadline_s.get_ref();
    if !(1..=MAX_DEADLINE_S).contains(&d) {
        return Err((
            deadline_s.span().start,
            key("deadline_s"),
            format!("{d} is out of range (1 to {MAX_DEADLINE_S} s)"),
        ));
    }
    let deadline = Duration::from_secs(d);
    if deadline >= interval {
        return Err((
            deadline_s.span().start,
            key("deadline_s"),
            format!(
                "{d} s is not shorter than interval_h ({} h)",
                interval_h.get_ref()
            ),
        ));
    }
    Ok((interval, stagger, deadline))
}

/// A check's `severity`: drain, warn or info.
fn check_severity(s: &Spanned<String>, key: &impl Fn(&str) -> String) -> Result<Severity, Invalid> {
    match Severity::parse(s.get_ref()) {
        Some(sev @ (Severity::Drain | Severity::Warn | Severity::Info)) => Ok(sev),
        _ => Err((
            s.span().start,
            key("severity"),
            format!(
                "{:?} is not one of \"drain\", \"warn\", \"info\" (remove the \
                 check to switch it off)",
                s.get_ref()
            ),
        )),
    }
}

impl RawActive {
    /// Checks every value, naming the key of the first bad one.
    pub(super) fn validate(self) -> Result<ActiveSettings, Invalid> {
        let mut s = ActiveSettings {
            pending_timeout: Duration::from_secs(DEFAULT_PENDING_TIMEOUT_S),
            ..ActiveSettings::default()
        };
        if let Some(p) = &self.partition {
            s.partition = Some(slurm_name(p, "active.partition")?);
        }
        if let Some(q) = &self.qos {
            s.qos = Some(slurm_name(q, "active.qos")?);
        }
        if let Some(t) = &self.pending_timeout_s {
            let v = *t.get_ref();
            if !(1..=86_400).contains(&v) {
                return Err((
                    t.span().start,
                    "active.pending_timeout_s".into(),
                    format!("{v} is out of range (1 to 86400 s)"),
                ));
            }
            s.pending_timeout = Duration::from_secs(v);
        }
        if let Some(b) = self.sbatch {
            let span = b.span();
            let b = b.into_inner();
            if !b.is_absolute() {
                return Err((
                    span.start,
                    "active.sbatch".into(),
                    format!("{} is not an absolute path", b.display()),
                ));
            }
            s.sbatch = Some(b);
        }
        let first_check = self.check.first().map(|c| c.span().start);
        for (i, c) in self.check.into_iter().enumerate() {
            let check = c.into_inner().validate(i, &s.checks)?;
            s.checks.push(check);
        }
        if let (Some(at), None) = (first_check, &s.partition) {
            return Err((
                at,
                "active.partition".into(),
                "is required with [[active.check]]: the maintenance partition sgpu submits \
                 its check jobs to (docs/operations.md, \"Active checks\")"
                    .into(),
            ));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::active::OutputFormat;
    use crate::catalogue::Severity;
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/sgpu/sgpu.toml")).map_err(|e| e.to_string())
    }

    const GOOD: &str = "[active]\npartition = \"maint\"\nqos = \"low\"\n\
        pending_timeout_s = 120\n\n[[active.check]]\nname = \"dcgm-r2\"\n\
        command = [\"/usr/bin/dcgmi\", \"diag\", \"-r\", \"2\", \"-j\"]\nformat = \"dcgmi\"\n\
        interval_h = 24\nstagger_h = 6\ndeadline_s = 600\n\n[[active.check]]\n\
        name = \"matmul\"\ncommand = [\"/opt/site/matmul\"]\ninterval_h = 168\n\
        deadline_s = 300\nseverity = \"warn\"\n";

    #[test]
    fn the_table_sets_partition_and_checks() {
        let c = parse(GOOD).unwrap();
        let a = &c.active;
        assert_eq!(a.partition.as_deref(), Some("maint"));
        assert_eq!(a.qos.as_deref(), Some("low"));
        assert_eq!(a.pending_timeout, Duration::from_secs(120));
        assert_eq!(a.checks.len(), 2);
        let d = a.check("dcgm-r2").unwrap();
        assert_eq!(d.command, ["/usr/bin/dcgmi", "diag", "-r", "2", "-j"]);
        assert_eq!(d.format, OutputFormat::Dcgmi);
        assert_eq!(d.interval, Duration::from_secs(24 * 3600));
        assert_eq!(d.stagger, Duration::from_secs(6 * 3600));
        assert_eq!(d.deadline, Duration::from_secs(600));
        assert_eq!(d.severity, Severity::Drain);
        assert_eq!(d.id(), "active.dcgm-r2");
        let m = a.check("matmul").unwrap();
        assert_eq!(m.format, OutputFormat::Exit);
        assert_eq!(m.stagger, m.interval, "stagger defaults to the interval");
        assert_eq!(m.severity, Severity::Warn);
        let none = parse("").unwrap();
        assert!(none.active.checks.is_empty() && none.active.partition.is_none());
    }

    #[test]
    fn bad_values_name_file_line_and_key() {
        let check = |body: &str| {
            format!(
                "[active]\npartition = \"maint\"\n[[active.check]]\nname = \"a\"\n\
                 command = [\"/bin/true\"]\ninterval_h = 1\ndeadline_s = 60\n\
                 [[active.check]]\n{body}"
            )
        };
        let second = "name = \"b\"\ncommand = [\"/bin/true\"]\ninterval_h = 1\n";
        for (text, want) in [
            (
                check(&format!("{second}deadline_s = 0\n")),
                "/etc/sgpu/sgpu.toml:12: active.check[1].deadline_s: 0 is out of range",
            ),
            (
                check(&format!("{second}deadline_s = 3600\n")),
                "/etc/sgpu/sgpu.toml:12: active.check[1].deadline_s: 3600 s is not shorter \
                 than interval_h",
            ),
            (
                check("name = \"a\"\ncommand = [\"/bin/true\"]\ninterval_h = 1\ndeadline_s = 5\n"),
                "/etc/sgpu/sgpu.toml:9: active.check[1].name: \"a\" is listed twice",
            ),
            (
                check(
                    "name = \"b c\"\ncommand = [\"/bin/true\"]\ninterval_h = 1\ndeadline_s = 5\n",
                ),
                "/etc/sgpu/sgpu.toml:9: active.check[1].name: \"b c\" is not a check name",
            ),
            (
                check("name = \"b\"\ncommand = [\"dcgmi\"]\ninterval_h = 1\ndeadline_s = 5\n"),
                "/etc/sgpu/sgpu.toml:10: active.check[1].command: \"dcgmi\" is not an \
                 absolute path",
            ),
            (
                check("name = \"b\"\ncommand = []\ninterval_h = 1\ndeadline_s = 5\n"),
                "/etc/sgpu/sgpu.toml:10: active.check[1].command: is empty",
            ),
            (
                check(&format!("{second}deadline_s = 5\nstagger_h = 2\n")),
                "/etc/sgpu/sgpu.toml:13: active.check[1].stagger_h: 2 is longer than \
                 interval_h (1)",
            ),
            (
                check("name = \"b\"\ncommand = [\"/bin/true\"]\ninterval_h = 0\ndeadline_s = 5\n"),
                "/etc/sgpu/sgpu.toml:11: active.check[1].interval_h: 0 is out of range",
            ),
            (
                check(&format!("{second}deadline_s = 5\nformat = \"xml\"\n")),
                "/etc/sgpu/sgpu.toml:13: active.check[1].format: \"xml\" is not one of",
            ),
            (
                check(&format!("{second}deadline_s = 5\nseverity = \"off\"\n")),
                "/etc/sgpu/sgpu.toml:13: active.check[1].severity: \"off\" is not one of",
            ),
            (
                check(&format!("{second}deadline_s = 5\ntimeout_s = 5\n")),
                "unknown field `timeout_s`",
            ),
            (
                "[active]\n\n[[active.check]]\nname = \"a\"\ncommand = [\"/bin/true\"]\n\
                 interval_h = 1\ndeadline_s = 60\n"
                    .to_string(),
                "/etc/sgpu/sgpu.toml:3: active.partition: is required with [[active.check]]",
            ),
            (
                "[active]\npartition = \"maint partition\"\n".to_string(),
                "/etc/sgpu/sgpu.toml:2: active.partition: \"maint partition\" is not a Slurm \
                 name",
            ),
            (
                "[active]\nsbatch = \"sbatch\"\n".to_string(),
                "/etc/sgpu/sgpu.toml:2: active.sbatch: sbatch is not an absolute path",
            ),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(want), "{text:?}:\n{e}\nwanted: {want}");
        }
    }
}
