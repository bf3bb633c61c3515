//! Evaluating the catalogue against what NVML reported.
//!
//! [`evaluate`] turns a [`NodeSnapshot`] (or, through [`evaluate_failure`], the reason there
//! is none) into [`CheckResult`]s; [`Verdict::of`] rolls them up; [`CheckResult::drain_reason`]
//! formats the reason given to `scontrol update ... State=DRAIN Reason=...`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::catalogue::{self as cat, Catalogue, EffectiveCheck, Profile, Severity};
use crate::gpu::{GpuSnapshot, HW_THROTTLE_REASONS, NodeSnapshot, NvmlFailure, Reading};
use crate::history::{GpuRecord, History, HistoryError};
use crate::xid::{XidClass, XidEvent, classify};

/// The longest drain reason sgpu writes, in bytes.
///
/// Slurm itself stores a node's reason as an unbounded string, but slurmdbd records node
/// events (drains) in `event_table.reason`, a `tinytext` column (255 bytes), and `sinfo -R`
/// shows only the first 20 characters by default. Half the column keeps well clear of it,
/// and a reason must still fit on one `sinfo -R -o '%100E'` line.
pub const MAX_REASON_BYTES: usize = 127;

/// What the evaluator knows besides the snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckContext {
    /// Which checks run.
    pub profile: Profile,
    /// GPUs gres.conf declares for this node (`None`: unknown, `gpu.count` is not judged).
    pub expected_gpu_count: Option<u32>,
    /// The job's GPU indices (`None`: no job, e.g. the daemon or `sgpu check`). A MIG slice
    /// counts as its GPU.
    pub job_gpus: Option<Vec<u32>>,
    /// The job's MIG slices (`None`: no job, or a job whose slices are not known): each must
    /// exist (`gpu.job_gpus_exist`), and on a GPU in MIG mode `gpu.leftover_processes` judges
    /// only them (the GPU's own lists hold every slice's processes and memory).
    pub job_slices: Option<Vec<crate::mig::JobSlice>>,
    /// XIDs not yet reported (see [`crate::xid`]).
    pub xids: Vec<XidEvent>,
    /// `pinned_driver_version` from the config.
    pub pinned_driver_version: Option<String>,
    /// The NVML deadline (shown as `nvml.responsive`'s threshold).
    pub nvml_timeout: Duration,
    /// What earlier checks on this node saw (`None`: nothing known, as for a capture):
    /// the PCIe width baseline, HW throttle streaks, counter readings for rates.
    pub history: Option<History>,
    /// Unix time of this check, seconds (for rates).
    pub now: f64,
    /// The `[infiniband]` settings: with them, [`evaluate_remembering`] also judges the
    /// node's InfiniBand/RoCE ports ([`crate::infiniband`]); `None`: not judged (captures).
    pub infiniband: Option<crate::infiniband::IbSettings>,
}

impl CheckContext {
    /// A context for `profile` with nothing else known.
    pub fn new(profile: Profile) -> CheckContext {
        CheckContext {
            profile,
            expected_gpu_count: None,
            job_gpus: None,
            job_slices: None,
            xids: Vec::new(),
            pinned_driver_version: None,
            nvml_timeout: Duration::from_millis(crate::config::DEFAULT_NVML_TIMEOUT_MS),
            history: None,
            now: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            infiniband: None,
        }
    }

    fn record(&self, g: &GpuSnapshot) -> Option<&GpuRecord> {
        self.history.as_ref()?.gpu(g.uuid()?)
    }
}

/// One check run that remembers: loads the node's [`History`] from `state_dir` into
/// `ctx`, evaluates, folds the snapshot into the history and saves it. A history that
/// cannot be read or written is reported in the returned note and the run goes on
/// without it (the rules that need it answer `unknown`, and a HW throttle warns).
pub fn evaluate_remembering(
    snapshot: &NodeSnapshot,
    ctx: &mut CheckContext,
    catalogue: &Catalogue,
    state_dir: &std::path::Path,
    save: bool,
) -> (Vec<CheckResult>, Option<String>) {
    let mut note = None;
    let mut history = match History::load(state_dir) {
        Ok(h) => Some(h),
        Err(e) => {
            note = Some(e.to_string());
            None
        }
    };
    ctx.history = history.clone();
    let mut results = evaluate(snapshot, ctx, catalogue);
    if let (true, Some(h)) = (save, history.as_mut()) {
        h.observe(snapshot, ctx.now);
        if let Err(e) = h.save(state_dir) {
            let e: HistoryError = e;
            note = Some(e.to_string());
        }
    }
    if let Some(ib) = &ctx.infiniband {
        let run = crate::infiniband::evaluate(ib, ctx.profile, catalogue, state_dir, save, ctx.now);
        results.extend(run.results);
        if !run.notes.is_empty() {
            let joined = run.notes.join("; ");
            note = Some(match note {
                Some(n) => format!("{n}; {joined}"),
                None => joined,
            });
        }
    }
    (results, note)
}

/// Outcome of one check on one GPU (or the node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Healthy.
    Pass,
    /// The condition was found; [`CheckResult::severity`] says what it costs.
    Fail,
    /// Could not be judged (value unsupported or unreadable): neither pass nor fail.
    Unknown,
}

impl Status {
    /// `pass`, `fail`, `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Unknown => "unknown",
        }
    }
}

