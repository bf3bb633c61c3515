//! `sgpu.toml`: where it is, what it holds, and errors that name file, line and key.
//!
//! ```toml
//! nvml_library = "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"  # default: the system's
//! nvml_timeout_ms = 5000           # watchdog deadline for all NVML work of one run
//! pinned_driver_version = "550.54.15"
//! fail_closed = false              # true: an sgpu error (not a GPU fault) fails the gate
//! enforce = true                   # false: observe only, "would drain" without draining
//! slurm_job_times = true           # epilog asks slurmctld for the job's Start/EndTime
//! state_dir = "/var/lib/sgpu"      # XID cursor and other small state
//!
//! [checks."gpu.temperature"]
//! severity = "warn"                # drain | warn | info | off
//! margin_c = 5                     # thresholds: see the check catalogue
//!
//! [checks."gpu.persistence_mode"]
//! enabled = false
//!
//! [checks."gpu.pcie_link"]
//! enforce = false                  # this check only observes (overrides the node's enforce)
//! ```
//!
//! Unknown keys are errors (a typo must not silently keep a default), and so are unknown
//! check ids and threshold names; the message lists the valid ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::catalogue::{self, Catalogue, CheckOverride, Severity};

mod accounting;
mod active;
mod gate;
mod idle;
mod infiniband;
mod prices;
pub use accounting::{
    AccountingConfig, AcctAuth, DEFAULT_FORWARD_BACKOFF_MAX_S, DEFAULT_FORWARD_BATCH,
    DEFAULT_FORWARD_INTERVAL_S, DEFAULT_FORWARD_TIMEOUT_S,
};
pub use gate::{
    DEFAULT_GATE_HEALTHD_TIMEOUT_MS, DEFAULT_GATE_MAX_AGE_MS, DEFAULT_GATE_SOCKET, GateSettings,
};
pub use idle::{
    DEFAULT_IDLE_MAX_CANCELS_PER_HOUR, DEFAULT_IDLE_MEM_UTIL_BELOW_PCT,
    DEFAULT_IDLE_UTIL_BELOW_PCT, DEFAULT_IDLE_WINDOW_S, IdleConfig, IdleDetect, IdlePartition,
    IdlePolicy,
};
pub use prices::PricesConfig;

/// The configuration file read when neither `--config` nor `$SGPU_CONFIG` names one.
pub const DEFAULT_PATH: &str = "/etc/sgpu/sgpu.toml";

/// The environment variable that names the configuration file.
pub const CONFIG_ENV: &str = "SGPU_CONFIG";

/// Default NVML watchdog deadline, milliseconds.
///
/// With persistence mode on, a whole quick run takes milliseconds; without it the first NVML
/// init on a node can take a second or more per GPU while the driver brings the GPUs up.
/// Five seconds tolerates that slow start and still bounds the prolog well below Slurm's
/// usual `PrologEpilogTimeout`.
pub const DEFAULT_NVML_TIMEOUT_MS: u64 = 5000;

/// Default directory for small persistent state (the XID cursor).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sgpu";

/// Default node spool: usage records waiting to be forwarded to accounting.
pub const DEFAULT_SPOOL_DIR: &str = "/var/spool/sgpu";

/// Default seconds between the daemon's periodic `full` runs.
pub const DEFAULT_CHECK_INTERVAL_S: u64 = 30;

/// Default consecutive healthy `full` runs before the daemon resumes a node it drained.
pub const DEFAULT_RESUME_AFTER: u32 = 3;

/// Default circuit-breaker share: at most this fraction of a partition (or the cluster)
/// held drained by sgpu.
pub const DEFAULT_BREAKER_MAX_FRACTION: f64 = 0.10;

/// Default circuit-breaker floor: this many nodes may always be drained by sgpu.
pub const DEFAULT_BREAKER_MIN_NODES: u32 = 1;

/// Default seconds between per-job usage samples.
pub const DEFAULT_SAMPLE_INTERVAL_S: u64 = 10;

/// Default address of the daemon's local HTTP endpoint (`/status`, `/metrics`).
pub const DEFAULT_STATUS_LISTEN: &str = "127.0.0.1:9411";

