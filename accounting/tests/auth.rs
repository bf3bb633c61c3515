//! MUNGE authentication and the authorisation policy, with the real munged: the acctd router
//! in process with [`MungeAuthenticator`], credentials made by root (libmunge) and by other
//! users (the `munge` CLI run under `setpriv`). Needs root and a running munged (the test
//! cluster's `tests/cluster/up` starts it).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;
use sgpu_accounting::auth::{MungeAuthenticator, Policy};
use sgpu_acct_client::{Client, ClientAuth, ClientError};

const A: &str = "sgpu-test-a";
const B: &str = "sgpu-test-b";
const ADMIN: &str = "sgpu-test-admin";

/// The uid and gid of user `name`, created (system user, own group) if absent.
fn ensure_user(name: &str) -> (u32, u32) {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, name]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    // Another test may create a user at the same moment (useradd locks /etc/passwd and
    // fails when it cannot): try a few times, checking in between.
    for _ in 0..50 {
        if id("-u").is_some() {
            break;
        }
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/bin/sh",
                name,
            ])
            .status();
        if id("-u").is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let uid = id("-u").unwrap_or_else(|| panic!("cannot create test user {name} (run as root)"));
    (uid, id("-g").unwrap())
}

/// A credential for `payload` encoded by munged for `uid`/`gid` (the `munge` CLI run as
/// that user), with time-to-live `ttl` seconds if given.
fn cred_as(uid: u32, gid: u32, payload: &str, ttl: Option<u32>) -> String {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={uid}"),
        &format!("--regid={gid}"),
        "--clear-groups",
        "munge",
        "--string",
        payload,
    ]);
    if let Some(t) = ttl {
        cmd.arg(format!("--ttl={t}"));
    }
    let out = cmd.output().expect("running setpriv munge");
    assert!(
        out.status.success(),
        "munge as uid {uid} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A credential for `payload` made by this process (root).
fn cred_root(payload: &str) -> String {
    sgpu_munge::encode(payload.as_bytes(), &sgpu_munge::Options::default())
        .expect("munged must run (tests/cluster/up starts it)")
}

struct Server {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

fn serve(policy: Policy, socket: Option<PathBuf>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let addr = serve_in(
        dir.path(),
        Arc::new(MungeAuthenticator::new(socket)),
        policy,
        1 << 20,
    );
    Server { addr, _dir: dir }
}

/// `method path` with `Authorization: <authz>` (if any): (status, body as JSON).
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    authz: Option<&str>,
    body: &[u8],
) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let resp = if method == "GET" {
        let mut r = agent.get(&url);
        if let Some(a) = authz {
            r = r.header("Authorization", a);
        }
        r.call()
    } else {
        let mut r = agent.post(&url).header("Content-Type", "application/json");
        if let Some(a) = authz {
            r = r.header("Authorization", a);
        }
        r.send(body)
    };
    let mut resp = resp.unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `method path` with a fresh credential for exactly this request made as root.
fn call_root(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let authz = format!(
        "MUNGE {}",
        cred_root(&sgpu_munge::request::payload(method, path, body))
    );
    call(addr, method, path, Some(&authz), body)
}

/// `method path` with a fresh credential for exactly this request made as `uid`/`gid`.
fn call_as(
    addr: SocketAddr,
    (uid, gid): (u32, u32),
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, Value) {
    let authz = format!(
        "MUNGE {}",
        cred_as(
            uid,
            gid,
            &sgpu_munge::request::payload(method, path, body),
            None
        )
    );
    call(addr, method, path, Some(&authz), body)
}

fn error_of(v: &Value) -> String {
    v["error"].as_str().unwrap_or_default().to_owned()
}

const D: u64 = 19_783 * DAY; // 2024-03-01

/// `GET /v1/report` over the whole UTC day 2024-03-01 (both users' jobs), ungrouped.
const REPORT: &str = "/v1/report?start=2024-03-01&end=2024-03-02";

/// Job 1 of user A and job 2 of user B on cluster "alpha", both on 2024-03-01.
fn two_users_batch() -> Vec<u8> {
    batch(&[
        job_end(
            "alpha",
            1,
            "n1",
            "physics",
            A,
            D + HOUR,
            D + 3 * HOUR,
            &[100],
        ),
        job_end("alpha", 2, "n1", "chem", B, D + HOUR, D + 2 * HOUR, &[50]),
    ])
}

fn slurm_user() -> (u32, u32) {
    let uid = sgpu_accounting::auth::user_id("slurm").expect("the slurm user (slurm-wlm package)");
    let gid = sgpu_accounting::auth::group_id("slurm").expect("the slurm group");
    (uid, gid)
}

#[test]
fn only_root_and_the_slurm_user_ingest() {
    let a = ensure_user(A);
    let slurm = slurm_user();
    let s = serve(
        Policy {
            ingest_uids: vec![slurm.0],
            ..Policy::default()
        },
        None,
    );
    let body = two_users_batch();

    let (st, v) = call_as(s.addr, a, "POST", "/v1/records", &body);
    assert_eq!(st, 403, "{v}");
    assert!(error_of(&v).contains("may not send records"), "{v}");

    let (st, v) = call_root(s.addr, "POST", "/v1/records", &body);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["accepted"], 2);

    let (st, v) = call_as(s.addr, slurm, "POST", "/v1/records", &body);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["duplicate"], 2, "{v}");
}

