//! The job's GPU summary in Slurm's own job record: `AdminComment` (issue 16 §4).
//!
//! At job end acctd writes a compact summary of the job's GPU figures into the job's
//! `AdminComment` in slurmdbd, so `sacct -j ID -o AdminComment` shows it at any site with
//! slurmdbd (the convention of Princeton's jobstats: a prefix, then the encoded summary).
//!
//! **Who writes, and when.** Only acctd writes, on the head node: it is the one place that
//! sees every node's records of a job, so the nodes of a multi-node job never overwrite
//! each other. A job's summary is due when a `job_end` or `job_usage` of it was stored and
//! no further record of it arrived for the settle delay ([`AdminCommentConfig::delay`]);
//! it is written only when every node with a `job_start` of the job's latest run also has
//! its `job_end` (a later record makes it due again, and the summary is written again with
//! it). The write is `sacctmgr -i modify job where jobid=<JobID> cluster=<cluster> set
//! AdminComment=<prefix><summary>`, which slurmdbd accepts for finished jobs from an
//! operator (root, the SlurmUser, `AdminLevel=Operator`); `<JobID>` is sacct's name of the
//! job (`123_4` for an array task: `jobid=123` would name every task of array 123). Before
//! writing, acctd reads the job's current `AdminComment` (`sacct -X -n -P -o
//! JobIDRaw,JobID,AdminComment`) and leaves a comment alone that is neither empty nor its
//! own (an admin's note or another tool's summary), logging that it did.
//!
//! **Format.** `<prefix><base32 of the JSON>` (RFC 4648 alphabet in lower case, padded
//! with `=`): sacctmgr turns every quote of a value into a backquote and slurmdbd puts the
//! value between single quotes, so raw JSON cannot pass; and sacctmgr before Slurm 23.02
//! writes AdminComment in lower case (measured on 22.05: `AdminComment=AbC` is stored as
//! `abc`; 23.02's CHANGELOG: "no longer force updates to the AdminComment ... to
//! lower-case"), which breaks base64. Lower-case base32 passes all three unchanged; decode
//! it with `tr a-z A-Z | base32 -d`, or any RFC 4648 decoder. The JSON
//! ([`Summary`]) is version 1 (`"v":1`), integers in records' units (GPU-ms, mJ, MiB), and
//! a figure sgpu did not measure is absent (unknown), never 0. Nothing in it comes from
//! text a user sets (job name, comment, paths): only numbers, the node names and the GPU
//! models NVML reported, from sgpu's own records.
//!
//! **Length.** slurmdbd keeps `admin_comment` in a MySQL `text` column (65,535 bytes;
//! `src/plugins/accounting_storage/mysql/accounting_storage_mysql.c`), and slurmctld checks
//! no length for it (`_test_strlen` in `src/slurmctld/job_mgr.c` lists `comment` at 1,024,
//! not `admin_comment`). The summary is kept within [`MAX_ADMIN_COMMENT_BYTES`]
//! (4,096: far below the column, and short enough for tools that print it): past it the
//! per-GPU list is left out (`gpus_omitted` says how many).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sgpu_spool::{NodeEvent, Record, RecordBody};
use sgpu_wire::efficiency::EfficiencyAnswer;
use tokio::sync::mpsc;

use crate::rollup::{RollupKey, RollupValue};
use crate::store::{Conflict, PurgeStats, PutOutcome, Store, StoreError};

/// The default prefix of sgpu's AdminComment.
pub const DEFAULT_PREFIX: &str = "sgpu1:";

/// The most bytes of an AdminComment sgpu writes (prefix included).
pub const MAX_ADMIN_COMMENT_BYTES: usize = 4096;

/// The summary's schema version.
pub const SUMMARY_VERSION: u32 = 1;

