//! `sgpu-healthd`: the node daemon's moving parts.
//!
//! - **XID watch** (one OS thread, [`spawn_xid_watch`]): its own [`NvmlWorker`] with an event
//!   set registered for XIDs on every GPU, waited on 500 ms at a time. Every XID goes into
//!   the node's [`XidStore`] at once; a hardware-class XID also wakes the main loop for an
//!   immediate evaluation, so the drain does not wait for the next interval.
//! - **Main loop** ([`run`], tokio): a `full` run every `check_interval_s`, or at once when
//!   the watch reports a hardware XID. Runs never overlap: each runs on the blocking pool and
//!   the loop waits for it (SIGTERM/SIGINT still stop the daemon mid-run).
//! - **A run** ([`Daemon::run_once`]): snapshot through a second long-lived worker, the
//!   store's unreported XIDs, the catalogue's `full` profile, then the drain/resume
//!   [`Policy`] acting through `scontrol` and the circuit breaker.
//!
//! - **Sampler** ([`crate::sampler`], a tokio task running each cycle on the blocking pool,
//!   with its own NVML session): per-job usage every `sample_interval_s`.
//! - **Forwarder** ([`crate::forward`], a tokio task running each round on the blocking
//!   pool): sends the node spool to acctd every `forward_interval_s` when `[accounting] url`
//!   is set, after the sampler released what it reads.
//! - **Endpoint** ([`crate::http`]): `/status` and `/metrics` on `status_listen`, from the
//!   [`Shared`] state every part above records into.
//!
//! A hung driver: a worker whose call hung is kept (not replaced) until its stuck thread
//! comes back; until then every run reports `nvml.responsive` failing (which drains, subject
//! to the breaker) and the watch waits. Logs go to stderr through `tracing` (journald keeps
//! them when systemd runs the daemon); a decision is logged when it changes, not every run.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tracing::{debug, error, info, warn};

use crate::forward::{self, Forwarder, Gate};
use crate::http;
use crate::policy::{ControlError, Decision, Failure, Memory, NodeControl, Policy};
use crate::sampler::{self, Sampler};
use crate::status::Shared;
use crate::store::{JobStore, MemStore, SledStore};
use sgpu_nodelib::breaker::{self, Trip};
use sgpu_nodelib::catalogue::{self as cat, Catalogue, Profile, Severity};
use sgpu_nodelib::checks::{self, CheckContext, CheckResult, Status, Verdict};
use sgpu_nodelib::config::Config;
use sgpu_nodelib::gpu::{GpuSample, NodeSnapshot, NvmlFailure, NvmlOptions, NvmlWorker};
use sgpu_nodelib::nodeconf::{self, NodeLayout};
use sgpu_nodelib::slurmctl::{NodeState, Scontrol, SlurmctlError};
use sgpu_nodelib::xid::{XidClass, XidEvent, XidStore, classify};

/// How long the watch waits on the event set per call.
pub const XID_WAIT: Duration = Duration::from_millis(500);