/// The daemon's circuit breaker (see [`crate::breaker`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Largest share of a partition or of the cluster that sgpu may hold drained.
    pub max_fraction: f64,
    /// Nodes sgpu may always hold drained, whatever the share.
    pub min_nodes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            max_fraction: DEFAULT_BREAKER_MAX_FRACTION,
            min_nodes: DEFAULT_BREAKER_MIN_NODES,
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key is unknown or has the wrong type.
    #[error("{}:{}: {message}", path.display(), line.map_or_else(|| "?".to_string(), |l| l.to_string()))]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// What is wrong, as `toml` reports it (naming the key).
        message: String,
    },
    /// The file, or the NVML library it names, could be changed by someone other than root
    /// (see [`crate::trust`]).
    #[error("refusing {}: {why}", path.display())]
    Untrusted {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong, with which file.
        why: crate::trust::Untrusted,
    },
    /// A value parses but is not acceptable.
    #[error("{}:{line}: {key}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The offending key, e.g. `checks."gpu.temp"` or `checks."gpu.temperature".margin`.
        key: String,
        /// What is wrong, listing valid values where there is a list.
        message: String,
    },
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from (`None`: built-in defaults, no file).
    pub source: Option<PathBuf>,
    /// NVML library to load; `None`: the system's `libnvidia-ml.so.1`.
    pub nvml_library: Option<PathBuf>,
    /// Deadline for all NVML work of one run.
    pub nvml_timeout: Duration,
    /// Driver version the node must run, when pinned.
    pub pinned_driver_version: Option<String>,
    /// Whether an sgpu error (as opposed to a GPU fault) fails the gate.
    pub fail_closed: bool,
    /// `enforce` (default true): false makes every drain-worthy finding a "would drain"
    /// (logged, exported, shown in `sgpu status`) that neither drains nor fails a gate; a
    /// check's own `enforce` overrides it.
    pub enforce: bool,
    /// Whether the epilog asks slurmctld (`scontrol show job`) for the job's StartTime and
    /// EndTime, so allocated GPU time equals Slurm's accounting (one RPC per GPU job per node).
    pub slurm_job_times: bool,
    /// Directory for small persistent state.
    pub state_dir: PathBuf,
    /// The node spool (usage records waiting to be forwarded).
    pub spool_dir: PathBuf,
    /// The `scontrol` binary; `None`: found on `PATH` or in the usual places.
    pub scontrol: Option<PathBuf>,
    /// Per-check overrides, keyed by check id (ids and threshold names validated).
    pub checks: BTreeMap<String, CheckOverride>,
    /// The Slurm node name the daemon acts on; `None`: the short hostname.
    pub node_name: Option<String>,
    /// Time between the daemon's periodic `full` runs.
    pub check_interval: Duration,
    /// Consecutive healthy `full` runs before the daemon resumes a node it drained (0: never).
    pub resume_after: u32,
    /// The daemon's circuit breaker.
    pub breaker: BreakerConfig,
    /// Time between per-job usage samples.
    pub sample_interval: Duration,
    /// Where the daemon serves `/status` and `/metrics` (`None`: `status_listen = "off"`).
    pub status_listen: Option<std::net::SocketAddr>,
    /// The `[accounting]` table: acctd and the spool forwarder.
    pub accounting: AccountingConfig,
    /// The `[prices]` table: costs in `sgpu report`.
    pub prices: PricesConfig,
    /// The `[idle]` table: healthd's idle-GPU detection and per-partition policy.
    pub idle: IdleConfig,
    /// The `[infiniband]` table: expected ports and where sysfs lists them.
    pub infiniband: crate::infiniband::IbSettings,
    /// The `[active]` table: active checks run on idle nodes through Slurm.
    pub active: crate::active::ActiveSettings,
    /// `gate_socket`, `gate_max_age_ms`, `gate_healthd_timeout_ms`: the gates' readings
    /// from healthd.
    pub gate: GateSettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source: None,
            nvml_library: None,
            nvml_timeout: Duration::from_millis(DEFAULT_NVML_TIMEOUT_MS),
            pinned_driver_version: None,
            fail_closed: false,
            enforce: true,
            slurm_job_times: true,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            spool_dir: PathBuf::from(DEFAULT_SPOOL_DIR),
            scontrol: None,
            checks: BTreeMap::new(),
            node_name: None,
            check_interval: Duration::from_secs(DEFAULT_CHECK_INTERVAL_S),
            resume_after: DEFAULT_RESUME_AFTER,
            breaker: BreakerConfig::default(),
            sample_interval: Duration::from_secs(DEFAULT_SAMPLE_INTERVAL_S),
            status_listen: DEFAULT_STATUS_LISTEN.parse().ok(),
            accounting: AccountingConfig::default(),
            prices: PricesConfig::default(),
            idle: IdleConfig::default(),
            infiniband: crate::infiniband::IbSettings::default(),
            active: crate::active::ActiveSettings::default(),
            gate: GateSettings::default(),
        }
    }
}

