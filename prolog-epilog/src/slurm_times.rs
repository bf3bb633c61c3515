//! The job's window as slurmctld has it (`StartTime`, `EndTime`), for the job-end record.
//!
//! `sacct`'s `Elapsed` is `EndTime − StartTime`, whole seconds set by slurmctld; the gates'
//! own window (prolog start to epilog start) is later by their lag. Slurm 22.05 puts neither
//! time in the Prolog/Epilog environment, so the epilog asks slurmctld once per GPU job per
//! node, under a short deadline. The job is completing by then, so its `EndTime` is final;
//! while slurmctld still shows it running (its `EndTime` is then the time limit's), the
//! epilog asks again a few times, then goes without. The prolog asks nothing: no RPC on the
//! job's launch path.
//!
//! Users write into `scontrol show job` (job name, comment, work dir, output paths, ...), and
//! a name like `x JobState=COMPLETED StartTime=1 EndTime=2` forges fields there; Slurm 22.05's
//! `scontrol` has no `--json`, and `squeue --json` ignores `--jobs` (it prints every job of
//! the cluster). So the epilog asks `squeue` for exactly the fields it needs, none of which a
//! user can set ([`sgpu_nodelib::slurmctl::JOB_FORMAT`]: job id, state, start, end, restart
//! count; numbers and state names only), and refuses any line not of that form.
//!
//! Since Slurm 23.02 slurmd also puts `SLURM_JOB_START_TIME`/`SLURM_JOB_END_TIME` in the
//! Prolog/Epilog environment (from slurmctld's job record; slurmd builds the hooks'
//! environment itself, users cannot set it). Measured on 26.05.3 (`tests/tests/
//! slurm_release.rs`): in the Epilog the end is the job's real end (squeue's `EndTime`), in
//! the Prolog it is the projected one (start + time limit). Where both are there and the end
//! is not in the future, the epilog uses them and asks nothing ([`from_hook_env`]); else
//! (22.05, a projected end) it asks squeue as above.
//!
//! The answer is then checked against what the node measured: a Slurm window that does not
//! overlap the prolog-to-epilog window, or that belongs to another run of the job, is not
//! used (the record keeps the node's window; the epilog logs an error line).

use std::time::Duration;

use sgpu_nodelib::config::Config;
use sgpu_nodelib::slurmctl::{JOB_FORMAT, Scontrol, SlurmctlError};
use sgpu_spool::SlurmWindow;

/// The deadline of one `squeue` call from the epilog.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How many times the epilog asks while the job's end is not final yet.
pub const ATTEMPTS: u32 = 3;
/// The pause between those attempts.
pub const RETRY_PAUSE: Duration = Duration::from_millis(300);
/// The most `squeue` may print for one job (a line is ~40 bytes; a heterogeneous job lists
/// a line per component).
pub const MAX_OUTPUT: usize = 64 << 10;

/// Job states whose `EndTime` is the job's real end (`COMPLETING` and the final states).
const ENDED_STATES: &[&str] = &[
    "COMPLETING",
    "COMPLETED",
    "CANCELLED",
    "FAILED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "OUT_OF_MEMORY",
];

/// Why the job's Slurm window is not known (or not used).
#[derive(Debug, thiserror::Error)]
pub enum TimesError {
    /// squeue could not be found, run, or did not answer in time.
    #[error("{0}")]
    Query(#[from] SlurmctlError),
    /// The output has no line for the job.
    #[error("`squeue --jobs={0}` printed no line for job {0}")]
    NoJob(u32),
    /// A line is not of the form sgpu asked for.
    #[error(
        "`squeue --Format={format}` printed {line:?}, not `JOBID|STATE|START|END|RESTARTS|`;          is this squeue from the same Slurm as slurmctld?",
        format = JOB_FORMAT
    )]
    BadLine {
        /// The line.
        line: String,
    },
    /// A time is not set yet (`Unknown`, `None`, `N/A`, 0).
    #[error("{field}={value}: not set yet")]
    Unset {
        /// `StartTime` or `EndTime`.
        field: &'static str,
        /// What squeue printed.
        value: String,
    },
    /// A time is not Unix seconds (`SLURM_TIME_FORMAT=%s` was not honoured).
    #[error("{field}={value} is not Unix seconds; does this squeue honour SLURM_TIME_FORMAT?")]
    Malformed {
        /// `StartTime` or `EndTime`.
        field: &'static str,
        /// What squeue printed.
        value: String,
    },
    /// The job has not ended as far as slurmctld knows, so `EndTime` is only projected.
    #[error("JobState={0}: EndTime is not final yet")]
    NotEnded(String),
    /// `EndTime` is before `StartTime`.
    #[error("EndTime={end} is before StartTime={start}")]
    Reversed {
        /// StartTime, s.
        start: u64,
        /// EndTime, s.
        end: u64,
    },
    /// slurmctld's answer is about another run of the job (it was requeued meanwhile).
    #[error("slurmctld shows run {slurm} of the job, this epilog ends run {node}")]
    OtherRun {
        /// Slurm's restart count.
        slurm: u32,
        /// The run the prolog noted.
        node: u32,
    },
    /// slurmctld's window and the node's do not overlap: one of them is wrong.
    #[error(
        "slurmctld's window {start_s}..{end_s} s does not overlap the node's prolog-to-epilog          window {node_start_ms}..{node_end_ms} ms (clocks apart?)"
    )]
    NoOverlap {
        /// Slurm's start, s.
        start_s: u64,
        /// Slurm's end, s.
        end_s: u64,
        /// The prolog's start, ms.
        node_start_ms: u64,
        /// The epilog's start, ms.
        node_end_ms: u64,
    },
}

