//! The HTTP API (axum): `POST /v1/records`, `GET /v1/jobs/{cluster}/{job_id}` and
//! `GET /v1/conflicts` (admins: records that arrived under a stored record's identity) here, the
//! report, job-list and history endpoints merged in from [`crate::report`] and
//! [`crate::history`]. Errors are JSON `{"error": "..."}`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sgpu_wire::acctd::{
    ConflictEntry, ConflictsAnswer, ErrorAnswer, IngestAnswer, JobAnswer, RecordAnswer,
    RecordStatus, VERSION,
};

use crate::auth::{AuthError, Authenticated, Authenticator, Caller, Policy, ReadScope};
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
    /// acctd.toml: time zone, prices, coordinators ([`crate::site`]).
    pub site: Arc<crate::site::Site>,
}

/// How much and how slowly a request may send its body.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body, bytes (larger: 413, refused from `Content-Length` before a byte
    /// of it is read).
    pub max_body_bytes: usize,
    /// Time allowed to send the whole body (else 408).
    pub body_timeout: Duration,
}

impl Limits {
    /// `max_body_bytes`, with the default body deadline ([`DEFAULT_BODY_TIMEOUT`]).
    pub fn new(max_body_bytes: usize) -> Limits {
        Limits {
            max_body_bytes,
            body_timeout: DEFAULT_BODY_TIMEOUT,
        }
    }
}

/// Default time allowed to send a request body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The router, with a request body limit (larger bodies get 413); see [`router_with`].
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    router_with(state, Limits::new(max_body_bytes))
}

/// The router under `limits`.
///
/// Endpoint modules are merged here, above the layers: every request passes through
/// [`record_request_target`], then [`authenticate`] (the caller is known, and allowed to
/// send a body, before a byte of the body is read), and [`caller`] refuses requests that
/// did not.
pub fn router_with(state: AppState, limits: Limits) -> Router {
    Router::new()
        .route("/v1/records", post(ingest))
        .route("/v1/jobs/{cluster}/{job_id}", get(job))
        .route("/v1/conflicts", get(conflicts))
        .merge(crate::history::routes())
        .merge(crate::efficiency::routes())
        .merge(crate::report::routes())
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            (state.clone(), limits),
            authenticate,
        ))
        .layer(middleware::from_fn(record_request_target))
        .with_state(state)
}

/// Internal header carrying the authenticated caller (`uid:gid`, or `-` without
/// authentication), set by [`authenticate`] (any copy sent by a client is dropped first).
pub const CALLER: HeaderName = HeaderName::from_static("x-sgpu-caller");

