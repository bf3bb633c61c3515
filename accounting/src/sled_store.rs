//! [`Store`] on sled 0.34.
//!
//! Layout (format 3). Everything the ingest path writes lives in one tree, `acct`, under a
//! one-byte prefix, so a batch is one [`sled::Tree::apply_batch`]: atomic, also across a
//! crash, and without the cost of a multi-tree transaction:
//! - `j` + job key (`cluster,job_id,`, the prefix of every [`sgpu_spool::RecordId::key`] of
//!   the job): the job's entry (`JobEntry`): its records' keys, in key order, each with
//!   where its JSON is in the record log (module `vlog`) and the first and last UTC day its
//!   span touches (so the by-day reads and retention need not read the log), and which
//!   `job_end` its `jobs` count went to. One small entry per job, not one row per record:
//!   sled costs several microseconds per written key, more the bigger its nodes, and a job's
//!   records mostly arrive together. Stored compactly (`StoredEntry` in postcard, varints):
//!   record keys without the job key they start with, the counted record by its place.
//! - `r` + day (4 bytes, big-endian, so a date range is a key range) + cluster + account
//!   (each a 4-byte length and its bytes): that day's rollup rows of that account
//!   (`RollupGroup`: per user, partition and GPU model, a [`RollupValue`]). One row per
//!   account and day rather than per rollup row: a batch of jobs touches a handful of days
//!   but thousands of (user, partition, model, day) rows, each of which would be a sled
//!   write. Stored compactly (`StoredGroup` in postcard): each name once, each row's totals
//!   a list of varints to which a new total is appended (`value_words`; older, shorter
//!   lists read 0 for it).
//! - `d` + day (4 bytes, big-endian) + batch number (8 bytes, big-endian): the job keys of
//!   that batch with a record whose span touches that day (each as a 4-byte length and its
//!   bytes). One row per day a batch touches, not one per record.
//! - `m` + name: metadata (`format`, and `seq`, the last batch number).
//! - `c` + record key (4-byte length and its bytes) + number (4 bytes, big-endian): a
//!   [`Conflict`]: a record that arrived under the key of a different stored record (the
//!   receive time, 8 bytes big-endian, then the record's JSON). Written in the batch's
//!   atomic step, kept through retention, never deleted: an admin judges it.
//!
//! Keys carry the job's run ([`sgpu_spool::RecordId::run`]) before the kind for runs after
//! the first, so a requeued job's runs are separate records of one job entry (its key is
//! the `cluster,job_id,` prefix). Keys of run 0 are the keys format 2 wrote before runs
//! existed: such a database is read as it is, its records being run 0.
//!
//! [`Store::put_batch`] appends the records' JSON to the record log and syncs it, then reads
//! what it needs (the batch's job entries and rollup rows) under the writer lock, so nothing
//! changes them in between, writes the batch, then `Db::flush` makes it durable
//! before it returns: that return is the acknowledgement. A crash before the flush leaves
//! log bytes nothing refers to (a resend appends them again). Node events live in their own
//! tree, `node_events`.
//!
//! The record log is compressed (zstd frames of up to 32 KiB of a batch's JSON lines) since
//! format 3. Format 3 reads format 2's databases as they are: their job entries
//! ([`ENTRY_V1`]: whole keys, fixed-width numbers), rollup groups ([`ROLLUP_V3`] and
//! before) and plain record log segments; each is rewritten in the new form only when a
//! batch changes it anyway. Opening one marks it format 3, so an older acctd refuses it. A
//! database written by format 1 (trees `records`, `rollups`, `counted`, `by_day`: one
//! row per record, per index entry and per counted job, written in a sled transaction) is
//! converted when opened, then its trees are dropped.
//!
//! Where the bytes go (bench/README.md, 1M synthetic jobs): the compressed record log, then
//! sled's own files (its log-structured pages hold the tree's rows about twice over).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use sgpu_spool::{NodeEvent, Record};

use crate::rollup::{RollupKey, RollupValue, contributions, job_count_key};
use crate::store::{
    Conflict, PurgeStats, PutOutcome, Store, StoreError, job_key, job_key_of, record_days,
};

mod vlog;
use vlog::{Loc, ValueLog};

/// How long [`SledStore::open`] waits for sled's lock on the database (see [`open_locked`]).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The layout version this code writes.
const FORMAT: &[u8] = b"3";
/// Format 2: the same trees, job entries of [`ENTRY_V1`], plain record log segments. Read
/// as it is (format 3 reads both forms); opening marks it format 3, so that an acctd of
/// format 2 refuses it instead of misreading the entries written since.
const FORMAT_2: &[u8] = b"2";
/// Prefixes in the `acct` tree.
const JOB: u8 = b'j';
const ROLLUP: u8 = b'r';
const DAY: u8 = b'd';
const META: u8 = b'm';
const CONFLICT: u8 = b'c';
/// Records per chunk when converting a format 1 database.
const CONVERT_CHUNK: usize = if cfg!(test) { 2 } else { 50_000 };
/// Format 2's job entry encoding's version byte (length-prefixed parts, whole record keys,
/// 16-byte plain locations); still read.
const ENTRY_V1: u8 = 1;
/// The job entry encoding written since format 3 ([`StoredEntry`] in postcard).
const ENTRY_V2: u8 = 2;
/// A rollup group whose values carry idle time too (48 bytes); groups of [`ENTRY_V1`]
/// (32-byte values, idle not measured) are still read.
const ROLLUP_V2: u8 = 2;
/// A rollup group whose values carry MIG slice time too ([`RollupValue::encode`], 56
/// bytes); groups of [`ROLLUP_V2`] are still read (slice time 0).
const ROLLUP_V3: u8 = 3;
/// The rollup group encoding written since format 3 ([`StoredGroup`] in postcard); groups
/// of [`ROLLUP_V3`] and before are still read.
const ROLLUP_V4: u8 = 4;

/// The sled-backed store.
pub struct SledStore {
    db: sled::Db,
    /// Jobs, rollups, the by-day index and metadata (see the module documentation).
    acct: sled::Tree,
    /// Serialises writers of `acct`: the ingest path reads, then writes.
    writer: std::sync::Mutex<Writer>,
    /// Node events (drain/resume history), key [`NodeEvent::key`], value its JSON.
    events: sled::Tree,
    /// The records' JSON.
    vlog: ValueLog,
    /// Held (shared) by a batch from its log append until sled refers to what it appended;
    /// purge takes it (exclusive) for a moment to learn the first segment no batch in flight
    /// can be using, and deletes only segments before it.
    appending: std::sync::RwLock<()>,
    /// One purge at a time.
    purging: std::sync::Mutex<()>,
}

