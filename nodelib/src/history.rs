//! What earlier checks saw, for the rules one reading cannot decide.
//!
//! Several conditions are only faults in the light of earlier readings (see the catalogue in
//! `healthd/README.md` for the real readings behind each):
//!
//! - **PCIe width.** An x8 link on an x16 board is normal in an x8-wired slot (idle A10G,
//!   L4 and T4 captures show it) and a fault on a board that had x16 yesterday. The node's
//!   baseline is the widest link each GPU (by UUID) has reported: a link narrower than that
//!   is degraded.
//! - **HW throttle.** HW slowdown, HW power brake and HW thermal slowdown are warned about
//!   when seen, and drain when seen on `drain_after_checks` consecutive checks.
//! - **Counters judged by rate.** Correctable ECC errors and PCIe replays grow on healthy
//!   boards; only their rate says something. A counter's reference reading is kept for up
//!   to [`RATE_WINDOW_S`]; the rate is judged once at least [`MIN_RATE_SPAN_S`] separate
//!   it from the current reading. A counter that went down (driver reload, GPU reset)
//!   restarts from the new value.
//!
//! The record lives in `<state_dir>/gpu-history.json`, shared by the daemon and the
//! prolog/epilog gates; it is written atomically (temporary file, rename). Two writers at
//! once lose one update (a streak counts one check fewer), never the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::gpu::{HW_THROTTLE_REASONS, NodeSnapshot, Reading};

/// The file in the state directory.
pub const HISTORY_FILE: &str = "gpu-history.json";
/// A counter's reference reading is replaced once it is this old (seconds).
pub const RATE_WINDOW_S: f64 = 3600.0;
/// The least time between two readings for a rate to be judged (seconds).
pub const MIN_RATE_SPAN_S: f64 = 60.0;
/// The most GPUs remembered (UUIDs of boards long gone are dropped first).
const MAX_GPUS: usize = 4096;

/// Why the history could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The file could not be read or written.
    #[error("GPU history {path}: {source} (check that the state directory is writable)")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A counter's reading and when it was taken.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CounterReading {
    /// The counter's value.
    pub value: u64,
    /// Unix time of the reading, seconds.
    pub at: f64,
}

impl CounterReading {
    /// Events per hour between this (older) reading and `now_value` at `now`; `None` when
    /// the span is under [`MIN_RATE_SPAN_S`] or the counter went down.
    pub fn rate_per_hour(&self, now_value: u64, now: f64) -> Option<f64> {
        let span = now - self.at;
        if span < MIN_RATE_SPAN_S || now_value < self.value {
            return None;
        }
        Some((now_value - self.value) as f64 * 3600.0 / span)
    }
}

/// What is remembered about one GPU.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuRecord {
    /// The widest PCIe link the GPU has reported (lanes).
    #[serde(default)]
    pub pcie_width_best: Option<u32>,
    /// Consecutive checks that saw a HW throttle reason.
    #[serde(default)]
    pub hw_throttle_streak: u32,
    /// Reference reading of the volatile corrected ECC counter.
    #[serde(default)]
    pub ecc_corrected: Option<CounterReading>,
    /// Reference reading of the PCIe replay counter.
    #[serde(default)]
    pub pcie_replays: Option<CounterReading>,
    /// When the GPU was last seen (Unix s).
    #[serde(default)]
    pub seen: f64,
    /// The most NVLink links this GPU has had active at once.
    #[serde(default)]
    pub nvlink_active_best: Option<u32>,
    /// Reference readings of the NVLink error counters, by `<link>/<counter>`.
    #[serde(default)]
    pub nvlink_errors: BTreeMap<String, CounterReading>,
}

/// The node's GPU history, by GPU UUID.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Records by UUID.
    #[serde(default)]
    pub gpus: BTreeMap<String, GpuRecord>,
}

fn advance(
    prev: Option<CounterReading>,
    reading: &Reading<impl Copy + Into<u64>>,
    now: f64,
) -> Option<CounterReading> {
    let Reading::Value(v) = reading else {
        return prev;
    };
    let value: u64 = (*v).into();
    match prev {
        Some(p) if value >= p.value && now - p.at < RATE_WINDOW_S => Some(p),
        _ => Some(CounterReading { value, at: now }),
    }
}

impl History {
    /// The record of the GPU with this UUID.
    pub fn gpu(&self, uuid: &str) -> Option<&GpuRecord> {
        self.gpus.get(uuid)
    }