/// How acctd writes AdminComments.
#[derive(Debug, Clone)]
pub struct AdminCommentConfig {
    /// The text before the encoded summary; marks the comment as sgpu's.
    pub prefix: String,
    /// Directory of `sacct` and `sacctmgr` (`None`: found on `PATH`).
    pub slurm_bin: Option<PathBuf>,
    /// Quiet time after a job's last record before its summary is written.
    pub delay: Duration,
    /// How long one `sacct` or `sacctmgr` may run.
    pub timeout: Duration,
    /// Tries per job when slurmdbd does not have the job yet or a client fails.
    pub tries: u32,
    /// Where the jobs still due are kept across restarts (`None`: in memory only).
    pub due_file: Option<PathBuf>,
}

impl AdminCommentConfig {
    /// Defaults with `prefix`.
    pub fn new(prefix: &str) -> AdminCommentConfig {
        AdminCommentConfig {
            prefix: prefix.to_string(),
            slurm_bin: None,
            delay: Duration::from_secs(30),
            timeout: Duration::from_secs(20),
            tries: 5,
            due_file: None,
        }
    }

    fn program(&self, name: &str) -> PathBuf {
        self.slurm_bin
            .as_ref()
            .map_or_else(|| PathBuf::from(name), |d| d.join(name))
    }
}

/// One GPU in a [`Summary`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryGpu {
    /// Node.
    pub node: String,
    /// GPU index.
    pub index: u32,
    /// Model, as NVML names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Allocated GPU-ms.
    pub alloc_gpu_ms: u64,
    /// Used GPU-ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_gpu_ms: Option<u64>,
    /// Mean utilization, percent (one decimal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub util_mean: Option<f64>,
    /// Highest utilization, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub util_max: Option<u32>,
    /// Memory peak, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_peak_mib: Option<u64>,
    /// The GPU's memory, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_mib: Option<u64>,
    /// Energy, mJ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_mj: Option<u64>,
    /// Idle time, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
}

/// The JSON sgpu writes into AdminComment (version [`SUMMARY_VERSION`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Schema version.
    pub v: u32,
    /// The job's run (requeues before it).
    pub run: u32,
    /// GPUs allocated.
    pub gpus: u32,
    /// Allocated GPU-ms.
    pub alloc_gpu_ms: u64,
    /// Used GPU-ms (absent: not sampled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_gpu_ms: Option<u64>,
    /// Idle GPU-ms (absent: not measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_gpu_ms: Option<u64>,
    /// Energy, mJ (absent: not read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_mj: Option<u64>,
    /// Per GPU (empty when left out for length, see `gpus_omitted`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_gpu: Vec<SummaryGpu>,
    /// GPUs left out of `per_gpu` to keep the comment within its length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus_omitted: Option<u32>,
}

impl Summary {
    /// The summary of a finished job's efficiency figures.
    pub fn of(e: &EfficiencyAnswer) -> Summary {
        Summary {
            v: SUMMARY_VERSION,
            run: e.run,
            gpus: u32::try_from(e.gpus.len()).unwrap_or(u32::MAX),
            alloc_gpu_ms: e.allocated_gpu_ms,
            used_gpu_ms: e.used_gpu_ms,
            idle_gpu_ms: e.idle_gpu_ms,
            energy_mj: e.energy_mj,
            per_gpu: e
                .gpus
                .iter()
                .map(|g| SummaryGpu {
                    node: g.node.clone(),
                    index: g.index,
                    model: g.model.clone(),
                    alloc_gpu_ms: g.allocated_gpu_ms,
                    used_gpu_ms: g.used_gpu_ms,
                    util_mean: g.util_mean_pct.map(|u| (u * 10.0).round() / 10.0),
                    util_max: g.util_max_pct,
                    mem_peak_mib: g.mem_peak_mib,
                    mem_mib: g.mem_total_mib,
                    energy_mj: g.energy_mj,
                    idle_ms: g.idle_ms,
                })
                .collect(),
            gpus_omitted: None,
        }
    }