/// An error counter's rise per hour against its check's `warn_per_hour` (`warn_at`) and
/// `drain_per_hour` (`drain_at`): above the second it fails at the check's `severity`,
/// above the first it fails as a warning at most (an admin who set the check to info keeps
/// it there), else it passes. The rule of `ib.errors` and `gpu.nvlink_errors`.
pub(crate) fn rising_errors(
    rate: f64,
    warn_at: f64,
    drain_at: f64,
    severity: Severity,
) -> (Status, Severity) {
    if rate > drain_at {
        (Status::Fail, severity)
    } else if rate > warn_at {
        (Status::Fail, severity.min(Severity::Warn))
    } else {
        (Status::Pass, severity)
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckResult {
    /// Check id, e.g. `gpu.xid`.
    pub check: &'static str,
    /// GPU index (`None`: a node-level result).
    pub gpu: Option<u32>,
    /// GPU UUID, when known.
    pub uuid: Option<String>,
    /// What was observed, e.g. `92 C`.
    pub observed: String,
    /// What it was compared against, e.g. `>= 90 C`.
    pub threshold: String,
    /// What a failure costs (for `gpu.xid`, depends on the XID's class).
    pub severity: Severity,
    /// Pass, fail or unknown.
    pub status: Status,
    /// Human-readable detail (the rendered reason template on failure).
    pub message: String,
    /// False in observe-only mode (`enforce = false`): a drain-worthy failure is only a
    /// "would drain", which no gate or daemon acts on.
    pub enforced: bool,
}

impl CheckResult {
    /// Whether this is a failure at `drain` severity that is enforced (acted on).
    pub fn drains(&self) -> bool {
        self.status == Status::Fail && self.severity == Severity::Drain && self.enforced
    }

    /// Whether this is a failure at `drain` severity in observe-only mode: reported as
    /// "would drain", never acted on.
    pub fn would_drain(&self) -> bool {
        self.status == Status::Fail && self.severity == Severity::Drain && !self.enforced
    }

    /// The Slurm drain reason: `sgpu: <check> gpu<i>: <detail>` (or `sgpu: <check>:
    /// <detail>` for node-level results), without quotes or control characters, cut on a
    /// character boundary to at most [`MAX_REASON_BYTES`] bytes.
    pub fn drain_reason(&self) -> String {
        let head = match self.gpu {
            Some(i) => format!("sgpu: {} gpu{i}: ", self.check),
            None => format!("sgpu: {}: ", self.check),
        };
        fit_reason(&(head + &self.message))
    }
}

/// Sanitises and truncates a reason to [`MAX_REASON_BYTES`] (on a char boundary).
pub fn fit_reason(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len().min(MAX_REASON_BYTES));
    for c in reason.chars() {
        let c = if c.is_control() || c == '"' || c == '\'' || c == '\\' {
            ' '
        } else {
            c
        };
        if out.len() + c.len_utf8() > MAX_REASON_BYTES {
            break;
        }
        out.push(c);
    }
    out.trim_end().to_string()
}

/// The rolled-up outcome of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No failure above `info`.
    Healthy,
    /// A `warn` failure, no `drain` failure.
    Warn,
    /// At least one `drain` failure.
    Drain,
}

impl Verdict {
    /// The worst failure among `results`.
    pub fn of(results: &[CheckResult]) -> Verdict {
        results
            .iter()
            .filter(|r| r.status == Status::Fail)
            .map(|r| match r.severity {
                Severity::Drain => Verdict::Drain,
                Severity::Warn => Verdict::Warn,
                Severity::Info | Severity::Off => Verdict::Healthy,
            })
            .max()
            .unwrap_or(Verdict::Healthy)
    }

    /// Exit code for commands: 0 healthy, 1 warn, 2 drain.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Healthy => 0,
            Verdict::Warn => 1,
            Verdict::Drain => 2,
        }
    }

    /// `healthy`, `warn`, `drain`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::Warn => "warn",
            Verdict::Drain => "drain",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reason to drain with: the first enforced `drain` failure's, if any.
pub fn drain_reason(results: &[CheckResult]) -> Option<String> {
    results
        .iter()
        .find(|r| r.drains())
        .map(CheckResult::drain_reason)
}

/// [`drain_reason`] naming the job's MIG slices on the failing GPU after it:
/// `sgpu: gpu.xid gpu0 MIG 1g.10gb (GI 7 CI 0): ...`.
pub fn drain_reason_for_job(
    results: &[CheckResult],
    job_slices: &[crate::mig::JobSlice],
    snapshot: Option<&NodeSnapshot>,
) -> Option<String> {
    let r = results.iter().find(|r| r.drains())?;
    Some(reason_naming_slices(r, job_slices, snapshot))
}

/// [`would_drain_reason`] naming the job's MIG slices as [`drain_reason_for_job`] does.
pub fn would_drain_reason_for_job(
    results: &[CheckResult],
    job_slices: &[crate::mig::JobSlice],
    snapshot: Option<&NodeSnapshot>,
) -> Option<String> {
    let r = results.iter().find(|r| r.would_drain())?;
    Some(reason_naming_slices(r, job_slices, snapshot))
}

fn reason_naming_slices(
    r: &CheckResult,
    job_slices: &[crate::mig::JobSlice],
    snapshot: Option<&NodeSnapshot>,
) -> String {
    let Some(gpu) = r.gpu else {
        return r.drain_reason();
    };
    let g = snapshot.and_then(|s| s.gpus.iter().find(|g| g.index == gpu));
    let labels: Vec<String> = job_slices
        .iter()
        .filter(|s| s.gpu == gpu)
        .map(|s| {
            let found: Vec<String> = g
                .map(|g| s.devices(g).iter().map(|d| d.label()).collect())
                .unwrap_or_default();
            if found.is_empty() {
                s.describe()
            } else {
                found.join(", ")
            }
        })
        .collect();
    if labels.is_empty() {
        return r.drain_reason();
    }
    fit_reason(&format!(
        "sgpu: {} gpu{gpu} {}: {}",
        r.check,
        labels.join(", "),
        r.message
    ))
}

/// The reason sgpu would drain with if it enforced (the first observe-only `drain`
/// failure's), if any: what `enforce = false` reports instead of draining.
pub fn would_drain_reason(results: &[CheckResult]) -> Option<String> {
    results
        .iter()
        .find(|r| r.would_drain())
        .map(CheckResult::drain_reason)
}

/// Builds results for one check, applying its effective severity and reason template.
struct Emitter<'a> {
    out: Vec<CheckResult>,
    catalogue: &'a Catalogue,
    profile: Profile,
}

