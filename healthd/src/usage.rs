//! Per-job GPU usage: the accumulators healthd keeps while a job runs, the GPU → job mapping
//! from the spool's start/end records, and the finalised `job_usage` record (pure: no I/O).
//!
//! A job is followed from its `job_start` record (sgpu-prolog) until its `job_end` record
//! (sgpu-epilog) appears; its GPUs are those the start record names, matched to NVML by
//! UUID. Each sample adds, per GPU: one utilization reading (mean and max), the memory in
//! use (peak), and energy: the energy counter's increase since the previous reading (the
//! first one since the prolog's counter reading), or power × time where the counter is
//! unsupported or went backwards (a driver reload resets it).
//!
//! At the end: allocated GPU-ms = GPUs × wall time of the job on the node (from the end
//! record), used GPU-ms per GPU = its share of the window × its mean utilization, energy per
//! GPU = the end record's exact counter delta where the epilog measured one, else the
//! sampled energy; idle time and periods per GPU from its [`IdleTrack`] (live idle
//! detection, [`crate::idle`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sgpu_spool::{GpuUsage, JobEnd, JobStart, RecordId, Usage};

use sgpu_nodelib::config::IdleDetect;
use sgpu_nodelib::gpu::GpuSample;

use crate::idle::{IdleTrack, PolicyState};

const MIB: u64 = 1024 * 1024;

/// A job run's identity on this node: `<cluster>,<job id>,<start ms>` (the start time tells
/// a requeued job's runs apart).
pub fn job_key(cluster: &str, job_id: u32, start_time: u64) -> String {
    format!("{cluster},{job_id},{start_time}")
}

/// One GPU's accumulated usage within a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuAccumulator {
    /// GPU index as the job-start record gives it (Slurm's numbering).
    pub index: u32,
    /// NVML UUID: how samples are matched to this GPU.
    pub uuid: String,
    /// Product name, if known.
    pub name: Option<String>,
    /// Samples with a utilization reading.
    pub samples: u64,
    /// Sum of the sampled utilizations, percent.
    pub util_sum: u64,
    /// Highest sampled utilization, percent.
    pub util_max: u32,
    /// Highest sampled memory in use, bytes.
    pub mem_peak_bytes: u64,
    /// Energy used so far, mJ (valid where `energy_known`).
    pub energy_mj: u64,
    /// Whether any energy was measured (a counter delta or power × time).
    pub energy_known: bool,
    /// The energy counter at the previous reading (or the prolog's), mJ.
    pub last_counter_mj: Option<u64>,
    /// Time of the previous sample, ms.
    pub last_time_ms: Option<u64>,
    /// Live idle detection (absent in accumulators stored before it existed: tracking starts
    /// at the next sample).
    #[serde(default)]
    pub idle: IdleTrack,
}

impl GpuAccumulator {
    /// A GPU with nothing sampled yet; `counter_at_start` is the prolog's counter reading.
    pub fn new(
        index: u32,
        uuid: String,
        name: Option<String>,
        counter_at_start: Option<u64>,
    ) -> Self {
        GpuAccumulator {
            index,
            uuid,
            name,
            samples: 0,
            util_sum: 0,
            util_max: 0,
            mem_peak_bytes: 0,
            energy_mj: 0,
            energy_known: false,
            last_counter_mj: counter_at_start,
            last_time_ms: None,
            idle: IdleTrack::default(),
        }
    }

    /// Adds one sample taken at `t_ms`, judged idle or not with the default detection.
    pub fn add(&mut self, s: &GpuSample, t_ms: u64) {
        self.add_detect(s, t_ms, &IdleDetect::default());
    }

