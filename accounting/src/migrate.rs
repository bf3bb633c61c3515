//! Moving a sled store's history into another store (MariaDB/MySQL): `sgpu-acctd migrate`.
//!
//! [`migrate`] reads every record, kept conflict and node event of the source store and
//! writes them to the target through the [`Store`] trait's own write path
//! ([`Store::put_batch`], [`Store::put_events`]), so the target builds its rollups, day
//! index and job counts exactly as ingest does, and a second run (or a run after an
//! interruption) only finds duplicates: nothing twice, nothing lost. A job's counted
//! `job_end` ([`Store::counted_in`]) is written before the job's other records, so its
//! `jobs` count goes to the same rollup row as in the source. No record, row or event of
//! the source is changed, but it is opened as acctd opens it: an older format is marked
//! (or converted to) the current one, which an older acctd then refuses, and the record
//! log starts a new (empty) segment.
//!
//! Rollup rows are rebuilt from the records; only the rows the records do not make (days
//! whose records, or rollups, retention removed) are then set to the source's as they are
//! ([`Store::restore_rollups`]), after the records of both stores are found equal (a target
//! that cannot take rows refuses such a source before anything is written). At the end,
//! [`Tally`] (counts per kind, per-account totals from the report engine, digests of the
//! records, rollups, conflicts and events) of both stores must be equal;
//! [`Tally::differences`] says what differs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sgpu_spool::{NodeEvent, Record};

use crate::report::{ReportQuery, report};
use crate::rollup::job_count_key;
use crate::sled_store::SledStore;
use crate::store::{Store, StoreError, verify};

/// Records (and events) written to the target per call.
pub const BATCH: usize = 1000;

/// Rollup differences named in an error before the rest is summed up.
const SHOWN: usize = 5;

/// Why a move failed; what was written before the failure stays, and a new run resumes.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The source directory does not exist.
    #[error(
        "--from {0}: no such directory; name the sled store's directory (what acctd's --db \
         named, default /var/lib/sgpu/acctd.sled)"
    )]
    Missing(PathBuf),
    /// The source directory is not a sled store.
    #[error(
        "--from {path}: not a sled store ({why}); name the directory acctd's --db named \
         (default /var/lib/sgpu/acctd.sled)"
    )]
    NotSled {
        /// The directory.
        path: PathBuf,
        /// What is missing or wrong.
        why: String,
    },
    /// Another process holds the sled store open.
    #[error(
        "--from {0}: another process holds this sled store open (a running sgpu-acctd?); \
         stop it (systemctl stop sgpu-acctd) and run the move again"
    )]
    Locked(PathBuf),
    /// The source store failed while being read.
    #[error("reading the sled store: {0}")]
    Read(StoreError),
    /// The source store failed to open.
    #[error("opening the sled store {path}: {source}")]
    Source {
        /// The directory.
        path: PathBuf,
        /// The store's error.
        source: StoreError,
    },
    /// The source's rollups are not what its records make (retention removed some).
    #[error(
        "the sled store's rollups are not what its records make ({count} rows differ, on \
         days {days}; e.g. {examples}): retention (--retention-days / \
         --rollup-retention-days) removed records or rollups there, and the target store \
         cannot take rollup rows apart from records, so those totals would change. Nothing \
         was written. Move into a MariaDB/MySQL database, which takes them"
    )]
    Purged {
        /// Rows that differ.
        count: usize,
        /// The first and last UTC day among them, as dates.
        days: String,
        /// The first few differences.
        examples: String,
    },
    /// The target store failed.
    #[error(
        "writing to {target}: {source}. What was written stays; run the move again when \
         the database is back (it resumes: nothing counts twice)"
    )]
    Target {
        /// The target, without a password.
        target: String,
        /// The store's error.
        source: StoreError,
    },
    /// The AdminComment queue could not be read or written.
    #[error("{path}: {message}; {hint}")]
    Queue {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
        /// What to do.
        hint: &'static str,
    },
    /// After the move, the two stores differ.
    #[error(
        "after the move the stores differ: {0}. Was {1} already in use by an acctd (records \
         the sled store does not have)? Move into an empty database"
    )]
    Differ(String, String),
}