impl Emitter<'_> {
    fn check(&self, id: &str) -> Option<&EffectiveCheck> {
        self.catalogue.get(id).filter(|c| c.runs_in(self.profile))
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        id: &'static str,
        gpu: Option<&GpuSnapshot>,
        status: Status,
        observed: String,
        threshold: String,
        severity: Option<Severity>,
        note: Option<String>,
    ) {
        let Some(check) = self.catalogue.get(id) else {
            return;
        };
        let message = match (status, note) {
            (_, Some(n)) => n,
            (Status::Fail, None) => check
                .spec
                .reason_template
                .replace("{observed}", &observed)
                .replace("{threshold}", &threshold),
            (Status::Pass, None) => "ok".into(),
            (Status::Unknown, None) => "not reported by this GPU/driver".into(),
        };
        self.out.push(CheckResult {
            check: check.spec.id,
            gpu: gpu.map(|g| g.index),
            uuid: gpu.and_then(|g| g.uuid().map(str::to_string)),
            observed,
            threshold,
            severity: severity.unwrap_or(check.severity),
            status,
            message,
            enforced: check.enforce,
        });
    }

    /// A pass/fail/unknown result from a reading and a predicate that says "fails".
    #[allow(clippy::too_many_arguments)]
    fn judge<T>(
        &mut self,
        id: &'static str,
        g: &GpuSnapshot,
        reading: &Reading<T>,
        fails: impl Fn(&T) -> bool,
        observed: impl Fn(&T) -> String,
        threshold: String,
    ) {
        match reading {
            Reading::Value(v) => {
                let status = if fails(v) { Status::Fail } else { Status::Pass };
                self.push(id, Some(g), status, observed(v), threshold, None, None);
            }
            Reading::Unsupported => self.push(
                id,
                Some(g),
                Status::Unknown,
                "n/a".into(),
                threshold,
                None,
                None,
            ),
            Reading::Error(e) => self.push(
                id,
                Some(g),
                Status::Unknown,
                "error".into(),
                threshold,
                None,
                Some(format!("query failed: {e}")),
            ),
        }
    }
}

const MIB: u64 = 1024 * 1024;

/// Runs every check of `ctx.profile` that `catalogue` enables against `snapshot`.
pub fn evaluate(
    snapshot: &NodeSnapshot,
    ctx: &CheckContext,
    catalogue: &Catalogue,
) -> Vec<CheckResult> {
    let mut e = Emitter {
        out: Vec::new(),
        catalogue,
        profile: ctx.profile,
    };
    nvml_results(&mut e, ctx);
    gpu_count_results(&mut e, snapshot, ctx);
    job_slice_results(&mut e, snapshot, ctx);
    driver_result(&mut e, snapshot, ctx);

    if e.check(cat::GPU_XID).is_some() {
        xid_results(&mut e, snapshot, &ctx.xids);
    }

    for g in &snapshot.gpus {
        if e.check(cat::GPU_LOST).is_some() {
            let status = if g.lost { Status::Fail } else { Status::Pass };
            let observed = if g.lost {
                "fallen off the bus"
            } else {
                "present"
            };
            e.push(
                cat::GPU_LOST,
                Some(g),
                status,
                observed.into(),
                String::new(),
                None,
                None,
            );
        }
        if g.lost {
            // Every other reading of a lost GPU is an error; gpu.lost says it all.
            continue;
        }
        gpu_results(&mut e, g, ctx);
    }
    e.out
}

/// NVML answered (the snapshot exists) within the deadline.
fn nvml_results(e: &mut Emitter<'_>, ctx: &CheckContext) {
    let deadline = format!("{} ms", ctx.nvml_timeout.as_millis());
    if e.check(cat::NVML_INIT).is_some() {
        e.push(
            cat::NVML_INIT,
            None,
            Status::Pass,
            "ok".into(),
            String::new(),
            None,
            None,
        );
    }
    if e.check(cat::NVML_RESPONSIVE).is_some() {
        e.push(
            cat::NVML_RESPONSIVE,
            None,
            Status::Pass,
            "answered".into(),
            deadline,
            None,
            None,
        );
    }
}

/// The devices Slurm counts on the node: a GPU in MIG mode is its MIG devices (gres.conf
/// lists one per slice; `AutoDetect=nvml` finds one per slice), any other GPU one. `None`
/// when a GPU in MIG mode could not list them.
pub fn slurm_device_count(snapshot: &NodeSnapshot) -> Option<u32> {
    snapshot.gpus.iter().try_fold(0u32, |n, g| {
        let here = match (&g.mig_mode, &g.mig_devices) {
            (Reading::Value(true), Reading::Value(ds)) => u32::try_from(ds.len()).ok()?,
            (Reading::Value(true), _) => return None,
            _ => 1,
        };
        Some(n.saturating_add(here))
    })
}