    /// Adds one sample taken at `t_ms`; `detect` says when the GPU is idle.
    pub fn add_detect(&mut self, s: &GpuSample, t_ms: u64, detect: &IdleDetect) {
        self.idle.observe(
            t_ms,
            s.utilization_gpu_pct,
            s.utilization_memory_pct,
            detect,
        );
        if let Some(u) = s.utilization_gpu_pct {
            let u = u.min(100);
            self.samples += 1;
            self.util_sum = self.util_sum.saturating_add(u64::from(u));
            self.util_max = self.util_max.max(u);
        }
        if let Some(m) = s.memory_used_bytes {
            self.mem_peak_bytes = self.mem_peak_bytes.max(m);
        }
        let dt_ms = self.last_time_ms.map(|last| t_ms.saturating_sub(last));
        // power x time over the last interval, mW x ms / 1000 = mJ
        let integrated = match (s.power_mw, dt_ms) {
            (Some(p), Some(dt)) => Some(u64::from(p).saturating_mul(dt) / 1000),
            _ => None,
        };
        match (s.energy_mj, self.last_counter_mj) {
            (Some(now), Some(before)) if now >= before => {
                self.energy_mj = self.energy_mj.saturating_add(now - before);
                self.energy_known = true;
            }
            // the counter went backwards (driver reload) or is unsupported: integrate power
            _ => {
                if let Some(e) = integrated {
                    self.energy_mj = self.energy_mj.saturating_add(e);
                    self.energy_known = true;
                }
            }
        }
        if s.energy_mj.is_some() {
            self.last_counter_mj = s.energy_mj;
        }
        self.last_time_ms = Some(t_ms);
    }

    /// Mean sampled utilization, percent (0 without samples); never above [`Self::util_max`].
    pub fn util_mean(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            // exact integers below 2^53 divide monotonically: sum/n <= n*max/n = max
            self.util_sum as f64 / self.samples as f64
        }
    }

    /// Peak memory, MiB (rounded up).
    pub fn mem_peak_mib(&self) -> u64 {
        self.mem_peak_bytes.div_ceil(MIB)
    }

    /// Energy so far, mJ, if any was measured.
    pub fn energy(&self) -> Option<u64> {
        self.energy_known.then_some(self.energy_mj)
    }
}

/// A job's accumulated usage on this node, kept in healthd's database while the job runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobAccumulator {
    /// Cluster name (from the start record's identity).
    pub cluster: String,
    /// Slurm job id.
    pub job_id: u32,
    /// The job's run (from the start record's identity; absent in accumulators stored
    /// before runs existed: run 0).
    #[serde(default)]
    pub run: u32,
    /// Node name (from the start record's identity).
    pub node: String,
    /// Job owner.
    pub user: String,
    /// Job owner's uid.
    pub uid: u32,
    /// Slurm account, where set.
    pub account: Option<String>,
    /// Slurm partition, where set.
    pub partition: Option<String>,
    /// Job start on this node, ms.
    pub start_time: u64,
    /// The job's GPUs.
    pub gpus: Vec<GpuAccumulator>,
    /// Where the job stands with its partition's idle policy.
    #[serde(default)]
    pub policy: PolicyState,
}

impl JobAccumulator {
    /// A fresh accumulator for the job a start record describes.
    pub fn from_start(id: &RecordId, start: &JobStart) -> JobAccumulator {
        JobAccumulator {
            cluster: id.cluster().to_string(),
            job_id: id.job_id(),
            run: id.run(),
            node: id.node().to_string(),
            user: start.user.clone(),
            uid: start.uid,
            account: start.account.clone(),
            partition: start.partition.clone(),
            start_time: start.start_time,
            gpus: start
                .gpus
                .iter()
                .map(|g| GpuAccumulator::new(g.index, g.uuid.clone(), g.name.clone(), g.energy_mj))
                .collect(),
            policy: PolicyState::default(),
        }
    }

    /// This job's key ([`job_key`]).
    pub fn key(&self) -> String {
        job_key(&self.cluster, self.job_id, self.start_time)
    }

    /// Whether `end` is this job run's end record: same cluster, job and run, the same
    /// start (or none known: the epilog lacked the prolog's note, and with it the run),
    /// ending after this start.
    pub fn ended_by(&self, id: &RecordId, end: &JobEnd) -> bool {
        id.cluster() == self.cluster
            && id.job_id() == self.job_id
            && (id.run() == self.run || end.gpus.is_empty())
            && end.end_time >= self.start_time
            && (end.start_time == self.start_time || end.gpus.is_empty())
    }

