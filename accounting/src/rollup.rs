//! Rollup rows: what each record adds to the per-(cluster, account, user, partition, GPU
//! model, day) totals.
//!
//! Rules (the same at ingest and when [`crate::store::verify`] recomputes them):
//! - `job_end` adds allocated GPU-ms (per GPU, exactly the overlap of its allocation window
//!   with each UTC day: Slurm's `slurm_window` when the record has it, so the figures equal
//!   `sacct`'s, else the gates' `start_time..end_time`; a MIG slice in GPU-equivalents, its
//!   window times its share of the GPU ([`sgpu_spool::MigShare`], nearest ms), split over
//!   the days in proportion to the overlap) and energy (per GPU,
//!   `energy_delta_mj`, else end − start counter; measured over the gates' window, so split
//!   over that window's days in proportion to the overlap, see [`crate::day`]). A MIG slice
//!   (an entry with a [`sgpu_spool::MigShare`], or whose model names a profile:
//!   [`split_mig_model`]) also adds its device time as `slice_ms` (its allocated window's
//!   overlap with each day, the slice counted once whatever its share), so reports give
//!   slice-hours per profile beside the GPU-equivalents. A slice's GPU-equivalents are
//!   also `used_unmeasured_gpu_ms`: healthd samples no utilization per slice, so its used
//!   time is unknown (reports give used time and efficiency over the rest only).
//! - `job_usage` (healthd) adds used GPU-ms, per GPU, split over its window's days the same
//!   way, and where a GPU's `idle_ms` is present (healthd measured idle time) that idle
//!   time (split the same way) and the window's GPU-ms as `idle_measured_gpu_ms`, so a row
//!   knows over how much GPU time its idle figure was measured (0: unknown). It never touches allocated time or energy, so it may arrive before or after the
//!   job's `job_end`.
//! - `job_start` and `step_usage` are stored for job queries but add nothing: step usage
//!   overlaps the job's own usage and would count twice.
//! - `jobs` counts a job once, on the UTC day of its end, in the group of the first stored
//!   `job_end` of that job (on any node) that has at least one GPU (its first GPU's model).
//!
//! Account or partition not set is the empty string; a GPU without a name is `unknown`.

use std::collections::BTreeMap;

use serde::Serialize;
use sgpu_spool::{MigShare, Record, RecordBody};

use crate::day::{day_of, split_amount, split_span};

/// GPU model used when the record does not name one.
pub const UNKNOWN_GPU_MODEL: &str = "unknown";

/// The identity of one rollup row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RollupKey {
    /// UTC day, days since 1970-01-01.
    pub day: u32,
    /// Slurm cluster.
    pub cluster: String,
    /// Slurm account; empty when not set.
    pub account: String,
    /// User name.
    pub user: String,
    /// Slurm partition; empty when not set.
    pub partition: String,
    /// GPU product name.
    pub gpu_model: String,
}

/// The totals of one rollup row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RollupValue {
    /// Allocated GPU time, GPU-ms.
    pub allocated_gpu_ms: u64,
    /// Used GPU time (sampled), GPU-ms.
    pub used_gpu_ms: u64,
    /// Energy, mJ.
    pub energy_mj: u64,
    /// Jobs counted in this row.
    pub jobs: u64,
    /// Idle GPU time (healthd's idle detection), GPU-ms: counted only where it was
    /// measured (see `idle_measured_gpu_ms`).
    pub idle_gpu_ms: u64,
    /// GPU time over which idle time was measured (the windows of `job_usage` records that
    /// carry `idle_ms`), GPU-ms; 0: idle time is unknown in this row (not 0 idle).
    pub idle_measured_gpu_ms: u64,
    /// Allocated device time of MIG slices, slice-ms: each slice's allocated window counted
    /// once, not by its share (0 for whole GPUs).
    pub slice_ms: u64,
    /// Allocated GPU time over which used time was not measured, GPU-ms (part of
    /// `allocated_gpu_ms`): MIG slices, by their share, as healthd samples no utilization
    /// per slice. Used time is known over `allocated_gpu_ms` minus this; 0 (rows written
    /// before it was kept): all of it.
    pub used_unmeasured_gpu_ms: u64,
}

impl RollupValue {
    /// Adds `other` field by field (saturating).
    pub fn add(&mut self, other: &RollupValue) {
        self.allocated_gpu_ms = self.allocated_gpu_ms.saturating_add(other.allocated_gpu_ms);
        self.used_gpu_ms = self.used_gpu_ms.saturating_add(other.used_gpu_ms);
        self.energy_mj = self.energy_mj.saturating_add(other.energy_mj);
        self.jobs = self.jobs.saturating_add(other.jobs);
        self.idle_gpu_ms = self.idle_gpu_ms.saturating_add(other.idle_gpu_ms);
        self.idle_measured_gpu_ms = self
            .idle_measured_gpu_ms
            .saturating_add(other.idle_measured_gpu_ms);
        self.slice_ms = self.slice_ms.saturating_add(other.slice_ms);
        self.used_unmeasured_gpu_ms = self
            .used_unmeasured_gpu_ms
            .saturating_add(other.used_unmeasured_gpu_ms);
    }

