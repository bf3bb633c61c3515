use super::*;
use crate::day::parse_day;
use crate::test_records::{job_end, job_usage};
use crate::test_store::Fixture;
use sgpu_spool::RecordBody;

const HOUR: u64 = 3_600_000;

fn with_owner(mut r: Record, user: &str, account: &str) -> Record {
    let id = r.id().clone();
    let written = r.written_at();
    let mut body = r.body().clone();
    match &mut body {
        RecordBody::JobEnd(b) => {
            b.user = user.into();
            b.account = Some(account.into());
        }
        RecordBody::JobUsage(b) => {
            b.user = user.into();
            b.account = Some(account.into());
        }
        _ => {}
    }
    r = Record::new(id, written, body).unwrap();
    r
}

/// A store of the kind `SGPU_TEST_STORE` names (crate::test_store).
fn store() -> (Fixture, Box<dyn Store>) {
    let f = Fixture::new();
    let s = f.open();
    (f, s)
}

fn q(s: &str) -> ReportQuery {
    ReportQuery::parse(s).unwrap()
}

fn total(rows: &[ReportRow]) -> (u64, u64, u64, u64) {
    rows.iter().fold((0, 0, 0, 0), |a, r| {
        (
            a.0 + r.allocated_gpu_ms,
            a.1 + r.used_gpu_ms,
            a.2 + r.energy_mj,
            a.3 + r.jobs,
        )
    })
}

fn window(s: &dyn Store, start_ms: u64, end_ms: u64) -> (u64, u64, u64, u64) {
    let query = ReportQuery {
        zone: crate::zone::SiteZone::utc(),
        start_ms,
        end_ms,
        filters: Filters::default(),
        group_by: vec![],
        limit: MAX_JOBS,
    };
    total(&report(s, &query, None).unwrap())
}

#[test]
fn straddling_job_counts_only_the_part_inside_the_window() {
    let (_d, s) = store();
    // 22:00 on day 10 to 04:00 on day 11, 2 GPUs, 6 000 mJ each; used 3 h per GPU.
    let (start, end) = (10 * DAY_MS + 22 * HOUR, 11 * DAY_MS + 4 * HOUR);
    s.put_batch(&[
        job_end(7, "n1", start, end, &[6_000, 6_000]),
        job_usage(7, "n1", start, end, &[3 * HOUR, 3 * HOUR]),
    ])
    .unwrap();
    // 23:00 to 02:00: half the job.
    let (alloc, used, energy, jobs) = window(&*s, 10 * DAY_MS + 23 * HOUR, 11 * DAY_MS + 2 * HOUR);
    assert_eq!(alloc, 2 * 3 * HOUR);
    assert_eq!(used, 2 * 3 * HOUR / 2);
    assert_eq!(energy, 6_000);
    assert_eq!(jobs, 0, "the job ended after the window");
    // Within one day, both edges in it.
    assert_eq!(
        window(&*s, 11 * DAY_MS + HOUR, 11 * DAY_MS + 2 * HOUR).0,
        2 * HOUR
    );
    // The whole job, window on day boundaries (rollups only) and cut anywhere around it.
    let whole = (2 * 6 * HOUR, 6 * HOUR, 12_000, 1);
    assert_eq!(window(&*s, 10 * DAY_MS, 12 * DAY_MS), whole);
    assert_eq!(window(&*s, start, end + 1), whole);
    assert_eq!(window(&*s, start - 5, end + HOUR), whole);
    // Ending exactly at the job's end excludes it from `jobs` ([start, end) window).
    assert_eq!(window(&*s, start, end).3, 0);
}

