//! The per-job sampler: every `sample_interval_s`, one cycle ([`Sampler::cycle`]):
//!
//! 1. scan the node spool for `job_start`/`job_end` records (only files not seen before are
//!    read: spool files are never rewritten, so a name identifies its content);
//! 2. decide which jobs to follow and which ended ([`usage::plan`]);
//! 3. read every GPU once ([`sgpu_nodelib::gpu::GpuSample`], one request on the sampler's own NVML session,
//!    under the watchdog deadline) and add each reading to the job holding the GPU;
//!    each GPU's reading also feeds its live idle detection ([`crate::idle`]) with the
//!    partition's thresholds, and jobs of a partition with an idle policy take its next
//!    step ([`crate::idle_act::Actor`]: warn, mail, cancel);
//! 4. store the changed accumulators and flush the database;
//! 5. finalise each ended job: a `job_usage` record into the spool, then drop its
//!    accumulator (and flush). A crash between the two writes the record again after the
//!    restart (same identity; the receiver deduplicates);
//! 6. publish which spool files it no longer needs ([`Sampler::released`]): the forwarder
//!    ([`crate::forward`]) sends and removes a `job_start`/`job_end` only then.
//!
//! The accumulators live in healthd's own database ([`JobStore`]), so a restart mid-job
//! continues the job's usage where the last flushed batch left it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use sgpu_spool::{Record, RecordBody, RecordId, RecordKind, Spool};
use tracing::{debug, error, info, warn};

use crate::daemon::Session;
use crate::idle_act::Actor;
use crate::status::{JobLabels, Shared};
use crate::store::JobStore;
use crate::usage::{self, JobAccumulator, SpoolJobs};
use sgpu_nodelib::config::{Config, IdleConfig};
use sgpu_nodelib::gpu::NvmlOptions;

/// A spool file as the sampler remembers it.
#[derive(Debug, Clone)]
enum Seen {
    /// A job-start record; `new`: it appeared after the sampler's first scan.
    Start(RecordId, sgpu_spool::JobStart, bool),
    /// A job-end record.
    End(RecordId, sgpu_spool::JobEnd),
    /// Anything else (other kinds, unreadable files).
    Other,
}

/// What one cycle did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CycleReport {
    /// Jobs newly followed.
    pub followed: Vec<String>,
    /// Jobs finalised (usage record written).
    pub finalised: Vec<String>,
    /// Whether the GPUs could be read.
    pub sampled: bool,
}

