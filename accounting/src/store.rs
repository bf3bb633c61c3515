//! The store behind acctd: a small trait ([`Store`]) so the engine (sled today) can be
//! replaced without touching ingest or the HTTP API, and [`verify`], the consistency check
//! the crash-loop test runs.

use std::collections::{BTreeMap, BTreeSet};

use sgpu_spool::{NodeEvent, Record, RecordBody};

use crate::rollup::{RollupKey, RollupValue, contributions, job_count_key};

/// Why the store failed; nothing in the failed call was acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed (I/O, corruption).
    #[error("storage engine: {0}")]
    Engine(String),
    /// A stored value could not be read back.
    #[error("corrupt stored value under key {key:?}: {message}")]
    Corrupt {
        /// The offending key, lossily as text.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// What happened to one record of a batch given to [`Store::put_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored now, and counted in the rollups.
    Accepted,
    /// A record with this identity was already stored (earlier, or earlier in this batch);
    /// nothing was changed. `differs` says whether the stored content is different.
    Duplicate {
        /// The stored record's JSON differs from this one's.
        differs: bool,
    },
    /// A different record under an identity already stored: not an exact resend. The
    /// stored record stays (and stays counted); this one is kept beside it as a
    /// [`Conflict`] for an admin, never counted and never deleted. `new` is false when the
    /// same conflicting record was kept before (a resend of the conflict).
    Conflict {
        /// Whether this call kept it (false: already kept).
        new: bool,
    },
}

/// A record that arrived under the identity of a different stored record
/// ([`PutOutcome::Conflict`]), kept for an admin to judge.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// The identity both records share ([`sgpu_spool::RecordId::key`]).
    pub key: String,
    /// When acctd received this record, Unix ms.
    pub received_ms: u64,
    /// The record that arrived and was not counted.
    pub record: Record,
}

/// What [`Store::purge`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeStats {
    /// Per-job records removed.
    pub records: u64,
    /// Rollup rows removed.
    pub rollups: u64,
}

/// acctd's storage: per-job records keyed by identity, and the rollups kept at ingest.
pub trait Store: Send + Sync {
    /// Stores a batch of valid records, idempotently by [`sgpu_spool::RecordId::key`], and
    /// updates the rollups in the same atomic step. Returns only once the batch is durable;
    /// an `Ok` is the acknowledgement. Outcomes are in batch order.
    fn put_batch(&self, records: &[Record]) -> Result<Vec<PutOutcome>, StoreError>;

    /// [`Store::put_batch`] for records that arrived as JSON: `json[i]` is the text
    /// `records[i]` was parsed from, which a store may keep as it is instead of serialising
    /// the record again. The default ignores it.
    fn put_received(
        &self,
        records: &[Record],
        json: &[&[u8]],
    ) -> Result<Vec<PutOutcome>, StoreError> {
        let _ = json;
        self.put_batch(records)
    }

    /// Every stored record of a job (all nodes, steps and kinds), in key order.
    fn job(&self, cluster: &str, job_id: u32) -> Result<Vec<Record>, StoreError>;

    /// Calls `f` for every rollup row with `first_day <= day <= last_day`, in key order.
    fn for_each_rollup(
        &self,
        first_day: u32,
        last_day: u32,
        f: &mut dyn FnMut(RollupKey, RollupValue),
    ) -> Result<(), StoreError>;

    /// Calls `f` for every stored record, in key order.
    fn for_each_record(&self, f: &mut dyn FnMut(Record)) -> Result<(), StoreError>;

    /// Retention: removes records whose span ([`record_days`]) ends on a UTC day before
    /// `records_before_day`, and rollup rows of days before `rollups_before_day`; `None`
    /// keeps that kind. Durable when it returns.
    fn purge(
        &self,
        records_before_day: Option<u32>,
        rollups_before_day: Option<u32>,
    ) -> Result<PurgeStats, StoreError>;

    /// Stores node events ([`NodeEvent`]: drains and resumes) idempotently by
    /// [`NodeEvent::key`], apart from the records and outside the rollups. Returns only once
    /// they are durable. Outcomes are in input order.
    fn put_events(&self, events: &[NodeEvent]) -> Result<Vec<PutOutcome>, StoreError> {
        let _ = events;
        Err(StoreError::Engine(
            "this store keeps no node history; run acctd with the sled store".into(),
        ))
    }