#[test]
fn windows_add_up_at_any_cut_and_agree_with_rollups() {
    let (_d, s) = store();
    let mut batch = Vec::new();
    for j in 1..=40u32 {
        let start = 5 * DAY_MS + u64::from(j) * 7 * HOUR + u64::from(j) * 1_234;
        let end = start + (1 + u64::from(j % 9)) * 5 * HOUR + 17;
        let e = 1_000_003 * u64::from(j + 1);
        batch.push(job_end(j, "n1", start, end, &[e, e / 3]));
        batch.push(job_usage(j, "n1", start, end, &[(end - start) / 2, 11]));
    }
    s.put_batch(&batch).unwrap();
    let all = window(&*s, 0, 40 * DAY_MS);
    // Rollup totals over all days are the same as the report.
    let mut t = RollupValue::default();
    s.for_each_rollup(0, u32::MAX, &mut |_, v| t.add(&v))
        .unwrap();
    assert_eq!(
        all,
        (t.allocated_gpu_ms, t.used_gpu_ms, t.energy_mj, t.jobs)
    );
    assert_eq!(all.3, 40);
    for cut in [
        5 * DAY_MS + 1,
        6 * DAY_MS,
        7 * DAY_MS + 13 * HOUR + 999,
        9 * DAY_MS + 23 * HOUR,
    ] {
        let a = window(&*s, 0, cut);
        let b = window(&*s, cut, 40 * DAY_MS);
        assert_eq!(
            (a.0 + b.0, a.1 + b.1, a.2 + b.2, a.3 + b.3),
            all,
            "cut at {cut}"
        );
    }
    // A whole day computed from the records equals its rollup row sum.
    for day in 5..12u32 {
        let mut r = RollupValue::default();
        s.for_each_rollup(day, day, &mut |_, v| r.add(&v)).unwrap();
        let mut p = RollupValue::default();
        let from = u64::from(day) * DAY_MS;
        for v in partial_day(&*s, day, from, from + DAY_MS).unwrap().values() {
            p.add(v);
        }
        assert_eq!(p, r, "day {day}");
    }
}

#[test]
fn groups_by_owner_and_period_and_filters_sets() {
    let (_d, s) = store();
    let d = u64::from(parse_day("2026-01-30").unwrap()) * DAY_MS;
    s.put_batch(&[
        with_owner(job_end(1, "n1", d, d + HOUR, &[10]), "alice", "physics"),
        with_owner(
            job_end(2, "n1", d + DAY_MS * 3, d + DAY_MS * 3 + 2 * HOUR, &[20]),
            "bob",
            "chem",
        ),
        with_owner(
            job_end(3, "n2", d, d + 4 * HOUR, &[30, 30]),
            "bob",
            "physics",
        ),
    ])
    .unwrap();
    let rows = report(
        &*s,
        &q("start=2026-01-01&end=2026-03-01&group_by=account,month"),
        None,
    )
    .unwrap();
    let got: Vec<(Option<String>, Option<String>, u64)> = rows
        .iter()
        .map(|r| {
            (
                r.period.clone(),
                r.account.clone(),
                r.allocated_gpu_ms / HOUR,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (Some("2026-01".into()), Some("physics".into()), 9),
            (Some("2026-02".into()), Some("chem".into()), 2),
        ]
    );
    let rows = report(
        &*s,
        &q("start=2026-01-01&end=2026-03-01&user=bob&group_by=user,account"),
        None,
    )
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.user.as_deref() == Some("bob")));
    let rows = report(
        &*s,
        &q("start=2026-01-01&end=2026-03-01&account=physics,chem"),
        None,
    )
    .unwrap();
    assert_eq!(total(&rows), (11 * HOUR, 0, 90, 3));
    let rows = report(
        &*s,
        &q("start=2026-01-01&end=2026-03-01&account=nope"),
        None,
    )
    .unwrap();
    assert!(rows.is_empty());
}

#[test]
fn periods_are_utc_iso_weeks_and_calendar_months() {
    let day = |s: &str| parse_day(s).unwrap();
    assert_eq!(Period::Week.label(day("2026-01-01")), "2026-W01");
    assert_eq!(Period::Week.label(day("2027-01-01")), "2026-W53");
    assert_eq!(Period::Week.label(day("2024-12-30")), "2025-W01");
    assert_eq!(Period::Week.label(day("2026-11-23")), "2026-W48");
    assert_eq!(Period::Week.label(day("2026-11-22")), "2026-W47");
    assert_eq!(Period::Month.label(day("2024-02-29")), "2024-02");
    assert_eq!(Period::Day.label(day("2024-02-29")), "2024-02-29");
}

