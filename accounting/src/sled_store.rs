//! [`Store`] on sled 0.34.
//!
//! Three trees: `records` (key: [`sgpu_spool::RecordId::key`], value: the record's JSON),
//! `rollups` (key: [`RollupKey::encode`], day first so a date range is a key range; value:
//! [`RollupValue::encode`]) and `counted` (`cluster,job_id` of every job already counted in
//! `jobs`). A batch is one sled transaction over the three trees, so a record and its
//! rollup contribution are written together or not at all (with `by_day`, the index of
//! records by every UTC day their span touches: key day (4 bytes, big-endian) then the
//! record key, empty value; rebuilt at open when a database predates it), then `Db::flush` makes it
//! durable before [`Store::put_batch`] returns: that return is the acknowledgement.

use std::collections::BTreeMap;
use std::path::Path;

use sgpu_spool::{NodeEvent, Record, RecordId, RecordKind};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::rollup::{RollupKey, RollupValue, contributions, job_count_key, job_marker};
use crate::store::{PurgeStats, PutOutcome, Store, StoreError, record_days, record_last_ms};

/// The sled-backed store.
pub struct SledStore {
    db: sled::Db,
    records: sled::Tree,
    rollups: sled::Tree,
    counted: sled::Tree,
    /// Index: day (4 bytes, big-endian) + record key, for reports over partial days.
    by_day: sled::Tree,
    /// Serialises [`Store::put_batch`]'s transactions.
    writer: std::sync::Mutex<()>,
    /// Node events (drain/resume history), key [`NodeEvent::key`], value its JSON.
    events: sled::Tree,
}

fn engine(e: sled::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

fn corrupt(key: &[u8], message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: message.into(),
    }
}

impl SledStore {
    /// Opens (creating if needed) the database directory at `path`.
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        let db = sled::Config::new().path(path).open().map_err(engine)?;
        let store = SledStore {
            records: db.open_tree("records").map_err(engine)?,
            rollups: db.open_tree("rollups").map_err(engine)?,
            counted: db.open_tree("counted").map_err(engine)?,
            by_day: db.open_tree("by_day").map_err(engine)?,
            events: db.open_tree("node_events").map_err(engine)?,
            writer: std::sync::Mutex::new(()),
            db,
        };
        if store.by_day.is_empty() && !store.records.is_empty() {
            store.rebuild_day_index()?;
        }
        Ok(store)
    }

    /// Rebuilds the `by_day` index from the records (a database from before the index).
    fn rebuild_day_index(&self) -> Result<(), StoreError> {
        tracing::info!("building the by-day record index");
        for kv in self.records.iter() {
            let (k, v) = kv.map_err(engine)?;
            let r = decode_record(&k, &v)?;
            for ik in day_index_keys(&r, &k) {
                self.by_day.insert(ik, &[][..]).map_err(engine)?;
            }
        }
        self.flush()
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(engine)
    }

    /// Number of stored records.
    pub fn record_count(&self) -> usize {
        self.records.len()
    }
}

fn decode_record(key: &[u8], value: &[u8]) -> Result<Record, StoreError> {
    Record::from_json(value).map_err(|e| corrupt(key, e.to_string()))
}

/// The `by_day` index keys of a record stored under `key`.
fn day_index_keys(r: &Record, key: &[u8]) -> Vec<Vec<u8>> {
    record_days(r)
        .map(|day| {
            let mut k = Vec::with_capacity(4 + key.len());
            k.extend_from_slice(&day.to_be_bytes());
            k.extend_from_slice(key);
            k
        })
        .collect()
}

/// The key prefix `cluster,job_id,` shared by every record of a job.
fn job_prefix(cluster: &str, job_id: u32) -> Option<String> {
    let key = RecordId::new(cluster, job_id, None, "x", RecordKind::JobStart)
        .ok()?
        .key();
    // The cluster is percent-encoded, so its key part has no raw comma.
    let first = key.find(',')?;
    let second = first + 1 + key[first + 1..].find(',')?;
    Some(key[..=second].to_string())
}

