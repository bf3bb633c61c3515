//! `sgpu seff <jobid>`: a job's efficiency, jobstats/seff style.
//!
//! - GPUs: acctd's efficiency answer (`GET /v1/jobs/{cluster}/{id}/efficiency`,
//!   [`EfficiencyAnswer`]): per GPU utilization mean/max, memory peak (of the GPU's memory),
//!   allocated and used GPU-hours, energy, idle time and periods where healthd measured
//!   them. For a running job acctd has only its start; the figures so far then come from
//!   each of its nodes' healthd (`/status`, the running jobs' usage), asked only for a job
//!   acctd showed the caller (acctd's access rule: a user sees their own jobs, admins all).
//! - CPU and memory: Slurm's own accounting, `sacct -j ID -P -n -o
//!   JobIDRaw,State,ElapsedRaw,TotalCPU,AllocCPUS,MaxRSS,ReqMem,NNodes` ([`parse_sacct`],
//!   which names the field of any value it cannot read). Without slurmdbd sacct fails and
//!   the report says so (never zeros).
//! - Hints ([`hints`]), with these thresholds:
//!   - a GPU counts as used when its mean utilization is at least
//!     [`GPU_USED_MEAN_PCT`] (5%): "asked for 4 GPUs, used 1";
//!   - GPU utilization: the used GPUs' mean below [`GPU_LOW_MEAN_PCT`] (25%);
//!   - GPU memory: every GPU's peak at most [`GPU_MEM_SMALL_FRACTION`] (50%) of its
//!     memory: "a smaller GPU or a MIG slice fits";
//!   - idle: idle GPU time at least [`IDLE_FRACTION`] (25%) of the allocated time;
//!   - CPU efficiency below [`CPU_LOW_PCT`] (25%) with more than one CPU allocated;
//!   - memory: the peak (largest step's MaxRSS) below [`MEM_LOW_PCT`] (25%) of the request.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use serde::Serialize;
use sgpu_acct_client::Client;
use sgpu_nodelib::nodeconf;
use sgpu_nodelib::slurmctl::Scontrol;
use sgpu_wire::efficiency::{EfficiencyAnswer, GpuEfficiency, MigSlice};
use sgpu_wire::healthd::StatusDoc;

use crate::admin::healthd::{HealthdUrls, fetch};
use crate::settings::Settings;
use crate::timespec::{format_elapsed, format_time};

/// A GPU counts as used when its mean utilization is at least this, percent.
pub const GPU_USED_MEAN_PCT: f64 = 5.0;
/// Below this mean utilization of the used GPUs, percent, a hint says so.
pub const GPU_LOW_MEAN_PCT: f64 = 25.0;
/// A GPU memory peak at most this fraction of the GPU's memory: a smaller GPU fits.
pub const GPU_MEM_SMALL_FRACTION: f64 = 0.5;
/// Idle GPU time at least this fraction of the allocated time: a hint says so.
pub const IDLE_FRACTION: f64 = 0.25;
/// CPU efficiency below this, percent (more than one CPU): a hint says so.
pub const CPU_LOW_PCT: f64 = 25.0;
/// Memory peak below this share of the request, percent: a hint says so.
pub const MEM_LOW_PCT: f64 = 25.0;

/// `sgpu seff`.
#[derive(Debug, Args)]
pub struct SeffArgs {
    /// The job id.
    pub job_id: u32,
    /// Cluster (default: ClusterName in slurm.conf).
    #[arg(short = 'M', long = "cluster", value_name = "NAME")]
    pub cluster: Option<String>,
    /// Where a running job's nodes' healthd answers: NODE=URL (repeatable) or a template
    /// with %n (default http://%n:<status_listen port>).
    #[arg(long = "healthd", value_name = "NODE=URL|TEMPLATE")]
    pub healthd: Vec<String>,
    /// The `sacct` binary (default: next to scontrol, else on PATH).
    #[arg(long = "sacct", value_name = "PATH")]
    pub sacct: Option<PathBuf>,
    /// Everything as JSON.
    #[arg(long)]
    pub json: bool,
}

