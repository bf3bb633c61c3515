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

/// The note of run `run` of `job_id` under `state_dir`: `jobs/<job>.json` for run 0 (the
/// name notes had before runs existed), `jobs/<job>.r<run>.json` for later runs. One file
/// per run: the killed run's epilog can still be running when the next run's prolog starts
/// on the same node (seen on the test cluster after `scontrol requeue`: the job was
/// allocated again 150 ms after the requeue), so a run's note must not replace another's.
pub fn path(state_dir: &Path, job_id: u32, run: u32) -> PathBuf {
    let name = if run == 0 {
        format!("{job_id}.json")
    } else {
        format!("{job_id}.r{run}.json")
    };
    state_dir.join("jobs").join(name)
}

/// The runs of `job_id` that have a note under `state_dir`, ascending.
pub fn runs(state_dir: &Path, job_id: u32) -> Result<Vec<u32>, NoteError> {
    let plain = format!("{job_id}.json");
    let prefix = format!("{job_id}.r");
    let mut out = Vec::new();
    for name in file_names(state_dir)? {
        if name == plain {
            out.push(0);
        } else if let Some(run) = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".json"))
            .and_then(|r| r.parse::<u32>().ok())
        {
            if run > 0 {
                out.push(run);
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The names of the files under `state_dir/jobs` (none when it does not exist; names that
/// are not UTF-8 are no note's or marker's and left out).
fn file_names(state_dir: &Path) -> Result<Vec<String>, NoteError> {
    let dir = state_dir.join("jobs");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(NoteError::Io { path: dir, source }),
    };
    let mut names = Vec::new();
    for e in entries {
        let e = e.map_err(|source| NoteError::Io {
            path: dir.clone(),
            source,
        })?;
        if let Ok(name) = e.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

/// The run an epilog ends, given the restart count `env_count` in its environment and the
/// runs with a note on the node (`runs`, ascending): after a requeue the environment
/// already counts the next run, and that run's prolog may have written its note already,
/// so the older of `env_count - 1` and `env_count` that has a note; else the newest note
/// not after `env_count`; `None` without one.
pub fn epilog_run(env_count: u32, runs: &[u32]) -> Option<u32> {
    let candidates = [env_count.checked_sub(1), Some(env_count)];
    candidates
        .into_iter()
        .flatten()
        .find(|r| runs.contains(r))
        .or_else(|| runs.iter().rev().find(|&&r| r <= env_count).copied())
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

/// The run a step of `job_id` belongs to: the newest run with a note (the running run's
/// prolog wrote it; an older one may belong to a run whose epilog is still running),
/// checked against the note's content, or the run after the newest one that ended here
/// ([`mark_ended`]) when that is newer: slurmd runs no prolog for a requeued job that comes
/// back to the same node at once, so that run has no note. `Ok(None)` when there is
/// neither (the job's prolog did not run sgpu on this node). A note written before runs
/// existed says run 0.
pub fn read_run(state_dir: &Path, job_id: u32) -> Result<Option<u32>, NoteError> {
    let noted = read_noted_run(state_dir, job_id)?;
    let after_ended = newest_ended(state_dir, job_id)?.map(|r| r.saturating_add(1));
    Ok(match (noted, after_ended) {
        (Some(n), Some(a)) => Some(n.max(a)),
        (n, a) => n.or(a),
    })
}

/// The marker an epilog leaves when run `run` of `job_id` ended on this node.
pub fn ended_path(state_dir: &Path, job_id: u32, run: u32) -> PathBuf {
    state_dir
        .join("jobs")
        .join(format!("{job_id}.r{run}.ended"))
}

/// Marks run `run` of `job_id` as ended on this node (an empty file; see [`read_run`]).
pub fn mark_ended(state_dir: &Path, job_id: u32, run: u32) -> Result<(), NoteError> {
    let dir = state_dir.join("jobs");
    let io = |path: PathBuf| move |source| NoteError::Io { path, source };
    std::fs::create_dir_all(&dir).map_err(io(dir.clone()))?;
    let path = ended_path(state_dir, job_id, run);
    std::fs::write(&path, b"").map_err(io(path.clone()))
}

/// The newest run of `job_id` marked as ended here.
fn newest_ended(state_dir: &Path, job_id: u32) -> Result<Option<u32>, NoteError> {
    let prefix = format!("{job_id}.r");
    let mut newest = None;
    for name in file_names(state_dir)? {
        let run = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".ended"))
            .and_then(|r| r.parse::<u32>().ok());
        if let Some(r) = run {
            newest = newest.max(Some(r));
        }
    }
    Ok(newest)
}

/// Removes end markers older than `age` (a requeued job comes back within that, or its
/// steps' runs are only the notes'); returns how many.
pub fn sweep_ended(state_dir: &Path, age: std::time::Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(state_dir.join("jobs")) else {
        return 0;
    };
    let now = std::time::SystemTime::now();
    let mut n = 0;
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|d| d > age);
        let is_marker = e
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(".ended"));
        if is_marker && old && std::fs::remove_file(e.path()).is_ok() {
            n += 1;
        }
    }
    n
}

