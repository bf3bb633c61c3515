//! Active checks: site commands (DCGM diagnostics, a matmul or bandwidth test) that exercise a
//! node's GPUs, run on idle nodes inside a Slurm job of the maintenance partition.
//!
//! This module is the contract and the runner; `sgpu-healthd` schedules the jobs
//! (`healthd/src/active.rs`) and `sgpu check --active` runs one by hand.
//!
//! **The command's contract** ([`judge`]): it runs as root with stdin from `/dev/null`, in
//! `/`, in a process group of its own, with an environment of exactly `PATH` ([`CHECK_PATH`]),
//! `SGPU_ACTIVE_CHECK` (the check's name), `SGPU_NODE` (the Slurm node name) and, inside
//! sgpu's Slurm job, `SLURM_JOB_ID` and `SLURM_JOB_PARTITION`. With `format = "exit"` (the
//! default) its exit code is the verdict:
//!
//! | exit | outcome |
//! |---|---|
//! | 0 | pass |
//! | 1 | fail: the node is faulty (the check's severity, `drain` by default) |
//! | 2 | warn: reported, the node stays in service |
//! | 126, 127 | error: the command could not run (not executable, not found); never drains |
//! | any other, or killed by a signal | fail |
//!
//! and the last non-empty line of stdout (else stderr) names the failing measurement, e.g.
//! `matmul 312 TFLOPS on gpu3, expected at least 600`; it becomes the drain reason
//! (`sgpu: active.<name>: <line>`). Past `deadline_s` the whole process group is killed
//! (`SIGKILL`) and the outcome is `timeout`, which fails like `fail`.
//!
//! With `format = "dcgmi"` stdout is `dcgmi diag -r N -j`'s JSON ([`dcgmi`]): a test result
//! `Fail` fails (the reason names the test, the GPU and DCGM's message), `Warn` warns, and
//! the exit code decides only when there is no JSON (a non-zero exit without JSON is an
//! `error`: DCGM's host engine not running, for instance). With `format = "json"` stdout is
//! one object `{"status": "pass"|"warn"|"fail", "message": "...", "gpu": N}` (`message` and
//! `gpu` optional).
//!
//! The result of each run is kept in `<state_dir>/active/<name>.json` ([`ActiveResult`],
//! [`save_result`]); healthd turns the newest into a check result `active.<name>`
//! ([`to_check_result`]) that goes through the same policy, breaker, `/status` and
//! `/metrics` as every check. Every run, whatever its outcome, is also a line of the node's
//! history (`sgpu history`, action `active_check`: [`record_run`]), so an admin sees when a
//! node was last stress-tested and what it measured.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::catalogue::Severity;
use crate::checks::{CheckResult, Status};

pub mod dcgmi;

/// Check ids of active checks are this prefix and the check's name (`active.dcgm-r2`).
pub const CHECK_PREFIX: &str = "active.";

/// The `PATH` an active check runs with.
pub const CHECK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Most stdout read from a check (a `dcgmi diag -r 4 -j` answer is a few hundred KiB).
pub const MAX_STDOUT: usize = 16 << 20;

/// The default of `pending_timeout_s`: how long sgpu's job may wait in the queue.
pub const DEFAULT_PENDING_TIMEOUT_S: u64 = 600;

/// Slurm's time limit for sgpu's job is the check's deadline plus this (the runner kills
/// the check at its deadline; Slurm's limit only catches a runner that is itself stuck).
pub const JOB_TIME_MARGIN: Duration = Duration::from_secs(60);

/// How a check's output is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// The exit code only (and the last line as the measurement).
    Exit,
    /// `dcgmi diag -j`'s JSON ([`dcgmi`]).
    Dcgmi,
    /// One object `{"status", "message", "gpu"}`.
    Json,
}

