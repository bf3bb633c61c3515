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
    /// The total energy counter at job start, millijoules, when supported (for a MIG slice
    /// with a share, its GPU's counter).
    pub energy_mj: Option<u64>,
    /// For a MIG slice, its profile and share of the GPU (billed by it); absent: a whole
    /// GPU, or a note written before shares were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig: Option<sgpu_spool::MigShare>,
}

impl StartGpu {
    /// The UUID for records: NVML's, else `unknown:gpu<slurm index>`.
    pub fn record_uuid(&self) -> String {
        self.uuid
            .clone()
            .unwrap_or_else(|| format!("unknown:gpu{}", self.slurm_index))
    }
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
    /// Where the prolog's GPU readings came from, `healthd` or `nvml` (absent in notes
    /// written before healthd served them, and when NVML was not read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readings: Option<String>,
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

/// The note's path for run `run` of `job_id` under `state_dir`
/// ([`sgpu_spool::job_note::path`]: one note per run).
pub fn path_for(state_dir: &Path, job_id: u32, run: u32) -> PathBuf {
    sgpu_spool::job_note::path(state_dir, job_id, run)
}

impl JobStartState {
    /// Writes the note atomically under `state_dir`.
    pub fn save(&self, state_dir: &Path) -> Result<PathBuf, HandoffError> {
        let path = path_for(state_dir, self.job_id, self.run);
        let dir = state_dir.join("jobs");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tmp = dir.join(format!(
            ".{}.{}.{}.tmp",
            self.job_id,
            self.run,
            std::process::id()
        ));
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

    /// Reads the note of the run an epilog ends ([`sgpu_spool::job_note::epilog_run`],
    /// given the restart count in its environment); `Ok(None)` when the prolog left none.
    pub fn load_for_epilog(
        state_dir: &Path,
        job_id: u32,
        env_count: u32,
    ) -> Result<Option<JobStartState>, HandoffError> {
        let runs =
            sgpu_spool::job_note::runs(state_dir, job_id).map_err(|e| HandoffError::Corrupt {
                path: state_dir.join("jobs"),
                detail: e.to_string(),
            })?;
        match sgpu_spool::job_note::epilog_run(env_count, &runs) {
            Some(run) => Self::load(state_dir, job_id, run),
            None => Ok(None),
        }
    }

    /// Reads the note of run `run` of `job_id`; `Ok(None)` when the prolog left none.
    pub fn load(
        state_dir: &Path,
        job_id: u32,
        run: u32,
    ) -> Result<Option<JobStartState>, HandoffError> {
        let path = path_for(state_dir, job_id, run);
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
        if note.job_id != job_id || note.run != run {
            return Err(HandoffError::Corrupt {
                path,
                detail: format!("it is for job {} run {}", note.job_id, note.run),
            });
        }
        Ok(Some(note))
    }

    /// Removes the note of run `run` of `job_id` (absent is fine).
    pub fn remove(state_dir: &Path, job_id: u32, run: u32) -> Result<(), HandoffError> {
        let path = path_for(state_dir, job_id, run);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Removes the notes of `job_id`'s runs before `run - 1`, left by epilogs that never
    /// ran (a node that went down): the run before this one may still be ending here.
    pub fn remove_stale(state_dir: &Path, job_id: u32, run: u32) -> Result<(), HandoffError> {
        let runs =
            sgpu_spool::job_note::runs(state_dir, job_id).map_err(|e| HandoffError::Corrupt {
                path: state_dir.join("jobs"),
                detail: e.to_string(),
            })?;
        for old in runs.into_iter().filter(|r| r.saturating_add(1) < run) {
            Self::remove(state_dir, job_id, old)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(run: u32) -> JobStartState {
        JobStartState {
            job_id: 42,
            node: "node1".into(),
            run,
            start_ms: 1_700_000_000_123,
            readings: None,
            gpus: vec![StartGpu {
                slurm_index: 1,
                nvml_index: 3,
                uuid: Some("GPU-x".into()),
                name: Some("NVIDIA H100".into()),
                energy_mj: Some(123_456),
                mig: None,
            }],
        }
    }

    #[test]
    fn round_trip_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let note = note(3);
        note.save(dir.path()).unwrap();
        // the SPANK plugin reads the run through the spool crate's reader
        assert_eq!(
            sgpu_spool::job_note::read_run(dir.path(), 42).unwrap(),
            Some(3)
        );
        assert_eq!(JobStartState::load(dir.path(), 42, 3).unwrap(), Some(note));
        assert_eq!(JobStartState::load(dir.path(), 43, 3).unwrap(), None);
        assert_eq!(JobStartState::load(dir.path(), 42, 2).unwrap(), None);
        JobStartState::remove(dir.path(), 42, 3).unwrap();
        JobStartState::remove(dir.path(), 42, 3).unwrap();
        assert_eq!(JobStartState::load(dir.path(), 42, 3).unwrap(), None);
    }

    #[test]
    fn a_requeued_runs_epilog_finds_its_note_beside_the_next_runs() {
        let dir = tempfile::tempdir().unwrap();
        // run 0 was killed by a requeue; run 1's prolog already wrote its note here
        note(0).save(dir.path()).unwrap();
        note(1).save(dir.path()).unwrap();
        let mine = JobStartState::load_for_epilog(dir.path(), 42, 1).unwrap();
        assert_eq!(mine.map(|n| n.run), Some(0));
        JobStartState::remove(dir.path(), 42, 0).unwrap();
        // run 1's step and epilog find run 1's note
        assert_eq!(
            sgpu_spool::job_note::read_run(dir.path(), 42).unwrap(),
            Some(1)
        );
        let next = JobStartState::load_for_epilog(dir.path(), 42, 1).unwrap();
        assert_eq!(next.map(|n| n.run), Some(1));
        // a prolog clears notes older than the run before its own
        note(0).save(dir.path()).unwrap();
        note(2).save(dir.path()).unwrap();
        JobStartState::remove_stale(dir.path(), 42, 2).unwrap();
        assert_eq!(
            sgpu_spool::job_note::runs(dir.path(), 42).unwrap(),
            vec![1, 2]
        );
    }

    #[test]
    fn corrupt_note_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
        std::fs::write(path_for(dir.path(), 7, 0), b"{not json").unwrap();
        let e = JobStartState::load(dir.path(), 7, 0).unwrap_err();
        assert!(e.to_string().contains("7.json"), "{e}");
    }
}