#[test]
fn users_see_only_their_own_jobs_and_totals_admins_everything() {
    let a = ensure_user(A);
    let b = ensure_user(B);
    let admin = ensure_user(ADMIN);
    let s = serve(
        Policy {
            admin_gids: vec![admin.1],
            ..Policy::default()
        },
        None,
    );
    let (st, v) = call_root(s.addr, "POST", "/v1/records", &two_users_batch());
    assert_eq!(st, 200, "{v}");

    // A reads A's job, not B's: B's looks exactly like a missing one.
    let (st, v) = call_as(s.addr, a, "GET", "/v1/jobs/alpha/1", b"");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["records"][0]["body"]["user"], A, "{v}");
    let (st, v) = call_as(s.addr, a, "GET", "/v1/jobs/alpha/2", b"");
    assert_eq!(st, 404, "{v}");
    let (st, _) = call_as(s.addr, b, "GET", "/v1/jobs/alpha/2", b"");
    assert_eq!(st, 200);

    // A's totals are A's rows only, whatever the grouping; asking for B's is refused.
    let q = &format!("{REPORT}&group_by=user");
    let (st, v) = call_as(s.addr, a, "GET", q, b"");
    assert_eq!(st, 200, "{v}");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(rows[0]["user"], A);
    assert_eq!(rows[0]["allocated_gpu_ms"], 2 * HOUR);
    let (st, v) = call_as(s.addr, a, "GET", REPORT, b"");
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["rows"][0]["allocated_gpu_ms"],
        2 * HOUR,
        "ungrouped: A's total only"
    );
    let (st, v) = call_as(s.addr, a, "GET", &format!("{REPORT}&user={B}"), b"");
    assert_eq!(st, 403, "{v}");

    // An admin (primary group in admin_gids) and root see both users.
    for (st, v) in [
        call_as(s.addr, admin, "GET", q, b""),
        call_root(s.addr, "GET", q, b""),
    ] {
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["rows"].as_array().unwrap().len(), 2, "{v}");
    }
    let (st, _) = call_as(s.addr, admin, "GET", "/v1/jobs/alpha/2", b"");
    assert_eq!(st, 200);

    // The efficiency answer (`sgpu seff`) follows the same rule.
    let (st, v) = call_as(s.addr, a, "GET", "/v1/jobs/alpha/1/efficiency", b"");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["user"], A, "{v}");
    let (st, v) = call_as(s.addr, a, "GET", "/v1/jobs/alpha/2/efficiency", b"");
    assert_eq!(st, 404, "{v}");
    assert!(error_of(&v).contains("no records of job 2"), "{v}");
    for who in [b, admin] {
        let (st, v) = call_as(s.addr, who, "GET", "/v1/jobs/alpha/2/efficiency", b"");
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["user"], B, "{v}");
    }

    // The conflicts list is for admins: it shows every user's records.
    let (st, v) = call_as(s.addr, a, "GET", "/v1/conflicts", b"");
    assert_eq!(st, 403, "{v}");
    let (st, v) = call_as(s.addr, admin, "GET", "/v1/conflicts", b"");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["conflicts"].as_array().map(Vec::len), Some(0), "{v}");
}

