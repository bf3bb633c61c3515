//! Scheduling active checks ([`sgpu_nodelib::active`]) on this node through Slurm.
//!
//! Each configured check is due once per interval, at the node's own offset in it
//! ([`sgpu_nodelib::active::offset_ms`]; slots anchored to the epoch, so a restart neither
//! skips nor repeats one; a check healthd has not seen before waits for its next slot, so
//! turning a check on does not start it on every node at once). Every check run
//! ([`Scheduler::tick`], called by the daemon before each `full` run) does, per check:
//!
//! - **Due, node idle** (Slurm state exactly `IDLE`: no job, not drained, down, reserved or
//!   completing) and no other sgpu job in flight on the node: submit a batch job with
//!   `sbatch` to the maintenance partition (and QOS) for this node alone (`--exclusive`,
//!   its GPUs), time limit the deadline plus a minute, never requeued. The job runs
//!   `sgpu-healthd --run-active NAME`, which runs the check under its deadline (killing its
//!   process group past it), writes the result file and exits, which hands the node back to
//!   Slurm. A user job therefore never shares the node with the check, and Slurm's picture
//!   (allocated, accounted) is right while it runs.
//! - **Due, node busy**: nothing is submitted; the check waits (`waiting` in the state file,
//!   logged once) until a later run finds the node idle. A failed `sbatch` is tried again
//!   only after [`SUBMIT_RETRY`].
//! - **Job pending** past `pending_timeout_s` (a user job took the node first): cancelled;
//!   the check stays due.
//! - **Job running** past deadline + margin (the runner itself stuck): cancelled, and a
//!   `timeout` result written for it.
//! - **Job gone**: its result file (same job id) is the result. A job that ended without
//!   one after it had started (Slurm's time limit, node failure) gets an `error` (or, at
//!   Slurm's time limit, a `timeout`) result; one cancelled before it started (an admin,
//!   preemption) leaves the check due.
//!
//! Results reach the policy as check results `active.<name>` ([`results`]): the newest
//! result of each check, every run, so a failure drains (through the breaker) with a reason
//! naming the check and its measurement, and stays the node's failure until a newer run (or
//! `sgpu check --active` by hand) passes. Active checks are not auto-recoverable: healthd
//! never resumes a node it drained for one.
//!
//! What the scheduler remembers (`<state_dir>/active-state.json`): per check, the last slot
//! handled, the job in flight and why a due check waits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use sgpu_nodelib::active::{
    self, ActiveCheck, ActiveResult, ActiveSettings, JOB_TIME_MARGIN, Outcome,
};
use sgpu_nodelib::checks::CheckResult;
use sgpu_nodelib::config::Config;
use sgpu_nodelib::slurmctl::{Scontrol, SlurmctlError};

/// The scheduler's state file inside `state_dir`.
pub const STATE_FILE: &str = "active-state.json";

/// sgpu's job of one check, in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRef {
    /// Slurm's job id.
    pub id: u64,
    /// The slot it runs for, Unix ms.
    pub slot_ms: u64,
    /// When it was submitted, Unix ms.
    pub submitted_ms: u64,
    /// When healthd first saw it running, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
}

/// One check's scheduling state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckState {
    /// The last slot handled (run, or skipped at first sight), Unix ms.
    pub last_slot_ms: u64,
    /// The job in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobRef>,
    /// Why a due check is not running (the node is busy, sbatch failed), if it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// When `sbatch` last failed for it, Unix ms: no new try before [`SUBMIT_RETRY`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submit_failed_ms: Option<u64>,
}

/// After a failed `sbatch` (no such partition, slurmctld away), the next try waits this
/// long: a misconfigured cluster must not have every node submit on every check run.
pub const SUBMIT_RETRY: Duration = Duration::from_secs(600);

/// What the scheduler remembers, per check name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveState {
    /// Per check.
    #[serde(default)]
    pub checks: BTreeMap<String, CheckState>,
}

