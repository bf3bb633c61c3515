//! Report arithmetic: whole UTC days from the rollups; the UTC days a window's edge, a
//! period boundary of the query's time zone or a price change cuts, from the records of
//! those days, clipped to each piece by the rollups' own rule. Cost is priced per piece and
//! per (partition, GPU model) with the prices in force then ([`crate::prices`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sgpu_spool::RecordBody;

use super::query::{GroupBy, Period, ReportQuery};
use crate::day::{DAY_MS, day_of, overlap, share_of};
use crate::prices::{PriceList, Rates, micro};
use crate::rollup::{
    RollupKey, RollupValue, UNKNOWN_GPU_MODEL, is_slice, job_count_key, split_mig_model,
};
use crate::store::{Store, StoreError};
use crate::zone::ZoneError;
use sgpu_wire::acctd::ReportRow;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The store failed (503).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The window cannot be cut into the zone's periods (400).
    #[error(transparent)]
    Zone(#[from] ZoneError),
}

/// The report row a rollup key belongs to, with `label` as its period when grouped by one;
/// moves the key's strings (no copies).
fn row_of(k: RollupKey, group_by: &[GroupBy], label: Option<&str>) -> ReportRow {
    let mut row = ReportRow::default();
    let RollupKey {
        day: _,
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
    // grouped by MIG profile: the profile apart, and the GPU model is the parent's
    if group_by.contains(&GroupBy::Profile) {
        let model = gpu_model.take().unwrap_or_default();
        let (parent, profile) = split_mig_model(&model);
        row.mig_profile = Some(profile.unwrap_or_default().to_string());
        gpu_model = Some(parent.to_string());
    }
    for g in group_by {
        match g {
            GroupBy::Cluster => row.cluster = cluster.take(),
            GroupBy::Account => row.account = account.take(),
            GroupBy::User => row.user = user.take(),
            GroupBy::Partition => row.partition = partition.take(),
            GroupBy::Gpu => row.gpu_model = gpu_model.take(),
            GroupBy::Profile => {}
            GroupBy::Period(_) => row.period = label.map(str::to_string),
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
    Ok(partial_pieces(store, day, &[(from, to)])?
        .pop()
        .unwrap_or_default())
}

/// What the records touching `day` add inside each of `pieces` (disjoint parts of that day,
/// ascending), in one pass over the day's records. A job is counted in `jobs` in the piece
/// holding the end of the `job_end` its count went to ([`Store::counted_in`]), when that
/// count is on this day.
pub fn partial_pieces(
    store: &dyn Store,
    day: u32,
    pieces: &[(u64, u64)],
) -> Result<Vec<BTreeMap<RollupKey, RollupValue>>, StoreError> {
    let mut out: Vec<BTreeMap<RollupKey, RollupValue>> = vec![BTreeMap::new(); pieces.len()];
    // (cluster, job) -> the count keys of its job_ends ending in a piece, with the piece
    let mut ended: BTreeMap<(String, u32), Vec<(RollupKey, usize)>> = BTreeMap::new();
    store.for_each_record_on_day(day, &mut |r| {
        let cluster = r.id().cluster();
        for (i, &(from, to)) in pieces.iter().enumerate() {
            let out = &mut out[i];
            match r.body() {
                RecordBody::JobEnd(b) => {
                    // allocated over Slurm's window when the record has it (as the rollups)
                    let (alloc_start, alloc_end) = b.allocated_window();
                    let alloc_span = alloc_end.saturating_sub(alloc_start);
                    for gpu in &b.gpus {
                        // a MIG slice by its share, split as the rollups split it
                        let alloc = share_of(
                            gpu.gpu_equiv_ms(alloc_span),
                            alloc_start,
                            alloc_end,
                            from,
                            to,
                        );
                        let model = model(&gpu.name);
                        let slice = is_slice(gpu.mig.as_ref(), &model);
                        let k = key(day, cluster, &b.account, &b.user, &b.partition, model);
                        let v = out.entry(k).or_default();
                        v.allocated_gpu_ms += alloc;
                        if slice {
                            // a slice's device time, counted once (the rollups' rule)
                            v.slice_ms += overlap(alloc_start, alloc_end, from, to);
                            // and no utilization per slice: its used time is unknown
                            v.used_unmeasured_gpu_ms += alloc;
                        }
                        let energy = gpu.energy_delta_mj.or_else(|| {
                            gpu.energy_end_mj
                                .zip(gpu.energy_start_mj)
                                .and_then(|(e, s)| e.checked_sub(s))
                        });
                        if let Some(e) = energy {
                            v.energy_mj += share_of(e, b.start_time, b.end_time, from, to);
                        }
                    }
                    if (from..to).contains(&b.end_time)
                        && let Some(k) = job_count_key(&r)
                    {
                        ended
                            .entry((cluster.to_string(), r.id().job_id()))
                            .or_default()
                            .push((k, i));
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
                            v.idle_measured_gpu_ms +=
                                overlap(b.window_start, b.window_end, from, to);
                        }
                    }
                }
                RecordBody::JobStart(_) | RecordBody::StepUsage(_) => {}
            }
        }
    })?;
    let jobs: Vec<(String, u32)> = ended.keys().cloned().collect();
    let counted = store.counted_in_many(&jobs)?;
    for (candidates, counted) in ended.into_values().zip(counted) {
        if let Some(k) = counted
            && k.day == day
        {
            // the piece of the job_end that counted (same key); else the first that ended
            let piece = candidates
                .iter()
                .find(|(c, _)| *c == k)
                .or(candidates.first())
                .map(|(_, i)| *i);
            if let Some(i) = piece {
                out[i].entry(k).or_default().jobs += 1;
            }
        }
    }
    for m in &mut out {
        m.retain(|_, v| *v != RollupValue::default());
    }
    Ok(out)
}

/// The instants inside `(lo, hi)` (a part of one UTC day) where the query's period or the
/// price changes, ascending.
fn breaks_in(
    q: &ReportQuery,
    period: Option<Period>,
    prices: Option<&PriceList>,
    lo: u64,
    hi: u64,
) -> Result<Vec<u64>, ZoneError> {
    let mut out = BTreeSet::new();
    if let Some(p) = period {
        let mut t = q.zone.period_at(p, lo)?.1;
        while t < hi {
            if t > lo {
                out.insert(t);
            }
            let next = q.zone.period_at(p, t)?.1;
            if next <= t {
                break;
            }
            t = next;
        }
    }
    if let Some(prices) = prices {
        out.extend(prices.changes_in(lo, hi));
    }
    Ok(out.into_iter().collect())
}

/// The group sums of a report being made: per row, the sums and the cost numerator.
type Groups = HashMap<ReportRow, (RollupValue, u128)>;

fn add_to(
    groups: &mut Groups,
    q: &ReportQuery,
    k: RollupKey,
    v: &RollupValue,
    label: Option<&str>,
    rates: Option<&Rates>,
) {
    if !q.filters.matches(&k) {
        return;
    }
    let cost = rates.map_or(0, |r| {
        r.cost(&k.partition, &k.gpu_model, v.allocated_gpu_ms, v.energy_mj)
    });
    let g = groups.entry(row_of(k, &q.group_by, label)).or_default();
    g.0.add(v);
    g.1 += cost;
}

/// Runs a report: whole UTC days from the rollups, the cut ones from the records. `prices`
/// gives each row its cost (`None`: rows carry none).
///
/// A UTC day is cut when the window's start or end falls inside it, or, on a day that has
/// records, a boundary of the query's period (in its time zone) or a price change. A day
/// whose records are gone (retention) but whose rollups are kept counts whole, in the
/// period and at the price of its first instant.
pub fn report(
    store: &dyn Store,
    q: &ReportQuery,
    prices: Option<&PriceList>,
) -> Result<Vec<ReportRow>, ReportError> {
    let period = q.group_by.iter().find_map(|g| match g {
        GroupBy::Period(p) => Some(*p),
        _ => None,
    });
    let cut = cut_days(store, q, period, prices)?;
    let mut groups: Groups = HashMap::new();
    add_whole_days(store, q, period, prices, &cut, &mut groups)?;
    for day in cut {
        add_cut_day(store, q, period, prices, day, &mut groups)?;
    }
    Ok(into_rows(groups, prices.is_some()))
}

/// The UTC days a report reads record by record: the window's edges, and the days with
/// records that a local period boundary or a price change cuts.
fn cut_days(
    store: &dyn Store,
    q: &ReportQuery,
    period: Option<Period>,
    prices: Option<&PriceList>,
) -> Result<BTreeSet<u32>, ReportError> {
    let (start, end) = (q.start_ms, q.end_ms);
    let first_day = day_of(start);
    let last_day = day_of(end.saturating_sub(1));
    let mut cut: BTreeSet<u32> = BTreeSet::new();
    if start % DAY_MS != 0 {
        cut.insert(first_day);
    }
    if end % DAY_MS != 0 {
        cut.insert(last_day);
    }
    let local_periods = period.filter(|_| !q.zone.is_utc());
    let changes: Vec<u64> = prices
        .map(|p| {
            p.changes_in(start, end)
                .filter(|c| c % DAY_MS != 0)
                .collect()
        })
        .unwrap_or_default();
    if local_periods.is_some() || !changes.is_empty() {
        let with_records: BTreeSet<u32> = store
            .days_with_records(first_day, last_day)?
            .into_iter()
            .collect();
        for c in &changes {
            if with_records.contains(&day_of(*c)) {
                cut.insert(day_of(*c));
            }
        }
        if let Some(p) = local_periods {
            for &day in &with_records {
                let lo = u64::from(day) * DAY_MS;
                if !breaks_in(q, Some(p), None, lo, lo + DAY_MS)?.is_empty() {
                    cut.insert(day);
                }
            }
        }
    }
    Ok(cut)
}

/// Adds the rollup rows of the whole UTC days inside the window that are not `cut`, each
/// in the period and at the price of its first instant.
fn add_whole_days(
    store: &dyn Store,
    q: &ReportQuery,
    period: Option<Period>,
    prices: Option<&PriceList>,
    cut: &BTreeSet<u32>,
    groups: &mut Groups,
) -> Result<(), ReportError> {
    let first_full = q.start_ms.div_ceil(DAY_MS);
    let end_full = q.end_ms / DAY_MS; // exclusive
    if first_full >= end_full {
        return Ok(());
    }
    let first = u32::try_from(first_full).unwrap_or(u32::MAX);
    let last = u32::try_from(end_full - 1).unwrap_or(u32::MAX);
    // rows come in day order: one period label and one price lookup per day
    let mut day_info: Option<(u32, Option<String>)> = None;
    let mut failed: Option<ZoneError> = None;
    store.for_each_rollup(first, last, &mut |k, v| {
        if cut.contains(&k.day) || failed.is_some() {
            return;
        }
        let day = k.day;
        let day_start = u64::from(day) * DAY_MS;
        if day_info.as_ref().is_none_or(|(d, _)| *d != day) {
            let label = match period.map(|p| q.zone.period_at(p, day_start)) {
                Some(Ok((_, _, label))) => Some(label),
                Some(Err(e)) => {
                    failed = Some(e);
                    return;
                }
                None => None,
            };
            day_info = Some((day, label));
        }
        let label = day_info.as_ref().and_then(|(_, l)| l.as_deref());
        let rates = prices.and_then(|p| p.at(day_start));
        add_to(groups, q, k, &v, label, rates);
    })?;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Adds the cut UTC day `day` from its records, clipped to the window and cut into pieces
/// at the period boundaries and price changes inside it, each piece in its own period and
/// at its own price.
fn add_cut_day(
    store: &dyn Store,
    q: &ReportQuery,
    period: Option<Period>,
    prices: Option<&PriceList>,
    day: u32,
    groups: &mut Groups,
) -> Result<(), ReportError> {
    let lo = (u64::from(day) * DAY_MS).max(q.start_ms);
    let hi = (u64::from(day) * DAY_MS + DAY_MS).min(q.end_ms);
    if lo >= hi {
        return Ok(());
    }
    let mut bounds = vec![lo];
    bounds.extend(breaks_in(q, period, prices, lo, hi)?);
    bounds.push(hi);
    let pieces: Vec<(u64, u64)> = bounds.windows(2).map(|w| (w[0], w[1])).collect();
    let sums = partial_pieces(store, day, &pieces)?;
    for (&(from, _), piece) in pieces.iter().zip(sums) {
        let label = match period {
            Some(p) => Some(q.zone.period_at(p, from)?.2),
            None => None,
        };
        let rates = prices.and_then(|p| p.at(from));
        for (k, v) in piece {
            add_to(groups, q, k, &v, label.as_deref(), rates);
        }
    }
    Ok(())
}

/// The report's rows from its group sums, sorted; `priced`: rows carry their cost.
fn into_rows(groups: Groups, priced: bool) -> Vec<ReportRow> {
    let mut rows: Vec<ReportRow> = groups
        .into_iter()
        .map(|(mut row, (v, cost))| {
            row.allocated_gpu_ms = v.allocated_gpu_ms;
            row.used_gpu_ms = v.used_gpu_ms;
            row.energy_mj = v.energy_mj;
            row.jobs = v.jobs;
            row.idle_gpu_ms = (v.idle_measured_gpu_ms > 0).then_some(v.idle_gpu_ms);
            row.idle_measured_gpu_ms =
                (v.idle_measured_gpu_ms > 0).then_some(v.idle_measured_gpu_ms);
            row.slice_ms = Some(v.slice_ms);
            row.used_measured_gpu_ms = Some(v.used_measured_gpu_ms());
            row.cost_micro = priced.then(|| micro(cost));
            row
        })
        .collect();
    rows.sort_unstable();
    rows
}