#[test]
fn queries_are_checked_and_name_the_parameter() {
    let p = |s: &str| ReportQuery::parse(s).unwrap_err().param;
    assert_eq!(p("end=100"), "start");
    assert_eq!(p("start=100"), "end");
    assert_eq!(p("start=100&end=100"), "end");
    assert_eq!(p("start=yesterday&end=100"), "start");
    assert_eq!(p("start=1&end=2&group_by=day,month"), "group_by");
    assert_eq!(p("start=1&end=2&group_by=colour"), "group_by");
    assert_eq!(p("start=1&end=2&jobs=12,x"), "jobs");
    assert_eq!(p("start=1&end=2&colour=red"), "colour");
    let ok = q("start=1&end=2&user=a%2Cb&jobs=5.batch,6&group_by=GPU,week&limit=3");
    assert_eq!((ok.start_ms, ok.end_ms), (1000, 2000));
    assert_eq!(ok.filters.users.len(), 2);
    assert_eq!(ok.filters.jobs, BTreeSet::from([5, 6]));
    assert_eq!(
        ok.group_by,
        vec![GroupBy::Gpu, GroupBy::Period(Period::Week)]
    );
    assert_eq!(ok.limit, 3);
}

#[test]
fn a_user_scope_sees_only_their_own() {
    let mut f = Filters::default();
    f.scope(&ReadScope::User("alice".into())).unwrap();
    assert_eq!(f.users, BTreeSet::from(["alice".to_string()]));
    let mut f = Filters {
        users: BTreeSet::from(["bob".to_string()]),
        ..Filters::default()
    };
    assert!(
        f.scope(&ReadScope::User("alice".into()))
            .unwrap_err()
            .to_string()
            .contains("bob")
    );
    f.scope(&ReadScope::All).unwrap();
    assert_eq!(f.users.len(), 1);
}

#[test]
fn job_lists_cover_the_window_and_whole_jobs() {
    let (_d, s) = store();
    let d = 20 * DAY_MS;
    s.put_batch(&[
        with_owner(
            job_end(1, "n1", d + HOUR, d + 3 * HOUR, &[10, 20]),
            "alice",
            "physics",
        ),
        with_owner(
            job_end(1, "n2", d + HOUR, d + 3 * HOUR, &[5]),
            "alice",
            "physics",
        ),
        with_owner(
            job_usage(1, "n1", d + HOUR, d + 3 * HOUR, &[HOUR, HOUR]),
            "alice",
            "physics",
        ),
        with_owner(
            job_end(2, "n1", d + DAY_MS, d + DAY_MS + HOUR, &[1]),
            "bob",
            "chem",
        ),
    ])
    .unwrap();
    let (jobs, more) = jobs(
        &*s,
        &q(&format!("start={}&end={}", d / 1000, (d + DAY_MS) / 1000)),
        None,
    )
    .unwrap();
    assert!(!more);
    assert_eq!(jobs.len(), 1);
    let j = &jobs[0];
    assert_eq!((j.job_id, j.user.as_str(), j.gpus), (1, "alice", 3));
    assert_eq!(j.nodes, vec!["n1", "n2"]);
    assert_eq!(j.allocated_gpu_ms, 3 * 2 * HOUR);
    assert_eq!(j.used_gpu_ms, 2 * HOUR);
    assert_eq!(j.energy_mj, 35);
    assert_eq!(j.end_ms, Some(d + 3 * HOUR));
    let all = format!("start={}&end={}", d / 1000, (d + 2 * DAY_MS) / 1000);
    assert_eq!(super::jobs(&*s, &q(&all), None).unwrap().0.len(), 2);
    let (only, _) = super::jobs(&*s, &q(&format!("{all}&account=chem")), None).unwrap();
    assert_eq!(only[0].job_id, 2);
    let (only, _) = super::jobs(&*s, &q(&format!("{all}&jobs=2")), None).unwrap();
    assert_eq!(only.len(), 1);
    let (one, more) = super::jobs(&*s, &q(&format!("{all}&limit=1")), None).unwrap();
    assert_eq!((one.len(), more), (1, true));
}

