//! Job lists: the jobs that ran in a window, with whole-job figures merged from their
//! records (identity from the most trusted record kind).

use std::collections::{BTreeMap, BTreeSet};

use sgpu_spool::{Record, RecordBody};

use super::query::ReportQuery;
use super::sums::model;
use crate::day::day_of;
use crate::prices::{PriceList, micro};
use crate::rollup::RollupKey;
use crate::store::{Store, StoreError, record_first_ms, record_last_ms};
use sgpu_wire::acctd::JobSummary;

/// How far a record kind is trusted for a job's user, account and partition: `job_end` and
/// `job_start` are written by the epilog and prolog from slurmd's environment, `job_usage`
/// by healthd from those; `step_usage` is written inside the job's step and never sets
/// them (its account and partition came from the job's environment, which the user's
/// script can change). A job's identity is that of its most trusted record.
fn identity_rank(body: &RecordBody) -> u8 {
    match body {
        RecordBody::JobEnd(_) => 3,
        RecordBody::JobStart(_) => 2,
        RecordBody::JobUsage(_) => 1,
        RecordBody::StepUsage(_) => 0,
    }
}

/// A job's account from its most trusted record ([`identity_rank`]; `step_usage` never
/// counts), `None` when no trusted record has one.
pub fn trusted_account(records: &[Record]) -> Option<String> {
    records
        .iter()
        .filter(|r| identity_rank(r.body()) > 0)
        .max_by_key(|r| identity_rank(r.body()))
        .and_then(|r| match r.body() {
            RecordBody::JobEnd(b) => b.account.clone(),
            RecordBody::JobStart(b) => b.account.clone(),
            RecordBody::JobUsage(b) => b.account.clone(),
            RecordBody::StepUsage(_) => None,
        })
}

pub(crate) fn merge_job(
    jobs: &mut BTreeMap<(String, u32), JobSummary>,
    ranks: &mut BTreeMap<(String, u32), u8>,
    r: &Record,
) {
    let id = r.id();
    let rank = identity_rank(r.body());
    let best = ranks
        .entry((id.cluster().to_string(), id.job_id()))
        .or_insert(0);
    // the first record of a job also sets it when it is a step's (better than nothing for
    // the node and times, but not its identity: that stays empty until a trusted record)
    let take_identity = rank > 0 && rank >= *best;
    if take_identity {
        *best = rank;
    }
    let j = jobs
        .entry((id.cluster().to_string(), id.job_id()))
        .or_insert_with(|| JobSummary {
            cluster: id.cluster().to_string(),
            job_id: id.job_id(),
            start_ms: u64::MAX,
            ..JobSummary::default()
        });
    if !j.nodes.iter().any(|n| n == id.node()) {
        j.nodes.push(id.node().to_string());
        j.nodes.sort();
    }
    let mut who = |user: &str, account: &Option<String>, partition: &Option<String>| {
        if take_identity {
            j.user = user.to_string();
            j.account = account.clone().unwrap_or_default();
            j.partition = partition.clone().unwrap_or_default();
        }
    };
    let mut models = BTreeSet::new();
    match r.body() {
        RecordBody::JobStart(b) => {
            who(&b.user, &b.account, &b.partition);
            j.start_ms = j.start_ms.min(b.start_time);
            models.extend(b.gpus.iter().map(|g| model(&g.name)));
        }
        RecordBody::JobEnd(b) => {
            who(&b.user, &b.account, &b.partition);
            j.start_ms = j.start_ms.min(b.start_time);
            j.end_ms = Some(j.end_ms.unwrap_or(0).max(b.end_time));
            j.gpus += u32::try_from(b.gpus.len()).unwrap_or(u32::MAX);
            let (alloc_start, alloc_end) = b.allocated_window();
            let span = alloc_end.saturating_sub(alloc_start);
            for g in &b.gpus {
                // a MIG slice by its share of the GPU; its used time is not measured (None
                // while every GPU so far was measured)
                let alloc = g.gpu_equiv_ms(span);
                let slice = crate::rollup::is_slice(g.mig.as_ref(), &model(&g.name));
                if slice || j.used_measured_gpu_ms.is_some() {
                    let measured = j.used_measured_gpu_ms.unwrap_or(j.allocated_gpu_ms);
                    j.used_measured_gpu_ms = Some(measured + if slice { 0 } else { alloc });
                }
                j.allocated_gpu_ms += alloc;
                let energy = g.energy_delta_mj.or_else(|| {
                    g.energy_end_mj
                        .zip(g.energy_start_mj)
                        .and_then(|(e, s)| e.checked_sub(s))
                });
                j.energy_mj += energy.unwrap_or(0);
            }
            models.extend(b.gpus.iter().map(|g| model(&g.name)));
        }
        RecordBody::JobUsage(b) => {
            who(&b.user, &b.account, &b.partition);
            j.start_ms = j.start_ms.min(b.window_start);
            j.used_gpu_ms += b.gpus.iter().map(|g| g.used_gpu_ms).sum::<u64>();
            for idle in b.gpus.iter().filter_map(|g| g.idle_ms) {
                j.idle_gpu_ms = Some(j.idle_gpu_ms.unwrap_or(0).saturating_add(idle));
            }
            models.extend(b.gpus.iter().map(|g| model(&g.name)));
        }
        RecordBody::StepUsage(_) => {}
    }
    for m in models {
        if !j.gpu_models.contains(&m) {
            j.gpu_models.push(m);
        }
    }
}

