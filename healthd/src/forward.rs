//! The spool forwarder: moves the node spool's usage records to `sgpu-acctd`.
//!
//! Every `forward_interval_s` ([`run`]) one round ([`Forwarder::round`]) lists the spool
//! (oldest first), reads up to `forward_batch` records, sends them as one
//! `POST /v1/records` and acts on acctd's per-record answer:
//!
//! - `accepted` or `duplicate`: acctd holds the record durably; it is removed from the spool;
//! - `conflict` (or a `duplicate` that `differs`, from an acctd that predates conflicts): a
//!   different record is stored under this identity. acctd keeps this one apart for an admin
//!   (`GET /v1/conflicts`) and counts nothing; the file goes to `bad/` with that reason,
//!   logged at error level, so the node keeps its copy too;
//! - `rejected`: moved to the spool's `bad/` with acctd's reason (logged at error level and
//!   written beside it), never retried and never dropped silently;
//! - no answer for a record (or an error answer for the whole request): left in place and
//!   sent again later (acctd deduplicates by record identity, so delivery is at-least-once
//!   and counting exactly-once).
//!
//! A file that can never be read is quarantined the same way. Rounds repeat batches until
//! nothing eligible is left. A transport error, a 5xx, a missing MUNGE credential or an
//! authorisation refusal ends the round, and the next one waits an exponentially growing,
//! jittered delay (capped by `forward_backoff_max_s`) instead of the interval.
//!
//! **Ordering with the sampler.** The sampler ([`crate::sampler`]) reads `job_start` and
//! `job_end` records from the same spool. After each cycle it publishes the names of the
//! files it no longer needs ([`crate::status::Shared::record_spool_released`]): every file it
//! has scanned, except the `job_end` of a job it follows and has not finalised yet. The
//! forwarder sends a `job_start`/`job_end` file only once it is in that set, so a start is
//! forwarded once the sampler took the job in (persisted in its database) and an end once
//! the job's `job_usage` record is written. Other kinds (`job_usage`, per-step records) go
//! at once. Within a batch records are removed in spool order and the first failing
//! removal stops the rest, so a job's start never outlives its end in the spool (the
//! sampler would take a lone start for a running job).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sgpu_acct_client::{Client, ClientAuth, ClientError, IngestAnswer, RecordAnswer, RecordStatus};
use sgpu_spool::{Entry, Spool};
use tracing::{debug, error, info, warn};

use crate::status::Shared;
use sgpu_nodelib::config::{AccountingConfig, AcctAuth};

/// The most bytes one request carries (acctd's default body limit is 16 MiB).
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Where record batches go: acctd's `POST /v1/records` ([`Client`]), or a test double.
pub trait Sink: Send {
    /// Sends one batch (a JSON array of records); see [`Client::post_records`].
    fn post_records(&self, batch_json: &[u8]) -> Result<IngestAnswer, ClientError>;
}

impl Sink for Client {
    fn post_records(&self, batch_json: &[u8]) -> Result<IngestAnswer, ClientError> {
        Client::post_records(self, batch_json)
    }
}

/// Which `job_start`/`job_end` files may be forwarded.
#[derive(Debug, Clone)]
pub enum Gate {
    /// All of them (no sampler runs on this node).
    Open,
    /// Those the sampler released (none before its first cycle).
    Sampler(Arc<Shared>),
}

impl Gate {
    fn released(&self) -> Option<BTreeSet<OsString>> {
        match self {
            Gate::Open => None,
            Gate::Sampler(shared) => Some(shared.lock().spool_released.clone()),
        }
    }
}

/// Whether a spool file holds a record the sampler reads (by its name's key).
fn sampler_reads(entry: &Entry) -> bool {
    entry
        .key()
        .is_some_and(|k| k.ends_with(",job_start") || k.ends_with(",job_end"))
}

