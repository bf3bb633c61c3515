//! The usage-record model: [`Record`], its kind-specific [`RecordBody`], validation and JSON.
//!
//! Units, everywhere: times are Unix epoch milliseconds (`u64`), energy is millijoules (the
//! unit of NVML's total-energy counter), GPU time is GPU-milliseconds (GPUs × ms), memory is
//! MiB, utilization is percent (0–100).
//!
//! On the wire a record is
//! `{"version":1,"id":{..,"kind":"job_end"},"written_at":..,"body":{..}}`: the body carries
//! no tag of its own, its shape is chosen by `id.kind`, so a body whose kind disagrees with
//! its id cannot be written down. Every object rejects unknown fields.

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::id::{RecordId, RecordKind};

/// The record schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Why a record is malformed or inconsistent.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A field's value is wrong; `field` is a path such as `body.gpus[1].energy_end_mj`.
    #[error("{field}: {message}")]
    Invalid {
        /// Path of the offending field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The text is not a record: bad JSON, a missing or unknown field (named in the message).
    #[error("malformed record: {0}")]
    Json(#[from] serde_json::Error),
}

impl RecordError {
    /// Builds a [`RecordError::Invalid`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        RecordError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The offending field's path, for [`RecordError::Invalid`].
    pub fn field(&self) -> Option<&str> {
        match self {
            RecordError::Invalid { field, .. } => Some(field),
            RecordError::Json(_) => None,
        }
    }
}

/// A GPU held by a job at its start, with the energy counter read then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuRef {
    /// NVML device index on the node.
    pub index: u32,
    /// NVML UUID (`GPU-...`); must not be empty.
    pub uuid: String,
    /// Product name (`NVIDIA H100 80GB HBM3`), if read.
    pub name: Option<String>,
    /// Total energy counter at job start, mJ, if the GPU supports it.
    pub energy_mj: Option<u64>,
    /// The MIG slice this entry is, with its share of the parent GPU; absent: a whole GPU
    /// (also in records written before slices were stated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig: Option<MigShare>,
}

/// A MIG slice's profile and its share of the parent GPU: `slices` compute slices of the
/// GPU's `of` (NVML's maximum MIG device count: 7 on A100/H100/H200, 4 on A30).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigShare {
    /// The slice's profile, e.g. `2g.20gb`; must not be empty.
    pub profile: String,
    /// Compute slices of the slice's GPU instance; at least 1, at most `of`.
    pub slices: u32,
    /// Compute slices of the whole GPU; at least 1.
    pub of: u32,
}

impl MigShare {
    /// `device_ms` of this slice in GPU-equivalent ms: `device_ms × slices / of`, rounded to
    /// the nearest ms (halves up), so never more than `device_ms`.
    pub fn gpu_equiv_ms(&self, device_ms: u64) -> u64 {
        gpu_equiv_ms(Some(self), device_ms)
    }

    /// The slice's part of an amount of its whole GPU (the GPU's energy over the job):
    /// `amount × slices / of`, rounded to the nearest unit (halves up), the same arithmetic
    /// as [`MigShare::gpu_equiv_ms`].
    pub fn part(&self, amount: u64) -> u64 {
        gpu_equiv_ms(Some(self), amount)
    }
}

/// `device_ms` of one record GPU entry in GPU-equivalent ms: a whole GPU (`mig` absent)
/// counts in full, a slice by its [`MigShare`] (rounded to the nearest ms, halves up). A
/// share that does not validate (`slices` 0 or above `of`) counts as a whole GPU; records
/// are validated before they are counted, so that does not happen in a stored record.
pub fn gpu_equiv_ms(mig: Option<&MigShare>, device_ms: u64) -> u64 {
    match mig {
        Some(m) if m.slices >= 1 && m.slices <= m.of => {
            let num = u128::from(device_ms) * u128::from(m.slices) * 2 + u128::from(m.of);
            let v = num / (u128::from(m.of) * 2);
            // v <= device_ms because slices <= of (the + of adds at most half an ms)
            u64::try_from(v).unwrap_or(device_ms).min(device_ms)
        }
        _ => device_ms,
    }
}

