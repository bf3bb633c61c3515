//! MariaDB-only behaviour: the schema and its migrations, the URL rules, and two stores
//! (two acctd) writing the same records into one database at once. The store semantics
//! every store shares are tested in `sled_store/tests.rs` and the report tests, which run
//! against MariaDB with `SGPU_TEST_STORE=mariadb`.

use super::*;
use crate::day::DAY_MS;
use crate::store::verify;
use crate::test_records::{job_end, job_usage};
use crate::test_store::server;

const HOUR: u64 = 3_600_000;

/// A new database on the process's server; its URL for root over the socket.
fn database(name: &str) -> String {
    let s = server().lock().unwrap_or_else(|e| e.into_inner());
    s.sql(&format!(
        "DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}`"
    ))
    .unwrap();
    s.url(name, "root")
}

#[test]
fn schema_is_created_once_and_a_newer_one_is_refused() {
    let url = database("m_schema");
    let s = MysqlStore::connect(&url, None).unwrap();
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    s.put_batch(&[job_end(1, "n1", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[5])])
        .unwrap();
    drop(s);
    // a second connect migrates nothing and keeps the data
    let s = MysqlStore::connect(&url, None).unwrap();
    assert_eq!(s.job("alpha", 1).unwrap().len(), 1);
    let rows = server()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .sql("SELECT COUNT(*) FROM m_schema.schema_version")
        .unwrap();
    assert_eq!(rows.trim(), MIGRATIONS.len().to_string());
    drop(s);
    server()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .sql(&format!(
            "INSERT INTO m_schema.schema_version VALUES ({}, 0)",
            SCHEMA_VERSION + 1
        ))
        .unwrap();
    let err = MysqlStore::connect(&url, None).err().unwrap().to_string();
    assert!(err.contains("written by a newer acctd"), "{err}");
}

#[test]
fn a_version_1_database_gains_slice_time_and_keeps_its_rows() {
    let url = database("m_v1");
    let sql = |q: &str| {
        server()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sql(q)
            .unwrap()
    };
    // a database as an acctd of schema version 1 left it, with one rollup row
    let (1, v1) = MIGRATIONS[0] else {
        panic!("the first migration is version 1")
    };
    for stmt in v1 {
        sql(&format!("USE m_v1; {stmt}"));
    }
    sql(
        "USE m_v1; CREATE TABLE schema_version (version INT UNSIGNED NOT NULL, \
         applied_ms BIGINT UNSIGNED NOT NULL, PRIMARY KEY (version)) ENGINE=InnoDB; \
         INSERT INTO schema_version VALUES (1, 0); \
         INSERT INTO rollups VALUES (10, 'alpha', 'physics', 'alice', 'gpu', \
         'NVIDIA H100 80GB HBM3 MIG 2g.20gb', 1028571, 0, 0, 1, 0, 0)",
    );
    let s = MysqlStore::connect(&url, None).unwrap();
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    let mut rows = Vec::new();
    s.for_each_rollup(10, 10, &mut |k, v| rows.push((k, v)))
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (
            rows[0].1.allocated_gpu_ms,
            rows[0].1.jobs,
            rows[0].1.slice_ms
        ),
        (1_028_571, 1, 0),
        "the old row is kept, its slice time unknown (0)"
    );
    // a slice's job after the migration adds its slice time to the same row
    let r = crate::test_records::on_slices(
        job_end(2, "n1", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[0]),
        &[("2g.20gb", 2, 7)],
    );
    s.put_batch(&[r]).unwrap();
    let mut rows = Vec::new();
    s.for_each_rollup(10, 10, &mut |_, v| rows.push(v)).unwrap();
    assert_eq!(
        (rows[0].allocated_gpu_ms, rows[0].slice_ms),
        (2 * 1_028_571, HOUR)
    );
    // version 3: the old row's used time counts as measured (0 unmeasured), the new slice's
    // share has no used-time samples
    assert_eq!(rows[0].used_unmeasured_gpu_ms, 1_028_571);
    drop(s);
    // migrations cut short after their ALTER (versions 2 and 3 not recorded) run again whole
    sql("DELETE FROM m_v1.schema_version WHERE version >= 2");
    let s = MysqlStore::connect(&url, None).unwrap();
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
}

#[test]
fn urls_with_a_password_or_without_a_database_are_refused() {
    let err = MysqlStore::connect("mysql://sgpu:secret@db.example:3306/sgpu", None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--db-password-file"), "{err}");
    assert!(
        !err.contains("secret"),
        "the password is not repeated: {err}"
    );
    let err = MysqlStore::connect("mysql://sgpu@db.example:3306/", None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no database named"), "{err}");
    let err = MysqlStore::connect("postgres://x@y/z", None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a MariaDB/MySQL URL"), "{err}");
}

#[test]
fn a_server_that_does_not_answer_is_an_engine_error_that_says_what_to_do() {
    // a socket path nothing listens on
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "mysql://root@localhost/x?socket={}",
        dir.path().join("none.sock").display()
    );
    let err = MysqlStore::connect(&url, None).err().unwrap().to_string();
    assert!(err.contains("acctd answers 503"), "{err}");
}

#[test]
fn two_stores_on_one_database_count_every_record_once() {
    let url = database("m_two");
    let a = std::sync::Arc::new(MysqlStore::connect(&url, None).unwrap());
    let b = std::sync::Arc::new(MysqlStore::connect(&url, None).unwrap());
    // 200 jobs, each on two nodes with usage; both stores get every record, in batches
    // cut differently and in opposite orders, at the same time
    let mut records = Vec::new();
    for j in 1..=200u32 {
        let start = 10 * DAY_MS + u64::from(j) * 60_000;
        for node in ["n1", "n2"] {
            records.push(job_end(j, node, start, start + HOUR, &[u64::from(j), 7]));
            records.push(job_usage(
                j,
                node,
                start,
                start + HOUR,
                &[HOUR / 2, HOUR / 3],
            ));
        }
    }
    let mut reversed = records.clone();
    reversed.reverse();
    let run = |s: std::sync::Arc<MysqlStore>, recs: Vec<Record>, size: usize| {
        std::thread::spawn(move || {
            let mut accepted = 0;
            for chunk in recs.chunks(size) {
                accepted += s
                    .put_batch(chunk)
                    .unwrap()
                    .iter()
                    .filter(|o| **o == PutOutcome::Accepted)
                    .count();
            }
            accepted
        })
    };
    let ta = run(a.clone(), records.clone(), 37);
    let tb = run(b.clone(), reversed, 23);
    let accepted = ta.join().unwrap() + tb.join().unwrap();
    assert_eq!(
        accepted,
        records.len(),
        "each record accepted by exactly one store"
    );
    let v = verify(&*a).unwrap();
    assert!(v.mismatches.is_empty(), "{:?}", v.mismatches);
    assert_eq!((v.records, v.jobs), (records.len() as u64, 200));
    let mut t = RollupValue::default();
    b.for_each_rollup(0, u32::MAX, &mut |_, v| t.add(&v))
        .unwrap();
    assert_eq!(t.jobs, 200);
    assert_eq!(t.allocated_gpu_ms, 200 * 2 * 2 * HOUR);
    assert_eq!(t.used_gpu_ms, 200 * 2 * (HOUR / 2 + HOUR / 3));
}