/// Why the state file could not be used: the same failures as the policy's own state file.
pub type StateError = crate::policy::MemoryError;

impl ActiveState {
    /// Loads `<dir>/active-state.json` (missing: nothing remembered).
    pub fn load(dir: &Path) -> Result<ActiveState, StateError> {
        let path = dir.join(STATE_FILE);
        match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| StateError::Parse {
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ActiveState::default()),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// Writes it atomically ([`sgpu_nodelib::state_file`]).
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = dir.join(STATE_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| StateError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        sgpu_nodelib::state_file::write_atomic(&path, text.as_bytes())
            .map_err(|source| StateError::Io { path, source })
    }
}

/// Where one check stands (for `/status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckStatus {
    /// The check's name.
    pub name: String,
    /// sgpu's job for it, while queued or running.
    pub job_in_flight: Option<u64>,
    /// The slot the next run is for, Unix ms (past while a due run waits).
    pub due_at_ms: Option<u64>,
    /// Why a due run waits.
    pub waiting: Option<String>,
}

/// Why a call to Slurm for the active checks failed.
#[derive(Debug, thiserror::Error)]
pub enum ActiveSlurmError {
    /// `scontrol`, `sbatch`, `squeue` or `scancel` failed (names the command and what it
    /// said).
    #[error(transparent)]
    Slurm(#[from] SlurmctlError),
    /// The job's script or its directory could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `sbatch --parsable` printed something other than a job id.
    #[error("sbatch printed {0:?}, not a job id")]
    NoJobId(String),
}

/// How the scheduler reaches Slurm (a fake in tests).
pub trait ActiveSlurm {
    /// This node's state (`IDLE`, `MIXED`, `IDLE+DRAIN`, ...).
    fn node_state(&mut self) -> Result<String, ActiveSlurmError>;
    /// Submits sgpu's job for `check`; its id.
    fn submit(&mut self, check: &ActiveCheck) -> Result<u64, ActiveSlurmError>;
    /// The job's state (`PENDING`, `RUNNING`, `COMPLETED`, ...); `None`: Slurm no longer
    /// knows it.
    fn job_state(&mut self, id: u64) -> Result<Option<String>, ActiveSlurmError>;
    /// Cancels the job.
    fn cancel(&mut self, id: u64) -> Result<(), ActiveSlurmError>;
}

/// Whether a Slurm node state means no job and nothing else in the way.
pub fn node_idle(state: &str) -> bool {
    state == "IDLE"
}

fn pending(state: &str) -> bool {
    matches!(
        state,
        "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "RESV_DEL_HOLD"
    )
}

fn running(state: &str) -> bool {
    matches!(
        state,
        "RUNNING"
            | "CONFIGURING"
            | "COMPLETING"
            | "SUSPENDED"
            | "STAGE_OUT"
            | "SIGNALING"
            | "RESIZING"
    )
}

/// The scheduler: the active checks of one node and what it remembers of them.
#[derive(Debug)]
pub struct Scheduler {
    node: String,
    settings: ActiveSettings,
    state_dir: PathBuf,
    state: ActiveState,
    /// The spool whose `events/` take a history line per result healthd makes itself.
    history: Option<PathBuf>,
}

impl Scheduler {
    /// The scheduler of `node`'s checks, with what `state_dir` remembers.
    pub fn new(node: &str, settings: &ActiveSettings, state_dir: &Path) -> Scheduler {
        let state = match ActiveState::load(state_dir) {
            Ok(s) => s,
            Err(e) => {
                warn!("{e}; active checks start with nothing remembered");
                ActiveState::default()
            }
        };
        Scheduler {
            node: node.to_string(),
            settings: settings.clone(),
            state_dir: state_dir.to_path_buf(),
            state,
            history: None,
        }
    }