type RawChecks =
    BTreeMap<Spanned<String>, Spanned<BTreeMap<Spanned<String>, Spanned<toml::Value>>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    nvml_library: Option<PathBuf>,
    nvml_timeout_ms: Option<Spanned<u64>>,
    pinned_driver_version: Option<Spanned<String>>,
    fail_closed: Option<bool>,
    enforce: Option<bool>,
    slurm_job_times: Option<bool>,
    state_dir: Option<PathBuf>,
    spool_dir: Option<PathBuf>,
    scontrol: Option<PathBuf>,
    node_name: Option<Spanned<String>>,
    check_interval_s: Option<Spanned<u64>>,
    resume_after: Option<u32>,
    breaker_max_fraction: Option<Spanned<f64>>,
    breaker_min_nodes: Option<u32>,
    breaker_window_s: Option<Spanned<u64>>,
    sample_interval_s: Option<Spanned<u64>>,
    status_listen: Option<Spanned<String>>,
    gate_socket: Option<Spanned<String>>,
    gate_max_age_ms: Option<Spanned<u64>>,
    gate_healthd_timeout_ms: Option<Spanned<u64>>,
    accounting: Option<accounting::RawAccounting>,
    prices: Option<prices::RawPrices>,
    idle: Option<idle::RawIdle>,
    infiniband: Option<infiniband::RawInfiniband>,
    active: Option<active::RawActive>,
    #[serde(default)]
    checks: RawChecks,
}

/// The node's own settings (NVML deadline, pinned driver, Slurm node name), validated into
/// `config`.
fn node_settings(
    config: &mut Config,
    raw: &RawConfig,
    invalid: &dyn Fn(usize, String, String) -> ConfigError,
) -> Result<(), ConfigError> {
    if let Some(ms) = &raw.nvml_timeout_ms {
        let v = *ms.get_ref();
        if !(1..=600_000).contains(&v) {
            return Err(invalid(
                ms.span().start,
                "nvml_timeout_ms".into(),
                format!("{v} is out of range (1 to 600000 ms)"),
            ));
        }
        config.nvml_timeout = Duration::from_millis(v);
    }
    if let Some(v) = &raw.pinned_driver_version {
        let s = v.get_ref().trim();
        if s.is_empty() {
            return Err(invalid(
                v.span().start,
                "pinned_driver_version".into(),
                "empty (omit the key to leave the driver unpinned)".into(),
            ));
        }
        config.pinned_driver_version = Some(s.to_string());
    }

    if let Some(name) = &raw.node_name {
        let n = name.get_ref().trim();
        if !crate::slurmctl::valid_node_name(n) {
            return Err(invalid(
                name.span().start,
                "node_name".into(),
                format!("{n:?} is not a Slurm node name (letters, digits, - _ .)"),
            ));
        }
        config.node_name = Some(n.to_string());
    }
    Ok(())
}

/// sgpu.toml's tables (`[accounting]`, `[prices]`, `[idle]`, `[infiniband]`, `[active]`,
/// `[checks."<id>"]`), each validated by its own module into `config`.
fn table_settings(
    config: &mut Config,
    raw: RawConfig,
    invalid: &dyn Fn(usize, String, String) -> ConfigError,
) -> Result<(), ConfigError> {
    // a table module's error (offset, key, message) as the file's
    let as_file_error = |(offset, key, message): accounting::Invalid| invalid(offset, key, message);
    if let Some(t) = raw.accounting {
        config.accounting = t.validate().map_err(as_file_error)?;
    }
    if let Some(t) = raw.prices {
        config.prices = t.validate().map_err(as_file_error)?;
    }
    if let Some(t) = raw.idle {
        config.idle = t.validate().map_err(as_file_error)?;
    }
    if let Some(t) = raw.infiniband {
        config.infiniband = t.validate().map_err(as_file_error)?;
    }
    if let Some(t) = raw.active {
        config.active = t.validate().map_err(as_file_error)?;
    }
    for (id, table) in raw.checks {
        let (id, o) = check_override(id, table, invalid)?;
        config.checks.insert(id, o);
    }
    Ok(())
}

