//! The `--gpu-report` summary written into the job's output at the end of the job.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::capture::{GpuEndReading, StepStart, energy_delta};

/// What the summary says about utilization when no sampler answered.
pub const UTILIZATION_UNAVAILABLE: &str = "unavailable (healthd not reachable)";

/// Formats the summary of a job's GPUs on this node over `start.start_ms..end_ms`.
pub fn summary(start: &StepStart, end_ms: u64, end: &BTreeMap<String, GpuEndReading>) -> String {
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
        let _ = writeln!(
            s,
            "sgpu:   gpu{} {} {}: energy {energy}, utilization {UTILIZATION_UNAVAILABLE}",
            g.index,
            g.name.as_deref().unwrap_or("(unknown model)"),
            g.uuid,
        );
    }
    let gpu_hours = (n as f64) * (wall_ms as f64) / 3_600_000.0;
    let _ = writeln!(
        s,
        "sgpu:   allocated {gpu_hours:.4} GPU-hours; energy {}{} ({})",
        if all_known { "" } else { "at least " },
        joules(total_mj),
        kwh(total_mj)
    );
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
                },
                GpuStart {
                    index: 1,
                    uuid: "GPU-b".into(),
                    name: None,
                    energy_mj: None,
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
        let s = summary(&start, 3_600_000, &end);
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
    }
}