/// Middleware: authenticates the request from its headers alone (MUNGE decoding on a
/// blocking thread), lets only ingesting callers send a body (`POST`), then reads the body
/// within [`Limits`] and checks it is the one the credential was made for. Refusals never
/// read the body: 401 (credential), 503 (munged down), 403 (not allowed to send), 413 (too
/// large), 408 (too slow).
pub async fn authenticate(
    State((state, limits)): State<(AppState, Limits)>,
    mut req: Request,
    next: Next,
) -> Response {
    req.headers_mut().remove(&CALLER);
    let who = match credential(&state, req.headers()).await {
        Ok(who) => who,
        Err((status, message)) => return error(status, message),
    };
    let sends_body =
        req.method() != axum::http::Method::GET && req.method() != axum::http::Method::HEAD;
    if sends_body {
        // every endpoint that takes a body takes records or node events: nodes only
        if let Err(e) = state.policy.may_ingest(&who.caller) {
            return error(StatusCode::FORBIDDEN, e.to_string());
        }
    }
    let (mut parts, body) = req.into_parts();
    let bytes = match read_body(&parts.headers, body, &limits).await {
        Ok(b) => b,
        Err((status, message)) => return error(status, message),
    };
    if let Some(want) = who.body_sha256 {
        if sgpu_munge::request::body_digest(&bytes) != want {
            return error(
                StatusCode::UNAUTHORIZED,
                "authentication failed: the body is not the one the MUNGE credential was made \
                 for (its sha256 differs); it was changed on the way, or the client hashed \
                 another body",
            );
        }
    }
    let caller = match who.caller {
        Caller::Unauthenticated => "-".to_string(),
        Caller::Uid { uid, gid } => format!("{uid}:{gid}"),
    };
    if let Ok(v) = HeaderValue::from_str(&caller) {
        parts.headers.insert(CALLER, v);
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// Why [`authenticate`] refuses a request: the status and the message of its [`error`].
type Refusal = (StatusCode, String);

/// Who sent the request, from its target and `Authorization` header alone (MUNGE decoded on
/// a blocking thread).
async fn credential(state: &AppState, headers: &HeaderMap) -> Result<Authenticated, Refusal> {
    let Some(target) = headers
        .get(&REQUEST_TARGET)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            "acctd cannot authenticate this request (no request target); report this as a bug"
                .into(),
        ));
    };
    let auth = state.auth.clone();
    let mut auth_headers = HeaderMap::new();
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
        auth_headers.insert(axum::http::header::AUTHORIZATION, v.clone());
    }
    let checked =
        tokio::task::spawn_blocking(move || auth.authenticate(&target, &auth_headers)).await;
    match checked {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(e @ AuthError::Refused(_))) => Err((StatusCode::UNAUTHORIZED, e.to_string())),
        Ok(Err(e @ AuthError::Unavailable(_))) => {
            Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
        }
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// The request's body, read within [`Limits`]: refused from a `Content-Length` over the
/// limit before a byte is read, and when it grows past the limit or arrives too slowly.
async fn read_body(
    headers: &HeaderMap,
    body: axum::body::Body,
    limits: &Limits,
) -> Result<Bytes, Refusal> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body is over acctd's {} byte limit (--max-body-bytes); send fewer records \
                 per request",
                limits.max_body_bytes
            ),
        ));
    }
    let read = tokio::time::timeout(
        limits.body_timeout,
        axum::body::to_bytes(body, limits.max_body_bytes),
    )
    .await;
    match read {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the body is over acctd's {} byte limit (--max-body-bytes)",
                        limits.max_body_bytes
                    ),
                )
            } else {
                (StatusCode::BAD_REQUEST, format!("reading the body: {e}"))
            })
        }
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within {:?}; send it at once",
                limits.body_timeout
            ),
        )),
    }
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
    let body = ErrorAnswer {
        error: message.into(),
    };
    (status, axum::Json(body)).into_response()
}

/// The `error` of a `conflict` answer.
pub const CONFLICT_MESSAGE: &str = "a different record with this identity is stored: this one \
     is kept by acctd as a conflict for an admin (GET /v1/conflicts, sgpu conflicts) and \
     not counted; the stored record stays";

/// The request's [`Caller`], as [`authenticate`] (the router's layer) found it before the
/// body was read; a 500 response for a route outside that layer.
///
/// Handlers then ask [`AppState::policy`] what that caller may do (403 when nothing).
// A Response is large, but it is what handlers return; boxing it would only move the cost.
#[allow(clippy::result_large_err)]
pub fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, Response> {
    let _ = state;
    let parsed = headers
        .get(&CALLER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| match v {
            "-" => Some(Caller::Unauthenticated),
            v => {
                let (uid, gid) = v.split_once(':')?;
                Some(Caller::Uid {
                    uid: uid.parse().ok()?,
                    gid: gid.parse().ok()?,
                })
            }
        });
    parsed.ok_or_else(|| {
        tracing::error!("a route is not behind authenticate: merge it above the layers");
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "acctd cannot authenticate this endpoint (route registered outside the router's \
             authentication layer); report this as a bug",
        )
    })
}

