//! The plugin's arguments from `plugstack.conf`, e.g.
//! `optional /usr/lib/slurm/spank_sgpu.so config=/etc/sgpu/sgpu.toml default_health=warn`.

use std::path::PathBuf;
use std::time::Duration;

/// `--gpu-health` values (the same words `sgpu-prolog` reads).
pub const HEALTH_MODES: [&str; 3] = ["strict", "warn", "off"];

/// Default NVML deadline inside slurmstepd; a step never waits longer on NVML at its start
/// or its end (the worst case a hung driver costs a step).
pub const DEFAULT_NVML_TIMEOUT_MS: u64 = 500;

/// The most `nvml_timeout_ms=` may say: slurmstepd must not stall for long.
pub const MAX_NVML_TIMEOUT_MS: u64 = 5000;

/// The parsed arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginArgs {
    /// `config=PATH`: the node's `sgpu.toml` (`%n` is replaced by the Slurm node name).
    /// `None`: `$SGPU_CONFIG`, else `/etc/sgpu/sgpu.toml`.
    pub config: Option<String>,
    /// `default_health=strict|warn|off`: the `--gpu-health` of jobs that do not give one.
    pub default_health: Option<String>,
    /// `nvml_timeout_ms=N`: NVML deadline in slurmstepd.
    pub nvml_timeout: Duration,
    /// `report=always`: every job gets the `--gpu-report` summary.
    pub report_always: bool,
    /// `capture=no`: no per-step capture (options only).
    pub capture: bool,
}

impl Default for PluginArgs {
    fn default() -> Self {
        PluginArgs {
            config: None,
            default_health: None,
            nvml_timeout: Duration::from_millis(DEFAULT_NVML_TIMEOUT_MS),
            report_always: false,
            capture: true,
        }
    }
}

/// A `--gpu-health` (or `default_health=`) value that is not a mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --gpu-health value {0:?}: expected one of strict, warn, off")]
pub struct HealthError(pub String);

/// Checks a `--gpu-health` value, returning its canonical (lower-case) form.
pub fn parse_health(v: &str) -> Result<String, HealthError> {
    let l = v.trim().to_ascii_lowercase();
    if HEALTH_MODES.contains(&l.as_str()) {
        Ok(l)
    } else {
        Err(HealthError(v.to_string()))
    }
}

impl PluginArgs {
    /// Parses the arguments; every problem is reported (all of them, each naming the
    /// argument), and the arguments that were fine are kept.
    pub fn parse(args: &[String]) -> (PluginArgs, Vec<String>) {
        let mut out = PluginArgs::default();
        let mut errors = Vec::new();
        for a in args {
            let Some((k, v)) = a.split_once('=') else {
                errors.push(format!(
                    "plugstack.conf argument {a:?}: expected key=value (config=, \
                     default_health=, nvml_timeout_ms=, report=, capture=)"
                ));
                continue;
            };
            match k {
                "config" if !v.is_empty() => out.config = Some(v.to_string()),
                "default_health" => match parse_health(v) {
                    Ok(h) => out.default_health = Some(h),
                    Err(e) => errors.push(format!("plugstack.conf default_health: {e}")),
                },
                "nvml_timeout_ms" => match v.parse::<u64>() {
                    Ok(ms) if (1..=MAX_NVML_TIMEOUT_MS).contains(&ms) => {
                        out.nvml_timeout = Duration::from_millis(ms)
                    }
                    _ => errors.push(format!(
                        "plugstack.conf nvml_timeout_ms={v:?}: expected 1..={MAX_NVML_TIMEOUT_MS}"
                    )),
                },
                "report" => match v {
                    "always" => out.report_always = true,
                    "on-request" => out.report_always = false,
                    _ => errors.push(format!(
                        "plugstack.conf report={v:?}: expected always or on-request"
                    )),
                },
                "capture" => match v {
                    "yes" => out.capture = true,
                    "no" => out.capture = false,
                    _ => errors.push(format!("plugstack.conf capture={v:?}: expected yes or no")),
                },
                _ => errors.push(format!(
                    "plugstack.conf argument {a:?}: unknown key {k:?} (known: config, \
                     default_health, nvml_timeout_ms, report, capture)"
                )),
            }
        }
        (out, errors)
    }

    /// The configuration file for `node`: `config=` with `%n` replaced, else
    /// `$SGPU_CONFIG` (`env`), else `None` (the default path).
    pub fn config_path(&self, node: Option<&str>, env: Option<String>) -> Option<PathBuf> {
        match &self.config {
            Some(c) => Some(PathBuf::from(c.replace("%n", node.unwrap_or("")))),
            None => env.filter(|e| !e.is_empty()).map(PathBuf::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_known_keys() {
        let (a, e) = PluginArgs::parse(&s(&[
            "config=/etc/%n/sgpu.toml",
            "default_health=WARN",
            "nvml_timeout_ms=250",
            "report=always",
        ]));
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(a.default_health.as_deref(), Some("warn"));
        assert_eq!(a.nvml_timeout, Duration::from_millis(250));
        assert!(a.report_always);
        assert_eq!(
            a.config_path(Some("node1"), None),
            Some(PathBuf::from("/etc/node1/sgpu.toml"))
        );
    }

    #[test]
    fn reports_every_bad_argument_and_keeps_the_rest() {
        let (a, e) = PluginArgs::parse(&s(&[
            "default_health=maybe",
            "bogus",
            "color=blue",
            "nvml_timeout_ms=999999",
            "config=/x",
        ]));
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e[0].contains("default_health") && e[0].contains("strict, warn, off"));
        assert!(e[1].contains("key=value"));
        assert!(e[2].contains("unknown key \"color\""));
        assert!(e[3].contains("nvml_timeout_ms"));
        assert_eq!(a.config.as_deref(), Some("/x"));
        assert_eq!(a.default_health, None);
        assert_eq!(
            a.nvml_timeout,
            Duration::from_millis(DEFAULT_NVML_TIMEOUT_MS)
        );
    }

    #[test]
    fn config_falls_back_to_env() {
        let a = PluginArgs::default();
        assert_eq!(
            a.config_path(Some("n"), Some("/e.toml".into())),
            Some(PathBuf::from("/e.toml"))
        );
        assert_eq!(a.config_path(Some("n"), Some(String::new())), None);
        assert_eq!(a.config_path(None, None), None);
    }

    #[test]
    fn health_values() {
        assert_eq!(parse_health("off").as_deref(), Ok("off"));
        let e = parse_health("bogus").unwrap_err().to_string();
        assert!(
            e.contains("\"bogus\"") && e.contains("strict, warn, off"),
            "{e}"
        );
    }
}