impl OutputFormat {
    /// The name written in `sgpu.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Exit => "exit",
            OutputFormat::Dcgmi => "dcgmi",
            OutputFormat::Json => "json",
        }
    }

    /// Parses a name as written in `sgpu.toml`.
    pub fn parse(s: &str) -> Option<OutputFormat> {
        match s {
            "exit" => Some(OutputFormat::Exit),
            "dcgmi" => Some(OutputFormat::Dcgmi),
            "json" => Some(OutputFormat::Json),
            _ => None,
        }
    }
}

/// One configured active check (`[[active.check]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveCheck {
    /// Its name: letters, digits, `-`, `_`, `.` (the check id is `active.<name>`).
    pub name: String,
    /// The command and its arguments (no shell).
    pub command: Vec<String>,
    /// How often each node runs it.
    pub interval: Duration,
    /// The nodes' runs are spread over this much of each interval (at most the interval).
    pub stagger: Duration,
    /// Past this the command's process group is killed and the run is a `timeout`.
    pub deadline: Duration,
    /// How its output is read.
    pub format: OutputFormat,
    /// What a failure costs (`drain` by default; `warn`, `info`).
    pub severity: Severity,
}

impl ActiveCheck {
    /// The check id, `active.<name>`.
    pub fn id(&self) -> String {
        format!("{CHECK_PREFIX}{}", self.name)
    }
}

/// The `[active]` table: how sgpu asks Slurm for a node, and the checks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ActiveSettings {
    /// The maintenance partition sgpu's jobs go to (required when checks are listed).
    pub partition: Option<String>,
    /// A QOS for sgpu's jobs (sites with slurmdbd), e.g. one at the lowest priority.
    pub qos: Option<String>,
    /// A job still pending after this is cancelled; the check is tried again when the node
    /// is idle.
    pub pending_timeout: Duration,
    /// The `sbatch` binary; `None`: the one beside `scontrol`.
    pub sbatch: Option<PathBuf>,
    /// The checks.
    pub checks: Vec<ActiveCheck>,
}

impl ActiveSettings {
    /// The check named `name`.
    pub fn check(&self, name: &str) -> Option<&ActiveCheck> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// Whether `name` is a valid check name (it is used in file names, job names and ids).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
}

/// What one run found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Healthy.
    Pass,
    /// A warning: reported, the node stays in service.
    Warn,
    /// The node is faulty.
    Fail,
    /// The command did not finish within its deadline; it was killed. Fails like `Fail`.
    Timeout,
    /// The check could not run or its answer could not be read: neither pass nor fail.
    Error,
}

impl Outcome {
    /// `pass`, `warn`, `fail`, `timeout`, `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Warn => "warn",
            Outcome::Fail => "fail",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
        }
    }

    /// The value of `sgpu_active_check_result`: 0 pass, 1 warn, 2 fail or timeout, 3 error.
    pub fn metric_value(self) -> u8 {
        match self {
            Outcome::Pass => 0,
            Outcome::Warn => 1,
            Outcome::Fail | Outcome::Timeout => 2,
            Outcome::Error => 3,
        }
    }

    /// The exit code of the runner (`sgpu-healthd --run-active`, `sgpu check --active`):
    /// 0 pass, 1 warn, 2 fail or timeout, 3 error (as `sgpu check`).
    pub fn exit_code(self) -> i32 {
        i32::from(self.metric_value())
    }
}

/// One run of an active check, as kept in `<state_dir>/active/<name>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveResult {
    /// The check's name.
    pub check: String,
    /// The node it ran on.
    pub node: String,
    /// What it found.
    pub outcome: Outcome,
    /// One line: the failing measurement, or what the check said.
    pub message: String,
    /// The GPU (NVML index) the finding is about, when it names exactly one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
    /// The command's exit code (absent when killed or not started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Unix ms when the command started.
    pub started_at_ms: u64,
    /// Unix ms when it ended (or was killed).
    pub finished_at_ms: u64,
    /// sgpu's Slurm job it ran in (absent: run by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<u64>,
}