/// Opens the sled store at `dir` for reading: refuses a missing directory, one that is not
/// a sled store, and one another process (a running acctd) holds open. Opening converts
/// an older on-disk format as starting acctd would; the move itself writes nothing there.
pub fn open_source(dir: &Path) -> Result<SledStore, MigrateError> {
    check_source(dir)?;
    SledStore::open(dir).map_err(|e| match &e {
        StoreError::Engine(m) if m.contains("could not acquire lock") => {
            MigrateError::Locked(dir.to_path_buf())
        }
        _ => MigrateError::Source {
            path: dir.to_path_buf(),
            source: e,
        },
    })
}

/// The checks of [`open_source`] that need no opening: `dir` exists and holds sled's files
/// (run first, so a typo is named before the database is contacted).
pub fn check_source(dir: &Path) -> Result<(), MigrateError> {
    let meta = std::fs::metadata(dir).map_err(|_| MigrateError::Missing(dir.to_path_buf()))?;
    if !meta.is_dir() {
        return Err(MigrateError::NotSled {
            path: dir.to_path_buf(),
            why: "not a directory".into(),
        });
    }
    for name in ["conf", "db"] {
        if !dir.join(name).is_file() {
            return Err(MigrateError::NotSled {
                path: dir.to_path_buf(),
                why: format!("it has no file {name:?}"),
            });
        }
    }
    Ok(())
}

/// The AdminComment queue's file name in a sled store's directory (`--admin-comment`).
pub const SLED_DUE_FILE: &str = "admin-comment-due.json";

/// The AdminComment queue's file name in `--state-dir`, where an acctd on MariaDB/MySQL
/// keeps it.
pub const STATE_DUE_FILE: &str = "acctd-admin-comment-due.json";

/// Moves the jobs still waiting for their AdminComment (`--admin-comment`) from the sled
/// directory `from` ([`SLED_DUE_FILE`]) to `state_dir` ([`STATE_DUE_FILE`]), where acctd on
/// MariaDB/MySQL looks: the union of both lists, written to a temporary file renamed over
/// it (a rerun adds nothing). Returns how many jobs the sled list had; the sled file stays.
pub fn move_due_jobs(from: &Path, state_dir: &Path) -> Result<usize, MigrateError> {
    let src = from.join(SLED_DUE_FILE);
    let dst = state_dir.join(STATE_DUE_FILE);
    let read = |path: &Path| -> Result<Option<Vec<(String, u32)>>, MigrateError> {
        let bad = |message: String| MigrateError::Queue {
            path: path.to_path_buf(),
            message,
            hint: "it lists AdminComments still to write, as JSON [[cluster, job], ...]: \
                   fix or remove it and run the move again",
        };
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| bad(format!("not a list of due jobs ({e})"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(bad(e.to_string())),
        }
    };
    let Some(jobs) = read(&src)? else {
        return Ok(0);
    };
    let mut all = read(&dst)?.unwrap_or_default();
    let n = jobs.len();
    for job in jobs {
        if !all.contains(&job) {
            all.push(job);
        }
    }
    crate::admin_comment::write_due_file(&dst, &all).map_err(|e| MigrateError::Queue {
        path: dst.clone(),
        message: e.to_string(),
        hint: "--state-dir must be a directory acctd's user may write (the same as the \
                   MariaDB acctd's --state-dir)",
    })?;
    Ok(n)
}

/// Totals of one (cluster, account) over the whole history, from the report engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccountTotals {
    /// Allocated GPU time, GPU-ms.
    pub allocated_gpu_ms: u64,
    /// Used GPU time, GPU-ms.
    pub used_gpu_ms: u64,
    /// Energy, mJ.
    pub energy_mj: u64,
    /// Jobs.
    pub jobs: u64,
}

/// What a store holds, counted and summed the same way on both sides of a move.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Records per kind (`job_start`, `job_end`, ...).
    pub records: BTreeMap<String, u64>,
    /// Kept conflicts.
    pub conflicts: u64,
    /// Node events (drains, resumes, idle actions, ...).
    pub events: u64,
    /// Rollup rows.
    pub rollup_rows: u64,
    /// A whole-history report grouped by cluster and account.
    pub accounts: BTreeMap<(String, String), AccountTotals>,
    /// Order-independent digests of the records, the rollup rows, the conflicts (key and
    /// record, not the time they arrived) and the events.
    pub digests: [u64; 4],
}

