//! The HTTP API (axum): `POST /v1/records`, `GET /v1/jobs/{cluster}/{job_id}` and
//! `GET /v1/conflicts` (admins: records that arrived under a stored record's identity) here, the
//! report, job-list and history endpoints merged in from [`crate::report`] and
//! [`crate::history`]. Errors are JSON `{"error": "..."}`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::json;

use crate::auth::{AuthError, Authenticator, Caller, Policy, ReadScope};
use crate::ingest::{ParsedBatch, parse_batch};
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
///
/// Endpoint modules are merged here, above the layers: [`caller`] refuses requests that did
/// not pass through [`record_request_target`].
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/records", post(ingest))
        .route("/v1/jobs/{cluster}/{job_id}", get(job))
        .route("/v1/conflicts", get(conflicts))
        .merge(crate::history::routes())
        .merge(crate::report::routes())
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(record_request_target))
        .with_state(state)
}

/// Internal header carrying `"<METHOD> <path-and-query>"` of the request, set by
/// [`record_request_target`] (any copy sent by a client is dropped first).
pub const REQUEST_TARGET: HeaderName = HeaderName::from_static("x-sgpu-request-target");

/// Middleware: records the request's method and target for [`caller`], which checks that
/// the caller's credential was made for exactly this request.
pub async fn record_request_target(mut req: Request, next: Next) -> Response {
    let target = format!(
        "{} {}",
        req.method(),
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    req.headers_mut().remove(&REQUEST_TARGET);
    match HeaderValue::from_str(&target) {
        Ok(v) => {
            req.headers_mut().insert(REQUEST_TARGET, v);
            next.run(req).await
        }
        Err(_) => error(
            StatusCode::BAD_REQUEST,
            "the request target contains characters not allowed in HTTP",
        ),
    }
}

/// A JSON error response `{"error": message}`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// The `error` of a `conflict` answer.
pub const CONFLICT_MESSAGE: &str = "a different record with this identity is stored: this one \
     is kept by acctd as a conflict for an admin (GET /v1/conflicts, sgpu admin conflicts) and \
     not counted; the stored record stays";

/// One record's result in an ingest response.
#[derive(Debug, Serialize)]
pub struct RecordResult {
    /// Position in the batch.
    pub index: usize,
    /// The record key, when known.
    pub key: Option<String>,
    /// `accepted`, `duplicate`, `conflict` or `rejected`.
    pub status: &'static str,
    /// For conflicts: the stored content differs from this one.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub differs: bool,
    /// For rejections: the offending field, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For rejections and conflicts: what is wrong.
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
    /// Records that differ from the stored record of their identity: kept apart for an
    /// admin (`GET /v1/conflicts`), not counted.
    pub conflict: usize,
    /// Records refused.
    pub rejected: usize,
    /// Per record, in batch order.
    pub results: Vec<RecordResult>,
}

/// Authenticates a request: the [`Caller`], or the 401 response to send back (503 when the
/// credential cannot be checked). Call it once per request: a MUNGE credential decodes once.
///
/// Handlers then ask [`AppState::policy`] what that caller may do (403 when nothing).
// A Response is large, but it is what handlers return; boxing it would only move the cost.
#[allow(clippy::result_large_err)]
pub fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, Response> {
    let Some(target) = headers.get(&REQUEST_TARGET).and_then(|v| v.to_str().ok()) else {
        tracing::error!("a route is not behind record_request_target: merge it above the layers");
        return Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "acctd cannot authenticate this endpoint (route registered outside the router's \
             authentication layer); report this as a bug",
        ));
    };
    state
        .auth
        .authenticate(target, headers)
        .map_err(|e| match e {
            AuthError::Refused(_) => error(StatusCode::UNAUTHORIZED, e.to_string()),
            AuthError::Unavailable(_) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        })
}

/// What `caller` may read, or the 403 response to send back.
#[allow(clippy::result_large_err)]
pub fn read_scope(state: &AppState, caller: &Caller) -> Result<ReadScope, Response> {
    state
        .policy
        .read_scope(caller)
        .map_err(|e| error(StatusCode::FORBIDDEN, e.to_string()))
}