fn check_mig(field: &str, m: &MigShare) -> Result<(), RecordError> {
    if m.profile.trim().is_empty() {
        return Err(RecordError::invalid(
            format!("{field}.profile"),
            "must not be empty",
        ));
    }
    if m.of == 0 {
        return Err(RecordError::invalid(
            format!("{field}.of"),
            "must be at least 1",
        ));
    }
    if m.slices == 0 || m.slices > m.of {
        return Err(RecordError::invalid(
            format!("{field}.slices"),
            format!("{} is not in 1..={} (of)", m.slices, m.of),
        ));
    }
    Ok(())
}

/// Body of a [`RecordKind::JobStart`] record (sgpu-prolog).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobStart {
    /// Job owner's user name.
    pub user: String,
    /// Job owner's uid.
    pub uid: u32,
    /// Slurm account, where set.
    pub account: Option<String>,
    /// Slurm partition, where set.
    pub partition: Option<String>,
    /// Job start on this node, ms.
    pub start_time: u64,
    /// GPUs allocated to the job on this node.
    pub gpus: Vec<GpuRef>,
}

/// A GPU held by a job, with its energy accounting at job end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuEnd {
    /// NVML device index on the node.
    pub index: u32,
    /// NVML UUID; must not be empty.
    pub uuid: String,
    /// Product name, if read.
    pub name: Option<String>,
    /// Energy counter at job start, mJ (from the job-start record), if known.
    pub energy_start_mj: Option<u64>,
    /// Energy counter at job end, mJ, if read.
    pub energy_end_mj: Option<u64>,
    /// Energy used over the job, mJ; equals end − start when both are known. For a MIG
    /// slice (`mig` present) its share of its GPU's energy over the job ([`MigShare::part`]
    /// of the GPU's counter delta), without the counters.
    pub energy_delta_mj: Option<u64>,
    /// The MIG slice this entry is, with its share of the parent GPU (allocated time is
    /// billed by that share: [`JobEnd::allocated_gpu_equiv_ms`]); absent: a whole GPU (also
    /// in records written before slices were stated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig: Option<MigShare>,
}

impl GpuEnd {
    /// `device_ms` of this entry in GPU-equivalent ms ([`gpu_equiv_ms`]).
    pub fn gpu_equiv_ms(&self, device_ms: u64) -> u64 {
        gpu_equiv_ms(self.mig.as_ref(), device_ms)
    }
}

/// How the job ended, as Slurm reports it (`SLURM_JOB_EXIT_CODE2` = `code:signal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitStatus {
    /// Exit code of the job's batch script or first task.
    pub code: u32,
    /// Signal that ended it, 0 if none.
    pub signal: u32,
}

/// The job's allocation window as slurmctld recorded it (`StartTime`, `EndTime`), in whole
/// Unix seconds: the window `sacct`'s `Elapsed` is taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmWindow {
    /// Slurm's `StartTime`, Unix seconds.
    pub start_s: u64,
    /// Slurm's `EndTime`, Unix seconds; not before `start_s`.
    pub end_s: u64,
}

impl SlurmWindow {
    /// The window in milliseconds, `(start, end)` (saturating).
    pub fn ms(&self) -> (u64, u64) {
        (
            self.start_s.saturating_mul(1000),
            self.end_s.saturating_mul(1000),
        )
    }
}

