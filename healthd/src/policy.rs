//! The daemon's drain/resume policy: a state machine fed one `full` run at a time.
//!
//! [`Policy::step`] takes what a run found (the drain-severity failures) and reaches Slurm
//! only through [`NodeControl`] (node state, the circuit breaker, drain, resume), so the
//! whole policy is tested against a fake cluster. The rules:
//!
//! - **Drain** when a run finds a drain-severity failure and the node is not drained: only if
//!   the circuit breaker allows it ([`sgpu_nodelib::breaker`]); the reason is the first failure's
//!   (`sgpu: <check> gpu<i>: <detail>`). The drain is remembered ([`Memory`], saved in
//!   `state_dir`), so a restarted daemon knows what it drained for.
//! - **No re-drain, no spam**: a node already drained (by sgpu or anyone) is left as it is.
//!   An admin drain (a reason without `sgpu:`) is never touched: not re-drained over, never
//!   resumed. If an admin resumes a node sgpu drained while the same check still fails,
//!   sgpu does not drain it again for that check until the check has passed once (the admin
//!   has overridden it); a different failure drains as usual.
//! - **Admins' states**: a node that is DOWN or FAIL/FAILING (set by an admin, or by
//!   slurmctld for a node that stopped answering) is neither drained (the drain would
//!   replace the admin's reason) nor resumed (RESUME would bring a DOWN node back), whatever
//!   its reason ([`Decision::HeldByOthers`]).
//! - **Resume** after `resume_after` consecutive runs without a drain-severity failure, only
//!   if the node's current reason starts with `sgpu:` and every check behind the drain (what
//!   the daemon remembers, plus the check named in the current reason) is auto-recoverable
//!   (catalogue field), enabled and part of the `full` profile (so a passing run means
//!   something). `resume_after = 0` never resumes.
//! - **XIDs** are marked reported once acted on (drained, or the node was already out of
//!   service, or they did not call for a drain); not when the breaker or a failed `scontrol`
//!   kept the node up, so the next run tries again.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use sgpu_nodelib::breaker::{GuardError, Trip};
use sgpu_nodelib::catalogue::{Catalogue, Profile, Severity};
use sgpu_nodelib::slurmctl::{NodeState, SGPU_REASON_PREFIX, SlurmctlError};

/// A drain-severity failure found by a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Check id.
    pub check: String,
    /// GPU index, when the failure is about one GPU.
    pub gpu: Option<u32>,
    /// The drain reason it gives.
    pub reason: String,
}

impl Failure {
    /// `<check>` or `<check> gpu<i>`: what an admin override is remembered by.
    pub fn key(&self) -> String {
        match self.gpu {
            Some(i) => format!("{} gpu{i}", self.check),
            None => self.check.clone(),
        }
    }
}

/// Why the policy could not reach Slurm through [`NodeControl`]; the inner error names the
/// command and what to check (slurmctld up, `scontrol` in sgpu.toml, resume by hand).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// scontrol could not be found or run, failed, timed out or printed something unreadable.
    #[error(transparent)]
    Slurm(#[from] SlurmctlError),
    /// A drain the breaker's recount put past the limit could not be given back.
    #[error(transparent)]
    Breaker(#[from] GuardError),
}

/// How the policy reaches Slurm.
pub trait NodeControl {
    /// The node's current state and reason.
    fn node_state(&mut self) -> Result<NodeState, ControlError>;
    /// The circuit breaker's verdict on draining the node now: `Ok(None)` allows it.
    fn breaker(&mut self) -> Result<Option<Trip>, ControlError>;
    /// Drains the node, then recounts ([`sgpu_nodelib::breaker::keep_after_recount`]):
    /// `Ok(Some(trip))` when the recount put the node past the limit and it was given back.
    fn drain(&mut self, reason: &str) -> Result<Option<Trip>, ControlError>;
    /// Resumes the node.
    fn resume(&mut self) -> Result<(), ControlError>;
}

/// A drain the daemon holds the node in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRecord {
    /// The reason sgpu gave.
    pub reason: String,
    /// Check ids behind the drain.
    pub checks: BTreeSet<String>,
    /// When, Unix seconds.
    pub since: i64,
}

/// What the daemon remembers across restarts (`<state_dir>/healthd-state.toml`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    /// The sgpu drain the node is in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained: Option<DrainRecord>,
    /// Failures (keys, see [`Failure::key`]) an admin resumed the node despite.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub overridden: BTreeSet<String>,
    /// The circuit breaker refused the last drain, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker_open: Option<Trip>,
}