/// The daemon's settings (check and sample intervals, auto-resume, breaker, status
/// listener), range-checked into `config`.
fn daemon_settings(
    config: &mut Config,
    raw: &RawConfig,
    invalid: &dyn Fn(usize, String, String) -> ConfigError,
) -> Result<(), ConfigError> {
    if let Some(s) = &raw.check_interval_s {
        let v = *s.get_ref();
        if !(1..=86_400).contains(&v) {
            return Err(invalid(
                s.span().start,
                "check_interval_s".into(),
                format!("{v} is out of range (1 to 86400 s)"),
            ));
        }
        config.check_interval = Duration::from_secs(v);
    }
    if let Some(n) = raw.resume_after {
        config.resume_after = n;
    }
    if let Some(f) = &raw.breaker_max_fraction {
        let v = *f.get_ref();
        if !(0.0..=1.0).contains(&v) {
            return Err(invalid(
                f.span().start,
                "breaker_max_fraction".into(),
                format!("{v} is out of range (0.0 to 1.0)"),
            ));
        }
        config.breaker.max_fraction = v;
    }
    if let Some(n) = raw.breaker_min_nodes {
        config.breaker.min_nodes = n;
    }
    if let Some(w) = &raw.breaker_window_s {
        // drains that aged out of the window let a slow storm drain every node
        return Err(invalid(
            w.span().start,
            "breaker_window_s".into(),
            "is no longer read: the circuit breaker counts every node sgpu holds drained, \
             however old the drain (docs/architecture.md, \"Circuit breaker\"); delete \
             the line"
                .into(),
        ));
    }

    if let Some(s) = &raw.sample_interval_s {
        let v = *s.get_ref();
        if !(1..=86_400).contains(&v) {
            return Err(invalid(
                s.span().start,
                "sample_interval_s".into(),
                format!("{v} is out of range (1 to 86400 s)"),
            ));
        }
        config.sample_interval = Duration::from_secs(v);
    }
    if let Some(l) = &raw.status_listen {
        let v = l.get_ref().trim();
        config.status_listen = if v == "off" {
            None
        } else {
            Some(v.parse().map_err(|_| {
                invalid(
                    l.span().start,
                    "status_listen".into(),
                    format!("{v:?} is not an address:port (e.g. \"127.0.0.1:9411\") or \"off\""),
                )
            })?)
        };
    }
    Ok(())
}

/// One `[checks."<id>"]` table: the check must exist, and each key is `severity`,
/// `enabled`, `enforce` or one of the check's thresholds (a number, not negative).
fn check_override(
    id: Spanned<String>,
    table: Spanned<BTreeMap<Spanned<String>, Spanned<toml::Value>>>,
    invalid: &dyn Fn(usize, String, String) -> ConfigError,
) -> Result<(String, CheckOverride), ConfigError> {
    let id_span = id.span();
    let id = id.into_inner();
    let Some(spec) = catalogue::spec(&id) else {
        return Err(invalid(
            id_span.start,
            format!("checks.\"{id}\""),
            format!(
                "unknown check id; valid ids: {}",
                catalogue::ids().collect::<Vec<_>>().join(", ")
            ),
        ));
    };
    let mut o = CheckOverride::default();
    for (key, value) in table.into_inner() {
        let key_span = key.span();
        let key = key.into_inner();
        let full_key = format!("checks.\"{id}\".{key}");
        let value_span = value.span();
        let value = value.into_inner();
        match key.as_str() {
            "severity" => {
                let sev = value.as_str().and_then(Severity::parse).ok_or_else(|| {
                    invalid(
                        value_span.start,
                        full_key.clone(),
                        format!("{value} is not one of \"drain\", \"warn\", \"info\", \"off\""),
                    )
                })?;
                o.severity = Some(sev);
            }
            "enabled" | "enforce" => {
                let b = value.as_bool().ok_or_else(|| {
                    invalid(
                        value_span.start,
                        full_key.clone(),
                        format!("{value} is not a boolean"),
                    )
                })?;
                if key == "enabled" {
                    o.enabled = Some(b);
                } else {
                    o.enforce = Some(b);
                }
            }
            name => {
                if !spec.thresholds.iter().any(|t| t.name == name) {
                    let mut valid = vec!["severity", "enabled", "enforce"];
                    valid.extend(spec.thresholds.iter().map(|t| t.name));
                    return Err(invalid(
                        key_span.start,
                        full_key,
                        format!(
                            "unknown key for this check; valid keys: {}",
                            valid.join(", ")
                        ),
                    ));
                }
                let n = match value {
                    toml::Value::Integer(i) => i as f64,
                    toml::Value::Float(f) if f.is_finite() => f,
                    other => {
                        return Err(invalid(
                            value_span.start,
                            full_key,
                            format!("{other} is not a number"),
                        ));
                    }
                };
                if n < 0.0 {
                    return Err(invalid(
                        value_span.start,
                        full_key,
                        format!("{n} is negative"),
                    ));
                }
                o.thresholds.insert(name.to_string(), n);
            }
        }
    }
    Ok((id, o))
}