/// The sampler's state.
pub struct Sampler {
    spool_dir: PathBuf,
    spool: Option<Spool>,
    seen: HashMap<OsString, Seen>,
    scanned_once: bool,
    store: Box<dyn JobStore>,
    jobs: BTreeMap<String, JobAccumulator>,
    session: Session,
    shared: Arc<Shared>,
    complaints: BTreeSet<String>,
    idle: IdleConfig,
    actor: Option<Actor>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("spool_dir", &self.spool_dir)
            .field("jobs", &self.jobs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Sampler {
    /// A sampler over `config`'s spool, keeping accumulators in `store` (loaded now).
    pub fn new(config: &Config, store: Box<dyn JobStore>, shared: Arc<Shared>) -> Sampler {
        let (jobs, errors) = store.load();
        for e in errors {
            error!("{e}; that job's usage is lost");
        }
        if !jobs.is_empty() {
            info!(
                jobs = ?jobs.keys().collect::<Vec<_>>(),
                "continuing the usage of {} running job(s) from the job database",
                jobs.len()
            );
        }
        Sampler {
            spool_dir: config.spool_dir.clone(),
            spool: None,
            seen: HashMap::new(),
            scanned_once: false,
            store,
            jobs,
            session: Session::new(NvmlOptions::from_config(config)),
            shared,
            complaints: BTreeSet::new(),
            idle: config.idle.clone(),
            actor: None,
        }
    }

    /// Carries out the idle policy through `actor` (without one, idle GPUs are only
    /// measured).
    pub fn with_actor(mut self, actor: Actor) -> Sampler {
        self.actor = actor.any_policy().then_some(actor);
        self
    }

    /// The jobs followed now.
    pub fn jobs(&self) -> &BTreeMap<String, JobAccumulator> {
        &self.jobs
    }

    /// Logs `what` at warn level once until [`Sampler::cleared`] is called for its topic.
    fn complain(&mut self, topic: &str, what: &str) {
        if self.complaints.insert(topic.to_string()) {
            warn!("{what}");
        } else {
            debug!("{what}");
        }
    }

    fn cleared(&mut self, topic: &str) {
        if self.complaints.remove(topic) {
            info!("{topic}: working again");
        }
    }

    fn spool(&mut self) -> Option<Spool> {
        if self.spool.is_none() {
            match Spool::open(&self.spool_dir) {
                Ok(s) => {
                    self.cleared("spool");
                    self.spool = Some(s);
                }
                Err(e) => self.complain("spool", &format!("spool: {e}; retrying every sample")),
            }
        }
        self.spool.clone()
    }

    /// Reads the spool's new start/end records.
    fn scan(&mut self) -> SpoolJobs {
        let Some(spool) = self.spool() else {
            return self.spool_jobs();
        };
        let entries = match spool.list() {
            Ok(e) => {
                self.cleared("spool listing");
                e
            }
            Err(e) => {
                self.complain("spool listing", &format!("spool: {e}"));
                return self.spool_jobs();
            }
        };
        let mut present: BTreeSet<OsString> = BTreeSet::new();
        for entry in entries {
            let name = entry.file_name().to_os_string();
            present.insert(name.clone());
            if self.seen.contains_key(&name) {
                continue;
            }
            let wanted = entry
                .key()
                .is_some_and(|k| k.ends_with(",job_start") || k.ends_with(",job_end"));
            let seen = if wanted {
                match spool.read(&entry) {
                    Ok(r) => {
                        let (id, _, body) = r.into_parts();
                        match body {
                            RecordBody::JobStart(s) if id.step().is_none() => {
                                Seen::Start(id, s, self.scanned_once)
                            }
                            RecordBody::JobEnd(e) if id.step().is_none() => Seen::End(id, e),
                            _ => Seen::Other,
                        }
                    }
                    Err(e) if e.is_corrupt() => {
                        debug!("spool: {e} (left for the forwarder to quarantine)");
                        Seen::Other
                    }
                    Err(e) => {
                        // transient: try again next cycle
                        debug!("spool: {e}");
                        continue;
                    }
                }
            } else {
                Seen::Other
            };
            self.seen.insert(name, seen);
        }
        self.seen.retain(|name, _| present.contains(name));
        self.scanned_once = true;
        self.spool_jobs()
    }

    fn spool_jobs(&self) -> SpoolJobs {
        let mut out = SpoolJobs::default();
        for s in self.seen.values() {
            match s {
                Seen::Start(id, start, new) => out.starts.push((id.clone(), start.clone(), *new)),
                Seen::End(id, end) => out.ends.push((id.clone(), end.clone())),
                Seen::Other => {}
            }
        }
        out
    }

    /// After finalising `acc`, its start record is no longer "new": it must not be
    /// followed again.
    fn mark_done(&mut self, acc: &JobAccumulator) {
        let key = acc.key();
        for s in self.seen.values_mut() {
            if let Seen::Start(id, start, new) = s {
                if *new && JobAccumulator::from_start(id, start).key() == key {
                    *new = false;
                }
            }
        }
    }

    /// One sampling cycle (see the module documentation).
    pub fn cycle(&mut self) -> CycleReport {
        let began = Instant::now();
        let mut report = CycleReport::default();
        let spool_jobs = self.scan();
        let plan = usage::plan(&spool_jobs, &self.jobs);
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        for acc in plan.follow {
            let key = acc.key();
            info!(
                job = acc.job_id,
                user = %acc.user,
                gpus = ?acc.gpus.iter().map(|g| g.uuid.as_str()).collect::<Vec<_>>(),
                "sampling job {}",
                acc.job_id
            );
            report.followed.push(key.clone());
            dirty.insert(key.clone());
            self.jobs.insert(key, acc);
        }
        let ended: BTreeSet<&String> = plan.finalise.iter().map(|(k, _)| k).collect();
        let owners = usage::gpu_owners(
            self.jobs
                .iter()
                .filter(|(k, _)| !ended.contains(k))
                .map(|(_, a)| a),
        );
        let samples = self.session.sample();
        let at_ms = sgpu_spool::now_ms();
        match &samples {
            Ok(batch) => {
                self.cleared("sampling");
                report.sampled = true;
                for (key, acc) in self.jobs.iter_mut() {
                    let detect = self.idle.detect_for(acc.partition.as_deref());
                    if !ended.contains(key) && acc.add_detect(batch, at_ms, &owners, &detect) {
                        dirty.insert(key.clone());
                        if let Some(actor) = self.actor.as_mut() {
                            actor.step(acc, at_ms);
                        }
                    }
                }
            }
            Err(f) => self.complain("sampling", &format!("sampling: {f}")),
        }
        self.persist(&dirty);

        let mut finalised = false;
        for (key, end) in &plan.finalise {
            let Some(acc) = self.jobs.get(key).cloned() else {
                continue;
            };
            if self.finalise(&acc, end) {
                report.finalised.push(key.clone());
                self.jobs.remove(key);
                self.mark_done(&acc);
                if let Err(e) = self.store.remove(key) {
                    error!("{e}");
                }
                finalised = true;
            }
        }
        if finalised {
            if let Err(e) = self.store.flush() {
                error!("{e}");
            }
        }

        self.shared.record_spool_released(self.released());
        let holders: BTreeMap<String, JobLabels> = owners
            .iter()
            .filter_map(|(uuid, key)| Some((uuid.clone(), JobLabels::of(self.jobs.get(key)?))))
            .collect();
        self.shared.record_sample(
            samples.as_deref(),
            at_ms,
            self.jobs.values().cloned().collect(),
            holders,
            began.elapsed(),
        );
        report
    }

    /// The spool files scanned so far that the sampler no longer needs: all of them but the
    /// `job_end` of a job it follows and has not finalised. A start is no longer needed once
    /// scanned: the cycle that scanned it took the job in (and stored it) or left it.
    pub fn released(&self) -> BTreeSet<OsString> {
        self.seen
            .iter()
            .filter(|(_, s)| match s {
                Seen::End(id, end) => !self.jobs.values().any(|acc| acc.ended_by(id, end)),
                _ => true,
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn persist(&mut self, dirty: &BTreeSet<String>) {
        if dirty.is_empty() {
            return;
        }
        let mut failed = None;
        for key in dirty {
            if let Some(acc) = self.jobs.get(key) {
                if let Err(e) = self.store.put(acc) {
                    failed = Some(e.to_string());
                }
            }
        }
        if failed.is_none() {
            if let Err(e) = self.store.flush() {
                failed = Some(e.to_string());
            }
        }
        match failed {
            Some(e) => self.complain(
                "job database",
                &format!("{e}; usage is kept in memory only"),
            ),
            None => self.cleared("job database"),
        }
    }

    /// Writes `acc`'s usage record; whether it is in the spool.
    fn finalise(&mut self, acc: &JobAccumulator, end: &sgpu_spool::JobEnd) -> bool {
        let usage = acc.finalise(end);
        let id = match RecordId::new(
            acc.cluster.clone(),
            acc.job_id,
            None,
            acc.node.clone(),
            RecordKind::JobUsage,
        )
        .and_then(|id| id.with_run(acc.run))
        {
            Ok(id) => id,
            Err(e) => {
                error!(job = acc.job_id, "job usage record: {e}; dropping the job");
                return true;
            }
        };
        let (mean, used, allocated) = (acc.util_mean(), usage.used_gpu_ms, usage.allocated_gpu_ms);
        let energy: Option<u64> = usage
            .gpus
            .iter()
            .filter_map(|g| g.energy_mj)
            .reduce(u64::saturating_add);
        let record = match Record::new_now(id, RecordBody::JobUsage(usage)) {
            Ok(r) => r,
            Err(e) => {
                error!(
                    job = acc.job_id,
                    "job usage record is invalid: {e}; dropping the job"
                );
                return true;
            }
        };
        let Some(spool) = self.spool() else {
            return false;
        };
        match spool.write(&record) {
            Ok(_) => {
                info!(
                    job = acc.job_id,
                    util_mean_pct = format!("{mean:.1}"),
                    used_gpu_ms = used,
                    allocated_gpu_ms = allocated,
                    energy_mj = ?energy,
                    "job {} ended: usage record written",
                    acc.job_id
                );
                self.shared.record_finalised();
                true
            }
            Err(e) => {
                self.complain(
                    &format!("finalise {}", acc.key()),
                    &format!(
                        "job {}: cannot spool its usage record: {e}; retrying",
                        acc.job_id
                    ),
                );
                false
            }
        }
    }
}

/// Runs `sampler`'s cycles until the returned task is aborted; `interval`
/// between cycle starts (a slow cycle delays the next, never overlaps it).
pub async fn run(mut sampler: Sampler, interval: std::time::Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let job = tokio::task::spawn_blocking(move || {
            sampler.cycle();
            sampler
        });
        match job.await {
            Ok(s) => sampler = s,
            Err(e) => {
                error!("the sampler failed: {e}; per-job sampling stops");
                return;
            }
        }
    }
}
