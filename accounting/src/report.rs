//! Reports and job lists over any time window: `GET /v1/report` and `GET /v1/jobs`.
//!
//! A window is `[start, end)` in UTC. A job that straddles it counts only the part inside
//! it, as sreport does: whole UTC days inside the window come from the rollups (one row per
//! group and day, so a report over years reads only rollup rows); the partial days at the
//! window's edges are computed from the per-job records of those days (the store's by-day
//! index), clipped to the window with the same proportional rule the rollups use
//! ([`crate::day::share_of`]), so a window on day boundaries and one cut mid-day agree with
//! each other to the millisecond. A job is counted in `jobs` on the UTC day it ended, in the
//! group its rollup count went to ([`crate::store::Store::counted_in`]).
//!
//! Grouping periods are UTC: `day` (`YYYY-MM-DD`), `week` (ISO 8601, `YYYY-Www`, weeks
//! start on Monday) and `month` (`YYYY-MM`). Every endpoint filters by the caller's
//! [`crate::auth::ReadScope`]: a user sees only their own rows and jobs.
//!
//! The module is split by job: [`query`] parses the query string, [`sums`] does the report
//! arithmetic, [`jobs`](mod@jobs) merges job lists, and [`handlers`] serves them over HTTP.
//! Rows and job summaries are the wire types of [`sgpu_wire::acctd`].

pub mod handlers;
pub mod jobs;
pub mod query;
pub mod sums;

pub use handlers::routes;
pub use jobs::jobs;
pub use query::{
    Filters, GroupBy, MAX_INSTANT_S, MAX_JOB_IDS, MAX_JOBS, MAX_JOBS_WINDOW_DAYS, Period,
    ReportQuery, ReportQueryError, iso_week,
};
pub use sgpu_wire::acctd::{JobSummary, ReportRow};
pub use sums::{ReportError, partial_day, partial_pieces, report};

// what the tests (written against the single-file module) reach through `super::*`
#[cfg(test)]
use {
    crate::auth::ReadScope,
    crate::day::DAY_MS,
    crate::rollup::RollupValue,
    crate::store::Store,
    jobs::merge_job,
    sgpu_spool::Record,
    std::collections::{BTreeMap, BTreeSet},
};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod zone_tests;
