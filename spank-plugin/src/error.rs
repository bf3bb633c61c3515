//! Why a hook did not do its work. The hooks log it (as text, at the C boundary) and still
//! succeed: sgpu never fails a job step for its own trouble.

use crate::ffi::SpankError;

/// What went wrong in a hook or in the step's preparation; the message says what to look
/// at next.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// sgpu.toml could not be read, is not trusted or is invalid.
    #[error("configuration: {0}; no GPU capture for this step")]
    Config(#[from] sgpu_nodelib::config::ConfigError),
    /// Neither sgpu.toml, slurmstepd's environment nor the host name names the node.
    #[error("cannot tell this node's Slurm name: set node_name in sgpu.toml")]
    NodeName,
    /// NVML could not be opened or read at the step's start.
    #[error("{0}")]
    Nvml(#[from] sgpu_nodelib::gpu::NvmlFailure),
    /// A user option could not be registered with Slurm.
    #[error("cannot register --{option}: {source}")]
    Register {
        /// The option, without the dashes.
        option: &'static str,
        /// Slurm's answer.
        source: SpankError,
    },
    /// `--gpu-health` could not be handed to the prolog.
    #[error("cannot pass --gpu-health={health} to the prolog: {source}")]
    HealthEnv {
        /// The value.
        health: String,
        /// Slurm's answer.
        source: SpankError,
    },
    /// A SPANK item of the step could not be read.
    #[error("{item}: {source}")]
    Item {
        /// Which item (`job id`, `step id`, `uid`).
        item: &'static str,
        /// Slurm's answer.
        source: SpankError,
    },
    /// No plugin thread could be started.
    #[error("cannot start the plugin's thread: {0} (slurmstepd is short of threads or memory)")]
    Thread(std::io::Error),
    /// A plugin thread did not finish within its bound; it was left behind.
    #[error(
        "{what} took over {} ms (NVML or NSS stuck); left behind: check the GPU driver \
         (nvidia-smi) and the name service on this node",
        bound.as_millis()
    )]
    Stuck {
        /// What the thread was doing.
        what: &'static str,
        /// How long it was waited for.
        bound: std::time::Duration,
    },
    /// The step's start reading failed, so there is nothing to record.
    #[error("job {job_id} step {step}: {source}; no record for this step")]
    NotPrepared {
        /// The job.
        job_id: u32,
        /// The step (`batch`, `extern`, `interactive` or its number).
        step: String,
        /// Why the preparation failed.
        source: Box<HookError>,
    },
    /// The start reading's NVML session was already taken.
    #[error("no NVML session (the start reading did not keep one)")]
    NoSession,
    /// The step's record could not be built.
    #[error("job {job_id}: record: {source}")]
    Record {
        /// The job.
        job_id: u32,
        /// What is wrong with the record.
        source: sgpu_spool::RecordError,
    },
    /// The step's record could not be written to the node spool.
    #[error("job {job_id} step {step}: spool: {source}")]
    Spool {
        /// The job.
        job_id: u32,
        /// The step.
        step: String,
        /// The spool's error (naming the file and what to do).
        source: sgpu_spool::SpoolError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_preparation_names_the_step_and_what_to_check() {
        let e = HookError::NotPrepared {
            job_id: 7,
            step: "batch".into(),
            source: Box::new(HookError::Stuck {
                what: "reading the step's start",
                bound: std::time::Duration::from_millis(1500),
            }),
        };
        assert_eq!(
            e.to_string(),
            "job 7 step batch: reading the step's start took over 1500 ms (NVML or NSS stuck); \
             left behind: check the GPU driver (nvidia-smi) and the name service on this node; \
             no record for this step"
        );
        let e = HookError::Item {
            item: "uid",
            source: SpankError::NoApi,
        };
        assert_eq!(
            e.to_string(),
            "uid: SPANK functions not found in this process"
        );
    }
}
