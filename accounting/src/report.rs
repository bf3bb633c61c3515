//! Reports and job lists over any time window: `GET /v1/report` and `GET /v1/jobs`.
//!
//! A window is `[start, end)` in UTC. A job that straddles it counts only the part inside
//! it, as sreport does: whole UTC days inside the window come from the rollups (one row per
//! group and day, so a report over years reads only rollup rows); the partial days at the
//! window's edges are computed from the per-job records of those days (the store's by-day
//! index), clipped to the window with the same proportional rule the rollups use
//! ([`crate::day::share_of`]), so a window on day boundaries and one cut mid-day agree with
//! each other to the millisecond. A job is counted in `jobs` on the UTC day it ended, in the
//! group its rollup count went to ([`Store::counted_in`]).
//!
//! Grouping periods are UTC: `day` (`YYYY-MM-DD`), `week` (ISO 8601, `YYYY-Www`, weeks
//! start on Monday) and `month` (`YYYY-MM`). Every endpoint filters by the caller's
//! [`ReadScope`]: a user sees only their own rows and jobs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::json;
use sgpu_spool::{Record, RecordBody};

use crate::auth::ReadScope;
use crate::day::{DAY_MS, civil_from_days, day_of, format_day, overlap, share_of};
use crate::http::{AppState, error, reader_scope};
use crate::query::decode_component;
use crate::rollup::{RollupKey, RollupValue, UNKNOWN_GPU_MODEL};
use crate::store::{Store, StoreError, record_first_ms, record_last_ms};

/// Most jobs one `GET /v1/jobs` returns (`limit` may ask for fewer).
pub const MAX_JOBS: usize = 100_000;

/// The report routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/report", get(get_report))
        .route("/v1/jobs", get(get_jobs))
}

/// A time period rows can be grouped by (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// `YYYY-MM-DD`.
    Day,
    /// ISO week `YYYY-Www`.
    Week,
    /// `YYYY-MM`.
    Month,
}

impl Period {
    /// The label of the period holding UTC day `day`.
    pub fn label(self, day: u32) -> String {
        match self {
            Period::Day => format_day(day),
            Period::Month => {
                let (y, m, _) = civil_from_days(i64::from(day));
                format!("{y:04}-{m:02}")
            }
            Period::Week => {
                let (y, w) = iso_week(day);
                format!("{y:04}-W{w:02}")
            }
        }
    }
}

/// ISO 8601 (year, week) of a UTC day.
pub fn iso_week(day: u32) -> (i64, u32) {
    let d = i64::from(day);
    // 1970-01-01 was a Thursday; Monday = 0.
    let weekday = (d + 3).rem_euclid(7);
    let thursday = d - weekday + 3;
    let (y, _, _) = civil_from_days(thursday);
    let jan1 = crate::day::days_from_civil(y, 1, 1);
    let week = u32::try_from((thursday - jan1) / 7 + 1).unwrap_or(1);
    (y, week)
}

/// A field a report groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// Slurm cluster.
    Cluster,
    /// Slurm account.
    Account,
    /// User name.
    User,
    /// Slurm partition.
    Partition,
    /// GPU model.
    Gpu,
    /// A UTC period.
    Period(Period),
}

/// Exact-match filters, each a set (empty: no filter).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    /// Clusters.
    pub clusters: BTreeSet<String>,
    /// Accounts.
    pub accounts: BTreeSet<String>,
    /// Users.
    pub users: BTreeSet<String>,
    /// Partitions.
    pub partitions: BTreeSet<String>,
    /// GPU models.
    pub gpu_models: BTreeSet<String>,
    /// Job ids (job lists only).
    pub jobs: BTreeSet<u32>,
}

impl Filters {
    fn allows(set: &BTreeSet<String>, v: &str) -> bool {
        set.is_empty() || set.contains(v)
    }

    /// Whether a rollup row passes.
    pub fn matches(&self, k: &RollupKey) -> bool {
        Self::allows(&self.clusters, &k.cluster)
            && Self::allows(&self.accounts, &k.account)
            && Self::allows(&self.users, &k.user)
            && Self::allows(&self.partitions, &k.partition)
            && Self::allows(&self.gpu_models, &k.gpu_model)
    }

    /// Applies a read scope: a user is limited to themself; asking for someone else is an
    /// error naming them.
    pub fn scope(&mut self, scope: &ReadScope) -> Result<(), String> {
        if let ReadScope::User(me) = scope {
            if let Some(other) = self.users.iter().find(|u| *u != me) {
                return Err(format!(
                    "not allowed: user {me} may read only their own jobs and totals, not {other}'s"
                ));
            }
            self.users = BTreeSet::from([me.clone()]);
        }
        Ok(())
    }
}

