//! sgpu-healthd's `GET /status` document ([`StatusDoc`]): the node's last check run,
//! its sgpu drain, the circuit breaker, sampling, the GPUs and the running jobs' usage.

use serde::{Deserialize, Serialize};

use crate::answer;

/// The major schema version of `/status`.
pub const VERSION: u32 = 1;

/// `GET /status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusDoc {
    /// Schema version ([`VERSION`]).
    pub version: Option<u32>,
    /// The Slurm node name.
    pub node: String,
    /// sgpu-healthd's version.
    pub healthd_version: String,
    /// Now, Unix ms.
    pub now_ms: u64,
    /// When the daemon started, Unix ms.
    pub started_at_ms: u64,
    /// The last check run (`None` before the first).
    pub health: Option<HealthDoc>,
    /// The node's sgpu drain, if healthd drained it.
    pub drained: Option<DrainDoc>,
    /// The circuit breaker.
    pub breaker: BreakerDoc,
    /// Per-job sampling.
    pub sampling: SamplingDoc,
    /// The GPUs at the last sample.
    pub gpus: Vec<GpuDoc>,
    /// The running jobs' usage so far.
    pub jobs: Vec<JobDoc>,
    /// The node's active checks (`[active]`): newest result, job in flight, why a due check
    /// waits. `None`: no active check configured, or a healthd that predates them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<Vec<ActiveCheckDoc>>,
}
answer!(StatusDoc, VERSION, "sgpu-healthd's /status");

/// One active check of the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveCheckDoc {
    /// Its name (the check id is `active.<name>`).
    pub name: String,
    /// The newest run's outcome (`pass`, `warn`, `fail`, `timeout`, `error`); `None`: it
    /// never ran here.
    #[serde(default)]
    pub outcome: Option<String>,
    /// The newest run's message (the measurement).
    #[serde(default)]
    pub message: Option<String>,
    /// When the newest run ended, Unix ms.
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
    /// How long it took, ms.
    #[serde(default)]
    pub duration_ms: Option<u64>,
    /// The Slurm job it ran in (`None`: run by hand, or never ran).
    #[serde(default)]
    pub job_id: Option<u64>,
    /// sgpu's job for the next run, while it is queued or running.
    #[serde(default)]
    pub job_in_flight: Option<u64>,
    /// The slot the next run is for, Unix ms (in the past while a due run waits).
    #[serde(default)]
    pub due_at_ms: Option<u64>,
    /// Why a due run waits (`the node is MIXED, not IDLE`), if it does.
    #[serde(default)]
    pub waiting: Option<String>,
}

/// The rolled-up outcome of a check run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No failure above `info`.
    Healthy,
    /// A `warn` failure, no `drain` failure.
    Warn,
    /// At least one `drain` failure.
    Drain,
}

/// What a failing check does to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Switched off by an admin; not evaluated.
    Off,
    /// Reported only.
    Info,
    /// A warning; the node stays in service.
    Warn,
    /// The node is drained.
    Drain,
}

/// Outcome of one check on one GPU (or the node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    /// Healthy.
    Pass,
    /// The condition was found; the severity says what it costs.
    Fail,
    /// Could not be judged.
    Unknown,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResultDoc {
    /// Check id, e.g. `gpu.xid`.
    pub check: String,
    /// GPU index (`None`: a node-level result).
    pub gpu: Option<u32>,
    /// GPU UUID, when known.
    pub uuid: Option<String>,
    /// What was observed, e.g. `92 C`.
    pub observed: String,
    /// What it was compared against, e.g. `>= 90 C`.
    pub threshold: String,
    /// What a failure costs.
    pub severity: Severity,
    /// Pass, fail or unknown.
    pub status: CheckStatus,
    /// Human-readable detail.
    pub message: String,
    /// False in observe-only mode (`enforce = false`): a drain-worthy failure is only a
    /// "would drain".
    pub enforced: bool,
}

impl CheckResultDoc {
    /// A failure at `drain` severity that is enforced (the node drains for it).
    pub fn drains(&self) -> bool {
        self.status == CheckStatus::Fail && self.severity == Severity::Drain && self.enforced
    }
}

/// The last check run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthDoc {
    /// When it finished, Unix ms.
    pub checked_at_ms: u64,
    /// What started it: `periodic` or `xid`.
    pub trigger: String,
    /// The run's verdict.
    pub verdict: Verdict,
    /// What the policy decided (`healthy`, `drained`, `breaker_open`, ...).
    pub decision: String,
    /// The decision's reason or error, if it has one.
    pub decision_detail: Option<String>,
    /// Observe-only mode: the reason sgpu would have drained with.
    pub would_drain: Option<String>,
    /// Every check result.
    pub results: Vec<CheckResultDoc>,
}

