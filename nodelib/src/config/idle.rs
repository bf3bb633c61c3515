//! The `[idle]` table: healthd's live idle-GPU detection, and the per-partition, opt-in policy
//! that acts on jobs whose GPUs sit idle.
//!
//! ```toml
//! [idle]
//! util_below_pct = 1               # a sample is idle when GPU utilization is below this
//! mem_util_below_pct = 1           # ...and memory-bandwidth utilization, where NVML has it
//! window_s = 1800                  # idle once the low samples span this long
//! mail_program = "/usr/bin/mail"   # called as Slurm calls MailProg: PROG -s SUBJECT USER
//! exempt_accounts = ["benchmark"]  # never warned, mailed nor cancelled
//! exempt_qos = ["interactive"]
//! max_cancels_per_hour = 2         # per node; more idle jobs are warned only
//! dry_run = false                  # true: decide and record, tell nobody, cancel nothing
//!
//! [idle.partition.gpu]             # the policy of partition `gpu` (opt-in)
//! window_s = 900                   # detection overrides, optional
//! warn = true                      # a line in the job's stderr/output file
//! mail = true                      # mail the job's owner through mail_program
//! cancel_after_s = 1800            # then cancel after this grace period
//! ```
//!
//! Detection runs for every job (it feeds `/metrics` and the usage record); a partition
//! without a table, or with a table that sets no action, has no policy: nothing is done to
//! its jobs. Unknown keys are errors, as everywhere in `sgpu.toml`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::accounting::{Invalid, in_range};

/// Default: a sample is idle when utilization is below this, percent (so only 0% is idle:
/// NVML's utilization says whether any kernel ran in the sample period).
pub const DEFAULT_IDLE_UTIL_BELOW_PCT: u32 = 1;

/// Default: a sample is idle only when memory-bandwidth utilization is also below this,
/// percent (where NVML reports it).
pub const DEFAULT_IDLE_MEM_UTIL_BELOW_PCT: u32 = 1;

/// Default seconds of idle samples before a GPU counts as idle.
pub const DEFAULT_IDLE_WINDOW_S: u64 = 1800;

/// Default most jobs healthd cancels for idleness per node per hour.
pub const DEFAULT_IDLE_MAX_CANCELS_PER_HOUR: u32 = 2;

/// When a GPU counts as idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleDetect {
    /// A sample is idle when GPU utilization is below this, percent (1..=100).
    pub util_below_pct: u32,
    /// ...and memory-bandwidth utilization (where read) is below this, percent (1..=100).
    pub mem_util_below_pct: u32,
    /// Idle once the idle samples span at least this long.
    pub window: Duration,
}

impl Default for IdleDetect {
    fn default() -> Self {
        IdleDetect {
            util_below_pct: DEFAULT_IDLE_UTIL_BELOW_PCT,
            mem_util_below_pct: DEFAULT_IDLE_MEM_UTIL_BELOW_PCT,
            window: Duration::from_secs(DEFAULT_IDLE_WINDOW_S),
        }
    }
}

/// What a partition's policy does to a job whose GPUs are all idle; each step optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdlePolicy {
    /// Append a warning line to the job's stderr (or output) file.
    pub warn: bool,
    /// Mail the job's owner through [`IdleConfig::mail_program`].
    pub mail: bool,
    /// Cancel the job when its GPUs are still idle this long after it was warned.
    pub cancel_after: Option<Duration>,
}

impl IdlePolicy {
    /// Whether the policy does anything.
    pub fn acts(&self) -> bool {
        self.warn || self.mail || self.cancel_after.is_some()
    }
}

/// One `[idle.partition.<name>]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdlePartition {
    /// Detection for the partition's jobs.
    pub detect: IdleDetect,
    /// Its policy (no action set: none).
    pub policy: IdlePolicy,
}

/// The `[idle]` table, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleConfig {
    /// Detection for partitions without a table of their own.
    pub detect: IdleDetect,
    /// Per-partition detection and policy.
    pub partitions: BTreeMap<String, IdlePartition>,
    /// The mail command (called `PROG -s SUBJECT USER`, the body on stdin, no shell).
    pub mail_program: Option<PathBuf>,
    /// Accounts whose jobs the policy never touches.
    pub exempt_accounts: BTreeSet<String>,
    /// QOS whose jobs the policy never touches.
    pub exempt_qos: BTreeSet<String>,
    /// Most cancels per node per hour.
    pub max_cancels_per_hour: u32,
    /// Decide and record only.
    pub dry_run: bool,
}

impl Default for IdleConfig {
    fn default() -> Self {
        IdleConfig {
            detect: IdleDetect::default(),
            partitions: BTreeMap::new(),
            mail_program: None,
            exempt_accounts: BTreeSet::new(),
            exempt_qos: BTreeSet::new(),
            max_cancels_per_hour: DEFAULT_IDLE_MAX_CANCELS_PER_HOUR,
            dry_run: false,
        }
    }
}

