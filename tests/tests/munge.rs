//! MUNGE authentication of the real `sgpu-acctd` binary (issue 6 §2, §5): the system munged
//! that the test cluster uses, credentials made by root (the client crate) and by other
//! users' processes (`munge` run under `setpriv` as that user, or as the SlurmUser).

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sgpu_acct_client::{Client, ClientAuth};
use sgpu_spool::{GpuEnd, JobEnd, Record, RecordBody, RecordId, RecordKind};
use sgpu_tests::Cluster;
use sgpu_tests::acctd::Acctd;

const A: &str = "sgpu-test-a";
const B: &str = "sgpu-test-b";
const HOUR: u64 = 3_600_000;
const D: u64 = 19_783 * 86_400_000; // 2024-03-01

/// `(uid, gid)` of an existing user (`tests/cluster/up` creates the test users).
fn ids(user: &str) -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, user]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no user {user}: tests/cluster/up creates it"))
    };
    (id("-u"), id("-g"))
}

/// A credential for `payload` made by a process running as `user` (the `munge` CLI).
fn cred_as(user: &str, payload: &str) -> String {
    let (uid, gid) = ids(user);
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--init-groups",
            "munge",
            "--string",
            payload,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "munge as {user}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `method path` to acctd with `Authorization: MUNGE <cred>`: (status, JSON body).
fn send(acctd: &Acctd, method: &str, path: &str, cred: &str, body: &[u8]) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let url = format!("{}{path}", acctd.url());
    let authz = format!("MUNGE {cred}");
    let resp = if method == "GET" {
        agent.get(&url).header("Authorization", &authz).call()
    } else {
        agent
            .post(&url)
            .header("Authorization", &authz)
            .header("Content-Type", "application/json")
            .send(body)
    };
    let mut resp = resp.unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `method path` as `user`, with a credential made for exactly this request.
fn send_as(acctd: &Acctd, user: &str, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let cred = cred_as(user, &sgpu_munge::request::payload(method, path, body));
    send(acctd, method, path, &cred, body)
}

fn job_end(job: u32, user: &str, hours: u64) -> Record {
    let (uid, _) = ids(user);
    let body = JobEnd {
        user: user.into(),
        uid,
        account: Some("physics".into()),
        partition: Some("gpu".into()),
        start_time: D + HOUR,
        end_time: D + HOUR + hours * HOUR,
        gpus: vec![GpuEnd {
            index: 0,
            uuid: "GPU-node1-0".into(),
            name: Some("NVIDIA H100 80GB HBM3".into()),
            energy_start_mj: Some(0),
            energy_end_mj: Some(1000),
            energy_delta_mj: Some(1000),
            mig: None,
        }],
        allocated_gpu_ms: hours * HOUR,
        exit: None,
        slurm_window: None,
    };
    let id = RecordId::new("sgpu-test", job, None, "node1", RecordKind::JobEnd).unwrap();
    Record::new(id, D + HOUR + hours * HOUR, RecordBody::JobEnd(body)).unwrap()
}

#[test]
fn acctd_with_munge_lets_each_caller_do_only_what_it_may() {
    // The cluster brings up munged and the test users; acctd itself needs no lock, but the
    // cluster's munged must not be restarted under us.
    let cluster = Cluster::up().unwrap();
    let _lock = cluster.lock_shared().unwrap();
    let mut acctd = Acctd::start(&["--auth", "munge", "--ingest-uid", "slurm"]).unwrap();
    let batch = serde_json::to_vec(&[job_end(101, A, 2), job_end(102, B, 1)]).unwrap();

    // Root, through the client crate: ingest and read everything.
    let root = Client::new(
        &acctd.url(),
        ClientAuth::Munge { socket: None },
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(root.post_records(&batch).unwrap().accepted, 2);

    // The SlurmUser may send records (here: a resend, acknowledged as duplicates).
    let (st, v) = send_as(&acctd, "slurm", "POST", "/v1/records", &batch);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["duplicate"], 2, "{v}");

    // A plain user may not.
    let (st, v) = send_as(&acctd, A, "POST", "/v1/records", &batch);
    assert_eq!(st, 403, "{v}");

    // A sees A's job and totals only; B's job does not exist for A.
    let q = "/v1/report?start=2024-03-01&end=2024-03-02&group_by=user";
    let (st, v) = send_as(&acctd, A, "GET", q, b"");
    assert_eq!(st, 200, "{v}");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(
        (
            rows[0]["user"].as_str(),
            rows[0]["allocated_gpu_ms"].as_u64()
        ),
        (Some(A), Some(2 * HOUR))
    );
    let (st, _) = send_as(&acctd, A, "GET", "/v1/jobs/sgpu-test/101", b"");
    assert_eq!(st, 200);
    let (st, _) = send_as(&acctd, A, "GET", "/v1/jobs/sgpu-test/102", b"");
    assert_eq!(st, 404);
    let v = root.get_json(q).unwrap();
    assert_eq!(
        v["rows"].as_array().unwrap().len(),
        2,
        "root sees both: {v}"
    );

    // munged keeps its replay cache: a credential used once is refused even after acctd
    // restarts.
    let path = "/v1/jobs/sgpu-test/102";
    let cred = cred_as(B, &sgpu_munge::request::payload("GET", path, b""));
    assert_eq!(send(&acctd, "GET", path, &cred, b"").0, 200);
    acctd.restart().unwrap();
    let (st, v) = send(&acctd, "GET", path, &cred, b"");
    assert_eq!(st, 401, "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("replayed"),
        "{v}"
    );
    // Stored records survived the restart and a fresh credential works.
    let (st, _) = send_as(&acctd, B, "GET", path, b"");
    assert_eq!(st, 200);
}

#[test]
fn acctd_without_authentication_stays_on_loopback() {
    let cluster = Cluster::up().unwrap();
    let _lock = cluster.lock_shared().unwrap();
    // Builds the binary; its path is next to this test's deps directory.
    let acctd = Acctd::start(&["--auth", "none"]).unwrap();
    let bin = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("sgpu-acctd");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&bin)
        .args(["--auth", "none", "--listen", "0.0.0.0:0", "--db"])
        .arg(dir.path().join("db"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("loopback") && err.contains("--auth munge"),
        "{err}"
    );

    // With --auth none on loopback every caller may do everything (no credential needed).
    let none = Client::new(&acctd.url(), ClientAuth::None, Duration::from_secs(30)).unwrap();
    let batch = serde_json::to_vec(&[job_end(201, A, 1)]).unwrap();
    assert_eq!(none.post_records(&batch).unwrap().accepted, 1);

    // With MUNGE, a non-loopback address is allowed.
    let mut child = Command::new(&bin)
        .args(["--auth", "munge", "--listen", "0.0.0.0:0", "--db"])
        .arg(dir.path().join("db2"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        first.starts_with("sgpu-acctd listening on 0.0.0.0:"),
        "{first}"
    );

    // A user name that does not resolve is a start-up error naming the flag.
    let out = Command::new(&bin)
        .args(["--ingest-uid", "no-such-user-sgpu", "--db"])
        .arg(dir.path().join("db3"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ingest-uid no-such-user-sgpu"), "{err}");
}
