//! The store tests. Those that use only the [`Store`] trait run against the store
//! `SGPU_TEST_STORE` names (sled by default, `mariadb`: [`crate::test_store`]); the
//! format 1 conversion and the record log's segments are sled's own.

use super::*;
use crate::day::DAY_MS;
use crate::store::verify;
use crate::test_records::{in_run, job_end, job_usage};
use crate::test_store::Fixture;

const HOUR: u64 = 3_600_000;

fn totals(s: &dyn Store) -> RollupValue {
    let mut t = RollupValue::default();
    s.for_each_rollup(0, u32::MAX, &mut |_, v| t.add(&v))
        .unwrap();
    t
}

#[test]
fn resend_never_double_counts() {
    let f = Fixture::new();
    let s = f.open();
    let a = job_end(1, "n1", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[100, 200]);
    let b = job_end(1, "n2", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[50]);
    assert_eq!(
        s.put_batch(&[a.clone(), b.clone(), a.clone()]).unwrap(),
        vec![
            PutOutcome::Accepted,
            PutOutcome::Accepted,
            PutOutcome::Duplicate { differs: false }
        ]
    );
    let once = totals(&*s);
    assert_eq!(once.allocated_gpu_ms, 3 * HOUR);
    assert_eq!(once.energy_mj, 350);
    assert_eq!(once.jobs, 1, "two nodes, one job");
    assert_eq!(
        s.put_batch(&[b, a]).unwrap(),
        vec![PutOutcome::Duplicate { differs: false }; 2]
    );
    assert_eq!(totals(&*s), once);
    // Same identity, different content: not counted, kept as a conflict (once, however
    // often it is sent again), and the stored record stays
    let changed = job_end(1, "n1", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[999, 200]);
    assert_eq!(
        s.put_batch(&[changed.clone(), changed.clone()]).unwrap(),
        vec![
            PutOutcome::Conflict { new: true },
            PutOutcome::Conflict { new: false }
        ]
    );
    assert_eq!(
        s.put_batch(std::slice::from_ref(&changed)).unwrap(),
        vec![PutOutcome::Conflict { new: false }]
    );
    assert_eq!(totals(&*s), once);
    assert!(verify(&*s).unwrap().mismatches.is_empty());
    let mut kept = Vec::new();
    s.for_each_conflict(&mut |c| kept.push(c)).unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].key, changed.id().key());
    assert_eq!(kept[0].record, changed);
    // a second, different conflicting version is kept beside the first
    let other = job_end(1, "n1", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[7, 200]);
    assert_eq!(
        s.put_batch(&[other]).unwrap(),
        vec![PutOutcome::Conflict { new: true }]
    );
    let mut n = 0;
    s.for_each_conflict(&mut |_| n += 1).unwrap();
    assert_eq!(n, 2);
}

#[test]
fn each_run_of_a_requeued_job_is_counted_once() {
    let f = Fixture::new();
    // run 0 as a database from before runs existed holds it: JSON without a run
    let first = job_end(5, "n1", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[100]);
    let old_json = first.to_json().unwrap();
    assert!(!String::from_utf8_lossy(&old_json).contains("run"));
    {
        let s = f.open();
        assert_eq!(
            s.put_received(std::slice::from_ref(&first), &[old_json.as_slice()])
                .unwrap(),
            vec![PutOutcome::Accepted]
        );
    }
    let s = f.open();
    // the requeued run on the same node: same job, node and kind, run 1
    let second = in_run(
        job_end(
            5,
            "n1",
            10 * DAY_MS + 2 * HOUR,
            10 * DAY_MS + 4 * HOUR,
            &[300],
        ),
        1,
    );
    let usage = in_run(
        job_usage(
            5,
            "n1",
            10 * DAY_MS + 2 * HOUR,
            10 * DAY_MS + 4 * HOUR,
            &[HOUR],
        ),
        1,
    );
    assert_eq!(
        s.put_batch(&[second.clone(), usage, second, first])
            .unwrap(),
        vec![
            PutOutcome::Accepted,
            PutOutcome::Accepted,
            PutOutcome::Duplicate { differs: false },
            PutOutcome::Duplicate { differs: false }
        ]
    );
    let t = totals(&*s);
    assert_eq!(t.allocated_gpu_ms, HOUR + 2 * HOUR, "both runs billed");
    assert_eq!(t.energy_mj, 400);
    assert_eq!(t.used_gpu_ms, HOUR);
    assert_eq!(t.jobs, 1, "one job, two runs");
    let runs: Vec<u32> = s
        .job("alpha", 5)
        .unwrap()
        .iter()
        .map(|r| r.id().run())
        .collect();
    assert_eq!(runs, vec![0, 1, 1]);
    assert!(verify(&*s).unwrap().mismatches.is_empty());
}

