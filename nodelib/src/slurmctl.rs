//! Draining and resuming nodes through slurmctld, with `scontrol`.
//!
//! sgpu changes node state only through `scontrol update NodeName=X State=DRAIN Reason=...`,
//! exactly as an admin would, so every change is visible in `sinfo -R` and slurmctld's log.
//! Reasons sgpu writes start with [`SGPU_REASON_PREFIX`]; automation resumes only nodes whose
//! reason carries it, never an admin's drain.
//!
//! slurmd starts Prolog/Epilog with an environment of its own and no `PATH`, so the binary is
//! looked up in the usual places when no path is configured.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::checks::fit_reason;

/// The prefix of every drain reason sgpu writes.
pub const SGPU_REASON_PREFIX: &str = "sgpu:";

/// What slurmctld puts between a node's reason and a reason of its own that it appends
/// (Slurm 23.02+ `set_node_reason`, e.g. `sgpu: gpu.xid ... : Not responding`); it then also
/// sets the reason's user to SlurmUser and its time to that moment. sgpu never writes it.
pub const SLURMCTLD_APPEND: &str = " : ";

/// Splits a reason (without `[user@time]`) into the text its setter wrote and what
/// slurmctld appended after [`SLURMCTLD_APPEND`] (`None`: nothing appended, so the reason's
/// user and time are the setter's).
pub fn split_appended(reason: &str) -> (&str, Option<&str>) {
    match reason.split_once(SLURMCTLD_APPEND) {
        Some((own, added)) => (own, Some(added)),
        None => (reason, None),
    }
}

/// Where `scontrol` is looked for when `scontrol` is not configured and not on `PATH`.
pub const SCONTROL_CANDIDATES: &[&str] = &[
    "/usr/bin/scontrol",
    "/usr/local/bin/scontrol",
    "/opt/slurm/bin/scontrol",
];

/// How long one `scontrol` call may take before sgpu gives up on it.
pub const DEFAULT_SCONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// The most output one Slurm command may print before sgpu gives up on it: 64 MiB, about ten
/// times `scontrol show node -o` of a 10,000-node cluster (~600 bytes a node).
pub const MAX_OUTPUT: usize = sgpu_proc::DEFAULT_MAX_STDOUT;

/// The `squeue --Format` sgpu reads a job with: only fields slurmctld writes (numbers and
/// state names), never one a user can set (name, comment, work dir, ...), so no user text can
/// stand in for them. One line: `JOBID|STATE|START|END|RESTARTS|`, times in Unix seconds
/// (`SLURM_TIME_FORMAT=%s`).
pub const JOB_FORMAT: &str = "JobID:|,State:|,StartTime:|,EndTime:|,RestartCnt:|";