/// A stable 64-bit hash of `parts` (FNV-1a; the same in every build).
fn digest(parts: &[&[u8]]) -> u64 {
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

fn record_digest(r: &Record) -> u64 {
    let json = r.to_json().unwrap_or_default();
    digest(&[r.id().key().as_bytes(), &json])
}

fn event_digest(e: &NodeEvent) -> u64 {
    let json = serde_json::to_vec(e).unwrap_or_default();
    digest(&[e.key().as_bytes(), &json])
}

impl Tally {
    /// Counts and sums what `store` holds.
    pub fn of(store: &dyn Store) -> Result<Tally, StoreError> {
        let mut t = Tally::default();
        store.for_each_record(&mut |r| {
            *t.records.entry(r.id().kind().to_string()).or_default() += 1;
            t.digests[0] = t.digests[0].wrapping_add(record_digest(&r));
        })?;
        store.for_each_rollup(0, u32::MAX, &mut |k, v| {
            t.rollup_rows += 1;
            let text = format!("{k:?}={v:?}");
            t.digests[1] = t.digests[1].wrapping_add(digest(&[text.as_bytes()]));
        })?;
        store.for_each_conflict(&mut |c| {
            t.conflicts += 1;
            t.digests[2] =
                t.digests[2].wrapping_add(digest(&[c.key.as_bytes()]) ^ record_digest(&c.record));
        })?;
        store.for_each_event(&mut |e| {
            t.events += 1;
            t.digests[3] = t.digests[3].wrapping_add(event_digest(&e));
        })?;
        let q = ReportQuery::parse(&format!(
            "start=0&end={}&group_by=cluster,account",
            crate::report::MAX_INSTANT_S
        ))
        .map_err(|e| StoreError::Engine(format!("the whole-history report: {e}")))?;
        let rows = report(store, &q, None)
            .map_err(|e| StoreError::Engine(format!("the whole-history report: {e}")))?;
        for row in rows {
            let key = (
                row.cluster.unwrap_or_default(),
                row.account.unwrap_or_default(),
            );
            t.accounts.insert(
                key,
                AccountTotals {
                    allocated_gpu_ms: row.allocated_gpu_ms,
                    used_gpu_ms: row.used_gpu_ms,
                    energy_mj: row.energy_mj,
                    jobs: row.jobs,
                },
            );
        }
        Ok(t)
    }

    /// Whether the records, conflicts and node events agree (the rollups aside).
    pub fn same_records(&self, other: &Tally) -> bool {
        (&self.records, self.conflicts, self.events, self.digests[0])
            == (
                &other.records,
                other.conflicts,
                other.events,
                other.digests[0],
            )
            && self.digests[2..] == other.digests[2..]
    }

    /// Every way `self` (the source) and `other` (the target) differ, in words; empty when
    /// they are equal.
    pub fn differences(&self, other: &Tally) -> Vec<String> {
        let mut out = Vec::new();
        let kinds: std::collections::BTreeSet<&String> =
            self.records.keys().chain(other.records.keys()).collect();
        for k in kinds {
            let (a, b) = (self.records.get(k), other.records.get(k));
            if a != b {
                out.push(format!(
                    "{k} records: sled {}, target {}",
                    a.copied().unwrap_or(0),
                    b.copied().unwrap_or(0)
                ));
            }
        }
        let counts = [
            ("conflicts", self.conflicts, other.conflicts),
            ("node events", self.events, other.events),
            ("rollup rows", self.rollup_rows, other.rollup_rows),
        ];
        for (what, a, b) in counts {
            if a != b {
                out.push(format!("{what}: sled {a}, target {b}"));
            }
        }
        let names = ["records", "rollup rows", "conflicts", "node events"];
        for (i, what) in names.iter().enumerate() {
            if self.digests[i] != other.digests[i] {
                out.push(format!("the {what}' contents differ"));
            }
        }
        let accounts: std::collections::BTreeSet<&(String, String)> =
            self.accounts.keys().chain(other.accounts.keys()).collect();
        for k in accounts {
            let (a, b) = (self.accounts.get(k), other.accounts.get(k));
            if a != b {
                out.push(format!(
                    "account {:?} of cluster {:?}: sled {}, target {}",
                    k.1,
                    k.0,
                    a.map_or("none".into(), totals_text),
                    b.map_or("none".into(), totals_text)
                ));
            }
        }
        out
    }

    /// The tally as lines for the operator.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .records
            .iter()
            .map(|(k, n)| format!("{k} records: {n}"))
            .collect();
        out.push(format!("conflicts: {}", self.conflicts));
        out.push(format!("node events: {}", self.events));
        out.push(format!("rollup rows: {}", self.rollup_rows));
        for ((cluster, account), t) in &self.accounts {
            out.push(format!(
                "cluster {cluster} account {}: {}",
                if account.is_empty() {
                    "(none)"
                } else {
                    account
                },
                totals_text(t)
            ));
        }
        out
    }
}

