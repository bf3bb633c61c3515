//! The crash loop (issue 6 §1): run the real `sgpu-acctd`, send batches (new records,
//! records whose acknowledgement was lost, resends of acknowledged ones), `kill -9` it at
//! seeded random moments, restart, many times; then check every acknowledged record is
//! stored exactly once and the rollups equal what the stored records add up to.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use sgpu_accounting::rollup::RollupValue;
use sgpu_spool::{Record, RecordBody};

const ITERATIONS: usize = 20;
const BATCH: usize = 50;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Default)]
struct Ledger {
    next_job: u32,
    unacked: Vec<Record>,
    acked: HashSet<String>,
    acked_records: Vec<Record>,
    sent_keys: HashSet<String>,
    batches_acked: u64,
    duplicates_seen: u64,
    resent_after_lost_ack: u64,
}

fn start(db: &TestDb, log: &Path) -> (Child, SocketAddr) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    spawn_acctd(&db.acctd_args(), log)
}

fn new_records(l: &mut Ledger, rng: &mut Rng, n: usize) -> Vec<Record> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        l.next_job += 1;
        let job = l.next_job;
        let account = ["physics", "chem"][rng.below(2) as usize];
        let user = ["alice", "bob", "carol"][rng.below(3) as usize];
        // Some jobs straddle a midnight.
        let start = 19_783 * DAY + rng.below(3 * DAY);
        let end = start + 1 + rng.below(6 * HOUR);
        let gpus = 1 + rng.below(4) as usize;
        let energies: Vec<u64> = (0..gpus).map(|_| rng.below(1_000_000_000)).collect();
        let used: Vec<u64> = (0..gpus).map(|_| rng.below(end - start + 1)).collect();
        out.push(job_end(
            "alpha", job, "n1", account, user, start, end, &energies,
        ));
        out.push(job_usage(
            "alpha", job, "n1", account, user, start, end, &used,
        ));
        if rng.below(3) == 0 {
            out.push(job_end(
                "alpha", job, "n2", account, user, start, end, &energies,
            ));
        }
    }
    out
}

/// Sends batches until a request fails (acctd killed); returns how many were acknowledged.
fn sender(addr: SocketAddr, ledger: Arc<Mutex<Ledger>>, seed: u64) -> u64 {
    let mut rng = Rng(seed | 1);
    let mut acked = 0;
    loop {
        let (batch, resends) = {
            let mut l = ledger.lock().unwrap();
            let take = l.unacked.len().min(BATCH);
            let mut batch: Vec<Record> = l.unacked.drain(..take).collect();
            let fresh = new_records(&mut l, &mut rng, BATCH.saturating_sub(batch.len()));
            batch.extend(fresh);
            let mut resends = 0;
            if !l.acked_records.is_empty() && rng.below(2) == 0 {
                for _ in 0..5 {
                    let i = rng.below(l.acked_records.len() as u64) as usize;
                    batch.push(l.acked_records[i].clone());
                    resends += 1;
                }
            }
            for r in &batch {
                l.sent_keys.insert(r.id().key());
            }
            (batch, resends)
        };
        match request(addr, "POST", "/v1/records", &batch_bytes(&batch)) {
            Ok((200, body)) => {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let accepted = v["accepted"].as_u64().unwrap();
                let duplicate = v["duplicate"].as_u64().unwrap();
                assert_eq!(accepted + duplicate, batch.len() as u64, "{v}");
                assert!(duplicate >= resends, "{v}");
                let mut l = ledger.lock().unwrap();
                l.batches_acked += 1;
                l.duplicates_seen += duplicate;
                l.resent_after_lost_ack += duplicate.saturating_sub(resends);
                for r in batch {
                    if l.acked.insert(r.id().key()) {
                        l.acked_records.push(r);
                    }
                }
                acked += 1;
            }
            Ok((status, body)) => panic!("status {status}: {}", String::from_utf8_lossy(&body)),
            Err(_) => {
                // Killed mid-request: not acknowledged, the forwarder sends it again.
                let mut l = ledger.lock().unwrap();
                let acked_keys = l.acked.clone();
                l.unacked.extend(
                    batch
                        .into_iter()
                        .filter(|r| !acked_keys.contains(&r.id().key())),
                );
                return acked;
            }
        }
    }
}

