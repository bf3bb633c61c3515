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
#[derive(Clone)]
pub struct Client {
    base: String,
    /// The path part of the base URL (`""` or `/prefix`), part of each credential's payload.
    prefix: String,
    auth: ClientAuth,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
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
    /// prefix); every request times out after `timeout`.
    pub fn new(base_url: &str, auth: ClientAuth, timeout: Duration) -> Result<Client, ClientError> {
        let base = base_url.trim().trim_end_matches('/');
        let rest = base.strip_prefix("http://").ok_or_else(|| {
            ClientError::Transport(format!(
                "acctd URL {base_url:?} must start with http:// (acctd speaks plain HTTP; \
                 requests are authenticated by MUNGE): fix --acctd or [accounting] url"
            ))
        })?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(ClientError::Transport(format!(
                "acctd URL {base_url:?} has no host: fix --acctd or [accounting] url"
            )));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let prefix = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
        Ok(Client {
            base: base.to_owned(),
            prefix: prefix.to_owned(),
            auth,
            agent,
        })
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.base
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

    /// The `Authorization` header value for `method path_and_query`, if any.
    fn authorization(
        &self,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<Option<String>, ClientError> {
        match &self.auth {
            ClientAuth::None => Ok(None),
            ClientAuth::Munge { socket } => {
                // What acctd sees as the request target, base path prefix included, and
                // the body's digest (acctd refuses a body swapped on the wire).
                let target = format!("{}{path_and_query}", self.prefix);
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
        let url = format!("{}{path_and_query}", self.base);
        let authz = self.authorization(method, path_and_query, body.unwrap_or_default())?;
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
