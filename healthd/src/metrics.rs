//! `GET /metrics`: OpenMetrics text (`prometheus-client`), built at scrape time from the
//! daemon's [`Shared`] state.
//!
//! Per GPU (labels `gpu`, `uuid`, `model`, and `job_id`, `user`, `account` while a job
//! holds the GPU — empty otherwise):
//! `sgpu_gpu_utilization_ratio`, `sgpu_gpu_memory_used_bytes`, `sgpu_gpu_power_watts`,
//! `sgpu_gpu_temperature_celsius` (gauges), `sgpu_gpu_energy_joules_total` (the NVML counter
//! since driver load), `sgpu_gpu_ecc_uncorrectable_errors_total` (volatile count),
//! `sgpu_gpu_xid_errors_total` (also label `xid`; counted since healthd started, per holding
//! job). Node: `sgpu_check_failing` (`check`, `gpu`, `severity`; 1 failing, 0 passing,
//! absent when unknown), `sgpu_node_verdict` (0 healthy, 1 warn, 2 drain),
//! `sgpu_node_would_drain` (1: a drain-worthy failure of a check with `enforce = false`),
//! `sgpu_node_drained_by_sgpu`, `sgpu_drains_total`, `sgpu_resumes_total`,
//! `sgpu_breaker_open`, `sgpu_breaker_refusals_total`, `sgpu_jobs_running`,
//! `sgpu_job_usage_records_total`, `sgpu_healthd_samples_total`,
//! Per running job (labels `job_id`, `user`, `account`): `sgpu_job_gpus` (its GPUs on the
//! node), `sgpu_job_idle_gpus` (those idle now, [`crate::idle`]) and
//! `sgpu_job_idle_gpu_seconds_total` (idle GPU-seconds so far; a GPU's idle run counts once
//! it reached the window, from its first idle sample); `sgpu_job_mig_slices` (also labels
//! `parent_uuid`, `profile`: the job's MIG slices per parent GPU and profile; a slice's own
//! series are the per-GPU ones with its `MIG-` UUID, without utilization, power, energy,
//! temperature or ECC, which NVML gives per GPU only); `sgpu_idle_actions_total` (label
//! `action`: `warn`, `mail`, `cancel`, `recovered`, `refused`; since healthd started).
//! `sgpu_healthd_sample_errors_total`, `sgpu_healthd_sample_duration_seconds` (histogram),
//! and after the first check run `sgpu_spool_writable`, `sgpu_spool_free_bytes`
//! ([`crate::spool_probe`]).
//! Spool forwarder (only while it runs, see [`crate::forward`]):
//! `sgpu_forward_records_total` (label `result`: `accepted`, `duplicate`, `rejected`),
//! `sgpu_forward_failures_total`, `sgpu_forward_backlog_records`,
//! `sgpu_forward_held_records`, `sgpu_forward_last_success_timestamp_seconds`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::status::{JobLabels, Live, Shared, mig_profile};
use sgpu_nodelib::checks::{Status, Verdict};

/// The content type of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
struct DaemonCollector {
    shared: Arc<Shared>,
}

/// One metric family: its descriptor, then each row (unlabelled, or with its labels)
/// written by `put`.
fn family<V>(
    enc: &mut DescriptorEncoder,
    (name, help, unit, kind): (&str, &str, Option<&Unit>, MetricType),
    rows: &[(Labels, V)],
    put: impl Fn(&mut MetricEncoder<'_>, &V) -> fmt::Result,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, kind)?;
    for (labels, v) in rows {
        if labels.is_empty() {
            put(&mut m, v)?;
        } else {
            put(&mut m.encode_family(labels)?, v)?;
        }
    }
    Ok(())
}

fn gauges<V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: &[(Labels, V)],
) -> fmt::Result {
    family(enc, (name, help, unit, MetricType::Gauge), rows, |m, v| {
        m.encode_gauge(v)
    })
}

fn counters<V: EncodeCounterValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: &[(Labels, V)],
) -> fmt::Result {
    family(
        enc,
        (name, help, unit, MetricType::Counter),
        rows,
        |m, v| m.encode_counter::<NoLabelSet, _, u64>(v, None),
    )
}

