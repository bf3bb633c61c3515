//! [`Store`] on MariaDB/MySQL (`sgpu-acctd --db mysql://...`), beside the embedded sled store.
//!
//! A site that already runs MariaDB for slurmdbd (and backs it up, replicates it) keeps
//! accounting there: a database and user of sgpu's own. acctd creates and migrates the
//! schema itself when it connects ([`MIGRATIONS`], numbered, recorded in `schema_version`,
//! under a server-wide named lock so two acctd starting together migrate once).
//!
//! Tables (schema version 3):
//! - `records`: one row per record: its key ([`sgpu_spool::RecordId::key`], the primary key:
//!   a resend finds it), its job's key (`cluster,job_id,`), the first and last UTC day its
//!   span touches ([`record_days`]) and its JSON as received.
//! - `record_days`: (day, record key) for every day a record's span touches: the by-day
//!   index the reports read for the partial days at a window's edges.
//! - `jobs`: per counted job, the key of the `job_end` its `jobs` count went to.
//! - `rollups`: one row per [`RollupKey`], the [`RollupValue`] sums as columns (version 2
//!   added `slice_ms`, MIG slice time, version 3 `used_unmeasured_gpu_ms`, MIG slices'
//!   allocated time without used-time samples; rows written before read 0); a batch adds
//!   to them with `INSERT ... ON DUPLICATE KEY UPDATE x = x + VALUES(x)`.
//! - `conflicts`: records that arrived under the key of a different stored record.
//! - `node_events`: node events by [`NodeEvent::key`].
//!
//! [`Store::put_batch`] is one InnoDB transaction (READ COMMITTED): read which keys are
//! stored, insert the new records, their day index rows, the job counts and the rollup
//! additions, `COMMIT`; only then does it return, and that return is the acknowledgement
//! (with `innodb_flush_log_at_trx_commit = 1`, the server's default, which acctd checks at
//! start and warns about otherwise). Two acctd on one database stay exact: a record another
//! acctd inserted meanwhile makes the insert fail on the primary key (or wait for the other
//! transaction and then fail), and the whole batch is tried again, now seeing it stored; a
//! job's count goes to whichever transaction inserted its `jobs` row first. Deadlocks and
//! lock wait timeouts are retried the same way.
//!
//! The store trait is synchronous (acctd calls it from blocking threads); the driver,
//! `mysql_async`, runs on a small runtime of the store's own. While the server is away every
//! call fails with [`StoreError::Engine`] (acctd answers 503, nodes keep their spool); the
//! pool reconnects when it is back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::future::Future;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, IsolationLevel, Opts, OptsBuilder, Pool, Row, TxOpts};
use sgpu_spool::{NodeEvent, Record};

use crate::rollup::{RollupKey, RollupValue, contributions, job_count_key};
use crate::store::{
    Conflict, PurgeStats, PutOutcome, Store, StoreError, job_key, job_key_of, record_days,
};

/// The schema migrations, in order: (version, statements); never edit one that shipped,
/// add the next. A migration's statements are idempotent (`IF NOT EXISTS`; an `ADD COLUMN`
/// that finds its column, error 1060, counts as done, as MySQL has no `IF NOT EXISTS` for
/// it), since MySQL commits each DDL statement on its own: a migration cut short runs again
/// whole.
pub const MIGRATIONS: &[(u32, &[&str])] = &[
    (
        1,
        &[
            "CREATE TABLE IF NOT EXISTS records (
            rkey VARBINARY(255) NOT NULL,
            job_key VARBINARY(255) NOT NULL,
            first_day INT UNSIGNED NOT NULL,
            last_day INT UNSIGNED NOT NULL,
            json MEDIUMBLOB NOT NULL,
            PRIMARY KEY (rkey),
            KEY by_job (job_key),
            KEY by_last_day (last_day)
        ) ENGINE=InnoDB",
            "CREATE TABLE IF NOT EXISTS record_days (
            day INT UNSIGNED NOT NULL,
            rkey VARBINARY(255) NOT NULL,
            PRIMARY KEY (day, rkey)
        ) ENGINE=InnoDB",
            "CREATE TABLE IF NOT EXISTS jobs (
            job_key VARBINARY(255) NOT NULL,
            counted_rkey VARBINARY(255) NOT NULL,
            PRIMARY KEY (job_key)
        ) ENGINE=InnoDB",
            "CREATE TABLE IF NOT EXISTS rollups (
            day INT UNSIGNED NOT NULL,
            cluster VARBINARY(64) NOT NULL,
            account VARBINARY(600) NOT NULL,
            user_name VARBINARY(600) NOT NULL,
            partition_name VARBINARY(600) NOT NULL,
            gpu_model VARBINARY(600) NOT NULL,
            allocated_gpu_ms BIGINT UNSIGNED NOT NULL,
            used_gpu_ms BIGINT UNSIGNED NOT NULL,
            energy_mj BIGINT UNSIGNED NOT NULL,
            jobs BIGINT UNSIGNED NOT NULL,
            idle_gpu_ms BIGINT UNSIGNED NOT NULL,
            idle_measured_gpu_ms BIGINT UNSIGNED NOT NULL,
            PRIMARY KEY (day, cluster, account, user_name, partition_name, gpu_model)
        ) ENGINE=InnoDB",
            "CREATE TABLE IF NOT EXISTS conflicts (
            id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
            rkey VARBINARY(255) NOT NULL,
            received_ms BIGINT UNSIGNED NOT NULL,
            json MEDIUMBLOB NOT NULL,
            PRIMARY KEY (id),
            KEY by_key (rkey, id)
        ) ENGINE=InnoDB",
            "CREATE TABLE IF NOT EXISTS node_events (
            ekey VARBINARY(512) NOT NULL,
            json BLOB NOT NULL,
            PRIMARY KEY (ekey)
        ) ENGINE=InnoDB",
        ],
    ),
    // MIG slice time in the rollups (RollupValue::slice_ms); rows before it read 0
    (
        2,
        &["ALTER TABLE rollups ADD COLUMN slice_ms BIGINT UNSIGNED NOT NULL DEFAULT 0"],
    ),
    // allocated time without a used-time measurement (RollupValue::used_unmeasured_gpu_ms,
    // MIG slices); rows before it read 0 (all measured)
    (
        3,
        &[
            "ALTER TABLE rollups ADD COLUMN used_unmeasured_gpu_ms BIGINT UNSIGNED NOT NULL \
             DEFAULT 0",
        ],
    ),
];