/// The forwarder's counters, shown in `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ForwardStats {
    /// Whether a forwarder runs.
    pub enabled: bool,
    /// Records acctd stored new since healthd started.
    pub accepted_total: u64,
    /// Records acctd already had (resends) since healthd started.
    pub duplicate_total: u64,
    /// Records moved to `bad/` (refused by acctd or unreadable) since healthd started.
    pub rejected_total: u64,
    /// Records acctd answered as conflicts (moved to `bad/` too) since healthd started.
    pub conflict_total: u64,
    /// Rounds that ended in an error since healthd started.
    pub failures_total: u64,
    /// Records in the spool at the end of the last round.
    pub backlog: u64,
    /// Of those, `job_start`/`job_end` records the sampler still holds back.
    pub held: u64,
    /// When a round last ended without an error, Unix ms.
    pub last_success_ms: Option<u64>,
    /// Why the last round failed, while the failure lasts.
    pub last_error: Option<String>,
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Requests sent.
    pub batches: u64,
    /// Records acctd stored new.
    pub accepted: u64,
    /// Records acctd already had.
    pub duplicate: u64,
    /// Records moved to `bad/`.
    pub rejected: u64,
    /// Records acctd answered as conflicts (moved to `bad/`).
    pub conflict: u64,
    /// Records left in the spool.
    pub backlog: u64,
    /// Of those, held back for the sampler.
    pub held: u64,
    /// Why the round stopped early, if it did (retry after a backoff).
    pub error: Option<String>,
}

/// Whether a failed request is worth retrying unchanged later. Everything but a 413 is:
/// an authorisation refusal is a configuration problem an admin fixes, not a reason to
/// drop records.
fn too_large(e: &ClientError) -> bool {
    matches!(e, ClientError::Http { status: 413, .. })
}

/// The spool forwarder's state.
pub struct Forwarder {
    spool_dir: std::path::PathBuf,
    spool: Option<Spool>,
    sink: Box<dyn Sink>,
    batch: usize,
    gate: Gate,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("spool_dir", &self.spool_dir)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

/// A read record ready to send.
struct Pending {
    entry: Entry,
    json: Vec<u8>,
}

/// Where a round is in the spool listing it walks.
struct Cursor<'a> {
    /// The round's listing.
    entries: &'a [Entry],
    /// The next entry to look at.
    next: usize,
    /// Entries skipped so far because the sampler has not released them.
    held: u64,
    /// What the sampler released (`None`: no sampler, everything may go).
    released: Option<&'a BTreeSet<OsString>>,
}

/// The body of `POST /v1/records`: the batch's records as one JSON array.
fn json_array(batch: &[Pending]) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 + batch.iter().map(|p| p.json.len() + 1).sum::<usize>());
    body.push(b'[');
    for (i, p) in batch.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&p.json);
    }
    body.push(b']');
    body
}

/// Why a round stopped before acctd's answer was acted on in full; what is left is sent again
/// next round (acctd answers `duplicate` for what it already has).
#[derive(Debug, thiserror::Error)]
enum RoundError {
    /// The spool cannot be opened.
    #[error("spool: {0}")]
    Spool(sgpu_spool::SpoolError),
    /// A record could not be moved to `bad/`.
    #[error("cannot move {} to bad/", .0.display())]
    Quarantine(std::path::PathBuf),
    /// An acknowledged record could not be removed.
    #[error(
        "cannot remove {}: {error}; acknowledged records are sent again (acctd keeps one copy)",
        path.display()
    )]
    Remove {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    /// The spool directory could not be synced after removals.
    #[error("fsync {}: {error}", dir.display())]
    Fsync {
        dir: std::path::PathBuf,
        error: std::io::Error,
    },
    /// acctd answered for fewer records than were sent.
    #[error("acctd's answer covered {answered} of {sent} records; the rest is sent again")]
    Partial { answered: usize, sent: usize },
}

