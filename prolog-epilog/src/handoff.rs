//! What the prolog leaves for the epilog of the same job on the same node.
//!
//! The epilog needs the job's start time and the GPUs' energy counters at start to compute
//! energy deltas and allocated GPU time. The spool is the wrong place for that (its records
//! leave the node once accounting acknowledges them), so the prolog writes one small file per
//! job, `<state_dir>/jobs/<job id>.json`, atomically (temp file, fsync, rename); the epilog
//! reads it and removes it.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One of the job's GPUs at job start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartGpu {
    /// Slurm's index of the GPU on the node (`SLURM_JOB_GPUS`).
    pub slurm_index: u32,
    /// NVML's index of the same GPU.
    pub nvml_index: u32,
    /// The GPU's UUID, when NVML gave it.
    pub uuid: Option<String>,
    /// The GPU's model name, when NVML gave it.
    pub name: Option<String>,
    /// The total energy counter at job start, millijoules, when supported.
    pub energy_mj: Option<u64>,
}

/// The prolog's note to the epilog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobStartState {
    /// The job.
    pub job_id: u32,
    /// The node (Slurm name).
    pub node: String,
    /// The job's run ([`sgpu_spool::RecordId::run`]): `SLURM_JOB_RESTART_COUNT` in the
    /// prolog's environment. Absent in notes written before runs existed (run 0).
    #[serde(default)]
    pub run: u32,
    /// When the prolog finished its checks, Unix milliseconds.
    pub start_ms: u64,
    /// The job's GPUs.
    pub gpus: Vec<StartGpu>,
}

/// Why the note could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file exists but does not hold a note.
    #[error(
        "{path}: not a job start note ({detail}); remove it, the epilog will report the job without start data"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HandoffError + '_ {
    move |source| HandoffError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The note's path for `job_id` under `state_dir` ([`sgpu_spool::job_note::path`]).
pub fn path_for(state_dir: &Path, job_id: u32) -> PathBuf {
    sgpu_spool::job_note::path(state_dir, job_id)
}

impl JobStartState {
    /// Writes the note atomically under `state_dir`.
    pub fn save(&self, state_dir: &Path) -> Result<PathBuf, HandoffError> {
        let path = path_for(state_dir, self.job_id);
        let dir = state_dir.join("jobs");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tmp = dir.join(format!(".{}.{}.tmp", self.job_id, std::process::id()));
        let body = serde_json::to_vec_pretty(self).map_err(|e| HandoffError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&body).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(path)
    }

    /// Reads the note for `job_id`; `Ok(None)` when the prolog left none.
    pub fn load(state_dir: &Path, job_id: u32) -> Result<Option<JobStartState>, HandoffError> {
        let path = path_for(state_dir, job_id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let note: JobStartState =
            serde_json::from_slice(&bytes).map_err(|e| HandoffError::Corrupt {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        if note.job_id != job_id {
            return Err(HandoffError::Corrupt {
                path,
                detail: format!("it is for job {}", note.job_id),
            });
        }
        Ok(Some(note))
    }

    /// Removes the note for `job_id` (absent is fine).
    pub fn remove(state_dir: &Path, job_id: u32) -> Result<(), HandoffError> {
        let path = path_for(state_dir, job_id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let note = JobStartState {
            job_id: 42,
            node: "node1".into(),
            run: 3,
            start_ms: 1_700_000_000_123,
            gpus: vec![StartGpu {
                slurm_index: 1,
                nvml_index: 3,
                uuid: Some("GPU-x".into()),
                name: Some("NVIDIA H100".into()),
                energy_mj: Some(123_456),
            }],
        };
        note.save(dir.path()).unwrap();
        // the SPANK plugin reads the run through the spool crate's reader
        assert_eq!(
            sgpu_spool::job_note::read_run(dir.path(), 42).unwrap(),
            Some(3)
        );
        assert_eq!(JobStartState::load(dir.path(), 42).unwrap(), Some(note));
        assert_eq!(JobStartState::load(dir.path(), 43).unwrap(), None);
        JobStartState::remove(dir.path(), 42).unwrap();
        JobStartState::remove(dir.path(), 42).unwrap();
        assert_eq!(JobStartState::load(dir.path(), 42).unwrap(), None);
    }

    #[test]
    fn corrupt_note_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
        std::fs::write(path_for(dir.path(), 7), b"{not json").unwrap();
        let e = JobStartState::load(dir.path(), 7).unwrap_err();
        assert!(e.to_string().contains("7.json"), "{e}");
    }
}