/// The GPU count against gres.conf's, and the job's GPUs against the GPUs there are.
fn gpu_count_results(e: &mut Emitter<'_>, snapshot: &NodeSnapshot, ctx: &CheckContext) {
    let count = snapshot.gpus.len() as u32;
    if e.check(cat::GPU_COUNT).is_some() {
        match (ctx.expected_gpu_count, slurm_device_count(snapshot)) {
            // a GPU in MIG mode is one device to Slurm when gres.conf lists it whole
            // (File=/dev/nvidiaN), its slices when gres.conf lists them (or NVML
            // autodetection finds them): either count is a configuration Slurm runs
            (Some(want), have) if want == count || have == Some(want) => {
                let observed = match have {
                    Some(h) if h == want && h != count => {
                        format!("{h} ({count} GPUs, MIG slices counted)")
                    }
                    _ => count.to_string(),
                };
                e.push(
                    cat::GPU_COUNT,
                    None,
                    Status::Pass,
                    observed,
                    want.to_string(),
                    None,
                    None,
                );
            }
            (Some(want), Some(have)) => {
                let observed = if have == count {
                    count.to_string()
                } else {
                    format!("{count} GPUs, {have} with MIG slices counted")
                };
                e.push(
                    cat::GPU_COUNT,
                    None,
                    Status::Fail,
                    observed,
                    want.to_string(),
                    None,
                    None,
                );
            }
            (Some(want), None) => e.push(
                cat::GPU_COUNT,
                None,
                Status::Unknown,
                format!("{count} GPUs, MIG slices unread"),
                want.to_string(),
                None,
                Some("a GPU in MIG mode did not list its MIG devices".into()),
            ),
            (None, _) => e.push(
                cat::GPU_COUNT,
                None,
                Status::Unknown,
                count.to_string(),
                "?".into(),
                None,
                Some("no expected count (gres.conf) given".into()),
            ),
        }
    }

    if let (Some(job), Some(_)) = (&ctx.job_gpus, e.check(cat::GPU_JOB_GPUS_EXIST)) {
        let missing: Vec<u32> = job.iter().copied().filter(|i| *i >= count).collect();
        if missing.is_empty() {
            e.push(
                cat::GPU_JOB_GPUS_EXIST,
                None,
                Status::Pass,
                format!("{job:?}"),
                count.to_string(),
                None,
                None,
            );
        }
        for i in missing {
            // Node-level: a missing GPU has no UUID; the index is in the message.
            e.push(
                cat::GPU_JOB_GPUS_EXIST,
                None,
                Status::Fail,
                format!("gpu{i}"),
                count.to_string(),
                None,
                None,
            );
        }
    }
}

/// The job's MIG slices against the MIG devices their GPUs report: a slice that is not there
/// (MIG off, or the instance gone) fails `gpu.job_gpus_exist` on its GPU.
fn job_slice_results(e: &mut Emitter<'_>, snapshot: &NodeSnapshot, ctx: &CheckContext) {
    let (Some(slices), Some(_)) = (&ctx.job_slices, e.check(cat::GPU_JOB_GPUS_EXIST)) else {
        return;
    };
    for s in slices {
        // a GPU that is not there is the job_gpus result's
        let Some(g) = snapshot.gpus.iter().find(|g| g.index == s.gpu) else {
            continue;
        };
        let (status, observed, note) = match (&g.mig_mode, &g.mig_devices) {
            (_, Reading::Value(_)) => {
                let found = s.devices(g);
                if found.is_empty() {
                    (
                        Status::Fail,
                        format!("{} missing", s.describe()),
                        Some(format!(
                            "the job's {} is not among gpu{}'s MIG devices",
                            s.describe(),
                            g.index
                        )),
                    )
                } else {
                    let labels: Vec<String> = found.iter().map(|d| d.label()).collect();
                    (Status::Pass, labels.join(", "), None)
                }
            }
            (Reading::Value(false), _) => (
                Status::Fail,
                format!("{}, MIG off", s.describe()),
                Some(format!(
                    "the job holds {} but gpu{} is not in MIG mode",
                    s.describe(),
                    g.index
                )),
            ),
            _ => (Status::Unknown, format!("{} unread", s.describe()), None),
        };
        e.push(
            cat::GPU_JOB_GPUS_EXIST,
            Some(g),
            status,
            observed,
            "present".into(),
            None,
            note,
        );
    }
}

/// The driver version against `pinned_driver_version`.
fn driver_result(e: &mut Emitter<'_>, snapshot: &NodeSnapshot, ctx: &CheckContext) {
    if let (Some(pinned), Some(_)) = (&ctx.pinned_driver_version, e.check(cat::DRIVER_VERSION)) {
        match &snapshot.driver_version {
            Reading::Value(v) => {
                let status = if v.trim() == pinned {
                    Status::Pass
                } else {
                    Status::Fail
                };
                e.push(
                    cat::DRIVER_VERSION,
                    None,
                    status,
                    v.clone(),
                    pinned.clone(),
                    None,
                    None,
                );
            }
            _ => e.push(
                cat::DRIVER_VERSION,
                None,
                Status::Unknown,
                "n/a".into(),
                pinned.clone(),
                None,
                None,
            ),
        }
    }
}

/// Every per-GPU check of a GPU still on the bus, in the order they are reported.
fn gpu_results(e: &mut Emitter<'_>, g: &GpuSnapshot, ctx: &CheckContext) {
    memory_fault_results(e, g);
    thermal_results(e, g, ctx);
    degradation_results(e, g, ctx);
    let nvlink = crate::nvlink::results(e.catalogue, e.profile, g, ctx.record(g), ctx.now);
    e.out.extend(nvlink);
    leftover_results(e, g, ctx);
}

/// Uncorrectable ECC errors, retired pages pending, row remapping pending or failed: memory
/// faults that need a reset or a repair.
fn memory_fault_results(e: &mut Emitter<'_>, g: &GpuSnapshot) {
    if let Some(c) = e.check(cat::GPU_ECC_UNCORRECTABLE) {
        let max = c.threshold("max_errors");
        e.judge(
            cat::GPU_ECC_UNCORRECTABLE,
            g,
            &g.ecc_volatile_uncorrected,
            |v| *v as f64 > max,
            |v| v.to_string(),
            fmt_num(max),
        );
    }
    if e.check(cat::GPU_RETIRED_PAGES_PENDING).is_some() {
        e.judge(
            cat::GPU_RETIRED_PAGES_PENDING,
            g,
            &g.retired_pages_pending,
            |v| *v,
            yes_no,
            "no".into(),
        );
    }
    if e.check(cat::GPU_ROW_REMAP_PENDING).is_some() {
        e.judge(
            cat::GPU_ROW_REMAP_PENDING,
            g,
            &g.remapped_rows,
            |r| r.pending,
            |r| yes_no(&r.pending),
            "no".into(),
        );
    }
    if e.check(cat::GPU_ROW_REMAP_FAILURE).is_some() {
        e.judge(
            cat::GPU_ROW_REMAP_FAILURE,
            g,
            &g.remapped_rows,
            |r| r.failure,
            |r| yes_no(&r.failure),
            "no".into(),
        );
    }
}