/// Body of a [`RecordKind::JobEnd`] record (sgpu-epilog).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobEnd {
    /// Job owner's user name.
    pub user: String,
    /// Job owner's uid.
    pub uid: u32,
    /// Slurm account, where set.
    pub account: Option<String>,
    /// Slurm partition, where set.
    pub partition: Option<String>,
    /// Job start on this node, ms.
    pub start_time: u64,
    /// Job end on this node, ms; not before `start_time`.
    pub end_time: u64,
    /// GPUs allocated to the job on this node.
    pub gpus: Vec<GpuEnd>,
    /// Allocated device time, device-ms (a MIG slice counts as one device): exactly
    /// `gpus.len() × (end_s − start_s) × 1000` over `slurm_window` when it is present, else
    /// `gpus.len() × (end_time − start_time)`. Equals GPU-ms when no entry is a slice; what
    /// is billed is [`JobEnd::allocated_gpu_equiv_ms`].
    pub allocated_gpu_ms: u64,
    /// Exit status, if known.
    pub exit: Option<ExitStatus>,
    /// The job's window as slurmctld has it, when the epilog could ask (absent in records
    /// written before it existed, or when slurmctld did not answer): allocated time is
    /// counted over it, so it equals Slurm's accounting. Energy stays measured over
    /// `start_time..end_time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm_window: Option<SlurmWindow>,
}

impl JobEnd {
    /// The window allocated GPU time is counted over, ms: [`JobEnd::slurm_window`] when
    /// present, else `start_time..end_time`.
    pub fn allocated_window(&self) -> (u64, u64) {
        self.slurm_window
            .map_or((self.start_time, self.end_time), |w| w.ms())
    }

    /// Allocated GPU time in GPU-equivalents, ms: each entry's allocated window counted by
    /// its share of a GPU (a whole GPU in full, a MIG slice by [`MigShare`]). Equals
    /// `allocated_gpu_ms` when no entry is a slice.
    pub fn allocated_gpu_equiv_ms(&self) -> u64 {
        let (s, e) = self.allocated_window();
        let span = e.saturating_sub(s);
        self.gpus
            .iter()
            .map(|g| g.gpu_equiv_ms(span))
            .fold(0, u64::saturating_add)
    }

    /// Every instant the record describes, ms: the gates' window joined with Slurm's.
    pub fn covered_window(&self) -> (u64, u64) {
        let (s, e) = self.allocated_window();
        (s.min(self.start_time), e.max(self.end_time))
    }
}

/// Sampled usage of one GPU over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuUsage {
    /// NVML device index on the node.
    pub index: u32,
    /// NVML UUID; must not be empty.
    pub uuid: String,
    /// Product name, if read.
    pub name: Option<String>,
    /// Number of samples taken.
    pub samples: u64,
    /// Mean GPU utilization over the samples, percent (0–100, ≤ `util_max_pct`).
    pub util_mean_pct: f64,
    /// Highest sampled GPU utilization, percent (0–100).
    pub util_max_pct: u32,
    /// Highest sampled memory use, MiB.
    pub mem_peak_mib: u64,
    /// Energy used over the window, mJ, if measured.
    pub energy_mj: Option<u64>,
    /// Used GPU time, GPU-ms (window × utilization); at most the window's length.
    pub used_gpu_ms: u64,
    /// Time of the window this GPU was idle, ms (healthd's live idle detection: utilization
    /// below the partition's threshold for at least its window); at most the window's length.
    /// Absent means unknown (older records, SPANK step records), never 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    /// The idle periods behind `idle_ms`, sorted, non-overlapping, inside the window; at most
    /// [`IDLE_PERIODS_MAX`] (beyond that the two closest neighbours are merged, gap included,
    /// so their lengths add up to at least `idle_ms`, exactly `idle_ms` when none were
    /// merged). Absent means unknown; present only with `idle_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_periods: Option<Vec<IdlePeriod>>,
}

/// Most idle periods a [`GpuUsage`] carries: a record stays small however a job behaves.
pub const IDLE_PERIODS_MAX: usize = 16;

/// A stretch of time a GPU was idle, ms; `start < end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdlePeriod {
    /// First instant idle, Unix ms.
    pub start: u64,
    /// End of the idle stretch, Unix ms (exclusive).
    pub end: u64,
}