#[test]
fn conflicts_survive_reopen_and_retention() {
    let f = Fixture::new();
    let a = job_end(3, "n1", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[100]);
    let b = job_end(3, "n1", 10 * DAY_MS, 10 * DAY_MS + 2 * HOUR, &[100]);
    {
        let s = f.open();
        s.put_batch(&[a]).unwrap();
        assert_eq!(
            s.put_batch(std::slice::from_ref(&b)).unwrap(),
            vec![PutOutcome::Conflict { new: true }]
        );
        // retention drops the job's records, not the conflict
        s.purge(Some(20), Some(20)).unwrap();
        assert!(s.job("alpha", 3).unwrap().is_empty());
    }
    let s = f.open();
    let mut kept = Vec::new();
    s.for_each_conflict(&mut |c| kept.push(c)).unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].record, b);
}

#[test]
fn job_usage_after_job_end_updates_only_used() {
    let f = Fixture::new();
    let s = f.open();
    let end = job_end(2, "n1", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[100]);
    s.put_batch(&[end]).unwrap();
    let before = totals(&*s);
    let usage = job_usage(2, "n1", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[HOUR / 4]);
    s.put_batch(std::slice::from_ref(&usage)).unwrap();
    let after = totals(&*s);
    assert_eq!(after.allocated_gpu_ms, before.allocated_gpu_ms);
    assert_eq!(after.energy_mj, before.energy_mj);
    assert_eq!(after.jobs, 1);
    assert_eq!(after.used_gpu_ms, HOUR / 4);
    s.put_batch(&[usage]).unwrap();
    assert_eq!(totals(&*s), after);
    // Job query: both records.
    let job = s.job("alpha", 2).unwrap();
    assert_eq!(job.len(), 2);
    assert!(s.job("alpha", 20).unwrap().is_empty());
    assert!(s.job("beta", 2).unwrap().is_empty());
    assert!(s.job("", 2).unwrap().is_empty());
    // the job's count went to its job_end; asked together, jobs answer as one by one
    let counted = s.counted_in("alpha", 2).unwrap();
    assert!(counted.is_some());
    let jobs = [
        ("alpha".to_string(), 20),
        ("alpha".to_string(), 2),
        (String::new(), 2),
        ("alpha".to_string(), 2),
    ];
    assert_eq!(
        s.counted_in_many(&jobs).unwrap(),
        vec![None, counted.clone(), None, counted]
    );
}

#[test]
fn acknowledged_batches_survive_reopen() {
    let f = Fixture::new();
    {
        let s = f.open();
        let batch: Vec<Record> = (1..=50)
            .map(|j| job_end(j, "n1", DAY_MS, DAY_MS + u64::from(j) * 1000, &[j.into()]))
            .collect();
        s.put_batch(&batch).unwrap();
    }
    let s = f.open();
    let v = verify(&*s).unwrap();
    assert_eq!((v.records, v.jobs), (50, 50));
    assert!(v.mismatches.is_empty(), "{:?}", v.mismatches);
}

