//! Asking each node's sgpu-healthd (`GET /status`) how its checks and breaker stand.
//!
//! Where a node's healthd answers: `--healthd NODE=URL` (repeatable) for that node, else
//! `--healthd URL` with `%n` replaced by the node name, else `http://%n:<port>` with the
//! port of `status_listen` in this host's sgpu.toml (default 9411). healthd listens on
//! loopback by default; for `sgpu status`/`sgpu resume` from an admin host, set
//! `status_listen = "0.0.0.0:9411"` on the nodes (Prometheus needs that for `/metrics` too).

use std::collections::BTreeMap;
use std::time::Duration;

use sgpu_acct_client::{Client, ClientAuth};
use sgpu_wire::healthd::{StatusDoc, Verdict};

use super::acctd::ServiceError;
use super::nodes::Health;

/// How long one node's healthd may take to answer.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// A `--healthd` value that is neither `NODE=URL` nor a URL template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--healthd {spec:?}: expected NODE=http://HOST:PORT or a URL template such as \
     http://%n:9411"
)]
pub struct HealthdSpecError {
    /// The value given.
    pub spec: String,
}

/// Where each node's healthd answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthdUrls {
    per_node: BTreeMap<String, String>,
    template: String,
}

impl HealthdUrls {
    /// From the `--healthd` values and the default port.
    pub fn new(specs: &[String], default_port: u16) -> Result<HealthdUrls, HealthdSpecError> {
        let mut per_node = BTreeMap::new();
        let mut template = format!("http://%n:{default_port}");
        for s in specs {
            match s.split_once('=') {
                Some((node, url)) if !node.contains('/') && !node.contains(':') => {
                    per_node.insert(node.to_string(), url.to_string());
                }
                _ if s.starts_with("http://") => template = s.clone(),
                _ => return Err(HealthdSpecError { spec: s.clone() }),
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
pub fn fetch(urls: &HealthdUrls, node: &str) -> Result<StatusDoc, ServiceError> {
    let url = urls.url(node);
    let failed = |error| ServiceError {
        service: "healthd",
        url: url.clone(),
        error,
    };
    let client = Client::new(&url, ClientAuth::None, STATUS_TIMEOUT).map_err(failed)?;
    client.get("/status").map_err(failed)
}

/// The health verdict in a `/status` document.
pub fn health(status: &StatusDoc) -> Health {
    let Some(h) = &status.health else {
        return Health::NotChecked;
    };
    let verdict = match h.verdict {
        Verdict::Healthy => "healthy",
        Verdict::Warn => "warn",
        Verdict::Drain => "drain",
    };
    if h.verdict != Verdict::Drain {
        return Health::Passing {
            verdict: verdict.to_string(),
        };
    }
    let failing: Vec<String> = h
        .results
        .iter()
        // observe-only (enforce = false) failures are "would drain", not failing
        .filter(|r| r.drains())
        .map(|r| {
            let gpu = r.gpu.map(|g| format!(" gpu{g}")).unwrap_or_default();
            format!("{}{gpu}: {}", r.check, r.message)
        })
        .collect();
    if let (true, Some(reason)) = (failing.is_empty(), &h.would_drain) {
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

/// Each active check in a `/status` document: its newest result (`matmul: fail at
/// 2026-12-04T10:27:13Z`), and its job running or why a due run waits; `-` when it lists
/// none. A healthd without `active` in `/status` gives the results only.
pub fn active(status: &StatusDoc) -> String {
    if let Some(list) = status.active.as_ref().filter(|l| !l.is_empty()) {
        return list
            .iter()
            .map(|a| {
                let mut t = match (&a.outcome, a.finished_at_ms) {
                    (Some(o), Some(ms)) => format!("{}: {o} at {}", a.name, super::utc(ms)),
                    _ => format!("{}: not run yet", a.name),
                };
                if let Some(j) = a.job_in_flight {
                    t.push_str(&format!(", job {j} in flight"));
                } else if let Some(w) = &a.waiting {
                    t.push_str(&format!(", due, waiting: {w}"));
                }
                t
            })
            .collect::<Vec<_>>()
            .join("; ");
    }
    let Some(h) = &status.health else {
        return "-".into();
    };
    let list: Vec<String> = h
        .results
        .iter()
        .filter_map(|r| {
            let name = r.check.strip_prefix(sgpu_nodelib::active::CHECK_PREFIX)?;
            let when = r.observed.split(" (").next().unwrap_or(&r.observed);
            Some(format!("{name}: {when}"))
        })
        .collect();
    if list.is_empty() {
        "-".into()
    } else {
        list.join("; ")
    }
}

/// `open (why)` or `closed`, from a `/status` document.
pub fn breaker(status: &StatusDoc) -> String {
    let b = &status.breaker;
    if b.open {
        let trip = b
            .trip
            .as_ref()
            .map(|t| {
                format!(
                    " ({}: {} of {} nodes held drained by sgpu, limit {})",
                    t.scope, t.drained, t.total, t.limit
                )
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
    use serde_json::{Value, json};

    /// A whole `/status` document with `part`'s fields in place of the defaults.
    fn doc(part: Value) -> StatusDoc {
        let mut d = json!({"version": 1, "node": "n1", "healthd_version": "0.1.0",
            "now_ms": 1, "started_at_ms": 0, "health": null, "drained": null,
            "breaker": {"open": false, "trip": null, "refusals_total": 0},
            "sampling": {"interval_s": 10, "last_sample_ms": null, "last_duration_ms": null,
                         "error": null, "samples_total": 0, "jobs_finalised_total": 0},
            "gpus": [], "jobs": []});
        if let (Some(d), Value::Object(p)) = (d.as_object_mut(), part) {
            for (k, mut v) in p {
                // the tests give only what they look at: fill in the rest of each part
                if let Some(h) = v.as_object_mut().filter(|_| k == "health") {
                    h.entry("checked_at_ms").or_insert(json!(1));
                    h.entry("trigger").or_insert(json!("periodic"));
                    h.entry("decision").or_insert(json!("healthy"));
                    h.entry("decision_detail").or_insert(Value::Null);
                    h.entry("would_drain").or_insert(Value::Null);
                    for r in h["results"].as_array_mut().into_iter().flatten() {
                        if let Some(r) = r.as_object_mut() {
                            r.entry("uuid").or_insert(Value::Null);
                            r.entry("observed").or_insert(json!(""));
                            r.entry("threshold").or_insert(json!(""));
                            r.entry("enforced").or_insert(json!(true));
                        }
                    }
                }
                if let Some(b) = v.as_object_mut().filter(|_| k == "breaker") {
                    b.entry("trip").or_insert(Value::Null);
                    b.entry("refusals_total").or_insert(json!(0));
                }
                d.insert(k, v);
            }
        }
        serde_json::from_value(d).expect("a /status document")
    }

    #[test]
    fn urls_per_node_template_and_default() -> Result<(), HealthdSpecError> {
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
        assert_eq!(health(&doc(json!({"health": null}))), Health::NotChecked);
        // observe-only: the verdict is drain, nothing enforced fails
        let observing = doc(json!({"health": {"verdict": "drain",
            "would_drain": "sgpu: gpu.lost gpu1: GPU lost (fallen off the bus)",
            "results": [{"check": "gpu.lost", "gpu": 1, "status": "fail", "severity": "drain",
                         "enforced": false, "message": "GPU lost (fallen off the bus)"}]}}));
        assert_eq!(
            health(&observing),
            Health::Passing {
                verdict: "would drain: sgpu: gpu.lost gpu1: GPU lost (fallen off the bus)".into()
            }
        );
        assert_eq!(
            health(&doc(json!({"health": {"verdict": "warn", "results": []}}))),
            Health::Passing {
                verdict: "warn".into()
            }
        );
        let failing = doc(json!({"health": {"verdict": "drain", "results": [
            {"check": "gpu.xid", "gpu": 1, "status": "fail", "severity": "drain", "message": "XID 79"},
            {"check": "gpu.temp", "gpu": 0, "status": "pass", "severity": "drain", "message": "ok"},
        ]}, "breaker": {"open": true, "trip": {"scope": "cluster", "drained": 1, "total": 2, "limit": 1}}}));
        assert_eq!(
            health(&failing),
            Health::Failing(vec!["gpu.xid gpu1: XID 79".into()])
        );
        assert_eq!(
            breaker(&failing),
            "open (cluster: 1 of 2 nodes held drained by sgpu, limit 1)"
        );
        assert_eq!(breaker(&doc(json!({"breaker": {"open": false}}))), "closed");
    }

    #[test]
    fn active_checks_from_status() {
        assert_eq!(active(&doc(json!({"health": null}))), "-");
        assert_eq!(
            active(&doc(
                json!({"health": {"verdict": "healthy", "results": []}})
            )),
            "-"
        );
        let d = doc(json!({"health": {"verdict": "drain", "results": [
            {"check": "gpu.xid", "gpu": 1, "status": "pass", "severity": "drain", "message": "ok"},
            {"check": "active.matmul", "gpu": null, "status": "fail", "severity": "drain",
             "observed": "fail at 2026-12-04T10:27:13Z (job 2, 2.0 s)",
             "message": "exit 1: matmul 12.5 TFLOPS on gpu0, expected at least 600"},
            {"check": "active.dcgm-r2", "gpu": null, "status": "pass", "severity": "drain",
             "observed": "pass at 2026-12-03T22:01:40Z (job 7, 131.2 s)", "message": "ok"},
        ]}}));
        assert_eq!(
            active(&d),
            "matmul: fail at 2026-12-04T10:27:13Z; dcgm-r2: pass at 2026-12-03T22:01:40Z"
        );
        // a healthd with the active checks' standing
        let d = doc(json!({"active": [
            {"name": "matmul", "outcome": "pass", "message": "ok", "finished_at_ms": 1_764_844_033_000_u64,
             "duration_ms": 2000, "job_id": 2, "job_in_flight": null, "due_at_ms": 1_764_844_100_000_u64,
             "waiting": "the node is MIXED, not IDLE"},
            {"name": "dcgm-r2", "job_in_flight": 9},
        ]}));
        assert_eq!(
            active(&d),
            "matmul: pass at 2025-12-04T10:27:13Z, due, waiting: the node is MIXED, not IDLE; \
             dcgm-r2: not run yet, job 9 in flight"
        );
    }
}
