//! The real Slurm test cluster (`tests/cluster/up`), driven from Rust tests.
//!
//! [`Cluster::up`] runs the idempotent `up` script, then every command built by
//! [`Cluster::command`] talks to that cluster through `SLURM_CONF`. Tests that change node
//! state take [`Cluster::lock_exclusive`]; tests that only run jobs take
//! [`Cluster::lock_shared`], so test processes running in parallel (cargo test binaries,
//! nextest) never see each other's drains.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

/// What can go wrong while driving the test cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A command could not be started at all.
    #[error("could not run {cmd}: {source} (is slurm-wlm installed? tests/cluster/up installs it)")]
    Spawn {
        /// The command line.
        cmd: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("{cmd} exited with {status}: {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Output that does not have the expected shape.
    #[error("unexpected output from {cmd}: {detail}")]
    Parse {
        /// The command line.
        cmd: String,
        /// What was wrong.
        detail: String,
    },
    /// Waited too long for a state.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    /// A local file problem (lock file, job output).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The cluster needs root.
    #[error("the test cluster needs root (slurmd runs jobs as their users); run the tests as root")]
    NotRoot,
}

/// A running test cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    dir: PathBuf,
    slurm_conf: PathBuf,
    slurm_prefix: Option<PathBuf>,
}

/// A held lock on the cluster; released when dropped.
#[derive(Debug)]
pub struct ClusterLock {
    _lock: Flock<File>,
}

/// One record of `scontrol show -o`: `Key=Value` fields.
#[derive(Debug, Clone, Default)]
pub struct Record(pub BTreeMap<String, String>);

impl Record {
    /// The value of a field, or "" when absent.
    pub fn get(&self, key: &str) -> &str {
        self.0.get(key).map(String::as_str).unwrap_or("")
    }

