//! What the daemon knows right now, shared between its parts and served on its local HTTP
//! endpoint: `GET /status` (JSON, [`StatusDoc`]) and `GET /metrics` (see [`crate::metrics`]).
//!
//! The check loop records each run ([`Shared::record_run`]), the XID watch each XID
//! ([`Shared::record_xid`]), the sampler each sample batch and the running jobs
//! ([`Shared::record_sample`]). Readers take a consistent copy under one lock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;

use crate::daemon::{RunReport, Trigger};
use crate::policy::{Decision, Memory};
use crate::usage::JobAccumulator;
use sgpu_nodelib::breaker::Trip;
use sgpu_nodelib::checks::{CheckResult, Verdict};
use sgpu_nodelib::gpu::{GpuSample, NvmlFailure};

/// The job labels a GPU carries in metrics while a job holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct JobLabels {
    /// The job run's key ([`crate::usage::job_key`]).
    pub key: String,
    /// Slurm job id.
    pub job_id: u32,
    /// Job owner.
    pub user: String,
    /// Slurm account (empty when unset).
    pub account: String,
}

impl JobLabels {
    /// The labels of `acc`'s job.
    pub fn of(acc: &JobAccumulator) -> JobLabels {
        JobLabels {
            key: acc.key(),
            job_id: acc.job_id,
            user: acc.user.clone(),
            account: acc.account.clone().unwrap_or_default(),
        }
    }
}

/// The last check run.
#[derive(Debug, Clone)]
pub struct LastRun {
    /// When it finished, Unix ms.
    pub at_ms: u64,
    /// What started it.
    pub trigger: Trigger,
    /// Its results and decision.
    pub report: RunReport,
}

/// The live state behind `/status` and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// The Slurm node name.
    pub node: String,
    /// When the daemon started, Unix ms.
    pub started_at_ms: u64,
    /// The configured sample interval.
    pub sample_interval: Duration,
    /// The last check run, once there was one.
    pub last_run: Option<LastRun>,
    /// What healthd remembers (its drain, the open breaker).
    pub memory: Memory,
    /// Drains done since start.
    pub drains_total: u64,
    /// Resumes done since start.
    pub resumes_total: u64,
    /// Drains the circuit breaker refused since start.
    pub breaker_refusals_total: u64,
    /// The latest sample batch (empty until the first one).
    pub gpus: Vec<GpuSample>,
    /// When it was taken, Unix ms.
    pub last_sample_ms: Option<u64>,
    /// How long the last sampling cycle took.
    pub last_sample_duration: Option<Duration>,
    /// Why the last sampling cycle could not read the GPUs, if it could not.
    pub sample_error: Option<String>,
    /// Sample batches taken since start.
    pub samples_total: u64,
    /// Sampling cycles that could not read the GPUs.
    pub sample_errors_total: u64,
    /// Job usage records written since start.
    pub jobs_finalised_total: u64,
    /// Idle-policy actions since start, by action (`warn`, `mail`, `cancel`, `recovered`,
    /// `refused`).
    pub idle_actions: BTreeMap<&'static str, u64>,
    /// Which job holds each GPU (by UUID).
    pub holders: BTreeMap<String, JobLabels>,
    /// The running jobs' accumulators.
    pub jobs: Vec<JobAccumulator>,
    /// XIDs since start by (GPU index, UUID, XID, holding job if any).
    pub xids: BTreeMap<(u32, String, u64, Option<JobLabels>), u64>,
    /// Spool files the sampler no longer needs (see [`crate::forward`]).
    pub spool_released: std::collections::BTreeSet<std::ffi::OsString>,
    /// The spool forwarder's counters.
    pub forward: crate::forward::ForwardStats,
    /// The last spool probe (`None` before the first check run).
    pub spool: Option<crate::spool_probe::SpoolHealth>,
}

/// The daemon's shared state.
#[derive(Debug)]
pub struct Shared {
    live: Mutex<Live>,
    /// Duration of each sampling cycle (NVML read, spool scan, database flush), seconds.
    pub sample_duration: Histogram,
}

/// The sampling-latency histogram's buckets, seconds.
pub const SAMPLE_BUCKETS: [f64; 10] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