/// Jobs that ran in the window (whole-job figures), filtered; at most `q.limit`, by cluster
/// and job id. The flag says whether more matched. With `prices`, each job carries its
/// cost: every `job_end`'s allocated GPU time and energy priced by the periods they fall
/// in, by the record's partition and each GPU's model.
pub fn jobs(
    store: &dyn Store,
    q: &ReportQuery,
    prices: Option<&PriceList>,
) -> Result<(Vec<JobSummary>, bool), StoreError> {
    let mut costs: BTreeMap<(String, u32), u128> = BTreeMap::new();
    let mut found: BTreeMap<(String, u32), JobSummary> = BTreeMap::new();
    let mut ranks: BTreeMap<(String, u32), u8> = BTreeMap::new();
    let first = day_of(q.start_ms);
    let last = day_of(q.end_ms.saturating_sub(1));
    let mut seen: BTreeSet<Vec<u8>> = BTreeSet::new();
    for day in store.days_with_records(first, last)? {
        store.for_each_record_on_day(day, &mut |r| {
            let id = r.id();
            if !q.filters.jobs.is_empty() && !q.filters.jobs.contains(&id.job_id()) {
                return;
            }
            let (s, e) = (record_first_ms(&r), record_last_ms(&r));
            let inside = if e > s {
                s < q.end_ms && e > q.start_ms
            } else {
                (q.start_ms..q.end_ms).contains(&s)
            };
            // A running job has only its job_start: keep it while the window is after it.
            let running = matches!(r.body(), RecordBody::JobStart(_)) && s < q.end_ms;
            if (inside || running) && seen.insert(id.key().into_bytes()) {
                merge_job(&mut found, &mut ranks, &r);
                if let (Some(prices), RecordBody::JobEnd(b)) = (prices, r.body()) {
                    let partition = b.partition.clone().unwrap_or_default();
                    let cost = costs
                        .entry((id.cluster().to_string(), id.job_id()))
                        .or_default();
                    let (a_start, a_end) = b.allocated_window();
                    for g in &b.gpus {
                        let energy = g.energy_delta_mj.or_else(|| {
                            g.energy_end_mj
                                .zip(g.energy_start_mj)
                                .and_then(|(e, s)| e.checked_sub(s))
                        });
                        *cost += prices.cost_over(
                            &partition,
                            &model(&g.name),
                            (
                                g.gpu_equiv_ms(a_end.saturating_sub(a_start)),
                                a_start,
                                a_end,
                            ),
                            (energy.unwrap_or(0), b.start_time, b.end_time),
                        );
                    }
                }
            }
        })?;
    }
    let mut out: Vec<JobSummary> = found
        .into_values()
        .filter(|j| {
            let k = RollupKey {
                day: 0,
                cluster: j.cluster.clone(),
                account: j.account.clone(),
                user: j.user.clone(),
                partition: j.partition.clone(),
                gpu_model: j.gpu_models.first().cloned().unwrap_or_default(),
            };
            let mut f = q.filters.clone();
            // A job of several models passes when any of them does (a slice by its parent).
            if !f.gpu_models.is_empty() && j.gpu_models.iter().any(|m| f.matches_gpu_model(m)) {
                f.gpu_models.clear();
            }
            f.matches(&k)
        })
        .map(|mut j| {
            if j.start_ms == u64::MAX {
                j.start_ms = 0;
            }
            if prices.is_some() {
                let cost = costs.get(&(j.cluster.clone(), j.job_id)).copied();
                j.cost_micro = Some(micro(cost.unwrap_or(0)));
            }
            j
        })
        .collect();
    let more = out.len() > q.limit;
    out.truncate(q.limit);
    Ok((out, more))
}
