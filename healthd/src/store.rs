//! healthd's own durable state for per-job sampling: the running jobs' accumulators.
//!
//! [`JobStore`] is what the sampler needs; [`SledStore`] keeps it in a sled database at
//! `<state_dir>/healthd.sled` (tree `jobs`, key = job key, value = the accumulator as JSON),
//! [`MemStore`] in memory for tests. sled writes are durable only after `flush()`: the
//! sampler flushes after each sample batch and after each finalised job, so a healthd killed
//! at any moment loses at most the batch it was writing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::usage::JobAccumulator;

/// The database's directory name inside `state_dir`.
pub const SLED_DIR: &str = "healthd.sled";

/// Why the job store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (open, read, write, flush).
    #[error("job database {}: {source}", path.display())]
    Sled {
        /// The database directory.
        path: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// A stored accumulator cannot be decoded (skipped on load; reported once).
    #[error("job database {}: entry {key}: {message}", path.display())]
    Corrupt {
        /// The database directory.
        path: PathBuf,
        /// The entry's key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Durable storage of the running jobs' accumulators.
pub trait JobStore: Send {
    /// Every stored accumulator by job key; undecodable entries are returned as errors
    /// beside the good ones (and left in place).
    fn load(&self) -> (BTreeMap<String, JobAccumulator>, Vec<StoreError>);
    /// Stores (replaces) one accumulator; durable after [`JobStore::flush`].
    fn put(&mut self, acc: &JobAccumulator) -> Result<(), StoreError>;
    /// Forgets one job; durable after [`JobStore::flush`].
    fn remove(&mut self, key: &str) -> Result<(), StoreError>;
    /// Makes every earlier `put`/`remove` durable.
    fn flush(&mut self) -> Result<(), StoreError>;
}

/// [`JobStore`] in a sled database.
#[derive(Debug)]
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    jobs: sled::Tree,
}

impl SledStore {
    /// Opens (creating) `<state_dir>/healthd.sled`. sled allows one process per database:
    /// a second healthd on the same `state_dir` fails here.
    pub fn open(state_dir: &Path) -> Result<SledStore, StoreError> {
        let path = state_dir.join(SLED_DIR);
        let err = |source| StoreError::Sled {
            path: path.clone(),
            source,
        };
        let db = sled::Config::new()
            .path(&path)
            // a handful of small entries: keep the page cache (and RSS) small
            .cache_capacity(2 * 1024 * 1024)
            .mode(sled::Mode::LowSpace)
            // no background flusher: the sampler flushes when it has written
            .flush_every_ms(None)
            .open()
            .map_err(err)?;
        let jobs = db.open_tree("jobs").map_err(err)?;
        Ok(SledStore { path, db, jobs })
    }

    fn err(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }
}

impl JobStore for SledStore {
    fn load(&self) -> (BTreeMap<String, JobAccumulator>, Vec<StoreError>) {
        let mut out = BTreeMap::new();
        let mut errors = Vec::new();
        for item in self.jobs.iter() {
            match item {
                Ok((k, v)) => {
                    let key = String::from_utf8_lossy(&k).into_owned();
                    match serde_json::from_slice::<JobAccumulator>(&v) {
                        Ok(acc) => {
                            out.insert(key, acc);
                        }
                        Err(e) => errors.push(StoreError::Corrupt {
                            path: self.path.clone(),
                            key,
                            message: e.to_string(),
                        }),
                    }
                }
                Err(e) => errors.push(self.err(e)),
            }
        }
        (out, errors)
    }

    fn put(&mut self, acc: &JobAccumulator) -> Result<(), StoreError> {
        let value = serde_json::to_vec(acc).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            key: acc.key(),
            message: e.to_string(),
        })?;
        self.jobs
            .insert(acc.key().as_bytes(), value)
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn remove(&mut self, key: &str) -> Result<(), StoreError> {
        self.jobs
            .remove(key.as_bytes())
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(|e| self.err(e))
    }
}

/// [`JobStore`] in memory (tests); `flushed` is what a crash would leave.
#[derive(Debug, Default, Clone)]
pub struct MemStore {
    /// Written, not yet flushed.
    pub pending: BTreeMap<String, Option<JobAccumulator>>,
    /// Durable.
    pub flushed: BTreeMap<String, JobAccumulator>,
}

impl JobStore for MemStore {
    fn load(&self) -> (BTreeMap<String, JobAccumulator>, Vec<StoreError>) {
        (self.flushed.clone(), Vec::new())
    }

    fn put(&mut self, acc: &JobAccumulator) -> Result<(), StoreError> {
        self.pending.insert(acc.key(), Some(acc.clone()));
        Ok(())
    }

    fn remove(&mut self, key: &str) -> Result<(), StoreError> {
        self.pending.insert(key.to_string(), None);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        for (k, v) in std::mem::take(&mut self.pending) {
            match v {
                Some(acc) => {
                    self.flushed.insert(k, acc);
                }
                None => {
                    self.flushed.remove(&k);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sgpu_spool::{GpuRef, JobStart, RecordId, RecordKind};

    fn acc(job: u32) -> JobAccumulator {
        let id = RecordId::new("alpha", job, None, "node1", RecordKind::JobStart).unwrap();
        JobAccumulator::from_start(
            &id,
            &JobStart {
                user: "alice".into(),
                uid: 1,
                account: None,
                partition: None,
                start_time: 5,
                gpus: vec![GpuRef {
                    index: 0,
                    uuid: "GPU-a".into(),
                    name: None,
                    energy_mj: Some(9),
                    mig: None,
                }],
            },
        )
    }

    #[test]
    fn sled_store_round_trips_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = SledStore::open(dir.path()).unwrap();
            s.put(&acc(1)).unwrap();
            s.put(&acc(2)).unwrap();
            s.remove("alpha,1,5").unwrap();
            s.flush().unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        let (jobs, errors) = s.load();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(jobs.keys().collect::<Vec<_>>(), vec!["alpha,2,5"]);
        assert_eq!(jobs["alpha,2,5"], acc(2));
    }

    #[test]
    fn sled_store_reports_undecodable_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SledStore::open(dir.path()).unwrap();
        s.jobs.insert("alpha,9", b"not json".to_vec()).unwrap();
        s.put(&acc(3)).unwrap();
        let (jobs, errors) = s.load();
        assert_eq!(jobs.len(), 1);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("alpha,9"), "{}", errors[0]);
    }

    #[test]
    fn mem_store_loses_what_was_not_flushed() {
        let mut s = MemStore::default();
        s.put(&acc(1)).unwrap();
        s.flush().unwrap();
        s.put(&acc(2)).unwrap();
        s.remove("alpha,1,5").unwrap();
        assert_eq!(s.load().0.keys().collect::<Vec<_>>(), vec!["alpha,1,5"]);
    }
}