/// One unlabelled row.
fn single<V>(v: V) -> Vec<(Labels, V)> {
    vec![(Labels::new(), v)]
}

fn job_labels(labels: &mut Labels, job: Option<&JobLabels>) {
    labels.push((
        "job_id",
        job.map(|j| j.job_id.to_string()).unwrap_or_default(),
    ));
    labels.push(("user", job.map(|j| j.user.clone()).unwrap_or_default()));
    labels.push((
        "account",
        job.map(|j| j.account.clone()).unwrap_or_default(),
    ));
}

impl Collector for DaemonCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let live = self.shared.lock().clone();
        gpu_metrics(&mut enc, &live)?;
        xid_metrics(&mut enc, &live)?;
        node_metrics(&mut enc, &live)?;
        active_metrics(&mut enc, &live)?;
        action_counters(&mut enc, &live)?;
        job_metrics(&mut enc, &live)?;
        sampler_counters(&mut enc, &live)?;
        forward_metrics(&mut enc, &live)
    }
}

/// The GPUs at the last sample: utilization, memory, power, temperature, energy, ECC.
fn gpu_metrics(enc: &mut DescriptorEncoder, live: &Live) -> fmt::Result {
    let mut util = Vec::new();
    let mut mem = Vec::new();
    let mut power = Vec::new();
    let mut temp = Vec::new();
    let mut energy = Vec::new();
    let mut ecc = Vec::new();
    for g in &live.gpus {
        let mut labels: Labels = vec![
            ("gpu", g.index.to_string()),
            ("uuid", g.uuid.clone().unwrap_or_default()),
            ("model", g.name.clone().unwrap_or_default()),
        ];
        job_labels(
            &mut labels,
            g.uuid.as_ref().and_then(|u| live.holders.get(u)),
        );
        if let Some(v) = g.utilization_gpu_pct {
            util.push((labels.clone(), f64::from(v.min(100)) / 100.0));
        }
        if let Some(v) = g.memory_used_bytes {
            mem.push((labels.clone(), v));
        }
        if let Some(v) = g.power_mw {
            power.push((labels.clone(), f64::from(v) / 1000.0));
        }
        if let Some(v) = g.temperature_c {
            temp.push((labels.clone(), v));
        }
        if let Some(v) = g.energy_mj {
            energy.push((labels.clone(), v as f64 / 1000.0));
        }
        if let Some(v) = g.ecc_volatile_uncorrected {
            ecc.push((labels, v));
        }
    }
    gauges(
        enc,
        "sgpu_gpu_utilization",
        "GPU utilization (0 to 1) at the last sample",
        Some(&Unit::Other("ratio".into())),
        &util,
    )?;
    gauges(
        enc,
        "sgpu_gpu_memory_used",
        "GPU memory in use at the last sample",
        Some(&Unit::Bytes),
        &mem,
    )?;
    gauges(
        enc,
        "sgpu_gpu_power",
        "GPU power draw at the last sample",
        Some(&Unit::Other("watts".into())),
        &power,
    )?;
    gauges(
        enc,
        "sgpu_gpu_temperature",
        "GPU temperature at the last sample",
        Some(&Unit::Celsius),
        &temp,
    )?;
    counters(
        enc,
        "sgpu_gpu_energy",
        "GPU energy counter since the driver loaded",
        Some(&Unit::Joules),
        &energy,
    )?;
    counters(
        enc,
        "sgpu_gpu_ecc_uncorrectable_errors",
        "volatile uncorrectable ECC errors since the driver loaded",
        None,
        &ecc,
    )?;
    Ok(())
}

/// XIDs seen since healthd started, by GPU, XID and job.
fn xid_metrics(enc: &mut DescriptorEncoder, live: &Live) -> fmt::Result {
    let mut xids = Vec::new();
    for ((gpu, uuid, code, job), n) in &live.xids {
        let model = live
            .gpus
            .iter()
            .find(|g| g.index == *gpu)
            .and_then(|g| g.name.clone())
            .unwrap_or_default();
        let mut labels: Labels = vec![
            (
                "gpu",
                if *gpu == u32::MAX {
                    String::new()
                } else {
                    gpu.to_string()
                },
            ),
            ("uuid", uuid.clone()),
            ("model", model),
            ("xid", code.to_string()),
        ];
        job_labels(&mut labels, job.as_ref());
        xids.push((labels, *n));
    }
    counters(
        enc,
        "sgpu_gpu_xid_errors",
        "XIDs seen since healthd started, by GPU, XID and the job holding the GPU",
        None,
        &xids,
    )?;
    Ok(())
}

