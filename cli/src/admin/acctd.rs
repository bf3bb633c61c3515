//! Reaching sgpu-acctd from the admin commands: its URL and authentication, and the node
//! history (`POST /v1/history`, `GET /v1/history`).
//!
//! The URL is `--acctd URL`, else `[accounting] url` in sgpu.toml, else `$SGPU_ACCTD_URL`,
//! else [`DEFAULT_ACCTD_URL`]. Requests carry a MUNGE credential (the caller's uid), unless
//! sgpu.toml says `[accounting] auth = "none"` or `$SGPU_ACCTD_AUTH=none` is set (an acctd
//! started with `--auth none`, loopback only).

use std::time::Duration;

use sgpu_acct_client::{Client, ClientAuth};
use sgpu_spool::NodeEvent;
use sgpu_wire::acctd::{EventBatch, HistoryAnswer, HistoryPostAnswer};

/// acctd's URL when nothing else says.
pub const DEFAULT_ACCTD_URL: &str = "http://127.0.0.1:6830";

/// How long one acctd request may take.
pub const ACCTD_TIMEOUT: Duration = Duration::from_secs(10);

/// What sgpu.toml's `[accounting]` table says (when there is one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcctdSettings {
    /// `url`.
    pub url: Option<String>,
    /// `auth = "none"`.
    pub no_auth: bool,
    /// `munge_socket`.
    pub munge_socket: Option<std::path::PathBuf>,
}

/// Picks the URL and authentication by the documented precedence.
pub fn resolve(
    cli_url: Option<&str>,
    settings: &AcctdSettings,
    env: impl Fn(&str) -> Option<String>,
) -> (String, ClientAuth) {
    let url = cli_url
        .map(String::from)
        .or_else(|| settings.url.clone())
        .or_else(|| env("SGPU_ACCTD_URL").filter(|u| !u.is_empty()))
        .unwrap_or_else(|| DEFAULT_ACCTD_URL.to_string());
    let no_auth = match env("SGPU_ACCTD_AUTH").as_deref() {
        Some("none") => true,
        Some("munge") => false,
        _ => settings.no_auth,
    };
    let auth = if no_auth {
        ClientAuth::None
    } else {
        ClientAuth::Munge {
            socket: settings.munge_socket.clone(),
        }
    };
    (url, auth)
}

/// A request to a service of sgpu (acctd, a node's healthd) that failed: names the service
/// and its URL, then the client's error, which says what to check.
#[derive(Debug, thiserror::Error)]
#[error("{service} at {url}: {error}")]
pub struct ServiceError {
    /// `acctd` or `healthd`.
    pub service: &'static str,
    /// The base URL asked.
    pub url: String,
    /// What failed.
    pub error: sgpu_acct_client::ClientError,
}

impl ServiceError {
    /// A failed request to acctd at `url`.
    pub fn acctd(url: &str, error: sgpu_acct_client::ClientError) -> ServiceError {
        ServiceError {
            service: "acctd",
            url: url.to_string(),
            error,
        }
    }
}

/// A client for `url`.
pub fn client(url: &str, auth: ClientAuth) -> Result<Client, ServiceError> {
    Client::new(url, auth, ACCTD_TIMEOUT).map_err(|e| ServiceError::acctd(url, e))
}

/// Records `events` in acctd's node history.
pub fn record(client: &Client, events: &[NodeEvent]) -> Result<(), ServiceError> {
    if events.is_empty() {
        return Ok(());
    }
    let body = EventBatch {
        events: events.iter().collect::<Vec<_>>(),
    };
    client
        .post::<_, HistoryPostAnswer>("/v1/history", &body)
        .map(|_| ())
        .map_err(|e| ServiceError::acctd(client.base_url(), e))
}

/// The history of `nodes` in `[start, end)` (Unix seconds, either open), the newest
/// `limit`, oldest first.
pub fn history(
    client: &Client,
    nodes: &[String],
    limit: usize,
    (start, end): (Option<i64>, Option<i64>),
) -> Result<Vec<NodeEvent>, ServiceError> {
    let mut path = format!("/v1/history?nodes={}&limit={limit}", nodes.join("%2C"));
    if let Some(s) = start {
        path.push_str(&format!("&start={}", s.max(0)));
    }
    if let Some(e) = end {
        path.push_str(&format!("&end={}", e.max(0)));
    }
    client
        .get::<HistoryAnswer<NodeEvent>>(&path)
        .map(|a| a.events)
        .map_err(|e| ServiceError::acctd(client.base_url(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_cli_config_env_default() {
        let env = |k: &str| match k {
            "SGPU_ACCTD_URL" => Some("http://env:1".to_string()),
            _ => None,
        };
        let conf = AcctdSettings {
            url: Some("http://conf:1".into()),
            ..AcctdSettings::default()
        };
        assert_eq!(resolve(Some("http://cli:1"), &conf, env).0, "http://cli:1");
        assert_eq!(resolve(None, &conf, env).0, "http://conf:1");
        assert_eq!(
            resolve(None, &AcctdSettings::default(), env).0,
            "http://env:1"
        );
        let (url, auth) = resolve(None, &AcctdSettings::default(), |_| None);
        assert_eq!(url, DEFAULT_ACCTD_URL);
        assert_eq!(auth, ClientAuth::Munge { socket: None });
        let none = |k: &str| (k == "SGPU_ACCTD_AUTH").then(|| "none".to_string());
        assert_eq!(resolve(None, &conf, none).1, ClientAuth::None);
    }
}