/// Records of a format 1 database on their way to format 2: key, JSON, record, whether
/// its job was counted through it; and the last job key seen.
#[derive(Default)]
struct Format1Chunk {
    records: Vec<(Vec<u8>, Vec<u8>, Record, bool)>,
    last_job: Option<Vec<u8>>,
}

/// What the writer lock guards besides the right to write.
struct Writer {
    /// The last batch number written.
    seq: u64,
}

/// Opens sled's database at `path`, waiting up to [`LOCK_WAIT`] for its lock (sled holds an
/// exclusive `flock` on its file): a handle just dropped can keep it a moment (sled's
/// flusher thread lets go after the drop), and so can a child process forked in between
/// (until it execs). Another process that really holds it still fails the open, naming the
/// lock, after the wait.
fn open_locked(path: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new().path(path).open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.map_err(engine),
        }
    }
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

fn prefixed(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(prefix);
    k.extend_from_slice(rest);
    k
}

fn day_key(day: u32, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(13);
    k.push(DAY);
    k.extend_from_slice(&day.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn put_len(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Splits `b` into length-prefixed parts (see [`put_len`]); `None` if malformed.
fn split_lens(mut b: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (len, rest) = b.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        if rest.len() < len {
            return None;
        }
        out.push(&rest[..len]);
        b = &rest[len..];
    }
    Some(out)
}

/// Where one record is, and the UTC days its span touches ([`record_days`]).
#[derive(Debug, Clone, Copy)]
struct Slot {
    loc: Loc,
    first_day: u32,
    last_day: u32,
}

impl Slot {
    fn of(loc: Loc, r: &Record) -> Slot {
        let days = record_days(r);
        Slot {
            loc,
            first_day: *days.start(),
            last_day: *days.end(),
        }
    }

    fn touches(&self, day: u32) -> bool {
        (self.first_day..=self.last_day).contains(&day)
    }
}

/// A job's stored records and the one its `jobs` count went to.
#[derive(Debug, Default)]
struct JobEntry {
    /// The record key of the `job_end` counted in `jobs`, if one was.
    counted: Option<Vec<u8>>,
    /// Record key to where its JSON is.
    records: BTreeMap<Vec<u8>, Slot>,
}

/// Which of a job's records was counted, in a stored [`ENTRY_V2`] entry.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum StoredCounted {
    /// The record at this place in key order.
    At(u32),
    /// A record no longer stored (retention purged it), by its key past the job key.
    Gone(Vec<u8>),
}

/// One record of a stored [`ENTRY_V2`] entry.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StoredSlot {
    /// The record key past the job key (the entry's own key).
    suffix: Vec<u8>,
    loc: Loc,
    first_day: u32,
    /// Last day minus first day.
    days: u32,
}

/// A job entry's stored form since format 3 (postcard: integers as varints), after the
/// version byte [`ENTRY_V2`]. Record keys are stored without the job key they all start
/// with, and the counted record by its place.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StoredEntry {
    counted: Option<StoredCounted>,
    records: Vec<StoredSlot>,
}

impl JobEntry {
    /// Stored form under sled key `key` (the job's key with its prefix): version byte
    /// [`ENTRY_V2`], then [`StoredEntry`] in postcard.
    fn encode(&self, key: &[u8]) -> Result<Vec<u8>, StoreError> {
        let jk = key.get(1..).unwrap_or_default();
        let suffix = |k: &[u8]| k.strip_prefix(jk).unwrap_or(k).to_vec();
        let counted =
            self.counted
                .as_ref()
                .map(|c| match self.records.keys().position(|k| k == c) {
                    Some(i) => StoredCounted::At(u32::try_from(i).unwrap_or(u32::MAX)),
                    None => StoredCounted::Gone(suffix(c)),
                });
        let mut records = Vec::with_capacity(self.records.len());
        for (k, slot) in &self.records {
            if !k.starts_with(jk) {
                return Err(corrupt(k, "a record key outside its job's entry"));
            }
            records.push(StoredSlot {
                suffix: suffix(k),
                loc: slot.loc,
                first_day: slot.first_day,
                days: slot.last_day.saturating_sub(slot.first_day),
            });
        }
        let stored = StoredEntry { counted, records };
        let mut out = vec![ENTRY_V2];
        postcard::to_io(&stored, &mut out)
            .map_err(|e| corrupt(key, format!("job entry not encoded: {e}")))?;
        Ok(out)
    }

    /// Format 2's stored form ([`ENTRY_V1`]): version byte, then length-prefixed parts: the
    /// counted key (empty when none), then per record in key order its key and 24 bytes:
    /// location (16), first and last day (4 each, big-endian). Only tests write it now.
    #[cfg(test)]
    fn encode_v1(&self) -> Vec<u8> {
        let mut out = vec![ENTRY_V1];
        put_len(&mut out, self.counted.as_deref().unwrap_or(&[]));
        let mut slot = Vec::with_capacity(24);
        for (k, v) in &self.records {
            put_len(&mut out, k);
            slot.clear();
            v.loc
                .encode_plain(&mut slot)
                .expect("format 2 knew only plain segments");
            slot.extend_from_slice(&v.first_day.to_be_bytes());
            slot.extend_from_slice(&v.last_day.to_be_bytes());
            put_len(&mut out, &slot);
        }
        out
    }

    /// Reads either stored form; `key` is the sled key (the job's key with its prefix).
    fn decode(key: &[u8], b: &[u8]) -> Result<JobEntry, StoreError> {
        match b.first() {
            Some(&ENTRY_V2) => Self::decode_v2(key, &b[1..]),
            Some(&ENTRY_V1) => Self::decode_v1(key, &b[1..]),
            Some(version) => Err(corrupt(
                key,
                format!(
                    "job entry (tree acct) version {version} is unknown to this acctd: upgrade it"
                ),
            )),
            None => Err(corrupt(key, "job entry (tree acct) is empty")),
        }
    }