/// The schema version this code writes (the last migration's).
pub const SCHEMA_VERSION: u32 = 3;

/// How long acctd waits for a connection before the call fails (503).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one batch (all its attempts) may take before it fails (503, not acknowledged).
const BATCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Attempts of a batch that meets a concurrent writer (duplicate key, deadlock, lock wait).
const BATCH_ATTEMPTS: u32 = 8;
/// A statement is sent once its text reaches this size (the server's default
/// `max_allowed_packet` is 16 MiB).
const STATEMENT_BYTES: usize = 4 << 20;
/// Rows per statement at most.
const STATEMENT_ROWS: usize = 1000;
/// Rows deleted per retention transaction.
const PURGE_CHUNK: usize = 2000;

/// MariaDB/MySQL error numbers acctd handles itself.
const ER_DUP_ENTRY: u16 = 1062;
/// `ADD COLUMN` of a column that exists (a migration cut short after it ran).
const ER_DUP_FIELDNAME: u16 = 1060;
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
const ER_LOCK_DEADLOCK: u16 = 1213;

/// The MariaDB/MySQL-backed store.
pub struct MysqlStore {
    /// Runs the driver; `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
    pool: Pool,
    /// The URL without a password, for messages.
    target: String,
}

/// Why a call failed: the driver's error, or one of acctd's own.
enum Fail {
    Db(mysql_async::Error),
    Store(StoreError),
}

impl From<mysql_async::Error> for Fail {
    fn from(e: mysql_async::Error) -> Fail {
        Fail::Db(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::Store(e)
    }
}

impl Fail {
    /// Whether trying the batch again may succeed (another writer got in the way).
    fn retryable(&self) -> bool {
        matches!(self, Fail::Db(mysql_async::Error::Server(e))
            if matches!(e.code, ER_DUP_ENTRY | ER_LOCK_DEADLOCK | ER_LOCK_WAIT_TIMEOUT))
    }
}

fn corrupt(key: &[u8], message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: message.into(),
    }
}

/// Appends `b` as a hexadecimal literal (`X'...'`): every byte a client sends reaches the
/// server as data, never as SQL.
fn hex(out: &mut String, b: &[u8]) {
    out.push_str("X'");
    for byte in b {
        let _ = write!(out, "{byte:02x}");
    }
    out.push('\'');
}

/// `(X'..', X'..', ...)` of `items`, for `IN`.
fn hex_list<'a>(items: impl Iterator<Item = &'a [u8]>) -> String {
    let mut s = String::from("(");
    for (i, b) in items.enumerate() {
        if i > 0 {
            s.push(',');
        }
        hex(&mut s, b);
    }
    s.push(')');
    s
}

/// Column `i` of `row` as `T`, or a [`StoreError::Corrupt`] naming `what`.
fn col<T: mysql_async::prelude::FromValue>(
    row: &mut Row,
    i: usize,
    what: &str,
) -> Result<T, StoreError> {
    match row.take_opt::<T, usize>(i) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(corrupt(what.as_bytes(), format!("column {i}: {e}"))),
        None => Err(corrupt(what.as_bytes(), format!("column {i} missing"))),
    }
}

fn decode_record(key: &[u8], json: &[u8]) -> Result<Record, StoreError> {
    Record::from_json(json).map_err(|e| corrupt(key, e.to_string()))
}

/// A statement of many rows, sent whenever it reaches [`STATEMENT_BYTES`] or
/// [`STATEMENT_ROWS`]: `head` then `(row),(row)...` then `tail`.
struct MultiRow<'a> {
    head: &'a str,
    tail: &'a str,
    sql: String,
    rows: usize,
}

impl<'a> MultiRow<'a> {
    fn new(head: &'a str, tail: &'a str) -> MultiRow<'a> {
        MultiRow {
            head,
            tail,
            sql: String::new(),
            rows: 0,
        }
    }

    /// Adds one row (`row` appends its parenthesised values); sends the statement on `conn`
    /// when it is full.
    async fn push<C: Queryable>(
        &mut self,
        conn: &mut C,
        row: impl FnOnce(&mut String),
    ) -> Result<(), Fail> {
        if self.rows == 0 {
            self.sql.clear();
            self.sql.push_str(self.head);
        } else {
            self.sql.push(',');
        }
        row(&mut self.sql);
        self.rows += 1;
        if self.rows >= STATEMENT_ROWS || self.sql.len() >= STATEMENT_BYTES {
            self.flush(conn).await?;
        }
        Ok(())
    }

    /// Sends what is pending.
    async fn flush<C: Queryable>(&mut self, conn: &mut C) -> Result<(), Fail> {
        if self.rows > 0 {
            self.sql.push_str(self.tail);
            conn.query_drop(self.sql.as_str()).await?;
            self.rows = 0;
        }
        Ok(())
    }
}

/// A record of a batch on its way in: its key, job key and JSON.
struct Incoming<'a> {
    key: Vec<u8>,
    job: Vec<u8>,
    json: std::borrow::Cow<'a, [u8]>,
}

/// What one attempt of a batch decided, besides the outcomes.
#[derive(Default)]
struct Plan {
    /// Indices of the records to insert (new keys, first of the batch with each).
    inserts: Vec<usize>,
    /// Indices of conflicting records to keep (not kept yet, first of the batch with each
    /// content).
    conflicts: Vec<usize>,
}

