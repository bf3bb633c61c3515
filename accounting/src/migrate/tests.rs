//! The move from sled into the store `SGPU_TEST_STORE` names (MariaDB in CI's second pass,
//! sled otherwise): everything arrives once, reports agree, a rerun changes nothing.

use super::*;
use crate::day::DAY_MS;
use crate::test_records::{in_run, job_end, job_usage, on_slices, with_slurm_window};
use crate::test_store::Fixture;
use sgpu_spool::{
    GpuRef, JobAction, JobStart, NodeAction, RecordBody, RecordId, RecordKind, Usage,
};

const HOUR: u64 = 3_600_000;
/// 2026-01-10, Unix ms.
const T0: u64 = 20_463 * DAY_MS;

fn job_start(job: u32, node: &str, start: u64) -> Record {
    let body = JobStart {
        user: "alice".into(),
        uid: 1001,
        account: Some("physics".into()),
        partition: Some("gpu".into()),
        start_time: start,
        gpus: vec![GpuRef {
            index: 0,
            uuid: format!("GPU-{node}-0"),
            name: Some(crate::test_records::H100.into()),
            energy_mj: Some(1_000),
            mig: None,
        }],
    };
    let id = RecordId::new("alpha", job, None, node, RecordKind::JobStart).unwrap();
    Record::new(id, start, RecordBody::JobStart(body)).unwrap()
}

fn step_usage(job: u32, node: &str, start: u64, end: u64) -> Record {
    let r = job_usage(job, node, start, end, &[end - start]);
    let (_, written, body) = r.into_parts();
    let RecordBody::JobUsage(b) = body else {
        panic!("not a job_usage")
    };
    let b: Usage = b;
    let id = RecordId::new("alpha", job, Some("0".into()), node, RecordKind::StepUsage).unwrap();
    Record::new(id, written, RecordBody::StepUsage(b)).unwrap()
}

/// `r` with its account set to `account`.
fn in_account(r: Record, account: &str) -> Record {
    let (id, written, mut body) = r.into_parts();
    match &mut body {
        RecordBody::JobEnd(b) => b.account = Some(account.into()),
        RecordBody::JobUsage(b) | RecordBody::StepUsage(b) => b.account = Some(account.into()),
        RecordBody::JobStart(b) => b.account = Some(account.into()),
    }
    Record::new(id, written, body).unwrap()
}

fn event(node: &str, t: u64, action: NodeAction, job: Option<u64>) -> NodeEvent {
    NodeEvent {
        id: format!("{node}-{t}"),
        cluster: "alpha".into(),
        node: node.into(),
        time_ms: t,
        action,
        source: "healthd".into(),
        uid: 0,
        user: "root".into(),
        reason: format!("at {t}"),
        previous_reason: None,
        forced: false,
        job: job.map(|job_id| JobAction {
            job_id,
            run: 0,
            user: "alice".into(),
            account: Some("physics".into()),
            partition: "gpu".into(),
            gpus: vec![0],
            idle_minutes: 30,
            policy: "util<5% for 1800s".into(),
            dry_run: false,
        }),
    }
}