/// CPU and memory figures from Slurm's accounting.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlurmEfficiency {
    /// The job's state in slurmdbd.
    pub state: String,
    /// Elapsed, seconds.
    pub elapsed_s: u64,
    /// CPUs allocated.
    pub alloc_cpus: u64,
    /// CPU time used (TotalCPU), seconds.
    pub total_cpu_s: f64,
    /// TotalCPU / (Elapsed x AllocCPUS), percent (`None`: no elapsed time yet).
    pub cpu_efficiency_pct: Option<f64>,
    /// The largest MaxRSS of the job's steps, bytes (`None`: no step reported one).
    pub max_rss_bytes: Option<u64>,
    /// Memory requested for the whole job, bytes (`None`: none stated).
    pub req_mem_bytes: Option<u64>,
    /// MaxRSS / ReqMem, percent.
    pub mem_efficiency_pct: Option<f64>,
}

/// What Slurm's accounting said: figures, or why there are none.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlurmAnswer {
    /// sacct answered.
    Figures(SlurmEfficiency),
    /// No figures: sacct failed, slurmdbd is not running, or the job is not in it.
    Unavailable(String),
}

/// A value sacct printed that is not what its field holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sacct field {field}: {value:?} is not {expected}")]
pub struct SacctFieldError {
    /// The field, e.g. `TotalCPU`.
    pub field: &'static str,
    /// What sacct printed.
    pub value: String,
    /// What was expected.
    pub expected: &'static str,
}

/// The sacct fields read, in order.
pub const SACCT_FIELDS: &str = "JobIDRaw,State,ElapsedRaw,TotalCPU,AllocCPUS,MaxRSS,ReqMem,NNodes";

fn bad(field: &'static str, value: &str, expected: &'static str) -> SacctFieldError {
    SacctFieldError {
        field,
        value: value.to_string(),
        expected,
    }
}

/// sacct's `[DD-[HH:]]MM:SS[.mmm]` (TotalCPU), seconds.
pub fn parse_duration(field: &'static str, s: &str) -> Result<f64, SacctFieldError> {
    const EXPECTED: &str = "a time [DD-[HH:]]MM:SS[.mmm]";
    let err = || bad(field, s, EXPECTED);
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().map_err(|_| err())?, r),
        None => (0, s),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (h, m, sec) = match parts.as_slice() {
        [m, sec] => ("0", *m, *sec),
        [h, m, sec] => (*h, *m, *sec),
        _ => return Err(err()),
    };
    let int = |t: &str| -> Result<u64, SacctFieldError> {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        t.parse::<u64>().map_err(|_| err())
    };
    let (h, m) = (int(h)?, int(m)?);
    let sec: f64 = match sec.split_once('.') {
        Some((w, f)) => {
            int(w)?;
            int(f)?;
            sec.parse().map_err(|_| err())?
        }
        None => int(sec)? as f64,
    };
    Ok(((days * 24 + h) * 60 + m) as f64 * 60.0 + sec)
}

/// A sacct size such as `1234K`, `4000M`, `16G` or `0` (bytes; no unit: bytes for MaxRSS,
/// MiB for ReqMem, as sacct prints them), and the `n` (per node) or `c` (per CPU) suffix
/// of older ReqMem values.
fn parse_size(
    field: &'static str,
    s: &str,
    default_unit: u64,
) -> Result<(u64, Option<char>), SacctFieldError> {
    const EXPECTED: &str = "a size such as 1234K, 4000M or 16G";
    let err = || bad(field, s, EXPECTED);
    let mut t = s;
    let mut per = None;
    if let Some(last) = t.chars().last().filter(|c| matches!(c, 'n' | 'c')) {
        per = Some(last);
        t = &t[..t.len() - 1];
    }
    let (num, unit) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => (&t[..t.len() - 1], Some(c)),
        _ => (t, None),
    };
    let mult: u64 = match unit.map(|c| c.to_ascii_uppercase()) {
        None => default_unit,
        Some('K') => 1 << 10,
        Some('M') => 1 << 20,
        Some('G') => 1 << 30,
        Some('T') => 1 << 40,
        Some('P') => 1 << 50,
        Some(_) => return Err(err()),
    };
    let v: f64 = num.parse().map_err(|_| err())?;
    if !v.is_finite() || v < 0.0 {
        return Err(err());
    }
    Ok(((v * mult as f64).round() as u64, per))
}