    /// Calls `f` for every stored record whose span ([`record_first_ms`] to
    /// [`record_last_ms`]) touches the UTC day `day`, in key order. Reports use it for the
    /// partial days at a window's edges and job lists for the days of their window.
    ///
    /// The default scans every record; a store should keep an index by day.
    fn for_each_record_on_day(
        &self,
        day: u32,
        f: &mut dyn FnMut(Record),
    ) -> Result<(), StoreError> {
        self.for_each_record(&mut |r| {
            if record_days(&r).contains(&day) {
                f(r);
            }
        })
    }

    /// The UTC days in `first_day..=last_day` that may have records
    /// ([`Store::for_each_record_on_day`] finds nothing on the others), ascending.
    ///
    /// The default is every day of the range; a store with a by-day index lists only the
    /// days it has rows for, so a window of centuries costs what its data costs.
    fn days_with_records(&self, first_day: u32, last_day: u32) -> Result<Vec<u32>, StoreError> {
        Ok((first_day..=last_day).collect())
    }

    /// The rollup row a job's `jobs` count went to (see [`crate::rollup::job_count_key`]),
    /// if the job has been counted.
    ///
    /// The default answers from the job's first stored `job_end` with a GPU in key order;
    /// a store that counts in arrival order should answer from what it recorded.
    fn counted_in(&self, cluster: &str, job_id: u32) -> Result<Option<RollupKey>, StoreError> {
        Ok(self
            .job(cluster, job_id)?
            .iter()
            .find_map(crate::rollup::job_count_key))
    }

    /// [`Store::counted_in`] of each job of `jobs` (cluster, job id), in that order.
    ///
    /// The default asks job by job; a store where each call is a round trip to a server
    /// answers them together (reports ask for every job that ended on a day they read
    /// from records).
    fn counted_in_many(
        &self,
        jobs: &[(String, u32)],
    ) -> Result<Vec<Option<RollupKey>>, StoreError> {
        jobs.iter().map(|(c, j)| self.counted_in(c, *j)).collect()
    }

    /// Calls `f` for every kept [`Conflict`], by key and arrival.
    ///
    /// The default keeps none (a store that answers [`PutOutcome::Conflict`] must list them).
    fn for_each_conflict(&self, f: &mut dyn FnMut(Conflict)) -> Result<(), StoreError> {
        let _ = f;
        Ok(())
    }

    /// Calls `f` for every stored node event, by cluster, node and time.
    fn for_each_event(&self, f: &mut dyn FnMut(NodeEvent)) -> Result<(), StoreError> {
        let _ = f;
        Ok(())
    }

    /// Sets rollup rows as they are, apart from any record (`None`: removes the row), in
    /// one durable step. Only for moving a store's history ([`crate::migrate`]): the rows of
    /// days whose records retention removed cannot be rebuilt from records. An empty call
    /// answers whether the store can.
    ///
    /// The default refuses.
    fn restore_rollups(&self, rows: &[(RollupKey, Option<RollupValue>)]) -> Result<(), StoreError> {
        let _ = rows;
        Err(StoreError::Engine(
            "this store cannot take rollup rows apart from records".into(),
        ))
    }

    /// Keeps `conflicts` as they are, their arrival time included, whether or not a record
    /// is stored under their key (retention may have removed it), except those whose record
    /// is kept under that key already; returns how many it kept now. Durable when it
    /// returns. Only for moving a store's history ([`crate::migrate`]). An empty call
    /// answers whether the store can.
    ///
    /// The default refuses.
    fn restore_conflicts(&self, conflicts: &[Conflict]) -> Result<u64, StoreError> {
        let _ = conflicts;
        Err(StoreError::Engine(
            "this store cannot take conflicts apart from records".into(),
        ))
    }
}

/// The last instant a record describes, ms (end of job or window, else its start; a
/// `job_end`'s gate window joined with its Slurm window).
pub fn record_last_ms(record: &Record) -> u64 {
    match record.body() {
        RecordBody::JobStart(b) => b.start_time,
        RecordBody::JobEnd(b) => b.covered_window().1,
        RecordBody::StepUsage(b) | RecordBody::JobUsage(b) => b.window_end,
    }
}