impl ActiveResult {
    /// How long the run took.
    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.finished_at_ms.saturating_sub(self.started_at_ms))
    }
}

/// Why a result could not be kept or read.
#[derive(Debug, thiserror::Error)]
pub enum ActiveError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A result file does not parse.
    #[error("{}: {message}; delete it, the next run writes a new one", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The directory of the results, `<state_dir>/active`.
pub fn results_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("active")
}

/// The result file of check `name`.
pub fn result_path(state_dir: &Path, name: &str) -> PathBuf {
    results_dir(state_dir).join(format!("{name}.json"))
}

/// Writes `result` as its check's result file, atomically ([`crate::state_file`]; the
/// directory is made `0700`).
pub fn save_result(state_dir: &Path, result: &ActiveResult) -> Result<(), ActiveError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = results_dir(state_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|source| ActiveError::Io {
            path: dir.clone(),
            source,
        })?;
    let path = result_path(state_dir, &result.check);
    let text = serde_json::to_string_pretty(result).map_err(|e| ActiveError::Parse {
        path: path.clone(),
        message: e.to_string(),
    })?;
    crate::state_file::write_atomic(&path, text.as_bytes())
        .map_err(|source| ActiveError::Io { path, source })
}

/// The newest result of check `name` (`None`: it never ran here).
pub fn load_result(state_dir: &Path, name: &str) -> Result<Option<ActiveResult>, ActiveError> {
    let path = result_path(state_dir, name);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| ActiveError::Parse {
                path,
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ActiveError::Io { path, source }),
    }
}

/// The node-history line of a run: `active.<name> <outcome> in <s> s (job <id>): <message>`
/// (`by hand` without a job), control characters as spaces, at most
/// [`sgpu_spool::event::MAX_REASON_BYTES`] bytes.
pub fn history_reason(r: &ActiveResult) -> String {
    let job = match r.job_id {
        Some(id) => format!("job {id}"),
        None => "by hand".into(),
    };
    let text = format!(
        "active.{} {} in {:.1} s ({job}): {}",
        r.check,
        r.outcome.as_str(),
        r.duration().as_secs_f64(),
        r.message
    );
    let mut line = String::new();
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if line.len() + c.len_utf8() > sgpu_spool::event::MAX_REASON_BYTES {
            break;
        }
        line.push(c);
    }
    line
}

/// Records run `r` in its node's history: an `active_check` event by `source` (`healthd`,
/// `sgpu-admin`) in the spool's `events/`, sent to acctd with the drains
/// ([`crate::node_events::record`]). Errors say what failed; callers log them (the result
/// file stands).
pub fn record_run(
    spool_dir: &Path,
    r: &ActiveResult,
    source: &str,
) -> Result<(), crate::node_events::EventNotSpooled> {
    crate::node_events::record(
        spool_dir,
        &r.node,
        sgpu_spool::NodeAction::ActiveCheck,
        source,
        &history_reason(r),
    )
}

/// How the command ended, as [`judge`] reads it.
#[derive(Debug)]
pub enum Ended<'a> {
    /// It exited (`code`) or was killed by a signal (`None`).
    Exited {
        /// The exit code.
        code: Option<i32>,
        /// Its stdout.
        stdout: &'a [u8],
        /// The kept part of its stderr.
        stderr: &'a [u8],
    },
    /// It was still running at its deadline and was killed.
    Timeout,
    /// It could not be started or read (the error, one line).
    NotRun(String),
}

/// The verdict on one run: outcome, the one-line message, the GPU it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    /// What it found.
    pub outcome: Outcome,
    /// One line.
    pub message: String,
    /// The GPU, when exactly one is named.
    pub gpu: Option<u32>,
}

/// The last non-empty line of `bytes`, trimmed, at most 200 characters.
fn last_line(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    Some(line.chars().take(200).collect())
}

