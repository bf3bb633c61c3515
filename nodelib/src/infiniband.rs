//! InfiniBand and RoCE ports, read from sysfs (`/sys/class/infiniband`), and their checks.
//!
//! Every RDMA device the kernel knows has `<root>/<device>/ports/<n>/` with (the kernel's
//! `Documentation/ABI/stable/sysfs-class-infiniband`, written by `drivers/infiniband/core/
//! sysfs.c`): `state` (`4: ACTIVE`), `phys_state` (`5: LinkUp`), `rate` (`200 Gb/sec (4X
//! HDR)`), `link_layer` (`InfiniBand` or `Ethernet`, the latter for RoCE) and, in
//! `counters/`, the port's PortCounters: among them `symbol_error`, `link_downed`,
//! `link_error_recovery` and `port_rcv_errors`, the four [`ERROR_COUNTERS`] sgpu judges.
//!
//! Two checks use them (see the catalogue):
//!
//! - `ib.port`: each expected port is present, `ACTIVE` and `LinkUp`, at its expected rate or
//!   above. Expected ports come from `[infiniband] ports` (and `rate_gbps`) in `sgpu.toml`,
//!   or else from the node's baseline, [`BASELINE_FILE`] in the state directory: the ports
//!   that were active (with their rates) when the node first ran the check with a port up,
//!   widened whenever another port comes up or a port runs faster. An admin resets it by
//!   deleting the file; the next run records it anew from the ports active then.
//! - `ib.errors`: each active port's error counters, by how much they rose since a reference
//!   reading at most [`RATE_WINDOW_S`] old, kept in [`COUNTERS_FILE`] in the state
//!   directory (written by healthd's runs; a counter that went down restarts from the new
//!   value). A rise warns; a rise of more than `drain_per_hour` per hour drains.
//!
//! The root is `[infiniband] sysfs_root`, so tests use a tree of their own; a root that does
//! not exist is a node without RDMA devices (nothing to judge unless ports are expected).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::catalogue::{self as cat, Catalogue, EffectiveCheck, Profile, Severity};
use crate::checks::{CheckResult, Status, rising_errors};

/// The kernel's sysfs class directory for RDMA devices.
pub const DEFAULT_ROOT: &str = "/sys/class/infiniband";
/// The node's baseline of active ports, in the state directory.
pub const BASELINE_FILE: &str = "ib-baseline.json";
/// The reference readings of the error counters, in the state directory.
pub const COUNTERS_FILE: &str = "ib-counters.json";
/// The error counters judged by `ib.errors` (file names in `ports/<n>/counters/`).
pub const ERROR_COUNTERS: &[&str] = &[
    "symbol_error",
    "link_downed",
    "link_error_recovery",
    "port_rcv_errors",
];
/// A counter's reference reading is replaced once it is this old (seconds).
pub const RATE_WINDOW_S: f64 = 3600.0;
/// The most ports a baseline or counter file keeps (a corrupt tree cannot grow it without
/// bound).
const MAX_PORTS: usize = 256;

/// Why sysfs or a state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IbError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A sysfs file holds something this reader does not understand.
    #[error("{path}: cannot read {text:?} as {what}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it holds (trimmed).
        text: String,
        /// What was expected.
        what: &'static str,
    },
}

/// The `[infiniband]` settings of `sgpu.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct IbSettings {
    /// Where the RDMA devices are listed (default [`DEFAULT_ROOT`]).
    pub sysfs_root: PathBuf,
    /// Ports that must be present and active, as `<device>/<port>` (`mlx5_0/1`); empty: the
    /// node's baseline decides.
    pub ports: Vec<String>,
    /// The least rate every expected port must run at, Gb/s (`None`: the baseline's rate of
    /// each port, or any rate for configured ports without a baseline).
    pub rate_gbps: Option<f64>,
}

impl Default for IbSettings {
    fn default() -> Self {
        IbSettings {
            sysfs_root: PathBuf::from(DEFAULT_ROOT),
            ports: Vec::new(),
            rate_gbps: None,
        }
    }
}

/// Whether `s` names a port as `<device>/<port>` (device: letters, digits, `_ - .`; port: a
/// number).
pub fn valid_port_name(s: &str) -> bool {
    let Some((dev, port)) = s.split_once('/') else {
        return false;
    };
    !dev.is_empty()
        && !dev.starts_with('.')
        && dev
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !port.is_empty()
        && port.parse::<u32>().is_ok()
}