#[test]
fn rollup_day_range_and_purge() {
    let f = Fixture::new();
    let s = f.open();
    // Days 10, 11 (straddling 11..12), 20.
    s.put_batch(&[
        job_end(1, "n1", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[1]),
        job_end(2, "n1", 12 * DAY_MS - HOUR, 12 * DAY_MS + HOUR, &[2]),
        job_end(3, "n1", 20 * DAY_MS, 20 * DAY_MS + HOUR, &[3]),
    ])
    .unwrap();
    let mut days = Vec::new();
    s.for_each_rollup(11, 12, &mut |k, _| days.push(k.day))
        .unwrap();
    assert_eq!(days, vec![11, 12]);

    // Records ending before day 12 go (job 1); job 2 ends on day 12 and stays.
    let stats = s.purge(Some(12), None).unwrap();
    assert_eq!(
        stats,
        PurgeStats {
            records: 1,
            rollups: 0
        }
    );
    assert!(s.job("alpha", 1).unwrap().is_empty());
    assert_eq!(s.job("alpha", 2).unwrap().len(), 1);
    let mut on_day = Vec::new();
    for day in [10, 11, 12] {
        s.for_each_record_on_day(day, &mut |r| on_day.push((day, r.id().job_id())))
            .unwrap();
    }
    assert_eq!(
        on_day,
        vec![(11, 2), (12, 2)],
        "purged jobs leave no index entry"
    );
    assert_eq!(s.days_with_records(0, 19).unwrap(), vec![11, 12]);
    let stats = s.purge(None, Some(12)).unwrap();
    assert_eq!(
        stats,
        PurgeStats {
            records: 0,
            rollups: 2
        }
    );
    let mut days = Vec::new();
    s.for_each_rollup(0, u32::MAX, &mut |k, _| days.push(k.day))
        .unwrap();
    assert_eq!(days, vec![12, 20]);
    assert_eq!(s.purge(Some(12), Some(12)).unwrap(), PurgeStats::default());
}

#[test]
fn format1_database_is_converted_when_opened() {
    use crate::rollup::job_marker;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    // job 1 on two nodes (counted once, in n2's row: it arrived first), job 2 on one node
    // over two days, job 3's usage only
    let a = job_end(1, "n1", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[100]);
    let b = job_end(1, "n2", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[50]);
    let c = job_end(2, "n1", 11 * DAY_MS - HOUR, 11 * DAY_MS + HOUR, &[7]);
    let u = job_usage(3, "n1", 12 * DAY_MS, 12 * DAY_MS + HOUR, &[HOUR / 2]);
    {
        let db = sled::open(&path).unwrap();
        let records = db.open_tree("records").unwrap();
        let rollups = db.open_tree("rollups").unwrap();
        let counted = db.open_tree("counted").unwrap();
        let by_day = db.open_tree("by_day").unwrap();
        let mut sums: BTreeMap<RollupKey, RollupValue> = BTreeMap::new();
        for r in [&b, &a, &c, &u] {
            let key = r.id().key();
            records
                .insert(key.as_bytes(), r.to_json().unwrap())
                .unwrap();
            for day in record_days(r) {
                let mut ik = day.to_be_bytes().to_vec();
                ik.extend_from_slice(key.as_bytes());
                by_day.insert(ik, &[][..]).unwrap();
            }
            let mut adds = contributions(r);
            if let Some(k) = job_count_key(r) {
                if counted.get(job_marker(r)).unwrap().is_none() {
                    counted.insert(job_marker(r), k.encode()).unwrap();
                    adds.entry(k).or_default().jobs += 1;
                }
            }
            for (k, v) in adds {
                sums.entry(k).or_default().add(&v);
            }
        }
        for (k, v) in &sums {
            rollups.insert(k.encode(), &v.encode()[..]).unwrap();
        }
        db.flush().unwrap();
    }
    let before = {
        let s = SledStore::open(&path).unwrap();
        assert_eq!(s.record_count().unwrap(), 4);
        let v = verify(&s).unwrap();
        assert!(v.mismatches.is_empty(), "{:?}", v.mismatches);
        assert_eq!((v.records, v.jobs), (4, 2));
        assert_eq!(s.job("alpha", 1).unwrap().len(), 2);
        assert_eq!(
            s.counted_in("alpha", 1).unwrap(),
            job_count_key(&b),
            "the job stays counted where format 1 counted it"
        );
        let mut on_day_10 = Vec::new();
        s.for_each_record_on_day(10, &mut |r| on_day_10.push(r.id().key()))
            .unwrap();
        assert_eq!(on_day_10, vec![a.id().key(), b.id().key(), c.id().key()]);
        let mut on_day_11 = Vec::new();
        s.for_each_record_on_day(11, &mut |r| on_day_11.push(r.id().key()))
            .unwrap();
        assert_eq!(on_day_11, vec![c.id().key()]);
        // a resend after the conversion is still a duplicate
        assert_eq!(
            s.put_batch(std::slice::from_ref(&a)).unwrap(),
            vec![PutOutcome::Duplicate { differs: false }]
        );
        // (the test build converts two records per chunk: three chunks here) a new batch's
        // day index row does not replace a converted chunk's
        let d = job_end(4, "n1", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[1]);
        s.put_batch(std::slice::from_ref(&d)).unwrap();
        let mut on_day_10 = Vec::new();
        s.for_each_record_on_day(10, &mut |r| on_day_10.push(r.id().key()))
            .unwrap();
        assert_eq!(
            on_day_10,
            vec![a.id().key(), b.id().key(), c.id().key(), d.id().key()]
        );
        totals(&s)
    };
    assert_eq!(before.jobs, 3);
    // the old trees are gone and a reopen converts nothing again
    let s = SledStore::open(&path).unwrap();
    assert_eq!(totals(&s), before);
    let names = s.db.tree_names();
    assert!(!names.iter().any(|n| n.as_ref() == b"records"), "{names:?}");
}