    /// Also records each result healthd makes itself (a timeout, a job gone without a
    /// result) in the node's history, in `spool_dir`'s `events/`
    /// ([`active::record_run`]); the job's own results are recorded by the job.
    pub fn with_history(mut self, spool_dir: &Path) -> Scheduler {
        self.history = Some(spool_dir.to_path_buf());
        self
    }

    /// What it remembers now.
    pub fn state(&self) -> &ActiveState {
        &self.state
    }

    /// Where each configured check stands at `now_ms`.
    pub fn statuses(&self, now_ms: u64) -> Vec<CheckStatus> {
        self.settings
            .checks
            .iter()
            .map(|c| {
                let st = self.state.checks.get(&c.name);
                let offset = active::offset_ms(&self.node, &c.name, c.stagger);
                let interval_ms = u64::try_from(c.interval.as_millis()).unwrap_or(u64::MAX);
                let due_at_ms = st.map(|st| match &st.job {
                    Some(j) => j.slot_ms,
                    None => match active::slot_at_or_before(now_ms, c.interval, offset) {
                        Some(s) if s > st.last_slot_ms => s,
                        Some(s) => s.saturating_add(interval_ms),
                        None => offset,
                    },
                });
                CheckStatus {
                    name: c.name.clone(),
                    job_in_flight: st.and_then(|s| s.job.as_ref().map(|j| j.id)),
                    due_at_ms,
                    waiting: st.and_then(|s| s.waiting.clone()),
                }
            })
            .collect()
    }

    /// One round at `now_ms` (see the module documentation); saves the state if it changed.
    pub fn tick(&mut self, now_ms: u64, slurm: &mut dyn ActiveSlurm) {
        let before = self.state.clone();
        let mut node_state: Option<Result<String, ActiveSlurmError>> = None;
        let checks = self.settings.checks.clone();
        // a check taken out of sgpu.toml is forgotten (its job, if one runs, ends by itself)
        self.state
            .checks
            .retain(|name, _| checks.iter().any(|c| &c.name == name));
        for check in &checks {
            self.follow(check, now_ms, slurm);
        }
        // a result that just came in goes to the policy first (it may drain the node): no
        // new job in the same round
        let concluded = checks.iter().any(|c| {
            let job = |s: &ActiveState| s.checks.get(&c.name).and_then(|st| st.job.clone());
            job(&before).is_some() && job(&self.state).is_none()
        });
        for check in &checks {
            self.start_if_due(check, now_ms, concluded, &mut node_state, slurm);
        }
        if self.state != before {
            if let Err(e) = self.state.save(&self.state_dir) {
                warn!("active checks: {e}");
            }
        }
    }

    /// Submits `check`'s job when it is due, no sgpu job holds the node, no result came in
    /// this round (`concluded`), no failed `sbatch` is fresher than [`SUBMIT_RETRY`] and the
    /// node is idle (`node_state`: asked once a round, then as this round left it);
    /// otherwise notes why a due check waits.
    fn start_if_due(
        &mut self,
        check: &ActiveCheck,
        now_ms: u64,
        concluded: bool,
        node_state: &mut Option<Result<String, ActiveSlurmError>>,
        slurm: &mut dyn ActiveSlurm,
    ) {
        let in_flight = self.state.checks.values().any(|s| s.job.is_some());
        let offset = active::offset_ms(&self.node, &check.name, check.stagger);
        let st = self
            .state
            .checks
            .entry(check.name.clone())
            .or_insert_with(|| {
                // first sight: the next slot, not the one just past
                CheckState {
                    last_slot_ms: active::slot_at_or_before(now_ms, check.interval, offset)
                        .unwrap_or(0),
                    ..CheckState::default()
                }
            });
        if st.job.is_some() {
            return;
        }
        let Some(slot) = active::due_slot(now_ms, st.last_slot_ms, check.interval, offset) else {
            st.waiting = None;
            return;
        };
        if in_flight {
            set_waiting(
                st,
                &check.name,
                "another active check holds the node".into(),
            );
            return;
        }
        if concluded {
            return;
        }
        let retry_ms = u64::try_from(SUBMIT_RETRY.as_millis()).unwrap_or(u64::MAX);
        if st
            .submit_failed_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < retry_ms)
        {
            return;
        }
        let ns = node_state.get_or_insert_with(|| slurm.node_state());
        match ns {
            Ok(s) if node_idle(s) => {}
            Ok(s) => {
                let why = format!("the node is {s}, not IDLE");
                set_waiting(st, &check.name, why);
                return;
            }
            Err(e) => {
                let why = format!("the node's state is unknown: {e}");
                set_waiting(st, &check.name, why);
                return;
            }
        }
        if submit(st, check, slot, now_ms, slurm) {
            // the node is taken now
            *node_state = Some(Ok("ALLOCATED".into()));
        }
    }

