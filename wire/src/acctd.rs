//! sgpu-acctd's answers and the node history request body.
//!
//! Every answer has `version` ([`VERSION`]); refusals (4xx, 5xx) are [`ErrorAnswer`].
//! Record and event types are parameters: acctd and its clients use the spool crate's
//! `Record` and `NodeEvent`.

use serde::{Deserialize, Serialize};

use crate::answer;

/// The major schema version of acctd's answers.
pub const VERSION: u32 = 1;

/// `{"error": "..."}`: acctd's answer to a refused request (any 4xx or 5xx).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    /// What is wrong, and what to do next.
    pub error: String,
}

/// What acctd did with one record of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    /// Stored now, and counted.
    Accepted,
    /// Already stored (a resend): acknowledged, not counted twice.
    Duplicate,
    /// A different record is stored under this identity: this one is kept apart for an
    /// admin (`GET /v1/conflicts`) and not counted.
    Conflict,
    /// Refused (see [`RecordAnswer::field`] and [`RecordAnswer::error`]).
    Rejected,
    /// A status this build does not know (a newer acctd): nothing may be assumed; the
    /// sender keeps the record and sends it again later.
    #[serde(other)]
    Unknown,
}

/// One record's result in an [`IngestAnswer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordAnswer {
    /// Position of the record in the batch, from 0.
    pub index: usize,
    /// The record's identity key, when it could be read.
    pub key: Option<String>,
    /// What acctd did with it.
    pub status: RecordStatus,
    /// For a duplicate or conflict: the stored record differs from the one sent (absent:
    /// false; acctd writes it only when true).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub differs: bool,
    /// For a rejection: the offending field, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For a rejection or a conflict: what is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /v1/records`: acctd's answer to a batch of records (200, or 422 when any record
/// was rejected; the batch is durable either way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestAnswer {
    /// Schema version ([`VERSION`]; `None`: an acctd that predates versioning, version 1).
    pub version: Option<u32>,
    /// Records stored now.
    pub accepted: usize,
    /// Records already stored (resends).
    pub duplicate: usize,
    /// Records kept apart as conflicts (`None`: an acctd that predates conflicts, which
    /// answered them `duplicate` with `differs`).
    pub conflict: Option<usize>,
    /// Records refused.
    pub rejected: usize,
    /// One result per record, in batch order.
    pub results: Vec<RecordAnswer>,
}
answer!(
    IngestAnswer,
    VERSION,
    "sgpu-acctd's answer to POST /v1/records"
);

/// One report row: the grouped fields (the others absent) and the sums over the window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ReportRow {
    /// The period label (`YYYY-MM-DD`, `YYYY-Www`, `YYYY-MM`), when grouped by one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// Cluster, when grouped by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Account, when grouped by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// User, when grouped by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Partition, when grouped by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// GPU model, when grouped by it (the parent GPU's when also grouped by MIG profile).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
    /// MIG profile (`2g.20gb`; empty for whole GPUs), when grouped by it. `None` also from
    /// an acctd that predates MIG profiles (it refuses the grouping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig_profile: Option<String>,
    /// Allocated GPU time inside the window, GPU-ms (a MIG slice counted by its share of the
    /// GPU: GPU-equivalents).
    pub allocated_gpu_ms: u64,
    /// Used GPU time inside the window, GPU-ms.
    pub used_gpu_ms: u64,
    /// Energy inside the window, mJ.
    pub energy_mj: u64,
    /// Jobs that ended inside the window.
    pub jobs: u64,
    /// Idle GPU time inside the window, GPU-ms, over the GPU time where healthd measured
    /// it (`idle_measured_gpu_ms`). `None`: not measured for any job of the group (or an
    /// acctd that predates idle time): unknown, not 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_gpu_ms: Option<u64>,
    /// GPU time inside the window over which idle time was measured, GPU-ms (`None`: as
    /// for `idle_gpu_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_measured_gpu_ms: Option<u64>,
    /// Allocated device time of MIG slices inside the window, slice-ms: each slice's time
    /// counted once, not by its share (0: no slice in the group; rollups written before
    /// acctd kept slice time count 0). `None`: an acctd that predates slice time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice_ms: Option<u64>,
    /// Allocated GPU time inside the window over which used time was measured, GPU-ms: the
    /// allocated time less MIG slices' (healthd samples no utilization per slice, so a
    /// slice's used time is unknown, not 0). `used_gpu_ms` is used time over this part
    /// only; 0 with time allocated: used time unknown. `None`: an acctd that predates it
    /// (all allocated time was taken as measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_measured_gpu_ms: Option<u64>,
    /// Cost inside the window, in millionths of [`ReportAnswer::currency`], priced by acctd
    /// with the prices in force when the GPUs were used. `None`: acctd has no prices (or
    /// predates server-side prices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_micro: Option<u64>,
}

/// `GET /v1/report`: sums per group over `[start_ms, end_ms)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAnswer {
    /// Schema version ([`VERSION`]; `None`: an acctd that predates versioning, version 1).
    pub version: Option<u32>,
    /// Window start, ms since the epoch (inclusive).
    pub start_ms: u64,
    /// Window end, ms since the epoch (exclusive).
    pub end_ms: u64,
    /// The rows, sorted.
    pub rows: Vec<ReportRow>,
    /// The time zone the periods and dates were read in (IANA name). `None`: an acctd that
    /// predates time zones, which used UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// The currency of `cost_micro` (`None`: not configured, or no prices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}
answer!(
    ReportAnswer,
    VERSION,
    "sgpu-acctd's report (GET /v1/report)"
);

