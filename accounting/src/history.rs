//! Node history: every drain and resume of a node by sgpu (healthd, the prolog) or through
//! it (`sgpu drain`, `sgpu resume`), as [`NodeEvent`]s kept apart from the usage records and
//! outside the rollups.
//!
//! - `POST /v1/history` with `{"events": [NodeEvent, ...]}`: allowed to ingest identities
//!   (root, the SlurmUser: healthd and the prolog report their own drains) and to admins
//!   (`sgpu drain`/`sgpu resume`). For a caller that is not an ingest identity, acctd writes
//!   the authenticated uid and its user name into each event: an admin cannot record an
//!   action in someone else's name. The batch rule: all or nothing; the first invalid event
//!   gets a 422 naming its index and field. Stored idempotently by [`NodeEvent::key`] and
//!   durable before the answer.
//! - `GET /v1/history?nodes=<names>[&cluster=C][&start=S][&end=E][&limit=N]`: the events of
//!   those nodes (a comma-separated list of node names; the `sgpu` command expands Slurm
//!   hostlists before asking) at or after `start` and before `end` (Unix seconds), oldest
//!   first, the newest `limit` (default 1000). Any authenticated user may
//!   read it: a node's drain history is operational data that Slurm itself shows every user
//!   (`sinfo -R`), and it names no job or usage.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use sgpu_spool::NodeEvent;
use sgpu_wire::acctd::{HistoryAnswer, HistoryPostAnswer, VERSION};

use crate::auth::Caller;
use crate::http::{AppState, caller, error};
use crate::query::{QueryError, qerr};
use crate::store::PutOutcome;

/// Default and largest number of events one `GET /v1/history` returns.
pub const MAX_EVENTS: usize = 1000;

/// The node history routes.
pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/history", post(post_events).get(get_events))
}

/// Body of `POST /v1/history` (the wire type, with the spool crate's events).
pub type EventBatch = sgpu_wire::acctd::EventBatch<NodeEvent>;

/// Query of `GET /v1/history`.
#[derive(Debug, Default)]
pub struct HistoryQuery {
    /// Comma-separated node names (all nodes when absent).
    pub nodes: Option<String>,
    /// Only this cluster.
    pub cluster: Option<String>,
    /// At most this many (the newest), up to [`MAX_EVENTS`].
    pub limit: Option<usize>,
    /// Only events at or after this time, Unix seconds.
    pub start: Option<u64>,
    /// Only events before this time, Unix seconds.
    pub end: Option<u64>,
}

impl HistoryQuery {
    /// Parses `nodes=a,b&cluster=c&start=s&end=e&limit=n`; unknown parameters are refused.
    pub fn parse(query: &str) -> Result<HistoryQuery, QueryError> {
        let mut q = HistoryQuery::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v =
                crate::query::decode_component(v).ok_or_else(|| qerr(k, "bad percent-encoding"))?;
            match k {
                "nodes" => q.nodes = Some(v),
                "cluster" => q.cluster = Some(v),
                "limit" => {
                    q.limit = Some(
                        v.parse()
                            .map_err(|_| qerr(k, format!("{v:?} is not a number")))?,
                    )
                }
                "start" | "end" => {
                    let t = v
                        .parse()
                        .map_err(|_| qerr(k, format!("{v:?} is not a time in Unix seconds")))?;
                    if k == "start" {
                        q.start = Some(t);
                    } else {
                        q.end = Some(t);
                    }
                }
                _ => {
                    return Err(qerr(
                        k,
                        "unknown parameter; expected nodes=<name,...>, cluster=<name>, \
                         start=<unix s>, end=<unix s>, limit=<n>",
                    ));
                }
            }
        }
        Ok(q)
    }
}

/// An event of a `POST /v1/history` batch that is not valid (the 422 message).
#[derive(Debug, thiserror::Error)]
#[error("events[{index}].{source}")]
pub struct InvalidEvent {
    /// Its place in the batch.
    pub index: usize,
    /// What is wrong with it (naming the field).
    pub source: sgpu_spool::RecordError,
}

/// Checks the batch and applies the caller's identity; the 422 message otherwise.
pub fn prepare(
    batch: EventBatch,
    who: &Caller,
    trusted: bool,
    user_of: impl Fn(u32) -> Option<String>,
) -> Result<Vec<NodeEvent>, InvalidEvent> {
    let mut events = batch.events;
    for (i, e) in events.iter_mut().enumerate() {
        if let (Caller::Uid { uid, .. }, false) = (who, trusted) {
            e.uid = *uid;
            e.user = user_of(*uid).unwrap_or_else(|| uid.to_string());
        }
        e.validate()
            .map_err(|source| InvalidEvent { index: i, source })?;
    }
    Ok(events)
}

async fn post_events(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let who = match caller(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let trusted = state.policy.may_ingest(&who).is_ok();
    if !trusted && !state.policy.is_admin(&who) {
        return error(
            StatusCode::FORBIDDEN,
            "only admins (acctd --admin-uid/--admin-gid), root and the SlurmUser may record \
             node events",
        );
    }
    let batch: EventBatch = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("body is not {{\"events\": [...]}}: {e}"),
            );
        }
    };
    let events = match prepare(batch, &who, trusted, crate::auth::user_name) {
        Ok(ev) => ev,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.put_events(&events)).await {
        Ok(Ok(outcomes)) => {
            let accepted = outcomes
                .iter()
                .filter(|o| matches!(o, PutOutcome::Accepted))
                .count();
            axum::Json(HistoryPostAnswer {
                version: Some(VERSION),
                accepted,
                duplicate: outcomes.len() - accepted,
            })
            .into_response()
        }
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, format!("not stored: {e}")),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("not stored: {e}"),
        ),
    }
}

