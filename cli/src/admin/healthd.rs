//! Asking each node's sgpu-healthd (`GET /status`) how its checks and breaker stand.
//!
//! Where a node's healthd answers: `--healthd NODE=URL` (repeatable) for that node, else
//! `--healthd URL` with `%n` replaced by the node name, else `http://%n:<port>` with the
//! port of `status_listen` in this host's sgpu.toml (default 9411). healthd listens on
//! loopback by default; for `sgpu status`/`sgpu resume` from an admin host, set
//! `status_listen = "0.0.0.0:9411"` on the nodes (Prometheus needs that for `/metrics` too).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use sgpu_acct_client::{Client, ClientAuth};

use super::nodes::Health;

/// How long one node's healthd may take to answer.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// Where each node's healthd answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthdUrls {
    per_node: BTreeMap<String, String>,
    template: String,
}

impl HealthdUrls {
    /// From the `--healthd` values and the default port.
    pub fn new(specs: &[String], default_port: u16) -> Result<HealthdUrls, String> {
        let mut per_node = BTreeMap::new();
        let mut template = format!("http://%n:{default_port}");
        for s in specs {
            match s.split_once('=') {
                Some((node, url)) if !node.contains('/') && !node.contains(':') => {
                    per_node.insert(node.to_string(), url.to_string());
                }
                _ if s.starts_with("http://") => template = s.clone(),
                _ => {
                    return Err(format!(
                        "--healthd {s:?}: expected NODE=http://HOST:PORT or a URL template \
                         such as http://%n:9411"
                    ));
                }
            }
        }
        Ok(HealthdUrls { per_node, template })
    }

    /// The base URL of `node`'s healthd.
    pub fn url(&self, node: &str) -> String {
        self.per_node
            .get(node)
            .cloned()
            .unwrap_or_else(|| self.template.replace("%n", node))
    }
}

/// healthd's `/status` of `node`.
pub fn fetch(urls: &HealthdUrls, node: &str) -> Result<Value, String> {
    let url = urls.url(node);
    let client = Client::new(&url, ClientAuth::None, STATUS_TIMEOUT)
        .map_err(|e| format!("healthd at {url}: {e}"))?;
    client
        .get_json("/status")
        .map_err(|e| format!("healthd at {url}: {e}"))
}

/// The health verdict in a `/status` document.
pub fn health(status: &Value) -> Health {
    let Some(h) = status.get("health").filter(|h| !h.is_null()) else {
        return Health::NotChecked;
    };
    let verdict = h
        .get("verdict")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    if verdict != "drain" {
        return Health::Passing {
            verdict: verdict.to_string(),
        };
    }
    let failing: Vec<String> = h
        .get("results")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|r| {
            r.get("status").and_then(Value::as_str) == Some("fail")
                && r.get("severity").and_then(Value::as_str) == Some("drain")
                // observe-only (enforce = false) failures are "would drain", not failing
                && r.get("enforced").and_then(Value::as_bool) != Some(false)
        })
        .map(|r| {
            let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("");
            let gpu = r
                .get("gpu")
                .and_then(Value::as_u64)
                .map(|g| format!(" gpu{g}"))
                .unwrap_or_default();
            format!("{}{gpu}: {}", s("check"), s("message"))
        })
        .collect();
    let would = h.get("would_drain").and_then(Value::as_str);
    if let (true, Some(reason)) = (failing.is_empty(), would) {
        return Health::Passing {
            verdict: format!("would drain: {reason}"),
        };
    }
    if failing.is_empty() {
        Health::Failing(vec!["verdict drain".into()])
    } else {
        Health::Failing(failing)
    }
}

/// `open (why)` or `closed`, from a `/status` document.
pub fn breaker(status: &Value) -> String {
    let b = status.get("breaker");
    if b.and_then(|b| b.get("open")).and_then(Value::as_bool) == Some(true) {
        let trip = b
            .and_then(|b| b.get("trip"))
            .filter(|t| !t.is_null())
            .map(|t| {
                let n = |k: &str| t.get(k).and_then(Value::as_u64).unwrap_or(0);
                match t.get("scope").and_then(Value::as_str) {
                    Some(scope) => format!(
                        " ({scope}: {} of {} nodes held drained by sgpu, limit {})",
                        n("drained"),
                        n("total"),
                        n("limit")
                    ),
                    None => format!(" ({t})"),
                }
            })
            .unwrap_or_default();
        format!("open{trip}")
    } else {
        "closed".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_per_node_template_and_default() -> Result<(), String> {
        let u = HealthdUrls::new(&["node1=http://127.0.0.1:1".into()], 9411)?;
        assert_eq!(u.url("node1"), "http://127.0.0.1:1");
        assert_eq!(u.url("node2"), "http://node2:9411");
        let t = HealthdUrls::new(&["http://%n.ib:80".into()], 9411)?;
        assert_eq!(t.url("n3"), "http://n3.ib:80");
        assert!(HealthdUrls::new(&["nonsense".into()], 1).is_err());
        Ok(())
    }

    #[test]
    fn health_and_breaker_from_status() {
        assert_eq!(health(&json!({"health": null})), Health::NotChecked);
        // observe-only: the verdict is drain, nothing enforced fails
        let observing = json!({"health": {"verdict": "drain",
            "would_drain": "sgpu: gpu.lost gpu1: GPU lost (fallen off the bus)",
            "results": [{"check": "gpu.lost", "gpu": 1, "status": "fail", "severity": "drain",
                         "enforced": false, "message": "GPU lost (fallen off the bus)"}]}});
        assert_eq!(
            health(&observing),
            Health::Passing {
                verdict: "would drain: sgpu: gpu.lost gpu1: GPU lost (fallen off the bus)".into()
            }
        );
        assert_eq!(
            health(&json!({"health": {"verdict": "warn", "results": []}})),
            Health::Passing {
                verdict: "warn".into()
            }
        );
        let failing = json!({"health": {"verdict": "drain", "results": [
            {"check": "gpu.xid", "gpu": 1, "status": "fail", "severity": "drain", "message": "XID 79"},
            {"check": "gpu.temp", "gpu": 0, "status": "pass", "severity": "drain", "message": "ok"},
        ]}, "breaker": {"open": true, "trip": {"scope": "cluster", "drained": 1, "total": 2, "limit": 1}}});
        assert_eq!(
            health(&failing),
            Health::Failing(vec!["gpu.xid gpu1: XID 79".into()])
        );
        assert_eq!(
            breaker(&failing),
            "open (cluster: 1 of 2 nodes held drained by sgpu, limit 1)"
        );
        assert_eq!(breaker(&json!({"breaker": {"open": false}})), "closed");
    }
}
