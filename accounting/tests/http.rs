//! The HTTP API on a loopback port, in process.

mod common;

use std::sync::Arc;

use common::*;
use serde_json::{Value, json};
use sgpu_accounting::auth::{NoAuthentication, Policy};

fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(b)))
}

#[test]
fn ingest_query_and_errors_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let addr = serve_in(
        dir.path(),
        Arc::new(NoAuthentication),
        Policy::default(),
        64 * 1024,
    );
    let d = 19_783 * DAY; // 2024-03-01
    let a = job_end(
        "alpha",
        1,
        "n1",
        "physics",
        "alice",
        d + HOUR,
        d + 3 * HOUR,
        &[100, 100],
    );
    let b = job_end(
        "alpha",
        2,
        "n1",
        "chem",
        "bob",
        d + 23 * HOUR,
        d + 25 * HOUR,
        &[60],
    );
    let u = job_usage(
        "alpha",
        1,
        "n1",
        "physics",
        "alice",
        d + HOUR,
        d + 3 * HOUR,
        &[HOUR, HOUR / 2],
    );

    let (st, body) = request(addr, "POST", "/v1/records", &batch(&[a.clone(), b.clone()])).unwrap();
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let r = json_of(&body);
    assert_eq!(
        (r["accepted"].as_u64(), r["duplicate"].as_u64()),
        (Some(2), Some(0))
    );

    // Resend with one new and one bad record: 422, good ones stored, bad one named.
    let mut bad: Value = serde_json::from_slice(&a.to_json().unwrap()).unwrap();
    bad["id"]["job_id"] = json!(3);
    bad["body"]["end_time"] = json!(0);
    let mixed = json!([a, u, bad]);
    let (st, body) = request(
        addr,
        "POST",
        "/v1/records",
        &serde_json::to_vec(&mixed).unwrap(),
    )
    .unwrap();
    assert_eq!(st, 422);
    let r = json_of(&body);
    assert_eq!(r["results"][0]["status"], "duplicate");
    assert_eq!(r["results"][1]["status"], "accepted");
    assert_eq!(r["results"][2]["status"], "rejected");
    assert_eq!(r["results"][2]["key"], "alpha,3,,n1,job_end");
    assert_eq!(r["results"][2]["field"], "body.end_time");

    // A different record under a stored identity: a conflict, kept, not counted; the
    // same conflict again is still a conflict (the forwarder moves it aside either way).
    let mut changed: Value = serde_json::from_slice(&b.to_json().unwrap()).unwrap();
    changed["body"]["user"] = json!("mallory");
    let conflicting = serde_json::to_vec(&json!([changed])).unwrap();
    for _ in 0..2 {
        let (st, body) = request(addr, "POST", "/v1/records", &conflicting).unwrap();
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
        let r = json_of(&body);
        assert_eq!(r["conflict"], 1, "{r}");
        assert_eq!(r["results"][0]["status"], "conflict", "{r}");
        assert_eq!(r["results"][0]["differs"], true, "{r}");
        assert!(
            r["results"][0]["error"]
                .as_str()
                .unwrap()
                .contains("/v1/conflicts"),
            "{r}"
        );
    }
    let (st, body) = request(addr, "GET", "/v1/conflicts", b"").unwrap();
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let c = json_of(&body);
    assert_eq!(c["conflicts"].as_array().map(Vec::len), Some(1), "{c}");
    assert_eq!(c["conflicts"][0]["key"], "alpha,2,,n1,job_end", "{c}");
    assert_eq!(
        c["conflicts"][0]["record"]["body"]["user"], "mallory",
        "{c}"
    );
    assert_eq!(c["conflicts"][0]["stored"]["body"]["user"], "bob", "{c}");

    // Malformed JSON: 400 with a message.
    let (st, body) = request(addr, "POST", "/v1/records", b"[{").unwrap();
    assert_eq!(st, 400);
    assert!(
        json_of(&body)["error"]
            .as_str()
            .unwrap()
            .contains("JSON array")
    );

    // Oversized: 413.
    let big = vec![b' '; 128 * 1024];
    let (st, _) = request(addr, "POST", "/v1/records", &big).unwrap();
    assert_eq!(st, 413);

    // Job query.
    let (st, body) = request(addr, "GET", "/v1/jobs/alpha/1", b"").unwrap();
    assert_eq!(st, 200);
    assert_eq!(json_of(&body)["records"].as_array().unwrap().len(), 2);
    assert_eq!(
        request(addr, "GET", "/v1/jobs/alpha/9", b"").unwrap().0,
        404
    );
    assert_eq!(
        request(addr, "GET", "/v1/jobs/alpha/x", b"").unwrap().0,
        400
    );

    // Report per account and day: job 2 straddles midnight (1 h each side).
    let (st, body) = request(
        addr,
        "GET",
        "/v1/report?start=2024-03-01&end=2024-03-03&group_by=account,day",
        b"",
    )
    .unwrap();
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let rows = json_of(&body)["rows"].clone();
    assert_eq!(
        rows,
        json!([
            {"period": "2024-03-01", "account": "chem", "allocated_gpu_ms": HOUR, "used_gpu_ms": 0, "energy_mj": 30, "jobs": 0, "slice_ms": 0, "used_measured_gpu_ms": HOUR},
            {"period": "2024-03-01", "account": "physics", "allocated_gpu_ms": 4 * HOUR, "used_gpu_ms": HOUR + HOUR / 2, "energy_mj": 200, "jobs": 1, "slice_ms": 0, "used_measured_gpu_ms": 4 * HOUR},
            {"period": "2024-03-02", "account": "chem", "allocated_gpu_ms": HOUR, "used_gpu_ms": 0, "energy_mj": 30, "jobs": 1, "slice_ms": 0, "used_measured_gpu_ms": HOUR},
        ])
    );
    // Filter and window.
    let (_, body) = request(
        addr,
        "GET",
        "/v1/report?start=2024-03-02&end=2024-03-03&user=bob",
        b"",
    )
    .unwrap();
    assert_eq!(json_of(&body)["rows"][0]["allocated_gpu_ms"], HOUR);
    let (st, body) = request(addr, "GET", "/v1/report?start=March&end=2024-03-03", b"").unwrap();
    assert_eq!(st, 400);
    assert!(
        json_of(&body)["error"]
            .as_str()
            .unwrap()
            .starts_with("start:")
    );

    // The retired whole-day endpoint is gone: axum's 404.
    assert_eq!(
        request(addr, "GET", "/v1/rollups?start=2024-03-01", b"")
            .unwrap()
            .0,
        404
    );
}