#[test]
fn slurm_window_sets_allocated_time_in_reports_and_jobs() {
    let (_d, s) = store();
    // the gates saw 00:00:00.300 to 01:00:00.500 of day 11; slurmctld's window starts 2 s
    // before midnight (day 10) and ends at 01:00:00; 2 GPUs, 5 000 mJ each
    let gate = job_end(
        7,
        "n1",
        11 * DAY_MS + 300,
        11 * DAY_MS + HOUR + 500,
        &[5_000, 5_000],
    );
    let r = crate::test_records::with_slurm_window(gate, 11 * 86_400 - 2, 11 * 86_400 + 3_600);
    s.put_batch(&[r]).unwrap();
    // whole days (rollups) and windows cut anywhere agree with Slurm's window
    let whole = (2 * (HOUR + 2_000), 0, 10_000, 1);
    assert_eq!(window(&*s, 10 * DAY_MS, 12 * DAY_MS), whole);
    assert_eq!(
        window(&*s, 11 * DAY_MS - 5_000, 11 * DAY_MS + 2 * HOUR),
        whole
    );
    // the 2 s before midnight: allocated there, but no energy (measured from 00:00:00.300)
    assert_eq!(
        window(&*s, 11 * DAY_MS - 2_000, 11 * DAY_MS),
        (2 * 2_000, 0, 0, 0)
    );
    assert_eq!(window(&*s, 10 * DAY_MS, 11 * DAY_MS).0, 2 * 2_000);
    let mut day10 = RollupValue::default();
    s.for_each_rollup(10, 10, &mut |_, v| day10.add(&v))
        .unwrap();
    assert_eq!(day10.allocated_gpu_ms, 2 * 2_000);
    // the job list's whole-job figure is the record's
    let (jobs, _) = jobs(
        &*s,
        &ReportQuery {
            zone: crate::zone::SiteZone::utc(),
            start_ms: 11 * DAY_MS - 1_000,
            end_ms: 11 * DAY_MS,
            filters: Filters::default(),
            group_by: vec![],
            limit: MAX_JOBS,
        },
        None,
    )
    .unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].allocated_gpu_ms, 2 * (HOUR + 2_000));
}

/// A `step_usage` of `job` on `node` whose account and partition the job's script set.
fn step_with_account(job: u32, node: &str, start: u64, end: u64, account: &str) -> Record {
    let RecordBody::JobUsage(mut b) = job_usage(job, node, start, end, &[HOUR]).body().clone()
    else {
        unreachable!()
    };
    b.user = "mallory".into();
    b.account = Some(account.into());
    b.partition = Some("debug".into());
    let id = sgpu_spool::RecordId::new(
        "alpha",
        job,
        Some("0".into()),
        node,
        sgpu_spool::RecordKind::StepUsage,
    )
    .unwrap();
    Record::new(id, end, RecordBody::StepUsage(b)).unwrap()
}

#[test]
fn job_identity_comes_from_trusted_records_only() {
    let d = 30 * DAY_MS;
    let end = with_owner(job_end(7, "n1", d, d + HOUR, &[1]), "alice", "physics");
    let step = step_with_account(7, "n1", d, d + HOUR, "chemistry");
    // whatever order the records merge in, the job is physics/alice/gpu
    for order in [[&end, &step], [&step, &end]] {
        let (mut jobs, mut ranks) = (BTreeMap::new(), BTreeMap::new());
        for r in order {
            merge_job(&mut jobs, &mut ranks, r);
        }
        let j = &jobs[&("alpha".to_string(), 7)];
        assert_eq!(
            (j.user.as_str(), j.account.as_str(), j.partition.as_str()),
            ("alice", "physics", "gpu")
        );
    }
    // a job with only a step record has no identity rather than the step's
    let (mut jobs, mut ranks) = (BTreeMap::new(), BTreeMap::new());
    merge_job(&mut jobs, &mut ranks, &step);
    let j = &jobs[&("alpha".to_string(), 7)];
    assert_eq!((j.user.as_str(), j.account.as_str()), ("", ""));
    // and reports never count a step under its account
    let (_d, s) = store();
    s.put_batch(&[end.clone(), step.clone()]).unwrap();
    let rows = report(
        &*s,
        &q(&format!(
            "start={}&end={}&group_by=account",
            d / 1000,
            (d + DAY_MS) / 1000
        )),
        None,
    )
    .unwrap();
    assert!(
        rows.iter()
            .all(|r| r.account.as_deref() != Some("chemistry")),
        "{rows:?}"
    );
}

