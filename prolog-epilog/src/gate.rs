//! The gates themselves: what `sgpu-prolog` and `sgpu-epilog` do, as library functions.
//!
//! One NVML session per run (under the healthd watchdog), the XID store shared with the
//! daemon, the check catalogue's `quick` (prolog) or `post` (epilog) profile, a drain through
//! `scontrol` on a drain-worthy finding, and the job's records. The only process started is
//! `scontrol`: to drain, and once in the epilog of a GPU job to read its Slurm start and end
//! (`slurm_job_times`, see [`crate::slurm_times`]).

use std::path::Path;

use sgpu_nodelib::breaker::{self, Guarded};
use sgpu_nodelib::catalogue::Profile;
use sgpu_nodelib::checks::{self, CheckContext, CheckResult, Verdict};
use sgpu_nodelib::config::Config;
use sgpu_nodelib::gpu::{self, Collected, NodeSnapshot, NvmlOptions};
use sgpu_nodelib::nodeconf::{self, NodeLayout};
use sgpu_nodelib::slurmctl::Scontrol;
use sgpu_nodelib::xid::{XidEvent, XidStore};

use crate::env::{HealthMode, JobEnv};
use crate::handoff::{JobStartState, StartGpu};
use crate::records;
use crate::run_in_job::RunInJob;
use crate::slurm_times;

/// What a gate run found and did.
#[derive(Debug, Clone, Default)]
pub struct GateReport {
    /// Every check result.
    pub results: Vec<CheckResult>,
    /// The rolled-up verdict (`None`: checks were off for this job).
    pub verdict: Option<Verdict>,
    /// The drain reason, when the node was (or should have been) drained.
    pub drain_reason: Option<String>,
    /// Observe-only mode (`enforce = false`): the reason the gate would have drained with.
    pub would_drain: Option<String>,
    /// Whether the node is drained for the finding: drained now, or already held by sgpu.
    pub drained: bool,
    /// Why the node was not drained although a finding called for it: the circuit breaker
    /// was open, or the node is held by others (DOWN, FAIL, an admin's drain). The job
    /// then runs in every `--gpu-health` mode: failing the gate would make Slurm drain the
    /// node itself ("Prolog error"/"Epilog error").
    pub not_drained: Option<String>,
    /// Whether the circuit breaker kept the node up: the XIDs judged stay unreported, so
    /// healthd drains for them once the breaker closes.
    pub breaker_open: bool,
    /// Log lines: what was done and every sgpu-side problem met on the way.
    pub log: Vec<String>,
    /// Whether sgpu itself erred (configuration, state, spool), as opposed to a GPU fault.
    pub sgpu_error: bool,
    /// The exit status for slurmd: non-zero fails the prolog, so Slurm requeues the job.
    pub exit_code: i32,
    /// Where the GPUs' readings came from (`None`: checks were not run).
    pub readings: Option<Readings>,
}

/// Where a gate's GPU readings came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readings {
    /// sgpu-healthd's warm NVML session, over its root-only socket
    /// ([`crate::healthd_source`]).
    Healthd,
    /// The gate's own NVML session (healthd off, away, refused or too old).
    Nvml,
}

impl Readings {
    /// `healthd` or `nvml`, as the logs and the job note say.
    pub fn as_str(self) -> &'static str {
        match self {
            Readings::Healthd => "healthd",
            Readings::Nvml => "nvml",
        }
    }
}

impl GateReport {
    fn note(&mut self, line: impl Into<String>) {
        self.log.push(line.into());
    }

    fn error(&mut self, line: impl Into<String>) {
        self.sgpu_error = true;
        self.log.push(line.into());
    }

    /// The report as the gate returns it: with `fail_closed`, an sgpu error fails the gate.
    fn closed(mut self, config: &Config) -> GateReport {
        if self.sgpu_error && config.fail_closed {
            self.exit_code = 1;
        }
        self
    }
}

