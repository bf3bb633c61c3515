//! The idle policy carried out ([`Actor`]): for a job of a partition with a policy whose GPUs
//! on this node are all idle ([`crate::idle`]), tell the owner (a line appended to the job's
//! stderr file, written by a child process running as the job's user), mail them through the
//! site's mail program (`PROG -s SUBJECT USER`, as slurmctld runs `MailProg`; no shell), and
//! after the grace period cancel the job (`scancel`), each step as configured. Every action
//! is a node-history event ([`sgpu_spool::NodeEvent`] with its [`JobAction`]) in the spool's
//! `events/`, sent to acctd by healthd's event forwarder.
//!
//! What the policy trusts: the job's owner, uid, gid, account, QOS and state come from
//! `squeue` fields no user can write into (numbers and Slurm's own names), and must agree
//! with the prolog's `job_start` record (same uid); the user's name is Slurm's, never the
//! job's environment. The only user-set things it reads are the stderr path and, to expand
//! `%x` in it, the job name; the file is opened by a child running as the job's user
//! (`setgid`, `setgroups(0)`, `setuid` by `std::process::Command`) with `O_NOFOLLOW` and
//! without `O_CREAT`, and written only when it is a regular file that user owns: root never
//! opens a path a user chose. Exempt accounts and QOS are never warned, mailed nor
//! cancelled. Cancels are bounded per node per hour ([`crate::idle::CancelBudget`]); a dry
//! run records what it would do and does nothing else.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sgpu_nodelib::config::{Config, IdleConfig, IdlePolicy};
use sgpu_nodelib::slurmctl::{Scontrol, SlurmctlError};
use sgpu_spool::{EventSpool, JobAction, NodeAction, NodeEvent};
use tracing::{debug, info, warn};

use crate::idle::{self, CancelBudget, Step};
use crate::status::Shared;
use crate::usage::JobAccumulator;

/// Deadline of one Slurm call or child the policy runs.
pub const ACT_TIMEOUT: Duration = Duration::from_secs(5);

/// The hidden `sgpu-healthd` flag that makes it the appending child.
pub const APPEND_FLAG: &str = "--append-job-output";

/// What Slurm says about a running job, from fields no user can set (but `stderr`/`name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmJob {
    /// Job id.
    pub job_id: u32,
    /// Owner's uid.
    pub uid: u32,
    /// Owner's primary gid (the job's).
    pub gid: u32,
    /// Owner's user name, as Slurm has it.
    pub user: String,
    /// Account (`None`: Slurm shows none).
    pub account: Option<String>,
    /// QOS (`None`: Slurm shows none).
    pub qos: Option<String>,
    /// Job state (`RUNNING`, ...).
    pub state: String,
    /// The batch step's host.
    pub batch_host: Option<String>,
}

/// Why an idle action could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    /// A Slurm command failed.
    #[error(transparent)]
    Slurm(#[from] SlurmctlError),
    /// `squeue` answered something that is not one line of the asked fields.
    #[error("squeue: unexpected answer for job {job}: {line:?}")]
    Answer {
        /// The job.
        job: u32,
        /// What came back (cut).
        line: String,
    },
    /// The stderr path uses a pattern this code does not expand.
    #[error("job {job}: stderr path {path:?} has a %-pattern sgpu does not expand")]
    Pattern {
        /// The job.
        job: u32,
        /// The path as Slurm shows it.
        path: String,
    },
    /// The appending child or the mail program failed.
    #[error("{what}: {message}")]
    Child {
        /// What was run.
        what: String,
        /// How it failed.
        message: String,
    },
}

/// Slurm and the job's owner, as the policy reaches them (a trait, so the policy is tested
/// without Slurm).
pub trait JobControl: Send {
    /// What Slurm says about job `job_id`.
    fn job(&self, job_id: u32) -> Result<SlurmJob, ActError>;
    /// Appends `text` to the job's stderr file, as the job's user.
    fn tell(&self, job: &SlurmJob, text: &str) -> Result<(), ActError>;
    /// Mails `user` through `program` (`program -s subject user`, stdin empty).
    fn mail(&self, program: &Path, user: &str, subject: &str) -> Result<(), ActError>;
    /// Cancels the job.
    fn cancel(&self, job_id: u32) -> Result<(), ActError>;
}

/// [`JobControl`] through `squeue`, `scancel` and `sgpu-healthd --append-job-output`.
#[derive(Debug, Clone)]
pub struct SlurmControl {
    scontrol: Scontrol,
    helper: PathBuf,
}