/// Why the daemon could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// No node name configured and the hostname is unreadable.
    #[error("no node_name in the configuration and the hostname cannot be read")]
    NoNodeName,
    /// scontrol cannot be found.
    #[error(transparent)]
    Slurm(#[from] SlurmctlError),
    /// The runtime, a thread or a signal handler could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being set up.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The node name the daemon acts on: `node_name` from the config, else the short hostname.
pub fn node_name(config: &Config) -> Result<String, DaemonError> {
    config
        .node_name
        .clone()
        .or_else(nodeconf::short_hostname)
        .ok_or(DaemonError::NoNodeName)
}

/// A long-lived NVML worker that follows the hung-driver policy: a worker that hung is kept
/// until its thread comes back, and only then replaced.
#[derive(Debug)]
pub(crate) struct Session {
    opts: NvmlOptions,
    worker: Option<NvmlWorker>,
    last_failure: Option<NvmlFailure>,
}

impl Session {
    pub(crate) fn new(opts: NvmlOptions) -> Session {
        Session {
            opts,
            worker: None,
            last_failure: None,
        }
    }

    /// A worker ready for requests (`Ok(true)`: freshly started), or why there is none.
    fn ready(&mut self) -> Result<(&mut NvmlWorker, bool), NvmlFailure> {
        if let Some(w) = &self.worker {
            if w.is_abandoned() {
                if w.is_hung() {
                    return Err(self.last_failure.clone().unwrap_or(NvmlFailure::Hung {
                        waited: self.opts.timeout,
                        during: "an earlier call".into(),
                    }));
                }
                info!("the NVML thread that hung has come back; starting a new NVML session");
                self.worker = None;
            }
        }
        let fresh = self.worker.is_none();
        if fresh {
            match NvmlWorker::start_or_abandoned(&self.opts) {
                Ok(w) => self.worker = Some(w),
                Err((f, abandoned)) => {
                    self.worker = abandoned.map(|w| *w);
                    self.last_failure = Some(f.clone());
                    return Err(f);
                }
            }
        }
        match self.worker.as_mut() {
            Some(w) => Ok((w, fresh)),
            None => Err(NvmlFailure::Query("no NVML session".into())),
        }
    }

    fn note(&mut self, r: Result<(), &NvmlFailure>) {
        if let Err(f) = r {
            self.last_failure = Some(f.clone());
            if !matches!(f, NvmlFailure::Hung { .. }) {
                // not hung: the session is unusable (thread gone); start over next time
                if self.worker.as_ref().is_some_and(NvmlWorker::is_abandoned) {
                    self.worker = None;
                }
            }
        }
    }

    /// Every GPU's snapshot (see [`NvmlWorker::snapshot`]).
    pub(crate) fn snapshot(&mut self) -> Result<NodeSnapshot, NvmlFailure> {
        let r = self.ready().and_then(|(w, _)| w.snapshot());
        self.note(r.as_ref().map(|_| ()));
        r
    }

    /// The fresh readings a gate needs of `gpus` (see [`NvmlWorker::fresh`]).
    pub(crate) fn fresh(
        &mut self,
        gpus: &[(u32, bool)],
    ) -> Result<Vec<sgpu_nodelib::gpu::FreshGpu>, NvmlFailure> {
        let r = self.ready().and_then(|(w, _)| w.fresh(gpus));
        self.note(r.as_ref().map(|_| ()));
        r
    }

    /// Every GPU's sample (see [`NvmlWorker::sample`]).
    pub(crate) fn sample(&mut self) -> Result<Vec<GpuSample>, NvmlFailure> {
        let r = self.ready().and_then(|(w, _)| w.sample());
        self.note(r.as_ref().map(|_| ()));
        r
    }
}

/// Slurm as the policy sees it: this node through `scontrol`, the breaker over all nodes.
struct SlurmControl<'a> {
    scontrol: &'a Scontrol,
    node: &'a str,
    config: &'a Config,
}

impl NodeControl for SlurmControl<'_> {
    fn node_state(&mut self) -> Result<NodeState, ControlError> {
        Ok(self.scontrol.node_state(self.node)?)
    }

    fn breaker(&mut self) -> Result<Option<Trip>, ControlError> {
        let nodes = self.scontrol.nodes()?;
        Ok(breaker::judge(&nodes, self.node, &self.config.breaker).err())
    }

    fn drain(&mut self, reason: &str) -> Result<Option<Trip>, ControlError> {
        self.scontrol.drain(self.node, reason)?;
        let drained_at = unix_now() as f64;
        // nodes failing in the same moment all passed the pre-check: recount once this
        // drain's second is over, and give the drain back if it is past the limit
        let nodes = breaker::settle_and_recount(
            self.scontrol,
            self.node,
            drained_at,
            breaker::SETTLE_MARGIN,
        );
        let nodes = match nodes {
            Ok(n) => n,
            Err(e) => {
                // the drain stands: a node list we cannot read must not resume it blindly
                warn!("drained {}, but the breaker recount failed: {e}", self.node);
                self.history(sgpu_spool::NodeAction::Drain, reason);
                return Ok(None);
            }
        };
        match breaker::keep_after_recount(&nodes, self.node, &self.config.breaker) {
            Ok(()) => {
                self.history(sgpu_spool::NodeAction::Drain, reason);
                Ok(None)
            }
            Err(trip) => {
                warn!(
                    "{trip}: {} drained in the same moment as others; giving the drain back",
                    self.node
                );
                breaker::give_back(self.scontrol, self.node, reason, trip.clone())?;
                Ok(Some(trip))
            }
        }
    }

    fn resume(&mut self) -> Result<(), ControlError> {
        self.scontrol.resume(self.node)?;
        self.history(
            sgpu_spool::NodeAction::Resume,
            "sgpu: checks pass again (resume_after healthy runs)",
        );
        Ok(())
    }
}