    /// Follows `check`'s job in flight, if any.
    fn follow(&mut self, check: &ActiveCheck, now_ms: u64, slurm: &mut dyn ActiveSlurm) {
        let Some(st) = self.state.checks.get_mut(&check.name) else {
            return;
        };
        let Some(job) = st.job.clone() else { return };
        let state = match slurm.job_state(job.id) {
            Ok(s) => s,
            Err(e) => {
                warn!(check = check.name, "active check job {}: {e}", job.id);
                return;
            }
        };
        let since = |t: u64| Duration::from_millis(now_ms.saturating_sub(t));
        match state.as_deref() {
            Some(s) if pending(s) => {
                if since(job.submitted_ms) > self.settings.pending_timeout {
                    cancel_pending(st, check, &job, slurm);
                }
            }
            Some(s) if running(s) => {
                let started = job.started_ms.unwrap_or(now_ms);
                if job.started_ms.is_none() {
                    if let Some(j) = st.job.as_mut() {
                        j.started_ms = Some(now_ms);
                    }
                }
                if since(started) > check.deadline + JOB_TIME_MARGIN {
                    if let Err(e) = slurm.cancel(job.id) {
                        warn!("active check {}: scancel {}: {e}", check.name, job.id);
                        return;
                    }
                    let message = format!(
                        "job {} ran past deadline_s + {} s without a result; cancelled",
                        job.id,
                        JOB_TIME_MARGIN.as_secs()
                    );
                    self.conclude(check, &job, now_ms, Outcome::Timeout, message);
                }
            }
            ended => self.job_ended(check, &job, ended, now_ms),
        }
    }

    /// `check`'s `job` is neither pending nor running (`ended`: Slurm's last state; `None`:
    /// gone from squeue). Its result file (same job id) is the result; without one, a job
    /// that never ran leaves the check due, and one that ran gets a result of healthd's own.
    fn job_ended(&mut self, check: &ActiveCheck, job: &JobRef, ended: Option<&str>, now_ms: u64) {
        let found = match active::load_result(&self.state_dir, &check.name) {
            Ok(r) => r.filter(|r| r.job_id == Some(job.id)),
            Err(e) => {
                warn!("active check {}: {e}", check.name);
                None
            }
        };
        let st = self.state.checks.entry(check.name.clone()).or_default();
        if let Some(r) = found {
            info!(
                check = check.name,
                outcome = r.outcome.as_str(),
                "active check {} (job {}): {}: {}",
                check.name,
                job.id,
                r.outcome.as_str(),
                r.message
            );
            st.job = None;
            st.last_slot_ms = st.last_slot_ms.max(job.slot_ms);
            st.waiting = None;
            return;
        }
        let s = ended.unwrap_or("gone from squeue");
        let never_ran =
            job.started_ms.is_none() && matches!(ended, None | Some("CANCELLED" | "PREEMPTED"));
        if never_ran {
            st.job = None;
            set_waiting(
                st,
                &check.name,
                format!(
                    "job {} ended ({s}) before it ran; the check is still due",
                    job.id
                ),
            );
            return;
        }
        let (outcome, message) = if s == "TIMEOUT" {
            (
                Outcome::Timeout,
                format!(
                    "Slurm ended job {} at its time limit without a result",
                    job.id
                ),
            )
        } else {
            (
                Outcome::Error,
                format!("job {} ended ({s}) without a result", job.id),
            )
        };
        self.conclude(check, job, now_ms, outcome, message);
    }