fn parse_u64(field: &'static str, s: &str) -> Result<u64, SacctFieldError> {
    s.trim()
        .parse()
        .map_err(|_| bad(field, s, "a whole number"))
}

/// Reads `sacct -P -n -o` [`SACCT_FIELDS`] of job `job_id`: the allocation line (JobIDRaw
/// = the id) and its steps (`ID.batch`, `ID.0`, ...).
pub fn parse_sacct(job_id: u32, out: &str) -> Result<Option<SlurmEfficiency>, SacctFieldError> {
    let id = job_id.to_string();
    let mut job: Option<SlurmEfficiency> = None;
    let mut req_mem: Option<(u64, Option<char>)> = None;
    let mut nnodes = 1u64;
    let mut max_rss: Option<u64> = None;
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('|').collect();
        if f.len() < 8 {
            return Err(bad(
                "JobIDRaw",
                line,
                "a line of 8 fields (JobIDRaw|State|ElapsedRaw|TotalCPU|AllocCPUS|MaxRSS|ReqMem|NNodes)",
            ));
        }
        let raw = f[0];
        let is_job = raw == id;
        let is_step = raw
            .strip_prefix(id.as_str())
            .is_some_and(|r| r.starts_with('.'));
        if !is_job && !is_step {
            continue;
        }
        if !f[5].is_empty() {
            let (rss, _) = parse_size("MaxRSS", f[5], 1)?;
            max_rss = Some(max_rss.map_or(rss, |m: u64| m.max(rss)));
        }
        if is_job {
            let elapsed_s = parse_u64("ElapsedRaw", f[2])?;
            let total_cpu_s = if f[3].is_empty() {
                0.0
            } else {
                parse_duration("TotalCPU", f[3])?
            };
            let alloc_cpus = parse_u64("AllocCPUS", f[4])?;
            // `?` is the unit sacct prints when it has none to give (seen on 22.05 for a
            // running job: `16?`): no request known, not an error
            if !f[6].is_empty() && !f[6].ends_with('?') {
                req_mem = Some(parse_size("ReqMem", f[6], 1 << 20)?);
            }
            if !f[7].is_empty() {
                nnodes = parse_u64("NNodes", f[7])?;
            }
            let denom = elapsed_s as f64 * alloc_cpus as f64;
            job = Some(SlurmEfficiency {
                state: f[1].to_string(),
                elapsed_s,
                alloc_cpus,
                total_cpu_s,
                cpu_efficiency_pct: (denom > 0.0).then(|| 100.0 * total_cpu_s / denom),
                max_rss_bytes: None,
                req_mem_bytes: None,
                mem_efficiency_pct: None,
            });
        }
    }
    Ok(job.map(|mut j| {
        j.max_rss_bytes = max_rss;
        j.req_mem_bytes = req_mem.and_then(|(v, per)| match per {
            Some('c') => v.checked_mul(j.alloc_cpus),
            Some('n') => v.checked_mul(nnodes),
            _ => Some(v),
        });
        j.mem_efficiency_pct = match (j.max_rss_bytes, j.req_mem_bytes) {
            (Some(used), Some(req)) if req > 0 => Some(100.0 * used as f64 / req as f64),
            _ => None,
        };
        j
    }))
}