    /// `prefix` + lower-case base32 of the JSON, within [`MAX_ADMIN_COMMENT_BYTES`] (the per-GPU list
    /// left out when it does not fit); `None` if even that does not fit.
    pub fn encode(&self, prefix: &str) -> Option<String> {
        let text = |s: &Summary| -> Option<String> {
            let json = serde_json::to_vec(s).ok()?;
            Some(format!("{prefix}{}", base32_encode(&json)))
        };
        let full = text(self)?;
        if full.len() <= MAX_ADMIN_COMMENT_BYTES {
            return Some(full);
        }
        let mut short = self.clone();
        short.gpus_omitted = Some(u32::try_from(short.per_gpu.len()).unwrap_or(u32::MAX));
        short.per_gpu.clear();
        text(&short).filter(|t| t.len() <= MAX_ADMIN_COMMENT_BYTES)
    }

    /// Reads an AdminComment written with `prefix`.
    pub fn decode(comment: &str, prefix: &str) -> Result<Summary, DecodeError> {
        let body = comment
            .get(..prefix.len())
            .filter(|p| p.eq_ignore_ascii_case(prefix))
            .map(|_| &comment[prefix.len()..])
            .ok_or_else(|| DecodeError::Prefix(prefix.to_string()))?;
        let json = base32_decode(body.trim()).ok_or(DecodeError::NotBase32)?;
        serde_json::from_slice(&json).map_err(DecodeError::Json)
    }
}

/// Why an AdminComment is not a summary sgpu wrote.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// It does not start with the prefix (another writer's comment, or another prefix).
    #[error(
        "AdminComment does not start with {0:?}: not sgpu's, or written with another \
         --admin-comment-prefix"
    )]
    Prefix(String),
    /// What follows the prefix is not base32.
    #[error("AdminComment: not base32 after the prefix (edited by hand, or cut short)")]
    NotBase32,
    /// The decoded bytes are not a summary.
    #[error("AdminComment's JSON: {0}")]
    Json(serde_json::Error),
}