impl SlurmControl<'_> {
    /// Keeps a drain or resume in the node history (spooled, forwarded to acctd).
    fn history(&self, action: sgpu_spool::NodeAction, reason: &str) {
        let r = sgpu_nodelib::node_events::record(
            &self.config.spool_dir,
            self.node,
            action,
            "healthd",
            reason,
        );
        if let Err(e) = r {
            warn!("{e}");
        }
    }
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The periodic interval (or startup).
    Periodic,
    /// The XID watch saw a hardware XID.
    Xid,
}

/// What one run found and decided.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Every check result.
    pub results: Vec<CheckResult>,
    /// The rolled-up verdict.
    pub verdict: Verdict,
    /// What the policy decided.
    pub decision: Decision,
    /// Whether the spool can take records ([`crate::spool_probe`]).
    pub spool: crate::spool_probe::SpoolHealth,
    /// The newest result of each active check (their check results are in `results`).
    pub active: Vec<sgpu_nodelib::active::ActiveResult>,
    /// Where each active check stands (job in flight, next slot, why it waits).
    pub active_status: Vec<crate::active::CheckStatus>,
}

/// The daemon's evaluation side: its NVML session, the policy and what it last said.
#[derive(Debug)]
pub struct Daemon {
    config: Config,
    node: String,
    catalogue: Catalogue,
    scontrol: Scontrol,
    session: Session,
    policy: Policy,
    last_decision: Option<Decision>,
    last_failing: BTreeSet<String>,
    spool_error: Option<String>,
    active: Option<(crate::active::Scheduler, crate::active::SlurmClients)>,
}

impl Daemon {
    /// Sets the daemon up for `node` (nothing is run yet); loads what it remembers.
    pub fn new(config: Config, node: String) -> Result<Daemon, DaemonError> {
        let scontrol = Scontrol::locate(config.scontrol.as_deref())?;
        let catalogue = config.catalogue();
        let memory = match Memory::load(&config.state_dir) {
            Ok(m) => m,
            Err(e) => {
                error!("{e}; starting with nothing remembered");
                Memory::default()
            }
        };
        if let Some(d) = &memory.drained {
            info!(reason = %d.reason, "remembered: this node was drained by sgpu-healthd");
        }
        let policy = Policy::new(&catalogue, config.resume_after, memory);
        let active = active_scheduler(&config, &node, &scontrol);
        Ok(Daemon {
            active,
            // the full run reads the NVLink error counters too (gpu.nvlink_errors)
            session: Session::new(NvmlOptions {
                nvlink_counters: true,
                ..NvmlOptions::from_config(&config)
            }),
            catalogue,
            scontrol,
            policy,
            node,
            config,
            last_decision: None,
            last_failing: BTreeSet::new(),
            spool_error: None,
        })
    }

    /// The node acted on.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// What the policy remembers (its drain, the open breaker).
    pub fn memory(&self) -> &Memory {
        self.policy.memory()
    }

