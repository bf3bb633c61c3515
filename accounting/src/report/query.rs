//! Query parsing for `GET /v1/report` and `GET /v1/jobs`: the window, the filters (with the
//! caller's read scope applied), the grouping and the limit. Unknown parameters are refused
//! with an error naming the parameter.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::auth::ReadScope;
use crate::day::{civil_from_days, format_day};
use crate::query::{decode_component, qerr};
use crate::rollup::{RollupKey, split_mig_model};
use crate::zone::SiteZone;

/// Most jobs one `GET /v1/jobs` returns (`limit` may ask for fewer).
pub const MAX_JOBS: usize = 100_000;

/// A time period rows can be grouped by (in the query's time zone, [`ReportQuery::zone`]).
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
    /// The label of the period holding day `day` (days since 1970-01-01 of the calendar the
    /// period is counted in).
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
    /// GPU model: the record's name (`<GPU> MIG <profile>` for a MIG slice), or the parent
    /// GPU's model when the report is also grouped by [`GroupBy::Profile`].
    Gpu,
    /// MIG profile (`2g.20gb`; the empty string for whole GPUs).
    Profile,
    /// A period in the query's time zone.
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
    /// GPU models: a row passes when its model is one of them, or is a MIG slice of one of
    /// them (`NVIDIA H100 80GB HBM3` also passes `NVIDIA H100 80GB HBM3 MIG 2g.20gb`; a
    /// slice's own name passes only that profile). See [`Filters::matches_gpu_model`].
    pub gpu_models: BTreeSet<String>,
    /// Job ids (job lists only).
    pub jobs: BTreeSet<u32>,
    /// A coordinator's read scope ([`ReadScope::Coordinator`]): a row passes only when its
    /// user is this one or its account is in the set. Set by [`Filters::scope`].
    pub visible: Option<(String, BTreeSet<String>)>,
}

/// A user's query that names another user ([`Filters::scope`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not allowed: user {me} may read only their own jobs and totals, not {other}'s; leave \
     user= out (or name only {me}), or ask an acctd admin (--admin-uid/--admin-gid)"
)]
pub struct OtherUser {
    /// The caller.
    pub me: String,
    /// The user the query named.
    pub other: String,
}

impl Filters {
    fn allows(set: &BTreeSet<String>, v: &str) -> bool {
        set.is_empty() || set.contains(v)
    }

    /// Whether a GPU model as the records name it passes the GPU model filter: it is named,
    /// or it is a MIG slice (`<GPU> MIG <profile>`) of a named model.
    pub fn matches_gpu_model(&self, model: &str) -> bool {
        self.gpu_models.is_empty()
            || self.gpu_models.contains(model)
            || matches!(split_mig_model(model), (parent, Some(_)) if self.gpu_models.contains(parent))
    }

    /// Whether a rollup row passes.
    pub fn matches(&self, k: &RollupKey) -> bool {
        Self::allows(&self.clusters, &k.cluster)
            && Self::allows(&self.accounts, &k.account)
            && Self::allows(&self.users, &k.user)
            && Self::allows(&self.partitions, &k.partition)
            && self.matches_gpu_model(&k.gpu_model)
            && self
                .visible
                .as_ref()
                .is_none_or(|(me, accounts)| k.user == *me || accounts.contains(&k.account))
    }

    /// Applies a read scope: a user is limited to themself (asking for someone else is an
    /// error naming them); a coordinator to themself and their accounts.
    pub fn scope(&mut self, scope: &ReadScope) -> Result<(), OtherUser> {
        if let ReadScope::Coordinator { user, accounts } = scope {
            self.visible = Some((user.clone(), accounts.clone()));
        }
        if let ReadScope::User(me) = scope {
            if let Some(other) = self.users.iter().find(|u| *u != me) {
                return Err(OtherUser {
                    me: me.clone(),
                    other: other.clone(),
                });
            }
            self.users = BTreeSet::from([me.clone()]);
        }
        Ok(())
    }
}

/// A report or job-list query: the window `[start_ms, end_ms)`, filters and grouping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportQuery {
    /// The time zone of periods and `YYYY-MM-DD` bounds: the site's, or `tz=`'s.
    pub zone: SiteZone,
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

/// Why a report or job-list query string is refused; names the parameter.
pub type ReportQueryError = crate::query::QueryError;

/// The latest instant a query may name, Unix seconds (9999-12-31T23:59:59Z).
pub const MAX_INSTANT_S: u64 = 253_402_300_799;

/// The longest window `GET /v1/jobs` lists, days, unless it names its jobs (`jobs=`): it
/// reads the records of every day in it that has any (reports over longer windows read the
/// daily rollups and have no such limit).
pub const MAX_JOBS_WINDOW_DAYS: u64 = 366;

/// The most job ids one query names (`jobs=`).
pub const MAX_JOB_IDS: usize = 10_000;

/// Parses a window bound: seconds since the epoch, or `YYYY-MM-DD[THH:MM[:SS]]` in `zone`
/// (a date is its first instant there).
fn parse_instant(param: &str, v: &str, zone: &SiteZone) -> Result<u64, ReportQueryError> {
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
    match zone.parse_local(v) {
        Some(Ok(ms)) if ms <= MAX_INSTANT_S * 1000 => Ok(ms),
        Some(Ok(_)) => Err(qerr(param, format!("{v} is after year 9999"))),
        Some(Err(e)) => Err(qerr(param, e.to_string())),
        None => Err(qerr(
            param,
            format!(
                "{v:?} is neither seconds since the epoch nor YYYY-MM-DD[THH:MM[:SS]] (in {})",
                zone.name()
            ),
        )),
    }
}