impl IdlePeriod {
    /// Length in ms (0 if `end` is before `start`).
    pub fn len_ms(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
}

/// Adds `p` to a sorted, non-overlapping list of periods, joining it with any it overlaps
/// or touches, then merges the two closest neighbours (gap included) until at most
/// [`IDLE_PERIODS_MAX`] remain. Empty periods (`end <= start`) are ignored.
pub fn push_idle_period(periods: &mut Vec<IdlePeriod>, p: IdlePeriod) {
    if p.end <= p.start {
        return;
    }
    periods.push(p);
    periods.sort_by_key(|q| q.start);
    let mut merged: Vec<IdlePeriod> = Vec::with_capacity(periods.len());
    for q in periods.drain(..) {
        match merged.last_mut() {
            Some(last) if q.start <= last.end => last.end = last.end.max(q.end),
            _ => merged.push(q),
        }
    }
    while merged.len() > IDLE_PERIODS_MAX {
        // The smallest gap between neighbours; ties: the earliest.
        let mut best = 0;
        for i in 1..merged.len() - 1 {
            if merged[i + 1].start - merged[i].end < merged[best + 1].start - merged[best].end {
                best = i;
            }
        }
        let next = merged.remove(best + 1);
        merged[best].end = next.end;
    }
    *periods = merged;
}

/// Body of [`RecordKind::StepUsage`] (SPANK) and [`RecordKind::JobUsage`] (healthd) records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    /// Job owner's user name.
    pub user: String,
    /// Job owner's uid.
    pub uid: u32,
    /// Slurm account, where set.
    pub account: Option<String>,
    /// Slurm partition, where set.
    pub partition: Option<String>,
    /// Start of the measured window (step or job start), ms.
    pub window_start: u64,
    /// End of the measured window, ms; not before `window_start`.
    pub window_end: u64,
    /// Per-GPU usage.
    pub gpus: Vec<GpuUsage>,
    /// Allocated GPU time, GPU-ms: exactly `gpus.len() × (window_end − window_start)`.
    pub allocated_gpu_ms: u64,
    /// Used GPU time, GPU-ms: exactly the sum of the GPUs' `used_gpu_ms`.
    pub used_gpu_ms: u64,
    /// Idle GPU time, GPU-ms: exactly the sum of the GPUs' `idle_ms`; present only when every
    /// GPU has `idle_ms`. Absent means unknown, never 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_gpu_ms: Option<u64>,
}

/// A record's kind-specific content; its variant must match `id.kind`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RecordBody {
    /// Job start (prolog).
    JobStart(JobStart),
    /// Job end (epilog).
    JobEnd(JobEnd),
    /// Per-step usage (SPANK plugin).
    StepUsage(Usage),
    /// Per-job sampled usage (healthd).
    JobUsage(Usage),
}

impl RecordBody {
    /// The kind this body belongs to.
    pub fn kind(&self) -> RecordKind {
        match self {
            RecordBody::JobStart(_) => RecordKind::JobStart,
            RecordBody::JobEnd(_) => RecordKind::JobEnd,
            RecordBody::StepUsage(_) => RecordKind::StepUsage,
            RecordBody::JobUsage(_) => RecordKind::JobUsage,
        }
    }

    /// Parses the body's JSON as the body of a `kind` record.
    fn from_raw(kind: RecordKind, v: &RawValue) -> Result<Self, RecordError> {
        let bad = |e: serde_json::Error| RecordError::invalid("body", e.to_string());
        let v = v.get();
        Ok(match kind {
            RecordKind::JobStart => RecordBody::JobStart(serde_json::from_str(v).map_err(bad)?),
            RecordKind::JobEnd => RecordBody::JobEnd(serde_json::from_str(v).map_err(bad)?),
            RecordKind::StepUsage => RecordBody::StepUsage(serde_json::from_str(v).map_err(bad)?),
            RecordKind::JobUsage => RecordBody::JobUsage(serde_json::from_str(v).map_err(bad)?),
        })
    }
}

/// One usage record; always valid (checked by [`Record::new`] and when read).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawRecord")]
pub struct Record {
    version: u32,
    id: RecordId,
    written_at: u64,
    body: RecordBody,
}

/// The unchecked wire form of [`Record`]; the body is interpreted by `id.kind` (kept as raw
/// JSON until then: no intermediate `Value` tree, which cost acctd's ingest a tenth of its
/// parse time).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    version: u32,
    id: RecordId,
    written_at: u64,
    body: Box<RawValue>,
}