/// A sled store with every kind the store holds: job starts, ends (multi-node, across
/// midnight, requeued runs, MIG slices, Slurm windows, two accounts), job and step usage,
/// a conflict, node events (drain, resume, idle actions). Job 3's `job_end` of `n2` (a
/// day later than `n1`'s) arrives first, so its count goes to the later day's row.
fn source() -> (tempfile::TempDir, SledStore) {
    let dir = tempfile::tempdir().unwrap();
    let sled = SledStore::open(&dir.path().join("db")).unwrap();
    let batch = vec![
        job_start(1, "n1", T0),
        job_end(1, "n1", T0, T0 + 2 * HOUR, &[7_000, 9_000]),
        job_usage(1, "n1", T0, T0 + 2 * HOUR, &[HOUR, HOUR / 2]),
        step_usage(1, "n1", T0, T0 + HOUR),
        // across midnight
        in_account(
            job_end(
                2,
                "n1",
                T0 + DAY_MS - HOUR,
                T0 + DAY_MS + 3 * HOUR,
                &[40_000],
            ),
            "chemistry",
        ),
        // requeued: two runs
        job_end(4, "n3", T0 + 5 * HOUR, T0 + 6 * HOUR, &[1_000]),
        in_run(job_end(4, "n3", T0 + 7 * HOUR, T0 + 9 * HOUR, &[2_000]), 1),
        // MIG slices with Slurm's window
        with_slurm_window(
            on_slices(
                job_end(5, "n1", T0 + 2 * DAY_MS, T0 + 2 * DAY_MS + HOUR, &[0, 0]),
                &[("3g.40gb", 3, 7), ("1g.10gb", 1, 7)],
            ),
            (T0 + 2 * DAY_MS) / 1000,
            (T0 + 2 * DAY_MS + HOUR) / 1000,
        ),
    ];
    assert!(
        sled.put_batch(&batch)
            .unwrap()
            .iter()
            .all(|o| *o == crate::store::PutOutcome::Accepted)
    );
    // job 3 on two nodes: n2 (ends a day later) arrives first and is counted
    sled.put_batch(&[job_end(3, "n2", T0, T0 + DAY_MS + HOUR, &[3_000])])
        .unwrap();
    sled.put_batch(&[job_end(3, "n1", T0, T0 + HOUR, &[1_000])])
        .unwrap();
    // a different record under job 1's identity: kept as a conflict
    let other = job_end(1, "n1", T0, T0 + 3 * HOUR, &[1, 2]);
    assert_eq!(
        sled.put_batch(&[other]).unwrap(),
        vec![crate::store::PutOutcome::Conflict { new: true }]
    );
    sled.put_events(&[
        event("n1", T0 + HOUR, NodeAction::Drain, None),
        event("n1", T0 + 2 * HOUR, NodeAction::Resume, None),
        event("n3", T0 + 4 * HOUR, NodeAction::IdleWarn, Some(4)),
        event("n3", T0 + 5 * HOUR, NodeAction::IdleCancel, Some(4)),
    ])
    .unwrap();
    (dir, sled)
}

/// The report rows of `q` in `store`, sorted.
fn rows(store: &dyn Store, q: &str) -> Vec<String> {
    let q = ReportQuery::parse(q).unwrap();
    let mut rows: Vec<String> = report(store, &q, None)
        .unwrap()
        .iter()
        .map(|r| format!("{r:?}"))
        .collect();
    rows.sort();
    rows
}

fn quiet(_: &str) {}

#[test]
fn every_kind_arrives_once_and_reports_agree() {
    let (_dir, sled) = source();
    let fx = Fixture::new();
    let target = fx.open();
    let m = migrate(&sled, target.as_ref(), "the test store", &mut quiet).unwrap();
    assert_eq!(
        m.moved,
        Moved {
            records: 10,
            already: 0,
            conflicts: 1,
            events: 4,
            rollup_rows: 0,
            rollup_days: None,
        }
    );
    let kinds: Vec<(&str, u64)> = m
        .tally
        .records
        .iter()
        .map(|(k, n)| (k.as_str(), *n))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("job_end", 7),
            ("job_start", 1),
            ("job_usage", 1),
            ("step_usage", 1)
        ]
    );
    assert_eq!((m.tally.conflicts, m.tally.events), (1, 4));
    let physics = m.tally.accounts[&("alpha".to_string(), "physics".to_string())];
    assert_eq!(physics.jobs, 4);
    assert_eq!(physics.energy_mj, 16_000 + 4_000 + 3_000);
    assert_eq!(
        m.tally.accounts[&("alpha".to_string(), "chemistry".to_string())].energy_mj,
        40_000
    );

    // reports over whole days, cut days and periods agree row by row
    let day_end = (T0 + 3 * DAY_MS) / 1000;
    for q in [
        format!(
            "start={}&end={day_end}&group_by=account,user,partition,gpu,day",
            T0 / 1000
        ),
        format!(
            "start={}&end={}&group_by=account,gpu",
            (T0 + HOUR / 2) / 1000,
            (T0 + DAY_MS + 2 * HOUR) / 1000
        ),
        format!("start={}&end={day_end}&group_by=cluster,week", T0 / 1000),
    ] {
        assert_eq!(rows(&sled, &q), rows(target.as_ref(), &q), "{q}");
    }
    // job 3 counted in the same row as in sled (n2's, the later day), not n1's
    assert_eq!(
        target.counted_in("alpha", 3).unwrap(),
        sled.counted_in("alpha", 3).unwrap()
    );
    assert_eq!(
        target.counted_in("alpha", 3).unwrap().map(|k| k.day),
        Some(crate::day::day_of(T0 + DAY_MS))
    );
    for job in 1..=5 {
        assert_eq!(
            target.job("alpha", job).unwrap(),
            sled.job("alpha", job).unwrap()
        );
    }
    let mut conflicts = Vec::new();
    target
        .for_each_conflict(&mut |c| conflicts.push((c.key, c.record)))
        .unwrap();
    let mut kept = Vec::new();
    sled.for_each_conflict(&mut |c| kept.push((c.key, c.record)))
        .unwrap();
    assert_eq!(conflicts, kept);
    if crate::test_store::mariadb() {
        // MariaDB takes them as they are: their arrival time too
        let mut times = (Vec::new(), Vec::new());
        target
            .for_each_conflict(&mut |c| times.0.push(c.received_ms))
            .unwrap();
        sled.for_each_conflict(&mut |c| times.1.push(c.received_ms))
            .unwrap();
        assert_eq!(times.0, times.1);
    }
    assert!(verify(target.as_ref()).unwrap().mismatches.is_empty());
}