/// The first instant a record describes, ms (start of job or window; a `job_end`'s gate
/// window joined with its Slurm window).
pub fn record_first_ms(record: &Record) -> u64 {
    match record.body() {
        RecordBody::JobStart(b) => b.start_time,
        RecordBody::JobEnd(b) => b.covered_window().0,
        RecordBody::StepUsage(b) | RecordBody::JobUsage(b) => b.window_start,
    }
}

/// The job key (`cluster,job_id,`) of a record key: everything up to its second comma
/// (the cluster is percent-encoded in keys, so it has no raw comma). Both stores key a
/// job's records by it.
pub(crate) fn job_key_of(record_key: &[u8]) -> Option<&[u8]> {
    let first = record_key.iter().position(|&c| c == b',')?;
    let second = first + 1 + record_key[first + 1..].iter().position(|&c| c == b',')?;
    Some(&record_key[..=second])
}

/// The job key of `cluster`'s job `job_id`, as [`job_key_of`] cuts it from a record key.
pub(crate) fn job_key(cluster: &str, job_id: u32) -> Option<Vec<u8>> {
    let key =
        sgpu_spool::RecordId::new(cluster, job_id, None, "x", sgpu_spool::RecordKind::JobStart)
            .ok()?
            .key();
    job_key_of(key.as_bytes()).map(<[u8]>::to_vec)
}

/// The UTC days a record's span touches: `[first, last)`, or the day of `first` when the
/// span is empty (a span ending exactly at midnight does not touch the next day).
pub fn record_days(record: &Record) -> std::ops::RangeInclusive<u32> {
    let first = record_first_ms(record);
    let last = record_last_ms(record);
    let last_day = if last > first {
        crate::day::day_of(last - 1)
    } else {
        crate::day::day_of(first)
    };
    crate::day::day_of(first)..=last_day
}

/// Result of [`verify`].
#[derive(Debug, Default)]
pub struct Verification {
    /// Records stored.
    pub records: u64,
    /// Distinct jobs with a `job_end` that has a GPU.
    pub jobs: u64,
    /// Differences between the stored rollups and those recomputed from the records.
    pub mismatches: Vec<String>,
}

/// Recomputes every rollup from the stored records and compares it with the stored rollups.
///
/// Allocated, used and energy must match per row exactly; the job count, whose row
/// depends on which `job_end` arrived first, must match in total (one per distinct job).
/// Only meaningful for a store that has not been purged.
pub fn verify(store: &dyn Store) -> Result<Verification, StoreError> {
    let mut expected: BTreeMap<RollupKey, RollupValue> = BTreeMap::new();
    let mut jobs: BTreeSet<(String, u32)> = BTreeSet::new();
    let mut records = 0u64;
    store.for_each_record(&mut |r| {
        records += 1;
        for (k, v) in contributions(&r) {
            expected.entry(k).or_default().add(&v);
        }
        if job_count_key(&r).is_some() {
            jobs.insert((r.id().cluster().to_string(), r.id().job_id()));
        }
    })?;
    let mut stored: BTreeMap<RollupKey, RollupValue> = BTreeMap::new();
    store.for_each_rollup(0, u32::MAX, &mut |k, v| {
        stored.insert(k, v);
    })?;
    let mut mismatches = Vec::new();
    let mut stored_jobs = 0u64;
    for (k, v) in &stored {
        stored_jobs += v.jobs;
        let e = expected.get(k).copied().unwrap_or_default();
        let sums = |v: &RollupValue| (v.allocated_gpu_ms, v.used_gpu_ms, v.energy_mj);
        if sums(v) != sums(&e) {
            mismatches.push(format!("{k:?}: stored {v:?}, recomputed {e:?}"));
        }
    }
    for (k, e) in &expected {
        if !stored.contains_key(k) {
            mismatches.push(format!("{k:?}: missing, recomputed {e:?}"));
        }
    }
    let n_jobs = u64::try_from(jobs.len()).unwrap_or(u64::MAX);
    if stored_jobs != n_jobs {
        mismatches.push(format!(
            "jobs: rollups count {stored_jobs}, records have {n_jobs}"
        ));
    }
    Ok(Verification {
        records,
        jobs: n_jobs,
        mismatches,
    })
}