impl TimesError {
    /// Whether asking again shortly may give an answer (slurmctld has not closed the job yet).
    pub fn may_change(&self) -> bool {
        matches!(
            self,
            TimesError::NotEnded(_)
                | TimesError::Unset {
                    field: "EndTime",
                    ..
                }
        )
    }

    /// Whether the answer contradicts what the node measured (logged as an error, not a
    /// warning: Slurm's record or this node's clock is wrong).
    pub fn contradicts_node(&self) -> bool {
        matches!(
            self,
            TimesError::NoOverlap { .. } | TimesError::OtherRun { .. }
        )
    }
}

/// One job as `squeue --Format=`[`JOB_FORMAT`] prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmJob {
    /// The job's state, e.g. `COMPLETING`.
    pub state: String,
    /// `StartTime` as printed.
    pub start: String,
    /// `EndTime` as printed.
    pub end: String,
    /// How often the job was restarted (requeued): its run.
    pub restarts: u32,
}

/// Reads job `job_id`'s line from `squeue --noheader --Format=`[`JOB_FORMAT`] output. Every
/// line must have exactly the five fields, each a number or a state name, else it is an error
/// (the format holds no user text, so anything else is not the output sgpu asked for).
pub fn parse_job_line(output: &str, job_id: u32) -> Result<SlurmJob, TimesError> {
    let id = job_id.to_string();
    let mut found = None;
    for line in output.lines().filter(|l| !l.trim().is_empty()) {
        let bad = || TimesError::BadLine {
            line: line.to_string(),
        };
        let parts: Vec<&str> = line.trim_end().split('|').collect();
        let [jid, state, start, end, restarts, ""] = parts.as_slice() else {
            return Err(bad());
        };
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '/' | '+'))
        };
        if ![jid, state, start, end, restarts].iter().all(|s| plain(s)) {
            return Err(bad());
        }
        let restarts: u32 = restarts.parse().map_err(|_| bad())?;
        if *jid == id && found.is_none() {
            found = Some(SlurmJob {
                state: state.to_string(),
                start: start.to_string(),
                end: end.to_string(),
                restarts,
            });
        }
    }
    found.ok_or(TimesError::NoJob(job_id))
}

fn epoch(field: &'static str, value: &str) -> Result<u64, TimesError> {
    match value {
        "Unknown" | "None" | "N/A" | "0" | "" => Err(TimesError::Unset {
            field,
            value: value.to_string(),
        }),
        v => v.parse().map_err(|_| TimesError::Malformed {
            field,
            value: value.to_string(),
        }),
    }
}

/// Reads job `job_id`'s window from `squeue` output (see [`parse_job_line`]) printed with
/// `SLURM_TIME_FORMAT=%s`; the job must have ended (`COMPLETING` or a final state).
pub fn parse_job_times(output: &str, job_id: u32) -> Result<(SlurmWindow, u32), TimesError> {
    let job = parse_job_line(output, job_id)?;
    if !ENDED_STATES.contains(&job.state.as_str()) {
        return Err(TimesError::NotEnded(job.state));
    }
    let start_s = epoch("StartTime", &job.start)?;
    let end_s = epoch("EndTime", &job.end)?;
    if end_s < start_s {
        return Err(TimesError::Reversed {
            start: start_s,
            end: end_s,
        });
    }
    Ok((SlurmWindow { start_s, end_s }, job.restarts))
}