#[test]
fn a_rerun_or_a_resumed_run_gives_the_same_database() {
    let (_dir, sled) = source();
    let fx = Fixture::new();
    let target = fx.open();
    // an interrupted first run: part of the records (and one event) got there
    let mut some = Vec::new();
    sled.for_each_record(&mut |r| {
        if r.id().job_id() <= 2 {
            some.push(r);
        }
    })
    .unwrap();
    target.put_batch(&some).unwrap();
    target
        .put_events(&[event("n1", T0 + HOUR, NodeAction::Drain, None)])
        .unwrap();
    let first = migrate(&sled, target.as_ref(), "the test store", &mut quiet).unwrap();
    assert_eq!(first.moved.already, some.len() as u64);
    assert_eq!(first.moved.records + first.moved.already, 10);
    assert_eq!((first.moved.conflicts, first.moved.events), (1, 3));
    let after_first = Tally::of(target.as_ref()).unwrap();

    let second = migrate(&sled, target.as_ref(), "the test store", &mut quiet).unwrap();
    assert_eq!(
        second.moved,
        Moved {
            records: 0,
            already: 10,
            conflicts: 0,
            events: 0,
            rollup_rows: 0,
            rollup_days: None,
        }
    );
    assert_eq!(Tally::of(target.as_ref()).unwrap(), after_first);
    assert!(second.tally.differences(&after_first).is_empty());
    // the sled side was only read
    assert_eq!(Tally::of(&sled).unwrap(), after_first);
}

#[test]
fn a_target_with_other_records_is_named_as_different() {
    let (_dir, sled) = source();
    let fx = Fixture::new();
    let target = fx.open();
    target
        .put_batch(&[job_end(99, "n9", T0, T0 + HOUR, &[5])])
        .unwrap();
    let e = migrate(&sled, target.as_ref(), "mysql://acct@db/sgpu", &mut quiet).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, MigrateError::Differ(..)), "{text}");
    assert!(text.contains("job_end records: sled 7, target 8"), "{text}");
    assert!(text.contains("account \"physics\""), "{text}");
    assert!(text.contains("mysql://acct@db/sgpu"), "{text}");
}