/// What `caller` may read, or the 403 response to send back.
#[allow(clippy::result_large_err)]
pub fn read_scope(state: &AppState, caller: &Caller) -> Result<ReadScope, Response> {
    let scope = state
        .policy
        .read_scope(caller)
        .map_err(|e| error(StatusCode::FORBIDDEN, e.to_string()))?;
    Ok(match scope {
        ReadScope::User(user) => {
            let accounts = state.site.coordinators.accounts_of(&user);
            if accounts.is_empty() {
                ReadScope::User(user)
            } else {
                ReadScope::Coordinator { user, accounts }
            }
        }
        other => other,
    })
}

/// Authenticates a reading request and returns what its caller may read ([`caller`] then
/// [`read_scope`]): the 401/403 response otherwise. Every read endpoint filters by it.
#[allow(clippy::result_large_err)]
pub fn reader_scope(state: &AppState, headers: &HeaderMap) -> Result<ReadScope, Response> {
    let who = caller(state, headers)?;
    read_scope(state, &who)
}

/// The reader's scope and the job id of a request for one job (`/v1/jobs/{cluster}/{id}`,
/// `/v1/efficiency/...`): 400 when the id is not a number.
// A Response is what handlers return (as for `caller`).
#[allow(clippy::result_large_err)]
pub fn job_reader(
    state: &AppState,
    headers: &HeaderMap,
    job_id: &str,
) -> Result<(ReadScope, u32), Response> {
    let scope = reader_scope(state, headers)?;
    let Ok(job_id) = job_id.parse::<u32>() else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("job id {job_id:?} is not a number"),
        ));
    };
    Ok((scope, job_id))
}

/// The user a stored record belongs to.
pub(crate) fn record_user(r: &sgpu_spool::Record) -> &str {
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
    let mut results: Vec<RecordAnswer> = Vec::with_capacity(records.len() + rejected.len());
    let (mut accepted, mut duplicate, mut conflict) = (0, 0, 0);
    for ((index, record), outcome) in indices.into_iter().zip(&records).zip(outcomes) {
        let (status, differs) = match outcome {
            PutOutcome::Accepted => {
                accepted += 1;
                (RecordStatus::Accepted, false)
            }
            PutOutcome::Duplicate { differs } => {
                duplicate += 1;
                (RecordStatus::Duplicate, differs)
            }
            PutOutcome::Conflict { .. } => {
                conflict += 1;
                (RecordStatus::Conflict, true)
            }
        };
        results.push(RecordAnswer {
            index,
            key: Some(record.id().key()),
            status,
            differs,
            field: None,
            error: (status == RecordStatus::Conflict).then(|| CONFLICT_MESSAGE.to_string()),
        });
    }
    let n_rejected = rejected.len();
    for r in rejected {
        results.push(RecordAnswer {
            index: r.index,
            key: r.key,
            status: RecordStatus::Rejected,
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
    let body = IngestAnswer {
        version: Some(VERSION),
        accepted,
        duplicate,
        conflict: Some(conflict),
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
    let (scope, job_id) = match job_reader(&state, &headers, &job_id) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let store = state.store.clone();
    let c = cluster.clone();
    let visible = move |records: Vec<sgpu_spool::Record>| -> Vec<sgpu_spool::Record> {
        // Another user's job looks exactly like a missing one: no 403 that would confirm it.
        scope.visible_records(records)
    };
    match tokio::task::spawn_blocking(move || store.job(&c, job_id).map(visible)).await {
        Ok(Ok(records)) if records.is_empty() => error(
            StatusCode::NOT_FOUND,
            format!("no records of job {job_id} on cluster {cluster}"),
        ),
        Ok(Ok(records)) => axum::Json(JobAnswer {
            version: Some(VERSION),
            cluster,
            job_id,
            records,
        })
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
            rows.push(ConflictEntry {
                key: c.key,
                received_ms: c.received_ms,
                record: c.record,
                stored,
            });
        }
        Ok::<_, crate::store::StoreError>((rows, truncated))
    })
    .await;
    match listed {
        Ok(Ok((conflicts, truncated))) => axum::Json(ConflictsAnswer {
            version: Some(VERSION),
            conflicts,
            truncated,
        })
        .into_response(),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