impl Store for SledStore {
    fn put_batch(&self, records: &[Record]) -> Result<Vec<PutOutcome>, StoreError> {
        let encoded = records
            .iter()
            .map(|r| {
                let json = r.to_json().map_err(|e| StoreError::Engine(e.to_string()))?;
                Ok((r.id().key().into_bytes(), json))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let trees = (&self.records, &self.rollups, &self.counted, &self.by_day);
        // One writer at a time: concurrent transactions over the same rollup rows would
        // conflict and redo their work; flushes still overlap (below, outside the lock).
        let writer_guard = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let result = trees.transaction(|(rec, roll, counted, by_day)| {
            let mut outcomes = Vec::with_capacity(records.len());
            // The batch's rollup additions, summed first: one read-modify-write per row.
            let mut batch_adds: BTreeMap<RollupKey, RollupValue> = BTreeMap::new();
            for (r, (key, json)) in records.iter().zip(&encoded) {
                if let Some(old) = rec.get(key)? {
                    outcomes.push(PutOutcome::Duplicate {
                        differs: old.as_ref() != json.as_slice(),
                    });
                    continue;
                }
                rec.insert(key.as_slice(), json.as_slice())?;
                for ik in day_index_keys(r, key) {
                    by_day.insert(ik, &[][..])?;
                }
                let mut adds = contributions(r);
                if let Some(k) = job_count_key(r) {
                    let marker = job_marker(r);
                    if counted.get(&marker)?.is_none() {
                        counted.insert(marker, k.encode())?;
                        adds.entry(k).or_default().jobs += 1;
                    }
                }
                for (k, add) in adds {
                    batch_adds.entry(k).or_default().add(&add);
                }
                outcomes.push(PutOutcome::Accepted);
            }
            for (k, add) in &batch_adds {
                let kb = k.encode();
                let mut v = match roll.get(&kb)? {
                    Some(old) => RollupValue::decode(&old).ok_or_else(|| {
                        ConflictableTransactionError::Abort(corrupt(
                            &kb,
                            "rollup value is not 32 bytes",
                        ))
                    })?,
                    None => RollupValue::default(),
                };
                v.add(add);
                roll.insert(kb, &v.encode()[..])?;
            }
            Ok(outcomes)
        });
        drop(writer_guard);
        let outcomes = match result {
            Ok(o) => o,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(engine(e)),
        };
        self.flush()?;
        Ok(outcomes)
    }

    fn job(&self, cluster: &str, job_id: u32) -> Result<Vec<Record>, StoreError> {
        let Some(prefix) = job_prefix(cluster, job_id) else {
            return Ok(Vec::new());
        };
        self.records
            .scan_prefix(prefix.as_bytes())
            .map(|kv| {
                let (k, v) = kv.map_err(engine)?;
                decode_record(&k, &v)
            })
            .collect()
    }

    fn for_each_record_on_day(
        &self,
        day: u32,
        f: &mut dyn FnMut(Record),
    ) -> Result<(), StoreError> {
        for kv in self.by_day.scan_prefix(day.to_be_bytes()) {
            let (ik, _) = kv.map_err(engine)?;
            let key = &ik[4..];
            // Purged records leave no index entry behind, but be lenient if one does.
            if let Some(v) = self.records.get(key).map_err(engine)? {
                f(decode_record(key, &v)?);
            }
        }
        Ok(())
    }

    fn counted_in(&self, cluster: &str, job_id: u32) -> Result<Option<RollupKey>, StoreError> {
        let marker = format!("{cluster},{job_id}");
        match self.counted.get(marker.as_bytes()).map_err(engine)? {
            Some(v) => RollupKey::decode(&v)
                .map(Some)
                .ok_or_else(|| corrupt(marker.as_bytes(), "bad counted marker")),
            None => Ok(None),
        }
    }

    fn for_each_rollup(
        &self,
        first_day: u32,
        last_day: u32,
        f: &mut dyn FnMut(RollupKey, RollupValue),
    ) -> Result<(), StoreError> {
        let start = first_day.to_be_bytes();
        let iter = match last_day.checked_add(1) {
            Some(end) => self.rollups.range(start..end.to_be_bytes()),
            None => self.rollups.range(start..),
        };
        for kv in iter {
            let (k, v) = kv.map_err(engine)?;
            let key = RollupKey::decode(&k).ok_or_else(|| corrupt(&k, "bad rollup key"))?;
            let value = RollupValue::decode(&v).ok_or_else(|| corrupt(&k, "bad rollup value"))?;
            f(key, value);
        }
        Ok(())
    }

    fn for_each_record(&self, f: &mut dyn FnMut(Record)) -> Result<(), StoreError> {
        for kv in self.records.iter() {
            let (k, v) = kv.map_err(engine)?;
            f(decode_record(&k, &v)?);
        }
        Ok(())
    }

    fn purge(
        &self,
        records_before_day: Option<u32>,
        rollups_before_day: Option<u32>,
    ) -> Result<PurgeStats, StoreError> {
        let mut stats = PurgeStats::default();
        if let Some(cutoff) = records_before_day {
            for kv in self.records.iter() {
                let (k, v) = kv.map_err(engine)?;
                let r = decode_record(&k, &v)?;
                if crate::day::day_of(record_last_ms(&r)) < cutoff {
                    self.records.remove(&k).map_err(engine)?;
                    for ik in day_index_keys(&r, &k) {
                        self.by_day.remove(ik).map_err(engine)?;
                    }
                    stats.records += 1;
                }
            }
        }
        if let Some(cutoff) = rollups_before_day {
            for kv in self.rollups.range(..cutoff.to_be_bytes()) {
                let (k, _) = kv.map_err(engine)?;
                self.rollups.remove(&k).map_err(engine)?;
                stats.rollups += 1;
            }
        }
        self.flush()?;
        Ok(stats)
    }

    fn put_events(&self, events: &[NodeEvent]) -> Result<Vec<PutOutcome>, StoreError> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let value = serde_json::to_vec(e).map_err(|err| StoreError::Engine(err.to_string()))?;
            let key = e.key();
            // same key = same event resent: keep the first copy
            let prev = self
                .events
                .compare_and_swap(
                    key.as_bytes(),
                    None as Option<&[u8]>,
                    Some(value.as_slice()),
                )
                .map_err(engine)?;
            out.push(match prev {
                Ok(()) => PutOutcome::Accepted,
                Err(cas) => PutOutcome::Duplicate {
                    differs: cas.current.as_deref() != Some(value.as_slice()),
                },
            });
        }
        self.flush()?;
        Ok(out)
    }

    fn for_each_event(&self, f: &mut dyn FnMut(NodeEvent)) -> Result<(), StoreError> {
        for kv in self.events.iter() {
            let (k, v) = kv.map_err(engine)?;
            let e: NodeEvent =
                serde_json::from_slice(&v).map_err(|err| corrupt(&k, err.to_string()))?;
            f(e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