impl MysqlStore {
    /// Connects to `url` (`mysql://user@host:port/database`, options as `mysql_async`
    /// reads them, e.g. `?socket=/run/mysqld/mysqld.sock`) with `password` (from the
    /// password file; a password in the URL is refused, since a URL is seen in `ps`), checks
    /// the server, and creates or migrates the schema.
    pub fn connect(url: &str, password: Option<&str>) -> Result<MysqlStore, StoreError> {
        let opts = Opts::from_url(url).map_err(|e| {
            StoreError::Engine(format!(
                "--db {}: not a MariaDB/MySQL URL ({e}); write mysql://USER@HOST:PORT/DATABASE",
                redact(url)
            ))
        })?;
        if opts.pass().is_some() {
            return Err(StoreError::Engine(format!(
                "--db {}: the URL carries a password, which any user sees in ps; put it in a \
                 file readable only by root and name it with --db-password-file",
                redact(url)
            )));
        }
        if opts.db_name().is_none_or(str::is_empty) {
            return Err(StoreError::Engine(format!(
                "--db {}: no database named; write mysql://USER@HOST:PORT/DATABASE",
                redact(url)
            )));
        }
        let target = redact(url);
        let builder = OptsBuilder::from_opts(opts)
            .pass(password.map(str::to_owned))
            .setup(vec![
                "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'",
                "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            ]);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sgpu-mysql")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Engine(format!("starting the database runtime: {e}")))?;
        let pool = {
            let _guard = rt.enter();
            Pool::new(builder)
        };
        let store = MysqlStore {
            rt: Some(rt),
            pool,
            target,
        };
        store.run(Self::migrate(&store.pool, &store.target))?;
        Ok(store)
    }

    /// The server and database acctd uses, without a password (for messages).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Runs `fut` on the store's runtime and turns a driver error into a [`StoreError`]
    /// that says where and what to do.
    fn run<T>(&self, fut: impl Future<Output = Result<T, Fail>>) -> Result<T, StoreError> {
        let Some(rt) = &self.rt else {
            return Err(StoreError::Engine("the store is closing".into()));
        };
        rt.block_on(fut).map_err(|f| match f {
            Fail::Store(e) => e,
            Fail::Db(e) => StoreError::Engine(format!(
                "MariaDB/MySQL {}: {e}; nothing of this call was stored or acknowledged, and \
                 acctd answers 503 until the server answers again (check that it runs and \
                 that acctd's user may use the database)",
                self.target
            )),
        })
    }

