//! A small blocking HTTP client for sgpu-acctd, the head-node accounting service.
//!
//! Everything that talks to acctd goes through [`Client`]: healthd's spool forwarder sends
//! usage record batches ([`Client::post_records`], `POST /v1/records`), and the `sgpu` CLI
//! reads reports and sends admin commands ([`Client::get`], [`Client::post`]). Answers are
//! the typed documents of [`sgpu_wire`], read by [`sgpu_wire::decode`]: an answer of another
//! major schema version is [`ClientError::Version`], which names both versions and what to
//! upgrade. [`Client::get_json`] gives the raw JSON, for tests and tools that inspect it.
//! acctd speaks plain HTTP (no TLS); callers are identified by a MUNGE credential carried in
//! every request (`Authorization: MUNGE <credential>`, [`ClientAuth::Munge`]) whose payload
//! is `"<METHOD> <path-and-query> sha256=<body digest>"` of that request
//! (`sgpu_munge::request`), which acctd checks, so a credential cannot be reused for another
//! request nor a body swapped. Errors say whether to retry
//! ([`ClientError::Transport`]) or not.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
pub use sgpu_wire::acctd::{IngestAnswer, RecordAnswer, RecordStatus};
use sgpu_wire::{Answer, DecodeError};

/// Largest response body read, bytes (reports over many jobs can be large).
pub const MAX_RESPONSE_BYTES: u64 = 512 * 1024 * 1024;

/// How requests are authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// No credential (acctd started with `--auth none`, loopback only).
    None,
    /// A fresh MUNGE credential per request, from munged at `socket` (default: libmunge's).
    Munge {
        /// munged's socket; `None` uses libmunge's default.
        socket: Option<PathBuf>,
    },
}

/// A blocking acctd client; cheap to clone, usable from several threads.
///
/// It may know several acctd (two acctd on one MariaDB/MySQL database, `docs/operations.md`):
/// a request goes to the one that answered last, and to the next in the list when that one
/// cannot be reached or answers 503 (its store is away), so a request fails only when none
/// answers. Failing over is safe for every request: an ingest that was not acknowledged
/// may be sent again (acctd deduplicates), and reads change nothing.
#[derive(Clone)]
pub struct Client {
    endpoints: std::sync::Arc<[Endpoint]>,
    /// The index of the endpoint that answered last (shared by clones).
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    auth: ClientAuth,
    agent: ureq::Agent,
}

/// One acctd.
#[derive(Debug)]
struct Endpoint {
    base: String,
    /// The path part of the base URL (`""` or `/prefix`), part of each credential's payload.
    prefix: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// Reads one acctd URL (`http://host:port[/prefix]`).
fn endpoint(url: &str, all: &str) -> Result<Endpoint, ClientError> {
    let base = url.trim().trim_end_matches('/');
    let rest = base.strip_prefix("http://").ok_or_else(|| {
        ClientError::Transport(format!(
            "acctd URL {url:?} (in {all:?}) must start with http:// (acctd speaks plain HTTP; \
             requests are authenticated by MUNGE): fix --acctd or [accounting] url"
        ))
    })?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(ClientError::Transport(format!(
            "acctd URL {url:?} (in {all:?}) has no host: fix --acctd or [accounting] url"
        )));
    }
    let prefix = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
    Ok(Endpoint {
        base: base.to_owned(),
        prefix: prefix.to_owned(),
    })
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// acctd could not be reached or did not answer in time: retry later.
    #[error("cannot reach sgpu-acctd: {0}")]
    Transport(String),
    /// acctd answered with an error status; `message` is its explanation.
    #[error("sgpu-acctd answered {status}: {message}")]
    Http {
        /// HTTP status code.
        status: u16,
        /// acctd's `{"error": ...}` text, or the raw body.
        message: String,
    },
    /// No MUNGE credential could be made (is munged running?).
    #[error("cannot make a MUNGE credential: {0}")]
    Credential(String),
    /// acctd's answer was not the JSON expected.
    #[error("cannot read sgpu-acctd's answer: {0}")]
    Decode(String),
    /// The server answered with another major schema version (the message names both and
    /// what to upgrade).
    #[error("{0}")]
    Version(DecodeError),
}

