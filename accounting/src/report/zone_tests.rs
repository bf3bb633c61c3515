//! Reports in the site's time zone (days of 23 and 25 hours at DST changes, jobs split at
//! local midnight), with acctd's prices (a change applies from its date), and what an
//! account coordinator reads.

use std::collections::BTreeMap;

use super::*;
use crate::prices::{PriceList, Rates};
use crate::sled_store::SledStore;
use crate::test_records::{H100, job_end, job_usage};
use crate::zone::SiteZone;
use sgpu_spool::RecordBody;

const HOUR: u64 = 3_600_000;

fn utc(s: &str) -> u64 {
    SiteZone::utc().parse_local(s).unwrap().unwrap()
}

fn sled() -> (tempfile::TempDir, SledStore) {
    let d = tempfile::tempdir().unwrap();
    let s = SledStore::open(&d.path().join("db")).unwrap();
    (d, s)
}

fn q(site: &SiteZone, s: &str) -> ReportQuery {
    ReportQuery::parse_in(s, site).unwrap()
}

/// (period, allocated GPU-hours x 1000, energy, jobs) per row.
fn by_period(rows: &[ReportRow]) -> Vec<(String, u64, u64, u64)> {
    rows.iter()
        .map(|r| {
            (
                r.period.clone().unwrap_or_default(),
                r.allocated_gpu_ms / (HOUR / 1000),
                r.energy_mj,
                r.jobs,
            )
        })
        .collect()
}

fn berlin() -> SiteZone {
    SiteZone::named("Europe/Berlin").unwrap()
}

#[test]
fn a_job_across_local_midnight_splits_there_and_dst_days_have_23_and_25_hours() {
    let (_d, s) = sled();
    // 25 h on 1 GPU from 2026-03-28 22:00 UTC (23:00 CET) to 2026-03-29 23:00 UTC (01:00
    // CEST on the 30th), 25 000 mJ; and a job over the autumn change, 2026-10-24 20:00 UTC
    // to 2026-10-26 02:00 UTC (30 h), 30 000 mJ
    s.put_batch(&[
        job_end(
            1,
            "n1",
            utc("2026-03-28T22:00"),
            utc("2026-03-29T23:00"),
            &[25_000],
        ),
        job_end(
            2,
            "n1",
            utc("2026-10-24T20:00"),
            utc("2026-10-26T02:00"),
            &[30_000],
        ),
    ])
    .unwrap();
    let z = berlin();
    let rows = report(
        &s,
        &q(&z, "start=2026-03-28&end=2026-03-31&group_by=day"),
        None,
    )
    .unwrap();
    assert_eq!(
        by_period(&rows),
        [
            ("2026-03-28".to_string(), 1_000, 1_000, 0),
            ("2026-03-29".to_string(), 23_000, 23_000, 0),
            ("2026-03-30".to_string(), 1_000, 1_000, 1),
        ]
    );
    // the same in UTC: split at UTC midnight
    let rows = report(
        &s,
        &q(&z, "start=2026-03-28&end=2026-03-31&group_by=day&tz=UTC"),
        None,
    )
    .unwrap();
    assert_eq!(
        by_period(&rows),
        [
            ("2026-03-28".to_string(), 2_000, 2_000, 0),
            ("2026-03-29".to_string(), 23_000, 23_000, 1),
        ]
    );
    // -S/-E dates are the site's: the 23-hour day alone
    let rows = report(&s, &q(&z, "start=2026-03-29&end=2026-03-30"), None).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].allocated_gpu_ms, 23 * HOUR);
    // autumn: the 25-hour day 2026-10-25 (22:00 UTC on the 24th to 23:00 UTC on the 25th)
    let rows = report(
        &s,
        &q(&z, "start=2026-10-24&end=2026-10-27&group_by=day"),
        None,
    )
    .unwrap();
    assert_eq!(
        by_period(&rows),
        [
            ("2026-10-24".to_string(), 2_000, 2_000, 0),
            ("2026-10-25".to_string(), 25_000, 25_000, 0),
            ("2026-10-26".to_string(), 3_000, 3_000, 1),
        ]
    );
}