/// One port as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Port {
    /// The RDMA device, e.g. `mlx5_0`.
    pub device: String,
    /// The port number (1-based; 0 is a switch's management port).
    pub port: u32,
    /// The logical state's name, e.g. `ACTIVE`, `DOWN`, `INIT`.
    pub state: String,
    /// The physical state's name, e.g. `LinkUp`, `Polling`, `Disabled`.
    pub phys_state: String,
    /// The rate, Gb/s (`None`: the file is missing or unreadable as a rate).
    pub rate_gbps: Option<f64>,
    /// The rate as sysfs wrote it, e.g. `200 Gb/sec (4X HDR)`.
    pub rate_text: String,
    /// `InfiniBand` or `Ethernet` (RoCE); empty when the file is missing (old kernels).
    pub link_layer: String,
    /// The [`ERROR_COUNTERS`] this port has, by name.
    pub counters: BTreeMap<String, u64>,
}

impl Port {
    /// `<device>/<port>`, the name used in `sgpu.toml`, the baseline and drain reasons.
    pub fn name(&self) -> String {
        format!("{}/{}", self.device, self.port)
    }

    /// Logically active (`ACTIVE`; `ACTIVE_DEFER` counts too) and physically up (`LinkUp`).
    pub fn is_up(&self) -> bool {
        self.state.starts_with("ACTIVE") && self.phys_state.eq_ignore_ascii_case("LinkUp")
    }
}

fn read_text(path: &Path) -> Result<String, IbError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| IbError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// `4: ACTIVE` as the name after the colon (a bare name is taken as it is).
fn state_name(path: &Path) -> Result<String, IbError> {
    let text = read_text(path)?;
    let name = match text.split_once(':') {
        Some((num, name)) if num.trim().parse::<u32>().is_ok() => name.trim(),
        _ => text.as_str(),
    };
    if name.is_empty() {
        return Err(IbError::Parse {
            path: path.to_path_buf(),
            text,
            what: "a port state (\"4: ACTIVE\")",
        });
    }
    Ok(name.to_string())
}

/// The Gb/s of a sysfs rate line: `200 Gb/sec (4X HDR)`, `2.5 Gb/sec (1X SDR)`.
pub fn parse_rate(text: &str) -> Option<f64> {
    let (num, rest) = text.trim().split_once(' ')?;
    if !rest.trim_start().starts_with("Gb/sec") {
        return None;
    }
    num.parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r >= 0.0)
}

/// Every port under `root`, sorted by device and port. A missing root is an empty list (no
/// RDMA devices); a port whose state cannot be read is an error naming the file.
pub fn read_ports(root: &Path) -> Result<Vec<Port>, IbError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IbError::Io { path, source }
    };
    let devices = match std::fs::read_dir(root) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(root)(e)),
    };
    let mut out = Vec::new();
    for dev in devices {
        let dev = dev.map_err(io(root))?;
        let device = dev.file_name().to_string_lossy().into_owned();
        let ports_dir = dev.path().join("ports");
        let ports = match std::fs::read_dir(&ports_dir) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&ports_dir)(e)),
        };
        for p in ports {
            let p = p.map_err(io(&ports_dir))?;
            let Ok(port) = p.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let dir = p.path();
            let rate_text = read_text(&dir.join("rate")).unwrap_or_default();
            let link_layer = read_text(&dir.join("link_layer")).unwrap_or_default();
            let mut counters = BTreeMap::new();
            for name in ERROR_COUNTERS {
                let path = dir.join("counters").join(name);
                match read_text(&path) {
                    Ok(t) => {
                        let v = t.parse::<u64>().map_err(|_| IbError::Parse {
                            path: path.clone(),
                            text: t.clone(),
                            what: "a counter",
                        })?;
                        counters.insert((*name).to_string(), v);
                    }
                    // a driver without the counter (some RoCE and iWARP devices)
                    Err(IbError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            out.push(Port {
                device: device.clone(),
                port,
                state: state_name(&dir.join("state"))?,
                phys_state: state_name(&dir.join("phys_state"))?,
                rate_gbps: parse_rate(&rate_text),
                rate_text,
                link_layer,
                counters,
            });
        }
    }
    out.sort_by(|a, b| (&a.device, a.port).cmp(&(&b.device, b.port)));
    out.truncate(MAX_PORTS);
    Ok(out)
}

/// What the baseline remembers of one port.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BaselinePort {
    /// The fastest rate the port has run at on this node, Gb/s.
    pub rate_gbps: f64,
}