const B32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// RFC 4648 base32 in lower case, padded with `=`.
pub fn base32_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    for chunk in data.chunks(5) {
        let mut b = [0u8; 5];
        b[..chunk.len()].copy_from_slice(chunk);
        let n = b.iter().fold(0u64, |n, &x| (n << 8) | u64::from(x));
        // characters that carry data: ceil(bits / 5)
        let used = (chunk.len() * 8).div_ceil(5);
        for i in 0..8 {
            if i < used {
                out.push(char::from(B32[((n >> (35 - 5 * i)) & 31) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// RFC 4648 base32 in either case, padding required; `None` when it is not.
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if bytes.len() % 8 != 0 {
        return None;
    }
    let groups = bytes.len() / 8;
    let mut out = Vec::with_capacity(groups * 5);
    for (i, q) in bytes.chunks(8).enumerate() {
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        // padding only at the very end, and only the lengths RFC 4648 allows
        if (pad > 0 && i + 1 != groups) || ![0, 1, 3, 4, 6].contains(&pad) {
            return None;
        }
        let mut n = 0u64;
        for &c in &q[..8 - pad] {
            let v = B32.iter().position(|&x| x == c.to_ascii_lowercase())?;
            n = (n << 5) | v as u64;
        }
        n <<= 5 * pad as u64;
        let len = match pad {
            0 => 5,
            1 => 4,
            3 => 3,
            4 => 2,
            _ => 1,
        };
        let got = n.to_be_bytes();
        out.extend_from_slice(&got[3..3 + len]);
    }
    Some(out)
}

/// The summary of a job from its records, when every node of its latest run has ended.
pub fn summary_of(cluster: &str, job_id: u32, records: &[Record]) -> Option<Summary> {
    let run = records.iter().map(|r| r.id().run()).max()?;
    let mut started = std::collections::BTreeSet::new();
    let mut ended = std::collections::BTreeSet::new();
    for r in records.iter().filter(|r| r.id().run() == run) {
        match r.body() {
            RecordBody::JobStart(_) => {
                started.insert(r.id().node());
            }
            RecordBody::JobEnd(_) => {
                ended.insert(r.id().node());
            }
            _ => {}
        }
    }
    if ended.is_empty() || !started.is_subset(&ended) {
        return None;
    }
    let e = crate::efficiency::efficiency(cluster, job_id, records, 0)?;
    e.end_ms?;
    Some(Summary::of(&e))
}

/// A [`Store`] that tells the AdminComment writer which jobs got a `job_end` or
/// `job_usage` stored; everything else is the wrapped store's.
pub struct NotifyingStore {
    inner: Arc<dyn Store>,
    tx: mpsc::UnboundedSender<(String, u32)>,
}

impl NotifyingStore {
    /// Wraps `inner`; job ids go to `tx`.
    pub fn new(inner: Arc<dyn Store>, tx: mpsc::UnboundedSender<(String, u32)>) -> Self {
        NotifyingStore { inner, tx }
    }

    fn notify(&self, records: &[Record], outcomes: &[PutOutcome]) {
        for (r, o) in records.iter().zip(outcomes) {
            if *o == PutOutcome::Accepted
                && matches!(r.body(), RecordBody::JobEnd(_) | RecordBody::JobUsage(_))
            {
                // the writer is gone only at shutdown
                let _ = self
                    .tx
                    .send((r.id().cluster().to_string(), r.id().job_id()));
            }
        }
    }
}

impl Store for NotifyingStore {
    fn put_batch(&self, records: &[Record]) -> Result<Vec<PutOutcome>, StoreError> {
        let out = self.inner.put_batch(records)?;
        self.notify(records, &out);
        Ok(out)
    }

    fn put_received(
        &self,
        records: &[Record],
        json: &[&[u8]],
    ) -> Result<Vec<PutOutcome>, StoreError> {
        let out = self.inner.put_received(records, json)?;
        self.notify(records, &out);
        Ok(out)
    }

    fn job(&self, cluster: &str, job_id: u32) -> Result<Vec<Record>, StoreError> {
        self.inner.job(cluster, job_id)
    }

    fn for_each_rollup(
        &self,
        first_day: u32,
        last_day: u32,
        f: &mut dyn FnMut(RollupKey, RollupValue),
    ) -> Result<(), StoreError> {
        self.inner.for_each_rollup(first_day, last_day, f)
    }

    fn for_each_record(&self, f: &mut dyn FnMut(Record)) -> Result<(), StoreError> {
        self.inner.for_each_record(f)
    }

    fn purge(
        &self,
        records_before_day: Option<u32>,
        rollups_before_day: Option<u32>,
    ) -> Result<PurgeStats, StoreError> {
        self.inner.purge(records_before_day, rollups_before_day)
    }

    fn put_events(&self, events: &[NodeEvent]) -> Result<Vec<PutOutcome>, StoreError> {
        self.inner.put_events(events)
    }

    fn for_each_record_on_day(
        &self,
        day: u32,
        f: &mut dyn FnMut(Record),
    ) -> Result<(), StoreError> {
        self.inner.for_each_record_on_day(day, f)
    }

    fn days_with_records(&self, first_day: u32, last_day: u32) -> Result<Vec<u32>, StoreError> {
        self.inner.days_with_records(first_day, last_day)
    }

    fn counted_in(&self, cluster: &str, job_id: u32) -> Result<Option<RollupKey>, StoreError> {
        self.inner.counted_in(cluster, job_id)
    }

    fn counted_in_many(
        &self,
        jobs: &[(String, u32)],
    ) -> Result<Vec<Option<RollupKey>>, StoreError> {
        self.inner.counted_in_many(jobs)
    }

    fn for_each_conflict(&self, f: &mut dyn FnMut(Conflict)) -> Result<(), StoreError> {
        self.inner.for_each_conflict(f)
    }

    fn for_each_event(&self, f: &mut dyn FnMut(NodeEvent)) -> Result<(), StoreError> {
        self.inner.for_each_event(f)
    }
}

/// Why one write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A Slurm client could not run or failed.
    #[error("{command}: {error}")]
    Client {
        /// The command.
        command: String,
        /// What went wrong (its stderr, the exit status, the timeout).
        error: String,
    },
    /// slurmdbd has no such job (yet).
    #[error("slurmdbd has no job {0} (yet)")]
    NoJob(String),
}

/// What one write attempt ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// The summary is in AdminComment.
    Written(String),
    /// The job's AdminComment holds text that is not sgpu's: left alone.
    LeftAlone,
}

async fn run(
    program: &std::path::Path,
    args: &[String],
    timeout: Duration,
) -> Result<String, WriteError> {
    let command = format!("{} {}", program.display(), args.join(" "));
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    for var in [
        "SACCT_FORMAT",
        "SLURM_TIME_FORMAT",
        "SLURM_CLUSTERS",
        "SACCTMGR_FORMAT",
    ] {
        cmd.env_remove(var);
    }
    let out = match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            return Err(WriteError::Client {
                command,
                error: e.to_string(),
            });
        }
        Err(_) => {
            return Err(WriteError::Client {
                command,
                error: format!("no answer within {} s", timeout.as_secs()),
            });
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(WriteError::Client {
            command,
            error: format!("{}: {}", out.status, stderr.trim()),
        });
    }
    Ok(stdout)
}

/// Writes job `job_id`'s summary into its AdminComment, unless it holds text not sgpu's.
pub async fn write_one(
    cfg: &AdminCommentConfig,
    cluster: &str,
    job_id: u32,
    comment: &str,
) -> Result<Written, WriteError> {
    let sacct = cfg.program("sacct");
    let id = job_id.to_string();
    let args: Vec<String> = [
        "-M",
        cluster,
        "-j",
        &id,
        "-X",
        "-n",
        "-P",
        "-o",
        "JobIDRaw,JobID,AdminComment",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run(&sacct, &args, cfg.timeout).await?;
    // JobIDRaw|JobID|AdminComment (the comment last: an admin's text may hold '|')
    let Some((name, current)) = out.lines().find_map(|l| {
        let (raw, rest) = l.split_once('|')?;
        let (name, current) = rest.split_once('|')?;
        (raw == id).then(|| (name.to_string(), current.to_string()))
    }) else {
        return Err(WriteError::NoJob(id));
    };
    let ours = current
        .get(..cfg.prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(&cfg.prefix));
    if !current.is_empty() && !ours {
        return Ok(Written::LeftAlone);
    }
    if current == comment {
        return Ok(Written::Written(name));
    }
    let sacctmgr = cfg.program("sacctmgr");
    let args: Vec<String> = vec![
        "-i".into(),
        "modify".into(),
        "job".into(),
        "where".into(),
        format!("jobid={name}"),
        format!("cluster={cluster}"),
        "set".into(),
        format!("AdminComment={comment}"),
    ];
    let out = run(&sacctmgr, &args, cfg.timeout).await?;
    if out.contains("Nothing modified") || !out.contains("Modified") {
        return Err(WriteError::NoJob(name));
    }
    Ok(Written::Written(name))
}

/// The jobs due for a write, kept in `path` across restarts: JSON `[[cluster, job], ...]`.
fn load_due(path: &std::path::Path) -> Vec<(String, u32)> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::error!(file = %path.display(), "AdminComment: unreadable list of due jobs, ignored: {e}");
            Vec::new()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            tracing::error!(file = %path.display(), "AdminComment: reading the list of due jobs: {e}");
            Vec::new()
        }
    }
}