#[test]
fn new_york_days_and_weeks_at_its_changes() {
    let (_d, s) = sled();
    // from 2026-03-07 00:00 EST (05:00 UTC) to 2026-03-10 00:00 EDT (04:00 UTC): 71 h; it
    // counts in `jobs` on the day holding its end (an end at midnight is the next day's, as
    // in UTC)
    s.put_batch(&[job_end(
        1,
        "n1",
        utc("2026-03-07T05:00"),
        utc("2026-03-10T04:00"),
        &[71_000],
    )])
    .unwrap();
    let z = SiteZone::named("America/New_York").unwrap();
    let rows = report(
        &s,
        &q(&z, "start=2026-03-01&end=2026-04-01&group_by=day"),
        None,
    )
    .unwrap();
    assert_eq!(
        by_period(&rows),
        [
            ("2026-03-07".to_string(), 24_000, 24_000, 0),
            ("2026-03-08".to_string(), 23_000, 23_000, 0),
            ("2026-03-09".to_string(), 24_000, 24_000, 0),
            ("2026-03-10".to_string(), 0, 0, 1),
        ]
    );
    // ISO weeks in New York: Saturday and Sunday in W10, Monday in W11
    let rows = report(
        &s,
        &q(&z, "start=2026-03-01&end=2026-04-01&group_by=week"),
        None,
    )
    .unwrap();
    assert_eq!(
        by_period(&rows),
        [
            ("2026-W10".to_string(), 47_000, 47_000, 0),
            ("2026-W11".to_string(), 24_000, 24_000, 1),
        ]
    );
}

#[test]
fn local_periods_add_up_to_the_window_and_match_their_own_windows() {
    let (_d, s) = sled();
    let mut batch = Vec::new();
    let base = utc("2026-03-20");
    for j in 1..=60u32 {
        let start = base + u64::from(j) * 5 * HOUR + u64::from(j) * 7_919;
        let end = start + (1 + u64::from(j % 13)) * 3 * HOUR + 11;
        let e = 1_000_003 * u64::from(j);
        batch.push(job_end(j, "n1", start, end, &[e, e / 7]));
        batch.push(job_usage(j, "n1", start, end, &[(end - start) / 3, 5]));
    }
    s.put_batch(&batch).unwrap();
    for zone in ["Europe/Berlin", "America/New_York", "Asia/Kathmandu", "UTC"] {
        let z = SiteZone::named(zone).unwrap();
        let window = "start=2026-03-21&end=2026-04-05";
        let whole = report(&s, &q(&z, window), None).unwrap();
        assert_eq!(whole.len(), 1, "{zone}");
        let sum = |rows: &[ReportRow]| {
            rows.iter().fold((0, 0, 0, 0), |a, r| {
                (
                    a.0 + r.allocated_gpu_ms,
                    a.1 + r.used_gpu_ms,
                    a.2 + r.energy_mj,
                    a.3 + r.jobs,
                )
            })
        };
        for period in ["day", "week", "month"] {
            let rows = report(&s, &q(&z, &format!("{window}&group_by={period}")), None).unwrap();
            assert_eq!(sum(&rows), sum(&whole), "{zone} by {period}");
        }
        // each local day equals a report over exactly that day's window
        let days = report(&s, &q(&z, &format!("{window}&group_by=day")), None).unwrap();
        // the jobs run from 2026-03-20 to 2026-04-02
        assert!(
            (12..=14).contains(&days.len()),
            "{zone}: {} days",
            days.len()
        );
        for row in &days {
            let day = row.period.as_deref().unwrap_or_default();
            let next = crate::day::format_day(crate::day::parse_day(day).unwrap() + 1);
            let alone = report(&s, &q(&z, &format!("start={day}&end={next}")), None).unwrap();
            assert_eq!(sum(&alone), sum(std::slice::from_ref(row)), "{zone} {day}");
        }
    }
}