    /// Folds one snapshot in (taken at Unix time `now`).
    pub fn observe(&mut self, snapshot: &NodeSnapshot, now: f64) {
        for g in &snapshot.gpus {
            let Some(uuid) = g.uuid() else {
                continue;
            };
            if g.lost {
                continue;
            }
            let r = self.gpus.entry(uuid.to_string()).or_default();
            if let Reading::Value(w) = g.pcie.width_current {
                r.pcie_width_best = Some(r.pcie_width_best.map_or(w, |b| b.max(w)));
            }
            match g.throttle_reasons {
                Reading::Value(bits) => {
                    let hw = HW_THROTTLE_REASONS.iter().any(|(b, _)| bits & b != 0);
                    r.hw_throttle_streak = if hw {
                        r.hw_throttle_streak.saturating_add(1)
                    } else {
                        0
                    };
                }
                _ => r.hw_throttle_streak = 0,
            }
            r.ecc_corrected = advance(r.ecc_corrected, &g.ecc_volatile_corrected, now);
            r.pcie_replays = advance(r.pcie_replays, &g.pcie_replays, now);
            crate::nvlink::observe(r, g, now);
            r.seen = now;
        }
        if self.gpus.len() > MAX_GPUS {
            let mut by_age: Vec<(f64, String)> =
                self.gpus.iter().map(|(k, r)| (r.seen, k.clone())).collect();
            by_age.sort_by(|a, b| a.0.total_cmp(&b.0));
            let excess = self.gpus.len() - MAX_GPUS;
            for (_, k) in by_age.into_iter().take(excess) {
                self.gpus.remove(&k);
            }
        }
    }

    /// Reads `<dir>/gpu-history.json`; a missing file is an empty history, and so is one
    /// that does not parse (it is only a cache of earlier readings: it is rebuilt).
    pub fn load(dir: &Path) -> Result<History, HistoryError> {
        let path = dir.join(HISTORY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_default()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(History::default()),
            Err(source) => Err(HistoryError::Io { path, source }),
        }
    }

    /// Writes `<dir>/gpu-history.json` atomically (creating `dir`).
    pub fn save(&self, dir: &Path) -> Result<(), HistoryError> {
        let path = dir.join(HISTORY_FILE);
        let io = |source| HistoryError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let text = serde_json::to_vec(self).map_err(|e| io(std::io::Error::other(e)))?;
        crate::state_file::write_cache(&path, &text).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::GpuSnapshot;

    fn snap(width: u32, throttle: u64, ecc: u64) -> NodeSnapshot {
        let mut g = GpuSnapshot::unknown(0);
        g.uuid = Reading::Value("GPU-a".into());
        g.pcie.width_current = Reading::Value(width);
        g.throttle_reasons = Reading::Value(throttle);
        g.ecc_volatile_corrected = Reading::Value(ecc);
        NodeSnapshot {
            driver_version: Reading::Unsupported,
            gpus: vec![g],
        }
    }

    #[test]
    fn baseline_streak_and_rates() {
        let hw = HW_THROTTLE_REASONS[0].0;
        let mut h = History::default();
        h.observe(&snap(16, hw, 10), 1000.0);
        h.observe(&snap(8, hw, 12), 1100.0);
        let r = h.gpu("GPU-a").unwrap();
        assert_eq!(
            r.pcie_width_best,
            Some(16),
            "the widest link stays the baseline"
        );
        assert_eq!(r.hw_throttle_streak, 2);
        let c = r.ecc_corrected.unwrap();
        assert_eq!(
            (c.value, c.at),
            (10, 1000.0),
            "reference kept within the window"
        );
        assert_eq!(c.rate_per_hour(40, 1000.0 + 1800.0), Some(60.0));
        assert_eq!(c.rate_per_hour(40, 1010.0), None, "span too short");
        assert_eq!(c.rate_per_hour(5, 5000.0), None, "counter reset");
        h.observe(&snap(16, 0, 3), 1200.0);
        let r = h.gpu("GPU-a").unwrap();
        assert_eq!(r.hw_throttle_streak, 0);
        assert_eq!(
            r.ecc_corrected.unwrap().value,
            3,
            "a reset restarts the reference"
        );
        h.observe(&snap(16, 0, 9), 1200.0 + RATE_WINDOW_S + 1.0);
        assert_eq!(h.gpu("GPU-a").unwrap().ecc_corrected.unwrap().value, 9);
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(History::load(dir.path()).unwrap(), History::default());
        let mut h = History::default();
        h.observe(&snap(16, 0, 1), 5.0);
        h.save(dir.path()).unwrap();
        assert_eq!(History::load(dir.path()).unwrap(), h);
        std::fs::write(dir.path().join(HISTORY_FILE), "not json").unwrap();
        assert_eq!(History::load(dir.path()).unwrap(), History::default());
    }
}