impl From<DecodeError> for ClientError {
    fn from(e: DecodeError) -> ClientError {
        match e {
            e @ DecodeError::Version { .. } => ClientError::Version(e),
            e @ DecodeError::Malformed { .. } => ClientError::Decode(e.to_string()),
        }
    }
}

impl Client {
    /// A client for the acctd at `base_url` (`http://host:port`, optionally with a path
    /// prefix), or for several, comma-separated (`http://a:6830,http://b:6830`: failover in
    /// that order, see [`Client`]); every request to one acctd times out after `timeout`.
    pub fn new(base_url: &str, auth: ClientAuth, timeout: Duration) -> Result<Client, ClientError> {
        let endpoints = base_url
            .split(',')
            .map(|u| endpoint(u, base_url))
            .collect::<Result<Vec<_>, _>>()?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Client {
            endpoints: endpoints.into(),
            current: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            auth,
            agent,
        })
    }

    /// The base URL requests go to first: the acctd that answered last.
    pub fn base_url(&self) -> &str {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        self.endpoints
            .get(i)
            .or_else(|| self.endpoints.first())
            .map_or("", |e| e.base.as_str())
    }

    /// Sends a batch of records (the spool's JSON batch format) to `POST /v1/records`.
    ///
    /// `Ok` means acctd stored the batch durably: every record is accepted, duplicate or
    /// rejected as the reply says (a batch with rejections is answered 422 but is still
    /// `Ok`, so the caller can act per record). Any other failure is an `Err` and nothing
    /// may be assumed stored.
    pub fn post_records(&self, batch_json: &[u8]) -> Result<IngestAnswer, ClientError> {
        let (status, body) = self.send("POST", "/v1/records", Some(batch_json))?;
        if status == 200 || status == 422 {
            Ok(sgpu_wire::decode(&body)?)
        } else {
            Err(http_error(status, &body))
        }
    }

    /// `GET path_and_query` (e.g. `/v1/report?start=...&end=...`), the answer as the
    /// document `T` (e.g. [`sgpu_wire::acctd::ReportAnswer`]).
    pub fn get<T: Answer>(&self, path_and_query: &str) -> Result<T, ClientError> {
        let (status, body) = self.send("GET", path_and_query, None)?;
        typed_answer(status, &body)
    }

    /// `POST path` with `body` as JSON, the answer as the document `T`.
    pub fn post<B: Serialize, T: Answer>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| ClientError::Decode(format!("encoding the request body: {e}")))?;
        let (status, answer) = self.send("POST", path, Some(&bytes))?;
        typed_answer(status, &answer)
    }

    /// `GET path_and_query`, the answer as raw JSON: for tests and tools that inspect it;
    /// product code reads the typed documents ([`Client::get`]).
    pub fn get_json(&self, path_and_query: &str) -> Result<serde_json::Value, ClientError> {
        let (status, body) = self.send("GET", path_and_query, None)?;
        json_answer(status, &body)
    }

    /// `POST path` with a JSON body, the answer as raw JSON (tests and tools; see
    /// [`Client::post`]).
    pub fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| ClientError::Decode(format!("encoding the request body: {e}")))?;
        let (status, answer) = self.send("POST", path, Some(&bytes))?;
        json_answer(status, &answer)
    }

    /// The `Authorization` header value for `method path_and_query` to the acctd with
    /// path prefix `prefix`, if any.
    fn authorization(
        &self,
        prefix: &str,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<Option<String>, ClientError> {
        match &self.auth {
            ClientAuth::None => Ok(None),
            ClientAuth::Munge { socket } => {
                // What acctd sees as the request target, base path prefix included, and
                // the body's digest (acctd refuses a body swapped on the wire).
                let target = format!("{prefix}{path_and_query}");
                let payload = sgpu_munge::request::payload(method, &target, body);
                let cred = sgpu_munge::encode(
                    payload.as_bytes(),
                    &sgpu_munge::Options::with_socket(socket.as_deref()),
                )
                .map_err(|e| ClientError::Credential(e.to_string()))?;
                Ok(Some(format!("MUNGE {cred}")))
            }
        }
    }

    /// Sends the request to the acctd that answered last, then to the others in turn while
    /// one cannot be reached or answers 503; the first other answer is the answer.
    fn send(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        if !path_and_query.starts_with('/') {
            return Err(ClientError::Transport(format!(
                "request path {path_and_query:?} must start with '/'"
            )));
        }
        let n = self.endpoints.len();
        let first = self.current.load(std::sync::atomic::Ordering::Relaxed);
        let mut last = None;
        for k in 0..n {
            let i = (first + k) % n;
            let Some(e) = self.endpoints.get(i) else {
                continue;
            };
            match self.send_to(e, method, path_and_query, body) {
                Ok((503, answer)) if n > 1 => last = Some(Ok((503, answer))),
                Ok(answer) => {
                    self.current.store(i, std::sync::atomic::Ordering::Relaxed);
                    return Ok(answer);
                }
                Err(ClientError::Transport(m)) if n > 1 => {
                    last = Some(Err(ClientError::Transport(m)));
                }
                Err(other) => return Err(other),
            }
        }
        match last {
            Some(Ok((status, answer))) => Ok((status, answer)),
            Some(Err(ClientError::Transport(m))) => Err(ClientError::Transport(format!(
                "none of the {n} acctd answered; the last: {m}"
            ))),
            Some(Err(e)) => Err(e),
            None => Err(ClientError::Transport("no acctd URL".into())),
        }
    }

    /// One request to one acctd.
    fn send_to(
        &self,
        e: &Endpoint,
        method: &str,
        path_and_query: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let url = format!("{}{path_and_query}", e.base);
        let authz =
            self.authorization(&e.prefix, method, path_and_query, body.unwrap_or_default())?;
        let result = match (method, body) {
            ("GET", _) => {
                let mut req = self.agent.get(&url).header("Accept", "application/json");
                if let Some(a) = &authz {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
            (_, body) => {
                let mut req = self
                    .agent
                    .post(&url)
                    .header("Accept", "application/json")
                    .header("Content-Type", "application/json");
                if let Some(a) = &authz {
                    req = req.header("Authorization", a);
                }
                req.send(body.unwrap_or(&[]))
            }
        };
        let mut resp =
            result.map_err(|e| ClientError::Transport(format!("{method} {url}: {e}")))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec()
            .map_err(|e| {
                ClientError::Transport(format!("reading the answer to {method} {url}: {e}"))
            })?;
        Ok((status, bytes))
    }
}

fn json_answer(status: u16, body: &[u8]) -> Result<serde_json::Value, ClientError> {
    if !(200..300).contains(&status) {
        return Err(http_error(status, body));
    }
    serde_json::from_slice(body).map_err(|e| ClientError::Decode(format!("{e}: {}", excerpt(body))))
}

/// A 2xx answer as the document `T`; any other status as [`http_error`].
fn typed_answer<T: Answer>(status: u16, body: &[u8]) -> Result<T, ClientError> {
    if !(200..300).contains(&status) {
        return Err(http_error(status, body));
    }
    Ok(sgpu_wire::decode(body)?)
}

/// acctd's `{"error": ...}` message ([`sgpu_wire::acctd::ErrorAnswer`]), or the body itself.
fn http_error(status: u16, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<sgpu_wire::acctd::ErrorAnswer>(body)
        .map(|a| a.error)
        .unwrap_or_else(|_| excerpt(body));
    ClientError::Http { status, message }
}

/// The start of a body, for error messages.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut s: String = text.chars().take(300).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_plain_http_with_a_host() {
        let t = Duration::from_secs(1);
        assert!(Client::new("https://acct:6830", ClientAuth::None, t).is_err());
        assert!(Client::new("http://", ClientAuth::None, t).is_err());
        assert!(Client::new("acct:6830", ClientAuth::None, t).is_err());
        let c = Client::new("http://acct:6830/", ClientAuth::None, t).unwrap();
        assert_eq!(c.base_url(), "http://acct:6830");
    }

    #[test]
    fn error_messages_come_from_acctd_json() {
        match http_error(403, br#"{"error":"not allowed: uid 5"}"#) {
            ClientError::Http { status, message } => {
                assert_eq!(status, 403);
                assert_eq!(message, "not allowed: uid 5");
            }
            e => panic!("{e:?}"),
        }
        match http_error(502, b"bad gateway") {
            ClientError::Http { message, .. } => assert_eq!(message, "bad gateway"),
            e => panic!("{e:?}"),
        }
    }

    /// A server one major version ahead: the client refuses its answer with an error that
    /// names both versions and says what to upgrade.
    #[test]
    fn an_answer_of_a_newer_major_version_is_refused_by_name() {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req);
            let body = br#"{"version":2,"window":{"start_ms":0,"end_ms":1},"groups":[]}"#;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(body).unwrap();
        });
        let c = Client::new(
            &format!("http://{addr}"),
            ClientAuth::None,
            Duration::from_secs(5),
        )
        .unwrap();
        let e = c
            .get::<sgpu_wire::acctd::ReportAnswer>("/v1/report?start=0&end=1")
            .unwrap_err();
        server.join().unwrap();
        assert!(matches!(e, ClientError::Version(_)), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("GET /v1/report")
                && text.contains("schema version 2")
                && text.contains("reads version 1")
                && text.contains("upgrade sgpu"),
            "{text}"
        );
    }

    /// A server that answers `n` requests with `status` and a small JSON body, then ends.
    fn answering(status: u16, n: usize) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            for _ in 0..n {
                let (mut s, _) = listener.accept().unwrap();
                let mut req = [0u8; 4096];
                let _ = s.read(&mut req);
                let body = format!(r#"{{"error":"answered {status}"}}"#);
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                s.write_all(head.as_bytes()).unwrap();
                s.write_all(body.as_bytes()).unwrap();
            }
        });
        (addr, t)
    }

    #[test]
    fn several_acctd_fail_over_past_an_unreachable_or_unavailable_one() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (away, away_t) = answering(503, 1);
        let (up, up_t) = answering(200, 2);
        let t = Duration::from_secs(5);
        let urls = format!("http://127.0.0.1:{closed}, http://{away}/,http://{up}");
        let c = Client::new(&urls, ClientAuth::None, t).unwrap();
        assert_eq!(c.base_url(), format!("http://127.0.0.1:{closed}"));
        let v = c.get_json("/v1/x").unwrap();
        assert_eq!(v["error"], "answered 200");
        // the one that answered is asked first from now on, also by clones
        assert_eq!(c.clone().base_url(), format!("http://{up}"));
        c.get_json("/v1/x").unwrap();
        away_t.join().unwrap();
        up_t.join().unwrap();
        // every one away: the error says so
        let c = Client::new(
            &format!("http://127.0.0.1:{closed},http://127.0.0.1:{closed}"),
            ClientAuth::None,
            t,
        )
        .unwrap();
        match c.get_json("/v1/x") {
            Err(ClientError::Transport(m)) => assert!(m.contains("none of the 2 acctd"), "{m}"),
            other => panic!("{other:?}"),
        }
        // a bad URL in the list names itself
        let e = Client::new("http://a:1,https://b:2", ClientAuth::None, t).unwrap_err();
        assert!(e.to_string().contains("\"https://b:2\""), "{e}");
    }

    #[test]
    fn unreachable_acctd_is_a_transport_error() {
        // A port nothing listens on: bind, note the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = Client::new(
            &format!("http://127.0.0.1:{port}"),
            ClientAuth::None,
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(matches!(
            c.get_json("/v1/report?start=2024-03-01&end=2024-03-02"),
            Err(ClientError::Transport(_))
        ));
        assert!(matches!(
            c.get_json("v1/report?start=2024-03-01&end=2024-03-02"),
            Err(ClientError::Transport(_))
        ));
    }
}