/// The node's baseline: the ports that were active, with their best rates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Unix time the baseline was first recorded.
    #[serde(default)]
    pub recorded_at: f64,
    /// Ports by `<device>/<port>`.
    #[serde(default)]
    pub ports: BTreeMap<String, BaselinePort>,
}

impl Baseline {
    /// Adds every port that is up now, and raises a port's rate to the current one when
    /// faster. Returns whether anything changed.
    pub fn widen(&mut self, ports: &[Port], now: f64) -> bool {
        let mut changed = false;
        for p in ports.iter().filter(|p| p.is_up()) {
            let rate = p.rate_gbps.unwrap_or(0.0);
            if self.ports.len() >= MAX_PORTS && !self.ports.contains_key(&p.name()) {
                continue;
            }
            let e = self.ports.entry(p.name()).or_insert_with(|| {
                changed = true;
                BaselinePort { rate_gbps: rate }
            });
            if rate > e.rate_gbps {
                e.rate_gbps = rate;
                changed = true;
            }
        }
        if changed && self.recorded_at == 0.0 {
            self.recorded_at = now;
        }
        changed
    }
}

/// A counter's reference reading.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CounterRef {
    /// The counter's value.
    pub value: u64,
    /// Unix time of the reading, seconds.
    pub at: f64,
}

impl CounterRef {
    /// Events per hour since this reference, counted over at least an hour (a rise of 3
    /// within 5 minutes is 3 per hour, not 36: one flap is one event); `None` when the
    /// counter went down (a reset: no rate).
    pub fn per_hour(&self, now_value: u64, now: f64) -> Option<f64> {
        if now_value < self.value {
            return None;
        }
        let span = (now - self.at).max(RATE_WINDOW_S);
        Some((now_value - self.value) as f64 * 3600.0 / span)
    }
}

/// The reference readings of every port's error counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// By `<device>/<port>`, then counter name.
    #[serde(default)]
    pub ports: BTreeMap<String, BTreeMap<String, CounterRef>>,
}

impl Counters {
    /// Folds the current readings in: a reference is kept while the counter has not gone
    /// down and the reference is younger than [`RATE_WINDOW_S`], else replaced. Returns
    /// whether a reference changed (the file needs writing).
    pub fn observe(&mut self, ports: &[Port], now: f64) -> bool {
        let mut changed = false;
        for p in ports {
            if self.ports.len() >= MAX_PORTS && !self.ports.contains_key(&p.name()) {
                continue;
            }
            let refs = self.ports.entry(p.name()).or_default();
            for (name, &value) in &p.counters {
                match refs.get(name) {
                    Some(r) if value >= r.value && now - r.at < RATE_WINDOW_S => {}
                    _ => {
                        refs.insert(name.clone(), CounterRef { value, at: now });
                        changed = true;
                    }
                }
            }
        }
        changed
    }
}

fn load_json<T: Default + for<'de> Deserialize<'de>>(path: &Path) -> Result<T, IbError> {
    match std::fs::read(path) {
        // a file that does not parse is rebuilt, as the GPU history is
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_default()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(source) => Err(IbError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn save_json<T: Serialize>(value: &T, dir: &Path, file: &str) -> Result<(), IbError> {
    let path = dir.join(file);
    let io = |source| IbError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let text = serde_json::to_vec_pretty(value).map_err(|e| io(std::io::Error::other(e)))?;
    crate::state_file::write_cache(&path, &text).map_err(io)
}

impl Baseline {
    /// Reads `<dir>/ib-baseline.json` (`None` when there is none yet).
    pub fn load(dir: &Path) -> Result<Option<Baseline>, IbError> {
        let path = dir.join(BASELINE_FILE);
        if !path.exists() {
            return Ok(None);
        }
        load_json::<Baseline>(&path).map(Some)
    }

    /// Writes `<dir>/ib-baseline.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), IbError> {
        save_json(self, dir, BASELINE_FILE)
    }
}

impl Counters {
    /// Reads `<dir>/ib-counters.json` (empty when missing or unreadable as JSON).
    pub fn load(dir: &Path) -> Result<Counters, IbError> {
        load_json(&dir.join(COUNTERS_FILE))
    }

    /// Writes `<dir>/ib-counters.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), IbError> {
        save_json(self, dir, COUNTERS_FILE)
    }
}

/// What one port is expected to be.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    /// `<device>/<port>`.
    pub port: String,
    /// The least rate, Gb/s (`None`: any).
    pub rate_gbps: Option<f64>,
    /// Where the expectation comes from (`sgpu.toml` or `baseline`).
    pub source: &'static str,
}