impl IdleConfig {
    /// Detection for a job of `partition`.
    pub fn detect_for(&self, partition: Option<&str>) -> IdleDetect {
        partition
            .and_then(|p| self.partitions.get(p))
            .map_or(self.detect, |p| p.detect)
    }

    /// The policy for a job of `partition`, if it has one that acts.
    pub fn policy_for(&self, partition: Option<&str>) -> Option<IdlePolicy> {
        partition
            .and_then(|p| self.partitions.get(p))
            .map(|p| p.policy)
            .filter(IdlePolicy::acts)
    }
}

/// Detection keys, as `[idle]` and `[idle.partition.<name>]` write them.
#[derive(Debug, Default)]
struct RawDetect {
    util_below_pct: Option<Spanned<u64>>,
    mem_util_below_pct: Option<Spanned<u64>>,
    window_s: Option<Spanned<u64>>,
}

/// One `[idle.partition.<name>]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartition {
    util_below_pct: Option<Spanned<u64>>,
    mem_util_below_pct: Option<Spanned<u64>>,
    window_s: Option<Spanned<u64>>,
    warn: Option<bool>,
    mail: Option<Spanned<bool>>,
    cancel_after_s: Option<Spanned<u64>>,
}

/// The table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdle {
    util_below_pct: Option<Spanned<u64>>,
    mem_util_below_pct: Option<Spanned<u64>>,
    window_s: Option<Spanned<u64>>,
    mail_program: Option<Spanned<PathBuf>>,
    #[serde(default)]
    exempt_accounts: Vec<Spanned<String>>,
    #[serde(default)]
    exempt_qos: Vec<Spanned<String>>,
    max_cancels_per_hour: Option<Spanned<u64>>,
    dry_run: Option<bool>,
    #[serde(default)]
    partition: BTreeMap<Spanned<String>, RawPartition>,
}

fn pct(v: &Spanned<u64>, key: String) -> Result<u32, Invalid> {
    let n = in_range(v, key, 1, 100, " percent")?;
    // in 1..=100
    Ok(u32::try_from(n).unwrap_or(100))
}

/// A Slurm name (partition, account, QOS): letters, digits, `-`, `_`, `.`.
fn slurm_name(v: &Spanned<String>, key: String) -> Result<String, Invalid> {
    let s = v.get_ref();
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err((
            v.span().start,
            key,
            format!("{s:?} is not a Slurm name (letters, digits, - _ .)"),
        ));
    }
    Ok(s.clone())
}

/// Longest window or grace period accepted: a week.
const MAX_SECONDS: u64 = 7 * 86_400;

impl RawDetect {
    fn apply(&self, prefix: &str, base: IdleDetect) -> Result<IdleDetect, Invalid> {
        let mut d = base;
        if let Some(v) = &self.util_below_pct {
            d.util_below_pct = pct(v, format!("{prefix}.util_below_pct"))?;
        }
        if let Some(v) = &self.mem_util_below_pct {
            d.mem_util_below_pct = pct(v, format!("{prefix}.mem_util_below_pct"))?;
        }
        if let Some(v) = &self.window_s {
            d.window = Duration::from_secs(in_range(
                v,
                format!("{prefix}.window_s"),
                1,
                MAX_SECONDS,
                " s",
            )?);
        }
        Ok(d)
    }
}