impl ReportQuery {
    /// Parses `start=&end=` (seconds since the epoch or `YYYY-MM-DD[THH:MM[:SS]]`, here in
    /// UTC; required), `tz=`,
    /// `cluster=&account=&user=&partition=&gpu_model=&jobs=` (comma-separated sets),
    /// `group_by=cluster,account,user,partition,gpu,day|week|month`, `limit=`. Unknown
    /// parameters are refused.
    pub fn parse(query: &str) -> Result<ReportQuery, ReportQueryError> {
        ReportQuery::parse_in(query, &SiteZone::utc())
    }

    /// [`ReportQuery::parse`] with periods and dates in the site's zone `site`, unless the
    /// query names another with `tz=` (an IANA name of the system tz database, e.g. `UTC`).
    pub fn parse_in(query: &str, site: &SiteZone) -> Result<ReportQuery, ReportQueryError> {
        let zone = zone_of(query, site)?;
        let mut start = None;
        let mut end = None;
        let mut f = Filters::default();
        let mut group_by = Vec::new();
        let mut limit = MAX_JOBS;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode_component(v).ok_or_else(|| qerr(k, "bad percent-encoding"))?;
            match k {
                "start" => start = Some(parse_instant(k, &v, &zone)?),
                "end" => end = Some(parse_instant(k, &v, &zone)?),
                "tz" => {}
                "cluster" => f.clusters.extend(list(&v)),
                "account" => f.accounts.extend(list(&v)),
                "user" => f.users.extend(list(&v)),
                "partition" => f.partitions.extend(list(&v)),
                "gpu_model" => f.gpu_models.extend(list(&v)),
                "jobs" => add_jobs(&mut f.jobs, k, &v)?,
                "limit" => {
                    limit = v
                        .parse::<usize>()
                        .map_err(|_| qerr(k, format!("{v:?} is not a number")))?
                        .min(MAX_JOBS);
                }
                "group_by" => add_group_by(&mut group_by, k, &v)?,
                _ => return Err(qerr(k, "unknown parameter")),
            }
        }
        let start_ms = start.ok_or_else(|| qerr("start", "missing (seconds since the epoch)"))?;
        let end_ms = end.ok_or_else(|| qerr("end", "missing (seconds since the epoch)"))?;
        if end_ms <= start_ms {
            return Err(qerr("end", "must be after start"));
        }
        Ok(ReportQuery {
            zone,
            start_ms,
            end_ms,
            filters: f,
            group_by,
            limit,
        })
    }
}

/// The query's time zone: `tz=`'s, else the site's.
fn zone_of(query: &str, site: &SiteZone) -> Result<SiteZone, ReportQueryError> {
    let mut zone = site.clone();
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("tz=") {
            let v = decode_component(v).ok_or_else(|| qerr("tz", "bad percent-encoding"))?;
            zone = SiteZone::named(v.trim()).map_err(|e| qerr("tz", e.to_string()))?;
        }
    }
    Ok(zone)
}

/// A comma-separated set (items trimmed, empty ones left out).
fn list(v: &str) -> BTreeSet<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Adds the job ids of `jobs=` (`k`) to `jobs`, at most [`MAX_JOB_IDS`] in all.
fn add_jobs(jobs: &mut BTreeSet<u32>, k: &str, v: &str) -> Result<(), ReportQueryError> {
    for j in list(v) {
        // sacct accepts 123.batch and the like; the job id is what counts.
        let id = j.split(['.', '_']).next().unwrap_or(&j);
        jobs.insert(
            id.parse()
                .map_err(|_| qerr(k, format!("{j:?} is not a job id")))?,
        );
    }
    if jobs.len() > MAX_JOB_IDS {
        return Err(qerr(k, format!("more than {MAX_JOB_IDS} job ids")));
    }
    Ok(())
}

/// Adds the fields of `group_by=` (`k`) to `group_by`, each once, at most one period.
fn add_group_by(group_by: &mut Vec<GroupBy>, k: &str, v: &str) -> Result<(), ReportQueryError> {
    for g in v.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        let field = group_field(k, g)?;
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
    Ok(())
}

/// The field a `group_by=` item names.
fn group_field(k: &str, g: &str) -> Result<GroupBy, ReportQueryError> {
    Ok(match g.to_ascii_lowercase().as_str() {
        "cluster" => GroupBy::Cluster,
        "account" => GroupBy::Account,
        "user" => GroupBy::User,
        "partition" => GroupBy::Partition,
        "gpu" | "gpu_model" => GroupBy::Gpu,
        "profile" | "mig_profile" => GroupBy::Profile,
        "day" => GroupBy::Period(Period::Day),
        "week" => GroupBy::Period(Period::Week),
        "month" => GroupBy::Period(Period::Month),
        _ => {
            return Err(qerr(
                k,
                format!(
                    "unknown field {g:?} (cluster, account, user, partition, gpu, profile, \
                     day, week, month)"
                ),
            ));
        }
    })
}