fn batch_bytes(records: &[Record]) -> Vec<u8> {
    batch(records)
}

#[test]
fn kill_9_never_loses_an_acknowledged_record() {
    let seed: u64 = std::env::var("SGPU_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_acc7);
    let dir = tempfile::tempdir().unwrap();
    // sled, or MariaDB with SGPU_TEST_STORE=mariadb (acctd killed, the server not)
    let db = TestDb::new(dir.path());
    let log = dir.path().join("acctd.log");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = Rng(seed);
    let mut acked_per_life = Vec::new();
    for i in 0..ITERATIONS {
        let (mut child, addr) = start(&db, &log);
        let l = ledger.clone();
        let s = rng.next();
        let t = std::thread::spawn(move || sender(addr, l, s));
        std::thread::sleep(Duration::from_millis(20 + rng.below(400)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let n = t.join().unwrap();
        acked_per_life.push(n);
        eprintln!("life {i}: {n} batches acknowledged before kill -9");
    }

    // One last life: everything unacknowledged is delivered, and acknowledged records are
    // readable over HTTP.
    let (mut child, addr) = start(&db, &log);
    loop {
        let pending: Vec<Record> = {
            let mut l = ledger.lock().unwrap();
            let n = l.unacked.len().min(500);
            l.unacked.drain(..n).collect()
        };
        if pending.is_empty() {
            break;
        }
        let (st, body) = request(addr, "POST", "/v1/records", &batch(&pending)).unwrap();
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
        let mut l = ledger.lock().unwrap();
        for r in pending {
            if l.acked.insert(r.id().key()) {
                l.acked_records.push(r);
            }
        }
    }
    let sample: Vec<u32> = {
        let l = ledger.lock().unwrap();
        l.acked_records
            .iter()
            .step_by(97)
            .map(|r| r.id().job_id())
            .collect()
    };
    for job in sample {
        let (st, _) = request(addr, "GET", &format!("/v1/jobs/alpha/{job}"), b"").unwrap();
        assert_eq!(st, 200, "job {job}");
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // Open the store directly and check it.
    let store = db.open();
    let l = ledger.lock().unwrap();
    let (stored, stored_keys) = stored_once(&*store);
    let missing: Vec<&String> = l
        .acked
        .iter()
        .filter(|k| !stored_keys.contains(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged records lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(stored_keys.is_subset(&l.sent_keys), "a record nobody sent");
    // Everything sent has been delivered by now, so stored == sent == acknowledged.
    assert_eq!(stored_keys, l.acked);
    for r in &l.acked_records {
        let s = stored.iter().find(|s| s.id() == r.id());
        assert_eq!(s, Some(r), "stored content differs");
    }

    assert_rollups_match(&*store);
    let mut totals = RollupValue::default();
    store
        .for_each_rollup(0, u32::MAX, &mut |_, r| totals.add(&r))
        .unwrap();
    let (mut alloc, mut used) = (0u64, 0u64);
    let mut jobs = HashSet::new();
    for r in &stored {
        match r.body() {
            RecordBody::JobEnd(b) => {
                alloc += b.allocated_gpu_ms;
                jobs.insert(r.id().job_id());
            }
            RecordBody::JobUsage(b) => used += b.used_gpu_ms,
            _ => {}
        }
    }
    assert_eq!(totals.allocated_gpu_ms, alloc);
    assert_eq!(totals.used_gpu_ms, used);
    assert_eq!(totals.jobs, jobs.len() as u64);

    let killed_with_acks = acked_per_life.iter().filter(|&&n| n > 0).count();
    eprintln!(
        "crash loop (seed {seed:#x}): {ITERATIONS} kill -9s ({killed_with_acks} after acknowledged batches), \
         {} batches acknowledged, {} records stored = acknowledged, {} jobs, {} duplicates answered \
         ({} after a lost acknowledgement); rollups match",
        l.batches_acked,
        stored.len(),
        jobs.len(),
        l.duplicates_seen,
        l.resent_after_lost_ack
    );
    assert!(
        l.batches_acked as usize >= ITERATIONS,
        "too few batches to mean anything"
    );
}
