//! Two acctd on one MariaDB database, no gap (issue 17 §2): a sender behaving like a node's
//! forwarder (a batch stays in its spool until acknowledged) posts through one
//! `sgpu-acct-client` that knows both acctd (`http://A,http://B`). acctd A is killed
//! (`kill -9`) while batches are in flight; the client fails over to B, reports keep
//! answering through it, and in the end every record is stored exactly once and the
//! rollups equal what the records add up to.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use sgpu_accounting::store::verify;
use sgpu_acct_client::{Client, ClientAuth};
use sgpu_spool::Record;

/// Jobs per batch (two records each).
const JOBS_PER_BATCH: u32 = 25;
/// Attempts of one batch before the test gives up (B answers long before).
const MAX_ATTEMPTS: u32 = 500;

fn start_acctd(db: &TestDb, log: &std::path::Path) -> (Child, SocketAddr) {
    let log = std::fs::File::create(log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sgpu-acctd"))
        .args(["--auth", "none", "--listen", "127.0.0.1:0"])
        .args(db.acctd_args())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("sgpu-acctd listening on ")
        .unwrap_or_else(|| panic!("acctd did not start: {line:?} (see its log)"))
        .parse()
        .unwrap();
    (child, addr)
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

    let acked: Arc<Mutex<Vec<Record>>> = Arc::default();
    let failures = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (client, acked, failures, done, stop) = (
            client.clone(),
            acked.clone(),
            failures.clone(),
            done.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            let mut job = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let records: Vec<Record> = (0..JOBS_PER_BATCH)
                    .flat_map(|_| {
                        job += 1;
                        job_records(job)
                    })
                    .collect();
                let body = batch(&records);
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    assert!(attempts <= MAX_ATTEMPTS, "a batch never acknowledged");
                    match client.post_records(&body) {
                        Ok(answer) => {
                            assert_eq!(
                                answer.accepted + answer.duplicate,
                                records.len(),
                                "{answer:?}"
                            );
                            acked.lock().unwrap().extend(records.iter().cloned());
                            break;
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let wait_batches = |n: u32| {
        let target = done.load(Ordering::SeqCst) + n;
        while done.load(Ordering::SeqCst) < target {
            assert!(!sender.is_finished(), "the sender stopped");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_batches(10);
    assert_eq!(
        client.base_url(),
        format!("http://{addr_a}"),
        "A serves first"
    );
    a.kill().unwrap(); // SIGKILL, batches in flight
    a.wait().unwrap();
    wait_batches(10);
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
    stop.store(true, Ordering::SeqCst);
    sender.join().unwrap();
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

    let acked = acked.lock().unwrap();
    let acked_keys: HashSet<String> = acked.iter().map(|r| r.id().key()).collect();
    assert_eq!(acked_keys.len(), acked.len(), "a record acknowledged twice");
    assert_eq!(
        jobs,
        acked.len() as u64 / 2,
        "the report counts every job once"
    );
    let store = db.open();
    let mut stored = Vec::new();
    store.for_each_record(&mut |r| stored.push(r)).unwrap();
    let stored_keys: HashSet<String> = stored.iter().map(|r| r.id().key()).collect();
    assert_eq!(stored_keys.len(), stored.len(), "a key stored twice");
    assert_eq!(stored_keys, acked_keys, "stored = acknowledged");
    let v = verify(&*store).unwrap();
    assert!(
        v.mismatches.is_empty(),
        "{:#?}",
        &v.mismatches[..v.mismatches.len().min(5)]
    );
    eprintln!(
        "failover: {} records acknowledged ({} failed attempts around the kill), stored once \
         each, report answered through B, rollups match",
        acked.len(),
        failures.load(Ordering::SeqCst)
    );
}