/// The outcome of an exit code under the exit-code contract.
fn by_exit(code: Option<i32>) -> Outcome {
    match code {
        Some(0) => Outcome::Pass,
        Some(2) => Outcome::Warn,
        Some(126 | 127) => Outcome::Error,
        _ => Outcome::Fail,
    }
}

fn exit_text(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exit {c}"),
        None => "killed by a signal".into(),
    }
}

/// Judges a run of `check` (the contract is in the module documentation).
pub fn judge(check: &ActiveCheck, ended: &Ended<'_>) -> Judged {
    let (code, stdout, stderr) = match ended {
        Ended::Timeout => {
            return Judged {
                outcome: Outcome::Timeout,
                message: format!(
                    "no answer within {} s (deadline_s); its process group was killed",
                    check.deadline.as_secs()
                ),
                gpu: None,
            };
        }
        Ended::NotRun(why) => {
            return Judged {
                outcome: Outcome::Error,
                message: why.clone(),
                gpu: None,
            };
        }
        Ended::Exited {
            code,
            stdout,
            stderr,
        } => (*code, *stdout, *stderr),
    };
    let said = || last_line(stdout).or_else(|| last_line(stderr));
    let plain = || {
        let outcome = by_exit(code);
        let message = match (outcome, said()) {
            (Outcome::Pass, _) => last_line(stdout).unwrap_or_else(|| "passed (exit 0)".into()),
            (_, Some(l)) => format!("{}: {l}", exit_text(code)),
            (_, None) => exit_text(code),
        };
        Judged {
            outcome,
            message,
            gpu: None,
        }
    };
    match check.format {
        OutputFormat::Exit => plain(),
        OutputFormat::Dcgmi => match dcgmi::parse(stdout) {
            Ok(report) => {
                let j = report.judge();
                if j.outcome == Outcome::Pass && code != Some(0) {
                    // dcgmi exits non-zero when a test failed; a pass with a failing exit
                    // is not a pass
                    return Judged {
                        outcome: by_exit(code),
                        message: format!(
                            "{}, though its JSON reports no failed test{}",
                            exit_text(code),
                            last_line(stderr)
                                .map(|l| format!(": {l}"))
                                .unwrap_or_default()
                        ),
                        gpu: None,
                    };
                }
                j
            }
            Err(e) if code == Some(0) => Judged {
                outcome: Outcome::Error,
                message: format!("exit 0, but {e}"),
                gpu: None,
            },
            Err(e) => Judged {
                outcome: Outcome::Error,
                message: format!(
                    "{} without a diagnostic report ({e}){}",
                    exit_text(code),
                    last_line(stderr)
                        .map(|l| format!(": {l}"))
                        .unwrap_or_default()
                ),
                gpu: None,
            },
        },
        OutputFormat::Json => match parse_json(stdout) {
            Ok(j) => j,
            Err(e) => {
                let mut j = plain();
                if j.outcome == Outcome::Pass {
                    j.outcome = Outcome::Error;
                }
                j.message = format!("{} ({e})", j.message);
                j
            }
        },
    }
}

/// Why a `format = "json"` check's output is not the contract's object.
#[derive(Debug, thiserror::Error)]
enum JsonAnswerError {
    /// Not the JSON object of the contract.
    #[error("stdout is not the JSON object of the contract: {0}")]
    NotTheObject(serde_json::Error),
    /// A `status` that is not one of the three.
    #[error("\"status\" is {0:?}, expected \"pass\", \"warn\" or \"fail\"")]
    Status(String),
}

/// `format = "json"`: `{"status": "pass"|"warn"|"fail", "message": "...", "gpu": N}`.
fn parse_json(stdout: &[u8]) -> Result<Judged, JsonAnswerError> {
    #[derive(Deserialize)]
    struct Answer {
        status: String,
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        gpu: Option<u32>,
    }
    let a: Answer = serde_json::from_slice(stdout).map_err(JsonAnswerError::NotTheObject)?;
    let outcome = match a.status.as_str() {
        "pass" => Outcome::Pass,
        "warn" => Outcome::Warn,
        "fail" => Outcome::Fail,
        other => return Err(JsonAnswerError::Status(other.to_string())),
    };
    let message = a
        .message
        .as_deref()
        .and_then(|m| last_line(m.as_bytes()))
        .unwrap_or_else(|| outcome.as_str().to_string());
    Ok(Judged {
        outcome,
        message,
        gpu: a.gpu,
    })
}