fn price_list(zone: &SiteZone) -> PriceList {
    let at = |d: &str| zone.parse_local(d).unwrap().unwrap();
    let rates = |gpu_hour: u64, h100_in_gpu: Option<u64>, kwh: u64| Rates {
        gpu_hour: Some(gpu_hour),
        kwh: Some(kwh),
        partition_gpu_model: h100_in_gpu
            .map(|p| BTreeMap::from([("gpu".into(), BTreeMap::from([(H100.into(), p)]))]))
            .unwrap_or_default(),
        ..Rates::default()
    };
    PriceList {
        currency: Some("EUR".into()),
        periods: vec![
            (at("2026-01-01"), rates(1_000_000, None, 0)),
            // from Berlin's midnight of 2026-03-29 (23:00 UTC on the 28th)
            (at("2026-03-29"), rates(500_000, Some(2_000_000), 300_000)),
        ],
    }
}

#[test]
fn a_price_change_applies_from_its_date_and_history_keeps_the_old_price() {
    let (_d, s) = sled();
    // 2 GPU-hours on 1 GPU from 22:00 to 24:00 UTC on 2026-03-28: the first hour at 1.00,
    // the second (from Berlin's midnight) at 2.00, with 3.6e9 mJ (1 kWh) spread evenly
    // over the two hours: 0.5 kWh at 0.30
    s.put_batch(&[job_end(
        1,
        "n1",
        utc("2026-03-28T22:00"),
        utc("2026-03-29T00:00"),
        &[3_600_000_000],
    )])
    .unwrap();
    let z = berlin();
    let prices = price_list(&z);
    let rows = report(&s, &q(&z, "start=2026-03-01&end=2026-04-01"), Some(&prices)).unwrap();
    assert_eq!(rows[0].cost_micro, Some(1_000_000 + 2_000_000 + 150_000));
    // the day before the change, alone: the old price
    let rows = report(&s, &q(&z, "start=2026-03-28&end=2026-03-29"), Some(&prices)).unwrap();
    assert_eq!(rows[0].cost_micro, Some(1_000_000));
    // grouped by local day: each day its own price
    let rows = report(
        &s,
        &q(&z, "start=2026-03-01&end=2026-04-01&group_by=day"),
        Some(&prices),
    )
    .unwrap();
    let costs: Vec<(Option<String>, Option<u64>)> = rows
        .iter()
        .map(|r| (r.period.clone(), r.cost_micro))
        .collect();
    assert_eq!(
        costs,
        [
            (Some("2026-03-28".into()), Some(1_000_000)),
            (Some("2026-03-29".into()), Some(2_150_000)),
        ]
    );
    // the job list prices the whole job the same way
    let (list, _) = jobs(&s, &q(&z, "start=2026-03-28&end=2026-03-30"), Some(&prices)).unwrap();
    assert_eq!(list[0].cost_micro, Some(3_150_000));
    // without prices, no cost
    let rows = report(&s, &q(&z, "start=2026-03-01&end=2026-04-01"), None).unwrap();
    assert_eq!(rows[0].cost_micro, None);
    // usage before the first period is not priced
    let (_d2, s2) = sled();
    s2.put_batch(&[job_end(
        2,
        "n1",
        utc("2025-12-31T22:00"),
        utc("2025-12-31T23:30"),
        &[0],
    )])
    .unwrap();
    let rows = report(
        &s2,
        &q(&z, "start=2025-12-01&end=2026-02-01"),
        Some(&prices),
    )
    .unwrap();
    assert_eq!(rows[0].cost_micro, Some(500_000));
}

