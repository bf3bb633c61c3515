//! The `[accounting]` table: where `sgpu-acctd` is, how to authenticate to it, and how the
//! node's spool forwarder (in `sgpu-healthd`, `sgpu_healthd::forward`) sends records there. The
//! `sgpu` CLI reads `url`, `auth` and `munge_socket` from the same table.
//!
//! ```toml
//! [accounting]
//! url = "http://head:6830"         # sgpu-acctd; without it the forwarder is off; two acctd
//!                                  # on one MariaDB: "http://head1:6830,http://head2:6830"
//! auth = "munge"                   # munge (default) | none
//! munge_socket = "/run/munge/munge.socket.2"   # default: libmunge's own default
//! forward = true                   # false: healthd leaves the spool alone
//! forward_interval_s = 10          # seconds between spool scans
//! forward_batch = 500              # records per request
//! forward_timeout_s = 30           # one request's deadline
//! forward_backoff_max_s = 300      # longest wait between retries while acctd fails
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// Default seconds between the forwarder's spool scans.
pub const DEFAULT_FORWARD_INTERVAL_S: u64 = 10;

/// Default records per `POST /v1/records`.
pub const DEFAULT_FORWARD_BATCH: usize = 500;

/// Default deadline of one request to acctd, seconds.
pub const DEFAULT_FORWARD_TIMEOUT_S: u64 = 30;

/// Default longest wait between retries while acctd is unreachable or failing, seconds.
pub const DEFAULT_FORWARD_BACKOFF_MAX_S: u64 = 300;

/// How requests to acctd are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AcctAuth {
    /// A MUNGE credential on every request (what acctd expects in production).
    #[default]
    Munge,
    /// No credential (an acctd started without authentication, e.g. in tests).
    None,
}

/// The `[accounting]` table, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountingConfig {
    /// acctd's base URL (`http://host:port`), or several comma-separated (the client
    /// fails over in that order); `None`: not configured.
    pub url: Option<String>,
    /// How requests are authenticated.
    pub auth: AcctAuth,
    /// munged's socket; `None`: libmunge's default.
    pub munge_socket: Option<PathBuf>,
    /// Whether healthd forwards the spool (only when `url` is set too).
    pub forward: bool,
    /// Time between the forwarder's spool scans.
    pub forward_interval: Duration,
    /// Records per request.
    pub forward_batch: usize,
    /// One request's deadline.
    pub forward_timeout: Duration,
    /// Longest wait between retries.
    pub forward_backoff_max: Duration,
}

impl Default for AccountingConfig {
    fn default() -> Self {
        AccountingConfig {
            url: None,
            auth: AcctAuth::default(),
            munge_socket: None,
            forward: true,
            forward_interval: Duration::from_secs(DEFAULT_FORWARD_INTERVAL_S),
            forward_batch: DEFAULT_FORWARD_BATCH,
            forward_timeout: Duration::from_secs(DEFAULT_FORWARD_TIMEOUT_S),
            forward_backoff_max: Duration::from_secs(DEFAULT_FORWARD_BACKOFF_MAX_S),
        }
    }
}

impl AccountingConfig {
    /// The acctd URL the forwarder sends to, when forwarding is on.
    pub fn forward_url(&self) -> Option<&str> {
        self.url.as_deref().filter(|_| self.forward)
    }
}

/// The table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccounting {
    url: Option<Spanned<String>>,
    auth: Option<Spanned<String>>,
    munge_socket: Option<PathBuf>,
    forward: Option<bool>,
    forward_interval_s: Option<Spanned<u64>>,
    forward_batch: Option<Spanned<u64>>,
    forward_timeout_s: Option<Spanned<u64>>,
    forward_backoff_max_s: Option<Spanned<u64>>,
}

/// A rejected value: byte offset, key (`accounting.<key>`), message.
pub(super) type Invalid = (usize, String, String);

/// `v` when it lies in `lo..=hi`, else the error of `key` (the whole dotted key) naming the
/// range in `unit`.
pub(super) fn in_range(
    v: &Spanned<u64>,
    key: impl Into<String>,
    lo: u64,
    hi: u64,
    unit: &str,
) -> Result<u64, Invalid> {
    let n = *v.get_ref();
    if (lo..=hi).contains(&n) {
        Ok(n)
    } else {
        Err((
            v.span().start,
            key.into(),
            format!("{n} is out of range ({lo} to {hi}{unit})"),
        ))
    }
}