impl SlurmControl {
    /// Slurm's clients next to `config`'s `scontrol`; the appending child is this binary.
    pub fn new(config: &Config) -> Result<SlurmControl, ActError> {
        let scontrol = Scontrol::locate(config.scontrol.as_deref())?
            .with_timeout(ACT_TIMEOUT)
            .with_max_output(64 << 10);
        let helper = std::env::current_exe().map_err(|e| ActError::Child {
            what: "sgpu-healthd".into(),
            message: format!("cannot find its own executable: {e}"),
        })?;
        Ok(SlurmControl { scontrol, helper })
    }

    fn squeue(&self, job_id: u32, format: &str) -> Result<String, ActError> {
        let out = self.scontrol.run_program(
            &self.scontrol.squeue_path(),
            &[
                "--noheader".into(),
                format!("--jobs={job_id}"),
                format!("--Format={format}"),
            ],
            &[],
        )?;
        let mut lines = out.lines().filter(|l| !l.trim().is_empty());
        match (lines.next(), lines.next()) {
            (Some(line), None) => Ok(line.trim_end().to_string()),
            _ => Err(ActError::Answer {
                job: job_id,
                line: out.chars().take(200).collect(),
            }),
        }
    }

    /// One user-set field (the last of its line, so a `|` in it is kept).
    fn user_field(&self, job_id: u32, field: &str) -> Result<Option<String>, ActError> {
        let line = self.squeue(job_id, &format!("{field}:|"))?;
        let v = line.strip_suffix('|').unwrap_or(&line).trim_start();
        Ok((!v.is_empty() && v != "(null)").then(|| v.to_string()))
    }

    /// The job's stderr path (its stdout's when stderr is not separate: Slurm 22.05's squeue
    /// shows the output path as StdErr then, 26.05's shows `(null)`) with Slurm's `%`
    /// patterns expanded (`%%`, `%j`, `%u`, `%x`, `%N`); another pattern is an error (the
    /// file is then not written).
    fn stderr_path(&self, job: &SlurmJob) -> Result<PathBuf, ActError> {
        let raw = match self.user_field(job.job_id, "StdErr")? {
            Some(p) => p,
            None => self
                .user_field(job.job_id, "StdOut")?
                .ok_or_else(|| ActError::Answer {
                    job: job.job_id,
                    line: "no StdErr nor StdOut".into(),
                })?,
        };
        let name = if raw.contains("%x") {
            self.user_field(job.job_id, "Name")?.unwrap_or_default()
        } else {
            String::new()
        };
        expand_pattern(&raw, job, &name)
            .map(PathBuf::from)
            .ok_or(ActError::Pattern {
                job: job.job_id,
                path: raw,
            })
    }
}

/// Expands Slurm's filename patterns that a batch job's stderr can use; `None` for any
/// other (`%A`, `%a`, `%t`, widths, ...).
pub fn expand_pattern(raw: &str, job: &SlurmJob, name: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '%' => out.push('%'),
            'j' => out.push_str(&job.job_id.to_string()),
            'u' => out.push_str(&job.user),
            'x' => out.push_str(name),
            'N' => out.push_str(job.batch_host.as_deref()?),
            _ => return None,
        }
    }
    Some(out)
}

/// Parses `squeue -O JobID:|,UserId:|,GroupId:|,UserName:|,Account:|,QOS:|,State:|,BatchHost:|`.
fn parse_job(job_id: u32, line: &str) -> Option<SlurmJob> {
    let f: Vec<&str> = line.split('|').map(str::trim).collect();
    if f.len() != 9 || !f[8].is_empty() {
        return None;
    }
    let opt = |s: &str| (!s.is_empty() && s != "(null)" && s != "N/A").then(|| s.to_string());
    Some(SlurmJob {
        job_id,
        uid: f[1].parse().ok()?,
        gid: f[2].parse().ok()?,
        user: opt(f[3])?,
        account: opt(f[4]),
        qos: opt(f[5]),
        state: opt(f[6])?,
        batch_host: opt(f[7]),
    })
}

fn child_error(what: &str) -> impl Fn(sgpu_proc::ProcError) -> ActError + '_ {
    move |e| ActError::Child {
        what: what.to_string(),
        message: e.to_string(),
    }
}