impl RawIdle {
    /// Validates the table.
    pub(super) fn validate(self) -> Result<IdleConfig, Invalid> {
        let top = RawDetect {
            util_below_pct: self.util_below_pct,
            mem_util_below_pct: self.mem_util_below_pct,
            window_s: self.window_s,
        };
        let mut c = IdleConfig {
            detect: top.apply("idle", IdleDetect::default())?,
            ..IdleConfig::default()
        };
        if let Some(p) = self.mail_program {
            if !p.get_ref().is_absolute() {
                return Err((
                    p.span().start,
                    "idle.mail_program".into(),
                    format!(
                        "{} is not an absolute path (it is run without a shell, e.g. \
                         \"/usr/bin/mail\")",
                        p.get_ref().display()
                    ),
                ));
            }
            c.mail_program = Some(p.into_inner());
        }
        for a in &self.exempt_accounts {
            c.exempt_accounts
                .insert(slurm_name(a, "idle.exempt_accounts".into())?);
        }
        for q in &self.exempt_qos {
            c.exempt_qos
                .insert(slurm_name(q, "idle.exempt_qos".into())?);
        }
        if let Some(v) = &self.max_cancels_per_hour {
            let n = in_range(v, "idle.max_cancels_per_hour", 0, 1000, "")?;
            c.max_cancels_per_hour = u32::try_from(n).unwrap_or(1000);
        }
        if let Some(d) = self.dry_run {
            c.dry_run = d;
        }
        for (name, raw) in self.partition {
            let prefix = format!("idle.partition.{}", name.get_ref());
            let name = slurm_name(&name, prefix.clone())?;
            let detect = RawDetect {
                util_below_pct: raw.util_below_pct,
                mem_util_below_pct: raw.mem_util_below_pct,
                window_s: raw.window_s,
            };
            let mut p = IdlePartition {
                detect: detect.apply(&prefix, c.detect)?,
                policy: IdlePolicy::default(),
            };
            p.policy.warn = raw.warn.unwrap_or(false);
            if let Some(m) = raw.mail {
                if *m.get_ref() && c.mail_program.is_none() {
                    return Err((
                        m.span().start,
                        format!("{prefix}.mail"),
                        "mail = true needs idle.mail_program (e.g. \"/usr/bin/mail\")".into(),
                    ));
                }
                p.policy.mail = *m.get_ref();
            }
            if let Some(v) = &raw.cancel_after_s {
                p.policy.cancel_after = Some(Duration::from_secs(in_range(
                    v,
                    format!("{prefix}.cancel_after_s"),
                    0,
                    MAX_SECONDS,
                    " s",
                )?));
            }
            c.partitions.insert(name, p);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/sgpu/sgpu.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_without_a_table() -> Result<(), String> {
        let c = parse("")?;
        assert_eq!(c.idle.detect.util_below_pct, 1);
        assert_eq!(c.idle.detect.window, Duration::from_secs(1800));
        assert_eq!(c.idle.policy_for(Some("gpu")), None, "policy is opt-in");
        assert_eq!(c.idle.max_cancels_per_hour, 2);
        Ok(())
    }

    #[test]
    fn partition_tables_override_and_opt_in() -> Result<(), String> {
        let c = parse(
            "[idle]\nutil_below_pct = 3\nwindow_s = 600\nmail_program = \"/usr/bin/mail\"\n\
             exempt_accounts = [\"bench\"]\nexempt_qos = [\"debug\"]\ndry_run = true\n\
             [idle.partition.gpu]\nwindow_s = 60\nwarn = true\nmail = true\ncancel_after_s = 120\n\
             [idle.partition.big]\nutil_below_pct = 10\n",
        )?;
        let gpu = c.idle.detect_for(Some("gpu"));
        assert_eq!(
            (gpu.util_below_pct, gpu.window),
            (3, Duration::from_secs(60))
        );
        let big = c.idle.detect_for(Some("big"));
        assert_eq!(
            (big.util_below_pct, big.window),
            (10, Duration::from_secs(600))
        );
        assert_eq!(c.idle.detect_for(Some("other")).util_below_pct, 3);
        assert_eq!(c.idle.detect_for(None).util_below_pct, 3);
        let p = c.idle.policy_for(Some("gpu")).ok_or("gpu has a policy")?;
        assert!(p.warn && p.mail);
        assert_eq!(p.cancel_after, Some(Duration::from_secs(120)));
        assert_eq!(
            c.idle.policy_for(Some("big")),
            None,
            "no action set: no policy"
        );
        assert_eq!(c.idle.policy_for(None), None);
        assert!(c.idle.exempt_accounts.contains("bench") && c.idle.exempt_qos.contains("debug"));
        assert!(c.idle.dry_run);
        Ok(())
    }

    #[test]
    fn bad_values_name_file_line_and_key() {
        let cases = [
            (
                "[idle]\nutil_below_pct = 0\n",
                ":2: idle.util_below_pct: 0 is out of range",
            ),
            (
                "[idle]\n\nwindow_s = 0\n",
                ":3: idle.window_s: 0 is out of range",
            ),
            (
                "[idle.partition.gpu]\nwarn = true\ncancel_after_s = 99999999\n",
                ":3: idle.partition.gpu.cancel_after_s: 99999999 is out of range",
            ),
            (
                "[idle.partition.gpu]\nmail = true\n",
                ":2: idle.partition.gpu.mail: mail = true needs idle.mail_program",
            ),
            (
                "[idle]\nmail_program = \"mail\"\n",
                ":2: idle.mail_program: mail is not an absolute path",
            ),
            (
                "[idle]\nexempt_qos = [\"a b\"]\n",
                ":2: idle.exempt_qos: \"a b\" is not a Slurm name",
            ),
            (
                "[idle.partition.\"g/x\"]\nwarn = true\n",
                "idle.partition.g/x: \"g/x\" is not a Slurm name",
            ),
        ];
        for (text, want) in cases {
            match parse(text) {
                Err(e) => assert!(
                    e.starts_with("/etc/sgpu/sgpu.toml") && e.contains(want),
                    "{text:?}: {e}"
                ),
                Ok(_) => panic!("{text:?} was accepted"),
            }
        }
        let e = parse("[idle.partition.gpu]\nwran = true\n")
            .err()
            .unwrap_or_default();
        assert!(
            e.starts_with("/etc/sgpu/sgpu.toml:") && e.contains("wran"),
            "{e}"
        );
    }
}
