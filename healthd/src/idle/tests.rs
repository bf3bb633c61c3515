use std::time::Duration;

use super::*;

fn detect(window_s: u64) -> IdleDetect {
    IdleDetect {
        util_below_pct: 5,
        mem_util_below_pct: 5,
        window: Duration::from_secs(window_s),
    }
}

/// Feeds `(t_ms, util)` samples.
fn run(series: &[(u64, u32)], d: &IdleDetect) -> IdleTrack {
    let mut t = IdleTrack::default();
    for (at, u) in series {
        t.observe(*at, Some(*u), None, d);
    }
    t
}

#[test]
fn idle_after_the_window_not_before() {
    let d = detect(60);
    // samples every 10 s at 0%: idle once 60 s of them span
    let mut t = IdleTrack::default();
    for i in 0..6u64 {
        t.observe(1_000 + i * 10_000, Some(0), None, &d);
        assert!(!t.idle, "after {} s", i * 10);
    }
    t.observe(61_000, Some(0), None, &d);
    assert!(t.idle);
    assert_eq!(t.idle_for_ms(), 60_000);
    assert_eq!(t.total_ms(), 60_000);
}

#[test]
fn a_busy_sample_ends_the_run_and_keeps_its_period() {
    let d = detect(30);
    let series: Vec<(u64, u32)> = (0..=5u64)
        .map(|i| (i * 10_000, 0))
        .chain([(60_000, 80)])
        .chain((7..=8u64).map(|i| (i * 10_000, 2))) // short low run: not idle
        .chain([(90_000, 50)])
        .collect();
    let t = run(&series, &d);
    assert!(!t.idle);
    assert_eq!(t.done_ms, 50_000);
    assert_eq!(
        t.periods,
        vec![IdlePeriod {
            start: 0,
            end: 50_000
        }]
    );
    assert_eq!(t.figures(0, 100_000), Some((50_000, t.periods.clone())));
}

#[test]
fn the_threshold_and_memory_traffic_decide_idleness() {
    let d = detect(10);
    let mut t = IdleTrack::default();
    // below 5% GPU util, but memory traffic at 40%: busy
    t.observe(0, Some(4), Some(40), &d);
    t.observe(20_000, Some(4), Some(40), &d);
    assert!(!t.idle && t.run.is_none());
    // both low: idle; at 5% exactly: not below the threshold
    t.observe(30_000, Some(4), Some(1), &d);
    t.observe(40_000, Some(0), None, &d);
    assert!(t.idle);
    t.observe(50_000, Some(5), None, &d);
    assert!(!t.idle);
    assert_eq!(t.done_ms, 10_000);
}

#[test]
fn missing_readings_are_unknown_not_idle() {
    let d = detect(10);
    let mut t = IdleTrack::default();
    t.observe(0, None, None, &d);
    assert_eq!(t.figures(0, 10), None, "no reading: unknown");
    t.observe(0, Some(0), None, &d);
    t.observe(5_000, None, None, &d); // neither starts nor ends the run
    t.observe(20_000, Some(0), None, &d);
    assert!(t.idle);
    assert_eq!(
        t.figures(0, 100_000),
        Some((
            20_000,
            vec![IdlePeriod {
                start: 0,
                end: 20_000
            }]
        ))
    );
}

#[test]
fn figures_clip_to_the_record_window() {
    let d = detect(10);
    let t = run(&[(0, 0), (30_000, 0), (40_000, 90)], &d);
    // the record's window starts at 10 s: 20 s of the 30 s period fall inside
    assert_eq!(
        t.figures(10_000, 100_000),
        Some((
            20_000,
            vec![IdlePeriod {
                start: 10_000,
                end: 30_000
            }]
        ))
    );
    assert_eq!(t.figures(50_000, 100_000), Some((0, vec![])));
}

#[test]
fn many_periods_stay_capped_and_exact() {
    let d = detect(10);
    let mut t = IdleTrack::default();
    let mut at = 0;
    for _ in 0..40 {
        t.observe(at, Some(0), None, &d);
        t.observe(at + 10_000, Some(0), None, &d);
        t.observe(at + 20_000, Some(100), None, &d);
        at += 30_000;
    }
    assert_eq!(t.done_ms, 40 * 10_000);
    assert_eq!(t.periods.len(), sgpu_spool::IDLE_PERIODS_MAX);
    let (idle, periods) = t.figures(0, at).unwrap_or_default();
    assert_eq!(idle, 400_000);
    assert!(periods.iter().map(IdlePeriod::len_ms).sum::<u64>() >= idle);
}

fn policy(grace_s: Option<u64>) -> IdlePolicy {
    IdlePolicy {
        warn: true,
        mail: false,
        cancel_after: grace_s.map(Duration::from_secs),
    }
}

#[test]
fn warn_then_cancel_after_grace_unless_recovered() {
    let p = policy(Some(60));
    let mut s = PolicyState::default();
    assert_eq!(
        decide(&p, &s, &[true, false], 0),
        Step::Nothing,
        "one GPU busy"
    );
    assert_eq!(decide(&p, &s, &[true, true], 0), Step::Warn);
    s.warned_at = Some(1_000);
    assert_eq!(
        decide(&p, &s, &[true, true], 60_999),
        Step::Nothing,
        "grace"
    );
    assert_eq!(decide(&p, &s, &[true, true], 61_000), Step::Cancel);
    assert_eq!(decide(&p, &s, &[true, false], 30_000), Step::Recovered);
    s.cancelled = true;
    assert_eq!(decide(&p, &s, &[true, true], 99_000), Step::Nothing);
    let exempt = PolicyState {
        exempt: true,
        ..PolicyState::default()
    };
    assert_eq!(decide(&p, &exempt, &[true], 0), Step::Nothing);
    // no grace configured: warn only, never cancel
    let warned = PolicyState {
        warned_at: Some(0),
        ..PolicyState::default()
    };
    assert_eq!(
        decide(&policy(None), &warned, &[true], u64::MAX),
        Step::Nothing
    );
    assert_eq!(decide(&p, &PolicyState::default(), &[], 0), Step::Nothing);
}

#[test]
fn cancels_are_bounded_per_hour() {
    let mut b = CancelBudget::default();
    assert!(b.take(0, 2));
    assert!(b.take(1_000, 2));
    assert!(!b.take(2_000, 2));
    assert!(b.take(3_600_000, 2), "the first one aged out");
    assert!(!CancelBudget::default().take(0, 0));
}