    fn decode_v2(key: &[u8], b: &[u8]) -> Result<JobEntry, StoreError> {
        let bad = |why: String| corrupt(key, format!("job entry (tree acct) is malformed: {why}"));
        let stored: StoredEntry = postcard::from_bytes(b).map_err(|e| bad(e.to_string()))?;
        let jk = key.get(1..).unwrap_or_default();
        let full = |suffix: &[u8]| [jk, suffix].concat();
        let mut keys = Vec::with_capacity(stored.records.len());
        let mut records = BTreeMap::new();
        for s in &stored.records {
            let k = full(&s.suffix);
            let slot = Slot {
                loc: s.loc,
                first_day: s.first_day,
                last_day: s
                    .first_day
                    .checked_add(s.days)
                    .ok_or_else(|| bad("its last day is past the calendar".into()))?,
            };
            keys.push(k.clone());
            records.insert(k, slot);
        }
        if records.len() != keys.len() {
            return Err(bad("a record twice".into()));
        }
        let counted = match stored.counted {
            None => None,
            Some(StoredCounted::Gone(suffix)) => Some(full(&suffix)),
            Some(StoredCounted::At(i)) => Some(
                usize::try_from(i)
                    .ok()
                    .and_then(|i| keys.get(i))
                    .cloned()
                    .ok_or_else(|| bad(format!("counted record {i} of {}", keys.len())))?,
            ),
        };
        Ok(JobEntry { counted, records })
    }

    fn decode_v1(key: &[u8], rest: &[u8]) -> Result<JobEntry, StoreError> {
        let bad = || corrupt(key, "job entry (tree acct, version 1) is malformed");
        let parts = split_lens(rest).ok_or_else(bad)?;
        let (counted, pairs) = parts.split_first().ok_or_else(bad)?;
        if pairs.len() % 2 != 0 {
            return Err(bad());
        }
        let records = pairs
            .chunks_exact(2)
            .map(|kv| {
                let (loc, days) = kv[1].split_at_checked(16)?;
                let (first, last) = days.split_first_chunk::<4>()?;
                let last: &[u8; 4] = last.try_into().ok()?;
                let slot = Slot {
                    loc: Loc::decode_plain(loc)?,
                    first_day: u32::from_be_bytes(*first),
                    last_day: u32::from_be_bytes(*last),
                };
                Some((kv[0].to_vec(), slot))
            })
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        Ok(JobEntry {
            counted: (!counted.is_empty()).then(|| counted.to_vec()),
            records,
        })
    }

    /// The records, read from `log` and decoded, in key order.
    fn decoded<'a>(
        &'a self,
        log: &'a ValueLog,
    ) -> impl Iterator<Item = Result<Record, StoreError>> + 'a {
        self.records
            .iter()
            .map(|(k, slot)| read_record(log, k, slot.loc))
    }
}

/// The record stored under `key` at `loc`: a record log that cannot be read there is an error
/// naming the record's key.
fn read_record(log: &ValueLog, key: &[u8], loc: Loc) -> Result<Record, StoreError> {
    let json = log
        .read(loc)
        .map_err(|e| corrupt(key, format!("its JSON in the record log: {e}")))?;
    decode_record(key, &json)
}

fn decode_record(key: &[u8], value: &[u8]) -> Result<Record, StoreError> {
    Record::from_json(value).map_err(|e| corrupt(key, e.to_string()))
}

/// The stored key of the group holding rollup row `k`: `r`, day, cluster, account.
fn group_key(k: &RollupKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(13 + k.cluster.len() + k.account.len());
    out.push(ROLLUP);
    out.extend_from_slice(&k.day.to_be_bytes());
    put_len(&mut out, k.cluster.as_bytes());
    put_len(&mut out, k.account.as_bytes());
    out
}

/// One account's rollup rows of one day: (user, partition, GPU model) to totals.
#[derive(Debug, Default)]
struct RollupGroup {
    rows: BTreeMap<(String, String, String), RollupValue>,
}

/// A rollup group's stored form since format 3 (postcard: integers as varints), after the
/// version byte [`ROLLUP_V4`]: each name once, rows by the names' places.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StoredGroup {
    /// The users, partitions and GPU models of the rows, each once.
    names: Vec<String>,
    /// Per row: its user, partition and model (places in `names`) and its totals
    /// ([`value_words`]).
    rows: Vec<(u32, u32, u32, Vec<u64>)>,
}

/// How many totals a rollup row has ([`all_words`]).
const VALUE_WORDS: usize = 8;

/// A rollup value's totals in their stored order: allocated, used, energy, jobs, idle, idle
/// measured, slice time, unmeasured used time. A new field goes at the end: groups stored
/// before it have shorter lists, which [`value_of_words`] reads as 0 for the missing ones,
/// so adding one needs no new version; for the same reason trailing zeros are not stored.
fn value_words(v: &RollupValue) -> Vec<u64> {
    // trailing zeros are left out: they read back as 0 (most rows have no idle or slice time)
    let mut w = all_words(v).to_vec();
    while w.last() == Some(&0) {
        w.pop();
    }
    w
}

/// Every total of `v` in [`value_words`]' order, zeros included.
fn all_words(v: &RollupValue) -> [u64; VALUE_WORDS] {
    // every field, by name: a field added to RollupValue and not here does not compile
    let RollupValue {
        allocated_gpu_ms,
        used_gpu_ms,
        energy_mj,
        jobs,
        idle_gpu_ms,
        idle_measured_gpu_ms,
        slice_ms,
        used_unmeasured_gpu_ms,
    } = *v;
    [
        allocated_gpu_ms,
        used_gpu_ms,
        energy_mj,
        jobs,
        idle_gpu_ms,
        idle_measured_gpu_ms,
        slice_ms,
        used_unmeasured_gpu_ms,
    ]
}

/// The rollup value of stored totals ([`value_words`]); missing ones (stored before their
/// field existed) are 0; `None` if there are more than this acctd knows.
fn value_of_words(w: &[u64]) -> Option<RollupValue> {
    let word = |i: usize| w.get(i).copied().unwrap_or(0);
    let v = RollupValue {
        allocated_gpu_ms: word(0),
        used_gpu_ms: word(1),
        energy_mj: word(2),
        jobs: word(3),
        idle_gpu_ms: word(4),
        idle_measured_gpu_ms: word(5),
        slice_ms: word(6),
        used_unmeasured_gpu_ms: word(7),
    };
    (w.len() <= VALUE_WORDS).then_some(v)
}