/// One series per label set: results with the same labels (a node-level check with several
/// results, as `ib.port` has one per port) become one, with the highest value.
fn merge_series(series: Vec<(Labels, i64)>) -> Vec<(Labels, i64)> {
    let mut out: Vec<(Labels, i64)> = Vec::with_capacity(series.len());
    for (labels, v) in series {
        match out.iter_mut().find(|(l, _)| *l == labels) {
            Some(e) => e.1 = e.1.max(v),
            None => out.push((labels, v)),
        }
    }
    out
}

/// The node: the last full run's checks and verdict, would-drain, drained, breaker, spool.
fn node_metrics(enc: &mut DescriptorEncoder, live: &Live) -> fmt::Result {
    let mut checks = Vec::new();
    let mut verdict = Vec::new();
    if let Some(run) = &live.last_run {
        for r in &run.report.results {
            let v: i64 = match r.status {
                Status::Fail => 1,
                Status::Pass => 0,
                Status::Unknown => continue,
            };
            let labels: Labels = vec![
                ("check", r.check.to_string()),
                ("gpu", r.gpu.map(|g| g.to_string()).unwrap_or_default()),
                ("severity", r.severity.to_string()),
            ];
            checks.push((labels, v));
        }
        let v: i64 = match run.report.verdict {
            Verdict::Healthy => 0,
            Verdict::Warn => 1,
            Verdict::Drain => 2,
        };
        verdict.push((Labels::new(), v));
    }
    // node-level results of one check (one per InfiniBand port, say) share their labels:
    // one series each, failing if any of them fails
    let checks = merge_series(checks);
    gauges(
        enc,
        "sgpu_check_failing",
        "1 if the check failed at the last full run, 0 if it passed",
        None,
        &checks,
    )?;
    gauges(
        enc,
        "sgpu_node_verdict",
        "last full run: 0 healthy, 1 warn, 2 drain",
        None,
        &verdict,
    )?;
    let one = |b: bool| single(i64::from(b));
    let would = live
        .last_run
        .as_ref()
        .is_some_and(|run| run.report.results.iter().any(|r| r.would_drain()));
    gauges(
        enc,
        "sgpu_node_would_drain",
        "1 if the last full run found a drain-worthy failure of a check with enforce = false",
        None,
        &one(would),
    )?;
    gauges(
        enc,
        "sgpu_node_drained_by_sgpu",
        "1 while healthd holds this node drained",
        None,
        &one(live.memory.drained.is_some()),
    )?;
    gauges(
        enc,
        "sgpu_breaker_open",
        "1 while the circuit breaker refuses this node's drain",
        None,
        &one(live.memory.breaker_open.is_some()),
    )?;
    if let Some(s) = &live.spool {
        gauges(
            enc,
            "sgpu_spool_writable",
            "1 while the node spool takes records (owner, mode and a probe write checked)",
            None,
            &one(s.error.is_none()),
        )?;
        let free: Vec<(Labels, i64)> = s
            .free_bytes
            .map(|b| (Labels::new(), i64::try_from(b).unwrap_or(i64::MAX)))
            .into_iter()
            .collect();
        gauges(
            enc,
            "sgpu_spool_free",
            "free space on the spool's filesystem",
            Some(&Unit::Bytes),
            &free,
        )?;
    }
    Ok(())
}