/// Writes the due jobs to `path` (a temporary file renamed over it).
fn save_due(path: &std::path::Path, jobs: &[(String, u32)]) {
    if let Err(e) = write_due_file(path, jobs) {
        tracing::error!(file = %path.display(), "AdminComment: saving the list of due jobs: {e}");
    }
}

/// Writes the due jobs to `path` durably: a new temporary file beside it (created, never
/// opened through a link someone left there: acctd's directory may be writable by others
/// than the writer, e.g. `sgpu-acctd migrate` run as root), synced, renamed over `path`,
/// then the directory synced.
pub(crate) fn write_due_file(
    path: &std::path::Path,
    jobs: &[(String, u32)],
) -> std::io::Result<()> {
    use std::io::Write;
    let bytes = serde_json::to_vec(jobs).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

/// The writer: collects the jobs [`NotifyingStore`] names and writes each one's summary
/// once it has had no new record for the delay. Jobs still due are kept in
/// [`AdminCommentConfig::due_file`] (when set), so a restart of acctd does not lose them.
/// Writes are made one job at a time (two Slurm client calls each). Runs until `rx` closes.
pub async fn writer(
    store: Arc<dyn Store>,
    cfg: AdminCommentConfig,
    mut rx: mpsc::UnboundedReceiver<(String, u32)>,
) {
    // job -> (due at, tries left)
    let mut due: BTreeMap<(String, u32), (Instant, u32)> = BTreeMap::new();
    if let Some(path) = &cfg.due_file {
        for job in load_due(path) {
            due.insert(job, (Instant::now() + cfg.delay, cfg.tries));
        }
    }
    let mut dirty = false;
    let tick = (cfg.delay / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
    // one interval for the whole loop: a steady stream of jobs cannot starve the writes
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Some(job) => {
                    due.insert(job, (Instant::now() + cfg.delay, cfg.tries));
                    dirty = true;
                    continue;
                }
                None => return,
            },
            _ = ticker.tick() => {}
        }
        let now = Instant::now();
        let ready: Vec<((String, u32), u32)> = due
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(k, (_, tries))| (k.clone(), *tries))
            .collect();
        for ((cluster, job_id), tries) in ready {
            due.remove(&(cluster.clone(), job_id));
            dirty = true;
            if let Some(again) = write_due(&store, &cfg, &cluster, job_id).await {
                if tries > 1 {
                    tracing::warn!(
                        job_id,
                        cluster,
                        tries_left = tries - 1,
                        "AdminComment not written yet: {again}"
                    );
                    due.insert((cluster, job_id), (now + cfg.delay, tries - 1));
                } else {
                    tracing::error!(job_id, cluster, "AdminComment not written: {again}");
                }
            }
        }
        if dirty {
            if let Some(path) = &cfg.due_file {
                let jobs: Vec<(String, u32)> = due.keys().cloned().collect();
                save_due(path, &jobs);
            }
            dirty = false;
        }
    }
}