fn totals_text(t: &AccountTotals) -> String {
    format!(
        "{:.3} GPU-hours allocated, {:.3} used, {:.3} kWh, {} jobs",
        t.allocated_gpu_ms as f64 / 3_600_000.0,
        t.used_gpu_ms as f64 / 3_600_000.0,
        t.energy_mj as f64 / 3_600_000_000.0,
        t.jobs
    )
}

/// What [`migrate`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// Records stored now.
    pub records: u64,
    /// Records the target had already (an earlier run).
    pub already: u64,
    /// Conflicts kept now.
    pub conflicts: u64,
    /// Node events stored now.
    pub events: u64,
    /// Rollup rows set as the source has them (rows its records do not make: retention).
    pub rollup_rows: u64,
    /// The first and last UTC day of those rows.
    pub rollup_days: Option<(u32, u32)>,
}

/// What [`migrate`] did and found: what it wrote and the tally both stores agree on.
#[derive(Debug, Clone)]
pub struct Migration {
    /// What was written now.
    pub moved: Moved,
    /// Both stores' tally (equal).
    pub tally: Tally,
}

/// The writing half of [`migrate`]: records in key order, each job's counted `job_end`
/// first, in batches of [`BATCH`].
struct Mover<'a> {
    source: &'a dyn Store,
    target: &'a dyn Store,
    target_name: &'a str,
    job: Option<(String, u32)>,
    job_records: Vec<Record>,
    batch: Vec<Record>,
    moved: Moved,
    failed: Option<MigrateError>,
}

impl Mover<'_> {
    fn target_err(&self, e: StoreError) -> MigrateError {
        MigrateError::Target {
            target: self.target_name.to_string(),
            source: e,
        }
    }

    fn take(&mut self, r: Record) {
        if self.failed.is_some() {
            return;
        }
        let job = (r.id().cluster().to_string(), r.id().job_id());
        if self.job.as_ref() != Some(&job) {
            if let Err(e) = self.end_job() {
                self.failed = Some(e);
                return;
            }
            self.job = Some(job);
        }
        self.job_records.push(r);
    }

    /// Moves the current job's records into the batch, its counted `job_end` first.
    fn end_job(&mut self) -> Result<(), MigrateError> {
        let mut records = std::mem::take(&mut self.job_records);
        let counting = records
            .iter()
            .filter(|r| job_count_key(r).is_some())
            .count();
        if let (true, Some((cluster, job_id))) = (counting > 1, &self.job) {
            let counted = self
                .source
                .counted_in(cluster, *job_id)
                .map_err(MigrateError::Read)?;
            if let Some(at) = counted.as_ref().and_then(|c| {
                records
                    .iter()
                    .position(|r| job_count_key(r).as_ref() == Some(c))
            }) {
                let first = records.remove(at);
                records.insert(0, first);
            }
        }
        for r in records {
            self.batch.push(r);
            if self.batch.len() >= BATCH {
                self.send()?;
            }
        }
        Ok(())
    }

    /// Writes the pending batch (a job's counted record may end one batch: the next
    /// batch's records of the job come after it, so it still counts first).
    fn send(&mut self) -> Result<(), MigrateError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let outcomes = self
            .target
            .put_batch(&self.batch)
            .map_err(|e| self.target_err(e))?;
        for o in outcomes {
            match o {
                crate::store::PutOutcome::Accepted => self.moved.records += 1,
                _ => self.moved.already += 1,
            }
        }
        self.batch.clear();
        Ok(())
    }
}