/// Temperature and clock throttling.
fn thermal_results(e: &mut Emitter<'_>, g: &GpuSnapshot, ctx: &CheckContext) {
    if let Some(c) = e.check(cat::GPU_TEMPERATURE) {
        let margin = c.threshold("margin_c");
        match (&g.temperature_c, &g.slowdown_threshold_c) {
            (Reading::Value(t), Reading::Value(slow)) => {
                let limit = f64::from(*slow) - margin;
                let status = if f64::from(*t) >= limit {
                    Status::Fail
                } else {
                    Status::Pass
                };
                e.push(
                    cat::GPU_TEMPERATURE,
                    Some(g),
                    status,
                    format!("{t} C"),
                    format!("{} C", fmt_num(limit)),
                    None,
                    None,
                );
            }
            (t, _) => {
                let observed = t
                    .value()
                    .map_or_else(|| "n/a".to_string(), |t| format!("{t} C"));
                e.push(
                    cat::GPU_TEMPERATURE,
                    Some(g),
                    Status::Unknown,
                    observed,
                    "slowdown n/a".into(),
                    None,
                    None,
                );
            }
        }
    }
    if let Some(c) = e.check(cat::GPU_THROTTLE) {
        let (check_sev, need) = (c.severity, c.threshold("drain_after_checks").max(1.0));
        let names = |bits: &u64| -> Vec<&'static str> {
            HW_THROTTLE_REASONS
                .iter()
                .filter(|(b, _)| bits & b != 0)
                .map(|(_, n)| *n)
                .collect()
        };
        e.judge(
            cat::GPU_THROTTLE,
            g,
            &g.throttle_reasons,
            |bits| !names(bits).is_empty(),
            |bits| {
                let n = names(bits);
                if n.is_empty() {
                    "none".into()
                } else {
                    n.join(",")
                }
            },
            "no hw throttle".into(),
        );
        // Warn when seen; the check's severity once seen on `need` consecutive checks.
        let streak = ctx.record(g).map_or(0, |r| r.hw_throttle_streak) + 1;
        if let Some(last) = e.out.last_mut()
            && last.check == cat::GPU_THROTTLE
            && last.status == Status::Fail
        {
            let n = need as u32;
            if f64::from(streak) < need {
                last.severity = check_sev.min(Severity::Warn);
                last.message = format!("{} (check {streak} of {n} before drain)", last.message);
            } else {
                last.message = format!("{} ({streak} checks in a row)", last.message);
            }
            last.threshold = format!("no hw throttle on {n} checks");
        }
    }
}

/// Slow degradation, judged against the node's history: PCIe link width, corrected-ECC rate,
/// retired pages, PCIe replay rate, and the fabric state.
fn degradation_results(e: &mut Emitter<'_>, g: &GpuSnapshot, ctx: &CheckContext) {
    if let Some(c) = e.check(cat::GPU_PCIE_LINK) {
        pcie_result(e, g, ctx, c.clone());
    }
    if let Some(c) = e.check(cat::GPU_ECC_CORRECTABLE_RATE) {
        let max = c.threshold("max_per_hour");
        let prev = ctx.record(g).and_then(|r| r.ecc_corrected);
        rate_result(
            e,
            g,
            cat::GPU_ECC_CORRECTABLE_RATE,
            &g.ecc_volatile_corrected.clone().map(u64::from),
            prev,
            ctx.now,
            1.0,
            max,
        );
    }
    if let Some(c) = e.check(cat::GPU_RETIRED_PAGES) {
        let (warn_at, drain_at) = (c.threshold("max_pages"), c.threshold("max_pages_drain"));
        let sev = c.severity;
        e.judge(
            cat::GPU_RETIRED_PAGES,
            g,
            &g.retired_pages,
            |n| f64::from(*n) > warn_at,
            |n| n.to_string(),
            fmt_num(warn_at),
        );
        if let (Reading::Value(n), Some(last)) = (&g.retired_pages, e.out.last_mut())
            && last.status == Status::Fail
        {
            // An admin who set the check to info keeps it there.
            last.severity = if f64::from(*n) >= drain_at && sev >= Severity::Warn {
                Severity::Drain
            } else {
                sev.min(Severity::Warn)
            };
        }
    }
    if let Some(c) = e.check(cat::GPU_PCIE_REPLAY_RATE) {
        let max = c.threshold("max_per_minute");
        let prev = ctx.record(g).and_then(|r| r.pcie_replays);
        rate_result(
            e,
            g,
            cat::GPU_PCIE_REPLAY_RATE,
            &g.pcie_replays.clone().map(u64::from),
            prev,
            ctx.now,
            60.0,
            max,
        );
    }
    if e.check(cat::GPU_FABRIC).is_some() {
        e.judge(
            cat::GPU_FABRIC,
            g,
            &g.fabric,
            |f| !f.healthy(),
            |f| {
                if f.status == 0 {
                    f.state_name()
                } else {
                    format!("{}, status {}", f.state_name(), nvml_status_name(f.status))
                }
            },
            "completed, success".into(),
        );
    }
}