impl Forwarder {
    /// A forwarder of the spool at `spool_dir` to `sink`, `batch` records per request.
    pub fn new(
        spool_dir: impl Into<std::path::PathBuf>,
        sink: Box<dyn Sink>,
        batch: usize,
        gate: Gate,
    ) -> Forwarder {
        Forwarder {
            spool_dir: spool_dir.into(),
            spool: None,
            sink,
            batch: batch.max(1),
            gate,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Set it to end the current round after its request in flight (daemon shutdown).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    fn spool(&mut self) -> Result<Spool, RoundError> {
        if let Some(s) = &self.spool {
            return Ok(s.clone());
        }
        let s = Spool::open(&self.spool_dir).map_err(RoundError::Spool)?;
        self.spool = Some(s.clone());
        Ok(s)
    }

    /// Sends everything eligible, batch after batch, until nothing is left or a request
    /// fails (see the module documentation).
    pub fn round(&mut self) -> RoundReport {
        let mut report = RoundReport::default();
        let spool = match self.spool() {
            Ok(s) => s,
            Err(e) => {
                report.error = Some(e.to_string());
                return report;
            }
        };
        // The spool is listed once per round and walked in order (listing it again for every
        // batch made a large backlog quadratic); records written meanwhile wait for the
        // next round.
        let released = self.gate.released();
        let entries = match spool.list() {
            Ok(e) => e,
            Err(e) => {
                report.error = Some(format!("spool: {e}"));
                return report;
            }
        };
        let mut next = 0usize;
        let mut held = 0u64;
        let mut limit = self.batch;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                report.error = Some("healthd is stopping".into());
                return report;
            }
            let (batch_start, held_before) = (next, held);
            let mut cursor = Cursor {
                entries: &entries,
                next,
                held,
                released: released.as_ref(),
            };
            let batch = self.next_batch(&spool, &mut cursor, limit, &mut report);
            (next, held) = (cursor.next, cursor.held);
            if batch.is_empty() {
                report.held = held;
                report.backlog = count_left(&spool).unwrap_or(entries.len() as u64);
                return report;
            }
            let body = json_array(&batch);
            report.batches += 1;
            match self.sink.post_records(&body) {
                Ok(reply) => {
                    limit = self.batch;
                    if let Err(e) = self.settle(&spool, &batch, &reply, &mut report) {
                        report.error = Some(e.to_string());
                        report.backlog = count_left(&spool).unwrap_or(0);
                        return report;
                    }
                }
                Err(e) if too_large(&e) && batch.len() > 1 => {
                    // the same records again, fewer at a time
                    (next, held) = (batch_start, held_before);
                    limit = (batch.len() / 2).max(1);
                    warn!(
                        "acctd refused a batch of {} records as too large; sending {limit} at a time",
                        batch.len()
                    );
                }
                Err(e) if too_large(&e) => {
                    let p = &batch[0];
                    let why = format!("acctd refused the record as too large: {e}");
                    if self.quarantine(&spool, &p.entry, &why) {
                        report.rejected += 1;
                    }
                }
                Err(e) => {
                    report.error = Some(e.to_string());
                    report.held = held;
                    report.backlog = count_left(&spool).unwrap_or(entries.len() as u64);
                    return report;
                }
            }
        }
    }

    /// The next batch from `cursor`: at most `limit` records and about [`MAX_BATCH_BYTES`],
    /// in spool order. Records the sampler has not released are skipped and counted as
    /// held; a record that cannot be read or encoded is quarantined (counted as rejected);
    /// one that cannot be read for now waits for the next round.
    fn next_batch(
        &self,
        spool: &Spool,
        cursor: &mut Cursor<'_>,
        limit: usize,
        report: &mut RoundReport,
    ) -> Vec<Pending> {
        let mut batch: Vec<Pending> = Vec::new();
        let mut bytes = 2usize;
        while let Some(entry) = cursor.entries.get(cursor.next) {
            if batch.len() >= limit || bytes >= MAX_BATCH_BYTES {
                break;
            }
            cursor.next += 1;
            if let Some(r) = cursor.released {
                if sampler_reads(entry) && !r.contains(entry.file_name()) {
                    cursor.held += 1;
                    continue;
                }
            }
            match spool.read(entry) {
                Ok(record) => match record.to_json() {
                    Ok(json) => {
                        bytes += json.len() + 1;
                        batch.push(Pending {
                            entry: entry.clone(),
                            json,
                        });
                    }
                    Err(e) => {
                        if self.quarantine(spool, entry, &format!("cannot encode: {e}")) {
                            report.rejected += 1;
                        }
                    }
                },
                Err(e) if e.is_corrupt() => {
                    if self.quarantine(spool, entry, &e.to_string()) {
                        report.rejected += 1;
                    }
                }
                Err(e) => {
                    debug!("spool: {e}; trying again next round");
                }
            }
        }
        batch
    }