/// A report or job-list query: the window `[start_ms, end_ms)`, filters and grouping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportQuery {
    /// Window start, ms since the epoch (inclusive).
    pub start_ms: u64,
    /// Window end, ms since the epoch (exclusive).
    pub end_ms: u64,
    /// Filters.
    pub filters: Filters,
    /// Group-by fields, in the order given.
    pub group_by: Vec<GroupBy>,
    /// Job lists: most jobs to return.
    pub limit: usize,
}

/// Why a query string is refused; names the parameter.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{param}: {message}")]
pub struct ReportQueryError {
    /// The offending parameter.
    pub param: String,
    /// What is wrong.
    pub message: String,
}

fn qerr(param: &str, message: impl Into<String>) -> ReportQueryError {
    ReportQueryError {
        param: param.to_string(),
        message: message.into(),
    }
}

/// Parses a window bound: seconds since the epoch, or a UTC `YYYY-MM-DD` (midnight).
/// The latest instant a query may name, Unix seconds (9999-12-31T23:59:59Z).
pub const MAX_INSTANT_S: u64 = 253_402_300_799;

/// The longest window `GET /v1/jobs` lists, days, unless it names its jobs (`jobs=`): it
/// reads the records of every day in it that has any (reports over longer windows read the
/// daily rollups and have no such limit).
pub const MAX_JOBS_WINDOW_DAYS: u64 = 366;

/// The most job ids one query names (`jobs=`).
pub const MAX_JOB_IDS: usize = 10_000;

fn parse_instant(param: &str, v: &str) -> Result<u64, ReportQueryError> {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v
            .parse::<u64>()
            .ok()
            .filter(|s| *s <= MAX_INSTANT_S)
            .map(|s| s * 1000)
            .ok_or_else(|| {
                qerr(
                    param,
                    format!("{v} seconds is out of range (at most {MAX_INSTANT_S}, year 9999)"),
                )
            });
    }
    crate::day::parse_day(v)
        .map(|d| u64::from(d) * DAY_MS)
        .ok_or_else(|| {
            qerr(
                param,
                format!("{v:?} is neither seconds since the epoch nor a YYYY-MM-DD date"),
            )
        })
}

impl ReportQuery {
    /// Parses `start=&end=` (seconds since the epoch or `YYYY-MM-DD`, UTC; required),
    /// `cluster=&account=&user=&partition=&gpu_model=&jobs=` (comma-separated sets),
    /// `group_by=cluster,account,user,partition,gpu,day|week|month`, `limit=`. Unknown
    /// parameters are refused.
    pub fn parse(query: &str) -> Result<ReportQuery, ReportQueryError> {
        let mut start = None;
        let mut end = None;
        let mut f = Filters::default();
        let mut group_by = Vec::new();
        let mut limit = MAX_JOBS;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode_component(v).ok_or_else(|| qerr(k, "bad percent-encoding"))?;
            let set = |v: &str| -> BTreeSet<String> {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            };
            match k {
                "start" => start = Some(parse_instant(k, &v)?),
                "end" => end = Some(parse_instant(k, &v)?),
                "cluster" => f.clusters.extend(set(&v)),
                "account" => f.accounts.extend(set(&v)),
                "user" => f.users.extend(set(&v)),
                "partition" => f.partitions.extend(set(&v)),
                "gpu_model" => f.gpu_models.extend(set(&v)),
                "jobs" => {
                    for j in set(&v) {
                        // sacct accepts 123.batch and the like; the job id is what counts.
                        let id = j.split(['.', '_']).next().unwrap_or(&j);
                        f.jobs.insert(
                            id.parse()
                                .map_err(|_| qerr(k, format!("{j:?} is not a job id")))?,
                        );
                    }
                    if f.jobs.len() > MAX_JOB_IDS {
                        return Err(qerr(k, format!("more than {MAX_JOB_IDS} job ids")));
                    }
                }
                "limit" => {
                    limit = v
                        .parse::<usize>()
                        .map_err(|_| qerr(k, format!("{v:?} is not a number")))?
                        .min(MAX_JOBS);
                }
                "group_by" => {
                    for g in v.split(',').map(str::trim).filter(|g| !g.is_empty()) {
                        let field = match g.to_ascii_lowercase().as_str() {
                            "cluster" => GroupBy::Cluster,
                            "account" => GroupBy::Account,
                            "user" => GroupBy::User,
                            "partition" => GroupBy::Partition,
                            "gpu" | "gpu_model" => GroupBy::Gpu,
                            "day" => GroupBy::Period(Period::Day),
                            "week" => GroupBy::Period(Period::Week),
                            "month" => GroupBy::Period(Period::Month),
                            _ => {
                                return Err(qerr(
                                    k,
                                    format!(
                                        "unknown field {g:?} (cluster, account, user, partition, \
                                         gpu, day, week, month)"
                                    ),
                                ));
                            }
                        };
                        if matches!(field, GroupBy::Period(_))
                            && group_by
                                .iter()
                                .any(|x| matches!(x, GroupBy::Period(_)) && *x != field)
                        {
                            return Err(qerr(k, "only one of day, week and month"));
                        }
                        if !group_by.contains(&field) {
                            group_by.push(field);
                        }
                    }
                }
                _ => return Err(qerr(k, "unknown parameter")),
            }
        }
        let start_ms = start.ok_or_else(|| qerr("start", "missing (seconds since the epoch)"))?;
        let end_ms = end.ok_or_else(|| qerr("end", "missing (seconds since the epoch)"))?;
        if end_ms <= start_ms {
            return Err(qerr("end", "must be after start"));
        }
        Ok(ReportQuery {
            start_ms,
            end_ms,
            filters: f,
            group_by,
            limit,
        })
    }
}