/// Asks sacct; every failure becomes [`SlurmAnswer::Unavailable`] with its reason.
fn ask_sacct(sacct: &std::path::Path, job_id: u32) -> SlurmAnswer {
    // run_program runs the client it is given, under the usual deadline and output cap
    let runner = match Scontrol::locate(Some(sacct)) {
        Ok(s) => s,
        Err(e) => return SlurmAnswer::Unavailable(e.to_string()),
    };
    let args: Vec<String> = ["-j", &job_id.to_string(), "-P", "-n", "-o", SACCT_FIELDS]
        .iter()
        .map(|s| s.to_string())
        .collect();
    match runner.run_program(sacct, &args, &[]) {
        Ok(out) => match parse_sacct(job_id, &out) {
            Ok(Some(e)) => SlurmAnswer::Figures(e),
            Ok(None) => SlurmAnswer::Unavailable(format!(
                "sacct knows no job {job_id} (slurmdbd has no record of it yet)"
            )),
            Err(e) => SlurmAnswer::Unavailable(e.to_string()),
        },
        Err(e) => {
            let text = e.to_string();
            if text.contains("accounting storage is disabled") {
                SlurmAnswer::Unavailable(
                    "Slurm's accounting storage (slurmdbd) is not configured on this cluster"
                        .into(),
                )
            } else {
                SlurmAnswer::Unavailable(text)
            }
        }
    }
}

/// The `sacct` to run: `--sacct`, else beside `scontrol`, else `sacct` on PATH.
fn sacct_path(a: &SeffArgs, settings: &Settings) -> PathBuf {
    if let Some(p) = &a.sacct {
        return p.clone();
    }
    Scontrol::locate(settings.config.scontrol.as_deref())
        .map(|s| s.path().with_file_name("sacct"))
        .ok()
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("sacct"))
}

/// Fills the GPUs of a running job on `node` with that node's healthd figures so far
/// (`doc`, its `/status`): samples, utilization, memory peak, energy, idle time so far,
/// and used time as allocated x mean utilization. False when `doc` holds no such job (the GPUs keep what
/// acctd said).
pub fn merge_live(answer: &mut EfficiencyAnswer, node: &str, doc: &StatusDoc) -> bool {
    let Some(job) = doc
        .jobs
        .iter()
        .find(|j| j.job_id == answer.job_id && j.cluster == answer.cluster)
    else {
        return false;
    };
    for g in &job.gpus {
        let Some(x) = answer
            .gpus
            .iter_mut()
            .find(|x| x.node == node && (x.index == g.index || x.uuid == g.uuid))
        else {
            continue;
        };
        x.samples = Some(g.samples);
        x.mem_peak_mib = Some(g.mem_peak_mib);
        x.energy_mj = g.energy_mj.or(x.energy_mj);
        // no utilization sample (a MIG slice: NVML gives none per slice): unknown, not 0
        if g.samples > 0 {
            x.util_mean_pct = Some(g.util_mean_pct);
            x.util_max_pct = Some(g.util_max_pct);
            x.used_gpu_ms = Some(
                (x.allocated_gpu_ms as f64 * g.util_mean_pct.clamp(0.0, 100.0) / 100.0) as u64,
            );
        }
        if g.idle_ms.is_some() {
            x.idle_ms = g.idle_ms;
        }
    }
    let sum = |f: fn(&GpuEfficiency) -> Option<u64>| -> Option<u64> {
        answer.gpus.iter().filter_map(f).reduce(u64::saturating_add)
    };
    answer.used_gpu_ms = sum(|g| g.used_gpu_ms);
    answer.energy_mj = sum(|g| g.energy_mj);
    answer.idle_gpu_ms = sum(|g| g.idle_ms);
    true
}

fn gib(mib: u64) -> String {
    let g = mib as f64 / 1024.0;
    if g >= 10.0 {
        format!("{g:.0} GiB")
    } else {
        format!("{g:.1} GiB")
    }
}

fn bytes_h(b: u64) -> String {
    let mib = b as f64 / (1u64 << 20) as f64;
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.0} MiB")
    }
}

