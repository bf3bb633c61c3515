//! The simulated GPU node the benchmarks run sgpu on: a temporary directory with the
//! simulated NVML library and its state file, GPU device files, a one-node slurm.conf and
//! gres.conf, and a stand-in `scontrol` that never reaches a real slurmctld.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The Slurm node name the benchmarks pretend to be.
pub const NODE: &str = "bench1";
/// The cluster name in slurm.conf and the job environment.
pub const CLUSTER: &str = "bench";

/// Writes `text` to `path`, with the path in the error.
pub fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The node's files.
pub struct SimNode {
    /// The temporary directory holding everything (deleted on drop unless kept).
    pub dir: tempfile::TempDir,
    /// The simulated `libnvidia-ml.so.1`.
    pub lib: PathBuf,
    /// The simulator's state file (healthy GPUs).
    pub state: PathBuf,
    /// The node's slurm.conf (gres.conf is next to it).
    pub slurm_conf: PathBuf,
    /// Whether the programs load the system's NVML (a real GPU node) instead of the simulator.
    pub system_nvml: bool,
}

impl SimNode {
    /// A node with `gpus` healthy simulated H100s, in a new directory named `prefix...`;
    /// with `system_nvml`, the node's real GPUs instead (the system's `libnvidia-ml.so.1`,
    /// gres.conf naming the real `/dev/nvidiaN` files, no GPU type).
    pub fn new(prefix: &str, gpus: u32, system_nvml: bool) -> Result<SimNode, String> {
        if gpus == 0 {
            return Err("--gpus must be at least 1".into());
        }
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let d = dir.path();
        let lib = nvml_sim::install_library(d).map_err(|e| e.to_string())?;
        let state = d.join("nvml.toml");
        nvml_sim::State::healthy(gpus)
            .save(&state)
            .map_err(|e| e.to_string())?;
        // gres.conf names device files; plain files are enough for the parsers (the minor
        // number comes from the name)
        let dev = if system_nvml {
            PathBuf::from("/dev")
        } else {
            let dev = d.join("dev");
            std::fs::create_dir(&dev).map_err(|e| format!("{}: {e}", dev.display()))?;
            for i in 0..gpus {
                write(&dev.join(format!("nvidia{i}")), "")?;
            }
            dev
        };
        let last = gpus - 1;
        // a real node's GPU model is whatever it is: no type, so no type rule applies
        let (gres, gres_type) = if system_nvml {
            (format!("gpu:{gpus}"), String::new())
        } else {
            (format!("gpu:h100:{gpus}"), " Type=h100".to_string())
        };
        let slurm_conf = d.join("slurm.conf");
        write(
            &slurm_conf,
            &format!(
                "ClusterName={CLUSTER}\nSlurmctldHost=head\nGresTypes=gpu\n\
                 NodeName={NODE} Gres={gres} CPUs=2 State=UNKNOWN\n\
                 PartitionName=gpu Nodes={NODE} Default=YES\n"
            ),
        )?;
        write(
            &d.join("gres.conf"),
            &format!(
                "NodeName={NODE} Name=gpu{gres_type} File={}/nvidia[0-{last}]\n",
                dev.display()
            ),
        )?;
        Ok(SimNode {
            dir,
            lib,
            state,
            slurm_conf,
            system_nvml,
        })
    }

    /// What the programs need from this environment (the benchmarks start every program
    /// with a cleared environment, as slurmd does): on a real GPU node `LD_LIBRARY_PATH`,
    /// where the driver's library is found through it;
    /// On the simulated node, `SGPU_NVML_SIM_LATENCY` (the simulator's model of the real
    /// driver's call costs, e.g. `h200-580`: `tests/nvml-sim/src/latency.rs`) when set.
    pub fn system_env(&self) -> Vec<(String, std::ffi::OsString)> {
        let name = if self.system_nvml {
            "LD_LIBRARY_PATH"
        } else {
            nvml_sim::latency::LATENCY_ENV
        };
        std::env::var_os(name)
            .map(|v| vec![(name.to_string(), v)])
            .unwrap_or_default()
    }

    /// The GPUs' kind, for a benchmark's header: real, or simulated with the latency model
    /// in force.
    pub fn kind(&self) -> String {
        if self.system_nvml {
            return "real (system NVML)".into();
        }
        match std::env::var(nvml_sim::latency::LATENCY_ENV) {
            Ok(m) if !m.is_empty() && m != "none" => format!("simulated ({m} driver latency)"),
            _ => "simulated (no driver latency)".into(),
        }
    }

    /// The `nvml_library = ...` line of the node's sgpu.toml: the simulator, or nothing
    /// (the system's library) on a real GPU node.
    pub fn nvml_line(&self) -> String {
        if self.system_nvml {
            String::new()
        } else {
            format!("nvml_library = \"{}\"\n", self.lib.display())
        }
    }

    /// The node's directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes the stand-in `scontrol` (a shell script with `body` after the `#!/bin/sh`
    /// line) and returns its path.
    pub fn scontrol(&self, body: &str) -> Result<PathBuf, String> {
        let scontrol = self.path().join("scontrol");
        write(&scontrol, &format!("#!/bin/sh\n{body}"))?;
        std::fs::set_permissions(&scontrol, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", scontrol.display()))?;
        Ok(scontrol)
    }
}