/// What a job may find on the GPU: processes left from an earlier job, and persistence mode.
fn leftover_results(e: &mut Emitter<'_>, g: &GpuSnapshot, ctx: &CheckContext) {
    if let Some(c) = e.check(cat::GPU_LEFTOVER_PROCESSES) {
        let mine = ctx.job_gpus.as_ref().is_none_or(|j| j.contains(&g.index));
        if mine && ctx.job_gpus.is_some() && g.mig_mode.value() == Some(&true) {
            let limits = (
                c.threshold("max_processes"),
                c.threshold("max_memory_used_mib"),
            );
            leftover_on_slices(e, g, ctx, limits);
        } else if mine {
            let (max_procs, max_mib) = (
                c.threshold("max_processes"),
                c.threshold("max_memory_used_mib"),
            );
            let threshold = format!("{} procs, {} MiB", fmt_num(max_procs), fmt_num(max_mib));
            match (&g.compute_processes, &g.memory) {
                (Reading::Value(procs), mem) => {
                    let used_mib = mem.value().map(|m| m.used / MIB);
                    let too_many = procs.len() as f64 > max_procs;
                    let too_much = used_mib.is_some_and(|u| u as f64 > max_mib);
                    let pids: Vec<String> = procs.iter().map(|p| p.pid.to_string()).collect();
                    let mut observed = format!("{} procs", procs.len());
                    if !pids.is_empty() {
                        observed.push_str(&format!(" (pid {})", pids.join(",")));
                    }
                    if let Some(u) = used_mib {
                        observed.push_str(&format!(", {u} MiB"));
                    }
                    let status = if too_many || too_much {
                        Status::Fail
                    } else {
                        Status::Pass
                    };
                    e.push(
                        cat::GPU_LEFTOVER_PROCESSES,
                        Some(g),
                        status,
                        observed,
                        threshold,
                        None,
                        None,
                    );
                }
                _ => e.push(
                    cat::GPU_LEFTOVER_PROCESSES,
                    Some(g),
                    Status::Unknown,
                    "n/a".into(),
                    threshold,
                    None,
                    None,
                ),
            }
        }
    }
    if e.check(cat::GPU_PERSISTENCE_MODE).is_some() {
        e.judge(
            cat::GPU_PERSISTENCE_MODE,
            g,
            &g.persistence_mode,
            |on| !on,
            |on| if *on { "on".into() } else { "off".into() },
            "on".into(),
        );
    }
}

/// `gpu.leftover_processes` for a job on a GPU in MIG mode: the GPU's process list and
/// memory are every slice's (other jobs' included), so only the job's own slices are judged;
/// a job whose slices are not known is not judged (unknown), never failed for its
/// neighbours' processes.
fn leftover_on_slices(
    e: &mut Emitter<'_>,
    g: &GpuSnapshot,
    ctx: &CheckContext,
    (max_procs, max_mib): (f64, f64),
) {
    let threshold = format!("{} procs, {} MiB", fmt_num(max_procs), fmt_num(max_mib));
    let devices: Vec<&crate::mig::MigDevice> = ctx
        .job_slices
        .iter()
        .flatten()
        .filter(|s| s.gpu == g.index)
        .flat_map(|s| s.devices(g))
        .collect();
    if devices.is_empty() {
        e.push(
            cat::GPU_LEFTOVER_PROCESSES,
            Some(g),
            Status::Unknown,
            "MIG on, the job's slice unknown".into(),
            threshold,
            None,
            Some(
                "MIG is on: the GPU's processes are every slice's, and which slice is the \
                 job's is not known"
                    .into(),
            ),
        );
        return;
    }
    let mut parts = Vec::new();
    let mut fail = false;
    let mut unknown = false;
    for d in devices {
        match &d.compute_processes {
            Reading::Value(procs) => {
                let used_mib = d.memory.value().map(|m| m.used / MIB);
                fail |=
                    procs.len() as f64 > max_procs || used_mib.is_some_and(|u| u as f64 > max_mib);
                let mut part = format!("{}: {} procs", d.label(), procs.len());
                if !procs.is_empty() {
                    let pids: Vec<String> = procs.iter().map(|p| p.pid.to_string()).collect();
                    part.push_str(&format!(" (pid {})", pids.join(",")));
                }
                if let Some(u) = used_mib {
                    part.push_str(&format!(", {u} MiB"));
                }
                parts.push(part);
            }
            _ => {
                unknown = true;
                parts.push(format!("{}: n/a", d.label()));
            }
        }
    }
    let status = match (fail, unknown) {
        (true, _) => Status::Fail,
        (false, true) => Status::Unknown,
        (false, false) => Status::Pass,
    };
    e.push(
        cat::GPU_LEFTOVER_PROCESSES,
        Some(g),
        status,
        parts.join("; "),
        threshold,
        None,
        None,
    );
}

/// The PCIe rule (see the catalogue): the generation against the maximum and the width
/// against the node's baseline only while busy (an idle board may lower its link); the
/// width against `expected_width`, when the admin set it, always.
fn pcie_result(e: &mut Emitter<'_>, g: &GpuSnapshot, ctx: &CheckContext, c: EffectiveCheck) {
    let (gen_slack, width_slack, busy_pct, want_width) = (
        c.threshold("max_gen_deficit"),
        c.threshold("max_width_deficit"),
        c.threshold("busy_util_pct"),
        c.threshold("expected_width"),
    );
    let p = &g.pcie;
    let show = |r: &Reading<u32>| r.value().map_or_else(|| "?".to_string(), u32::to_string);
    let busy = g
        .utilization_gpu_pct
        .value()
        .map(|u| f64::from(*u) >= busy_pct);
    // Generation: judged only while busy (an idle board lowers it: power management).
    let gen_bad = match (busy, p.gen_current.value(), p.gen_max.value()) {
        (Some(true), Some(cur), Some(max)) => Some(f64::from(max.saturating_sub(*cur)) > gen_slack),
        _ => None,
    };
    // Width: against expected_width, else the widest this GPU has reported here.
    let (width_ref, width_src) = if want_width > 0.0 {
        (Some(want_width as u32), "expected_width")
    } else {
        (
            ctx.record(g).and_then(|r| r.pcie_width_best),
            "best seen on this node",
        )
    };
    let width_judged = want_width > 0.0 || busy == Some(true);
    let width_bad = match (width_judged, p.width_current.value(), width_ref) {
        (true, Some(cur), Some(want)) => Some(f64::from(want.saturating_sub(*cur)) > width_slack),
        _ => None,
    };
    let observed = format!("gen{} x{}", show(&p.gen_current), show(&p.width_current));
    let gen_part = match busy {
        Some(true) => format!("gen{} (busy)", show(&p.gen_max)),
        Some(false) => "any gen (idle)".to_string(),
        None => "any gen (load n/a)".to_string(),
    };
    let width_part = match (width_ref, width_judged) {
        (Some(w), true) => format!("x{w} ({width_src})"),
        (Some(w), false) => format!("any width (idle; x{w} seen)"),
        (None, _) => "no width baseline yet".to_string(),
    };
    let threshold = format!("{gen_part}, {width_part}");
    let status = match (gen_bad, width_bad) {
        (Some(true), _) | (_, Some(true)) => Status::Fail,
        (None, None) => Status::Unknown,
        _ => Status::Pass,
    };
    let note = (status == Status::Unknown).then(|| format!("not judged: {gen_part}, {width_part}"));
    e.push(
        cat::GPU_PCIE_LINK,
        Some(g),
        status,
        observed,
        threshold,
        None,
        note,
    );
}