/// `r` (a `job_usage`) with each GPU idle `idle[i]` ms (None: not measured on any GPU).
fn with_idle(r: Record, idle: Option<&[u64]>) -> Record {
    let (id, written, body) = r.into_parts();
    let RecordBody::JobUsage(mut b) = body else {
        panic!("not a job_usage")
    };
    if let Some(idle) = idle {
        for (g, &i) in b.gpus.iter_mut().zip(idle) {
            g.idle_ms = Some(i);
            g.idle_periods = (i > 0).then(|| {
                vec![sgpu_spool::IdlePeriod {
                    start: b.window_start,
                    end: b.window_start + i,
                }]
            });
            if i == 0 {
                g.idle_periods = Some(vec![]);
            }
        }
        b.idle_gpu_ms = Some(idle.iter().sum());
    }
    Record::new(id, written, RecordBody::JobUsage(b)).unwrap()
}

#[test]
fn idle_time_is_summed_where_measured_and_unknown_elsewhere() {
    let (_d, s) = store();
    let day = parse_day("2026-03-02").unwrap() as u64 * DAY_MS;
    // job 1: 2 GPUs over 10 h across midnight, idle 4 h and 0 h; job 2 (bob): not measured
    let (start, end) = (day - 4 * HOUR, day + 6 * HOUR);
    s.put_batch(&[
        with_owner(job_end(1, "n1", start, end, &[1, 1]), "alice", "phys"),
        with_owner(
            with_idle(
                job_usage(1, "n1", start, end, &[HOUR, HOUR]),
                Some(&[4 * HOUR, 0]),
            ),
            "alice",
            "phys",
        ),
        with_owner(job_end(2, "n2", start, end, &[1]), "bob", "phys"),
        with_owner(job_usage(2, "n2", start, end, &[HOUR]), "bob", "phys"),
    ])
    .unwrap();
    let by_user = |from: u64, to: u64| {
        let mut query = q(&format!(
            "start={}&end={}&group_by=user",
            from / 1000,
            to / 1000
        ));
        query.start_ms = from;
        query.end_ms = to;
        report(&*s, &query, None).unwrap()
    };
    // whole days (rollups) and the partial edges (records) agree with the records
    for (from, to) in [
        (day - DAY_MS, day + DAY_MS),
        (start, end),
        (day - HOUR, day + HOUR),
    ] {
        let rows = by_user(from, to);
        let alice = rows
            .iter()
            .find(|r| r.user.as_deref() == Some("alice"))
            .unwrap();
        let bob = rows
            .iter()
            .find(|r| r.user.as_deref() == Some("bob"))
            .unwrap();
        let inside = (to.min(end) - from.max(start)) as f64 / (end - start) as f64;
        let idle = alice.idle_gpu_ms.unwrap() as f64;
        assert!(
            (idle - 4.0 * HOUR as f64 * inside).abs() <= 2.0,
            "{alice:?}"
        );
        assert_eq!(
            alice.idle_measured_gpu_ms,
            Some(2 * (to.min(end) - from.max(start))),
            "{alice:?}"
        );
        assert_eq!(bob.idle_gpu_ms, None, "{bob:?}");
        assert_eq!(bob.idle_measured_gpu_ms, None, "{bob:?}");
    }
    // the job list: whole-job idle time where measured
    let mut query = q(&format!("start={}&end={}", start / 1000, end / 1000));
    query.start_ms = start;
    query.end_ms = end;
    let (list, _) = jobs(&*s, &query, None).unwrap();
    let idle: Vec<(u32, Option<u64>)> = list.iter().map(|j| (j.job_id, j.idle_gpu_ms)).collect();
    assert_eq!(idle, [(1, Some(4 * HOUR)), (2, None)]);
}

