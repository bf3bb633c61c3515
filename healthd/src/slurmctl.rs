//! Draining and resuming nodes through slurmctld, with `scontrol`.
//!
//! sgpu changes node state only through `scontrol update NodeName=X State=DRAIN Reason=...`,
//! exactly as an admin would, so every change is visible in `sinfo -R` and slurmctld's log.
//! Reasons sgpu writes start with [`SGPU_REASON_PREFIX`]; automation resumes only nodes whose
//! reason carries it, never an admin's drain.
//!
//! slurmd starts Prolog/Epilog with an environment of its own and no `PATH`, so the binary is
//! looked up in the usual places when no path is configured.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::checks::fit_reason;

/// The prefix of every drain reason sgpu writes.
pub const SGPU_REASON_PREFIX: &str = "sgpu:";

/// Where `scontrol` is looked for when `scontrol` is not configured and not on `PATH`.
pub const SCONTROL_CANDIDATES: &[&str] = &[
    "/usr/bin/scontrol",
    "/usr/local/bin/scontrol",
    "/opt/slurm/bin/scontrol",
];

/// How long one `scontrol` call may take before sgpu gives up on it.
pub const DEFAULT_SCONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a node's state could not be changed or read.
#[derive(Debug, thiserror::Error)]
pub enum SlurmctlError {
    /// No scontrol binary was found.
    #[error("scontrol not found (looked on PATH and in {candidates}); set `scontrol` in sgpu.toml")]
    NotFound {
        /// Where it was looked for.
        candidates: String,
    },
    /// scontrol could not be started.
    #[error("could not run {path}: {source}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// scontrol ran and failed (slurmctld unreachable, unknown node, no permission, ...).
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it said.
        stderr: String,
    },
    /// scontrol did not finish in time (slurmctld not answering).
    #[error("`{command}` did not finish within {timeout:?}; is slurmctld up?")]
    Timeout {
        /// The command line.
        command: String,
        /// The limit.
        timeout: Duration,
    },
    /// A node name that cannot be passed to scontrol safely.
    #[error("invalid node name {0:?}")]
    BadNodeName(String),
}

/// A handle on `scontrol` for one cluster.
#[derive(Debug, Clone)]
pub struct Scontrol {
    path: PathBuf,
    timeout: Duration,
}

/// What sgpu needs to know of a node's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// The full state, e.g. `IDLE+DRAIN`.
    pub state: String,
    /// The drain/down reason without Slurm's `[user@time]` suffix, when one is set.
    pub reason: Option<String>,
}

impl NodeState {
    /// Whether the node is drained or draining.
    pub fn drained(&self) -> bool {
        self.state
            .split('+')
            .any(|f| f == "DRAIN" || f == "DRAINED" || f == "DRAINING")
    }

    /// Whether the current reason is one sgpu wrote (so sgpu may resume it).
    pub fn drained_by_sgpu(&self) -> bool {
        self.drained()
            && self
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with(SGPU_REASON_PREFIX))
    }
}