/// Runs `check` here and now, under its deadline (the whole process group is killed past
/// it), and judges it. `job` is sgpu's Slurm job it runs in (`None`: by hand).
pub fn run(check: &ActiveCheck, node: &str, job: Option<(u64, &str)>) -> ActiveResult {
    let started_at_ms = unix_ms();
    let mut exit_code = None;
    let judged = match check.command.split_first() {
        None => judge(check, &Ended::NotRun("the command is empty".into())),
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args)
                .env_clear()
                .env("PATH", CHECK_PATH)
                .env("SGPU_ACTIVE_CHECK", &check.name)
                .env("SGPU_NODE", node)
                .current_dir("/");
            if let Some((id, partition)) = job {
                cmd.env("SLURM_JOB_ID", id.to_string())
                    .env("SLURM_JOB_PARTITION", partition);
            }
            let limits = sgpu_proc::Limits::new(check.deadline).max_stdout(MAX_STDOUT);
            match sgpu_proc::run(&mut cmd, &limits) {
                Ok(out) => {
                    exit_code = out.status.code();
                    judge(
                        check,
                        &Ended::Exited {
                            code: exit_code,
                            stdout: &out.stdout,
                            stderr: &out.stderr,
                        },
                    )
                }
                Err(sgpu_proc::ProcError::Timeout { .. }) => judge(check, &Ended::Timeout),
                Err(e) => judge(check, &Ended::NotRun(e.to_string())),
            }
        }
    };
    ActiveResult {
        check: check.name.clone(),
        node: node.to_string(),
        outcome: judged.outcome,
        message: judged.message,
        gpu: judged.gpu,
        exit_code,
        started_at_ms,
        finished_at_ms: unix_ms(),
        job_id: job.map(|(id, _)| id),
    }
}

/// The check ids handed out so far: `CheckResult::check` is `&'static str`, and an active
/// check's id comes from sgpu.toml, so each distinct id is leaked once (a handful per node).
static IDS: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());

/// `active.<name>` as a `&'static str`, interned.
pub fn intern_id(name: &str) -> &'static str {
    let id = format!("{CHECK_PREFIX}{name}");
    let mut ids = IDS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(found) = ids.get(id.as_str()) {
        return found;
    }
    let leaked: &'static str = Box::leak(id.into_boxed_str());
    ids.insert(leaked);
    leaked
}

fn utc_text(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    format!("{}Z", sgpu_spool::calendar::format_datetime(secs))
}

/// The check result healthd's policy, `/status` and `/metrics` see for the newest run of
/// `check`: id `active.<name>`, node-level or about the GPU the run named; `observed` says
/// the outcome, when it ran and for how long, `message` the measurement (the drain reason's
/// detail). A warn is a failure at `warn`; an error is `unknown`. `enforce` is the node's.
pub fn to_check_result(check: &ActiveCheck, r: &ActiveResult, enforce: bool) -> CheckResult {
    let (status, severity) = match r.outcome {
        Outcome::Pass => (Status::Pass, check.severity),
        Outcome::Warn => (Status::Fail, Severity::Warn.min(check.severity)),
        Outcome::Fail | Outcome::Timeout => (Status::Fail, check.severity),
        Outcome::Error => (Status::Unknown, check.severity),
    };
    let job = r
        .job_id
        .map_or_else(|| "by hand".to_string(), |j| format!("job {j}"));
    CheckResult {
        check: intern_id(&check.name),
        gpu: r.gpu,
        uuid: None,
        observed: format!(
            "{} at {} ({job}, {:.1} s)",
            r.outcome.as_str(),
            utc_text(r.finished_at_ms),
            r.duration().as_secs_f64()
        ),
        threshold: format!("pass within {} s", check.deadline.as_secs()),
        severity,
        status,
        message: r.message.clone(),
        enforced: enforce,
    }
}

