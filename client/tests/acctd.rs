//! The client against a real acctd router (sled store, loopback port) in process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sgpu_accounting::auth::{NoAuthentication, Policy};
use sgpu_accounting::http::{AppState, router};
use sgpu_accounting::sled_store::SledStore;
use sgpu_acct_client::{Client, ClientAuth, ClientError, RecordStatus};
use sgpu_spool::{GpuEnd, JobEnd, Record, RecordBody, RecordId, RecordKind};

const DAY: u64 = 86_400_000;
const HOUR: u64 = 3_600_000;

fn serve(dir: &std::path::Path) -> SocketAddr {
    let store = Arc::new(SledStore::open(&dir.join("db")).unwrap());
    let state = AppState {
        store,
        auth: Arc::new(NoAuthentication),
        policy: Arc::new(Policy::default()),
        site: Default::default(),
    };
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            axum::serve(listener, router(state, 64 * 1024))
                .await
                .unwrap();
        });
    });
    addr
}

fn job_end(job: u32, user: &str, start: u64, end: u64) -> Record {
    let gpus = vec![GpuEnd {
        index: 0,
        uuid: "GPU-n1-0".into(),
        name: Some("NVIDIA H100 80GB HBM3".into()),
        energy_start_mj: Some(10),
        energy_end_mj: Some(1010),
        energy_delta_mj: Some(1000),
        mig: None,
    }];
    let body = JobEnd {
        user: user.into(),
        uid: 1000,
        account: Some("physics".into()),
        partition: Some("gpu".into()),
        start_time: start,
        end_time: end,
        allocated_gpu_ms: end - start,
        gpus,
        exit: None,
        slurm_window: None,
    };
    let id = RecordId::new("alpha", job, None, "n1", RecordKind::JobEnd).unwrap();
    Record::new(id, end, RecordBody::JobEnd(body)).unwrap()
}

#[test]
fn ingest_resend_read_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let addr = serve(dir.path());
    let c = Client::new(
        &format!("http://{addr}/"),
        ClientAuth::None,
        Duration::from_secs(30),
    )
    .unwrap();
    let d = 19_783 * DAY; // 2024-03-01
    let batch = serde_json::to_vec(&[
        job_end(1, "alice", d + HOUR, d + 3 * HOUR),
        job_end(2, "bob", d + HOUR, d + 2 * HOUR),
    ])
    .unwrap();

    let r = c.post_records(&batch).unwrap();
    assert_eq!((r.accepted, r.duplicate, r.rejected), (2, 0, 0));
    assert_eq!(r.results.len(), 2);
    assert!(r.results.iter().all(|x| x.status == RecordStatus::Accepted));
    assert_eq!(r.results[1].index, 1);
    assert!(r.results[0].key.is_some());

    // A resend is acknowledged as duplicate, never counted twice.
    let again = c.post_records(&batch).unwrap();
    assert_eq!((again.accepted, again.duplicate), (0, 2));

    // A batch with a bad record: still Ok, per-record verdicts (acctd answers 422).
    let mut bad = serde_json::to_value(job_end(3, "carol", d + HOUR, d + 2 * HOUR)).unwrap();
    bad["body"]["end_time"] = json!(d);
    let mixed = serde_json::to_vec(&json!([bad, job_end(4, "dave", d, d + HOUR)])).unwrap();
    let m = c.post_records(&mixed).unwrap();
    assert_eq!((m.accepted, m.rejected), (1, 1));
    let rejected = &m.results[0];
    assert_eq!(rejected.status, RecordStatus::Rejected);
    assert!(rejected.error.is_some(), "{rejected:?}");

    let rows = c
        .get_json("/v1/report?start=2024-03-01&end=2024-03-02&group_by=user")
        .unwrap();
    let rows = rows["rows"].as_array().unwrap();
    let alice = rows.iter().find(|r| r["user"] == "alice").unwrap();
    assert_eq!(alice["allocated_gpu_ms"], json!(2 * HOUR));
    assert_eq!(rows.len(), 3, "{rows:?}");

    let job = c.get_json("/v1/jobs/alpha/1").unwrap();
    assert_eq!(job["job_id"], json!(1));

    // acctd's error text reaches the caller.
    match c.get_json("/v1/jobs/alpha/999") {
        Err(ClientError::Http { status, message }) => {
            assert_eq!(status, 404);
            assert!(message.contains("job 999"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    match c.post_records(b"{not json") {
        Err(ClientError::Http { status, .. }) => assert_eq!(status, 400),
        other => panic!("{other:?}"),
    }
    // An oversized body is refused (64 KiB limit here).
    let big = vec![b' '; 128 * 1024];
    match c.post_records(&big) {
        Err(ClientError::Http { status, .. }) => assert_eq!(status, 413),
        // The server may close before reading the whole body.
        Err(ClientError::Transport(_)) => {}
        other => panic!("{other:?}"),
    }
    // post_json against an endpoint that does not exist: a 404/405, not a decode error.
    match c.post_json("/v1/nothing", &json!({})) {
        Err(ClientError::Http { status, .. }) => assert!(status == 404 || status == 405),
        other => panic!("{other:?}"),
    }
}
