//! sgpu-acctd's efficiency answer (`GET /v1/jobs/{cluster}/{job_id}/efficiency`): one
//! job's GPU figures per GPU and in total, as `sgpu seff` shows them.
//!
//! Schema version [`crate::acctd::VERSION`] (acctd's answers share one major version).
//! Every figure that sgpu may not have measured is an `Option`, and `None` means *unknown*
//! (not sampled, not read, a record that predates the field), never zero.

use serde::{Deserialize, Serialize};

use crate::answer;

/// A time span `[start_ms, end_ms)`, Unix ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    /// Start, Unix ms.
    pub start_ms: u64,
    /// End, Unix ms (not before `start_ms`).
    pub end_ms: u64,
}

/// One GPU of the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuEfficiency {
    /// The node.
    pub node: String,
    /// Index as the job's records give it.
    pub index: u32,
    /// UUID (empty when no record named it).
    pub uuid: String,
    /// Product name (`None`: not read); a MIG slice's is `<GPU> MIG <profile>`.
    pub model: Option<String>,
    /// The MIG slice this entry is (`None`: a whole GPU, or an acctd that predates slices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig: Option<MigSlice>,
    /// Allocated GPU time of this GPU, GPU-ms (Slurm's window when the epilog read it); a
    /// MIG slice counted by its share of its GPU (GPU-equivalents, as acctd bills it).
    pub allocated_gpu_ms: u64,
    /// A MIG slice's allocated device time, slice-ms (the slice counted once, not by its
    /// share); `None` for a whole GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice_ms: Option<u64>,
    /// Used GPU time (allocated x mean utilization), GPU-ms (`None`: not sampled, e.g. a MIG
    /// slice, whose utilization NVML does not give).
    pub used_gpu_ms: Option<u64>,
    /// Samples healthd took (`None`: not sampled).
    pub samples: Option<u64>,
    /// Mean utilization over the samples, percent (`None`: not sampled).
    pub util_mean_pct: Option<f64>,
    /// Highest sampled utilization, percent (`None`: not sampled).
    pub util_max_pct: Option<u32>,
    /// Highest sampled memory use, MiB (`None`: not sampled).
    pub mem_peak_mib: Option<u64>,
    /// The GPU's memory, MiB (`None`: not known; read from the model name's `NNGB` when
    /// no record carries it).
    pub mem_total_mib: Option<u64>,
    /// Energy over the job, mJ (`None`: no energy counter read).
    pub energy_mj: Option<u64>,
    /// Time the GPU was idle, ms (`None`: idle time not measured).
    pub idle_ms: Option<u64>,
    /// The periods it was idle (`None`: not measured; empty: measured, never idle).
    pub idle_periods: Option<Vec<Period>>,
}

/// A MIG slice of a job: its profile, parent GPU and share of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigSlice {
    /// The profile, e.g. `2g.20gb`.
    pub profile: String,
    /// The parent GPU's model (`NVIDIA H100 80GB HBM3`; `None`: not read).
    pub parent_model: Option<String>,
    /// Compute slices of the slice (`None`: its share was not read: billed as a whole GPU).
    pub slices: Option<u32>,
    /// Compute slices of the whole GPU (`None` as for `slices`).
    pub of: Option<u32>,
}

/// `GET /v1/jobs/{cluster}/{job_id}/efficiency`: one run of a job (the latest acctd has).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EfficiencyAnswer {
    /// Schema version ([`crate::acctd::VERSION`]).
    pub version: Option<u32>,
    /// Cluster.
    pub cluster: String,
    /// Job id.
    pub job_id: u32,
    /// The run (how often Slurm had requeued the job when it started; 0 for most jobs).
    pub run: u32,
    /// Owner (empty until a record trusted for it arrived).
    pub user: String,
    /// Account (empty when not set).
    pub account: String,
    /// Partition (empty when not set).
    pub partition: String,
    /// Start, Unix ms.
    pub start_ms: u64,
    /// End, Unix ms; `None` while no `job_end` has arrived (running).
    pub end_ms: Option<u64>,
    /// When acctd answered, Unix ms (a running job's allocated time counts up to it).
    pub now_ms: u64,
    /// Nodes with records of the run.
    pub nodes: Vec<String>,
    /// Per GPU, by node and index.
    pub gpus: Vec<GpuEfficiency>,
    /// Allocated GPU time, GPU-ms (MIG slices by their share, as billed).
    pub allocated_gpu_ms: u64,
    /// Allocated device time of the job's MIG slices, slice-ms (`None`: the job holds none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice_ms: Option<u64>,
    /// Used GPU time, GPU-ms (`None`: no GPU was sampled).
    pub used_gpu_ms: Option<u64>,
    /// Energy, mJ (`None`: no GPU's energy was read).
    pub energy_mj: Option<u64>,
    /// Idle GPU time, GPU-ms (`None`: idle time was measured on no GPU).
    pub idle_gpu_ms: Option<u64>,
    /// Idle actions taken on the job (warnings, cancellation), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<IdleAction>,
}
answer!(
    EfficiencyAnswer,
    crate::acctd::VERSION,
    "sgpu-acctd's job efficiency (GET /v1/jobs/CLUSTER/ID/efficiency)"
);

