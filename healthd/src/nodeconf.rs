//! What Slurm's configuration says this node's GPUs should be, and how Slurm's GPU indices
//! map to NVML's.
//!
//! slurm.conf (`Gres=gpu:...`) and gres.conf (`File=/dev/nvidia[0-7]`) are read with
//! `sgpu-slurm-conf`. Slurm numbers a node's GPUs in gres.conf order (the `SLURM_JOB_GPUS`
//! indices); NVML numbers them in PCI bus order. The device file's minor number
//! (`/dev/nvidia3` is 3) is the link between the two, as it is for Slurm's own NVML plugin.

use std::path::{Path, PathBuf};

use sgpu_slurm_conf::{GresConf, NodeGpus, SlurmConf};

use crate::gpu::NodeSnapshot;

/// slurm.conf when `SLURM_CONF` is not set.
pub const DEFAULT_SLURM_CONF: &str = "/etc/slurm/slurm.conf";

/// The slurm.conf in force: `$SLURM_CONF` (slurmd sets it for Prolog/Epilog), else the default.
pub fn slurm_conf_path() -> PathBuf {
    std::env::var_os("SLURM_CONF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SLURM_CONF))
}

/// This host's short name (the default Slurm node name).
pub fn short_hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim().split('.').next()?.to_string();
    (!h.is_empty()).then_some(h)
}

/// The node's GPUs according to slurm.conf and gres.conf, and what could not be read.
#[derive(Debug, Clone)]
pub struct NodeLayout {
    /// The expected GPUs (count, types, device files).
    pub gpus: NodeGpus,
    /// Problems met while reading the files (each names file:line); the layout is what
    /// could be read despite them.
    pub notes: Vec<String>,
}

impl NodeLayout {
    /// Reads slurm.conf at `slurm_conf` and the gres.conf beside it, for `node`; `None` when
    /// slurm.conf does not exist (a note says so).
    pub fn load(slurm_conf: &Path, node: &str) -> Result<NodeLayout, String> {
        if !slurm_conf.is_file() {
            return Err(format!(
                "{} not found: the GPU count is not checked (set SLURM_CONF)",
                slurm_conf.display()
            ));
        }
        let (slurm, errs) = SlurmConf::load_lenient(slurm_conf);
        let mut notes: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let gres_path = slurm.gres_conf_path();
        let (gres, errs) = GresConf::load_lenient(&gres_path);
        notes.extend(errs.iter().map(|e| e.to_string()));
        Ok(NodeLayout {
            gpus: gres.expected_gpus(node, Some(&slurm)),
            notes,
        })
    }

    /// The expected GPU count, when the configuration declares any GPU for the node.
    pub fn expected_count(&self) -> Option<u32> {
        if self.gpus.slurm_conf_count.is_none() && self.gpus.gres_conf_count == 0 {
            return None;
        }
        u32::try_from(self.gpus.count).ok()
    }

    /// Maps Slurm GPU indices (`SLURM_JOB_GPUS`) to NVML indices through device minor
    /// numbers. An index whose device file or minor number is unknown maps to itself (the
    /// usual identity when gres.conf lists `/dev/nvidia0..N` in order); one whose minor number
    /// NVML does not show maps to an index past the last GPU, so `gpu.job_gpus_exist` fails.
    pub fn nvml_indices(&self, slurm_indices: &[u32], snapshot: &NodeSnapshot) -> Vec<u32> {
        slurm_indices
            .iter()
            .map(|&i| {
                let minor = self
                    .gpus
                    .devices
                    .iter()
                    .find(|d| d.index == i)
                    .and_then(|d| d.minor);
                match minor {
                    None => i,
                    Some(m) => snapshot
                        .gpus
                        .iter()
                        .find(|g| g.minor_number.value() == Some(&m))
                        .map(|g| g.index)
                        .unwrap_or_else(|| {
                            // past the end: reported as missing, never another GPU
                            u32::try_from(snapshot.gpus.len())
                                .unwrap_or(u32::MAX)
                                .saturating_add(i)
                        }),
                }
            })
            .collect()
    }
}