    /// One `full` run: check, decide, act, remember.
    pub fn run_once(&mut self, trigger: Trigger) -> RunReport {
        let mut ctx = self.check_context();
        if let Some((scheduler, slurm)) = self.active.as_mut() {
            slurm.set_gpus(ctx.expected_gpu_count);
            scheduler.tick(sgpu_spool::now_ms(), slurm);
        }
        let (mut results, judged_xids) = self.evaluate(&mut ctx);
        // the newest result of each active check is judged with every run
        let newest = crate::active::newest(&self.config);
        results.extend(crate::active::results(&self.config, &newest));
        let verdict = Verdict::of(&results);
        self.log_failures(&results);
        let decision = self.decide(&results, &judged_xids);
        self.log_decision(&decision, trigger);
        let spool = self.probe_spool();
        RunReport {
            results,
            verdict,
            decision,
            spool,
            active: newest.into_iter().map(|(_, r)| r).collect(),
            active_status: self
                .active
                .as_ref()
                .map(|(s, _)| s.statuses(sgpu_spool::now_ms()))
                .unwrap_or_default(),
        }
    }

    /// The context of a `full` run: sgpu.toml's settings and the GPU count Slurm's
    /// configuration expects of this node.
    fn check_context(&self) -> CheckContext {
        let mut ctx = CheckContext::new(Profile::Full);
        ctx.nvml_timeout = self.config.nvml_timeout;
        ctx.pinned_driver_version = self.config.pinned_driver_version.clone();
        ctx.infiniband = Some(self.config.infiniband.clone());
        ctx.expected_gpu_count = match NodeLayout::load(&nodeconf::slurm_conf_path(), &self.node) {
            Ok(l) => {
                for n in &l.notes {
                    debug!("slurm configuration: {n}");
                }
                l.expected_count()
            }
            Err(e) => {
                debug!("{e}");
                None
            }
        };
        ctx
    }

    /// The checks' results on a fresh snapshot (with the XIDs not yet reported, also
    /// returned), or the results of a snapshot that failed.
    fn evaluate(&mut self, ctx: &mut CheckContext) -> (Vec<CheckResult>, Vec<XidEvent>) {
        let mut judged_xids: Vec<XidEvent> = Vec::new();
        let results = match self.session.snapshot() {
            Ok(snapshot) => {
                match XidStore::open(&self.config.state_dir) {
                    Ok(store) => judged_xids = store.unreported(),
                    Err(e) => warn!("XID store: {e}; this run judges no XIDs"),
                }
                ctx.xids = judged_xids.clone();
                let (results, note) = checks::evaluate_remembering(
                    &snapshot,
                    ctx,
                    &self.catalogue,
                    &self.config.state_dir,
                    true,
                );
                if let Some(n) = note {
                    warn!("{n}; rules that need earlier readings are not judged");
                }
                results
            }
            Err(failure) => checks::evaluate_failure(&failure, ctx, &self.catalogue),
        };
        (results, judged_xids)
    }

    /// The policy's step on the run's draining failures (through Slurm), the judged XIDs
    /// marked reported when it says so, and what it remembers saved if it changed.
    fn decide(&mut self, results: &[CheckResult], judged_xids: &[XidEvent]) -> Decision {
        let failures: Vec<Failure> = results
            .iter()
            .filter(|r| r.drains())
            .map(|r| Failure {
                check: r.check.to_string(),
                gpu: r.gpu,
                reason: r.drain_reason(),
            })
            .collect();

        let before = self.policy.memory().clone();
        let mut ctl = SlurmControl {
            scontrol: &self.scontrol,
            node: &self.node,
            config: &self.config,
        };
        let outcome = self.policy.step(&failures, &mut ctl, unix_now());
        if outcome.mark_xids_reported {
            if let Some(last) = judged_xids.iter().map(|x| x.id).max() {
                match XidStore::open(&self.config.state_dir) {
                    Ok(mut store) => {
                        store.mark_reported(last);
                        if let Err(e) = store.save() {
                            error!("XID store: {e}");
                        }
                    }
                    Err(e) => error!("XID store: {e}"),
                }
            }
        }
        if self.policy.memory() != &before {
            if let Err(e) = self.policy.memory().save(&self.config.state_dir) {
                error!("cannot save what healthd remembers: {e}");
            }
        }
        outcome.decision
    }