    /// Samples of the GPU this job holds with the most samples.
    pub fn samples(&self) -> u64 {
        self.gpus.iter().map(|g| g.samples).max().unwrap_or(0)
    }

    /// Mean utilization over the job's GPUs with utilization samples, percent (a MIG slice
    /// has none: unknown, so it does not pull the mean to 0); 0 when none has any.
    pub fn util_mean(&self) -> f64 {
        let sampled: Vec<f64> = self
            .gpus
            .iter()
            .filter(|g| g.samples > 0)
            .map(GpuAccumulator::util_mean)
            .collect();
        if sampled.is_empty() {
            return 0.0;
        }
        sampled.iter().sum::<f64>() / sampled.len() as f64
    }

    /// Highest utilization any of its GPUs reached, percent.
    pub fn util_max(&self) -> u32 {
        self.gpus.iter().map(|g| g.util_max).max().unwrap_or(0)
    }

    /// Energy so far over its GPUs, mJ, if any was measured.
    pub fn energy(&self) -> Option<u64> {
        self.gpus
            .iter()
            .filter_map(GpuAccumulator::energy)
            .reduce(u64::saturating_add)
    }

    /// Adds one batch of samples taken at `t_ms` to the GPUs this job holds (by UUID), with
    /// the default idle detection; returns whether any GPU of the job was in the batch.
    pub fn add(
        &mut self,
        samples: &[GpuSample],
        t_ms: u64,
        owners: &BTreeMap<String, String>,
    ) -> bool {
        self.add_detect(samples, t_ms, owners, &IdleDetect::default())
    }

    /// Like [`JobAccumulator::add`], judging idleness with `detect` (the partition's).
    pub fn add_detect(
        &mut self,
        samples: &[GpuSample],
        t_ms: u64,
        owners: &BTreeMap<String, String>,
        detect: &IdleDetect,
    ) -> bool {
        let key = self.key();
        let mut any = false;
        for g in &mut self.gpus {
            if owners.get(&g.uuid) != Some(&key) {
                continue;
            }
            if let Some(s) = samples
                .iter()
                .find(|s| s.uuid.as_deref() == Some(g.uuid.as_str()))
            {
                g.add_detect(s, t_ms, detect);
                any = true;
            }
        }
        any
    }

    /// The finalised usage for the job's end record.
    ///
    /// The window is the end record's (start to end on this node) and its GPUs are the end
    /// record's (matched by UUID); an end record without GPUs (the epilog lacked the
    /// prolog's note) falls back to this job's GPUs over start record start to end.
    pub fn finalise(&self, end: &JobEnd) -> Usage {
        let (window_start, window_end) = if end.gpus.is_empty() {
            (self.start_time.min(end.end_time), end.end_time)
        } else {
            (end.start_time.min(end.end_time), end.end_time)
        };
        let span = window_end - window_start;
        let mut gpus: Vec<GpuUsage> = Vec::new();
        let mut push = |index: u32, uuid: &str, name: Option<String>, exact: Option<u64>| {
            let acc = self.gpus.iter().find(|g| g.uuid == uuid);
            let idle = acc.and_then(|a| a.idle.figures(window_start, window_end));
            let mean = acc.map_or(0.0, GpuAccumulator::util_mean);
            let used = ((span as f64) * mean / 100.0).round();
            // mean <= 100 keeps it within the window; clamp against rounding all the same
            let used_gpu_ms = if used.is_finite() && used > 0.0 {
                (used as u64).min(span)
            } else {
                0
            };
            gpus.push(GpuUsage {
                index,
                uuid: uuid.to_string(),
                name: name.or_else(|| acc.and_then(|a| a.name.clone())),
                samples: acc.map_or(0, |a| a.samples),
                util_mean_pct: mean,
                util_max_pct: acc.map_or(0, |a| a.util_max),
                mem_peak_mib: acc.map_or(0, GpuAccumulator::mem_peak_mib),
                energy_mj: exact.or_else(|| acc.and_then(GpuAccumulator::energy)),
                used_gpu_ms,
                idle_ms: idle.as_ref().map(|(ms, _)| *ms),
                idle_periods: idle.map(|(_, p)| p),
            });
        };
        if end.gpus.is_empty() {
            for g in &self.gpus {
                push(g.index, &g.uuid, g.name.clone(), None);
            }
        } else {
            for g in &end.gpus {
                push(g.index, &g.uuid, g.name.clone(), g.energy_delta_mj);
            }
        }
        let allocated_gpu_ms = span.saturating_mul(gpus.len() as u64);
        let used_gpu_ms = gpus
            .iter()
            .map(|g| g.used_gpu_ms)
            .fold(0, u64::saturating_add);
        let idle_gpu_ms = gpus
            .iter()
            .map(|g| g.idle_ms)
            .try_fold(0u64, |sum, i| i.map(|i| sum.saturating_add(i)))
            .filter(|_| !gpus.is_empty());
        Usage {
            user: end.user.clone(),
            uid: end.uid,
            account: end.account.clone().or_else(|| self.account.clone()),
            partition: end.partition.clone().or_else(|| self.partition.clone()),
            window_start,
            window_end,
            gpus,
            allocated_gpu_ms,
            used_gpu_ms,
            idle_gpu_ms,
        }
    }
}