/// Checks run against one NVML snapshot (or NVML's failure), with the XID store consulted.
struct Checked {
    results: Vec<CheckResult>,
    snapshot: Option<NodeSnapshot>,
    job_nvml: Vec<u32>,
    /// The job's devices resolved (MIG slices included); `None` when NVML failed.
    job_devices: Option<nodeconf::JobDevices>,
    xids: Vec<XidEvent>,
}

fn run_checks(config: &Config, job: &JobEnv, profile: Profile, report: &mut GateReport) -> Checked {
    let layout = match NodeLayout::load(&nodeconf::slurm_conf_path(), &job.node) {
        Ok(l) => {
            for n in &l.notes {
                report.note(format!("slurm configuration: {n}"));
            }
            Some(l)
        }
        Err(e) => {
            report.note(e.to_string());
            None
        }
    };
    let collected = collect(config, job, layout.as_ref(), report);
    let catalogue = config.catalogue();
    let mut ctx = CheckContext::new(profile);
    ctx.nvml_timeout = config.nvml_timeout;
    ctx.pinned_driver_version = config.pinned_driver_version.clone();
    ctx.infiniband = Some(config.infiniband.clone());
    ctx.expected_gpu_count = layout.as_ref().and_then(NodeLayout::expected_count);

    match collected {
        Err(failure) => {
            ctx.job_gpus = Some(job.gpus.clone());
            Checked {
                results: checks::evaluate_failure(&failure, &ctx, &catalogue),
                snapshot: None,
                job_nvml: job.gpus.clone(),
                job_devices: None,
                xids: Vec::new(),
            }
        }
        Ok(c) => {
            // Slurm's indices to NVML's GPUs, and MIG slices to their GPU and instance
            let devices =
                nodeconf::job_devices(layout.as_ref(), &job.gpus, &job.mig_uuids, &c.snapshot);
            for n in &devices.notes {
                report.note(format!("job GPUs: {n}"));
            }
            let job_nvml = devices.gpus.clone();
            ctx.job_gpus = Some(job_nvml.clone());
            ctx.job_slices = devices.slices.clone();
            // the XID store: what this run's event set caught plus what the daemon recorded
            // and nobody has acted on yet
            ctx.xids = match XidStore::open(&config.state_dir) {
                Ok(mut store) => {
                    // rewrite (and fsync) the store only when this run saw something new
                    if !store.record(c.xids.events.clone()).is_empty() {
                        if let Err(e) = store.save() {
                            report.error(format!("XID store: {e}"));
                        }
                    }
                    store.unreported()
                }
                Err(e) => {
                    report.error(format!("XID store: {e}; using this run's XIDs only"));
                    c.xids.events.clone()
                }
            };
            // the node's GPU history (PCIe width baseline, HW throttle streaks) is read and
            // updated by every gate run as by the daemon
            let (results, note) = checks::evaluate_remembering(
                &c.snapshot,
                &mut ctx,
                &catalogue,
                &config.state_dir,
                true,
            );
            if let Some(n) = note {
                report.error(format!("GPU history: {n}"));
            }
            Checked {
                results,
                snapshot: Some(c.snapshot),
                job_nvml,
                job_devices: Some(devices),
                xids: ctx.xids,
            }
        }
    }
}

/// The node's readings: healthd's when it answers in time as a root peer with a young
/// enough snapshot in which every GPU of the job was read fresh; else the gate's own NVML
/// session (its own XID event set too), with one log line saying why.
fn collect(
    config: &Config,
    job: &JobEnv,
    layout: Option<&NodeLayout>,
    report: &mut GateReport,
) -> Result<Collected, gpu::NvmlFailure> {
    match from_healthd(config, job, layout) {
        Ok(Some((c, age_ms))) => {
            report.note(format!("readings: healthd (snapshot {age_ms} ms old)"));
            report.readings = Some(Readings::Healthd);
            return Ok(c);
        }
        Ok(None) => report.note("readings: nvml (gate_socket = \"off\")"),
        Err(why) => report.note(format!("readings: nvml (healthd: {why})")),
    }
    report.readings = Some(Readings::Nvml);
    gpu::collect(&NvmlOptions::from_config(config), true)
}