    /// Whether the spool takes records, logged when that changes.
    fn probe_spool(&mut self) -> crate::spool_probe::SpoolHealth {
        let spool = crate::spool_probe::probe(&self.config.spool_dir);
        if spool.error != self.spool_error {
            match &spool.error {
                Some(e) => error!(
                    "the spool cannot take records: {e}; the gates' records are lost until \
                     it can (free space or fix its owner/mode)"
                ),
                None => info!("the spool takes records again"),
            }
            self.spool_error = spool.error.clone();
        }
        spool
    }

    fn log_failures(&mut self, results: &[CheckResult]) {
        let mut failing = BTreeSet::new();
        for r in results.iter().filter(|r| r.status == Status::Fail) {
            let gpu = r.gpu.map_or_else(|| "-".to_string(), |g| format!("gpu{g}"));
            let line = format!("{} {gpu}: {} ({})", r.check, r.message, r.severity);
            if !self.last_failing.contains(&line) {
                match r.severity {
                    Severity::Drain if r.would_drain() => warn!(
                        check = r.check,
                        "would drain (enforce = false): {}",
                        r.drain_reason()
                    ),
                    Severity::Drain => warn!(check = r.check, "failing: {line}"),
                    Severity::Warn => warn!(check = r.check, "{line}"),
                    _ => info!(check = r.check, "{line}"),
                }
            }
            failing.insert(line);
        }
        for gone in self.last_failing.difference(&failing) {
            info!("cleared: {gone}");
        }
        self.last_failing = failing;
    }

    fn log_decision(&mut self, d: &Decision, trigger: Trigger) {
        let same = self.last_decision.as_ref() == Some(d);
        self.last_decision = Some(d.clone());
        let node = self.node.as_str();
        match d {
            Decision::Drained { reason } => {
                warn!(node, ?trigger, "drained {node}: {reason}")
            }
            Decision::Resumed { reason } => info!(
                node,
                "resumed {node} after {} healthy runs (was: {reason})", self.config.resume_after
            ),
            _ if same => debug!(node, "unchanged: {d:?}"),
            Decision::BreakerOpen { trip, reason } => {
                error!(node, "{trip}: NOT draining {node} ({reason})")
            }
            d if d.is_error() => error!(node, "{d:?}"),
            Decision::Healthy => info!(node, "healthy"),
            Decision::WaitingToResume { .. } => debug!(node, "{d:?}"),
            d => info!(node, "{d:?}"),
        }
    }
}