    /// Parses one line of `scontrol show -o` output (with sgpu's own parser).
    pub fn parse(line: &str) -> Record {
        Record(
            sgpu_nodelib::slurmctl::fields(line)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }
}

/// Job states after which a job will not run again by itself.
pub const TERMINAL_JOB_STATES: &[&str] = &[
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
];

fn run(mut cmd: Command) -> Result<Output, ClusterError> {
    let line = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ClusterError::Spawn {
            cmd: line.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(ClusterError::Failed {
            cmd: line,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// The repository root (the parent of this crate's directory).
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

impl Cluster {
    /// Brings the cluster up (or finds it up) with the default size, 2 nodes x 4 GPUs, in
    /// `$SGPU_CLUSTER_DIR` (default `/tmp/sgpu-cluster`).
    pub fn up() -> Result<Cluster, ClusterError> {
        let dir = PathBuf::from(
            std::env::var_os("SGPU_CLUSTER_DIR").unwrap_or_else(|| "/tmp/sgpu-cluster".into()),
        );
        Self::up_in(&dir, &[])
    }

    /// Brings up (or finds up) a cluster of its own in `dir`, with `up`'s environment
    /// settings `env` (e.g. `SGPU_CLUSTER_PORT`, `SGPU_CLUSTER_SLURMDBD`); see
    /// `tests/cluster/up`. Give it ports apart from the default cluster's.
    pub fn up_in(dir: &Path, env: &[(&str, &str)]) -> Result<Cluster, ClusterError> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(ClusterError::NotRoot);
        }
        let dir = dir.to_path_buf();
        let mut cmd = Command::new(repo_root().join("tests/cluster/up"));
        cmd.env("SGPU_CLUSTER_DIR", &dir);
        cmd.envs(env.iter().copied());
        // `up` serialises itself only through this lock: parallel test processes call it too.
        let _guard = Self::flock(&dir, FlockArg::LockExclusive)?;
        run(cmd)?;
        let cluster = Cluster {
            slurm_conf: dir.join("etc/slurm.conf"),
            slurm_prefix: recorded_prefix(&dir)?,
            dir,
        };
        crate::sgpu::install(&cluster)?;
        Ok(cluster)
    }

    /// The cluster `up` brought up earlier in `$SGPU_CLUSTER_DIR`, without touching it (for
    /// tools that change simulated GPUs or daemons of a running cluster).
    pub fn existing() -> Result<Cluster, ClusterError> {
        let dir = PathBuf::from(
            std::env::var_os("SGPU_CLUSTER_DIR").unwrap_or_else(|| "/tmp/sgpu-cluster".into()),
        );
        let slurm_conf = dir.join("etc/slurm.conf");
        if !slurm_conf.exists() {
            return Err(ClusterError::Io {
                path: slurm_conf,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no test cluster here: run `sgpu-testcluster up` first",
                ),
            });
        }
        Ok(Cluster {
            slurm_conf,
            slurm_prefix: recorded_prefix(&dir)?,
            dir,
        })
    }

    fn flock(dir: &Path, arg: FlockArg) -> Result<ClusterLock, ClusterError> {
        let run_dir = dir.join("run");
        std::fs::create_dir_all(&run_dir).map_err(|source| ClusterError::Io {
            path: run_dir.clone(),
            source,
        })?;
        let path = run_dir.join("tests.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| ClusterError::Io {
                path: path.clone(),
                source,
            })?;
        let lock = Flock::lock(file, arg).map_err(|(_, e)| ClusterError::Io {
            path,
            source: std::io::Error::from(e),
        })?;
        Ok(ClusterLock { _lock: lock })
    }

    /// Takes the cluster for a test that only runs jobs (many may hold it at once).
    pub fn lock_shared(&self) -> Result<ClusterLock, ClusterError> {
        Self::flock(&self.dir, FlockArg::LockShared)
    }

    /// Takes the cluster for a test that changes node state (drain, resume, reconfigure).
    pub fn lock_exclusive(&self) -> Result<ClusterLock, ClusterError> {
        Self::flock(&self.dir, FlockArg::LockExclusive)
    }

    /// The cluster's directory (configuration, logs, device files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster's slurm.conf.
    pub fn slurm_conf(&self) -> &Path {
        &self.slurm_conf
    }

    /// The prefix of the Slurm this cluster runs when it is not Debian's
    /// (`SGPU_SLURM_PREFIX` of `tests/cluster/up`, e.g. `/opt/sgpu-slurm/26.05.3`).
    pub fn slurm_prefix(&self) -> Option<&Path> {
        self.slurm_prefix.as_deref()
    }

    /// The path of a Slurm program of this cluster's Slurm: `PREFIX/bin/NAME` or
    /// `PREFIX/sbin/NAME` for a built Slurm, else `NAME` (found on `PATH`: Debian's).
    pub fn slurm_program(&self, name: &str) -> PathBuf {
        if let Some(prefix) = &self.slurm_prefix {
            for d in ["bin", "sbin"] {
                let p = prefix.join(d).join(name);
                if p.is_file() {
                    return p;
                }
            }
        }
        PathBuf::from(name)
    }

    /// A command for a Slurm client (`sbatch`, `scontrol`, ...) aimed at this cluster: from
    /// the cluster's Slurm prefix when it has one, which also goes first on the child's
    /// `PATH` (so `runuser ... srun` and scripts find the same Slurm).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = if program.contains('/') {
            Command::new(program)
        } else {
            Command::new(self.slurm_program(program))
        };
        cmd.env("SLURM_CONF", &self.slurm_conf);
        if let Some(prefix) = &self.slurm_prefix {
            let mut paths = vec![prefix.join("bin"), prefix.join("sbin")];
            if let Some(old) = std::env::var_os("PATH") {
                paths.extend(std::env::split_paths(&old));
            }
            if let Ok(joined) = std::env::join_paths(paths) {
                cmd.env("PATH", joined);
            }
        }
        cmd
    }

    /// Runs a Slurm client and returns its stdout.
    pub fn output(&self, program: &str, args: &[&str]) -> Result<String, ClusterError> {
        let mut cmd = self.command(program);
        cmd.args(args);
        let out = run(cmd)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Submits a batch job (`sbatch --parsable ARGS --wrap SCRIPT`) and returns its id.
    pub fn sbatch(&self, args: &[&str], script: &str) -> Result<u32, ClusterError> {
        let mut all = vec!["--parsable"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--wrap", script]);
        let out = self.output("sbatch", &all)?;
        let id = out.trim().split(';').next().unwrap_or("");
        id.parse().map_err(|_| ClusterError::Parse {
            cmd: "sbatch --parsable".into(),
            detail: format!("expected a job id, got {out:?}"),
        })
    }

    /// The job's `scontrol show job -o` record.
    pub fn job(&self, id: u32) -> Result<Record, ClusterError> {
        let out = self.output("scontrol", &["show", "job", "-o", &id.to_string()])?;
        Ok(Record::parse(out.lines().next().unwrap_or("")))
    }

    /// Waits until the job reaches a terminal state and returns its record.
    pub fn wait_job(&self, id: u32, timeout: Duration) -> Result<Record, ClusterError> {
        let start = Instant::now();
        loop {
            let rec = self.job(id)?;
            if TERMINAL_JOB_STATES.contains(&rec.get("JobState")) {
                return Ok(rec);
            }
            if start.elapsed() > timeout {
                return Err(ClusterError::Timeout(
                    timeout,
                    format!("job {id} to end (last state {})", rec.get("JobState")),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The node's `scontrol show node -o` record.
    pub fn node(&self, name: &str) -> Result<Record, ClusterError> {
        let out = self.output("scontrol", &["show", "node", "-o", name])?;
        Ok(Record::parse(out.lines().next().unwrap_or("")))
    }

    /// Waits until `pred` holds for the node's record.
    pub fn wait_node(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Record) -> bool,
    ) -> Result<Record, ClusterError> {
        let start = Instant::now();
        loop {
            let rec = self.node(name)?;
            if pred(&rec) {
                return Ok(rec);
            }
            if start.elapsed() > timeout {
                return Err(ClusterError::Timeout(
                    timeout,
                    format!(
                        "{name} to be {what} (State={} Reason={})",
                        rec.get("State"),
                        rec.get("Reason")
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Names of the cluster's nodes that run a slurmd (partition `gpu`), as `sinfo` lists
    /// them; the ghost nodes of `SGPU_CLUSTER_GHOSTS` (partition `ghosts`) are not among them.
    pub fn nodes(&self) -> Result<Vec<String>, ClusterError> {
        let out = self.output("sinfo", &["-h", "-N", "-p", "gpu", "-o", "%N"])?;
        let mut v: Vec<String> = out
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        v.dedup();
        Ok(v)
    }
}

/// The Slurm prefix `tests/cluster/up` recorded in `dir/slurm-prefix` (`SGPU_SLURM_PREFIX`),
/// or `None` for a cluster of Debian's Slurm.
fn recorded_prefix(dir: &Path) -> Result<Option<PathBuf>, ClusterError> {
    let path = dir.join("slurm-prefix");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let p = text.trim();
            if p.is_empty() {
                Ok(None)
            } else {
                Ok(Some(PathBuf::from(p)))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ClusterError::Io { path, source }),
    }
}

/// The base of Slurm's node state (`IDLE+DRAIN` -> `IDLE`), and whether a drain flag is set.
pub fn node_state(rec: &Record) -> (String, bool) {
    let state = rec.get("State");
    let base = state.split('+').next().unwrap_or("").to_string();
    (base, state.split('+').any(|f| f == "DRAIN"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keeps_spaces_in_reason() {
        let r = Record::parse(
            "NodeName=node1 Arch=x86_64 State=IDLE+DRAIN Reason=sgpu: gpu.xid gpu2: xid 79 [root@2026-11-23T09:00:00] Comment=(null)",
        );
        assert_eq!(r.get("NodeName"), "node1");
        assert_eq!(
            r.get("Reason"),
            "sgpu: gpu.xid gpu2: xid 79 [root@2026-11-23T09:00:00]"
        );
        assert_eq!(r.get("Comment"), "(null)");
        assert_eq!(node_state(&r), ("IDLE".to_string(), true));
    }

    #[test]
    fn record_of_empty_line_is_empty() {
        assert_eq!(Record::parse("").get("State"), "");
    }
}