/// The ports to judge: the configured ones (rate from `rate_gbps`, else the baseline's), or
/// else the baseline's (rate from `rate_gbps` when set, else the baseline's).
pub fn expected(settings: &IbSettings, baseline: Option<&Baseline>) -> Vec<Expected> {
    // a baseline rate of 0: the port's rate was unreadable when recorded, so none is expected
    let base_rate = |p: &str| {
        baseline
            .and_then(|b| b.ports.get(p))
            .map(|b| b.rate_gbps)
            .filter(|r| *r > 0.0)
    };
    if !settings.ports.is_empty() {
        return settings
            .ports
            .iter()
            .map(|p| Expected {
                port: p.clone(),
                rate_gbps: settings.rate_gbps.or_else(|| base_rate(p)),
                source: "sgpu.toml",
            })
            .collect();
    }
    baseline
        .map(|b| {
            b.ports
                .iter()
                .map(|(p, bp)| Expected {
                    port: p.clone(),
                    rate_gbps: settings
                        .rate_gbps
                        .or(Some(bp.rate_gbps).filter(|r| *r > 0.0)),
                    source: "baseline",
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What is wrong with one expected port (`None`: nothing).
pub fn port_fault(want: &Expected, ports: &[Port]) -> Option<String> {
    let Some(p) = ports.iter().find(|p| p.name() == want.port) else {
        return Some(format!("{} missing", want.port));
    };
    if !p.is_up() {
        return Some(format!(
            "{} {} ({}), expected ACTIVE (LinkUp)",
            p.name(),
            p.state,
            p.phys_state
        ));
    }
    match (want.rate_gbps, p.rate_gbps) {
        (Some(min), Some(rate)) if rate + 1e-9 < min => Some(format!(
            "{} at {} Gb/s, expected {} Gb/s ({})",
            p.name(),
            fmt_gbps(rate),
            fmt_gbps(min),
            want.source
        )),
        (Some(min), None) => Some(format!(
            "{} rate unreadable ({:?}), expected {} Gb/s",
            p.name(),
            p.rate_text,
            fmt_gbps(min)
        )),
        _ => None,
    }
}

/// A rate as written in messages: `200`, `2.5`.
pub fn fmt_gbps(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// What one run of the InfiniBand checks found, and what it could not read or save.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IbRun {
    /// `ib.port` and `ib.errors` results (node-level: the port is in the message).
    pub results: Vec<CheckResult>,
    /// Files that could not be read or written (the run goes on without them).
    pub notes: Vec<String>,
}

fn result(
    check: &EffectiveCheck,
    status: Status,
    severity: Severity,
    observed: String,
    threshold: String,
    message: String,
) -> CheckResult {
    CheckResult {
        check: check.spec.id,
        gpu: None,
        uuid: None,
        observed,
        threshold,
        severity,
        status,
        message,
        enforced: check.enforce,
    }
}

/// Runs `ib.port` and `ib.errors` (those of them `profile` runs): reads the ports under
/// `settings.sysfs_root`, judges them against the configured ports or the baseline in
/// `state_dir`, and the counters against their reference readings. With `save`, widens the
/// baseline (recording it on the first run with a port up) and, when `ib.errors` ran, folds
/// the readings into the counter references.
pub fn evaluate(
    settings: &IbSettings,
    profile: Profile,
    catalogue: &Catalogue,
    state_dir: &Path,
    save: bool,
    now: f64,
) -> IbRun {
    let mut run = IbRun::default();
    let port_check = catalogue.get(cat::IB_PORT).filter(|c| c.runs_in(profile));
    let err_check = catalogue.get(cat::IB_ERRORS).filter(|c| c.runs_in(profile));
    if port_check.is_none() && err_check.is_none() {
        return run;
    }
    let ports = match read_ports(&settings.sysfs_root) {
        Ok(p) => p,
        Err(e) => {
            if let Some(c) = port_check {
                run.results.push(result(
                    c,
                    Status::Unknown,
                    c.severity,
                    "error".into(),
                    String::new(),
                    format!("cannot read the ports: {e}"),
                ));
            }
            run.notes.push(format!("InfiniBand: {e}"));
            return run;
        }
    };
    if let Some(c) = port_check {
        let mut baseline = match Baseline::load(state_dir) {
            Ok(b) => b,
            Err(e) => {
                run.notes.push(format!("InfiniBand baseline: {e}"));
                None
            }
        };
        if save {
            let mut b = baseline.clone().unwrap_or_default();
            if b.widen(&ports, now) {
                if let Err(e) = b.save(state_dir) {
                    run.notes.push(format!("InfiniBand baseline: {e}"));
                }
            }
            if !b.ports.is_empty() {
                baseline = Some(b);
            }
        }
        port_results(&mut run, c, settings, baseline.as_ref(), &ports);
    }
    if let Some(c) = err_check {
        let mut counters = match Counters::load(state_dir) {
            Ok(k) => k,
            Err(e) => {
                run.notes.push(format!("InfiniBand counters: {e}"));
                Counters::default()
            }
        };
        error_results(&mut run, c, &counters, &ports, now);
        // written only when a reference changed (first reading, a reset, once an hour)
        if save && counters.observe(&ports, now) {
            if let Err(e) = counters.save(state_dir) {
                run.notes.push(format!("InfiniBand counters: {e}"));
            }
        }
    }
    run
}

fn port_results(
    run: &mut IbRun,
    c: &EffectiveCheck,
    settings: &IbSettings,
    baseline: Option<&Baseline>,
    ports: &[Port],
) {
    let want = expected(settings, baseline);
    if want.is_empty() {
        if !ports.is_empty() {
            let names: Vec<String> = ports.iter().map(Port::name).collect();
            run.results.push(result(
                c,
                Status::Unknown,
                c.severity,
                names.join(","),
                "no baseline yet".into(),
                "no port has been up on this node yet: nothing is expected (set \
                 [infiniband] ports)"
                    .into(),
            ));
        }
        return;
    }
    for w in &want {
        let threshold = match w.rate_gbps {
            Some(r) => format!("ACTIVE, >= {} Gb/s ({})", fmt_gbps(r), w.source),
            None => format!("ACTIVE ({})", w.source),
        };
        let observed = match ports.iter().find(|p| p.name() == w.port) {
            Some(p) => format!("{} {} {} {}", p.name(), p.state, p.phys_state, p.rate_text),
            None => format!("{} missing", w.port),
        };
        let (status, message) = match port_fault(w, ports) {
            Some(fault) => (Status::Fail, fault),
            None => (Status::Pass, "ok".to_string()),
        };
        run.results
            .push(result(c, status, c.severity, observed, threshold, message));
    }
}

fn error_results(
    run: &mut IbRun,
    c: &EffectiveCheck,
    counters: &Counters,
    ports: &[Port],
    now: f64,
) {
    let (warn_at, drain_at) = (c.threshold("warn_per_hour"), c.threshold("drain_per_hour"));
    let threshold = format!(
        "rise <= {}/h (warn), <= {}/h (drain)",
        fmt_gbps(warn_at),
        fmt_gbps(drain_at)
    );
    for p in ports.iter().filter(|p| p.is_up() && !p.counters.is_empty()) {
        let refs = counters.ports.get(&p.name());
        let mut worst: Option<(f64, &str, u64)> = None;
        for (name, &value) in &p.counters {
            let Some(rate) = refs
                .and_then(|r| r.get(name))
                .and_then(|r| r.per_hour(value, now))
            else {
                continue;
            };
            if worst.is_none_or(|(w, _, _)| rate > w) {
                worst = Some((rate, name.as_str(), value));
            }
        }
        let Some((rate, name, value)) = worst else {
            run.results.push(result(
                c,
                Status::Unknown,
                c.severity,
                p.name(),
                threshold.clone(),
                format!("{}: a rate needs an earlier reading", p.name()),
            ));
            continue;
        };
        let observed = format!("{} {name} {:.1}/h (count {value})", p.name(), rate);
        let message = format!("{} {name} rising: {:.1}/h (count {value})", p.name(), rate);
        let (status, severity) = rising_errors(rate, warn_at, drain_at, c.severity);
        let message = if status == Status::Pass {
            "ok".to_string()
        } else {
            message
        };
        run.results.push(result(
            c,
            status,
            severity,
            observed,
            threshold.clone(),
            message,
        ));
    }
}

#[cfg(test)]
mod tests;
