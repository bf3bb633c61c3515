//! Live idle detection (pure, no I/O): per running job and GPU, whether the GPU has sat
//! idle for the partition's window, how long, and when ([`IdleTrack`]); and the idle
//! policy's decision for a job ([`decide`]), carried out by [`crate::idle_act`].
//!
//! A sample is idle when its GPU utilization is below `util_below_pct` and, where NVML
//! reports it, its memory-bandwidth utilization is below `mem_util_below_pct`; a sample
//! without a utilization reading neither starts nor ends a run. A run of idle samples from
//! `t0` to `t1` makes the GPU idle once `t1 − t0 >= window`, and the period `[t0, t1]` then
//! counts as idle time (whole, from its first idle sample: conservative at both ends, it
//! never counts the time between the last idle sample and the first busy one). Times come
//! from the caller, so tests drive it with explicit series and no sleeps.

use serde::{Deserialize, Serialize};
use sgpu_nodelib::config::{IdleDetect, IdlePolicy};
use sgpu_spool::{IdlePeriod, push_idle_period};

/// One GPU's idle state within a job (kept in healthd's job database with its accumulator).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdleTrack {
    /// First and latest sample of the current run of idle samples, ms.
    pub run: Option<(u64, u64)>,
    /// Idle time of finished runs that reached the window, ms.
    pub done_ms: u64,
    /// Their periods (sorted, merged, at most [`sgpu_spool::IDLE_PERIODS_MAX`]).
    pub periods: Vec<IdlePeriod>,
    /// Samples with a utilization reading seen by the tracker (0: the figures are unknown).
    pub samples: u64,
    /// Whether the GPU is idle now (its current run reached the window).
    pub idle: bool,
}

impl IdleTrack {
    /// Adds one reading taken at `t_ms`.
    pub fn observe(&mut self, t_ms: u64, util: Option<u32>, mem_util: Option<u32>, d: &IdleDetect) {
        let Some(u) = util else {
            return;
        };
        self.samples += 1;
        let low = u < d.util_below_pct && mem_util.is_none_or(|m| m < d.mem_util_below_pct);
        let window = window_ms(d);
        if low {
            let run = match self.run {
                Some((t0, _)) => (t0, t_ms.max(t0)),
                None => (t_ms, t_ms),
            };
            self.run = Some(run);
            self.idle = run.1 - run.0 >= window;
        } else {
            if let Some((t0, t1)) = self.run.take() {
                if t1 - t0 >= window {
                    self.done_ms = self.done_ms.saturating_add(t1 - t0);
                    push_idle_period(&mut self.periods, IdlePeriod { start: t0, end: t1 });
                }
            }
            self.idle = false;
        }
    }

    /// How long the GPU has been idle without a break, ms (0 when not idle now).
    pub fn idle_for_ms(&self) -> u64 {
        match (self.idle, self.run) {
            (true, Some((t0, t1))) => t1 - t0,
            _ => 0,
        }
    }

    /// Idle time so far, ms: finished runs and the current one if it reached the window.
    pub fn total_ms(&self) -> u64 {
        self.done_ms.saturating_add(self.idle_for_ms())
    }

    /// The figures for a usage record over `[start, end]`: idle ms and periods, clipped to
    /// the window; `None` when the tracker saw no reading (unknown, not 0).
    pub fn figures(&self, start: u64, end: u64) -> Option<(u64, Vec<IdlePeriod>)> {
        if self.samples == 0 {
            return None;
        }
        let mut periods = self.periods.clone();
        if let (true, Some((t0, t1))) = (self.idle, self.run) {
            push_idle_period(&mut periods, IdlePeriod { start: t0, end: t1 });
        }
        let total = self.total_ms();
        let mut outside: u64 = 0;
        let mut clipped = Vec::with_capacity(periods.len());
        for p in periods {
            let (s, e) = (p.start.max(start), p.end.min(end));
            outside = outside.saturating_add(p.len_ms().saturating_sub(e.saturating_sub(s)));
            if e > s {
                clipped.push(IdlePeriod { start: s, end: e });
            }
        }
        let span = end.saturating_sub(start);
        Some((total.saturating_sub(outside).min(span), clipped))
    }
}

fn window_ms(d: &IdleDetect) -> u64 {
    u64::try_from(d.window.as_millis()).unwrap_or(u64::MAX)
}

/// Where a job stands with its partition's idle policy (kept with its accumulator).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyState {
    /// When the job was found with all its GPUs idle and warned (or its grace started), ms.
    pub warned_at: Option<u64>,
    /// Whether it was cancelled (or a dry run decided to).
    pub cancelled: bool,
    /// Whether it was found exempt (account or QOS): never acted on again.
    pub exempt: bool,
    /// Warnings so far (a job that recovers and goes idle again is warned again).
    pub warnings: u32,
    /// Whether a cancel was refused by the per-hour bound (logged and counted once).
    #[serde(default)]
    pub refused: bool,
}

/// What the policy does now for one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do.
    Nothing,
    /// All its GPUs are idle: warn (and mail) per the policy, start the grace period.
    Warn,
    /// Its GPUs came back to work during the grace period: forget the warning.
    Recovered,
    /// Still idle past the grace period: cancel.
    Cancel,
}

/// The policy's step for a job whose GPUs' idle states are `idle` (one per GPU of the job on
/// this node), at `now_ms`. Acts only when every GPU is idle.
pub fn decide(policy: &IdlePolicy, state: &PolicyState, idle: &[bool], now_ms: u64) -> Step {
    if state.exempt || state.cancelled || idle.is_empty() {
        return Step::Nothing;
    }
    let all_idle = idle.iter().all(|i| *i);
    match (state.warned_at, all_idle) {
        (None, true) => Step::Warn,
        (None, false) => Step::Nothing,
        (Some(_), false) => Step::Recovered,
        (Some(at), true) => match policy.cancel_after {
            Some(grace) => {
                let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
                if now_ms.saturating_sub(at) >= grace_ms {
                    Step::Cancel
                } else {
                    Step::Nothing
                }
            }
            None => Step::Nothing,
        },
    }
}

/// The policy in one line, for the history and the user's message.
pub fn describe(d: &IdleDetect, p: &IdlePolicy) -> String {
    let mut s = format!(
        "util<{}% mem<{}% for {}s",
        d.util_below_pct,
        d.mem_util_below_pct,
        d.window.as_secs()
    );
    if let Some(g) = p.cancel_after {
        s.push_str(&format!(", cancel after {}s grace", g.as_secs()));
    }
    s
}

/// Cancels per node per hour: the times of the cancels within the last hour.
#[derive(Debug, Clone, Default)]
pub struct CancelBudget {
    times: Vec<u64>,
}

impl CancelBudget {
    /// Whether another cancel fits at `now_ms` under `per_hour`; if so it is counted.
    pub fn take(&mut self, now_ms: u64, per_hour: u32) -> bool {
        self.times.retain(|t| now_ms.saturating_sub(*t) < 3_600_000);
        if self.times.len() >= per_hour as usize {
            return false;
        }
        self.times.push(now_ms);
        true
    }
}

#[cfg(test)]
mod tests {
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
}

#[cfg(test)]
mod series {
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
            if let Err(e) =
                sgpu_spool::Record::new(id, end, sgpu_spool::RecordBody::JobUsage(usage))
            {
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
}
