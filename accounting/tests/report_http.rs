//! `GET /v1/report` and `GET /v1/jobs` over HTTP, in process: windows cut mid-day, grouping
//! by period, job lists, and refused queries that name their parameter.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use serde_json::Value;
use sgpu_accounting::auth::{NoAuthentication, Policy};

fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (st, body) = request(addr, "GET", path, b"").unwrap();
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
    (st, v)
}

#[test]
fn reports_and_job_lists_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let addr = serve_in(
        dir.path(),
        Arc::new(NoAuthentication),
        Policy::default(),
        1 << 20,
    );
    let d = 19_783 * DAY; // 2024-03-01
    // physics: 22:00 on 03-01 to 02:00 on 03-02, 2 GPUs, 4 000 mJ each.
    let a = job_end(
        "alpha",
        1,
        "n1",
        "physics",
        "alice",
        d + 22 * HOUR,
        d + 26 * HOUR,
        &[4_000, 4_000],
    );
    // chem: 10:00 to 11:00 on 03-02, 1 GPU.
    let b = job_end(
        "alpha",
        2,
        "n2",
        "chem",
        "bob",
        d + 34 * HOUR,
        d + 35 * HOUR,
        &[900],
    );
    let (st, body) = request(addr, "POST", "/v1/records", &batch(&[a, b])).unwrap();
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));

    let secs = |ms: u64| ms / 1000;
    // Whole days, by account and day: the straddling job is split at midnight.
    let (st, v) = get(
        addr,
        "/v1/report?start=2024-03-01&end=2024-03-03&group_by=account,day",
    );
    assert_eq!(st, 200, "{v}");
    let rows: Vec<(String, String, u64, u64)> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["period"].as_str().unwrap().to_string(),
                r["account"].as_str().unwrap().to_string(),
                r["allocated_gpu_ms"].as_u64().unwrap(),
                r["energy_mj"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("2024-03-01".into(), "physics".into(), 2 * 2 * HOUR, 4_000),
            ("2024-03-02".into(), "chem".into(), HOUR, 900),
            ("2024-03-02".into(), "physics".into(), 2 * 2 * HOUR, 4_000),
        ]
    );
    // 23:00 to 01:00: a quarter-to-half of the physics job, no job ended inside.
    let (st, v) = get(
        addr,
        &format!(
            "/v1/report?start={}&end={}&group_by=account",
            secs(d + 23 * HOUR),
            secs(d + 25 * HOUR)
        ),
    );
    assert_eq!(st, 200, "{v}");
    let r = &v["rows"][0];
    assert_eq!(r["account"], "physics");
    assert_eq!(r["allocated_gpu_ms"].as_u64(), Some(2 * 2 * HOUR));
    assert_eq!(r["energy_mj"].as_u64(), Some(4_000));
    assert_eq!(r["jobs"].as_u64(), Some(0));
    assert_eq!(v["rows"].as_array().unwrap().len(), 1, "{v}");

    // Jobs in a window: whole-job figures; filters are sets.
    let (st, v) = get(
        addr,
        &format!(
            "/v1/jobs?start={}&end={}&account=chem,nobody",
            secs(d),
            secs(d + 2 * DAY)
        ),
    );
    assert_eq!(st, 200, "{v}");
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{v}");
    assert_eq!(jobs[0]["job_id"], 2);
    assert_eq!(jobs[0]["nodes"][0], "n2");
    assert_eq!(v["truncated"], false);

    // Refused queries name the parameter.
    for (path, param) in [
        ("/v1/report?end=2024-03-03", "start"),
        ("/v1/report?start=2024-03-03&end=2024-03-01", "end"),
        (
            "/v1/report?start=2024-03-01&end=2024-03-03&group_by=colour",
            "group_by",
        ),
        ("/v1/report?start=2024-03-01&end=2024-03-03&jobs=1", "jobs"),
        ("/v1/jobs?start=2024-03-01&end=2024-03-03&jobs=x", "jobs"),
        (
            "/v1/jobs?start=2024-03-01&end=2024-03-03&colour=red",
            "colour",
        ),
    ] {
        let (st, v) = get(addr, path);
        assert_eq!(st, 400, "{path}: {v}");
        let e = v["error"].as_str().unwrap();
        assert!(e.starts_with(param), "{path}: {e}");
    }
}