impl RollupGroup {
    /// Stored form: version byte ([`ROLLUP_V4`]), then [`StoredGroup`] in postcard.
    fn encode(&self, key: &[u8]) -> Result<Vec<u8>, StoreError> {
        fn place<'a>(
            name: &'a str,
            names: &mut Vec<String>,
            places: &mut BTreeMap<&'a str, u32>,
        ) -> u32 {
            *places.entry(name).or_insert_with(|| {
                names.push(name.to_string());
                u32::try_from(names.len() - 1).unwrap_or(u32::MAX)
            })
        }
        let mut names: Vec<String> = Vec::new();
        let mut places: BTreeMap<&str, u32> = BTreeMap::new();
        let mut rows = Vec::with_capacity(self.rows.len());
        for ((user, partition, model), v) in &self.rows {
            rows.push((
                place(user, &mut names, &mut places),
                place(partition, &mut names, &mut places),
                place(model, &mut names, &mut places),
                value_words(v),
            ));
        }
        let mut out = vec![ROLLUP_V4];
        postcard::to_io(&StoredGroup { names, rows }, &mut out)
            .map_err(|e| corrupt(key, format!("rollup group not encoded: {e}")))?;
        Ok(out)
    }

    /// The stored form of [`ROLLUP_V3`]: version byte, then per row user, partition and
    /// model (each a 4-byte length and its bytes) and the 56-byte [`RollupValue::encode`].
    /// Only tests write it now.
    #[cfg(test)]
    fn encode_v3(&self) -> Vec<u8> {
        let mut out = vec![ROLLUP_V3];
        for ((user, partition, model), v) in &self.rows {
            put_len(&mut out, user.as_bytes());
            put_len(&mut out, partition.as_bytes());
            put_len(&mut out, model.as_bytes());
            out.extend_from_slice(&v.encode());
        }
        out
    }

    fn decode(key: &[u8], b: &[u8]) -> Result<RollupGroup, StoreError> {
        let bad = || corrupt(key, "rollup group (tree acct) is malformed");
        let (&version, mut rest) = b.split_first().ok_or_else(bad)?;
        let value_len = match version {
            ROLLUP_V4 => return Self::decode_v4(key, rest),
            ENTRY_V1 => 32,
            ROLLUP_V2 => 48,
            ROLLUP_V3 => RollupValue::ENCODED_LEN,
            _ => {
                return Err(corrupt(
                    key,
                    format!(
                        "rollup group (tree acct) version {version} is unknown to this acctd: \
                         upgrade it"
                    ),
                ));
            }
        };
        let mut rows = BTreeMap::new();
        let text = |rest: &mut &[u8]| -> Option<String> {
            let (len, r) = rest.split_first_chunk::<4>()?;
            let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
            let (s, r) = (r.get(..len)?, r.get(len..)?);
            *rest = r;
            String::from_utf8(s.to_vec()).ok()
        };
        while !rest.is_empty() {
            let user = text(&mut rest).ok_or_else(bad)?;
            let partition = text(&mut rest).ok_or_else(bad)?;
            let model = text(&mut rest).ok_or_else(bad)?;
            let v = rest.get(..value_len).ok_or_else(bad)?;
            rest = &rest[value_len..];
            let v = RollupValue::decode(v).ok_or_else(bad)?;
            rows.insert((user, partition, model), v);
        }
        Ok(RollupGroup { rows })
    }

    fn decode_v4(key: &[u8], b: &[u8]) -> Result<RollupGroup, StoreError> {
        let bad =
            |why: String| corrupt(key, format!("rollup group (tree acct) is malformed: {why}"));
        let stored: StoredGroup = postcard::from_bytes(b).map_err(|e| bad(e.to_string()))?;
        let name = |i: u32| {
            usize::try_from(i)
                .ok()
                .and_then(|i| stored.names.get(i))
                .cloned()
                .ok_or_else(|| bad(format!("name {i} of {}", stored.names.len())))
        };
        let mut rows = BTreeMap::new();
        for (user, partition, model, words) in &stored.rows {
            let value = value_of_words(words).ok_or_else(|| {
                bad(format!(
                    "{} totals in a row: upgrade acctd (this one knows {VALUE_WORDS})",
                    words.len(),
                ))
            })?;
            rows.insert((name(*user)?, name(*partition)?, name(*model)?), value);
        }
        if rows.len() != stored.rows.len() {
            return Err(bad("a row twice".into()));
        }
        Ok(RollupGroup { rows })
    }

    fn add(&mut self, k: &RollupKey, v: &RollupValue) {
        self.rows
            .entry((k.user.clone(), k.partition.clone(), k.gpu_model.clone()))
            .or_default()
            .add(v);
    }
}

/// The day, cluster and account of a stored group key.
fn decode_group_key(k: &[u8]) -> Option<(u32, String, String)> {
    let rest = k.strip_prefix(&[ROLLUP])?;
    let (day, rest) = rest.split_first_chunk::<4>()?;
    let parts = split_lens(rest)?;
    let [cluster, account] = parts.as_slice() else {
        return None;
    };
    Some((
        u32::from_be_bytes(*day),
        String::from_utf8(cluster.to_vec()).ok()?,
        String::from_utf8(account.to_vec()).ok()?,
    ))
}

/// Adds `adds` (rollup rows) to the stored groups: one read and one write per group.
fn add_rollups(
    tree: &sled::Tree,
    batch: &mut sled::Batch,
    adds: &BTreeMap<RollupKey, RollupValue>,
) -> Result<(), StoreError> {
    let mut groups: BTreeMap<Vec<u8>, RollupGroup> = BTreeMap::new();
    for (k, add) in adds {
        let gk = group_key(k);
        let group = match groups.entry(gk) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let stored = match tree.get(e.key()).map_err(engine)? {
                    Some(v) => RollupGroup::decode(e.key(), &v)?,
                    None => RollupGroup::default(),
                };
                e.insert(stored)
            }
        };
        group.add(k, add);
    }
    for (gk, group) in groups {
        let value = group.encode(&gk)?;
        batch.insert(gk, value);
    }
    Ok(())
}

/// The prefix of the kept conflicts of record key `key`.
fn conflict_prefix(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + key.len());
    k.push(CONFLICT);
    put_len(&mut k, key);
    k
}

/// A record's key and its JSON for the record log.
type Encoded<'a> = (Vec<u8>, std::borrow::Cow<'a, [u8]>);

