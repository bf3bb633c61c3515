//! The prolog's per-job note on the node, as far as other processes read it: which run of
//! the job the node is executing.
//!
//! sgpu-prolog writes `<state_dir>/jobs/<job id>.json` (root-owned, under the node's
//! configured `state_dir`, never a path a user chose) when a job's run starts on the node and
//! sgpu-epilog removes it when the run ends (the note's full shape is
//! `sgpu_prolog_epilog::handoff::JobStartState`). The run comes from the prolog's
//! environment, which slurmd builds (`SLURM_JOB_RESTART_COUNT`); the epilog cannot take it
//! from its own environment, because `scontrol requeue` counts the restart before the
//! killed run's epilog starts, and slurmstepd's environment is the user's. So every process
//! of one run (prolog, epilog, the SPANK plugin, healthd through the job_start record) agrees
//! on the run by this note.

use std::path::{Path, PathBuf};

/// The note of `job_id` under `state_dir`.
pub fn path(state_dir: &Path, job_id: u32) -> PathBuf {
    state_dir.join("jobs").join(format!("{job_id}.json"))
}

/// Why the run could not be read from a note.
#[derive(Debug, thiserror::Error)]
pub enum NoteError {
    /// The note exists but cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The note.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The note is not a job note, or is another job's.
    #[error(
        "{path}: not the job start note of job {job_id} ({detail}); sgpu-prolog rewrites it at the job's next start"
    )]
    Corrupt {
        /// The note.
        path: PathBuf,
        /// The job asked about.
        job_id: u32,
        /// What is wrong.
        detail: String,
    },
}

/// The longest note read, bytes (a note lists a node's GPUs: a few KiB).
const MAX_NOTE_BYTES: u64 = 1 << 20;

/// The run recorded in `job_id`'s note, `Ok(None)` when there is no note (the job's prolog
/// did not run sgpu on this node). A note written before runs existed says run 0.
pub fn read_run(state_dir: &Path, job_id: u32) -> Result<Option<u32>, NoteError> {
    #[derive(serde::Deserialize)]
    struct RunOnly {
        job_id: u32,
        #[serde(default)]
        run: u32,
    }
    use std::io::Read;
    let path = path(state_dir, job_id);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(NoteError::Io { path, source }),
    };
    let mut bytes = Vec::new();
    if let Err(source) = file.take(MAX_NOTE_BYTES).read_to_end(&mut bytes) {
        return Err(NoteError::Io { path, source });
    }
    let corrupt = |detail: String| NoteError::Corrupt {
        path: path.clone(),
        job_id,
        detail,
    };
    let note: RunOnly = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if note.job_id != job_id {
        return Err(corrupt(format!("it is for job {}", note.job_id)));
    }
    Ok(Some(note.run))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_run_and_refuses_another_jobs_note() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_run(dir.path(), 7).unwrap().is_none());
        std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
        std::fs::write(path(dir.path(), 7), r#"{"job_id":7,"run":2,"gpus":[]}"#).unwrap();
        assert_eq!(read_run(dir.path(), 7).unwrap(), Some(2));
        // a note from before runs existed is run 0
        std::fs::write(path(dir.path(), 8), r#"{"job_id":8,"start_ms":1}"#).unwrap();
        assert_eq!(read_run(dir.path(), 8).unwrap(), Some(0));
        std::fs::write(path(dir.path(), 9), r#"{"job_id":7,"run":1}"#).unwrap();
        let e = read_run(dir.path(), 9).unwrap_err();
        assert!(e.to_string().contains("for job 7"), "{e}");
        std::fs::write(path(dir.path(), 10), "not json").unwrap();
        assert!(read_run(dir.path(), 10).is_err());
    }
}