/// What the node measured of the run: the run the prolog noted and its prolog-to-epilog
/// window, ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeRun {
    /// The run (restart count) the prolog noted.
    pub run: u32,
    /// The prolog's start, Unix ms.
    pub start_ms: u64,
    /// The epilog's start, Unix ms.
    pub end_ms: u64,
}

/// Checks Slurm's window against the node's: same run, and overlapping (Slurm's whole
/// seconds count to the end of their second).
pub fn cross_check(window: SlurmWindow, restarts: u32, node: &NodeRun) -> Result<(), TimesError> {
    if restarts != node.run {
        return Err(TimesError::OtherRun {
            slurm: restarts,
            node: node.run,
        });
    }
    let (s, e) = window.ms();
    if s > node.end_ms || e.saturating_add(999) < node.start_ms {
        return Err(TimesError::NoOverlap {
            start_s: window.start_s,
            end_s: window.end_s,
            node_start_ms: node.start_ms,
            node_end_ms: node.end_ms,
        });
    }
    Ok(())
}

/// Asks slurmctld for the window of `job_id`, at most [`ATTEMPTS`] times while its end is
/// not final, each call under [`QUERY_TIMEOUT`], and checks it against `node` when given.
pub fn query(
    scontrol: &Scontrol,
    job_id: u32,
    node: Option<&NodeRun>,
) -> Result<SlurmWindow, TimesError> {
    let mut attempt = 1;
    loop {
        let out = scontrol.show_job_trusted(job_id)?;
        match parse_job_times(&out, job_id) {
            Err(e) if e.may_change() && attempt < ATTEMPTS => {
                attempt += 1;
                std::thread::sleep(RETRY_PAUSE);
            }
            Err(e) => return Err(e),
            Ok((window, restarts)) => {
                if let Some(n) = node {
                    cross_check(window, restarts, n)?;
                }
                return Ok(window);
            }
        }
    }
}

/// The job's window from the hook's environment (`get` reads a variable): Slurm 23.02+'s
/// `SLURM_JOB_START_TIME` and `SLURM_JOB_END_TIME` (Unix seconds), with the run from
/// `SLURM_JOB_RESTART_COUNT` when set. `None` when either is missing (Slurm 22.05), not a
/// positive number, reversed, or the end is after `now_s` (+1 s of clock allowance): a
/// projected end, not the job's (as in the Prolog).
pub fn from_hook_env(
    get: impl Fn(&str) -> Option<String>,
    now_s: u64,
) -> Option<(SlurmWindow, Option<u32>)> {
    let num = |k: &str| -> Option<u64> {
        get(k)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|v| *v > 0)
    };
    let start_s = num("SLURM_JOB_START_TIME")?;
    let end_s = num("SLURM_JOB_END_TIME")?;
    if end_s < start_s || end_s > now_s.saturating_add(1) {
        return None;
    }
    let restarts = get("SLURM_JOB_RESTART_COUNT").and_then(|v| v.trim().parse().ok());
    Some((SlurmWindow { start_s, end_s }, restarts))
}

/// The window for the job-end record when `slurm_job_times` is on: `Ok(None)` when it is off.
/// From the Epilog's environment where Slurm put a final one there ([`from_hook_env`]), else
/// from squeue ([`query`]); checked against `node` either way.
pub fn for_epilog(
    config: &Config,
    job_id: u32,
    node: Option<&NodeRun>,
) -> Result<Option<SlurmWindow>, TimesError> {
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for_epilog_with(config, job_id, node, |k| std::env::var(k).ok(), now_s)
}

/// [`for_epilog`] with the environment read through `get` and the time `now_s`.
pub fn for_epilog_with(
    config: &Config,
    job_id: u32,
    node: Option<&NodeRun>,
    get: impl Fn(&str) -> Option<String>,
    now_s: u64,
) -> Result<Option<SlurmWindow>, TimesError> {
    if !config.slurm_job_times {
        return Ok(None);
    }
    if let Some((window, restarts)) = from_hook_env(get, now_s) {
        if let Some(n) = node {
            cross_check(window, restarts.unwrap_or(n.run), n)?;
        }
        return Ok(Some(window));
    }
    let scontrol = Scontrol::locate(config.scontrol.as_deref())?
        .with_timeout(QUERY_TIMEOUT)
        .with_max_output(MAX_OUTPUT);
    query(&scontrol, job_id, node).map(Some)
}

#[cfg(test)]
mod tests;