    /// Acts on acctd's answer for `batch`, in spool order; stops at the first removal that
    /// fails (the rest is sent again and comes back `duplicate`). Acknowledged files are
    /// unlinked one by one and their directory fsynced once at the end (one fsync per
    /// record made removal the bottleneck); a removal lost to a crash before that fsync
    /// only means a resend, which acctd answers `duplicate`.
    fn settle(
        &self,
        spool: &Spool,
        batch: &[Pending],
        reply: &IngestAnswer,
        report: &mut RoundReport,
    ) -> Result<(), RoundError> {
        let mut removed_from: Option<std::path::PathBuf> = None;
        let outcome = self.settle_unsynced(spool, batch, reply, report, &mut removed_from);
        if let Some(dir) = removed_from {
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|error| RoundError::Fsync { dir, error })?;
        }
        outcome
    }

    fn settle_unsynced(
        &self,
        spool: &Spool,
        batch: &[Pending],
        reply: &IngestAnswer,
        report: &mut RoundReport,
        removed_from: &mut Option<std::path::PathBuf>,
    ) -> Result<(), RoundError> {
        let mut answers: Vec<Option<&RecordAnswer>> = vec![None; batch.len()];
        for r in &reply.results {
            if let Some(slot) = answers.get_mut(r.index) {
                *slot = Some(r);
            }
        }
        let mut unanswered = 0usize;
        for (p, answer) in batch.iter().zip(answers) {
            let Some(a) = answer else {
                unanswered += 1;
                continue;
            };
            let conflict = a.status == RecordStatus::Conflict
                || (a.status == RecordStatus::Duplicate && a.differs);
            if conflict {
                let why = format!(
                    "acctd holds a different record under this identity ({}): {}",
                    a.key.as_deref().unwrap_or("key unknown"),
                    a.error.as_deref().unwrap_or(
                        "this one was not counted (an acctd without a conflicts list: only \
                         this copy is left)"
                    )
                );
                if !self.quarantine(spool, &p.entry, &why) {
                    return Err(RoundError::Quarantine(p.entry.path().to_path_buf()));
                }
                report.conflict += 1;
                continue;
            }
            match a.status {
                RecordStatus::Accepted | RecordStatus::Duplicate => {
                    let path = p.entry.path();
                    match std::fs::remove_file(path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(error) => {
                            return Err(RoundError::Remove {
                                path: path.to_path_buf(),
                                error,
                            });
                        }
                    }
                    if removed_from.is_none() {
                        *removed_from = path.parent().map(std::path::Path::to_path_buf);
                    }
                    if a.status == RecordStatus::Accepted {
                        report.accepted += 1;
                    } else {
                        report.duplicate += 1;
                    }
                }
                RecordStatus::Rejected => {
                    let why = format!(
                        "acctd rejected it: {}{}",
                        a.field
                            .as_deref()
                            .map(|f| format!("field {f}: "))
                            .unwrap_or_default(),
                        a.error.as_deref().unwrap_or("no reason given")
                    );
                    if !self.quarantine(spool, &p.entry, &why) {
                        return Err(RoundError::Quarantine(p.entry.path().to_path_buf()));
                    }
                    report.rejected += 1;
                }
                RecordStatus::Conflict | RecordStatus::Unknown => {
                    unanswered += 1;
                    warn!(
                        "acctd answered a status this healthd does not know for {}; sending it \
                         again later",
                        p.entry.path().display()
                    );
                }
            }
        }
        if unanswered > 0 {
            return Err(RoundError::Partial {
                answered: batch.len() - unanswered,
                sent: batch.len(),
            });
        }
        Ok(())
    }

    /// Moves `entry` to `bad/`, logging why; whether it moved.
    fn quarantine(&self, spool: &Spool, entry: &Entry, why: &str) -> bool {
        match spool.quarantine(entry, why) {
            Ok(to) => {
                error!(
                    file = %entry.path().display(),
                    moved_to = %to.display(),
                    "usage record not forwarded: {why}"
                );
                true
            }
            Err(e) => {
                error!(
                    file = %entry.path().display(),
                    "usage record not forwarded ({why}) and cannot be moved to bad/: {e}"
                );
                false
            }
        }
    }
}

