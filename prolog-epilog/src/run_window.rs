//! Slurm's window of a run that slurmctld no longer shows: from slurmdbd (`sacct`).
//!
//! When a requeue (the admin's, preemption's, or a failed prolog's) ends a run, the run's
//! epilog asks slurmctld too late: the job already waits for its next run, and
//! [`crate::slurm_times`] refuses that answer (another run). slurmdbd keeps every run
//! (`sacct --duplicates`), each with its own start and end, which is what `sacct` bills.
//! So the epilog asks `sacct --duplicates -X -n -P -o JobIDRaw,Start,End,State -j ID` with
//! `SLURM_TIME_FORMAT=%s` (no field a user can set: ids, times, state names; any other line
//! is refused), under a deadline and an output cap, and takes the finished run whose window
//! overlaps what the node measured of this run. slurmdbd hears of the requeue a moment after
//! slurmctld: the epilog asks again a few times. Without slurmdbd (or an answer) the record
//! keeps the node's window, as before.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sgpu_spool::SlurmWindow;

/// The deadline of one `sacct` call.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How many times the epilog asks while slurmdbd has not recorded the run's end.
pub const ATTEMPTS: u32 = 4;
/// The pause between attempts.
pub const RETRY_PAUSE: Duration = Duration::from_millis(400);
/// The most output read from one call (a line is ~40 bytes; a job requeued a thousand times
/// fits).
pub const MAX_OUTPUT: u64 = 64 << 10;

/// Why slurmdbd gave no window for the run (the epilog then keeps the node's window).
#[derive(Debug, thiserror::Error)]
pub enum SacctError {
    /// A line of `sacct`'s answer is not `JobIDRaw|Start|End|State` of plain words.
    #[error(
        "unexpected sacct line {0:?}: the program sgpu ran as sacct is not Slurm's, or \
         prints other fields; check `scontrol` in sgpu.toml (sacct is looked up beside it)"
    )]
    Line(String),
    /// `sacct` could not be started.
    #[error(
        "cannot run {sacct}: {source}; set `scontrol` in sgpu.toml to the scontrol of the \
         Slurm whose sacct to use (sacct is looked up beside it)"
    )]
    Spawn {
        /// The program.
        sacct: String,
        /// Why.
        source: std::io::Error,
    },
    /// `sacct`'s stdout could not be captured.
    #[error("sacct's output is not readable")]
    NoOutput,
    /// `sacct` did not exit within [`QUERY_TIMEOUT`].
    #[error(
        "sacct did not answer within {QUERY_TIMEOUT:?}: check that slurmdbd is up and \
         answers (`sacct -j ID` by hand)"
    )]
    Timeout,
    /// Waiting for `sacct` failed.
    #[error("waiting for sacct: {0}")]
    Wait(std::io::Error),
    /// The thread reading `sacct`'s output died.
    #[error("sacct's reader failed")]
    Reader,
    /// `sacct`'s output could not be read.
    #[error("reading sacct's output: {0}")]
    Read(std::io::Error),
    /// `sacct` exited with an error.
    #[error("sacct exited with {0}: run it by hand to see why (slurmdbd down, no accounting)")]
    Exit(std::process::ExitStatus),
    /// slurmdbd lists no finished run where the node measured this one.
    #[error("slurmdbd has no finished run overlapping {start_ms}..{end_ms} ms")]
    NoRun {
        /// The node's start of the run, Unix ms.
        start_ms: u64,
        /// The node's end of the run, Unix ms.
        end_ms: u64,
    },
}

/// One finished run in `sacct`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SacctRun {
    /// The run's window, Unix seconds.
    pub window: SlurmWindow,
}

/// Parses `JobIDRaw|Start|End|State` lines (`-P`; a trailing `|`, as `-p` prints, is taken) for `job_id`; a line of another shape is an
/// error (the output is not what was asked for), lines of other ids (steps) are skipped.
/// Runs without an end yet (`Unknown`) are left out.
pub fn parse(out: &str, job_id: u32) -> Result<Vec<SacctRun>, SacctError> {
    let id = job_id.to_string();
    let mut runs = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        // `-P` separates fields without a trailing `|`; `-p` adds one
        let line = line.strip_suffix('|').unwrap_or(line);
        let f: Vec<&str> = line.split('|').collect();
        let [jid, start, end, state] = f.as_slice() else {
            return Err(SacctError::Line(line.to_string()));
        };
        let plain = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b" _.+".contains(&b))
        };
        if ![jid, start, end, state].iter().all(|s| plain(s)) {
            return Err(SacctError::Line(line.to_string()));
        }
        if *jid != id {
            continue;
        }
        let (Ok(start_s), Ok(end_s)) = (start.parse::<u64>(), end.parse::<u64>()) else {
            continue;
        };
        if end_s >= start_s && start_s > 0 {
            runs.push(SacctRun {
                window: SlurmWindow { start_s, end_s },
            });
        }
    }
    Ok(runs)
}