#[test]
fn a_job_on_a_mig_slice_is_billed_its_share_in_reports_and_jobs() {
    let (_d, s) = store();
    // a 2g.20gb slice (2 of 7) from 22:00 on day 10 to 04:00 on day 11: 6 h x 2/7
    let (start, end) = (10 * DAY_MS + 22 * HOUR, 11 * DAY_MS + 4 * HOUR);
    let r =
        crate::test_records::on_slices(job_end(7, "n1", start, end, &[0]), &[("2g.20gb", 2, 7)]);
    s.put_batch(&[r]).unwrap();
    let billed = 6_171_429; // 21600000 x 2/7 = 6171428.57
    assert_eq!(window(&*s, 10 * DAY_MS, 12 * DAY_MS), (billed, 0, 0, 1));
    // windows cut anywhere (partial days from the records, whole days from the rollups)
    // add up to the same bill: nothing lost, nothing added
    for cut in [
        10 * DAY_MS + 23 * HOUR,
        11 * DAY_MS,
        11 * DAY_MS + 1,
        11 * DAY_MS + 3 * HOUR + 7,
    ] {
        let (a, b) = (
            window(&*s, 10 * DAY_MS, cut).0,
            window(&*s, cut, 12 * DAY_MS).0,
        );
        assert_eq!(a + b, billed, "cut at {cut}: {a} + {b}");
    }
    // 23:00 to 01:00 is a third of the job: a third of the bill, within a ms
    let third = window(&*s, 10 * DAY_MS + 23 * HOUR, 11 * DAY_MS + HOUR).0;
    assert!(third.abs_diff(billed / 3) <= 1, "{third}");
    // a job on a whole GPU beside it: its used time is measured
    s.put_batch(&[job_end(8, "n2", start, end, &[0])]).unwrap();
    // the job list bills the same
    let (jobs, _) = jobs(
        &*s,
        &ReportQuery {
            zone: crate::zone::SiteZone::utc(),
            start_ms: 10 * DAY_MS,
            end_ms: 12 * DAY_MS,
            filters: Filters::default(),
            group_by: vec![],
            limit: MAX_JOBS,
        },
        None,
    )
    .unwrap();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert_eq!(jobs[0].allocated_gpu_ms, billed);
    // the slice's used time is unknown (none of its allocated time measured), not 0
    assert_eq!(jobs[0].used_measured_gpu_ms, Some(0));
    assert_eq!((jobs[1].job_id, jobs[1].used_measured_gpu_ms), (8, None));
}

#[test]
fn reports_group_by_mig_profile_and_parent_gpu() {
    use crate::test_records::{H100, on_slices};
    let (_d, s) = store();
    let d = u64::from(parse_day("2026-01-30").unwrap()) * DAY_MS;
    s.put_batch(&[
        job_end(1, "n1", d, d + HOUR, &[10]),
        on_slices(job_end(2, "n2", d, d + HOUR, &[0]), &[("2g.20gb", 2, 7)]),
        on_slices(
            job_end(3, "n2", d, d + 2 * HOUR, &[0, 0]),
            &[("1g.10gb", 1, 7), ("1g.10gb", 1, 7)],
        ),
    ])
    .unwrap();
    let rows = |g: &str| -> Vec<(Option<String>, Option<String>, u64, u64)> {
        let mut v: Vec<_> = report(
            &*s,
            &q(&format!("start=2026-01-30&end=2026-01-31&group_by={g}")),
            None,
        )
        .unwrap()
        .into_iter()
        .map(|r| (r.gpu_model, r.mig_profile, r.allocated_gpu_ms, r.jobs))
        .collect();
        v.sort();
        v
    };
    // 1 h whole; 1 h of 2g = 2/7 h; 2 h on two 1g = 2 x 2/7... each 2 h x 1/7 = 1028571
    assert_eq!(
        rows("profile"),
        [
            (None, Some(String::new()), HOUR, 1),
            (None, Some("1g.10gb".into()), 2 * 1_028_571, 1),
            (None, Some("2g.20gb".into()), 1_028_571, 1),
        ]
    );
    assert_eq!(
        rows("gpu,profile"),
        [
            (Some(H100.into()), Some(String::new()), HOUR, 1),
            (Some(H100.into()), Some("1g.10gb".into()), 2 * 1_028_571, 1),
            (Some(H100.into()), Some("2g.20gb".into()), 1_028_571, 1),
        ]
    );
    // grouped by GPU alone: the records' names, one row per profile, as before
    assert_eq!(
        rows("gpu"),
        [
            (Some(H100.into()), None, HOUR, 1),
            (Some(format!("{H100} MIG 1g.10gb")), None, 2 * 1_028_571, 1),
            (Some(format!("{H100} MIG 2g.20gb")), None, 1_028_571, 1),
        ]
    );
    assert!(ReportQuery::parse("start=2026-01-30&end=2026-01-31&group_by=mig_profile").is_ok());
}