/// A counter judged by its rate against an earlier reading, per hour divided by
/// `unit_per_hour` (1: per hour, 60: per minute).
#[allow(clippy::too_many_arguments)]
fn rate_result(
    e: &mut Emitter<'_>,
    g: &GpuSnapshot,
    id: &'static str,
    reading: &Reading<u64>,
    prev: Option<crate::history::CounterReading>,
    now: f64,
    unit_per_hour: f64,
    max: f64,
) {
    let unit = if unit_per_hour == 1.0 { "/h" } else { "/min" };
    match reading {
        Reading::Value(v) => match prev.and_then(|p| p.rate_per_hour(*v, now)) {
            Some(per_hour) => {
                let rate = per_hour / unit_per_hour;
                let status = if rate > max {
                    Status::Fail
                } else {
                    Status::Pass
                };
                e.push(
                    id,
                    Some(g),
                    status,
                    format!("{rate:.1}"),
                    fmt_num(max),
                    None,
                    None,
                );
            }
            None => e.push(
                id,
                Some(g),
                Status::Unknown,
                format!("count {v}"),
                format!("{}{unit}", fmt_num(max)),
                None,
                Some("rate needs an earlier reading (a count alone is not judged)".into()),
            ),
        },
        other => {
            let r: Reading<u64> = other.clone();
            e.judge(id, g, &r, |_| false, |v| v.to_string(), fmt_num(max));
        }
    }
}

fn nvml_status_name(code: u32) -> String {
    match code {
        0 => "success".into(),
        3 => "not supported".into(),
        999 => "unknown error".into(),
        n => format!("nvml error {n}"),
    }
}

fn xid_results(e: &mut Emitter<'_>, snapshot: &NodeSnapshot, xids: &[XidEvent]) {
    if xids.is_empty() {
        e.push(
            cat::GPU_XID,
            None,
            Status::Pass,
            "none".into(),
            "no hardware XID".into(),
            None,
            None,
        );
        return;
    }
    let Some(check_sev) = e.check(cat::GPU_XID).map(|c| c.severity) else {
        return;
    };
    // Group by GPU (resolving a UUID-only event to its index), keeping first-seen order.
    let mut groups: BTreeMap<Option<u32>, Vec<&XidEvent>> = BTreeMap::new();
    for x in xids {
        let index = x.gpu_index.or_else(|| {
            let uuid = x.gpu_uuid.as_deref()?;
            snapshot
                .gpus
                .iter()
                .find(|g| g.uuid() == Some(uuid))
                .map(|g| g.index)
        });
        groups.entry(index).or_default().push(x);
    }
    for (index, events) in groups {
        let rank = |c: XidClass| match c {
            XidClass::Hardware => 3,
            XidClass::Driver | XidClass::Unknown => 2,
            XidClass::Application => 1,
        };
        let mut infos: Vec<_> = events.iter().map(|x| classify(x.code)).collect();
        infos.sort_by_key(|i| std::cmp::Reverse(rank(i.class)));
        let mut codes: Vec<String> = Vec::new();
        for i in &infos {
            let c = i.code.to_string();
            if !codes.contains(&c) {
                codes.push(c);
            }
        }
        let worst = infos[0];
        let severity = match worst.class {
            XidClass::Hardware => check_sev,
            XidClass::Driver | XidClass::Unknown => check_sev.min(Severity::Warn),
            XidClass::Application => Severity::Info,
        };
        let mut detail = format!("xid {} {}", worst.code, worst.name);
        if codes.len() > 1 {
            detail.push_str(&format!(" (xids {})", codes.join(",")));
        }
        let gpu = index.and_then(|i| snapshot.gpus.iter().find(|g| g.index == i));
        let uuid = events.iter().find_map(|x| x.gpu_uuid.clone());
        e.push(
            cat::GPU_XID,
            gpu,
            Status::Fail,
            format!("xid {}", codes.join(",")),
            format!("{} class", worst.class.as_str()),
            Some(severity),
            Some(detail),
        );
        if let Some(last) = e.out.last_mut() {
            last.gpu = index;
            if last.uuid.is_none() {
                last.uuid = uuid;
            }
        }
    }
}

/// The results for a run in which NVML gave no snapshot: `nvml.init` or `nvml.responsive`
/// fails (whichever applies; the other checks cannot be judged and are left out).
pub fn evaluate_failure(
    failure: &NvmlFailure,
    ctx: &CheckContext,
    catalogue: &Catalogue,
) -> Vec<CheckResult> {
    let mut e = Emitter {
        out: Vec::new(),
        catalogue,
        profile: ctx.profile,
    };
    let deadline = format!("{} ms", ctx.nvml_timeout.as_millis());
    match failure {
        NvmlFailure::Init { kind, message } => {
            if e.check(cat::NVML_INIT).is_some() {
                e.push(
                    cat::NVML_INIT,
                    None,
                    Status::Fail,
                    format!("{kind}: {message}"),
                    String::new(),
                    None,
                    None,
                );
            }
        }
        NvmlFailure::Hung { waited, during } => {
            if e.check(cat::NVML_RESPONSIVE).is_some() {
                e.push(
                    cat::NVML_RESPONSIVE,
                    None,
                    Status::Fail,
                    format!("hung after {} ms ({during})", waited.as_millis()),
                    deadline,
                    None,
                    None,
                );
            }
        }
        NvmlFailure::Query(m) => {
            if e.check(cat::NVML_RESPONSIVE).is_some() {
                e.push(
                    cat::NVML_RESPONSIVE,
                    None,
                    Status::Fail,
                    format!("query failed: {m}"),
                    deadline,
                    None,
                    None,
                );
            }
        }
    }
    e.out
}