/// The run of `runs` that is the node's (`node_start_ms..node_end_ms`): the one whose window
/// overlaps it (Slurm's whole seconds, so its end rounds up), the latest start if several.
pub fn pick(runs: &[SacctRun], node_start_ms: u64, node_end_ms: u64) -> Option<SlurmWindow> {
    runs.iter()
        .map(|r| r.window)
        .filter(|w| {
            let (s, e) = w.ms();
            s <= node_end_ms && e.saturating_add(999) >= node_start_ms
        })
        .max_by_key(|w| w.start_s)
}

/// Runs `sacct` once: its stdout (at most [`MAX_OUTPUT`] bytes), or why not.
fn sacct_once(sacct: &str, job_id: u32) -> Result<String, SacctError> {
    let mut child = Command::new(sacct)
        .env("SLURM_TIME_FORMAT", "%s")
        .args([
            "--duplicates",
            "-X",
            "-n",
            "-P",
            "-o",
            "JobIDRaw,Start,End,State",
            "-j",
            &job_id.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| SacctError::Spawn {
            sacct: sacct.to_string(),
            source,
        })?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(SacctError::NoOutput);
    };
    // read while it runs (bounded), in a thread, so the deadline holds
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let r = stdout.take(MAX_OUTPUT).read_to_end(&mut buf);
        r.map(|_| buf)
    });
    let began = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if began.elapsed() < QUERY_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SacctError::Timeout);
            }
            Err(e) => return Err(SacctError::Wait(e)),
        }
    };
    let out = reader
        .join()
        .map_err(|_| SacctError::Reader)?
        .map_err(SacctError::Read)?;
    if !status.success() {
        return Err(SacctError::Exit(status));
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Where `sacct` is: beside the configured `scontrol`, else in the usual places (slurmd
/// gives the epilog no `PATH`).
pub fn locate_sacct(scontrol: Option<&std::path::Path>) -> Option<std::path::PathBuf> {
    let beside = scontrol.and_then(|s| s.parent()).map(|d| d.join("sacct"));
    beside
        .into_iter()
        .chain(
            [
                "/usr/bin/sacct",
                "/usr/local/bin/sacct",
                "/opt/slurm/bin/sacct",
            ]
            .into_iter()
            .map(std::path::PathBuf::from),
        )
        .find(|p| p.is_file())
}

/// Slurm's window of the run the node measured as `node_start_ms..node_end_ms`, from
/// slurmdbd, asking the `sacct` at `sacct_path`.
pub fn from_slurmdbd(
    sacct_path: Option<&str>,
    job_id: u32,
    node_start_ms: u64,
    node_end_ms: u64,
) -> Result<SlurmWindow, SacctError> {
    let sacct = sacct_path.unwrap_or("sacct");
    let mut last = SacctError::NoRun {
        start_ms: node_start_ms,
        end_ms: node_end_ms,
    };
    for attempt in 1..=ATTEMPTS {
        match sacct_once(sacct, job_id).and_then(|out| parse(&out, job_id)) {
            Ok(runs) => match pick(&runs, node_start_ms, node_end_ms) {
                Some(w) => return Ok(w),
                None => {
                    last = SacctError::NoRun {
                        start_ms: node_start_ms,
                        end_ms: node_end_ms,
                    }
                }
            },
            Err(e) => last = e,
        }
        if attempt < ATTEMPTS {
            std::thread::sleep(RETRY_PAUSE);
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_run_the_node_measured() {
        // as sacct -P prints it (seen on Slurm 22.05), and a line with -p's trailing `|`
        let out = "9|1000|1003|REQUEUED\n9|1010|1012|COMPLETED|\n9.batch|1000|1003|CANCELLED\n";
        let runs = parse(out, 9).unwrap();
        assert_eq!(runs.len(), 2);
        // the node measured 1000.2 s .. 1003.4 s: the first run
        let w = pick(&runs, 1_000_200, 1_003_400).unwrap();
        assert_eq!((w.start_s, w.end_s), (1000, 1003));
        let w = pick(&runs, 1_010_100, 1_012_300).unwrap();
        assert_eq!((w.start_s, w.end_s), (1010, 1012));
        assert!(pick(&runs, 2_000_000, 2_001_000).is_none());
    }

    #[test]
    fn unfinished_runs_are_left_out_and_odd_lines_refused() {
        let runs = parse("9|1000|Unknown|RUNNING|\n", 9).unwrap();
        assert!(runs.is_empty());
        assert!(parse("9|1000|1003|COMPLETED|x|\n", 9).is_err());
        assert!(parse("9|1000|COMPLETED\n", 9).is_err());
        assert!(parse("9|10=00|1003|COMPLETED|\n", 9).is_err());
    }

    #[test]
    fn a_missing_sacct_is_an_error_not_a_hang() {
        let e = from_slurmdbd(Some("/nonexistent/sacct"), 9, 0, 1).unwrap_err();
        assert!(e.to_string().contains("cannot run"), "{e}");
    }
}
