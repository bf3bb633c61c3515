//! The job as slurmd describes it to Prolog and Epilog: their environment.
//!
//! slurmd builds the environment of `Prolog=`/`Epilog=` itself (there is no `PATH`); the
//! variables read here are the ones Slurm 22.05 sets for them (`SLURM_JOB_ID`,
//! `SLURMD_NODENAME`, `SLURM_JOB_USER`, `SLURM_JOB_UID`, `SLURM_JOB_PARTITION`,
//! `SLURM_JOB_ACCOUNT` where accounting is on, `SLURM_CLUSTER_NAME`, `SLURM_JOB_GPUS`,
//! `CUDA_VISIBLE_DEVICES`, `SLURM_JOB_RESTART_COUNT`) plus the user's `--gpu-health` choice
//! forwarded by the SPANK plugin.

use std::fmt;

/// Environment variable the user's `--gpu-health` choice reaches Prolog/Epilog by: the SPANK
/// plugin sets `SGPU_GPU_HEALTH` with `spank_job_control_setenv` (in `sbatch`/`srun`), and
/// Slurm exports job-control variables to Prolog/Epilog prefixed with `SPANK_` (spank(7)).
pub const GPU_HEALTH_ENV: &str = "SPANK_SGPU_GPU_HEALTH";

/// Why the environment does not describe a job.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    /// A variable Slurm always sets is missing: the program was not started by slurmd.
    #[error("{0} is not set: sgpu-prolog/sgpu-epilog are meant to run as Slurm's Prolog=/Epilog=")]
    Missing(&'static str),
    /// A variable has a value of the wrong shape.
    #[error("{var}={value:?}: {expected}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
}

/// How strictly the user asked for their job's GPUs to be checked (`--gpu-health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HealthMode {
    /// Drain-worthy findings fail the prolog, so the job is requeued (the default).
    #[default]
    Strict,
    /// Drain-worthy findings drain the node but the job runs anyway.
    Warn,
    /// No checks for this job (records are still written).
    Off,
}

impl HealthMode {
    /// Parses `strict`, `warn` or `off`.
    pub fn parse(s: &str) -> Option<HealthMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "strict" | "" => Some(HealthMode::Strict),
            "warn" => Some(HealthMode::Warn),
            "off" => Some(HealthMode::Off),
            _ => None,
        }
    }
}

impl fmt::Display for HealthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthMode::Strict => "strict",
            HealthMode::Warn => "warn",
            HealthMode::Off => "off",
        })
    }
}

/// One job on this node, as Prolog/Epilog see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEnv {
    /// `SLURM_JOB_ID`.
    pub job_id: u32,
    /// `SLURMD_NODENAME`: the Slurm name of this node (not necessarily the host name).
    pub node: String,
    /// `SLURM_CLUSTER_NAME`, when set.
    pub cluster: Option<String>,
    /// `SLURM_JOB_USER`, when set.
    pub user: Option<String>,
    /// `SLURM_JOB_UID`, when set.
    pub uid: Option<u32>,
    /// `SLURM_JOB_PARTITION`, when set.
    pub partition: Option<String>,
    /// `SLURM_JOB_ACCOUNT`, when set (only with accounting enabled).
    pub account: Option<String>,
    /// The job's GPUs as Slurm's gres indices on this node (`SLURM_JOB_GPUS`, else a numeric
    /// `CUDA_VISIBLE_DEVICES`); empty for a job without GPUs. A MIG slice is one index.
    pub gpus: Vec<u32>,
    /// The `MIG-` UUIDs in `CUDA_VISIBLE_DEVICES` (Slurm's NVML autodetection names MIG
    /// slices so), in order: on a node with MIG they say which slices the indices are when
    /// gres.conf lists no device files.
    pub mig_uuids: Vec<String>,
    /// `SLURM_JOB_RESTART_COUNT`: how often the job was requeued.
    pub restart_count: u32,
    /// The user's `--gpu-health` choice (`strict` when the value is not one sgpu knows).
    pub health_mode: HealthMode,
    /// What was wrong with the environment but did not stop the gate (to be logged).
    pub warnings: Vec<String>,
}