/// Plain-language hints for the job (thresholds: the module's constants).
pub fn hints(e: &EfficiencyAnswer, slurm: &SlurmAnswer) -> Vec<String> {
    let mut out = Vec::new();
    let sampled: Vec<&GpuEfficiency> = e
        .gpus
        .iter()
        .filter(|g| g.util_mean_pct.is_some())
        .collect();
    let used: Vec<&GpuEfficiency> = sampled
        .iter()
        .copied()
        .filter(|g| g.util_mean_pct.unwrap_or(0.0) >= GPU_USED_MEAN_PCT)
        .collect();
    if !sampled.is_empty() && used.len() < e.gpus.len() && sampled.len() == e.gpus.len() {
        let n = e.gpus.len();
        let m = used.len();
        out.push(if m == 0 {
            format!(
                "asked for {n} GPU{}, used none (mean utilization below {GPU_USED_MEAN_PCT:.0}% on every GPU): does the program use the GPU?",
                if n == 1 { "" } else { "s" }
            )
        } else {
            format!(
                "asked for {n} GPUs, used {m} (mean utilization at least {GPU_USED_MEAN_PCT:.0}%): ask for {m} (--gres=gpu:{m}) or make the program use all of them"
            )
        });
    }
    if !used.is_empty() {
        let mean = used.iter().filter_map(|g| g.util_mean_pct).sum::<f64>() / used.len() as f64;
        if mean < GPU_LOW_MEAN_PCT {
            out.push(format!(
                "GPU utilization mean {mean:.0}% on the GPUs in use: the GPU waits for data or the CPU (larger batches, more data-loader workers)"
            ));
        }
    }
    let mem: Vec<(u64, u64)> = e
        .gpus
        .iter()
        .filter_map(|g| Some((g.mem_peak_mib?, g.mem_total_mib?)))
        .collect();
    // (a job that used no GPU has the hint above: its memory says nothing more)
    if !mem.is_empty()
        && !used.is_empty()
        && mem.len() == e.gpus.len()
        && mem
            .iter()
            .all(|&(p, t)| t > 0 && (p as f64) <= GPU_MEM_SMALL_FRACTION * t as f64)
    {
        let (peak, total) = mem.iter().copied().max().unwrap_or((0, 0));
        out.push(format!(
            "GPU memory peak {} of {}: a smaller GPU or a MIG slice fits",
            gib(peak),
            gib(total)
        ));
    }
    let idle = e.idle_gpu_ms.filter(|&i| {
        e.allocated_gpu_ms > 0 && i as f64 >= IDLE_FRACTION * e.allocated_gpu_ms as f64
    });
    if let Some(idle) = idle {
        out.push(format!(
            "GPUs idle {:.0}% of the allocated time: release GPUs you do not use (end the job when its work is done)",
            100.0 * idle as f64 / e.allocated_gpu_ms as f64
        ));
    }
    if let SlurmAnswer::Figures(s) = slurm {
        let cpu = s
            .cpu_efficiency_pct
            .filter(|&c| s.alloc_cpus > 1 && c < CPU_LOW_PCT);
        if let Some(c) = cpu {
            out.push(format!(
                "CPU efficiency {c:.0}% of {} CPUs: ask for fewer CPUs (--cpus-per-task)",
                s.alloc_cpus
            ));
        }
        let low = s.mem_efficiency_pct.is_some_and(|m| m < MEM_LOW_PCT);
        if let (true, Some(used), Some(req)) = (low, s.max_rss_bytes, s.req_mem_bytes) {
            out.push(format!(
                "memory peak {} of {} requested: ask for less (--mem)",
                bytes_h(used),
                bytes_h(req)
            ));
        }
    }
    out
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * part as f64 / whole as f64)
    }
}

fn hours(ms: u64) -> String {
    format!("{:.4}", ms as f64 / 3_600_000.0)
}

fn secs(ms: u64) -> i64 {
    i64::try_from(ms / 1000).unwrap_or(i64::MAX)
}