#[test]
fn bad_credentials_are_refused_with_401() {
    let a = ensure_user(A);
    let s = serve(Policy::default(), None);
    let path = REPORT;

    // Missing header: 401 that says to use MUNGE.
    let (st, v) = call(s.addr, "GET", path, None, b"");
    assert_eq!(st, 401, "{v}");
    assert!(error_of(&v).contains("MUNGE"), "{v}");

    // Wrong scheme, garbage, a tampered credential.
    let (st, _) = call(s.addr, "GET", path, Some("Bearer x"), b"");
    assert_eq!(st, 401);
    let (st, v) = call(s.addr, "GET", path, Some("MUNGE not-a-credential"), b"");
    assert_eq!(st, 401, "{v}");
    assert!(error_of(&v).contains("invalid"), "{v}");
    let get = |p: &str| sgpu_munge::request::payload("GET", p, b"");
    let good = cred_as(a.0, a.1, &get(path), None);
    let mut forged = good.clone().into_bytes();
    let i = forged.len() / 2;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let (st, v) = call(s.addr, "GET", path, Some(&format!("MUNGE {forged}")), b"");
    assert_eq!(st, 401, "{v}");

    // The same credential twice: the second use is a replay.
    let (st, v) = call(s.addr, "GET", path, Some(&format!("MUNGE {good}")), b"");
    assert_eq!(st, 200, "{v}");
    let (st, v) = call(s.addr, "GET", path, Some(&format!("MUNGE {good}")), b"");
    assert_eq!(st, 401, "{v}");
    assert!(error_of(&v).contains("replayed"), "{v}");

    // A credential made for another request (path, query or method) is refused unused.
    let (made_for_path, other_query) = (format!("GET {path}"), format!("{path}&user=x"));
    for (made_for, method, used_on) in [
        ("GET /v1/jobs/alpha/1", "GET", path),
        (made_for_path.as_str(), "GET", other_query.as_str()),
        ("GET /v1/records", "POST", "/v1/records"),
    ] {
        let (m, p) = made_for.split_once(' ').unwrap();
        let c = cred_as(a.0, a.1, &sgpu_munge::request::payload(m, p, b"[]"), None);
        let (st, v) = call(s.addr, method, used_on, Some(&format!("MUNGE {c}")), b"[]");
        assert_eq!(st, 401, "{made_for} used on {method} {used_on}: {v}");
        assert!(error_of(&v).contains("was made for"), "{v}");
    }

    // A credential without the body digest (the form before it existed) is refused too.
    let c = cred_as(a.0, a.1, &format!("GET {path}"), None);
    let (st, v) = call(s.addr, "GET", path, Some(&format!("MUNGE {c}")), b"");
    assert_eq!(st, 401, "{v}");

    // A body swapped on the way: the credential names another body's digest.
    let made = cred_root(&sgpu_munge::request::payload("POST", "/v1/records", b"[]"));
    let (st, v) = call(
        s.addr,
        "POST",
        "/v1/records",
        Some(&format!("MUNGE {made}")),
        &two_users_batch(),
    );
    assert_eq!(st, 401, "{v}");
    assert!(error_of(&v).contains("sha256"), "{v}");

    // Expired: munged refuses a credential once its time-to-live has passed (munge 0.5.15
    // gives expiry no clock-skew allowance: a 1 s credential is refused 2 s later).
    let short = cred_as(a.0, a.1, &get(path), Some(1));
    std::thread::sleep(Duration::from_millis(3000));
    let (st, v) = call(s.addr, "GET", path, Some(&format!("MUNGE {short}")), b"");
    assert_eq!(st, 401, "{v}");
    assert!(error_of(&v).contains("expired"), "{v}");
}

#[test]
fn munged_unreachable_is_503_saying_to_check_munged() {
    let s = serve(
        Policy::default(),
        Some(PathBuf::from("/nonexistent/munge.socket.2")),
    );
    let authz = format!("MUNGE {}", cred_root(&format!("GET {REPORT}")));
    let (st, v) = call(s.addr, "GET", REPORT, Some(&authz), b"");
    assert_eq!(st, 503, "{v}");
    assert!(error_of(&v).contains("munged"), "{v}");
}

#[test]
fn the_client_crate_authenticates_with_munge_end_to_end() {
    let s = serve(Policy::default(), None);
    let munge = ClientAuth::Munge { socket: None };
    let c = Client::new(
        &format!("http://{}", s.addr),
        munge,
        Duration::from_secs(30),
    )
    .unwrap();
    let r = c.post_records(&two_users_batch()).unwrap();
    assert_eq!(r.accepted, 2);
    // Each request gets its own credential: repeated calls are not replays.
    for _ in 0..3 {
        let v = c.get_json(&format!("{REPORT}&group_by=user")).unwrap();
        assert_eq!(v["rows"].as_array().unwrap().len(), 2, "{v}");
    }
    let job = c.get_json("/v1/jobs/alpha/2").unwrap();
    assert_eq!(job["job_id"], 2);

    // Without a credential the same server refuses the client.
    let none = Client::new(
        &format!("http://{}", s.addr),
        ClientAuth::None,
        Duration::from_secs(30),
    )
    .unwrap();
    match none.get_json(REPORT) {
        Err(ClientError::Http {
            status: 401,
            message,
        }) => assert!(message.contains("MUNGE"), "{message}"),
        other => panic!("{other:?}"),
    }
    // No munged at the given socket: a credential error, before anything is sent.
    let bad = Client::new(
        &format!("http://{}", s.addr),
        ClientAuth::Munge {
            socket: Some(PathBuf::from("/nonexistent/munge.socket.2")),
        },
        Duration::from_secs(30),
    )
    .unwrap();
    match bad.get_json(REPORT) {
        Err(ClientError::Credential(m)) => assert!(m.contains("munged"), "{m}"),
        other => panic!("{other:?}"),
    }
}