/// One due job: its summary written, or left as it is; `Some(error)` when a try failed and
/// may succeed later.
async fn write_due(
    store: &Arc<dyn Store>,
    cfg: &AdminCommentConfig,
    cluster: &str,
    job_id: u32,
) -> Option<WriteError> {
    let s = store.clone();
    let c = cluster.to_string();
    let records = match tokio::task::spawn_blocking(move || s.job(&c, job_id)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::error!(
                job_id,
                cluster,
                "AdminComment: reading the job's records: {e}"
            );
            return None;
        }
        Err(e) => {
            tracing::error!(job_id, cluster, "AdminComment: {e}");
            return None;
        }
    };
    let Some(summary) = summary_of(cluster, job_id, &records) else {
        tracing::debug!(
            job_id,
            cluster,
            "AdminComment: job not ended on every node yet"
        );
        return None;
    };
    let Some(comment) = summary.encode(&cfg.prefix) else {
        tracing::error!(
            job_id,
            cluster,
            "AdminComment: the summary does not fit {MAX_ADMIN_COMMENT_BYTES} bytes"
        );
        return None;
    };
    match write_one(cfg, cluster, job_id, &comment).await {
        Ok(Written::Written(name)) => {
            tracing::info!(job = %name, cluster, bytes = comment.len(), "AdminComment written");
            None
        }
        Ok(Written::LeftAlone) => {
            tracing::warn!(
                job_id,
                cluster,
                "AdminComment holds text that is not sgpu's (no {:?} prefix): left alone",
                cfg.prefix
            );
            None
        }
        Err(e) => Some(e),
    }
}

#[cfg(test)]
mod tests;