#[test]
fn reports_count_slice_hours_per_profile_once_each_at_any_cut() {
    use crate::test_records::{H100, on_slices};
    let (_d, s) = store();
    // from 22:00 on day 10 to 04:00 on day 11: a 2g.20gb slice (6 h), and two 1g.10gb
    // slices of another job (6 h each); a whole GPU beside them (no slice time)
    let (start, end) = (10 * DAY_MS + 22 * HOUR, 11 * DAY_MS + 4 * HOUR);
    s.put_batch(&[
        on_slices(job_end(1, "n1", start, end, &[0]), &[("2g.20gb", 2, 7)]),
        on_slices(
            job_end(2, "n1", start, end, &[0, 0]),
            &[("1g.10gb", 1, 7), ("1g.10gb", 1, 7)],
        ),
        job_end(3, "n2", start, end, &[10]),
    ])
    .unwrap();
    let by_profile = |from: u64, to: u64, filter: &str| -> Vec<(String, u64, u64)> {
        let mut query = q(&format!("start=0&end=1&group_by=profile{filter}"));
        (query.start_ms, query.end_ms) = (from, to);
        let mut v: Vec<_> = report(&*s, &query, None)
            .unwrap()
            .into_iter()
            .map(|r| {
                let slice_ms = r.slice_ms.expect("acctd states slice time");
                (
                    r.mig_profile.unwrap_or_default(),
                    slice_ms,
                    r.allocated_gpu_ms,
                )
            })
            .collect();
        v.sort();
        v
    };
    let all = by_profile(10 * DAY_MS, 12 * DAY_MS, "");
    assert_eq!(
        all,
        [
            (String::new(), 0, 6 * HOUR),
            ("1g.10gb".into(), 2 * 6 * HOUR, 2 * 3_085_714), // 6 h x 1/7 = 3085714.29
            ("2g.20gb".into(), 6 * HOUR, 6_171_429),
        ]
    );
    // cut anywhere (edge days from the records, whole days from the rollups): the slice
    // hours of both sides add up exactly
    for cut in [
        10 * DAY_MS + 23 * HOUR,
        11 * DAY_MS,
        11 * DAY_MS + 1,
        11 * DAY_MS + 3 * HOUR + 7,
    ] {
        let (a, b) = (
            by_profile(10 * DAY_MS, cut, ""),
            by_profile(cut, 12 * DAY_MS, ""),
        );
        for (i, row) in all.iter().enumerate() {
            let side =
                |v: &[(String, u64, u64)]| v.iter().find(|r| r.0 == row.0).map_or(0, |r| r.1);
            assert_eq!(side(&a) + side(&b), row.1, "cut at {cut}, row {i}");
        }
    }
    assert_eq!(
        by_profile(10 * DAY_MS + 23 * HOUR, 11 * DAY_MS + HOUR, "")[2].1,
        2 * HOUR,
        "the 2g slice's two hours inside 23:00-01:00"
    );
    // filtered by the parent model: its slices pass too; by a slice's name: that profile
    let parent = by_profile(
        10 * DAY_MS,
        12 * DAY_MS,
        "&gpu_model=NVIDIA%20H100%2080GB%20HBM3",
    );
    assert_eq!(parent, all);
    let one = by_profile(
        10 * DAY_MS,
        12 * DAY_MS,
        "&gpu_model=NVIDIA%20H100%2080GB%20HBM3%20MIG%202g.20gb",
    );
    assert_eq!(one, [("2g.20gb".into(), 6 * HOUR, 6_171_429)]);
    assert!(by_profile(10 * DAY_MS, 12 * DAY_MS, "&gpu_model=NVIDIA%20A100").is_empty());
    // the job list: a job on slices passes its parent model's filter
    let mut query = q(&format!(
        "start=0&end=1&gpu_model={}",
        H100.replace(' ', "%20")
    ));
    (query.start_ms, query.end_ms) = (10 * DAY_MS, 12 * DAY_MS);
    let (list, _) = jobs(&*s, &query, None).unwrap();
    let ids: Vec<u32> = list.iter().map(|j| j.job_id).collect();
    assert_eq!(ids, [1, 2, 3]);
}