/// One report row: the grouped fields (others absent) and the sums.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ReportRow {
    /// The period label, when grouped by day, week or month.
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
    /// GPU model, when grouped by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
    /// Allocated GPU time inside the window, GPU-ms.
    pub allocated_gpu_ms: u64,
    /// Used GPU time inside the window, GPU-ms.
    pub used_gpu_ms: u64,
    /// Energy inside the window, mJ.
    pub energy_mj: u64,
    /// Jobs that ended inside the window.
    pub jobs: u64,
}

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

fn model(name: &Option<String>) -> String {
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
                    out.entry(k).or_default().used_gpu_ms +=
                        share_of(gpu.used_gpu_ms, b.window_start, b.window_end, from, to);
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
            row
        })
        .collect();
    rows.sort_unstable();
    Ok(rows)
}

/// One GPU model's share of a job.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct JobSummary {
    /// Cluster.
    pub cluster: String,
    /// Job id.
    pub job_id: u32,
    /// User.
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
    /// Allocated GPU time of the whole job, GPU-ms.
    pub allocated_gpu_ms: u64,
    /// Used GPU time of the whole job (healthd's samples), GPU-ms.
    pub used_gpu_ms: u64,
    /// Energy of the whole job, mJ.
    pub energy_mj: u64,
}

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

fn merge_job(
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
                j.allocated_gpu_ms += span;
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
/// and job id. The flag says whether more matched.
pub fn jobs(store: &dyn Store, q: &ReportQuery) -> Result<(Vec<JobSummary>, bool), StoreError> {
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
            // A job of several models passes when any of them does.
            if !f.gpu_models.is_empty() && j.gpu_models.iter().any(|m| f.gpu_models.contains(m)) {
                f.gpu_models.clear();
            }
            f.matches(&k)
        })
        .map(|mut j| {
            if j.start_ms == u64::MAX {
                j.start_ms = 0;
            }
            j
        })
        .collect();
    let more = out.len() > q.limit;
    out.truncate(q.limit);
    Ok((out, more))
}

// A Response is what handlers return; boxing it would only move the cost.
#[allow(clippy::result_large_err)]
fn parse_scoped(state: &AppState, headers: &HeaderMap, uri: &Uri) -> Result<ReportQuery, Response> {
    let scope = reader_scope(state, headers)?;
    let mut q = ReportQuery::parse(uri.query().unwrap_or(""))
        .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
    q.filters
        .scope(&scope)
        .map_err(|e| error(StatusCode::FORBIDDEN, e))?;
    Ok(q)
}

async fn get_report(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let q = match parse_scoped(&state, &headers, &uri) {
        Ok(q) => q,
        Err(r) => return r,
    };
    if !q.filters.jobs.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "jobs: reports sum rollups, which have no job ids; ask /v1/jobs for jobs",
        );
    }
    let store = state.store.clone();
    let (start, end) = (q.start_ms, q.end_ms);
    match tokio::task::spawn_blocking(move || report(store.as_ref(), &q)).await {
        Ok(Ok(rows)) => axum::Json(json!({
            "start_ms": start,
            "end_ms": end,
            "rows": rows,
        }))
        .into_response(),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn get_jobs(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let q = match parse_scoped(&state, &headers, &uri) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let days = (q.end_ms - q.start_ms).div_ceil(DAY_MS);
    // naming the jobs (`sgpu jobs -j ID` asks from 1970) bounds what is read by the jobs'
    // records: only days with records are visited (Store::days_with_records)
    if days > MAX_JOBS_WINDOW_DAYS && q.filters.jobs.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "end: the window is {days} days; /v1/jobs lists at most {MAX_JOBS_WINDOW_DAYS} \
                 days at a time unless it names its jobs (jobs=); ask for shorter windows, or \
                 a report: /v1/report has no limit"
            ),
        );
    }
    let store = state.store.clone();
    let (start, end) = (q.start_ms, q.end_ms);
    match tokio::task::spawn_blocking(move || jobs(store.as_ref(), &q)).await {
        Ok(Ok((jobs, truncated))) => axum::Json(json!({
            "start_ms": start,
            "end_ms": end,
            "jobs": jobs,
            "truncated": truncated,
        }))
        .into_response(),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests;