/// Each record's key and JSON for the record log: the JSON as received where there is one on
/// a single line (the log is one record per line), else the record serialised.
fn encode_records<'a>(
    records: &[Record],
    received: Option<&[&'a [u8]]>,
) -> Result<Vec<Encoded<'a>>, StoreError> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let json = match received.and_then(|j| j.get(i)) {
                Some(j) if !j.contains(&b'\n') => std::borrow::Cow::Borrowed(*j),
                _ => std::borrow::Cow::Owned(
                    r.to_json().map_err(|e| StoreError::Engine(e.to_string()))?,
                ),
            };
            Ok((r.id().key().into_bytes(), json))
        })
        .collect()
}

/// What one batch of records changes: its job entries (each loaded once, written once, with
/// a dirty flag), rollup additions (summed first: one read-modify-write per row), the by-day
/// index and the conflicts it keeps ((key, number) to JSON).
#[derive(Default)]
struct BatchChanges<'a> {
    jobs: BTreeMap<&'a [u8], (JobEntry, bool)>,
    rollups: BTreeMap<RollupKey, RollupValue>,
    days: BTreeMap<u32, BTreeSet<&'a [u8]>>,
    conflicts: BTreeMap<(&'a [u8], u32), &'a [u8]>,
}

/// A kept conflict's stored value: receive time, then the record's JSON.
fn encode_conflict(received_ms: u64, json: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + json.len());
    v.extend_from_slice(&received_ms.to_be_bytes());
    v.extend_from_slice(json);
    v
}

fn decode_conflict(k: &[u8], v: &[u8]) -> Result<Conflict, StoreError> {
    let bad = || corrupt(k, "conflict entry is malformed");
    let rest = k.strip_prefix(&[CONFLICT]).ok_or_else(bad)?;
    let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
    let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| bad())?;
    let key = rest.get(..len).ok_or_else(bad)?;
    let (at, json) = v.split_first_chunk::<8>().ok_or_else(bad)?;
    Ok(Conflict {
        key: String::from_utf8_lossy(key).into_owned(),
        received_ms: u64::from_be_bytes(*at),
        record: decode_record(k, json)?,
    })
}

