//! The HTTP handlers of `GET /v1/report` and `GET /v1/jobs`: authenticate, parse, run the
//! report or list off the runtime, answer with the wire documents
//! ([`sgpu_wire::acctd::ReportAnswer`], [`sgpu_wire::acctd::JobsAnswer`]).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sgpu_wire::acctd::{JobsAnswer, ReportAnswer, VERSION};

use super::query::{MAX_JOBS_WINDOW_DAYS, ReportQuery};
use super::{jobs, report};
use crate::day::DAY_MS;
use crate::http::{AppState, error, reader_scope};

/// The report routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/report", get(get_report))
        .route("/v1/jobs", get(get_jobs))
}

// A Response is what handlers return; boxing it would only move the cost.
#[allow(clippy::result_large_err)]
fn parse_scoped(state: &AppState, headers: &HeaderMap, uri: &Uri) -> Result<ReportQuery, Response> {
    let scope = reader_scope(state, headers)?;
    let mut q = ReportQuery::parse(uri.query().unwrap_or(""))
        .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
    q.filters
        .scope(&scope)
        .map_err(|e| error(StatusCode::FORBIDDEN, e.to_string()))?;
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
        Ok(Ok(rows)) => axum::Json(ReportAnswer {
            version: Some(VERSION),
            start_ms: start,
            end_ms: end,
            rows,
        })
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
        Ok(Ok((jobs, truncated))) => axum::Json(JobsAnswer {
            version: Some(VERSION),
            start_ms: start,
            end_ms: end,
            jobs,
            truncated,
        })
        .into_response(),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