/// One job's whole-job figures in a [`JobsAnswer`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    /// Cluster.
    pub cluster: String,
    /// Job id.
    pub job_id: u32,
    /// User (empty until a record trusted for it arrived).
    pub user: String,
    /// Account (empty when not set).
    pub account: String,
    /// Partition (empty when not set).
    pub partition: String,
    /// Start, ms since the epoch.
    pub start_ms: u64,
    /// End, ms since the epoch; `None` while no `job_end` has arrived (running).
    pub end_ms: Option<u64>,
    /// Nodes with records of the job.
    pub nodes: Vec<String>,
    /// GPUs allocated (all nodes).
    pub gpus: u32,
    /// GPU models.
    pub gpu_models: Vec<String>,
    /// Allocated GPU time of the whole job, GPU-ms (a MIG slice counted by its share of the
    /// GPU: GPU-equivalents).
    pub allocated_gpu_ms: u64,
    /// Used GPU time of the whole job (healthd's samples), GPU-ms.
    pub used_gpu_ms: u64,
    /// The part of `allocated_gpu_ms` whose used time was measured (not on MIG slices,
    /// which healthd samples no utilization of); `None`: all of it (or an acctd that
    /// predates the field). `Some(0)`: the used time is unknown, not 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_measured_gpu_ms: Option<u64>,
    /// Energy of the whole job, mJ.
    pub energy_mj: u64,
    /// Idle GPU time of the whole job (healthd's idle detection), GPU-ms; `None`: not
    /// measured on any of its GPUs (or an acctd that predates it): unknown, not 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_gpu_ms: Option<u64>,
    /// Cost of the whole job, millionths of [`JobsAnswer::currency`], priced by acctd with
    /// the prices in force when its GPUs were allocated. `None`: acctd has no prices (or
    /// predates server-side prices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_micro: Option<u64>,
}

/// `GET /v1/jobs`: the jobs that ran in `[start_ms, end_ms)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobsAnswer {
    /// Schema version ([`VERSION`]; `None`: an acctd that predates versioning, version 1).
    pub version: Option<u32>,
    /// Window start, ms since the epoch (inclusive).
    pub start_ms: u64,
    /// Window end, ms since the epoch (exclusive).
    pub end_ms: u64,
    /// The jobs, by cluster and job id.
    pub jobs: Vec<JobSummary>,
    /// More jobs matched than were listed.
    pub truncated: bool,
    /// The time zone `YYYY-MM-DD` bounds were read in (`None`: an acctd that predates time
    /// zones, which used UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// The currency of `cost_micro` (`None`: not configured, or no prices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}
answer!(JobsAnswer, VERSION, "sgpu-acctd's job list (GET /v1/jobs)");

/// `GET /v1/site`: what clients need to read and show times and costs as acctd does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteAnswer {
    /// Schema version ([`VERSION`]).
    pub version: Option<u32>,
    /// The site's time zone (IANA name, or `/etc/localtime` when the system names none):
    /// report periods and dates are in it unless a query says `tz=`.
    pub time_zone: String,
    /// Whether acctd prices usage (reports and job lists then carry `cost_micro`).
    pub prices: bool,
    /// The currency of costs, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// The caller's accounts as a coordinator (empty: none; admins see everything anyway).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coordinates: Vec<String>,
}
answer!(
    SiteAnswer,
    VERSION,
    "sgpu-acctd's site settings (GET /v1/site)"
);

/// `GET /v1/jobs/{cluster}/{job_id}`: every stored record of one job the caller may read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobAnswer<R> {
    /// Schema version ([`VERSION`]; `None`: an acctd that predates versioning, version 1).
    pub version: Option<u32>,
    /// Cluster.
    pub cluster: String,
    /// Job id.
    pub job_id: u32,
    /// The records, in key order.
    pub records: Vec<R>,
}
answer!(
    JobAnswer<R>,
    VERSION,
    "sgpu-acctd's job records (GET /v1/jobs/CLUSTER/ID)"
);

/// The body of `POST /v1/history`: node events to record (acctd refuses unknown fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBatch<E> {
    /// The events.
    pub events: Vec<E>,
}

/// `POST /v1/history`: how many events were stored now and how many were already stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPostAnswer {
    /// Schema version ([`VERSION`]; `None`: an acctd that predates versioning, version 1).
    pub version: Option<u32>,
    /// Events stored now.
    pub accepted: usize,
    /// Events already stored.
    pub duplicate: usize,
}
answer!(
    HistoryPostAnswer,
    VERSION,
    "sgpu-acctd's answer to POST /v1/history"
);

/// `GET /v1/history`: node events, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryAnswer<E> {
    /// Schema version ([`VERSION`]; `None`: an acctd that predates versioning, version 1).
    pub version: Option<u32>,
    /// The events.
    pub events: Vec<E>,
}
answer!(
    HistoryAnswer<E>,
    VERSION,
    "sgpu-acctd's node history (GET /v1/history)"
);

/// One kept conflict in a [`ConflictsAnswer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictEntry<R> {
    /// The identity both records share.
    pub key: String,
    /// When acctd received this record, Unix ms.
    pub received_ms: u64,
    /// The record that arrived and was not counted.
    pub record: R,
    /// The stored (counted) record of that identity (`None`: it was purged since).
    pub stored: Option<R>,
}

/// `GET /v1/conflicts` (admins): records kept apart because a different record was stored
/// under their identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictsAnswer<R> {
    /// Schema version ([`VERSION`]; `None`: an acctd that predates versioning, version 1).
    pub version: Option<u32>,
    /// The conflicts, by key and arrival.
    pub conflicts: Vec<ConflictEntry<R>>,
    /// More conflicts are kept than were listed.
    pub truncated: bool,
}
answer!(
    ConflictsAnswer<R>,
    VERSION,
    "sgpu-acctd's conflicts (GET /v1/conflicts)"
);