/// The 1-based line of a byte offset in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

impl Config {
    /// The file to read: `explicit` (`--config`), else `$SGPU_CONFIG`, else
    /// [`DEFAULT_PATH`]. The flag says whether the file must exist (it may be absent only
    /// when nobody named it).
    pub fn locate(explicit: Option<&Path>) -> (PathBuf, bool) {
        if let Some(p) = explicit {
            return (p.to_path_buf(), true);
        }
        match std::env::var_os(CONFIG_ENV) {
            Some(p) if !p.is_empty() => (PathBuf::from(p), true),
            _ => (PathBuf::from(DEFAULT_PATH), false),
        }
    }

    /// Locates ([`Config::locate`]) and loads ([`Config::load`], with its trust checks) the
    /// configuration; a missing default file means built-in defaults.
    pub fn discover(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, required) = Config::locate(explicit);
        match Config::load(&path) {
            Err(ConfigError::Io { source, .. })
                if !required && source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(Config::default())
            }
            loaded => loaded,
        }
    }

    /// Reads and validates one file.
    ///
    /// The file and the `nvml_library` it names must be owned by root (or by this process's
    /// user) and not group/world-writable ([`crate::trust`]): root processes load them.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let untrusted = |why| ConfigError::Untrusted {
            path: path.to_path_buf(),
            why,
        };
        crate::trust::check_file(path).map_err(untrusted)?;
        let config = Config::parse(&text, path)?;
        // a library that is not there is NVML's failure to report, not a trust question
        if let Some(lib) = config.nvml_library.as_deref().filter(|l| l.exists()) {
            crate::trust::check_file(lib).map_err(untrusted)?;
        }
        Ok(config)
    }

    /// Parses and validates `text`; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)),
            message: e.message().trim_end().to_string(),
        })?;
        let invalid = |offset: usize, key: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: line_of(text, offset),
            key,
            message,
        };

        let mut config = Config {
            source: Some(path.to_path_buf()),
            nvml_library: raw.nvml_library.clone(),
            fail_closed: raw.fail_closed.unwrap_or(false),
            enforce: raw.enforce.unwrap_or(true),
            slurm_job_times: raw.slurm_job_times.unwrap_or(true),
            scontrol: raw.scontrol.clone(),
            ..Config::default()
        };
        if let Some(dir) = &raw.spool_dir {
            config.spool_dir = dir.clone();
        }
        if let Some(dir) = &raw.state_dir {
            config.state_dir = dir.clone();
        }
        node_settings(&mut config, &raw, &invalid)?;
        daemon_settings(&mut config, &raw, &invalid)?;
        let gate = gate::RawGate {
            socket: raw.gate_socket.as_ref(),
            max_age_ms: raw.gate_max_age_ms.as_ref(),
            timeout_ms: raw.gate_healthd_timeout_ms.as_ref(),
        };
        config.gate = gate
            .validate()
            .map_err(|(offset, key, message)| invalid(offset, key, message))?;
        table_settings(&mut config, raw, &invalid)?;
        Ok(config)
    }

    /// The effective check catalogue: built-in defaults merged with this file's overrides.
    pub fn catalogue(&self) -> Catalogue {
        Catalogue::effective_enforcing(&self.checks, self.enforce)
    }
}

#[cfg(test)]
mod tests;