#[test]
fn a_slices_used_time_is_unmeasured_in_reports_at_any_cut() {
    use crate::test_records::on_slices;
    let (_d, s) = store();
    // a 2g.20gb slice and a whole GPU, 22:00 on day 10 to 04:00 on day 11
    let (start, end) = (10 * DAY_MS + 22 * HOUR, 11 * DAY_MS + 4 * HOUR);
    s.put_batch(&[
        on_slices(job_end(1, "n1", start, end, &[0]), &[("2g.20gb", 2, 7)]),
        job_end(3, "n2", start, end, &[10]),
    ])
    .unwrap();
    let measured = |from: u64, to: u64| -> Vec<(String, u64, Option<u64>)> {
        let mut query = q("start=0&end=1&group_by=profile");
        (query.start_ms, query.end_ms) = (from, to);
        let mut v: Vec<_> = report(&*s, &query, None)
            .unwrap()
            .into_iter()
            .map(|r| {
                (
                    r.mig_profile.unwrap_or_default(),
                    r.allocated_gpu_ms,
                    r.used_measured_gpu_ms,
                )
            })
            .collect();
        v.sort();
        v
    };
    // whole days (rollups): the slice's used time measured over nothing, the GPU's over all
    assert_eq!(
        measured(10 * DAY_MS, 12 * DAY_MS),
        [
            (String::new(), 6 * HOUR, Some(6 * HOUR)),
            ("2g.20gb".into(), 6_171_429, Some(0)),
        ]
    );
    // cut days (records): the same rule
    assert_eq!(
        measured(10 * DAY_MS + 23 * HOUR, 11 * DAY_MS + HOUR),
        [
            (String::new(), 2 * HOUR, Some(2 * HOUR)),
            ("2g.20gb".into(), 2_057_143, Some(0)),
        ]
    );
    // grouped together: measured over the whole GPU's time only
    let mut query = q("start=0&end=1");
    (query.start_ms, query.end_ms) = (10 * DAY_MS, 12 * DAY_MS);
    let rows = report(&*s, &query, None).unwrap();
    assert_eq!(
        (rows[0].allocated_gpu_ms, rows[0].used_measured_gpu_ms),
        (6 * HOUR + 6_171_429, Some(6 * HOUR))
    );
}

#[test]
fn the_gpu_model_filter_passes_a_models_slices_only() {
    let mut f = Filters::default();
    assert!(f.matches_gpu_model("anything"));
    f.gpu_models.insert("NVIDIA H100 80GB HBM3".into());
    assert!(f.matches_gpu_model("NVIDIA H100 80GB HBM3"));
    assert!(f.matches_gpu_model("NVIDIA H100 80GB HBM3 MIG 1g.10gb"));
    assert!(!f.matches_gpu_model("NVIDIA H100 80GB HBM3 PCIe"));
    assert!(!f.matches_gpu_model("NVIDIA H100 80GB HBM3 PCIe MIG 1g.10gb"));
    assert!(!f.matches_gpu_model("NVIDIA H200"));
    let mut f = Filters::default();
    f.gpu_models
        .insert("NVIDIA H100 80GB HBM3 MIG 1g.10gb".into());
    assert!(f.matches_gpu_model("NVIDIA H100 80GB HBM3 MIG 1g.10gb"));
    assert!(!f.matches_gpu_model("NVIDIA H100 80GB HBM3 MIG 2g.20gb"));
    assert!(!f.matches_gpu_model("NVIDIA H100 80GB HBM3"));
}