fn owned(r: Record, user: &str, account: &str) -> Record {
    let (id, written, body) = r.into_parts();
    let body = match body {
        RecordBody::JobEnd(mut b) => {
            b.user = user.into();
            b.account = Some(account.into());
            RecordBody::JobEnd(b)
        }
        RecordBody::JobUsage(mut b) => {
            b.user = user.into();
            b.account = Some(account.into());
            RecordBody::JobUsage(b)
        }
        other => other,
    };
    Record::new(id, written, body).unwrap()
}

fn coordinator(user: &str, accounts: &[&str]) -> ReadScope {
    ReadScope::Coordinator {
        user: user.into(),
        accounts: accounts.iter().map(|a| a.to_string()).collect(),
    }
}

#[test]
fn a_coordinator_reads_their_accounts_and_their_own_and_nothing_else() {
    let (_d, s) = sled();
    let t = utc("2026-02-02T10:00");
    s.put_batch(&[
        owned(job_end(1, "n1", t, t + HOUR, &[1]), "bob", "physics"),
        owned(job_end(2, "n1", t, t + 2 * HOUR, &[1]), "carol", "chem"),
        owned(job_end(3, "n1", t, t + 3 * HOUR, &[1]), "alice", "chem"),
    ])
    .unwrap();
    let z = SiteZone::utc();
    let scoped = |scope: &ReadScope, extra: &str| {
        let mut q = q(
            &z,
            &format!("start=2026-02-01&end=2026-03-01&group_by=user{extra}"),
        );
        q.filters.scope(scope).unwrap();
        let rows: Vec<(String, u64)> = report(&s, &q, None)
            .unwrap()
            .into_iter()
            .map(|r| (r.user.unwrap_or_default(), r.allocated_gpu_ms / HOUR))
            .collect();
        let ids: Vec<u32> = jobs(&s, &q, None)
            .unwrap()
            .0
            .iter()
            .map(|j| j.job_id)
            .collect();
        (rows, ids)
    };
    let alice = coordinator("alice", &["physics"]);
    assert_eq!(
        scoped(&alice, ""),
        (vec![("alice".into(), 3), ("bob".into(), 1)], vec![1, 3])
    );
    // naming someone outside their accounts shows nothing of them
    assert_eq!(scoped(&alice, "&user=carol"), (vec![], vec![]));
    assert_eq!(
        scoped(&alice, "&account=chem"),
        (vec![("alice".into(), 3)], vec![3])
    );
    // a plain user: their own only; an admin: everything
    assert_eq!(
        scoped(&ReadScope::User("bob".into()), ""),
        (vec![("bob".into(), 1)], vec![1])
    );
    assert_eq!(scoped(&ReadScope::All, "").1, vec![1, 2, 3]);
}

#[test]
fn a_step_record_claiming_an_account_shows_no_coordinator_the_job() {
    use sgpu_spool::{RecordId, RecordKind};
    let t = utc("2026-02-02T10:00");
    let end = owned(job_end(5, "n1", t, t + HOUR, &[1]), "bob", "chem");
    // the job's script exported SLURM_JOB_ACCOUNT=physics before srun: its step record says
    // physics, which is the job's environment, not slurmd's
    let (_, written, body) =
        owned(job_usage(5, "n1", t, t + HOUR, &[1]), "bob", "physics").into_parts();
    let RecordBody::JobUsage(b) = body else {
        panic!("a job_usage")
    };
    let step = Record::new(
        RecordId::new("alpha", 5, Some("0".into()), "n1", RecordKind::StepUsage).unwrap(),
        written,
        RecordBody::StepUsage(b),
    )
    .unwrap();
    let records = vec![end, step];
    assert_eq!(
        crate::report::jobs::trusted_account(&records).as_deref(),
        Some("chem")
    );
    assert!(
        coordinator("alice", &["physics"])
            .visible_records(records.clone())
            .is_empty()
    );
    assert_eq!(
        coordinator("alice", &["chem"])
            .visible_records(records.clone())
            .len(),
        2
    );
    assert_eq!(
        ReadScope::User("bob".into()).visible_records(records).len(),
        2
    );
}
