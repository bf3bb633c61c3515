//! The HTTP handlers of `GET /v1/report`, `GET /v1/jobs` and `GET /v1/site`: authenticate,
//! parse (dates and periods in the site's time zone unless `tz=`), run the report or list
//! off the runtime with acctd's prices, answer with the wire documents
//! ([`sgpu_wire::acctd::ReportAnswer`], [`sgpu_wire::acctd::JobsAnswer`],
//! [`sgpu_wire::acctd::SiteAnswer`]).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sgpu_wire::acctd::{JobsAnswer, ReportAnswer, SiteAnswer, VERSION};

use super::query::{MAX_JOBS_WINDOW_DAYS, ReportQuery};
use super::sums::ReportError;
use super::{jobs, report};
use crate::auth::ReadScope;
use crate::day::DAY_MS;
use crate::http::{AppState, error, reader_scope};

/// The report routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/report", get(get_report))
        .route("/v1/jobs", get(get_jobs))
        .route("/v1/site", get(get_site))
}

async fn get_site(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let scope = match reader_scope(&state, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let prices = state.site.prices.as_ref();
    axum::Json(SiteAnswer {
        version: Some(VERSION),
        time_zone: state.site.zone.name().to_string(),
        prices: prices.is_some(),
        currency: prices.and_then(|p| p.currency.clone()),
        coordinates: match scope {
            ReadScope::Coordinator { accounts, .. } => accounts.into_iter().collect(),
            _ => Vec::new(),
        },
    })
    .into_response()
}

// A Response is what handlers return; boxing it would only move the cost.
#[allow(clippy::result_large_err)]
fn parse_scoped(state: &AppState, headers: &HeaderMap, uri: &Uri) -> Result<ReportQuery, Response> {
    let scope = reader_scope(state, headers)?;
    let mut q = ReportQuery::parse_in(uri.query().unwrap_or(""), &state.site.zone)
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
    let site = state.site.clone();
    let (start, end) = (q.start_ms, q.end_ms);
    let time_zone = Some(q.zone.name().to_string());
    let currency = site.prices.as_ref().and_then(|p| p.currency.clone());
    match tokio::task::spawn_blocking(move || report(store.as_ref(), &q, site.prices.as_ref()))
        .await
    {
        Ok(Ok(rows)) => axum::Json(ReportAnswer {
            version: Some(VERSION),
            start_ms: start,
            end_ms: end,
            rows,
            time_zone,
            currency,
        })
        .into_response(),
        Ok(Err(ReportError::Zone(e))) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Ok(Err(ReportError::Store(e))) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
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
    let site = state.site.clone();
    let (start, end) = (q.start_ms, q.end_ms);
    let time_zone = Some(q.zone.name().to_string());
    let currency = site.prices.as_ref().and_then(|p| p.currency.clone());
    match tokio::task::spawn_blocking(move || jobs(store.as_ref(), &q, site.prices.as_ref())).await
    {
        Ok(Ok((jobs, truncated))) => axum::Json(JobsAnswer {
            version: Some(VERSION),
            start_ms: start,
            end_ms: end,
            jobs,
            truncated,
            time_zone,
            currency,
        })
        .into_response(),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