/// Whether `node` is safe to pass to scontrol as a node name.
pub fn valid_node_name(node: &str) -> bool {
    !node.is_empty()
        && node.len() <= 255
        && node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Scontrol {
    /// Uses `path` when given, else `scontrol` on `PATH`, else [`SCONTROL_CANDIDATES`].
    pub fn locate(path: Option<&Path>) -> Result<Scontrol, SlurmctlError> {
        let found = match path {
            Some(p) => Some(p.to_path_buf()),
            None => std::env::var_os("PATH")
                .and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|d| d.join("scontrol"))
                        .find(|p| p.is_file())
                })
                .or_else(|| {
                    SCONTROL_CANDIDATES
                        .iter()
                        .map(PathBuf::from)
                        .find(|p| p.is_file())
                }),
        };
        let path = found.ok_or_else(|| SlurmctlError::NotFound {
            candidates: SCONTROL_CANDIDATES.join(", "),
        })?;
        Ok(Scontrol {
            path,
            timeout: DEFAULT_SCONTROL_TIMEOUT,
        })
    }

    /// Sets how long one call may take.
    pub fn with_timeout(mut self, timeout: Duration) -> Scontrol {
        self.timeout = timeout;
        self
    }

    /// The binary in use.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn run(&self, args: &[String]) -> Result<String, SlurmctlError> {
        self.run_env(args, &[])
    }

    /// Runs `scontrol ARGS` with `env` added to its environment, under the timeout.
    fn run_env(&self, args: &[String], env: &[(&str, &str)]) -> Result<String, SlurmctlError> {
        let command = format!("{} {}", self.path.display(), args.join(" "));
        let spawn = || {
            Command::new(&self.path)
                .args(args)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        };
        // ETXTBSY: the binary was just replaced and another thread's fork still holds it
        // open for writing; it clears within milliseconds
        let mut attempt = spawn();
        for _ in 0..20 {
            match &attempt {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(Duration::from_millis(10));
                    attempt = spawn();
                }
                _ => break,
            }
        }
        let mut child = attempt.map_err(|source| SlurmctlError::Spawn {
            path: self.path.clone(),
            source,
        })?;
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() < self.timeout => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(SlurmctlError::Timeout {
                        command,
                        timeout: self.timeout,
                    });
                }
                Err(source) => {
                    return Err(SlurmctlError::Spawn {
                        path: self.path.clone(),
                        source,
                    });
                }
            }
        };
        // scontrol's output is small: reading after exit cannot block on a full pipe
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        if let Some(mut s) = child.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        if !status.success() {
            return Err(SlurmctlError::Failed {
                command,
                status: status.to_string(),
                stderr: err.trim().to_string(),
            });
        }
        Ok(out)
    }

    /// Drains `node` with `reason` (cut to fit Slurm; should start with [`SGPU_REASON_PREFIX`]).
    pub fn drain(&self, node: &str, reason: &str) -> Result<(), SlurmctlError> {
        if !valid_node_name(node) {
            return Err(SlurmctlError::BadNodeName(node.to_string()));
        }
        self.run(&[
            "update".into(),
            format!("NodeName={node}"),
            "State=DRAIN".into(),
            format!("Reason={}", fit_reason(reason)),
        ])
        .map(|_| ())
    }

    /// Resumes `node` (returns it to service).
    pub fn resume(&self, node: &str) -> Result<(), SlurmctlError> {
        if !valid_node_name(node) {
            return Err(SlurmctlError::BadNodeName(node.to_string()));
        }
        self.run(&[
            "update".into(),
            format!("NodeName={node}"),
            "State=RESUME".into(),
        ])
        .map(|_| ())
    }

    /// `SLURM_TIME_FORMAT=%s scontrol show job -o JOB`: the job's one line, times in Unix
    /// seconds (parse it with [`fields`]).
    pub fn show_job_epoch(&self, job_id: u32) -> Result<String, SlurmctlError> {
        self.run_env(
            &["show".into(), "job".into(), "-o".into(), job_id.to_string()],
            &[("SLURM_TIME_FORMAT", "%s")],
        )
    }

    /// Every node of the cluster, from `scontrol show node -o`.
    pub fn nodes(&self) -> Result<Vec<NodeInfo>, SlurmctlError> {
        let out = self.run(&["show".into(), "node".into(), "-o".into()])?;
        Ok(out.lines().filter_map(parse_node_info).collect())
    }

    /// The node's state and reason, from `scontrol show node -o`.
    pub fn node_state(&self, node: &str) -> Result<NodeState, SlurmctlError> {
        if !valid_node_name(node) {
            return Err(SlurmctlError::BadNodeName(node.to_string()));
        }
        let out = self.run(&["show".into(), "node".into(), "-o".into(), node.into()])?;
        Ok(parse_node_line(out.lines().next().unwrap_or("")))
    }
}