impl JobControl for SlurmControl {
    fn job(&self, job_id: u32) -> Result<SlurmJob, ActError> {
        let line = self.squeue(
            job_id,
            "JobID:|,UserId:|,GroupId:|,UserName:|,Account:|,QOS:|,State:|,BatchHost:|",
        )?;
        parse_job(job_id, &line).ok_or(ActError::Answer { job: job_id, line })
    }

    fn tell(&self, job: &SlurmJob, text: &str) -> Result<(), ActError> {
        use std::os::unix::process::CommandExt as _;
        let path = self.stderr_path(job)?;
        let mut cmd = std::process::Command::new(&self.helper);
        cmd.arg(APPEND_FLAG)
            .arg(&path)
            .arg(text)
            .env_clear()
            .current_dir("/")
            .gid(job.gid)
            .uid(job.uid);
        let out = sgpu_proc::run(&mut cmd, &sgpu_proc::Limits::new(ACT_TIMEOUT))
            .map_err(child_error("append to the job's stderr"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ActError::Child {
                what: format!("append to {} as uid {}", path.display(), job.uid),
                message: out.stderr_text(),
            })
        }
    }

    fn mail(&self, program: &Path, user: &str, subject: &str) -> Result<(), ActError> {
        let mut cmd = std::process::Command::new(program);
        cmd.arg("-s").arg(subject).arg(user).current_dir("/");
        let what = program.display().to_string();
        let out = sgpu_proc::run(&mut cmd, &sgpu_proc::Limits::new(ACT_TIMEOUT))
            .map_err(child_error(&what))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ActError::Child {
                what,
                message: format!("{}: {}", out.status, out.stderr_text()),
            })
        }
    }

    fn cancel(&self, job_id: u32) -> Result<(), ActError> {
        let scancel = self.scontrol.path().with_file_name("scancel");
        self.scontrol
            .run_program(&scancel, &[job_id.to_string()], &[])
            .map(|_| ())
            .map_err(ActError::from)
    }
}

/// Why the appending child wrote nothing (same messages as the child prints).
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The path could not be opened (missing, a symlink, no permission, ...).
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The job's output path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The opened file could not be examined.
    #[error("cannot stat {}: {source}", path.display())]
    Stat {
        /// The job's output path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// It is not a regular file owned by the child's (the job's) uid.
    #[error("{} is not a regular file owned by uid {uid}", path.display())]
    NotTheJobs {
        /// The job's output path.
        path: PathBuf,
        /// The child's uid.
        uid: u32,
    },
    /// Writing failed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The job's output path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The appending child (`sgpu-healthd --append-job-output PATH TEXT`, run as the job's
/// user): opens `path` for appending without following a symlink or creating it, and
/// writes `text` only to a regular file this user owns.
pub fn append_as_user(path: &Path, text: &str) -> Result<(), AppendError> {
    use std::io::Write as _;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let path_buf = || path.to_path_buf();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| AppendError::Open {
            path: path_buf(),
            source,
        })?;
    let md = f.metadata().map_err(|source| AppendError::Stat {
        path: path_buf(),
        source,
    })?;
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    if !md.file_type().is_file() || md.uid() != uid {
        return Err(AppendError::NotTheJobs {
            path: path_buf(),
            uid,
        });
    }
    f.write_all(text.as_bytes())
        .map_err(|source| AppendError::Write {
            path: path_buf(),
            source,
        })
}

/// The arguments of the appending child, when `args` (after the program name) are
/// `--append-job-output PATH TEXT`.
pub fn append_args(args: &[OsString]) -> Option<(PathBuf, String)> {
    match args {
        [flag, path, text] if flag == APPEND_FLAG => {
            Some((PathBuf::from(path), text.to_str()?.to_string()))
        }
        _ => None,
    }
}

