//! The `--gpu-report` summary written into the job's output at the end of the job.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::capture::{GpuEndReading, StepStart, energy_delta};
use crate::status::{GpuUsage, JobUsage};

/// What the summary says about utilization when no sampler answered.
pub const UTILIZATION_UNAVAILABLE: &str = "unavailable (healthd not reachable)";

/// What the summary says about a GPU healthd has no samples of for this job.
pub const UTILIZATION_NO_SAMPLES: &str = "unavailable (no healthd samples for this job)";

/// Formats the summary of a job's GPUs on this node over `start.start_ms..end_ms`;
/// `usage` is healthd's record of the job (`None`: healthd was not reachable).
pub fn summary(
    start: &StepStart,
    end_ms: u64,
    end: &BTreeMap<String, GpuEndReading>,
    usage: Option<Option<&JobUsage>>,
) -> String {
    let wall_ms = end_ms.saturating_sub(start.start_ms);
    let n = start.gpus.len();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "sgpu: GPU report for job {} on {} ({n} GPU{}, wall time {})",
        start.job_id,
        start.node,
        if n == 1 { "" } else { "s" },
        hms(wall_ms)
    );
    let mut total_mj: u64 = 0;
    let mut all_known = true;
    // (samples x mean utilization, samples) over the GPUs healthd sampled
    let (mut weighted, mut weight) = (0.0f64, 0u64);
    for g in &start.gpus {
        let delta = energy_delta(g.energy_mj, end.get(&g.uuid).and_then(|e| e.energy_mj));
        let energy = match delta {
            Some(mj) => {
                total_mj = total_mj.saturating_add(mj);
                format!("{} ({})", joules(mj), kwh(mj))
            }
            None => {
                all_known = false;
                "unavailable".to_string()
            }
        };
        let sampled: Option<&GpuUsage> = usage.flatten().and_then(|j| {
            j.gpus
                .iter()
                .find(|u| u.uuid == g.uuid)
                .or_else(|| j.gpus.iter().find(|u| u.index == g.index))
                .filter(|u| u.samples > 0)
        });
        let util = match (usage, sampled) {
            (None, _) => format!("utilization {UTILIZATION_UNAVAILABLE}"),
            (Some(_), None) => format!("utilization {UTILIZATION_NO_SAMPLES}"),
            (Some(_), Some(u)) => {
                weighted += u.util_mean_pct * u.samples as f64;
                weight += u.samples;
                format!(
                    "utilization mean {:.1}% max {}%, memory peak {} MiB ({} samples)",
                    u.util_mean_pct, u.util_max_pct, u.mem_peak_mib, u.samples
                )
            }
        };
        // a MIG slice: its GPU (index), the profile in its name, and its share of the GPU
        let share = g.mig.as_ref().map_or(String::new(), |m| {
            format!(" ({} of {} slices)", m.slices, m.of)
        });
        let _ = writeln!(
            s,
            "sgpu:   gpu{} {}{share} {}: energy {energy}, {util}",
            g.index,
            g.name.as_deref().unwrap_or("(unknown model)"),
            g.uuid,
        );
    }
    // a MIG slice counts by its share of the GPU, as acctd bills it
    let gpu_ms: u64 = start
        .gpus
        .iter()
        .map(|g| sgpu_spool::gpu_equiv_ms(g.mig.as_ref(), wall_ms))
        .fold(0, u64::saturating_add);
    let gpu_hours = gpu_ms as f64 / 3_600_000.0;
    let _ = writeln!(
        s,
        "sgpu:   allocated {gpu_hours:.4} GPU-hours; energy {}{} ({})",
        if all_known { "" } else { "at least " },
        joules(total_mj),
        kwh(total_mj)
    );
    if weight > 0 {
        let mean = (weighted / weight as f64).clamp(0.0, 100.0);
        let _ = writeln!(
            s,
            "sgpu:   GPUs were idle {:.0}% of the time (mean utilization {mean:.1}%)",
            100.0 - mean
        );
    } else if usage.is_none() {
        let _ = writeln!(s, "sgpu:   utilization {UTILIZATION_UNAVAILABLE}");
    }
    s
}

fn joules(mj: u64) -> String {
    format!("{:.1} J", mj as f64 / 1000.0)
}

fn kwh(mj: u64) -> String {
    format!("{:.6} kWh", mj as f64 / 3.6e9)
}