/// One node as `scontrol show node -o` lists it: what the circuit breaker needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// `NodeName=`.
    pub name: String,
    /// `Partitions=` (empty when the node is in none).
    pub partitions: Vec<String>,
    /// State and reason.
    pub state: NodeState,
    /// When the reason was set (Unix seconds), from Slurm's `[user@time]` suffix.
    pub reason_time: Option<i64>,
}

/// The `Key=value` fields of one `scontrol show -o` line, in order; a value runs on (spaces
/// included, as in a node's `Reason=`) until the next token that looks like `Key=`.
pub fn fields(line: &str) -> Vec<(&str, String)> {
    let field_start = |tok: &str| {
        tok.split_once('=').is_some_and(|(k, _)| {
            k.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && k.chars().all(|c| c.is_ascii_alphanumeric())
        })
    };
    let mut out: Vec<(&str, String)> = Vec::new();
    for tok in line.split_whitespace() {
        if field_start(tok) {
            if let Some((k, v)) = tok.split_once('=') {
                out.push((k, v.to_string()));
            }
        } else if let Some((_, v)) = out.last_mut() {
            v.push(' ');
            v.push_str(tok);
        }
    }
    out
}

/// Splits Slurm's `reason [user@2026-11-23T09:45:10]` into the reason and the suffix's time.
fn split_reason(raw: &str) -> (String, Option<&str>) {
    match raw.rfind(" [") {
        Some(i) if raw.ends_with(']') => {
            let suffix = &raw[i + 2..raw.len() - 1];
            let time = suffix.rsplit_once('@').map(|(_, t)| t);
            (raw[..i].to_string(), time)
        }
        _ => (raw.to_string(), None),
    }
}

/// Parses Slurm's `YYYY-MM-DDTHH:MM:SS` (local time, as slurmctld prints it) to Unix seconds.
pub fn parse_slurm_time(s: &str) -> Option<i64> {
    let (date, time) = s.split_once('T')?;
    let d: Vec<i32> = date
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let t: Vec<i32> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let ([y, mo, da], [h, mi, se]) = (d.as_slice(), t.as_slice()) else {
        return None;
    };
    // SAFETY: an all-zero `tm` is a valid value (integers and, where present, a null pointer).
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = *da;
    tm.tm_hour = *h;
    tm.tm_min = *mi;
    tm.tm_sec = *se;
    tm.tm_isdst = -1;
    // SAFETY: mktime reads and normalises the valid `tm` we own.
    let t = unsafe { libc::mktime(&mut tm) };
    // time_t is i64 on 64-bit Linux, narrower elsewhere
    #[allow(clippy::useless_conversion)]
    (t != -1).then_some(i64::from(t))
}

/// Reads `State=` and `Reason=` from one line of `scontrol show node -o`.
pub fn parse_node_line(line: &str) -> NodeState {
    let mut state = String::new();
    let mut reason: Option<String> = None;
    for (k, v) in fields(line) {
        match k {
            "State" => state = v,
            "Reason" => reason = Some(split_reason(&v).0),
            _ => {}
        }
    }
    let reason = reason.filter(|r| !r.is_empty() && r != "(null)");
    NodeState { state, reason }
}