/// The text report.
pub fn render(e: &EfficiencyAnswer, slurm: &SlurmAnswer, notes: &[String]) -> String {
    use std::fmt::Write;
    let mut o = job_lines(e);
    o.push_str(&gpu_totals(e));
    o.push_str(&gpu_table(e));
    o.push_str(&idle_sections(e));
    o.push_str(&slurm_lines(slurm, e.end_ms.is_none()));
    for n in notes {
        let _ = writeln!(o, "Note: {n}");
    }
    let h = hints(e, slurm);
    if !h.is_empty() {
        let _ = writeln!(o, "Hints:");
        for line in h {
            let _ = writeln!(o, "  - {line}");
        }
    }
    o
}

/// `-` for an empty field.
fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// The report's first lines: the job and its run, owner, nodes and window.
fn job_lines(e: &EfficiencyAnswer) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let running = e.end_ms.is_none();
    let _ = writeln!(
        o,
        "Job {}{} on cluster {}: {}",
        e.job_id,
        if e.run > 0 {
            format!(" (run {})", e.run)
        } else {
            String::new()
        },
        e.cluster,
        if running {
            "RUNNING (figures so far)"
        } else {
            "ended"
        }
    );
    let _ = writeln!(
        o,
        "User: {}  Account: {}  Partition: {}",
        or_dash(&e.user),
        or_dash(&e.account),
        or_dash(&e.partition)
    );
    let end = e.end_ms.unwrap_or(e.now_ms);
    let _ = writeln!(
        o,
        "Nodes: {}  Start: {}  {}: {}  Elapsed: {}",
        e.nodes.join(","),
        format_time(secs(e.start_ms)),
        if running { "Now" } else { "End" },
        format_time(secs(end)),
        format_elapsed(end.saturating_sub(e.start_ms) / 1000)
    );
    o
}

/// The job's GPU totals: GPUs in use, allocated and used GPU-hours, idle GPU-hours, energy.
fn gpu_totals(e: &EfficiencyAnswer) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let sampled = e.gpus.iter().filter(|g| g.util_mean_pct.is_some()).count();
    let used = e
        .gpus
        .iter()
        .filter(|g| g.util_mean_pct.unwrap_or(0.0) >= GPU_USED_MEAN_PCT)
        .count();
    let _ = writeln!(
        o,
        "GPUs: {} allocated, {}",
        e.gpus.len(),
        if sampled == 0 {
            "utilization not sampled (no healthd figures)".to_string()
        } else {
            format!(
                "{used} in use (mean utilization at least {GPU_USED_MEAN_PCT:.0}%){}",
                if sampled < e.gpus.len() {
                    format!(", {} not sampled", e.gpus.len() - sampled)
                } else {
                    String::new()
                }
            )
        }
    );
    // used time is a share of the allocated time of the GPUs that were sampled (a MIG
    // slice's time is not: healthd samples no utilization of slices)
    let sampled_ms: u64 = e
        .gpus
        .iter()
        .filter(|g| g.used_gpu_ms.is_some())
        .map(|g| g.allocated_gpu_ms)
        .sum();
    let unsampled = e.gpus.iter().any(|g| g.used_gpu_ms.is_none());
    let _ = writeln!(
        o,
        "GPU-hours: allocated {}, used {}",
        hours(e.allocated_gpu_ms),
        e.used_gpu_ms.map_or("unknown (not sampled)".into(), |u| {
            if unsampled {
                format!(
                    "{} ({} of the {} sampled)",
                    hours(u),
                    pct(u, sampled_ms),
                    hours(sampled_ms)
                )
            } else {
                format!("{} ({} of allocated)", hours(u), pct(u, e.allocated_gpu_ms))
            }
        })
    );
    if let Some(ms) = e.slice_ms {
        let _ = writeln!(
            o,
            "MIG slice-hours: {} (GPU-hours count each slice by its share of its GPU)",
            hours(ms)
        );
    }
    let _ = writeln!(
        o,
        "Idle GPU-hours: {}",
        e.idle_gpu_ms.map_or(
            "unknown (healthd measured no idle time for this job)".into(),
            |i| format!("{} ({} of allocated)", hours(i), pct(i, e.allocated_gpu_ms))
        )
    );
    let _ = writeln!(
        o,
        "Energy: {}",
        e.energy_mj
            .map_or("unknown (no energy counter read)".into(), |mj| {
                let w = if e.allocated_gpu_ms > 0 {
                    format!(
                        ", mean {:.1} W per GPU",
                        mj as f64 / e.allocated_gpu_ms as f64
                    )
                } else {
                    String::new()
                };
                format!(
                    "{:.6} kWh ({:.1} J){w}",
                    mj as f64 / 3.6e9,
                    mj as f64 / 1000.0
                )
            })
    );
    o
}