impl SledStore {
    /// Opens (creating if needed) the database directory at `path`, converting a format 1
    /// database.
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        let db = open_locked(path)?;
        let acct = db.open_tree("acct").map_err(engine)?;
        let store = SledStore {
            events: db.open_tree("node_events").map_err(engine)?,
            writer: std::sync::Mutex::new(Writer { seq: 0 }),
            vlog: ValueLog::open(&path.join("records"))?,
            appending: std::sync::RwLock::new(()),
            purging: std::sync::Mutex::new(()),
            acct,
            db,
        };
        match store.acct.get([META, b'f']).map_err(engine)? {
            Some(f) if f.as_ref() == FORMAT => {}
            Some(f) if f.as_ref() == FORMAT_2 => {
                // nothing to convert: entries and segments of format 2 are read as they are
                store.acct.insert([META, b'f'], FORMAT).map_err(engine)?;
                store.flush()?;
                tracing::info!(
                    "database format 2 opened as format 3 (records compressed from now on)"
                );
            }
            Some(f) => {
                return Err(corrupt(
                    b"mf",
                    format!(
                        "database format {} is unknown to this acctd (it writes {}): run the \
                         acctd that wrote it, or restore a backup",
                        String::from_utf8_lossy(&f),
                        String::from_utf8_lossy(FORMAT)
                    ),
                ));
            }
            None => store.convert_format1()?,
        }
        if let Some(v) = store.acct.get([META, b's']).map_err(engine)? {
            let b: [u8; 8] = v
                .as_ref()
                .try_into()
                .map_err(|_| corrupt(b"ms", "batch number is not 8 bytes"))?;
            store.writer().seq = u64::from_be_bytes(b);
        }
        Ok(store)
    }

    /// Converts a format 1 database (if any) and marks the database format 2.
    ///
    /// Jobs are converted in chunks of about [`CONVERT_CHUNK`] records (a job's records
    /// are adjacent in key order), each written with its own day index rows (numbered by
    /// chunk); the rollups and the format mark come last, written whole (not added). A
    /// conversion cut short is therefore done again from the start and writes the same rows;
    /// it only leaves the first attempt's copies of the records in the log, unreferenced.
    fn convert_format1(&self) -> Result<(), StoreError> {
        let names = self.db.tree_names();
        let has = |n: &str| names.iter().any(|t| t.as_ref() == n.as_bytes());
        if !has("records") {
            self.acct.insert([META, b'f'], FORMAT).map_err(engine)?;
            return self.flush();
        }
        tracing::info!("converting the database from format 1 (one row per record)");
        let records = self.db.open_tree("records").map_err(engine)?;
        let counted = self.db.open_tree("counted").map_err(engine)?;
        let rollups = self.db.open_tree("rollups").map_err(engine)?;
        let mut chunk = Format1Chunk::default();
        let (mut chunk_no, mut converted) = (0u64, 0usize);
        for kv in records.iter() {
            let (k, v) = kv.map_err(engine)?;
            let r = decode_record(&k, &v)?;
            let jk = job_key_of(&k).ok_or_else(|| corrupt(&k, "not a record key"))?;
            if chunk.records.len() >= CONVERT_CHUNK && chunk.last_job.as_deref() != Some(jk) {
                converted += chunk.records.len();
                self.write_format1_chunk(std::mem::take(&mut chunk), chunk_no)?;
                chunk_no += 1;
            }
            // format 1 kept the counted row's key per job: the first job_end (in key order)
            // that counts into that row is the one counted
            let counts = match job_count_key(&r) {
                Some(ck) => {
                    let marker = format!("{},{}", r.id().cluster(), r.id().job_id());
                    let was = counted.get(marker.as_bytes()).map_err(engine)?;
                    was.as_deref() == Some(ck.encode().as_slice())
                }
                None => false,
            };
            chunk.last_job = Some(jk.to_vec());
            chunk.records.push((k.to_vec(), v.to_vec(), r, counts));
        }
        converted += chunk.records.len();
        self.write_format1_chunk(chunk, chunk_no)?;
        let mut groups: BTreeMap<Vec<u8>, RollupGroup> = BTreeMap::new();
        for kv in rollups.iter() {
            let (k, v) = kv.map_err(engine)?;
            let key = RollupKey::decode(&k).ok_or_else(|| corrupt(&k, "bad rollup key"))?;
            let value = RollupValue::decode(&v).ok_or_else(|| corrupt(&k, "bad rollup value"))?;
            groups.entry(group_key(&key)).or_default().add(&key, &value);
        }
        let mut batch = sled::Batch::default();
        for (gk, group) in groups {
            let value = group.encode(&gk)?;
            batch.insert(gk, value);
        }
        // batches are numbered after the chunks (their day index rows must not collide)
        batch.insert(&[META, b's'][..], &(chunk_no + 1).to_be_bytes()[..]);
        batch.insert(&[META, b'f'][..], FORMAT);
        self.acct.apply_batch(batch).map_err(engine)?;
        self.flush()?;
        for t in ["records", "rollups", "counted", "by_day"] {
            if has(t) {
                self.db.drop_tree(t).map_err(engine)?;
            }
        }
        tracing::info!(records = converted, "database converted to format 2");
        self.flush()
    }

    /// Writes one chunk of a format 1 conversion: the records to the log (synced), then
    /// their jobs' entries and day index rows.
    fn write_format1_chunk(&self, chunk: Format1Chunk, chunk_no: u64) -> Result<(), StoreError> {
        if chunk.records.is_empty() {
            return Ok(());
        }
        let items: Vec<&[u8]> = chunk
            .records
            .iter()
            .map(|(_, v, _, _)| v.as_slice())
            .collect();
        let (locs, file) = self.vlog.append(&items)?;
        ValueLog::sync(&file)?;
        let mut jobs: BTreeMap<&[u8], JobEntry> = BTreeMap::new();
        let mut days: BTreeMap<u32, BTreeSet<&[u8]>> = BTreeMap::new();
        for ((k, _, r, counts), loc) in chunk.records.iter().zip(locs) {
            let jk = job_key_of(k).ok_or_else(|| corrupt(k, "not a record key"))?;
            let entry = jobs.entry(jk).or_default();
            if *counts && entry.counted.is_none() {
                entry.counted = Some(k.clone());
            }
            entry.records.insert(k.clone(), Slot::of(loc, r));
            for day in record_days(r) {
                days.entry(day).or_default().insert(jk);
            }
        }
        let mut batch = sled::Batch::default();
        for (jk, entry) in &jobs {
            let key = prefixed(JOB, jk);
            let value = entry.encode(&key)?;
            batch.insert(key, value);
        }
        for (day, keys) in &days {
            let mut list = Vec::new();
            for k in keys {
                put_len(&mut list, k);
            }
            // batch numbers start above the chunks' (see convert_format1)
            batch.insert(day_key(*day, chunk_no), list);
        }
        self.acct.apply_batch(batch).map_err(engine)?;
        self.flush()
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(engine)
    }

    /// Number of stored records.
    pub fn record_count(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.acct.scan_prefix([JOB]) {
            let (k, v) = kv.map_err(engine)?;
            n += JobEntry::decode(&k, &v)?.records.len();
        }
        Ok(n)
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn for_each_in(&self, entry: &JobEntry, f: &mut dyn FnMut(Record)) -> Result<(), StoreError> {
        for r in entry.decoded(&self.vlog) {
            f(r?);
        }
        Ok(())
    }

    /// [`Store::put_batch`], keeping the JSON as received where there is one on a single
    /// line (the record log is one record per line), else serialising the record.
    fn put(
        &self,
        records: &[Record],
        received: Option<&[&[u8]]>,
    ) -> Result<Vec<PutOutcome>, StoreError> {
        let encoded = encode_records(records, received)?;
        let appending = self
            .appending
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let items: Vec<&[u8]> = encoded.iter().map(|(_, j)| j.as_ref()).collect();
        let (locs, file) = self.vlog.append(&items)?;
        ValueLog::sync(&file)?;
        let mut writer = self.writer();
        let mut outcomes = Vec::with_capacity(records.len());
        let mut changes = BatchChanges::default();
        let received_ms = sgpu_spool::now_ms();
        for ((r, (key, json)), loc) in records.iter().zip(&encoded).zip(locs) {
            let jk = job_key_of(key).ok_or_else(|| corrupt(key, "not a record key"))?;
            let (entry, dirty) = match changes.jobs.entry(jk) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert((self.load_job(jk)?.unwrap_or_default(), false))
                }
            };
            if let Some(old) = entry.records.get(key) {
                // the same text, or (sent with other spacing) the same record
                let stored = self
                    .vlog
                    .read(old.loc)
                    .map_err(|e| corrupt(key, format!("its JSON in the record log: {e}")))?;
                let differs = stored != json.as_ref() && decode_record(key, &stored)? != *r;
                if differs {
                    let new = self.keep_conflict(key, r, json, &mut changes.conflicts)?;
                    if new {
                        tracing::error!(
                            key = %String::from_utf8_lossy(key),
                            "a different record arrived under a stored record's identity: the \
                             stored one stays counted, the new one is kept as a conflict for an \
                             admin (GET /v1/conflicts)"
                        );
                    }
                    outcomes.push(PutOutcome::Conflict { new });
                } else {
                    outcomes.push(PutOutcome::Duplicate { differs: false });
                }
                continue;
            }
            entry.records.insert(key.clone(), Slot::of(loc, r));
            *dirty = true;
            let mut adds = contributions(r);
            if entry.counted.is_none() {
                if let Some(k) = job_count_key(r) {
                    entry.counted = Some(key.clone());
                    adds.entry(k).or_default().jobs += 1;
                }
            }
            for (k, add) in adds {
                changes.rollups.entry(k).or_default().add(&add);
            }
            for day in record_days(r) {
                changes.days.entry(day).or_default().insert(jk);
            }
            outcomes.push(PutOutcome::Accepted);
        }
        self.apply_changes(&changes, &mut writer, received_ms)?;
        // Flushes overlap (outside the lock): a flush makes durable everything written
        // before it, this batch included.
        drop(writer);
        drop(appending);
        self.flush()?;
        Ok(outcomes)
    }

    /// Writes a batch's changes as one sled batch (atomic across a crash): the job entries it
    /// changed, its rollup additions, the conflicts it kept and its by-day index rows under
    /// the next batch number.
    fn apply_changes(
        &self,
        changes: &BatchChanges<'_>,
        writer: &mut Writer,
        received_ms: u64,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (jk, (entry, dirty)) in &changes.jobs {
            if *dirty {
                let key = prefixed(JOB, jk);
                let value = entry.encode(&key)?;
                batch.insert(key, value);
            }
        }
        add_rollups(&self.acct, &mut batch, &changes.rollups)?;
        for ((key, n), json) in &changes.conflicts {
            let mut k = conflict_prefix(key);
            k.extend_from_slice(&n.to_be_bytes());
            batch.insert(k, encode_conflict(received_ms, json));
        }
        if changes.days.is_empty() && !changes.conflicts.is_empty() {
            self.acct.apply_batch(batch).map_err(engine)?;
        } else if !changes.days.is_empty() {
            // every accepted record touches at least one day: no day, nothing to write
            let seq = writer.seq + 1;
            for (day, keys) in &changes.days {
                let mut list = Vec::new();
                for k in keys {
                    put_len(&mut list, k);
                }
                batch.insert(day_key(*day, seq), list);
            }
            batch.insert(&[META, b's'][..], &seq.to_be_bytes()[..]);
            self.acct.apply_batch(batch).map_err(engine)?;
            writer.seq = seq;
        }
        Ok(())
    }

    /// Purge, without a lock: the jobs with a record whose last day is before `cutoff`, and
    /// the record log segments that records kept are in.
    fn purge_candidates(&self, cutoff: u32) -> Result<(Vec<Vec<u8>>, BTreeSet<u32>), StoreError> {
        let mut candidates: Vec<Vec<u8>> = Vec::new();
        let mut live: BTreeSet<u32> = BTreeSet::new();
        for kv in self.acct.scan_prefix([JOB]) {
            let (k, v) = kv.map_err(engine)?;
            let entry = JobEntry::decode(&k, &v)?;
            let mut drops = false;
            for slot in entry.records.values() {
                if slot.last_day < cutoff {
                    drops = true;
                } else {
                    live.insert(slot.loc.segment());
                }
            }
            if drops {
                candidates.push(k[1..].to_vec());
            }
        }
        Ok((candidates, live))
    }

    /// Purge, under the writer lock: drops the `candidates`' records before `cutoff` (a batch
    /// may have added to them since) and the purged jobs from the day index rows before it;
    /// adds the segments kept records are in to `live`.
    fn purge_records(
        &self,
        batch: &mut sled::Batch,
        cutoff: u32,
        candidates: &[Vec<u8>],
        live: &mut BTreeSet<u32>,
        stats: &mut PurgeStats,
    ) -> Result<(), StoreError> {
        let mut gone: BTreeSet<Vec<u8>> = BTreeSet::new();
        for jk in candidates {
            let Some(mut entry) = self.load_job(jk)? else {
                continue;
            };
            let before = entry.records.len();
            entry.records.retain(|_, slot| slot.last_day >= cutoff);
            stats.records += u64::try_from(before - entry.records.len()).unwrap_or(u64::MAX);
            if entry.records.is_empty() {
                // the counted marker goes with the job's last record
                batch.remove(prefixed(JOB, jk));
                gone.insert(jk.clone());
            } else {
                live.extend(entry.records.values().map(|s| s.loc.segment()));
                let key = prefixed(JOB, jk);
                let value = entry.encode(&key)?;
                batch.insert(key, value);
            }
        }
        // day index rows before the cutoff: drop the purged jobs
        let end = prefixed(DAY, &cutoff.to_be_bytes());
        for kv in self.acct.range(vec![DAY]..end) {
            let (k, v) = kv.map_err(engine)?;
            let list = split_lens(&v).ok_or_else(|| corrupt(&k, "bad day index row"))?;
            let kept: Vec<Vec<u8>> = list
                .iter()
                .filter(|jk| !gone.contains(**jk))
                .map(|jk| jk.to_vec())
                .collect();
            if kept.is_empty() {
                batch.remove(k.as_ref());
            } else if kept.len() < list.len() {
                batch.insert(k.as_ref(), encode_job_list(kept.iter()));
            }
        }
        Ok(())
    }

    /// Purge: the rollup rows of the days before `cutoff`.
    fn purge_rollups(
        &self,
        batch: &mut sled::Batch,
        cutoff: u32,
        stats: &mut PurgeStats,
    ) -> Result<(), StoreError> {
        let end = prefixed(ROLLUP, &cutoff.to_be_bytes());
        for kv in self.acct.range(vec![ROLLUP]..end) {
            let (k, v) = kv.map_err(engine)?;
            batch.remove(k.as_ref());
            let rows = RollupGroup::decode(&k, &v)?.rows.len();
            stats.rollups += u64::try_from(rows).unwrap_or(u64::MAX);
        }
        Ok(())
    }

    /// Whether `r` (JSON `json`, conflicting with the stored record under `key`) is a
    /// conflict not kept yet (stored or earlier in this batch); if so, adds it to `batch`
    /// with the next number for its key.
    fn keep_conflict<'a>(
        &self,
        key: &'a [u8],
        r: &Record,
        json: &'a [u8],
        batch: &mut BTreeMap<(&'a [u8], u32), &'a [u8]>,
    ) -> Result<bool, StoreError> {
        let mut count = 0u32;
        for kv in self.acct.scan_prefix(conflict_prefix(key)) {
            let (k, v) = kv.map_err(engine)?;
            count = count.saturating_add(1);
            if decode_conflict(&k, &v)?.record == *r {
                return Ok(false);
            }
        }
        for ((_, _), kept) in batch.range((key, 0)..=(key, u32::MAX)) {
            count = count.saturating_add(1);
            if decode_record(key, kept)? == *r {
                return Ok(false);
            }
        }
        batch.insert((key, count), json);
        Ok(true)
    }

    fn load_job(&self, jk: &[u8]) -> Result<Option<JobEntry>, StoreError> {
        let key = prefixed(JOB, jk);
        match self.acct.get(&key).map_err(engine)? {
            Some(v) => JobEntry::decode(&key, &v).map(Some),
            None => Ok(None),
        }
    }
}