fn parse_index_list(var: &'static str, value: &str) -> Result<Vec<u32>, EnvError> {
    let invalid = || EnvError::Invalid {
        var,
        value: value.to_string(),
        expected: "a comma-separated list of GPU indices such as 0,1,3 or 0-3",
    };
    let mut out = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (
                    a.trim().parse().map_err(|_| invalid())?,
                    b.trim().parse().map_err(|_| invalid())?,
                );
                // a node has at most a few dozen GPUs; refuse absurd ranges
                if b < a || b - a > 1024 {
                    return Err(invalid());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| invalid())?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

impl JobEnv {
    /// Reads the job from variables looked up by `get` (`std::env::var` in production).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<JobEnv, EnvError> {
        let nonempty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let job = nonempty("SLURM_JOB_ID")
            .or_else(|| nonempty("SLURM_JOBID"))
            .ok_or(EnvError::Missing("SLURM_JOB_ID"))?;
        let job_id = job.trim().parse().map_err(|_| EnvError::Invalid {
            var: "SLURM_JOB_ID",
            value: job.clone(),
            expected: "a job number",
        })?;
        let node = nonempty("SLURMD_NODENAME").ok_or(EnvError::Missing("SLURMD_NODENAME"))?;
        let uid = match nonempty("SLURM_JOB_UID") {
            Some(v) => Some(v.trim().parse().map_err(|_| EnvError::Invalid {
                var: "SLURM_JOB_UID",
                value: v.clone(),
                expected: "a numeric uid",
            })?),
            None => None,
        };
        let cuda = nonempty("CUDA_VISIBLE_DEVICES");
        // under MIG, CUDA_VISIBLE_DEVICES holds the slices' MIG-... UUIDs
        let mig_uuids: Vec<String> = cuda
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|u| u.starts_with("MIG-") && u.len() > 4)
            .map(String::from)
            .collect();
        let gpus = match nonempty("SLURM_JOB_GPUS") {
            Some(v) => parse_index_list("SLURM_JOB_GPUS", &v)?,
            // CUDA_VISIBLE_DEVICES may hold UUIDs (MIG) or be "NoDevFiles": only a plain
            // index list is usable as indices
            None => cuda
                .as_deref()
                .and_then(|v| parse_index_list("CUDA_VISIBLE_DEVICES", v).ok())
                .unwrap_or_default(),
        };
        let restart_count = nonempty("SLURM_JOB_RESTART_COUNT")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut warnings = Vec::new();
        // an unknown value is checked strictly: skipping the gate (and the job's records)
        // for a value sgpu does not know would reward a typo or a forged variable
        let health_mode = match nonempty(GPU_HEALTH_ENV) {
            Some(v) => HealthMode::parse(&v).unwrap_or_else(|| {
                warnings.push(format!(
                    "{GPU_HEALTH_ENV}={v:?} is not strict, warn or off; checking strictly"
                ));
                HealthMode::Strict
            }),
            None => HealthMode::Strict,
        };
        Ok(JobEnv {
            job_id,
            node: node.trim().to_string(),
            cluster: nonempty("SLURM_CLUSTER_NAME"),
            user: nonempty("SLURM_JOB_USER"),
            uid,
            partition: nonempty("SLURM_JOB_PARTITION"),
            account: nonempty("SLURM_JOB_ACCOUNT"),
            gpus,
            mig_uuids,
            restart_count,
            health_mode,
            warnings,
        })
    }

    /// Reads the job from this process's environment.
    pub fn from_process() -> Result<JobEnv, EnvError> {
        JobEnv::from_vars(|k| std::env::var(k).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<JobEnv, EnvError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        JobEnv::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn reads_what_slurmd_sets() {
        // the variables slurmd 22.05 set for a real prolog on the test cluster
        let j = env(&[
            ("SLURM_JOB_ID", "11"),
            ("SLURMD_NODENAME", "node1"),
            ("SLURM_CLUSTER_NAME", "sgpu-test"),
            ("SLURM_JOB_USER", "root"),
            ("SLURM_JOB_UID", "0"),
            ("SLURM_JOB_PARTITION", "gpu"),
            ("SLURM_JOB_GPUS", "0,1"),
            ("CUDA_VISIBLE_DEVICES", "0,1"),
            ("SLURM_JOB_RESTART_COUNT", "1"),
        ])
        .unwrap();
        assert_eq!(j.job_id, 11);
        assert_eq!(j.node, "node1");
        assert_eq!(j.cluster.as_deref(), Some("sgpu-test"));
        assert_eq!(j.uid, Some(0));
        assert_eq!(j.account, None);
        assert_eq!(j.gpus, vec![0, 1]);
        assert_eq!(j.restart_count, 1);
        assert_eq!(j.health_mode, HealthMode::Strict);
    }

    #[test]
    fn gpu_lists_and_fallbacks() {
        let base = [("SLURM_JOB_ID", "5"), ("SLURMD_NODENAME", "n")];
        let with = |extra: &[(&str, &str)]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            env(&v)
        };
        assert_eq!(
            with(&[("SLURM_JOB_GPUS", "3,0-1")]).unwrap().gpus,
            vec![0, 1, 3]
        );
        assert_eq!(
            with(&[("CUDA_VISIBLE_DEVICES", "2")]).unwrap().gpus,
            vec![2]
        );
        assert!(
            with(&[("CUDA_VISIBLE_DEVICES", "GPU-abc")])
                .unwrap()
                .gpus
                .is_empty()
        );
        // MIG: indices from SLURM_JOB_GPUS, the slices' UUIDs from CUDA_VISIBLE_DEVICES
        let mig = with(&[
            ("SLURM_JOB_GPUS", "3,5"),
            ("CUDA_VISIBLE_DEVICES", "MIG-aaaa-1, MIG-bbbb-2"),
        ])
        .unwrap();
        assert_eq!(mig.gpus, vec![3, 5]);
        assert_eq!(mig.mig_uuids, ["MIG-aaaa-1", "MIG-bbbb-2"]);
        assert!(
            with(&[("CUDA_VISIBLE_DEVICES", "0,1")])
                .unwrap()
                .mig_uuids
                .is_empty()
        );
        assert!(with(&[]).unwrap().gpus.is_empty());
        let err = with(&[("SLURM_JOB_GPUS", "0,x")]).unwrap_err();
        assert!(err.to_string().contains("SLURM_JOB_GPUS"), "{err}");
        assert!(with(&[("SLURM_JOB_GPUS", "0-4000000000")]).is_err());
        assert!(with(&[("SLURM_JOB_GPUS", "3-1")]).is_err());
    }

    #[test]
    fn missing_and_invalid() {
        assert_eq!(env(&[]).unwrap_err(), EnvError::Missing("SLURM_JOB_ID"));
        assert_eq!(
            env(&[("SLURM_JOB_ID", "1")]).unwrap_err(),
            EnvError::Missing("SLURMD_NODENAME")
        );
        assert!(env(&[("SLURM_JOB_ID", "x"), ("SLURMD_NODENAME", "n")]).is_err());
        // an unknown --gpu-health value: strict, with a line for the log
        let j = env(&[
            ("SLURM_JOB_ID", "1"),
            ("SLURMD_NODENAME", "n"),
            (GPU_HEALTH_ENV, "maybe"),
        ])
        .unwrap();
        assert_eq!(j.health_mode, HealthMode::Strict);
        assert_eq!(j.warnings.len(), 1);
        assert!(j.warnings[0].contains("\"maybe\" is not strict, warn or off"));
        let j = env(&[("SLURM_JOB_ID", "1"), ("SLURMD_NODENAME", "n")]).unwrap();
        assert!(j.warnings.is_empty());
    }

    #[test]
    fn health_modes() {
        assert_eq!(HealthMode::parse("WARN"), Some(HealthMode::Warn));
        assert_eq!(HealthMode::parse("off"), Some(HealthMode::Off));
        assert_eq!(HealthMode::parse("strict"), Some(HealthMode::Strict));
        assert_eq!(HealthMode::parse("nope"), None);
    }
}