/// An action sgpu took on an idle job, from acctd's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdleAction {
    /// When, Unix ms.
    pub time_ms: u64,
    /// The node that acted.
    pub node: String,
    /// What was done (e.g. `idle_warn`, `idle_cancel`), as the history names it.
    pub action: String,
    /// The reason given.
    pub reason: String,
}

impl GpuEfficiency {
    /// An entry with only what every record has: node, index, UUID, model.
    pub fn new(node: &str, index: u32, uuid: &str, model: Option<String>) -> GpuEfficiency {
        GpuEfficiency {
            node: node.to_string(),
            index,
            uuid: uuid.to_string(),
            model,
            mig: None,
            allocated_gpu_ms: 0,
            slice_ms: None,
            used_gpu_ms: None,
            samples: None,
            util_mean_pct: None,
            util_max_pct: None,
            mem_peak_mib: None,
            mem_total_mib: None,
            energy_mj: None,
            idle_ms: None,
            idle_periods: None,
        }
    }
}

/// The memory of a GPU from its product name's `NNGB` (`NVIDIA H100 80GB HBM3`,
/// `NVIDIA A100-SXM4-40GB`, `Tesla V100-SXM2-16GB`), MiB; `None` when the name has none.
pub fn mem_from_model(model: &str) -> Option<u64> {
    let bytes = model.as_bytes();
    let mut best = None;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric()) {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let rest = &model[i..];
            let unit = rest.trim_start_matches(' ');
            if unit.len() >= 2 && unit[..2].eq_ignore_ascii_case("gb") {
                let after = unit.as_bytes().get(2);
                if after.is_none_or(|c| !c.is_ascii_alphanumeric()) {
                    if let Ok(gb) = model[start..i].parse::<u64>() {
                        best = Some(gb.saturating_mul(1024));
                    }
                }
            }
        } else {
            i += 1;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DecodeError, decode};

    #[test]
    fn gpu_memory_comes_from_the_model_name() {
        assert_eq!(mem_from_model("NVIDIA H100 80GB HBM3"), Some(80 * 1024));
        assert_eq!(mem_from_model("NVIDIA A100-SXM4-40GB"), Some(40 * 1024));
        assert_eq!(mem_from_model("Tesla V100-SXM2-16GB"), Some(16 * 1024));
        assert_eq!(mem_from_model("NVIDIA A100 80 GB"), Some(80 * 1024));
        assert_eq!(mem_from_model("Tesla T4"), None);
        assert_eq!(mem_from_model("NVIDIA GeForce RTX 3090"), None);
        assert_eq!(mem_from_model("X1GBps"), None);
        assert_eq!(mem_from_model("H200GB"), None);
    }

    #[test]
    fn unknown_figures_stay_unknown_and_a_newer_major_is_refused() {
        let doc = br#"{"version":1,"cluster":"c","job_id":7,"run":0,"user":"ann",
            "account":"","partition":"","start_ms":0,"end_ms":null,"now_ms":5,"nodes":["n1"],
            "gpus":[{"node":"n1","index":0,"uuid":"GPU-1","model":null,"allocated_gpu_ms":5,
                     "used_gpu_ms":null,"samples":null,"util_mean_pct":null,
                     "util_max_pct":null,"mem_peak_mib":null,"mem_total_mib":null,
                     "energy_mj":null,"idle_ms":null,"idle_periods":null,"co2_g":1}],
            "allocated_gpu_ms":5,"used_gpu_ms":null,"energy_mj":null,"idle_gpu_ms":null}"#;
        let a: EfficiencyAnswer = decode(doc).unwrap();
        assert_eq!(a.gpus[0].idle_ms, None);
        assert_eq!(a.used_gpu_ms, None);
        assert!(a.actions.is_empty());
        let newer = br#"{"version":2,"cluster":"c"}"#;
        assert!(matches!(
            decode::<EfficiencyAnswer>(newer),
            Err(DecodeError::Version { got: 2, .. })
        ));
    }
}