/// Carries out the idle policy for the jobs the sampler follows.
pub struct Actor {
    config: IdleConfig,
    control: Box<dyn JobControl>,
    node: String,
    spool_dir: PathBuf,
    budget: CancelBudget,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actor")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// A duration for people: seconds under two minutes, else whole minutes.
pub fn human(ms: u64) -> String {
    let s = ms / 1000;
    if s < 120 {
        format!("{s} s")
    } else {
        format!("{} min", s / 60)
    }
}

fn gpu_list(acc: &JobAccumulator) -> String {
    acc.gpus
        .iter()
        .map(|g| g.index.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl Actor {
    /// An actor for `config`'s `[idle]` policy on `node`, reaching Slurm through `control`.
    pub fn new(
        config: &Config,
        node: String,
        control: Box<dyn JobControl>,
        shared: Arc<Shared>,
    ) -> Actor {
        Actor {
            config: config.idle.clone(),
            control,
            node,
            spool_dir: config.spool_dir.clone(),
            budget: CancelBudget::default(),
            shared,
        }
    }

    /// Whether any partition has a policy (else the sampler need not call [`Actor::step`]).
    pub fn any_policy(&self) -> bool {
        self.config.partitions.values().any(|p| p.policy.acts())
    }

    /// One policy step for `acc` at `now_ms`; returns whether its policy state changed.
    pub fn step(&mut self, acc: &mut JobAccumulator, now_ms: u64) -> bool {
        let Some(policy) = self.config.policy_for(acc.partition.as_deref()) else {
            return false;
        };
        let idle: Vec<bool> = acc.gpus.iter().map(|g| g.idle.idle).collect();
        match idle::decide(&policy, &acc.policy, &idle, now_ms) {
            Step::Nothing => false,
            Step::Recovered => {
                info!(
                    job = acc.job_id,
                    "job {}: its GPUs work again; the idle warning is withdrawn", acc.job_id
                );
                acc.policy.warned_at = None;
                self.shared.record_idle_action("recovered");
                true
            }
            Step::Warn => self.warn(acc, &policy, now_ms),
            Step::Cancel => self.cancel(acc, &policy, now_ms),
        }
    }

    /// Slurm's view of the job, or why the policy leaves it (exempt: state set; else `None`
    /// to retry next cycle).
    fn checked_job(&mut self, acc: &mut JobAccumulator) -> Option<SlurmJob> {
        let exempt_account = |a: &Option<String>| {
            a.as_ref()
                .is_some_and(|a| self.config.exempt_accounts.contains(a))
        };
        if exempt_account(&acc.account) {
            info!(
                job = acc.job_id,
                "job {}: idle, but account {:?} is exempt from the idle policy",
                acc.job_id,
                acc.account
            );
            acc.policy.exempt = true;
            return None;
        }
        let job = match self.control.job(acc.job_id) {
            Ok(j) => j,
            Err(e) => {
                warn!(
                    job = acc.job_id,
                    "idle policy: {e}; trying again next sample"
                );
                return None;
            }
        };
        if job.uid != acc.uid || job.state != "RUNNING" {
            debug!(
                job = acc.job_id,
                "idle policy: Slurm shows uid {} state {} (the job_start record: uid {}); \
                 leaving it",
                job.uid,
                job.state,
                acc.uid
            );
            return None;
        }
        let exempt_qos = job
            .qos
            .as_ref()
            .is_some_and(|q| self.config.exempt_qos.contains(q));
        if exempt_qos || exempt_account(&job.account) {
            info!(
                job = acc.job_id,
                "job {}: idle, but its account {:?} or QOS {:?} is exempt from the idle policy",
                acc.job_id,
                job.account,
                job.qos
            );
            acc.policy.exempt = true;
            return None;
        }
        Some(job)
    }

    /// How long all the job's GPUs have been idle, ms (the shortest current idle run).
    fn idle_ms(acc: &JobAccumulator) -> u64 {
        acc.gpus
            .iter()
            .map(|g| g.idle.idle_for_ms())
            .min()
            .unwrap_or(0)
    }

    fn warn(&mut self, acc: &mut JobAccumulator, policy: &IdlePolicy, now_ms: u64) -> bool {
        let Some(job) = self.checked_job(acc) else {
            return acc.policy.exempt;
        };
        let detect = self.config.detect_for(acc.partition.as_deref());
        let idle_ms = Self::idle_ms(acc);
        let minutes = idle_ms / 60_000;
        let mut text = format!(
            "sgpu: job {} on {}: GPU {} idle for {} (utilization below {}%).",
            acc.job_id,
            self.node,
            gpu_list(acc),
            human(idle_ms),
            detect.util_below_pct,
        );
        if let Some(g) = policy.cancel_after {
            text.push_str(&format!(
                " The job will be cancelled in {} unless its GPUs are used.",
                human(u64::try_from(g.as_millis()).unwrap_or(u64::MAX))
            ));
        }
        let dry = self.config.dry_run;
        if policy.warn {
            let done = dry
                || match self.control.tell(&job, &format!("{text}\n")) {
                    Ok(()) => true,
                    Err(e) => {
                        warn!(job = acc.job_id, "idle policy: cannot warn the user: {e}");
                        false
                    }
                };
            if done {
                self.event(acc, NodeAction::IdleWarn, &job, minutes, &text);
                self.shared.record_idle_action("warn");
            }
        }
        if policy.mail {
            if let Some(program) = self.config.mail_program.clone() {
                let done = dry
                    || match self.control.mail(&program, &job.user, &text) {
                        Ok(()) => true,
                        Err(e) => {
                            warn!(
                                job = acc.job_id,
                                "idle policy: cannot mail {}: {e}", job.user
                            );
                            false
                        }
                    };
                if done {
                    self.event(acc, NodeAction::IdleMail, &job, minutes, &text);
                    self.shared.record_idle_action("mail");
                }
            }
        }
        info!(
            job = acc.job_id,
            user = %job.user,
            dry_run = dry,
            "{text}"
        );
        acc.policy.warned_at = Some(now_ms);
        acc.policy.warnings = acc.policy.warnings.saturating_add(1);
        true
    }

    fn cancel(&mut self, acc: &mut JobAccumulator, policy: &IdlePolicy, now_ms: u64) -> bool {
        let Some(job) = self.checked_job(acc) else {
            return acc.policy.exempt;
        };
        if !self.budget.take(now_ms, self.config.max_cancels_per_hour) {
            if acc.policy.refused {
                return false;
            }
            acc.policy.refused = true;
            warn!(
                job = acc.job_id,
                "idle policy: job {} would be cancelled, but this node already cancelled {} \
                 job(s) in the last hour (idle.max_cancels_per_hour); not cancelling while \
                 that holds",
                acc.job_id,
                self.config.max_cancels_per_hour
            );
            self.shared.record_idle_action("refused");
            return true;
        }
        let idle_ms = Self::idle_ms(acc);
        let minutes = idle_ms / 60_000;
        let grace = policy
            .cancel_after
            .map_or(0, |g| u64::try_from(g.as_millis()).unwrap_or(u64::MAX));
        let text = format!(
            "sgpu: job {} cancelled: GPU {} on {} idle for {}, still idle {} after the warning \
             (idle GPU policy of partition {}).",
            acc.job_id,
            gpu_list(acc),
            self.node,
            human(idle_ms),
            human(grace),
            acc.partition.as_deref().unwrap_or("?")
        );
        if !self.config.dry_run {
            if let Err(e) = self.control.tell(&job, &format!("{text}\n")) {
                warn!(job = acc.job_id, "idle policy: cannot tell the user: {e}");
            }
            if let Err(e) = self.control.cancel(acc.job_id) {
                warn!(
                    job = acc.job_id,
                    "idle policy: cannot cancel: {e}; trying again"
                );
                return false;
            }
        }
        info!(job = acc.job_id, user = %job.user, dry_run = self.config.dry_run, "{text}");
        self.event(acc, NodeAction::IdleCancel, &job, minutes, &text);
        self.shared.record_idle_action("cancel");
        acc.policy.cancelled = true;
        true
    }

    fn event(
        &self,
        acc: &JobAccumulator,
        action: NodeAction,
        job: &SlurmJob,
        minutes: u64,
        text: &str,
    ) {
        let detect = self.config.detect_for(acc.partition.as_deref());
        let policy = self
            .config
            .policy_for(acc.partition.as_deref())
            .unwrap_or_default();
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        let time_ms = sgpu_spool::now_ms();
        let event = NodeEvent {
            id: NodeEvent::new_id(&self.node, time_ms),
            cluster: acc.cluster.clone(),
            node: self.node.clone(),
            time_ms,
            action,
            source: "healthd".into(),
            uid,
            user: sgpu_spool::passwd::user_name(uid).unwrap_or_else(|| uid.to_string()),
            reason: text.chars().filter(|c| !c.is_control()).collect(),
            previous_reason: None,
            forced: false,
            job: Some(JobAction {
                job_id: u64::from(acc.job_id),
                run: acc.run,
                user: job.user.clone(),
                account: job.account.clone().or_else(|| acc.account.clone()),
                partition: acc.partition.clone().unwrap_or_default(),
                gpus: acc.gpus.iter().map(|g| g.index).collect(),
                idle_minutes: minutes,
                policy: idle::describe(&detect, &policy),
                dry_run: self.config.dry_run,
            }),
        };
        if let Err(e) = EventSpool::open(&self.spool_dir).and_then(|s| s.write(&event)) {
            warn!(
                job = acc.job_id,
                "idle policy: history event not spooled: {e}"
            );
        }
    }
}

#[cfg(test)]
mod tests;
