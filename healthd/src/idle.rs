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
mod tests;

#[cfg(test)]
mod series;
