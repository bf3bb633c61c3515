//! The HTTP API (axum): `POST /v1/records`, `GET /v1/jobs/{cluster}/{job_id}`,
//! `GET /v1/rollups`. Errors are JSON `{"error": "..."}`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::json;

use crate::auth::{Authenticator, Caller, Policy};
use crate::ingest::{ParsedBatch, parse_batch};
use crate::query::{RollupQuery, run};
use crate::store::{PutOutcome, Store};

/// Default request body limit, bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The authenticator every request goes through.
    pub auth: Arc<dyn Authenticator>,
    /// Who may ingest and read what.
    pub policy: Arc<Policy>,
}

/// The router, with a request body limit (larger bodies get 413).
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/records", post(ingest))
        .route("/v1/jobs/{cluster}/{job_id}", get(job))
        .route("/v1/rollups", get(rollups))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// A JSON error response `{"error": message}`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// One record's result in an ingest response.
#[derive(Debug, Serialize)]
pub struct RecordResult {
    /// Position in the batch.
    pub index: usize,
    /// The record key, when known.
    pub key: Option<String>,
    /// `accepted`, `duplicate` or `rejected`.
    pub status: &'static str,
    /// For duplicates: the stored content differs from this one.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub differs: bool,
    /// For rejections: the offending field, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For rejections: what is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The ingest response body.
#[derive(Debug, Serialize)]
pub struct IngestResponse {
    /// Records stored now.
    pub accepted: usize,
    /// Records already stored.
    pub duplicate: usize,
    /// Records refused.
    pub rejected: usize,
    /// Per record, in batch order.
    pub results: Vec<RecordResult>,
}

/// Authenticates a request: the [`Caller`], or the 401 response to send back.
///
/// Handlers then ask [`AppState::policy`] what that caller may do (403 when nothing).
pub fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, Response> {
    state
        .auth
        .authenticate(headers)
        .map_err(|e| error(StatusCode::UNAUTHORIZED, e.to_string()))
}

async fn ingest(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let _caller = match caller(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let ParsedBatch { valid, rejected } = match parse_batch(&body) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let (indices, records): (Vec<usize>, Vec<_>) = valid.into_iter().unzip();
    let store = state.store.clone();
    let stored = tokio::task::spawn_blocking(move || {
        let outcomes = store.put_batch(&records)?;
        Ok::<_, crate::store::StoreError>((records, outcomes))
    })
    .await;
    let (records, outcomes) = match stored {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            tracing::error!("store failed, batch not acknowledged: {e}");
            return error(StatusCode::SERVICE_UNAVAILABLE, format!("not stored: {e}"));
        }
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("not stored: {e}"),
            );
        }
    };
    let mut results: Vec<RecordResult> = Vec::with_capacity(records.len() + rejected.len());
    let (mut accepted, mut duplicate) = (0, 0);
    for ((index, record), outcome) in indices.into_iter().zip(&records).zip(outcomes) {
        let (status, differs) = match outcome {
            PutOutcome::Accepted => {
                accepted += 1;
                ("accepted", false)
            }
            PutOutcome::Duplicate { differs } => {
                duplicate += 1;
                ("duplicate", differs)
            }
        };
        results.push(RecordResult {
            index,
            key: Some(record.id().key()),
            status,
            differs,
            field: None,
            error: None,
        });
    }
    let n_rejected = rejected.len();
    for r in rejected {
        results.push(RecordResult {
            index: r.index,
            key: r.key,
            status: "rejected",
            differs: false,
            field: r.field,
            error: Some(r.error),
        });
    }
    results.sort_by_key(|r| r.index);
    let status = if n_rejected == 0 {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let body = IngestResponse {
        accepted,
        duplicate,
        rejected: n_rejected,
        results,
    };
    (status, axum::Json(body)).into_response()
}

async fn job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((cluster, job_id)): Path<(String, String)>,
) -> Response {
    let _caller = match caller(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Ok(job_id) = job_id.parse::<u32>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("job id {job_id:?} is not a number"),
        );
    };
    let store = state.store.clone();
    let c = cluster.clone();
    match tokio::task::spawn_blocking(move || store.job(&c, job_id)).await {
        Ok(Ok(records)) if records.is_empty() => error(
            StatusCode::NOT_FOUND,
            format!("no records of job {job_id} on cluster {cluster}"),
        ),
        Ok(Ok(records)) => axum::Json(json!({
            "cluster": cluster,
            "job_id": job_id,
            "records": records,
        }))
        .into_response(),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn rollups(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let _caller = match caller(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let q = match RollupQuery::parse(uri.query().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || run(store.as_ref(), &q)).await {
        Ok(Ok(rows)) => axum::Json(json!({ "rows": rows })).into_response(),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