/// healthd's drain of this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainDoc {
    /// The reason given to Slurm.
    pub reason: String,
    /// The checks behind it.
    pub checks: Vec<String>,
    /// When, Unix seconds.
    pub since: i64,
}

/// Why the circuit breaker refused a drain: the first scope over its limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TripDoc {
    /// `cluster` or `partition <name>`.
    pub scope: String,
    /// Other nodes of the scope held drained by sgpu.
    pub drained: u64,
    /// Nodes in the scope.
    pub total: u64,
    /// The scope's limit.
    pub limit: u64,
}

/// The circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerDoc {
    /// Whether it refused the last drain (and nothing has closed it since).
    pub open: bool,
    /// Why, when open.
    pub trip: Option<TripDoc>,
    /// Drains it refused since the daemon started.
    pub refusals_total: u64,
}

/// Per-job sampling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingDoc {
    /// Seconds between samples.
    pub interval_s: u64,
    /// When the last batch was read, Unix ms.
    pub last_sample_ms: Option<u64>,
    /// How long the last cycle took, ms.
    pub last_duration_ms: Option<f64>,
    /// Why the last cycle could not read the GPUs.
    pub error: Option<String>,
    /// Batches read since start.
    pub samples_total: u64,
    /// Job usage records written since start.
    pub jobs_finalised_total: u64,
}

/// One GPU at the last sample (`None`: not readable on this GPU).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuDoc {
    /// NVML index.
    pub index: u32,
    /// UUID.
    pub uuid: Option<String>,
    /// Product name.
    pub name: Option<String>,
    /// Fallen off the bus.
    pub lost: bool,
    /// Utilization, percent (`None` for a MIG slice: NVML gives none per slice).
    pub utilization_pct: Option<u32>,
    /// Memory in use, bytes.
    pub memory_used_bytes: Option<u64>,
    /// Power, mW.
    pub power_mw: Option<u32>,
    /// Energy counter, mJ.
    pub energy_mj: Option<u64>,
    /// Temperature, °C.
    pub temperature_c: Option<u32>,
    /// Volatile uncorrectable ECC errors.
    pub ecc_uncorrectable: Option<u64>,
    /// The job holding it (`None`: none).
    pub job_id: Option<u32>,
    /// A MIG slice: its parent GPU's UUID (`index` is the parent's); `None`: a whole GPU
    /// (or a healthd that predates it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig_parent_uuid: Option<String>,
    /// A MIG slice: its profile (`2g.20gb`); `None` as for `mig_parent_uuid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig_profile: Option<String>,
}

/// One running job's usage so far on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobDoc {
    /// Cluster.
    pub cluster: String,
    /// Slurm job id.
    pub job_id: u32,
    /// Owner.
    pub user: String,
    /// Account (`None`: not set).
    pub account: Option<String>,
    /// Partition (`None`: not known).
    pub partition: Option<String>,
    /// Start on this node, Unix ms.
    pub start_time_ms: u64,
    /// Samples (of its best-sampled GPU).
    pub samples: u64,
    /// Mean utilization over its GPUs, percent.
    pub util_mean_pct: f64,
    /// Highest utilization of any of its GPUs, percent.
    pub util_max_pct: u32,
    /// Energy so far, mJ (`None`: no energy counter).
    pub energy_mj: Option<u64>,
    /// Per GPU.
    pub gpus: Vec<JobGpuDoc>,
}

/// One GPU of a running job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobGpuDoc {
    /// Index as the job-start record gives it (Slurm's).
    pub index: u32,
    /// UUID.
    pub uuid: String,
    /// Samples.
    pub samples: u64,
    /// Mean utilization, percent.
    pub util_mean_pct: f64,
    /// Highest utilization, percent.
    pub util_max_pct: u32,
    /// Peak memory, MiB.
    pub mem_peak_mib: u64,
    /// Energy so far, mJ (`None`: no energy counter).
    pub energy_mj: Option<u64>,
    /// Whether the GPU is idle now (its partition's threshold held for the window);
    /// `None`: unknown (no utilization reading yet, or a healthd before issue 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<bool>,
    /// Idle time so far, ms (as the usage record's `idle_ms` will count it); `None`: unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    /// A MIG slice: its parent GPU's UUID. healthd samples no utilization per slice, so a
    /// slice has `samples` 0 and its utilization figures say nothing (unknown, not 0 %).
    /// `None`: a whole GPU (or a healthd that predates it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig_parent_uuid: Option<String>,
    /// A MIG slice: its profile (`2g.20gb`); `None` as for `mig_parent_uuid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig_profile: Option<String>,
}