/// Authenticates a reading request and returns what its caller may read ([`caller`] then
/// [`read_scope`]): the 401/403 response otherwise. Every read endpoint filters by it.
#[allow(clippy::result_large_err)]
pub fn reader_scope(state: &AppState, headers: &HeaderMap) -> Result<ReadScope, Response> {
    let who = caller(state, headers)?;
    read_scope(state, &who)
}

/// The user a stored record belongs to.
fn record_user(r: &sgpu_spool::Record) -> &str {
    match r.body() {
        sgpu_spool::RecordBody::JobStart(b) => &b.user,
        sgpu_spool::RecordBody::JobEnd(b) => &b.user,
        sgpu_spool::RecordBody::StepUsage(b) | sgpu_spool::RecordBody::JobUsage(b) => &b.user,
    }
}

/// Why a batch was not stored.
enum Ingest {
    /// The body is not a JSON array (400).
    Malformed(crate::ingest::BatchError),
    /// The store failed (503).
    Store(crate::store::StoreError),
}

async fn ingest(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let who = match caller(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(e) = state.policy.may_ingest(&who) {
        return error(StatusCode::FORBIDDEN, e.to_string());
    }
    // Parsing a batch (up to the body limit) and storing it both block: off the runtime.
    let store = state.store.clone();
    let stored = tokio::task::spawn_blocking(move || {
        let ParsedBatch { valid, rejected } = parse_batch(&body).map_err(Ingest::Malformed)?;
        let mut indices = Vec::with_capacity(valid.len());
        let mut records = Vec::with_capacity(valid.len());
        let mut received = Vec::with_capacity(valid.len());
        for (i, r, json) in valid {
            indices.push(i);
            records.push(r);
            received.push(json.get().as_bytes());
        }
        let outcomes = store
            .put_received(&records, &received)
            .map_err(Ingest::Store)?;
        Ok::<_, Ingest>((indices, records, outcomes, rejected))
    })
    .await;
    let (indices, records, outcomes, rejected) = match stored {
        Ok(Ok(x)) => x,
        Ok(Err(Ingest::Malformed(e))) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        Ok(Err(Ingest::Store(e))) => {
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
    let (mut accepted, mut duplicate, mut conflict) = (0, 0, 0);
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
            PutOutcome::Conflict { .. } => {
                conflict += 1;
                ("conflict", true)
            }
        };
        results.push(RecordResult {
            index,
            key: Some(record.id().key()),
            status,
            differs,
            field: None,
            error: (status == "conflict").then(|| CONFLICT_MESSAGE.to_string()),
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
        conflict,
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
    let scope = match reader_scope(&state, &headers) {
        Ok(s) => s,
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
    let visible = move |records: Vec<sgpu_spool::Record>| -> Vec<sgpu_spool::Record> {
        // Another user's job looks exactly like a missing one: no 403 that would confirm it.
        records
            .into_iter()
            .filter(|r| scope.allows(record_user(r)))
            .collect()
    };
    match tokio::task::spawn_blocking(move || store.job(&c, job_id).map(visible)).await {
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

/// The most conflicts one `GET /v1/conflicts` lists.
pub const MAX_CONFLICTS_LISTED: usize = 10_000;

/// `GET /v1/conflicts` (admins only): every kept conflict with the stored record of its
/// identity, oldest key first, at most [`MAX_CONFLICTS_LISTED`] (`truncated` says so).
async fn conflicts(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let who = match caller(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if !state.policy.is_admin(&who) {
        return error(
            StatusCode::FORBIDDEN,
            "not allowed: only admins may list conflicts (acctd --admin-uid/--admin-group)",
        );
    }
    let store = state.store.clone();
    let listed = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut truncated = false;
        store.for_each_conflict(&mut |c| {
            if out.len() < MAX_CONFLICTS_LISTED {
                out.push(c);
            } else {
                truncated = true;
            }
        })?;
        let mut rows = Vec::with_capacity(out.len());
        for c in out {
            let id = c.record.id();
            let stored = store
                .job(id.cluster(), id.job_id())?
                .into_iter()
                .find(|r| r.id() == id);
            rows.push(json!({
                "key": c.key,
                "received_ms": c.received_ms,
                "record": c.record,
                "stored": stored,
            }));
        }
        Ok::<_, crate::store::StoreError>((rows, truncated))
    })
    .await;
    match listed {
        Ok(Ok((rows, truncated))) => {
            axum::Json(json!({ "conflicts": rows, "truncated": truncated })).into_response()
        }
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