#[test]
fn purge_deletes_a_log_segment_once_nothing_in_it_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let segments = || {
        let mut v: Vec<String> = std::fs::read_dir(path.join("records"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    {
        let s = SledStore::open(&path).unwrap();
        s.put_batch(&[job_end(1, "n1", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[1])])
            .unwrap();
    }
    // a second life writes to a second segment: one old job and one recent one
    let s = SledStore::open(&path).unwrap();
    s.put_batch(&[
        job_end(2, "n1", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[2]),
        job_end(3, "n1", 30 * DAY_MS, 30 * DAY_MS + HOUR, &[3]),
    ])
    .unwrap();
    assert_eq!(segments(), vec!["00000001.jsonl.zst", "00000002.jsonl.zst"]);
    let stats = s.purge(Some(20), None).unwrap();
    assert_eq!(stats.records, 2);
    // segment 1 held only job 1; segment 2 still holds job 3 (and is being appended to)
    assert_eq!(segments(), vec!["00000002.jsonl.zst"]);
    assert_eq!(s.job("alpha", 3).unwrap().len(), 1);
    assert!(s.job("alpha", 1).unwrap().is_empty());
    let mut on_day_10 = 0;
    s.for_each_record_on_day(10, &mut |_| on_day_10 += 1)
        .unwrap();
    assert_eq!(on_day_10, 0, "purged jobs leave no index entry to follow");
}

#[test]
fn days_with_records_lists_only_days_that_have_some() {
    let f = Fixture::new();
    let s = f.open();
    assert!(s.days_with_records(0, u32::MAX).unwrap().is_empty());
    s.put_batch(&[
        job_end(1, "n1", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[1]),
        // crosses midnight: days 12 and 13
        job_end(2, "n1", 13 * DAY_MS - HOUR, 13 * DAY_MS + HOUR, &[1]),
    ])
    .unwrap();
    s.put_batch(&[job_end(3, "n1", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[1])])
        .unwrap();
    assert_eq!(s.days_with_records(0, u32::MAX).unwrap(), vec![10, 12, 13]);
    assert_eq!(s.days_with_records(11, 12).unwrap(), vec![12]);
    assert_eq!(
        s.days_with_records(14, 3_000_000).unwrap(),
        Vec::<u32>::new()
    );
}

#[test]
fn rollup_groups_of_version_2_are_read_with_no_slice_time() {
    let v = RollupValue {
        allocated_gpu_ms: 1,
        used_gpu_ms: 2,
        energy_mj: 3,
        jobs: 4,
        idle_gpu_ms: 5,
        idle_measured_gpu_ms: 6,
        slice_ms: 7,
        used_unmeasured_gpu_ms: 0,
    };
    let mut group = RollupGroup::default();
    group
        .rows
        .insert(("alice".into(), "gpu".into(), "m".into()), v);
    let now = group.encode(b"k").unwrap();
    assert_eq!(now[0], ROLLUP_V4);
    assert_eq!(RollupGroup::decode(b"k", &now).unwrap().rows, group.rows);
    // the last total (unmeasured used time) round-trips too
    let mut later = RollupGroup::default();
    later.rows.insert(
        ("alice".into(), "gpu".into(), "m".into()),
        RollupValue {
            used_unmeasured_gpu_ms: 8,
            ..v
        },
    );
    let b = later.encode(b"k").unwrap();
    assert_eq!(RollupGroup::decode(b"k", &b).unwrap().rows, later.rows);
    let v3 = group.encode_v3();
    assert_eq!(v3[0], ROLLUP_V3);
    assert_eq!(RollupGroup::decode(b"k", &v3).unwrap().rows, group.rows);
    // the same group as an acctd before slice time wrote it: 48-byte values
    let mut v2 = vec![ROLLUP_V2];
    for text in ["alice", "gpu", "m"] {
        put_len(&mut v2, text.as_bytes());
    }
    v2.extend_from_slice(&v.encode()[..48]);
    let read = RollupGroup::decode(b"k", &v2).unwrap();
    assert_eq!(
        read.rows.values().next(),
        Some(&RollupValue { slice_ms: 0, ..v })
    );
    assert!(
        RollupGroup::decode(b"k", &[5]).is_err(),
        "a newer version is refused"
    );
}

/// Writes a format 2 database at `path` as format 2's acctd did: the records' JSON in a plain
/// segment, job entries of version 1 (whole keys, 16-byte plain locations), the day index and
/// rollup groups; the first record of a job with a GPU counted.
fn write_format2(path: &Path, records: &[&Record]) {
    let db = sled::open(path).unwrap();
    let acct = db.open_tree("acct").unwrap();
    std::fs::create_dir_all(path.join("records")).unwrap();
    let mut log = Vec::new();
    let mut jobs: BTreeMap<Vec<u8>, JobEntry> = BTreeMap::new();
    let mut days: BTreeMap<u32, BTreeSet<Vec<u8>>> = BTreeMap::new();
    let mut rollups: BTreeMap<RollupKey, RollupValue> = BTreeMap::new();
    for r in records {
        let key = r.id().key().into_bytes();
        let json = r.to_json().unwrap();
        let loc = Loc::Plain {
            segment: 1,
            offset: log.len() as u64,
            len: json.len() as u32,
        };
        log.extend_from_slice(&json);
        log.push(b'\n');
        let jk = job_key_of(&key).unwrap().to_vec();
        let entry = jobs.entry(jk.clone()).or_default();
        entry.records.insert(key.clone(), Slot::of(loc, r));
        let mut adds = contributions(r);
        if entry.counted.is_none() {
            if let Some(k) = job_count_key(r) {
                entry.counted = Some(key.clone());
                adds.entry(k).or_default().jobs += 1;
            }
        }
        for (k, v) in adds {
            rollups.entry(k).or_default().add(&v);
        }
        for day in record_days(r) {
            days.entry(day).or_default().insert(jk.clone());
        }
    }
    std::fs::write(path.join("records").join("00000001.jsonl"), &log).unwrap();
    let mut batch = sled::Batch::default();
    for (jk, entry) in &jobs {
        batch.insert(prefixed(JOB, jk), entry.encode_v1());
    }
    for (day, keys) in &days {
        batch.insert(day_key(*day, 1), encode_job_list(keys.iter()));
    }
    let mut groups: BTreeMap<Vec<u8>, RollupGroup> = BTreeMap::new();
    for (k, v) in &rollups {
        groups.entry(group_key(k)).or_default().add(k, v);
    }
    for (gk, group) in groups {
        batch.insert(gk, group.encode_v3());
    }
    batch.insert(&[META, b's'][..], &1u64.to_be_bytes()[..]);
    batch.insert(&[META, b'f'][..], FORMAT_2);
    acct.apply_batch(batch).unwrap();
    db.flush().unwrap();
}

#[test]
fn format2_database_is_read_as_it_is_and_new_records_are_compressed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    // job 1 on two nodes (counted once, in n2's row: it arrived first), job 2 over two days,
    // job 3's usage only
    let a = job_end(1, "n1", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[100]);
    let b = job_end(1, "n2", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[50]);
    let c = job_end(2, "n1", 11 * DAY_MS - HOUR, 11 * DAY_MS + HOUR, &[7]);
    let u = job_usage(3, "n1", 12 * DAY_MS, 12 * DAY_MS + HOUR, &[HOUR / 2]);
    write_format2(&path, &[&b, &a, &c, &u]);
    let before = {
        let s = SledStore::open(&path).unwrap();
        assert_eq!(s.record_count().unwrap(), 4);
        let v = verify(&s).unwrap();
        assert!(v.mismatches.is_empty(), "{:?}", v.mismatches);
        assert_eq!((v.records, v.jobs), (4, 2));
        assert_eq!(s.job("alpha", 1).unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(s.counted_in("alpha", 1).unwrap(), job_count_key(&b));
        let mut on_day_10 = Vec::new();
        s.for_each_record_on_day(10, &mut |r| on_day_10.push(r.id().key()))
            .unwrap();
        assert_eq!(on_day_10, vec![a.id().key(), b.id().key(), c.id().key()]);
        // a resend of a format 2 record is a duplicate; a different record under its key a
        // conflict
        assert_eq!(
            s.put_batch(std::slice::from_ref(&a)).unwrap(),
            vec![PutOutcome::Duplicate { differs: false }]
        );
        let changed = job_end(1, "n1", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[999]);
        assert_eq!(
            s.put_batch(std::slice::from_ref(&changed)).unwrap(),
            vec![PutOutcome::Conflict { new: true }]
        );
        // a new record of an old job: the entry now holds both kinds of location
        let d = job_usage(1, "n1", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[HOUR / 4]);
        let e = job_end(4, "n1", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[1]);
        s.put_batch(&[d.clone(), e.clone()]).unwrap();
        assert_eq!(s.job("alpha", 1).unwrap().len(), 3);
        assert_eq!(s.counted_in("alpha", 1).unwrap(), job_count_key(&b));
        let v = verify(&s).unwrap();
        assert!(v.mismatches.is_empty(), "{:?}", v.mismatches);
        assert_eq!((v.records, v.jobs), (6, 3));
        totals(&s)
    };
    let mut names: Vec<String> = std::fs::read_dir(path.join("records"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["00000001.jsonl", "00000002.jsonl.zst"]);
    // reopened: marked format 3, everything still there
    let s = SledStore::open(&path).unwrap();
    assert_eq!(s.acct.get([META, b'f']).unwrap().as_deref(), Some(FORMAT));
    assert_eq!(totals(&s), before);
    assert_eq!(s.record_count().unwrap(), 6);
    let mut on_day_10 = Vec::new();
    s.for_each_record_on_day(10, &mut |r| on_day_10.push(r.id().key()))
        .unwrap();
    assert_eq!(on_day_10.len(), 5);
    // retention keeps the old segment while a kept record is in it, then drops it
    s.purge(Some(11), None).unwrap();
    assert_eq!(s.job("alpha", 2).unwrap(), vec![c]);
    assert!(s.job("alpha", 1).unwrap().is_empty());
    assert!(path.join("records").join("00000001.jsonl").exists());
    s.purge(Some(13), None).unwrap();
    assert_eq!(s.record_count().unwrap(), 0);
    assert!(!path.join("records").join("00000001.jsonl").exists());
    assert!(!path.join("records").join("00000002.jsonl.zst").exists());
}

#[test]
fn job_entries_round_trip_and_a_bad_one_names_its_key() {
    let jk = b"jalpha,7,".to_vec();
    let r1 = job_end(7, "n1", 10 * DAY_MS, 12 * DAY_MS, &[1]);
    let r2 = job_usage(7, "n2", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[1]);
    let mut entry = JobEntry::default();
    let framed = Loc::Framed {
        segment: 3,
        offset: 123_456,
        frame_len: 9_000,
        start: 31_000,
        len: 700,
    };
    entry
        .records
        .insert(r1.id().key().into_bytes(), Slot::of(framed, &r1));
    let plain = Loc::Plain {
        segment: 1,
        offset: 5,
        len: 600,
    };
    entry
        .records
        .insert(r2.id().key().into_bytes(), Slot::of(plain, &r2));
    entry.counted = Some(r1.id().key().into_bytes());
    let stored = entry.encode(&jk).unwrap();
    assert_eq!(stored[0], ENTRY_V2);
    assert!(stored.len() < 60, "{} bytes", stored.len());
    let back = JobEntry::decode(&jk, &stored).unwrap();
    assert_eq!(back.counted, entry.counted);
    assert_eq!(
        back.records
            .iter()
            .map(|(k, s)| (k.clone(), s.loc, s.first_day, s.last_day))
            .collect::<Vec<_>>(),
        entry
            .records
            .iter()
            .map(|(k, s)| (k.clone(), s.loc, s.first_day, s.last_day))
            .collect::<Vec<_>>()
    );
    // the counted record purged while another of the job stays: kept by its key
    entry.records.remove(r1.id().key().as_bytes());
    let back = JobEntry::decode(&jk, &entry.encode(&jk).unwrap()).unwrap();
    assert_eq!(back.counted, Some(r1.id().key().into_bytes()));
    // format 2's entries still read
    let back = JobEntry::decode(&jk, &entry.encode_v1()).unwrap();
    assert_eq!(back.records.len(), 1);
    for bad in [vec![ENTRY_V2, 1, 0, 9], vec![9], vec![]] {
        let err = JobEntry::decode(&jk, &bad).unwrap_err().to_string();
        assert!(
            err.contains("jalpha,7,") && err.contains("job entry (tree acct)"),
            "{err}"
        );
    }
}

#[test]
fn rollup_groups_keep_names_once_and_read_totals_added_later_as_zero() {
    let v = RollupValue {
        allocated_gpu_ms: 86_400_000 * 8,
        used_gpu_ms: 0,
        energy_mj: 700 * 86_400_000 * 8,
        jobs: 12,
        idle_gpu_ms: 0,
        idle_measured_gpu_ms: 0,
        slice_ms: 0,
        used_unmeasured_gpu_ms: 0,
    };
    let mut group = RollupGroup::default();
    for user in ["user001", "user002", "user003"] {
        for model in ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"] {
            group
                .rows
                .insert((user.into(), "gpu".into(), model.into()), v);
        }
    }
    let stored = group.encode(b"k").unwrap();
    let v3 = group.encode_v3();
    assert!(
        stored.len() * 3 < v3.len(),
        "{} bytes, version 3: {}",
        stored.len(),
        v3.len()
    );
    assert_eq!(RollupGroup::decode(b"k", &stored).unwrap().rows, group.rows);
    // a group stored when values had four totals: the others read 0
    let short = StoredGroup {
        names: vec!["u".into(), "p".into()],
        rows: vec![(0, 1, 1, vec![1, 2, 3, 4])],
    };
    let mut b = vec![ROLLUP_V4];
    postcard::to_io(&short, &mut b).unwrap();
    let read = RollupGroup::decode(b"k", &b).unwrap();
    assert_eq!(
        read.rows
            .get(&("u".to_string(), "p".to_string(), "p".to_string())),
        Some(&RollupValue {
            allocated_gpu_ms: 1,
            used_gpu_ms: 2,
            energy_mj: 3,
            jobs: 4,
            ..RollupValue::default()
        })
    );
    // more totals than this acctd knows, or a name that is not there: an error naming the key
    for (rows, says) in [
        (
            vec![(0, 0, 0, vec![1; 20])],
            "20 totals in a row: upgrade acctd (this one knows 8)",
        ),
        (vec![(0, 0, 7, vec![1])], "name 7 of 1"),
    ] {
        let mut b = vec![ROLLUP_V4];
        postcard::to_io(
            &StoredGroup {
                names: vec!["u".into()],
                rows,
            },
            &mut b,
        )
        .unwrap();
        let err = RollupGroup::decode(b"rkey", &b).unwrap_err().to_string();
        assert!(
            err.contains("rkey") && err.contains("rollup group (tree acct)") && err.contains(says),
            "{err}"
        );
    }
}

#[test]
fn open_waits_for_the_lock_of_a_handle_being_dropped_and_names_one_that_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let first = SledStore::open(&path).unwrap();
    first
        .put_batch(&[job_end(1, "n1", 10 * DAY_MS, 10 * DAY_MS + HOUR, &[1])])
        .unwrap();
    // held for the whole wait: the open fails and says why
    let err = SledStore::open(&path)
        .err()
        .expect("opened a locked database");
    assert!(err.to_string().contains("could not acquire lock"), "{err}");
    // let go while the second open waits: it opens and sees what the first acknowledged
    let dropper = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        drop(first);
    });
    let second = SledStore::open(&path).unwrap();
    dropper.join().unwrap();
    assert_eq!(second.job("alpha", 1).unwrap().len(), 1);
}