/// Which job holds each GPU (UUID → job key) among the running jobs: where two claim one
/// GPU (an end record never came), the later start wins.
pub fn gpu_owners<'a>(
    running: impl IntoIterator<Item = &'a JobAccumulator>,
) -> BTreeMap<String, String> {
    let mut best: BTreeMap<String, (u64, u32, String)> = BTreeMap::new();
    for job in running {
        for g in &job.gpus {
            let candidate = (job.start_time, job.job_id, job.key());
            match best.get(&g.uuid) {
                Some(cur) if (cur.0, cur.1) >= (candidate.0, candidate.1) => {}
                _ => {
                    best.insert(g.uuid.clone(), candidate);
                }
            }
        }
    }
    best.into_iter()
        .map(|(uuid, (_, _, key))| (uuid, key))
        .collect()
}

/// What the spool says about jobs on this node at one scan.
#[derive(Debug, Clone, Default)]
pub struct SpoolJobs {
    /// Start records, each with whether it is new since healthd's first scan.
    pub starts: Vec<(RecordId, JobStart, bool)>,
    /// End records.
    pub ends: Vec<(RecordId, JobEnd)>,
}

impl SpoolJobs {
    /// The end record of `acc`'s job run, if the spool has it.
    pub fn end_of(&self, acc: &JobAccumulator) -> Option<&JobEnd> {
        self.ends
            .iter()
            .find(|(id, end)| acc.ended_by(id, end))
            .map(|(_, end)| end)
    }
}

/// What to do with the jobs after a spool scan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Jobs to start following.
    pub follow: Vec<JobAccumulator>,
    /// Jobs to finalise: key and end record.
    pub finalise: Vec<(String, JobEnd)>,
}

/// Decides which jobs to follow and which to finalise.
///
/// - A start record without an end record, and no accumulator: follow it.
/// - A start and an end record, no accumulator: follow and finalise at once (zero
///   samples) only if the start record is new since healthd's first scan (a job shorter
///   than a sample interval); a pair that was already in the spool when healthd started is
///   a job it never watched (or already finalised) and is left alone.
/// - An accumulator whose end record is in the spool: finalise.
pub fn plan(spool: &SpoolJobs, followed: &BTreeMap<String, JobAccumulator>) -> Plan {
    let mut p = Plan::default();
    for (id, start, new) in &spool.starts {
        let acc = JobAccumulator::from_start(id, start);
        if followed.contains_key(&acc.key()) || p.follow.iter().any(|a| a.key() == acc.key()) {
            continue;
        }
        if *new || spool.end_of(&acc).is_none() {
            p.follow.push(acc);
        }
    }
    for (key, acc) in followed
        .iter()
        .map(|(k, a)| (k.clone(), a))
        .chain(p.follow.iter().map(|a| (a.key(), a)))
    {
        if let Some(end) = spool.end_of(acc) {
            p.finalise.push((key, end.clone()));
        }
    }
    p
}

#[cfg(test)]
mod tests;