/// Reads one line of `scontrol show node -o` into a [`NodeInfo`] (`None`: no `NodeName=`).
pub fn parse_node_info(line: &str) -> Option<NodeInfo> {
    let f = fields(line);
    let get = |key: &str| f.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str());
    let name = get("NodeName")?.to_string();
    let partitions = get("Partitions")
        .filter(|p| *p != "(null)")
        .map(|p| {
            p.split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let reason_time = get("Reason")
        .and_then(|r| split_reason(r).1)
        .and_then(parse_slurm_time);
    Some(NodeInfo {
        name,
        partitions,
        state: parse_node_line(line),
        reason_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_state_and_reason() {
        let s = parse_node_line(
            "NodeName=node1 Arch=x86_64 State=IDLE+DRAIN ThreadsPerCore=1 Reason=sgpu: gpu.xid gpu2: xid 79 GPU has fallen off the bus [root@2026-11-23T09:45:10] Comment=(null)",
        );
        assert_eq!(s.state, "IDLE+DRAIN");
        assert_eq!(
            s.reason.as_deref(),
            Some("sgpu: gpu.xid gpu2: xid 79 GPU has fallen off the bus")
        );
        assert!(s.drained() && s.drained_by_sgpu());

        let admin = parse_node_line("NodeName=n State=MIXED+DRAIN Reason=bad dimm [admin@now]");
        assert!(admin.drained() && !admin.drained_by_sgpu());

        let idle = parse_node_line("NodeName=n State=IDLE");
        assert_eq!(idle.reason, None);
        assert!(!idle.drained());
    }

    #[test]
    fn parses_node_info_for_the_breaker() {
        let n = parse_node_info(
            "NodeName=node1 Arch=x86_64 State=IDLE+DRAIN Partitions=gpu,debug Reason=sgpu: gpu.xid gpu2: xid 79 [root@2026-11-23T09:45:10] Comment=(null)",
        )
        .unwrap();
        assert_eq!(n.name, "node1");
        assert_eq!(n.partitions, vec!["gpu", "debug"]);
        assert!(n.state.drained_by_sgpu());
        assert_eq!(n.reason_time, parse_slurm_time("2026-11-23T09:45:10"));
        assert!(n.reason_time.is_some());
        let up = parse_node_info("NodeName=node2 State=IDLE Partitions=gpu").unwrap();
        assert_eq!((up.reason_time, up.state.drained()), (None, false));
        assert_eq!(parse_node_info("garbage"), None);
        let a = parse_slurm_time("2026-11-23T09:45:10").unwrap();
        let b = parse_slurm_time("2026-11-23T10:45:10").unwrap();
        assert_eq!(b - a, 3600);
        assert_eq!(parse_slurm_time("2026-11-23 09:45"), None);
        assert_eq!(parse_slurm_time("yesterday"), None);
    }

    #[test]
    fn refuses_odd_node_names() {
        let sc = Scontrol {
            path: "/bin/false".into(),
            timeout: Duration::from_secs(1),
        };
        for bad in ["", "a b", "n1 State=DOWN", "x;rm", "n\n"] {
            assert!(matches!(
                sc.drain(bad, "sgpu: x"),
                Err(SlurmctlError::BadNodeName(_))
            ));
        }
    }

    #[test]
    fn failures_and_timeouts_are_errors() {
        let sc = Scontrol::locate(Some(Path::new("/bin/false"))).unwrap();
        assert!(matches!(
            sc.drain("node1", "sgpu: x"),
            Err(SlurmctlError::Failed { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let slow = dir.path().join("scontrol");
        std::fs::write(&slow, "#!/bin/sh\nsleep 5\n").unwrap();
        let mut perm = std::fs::metadata(&slow).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&slow, perm).unwrap();
        let sc = Scontrol::locate(Some(&slow))
            .unwrap()
            .with_timeout(Duration::from_millis(200));
        let t = Instant::now();
        assert!(matches!(
            sc.resume("node1"),
            Err(SlurmctlError::Timeout { .. })
        ));
        assert!(t.elapsed() < Duration::from_secs(3));
        let missing = Scontrol::locate(Some(Path::new("/nonexistent/scontrol"))).unwrap();
        assert!(matches!(
            missing.resume("node1"),
            Err(SlurmctlError::Spawn { .. })
        ));
    }

    #[test]
    fn show_job_epoch_asks_for_epoch_seconds() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("scontrol");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho \"JobId=$4 TimeFormat=$SLURM_TIME_FORMAT Args=$1,$2,$3\"\n",
        )
        .unwrap();
        let mut perm = std::fs::metadata(&fake).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&fake, perm).unwrap();
        let out = Scontrol::locate(Some(&fake))
            .unwrap()
            .show_job_epoch(42)
            .unwrap();
        let f = fields(out.trim());
        assert_eq!(
            f,
            vec![
                ("JobId", "42".to_string()),
                ("TimeFormat", "%s".to_string()),
                ("Args", "show,job,-o".to_string())
            ]
        );
    }
}