/// Whether `e` matches the query.
pub fn selects(q: &HistoryQuery, nodes: Option<&[&str]>, e: &NodeEvent) -> bool {
    let ms = |s: u64| s.saturating_mul(1000);
    q.cluster.as_deref().is_none_or(|c| c == e.cluster)
        && nodes.is_none_or(|n| n.contains(&e.node.as_str()))
        && q.start.is_none_or(|s| e.time_ms >= ms(s))
        && q.end.is_none_or(|t| e.time_ms < ms(t))
}

async fn get_events(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let who = match caller(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    // any caller with a user name may read; the check still refuses unknown uids
    if let Err(e) = state.policy.read_scope(&who) {
        return error(StatusCode::FORBIDDEN, e.to_string());
    }
    let q = match HistoryQuery::parse(uri.query().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let limit = q.limit.unwrap_or(MAX_EVENTS).min(MAX_EVENTS);
    let store = state.store.clone();
    let found = tokio::task::spawn_blocking(move || {
        let names: Option<Vec<String>> = q.nodes.as_deref().map(|n| {
            n.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        });
        let refs: Option<Vec<&str>> = names
            .as_ref()
            .map(|v| v.iter().map(String::as_str).collect());
        let mut out = Vec::new();
        store.for_each_event(&mut |e| {
            if selects(&q, refs.as_deref(), &e) {
                out.push(e);
            }
        })?;
        out.sort_by(|a, b| (a.time_ms, &a.id).cmp(&(b.time_ms, &b.id)));
        let skip = out.len().saturating_sub(limit);
        out.drain(..skip);
        Ok::<_, crate::store::StoreError>(out)
    })
    .await;
    match found {
        Ok(Ok(events)) => axum::Json(HistoryAnswer {
            version: Some(VERSION),
            events,
        })
        .into_response(),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sgpu_spool::NodeAction;

    fn event(node: &str, t: u64) -> NodeEvent {
        NodeEvent {
            id: NodeEvent::new_id(node, t),
            cluster: "c".into(),
            node: node.into(),
            time_ms: t,
            action: NodeAction::Drain,
            source: "sgpu-admin".into(),
            uid: 4242,
            user: "mallory".into(),
            reason: "fan".into(),
            previous_reason: None,
            forced: false,
            job: None,
        }
    }

    #[test]
    fn untrusted_callers_get_their_own_identity() -> Result<(), InvalidEvent> {
        let who = Caller::Uid { uid: 1001, gid: 1 };
        let batch = || EventBatch {
            events: vec![event("n1", 1)],
        };
        let ev = prepare(batch(), &who, false, |u| (u == 1001).then(|| "ann".into()))?;
        assert_eq!((ev[0].uid, ev[0].user.as_str()), (1001, "ann"));
        // root / SlurmUser (healthd, prolog) report on their own terms
        let ev = prepare(batch(), &who, true, |_| None)?;
        assert_eq!((ev[0].uid, ev[0].user.as_str()), (4242, "mallory"));
        Ok(())
    }

    #[test]
    fn an_invalid_event_names_its_index_and_field() {
        let mut bad = event("n1", 2);
        bad.reason = String::new();
        let batch = EventBatch {
            events: vec![event("n1", 1), bad],
        };
        let e = prepare(batch, &Caller::Unauthenticated, true, |_| None);
        assert_eq!(
            e.err().map(|e| e.to_string()).as_deref(),
            Some("events[1].reason: a drain needs a reason")
        );
    }

    #[test]
    fn selection_by_nodes_and_cluster() {
        let q = match HistoryQuery::parse("cluster=c&limit=5") {
            Ok(q) => q,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(q.limit, Some(5));
        assert!(HistoryQuery::parse("node=x").is_err());
        assert!(selects(&q, Some(&["n1", "n2"]), &event("n2", 1)));
        assert!(!selects(&q, Some(&["n1"]), &event("n2", 1)));
        assert!(selects(&q, None, &event("n2", 1)));
        let other = HistoryQuery {
            cluster: Some("d".into()),
            ..q
        };
        assert!(!selects(&other, None, &event("n2", 1)));
    }

    #[test]
    fn selection_by_time_is_start_inclusive_end_exclusive() {
        let q = match HistoryQuery::parse("start=100&end=200") {
            Ok(q) => q,
            Err(e) => panic!("{e}"),
        };
        assert_eq!((q.start, q.end), (Some(100), Some(200)));
        assert!(!selects(&q, None, &event("n1", 99_999)));
        assert!(selects(&q, None, &event("n1", 100_000)));
        assert!(selects(&q, None, &event("n1", 199_999)));
        assert!(!selects(&q, None, &event("n1", 200_000)));
        let e = HistoryQuery::parse("start=yesterday")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("start:"), "{e}");
    }

    #[test]
    fn sled_keeps_events_once_and_across_reopen() -> Result<(), Box<dyn std::error::Error>> {
        use crate::sled_store::SledStore;
        use crate::store::Store;
        let dir = tempfile::tempdir()?;
        let (a, b) = (event("n1", 20), event("n2", 10));
        {
            let store = SledStore::open(dir.path())?;
            assert_eq!(
                store.put_events(&[a.clone(), b.clone()])?,
                vec![PutOutcome::Accepted, PutOutcome::Accepted]
            );
            assert_eq!(
                store.put_events(std::slice::from_ref(&a))?,
                vec![PutOutcome::Duplicate { differs: false }]
            );
        }
        let store = SledStore::open(dir.path())?;
        let mut seen = Vec::new();
        store.for_each_event(&mut |e| seen.push(e))?;
        assert_eq!(seen, vec![a, b]);
        let mut records = 0;
        store.for_each_record(&mut |_| records += 1)?;
        assert_eq!(records, 0, "node events are not usage records");
        Ok(())
    }
}