/// Where a node's run of a check falls: its offset in each interval, from a hash of node and
/// check (FNV-1a), in `[0, stagger)` ms. The same node and check always get the same offset,
/// so a cluster's nodes spread their runs over the stagger window without talking.
pub fn offset_ms(node: &str, check: &str, stagger: Duration) -> u64 {
    let stagger_ms = u64::try_from(stagger.as_millis()).unwrap_or(u64::MAX);
    if stagger_ms == 0 {
        return 0;
    }
    let h = node
        .bytes()
        .chain(std::iter::once(0))
        .chain(check.bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    h % stagger_ms
}

/// The newest slot at or before `now_ms`: the slots are `k x interval + offset` (Unix ms),
/// `None` before the first. Anchored to the epoch, so they do not move when healthd restarts.
pub fn slot_at_or_before(now_ms: u64, interval: Duration, offset_ms: u64) -> Option<u64> {
    let interval_ms = u64::try_from(interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let since = now_ms.checked_sub(offset_ms)?;
    Some(since / interval_ms * interval_ms + offset_ms)
}

/// The slot a run is due for at `now_ms` when the last slot handled was `last_slot_ms`
/// (`None`: not due).
pub fn due_slot(now_ms: u64, last_slot_ms: u64, interval: Duration, offset_ms: u64) -> Option<u64> {
    slot_at_or_before(now_ms, interval, offset_ms).filter(|s| *s > last_slot_ms)
}

/// Quotes `s` for `/bin/sh` (single quotes; a `'` inside becomes `'\''`).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The batch script of sgpu's job: it runs `runner --run-active NAME [--config PATH]`,
/// which runs the check under its deadline, writes the result and exits, ending the job.
pub fn job_script(runner: &Path, check: &str, config: Option<&Path>) -> String {
    let mut line = format!(
        "exec {} --run-active {}",
        shell_quote(&runner.to_string_lossy()),
        shell_quote(check)
    );
    if let Some(c) = config {
        line.push_str(&format!(" --config {}", shell_quote(&c.to_string_lossy())));
    }
    format!("#!/bin/sh\n# sgpu active check {check} (written by sgpu-healthd)\n{line}\n")
}

/// `sbatch`'s arguments for a run of `check` on `node`: the maintenance partition (and QOS),
/// the node alone (`--exclusive`, all its GPUs when `gpus` is known), a time limit of the
/// deadline plus [`JOB_TIME_MARGIN`], never requeued, output to `output`.
pub fn sbatch_args(
    settings: &ActiveSettings,
    check: &ActiveCheck,
    node: &str,
    gpus: Option<u32>,
    output: &Path,
    script: &Path,
) -> Vec<String> {
    let limit = check.deadline + JOB_TIME_MARGIN;
    let minutes = limit.as_secs().div_ceil(60).max(1);
    let mut args = vec![
        "--parsable".to_string(),
        format!("--job-name=sgpu-active-{}", check.name),
        format!("--nodelist={node}"),
        "--nodes=1".into(),
        "--exclusive".into(),
        "--no-requeue".into(),
        format!("--time={minutes}"),
        format!("--output={}", output.display()),
        "--chdir=/".into(),
        "--export=NONE".into(),
    ];
    if let Some(p) = &settings.partition {
        args.push(format!("--partition={p}"));
    }
    if let Some(q) = &settings.qos {
        args.push(format!("--qos={q}"));
    }
    if let Some(n) = gpus.filter(|n| *n > 0) {
        args.push(format!("--gres=gpu:{n}"));
    }
    args.push(script.to_string_lossy().into_owned());
    args
}

#[cfg(test)]
mod tests;