/// Moves everything `source` holds into `target` (named `target_name` in messages), then
/// checks that both hold the same ([`Tally`]).
///
/// Rollup rows that the records do not rebuild (days whose records retention removed, or
/// whose rollups it removed) are then set to the source's rows as they are
/// ([`Store::restore_rollups`]), once the records of both stores are found equal. A target
/// that cannot take rollup rows gets nothing from a source whose rollups are not what its
/// records make ([`MigrateError::Purged`], checked before writing).
pub fn migrate(
    source: &dyn Store,
    target: &dyn Store,
    target_name: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<Migration, MigrateError> {
    let source_err = MigrateError::Read;
    let target_err = |e| MigrateError::Target {
        target: target_name.to_string(),
        source: e,
    };
    let can_restore = target.restore_rollups(&[]).is_ok();
    if !can_restore {
        progress("checking the sled store's rollups against its records");
        let check = verify(source).map_err(source_err)?;
        if !check.mismatches.is_empty() {
            return Err(purged(source, &check.mismatches).map_err(source_err)?);
        }
    }
    progress("moving the records");
    let mut mover = Mover {
        source,
        target,
        target_name,
        job: None,
        job_records: Vec::new(),
        batch: Vec::new(),
        moved: Moved::default(),
        failed: None,
    };
    source
        .for_each_record(&mut |r| mover.take(r))
        .map_err(source_err)?;
    if let Some(e) = mover.failed.take() {
        return Err(e);
    }
    mover.end_job()?;
    mover.send()?;
    let mut moved = mover.moved;

    let mut conflicts = Vec::new();
    source
        .for_each_conflict(&mut |c| conflicts.push(c))
        .map_err(source_err)?;
    if target.restore_conflicts(&[]).is_ok() {
        // as they are: their arrival time, and those whose record retention removed
        for chunk in conflicts.chunks(BATCH) {
            moved.conflicts += target.restore_conflicts(chunk).map_err(target_err)?;
        }
    } else {
        // after every record: each arrives under a stored identity, so the target keeps it
        // as a conflict again (arriving now; a resend finds it kept). Without its record
        // (retention) it would count: such a source was refused above.
        let records: Vec<Record> = conflicts.into_iter().map(|c| c.record).collect();
        for chunk in records.chunks(BATCH) {
            for o in target.put_batch(chunk).map_err(target_err)? {
                if o == (crate::store::PutOutcome::Conflict { new: true }) {
                    moved.conflicts += 1;
                }
            }
        }
    }

    // events in batches as they are read (a site's history may hold millions)
    let mut events = Vec::with_capacity(BATCH);
    let mut failed = None;
    let mut send = |events: &mut Vec<NodeEvent>, moved: &mut Moved| {
        if failed.is_some() {
            events.clear();
            return;
        }
        match target.put_events(events) {
            Ok(outcomes) => {
                moved.events += outcomes
                    .iter()
                    .filter(|o| **o == crate::store::PutOutcome::Accepted)
                    .count() as u64;
            }
            Err(e) => failed = Some(e),
        }
        events.clear();
    };
    source
        .for_each_event(&mut |e| {
            events.push(e);
            if events.len() >= BATCH {
                send(&mut events, &mut moved);
            }
        })
        .map_err(source_err)?;
    if !events.is_empty() {
        send(&mut events, &mut moved);
    }
    if let Some(e) = failed {
        return Err(target_err(e));
    }
    progress(&format!(
        "written: {} records ({} were there already), {} conflicts, {} node events; \
         comparing both stores",
        moved.records, moved.already, moved.conflicts, moved.events
    ));

    let before = Tally::of(source).map_err(source_err)?;
    let mut after = Tally::of(target).map_err(target_err)?;
    let differ = |diff: Vec<String>| MigrateError::Differ(diff.join("; "), target_name.into());
    if !before.same_records(&after) {
        // rollups are left alone: a target with other records is not the source's copy
        return Err(differ(before.differences(&after)));
    }
    if can_restore && before != after {
        let (rows, days) = restore_rollups(source, target, target_name)?;
        moved.rollup_rows = rows;
        moved.rollup_days = days;
        if let Some((a, b)) = days {
            progress(&format!(
                "{rows} rollup rows that the records do not make (retention removed \
                 records or rollups of {} to {}) taken as they are",
                crate::day::format_day(a),
                crate::day::format_day(b)
            ));
        }
        after = Tally::of(target).map_err(target_err)?;
    }
    let diff = before.differences(&after);
    if !diff.is_empty() {
        return Err(differ(diff));
    }
    Ok(Migration {
        moved,
        tally: before,
    })
}

/// Days of rollup rows compared at once by [`restore_rollups`].
const RESTORE_DAYS: u32 = 31;

/// Sets every rollup row of `target` that differs from `source`'s to the source's (removes
/// those the source lacks), [`RESTORE_DAYS`] days at a time; returns how many rows and the
/// first and last day among them.
fn restore_rollups(
    source: &dyn Store,
    target: &dyn Store,
    target_name: &str,
) -> Result<(u64, Option<(u32, u32)>), MigrateError> {
    use crate::rollup::{RollupKey, RollupValue};
    let target_err = |e| MigrateError::Target {
        target: target_name.to_string(),
        source: e,
    };
    let (mut lo, mut hi) = (u32::MAX, 0u32);
    let mut span = |k: RollupKey, _: RollupValue| {
        lo = lo.min(k.day);
        hi = hi.max(k.day);
    };
    source
        .for_each_rollup(0, u32::MAX, &mut span)
        .map_err(MigrateError::Read)?;
    target
        .for_each_rollup(0, u32::MAX, &mut span)
        .map_err(target_err)?;
    let (mut rows, mut days) = (0u64, None::<(u32, u32)>);
    let mut day = lo;
    while day <= hi {
        let last = day.saturating_add(RESTORE_DAYS - 1).min(hi);
        let mut want: BTreeMap<RollupKey, RollupValue> = BTreeMap::new();
        source
            .for_each_rollup(day, last, &mut |k, v| {
                want.insert(k, v);
            })
            .map_err(MigrateError::Read)?;
        let mut have: BTreeMap<RollupKey, RollupValue> = BTreeMap::new();
        target
            .for_each_rollup(day, last, &mut |k, v| {
                have.insert(k, v);
            })
            .map_err(target_err)?;
        let mut fix: Vec<(RollupKey, Option<RollupValue>)> = want
            .iter()
            .filter(|(k, v)| have.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), Some(*v)))
            .collect();
        fix.extend(
            have.keys()
                .filter(|k| !want.contains_key(*k))
                .map(|k| (k.clone(), None)),
        );
        if !fix.is_empty() {
            for (k, _) in &fix {
                let (a, b) = days.unwrap_or((k.day, k.day));
                days = Some((a.min(k.day), b.max(k.day)));
            }
            rows += fix.len() as u64;
            target.restore_rollups(&fix).map_err(target_err)?;
        }
        if last == u32::MAX {
            break;
        }
        day = last + 1;
    }
    Ok((rows, days))
}

