//! Many pseudo-random sample series (a fixed-seed generator: the same series every run)
//! against a plain reference: the tracker's idle time equals the sum of the qualifying
//! runs, its periods stay capped and cover it, and the usage record it feeds validates.

use std::time::Duration;

use super::*;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The idle time of a series, computed the plain way: maximal runs of idle samples
/// (readings without a value skipped) whose span reaches the window.
fn reference(series: &[(u64, Option<u32>)], d: &IdleDetect) -> u64 {
    let window = d.window.as_millis() as u64;
    let mut total = 0;
    let mut run: Option<(u64, u64)> = None;
    for &(t, u) in series {
        let Some(u) = u else { continue };
        if u < d.util_below_pct {
            run = Some(run.map_or((t, t), |(t0, _)| (t0, t)));
        } else if let Some((t0, t1)) = run.take() {
            if t1 - t0 >= window {
                total += t1 - t0;
            }
        }
    }
    if let Some((t0, t1)) = run {
        if t1 - t0 >= window {
            total += t1 - t0;
        }
    }
    total
}

#[test]
fn random_series_match_the_reference_and_make_valid_records() {
    let mut rng = Rng(0x5eed_1d1e);
    let (mut with_idle, mut capped) = (0, 0);
    for case in 0..300 {
        let d = IdleDetect {
            util_below_pct: 1 + rng.below(20) as u32,
            mem_util_below_pct: 100,
            window: Duration::from_secs(1 + rng.below(60)),
        };
        let start = 1_700_000_000_000 + rng.below(1_000_000);
        let mut t = start;
        let mut series = Vec::new();
        // long idle and busy stretches, with missing readings now and then
        let mut idle_phase = rng.below(2) == 0;
        for _ in 0..(10 + rng.below(400)) {
            if rng.below(8) == 0 {
                idle_phase = !idle_phase;
            }
            t += 1_000 + rng.below(20_000);
            let u = match (rng.below(25), idle_phase) {
                (0, _) => None,
                (_, true) => Some(rng.below(u64::from(d.util_below_pct)) as u32),
                (_, false) => Some(d.util_below_pct + rng.below(60) as u32),
            };
            series.push((t, u));
        }
        let mut track = IdleTrack::default();
        for &(at, u) in &series {
            track.observe(at, u, None, &d);
        }
        let end = t + rng.below(5_000);
        let want = reference(&series, &d);
        assert_eq!(track.total_ms(), want, "case {case}");
        let Some((idle, periods)) = track.figures(start, end) else {
            assert!(series.iter().all(|(_, u)| u.is_none()), "case {case}");
            continue;
        };
        assert_eq!(idle, want, "case {case}: samples lie inside the window");
        assert!(periods.len() <= sgpu_spool::IDLE_PERIODS_MAX, "case {case}");
        with_idle += usize::from(idle > 0);
        capped += usize::from(periods.len() == sgpu_spool::IDLE_PERIODS_MAX);
        assert!(
            periods.iter().map(IdlePeriod::len_ms).sum::<u64>() >= idle,
            "case {case}: {periods:?}"
        );
        // the figures make a valid usage record
        let usage = sgpu_spool::Usage {
            user: "alice".into(),
            uid: 1,
            account: None,
            partition: None,
            window_start: start,
            window_end: end,
            gpus: vec![sgpu_spool::GpuUsage {
                index: 0,
                uuid: "GPU-x".into(),
                name: None,
                samples: series.len() as u64,
                util_mean_pct: 0.0,
                util_max_pct: 0,
                mem_peak_mib: 0,
                energy_mj: None,
                used_gpu_ms: 0,
                idle_ms: Some(idle),
                idle_periods: Some(periods),
            }],
            allocated_gpu_ms: end - start,
            used_gpu_ms: 0,
            idle_gpu_ms: Some(idle),
        };
        let id = sgpu_spool::RecordId::new("c", 1, None, "n", sgpu_spool::RecordKind::JobUsage)
            .unwrap_or_else(|e| panic!("{e}"));
        if let Err(e) = sgpu_spool::Record::new(id, end, sgpu_spool::RecordBody::JobUsage(usage)) {
            panic!("case {case}: {e}");
        }
    }
    eprintln!("{with_idle} series with idle time, {capped} with capped periods");
    // the series reach both the idle and the capped cases
    assert!(
        with_idle > 100 && capped > 10,
        "{with_idle} idle, {capped} capped"
    );
}