fn encode_job_list<'a>(keys: impl Iterator<Item = &'a Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for k in keys {
        put_len(&mut out, k);
    }
    out
}

impl Store for SledStore {
    fn put_batch(&self, records: &[Record]) -> Result<Vec<PutOutcome>, StoreError> {
        self.put(records, None)
    }

    fn put_received(
        &self,
        records: &[Record],
        json: &[&[u8]],
    ) -> Result<Vec<PutOutcome>, StoreError> {
        self.put(records, Some(json))
    }

    fn job(&self, cluster: &str, job_id: u32) -> Result<Vec<Record>, StoreError> {
        let Some(jk) = job_key(cluster, job_id) else {
            return Ok(Vec::new());
        };
        match self.load_job(&jk)? {
            Some(entry) => entry.decoded(&self.vlog).collect(),
            None => Ok(Vec::new()),
        }
    }

    fn for_each_record_on_day(
        &self,
        day: u32,
        f: &mut dyn FnMut(Record),
    ) -> Result<(), StoreError> {
        let mut prefix = vec![DAY];
        prefix.extend_from_slice(&day.to_be_bytes());
        let mut jobs: BTreeSet<Vec<u8>> = BTreeSet::new();
        for kv in self.acct.scan_prefix(&prefix) {
            let (k, v) = kv.map_err(engine)?;
            let list = split_lens(&v).ok_or_else(|| corrupt(&k, "bad day index row"))?;
            jobs.extend(list.into_iter().map(<[u8]>::to_vec));
        }
        for jk in &jobs {
            // purged jobs may leave index entries behind: skip them
            let Some(entry) = self.load_job(jk)? else {
                continue;
            };
            for (k, slot) in &entry.records {
                if slot.touches(day) {
                    f(read_record(&self.vlog, k, slot.loc)?);
                }
            }
        }
        Ok(())
    }