/// Environment variables that change what Slurm's client commands print (`SQUEUE_FORMAT`,
/// `SLURM_TIME_FORMAT`, `SLURM_CLUSTERS`, ...): removed from every child sgpu runs, so its
/// output has the form sgpu parses.
fn output_changing_var(name: &str) -> bool {
    ["SQUEUE_", "SINFO_", "SCONTROL_", "SACCT_"]
        .iter()
        .any(|p| name.starts_with(p))
        || matches!(
            name,
            "SLURM_TIME_FORMAT" | "SLURM_CLUSTERS" | "SLURM_FEDERATION_VIEW"
        )
}

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
    /// The command printed more than sgpu reads, or its output could not be read.
    #[error("{0}")]
    Output(sgpu_proc::ProcError),
    /// The output has a form sgpu does not accept (names the command and what is wrong).
    #[error("`{command}` printed {what}")]
    Parse {
        /// The command line.
        command: String,
        /// What is wrong with its output.
        what: String,
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
    max_output: usize,
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

    /// Whether the node is DOWN or FAIL/FAILING (set by an admin, or by slurmctld for a node
    /// that stopped answering), whatever its reason.
    pub fn down_or_failed(&self) -> bool {
        self.state
            .split('+')
            .map(|f| f.trim_end_matches(['*', '~', '#', '!', '%', '$', '@', '^', '-']))
            .any(|f| matches!(f, "DOWN" | "FAIL" | "FAILING"))
    }

    /// Whether someone other than sgpu holds the node out of service: DOWN or FAIL (any
    /// reason), or drained for a reason sgpu did not write. sgpu neither drains such a node
    /// (its reason would replace the admin's) nor resumes it.
    pub fn held_by_others(&self) -> bool {
        self.down_or_failed() || (self.drained() && !self.drained_by_sgpu())
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
            max_output: MAX_OUTPUT,
        })
    }

    /// Sets how long one call may take.
    pub fn with_timeout(mut self, timeout: Duration) -> Scontrol {
        self.timeout = timeout;
        self
    }

    /// Sets the most output one call may print (default [`MAX_OUTPUT`]).
    pub fn with_max_output(mut self, bytes: usize) -> Scontrol {
        self.max_output = bytes;
        self
    }

    /// The binary in use.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `squeue`, from the directory `scontrol` is in (Slurm installs its clients together).
    pub fn squeue_path(&self) -> PathBuf {
        self.path.with_file_name("squeue")
    }

    fn run(&self, args: &[String]) -> Result<String, SlurmctlError> {
        self.run_env(args, &[])
    }

    /// Runs `scontrol ARGS` with `env` added to its environment, under the timeout.
    fn run_env(&self, args: &[String], env: &[(&str, &str)]) -> Result<String, SlurmctlError> {
        self.run_program(&self.path, args, env)
    }

    /// Runs `program ARGS` (a Slurm client) with `env` added to its environment: stdout and
    /// stderr read while it runs, under the timeout and the output cap ([`sgpu_proc::run`]).
    pub fn run_program(
        &self,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<String, SlurmctlError> {
        let mut cmd = Command::new(program);
        cmd.args(args);
        for (k, _) in std::env::vars_os() {
            if k.to_str().is_some_and(output_changing_var) {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().copied());
        let limits = sgpu_proc::Limits::new(self.timeout).max_stdout(self.max_output);
        let out = sgpu_proc::run(&mut cmd, &limits).map_err(|e| match e {
            sgpu_proc::ProcError::Spawn { source, .. } => SlurmctlError::Spawn {
                path: program.to_path_buf(),
                source,
            },
            sgpu_proc::ProcError::Timeout { command, timeout } => {
                SlurmctlError::Timeout { command, timeout }
            }
            other => SlurmctlError::Output(other),
        })?;
        if !out.status.success() {
            return Err(SlurmctlError::Failed {
                command: sgpu_proc::describe(&cmd),
                status: out.status.to_string(),
                stderr: out.stderr_text(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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

    /// Returns `node` to service from sgpu's drain: `State=UNDRAIN` (Slurm 20.11+, so 22.05
    /// through 26.05), which clears the drain flag only. Unlike `RESUME` it never brings back
    /// a node that is also DOWN for another reason (slurmd gone, an admin's DOWN): that node
    /// stays DOWN until Slurm or the admin returns it.
    pub fn resume(&self, node: &str) -> Result<(), SlurmctlError> {
        if !valid_node_name(node) {
            return Err(SlurmctlError::BadNodeName(node.to_string()));
        }
        self.run(&[
            "update".into(),
            format!("NodeName={node}"),
            "State=UNDRAIN".into(),
        ])
        .map(|_| ())
    }

    /// `SLURM_TIME_FORMAT=%s squeue -h -t all -j JOB -O` [`JOB_FORMAT`]: the job's id, state,
    /// start, end and restart count, from fields no user can write into.
    pub fn show_job_trusted(&self, job_id: u32) -> Result<String, SlurmctlError> {
        self.run_program(
            &self.squeue_path(),
            &[
                "--noheader".into(),
                "--states=all".into(),
                format!("--jobs={job_id}"),
                format!("--Format={JOB_FORMAT}"),
            ],
            &[("SLURM_TIME_FORMAT", "%s")],
        )
    }

    /// Every node of the cluster, from `scontrol show node -o`.
    pub fn nodes(&self) -> Result<Vec<NodeInfo>, SlurmctlError> {
        let args = ["show".into(), "node".into(), "-o".into()];
        let out = self.run(&args)?;
        let records = node_records(&out).map_err(|e| SlurmctlError::Parse {
            command: format!("{} {}", self.path.display(), args.join(" ")),
            what: e.to_string(),
        })?;
        Ok(records.iter().filter_map(|r| parse_node_info(r)).collect())
    }

    /// The node's state and reason, from `scontrol show node -o`.
    pub fn node_state(&self, node: &str) -> Result<NodeState, SlurmctlError> {
        if !valid_node_name(node) {
            return Err(SlurmctlError::BadNodeName(node.to_string()));
        }
        let args = ["show".into(), "node".into(), "-o".into(), node.into()];
        let out = self.run(&args)?;
        let records = node_records(&out).map_err(|e| SlurmctlError::Parse {
            command: format!("{} {}", self.path.display(), args.join(" ")),
            what: e.to_string(),
        })?;
        let mine = records
            .iter()
            .find(|r| node_fields(r).first().is_some_and(|(_, v)| v == node));
        Ok(parse_node_line(mine.map(String::as_str).unwrap_or("")))
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
    /// When the reason was set (Unix seconds), from Slurm's `[user@time]` suffix; `None`
    /// when unreadable or when slurmctld appended to the reason (23.02+: the time is then
    /// slurmctld's, later than the drain's, which is lost).
    pub reason_time: Option<i64>,
}

/// The `Key=value` fields of one `scontrol show -o` line, in order; a value runs on (spaces
/// included) until the next token that looks like `Key=`. Only for text no one but Slurm and
/// admins writes: node records go through [`node_fields`], and jobs are never read from
/// `scontrol show job` (a job name like `x JobState=COMPLETED` forges fields there) but
/// from `squeue` with [`JOB_FORMAT`].
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

/// The free-text fields that end a `scontrol show node -o` line, in Slurm's order: set by
/// admins (`scontrol update`), never by users, and the only node fields with spaces in them
/// besides `OS=`.
const NODE_TEXT_TAIL: [&str; 3] = ["Reason", "Comment", "Extra"];

/// The fields of one `scontrol show node -o` record (see [`node_records`]), read so that text
/// in the free-text tail (`Reason=`, `Comment=`, `Extra=`) can never stand in for a field
/// Slurm prints before it: the tail is cut only at its own keys (a `Reason` runs to the last
/// ` Comment=`/` Extra=` on the line), and readers take each key's first occurrence.
pub fn node_fields(record: &str) -> Vec<(&str, String)> {
    let tail_at = NODE_TEXT_TAIL
        .iter()
        .filter_map(|k| {
            let needle = format!(" {k}=");
            record.find(&needle).map(|i| i + 1)
        })
        .min();
    let (head, tail) = match tail_at {
        Some(i) => record.split_at(i),
        None => (record, ""),
    };
    let mut out = fields(head);
    // the tail: each of its keys at its last occurrence, in Slurm's order
    let tail = tail.trim_end();
    let padded = format!(" {tail}");
    let mut cuts: Vec<(usize, &str)> = Vec::new();
    let mut end = padded.len();
    for k in NODE_TEXT_TAIL.iter().rev() {
        // `i` in `padded` is where the key starts in `tail`
        if let Some(i) = padded[..end].rfind(&format!(" {k}=")) {
            cuts.push((i, k));
            end = i;
        }
    }
    cuts.reverse();
    for (n, (i, k)) in cuts.iter().enumerate() {
        let stop = cuts.get(n + 1).map(|(j, _)| *j).unwrap_or(tail.len());
        let value = tail[i + k.len() + 1..stop].trim_end();
        out.push((k, value.to_string()));
    }
    out
}

/// `scontrol show node -o` output that is not a list of node records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordsError {
    /// Output before the first `NodeName=` line.
    #[error("a first line that is not a node record: {0:?}")]
    NotARecord(String),
    /// A node listed twice (the first field of its records).
    #[error(
        "{0} twice: a node's Reason, Comment or Extra holds a line break followed by \
         `NodeName=`; replace that text with `scontrol update NodeName=... Reason=...`"
    )]
    Twice(String),
}

/// Splits `scontrol show node -o` output into one record per node. A line that does not
/// start with `NodeName=` continues the record before it (a line break inside an admin's
/// `Reason=`); a node listed twice is an error (such a line break imitating a record).
pub fn node_records(output: &str) -> Result<Vec<String>, RecordsError> {
    let mut records: Vec<String> = Vec::new();
    for line in output.lines() {
        if line.starts_with("NodeName=") {
            records.push(line.to_string());
        } else if let Some(last) = records.last_mut() {
            last.push('\n');
            last.push_str(line);
        } else if !line.trim().is_empty() {
            return Err(RecordsError::NotARecord(line.to_string()));
        }
    }
    let mut names: Vec<&str> = records
        .iter()
        .filter_map(|r| r.split_whitespace().next())
        .collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(RecordsError::Twice(w[0].to_string()));
    }
    Ok(records)
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
    node_state_of(&node_fields(line))
}

/// State and reason from a record's fields (each key's first occurrence).
fn node_state_of(f: &[(&str, String)]) -> NodeState {
    let get = |key: &str| f.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str());
    let state = get("State").unwrap_or_default().to_string();
    let reason = get("Reason")
        .map(|r| split_reason(r).0)
        .filter(|r| !r.is_empty() && r != "(null)");
    NodeState { state, reason }
}

/// Reads one line of `scontrol show node -o` into a [`NodeInfo`] (`None`: no `NodeName=`).
pub fn parse_node_info(line: &str) -> Option<NodeInfo> {
    let f = node_fields(line);
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
        .filter(|r| split_appended(&split_reason(r).0).1.is_none())
        .and_then(|r| split_reason(r).1)
        .and_then(parse_slurm_time);
    Some(NodeInfo {
        name,
        partitions,
        state: node_state_of(&f),
        reason_time,
    })
}

#[cfg(test)]
mod tests;