/// The active-check scheduler when `[active]` lists checks (the job runs this binary with
/// `--run-active`); `None`, logged, when this binary's path cannot be read.
fn active_scheduler(
    config: &Config,
    node: &str,
    scontrol: &Scontrol,
) -> Option<(crate::active::Scheduler, crate::active::SlurmClients)> {
    if config.active.checks.is_empty() {
        return None;
    }
    let runner = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            error!("active checks off: cannot find this sgpu-healthd's path for the job: {e}");
            return None;
        }
    };
    info!(
        partition = config.active.partition.as_deref().unwrap_or("-"),
        "active checks: {}",
        config
            .active
            .checks
            .iter()
            .map(|c| format!("{} every {:.0} s", c.name, c.interval.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Some((
        crate::active::Scheduler::new(node, &config.active, &config.state_dir)
            .with_history(&config.spool_dir),
        crate::active::SlurmClients::new(scontrol, config, node, runner, None),
    ))
}

/// Records XIDs in the store; those that could not be stored stay in `pending`.
fn record_xids(state_dir: &std::path::Path, pending: &mut Vec<XidEvent>) {
    if pending.is_empty() {
        return;
    }
    match XidStore::open(state_dir) {
        Ok(mut store) => {
            store.record(pending.drain(..));
            if let Err(e) = store.save() {
                error!("XID store: {e}");
            }
        }
        Err(e) => warn!(
            "XID store: {e}; keeping {} XIDs to record later",
            pending.len()
        ),
    }
}

/// Starts the XID watch thread: every XID is recorded in the store (and counted in
/// `shared`), and a hardware XID sends a [`Trigger::Xid`] on `wake`. It stops when `stop` is set (within [`XID_WAIT`]).
pub fn spawn_xid_watch(
    config: &Config,
    wake: UnboundedSender<Trigger>,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
) -> Result<std::thread::JoinHandle<()>, DaemonError> {
    let opts = NvmlOptions::from_config(config);
    let state_dir: PathBuf = config.state_dir.clone();
    let xid_drains = config
        .catalogue()
        .get(cat::GPU_XID)
        .is_some_and(|c| c.runs_in(Profile::Full) && c.severity == Severity::Drain);
    std::thread::Builder::new()
        .name("sgpu-xid-watch".into())
        .spawn(move || {
            let mut session = Session::new(opts);
            let mut pending: Vec<XidEvent> = Vec::new();
            let mut failing = false;
            while !stop.load(Ordering::SeqCst) {
                let r = session.ready().and_then(|(w, fresh)| {
                    if fresh {
                        let unregistered = w.watch_xids()?;
                        if unregistered.is_empty() {
                            info!("XID watch: event set registered on every GPU");
                        } else {
                            warn!(?unregistered, "XID watch: GPUs not registered for XIDs");
                        }
                    }
                    w.drain_xids(XID_WAIT)
                });
                session.note(r.as_ref().map(|_| ()));
                match r {
                    Ok(events) => {
                        failing = false;
                        let mut hardware = false;
                        for e in &events {
                            let info = classify(e.code);
                            hardware |= info.class == XidClass::Hardware;
                            shared.record_xid(e.gpu_index, e.gpu_uuid.as_deref(), e.code);
                            warn!(
                                gpu = ?e.gpu_index,
                                xid = e.code,
                                class = info.class.as_str(),
                                "XID {} on gpu{}: {}",
                                e.code,
                                e.gpu_index.map_or_else(|| "?".into(), |i| i.to_string()),
                                info.name
                            );
                        }
                        pending.extend(events);
                        record_xids(&state_dir, &mut pending);
                        if hardware && xid_drains && wake.send(Trigger::Xid).is_err() {
                            break;
                        }
                    }
                    Err(f) => {
                        if !failing {
                            error!("XID watch: {f}; retrying every second");
                            failing = true;
                        }
                        record_xids(&state_dir, &mut pending);
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        })
        .map_err(|source| DaemonError::Io {
            what: "starting the XID watch thread",
            source,
        })
}

/// Starts per-job sampling: the job database (`<state_dir>/healthd.sled`; in memory only,
/// loudly, if it cannot be opened) and the sampler task, with the idle policy's actor when
/// `[idle.partition.*]` sets one.
fn spawn_sampler(config: &Config, node: &str, shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    let store: Box<dyn JobStore> = match SledStore::open(&config.state_dir) {
        Ok(s) => Box::new(s),
        Err(e) => {
            error!("{e}; per-job usage is kept in memory only (a restart loses it)");
            Box::new(MemStore::default())
        }
    };
    let mut sampler = Sampler::new(config, store, shared.clone());
    if config.idle.partitions.values().any(|p| p.policy.acts()) {
        match crate::idle_act::SlurmControl::new(config) {
            Ok(control) => {
                info!(
                    dry_run = config.idle.dry_run,
                    "idle GPU policy on for partition(s) {}",
                    config
                        .idle
                        .partitions
                        .iter()
                        .filter(|(_, p)| p.policy.acts())
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let actor = crate::idle_act::Actor::new(
                    config,
                    node.to_string(),
                    Box::new(control),
                    shared,
                );
                sampler = sampler.with_actor(actor);
            }
            Err(e) => error!("idle GPU policy: {e}; idle GPUs are measured, not acted on"),
        }
    }
    tokio::spawn(sampler::run(sampler, config.sample_interval))
}

/// Starts the spool forwarder when `[accounting] url` is set (and `forward` not false);
/// returns its task and its stop flag.
fn spawn_forwarder(
    config: &Config,
    shared: Arc<Shared>,
) -> Option<(tokio::task::JoinHandle<()>, Arc<AtomicBool>)> {
    let a = &config.accounting;
    let client = match forward::client(a)? {
        Ok(c) => c,
        Err(e) => {
            error!("[accounting]: {e}; usage records stay in the spool");
            return None;
        }
    };
    info!(
        url = client.base_url(),
        interval_s = a.forward_interval.as_secs(),
        batch = a.forward_batch,
        "forwarding the spool to sgpu-acctd"
    );
    // node history events (drains, resumes) go to POST /v1/history beside the records
    tokio::spawn(crate::event_forward::run(
        config.spool_dir.clone(),
        client.clone(),
        a.forward_interval,
    ));
    let forwarder = Forwarder::new(
        config.spool_dir.clone(),
        Box::new(client),
        a.forward_batch,
        Gate::Sampler(shared.clone()),
    );
    let stop = forwarder.stop_flag();
    let task = tokio::spawn(forward::run(
        forwarder,
        a.forward_interval,
        a.forward_backoff_max,
        shared,
    ));
    Some((task, stop))
}

/// Starts the `/status` and `/metrics` endpoint, if configured; a taken address is logged
/// and the daemon runs on without it (its checks matter more).
async fn spawn_http(config: &Config, shared: Arc<Shared>) -> Option<tokio::task::JoinHandle<()>> {
    let addr = config.status_listen?;
    match http::bind(addr, shared).await {
        Ok(server) => {
            info!(%addr, "serving /status and /metrics");
            Some(tokio::spawn(async move {
                if let Err(e) = server.await {
                    error!("status endpoint: {e}");
                }
            }))
        }
        Err(e) => {
            error!(%addr, "cannot serve /status and /metrics on {addr}: {e}");
            None
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(daemon: Daemon, config: &Config) -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let (wake_tx, mut wake_rx): (UnboundedSender<Trigger>, UnboundedReceiver<Trigger>) =
        unbounded_channel();
    let stop = Arc::new(AtomicBool::new(false));
    let shared = Shared::new(daemon.node(), config.sample_interval);
    let watch = spawn_xid_watch(config, wake_tx, stop.clone(), shared.clone())?;
    let sig = |kind, what| signal(kind).map_err(|source| DaemonError::Io { what, source });
    let mut term = sig(SignalKind::terminate(), "SIGTERM handler")?;
    let mut int = sig(SignalKind::interrupt(), "SIGINT handler")?;
    let http = spawn_http(config, shared.clone()).await;
    // the gates' readings (gate_socket); the socket is removed when the daemon stops
    let _gate_socket = crate::gate_server::start(config, daemon.node());
    let sampling = spawn_sampler(config, daemon.node(), shared.clone());
    let forwarding = spawn_forwarder(config, shared.clone());
    if forwarding.is_none() {
        info!("no [accounting] url (or forward = false): usage records stay in the spool");
    }
    let mut interval = tokio::time::interval(config.check_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(
        node = daemon.node(),
        interval_s = config.check_interval.as_secs(),
        resume_after = config.resume_after,
        sample_interval_s = config.sample_interval.as_secs(),
        "sgpu-healthd started"
    );
    let mut daemon = Some(daemon);
    loop {
        let trigger = tokio::select! {
            _ = interval.tick() => Trigger::Periodic,
            Some(t) = wake_rx.recv() => {
                // one run answers every XID that arrived meanwhile
                while wake_rx.try_recv().is_ok() {}
                t
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let Some(mut d) = daemon.take() else { break };
        let job = tokio::task::spawn_blocking(move || {
            let report = d.run_once(trigger);
            (d, report)
        });
        tokio::select! {
            joined = job => match joined {
                Ok((d, report)) => {
                    shared.record_run(&report, d.memory(), trigger);
                    daemon = Some(d);
                }
                Err(e) => {
                    error!("a run failed: {e}");
                    break;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        if trigger == Trigger::Xid {
            // the full run just happened: the next periodic one is an interval away
            interval.reset();
        }
    }
    info!("sgpu-healthd stopping");
    stop.store(true, Ordering::SeqCst);
    sampling.abort();
    if let Some((task, stop)) = forwarding {
        stop.store(true, Ordering::SeqCst);
        task.abort();
    }
    if let Some(h) = http {
        h.abort();
    }
    // the watch leaves within one wait unless the driver holds it; never wait on a hang
    let deadline = std::time::Instant::now() + XID_WAIT * 3;
    while !watch.is_finished() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