    /// Writes a result healthd made itself for `job` and marks its slot handled.
    fn conclude(
        &mut self,
        check: &ActiveCheck,
        job: &JobRef,
        now_ms: u64,
        outcome: Outcome,
        message: String,
    ) {
        warn!(
            check = check.name,
            "active check {} (job {}): {}: {message}",
            check.name,
            job.id,
            outcome.as_str()
        );
        let r = ActiveResult {
            check: check.name.clone(),
            node: self.node.clone(),
            outcome,
            message,
            gpu: None,
            exit_code: None,
            started_at_ms: job.started_ms.unwrap_or(job.submitted_ms),
            finished_at_ms: now_ms,
            job_id: Some(job.id),
        };
        if let Err(e) = active::save_result(&self.state_dir, &r) {
            warn!("active check {}: {e}", check.name);
        }
        if let Some(spool) = &self.history
            && let Err(e) = active::record_run(spool, &r, "healthd")
        {
            warn!("active check {}: {e}", check.name);
        }
        let st = self.state.checks.entry(check.name.clone()).or_default();
        st.job = None;
        st.last_slot_ms = st.last_slot_ms.max(job.slot_ms);
        st.waiting = None;
    }
}

/// Submits `check`'s job for `slot` and keeps it in `st` (true), or keeps when `sbatch`
/// failed and why the check waits (false).
fn submit(
    st: &mut CheckState,
    check: &ActiveCheck,
    slot: u64,
    now_ms: u64,
    slurm: &mut dyn ActiveSlurm,
) -> bool {
    match slurm.submit(check) {
        Ok(id) => {
            info!(
                check = check.name,
                job = id,
                "active check {} due: submitted job {id}",
                check.name
            );
            st.job = Some(JobRef {
                id,
                slot_ms: slot,
                submitted_ms: now_ms,
                started_ms: None,
            });
            st.waiting = None;
            st.submit_failed_ms = None;
            true
        }
        Err(e) => {
            warn!(
                check = check.name,
                "active check {}: sbatch failed: {e}", check.name
            );
            st.submit_failed_ms = Some(now_ms);
            set_waiting(
                st,
                &check.name,
                format!(
                    "sbatch failed (tried again after {} s): {e}",
                    SUBMIT_RETRY.as_secs()
                ),
            );
            false
        }
    }
}

/// Cancels `check`'s `job`, pending past `pending_timeout_s`; the check stays due.
fn cancel_pending(
    st: &mut CheckState,
    check: &ActiveCheck,
    job: &JobRef,
    slurm: &mut dyn ActiveSlurm,
) {
    match slurm.cancel(job.id) {
        Ok(()) => {
            st.job = None;
            set_waiting(
                st,
                &check.name,
                format!(
                    "job {} still pending after pending_timeout_s; cancelled",
                    job.id
                ),
            );
        }
        Err(e) => warn!("active check {}: scancel {}: {e}", check.name, job.id),
    }
}

fn set_waiting(st: &mut CheckState, check: &str, why: String) {
    if st.waiting.as_deref() != Some(why.as_str()) {
        info!(check, "active check {check} is due; waiting: {why}");
    }
    st.waiting = Some(why);
}

/// The newest result of every configured check (unreadable files logged and skipped).
pub fn newest(config: &Config) -> Vec<(ActiveCheck, ActiveResult)> {
    config
        .active
        .checks
        .iter()
        .filter_map(|c| match active::load_result(&config.state_dir, &c.name) {
            Ok(r) => r.map(|r| (c.clone(), r)),
            Err(e) => {
                warn!("active check {}: {e}", c.name);
                None
            }
        })
        .collect()
}