/// A MIG slice's profile and share for seff's table: `2g.20gb (2/7)`, or the profile alone
/// when its share was not read.
pub fn slice_cell(m: &MigSlice) -> String {
    match (m.slices, m.of) {
        (Some(s), Some(of)) => format!("{} ({s}/{of})", m.profile),
        _ => m.profile.clone(),
    }
}

/// One row per GPU: utilization, memory peak, GPU-hours, energy, idle time; with MIG slices,
/// each slice's profile and share and its slice-hours, under its parent GPU's model.
fn gpu_table(e: &EfficiencyAnswer) -> String {
    let slices = e.gpus.iter().any(|g| g.mig.is_some());
    let mut header = vec!["NODE", "GPU", "MODEL"];
    if slices {
        header.push("SLICE");
    }
    header.extend(["UTIL MEAN", "UTIL MAX", "MEM PEAK", "GPU-HOURS"]);
    if slices {
        header.push("SLICE-HOURS");
    }
    header.extend(["USED", "ENERGY KWH", "IDLE"]);
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    for g in &e.gpus {
        // a slice: its parent GPU's model, its profile and share beside it
        let model = match &g.mig {
            Some(m) => m.parent_model.clone().or_else(|| g.model.clone()),
            None => g.model.clone(),
        };
        let mut row = vec![
            g.node.clone(),
            g.index.to_string(),
            model.unwrap_or_else(|| "-".into()),
        ];
        if slices {
            row.push(g.mig.as_ref().map_or("-".into(), slice_cell));
        }
        row.extend([
            g.util_mean_pct.map_or("-".into(), |u| format!("{u:.1}%")),
            g.util_max_pct.map_or("-".into(), |u| format!("{u}%")),
            match (g.mem_peak_mib, g.mem_total_mib) {
                (Some(p), Some(t)) => format!("{p} / {t} MiB"),
                (Some(p), None) => format!("{p} MiB"),
                _ => "-".into(),
            },
            hours(g.allocated_gpu_ms),
        ]);
        if slices {
            row.push(g.slice_ms.map_or("-".into(), hours));
        }
        row.extend([
            g.used_gpu_ms.map_or("-".into(), hours),
            g.energy_mj
                .map_or("-".into(), |mj| format!("{:.6}", mj as f64 / 3.6e9)),
            g.idle_ms.map_or("-".into(), |i| format_elapsed(i / 1000)),
        ]);
        rows.push(row);
    }
    crate::admin::table(&rows)
}

