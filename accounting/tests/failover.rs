//! Two acctd on one MariaDB database, no gap (issue 17 §2): a sender behaving like a node's
//! forwarder (a batch stays in its spool until acknowledged) posts through one
//! `sgpu-acct-client` that knows both acctd (`http://A,http://B`). acctd A is killed
//! (`kill -9`) while batches are in flight; the client fails over to B, reports keep
//! answering through it, and in the end every record is stored exactly once and the
//! rollups equal what the records add up to.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;
use sgpu_acct_client::{Client, ClientAuth};
use sgpu_spool::Record;

/// Jobs per batch (two records each).
const JOBS_PER_BATCH: u32 = 25;
/// Attempts of one batch before the test gives up (B answers long before).
const MAX_ATTEMPTS: u32 = 500;

fn start_acctd(db: &TestDb, log: &std::path::Path) -> (Child, SocketAddr) {
    spawn_acctd(&db.acctd_args(), std::fs::File::create(log).unwrap())
}

fn job_records(job: u32) -> Vec<Record> {
    let start = 19_783 * DAY + u64::from(job % 50) * HOUR;
    let end = start + HOUR + u64::from(job);
    vec![
        job_end(
            "alpha",
            job,
            "n1",
            "physics",
            "alice",
            start,
            end,
            &[500 + u64::from(job)],
        ),
        job_usage(
            "alpha",
            job,
            "n1",
            "physics",
            "alice",
            start,
            end,
            &[HOUR / 3],
        ),
    ]
}

#[test]
fn killing_one_of_two_acctd_under_load_loses_nothing_and_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new_mariadb(dir.path());
    let (mut a, addr_a) = start_acctd(&db, &dir.path().join("acctd-a.log"));
    let (mut b, addr_b) = start_acctd(&db, &dir.path().join("acctd-b.log"));
    let client = Client::new(
        &format!("http://{addr_a},http://{addr_b}"),
        ClientAuth::None,
        Duration::from_secs(30),
    )
    .unwrap();

    let failures = Arc::new(AtomicU32::new(0));
    let sender = {
        let (client, failures) = (client.clone(), failures.clone());
        Sender::start(
            JOBS_PER_BATCH,
            MAX_ATTEMPTS,
            job_records,
            move |body, records| match client.post_records(body) {
                Ok(answer) => {
                    assert_eq!(
                        answer.accepted + answer.duplicate,
                        records.len(),
                        "{answer:?}"
                    );
                    true
                }
                Err(_) => {
                    failures.fetch_add(1, Ordering::SeqCst);
                    false
                }
            },
        )
    };
    sender.wait_batches(10);
    assert_eq!(
        client.base_url(),
        format!("http://{addr_a}"),
        "A serves first"
    );
    a.kill().unwrap(); // SIGKILL, batches in flight
    a.wait().unwrap();
    sender.wait_batches(10);
    assert_eq!(
        client.base_url(),
        format!("http://{addr_b}"),
        "the client moved to B"
    );
    // reports keep answering, through the same client
    let report = client
        .get_json("/v1/report?start=2024-03-01&end=2024-04-01")
        .unwrap();
    assert!(report["rows"].is_array(), "{report}");
    let acked = sender.stop();
    let report = client
        .get_json("/v1/report?start=2024-01-01&end=2025-01-01")
        .unwrap();
    let jobs: u64 = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["jobs"].as_u64().unwrap())
        .sum();
    b.kill().unwrap();
    b.wait().unwrap();

    let acked_keys: HashSet<String> = acked.iter().map(|r| r.id().key()).collect();
    assert_eq!(acked_keys.len(), acked.len(), "a record acknowledged twice");
    assert_eq!(
        jobs,
        acked.len() as u64 / 2,
        "the report counts every job once"
    );
    let store = db.open();
    let (_, stored_keys) = stored_once(&*store);
    assert_eq!(stored_keys, acked_keys, "stored = acknowledged");
    assert_rollups_match(&*store);
    eprintln!(
        "failover: {} records acknowledged ({} failed attempts around the kill), stored once \
         each, report answered through B, rollups match",
        acked.len(),
        failures.load(Ordering::SeqCst)
    );
}