/// The check results of `newest`: what the policy judges besides the `full` run.
pub fn results(config: &Config, newest: &[(ActiveCheck, ActiveResult)]) -> Vec<CheckResult> {
    newest
        .iter()
        .map(|(c, r)| active::to_check_result(c, r, config.enforce))
        .collect()
}

/// Slurm through its clients (the ones beside `scontrol`, or `[active] sbatch`).
#[derive(Debug)]
pub struct SlurmClients {
    scontrol: Scontrol,
    sbatch: PathBuf,
    node: String,
    settings: ActiveSettings,
    state_dir: PathBuf,
    config_path: Option<PathBuf>,
    runner: PathBuf,
    gpus: Option<u32>,
}

impl SlurmClients {
    /// For `node`; the job runs `runner` (this `sgpu-healthd`) with `config`'s file.
    pub fn new(
        scontrol: &Scontrol,
        config: &Config,
        node: &str,
        runner: PathBuf,
        gpus: Option<u32>,
    ) -> SlurmClients {
        SlurmClients {
            sbatch: config
                .active
                .sbatch
                .clone()
                .unwrap_or_else(|| scontrol.path().with_file_name("sbatch")),
            scontrol: scontrol.clone(),
            node: node.to_string(),
            settings: config.active.clone(),
            state_dir: config.state_dir.clone(),
            config_path: config.source.clone(),
            runner,
            gpus,
        }
    }
}

impl SlurmClients {
    /// The node's GPU count (gres.conf), asked for with `--gres=gpu:N`; `None`: not asked.
    pub fn set_gpus(&mut self, gpus: Option<u32>) {
        self.gpus = gpus;
    }
}

impl ActiveSlurm for SlurmClients {
    fn node_state(&mut self) -> Result<String, ActiveSlurmError> {
        Ok(self.scontrol.node_state(&self.node).map(|s| s.state)?)
    }

    fn submit(&mut self, check: &ActiveCheck) -> Result<u64, ActiveSlurmError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = active::results_dir(&self.state_dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| ActiveSlurmError::Io {
                path: dir.clone(),
                source,
            })?;
        let script = dir.join(format!("{}.sbatch", check.name));
        let body = active::job_script(&self.runner, &check.name, self.config_path.as_deref());
        std::fs::write(&script, body).map_err(|source| ActiveSlurmError::Io {
            path: script.clone(),
            source,
        })?;
        let output = dir.join(format!("{}.out", check.name));
        let args = active::sbatch_args(
            &self.settings,
            check,
            &self.node,
            self.gpus,
            &output,
            &script,
        );
        let out = self.scontrol.run_program(&self.sbatch, &args, &[])?;
        // --parsable: "<id>" or "<id>;<cluster>"
        out.trim()
            .split(';')
            .next()
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| ActiveSlurmError::NoJobId(out.trim().to_string()))
    }

    fn job_state(&mut self, id: u64) -> Result<Option<String>, ActiveSlurmError> {
        let squeue = self.scontrol.squeue_path();
        let args = [
            "--noheader".to_string(),
            "--states=all".into(),
            format!("--jobs={id}"),
            "--format=%T".into(),
        ];
        match self.scontrol.run_program(&squeue, &args, &[]) {
            Ok(out) => Ok(out
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_string)),
            // a job slurmctld already purged (MinJobAge)
            Err(SlurmctlError::Failed { stderr, .. }) if stderr.contains("Invalid job id") => {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn cancel(&mut self, id: u64) -> Result<(), ActiveSlurmError> {
        let scancel = self.scontrol.path().with_file_name("scancel");
        self.scontrol
            .run_program(&scancel, &[id.to_string()], &[])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