    /// A connection from the pool, within [`CONNECT_TIMEOUT`].
    async fn conn(pool: &Pool) -> Result<Conn, Fail> {
        match tokio::time::timeout(CONNECT_TIMEOUT, pool.get_conn()).await {
            Ok(c) => Ok(c?),
            Err(_) => Err(Fail::Db(mysql_async::Error::Io(mysql_async::IoError::Io(
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
                ),
            )))),
        }
    }

    /// Creates or migrates the schema under a named lock.
    async fn migrate(pool: &Pool, target: &str) -> Result<(), Fail> {
        let mut conn = Self::conn(pool).await?;
        let got: Option<Option<i64>> = conn
            .query_first("SELECT GET_LOCK('sgpu_acctd_schema', 120)")
            .await?;
        if got.flatten() != Some(1) {
            return Err(StoreError::Engine(format!(
                "MariaDB/MySQL {target}: another acctd held the schema lock for 2 minutes; \
                 start acctd again once it has migrated the schema"
            ))
            .into());
        }
        let res = Self::migrate_locked(&mut conn, target).await;
        let _ = conn
            .query_drop("DO RELEASE_LOCK('sgpu_acctd_schema')")
            .await;
        res?;
        let flush: Option<u32> = conn
            .query_first("SELECT @@innodb_flush_log_at_trx_commit")
            .await?;
        if flush != Some(1) {
            tracing::warn!(
                "MariaDB/MySQL {target}: innodb_flush_log_at_trx_commit is {flush:?}, not 1: \
                 batches acctd acknowledged may be lost if the server's machine crashes; \
                 set it to 1 on the server"
            );
        }
        Ok(())
    }

    async fn migrate_locked(conn: &mut Conn, target: &str) -> Result<(), Fail> {
        conn.query_drop(
            "CREATE TABLE IF NOT EXISTS schema_version (
                version INT UNSIGNED NOT NULL,
                applied_ms BIGINT UNSIGNED NOT NULL,
                PRIMARY KEY (version)
            ) ENGINE=InnoDB",
        )
        .await?;
        let current: Option<Option<u32>> = conn
            .query_first("SELECT MAX(version) FROM schema_version")
            .await?;
        let current = current.flatten().unwrap_or(0);
        if current > SCHEMA_VERSION {
            return Err(StoreError::Engine(format!(
                "MariaDB/MySQL {target}: schema version {current} was written by a newer acctd \
                 (this one knows up to {SCHEMA_VERSION}): run that acctd, or restore a backup"
            ))
            .into());
        }
        for (version, statements) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            tracing::info!(version, "migrating the accounting schema on {target}");
            for s in *statements {
                match conn.query_drop(*s).await {
                    Err(mysql_async::Error::Server(e))
                        if e.code == ER_DUP_FIELDNAME && s.contains(" ADD COLUMN ") => {}
                    res => res?,
                }
            }
            conn.query_drop(format!(
                "INSERT INTO schema_version (version, applied_ms) VALUES ({version}, {})",
                sgpu_spool::now_ms()
            ))
            .await?;
        }
        Ok(())
    }

    /// The schema version the database is at.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let pool = &self.pool;
        self.run(async move {
            let mut conn = Self::conn(pool).await?;
            let v: Option<Option<u32>> = conn
                .query_first("SELECT MAX(version) FROM schema_version")
                .await?;
            Ok(v.flatten().unwrap_or(0))
        })
    }

    /// Bytes the store's tables take on the server (data and indexes, as InnoDB counts
    /// them), for the benchmark.
    pub fn size_bytes(&self) -> Result<u64, StoreError> {
        let pool = &self.pool;
        self.run(async move {
            let mut conn = Self::conn(pool).await?;
            conn.query_drop("ANALYZE TABLE records, record_days, jobs, rollups, conflicts")
                .await?;
            let v: Option<Option<u64>> = conn
                .query_first(
                    "SELECT CAST(SUM(data_length + index_length) AS UNSIGNED) \
                     FROM information_schema.tables WHERE table_schema = DATABASE()",
                )
                .await?;
            Ok(v.flatten().unwrap_or(0))
        })
    }

    /// One attempt at a batch, in one transaction.
    async fn put_once(
        pool: &Pool,
        records: &[Record],
        incoming: &[Incoming<'_>],
    ) -> Result<Vec<PutOutcome>, Fail> {
        let mut conn = Self::conn(pool).await?;
        let mut opts = TxOpts::default();
        opts.with_isolation_level(IsolationLevel::ReadCommitted);
        let mut tx = conn.start_transaction(opts).await?;
        // what is stored under the batch's keys
        let mut stored: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let keys: BTreeSet<&[u8]> = incoming.iter().map(|i| i.key.as_slice()).collect();
        let keys: Vec<&[u8]> = keys.into_iter().collect();
        for chunk in keys.chunks(STATEMENT_ROWS) {
            let sql = format!(
                "SELECT rkey, json FROM records WHERE rkey IN {}",
                hex_list(chunk.iter().copied())
            );
            let mut res = tx.query_iter(sql).await?;
            while let Some(mut row) = res.next().await? {
                let k: Vec<u8> = col(&mut row, 0, "records.rkey")?;
                let j: Vec<u8> = col(&mut row, 1, "records.json")?;
                stored.insert(k, j);
            }
        }
        let mut plan = Plan::default();
        let mut outcomes = Vec::with_capacity(records.len());
        // keys accepted earlier in this batch: index of the record
        let mut accepted: BTreeMap<&[u8], usize> = BTreeMap::new();
        // conflicts kept by this batch, per key
        let mut kept_here: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
        // kept conflicts per key, loaded once
        let mut kept_stored: BTreeMap<&[u8], Vec<Record>> = BTreeMap::new();
        for (i, (r, inc)) in records.iter().zip(incoming).enumerate() {
            let key = inc.key.as_slice();
            let same = if let Some(&j) = accepted.get(key) {
                incoming[j].json == inc.json || records[j] == *r
            } else if let Some(json) = stored.get(key) {
                json.as_slice() == inc.json.as_ref() || decode_record(key, json)? == *r
            } else {
                accepted.insert(key, i);
                plan.inserts.push(i);
                outcomes.push(PutOutcome::Accepted);
                continue;
            };
            if same {
                outcomes.push(PutOutcome::Duplicate { differs: false });
                continue;
            }
            if !kept_stored.contains_key(key) {
                // the stored record's row lock serialises conflicts of this key between acctd
                let mut sql = String::from("SELECT rkey FROM records WHERE rkey = ");
                hex(&mut sql, key);
                sql.push_str(" FOR UPDATE");
                tx.query_drop(sql).await?;
                let mut kept = Vec::new();
                let mut sql = String::from("SELECT json FROM conflicts WHERE rkey = ");
                hex(&mut sql, key);
                let mut res = tx.query_iter(sql).await?;
                while let Some(mut row) = res.next().await? {
                    let json: Vec<u8> = col(&mut row, 0, "conflicts.json")?;
                    kept.push(decode_record(key, &json)?);
                }
                kept_stored.insert(key, kept);
            }
            let known = kept_stored.get(key).is_some_and(|k| k.contains(r))
                || kept_here
                    .get(key)
                    .is_some_and(|k| k.iter().any(|&j| records[j] == *r));
            if !known {
                kept_here.entry(key).or_default().push(i);
                plan.conflicts.push(i);
                tracing::error!(
                    key = %String::from_utf8_lossy(key),
                    "a different record arrived under a stored record's identity: the stored \
                     one stays counted, the new one is kept as a conflict for an admin \
                     (GET /v1/conflicts)"
                );
            }
            outcomes.push(PutOutcome::Conflict { new: !known });
        }
        Self::write_plan(&mut tx, records, incoming, &plan).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Writes what [`Self::put_once`] decided: records, day index, job counts, rollups,
    /// conflicts.
    async fn write_plan<C: Queryable>(
        tx: &mut C,
        records: &[Record],
        incoming: &[Incoming<'_>],
        plan: &Plan,
    ) -> Result<(), Fail> {
        let mut ins = MultiRow::new(
            "INSERT INTO records (rkey, job_key, first_day, last_day, json) VALUES ",
            "",
        );
        let mut days = MultiRow::new("INSERT INTO record_days (day, rkey) VALUES ", "");
        // per job, the first accepted record of the batch that could count it
        let mut candidates: BTreeMap<&[u8], usize> = BTreeMap::new();
        for &i in &plan.inserts {
            let (r, inc) = (&records[i], &incoming[i]);
            let span = record_days(r);
            let (first, last) = (*span.start(), *span.end());
            ins.push(tx, |s| {
                s.push('(');
                hex(s, &inc.key);
                s.push(',');
                hex(s, &inc.job);
                let _ = write!(s, ",{first},{last},");
                hex(s, &inc.json);
                s.push(')');
            })
            .await?;
            for day in span {
                days.push(tx, |s| {
                    let _ = write!(s, "({day},");
                    hex(s, &inc.key);
                    s.push(')');
                })
                .await?;
            }
            if job_count_key(r).is_some() {
                candidates.entry(inc.job.as_slice()).or_insert(i);
            }
        }
        ins.flush(tx).await?;
        days.flush(tx).await?;
        let counted = Self::count_jobs(tx, incoming, &candidates).await?;
        let mut adds: BTreeMap<RollupKey, RollupValue> = BTreeMap::new();
        for &i in &plan.inserts {
            for (k, v) in contributions(&records[i]) {
                adds.entry(k).or_default().add(&v);
            }
        }
        for i in counted {
            if let Some(k) = job_count_key(&records[i]) {
                adds.entry(k).or_default().jobs += 1;
            }
        }
        let mut roll = MultiRow::new(
            "INSERT INTO rollups (day, cluster, account, user_name, partition_name, gpu_model, \
             allocated_gpu_ms, used_gpu_ms, energy_mj, jobs, idle_gpu_ms, \
             idle_measured_gpu_ms, slice_ms, used_unmeasured_gpu_ms) VALUES ",
            " ON DUPLICATE KEY UPDATE \
             allocated_gpu_ms = allocated_gpu_ms + VALUES(allocated_gpu_ms), \
             used_gpu_ms = used_gpu_ms + VALUES(used_gpu_ms), \
             energy_mj = energy_mj + VALUES(energy_mj), \
             jobs = jobs + VALUES(jobs), \
             idle_gpu_ms = idle_gpu_ms + VALUES(idle_gpu_ms), \
             idle_measured_gpu_ms = idle_measured_gpu_ms + VALUES(idle_measured_gpu_ms), \
             slice_ms = slice_ms + VALUES(slice_ms), \
             used_unmeasured_gpu_ms = used_unmeasured_gpu_ms + VALUES(used_unmeasured_gpu_ms)",
        );
        // in key order, so two acctd lock shared rows in the same order
        for (k, v) in &adds {
            roll.push(tx, |s| {
                let _ = write!(s, "({},", k.day);
                for text in [&k.cluster, &k.account, &k.user, &k.partition, &k.gpu_model] {
                    hex(s, text.as_bytes());
                    s.push(',');
                }
                let _ = write!(
                    s,
                    "{},{},{},{},{},{},{},{})",
                    v.allocated_gpu_ms,
                    v.used_gpu_ms,
                    v.energy_mj,
                    v.jobs,
                    v.idle_gpu_ms,
                    v.idle_measured_gpu_ms,
                    v.slice_ms,
                    v.used_unmeasured_gpu_ms
                );
            })
            .await?;
        }
        roll.flush(tx).await?;
        if !plan.conflicts.is_empty() {
            let received_ms = sgpu_spool::now_ms();
            let mut conf = MultiRow::new(
                "INSERT INTO conflicts (rkey, received_ms, json) VALUES ",
                "",
            );
            for &i in &plan.conflicts {
                conf.push(tx, |s| {
                    s.push('(');
                    hex(s, &incoming[i].key);
                    let _ = write!(s, ",{received_ms},");
                    hex(s, &incoming[i].json);
                    s.push(')');
                })
                .await?;
            }
            conf.flush(tx).await?;
        }
        Ok(())
    }

    /// Gives each candidate job its `jobs` row unless it has one: returns the indices of the
    /// records whose job this batch counts.
    async fn count_jobs<C: Queryable>(
        tx: &mut C,
        incoming: &[Incoming<'_>],
        candidates: &BTreeMap<&[u8], usize>,
    ) -> Result<Vec<usize>, Fail> {
        let mut counted = Vec::new();
        let list: Vec<(&[u8], usize)> = candidates.iter().map(|(k, v)| (*k, *v)).collect();
        for chunk in list.chunks(STATEMENT_ROWS) {
            let mut sql = String::from("INSERT INTO jobs (job_key, counted_rkey) VALUES ");
            for (n, (job, i)) in chunk.iter().enumerate() {
                if n > 0 {
                    sql.push(',');
                }
                sql.push('(');
                hex(&mut sql, job);
                sql.push(',');
                hex(&mut sql, &incoming[*i].key);
                sql.push(')');
            }
            // a job counted before (or by another acctd meanwhile) keeps its row
            sql.push_str(" ON DUPLICATE KEY UPDATE counted_rkey = counted_rkey");
            tx.query_drop(sql).await?;
            let sql = format!(
                "SELECT job_key, counted_rkey FROM jobs WHERE job_key IN {}",
                hex_list(chunk.iter().map(|(j, _)| *j))
            );
            let rows: Vec<Row> = tx.query(sql).await?;
            let by_job: BTreeMap<&[u8], usize> = chunk.iter().copied().collect();
            for mut row in rows {
                let job: Vec<u8> = col(&mut row, 0, "jobs.job_key")?;
                let rkey: Vec<u8> = col(&mut row, 1, "jobs.counted_rkey")?;
                if let Some(&i) = by_job.get(job.as_slice()) {
                    if incoming[i].key == rkey {
                        counted.push(i);
                    }
                }
            }
        }
        Ok(counted)
    }

    /// [`Store::put_batch`] with the JSON as received where there is one.
    fn put(
        &self,
        records: &[Record],
        received: Option<&[&[u8]]>,
    ) -> Result<Vec<PutOutcome>, StoreError> {
        let incoming = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let key = r.id().key().into_bytes();
                let job = job_key_of(&key)
                    .ok_or_else(|| corrupt(&key, "not a record key"))?
                    .to_vec();
                let json = match received.and_then(|j| j.get(i)) {
                    Some(j) => std::borrow::Cow::Borrowed(*j),
                    None => std::borrow::Cow::Owned(
                        r.to_json().map_err(|e| StoreError::Engine(e.to_string()))?,
                    ),
                };
                Ok(Incoming { key, job, json })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        if incoming.is_empty() {
            return Ok(Vec::new());
        }
        let pool = &self.pool;
        self.run(async move {
            let attempts = async {
                let mut attempt = 1;
                loop {
                    match Self::put_once(pool, records, &incoming).await {
                        Err(e) if e.retryable() && attempt < BATCH_ATTEMPTS => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(5 << attempt.min(6))).await;
                        }
                        other => return other,
                    }
                }
            };
            match tokio::time::timeout(BATCH_TIMEOUT, attempts).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Engine(format!(
                    "the batch was not committed within {} s: not acknowledged (the sender \
                     sends it again); check the server's load and locks",
                    BATCH_TIMEOUT.as_secs()
                ))
                .into()),
            }
        })
    }

    /// Streams the records `sql` selects (columns rkey, json) to `f`.
    async fn stream_records(
        pool: &Pool,
        sql: String,
        f: &mut dyn FnMut(Record),
    ) -> Result<(), Fail> {
        let mut conn = Self::conn(pool).await?;
        let mut res = conn.query_iter(sql).await?;
        while let Some(mut row) = res.next().await? {
            let k: Vec<u8> = col(&mut row, 0, "records.rkey")?;
            let j: Vec<u8> = col(&mut row, 1, "records.json")?;
            f(decode_record(&k, &j)?);
        }
        Ok(())
    }

    /// Retention of records: deletes, a chunk per transaction, records whose last day is
    /// before `cutoff`, their day index rows, and the `jobs` row of a job left without
    /// records.
    async fn purge_records(pool: &Pool, cutoff: u32) -> Result<u64, Fail> {
        let mut removed = 0u64;
        loop {
            let mut conn = Self::conn(pool).await?;
            let mut opts = TxOpts::default();
            opts.with_isolation_level(IsolationLevel::ReadCommitted);
            let mut tx = conn.start_transaction(opts).await?;
            let rows: Vec<Row> = tx
                .query(format!(
                    "SELECT rkey, job_key, first_day, last_day FROM records \
                     WHERE last_day < {cutoff} LIMIT {PURGE_CHUNK} FOR UPDATE"
                ))
                .await?;
            if rows.is_empty() {
                tx.commit().await?;
                return Ok(removed);
            }
            let mut keys = Vec::with_capacity(rows.len());
            let mut jobs = BTreeSet::new();
            let mut day_rows = String::new();
            for mut row in rows {
                let k: Vec<u8> = col(&mut row, 0, "records.rkey")?;
                let j: Vec<u8> = col(&mut row, 1, "records.job_key")?;
                let first: u32 = col(&mut row, 2, "records.first_day")?;
                let last: u32 = col(&mut row, 3, "records.last_day")?;
                for day in first..=last {
                    if !day_rows.is_empty() {
                        day_rows.push(',');
                    }
                    let _ = write!(day_rows, "({day},");
                    hex(&mut day_rows, &k);
                    day_rows.push(')');
                }
                keys.push(k);
                jobs.insert(j);
            }
            tx.query_drop(format!(
                "DELETE FROM record_days WHERE (day, rkey) IN ({day_rows})"
            ))
            .await?;
            tx.query_drop(format!(
                "DELETE FROM records WHERE rkey IN {}",
                hex_list(keys.iter().map(Vec::as_slice))
            ))
            .await?;
            removed += tx.affected_rows();
            // the counted marker goes with the job's last record
            tx.query_drop(format!(
                "DELETE FROM jobs WHERE job_key IN {} AND NOT EXISTS \
                 (SELECT 1 FROM records r WHERE r.job_key = jobs.job_key)",
                hex_list(jobs.iter().map(Vec::as_slice))
            ))
            .await?;
            tx.commit().await?;
        }
    }
}