impl RawAccounting {
    /// Validates the table.
    pub(super) fn validate(self) -> Result<AccountingConfig, Invalid> {
        let mut c = AccountingConfig::default();
        if let Some(u) = self.url {
            let mut urls = Vec::new();
            // several acctd on one database: comma-separated, each an http:// URL
            for one in u.get_ref().split(',') {
                let v = one.trim();
                let host = v.strip_prefix("http://").unwrap_or("");
                if host.is_empty() || host.starts_with('/') {
                    return Err((
                        u.span().start,
                        "accounting.url".into(),
                        format!(
                            "{v:?} is not an http:// URL with a host (e.g. \"http://head:6830\", \
                             or \"http://head1:6830,http://head2:6830\" for two acctd; acctd \
                             speaks plain HTTP, requests are authenticated by MUNGE)"
                        ),
                    ));
                }
                urls.push(v.trim_end_matches('/'));
            }
            c.url = Some(urls.join(","));
        }
        if let Some(a) = self.auth {
            c.auth = match a.get_ref().trim() {
                "munge" => AcctAuth::Munge,
                "none" => AcctAuth::None,
                other => {
                    return Err((
                        a.span().start,
                        "accounting.auth".into(),
                        format!("{other:?} is not one of \"munge\", \"none\""),
                    ));
                }
            };
        }
        c.munge_socket = self.munge_socket;
        if let Some(f) = self.forward {
            c.forward = f;
        }
        if let Some(v) = self.forward_interval_s {
            c.forward_interval = Duration::from_secs(in_range(
                &v,
                "accounting.forward_interval_s",
                1,
                86_400,
                " s",
            )?);
        }
        if let Some(v) = self.forward_batch {
            // the forwarder also caps a request's bytes, below acctd's default body limit
            c.forward_batch =
                in_range(&v, "accounting.forward_batch", 1, 10_000, " records")? as usize;
        }
        if let Some(v) = self.forward_timeout_s {
            c.forward_timeout =
                Duration::from_secs(in_range(&v, "accounting.forward_timeout_s", 1, 3600, " s")?);
        }
        if let Some(v) = self.forward_backoff_max_s {
            c.forward_backoff_max = Duration::from_secs(in_range(
                &v,
                "accounting.forward_backoff_max_s",
                1,
                86_400,
                " s",
            )?);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, ConfigError};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/sgpu/sgpu.toml"))
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn absent_table_is_defaults_and_forwarder_off() {
        let c = parse("").unwrap();
        assert_eq!(c.accounting, AccountingConfig::default());
        assert_eq!(c.accounting.forward_url(), None);
        assert_eq!(c.accounting.auth, AcctAuth::Munge);
        assert_eq!(c.accounting.forward_interval, Duration::from_secs(10));
        assert_eq!(c.accounting.forward_batch, 500);
    }

    #[test]
    fn full_table() {
        let c = parse(
            "[accounting]\nurl = \"http://head:6830/\"\nauth = \"none\"\n\
             munge_socket = \"/run/m.sock\"\nforward_interval_s = 2\nforward_batch = 50\n\
             forward_timeout_s = 5\nforward_backoff_max_s = 60\n",
        )
        .unwrap();
        let a = &c.accounting;
        assert_eq!(a.url.as_deref(), Some("http://head:6830"));
        assert_eq!(a.forward_url(), Some("http://head:6830"));
        assert_eq!(a.auth, AcctAuth::None);
        assert_eq!(a.munge_socket.as_deref(), Some(Path::new("/run/m.sock")));
        assert_eq!(
            (
                a.forward_interval,
                a.forward_batch,
                a.forward_timeout,
                a.forward_backoff_max
            ),
            (
                Duration::from_secs(2),
                50,
                Duration::from_secs(5),
                Duration::from_secs(60)
            )
        );
        let c = parse("[accounting]\nurl = \"http://head:6830\"\nforward = false\n").unwrap();
        assert_eq!(c.accounting.forward_url(), None);
        assert_eq!(c.accounting.url.as_deref(), Some("http://head:6830"));
        let c = parse("[accounting]\nurl = \"http://a:6830/, http://b:6830\"\n").unwrap();
        assert_eq!(
            c.accounting.url.as_deref(),
            Some("http://a:6830,http://b:6830")
        );
    }

    #[test]
    fn bad_values_name_line_and_key() {
        let e = err("\n[accounting]\nurl = \"https://head:6830\"\n");
        assert!(e.contains(":3: accounting.url: "), "{e}");
        let e = err("[accounting]\nurl = \"http://\"\n");
        assert!(e.contains(":2: accounting.url: "), "{e}");
        // every URL of a list is checked, and named
        let e = err("[accounting]\nurl = \"http://a:6830, https://b:6830\"\n");
        assert!(e.contains(":2: accounting.url: \"https://b:6830\""), "{e}");
        let e = err("[accounting]\n\nauth = \"kerberos\"\n");
        assert!(
            e.contains(":3: accounting.auth: \"kerberos\" is not one of"),
            "{e}"
        );
        let e = err("[accounting]\nforward_batch = 0\n");
        assert!(
            e.contains(":2: accounting.forward_batch: 0 is out of range"),
            "{e}"
        );
        let e = err("[accounting]\nforward_interval_s = 0\n");
        assert!(e.contains("accounting.forward_interval_s"), "{e}");
        let e = err("[accounting]\nforward_intervall_s = 3\n");
        assert!(e.contains("unknown field `forward_intervall_s`"), "{e}");
    }
}