    /// Allocated GPU time over which used time was measured, GPU-ms.
    pub fn used_measured_gpu_ms(&self) -> u64 {
        self.allocated_gpu_ms
            .saturating_sub(self.used_unmeasured_gpu_ms)
    }

    /// The stored form's length, [`RollupValue::encode`].
    pub const ENCODED_LEN: usize = 56;

    /// The 56-byte stored form of sled's format-2 rollup groups (seven big-endian u64:
    /// allocated, used, energy, jobs, idle, idle measured, slice time; not
    /// `used_unmeasured_gpu_ms`, which rows of that form read as 0).
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut b = [0u8; Self::ENCODED_LEN];
        for (i, w) in [
            self.allocated_gpu_ms,
            self.used_gpu_ms,
            self.energy_mj,
            self.jobs,
            self.idle_gpu_ms,
            self.idle_measured_gpu_ms,
            self.slice_ms,
        ]
        .iter()
        .enumerate()
        {
            b[i * 8..i * 8 + 8].copy_from_slice(&w.to_be_bytes());
        }
        b
    }

    /// Reads the stored form: 56 bytes, the 48 bytes of rows written before slice time was
    /// kept (slice time 0), or the 32 bytes of rows written before idle time was kept (idle
    /// then unknown: `idle_measured_gpu_ms` 0); `None` otherwise.
    pub fn decode(b: &[u8]) -> Option<RollupValue> {
        if ![32, 48, Self::ENCODED_LEN].contains(&b.len()) {
            return None;
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(b.get(i * 8..i * 8 + 8)?);
            Some(u64::from_be_bytes(w))
        };
        Some(RollupValue {
            allocated_gpu_ms: word(0)?,
            used_gpu_ms: word(1)?,
            energy_mj: word(2)?,
            jobs: word(3)?,
            idle_gpu_ms: word(4).unwrap_or(0),
            idle_measured_gpu_ms: word(5).unwrap_or(0),
            slice_ms: word(6).unwrap_or(0),
            used_unmeasured_gpu_ms: 0,
        })
    }
}

impl RollupKey {
    /// The stored form: the day (4 bytes, big-endian, so keys sort by day), then each
    /// string as a 4-byte big-endian length and its bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&self.day.to_be_bytes());
        for s in [
            &self.cluster,
            &self.account,
            &self.user,
            &self.partition,
            &self.gpu_model,
        ] {
            let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out
    }

    /// Reads the stored form; `None` if it is malformed.
    pub fn decode(b: &[u8]) -> Option<RollupKey> {
        let (day, mut rest) = b.split_first_chunk::<4>()?;
        let mut next = || -> Option<String> {
            let (len, r) = rest.split_first_chunk::<4>()?;
            let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
            if r.len() < len {
                return None;
            }
            let (s, r) = r.split_at(len);
            rest = r;
            String::from_utf8(s.to_vec()).ok()
        };
        let key = RollupKey {
            day: u32::from_be_bytes(*day),
            cluster: next()?,
            account: next()?,
            user: next()?,
            partition: next()?,
            gpu_model: next()?,
        };
        rest.is_empty().then_some(key)
    }
}

/// A GPU model as the records name it, split into the parent GPU's model and the MIG
/// profile: `NVIDIA H100 80GB HBM3 MIG 2g.20gb` is (`NVIDIA H100 80GB HBM3`, `2g.20gb`); a
/// whole GPU's model has no profile.
pub fn split_mig_model(model: &str) -> (&str, Option<&str>) {
    match model.rsplit_once(" MIG ") {
        Some((parent, profile)) if !parent.trim().is_empty() && !profile.trim().is_empty() => {
            (parent.trim_end(), Some(profile.trim()))
        }
        _ => (model, None),
    }
}

/// Whether a record's GPU entry is a MIG slice: it states a share, or its model names a
/// profile (a slice whose share the prolog could not read).
pub fn is_slice(mig: Option<&MigShare>, model: &str) -> bool {
    mig.is_some() || split_mig_model(model).1.is_some()
}

fn gpu_model(name: &Option<String>) -> String {
    match name.as_deref().map(str::trim) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => UNKNOWN_GPU_MODEL.to_string(),
    }
}

