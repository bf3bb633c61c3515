//! MariaDB going away in the middle of ingest (issue 17 §1): the real `sgpu-acctd` on a
//! MariaDB of the test's own (over TCP, the password from a root-only file) takes batches
//! from a sender that behaves like a node's forwarder (a batch stays in its "spool" until
//! acctd acknowledges it; anything else, 503 or a broken connection, means send it again
//! later). The server is killed (`kill -9`) and later stopped cleanly, each time while
//! batches are in flight; while it is away acctd answers 503 to ingest and to reads. In the
//! end every record is stored exactly once and the rollups equal what the records add up
//! to.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Child;
use std::sync::{Arc, Mutex};

use common::*;
use sgpu_accounting::mariadb_server::{MariaDb, Stop};
use sgpu_accounting::mysql_store::MysqlStore;
use sgpu_spool::Record;

/// Batches of this many jobs (three records each).
const JOBS_PER_BATCH: u32 = 40;
/// Attempts of one batch before the test gives up (the server is back long before).
const MAX_ATTEMPTS: u32 = 2_000;

fn start_acctd(
    url: &str,
    password_file: &std::path::Path,
    log: &std::path::Path,
) -> (Child, SocketAddr) {
    spawn_acctd(
        &[
            "--db".into(),
            url.into(),
            "--db-password-file".into(),
            password_file.into(),
        ],
        std::fs::File::create(log).unwrap(),
    )
}

fn job_records(job: u32) -> Vec<Record> {
    let start = 19_783 * DAY + u64::from(job % 97) * HOUR;
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
            &[1_000 + u64::from(job)],
        ),
        job_end("alpha", job, "n2", "physics", "alice", start, end, &[7, 9]),
        job_usage(
            "alpha",
            job,
            "n1",
            "physics",
            "alice",
            start,
            end,
            &[HOUR / 2],
        ),
    ]
}

/// What the sender met: 503 answers and broken connections.
#[derive(Default)]
struct Seen {
    unavailable: u64,
    broken: u64,
}

#[test]
fn a_mariadb_restart_during_ingest_loses_nothing_and_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let mut server = MariaDb::create(&dir.path().join("mariadb"), Some(port), true)
        .unwrap_or_else(|e| panic!("starting the test's MariaDB: {e}"));
    let password = "restart-test-pw";
    server.create_database("sgpu", "sgpu", password).unwrap();
    let url = server.tcp_url("sgpu", "sgpu").unwrap();
    let password_file = dir.path().join("db-password");
    write_private(&password_file, password);
    let (mut acctd, addr) = start_acctd(&url, &password_file, &dir.path().join("acctd.log"));

    let seen = Arc::new(Mutex::new(Seen::default()));
    let sender = {
        let seen = seen.clone();
        Sender::start(
            JOBS_PER_BATCH,
            MAX_ATTEMPTS,
            job_records,
            move |body, records| match request(addr, "POST", "/v1/records", body) {
                Ok((200, answer)) => {
                    let v: serde_json::Value = serde_json::from_slice(&answer).unwrap();
                    let n = v["accepted"].as_u64().unwrap() + v["duplicate"].as_u64().unwrap();
                    assert_eq!(n, records.len() as u64, "{v}");
                    true
                }
                Ok((503, _)) => {
                    seen.lock().unwrap().unavailable += 1;
                    false
                }
                Ok((st, answer)) => {
                    panic!("status {st}: {}", String::from_utf8_lossy(&answer))
                }
                Err(_) => {
                    seen.lock().unwrap().broken += 1;
                    false
                }
            },
        )
    };
    for how in [Stop::Kill, Stop::Clean] {
        sender.wait_batches(5);
        server.stop(how);
        // the server is away: acctd answers 503 to ingest and to reads, and stays up
        let one = batch(&job_records(1_000_000));
        let (st, body) = request(addr, "POST", "/v1/records", &one).unwrap();
        assert_eq!(st, 503, "{}", String::from_utf8_lossy(&body));
        assert!(
            String::from_utf8_lossy(&body).contains("MariaDB/MySQL"),
            "the 503 says what is away: {}",
            String::from_utf8_lossy(&body)
        );
        let (st, _) = request(addr, "GET", "/v1/jobs/alpha/1", b"").unwrap();
        assert_eq!(st, 503);
        assert!(acctd.try_wait().unwrap().is_none(), "acctd exited");
        server.start().unwrap();
        sender.wait_batches(5);
    }
    let acked_records = sender.stop();
    acctd.kill().unwrap();
    acctd.wait().unwrap();

    let seen = seen.lock().unwrap();
    assert!(
        seen.unavailable + seen.broken > 0,
        "no batch met the server away"
    );
    let store = MysqlStore::connect(&url, Some(password)).unwrap();
    let (stored, stored_keys) = stored_once(&store);
    let acked: HashSet<String> = acked_records.iter().map(|r| r.id().key()).collect();
    assert_eq!(
        acked.len(),
        acked_records.len(),
        "a record acknowledged twice"
    );
    // the 503 probe's job was never acknowledged; everything else sent was
    let probe: HashSet<String> = job_records(1_000_000)
        .iter()
        .map(|r| r.id().key())
        .collect();
    let stored_not_probe: HashSet<String> = stored_keys.difference(&probe).cloned().collect();
    assert_eq!(stored_not_probe, acked, "stored = acknowledged");
    for r in &acked_records {
        let s = stored.iter().find(|s| s.id() == r.id());
        assert_eq!(s, Some(r), "stored content differs");
    }
    assert_rollups_match(&store);
    eprintln!(
        "MariaDB restart: {} records acknowledged, {} answers 503 and {} broken connections \
         while the server was away; stored once each, rollups match",
        acked_records.len(),
        seen.unavailable,
        seen.broken
    );
    drop(store);
    drop(server);
}