#[test]
fn records_compressed_with_the_sites_dictionary_read_back_beside_those_from_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let rec = |i: u32| {
        let start = 10 * DAY_MS + u64::from(i) * 60_000;
        job_end(
            i + 1,
            &format!("n{}", i % 50),
            start,
            start + HOUR,
            &[u64::from(i) * 37 % 1000, 5],
        )
    };
    let one_by_one = |s: &SledStore, ids: std::ops::Range<u32>| {
        for i in ids {
            assert_eq!(s.put_batch(&[rec(i)]).unwrap(), vec![PutOutcome::Accepted]);
        }
    };
    // a format 3 database as written before dictionaries: a frame per record, none named
    {
        let s = SledStore::open(&path).unwrap();
        one_by_one(&s, 0..100);
        assert_eq!(s.vlog.dictionary(), None, "fewer records than it trains on");
    }
    // the records received after a restart train one (the first dictionary id is 32768),
    // which compresses the frames from then on
    let first_new = 100 + vlog::TRAIN_RECORDS as u32;
    {
        let s = SledStore::open(&path).unwrap();
        let ids: Vec<u32> = (100..first_new).collect();
        for chunk in ids.chunks(500) {
            let batch: Vec<Record> = chunk.iter().map(|&i| rec(i)).collect();
            s.put_batch(&batch).unwrap();
        }
        assert_eq!(s.vlog.dictionary(), Some(32_768));
        one_by_one(&s, first_new..first_new + 10);
    }
    let records = path.join("records");
    assert!(records.join("dict-32768.zdict").exists());
    let s = SledStore::open(&path).unwrap();
    assert_eq!(s.vlog.dictionary(), Some(32_768), "kept, not trained again");
    assert_eq!(s.record_count().unwrap(), first_new as usize + 10);
    for i in (0..first_new + 10).step_by(7).chain([first_new + 9]) {
        assert_eq!(
            s.job("alpha", i + 1).unwrap(),
            vec![rec(i)],
            "job {}",
            i + 1
        );
    }
    let v = verify(&s).unwrap();
    assert!(v.mismatches.is_empty(), "{:?}", v.mismatches);
    drop(s);
    // without its dictionary a frame is an error naming segment, offset and dictionary;
    // the frames from before it still read
    std::fs::remove_file(records.join("dict-32768.zdict")).unwrap();
    let s = SledStore::open(&path).unwrap();
    let err = s.job("alpha", first_new + 10).unwrap_err().to_string();
    assert!(
        err.contains("records/00000002.jsonl.zst at byte")
            && err.contains("compressed with dictionary 32768"),
        "{err}"
    );
    assert_eq!(s.job("alpha", 5).unwrap(), vec![rec(4)]);
}