/// The [`MigrateError::Purged`] of `mismatches` (from [`verify`]): names the days.
fn purged(source: &dyn Store, mismatches: &[String]) -> Result<MigrateError, StoreError> {
    // the days: rollup rows of the source and of its records that differ
    let mut stored: BTreeMap<crate::rollup::RollupKey, crate::rollup::RollupValue> =
        BTreeMap::new();
    source.for_each_rollup(0, u32::MAX, &mut |k, v| {
        stored.insert(k, v);
    })?;
    let mut made: BTreeMap<crate::rollup::RollupKey, crate::rollup::RollupValue> = BTreeMap::new();
    source.for_each_record(&mut |r| {
        for (k, v) in crate::rollup::contributions(&r) {
            made.entry(k).or_default().add(&v);
        }
    })?;
    let sums = |v: Option<&crate::rollup::RollupValue>| {
        v.map(|v| (v.allocated_gpu_ms, v.used_gpu_ms, v.energy_mj))
    };
    let days: Vec<u32> = stored
        .keys()
        .chain(made.keys())
        .filter(|k| sums(stored.get(k)) != sums(made.get(k)))
        .map(|k| k.day)
        .collect();
    let date = |d: u32| crate::day::format_day(d);
    let days = match (days.iter().min(), days.iter().max()) {
        (Some(a), Some(b)) if a == b => date(*a),
        (Some(a), Some(b)) => format!("{} to {}", date(*a), date(*b)),
        _ => "(the job counts only)".into(),
    };
    let mut examples = String::new();
    for (i, m) in mismatches.iter().take(SHOWN).enumerate() {
        if i > 0 {
            examples.push_str("; ");
        }
        let _ = write!(examples, "{m}");
    }
    Ok(MigrateError::Purged {
        count: mismatches.len(),
        days,
        examples,
    })
}

#[cfg(test)]
mod tests;