/// Why the gate does not take healthd's readings for the job (it reads NVML itself).
#[derive(Debug, thiserror::Error)]
enum HealthdReadingsError {
    /// healthd could not be asked, or its answer is not one the gate takes.
    #[error(transparent)]
    Source(#[from] crate::healthd_source::SourceError),
    /// GPUs of the job whose processes and energy healthd did not read at the request.
    #[error("processes and energy of GPU(s) {0:?} were not read at the request")]
    Stale(Vec<u32>),
}

/// healthd's readings for this job, checked (see [`collect`]); `Ok(None)`: switched off.
fn from_healthd(
    config: &Config,
    job: &JobEnv,
    layout: Option<&NodeLayout>,
) -> Result<Option<(Collected, u64)>, HealthdReadingsError> {
    // the job's GPUs by device minor, so healthd reads those fresh; all when one is unknown
    let minors = layout.and_then(|l| {
        job.gpus
            .iter()
            .map(|i| l.gpus.devices.iter().find(|d| d.index == *i)?.minor)
            .collect::<Option<Vec<u32>>>()
    });
    let minors = if job.mig_uuids.is_empty() {
        minors
    } else {
        None
    };
    let fetched = crate::healthd_source::fetch(
        &config.gate,
        &job.node,
        minors,
        crate::healthd_source::ROOT_UID,
    )?;
    let Some(f) = fetched else {
        return Ok(None);
    };
    // every GPU of the job that exists must have been read at the request
    let devices = nodeconf::job_devices(layout, &job.gpus, &job.mig_uuids, &f.snapshot);
    let stale: Vec<u32> = devices
        .gpus
        .iter()
        .copied()
        .filter(|i| f.snapshot.gpus.iter().any(|g| g.index == *i) && !f.fresh_gpus.contains(i))
        .collect();
    if !stale.is_empty() {
        return Err(HealthdReadingsError::Stale(stale));
    }
    let collected = Collected {
        snapshot: f.snapshot,
        // healthd watches XIDs into the XID store, which the checks read
        xids: gpu::XidDrain {
            events: Vec::new(),
            unregistered: Vec::new(),
        },
    };
    Ok(Some((collected, f.age_ms)))
}

/// Marks the XIDs the checks just judged as reported, so they are not judged again.
fn acknowledge_xids(config: &Config, xids: &[XidEvent], report: &mut GateReport) {
    let Some(last) = xids.iter().map(|x| x.id).max() else {
        return;
    };
    match XidStore::open(&config.state_dir) {
        Ok(mut store) => {
            store.mark_reported(last);
            if let Err(e) = store.save() {
                report.error(format!("XID store: {e}"));
            }
        }
        Err(e) => report.error(format!("XID store: {e}")),
    }
}

/// Drains the node for `reason` through slurmctld, under the circuit breaker and never over
/// an admin's state ([`breaker::guarded_drain`]); records the outcome in `report`.
fn drain(config: &Config, node: &str, reason: &str, source: &str, report: &mut GateReport) {
    report.drain_reason = Some(reason.to_string());
    let guarded = Scontrol::locate(config.scontrol.as_deref())
        .map_err(breaker::GuardError::from)
        .and_then(|s| breaker::guarded_drain(&s, node, reason, &config.breaker));
    match guarded {
        Ok(Guarded::AlreadyHeld(state)) => {
            report.drained = true;
            report.note(format!(
                "{node} is already drained by sgpu ({}): left as it is",
                state.reason.unwrap_or_default()
            ));
        }
        Ok(Guarded::HeldByOthers(state)) => {
            let why = format!(
                "{node} is {} ({}), not sgpu's: not drained over",
                state.state,
                state.reason.unwrap_or_default()
            );
            report.note(why.clone());
            report.not_drained = Some(why);
        }
        Ok(Guarded::Open { trip, gave_back }) => {
            report.breaker_open = true;
            let why = format!(
                "{trip}: NOT draining {node} ({reason}){}",
                if gave_back {
                    "; drained in the same moment as other nodes and given back"
                } else {
                    ""
                }
            );
            // logged at error level (a drain reason is set), but no sgpu error: with
            // fail_closed that would fail the gate, and Slurm would drain the node
            report.note(why.clone());
            report.not_drained = Some(why);
        }
        Ok(Guarded::Drained) => {
            report.drained = true;
            report.note(format!("drained {node}: {reason}"));
            // the node history (forwarded to acctd by healthd); the drain stands without it
            if let Err(e) = sgpu_nodelib::node_events::record(
                &config.spool_dir,
                node,
                sgpu_spool::NodeAction::Drain,
                source,
                reason,
            ) {
                report.note(e.to_string());
            }
        }
        Err(e) => report.error(format!("could not drain {node} ({reason}): {e}")),
    }
}

/// The job's GPUs for the records: per Slurm index its GPU, or for a MIG slice the slice's
/// `MIG-` UUID and `<GPU name> MIG <profile>` without an energy reading (NVML counts energy
/// per GPU only, and the GPU is shared with other slices).
fn start_gpus(job: &JobEnv, checked: &Checked) -> Vec<StartGpu> {
    let (Some(devices), Some(snap)) = (&checked.job_devices, &checked.snapshot) else {
        return start_gpus_by_position(job, checked);
    };
    devices
        .by_index
        .iter()
        .map(|d| {
            let nvml_index = d.gpu.unwrap_or(d.slurm_index);
            let g = d.gpu.and_then(|i| snap.gpus.iter().find(|g| g.index == i));
            match &d.slice {
                Some(slice) => {
                    let m = g.and_then(|g| slice.devices(g).into_iter().next());
                    let share = m.and_then(|m| m.share());
                    StartGpu {
                        slurm_index: d.slurm_index,
                        nvml_index,
                        uuid: m.and_then(|m| m.uuid.value().cloned()),
                        name: match (
                            g.and_then(|g| g.name.value()),
                            m.and_then(|m| m.profile.value()),
                        ) {
                            (Some(n), Some(p)) => Some(format!("{n} MIG {p}")),
                            (n, _) => n.cloned(),
                        },
                        // the GPU's counter, for the slice's share of the GPU's energy;
                        // unknown share: billed as a whole GPU, without energy
                        energy_mj: share
                            .as_ref()
                            .and(g.and_then(|g| g.energy_mj.value().copied())),
                        mig: share,
                    }
                }
                None => whole_gpu(d.slurm_index, nvml_index, g),
            }
        })
        .collect()
}

/// [`start_gpus`] when NVML could not be read: Slurm's indices paired with NVML's by position.
fn start_gpus_by_position(job: &JobEnv, checked: &Checked) -> Vec<StartGpu> {
    job.gpus
        .iter()
        .zip(&checked.job_nvml)
        .map(|(&slurm_index, &nvml_index)| {
            let g = checked
                .snapshot
                .as_ref()
                .and_then(|s| s.gpus.iter().find(|g| g.index == nvml_index));
            whole_gpu(slurm_index, nvml_index, g)
        })
        .collect()
}

/// A whole GPU of the job for the records: its UUID, name and energy counter from its
/// reading `g` (each absent without one).
fn whole_gpu(slurm_index: u32, nvml_index: u32, g: Option<&gpu::GpuSnapshot>) -> StartGpu {
    StartGpu {
        slurm_index,
        nvml_index,
        uuid: g.and_then(|g| g.uuid().map(str::to_string)),
        name: g.and_then(|g| g.name.value().cloned()),
        energy_mj: g.and_then(|g| g.energy_mj.value().copied()),
        mig: None,
    }
}

/// The prolog: check the job's GPUs, drain and fail on a drain-worthy finding, else leave the
/// epilog its note and spool the job-start record.
pub fn prolog(config: &Config, job: &JobEnv) -> GateReport {
    let mut report = GateReport::default();
    let mut checked = run_checks(config, job, Profile::Quick, &mut report);
    // PrologFlags=RunInJob (24.05+) with ConstrainDevices: only the job's GPUs are readable
    let in_job = RunInJob::detect(&nodeconf::slurm_conf_path());
    if let Some(note) = in_job.note(job.job_id, &checked.job_nvml) {
        report.note(note);
        checked.results = in_job.scope(std::mem::take(&mut checked.results), &checked.job_nvml);
    }
    let verdict = Verdict::of(&checked.results);
    if job.health_mode == HealthMode::Off {
        report.note(format!(
            "job {} asked for --gpu-health=off: verdict {} not acted on",
            job.job_id,
            verdict.as_str()
        ));
    } else {
        report.verdict = Some(verdict);
        note_would_drain(&checked, &mut report);
        if let Some(reason) = job_drain_reason(&checked) {
            drain(config, &job.node, &reason, "prolog", &mut report);
            if let Some(why) = &report.not_drained {
                // failing the prolog would make Slurm drain the node ("Prolog error"),
                // around the breaker or over the admin's reason
                report.note(format!(
                    "job {} runs on a node that failed its gate (--gpu-health={}): {why}",
                    job.job_id, job.health_mode
                ));
            } else if job.health_mode == HealthMode::Strict {
                // Slurm requeues the job; a prolog failure also drains the node, with our
                // reason kept when we drained first
                report.exit_code = 1;
            } else {
                report.note(format!(
                    "job {} runs anyway: it asked for --gpu-health={}",
                    job.job_id, job.health_mode
                ));
            }
        }
        for r in checked
            .results
            .iter()
            .filter(|r| r.status == checks::Status::Fail)
        {
            report.note(format!(
                "{} gpu{}: {} ({})",
                r.check,
                r.gpu.map_or_else(|| "-".to_string(), |g| g.to_string()),
                r.message,
                r.severity
            ));
        }
        if !report.breaker_open {
            acknowledge_xids(config, &checked.xids, &mut report);
        }
    }
    report.results = checked.results.clone();
    // end markers of runs a day old: their jobs are done with this node
    sgpu_spool::job_note::sweep_ended(&config.state_dir, std::time::Duration::from_secs(86_400));
    // notes of this job's runs before the previous one: their epilogs never ran here
    if let Err(e) = JobStartState::remove_stale(&config.state_dir, job.job_id, job.restart_count) {
        report.note(format!("job start note: {e}"));
    }
    // The note tells this run's epilog which run it ends (its own environment already counts
    // a requeue), when it started and its GPUs.
    let note = JobStartState {
        job_id: job.job_id,
        node: job.node.clone(),
        run: job.restart_count,
        start_ms: sgpu_spool::now_ms(),
        gpus: start_gpus(job, &checked),
        readings: report.readings.map(|r| r.as_str().to_string()),
    };
    if let Err(e) = note.save(&config.state_dir) {
        report.error(format!("job start note: {e}"));
    }
    if report.exit_code != 0 {
        // The run ends here (Slurm requeues the job) but Slurm bills it (sacct counts its
        // GPUs from allocation to requeue): with the note its epilog's job_end bills the run
        // as Slurm does. No job_start: nothing ran to sample.
        return report;
    }
    if let Err(e) = records::spool_start(config, job, &note) {
        report.error(format!("job-start record: {e}"));
    }
    report.closed(config)
}

/// Slurm's window of a run a requeue ended (the environment counts more restarts than the
/// note's run; slurmctld shows the next run by now), from slurmdbd
/// ([`crate::run_window`]); `None` (the node's window is used) when that is off or unknown.
fn requeued_run_window(
    config: &Config,
    job: &JobEnv,
    start: &JobStartState,
    end_ms: u64,
    report: &mut GateReport,
) -> Option<sgpu_spool::SlurmWindow> {
    if start.gpus.is_empty() || !config.slurm_job_times || job.restart_count <= start.run {
        return None;
    }
    let sacct = crate::run_window::locate_sacct(config.scontrol.as_deref());
    match crate::run_window::from_slurmdbd(
        sacct.as_deref().and_then(|p| p.to_str()),
        job.job_id,
        start.start_ms.min(end_ms),
        end_ms,
    ) {
        Ok(w) => {
            report.note(format!(
                "job {} run {} was requeued: Slurm's window {}..{} from slurmdbd",
                job.job_id, start.run, w.start_s, w.end_s
            ));
            Some(w)
        }
        Err(why) => {
            report.note(format!(
                "warning: job {} run {} was requeued and slurmdbd gave no window for it \
                 ({why}); allocated GPU time is counted over the node's prolog-to-epilog window",
                job.job_id, start.run
            ));
            None
        }
    }
}

/// The epilog: spool the job-end record, look for damage the job left, drain on it.
pub fn epilog(config: &Config, job: &JobEnv) -> GateReport {
    let mut report = GateReport::default();
    let end_ms = sgpu_spool::now_ms();
    let checked = run_checks(config, job, Profile::Post, &mut report);
    let (start, unnoted) = ended_run(config, job, &checked, end_ms, &mut report);
    let window = slurm_window(config, job, start.as_ref(), unnoted, end_ms, &mut report);
    spool_end(
        config,
        job,
        start.as_ref(),
        &checked,
        end_ms,
        window,
        &mut report,
    );

    let verdict = Verdict::of(&checked.results);
    report.verdict = Some(verdict);
    note_would_drain(&checked, &mut report);
    if let Some(reason) = job_drain_reason(&checked) {
        drain(config, &job.node, &reason, "epilog", &mut report);
        if !report.drained && report.not_drained.is_none() {
            // we could not drain: fail, so slurmd drains the node ("Epilog error")
            report.exit_code = 1;
        }
    }
    if !report.breaker_open {
        acknowledge_xids(config, &checked.xids, &mut report);
    }
    report.results = checked.results;
    report.closed(config)
}

/// The run this epilog ends and whether the prolog left no note of it (`true`: its start
/// is made up from the job's GPUs and Slurm's window, without energy).
fn ended_run(
    config: &Config,
    job: &JobEnv,
    checked: &Checked,
    end_ms: u64,
    report: &mut GateReport,
) -> (Option<JobStartState>, bool) {
    // the run this epilog ends: the prolog's note of it (a requeue may have started the next
    // run's prolog here already; see sgpu_spool::job_note::epilog_run)
    let start =
        match JobStartState::load_for_epilog(&config.state_dir, job.job_id, job.restart_count) {
            Ok(s) => s,
            Err(e) => {
                report.error(format!("job start note: {e}"));
                None
            }
        };
    // No note: this run had no sgpu prolog here. slurmd does not run the prolog again for a
    // requeued job that comes back to the same node at once (seen after preemption on the
    // test cluster); Slurm bills that run, so the epilog does too, from what it knows: the
    // job's GPUs (its own NVML reading) and Slurm's window, without energy.
    let unnoted = start.is_none();
    let start = match start {
        Some(s) => Some(s),
        None if !job.gpus.is_empty() && config.slurm_job_times => {
            report.note(format!(
                "job {} run {}: no start note from sgpu-prolog (the prolog did not run for \
                 this run); allocated GPU time from Slurm's window, no energy",
                job.job_id, job.restart_count
            ));
            let mut gpus = start_gpus(job, checked);
            for g in &mut gpus {
                g.energy_mj = None;
            }
            Some(JobStartState {
                job_id: job.job_id,
                node: job.node.clone(),
                run: job.restart_count,
                start_ms: end_ms,
                gpus,
                readings: None,
            })
        }
        None => {
            report.note(format!(
                "job {}: no start note from sgpu-prolog; the end record has no energy deltas",
                job.job_id
            ));
            None
        }
    };
    (start, unnoted)
}

/// Slurm's window of the run (so allocated GPU time equals sacct's): from slurmctld, else
/// from slurmdbd for a run a requeue ended; `None`: the record keeps the node's window.
fn slurm_window(
    config: &Config,
    job: &JobEnv,
    start: Option<&JobStartState>,
    unnoted: bool,
    end_ms: u64,
    report: &mut GateReport,
) -> Option<sgpu_spool::SlurmWindow> {
    // Slurm's own window, so allocated GPU time equals sacct's; only for a job with GPUs here
    let window = match start.filter(|s| !s.gpus.is_empty()) {
        Some(s) => match slurm_times::for_epilog(
            config,
            job.job_id,
            Some(&slurm_times::NodeRun {
                run: s.run,
                // without a note the run's start on this node is unknown
                start_ms: if unnoted { 0 } else { s.start_ms.min(end_ms) },
                end_ms,
            }),
        ) {
            Ok(w) => w,
            Err(e) if e.contradicts_node() => {
                // an error in the log, not a failed epilog: slurmd would drain the node for
                // what is an accounting disagreement; the record keeps the node's window
                report.note(format!(
                    "error: job {}: {e}; allocated GPU time is counted over the node's \
                     prolog-to-epilog window",
                    job.job_id
                ));
                None
            }
            Err(e) => {
                // the record still goes out, with the gates' window; no error: the job's
                // accounting is whole, only not to Slurm's second
                report.note(format!(
                    "warning: job {}: Slurm's start/end not read ({e}); allocated GPU time \
                     is counted over the prolog-to-epilog window",
                    job.job_id
                ));
                None
            }
        },
        None => None,
    };
    match start {
        Some(s) if window.is_none() => requeued_run_window(config, job, s, end_ms, report),
        _ => window,
    }
}

/// Spools the job-end record; once it is written, the run's start note is marked ended
/// and removed.
fn spool_end(
    config: &Config,
    job: &JobEnv,
    start: Option<&JobStartState>,
    checked: &Checked,
    end_ms: u64,
    window: Option<sgpu_spool::SlurmWindow>,
    report: &mut GateReport,
) {
    if let Err(e) = records::spool_end(
        config,
        job,
        start,
        checked.snapshot.as_ref(),
        end_ms,
        window,
    ) {
        report.error(format!("job-end record: {e}"));
    } else if let Some(s) = start {
        // the run ended here: a rerun that slurmd gives no prolog (same node, at once)
        // finds its run as the next one (sgpu_spool::job_note::read_run)
        if let Err(e) = sgpu_spool::job_note::mark_ended(&config.state_dir, job.job_id, s.run) {
            report.note(format!("job start note: {e}"));
        }
        if let Err(e) = JobStartState::remove(&config.state_dir, job.job_id, s.run) {
            report.error(format!("job start note: {e}"));
        }
    }
}

/// The job's MIG slices (none when NVML failed or the job has none).
fn job_slices(checked: &Checked) -> &[sgpu_nodelib::mig::JobSlice] {
    checked
        .job_devices
        .as_ref()
        .and_then(|d| d.slices.as_deref())
        .unwrap_or_default()
}

/// The drain reason, naming the job's MIG slices on the failing GPU.
fn job_drain_reason(checked: &Checked) -> Option<String> {
    checks::drain_reason_for_job(
        &checked.results,
        job_slices(checked),
        checked.snapshot.as_ref(),
    )
}

/// Observe-only mode (`enforce = false`): what the gate would have drained for, logged
/// and kept in the report; neither the node nor the job is touched for it.
fn note_would_drain(checked: &Checked, report: &mut GateReport) {
    if let Some(reason) = checks::would_drain_reason_for_job(
        &checked.results,
        job_slices(checked),
        checked.snapshot.as_ref(),
    ) {
        report.note(format!("would drain (enforce = false): {reason}"));
        report.would_drain = Some(reason);
    }
}

/// Loads the configuration the gates use (`$SGPU_CONFIG`, else `/etc/sgpu/sgpu.toml`).
pub fn load_config(explicit: Option<&Path>) -> Result<Config, sgpu_nodelib::config::ConfigError> {
    Config::discover(explicit)
}