struct Group<'a> {
    cluster: &'a str,
    account: &'a Option<String>,
    user: &'a str,
    partition: &'a Option<String>,
}

impl Group<'_> {
    fn key(&self, day: u32, model: String) -> RollupKey {
        RollupKey {
            day,
            cluster: self.cluster.to_string(),
            account: self.account.clone().unwrap_or_default(),
            user: self.user.to_string(),
            partition: self.partition.clone().unwrap_or_default(),
            gpu_model: model,
        }
    }
}

/// What `record` adds to the rollups, without the job count (see [`job_count_key`]).
pub fn contributions(record: &Record) -> BTreeMap<RollupKey, RollupValue> {
    let mut out: BTreeMap<RollupKey, RollupValue> = BTreeMap::new();
    let cluster = record.id().cluster();
    match record.body() {
        RecordBody::JobEnd(b) => {
            let g = Group {
                cluster,
                account: &b.account,
                user: &b.user,
                partition: &b.partition,
            };
            let (alloc_start, alloc_end) = b.allocated_window();
            let alloc_days = split_span(alloc_start, alloc_end);
            let days = split_span(b.start_time, b.end_time);
            let alloc_span = alloc_end.saturating_sub(alloc_start);
            for gpu in &b.gpus {
                let model = gpu_model(&gpu.name);
                // a whole GPU: exactly its overlap with each day; a MIG slice: its share
                let slice = is_slice(gpu.mig.as_ref(), &model);
                for (day, part) in split_amount(gpu.gpu_equiv_ms(alloc_span), &alloc_days) {
                    let v = out.entry(g.key(day, model.clone())).or_default();
                    v.allocated_gpu_ms = v.allocated_gpu_ms.saturating_add(part);
                    if slice {
                        // no utilization per slice: its used time is unknown, not 0
                        v.used_unmeasured_gpu_ms = v.used_unmeasured_gpu_ms.saturating_add(part);
                    }
                }
                if slice {
                    // the slice's device time: its exact overlap with each day
                    for &(day, overlap) in &alloc_days {
                        let v = out.entry(g.key(day, model.clone())).or_default();
                        v.slice_ms = v.slice_ms.saturating_add(overlap);
                    }
                }
                let energy = gpu.energy_delta_mj.or_else(|| {
                    gpu.energy_end_mj
                        .zip(gpu.energy_start_mj)
                        .and_then(|(e, s)| e.checked_sub(s))
                });
                if let Some(energy) = energy {
                    for (day, part) in split_amount(energy, &days) {
                        let v = out.entry(g.key(day, model.clone())).or_default();
                        v.energy_mj = v.energy_mj.saturating_add(part);
                    }
                }
            }
        }
        RecordBody::JobUsage(b) => {
            let g = Group {
                cluster,
                account: &b.account,
                user: &b.user,
                partition: &b.partition,
            };
            let days = split_span(b.window_start, b.window_end);
            for gpu in &b.gpus {
                let model = gpu_model(&gpu.name);
                for (day, part) in split_amount(gpu.used_gpu_ms, &days) {
                    let v = out.entry(g.key(day, model.clone())).or_default();
                    v.used_gpu_ms = v.used_gpu_ms.saturating_add(part);
                }
                if let Some(idle) = gpu.idle_ms {
                    for (day, part) in split_amount(idle, &days) {
                        let v = out.entry(g.key(day, model.clone())).or_default();
                        v.idle_gpu_ms = v.idle_gpu_ms.saturating_add(part);
                    }
                    for &(day, overlap) in &days {
                        let v = out.entry(g.key(day, model.clone())).or_default();
                        v.idle_measured_gpu_ms = v.idle_measured_gpu_ms.saturating_add(overlap);
                    }
                }
            }
        }
        RecordBody::JobStart(_) | RecordBody::StepUsage(_) => {}
    }
    out
}

/// The row a `job_end` record counts its job in, if it can count it (it has a GPU).
pub fn job_count_key(record: &Record) -> Option<RollupKey> {
    let RecordBody::JobEnd(b) = record.body() else {
        return None;
    };
    let first = b.gpus.first()?;
    Some(RollupKey {
        day: day_of(b.end_time),
        cluster: record.id().cluster().to_string(),
        account: b.account.clone().unwrap_or_default(),
        user: b.user.clone(),
        partition: b.partition.clone().unwrap_or_default(),
        gpu_model: gpu_model(&first.name),
    })
}

/// The key of the "job already counted" marker for a record's job: `cluster,job_id`.
pub fn job_marker(record: &Record) -> Vec<u8> {
    format!("{},{}", record.id().cluster(), record.id().job_id()).into_bytes()
}

#[cfg(test)]
mod tests;