/// Retention on the source: records of the first day gone, rollups kept (`records`), or
/// rollups of the first day gone, records kept (`!records`). MariaDB takes the rows the
/// records do not make as they are; a store that cannot is refused before any write.
fn move_purged(records: bool) {
    let (_dir, sled) = source();
    let d0 = crate::day::day_of(T0);
    if records {
        sled.purge(Some(d0 + 1), None).unwrap();
    } else {
        sled.purge(None, Some(d0 + 1)).unwrap();
    }
    let fx = Fixture::new();
    let target = fx.open();
    let result = migrate(&sled, target.as_ref(), "t", &mut quiet);
    if !crate::test_store::mariadb() {
        let e = result.unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, MigrateError::Purged { .. }), "{text}");
        assert!(text.contains("2026-01-10"), "{text}");
        assert!(text.contains("Nothing was written"), "{text}");
        assert_eq!(Tally::of(target.as_ref()).unwrap().rollup_rows, 0);
        let mut n = 0;
        target.for_each_record(&mut |_| n += 1).unwrap();
        assert_eq!(n, 0);
        return;
    }
    let m = result.unwrap();
    assert!(m.moved.rollup_rows > 0, "{m:?}");
    assert_eq!(m.moved.rollup_days, Some((d0, d0)));
    let day_end = (T0 + 3 * DAY_MS) / 1000;
    for q in [
        format!(
            "start={}&end={day_end}&group_by=account,user,gpu,day",
            T0 / 1000
        ),
        format!(
            "start={}&end={day_end}&group_by=account",
            (T0 + HOUR / 2) / 1000
        ),
    ] {
        assert_eq!(rows(&sled, &q), rows(target.as_ref(), &q), "{q}");
    }
    let again = migrate(&sled, target.as_ref(), "t", &mut quiet).unwrap();
    assert_eq!((again.moved.records, again.moved.rollup_rows), (0, 0));
    assert_eq!(Tally::of(target.as_ref()).unwrap(), m.tally);
}

#[test]
fn rollups_of_purged_records_move_as_they_are() {
    move_purged(true);
}

#[test]
fn purged_rollups_stay_purged() {
    move_purged(false);
}

#[test]
fn bad_sources_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let e = open_source(&missing).err().unwrap();
    assert!(matches!(e, MigrateError::Missing(_)), "{e}");
    assert!(e.to_string().contains("no such directory"), "{e}");

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = open_source(&empty).err().unwrap();
    assert!(e.to_string().contains("not a sled store"), "{e}");
    assert!(!empty.join("db").exists(), "the check created a store");

    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let e = open_source(&file).err().unwrap();
    assert!(e.to_string().contains("not a directory"), "{e}");

    let held = dir.path().join("held");
    let acctd = SledStore::open(&held).unwrap();
    acctd.flush().unwrap();
    let e = open_source(&held).err().unwrap();
    assert!(matches!(e, MigrateError::Locked(_)), "{e}");
    assert!(e.to_string().contains("stop it"), "{e}");
    drop(acctd);
}

#[test]
fn due_admin_comments_move_to_the_state_dir_once() {
    let dir = tempfile::tempdir().unwrap();
    let (from, state) = (dir.path().join("sled"), dir.path().join("state"));
    std::fs::create_dir_all(&from).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    // none queued: nothing written
    assert_eq!(move_due_jobs(&from, &state).unwrap(), 0);
    assert!(!state.join(STATE_DUE_FILE).exists());
    std::fs::write(from.join(SLED_DUE_FILE), br#"[["alpha",7],["alpha",9]]"#).unwrap();
    std::fs::write(state.join(STATE_DUE_FILE), br#"[["beta",1],["alpha",9]]"#).unwrap();
    for _ in 0..2 {
        assert_eq!(move_due_jobs(&from, &state).unwrap(), 2);
        let all: Vec<(String, u32)> =
            serde_json::from_slice(&std::fs::read(state.join(STATE_DUE_FILE)).unwrap()).unwrap();
        assert_eq!(
            all,
            vec![("beta".into(), 1), ("alpha".into(), 9), ("alpha".into(), 7)]
        );
    }
    std::fs::write(from.join(SLED_DUE_FILE), b"[[").unwrap();
    let e = move_due_jobs(&from, &state).unwrap_err().to_string();
    assert!(
        e.contains(SLED_DUE_FILE) && e.contains("not a list of due jobs"),
        "{e}"
    );
}
