//! Report arithmetic: whole UTC days from the rollups, the partial days at a window's edges
//! from the records of those days, clipped to the window by the rollups' own rule.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sgpu_spool::RecordBody;

use super::query::{GroupBy, ReportQuery};
use crate::day::{DAY_MS, day_of, overlap, share_of};
use crate::rollup::{RollupKey, RollupValue, UNKNOWN_GPU_MODEL};
use crate::store::{Store, StoreError};
use sgpu_wire::acctd::ReportRow;

/// The report row a rollup key belongs to; moves the key's strings (no copies) and keeps
/// the last period label (rows come in day order).
fn row_of(k: RollupKey, group_by: &[GroupBy], label: &mut Option<(u32, String)>) -> ReportRow {
    let mut row = ReportRow::default();
    let RollupKey {
        day,
        cluster,
        account,
        user,
        partition,
        gpu_model,
    } = k;
    let (mut cluster, mut account, mut user, mut partition, mut gpu_model) = (
        Some(cluster),
        Some(account),
        Some(user),
        Some(partition),
        Some(gpu_model),
    );
    for g in group_by {
        match g {
            GroupBy::Cluster => row.cluster = cluster.take(),
            GroupBy::Account => row.account = account.take(),
            GroupBy::User => row.user = user.take(),
            GroupBy::Partition => row.partition = partition.take(),
            GroupBy::Gpu => row.gpu_model = gpu_model.take(),
            GroupBy::Period(p) => {
                let text = match label {
                    Some((d, text)) if *d == day => text.clone(),
                    _ => {
                        let text = p.label(day);
                        *label = Some((day, text.clone()));
                        text
                    }
                };
                row.period = Some(text);
            }
        }
    }
    row
}

pub(super) fn model(name: &Option<String>) -> String {
    match name.as_deref().map(str::trim) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => UNKNOWN_GPU_MODEL.to_string(),
    }
}

fn key(
    day: u32,
    cluster: &str,
    a: &Option<String>,
    u: &str,
    p: &Option<String>,
    m: String,
) -> RollupKey {
    RollupKey {
        day,
        cluster: cluster.to_string(),
        account: a.clone().unwrap_or_default(),
        user: u.to_string(),
        partition: p.clone().unwrap_or_default(),
        gpu_model: m,
    }
}

/// What the records touching `day` add inside `[from, to)` (a part of that day): the rollup
/// rules of [`crate::rollup`] clipped to the window.
pub fn partial_day(
    store: &dyn Store,
    day: u32,
    from: u64,
    to: u64,
) -> Result<BTreeMap<RollupKey, RollupValue>, StoreError> {
    let mut out: BTreeMap<RollupKey, RollupValue> = BTreeMap::new();
    let mut ended: BTreeSet<(String, u32)> = BTreeSet::new();
    store.for_each_record_on_day(day, &mut |r| {
        let cluster = r.id().cluster();
        match r.body() {
            RecordBody::JobEnd(b) => {
                // allocated over Slurm's window when the record has it (as the rollups)
                let (alloc_start, alloc_end) = b.allocated_window();
                let alloc = overlap(alloc_start, alloc_end, from, to);
                for gpu in &b.gpus {
                    let k = key(
                        day,
                        cluster,
                        &b.account,
                        &b.user,
                        &b.partition,
                        model(&gpu.name),
                    );
                    let v = out.entry(k).or_default();
                    v.allocated_gpu_ms += alloc;
                    let energy = gpu.energy_delta_mj.or_else(|| {
                        gpu.energy_end_mj
                            .zip(gpu.energy_start_mj)
                            .and_then(|(e, s)| e.checked_sub(s))
                    });
                    if let Some(e) = energy {
                        v.energy_mj += share_of(e, b.start_time, b.end_time, from, to);
                    }
                }
                if !b.gpus.is_empty() && (from..to).contains(&b.end_time) {
                    ended.insert((cluster.to_string(), r.id().job_id()));
                }
            }
            RecordBody::JobUsage(b) => {
                for gpu in &b.gpus {
                    let k = key(
                        day,
                        cluster,
                        &b.account,
                        &b.user,
                        &b.partition,
                        model(&gpu.name),
                    );
                    let v = out.entry(k).or_default();
                    v.used_gpu_ms +=
                        share_of(gpu.used_gpu_ms, b.window_start, b.window_end, from, to);
                    if let Some(idle) = gpu.idle_ms {
                        v.idle_gpu_ms += share_of(idle, b.window_start, b.window_end, from, to);
                        v.idle_measured_gpu_ms += overlap(b.window_start, b.window_end, from, to);
                    }
                }
            }
            RecordBody::JobStart(_) | RecordBody::StepUsage(_) => {}
        }
    })?;
    for (cluster, job_id) in ended {
        if let Some(k) = store.counted_in(&cluster, job_id)?
            && k.day == day
        {
            out.entry(k).or_default().jobs += 1;
        }
    }
    out.retain(|_, v| *v != RollupValue::default());
    Ok(out)
}

/// Runs a report: whole days from the rollups, partial edge days from the records.
pub fn report(store: &dyn Store, q: &ReportQuery) -> Result<Vec<ReportRow>, StoreError> {
    let mut groups: HashMap<ReportRow, RollupValue> = HashMap::new();
    let mut label = None;
    let mut add = |k: RollupKey, v: &RollupValue| {
        if q.filters.matches(&k) {
            groups
                .entry(row_of(k, &q.group_by, &mut label))
                .or_default()
                .add(v);
        }
    };
    let (start, end) = (q.start_ms, q.end_ms);
    let first_full = start.div_ceil(DAY_MS);
    let end_full = end / DAY_MS; // exclusive
    if first_full < end_full {
        let first = u32::try_from(first_full).unwrap_or(u32::MAX);
        let last = u32::try_from(end_full - 1).unwrap_or(u32::MAX);
        store.for_each_rollup(first, last, &mut |k, v| add(k, &v))?;
    }
    let mut edges: Vec<(u32, u64, u64)> = Vec::new();
    if start % DAY_MS != 0 {
        let day_end = (start / DAY_MS + 1) * DAY_MS;
        edges.push((day_of(start), start, end.min(day_end)));
    }
    if end % DAY_MS != 0 && (start % DAY_MS == 0 || day_of(start) != day_of(end)) {
        let day_start = (end / DAY_MS) * DAY_MS;
        edges.push((day_of(end), start.max(day_start), end));
    }
    for (day, from, to) in edges {
        for (k, v) in partial_day(store, day, from, to)? {
            add(k, &v);
        }
    }
    let mut rows: Vec<ReportRow> = groups
        .into_iter()
        .map(|(mut row, v)| {
            row.allocated_gpu_ms = v.allocated_gpu_ms;
            row.used_gpu_ms = v.used_gpu_ms;
            row.energy_mj = v.energy_mj;
            row.jobs = v.jobs;
            row.idle_gpu_ms = (v.idle_measured_gpu_ms > 0).then_some(v.idle_gpu_ms);
            row.idle_measured_gpu_ms =
                (v.idle_measured_gpu_ms > 0).then_some(v.idle_measured_gpu_ms);
            row
        })
        .collect();
    rows.sort_unstable();
    Ok(rows)
}