/// The newest run of each active check: its result, when it ended, how long it took.
fn active_metrics(enc: &mut DescriptorEncoder, live: &Live) -> fmt::Result {
    let Some(run) = &live.last_run else {
        return Ok(());
    };
    let rows = |f: &dyn Fn(&sgpu_nodelib::active::ActiveResult) -> f64| -> Vec<(Labels, f64)> {
        run.report
            .active
            .iter()
            .map(|r| (vec![("check", r.check.clone())], f(r)))
            .collect()
    };
    gauges(
        enc,
        "sgpu_active_check_result",
        "newest run of the active check: 0 pass, 1 warn, 2 fail or timeout, 3 error",
        None,
        &rows(&|r| f64::from(r.outcome.metric_value())),
    )?;
    gauges(
        enc,
        "sgpu_active_check_last_run_timestamp",
        "Unix time the newest run of the active check ended",
        Some(&Unit::Seconds),
        &rows(&|r| r.finished_at_ms as f64 / 1000.0),
    )?;
    gauges(
        enc,
        "sgpu_active_check_duration",
        "how long the newest run of the active check took",
        Some(&Unit::Seconds),
        &rows(&|r| r.duration().as_secs_f64()),
    )
}

/// What healthd did since it started: drains, resumes, breaker refusals.
fn action_counters(enc: &mut DescriptorEncoder, live: &Live) -> fmt::Result {
    counters(
        enc,
        "sgpu_drains",
        "drains done by healthd since it started",
        None,
        &single(live.drains_total),
    )?;
    counters(
        enc,
        "sgpu_resumes",
        "resumes done by healthd since it started",
        None,
        &single(live.resumes_total),
    )?;
    counters(
        enc,
        "sgpu_breaker_refusals",
        "drains the circuit breaker refused since healthd started",
        None,
        &single(live.breaker_refusals_total),
    )?;
    Ok(())
}

/// The running jobs: GPUs, idle GPUs and idle time, idle-policy actions, usage records.
fn job_metrics(enc: &mut DescriptorEncoder, live: &Live) -> fmt::Result {
    let mut job_gpus = Vec::new();
    let mut job_idle = Vec::new();
    let mut job_idle_s = Vec::new();
    let mut job_slices = Vec::new();
    for j in &live.jobs {
        let mut labels = Labels::new();
        job_labels(&mut labels, Some(&JobLabels::of(j)));
        job_gpus.push((labels.clone(), j.gpus.len() as i64));
        job_idle.push((
            labels.clone(),
            j.gpus.iter().filter(|g| g.idle.idle).count() as i64,
        ));
        let idle_ms: u64 = j.gpus.iter().map(|g| g.idle.total_ms()).sum();
        job_idle_s.push((labels.clone(), idle_ms as f64 / 1000.0));
        // its MIG slices by parent GPU and profile (no utilization series: none per slice)
        let mut slices: BTreeMap<(String, String), i64> = BTreeMap::new();
        for s in j.gpus.iter().filter_map(|g| live.slice(&g.uuid)) {
            let parent = s.mig_parent.clone().unwrap_or_default();
            let profile = mig_profile(s).unwrap_or_default();
            *slices.entry((parent, profile)).or_default() += 1;
        }
        for ((parent, profile), n) in slices {
            let mut l = labels.clone();
            l.push(("parent_uuid", parent));
            l.push(("profile", profile));
            job_slices.push((l, n));
        }
    }
    gauges(
        enc,
        "sgpu_job_gpus",
        "GPUs of a running job on this node",
        None,
        &job_gpus,
    )?;
    gauges(
        enc,
        "sgpu_job_idle_gpus",
        "GPUs of a running job that are idle now (below the partition's threshold for its window)",
        None,
        &job_idle,
    )?;
    counters(
        enc,
        "sgpu_job_idle_gpu_seconds",
        "idle GPU-seconds of a running job so far",
        None,
        &job_idle_s,
    )?;
    gauges(
        enc,
        "sgpu_job_mig_slices",
        "MIG slices of a running job on this node, by parent GPU and profile",
        None,
        &job_slices,
    )?;
    let actions: Vec<(Labels, u64)> = live
        .idle_actions
        .iter()
        .map(|(a, n)| (vec![("action", a.to_string())], *n))
        .collect();
    counters(
        enc,
        "sgpu_idle_actions",
        "idle-policy actions since healthd started (warn, mail, cancel, recovered, refused)",
        None,
        &actions,
    )?;
    gauges(
        enc,
        "sgpu_jobs_running",
        "jobs healthd is sampling",
        None,
        &[(Labels::new(), live.jobs.len() as i64)],
    )?;
    counters(
        enc,
        "sgpu_job_usage_records",
        "job usage records written to the spool since healthd started",
        None,
        &single(live.jobs_finalised_total),
    )?;
    Ok(())
}