fn read_noted_run(state_dir: &Path, job_id: u32) -> Result<Option<u32>, NoteError> {
    #[derive(serde::Deserialize)]
    struct RunOnly {
        job_id: u32,
        #[serde(default)]
        run: u32,
    }
    use std::io::Read;
    let Some(&run) = runs(state_dir, job_id)?.last() else {
        return Ok(None);
    };
    let path = path(state_dir, job_id, run);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        // its epilog removed it meanwhile: the run ended
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
    if note.run != run {
        return Err(corrupt(format!("it says run {}", note.run)));
    }
    Ok(Some(note.run))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_newest_run_and_refuses_another_jobs_note() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_run(dir.path(), 7).unwrap().is_none());
        std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
        std::fs::write(path(dir.path(), 7, 0), r#"{"job_id":7,"gpus":[]}"#).unwrap();
        // a note from before runs existed is run 0
        assert_eq!(read_run(dir.path(), 7).unwrap(), Some(0));
        std::fs::write(path(dir.path(), 7, 2), r#"{"job_id":7,"run":2,"gpus":[]}"#).unwrap();
        std::fs::write(path(dir.path(), 17, 5), r#"{"job_id":17,"run":5}"#).unwrap();
        assert_eq!(runs(dir.path(), 7).unwrap(), vec![0, 2]);
        assert_eq!(read_run(dir.path(), 7).unwrap(), Some(2));
        std::fs::write(path(dir.path(), 9, 0), r#"{"job_id":7,"run":1}"#).unwrap();
        let e = read_run(dir.path(), 9).unwrap_err();
        assert!(e.to_string().contains("for job 7"), "{e}");
        std::fs::write(path(dir.path(), 10, 0), "not json").unwrap();
        assert!(read_run(dir.path(), 10).is_err());
    }

    #[test]
    fn a_run_without_a_note_after_an_ended_one_is_the_next() {
        let dir = tempfile::tempdir().unwrap();
        mark_ended(dir.path(), 7, 0).unwrap();
        // run 1 came back to this node without a prolog: no note, run 0 ended here
        assert_eq!(read_run(dir.path(), 7).unwrap(), Some(1));
        assert!(
            runs(dir.path(), 7).unwrap().is_empty(),
            "a marker is not a note"
        );
        // run 2's prolog ran: its note decides
        std::fs::write(path(dir.path(), 7, 2), r#"{"job_id":7,"run":2}"#).unwrap();
        assert_eq!(read_run(dir.path(), 7).unwrap(), Some(2));
        // another job's markers do not count
        mark_ended(dir.path(), 70, 5).unwrap();
        assert_eq!(read_run(dir.path(), 7).unwrap(), Some(2));
        assert_eq!(
            sweep_ended(dir.path(), std::time::Duration::from_secs(3600)),
            0
        );
        assert_eq!(sweep_ended(dir.path(), std::time::Duration::ZERO), 2);
        assert_eq!(read_run(dir.path(), 7).unwrap(), Some(2));
    }

    #[test]
    fn the_epilog_ends_the_older_of_the_overlapping_runs() {
        // a normal end: the environment's count is the run
        assert_eq!(epilog_run(0, &[0]), Some(0));
        assert_eq!(epilog_run(2, &[2]), Some(2));
        // requeued: the environment counts the next run already
        assert_eq!(epilog_run(1, &[0]), Some(0));
        // ... whose prolog has started here too
        assert_eq!(epilog_run(1, &[0, 1]), Some(0));
        // the next run's prolog alone: this run's prolog left no note
        assert_eq!(epilog_run(3, &[]), None);
        // a stale note of an old run does not take the place of this run's
        assert_eq!(epilog_run(3, &[0, 3]), Some(3));
        assert_eq!(epilog_run(3, &[0]), Some(0));
        assert_eq!(epilog_run(3, &[5]), None);
    }
}