fn count_left(spool: &Spool) -> Option<u64> {
    spool.list().ok().map(|e| e.len() as u64)
}

/// Exponential backoff with jitter: the n-th consecutive failure waits a random time
/// between half and all of `min(max, base * 2^n)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
    rng: u64,
}

impl Backoff {
    /// Waits start at `base` and never exceed `max`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        let seed = sgpu_spool::now_ms() ^ (u64::from(std::process::id()) << 32);
        Backoff {
            base,
            max: max.max(base),
            failures: 0,
            rng: seed | 1,
        }
    }

    /// The wait after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let full = self
            .base
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let frac = 0.5 + (r >> 11) as f64 / (1u64 << 53) as f64 / 2.0;
        full.mul_f64(frac)
    }

    /// Forgets the failures (after a success).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// The client for `config`'s acctd, if forwarding is configured.
pub fn client(config: &AccountingConfig) -> Option<Result<Client, ClientError>> {
    let url = config.forward_url()?;
    let auth = match config.auth {
        AcctAuth::None => ClientAuth::None,
        AcctAuth::Munge => ClientAuth::Munge {
            socket: config.munge_socket.clone(),
        },
    };
    Some(Client::new(url, auth, config.forward_timeout))
}

/// Runs rounds forever: every `interval` while they succeed, after a backoff while they
/// fail; records what they do in `shared`.
pub async fn run(
    mut forwarder: Forwarder,
    interval: Duration,
    backoff_max: Duration,
    shared: Arc<Shared>,
) {
    shared.lock().forward.enabled = true;
    let mut backoff = Backoff::new(interval.min(Duration::from_secs(1)), backoff_max);
    let mut failing = false;
    loop {
        let job = tokio::task::spawn_blocking(move || {
            let report = forwarder.round();
            (forwarder, report)
        });
        let report = match job.await {
            Ok((f, report)) => {
                forwarder = f;
                report
            }
            Err(e) => {
                error!(
                    "the spool forwarder failed: {e}; records stay in the spool until healthd restarts"
                );
                return;
            }
        };
        {
            let mut l = shared.lock();
            let s = &mut l.forward;
            s.accepted_total += report.accepted;
            s.duplicate_total += report.duplicate;
            s.rejected_total += report.rejected;
            s.conflict_total += report.conflict;
            s.backlog = report.backlog;
            s.held = report.held;
            match &report.error {
                None => {
                    s.last_success_ms = Some(sgpu_spool::now_ms());
                    s.last_error = None;
                }
                Some(e) => {
                    s.failures_total += 1;
                    s.last_error = Some(e.clone());
                }
            }
        }
        if report.accepted + report.duplicate + report.rejected + report.conflict > 0 {
            info!(
                accepted = report.accepted,
                duplicate = report.duplicate,
                rejected = report.rejected,
                conflict = report.conflict,
                backlog = report.backlog,
                "forwarded usage records to acctd"
            );
        }
        let wait = match &report.error {
            None => {
                if failing {
                    info!("forwarding to acctd works again");
                    failing = false;
                }
                backoff.reset();
                interval
            }
            Some(e) => {
                let wait = backoff.next_delay();
                if failing {
                    debug!("forwarding: {e}; retrying in {wait:?}");
                } else {
                    warn!(
                        backlog = report.backlog,
                        "forwarding to acctd failed: {e}; retrying in {wait:?}, with growing waits while it fails"
                    );
                    failing = true;
                }
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests;