impl TryFrom<RawRecord> for Record {
    type Error = RecordError;

    fn try_from(raw: RawRecord) -> Result<Self, Self::Error> {
        // The version first: a newer schema's body would otherwise fail confusingly.
        check_version(raw.version)?;
        let body = RecordBody::from_raw(raw.id.kind(), &raw.body)?;
        let r = Record {
            version: raw.version,
            id: raw.id,
            written_at: raw.written_at,
            body,
        };
        r.validate()?;
        Ok(r)
    }
}

impl Serialize for Record {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Record", 4)?;
        st.serialize_field("version", &self.version)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("written_at", &self.written_at)?;
        st.serialize_field("body", &self.body)?;
        st.end()
    }
}

impl Record {
    /// Builds a record of the current [`SCHEMA_VERSION`]; fails if it would not validate.
    pub fn new(id: RecordId, written_at: u64, body: RecordBody) -> Result<Self, RecordError> {
        let r = Record {
            version: SCHEMA_VERSION,
            id,
            written_at,
            body,
        };
        r.validate()?;
        Ok(r)
    }

    /// Like [`Record::new`], stamped with the current time.
    pub fn new_now(id: RecordId, body: RecordBody) -> Result<Self, RecordError> {
        Record::new(id, now_ms(), body)
    }

    /// Schema version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Identity.
    pub fn id(&self) -> &RecordId {
        &self.id
    }

    /// When the producer wrote it, ms.
    pub fn written_at(&self) -> u64 {
        self.written_at
    }

    /// Kind-specific content.
    pub fn body(&self) -> &RecordBody {
        &self.body
    }

    /// Takes the record apart into identity, write time and body.
    pub fn into_parts(self) -> (RecordId, u64, RecordBody) {
        (self.id, self.written_at, self.body)
    }

    /// Checks internal consistency; the error names the first offending field.
    pub fn validate(&self) -> Result<(), RecordError> {
        check_version(self.version)?;
        if self.body.kind() != self.id.kind() {
            return Err(RecordError::invalid(
                "body",
                format!(
                    "is a {} body but id.kind is {}",
                    self.body.kind(),
                    self.id.kind()
                ),
            ));
        }
        match &self.body {
            RecordBody::JobStart(b) => validate_start(b),
            RecordBody::JobEnd(b) => validate_end(b),
            RecordBody::StepUsage(b) | RecordBody::JobUsage(b) => validate_usage(b),
        }
    }

    /// Serialises to one line of JSON (no trailing newline).
    pub fn to_json(&self) -> Result<Vec<u8>, RecordError> {
        Ok(serde_json::to_vec(self)?)
    }

    /// Parses and validates a record; unknown fields and unsupported versions are errors.
    pub fn from_json(bytes: &[u8]) -> Result<Self, RecordError> {
        let raw: RawRecord = serde_json::from_slice(bytes)?;
        Record::try_from(raw)
    }
}

/// The current time as Unix epoch milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn check_version(v: u32) -> Result<(), RecordError> {
    if v == SCHEMA_VERSION {
        Ok(())
    } else {
        Err(RecordError::invalid(
            "version",
            format!("unsupported schema version {v} (this build reads {SCHEMA_VERSION})"),
        ))
    }
}

fn check_user(user: &str) -> Result<(), RecordError> {
    if user.is_empty() {
        return Err(RecordError::invalid("body.user", "must not be empty"));
    }
    Ok(())
}

/// Checks the GPUs' uuids are non-empty and distinct, naming the first bad one.
fn check_uuids<'a>(uuids: impl Iterator<Item = &'a str>) -> Result<(), RecordError> {
    let mut seen = std::collections::HashSet::new();
    for (i, uuid) in uuids.enumerate() {
        let field = format!("body.gpus[{i}].uuid");
        if uuid.trim().is_empty() {
            return Err(RecordError::invalid(field, "must not be empty"));
        }
        if !seen.insert(uuid) {
            return Err(RecordError::invalid(field, format!("duplicate GPU {uuid}")));
        }
    }
    Ok(())
}