/// The sampler: batches read and cycles that failed.
fn sampler_counters(enc: &mut DescriptorEncoder, live: &Live) -> fmt::Result {
    counters(
        enc,
        "sgpu_healthd_samples",
        "sample batches read since healthd started",
        None,
        &single(live.samples_total),
    )?;
    counters(
        enc,
        "sgpu_healthd_sample_errors",
        "sampling cycles that could not read the GPUs",
        None,
        &single(live.sample_errors_total),
    )?;
    Ok(())
}

/// The forwarder (only when it is on): records by result, failures, backlog, last success.
fn forward_metrics(enc: &mut DescriptorEncoder, live: &Live) -> fmt::Result {
    let f = &live.forward;
    if f.enabled {
        let rows: Vec<(Labels, u64)> = [
            ("accepted", f.accepted_total),
            ("duplicate", f.duplicate_total),
            ("rejected", f.rejected_total),
            ("conflict", f.conflict_total),
        ]
        .into_iter()
        .map(|(r, n)| (vec![("result", r.to_string())], n))
        .collect();
        counters(
            enc,
            "sgpu_forward_records",
            "spool records acctd acknowledged (accepted, duplicate), refused (rejected: moved to bad/) or kept apart as conflicting with a stored record (conflict: moved to bad/)",
            None,
            &rows,
        )?;
        counters(
            enc,
            "sgpu_forward_failures",
            "forwarding rounds that ended in an error (acctd unreachable, 5xx, credential)",
            None,
            &single(f.failures_total),
        )?;
        gauges(
            enc,
            "sgpu_forward_backlog_records",
            "records in the spool after the last forwarding round",
            None,
            &[(Labels::new(), f.backlog as i64)],
        )?;
        gauges(
            enc,
            "sgpu_forward_held_records",
            "job_start/job_end records held back until the sampler released them",
            None,
            &[(Labels::new(), f.held as i64)],
        )?;
        let last: Vec<(Labels, f64)> = f
            .last_success_ms
            .map(|ms| (Labels::new(), ms as f64 / 1000.0))
            .into_iter()
            .collect();
        gauges(
            enc,
            "sgpu_forward_last_success_timestamp",
            "when a forwarding round last ended without an error, Unix time",
            Some(&Unit::Seconds),
            &last,
        )?;
    }
    Ok(())
}

/// The registry `/metrics` encodes: the daemon's collector and the sampling histogram.
pub fn registry(shared: Arc<Shared>) -> Registry {
    let mut r = Registry::default();
    r.register_with_unit(
        "sgpu_healthd_sample_duration",
        "time one sampling cycle takes (GPU readings, spool scan, database flush)",
        Unit::Seconds,
        shared.sample_duration.clone(),
    );
    r.register_collector(Box::new(DaemonCollector { shared }));
    r
}

/// The registry's OpenMetrics text.
pub fn render(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_with_the_same_labels_are_one_series() {
        let l = |check: &str, gpu: &str, sev: &str| -> Labels {
            vec![
                ("check", check.to_string()),
                ("gpu", gpu.to_string()),
                ("severity", sev.to_string()),
            ]
        };
        // two InfiniBand ports, one down; a GPU check on two GPUs
        let merged = merge_series(vec![
            (l("ib.port", "", "drain"), 0),
            (l("ib.port", "", "drain"), 1),
            (l("gpu.lost", "0", "drain"), 0),
            (l("gpu.lost", "1", "drain"), 0),
            (l("ib.errors", "", "warn"), 1),
            (l("ib.errors", "", "drain"), 0),
        ]);
        assert_eq!(
            merged,
            vec![
                (l("ib.port", "", "drain"), 1),
                (l("gpu.lost", "0", "drain"), 0),
                (l("gpu.lost", "1", "drain"), 0),
                (l("ib.errors", "", "warn"), 1),
                (l("ib.errors", "", "drain"), 0),
            ]
        );
    }
}