/// CPU and memory efficiency from Slurm's accounting, or why there is none.
fn slurm_lines(slurm: &SlurmAnswer, running: bool) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    match slurm {
        SlurmAnswer::Figures(s) => {
            let _ = writeln!(
                o,
                "CPU efficiency (Slurm): {} (TotalCPU {} of {} CPUs x {}){}",
                s.cpu_efficiency_pct
                    .map_or("-".into(), |c| format!("{c:.1}%")),
                format_elapsed(s.total_cpu_s as u64),
                s.alloc_cpus,
                format_elapsed(s.elapsed_s),
                if running {
                    " (Slurm fills TotalCPU as steps end)"
                } else {
                    ""
                }
            );
            let _ = writeln!(
                o,
                "Memory efficiency (Slurm): {}",
                match (s.mem_efficiency_pct, s.max_rss_bytes, s.req_mem_bytes) {
                    (Some(m), Some(u), Some(r)) => format!(
                        "{m:.1}% (largest step MaxRSS {} of {} requested)",
                        bytes_h(u),
                        bytes_h(r)
                    ),
                    (_, None, _) if running => "unknown (no step reported MaxRSS yet)".into(),
                    (_, None, _) => "unknown (no step reported MaxRSS: does the cluster \
                                     gather it? JobAcctGatherType)"
                        .into(),
                    (_, Some(u), _) => format!("MaxRSS {} (no memory request known)", bytes_h(u)),
                }
            );
        }
        SlurmAnswer::Unavailable(why) => {
            let _ = writeln!(o, "CPU and memory efficiency: not available: {why}");
        }
    }
    o
}

/// The job's idle periods per GPU and the idle actions taken on it (empty when there are
/// none); `sgpu job` prints the same.
pub fn idle_sections(e: &EfficiencyAnswer) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let periods: Vec<String> = e
        .gpus
        .iter()
        .flat_map(|g| {
            g.idle_periods.iter().flatten().map(move |p| {
                format!(
                    "  {} gpu{}: {} - {} ({})",
                    g.node,
                    g.index,
                    format_time(secs(p.start_ms)),
                    format_time(secs(p.end_ms)),
                    format_elapsed(p.end_ms.saturating_sub(p.start_ms) / 1000)
                )
            })
        })
        .collect();
    if !periods.is_empty() {
        let _ = writeln!(o, "Idle periods (UTC):");
        for p in periods {
            let _ = writeln!(o, "{p}");
        }
    }
    if !e.actions.is_empty() {
        let _ = writeln!(o, "Idle actions:");
        for a in &e.actions {
            let _ = writeln!(
                o,
                "  {} {} {}: {}",
                format_time(secs(a.time_ms)),
                a.node,
                a.action,
                a.reason
            );
        }
    }
    o
}

/// `sgpu seff`.
pub fn seff(settings: &Settings, a: &SeffArgs) -> anyhow::Result<i32> {
    let cluster = match a.cluster.clone().or_else(nodeconf::cluster_name) {
        Some(c) => c,
        None => bail!("which cluster? pass -M NAME (slurm.conf has no ClusterName)"),
    };
    let client: Client = settings.acctd_client()?;
    let mut answer: EfficiencyAnswer = client
        .get(&format!(
            "/v1/jobs/{}/{}/efficiency",
            crate::report::enc(&cluster),
            a.job_id
        ))
        .map_err(|e| anyhow::anyhow!("acctd at {}: {e}", client.base_url()))?;
    let mut notes = Vec::new();
    if answer.end_ms.is_none() {
        let port = settings
            .config
            .status_listen
            .map(|s| s.port())
            .unwrap_or(9411);
        let urls = HealthdUrls::new(&a.healthd, port).map_err(anyhow::Error::msg)?;
        let mut missing = BTreeMap::new();
        for node in answer.nodes.clone() {
            match fetch(&urls, &node) {
                Ok(doc) => {
                    if !merge_live(&mut answer, &node, &doc) {
                        missing.insert(node, "its healthd does not sample this job".to_string());
                    }
                }
                Err(e) => {
                    missing.insert(node, e.to_string());
                }
            }
        }
        for (node, why) in missing {
            notes.push(format!("{node}: no live figures: {why}"));
        }
    }
    let slurm = ask_sacct(&sacct_path(a, settings), a.job_id);
    if a.json {
        let h = hints(&answer, &slurm);
        let mut v = serde_json::to_value(&answer)?;
        if let Some(m) = v.as_object_mut() {
            m.remove("version");
        }
        let out = serde_json::json!({
            "gpu": v,
            "slurm": slurm,
            "notes": notes,
            "hints": h,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    print!("{}", render(&answer, &slurm, &notes));
    Ok(0)
}

#[cfg(test)]
mod tests;