fn hms(ms: u64) -> String {
    let s = ms / 1000;
    format!(
        "{}:{:02}:{:02}.{:03}",
        s / 3600,
        (s / 60) % 60,
        s % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::GpuStart;

    #[test]
    fn summary_names_gpus_energy_and_gpu_hours() {
        let start = StepStart {
            cluster: "c".into(),
            job_id: 9,
            run: 0,
            step: "batch".into(),
            node: "node1".into(),
            user: "u".into(),
            uid: 1,
            account: None,
            partition: None,
            start_ms: 0,
            gpus: vec![
                GpuStart {
                    index: 0,
                    uuid: "GPU-a".into(),
                    name: Some("NVIDIA H100".into()),
                    energy_mj: Some(0),
                    mig: None,
                },
                GpuStart {
                    index: 1,
                    uuid: "GPU-b".into(),
                    name: None,
                    energy_mj: None,
                    mig: None,
                },
            ],
        };
        let mut end = BTreeMap::new();
        end.insert(
            "GPU-a".to_string(),
            GpuEndReading {
                energy_mj: Some(3_600_000),
            },
        );
        let s = summary(&start, 3_600_000, &end, None);
        assert!(
            s.contains("job 9 on node1 (2 GPUs, wall time 1:00:00.000)"),
            "{s}"
        );
        assert!(
            s.contains("gpu0 NVIDIA H100 GPU-a: energy 3600.0 J (0.001000 kWh)"),
            "{s}"
        );
        assert!(
            s.contains("gpu1 (unknown model) GPU-b: energy unavailable"),
            "{s}"
        );
        assert!(
            s.contains("allocated 2.0000 GPU-hours; energy at least 3600.0 J"),
            "{s}"
        );
        assert!(s.contains(UTILIZATION_UNAVAILABLE));
        assert!(!s.contains("idle"), "{s}");

        let job = JobUsage {
            cluster: "c".into(),
            job_id: 9,
            user: "u".into(),
            account: None,
            partition: None,
            start_time_ms: 0,
            samples: 10,
            util_mean_pct: 30.0,
            util_max_pct: 45,
            energy_mj: None,
            gpus: vec![
                GpuUsage {
                    index: 0,
                    uuid: "GPU-a".into(),
                    samples: 10,
                    util_mean_pct: 40.0,
                    util_max_pct: 45,
                    mem_peak_mib: 1024,
                    energy_mj: None,
                    idle: None,
                    idle_ms: None,
                    mig_parent_uuid: None,
                    mig_profile: None,
                },
                GpuUsage {
                    index: 1,
                    uuid: "GPU-b".into(),
                    samples: 10,
                    util_mean_pct: 20.0,
                    util_max_pct: 20,
                    mem_peak_mib: 0,
                    energy_mj: None,
                    idle: None,
                    idle_ms: None,
                    mig_parent_uuid: None,
                    mig_profile: None,
                },
            ],
        };
        let s = summary(&start, 3_600_000, &end, Some(Some(&job)));
        assert!(
            s.contains("utilization mean 40.0% max 45%, memory peak 1024 MiB (10 samples)"),
            "{s}"
        );
        assert!(
            s.contains("GPUs were idle 70% of the time (mean utilization 30.0%)"),
            "{s}"
        );
        assert!(!s.contains(UTILIZATION_UNAVAILABLE), "{s}");
        let s = summary(&start, 3_600_000, &end, Some(None));
        assert!(s.contains(UTILIZATION_NO_SAMPLES), "{s}");
        assert!(!s.contains("idle"), "{s}");
    }

    #[test]
    fn summary_shows_a_slice_by_gpu_profile_and_share() {
        let start = StepStart {
            cluster: "c".into(),
            job_id: 9,
            run: 0,
            step: "batch".into(),
            node: "node1".into(),
            user: "u".into(),
            uid: 1,
            account: None,
            partition: None,
            start_ms: 0,
            gpus: vec![GpuStart {
                index: 0,
                uuid: "MIG-a".into(),
                name: Some("NVIDIA H100 MIG 2g.20gb".into()),
                energy_mj: None,
                mig: Some(sgpu_spool::MigShare {
                    profile: "2g.20gb".into(),
                    slices: 2,
                    of: 7,
                }),
            }],
        };
        let s = summary(&start, 3_600_000, &BTreeMap::new(), None);
        assert!(
            s.contains("gpu0 NVIDIA H100 MIG 2g.20gb (2 of 7 slices) MIG-a: energy unavailable"),
            "{s}"
        );
        // 2/7 of the hour
        assert!(s.contains("allocated 0.2857 GPU-hours"), "{s}");
    }
}