fn yes_no(b: &bool) -> String {
    if *b { "yes".into() } else { "no".into() }
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(
        check: &'static str,
        gpu: Option<u32>,
        severity: Severity,
        status: Status,
        message: &str,
    ) -> CheckResult {
        CheckResult {
            check,
            gpu,
            uuid: None,
            observed: String::new(),
            threshold: String::new(),
            severity,
            status,
            message: message.into(),
            enforced: true,
        }
    }

    #[test]
    fn reason_format() {
        let r = result(
            cat::GPU_XID,
            Some(2),
            Severity::Drain,
            Status::Fail,
            "xid 79 GPU has fallen off the bus",
        );
        assert_eq!(
            r.drain_reason(),
            "sgpu: gpu.xid gpu2: xid 79 GPU has fallen off the bus"
        );
        let r = result(
            cat::NVML_RESPONSIVE,
            None,
            Severity::Drain,
            Status::Fail,
            "nvml hung after 5001 ms (init)",
        );
        assert_eq!(
            r.drain_reason(),
            "sgpu: nvml.responsive: nvml hung after 5001 ms (init)"
        );
    }

    #[test]
    fn reason_is_sanitised_and_truncated_on_a_char_boundary() {
        let long = format!("say \"hi\"\nthen {}", "é".repeat(200));
        let r = result(cat::GPU_LOST, Some(7), Severity::Drain, Status::Fail, &long);
        let reason = r.drain_reason();
        assert!(reason.len() <= MAX_REASON_BYTES, "{}", reason.len());
        assert!(
            reason.starts_with("sgpu: gpu.lost gpu7: say  hi  then é"),
            "{reason}"
        );
        assert!(!reason.contains('"') && !reason.contains('\n'));
        // 'é' is two bytes: the cut never splits it.
        assert!(reason.is_char_boundary(reason.len()));
        assert_eq!(fit_reason(&"x".repeat(500)).len(), MAX_REASON_BYTES);
    }

    #[test]
    fn verdict_rollup_and_exit_codes() {
        let pass = result(cat::GPU_LOST, Some(0), Severity::Drain, Status::Pass, "ok");
        let info = result(
            cat::GPU_XID,
            Some(0),
            Severity::Info,
            Status::Fail,
            "xid 13",
        );
        let warn = result(
            cat::GPU_PERSISTENCE_MODE,
            Some(0),
            Severity::Warn,
            Status::Fail,
            "off",
        );
        let unknown = result(
            cat::GPU_TEMPERATURE,
            Some(0),
            Severity::Drain,
            Status::Unknown,
            "n/a",
        );
        let drain = result(
            cat::GPU_LOST,
            Some(1),
            Severity::Drain,
            Status::Fail,
            "lost",
        );
        assert_eq!(Verdict::of(&[]), Verdict::Healthy);
        assert_eq!(
            Verdict::of(&[pass.clone(), info.clone(), unknown.clone()]),
            Verdict::Healthy
        );
        assert_eq!(Verdict::of(&[pass.clone(), warn.clone()]), Verdict::Warn);
        assert_eq!(Verdict::of(&[warn, drain.clone(), info]), Verdict::Drain);
        assert_eq!(
            [Verdict::Healthy, Verdict::Warn, Verdict::Drain].map(Verdict::exit_code),
            [0, 1, 2]
        );
        assert_eq!(
            drain_reason(&[pass, unknown, drain]).as_deref(),
            Some("sgpu: gpu.lost gpu1: lost")
        );
    }

    #[test]
    fn observe_only_failures_would_drain_and_are_not_acted_on() {
        let mut g = GpuSnapshot::unknown(0);
        g.uuid = Reading::Value("GPU-x".into());
        g.lost = true;
        let snap = NodeSnapshot {
            driver_version: Reading::Unsupported,
            gpus: vec![g],
        };
        let ctx = CheckContext::new(Profile::Quick);
        let observing = Catalogue::effective_enforcing(&BTreeMap::new(), false);
        let r = evaluate(&snap, &ctx, &observing);
        assert_eq!(
            Verdict::of(&r),
            Verdict::Drain,
            "the judgement is unchanged"
        );
        assert_eq!(drain_reason(&r), None, "nothing to act on");
        assert_eq!(
            would_drain_reason(&r).as_deref(),
            Some("sgpu: gpu.lost gpu0: GPU lost (fallen off the bus)")
        );
        let enforcing = Catalogue::default();
        let r = evaluate(&snap, &ctx, &enforcing);
        assert!(drain_reason(&r).is_some() && would_drain_reason(&r).is_none());
    }

    #[test]
    fn nvml_failures_map_to_their_checks() {
        let cat = Catalogue::default();
        let ctx = CheckContext::new(Profile::Quick);
        let hung = NvmlFailure::Hung {
            waited: Duration::from_millis(5003),
            during: "reading gpu3".into(),
        };
        let r = evaluate_failure(&hung, &ctx, &cat);
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0].drain_reason(),
            "sgpu: nvml.responsive: nvml hung after 5003 ms (reading gpu3)"
        );
        let init = NvmlFailure::Init {
            kind: crate::gpu::InitFailure::DriverNotLoaded,
            message: "libnvidia-ml.so.1: NVIDIA driver is not loaded".into(),
        };
        let r = evaluate_failure(&init, &ctx, &cat);
        assert_eq!(r[0].check, cat::NVML_INIT);
        assert!(r[0].drains());
        assert!(
            r[0].drain_reason()
                .starts_with("sgpu: nvml.init: nvml init failed: driver not loaded")
        );
    }
}