/// The state file's name inside `state_dir`.
pub const MEMORY_FILE: &str = "healthd-state.toml";

/// Why the daemon's state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl Memory {
    /// Loads `<dir>/healthd-state.toml` (missing: nothing remembered).
    pub fn load(dir: &Path) -> Result<Memory, MemoryError> {
        let path = dir.join(MEMORY_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| MemoryError::Parse {
                path,
                message: e.to_string().trim_end().to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Memory::default()),
            Err(source) => Err(MemoryError::Io { path, source }),
        }
    }

    /// Writes `<dir>/healthd-state.toml` atomically (temporary file, fsync, rename).
    pub fn save(&self, dir: &Path) -> Result<(), MemoryError> {
        let path = dir.join(MEMORY_FILE);
        let text = toml::to_string(self).map_err(|e| MemoryError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let tmp = dir.join(format!(".{MEMORY_FILE}.tmp.{}", std::process::id()));
        let io = |p: &Path| {
            let path = p.to_path_buf();
            move |source| MemoryError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(|source| {
            let _ = fs::remove_file(&tmp);
            MemoryError::Io {
                path: path.clone(),
                source,
            }
        })?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// What one step decided (and did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No drain-worthy failure, node in service.
    Healthy,
    /// Drained the node.
    Drained {
        /// The reason given.
        reason: String,
    },
    /// The drain failed (scontrol); tried again next run.
    DrainFailed {
        /// The reason it would have given.
        reason: String,
        /// What went wrong.
        error: String,
    },
    /// The circuit breaker refused the drain.
    BreakerOpen {
        /// Why.
        trip: Trip,
        /// The reason it would have given.
        reason: String,
    },
    /// The breaker could not be judged (node list unreadable): not drained, to be safe.
    BreakerUnknown {
        /// What went wrong.
        error: String,
    },
    /// Still failing; the node is already drained by sgpu.
    AlreadyDrained {
        /// The node's reason.
        reason: String,
    },
    /// The node is drained by an admin (reason without `sgpu:`): hands off.
    AdminDrained {
        /// The admin's reason.
        reason: String,
    },
    /// The node is DOWN or FAIL (an admin's state, or slurmctld's for a node that stopped
    /// answering): neither drained over nor resumed.
    HeldByOthers {
        /// Slurm's state, e.g. `DOWN` or `IDLE+FAIL`.
        state: String,
        /// Slurm's reason (empty when none).
        reason: String,
    },
    /// Failing, but an admin resumed the node despite these failures.
    Overridden {
        /// The failure keys.
        keys: Vec<String>,
    },
    /// Healthy, but the drain is for checks that do not clear by themselves.
    Holding {
        /// The checks that keep it drained.
        checks: Vec<String>,
    },
    /// Healthy; resumes after more healthy runs.
    WaitingToResume {
        /// Consecutive healthy runs so far.
        healthy_runs: u32,
        /// Runs needed.
        needed: u32,
    },
    /// Resumed the node.
    Resumed {
        /// The reason it was drained with.
        reason: String,
    },
    /// The resume failed (scontrol); tried again next run.
    ResumeFailed {
        /// What went wrong.
        error: String,
    },
    /// slurmctld could not be asked for the node's state: nothing done.
    SlurmUnreachable {
        /// What went wrong.
        error: String,
    },
}

impl Decision {
    /// Whether this is an error an admin must hear about.
    pub fn is_error(&self) -> bool {
        matches!(
            self,
            Decision::DrainFailed { .. }
                | Decision::BreakerOpen { .. }
                | Decision::BreakerUnknown { .. }
                | Decision::ResumeFailed { .. }
                | Decision::SlurmUnreachable { .. }
        )
    }
}

/// What a step returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What was decided.
    pub decision: Decision,
    /// Whether the run's XIDs count as reported (advance the store's cursor).
    pub mark_xids_reported: bool,
}

/// The policy's state: what it remembers and the healthy-run streak.
#[derive(Debug, Clone)]
pub struct Policy {
    memory: Memory,
    healthy_runs: u32,
    resume_after: u32,
    recoverable: BTreeSet<String>,
}

/// The check id a reason names (`sgpu: <check> gpu<i>: ...` or `sgpu: <check>: ...`).
pub fn check_of_reason(reason: &str) -> Option<&str> {
    let rest = reason.strip_prefix(SGPU_REASON_PREFIX)?.trim_start();
    let word = rest.split([' ', ':']).next()?;
    (!word.is_empty()).then_some(word)
}

impl Policy {
    /// A policy that resumes after `resume_after` healthy runs, for drains whose checks are
    /// all auto-recoverable, enabled and in the `full` profile of `catalogue`.
    pub fn new(catalogue: &Catalogue, resume_after: u32, memory: Memory) -> Policy {
        let recoverable = catalogue
            .checks()
            .iter()
            .filter(|c| {
                c.spec.auto_recoverable
                    && c.enabled
                    && c.severity != Severity::Off
                    && c.runs_in(Profile::Full)
            })
            .map(|c| c.spec.id.to_string())
            .collect();
        Policy {
            memory,
            healthy_runs: 0,
            resume_after,
            recoverable,
        }
    }

    /// What the policy remembers (to be saved when it changed).
    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    /// Consecutive runs without a drain-severity failure.
    pub fn healthy_runs(&self) -> u32 {
        self.healthy_runs
    }

    fn outcome(decision: Decision, mark: bool) -> Outcome {
        Outcome {
            decision,
            mark_xids_reported: mark,
        }
    }

    /// Feeds one run's drain-severity failures (`now`: Unix seconds) and acts through `ctl`.
    pub fn step(&mut self, failures: &[Failure], ctl: &mut dyn NodeControl, now: i64) -> Outcome {
        let node = match ctl.node_state() {
            Ok(n) => n,
            Err(e) => {
                return Self::outcome(
                    Decision::SlurmUnreachable {
                        error: e.to_string(),
                    },
                    false,
                );
            }
        };
        if failures.is_empty() {
            self.healthy_runs = self.healthy_runs.saturating_add(1);
        } else {
            self.healthy_runs = 0;
        }
        self.reconcile(&node, failures);

        if failures.is_empty() {
            self.memory.breaker_open = None;
            return self.healthy(node, ctl);
        }
        if node.down_or_failed() {
            // DOWN/FAIL is an admin's (or slurmctld's) call: a drain would replace its reason
            self.memory.breaker_open = None;
            return Self::outcome(Self::held(&node), true);
        }

        let effective: Vec<&Failure> = failures
            .iter()
            .filter(|f| !self.memory.overridden.contains(&f.key()))
            .collect();
        if effective.is_empty() {
            self.memory.breaker_open = None;
            let keys = failures.iter().map(Failure::key).collect();
            return Self::outcome(Decision::Overridden { keys }, true);
        }
        if node.drained() {
            self.memory.breaker_open = None;
            return self.already_drained(&node, &effective, now);
        }
        self.drain(&effective, ctl, now)
    }

    /// What happened to sgpu's drain since the last run (an admin's DOWN/FAIL or drain
    /// takes it over; a resume overrides what still fails of what sgpu drained for), and
    /// which overrides end (an override lasts until its check passes once).
    fn reconcile(&mut self, node: &NodeState, failures: &[Failure]) {
        let failing: BTreeSet<String> = failures.iter().map(Failure::key).collect();
        if let Some(d) = &self.memory.drained {
            if node.down_or_failed() && !node.drained_by_sgpu() {
                // an admin set it DOWN or FAIL with a reason of their own: theirs now
                self.memory.drained = None;
            } else if !node.drained() {
                // someone resumed it: what still fails of what we drained for is overridden
                let overridden: Vec<String> = failures
                    .iter()
                    .filter(|f| d.checks.contains(&f.check))
                    .map(Failure::key)
                    .collect();
                self.memory.overridden.extend(overridden);
                self.memory.drained = None;
            } else if !node.drained_by_sgpu() {
                // an admin took the drain over: theirs now
                self.memory.drained = None;
            }
        }
        // an override lasts until its check passes once
        self.memory.overridden.retain(|k| failing.contains(k));
    }

    /// A failing node that is already drained: sgpu's drain (remembered, with the checks
    /// that fail now added) or an admin's (left alone).
    fn already_drained(&mut self, node: &NodeState, effective: &[&Failure], now: i64) -> Outcome {
        let reason = node.reason.clone().unwrap_or_default();
        if node.drained_by_sgpu() {
            let record = self.memory.drained.get_or_insert_with(|| DrainRecord {
                reason: reason.clone(),
                checks: check_of_reason(&reason)
                    .map(String::from)
                    .into_iter()
                    .collect(),
                since: now,
            });
            record
                .checks
                .extend(effective.iter().map(|f| f.check.clone()));
            return Self::outcome(Decision::AlreadyDrained { reason }, true);
        }
        Self::outcome(Decision::AdminDrained { reason }, true)
    }

    /// Drains for the first of `effective` (the others' checks remembered with it), unless
    /// the circuit breaker is open or cannot be read.
    fn drain(&mut self, effective: &[&Failure], ctl: &mut dyn NodeControl, now: i64) -> Outcome {
        let reason = effective[0].reason.clone();
        match ctl.breaker() {
            Err(e) => Self::outcome(
                Decision::BreakerUnknown {
                    error: e.to_string(),
                },
                false,
            ),
            Ok(Some(trip)) => {
                self.memory.breaker_open = Some(trip.clone());
                Self::outcome(Decision::BreakerOpen { trip, reason }, false)
            }
            Ok(None) => {
                self.memory.breaker_open = None;
                match ctl.drain(&reason) {
                    Ok(Some(trip)) => {
                        self.memory.breaker_open = Some(trip.clone());
                        Self::outcome(Decision::BreakerOpen { trip, reason }, false)
                    }
                    Ok(None) => {
                        self.memory.drained = Some(DrainRecord {
                            reason: reason.clone(),
                            checks: effective.iter().map(|f| f.check.clone()).collect(),
                            since: now,
                        });
                        Self::outcome(Decision::Drained { reason }, true)
                    }
                    Err(e) => Self::outcome(
                        Decision::DrainFailed {
                            reason,
                            error: e.to_string(),
                        },
                        false,
                    ),
                }
            }
        }
    }

    fn held(node: &NodeState) -> Decision {
        Decision::HeldByOthers {
            state: node.state.clone(),
            reason: node.reason.clone().unwrap_or_default(),
        }
    }

    fn healthy(&mut self, node: NodeState, ctl: &mut dyn NodeControl) -> Outcome {
        if node.down_or_failed() {
            // never resumed by sgpu, even when the reason is sgpu's (slurmd died after the
            // drain): RESUME would also bring a DOWN node back
            return Self::outcome(Self::held(&node), true);
        }
        if !node.drained() {
            return Self::outcome(Decision::Healthy, true);
        }
        let reason = node.reason.clone().unwrap_or_default();
        if !node.drained_by_sgpu() {
            return Self::outcome(Decision::AdminDrained { reason }, true);
        }
        // the checks behind the drain: what we remember, and what the reason names
        let mut checks: BTreeSet<String> = self
            .memory
            .drained
            .as_ref()
            .map(|d| d.checks.clone())
            .unwrap_or_default();
        match check_of_reason(&reason) {
            Some(c) => {
                checks.insert(c.to_string());
            }
            None => {
                checks.insert(reason.clone());
            }
        }
        let blocking: Vec<String> = checks
            .iter()
            .filter(|c| !self.recoverable.contains(*c))
            .cloned()
            .collect();
        if !blocking.is_empty() || self.resume_after == 0 {
            let checks = if blocking.is_empty() {
                checks.into_iter().collect()
            } else {
                blocking
            };
            return Self::outcome(Decision::Holding { checks }, true);
        }
        if self.healthy_runs < self.resume_after {
            return Self::outcome(
                Decision::WaitingToResume {
                    healthy_runs: self.healthy_runs,
                    needed: self.resume_after,
                },
                true,
            );
        }
        // look again right before acting: an admin may have just taken the drain over
        match ctl.node_state() {
            Ok(again)
                if again.drained_by_sgpu()
                    && !again.down_or_failed()
                    && again.reason == node.reason => {}
            Ok(again) => {
                return Self::outcome(
                    Decision::AdminDrained {
                        reason: again.reason.unwrap_or_default(),
                    },
                    true,
                );
            }
            Err(e) => {
                return Self::outcome(
                    Decision::SlurmUnreachable {
                        error: e.to_string(),
                    },
                    true,
                );
            }
        }
        match ctl.resume() {
            Ok(()) => {
                self.memory.drained = None;
                Self::outcome(Decision::Resumed { reason }, true)
            }
            Err(e) => Self::outcome(
                Decision::ResumeFailed {
                    error: e.to_string(),
                },
                true,
            ),
        }
    }
}

#[cfg(test)]
mod tests;