impl Shared {
    /// Fresh state for `node`.
    pub fn new(node: &str, sample_interval: Duration) -> Arc<Shared> {
        Arc::new(Shared {
            live: Mutex::new(Live {
                node: node.to_string(),
                started_at_ms: sgpu_spool::now_ms(),
                sample_interval,
                ..Live::default()
            }),
            sample_duration: Histogram::new(SAMPLE_BUCKETS),
        })
    }

    /// The live state, locked (a panic elsewhere while holding it does not poison readers).
    pub fn lock(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a finished check run and what healthd remembers after it.
    pub fn record_run(&self, report: &RunReport, memory: &Memory, trigger: Trigger) {
        let mut l = self.lock();
        match &report.decision {
            Decision::Drained { .. } => l.drains_total += 1,
            Decision::Resumed { .. } => l.resumes_total += 1,
            Decision::BreakerOpen { .. } => l.breaker_refusals_total += 1,
            _ => {}
        }
        l.memory = memory.clone();
        l.spool = Some(report.spool.clone());
        l.last_run = Some(LastRun {
            at_ms: sgpu_spool::now_ms(),
            trigger,
            report: report.clone(),
        });
    }

    /// Counts one XID on a GPU, against the job holding it now.
    pub fn record_xid(&self, gpu: Option<u32>, uuid: Option<&str>, code: u64) {
        let mut l = self.lock();
        let uuid = uuid.map(str::to_string).or_else(|| {
            let g = gpu?;
            l.gpus
                .iter()
                .find(|s| s.index == g)
                .and_then(|s| s.uuid.clone())
        });
        let index = gpu.or_else(|| {
            let u = uuid.as_deref()?;
            l.gpus
                .iter()
                .find(|s| s.uuid.as_deref() == Some(u))
                .map(|s| s.index)
        });
        let job = uuid.as_ref().and_then(|u| l.holders.get(u)).cloned();
        let key = (
            index.unwrap_or(u32::MAX),
            uuid.unwrap_or_default(),
            code,
            job,
        );
        *l.xids.entry(key).or_insert(0) += 1;
    }

    /// Records a sampling cycle: the GPUs' readings (or why there are none), the running
    /// jobs and their GPUs, and how long it took.
    pub fn record_sample(
        &self,
        samples: Result<&[GpuSample], &NvmlFailure>,
        at_ms: u64,
        jobs: Vec<JobAccumulator>,
        holders: BTreeMap<String, JobLabels>,
        took: Duration,
    ) {
        self.sample_duration.observe(took.as_secs_f64());
        let mut l = self.lock();
        match samples {
            Ok(s) => {
                l.gpus = s.to_vec();
                l.last_sample_ms = Some(at_ms);
                l.samples_total += 1;
                l.sample_error = None;
            }
            Err(e) => {
                l.sample_errors_total += 1;
                l.sample_error = Some(e.to_string());
            }
        }
        l.last_sample_duration = Some(took);
        // XID series of jobs that ended go with them
        let running: std::collections::BTreeSet<String> =
            jobs.iter().map(JobAccumulator::key).collect();
        l.xids
            .retain(|(_, _, _, job), _| job.as_ref().is_none_or(|j| running.contains(&j.key)));
        l.jobs = jobs;
        l.holders = holders;
    }

    /// Publishes the spool files the sampler no longer needs (the forwarder may send them).
    pub fn record_spool_released(&self, names: std::collections::BTreeSet<std::ffi::OsString>) {
        self.lock().spool_released = names;
    }

    /// Counts a finalised job.
    pub fn record_finalised(&self) {
        self.lock().jobs_finalised_total += 1;
    }

    /// Counts an idle-policy action.
    pub fn record_idle_action(&self, action: &'static str) {
        *self.lock().idle_actions.entry(action).or_insert(0) += 1;
    }

    /// The `/status` document.
    pub fn status(&self) -> StatusDoc {
        status_doc(&self.lock(), sgpu_spool::now_ms())
    }
}

pub use sgpu_wire::healthd::{
    BreakerDoc, CheckResultDoc, DrainDoc, GpuDoc, HealthDoc, JobDoc, JobGpuDoc, SamplingDoc,
    StatusDoc, TripDoc,
};

/// A decision's kind: `healthy`, `drained`, `drain_failed`, `breaker_open`,
/// `breaker_unknown`, `already_drained`, `admin_drained`, `held_by_others`, `overridden`, `holding`,
/// `waiting_to_resume`, `resumed`, `resume_failed`, `slurm_unreachable`.
pub fn decision_kind(d: &Decision) -> (&'static str, Option<String>) {
    match d {
        Decision::Healthy => ("healthy", None),
        Decision::Drained { reason } => ("drained", Some(reason.clone())),
        Decision::DrainFailed { reason, error } => {
            ("drain_failed", Some(format!("{reason}: {error}")))
        }
        Decision::BreakerOpen { trip, reason } => {
            ("breaker_open", Some(format!("{trip}: {reason}")))
        }
        Decision::BreakerUnknown { error } => ("breaker_unknown", Some(error.clone())),
        Decision::AlreadyDrained { reason } => ("already_drained", Some(reason.clone())),
        Decision::AdminDrained { reason } => ("admin_drained", Some(reason.clone())),
        Decision::HeldByOthers { state, reason } => {
            ("held_by_others", Some(format!("{state}: {reason}")))
        }
        Decision::Overridden { keys } => ("overridden", Some(keys.join(", "))),
        Decision::Holding { checks } => ("holding", Some(checks.join(", "))),
        Decision::WaitingToResume {
            healthy_runs,
            needed,
        } => (
            "waiting_to_resume",
            Some(format!("{healthy_runs} of {needed} healthy runs")),
        ),
        Decision::Resumed { reason } => ("resumed", Some(reason.clone())),
        Decision::ResumeFailed { error } => ("resume_failed", Some(error.clone())),
        Decision::SlurmUnreachable { error } => ("slurm_unreachable", Some(error.clone())),
    }
}

/// A check result as `/status` carries it.
pub fn check_result_doc(r: &CheckResult) -> CheckResultDoc {
    use sgpu_nodelib::catalogue::Severity;
    use sgpu_nodelib::checks::Status;
    use sgpu_wire::healthd as wire;
    CheckResultDoc {
        check: r.check.to_string(),
        gpu: r.gpu,
        uuid: r.uuid.clone(),
        observed: r.observed.clone(),
        threshold: r.threshold.clone(),
        severity: match r.severity {
            Severity::Off => wire::Severity::Off,
            Severity::Info => wire::Severity::Info,
            Severity::Warn => wire::Severity::Warn,
            Severity::Drain => wire::Severity::Drain,
        },
        status: match r.status {
            Status::Pass => wire::CheckStatus::Pass,
            Status::Fail => wire::CheckStatus::Fail,
            Status::Unknown => wire::CheckStatus::Unknown,
        },
        message: r.message.clone(),
        enforced: r.enforced,
    }
}

/// A run's verdict as `/status` carries it.
pub fn verdict_doc(v: Verdict) -> sgpu_wire::healthd::Verdict {
    match v {
        Verdict::Healthy => sgpu_wire::healthd::Verdict::Healthy,
        Verdict::Warn => sgpu_wire::healthd::Verdict::Warn,
        Verdict::Drain => sgpu_wire::healthd::Verdict::Drain,
    }
}

/// A breaker trip as `/status` carries it.
pub fn trip_doc(t: &Trip) -> TripDoc {
    let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    TripDoc {
        scope: t.scope.clone(),
        drained: n(t.drained),
        total: n(t.total),
        limit: n(t.limit),
    }
}

/// A MIG slice's profile from its sample (`<GPU name> MIG <profile>`); `None` for a whole
/// GPU, or a slice whose name does not say it.
pub fn mig_profile(g: &GpuSample) -> Option<String> {
    g.mig_parent.as_ref()?;
    sgpu_nodelib::mig::profile_of_name(g.name.as_deref()?)
}

impl Live {
    /// The last sample of the MIG slice with this UUID (`None`: not a slice, or not
    /// sampled).
    pub fn slice(&self, uuid: &str) -> Option<&GpuSample> {
        self.gpus
            .iter()
            .find(|g| g.mig_parent.is_some() && g.uuid.as_deref() == Some(uuid))
    }
}

/// The `/status` document for `live` at `now_ms`.
pub fn status_doc(live: &Live, now_ms: u64) -> StatusDoc {
    let health = live.last_run.as_ref().map(|r| {
        let (decision, decision_detail) = decision_kind(&r.report.decision);
        HealthDoc {
            checked_at_ms: r.at_ms,
            trigger: match r.trigger {
                Trigger::Periodic => "periodic",
                Trigger::Xid => "xid",
            }
            .to_string(),
            verdict: verdict_doc(r.report.verdict),
            decision: decision.to_string(),
            decision_detail,
            would_drain: sgpu_nodelib::checks::would_drain_reason(&r.report.results),
            results: r.report.results.iter().map(check_result_doc).collect(),
        }
    });
    let gpus = live
        .gpus
        .iter()
        .map(|g| GpuDoc {
            index: g.index,
            uuid: g.uuid.clone(),
            name: g.name.clone(),
            lost: g.lost,
            utilization_pct: g.utilization_gpu_pct,
            memory_used_bytes: g.memory_used_bytes,
            power_mw: g.power_mw,
            energy_mj: g.energy_mj,
            temperature_c: g.temperature_c,
            ecc_uncorrectable: g.ecc_volatile_uncorrected,
            job_id: g
                .uuid
                .as_ref()
                .and_then(|u| live.holders.get(u))
                .map(|j| j.job_id),
            mig_parent_uuid: g.mig_parent.clone(),
            mig_profile: mig_profile(g),
        })
        .collect();
    let jobs = live
        .jobs
        .iter()
        .map(|j| JobDoc {
            cluster: j.cluster.clone(),
            job_id: j.job_id,
            user: j.user.clone(),
            account: j.account.clone(),
            partition: j.partition.clone(),
            start_time_ms: j.start_time,
            samples: j.samples(),
            util_mean_pct: j.util_mean(),
            util_max_pct: j.util_max(),
            energy_mj: j.energy(),
            gpus: j
                .gpus
                .iter()
                .map(|g| (g, live.slice(&g.uuid)))
                .map(|(g, slice)| JobGpuDoc {
                    index: g.index,
                    uuid: g.uuid.clone(),
                    samples: g.samples,
                    util_mean_pct: g.util_mean(),
                    util_max_pct: g.util_max,
                    mem_peak_mib: g.mem_peak_mib(),
                    energy_mj: g.energy(),
                    idle: (g.idle.samples > 0).then_some(g.idle.idle),
                    idle_ms: (g.idle.samples > 0).then(|| g.idle.total_ms()),
                    mig_parent_uuid: slice.and_then(|s| s.mig_parent.clone()),
                    mig_profile: slice.and_then(mig_profile),
                })
                .collect(),
        })
        .collect();
    StatusDoc {
        version: Some(sgpu_wire::healthd::VERSION),
        node: live.node.clone(),
        healthd_version: env!("CARGO_PKG_VERSION").to_string(),
        now_ms,
        started_at_ms: live.started_at_ms,
        health,
        drained: live.memory.drained.as_ref().map(|d| DrainDoc {
            reason: d.reason.clone(),
            checks: d.checks.iter().cloned().collect(),
            since: d.since,
        }),
        breaker: BreakerDoc {
            open: live.memory.breaker_open.is_some(),
            trip: live.memory.breaker_open.as_ref().map(trip_doc),
            refusals_total: live.breaker_refusals_total,
        },
        sampling: SamplingDoc {
            interval_s: live.sample_interval.as_secs(),
            last_sample_ms: live.last_sample_ms,
            last_duration_ms: live.last_sample_duration.map(|d| d.as_secs_f64() * 1000.0),
            error: live.sample_error.clone(),
            samples_total: live.samples_total,
            jobs_finalised_total: live.jobs_finalised_total,
        },
        gpus,
        jobs,
        active: live.last_run.as_ref().and_then(|r| active_docs(&r.report)),
    }
}

/// The active checks of a run for `/status`: each configured check's standing with its
/// newest result; `None` when there are none.
fn active_docs(report: &RunReport) -> Option<Vec<sgpu_wire::healthd::ActiveCheckDoc>> {
    let mut names: Vec<&str> = report
        .active_status
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    for r in &report.active {
        if !names.contains(&r.check.as_str()) {
            names.push(&r.check);
        }
    }
    if names.is_empty() {
        return None;
    }
    Some(
        names
            .into_iter()
            .map(|name| {
                let r = report.active.iter().find(|r| r.check == name);
                let st = report.active_status.iter().find(|s| s.name == name);
                sgpu_wire::healthd::ActiveCheckDoc {
                    name: name.to_string(),
                    outcome: r.map(|r| r.outcome.as_str().to_string()),
                    message: r.map(|r| r.message.clone()),
                    finished_at_ms: r.map(|r| r.finished_at_ms),
                    duration_ms: r
                        .map(|r| u64::try_from(r.duration().as_millis()).unwrap_or(u64::MAX)),
                    job_id: r.and_then(|r| r.job_id),
                    job_in_flight: st.and_then(|s| s.job_in_flight),
                    due_at_ms: st.and_then(|s| s.due_at_ms),
                    waiting: st.and_then(|s| s.waiting.clone()),
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sgpu_nodelib::catalogue::{Catalogue, Profile};
    use sgpu_nodelib::checks::{self, CheckContext};
    use sgpu_nodelib::gpu::{GpuSnapshot, NodeSnapshot, Reading};

    /// Observe-only mode: the last run's drain-worthy failure shows as `would_drain` in
    /// `/status` and as `sgpu_node_would_drain 1` in `/metrics`.
    #[test]
    fn observe_only_runs_report_would_drain() {
        let mut g = GpuSnapshot::unknown(0);
        g.lost = true;
        let snap = NodeSnapshot {
            driver_version: Reading::Unsupported,
            gpus: vec![g],
        };
        let observing = Catalogue::effective_enforcing(&std::collections::BTreeMap::new(), false);
        let results = checks::evaluate(&snap, &CheckContext::new(Profile::Full), &observing);
        let report = RunReport {
            verdict: Verdict::of(&results),
            results,
            decision: Decision::Healthy,
            spool: crate::spool_probe::SpoolHealth {
                error: None,
                free_bytes: None,
            },
            active: Vec::new(),
            active_status: Vec::new(),
        };
        let shared = Shared::new("n1", Duration::from_secs(10));
        shared.record_run(&report, &Memory::default(), Trigger::Periodic);
        let doc = shared.status();
        let health = doc.health.expect("a run");
        assert_eq!(
            health.would_drain.as_deref(),
            Some("sgpu: gpu.lost gpu0: GPU lost (fallen off the bus)")
        );
        let metrics = crate::metrics::render(&crate::metrics::registry(shared)).unwrap();
        assert!(metrics.contains("sgpu_node_would_drain 1"), "{metrics}");
    }

    /// A running job with one of its two GPUs idle: `/status` says which and for how long,
    /// `/metrics` has its idle GPUs and idle GPU-seconds; an unread GPU stays unknown.
    #[test]
    fn idle_gpus_show_in_status_and_metrics() {
        let start = sgpu_spool::JobStart {
            user: "alice".into(),
            uid: 1001,
            account: Some("physics".into()),
            partition: Some("gpu".into()),
            start_time: 0,
            gpus: (0..3u32)
                .map(|i| sgpu_spool::GpuRef {
                    index: i,
                    uuid: format!("GPU-{i}"),
                    name: None,
                    energy_mj: None,
                    mig: None,
                })
                .collect(),
        };
        let id = sgpu_spool::RecordId::new("c", 7, None, "n1", sgpu_spool::RecordKind::JobStart)
            .expect("an id");
        let mut acc = JobAccumulator::from_start(&id, &start);
        let d = sgpu_nodelib::config::IdleDetect {
            util_below_pct: 5,
            mem_util_below_pct: 5,
            window: Duration::from_secs(10),
        };
        for t in [0u64, 10_000, 25_000] {
            acc.gpus[0].idle.observe(t, Some(0), Some(0), &d);
            acc.gpus[1].idle.observe(t, Some(70), Some(20), &d);
        }
        let shared = Shared::new("n1", Duration::from_secs(10));
        shared.lock().jobs = vec![acc];
        let doc = shared.status();
        let gpus = &doc.jobs[0].gpus;
        assert_eq!((gpus[0].idle, gpus[0].idle_ms), (Some(true), Some(25_000)));
        assert_eq!((gpus[1].idle, gpus[1].idle_ms), (Some(false), Some(0)));
        assert_eq!(
            (gpus[2].idle, gpus[2].idle_ms),
            (None, None),
            "never read: unknown"
        );
        let metrics = crate::metrics::render(&crate::metrics::registry(shared)).unwrap();
        let labels = "{job_id=\"7\",user=\"alice\",account=\"physics\"}";
        for line in [
            format!("sgpu_job_gpus{labels} 3"),
            format!("sgpu_job_idle_gpus{labels} 1"),
            format!("sgpu_job_idle_gpu_seconds_total{labels} 25.0"),
        ] {
            assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
        }
    }

    /// A job on two MIG slices of one GPU and a whole GPU: `/status` names each slice's
    /// parent GPU and profile, without utilization (unknown, not 0); `/metrics` counts the
    /// job's slices per parent GPU and profile and has no utilization series for a slice.
    #[test]
    fn mig_slices_show_with_their_parent_and_profile() {
        const H100: &str = "NVIDIA H100 80GB HBM3";
        let sample =
            |uuid: &str, name: String, util: Option<u32>, parent: Option<&str>| GpuSample {
                index: 0,
                lost: false,
                uuid: Some(uuid.into()),
                name: Some(name),
                utilization_gpu_pct: util,
                utilization_memory_pct: None,
                memory_used_bytes: Some(1 << 20),
                power_mw: None,
                energy_mj: None,
                temperature_c: None,
                ecc_volatile_uncorrected: None,
                mig_parent: parent.map(str::to_string),
            };
        let start = sgpu_spool::JobStart {
            user: "alice".into(),
            uid: 1001,
            account: Some("physics".into()),
            partition: Some("gpu".into()),
            start_time: 0,
            gpus: ["MIG-a", "MIG-b", "GPU-1"]
                .iter()
                .enumerate()
                .map(|(i, u)| sgpu_spool::GpuRef {
                    index: u32::try_from(i).unwrap_or(0),
                    uuid: (*u).to_string(),
                    name: None,
                    energy_mj: None,
                    mig: None,
                })
                .collect(),
        };
        let id = sgpu_spool::RecordId::new("c", 8, None, "n1", sgpu_spool::RecordKind::JobStart)
            .expect("an id");
        let acc = JobAccumulator::from_start(&id, &start);
        let shared = Shared::new("n1", Duration::from_secs(10));
        {
            let mut l = shared.lock();
            let labels = JobLabels::of(&acc);
            l.gpus = vec![
                // the GPU under MIG: utilization NOT_SUPPORTED
                sample("GPU-p", H100.into(), None, None),
                sample("MIG-a", format!("{H100} MIG 2g.20gb"), None, Some("GPU-p")),
                sample("MIG-b", format!("{H100} MIG 1g.10gb"), None, Some("GPU-p")),
                GpuSample {
                    index: 1,
                    ..sample("GPU-1", H100.into(), Some(80), None)
                },
            ];
            for u in ["MIG-a", "MIG-b", "GPU-1"] {
                l.holders.insert(u.into(), labels.clone());
            }
            l.jobs = vec![acc];
        }
        let doc = shared.status();
        let slice = doc
            .gpus
            .iter()
            .find(|g| g.uuid.as_deref() == Some("MIG-a"))
            .expect("the slice in /status");
        assert_eq!(slice.mig_parent_uuid.as_deref(), Some("GPU-p"));
        assert_eq!(slice.mig_profile.as_deref(), Some("2g.20gb"));
        assert_eq!(slice.utilization_pct, None, "no utilization per slice");
        assert_eq!(slice.job_id, Some(8));
        let whole = &doc.gpus[3];
        assert_eq!(
            (whole.mig_parent_uuid.as_ref(), whole.mig_profile.as_ref()),
            (None, None)
        );
        let job = &doc.jobs[0].gpus;
        assert_eq!(job[1].mig_parent_uuid.as_deref(), Some("GPU-p"));
        assert_eq!(job[1].mig_profile.as_deref(), Some("1g.10gb"));
        assert_eq!(
            (job[1].samples, job[1].idle),
            (0, None),
            "unknown, not 0 % idle"
        );
        assert_eq!(job[2].mig_profile, None);
        // the wire: the new fields only where they say something
        let json = serde_json::to_value(&doc).expect("json");
        assert_eq!(json["gpus"][1]["mig_profile"], "2g.20gb");
        assert!(json["gpus"][3].get("mig_profile").is_none(), "{json}");
        let metrics = crate::metrics::render(&crate::metrics::registry(shared)).unwrap();
        let labels = "job_id=\"8\",user=\"alice\",account=\"physics\"";
        for p in ["1g.10gb", "2g.20gb"] {
            let line =
                format!("sgpu_job_mig_slices{{{labels},parent_uuid=\"GPU-p\",profile=\"{p}\"}} 1");
            assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
        }
        assert!(
            !metrics
                .lines()
                .any(|l| l.starts_with("sgpu_gpu_utilization_ratio") && l.contains("MIG-")),
            "{metrics}"
        );
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("sgpu_gpu_memory_used_bytes") && l.contains("MIG-a")),
            "{metrics}"
        );
    }
}