/// `url` without its password (for messages).
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let cred = &url[s + 3..at];
            match cred.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &cred[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Drop for MysqlStore {
    fn drop(&mut self) {
        // acctd drops the store inside its own runtime, where a blocking shutdown panics
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Store for MysqlStore {
    fn restore_conflicts(&self, conflicts: &[Conflict]) -> Result<u64, StoreError> {
        if conflicts.is_empty() {
            return Ok(0);
        }
        let encoded = conflicts
            .iter()
            .map(|c| {
                let json = c
                    .record
                    .to_json()
                    .map_err(|e| StoreError::Engine(e.to_string()))?;
                Ok((c.key.as_bytes(), json))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let pool = &self.pool;
        self.run(async move {
            let mut conn = Self::conn(pool).await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await?;
            let keys: BTreeSet<&[u8]> = encoded.iter().map(|(k, _)| *k).collect();
            let keys: Vec<&[u8]> = keys.into_iter().collect();
            // kept under each key: what is stored, then what this call keeps
            let mut kept: BTreeMap<Vec<u8>, Vec<Record>> = BTreeMap::new();
            for chunk in keys.chunks(STATEMENT_ROWS) {
                let sql = format!(
                    "SELECT rkey, json FROM conflicts WHERE rkey IN {} FOR UPDATE",
                    hex_list(chunk.iter().copied())
                );
                let mut res = tx.query_iter(sql).await?;
                while let Some(mut row) = res.next().await? {
                    let k: Vec<u8> = col(&mut row, 0, "conflicts.rkey")?;
                    let j: Vec<u8> = col(&mut row, 1, "conflicts.json")?;
                    let r = decode_record(&k, &j)?;
                    kept.entry(k).or_default().push(r);
                }
            }
            let mut ins = MultiRow::new(
                "INSERT INTO conflicts (rkey, received_ms, json) VALUES ",
                "",
            );
            let mut n = 0u64;
            for (c, (k, json)) in conflicts.iter().zip(&encoded) {
                let here = kept.entry(k.to_vec()).or_default();
                if here.contains(&c.record) {
                    continue;
                }
                here.push(c.record.clone());
                n += 1;
                ins.push(&mut tx, |s| {
                    s.push('(');
                    hex(s, k);
                    let _ = write!(s, ",{},", c.received_ms);
                    hex(s, json);
                    s.push(')');
                })
                .await?;
            }
            ins.flush(&mut tx).await?;
            tx.commit().await?;
            Ok(n)
        })
    }

    fn restore_rollups(&self, rows: &[(RollupKey, Option<RollupValue>)]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let pool = &self.pool;
        self.run(async move {
            let mut conn = Self::conn(pool).await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await?;
            let mut set = MultiRow::new(
                "INSERT INTO rollups (day, cluster, account, user_name, partition_name, \
                 gpu_model, allocated_gpu_ms, used_gpu_ms, energy_mj, jobs, idle_gpu_ms, \
                 idle_measured_gpu_ms, slice_ms, used_unmeasured_gpu_ms) VALUES ",
                " ON DUPLICATE KEY UPDATE allocated_gpu_ms = VALUES(allocated_gpu_ms), \
                 used_gpu_ms = VALUES(used_gpu_ms), energy_mj = VALUES(energy_mj), \
                 jobs = VALUES(jobs), idle_gpu_ms = VALUES(idle_gpu_ms), \
                 idle_measured_gpu_ms = VALUES(idle_measured_gpu_ms), \
                 slice_ms = VALUES(slice_ms), \
                 used_unmeasured_gpu_ms = VALUES(used_unmeasured_gpu_ms)",
            );
            let mut delete = MultiRow::new(
                "DELETE FROM rollups WHERE (day, cluster, account, user_name, \
                 partition_name, gpu_model) IN (",
                ")",
            );
            for (k, v) in rows {
                let key = |s: &mut String| {
                    let _ = write!(s, "({}", k.day);
                    for text in [&k.cluster, &k.account, &k.user, &k.partition, &k.gpu_model] {
                        s.push(',');
                        hex(s, text.as_bytes());
                    }
                };
                match v {
                    Some(v) => {
                        set.push(&mut tx, |s| {
                            key(s);
                            let _ = write!(
                                s,
                                ",{},{},{},{},{},{},{},{})",
                                v.allocated_gpu_ms,
                                v.used_gpu_ms,
                                v.energy_mj,
                                v.jobs,
                                v.idle_gpu_ms,
                                v.idle_measured_gpu_ms,
                                v.slice_ms,
                                v.used_unmeasured_gpu_ms
                            );
                        })
                        .await?
                    }
                    None => {
                        delete
                            .push(&mut tx, |s| {
                                key(s);
                                s.push(')');
                            })
                            .await?
                    }
                }
            }
            set.flush(&mut tx).await?;
            delete.flush(&mut tx).await?;
            tx.commit().await?;
            Ok(())
        })
    }

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
        let mut out = Vec::new();
        let mut sql = String::from("SELECT rkey, json FROM records WHERE job_key = ");
        hex(&mut sql, &jk);
        sql.push_str(" ORDER BY rkey");
        let pool = &self.pool;
        self.run(Self::stream_records(pool, sql, &mut |r| out.push(r)))?;
        Ok(out)
    }

    fn for_each_rollup(
        &self,
        first_day: u32,
        last_day: u32,
        f: &mut dyn FnMut(RollupKey, RollupValue),
    ) -> Result<(), StoreError> {
        let pool = &self.pool;
        self.run(async move {
            let mut conn = Self::conn(pool).await?;
            let mut res = conn
                .query_iter(format!(
                    "SELECT day, cluster, account, user_name, partition_name, gpu_model, \
                     allocated_gpu_ms, used_gpu_ms, energy_mj, jobs, idle_gpu_ms, \
                     idle_measured_gpu_ms, slice_ms, used_unmeasured_gpu_ms FROM rollups WHERE day BETWEEN {first_day} AND \
                     {last_day} ORDER BY day, cluster, account, user_name, partition_name, \
                     gpu_model"
                ))
                .await?;
            while let Some(mut row) = res.next().await? {
                let text = |row: &mut Row, i: usize| -> Result<String, StoreError> {
                    let b: Vec<u8> = col(row, i, "rollups")?;
                    String::from_utf8(b).map_err(|_| corrupt(b"rollups", "text is not UTF-8"))
                };
                let key = RollupKey {
                    day: col(&mut row, 0, "rollups.day")?,
                    cluster: text(&mut row, 1)?,
                    account: text(&mut row, 2)?,
                    user: text(&mut row, 3)?,
                    partition: text(&mut row, 4)?,
                    gpu_model: text(&mut row, 5)?,
                };
                let value = RollupValue {
                    allocated_gpu_ms: col(&mut row, 6, "rollups.allocated_gpu_ms")?,
                    used_gpu_ms: col(&mut row, 7, "rollups.used_gpu_ms")?,
                    energy_mj: col(&mut row, 8, "rollups.energy_mj")?,
                    jobs: col(&mut row, 9, "rollups.jobs")?,
                    idle_gpu_ms: col(&mut row, 10, "rollups.idle_gpu_ms")?,
                    idle_measured_gpu_ms: col(&mut row, 11, "rollups.idle_measured_gpu_ms")?,
                    slice_ms: col(&mut row, 12, "rollups.slice_ms")?,
                    used_unmeasured_gpu_ms: col(&mut row, 13, "rollups.used_unmeasured_gpu_ms")?,
                };
                f(key, value);
            }
            Ok(())
        })
    }

    fn for_each_record(&self, f: &mut dyn FnMut(Record)) -> Result<(), StoreError> {
        let pool = &self.pool;
        self.run(Self::stream_records(
            pool,
            "SELECT rkey, json FROM records ORDER BY rkey".into(),
            f,
        ))
    }

    fn for_each_record_on_day(
        &self,
        day: u32,
        f: &mut dyn FnMut(Record),
    ) -> Result<(), StoreError> {
        let pool = &self.pool;
        self.run(Self::stream_records(
            pool,
            format!(
                "SELECT r.rkey, r.json FROM record_days d JOIN records r ON r.rkey = d.rkey \
                 WHERE d.day = {day} ORDER BY d.rkey"
            ),
            f,
        ))
    }

    fn days_with_records(&self, first_day: u32, last_day: u32) -> Result<Vec<u32>, StoreError> {
        let pool = &self.pool;
        self.run(async move {
            let mut conn = Self::conn(pool).await?;
            let days: Vec<u32> = conn
                .query(format!(
                    "SELECT DISTINCT day FROM record_days WHERE day BETWEEN {first_day} AND \
                     {last_day} ORDER BY day"
                ))
                .await?;
            Ok(days)
        })
    }

    fn counted_in(&self, cluster: &str, job_id: u32) -> Result<Option<RollupKey>, StoreError> {
        let Some(jk) = job_key(cluster, job_id) else {
            return Ok(None);
        };
        let mut sql = String::from(
            "SELECT r.rkey, r.json FROM jobs j JOIN records r ON r.rkey = j.counted_rkey \
             WHERE j.job_key = ",
        );
        hex(&mut sql, &jk);
        let mut found = None;
        let pool = &self.pool;
        self.run(Self::stream_records(pool, sql, &mut |r| {
            found = job_count_key(&r);
        }))?;
        Ok(found)
    }

    fn counted_in_many(
        &self,
        jobs: &[(String, u32)],
    ) -> Result<Vec<Option<RollupKey>>, StoreError> {
        let keys: Vec<Option<Vec<u8>>> = jobs.iter().map(|(c, j)| job_key(c, *j)).collect();
        let wanted: BTreeSet<&[u8]> = keys.iter().flatten().map(Vec::as_slice).collect();
        let wanted: Vec<&[u8]> = wanted.into_iter().collect();
        let mut found: BTreeMap<Vec<u8>, RollupKey> = BTreeMap::new();
        let pool = &self.pool;
        self.run(async {
            let mut conn = Self::conn(pool).await?;
            for chunk in wanted.chunks(STATEMENT_ROWS) {
                let sql = format!(
                    "SELECT j.job_key, r.rkey, r.json FROM jobs j \
                     JOIN records r ON r.rkey = j.counted_rkey WHERE j.job_key IN {}",
                    hex_list(chunk.iter().copied())
                );
                let mut res = conn.query_iter(sql).await?;
                while let Some(mut row) = res.next().await? {
                    let jk: Vec<u8> = col(&mut row, 0, "jobs.job_key")?;
                    let k: Vec<u8> = col(&mut row, 1, "records.rkey")?;
                    let j: Vec<u8> = col(&mut row, 2, "records.json")?;
                    if let Some(key) = job_count_key(&decode_record(&k, &j)?) {
                        found.insert(jk, key);
                    }
                }
            }
            Ok(())
        })?;
        Ok(keys
            .iter()
            .map(|k| k.as_ref().and_then(|k| found.get(k).cloned()))
            .collect())
    }

    fn purge(
        &self,
        records_before_day: Option<u32>,
        rollups_before_day: Option<u32>,
    ) -> Result<PurgeStats, StoreError> {
        let pool = &self.pool;
        self.run(async move {
            let mut stats = PurgeStats::default();
            if let Some(cutoff) = records_before_day {
                stats.records = Self::purge_records(pool, cutoff).await?;
            }
            if let Some(cutoff) = rollups_before_day {
                let mut conn = Self::conn(pool).await?;
                loop {
                    conn.query_drop(format!(
                        "DELETE FROM rollups WHERE day < {cutoff} LIMIT {PURGE_CHUNK}"
                    ))
                    .await?;
                    let n = conn.affected_rows();
                    stats.rollups += n;
                    if n == 0 {
                        break;
                    }
                }
            }
            Ok(stats)
        })
    }

    fn put_events(&self, events: &[NodeEvent]) -> Result<Vec<PutOutcome>, StoreError> {
        let encoded = events
            .iter()
            .map(|e| {
                serde_json::to_vec(e)
                    .map(|v| (e.key().into_bytes(), v))
                    .map_err(|err| StoreError::Engine(err.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if encoded.is_empty() {
            return Ok(Vec::new());
        }
        let pool = &self.pool;
        self.run(async move {
            let mut conn = Self::conn(pool).await?;
            let mut opts = TxOpts::default();
            opts.with_isolation_level(IsolationLevel::ReadCommitted);
            let mut tx = conn.start_transaction(opts).await?;
            let keys: BTreeSet<&[u8]> = encoded.iter().map(|(k, _)| k.as_slice()).collect();
            let mut stored: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let keys: Vec<&[u8]> = keys.into_iter().collect();
            for chunk in keys.chunks(STATEMENT_ROWS) {
                let rows: Vec<(Vec<u8>, Vec<u8>)> = tx
                    .query(format!(
                        "SELECT ekey, json FROM node_events WHERE ekey IN {}",
                        hex_list(chunk.iter().copied())
                    ))
                    .await?;
                stored.extend(rows);
            }
            let mut out = Vec::with_capacity(encoded.len());
            // same key = same event resent: keep the first copy
            let mut ins = MultiRow::new(
                "INSERT INTO node_events (ekey, json) VALUES ",
                " ON DUPLICATE KEY UPDATE ekey = ekey",
            );
            for (k, v) in &encoded {
                match stored.get(k) {
                    Some(old) => out.push(PutOutcome::Duplicate { differs: old != v }),
                    None => {
                        stored.insert(k.clone(), v.clone());
                        out.push(PutOutcome::Accepted);
                        ins.push(&mut tx, |s| {
                            s.push('(');
                            hex(s, k);
                            s.push(',');
                            hex(s, v);
                            s.push(')');
                        })
                        .await?;
                    }
                }
            }
            ins.flush(&mut tx).await?;
            tx.commit().await?;
            Ok(out)
        })
    }

    fn for_each_conflict(&self, f: &mut dyn FnMut(Conflict)) -> Result<(), StoreError> {
        let pool = &self.pool;
        self.run(async move {
            let mut conn = Self::conn(pool).await?;
            let mut res = conn
                .query_iter("SELECT rkey, received_ms, json FROM conflicts ORDER BY rkey, id")
                .await?;
            while let Some(mut row) = res.next().await? {
                let k: Vec<u8> = col(&mut row, 0, "conflicts.rkey")?;
                let received_ms: u64 = col(&mut row, 1, "conflicts.received_ms")?;
                let j: Vec<u8> = col(&mut row, 2, "conflicts.json")?;
                f(Conflict {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    received_ms,
                    record: decode_record(&k, &j)?,
                });
            }
            Ok(())
        })
    }

    fn for_each_event(&self, f: &mut dyn FnMut(NodeEvent)) -> Result<(), StoreError> {
        let pool = &self.pool;
        self.run(async move {
            let mut conn = Self::conn(pool).await?;
            let mut res = conn
                .query_iter("SELECT ekey, json FROM node_events ORDER BY ekey")
                .await?;
            while let Some(mut row) = res.next().await? {
                let k: Vec<u8> = col(&mut row, 0, "node_events.ekey")?;
                let j: Vec<u8> = col(&mut row, 1, "node_events.json")?;
                let e: NodeEvent =
                    serde_json::from_slice(&j).map_err(|err| corrupt(&k, err.to_string()))?;
                f(e);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests;