fn check_span(
    start_field: &str,
    start: u64,
    end_field: &str,
    end: u64,
) -> Result<u64, RecordError> {
    end.checked_sub(start).ok_or_else(|| {
        RecordError::invalid(end_field, format!("{end} is before {start_field} {start}"))
    })
}

fn check_allocated(gpus: usize, span: u64, allocated: u64) -> Result<(), RecordError> {
    let expected = u64::try_from(gpus)
        .ok()
        .and_then(|n| n.checked_mul(span))
        .ok_or_else(|| RecordError::invalid("body.allocated_gpu_ms", "overflows u64"))?;
    if allocated != expected {
        return Err(RecordError::invalid(
            "body.allocated_gpu_ms",
            format!("{allocated} but {gpus} GPUs x {span} ms = {expected}"),
        ));
    }
    Ok(())
}

fn validate_start(b: &JobStart) -> Result<(), RecordError> {
    check_user(&b.user)?;
    check_uuids(b.gpus.iter().map(|g| g.uuid.as_str()))?;
    for (i, g) in b.gpus.iter().enumerate() {
        if let Some(m) = &g.mig {
            check_mig(&format!("body.gpus[{i}].mig"), m)?;
        }
    }
    Ok(())
}

fn validate_end(b: &JobEnd) -> Result<(), RecordError> {
    check_user(&b.user)?;
    let span = check_span("start_time", b.start_time, "body.end_time", b.end_time)?;
    check_uuids(b.gpus.iter().map(|g| g.uuid.as_str()))?;
    for (i, g) in b.gpus.iter().enumerate() {
        if let Some(m) = &g.mig {
            check_mig(&format!("body.gpus[{i}].mig"), m)?;
        }
        if let (Some(start), Some(end)) = (g.energy_start_mj, g.energy_end_mj) {
            let delta = check_span(
                "energy_start_mj",
                start,
                &format!("body.gpus[{i}].energy_end_mj"),
                end,
            )?;
            if let Some(d) = g.energy_delta_mj {
                if d != delta {
                    return Err(RecordError::invalid(
                        format!("body.gpus[{i}].energy_delta_mj"),
                        format!("{d} but energy_end_mj - energy_start_mj = {delta}"),
                    ));
                }
            }
        }
    }
    match b.slurm_window {
        None => check_allocated(b.gpus.len(), span, b.allocated_gpu_ms),
        Some(w) => {
            let secs = check_span(
                "slurm_window.start_s",
                w.start_s,
                "body.slurm_window.end_s",
                w.end_s,
            )?;
            let span_ms = secs
                .checked_mul(1000)
                .ok_or_else(|| RecordError::invalid("body.slurm_window", "overflows u64"))?;
            check_allocated(b.gpus.len(), span_ms, b.allocated_gpu_ms)
        }
    }
}

fn validate_usage(b: &Usage) -> Result<(), RecordError> {
    check_user(&b.user)?;
    let span = check_span(
        "window_start",
        b.window_start,
        "body.window_end",
        b.window_end,
    )?;
    check_uuids(b.gpus.iter().map(|g| g.uuid.as_str()))?;
    let mut used_sum: u64 = 0;
    for (i, g) in b.gpus.iter().enumerate() {
        let f = |name: &str| format!("body.gpus[{i}].{name}");
        if !(g.util_mean_pct.is_finite() && (0.0..=100.0).contains(&g.util_mean_pct)) {
            return Err(RecordError::invalid(
                f("util_mean_pct"),
                format!("{} is not a percentage in 0..=100", g.util_mean_pct),
            ));
        }
        if g.util_max_pct > 100 {
            return Err(RecordError::invalid(
                f("util_max_pct"),
                format!("{} is over 100", g.util_max_pct),
            ));
        }
        if g.util_mean_pct > f64::from(g.util_max_pct) {
            return Err(RecordError::invalid(
                f("util_mean_pct"),
                format!(
                    "{} is above util_max_pct {}",
                    g.util_mean_pct, g.util_max_pct
                ),
            ));
        }
        if g.used_gpu_ms > span {
            return Err(RecordError::invalid(
                f("used_gpu_ms"),
                format!("{} is longer than the {span} ms window", g.used_gpu_ms),
            ));
        }
        // Cannot overflow: each term is at most `span`, and allocated = n * span is checked.
        used_sum = used_sum.saturating_add(g.used_gpu_ms);
    }
    check_allocated(b.gpus.len(), span, b.allocated_gpu_ms)?;
    check_idle(b, span)?;
    if b.used_gpu_ms != used_sum {
        return Err(RecordError::invalid(
            "body.used_gpu_ms",
            format!(
                "{} but the GPUs' used_gpu_ms add up to {used_sum}",
                b.used_gpu_ms
            ),
        ));
    }
    Ok(())
}