    fn days_with_records(&self, first_day: u32, last_day: u32) -> Result<Vec<u32>, StoreError> {
        let start = prefixed(DAY, &first_day.to_be_bytes());
        let mut days = Vec::new();
        let mut next = Some(start);
        // one seek per day that has index rows: jump past each day's rows
        while let Some(from) = next.take() {
            let end = match last_day.checked_add(1) {
                Some(e) => prefixed(DAY, &e.to_be_bytes()),
                None => vec![DAY + 1],
            };
            let Some(kv) = self.acct.range(from..end).next() else {
                break;
            };
            let (k, _) = kv.map_err(engine)?;
            let day = k
                .get(1..5)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| corrupt(&k, "bad day index key"))?;
            days.push(day);
            next = day
                .checked_add(1)
                .filter(|d| *d <= last_day)
                .map(|d| prefixed(DAY, &d.to_be_bytes()));
        }
        Ok(days)
    }

    fn counted_in(&self, cluster: &str, job_id: u32) -> Result<Option<RollupKey>, StoreError> {
        let Some(jk) = job_key(cluster, job_id) else {
            return Ok(None);
        };
        let Some(entry) = self.load_job(&jk)? else {
            return Ok(None);
        };
        let Some(ck) = &entry.counted else {
            return Ok(None);
        };
        match entry.records.get(ck) {
            Some(slot) => Ok(job_count_key(&read_record(&self.vlog, ck, slot.loc)?)),
            None => Err(corrupt(ck, "the counted record is not in its job's entry")),
        }
    }

    fn for_each_rollup(
        &self,
        first_day: u32,
        last_day: u32,
        f: &mut dyn FnMut(RollupKey, RollupValue),
    ) -> Result<(), StoreError> {
        let start = prefixed(ROLLUP, &first_day.to_be_bytes());
        let iter = match last_day.checked_add(1) {
            Some(end) => self.acct.range(start..prefixed(ROLLUP, &end.to_be_bytes())),
            None => self.acct.range(start..vec![ROLLUP + 1]),
        };
        for kv in iter {
            let (k, v) = kv.map_err(engine)?;
            let (day, cluster, account) =
                decode_group_key(&k).ok_or_else(|| corrupt(&k, "bad rollup key"))?;
            for ((user, partition, gpu_model), value) in RollupGroup::decode(&k, &v)?.rows {
                let key = RollupKey {
                    day,
                    cluster: cluster.clone(),
                    account: account.clone(),
                    user,
                    partition,
                    gpu_model,
                };
                f(key, value);
            }
        }
        Ok(())
    }

    fn for_each_record(&self, f: &mut dyn FnMut(Record)) -> Result<(), StoreError> {
        for kv in self.acct.scan_prefix([JOB]) {
            let (k, v) = kv.map_err(engine)?;
            self.for_each_in(&JobEntry::decode(&k, &v)?, f)?;
        }
        Ok(())
    }

    fn purge(
        &self,
        records_before_day: Option<u32>,
        rollups_before_day: Option<u32>,
    ) -> Result<PurgeStats, StoreError> {
        let _purging = self
            .purging
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Batches in flight finish first; every later one appends to this segment or a newer
        // one, so segments before it gain no new references while purge runs.
        let first_unsafe = {
            let _appending = self
                .appending
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.vlog.current_segment()
        };
        let mut stats = PurgeStats::default();
        // Without a lock (ingest goes on): the jobs with a record to drop, and the segments
        // that kept records are in. Batches only add records, in segments >= first_unsafe.
        let (candidates, mut live) = match records_before_day {
            Some(cutoff) => self.purge_candidates(cutoff)?,
            None => (Vec::new(), BTreeSet::new()),
        };
        // Under the writer lock: the candidates again (a batch may have added to them), the
        // day index, the rollups.
        let writer = self.writer();
        let mut batch = sled::Batch::default();
        if let Some(cutoff) = records_before_day {
            self.purge_records(&mut batch, cutoff, &candidates, &mut live, &mut stats)?;
        }
        if let Some(cutoff) = rollups_before_day {
            self.purge_rollups(&mut batch, cutoff, &mut stats)?;
        }
        self.acct.apply_batch(batch).map_err(engine)?;
        drop(writer);
        self.flush()?;
        if records_before_day.is_some() {
            let removed = self
                .vlog
                .remove_unreferenced(&|s| s >= first_unsafe || live.contains(&s))?;
            if removed > 0 {
                tracing::info!(segments = removed, "record log segments removed");
            }
        }
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

    fn for_each_conflict(&self, f: &mut dyn FnMut(Conflict)) -> Result<(), StoreError> {
        for kv in self.acct.scan_prefix([CONFLICT]) {
            let (k, v) = kv.map_err(engine)?;
            f(decode_conflict(&k, &v)?);
        }
        Ok(())
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