/// The idle figures: each GPU's `idle_ms` within the window, its periods inside the window,
/// sorted, non-overlapping, capped, covering `idle_ms`; `idle_gpu_ms` their sum, present
/// exactly when every GPU's `idle_ms` is.
fn check_idle(b: &Usage, span: u64) -> Result<(), RecordError> {
    let mut idle_sum: u64 = 0;
    let mut all_known = true;
    for (i, g) in b.gpus.iter().enumerate() {
        let f = |name: &str| format!("body.gpus[{i}].{name}");
        let Some(idle) = g.idle_ms else {
            all_known = false;
            if g.idle_periods.is_some() {
                return Err(RecordError::invalid(
                    f("idle_periods"),
                    "present without idle_ms",
                ));
            }
            continue;
        };
        if idle > span {
            return Err(RecordError::invalid(
                f("idle_ms"),
                format!("{idle} is longer than the {span} ms window"),
            ));
        }
        idle_sum = idle_sum.saturating_add(idle);
        let Some(periods) = &g.idle_periods else {
            continue;
        };
        if periods.len() > IDLE_PERIODS_MAX {
            return Err(RecordError::invalid(
                f("idle_periods"),
                format!("{} periods, at most {IDLE_PERIODS_MAX}", periods.len()),
            ));
        }
        let mut covered: u64 = 0;
        let mut prev_end: Option<u64> = None;
        for (j, p) in periods.iter().enumerate() {
            let pf = |name: &str| format!("body.gpus[{i}].idle_periods[{j}].{name}");
            if p.end <= p.start {
                return Err(RecordError::invalid(
                    pf("end"),
                    format!("{} is not after start {}", p.end, p.start),
                ));
            }
            if p.start < b.window_start {
                return Err(RecordError::invalid(
                    pf("start"),
                    format!("{} is before window_start {}", p.start, b.window_start),
                ));
            }
            if p.end > b.window_end {
                return Err(RecordError::invalid(
                    pf("end"),
                    format!("{} is after window_end {}", p.end, b.window_end),
                ));
            }
            if let Some(prev) = prev_end {
                if p.start <= prev {
                    return Err(RecordError::invalid(
                        pf("start"),
                        format!(
                            "{} is not after the previous period's end {prev} \
                             (periods are sorted, apart and merged when touching)",
                            p.start
                        ),
                    ));
                }
            }
            prev_end = Some(p.end);
            covered = covered.saturating_add(p.len_ms());
        }
        if idle > covered {
            return Err(RecordError::invalid(
                f("idle_ms"),
                format!("{idle} but its idle_periods cover only {covered} ms"),
            ));
        }
    }
    match b.idle_gpu_ms {
        Some(total) if !all_known => Err(RecordError::invalid(
            "body.idle_gpu_ms",
            format!("{total} but not every GPU has idle_ms"),
        )),
        Some(total) if total != idle_sum => Err(RecordError::invalid(
            "body.idle_gpu_ms",
            format!("{total} but the GPUs' idle_ms add up to {idle_sum}"),
        )),
        None if all_known && !b.gpus.is_empty() => Err(RecordError::invalid(
            "body.idle_gpu_ms",
            format!("absent but every GPU has idle_ms (sum {idle_sum})"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests;
