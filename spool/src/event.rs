//! Node events: every drain and resume sgpu performs or is asked to perform (healthd, the
//! prolog, `sgpu drain`/`sgpu resume`), and every action healthd's idle-GPU policy takes on a
//! job (warned, mailed, cancelled: [`NodeEvent::job`]), kept by acctd as the history
//! `sgpu history` shows.
//!
//! A node event is not a usage record: it is no job's bill, it never enters the rollups, and acctd
//! keeps it apart from the per-job records (`POST /v1/history`, `GET /v1/history`). Its
//! identity is [`NodeEvent::id`], chosen by the producer (node, time and a per-process
//! nonce), so a resend is stored once.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spool::{check_dir, io_err, sync_dir};
use crate::{RecordError, SpoolError};

/// Longest accepted reason, in bytes (Slurm's reasons are short; this bounds the store).
pub const MAX_REASON_BYTES: usize = 1024;

/// What happened to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeAction {
    /// Drained (`scontrol update State=DRAIN`).
    Drain,
    /// Returned to service (`scontrol update State=UNDRAIN`: the drain flag cleared).
    Resume,
    /// A job's owner was told its GPUs sit idle (a line in the job's output file).
    IdleWarn,
    /// A job's owner was mailed that its GPUs sit idle (the site's mail command).
    IdleMail,
    /// A job was cancelled because its GPUs stayed idle past the grace period.
    IdleCancel,
    /// An active check ran on the node (`[active]`: healthd's Slurm job or `sgpu check
    /// --active`); the reason is its outcome and measurement. Every run, not only a failure.
    ActiveCheck,
}

impl NodeAction {
    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeAction::Drain => "drain",
            NodeAction::Resume => "resume",
            NodeAction::IdleWarn => "idle_warn",
            NodeAction::IdleMail => "idle_mail",
            NodeAction::IdleCancel => "idle_cancel",
            NodeAction::ActiveCheck => "active_check",
        }
    }

    /// Whether this is an action on a job (idle policy), which carries [`NodeEvent::job`].
    pub fn is_job_action(self) -> bool {
        matches!(
            self,
            NodeAction::IdleWarn | NodeAction::IdleMail | NodeAction::IdleCancel
        )
    }
}

/// The job an idle-policy action ([`NodeAction::IdleWarn`], `IdleMail`, `IdleCancel`) was
/// taken on, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobAction {
    /// Slurm job id.
    pub job_id: u64,
    /// The job's run (requeue count; 0 left out of the JSON).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub run: u32,
    /// The job's owner, as Slurm and the prolog's `job_start` record name them.
    pub user: String,
    /// The job's Slurm account, where set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The partition whose policy acted.
    pub partition: String,
    /// NVML indices of the job's GPUs on this node that were idle.
    pub gpus: Vec<u32>,
    /// How long those GPUs had been idle when the action was taken, whole minutes.
    pub idle_minutes: u64,
    /// The policy in one line, e.g. `util<5% for 600s, grace 1800s`.
    pub policy: String,
    /// Dry run: the action was decided and recorded but not carried out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// One drain or resume of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEvent {
    /// Unique identity chosen by the producer ([`NodeEvent::new_id`]); acctd deduplicates
    /// by it.
    pub id: String,
    /// Cluster name.
    pub cluster: String,
    /// Slurm node name.
    pub node: String,
    /// When, Unix ms.
    pub time_ms: u64,
    /// Drain or resume.
    pub action: NodeAction,
    /// Who acted: `sgpu-admin` (the `sgpu` command), `healthd` or `prolog`.
    pub source: String,
    /// The uid of the person or daemon that acted (acctd overwrites it with the
    /// authenticated caller's uid unless the caller is an ingest identity).
    pub uid: u32,
    /// That uid's user name.
    pub user: String,
    /// The reason given (drain), or why it was resumed.
    pub reason: String,
    /// The node's Slurm reason before this event, when it had one (`Reason [user@time]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_reason: Option<String>,
    /// Whether a resume overrode a refusal (`sgpu resume --force`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
    /// The job an idle-policy action was taken on: present exactly for
    /// [`NodeAction::is_job_action`] actions, absent for drains and resumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobAction>,
}

fn check_name(field: &str, v: &str) -> Result<(), RecordError> {
    if v.is_empty() {
        return Err(RecordError::invalid(field, "must not be empty"));
    }
    if v.len() > crate::MAX_COMPONENT_BYTES {
        return Err(RecordError::invalid(
            field,
            format!("longer than {} bytes", crate::MAX_COMPONENT_BYTES),
        ));
    }
    if v.chars().any(|c| c.is_control() || c == '/' || c == ',') {
        return Err(RecordError::invalid(
            field,
            "must not contain '/', ',' or control characters",
        ));
    }
    Ok(())
}

impl NodeEvent {
    /// A fresh identity for an event on `node` at `time_ms`: unique per process and call.
    pub fn new_id(node: &str, time_ms: u64) -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        format!("{node}-{time_ms}-{}-{nanos}-{seq}", std::process::id())
    }

    /// Checks every field; the error names the offending one.
    pub fn validate(&self) -> Result<(), RecordError> {
        check_name("id", &self.id)?;
        if self.id.len() > crate::MAX_KEY_BYTES {
            return Err(RecordError::invalid(
                "id",
                format!("longer than {} bytes", crate::MAX_KEY_BYTES),
            ));
        }
        check_name("cluster", &self.cluster)?;
        check_name("node", &self.node)?;
        check_name("source", &self.source)?;
        check_name("user", &self.user)?;
        if self.time_ms == 0 {
            return Err(RecordError::invalid("time_ms", "must be > 0"));
        }
        for (field, v) in [
            ("reason", Some(&self.reason)),
            ("previous_reason", self.previous_reason.as_ref()),
        ] {
            if let Some(v) = v {
                if v.len() > MAX_REASON_BYTES {
                    return Err(RecordError::invalid(
                        field,
                        format!("longer than {MAX_REASON_BYTES} bytes"),
                    ));
                }
                if v.chars().any(char::is_control) {
                    return Err(RecordError::invalid(
                        field,
                        "must not contain control characters",
                    ));
                }
            }
        }
        if self.action == NodeAction::Drain && self.reason.trim().is_empty() {
            return Err(RecordError::invalid("reason", "a drain needs a reason"));
        }
        if self.action == NodeAction::ActiveCheck && self.reason.trim().is_empty() {
            return Err(RecordError::invalid(
                "reason",
                "an active check event needs its outcome",
            ));
        }
        match (&self.job, self.action.is_job_action()) {
            (None, true) => Err(RecordError::invalid(
                "job",
                format!("a {} event needs its job", self.action.as_str()),
            )),
            (Some(_), false) => Err(RecordError::invalid(
                "job",
                format!("a {} event names no job", self.action.as_str()),
            )),
            (None, false) => Ok(()),
            (Some(j), true) => {
                if j.job_id == 0 {
                    return Err(RecordError::invalid("job.job_id", "must be > 0"));
                }
                check_name("job.user", &j.user)?;
                check_name("job.partition", &j.partition)?;
                if let Some(a) = &j.account {
                    check_name("job.account", a)?;
                }
                if j.gpus.is_empty() {
                    return Err(RecordError::invalid("job.gpus", "must not be empty"));
                }
                if j.policy.len() > MAX_REASON_BYTES || j.policy.chars().any(char::is_control) {
                    return Err(RecordError::invalid(
                        "job.policy",
                        format!("longer than {MAX_REASON_BYTES} bytes or has control characters"),
                    ));
                }
                if self.reason.trim().is_empty() {
                    return Err(RecordError::invalid(
                        "reason",
                        "a job action needs a reason",
                    ));
                }
                Ok(())
            }
        }
    }

    /// The store key: node, zero-padded time and id, so a node's events sort by time.
    pub fn key(&self) -> String {
        format!(
            "{},{},{:020},{}",
            self.cluster, self.node, self.time_ms, self.id
        )
    }
}

/// A pending event file and what it holds (or why it cannot be read).
pub type PendingEvent = (PathBuf, Result<NodeEvent, SpoolError>);

/// The node's pending node events, beside the usage records: `<spool>/events/new/<id>.json`
/// (written through `events/tmp/`, fsynced, renamed: a file in `new/` is complete and
/// durable). healthd sends them to acctd's `POST /v1/history` and removes each only after
/// acctd acknowledged it.
#[derive(Debug, Clone)]
pub struct EventSpool {
    tmp: PathBuf,
    new: PathBuf,
}

impl EventSpool {
    /// Opens (creating, mode 0700) `<spool_dir>/events/` and its `tmp/` and `new/`.
    pub fn open(spool_dir: impl AsRef<Path>) -> Result<EventSpool, SpoolError> {
        let root = spool_dir.as_ref().join("events");
        let s = EventSpool {
            tmp: root.join("tmp"),
            new: root.join("new"),
        };
        for d in [&root, &s.tmp, &s.new] {
            match DirBuilder::new().recursive(true).mode(0o700).create(d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("create spool directory", d)(e)),
            }
            check_dir(d, fs::symlink_metadata(d).map_err(io_err("stat", d))?)?;
        }
        Ok(s)
    }

    /// Validates and durably spools `event`; returns its path.
    pub fn write(&self, event: &NodeEvent) -> Result<PathBuf, SpoolError> {
        event.validate().map_err(SpoolError::Invalid)?;
        let mut bytes =
            serde_json::to_vec(event).map_err(|e| SpoolError::Invalid(RecordError::Json(e)))?;
        bytes.push(b'\n');
        let name = format!("{}.json", event.id);
        let tmp = self.tmp.join(&name);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        let written = f
            .write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(io_err("write", &tmp));
        drop(f);
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let new = self.new.join(&name);
        fs::rename(&tmp, &new).map_err(io_err("rename into new/", &new))?;
        sync_dir(&self.new)?;
        Ok(new)
    }

    /// The pending events, oldest first, each with its file; a file that cannot be read
    /// comes as an error naming it (left in place for the admin).
    pub fn pending(&self) -> Result<Vec<PendingEvent>, SpoolError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.new).map_err(io_err("list", &self.new))? {
            let path = entry.map_err(io_err("list", &self.new))?.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let read = fs::read(&path)
                .map_err(io_err("read", &path))
                .and_then(|b| {
                    serde_json::from_slice::<NodeEvent>(&b).map_err(|e| SpoolError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })
                });
            out.push((path, read));
        }
        out.sort_by_key(|(p, r)| (r.as_ref().map(|e| e.time_ms).unwrap_or(0), p.clone()));
        Ok(out)
    }

    /// Removes an acknowledged event durably; a missing file is not an error.
    pub fn remove(&self, path: &Path) -> Result<(), SpoolError> {
        match fs::remove_file(path) {
            Ok(()) => sync_dir(&self.new),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_spool_writes_lists_and_removes() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let records = crate::Spool::open(dir.path())?;
        let events = EventSpool::open(dir.path())?;
        let (a, b) = (
            NodeEvent {
                time_ms: 9,
                ..event()
            },
            NodeEvent {
                id: NodeEvent::new_id("node1", 3),
                time_ms: 3,
                ..event()
            },
        );
        events.write(&a)?;
        events.write(&b)?;
        let pending = events.pending()?;
        let mut got: Vec<NodeEvent> = Vec::new();
        for (_, r) in &pending {
            match r {
                Ok(e) => got.push(e.clone()),
                Err(e) => return Err(e.to_string().into()),
            }
        }
        assert_eq!(got, vec![b, a], "oldest first");
        // the usage-record spool does not see them
        assert!(records.list()?.is_empty());
        events.remove(&pending[0].0)?;
        events.remove(&pending[0].0)?;
        assert_eq!(events.pending()?.len(), 1);
        let bad = NodeEvent {
            reason: String::new(),
            ..event()
        };
        assert!(events.write(&bad).is_err(), "invalid events are refused");
        Ok(())
    }

    fn event() -> NodeEvent {
        NodeEvent {
            id: NodeEvent::new_id("node1", 5),
            cluster: "c".into(),
            node: "node1".into(),
            time_ms: 5,
            action: NodeAction::Drain,
            source: "sgpu-admin".into(),
            uid: 0,
            user: "root".into(),
            reason: "fan".into(),
            previous_reason: None,
            forced: false,
            job: None,
        }
    }

    #[test]
    fn an_active_check_event_carries_its_outcome_and_no_job() {
        let run = NodeEvent {
            action: NodeAction::ActiveCheck,
            source: "healthd".into(),
            reason: "active.dcgm-r1 pass in 41.0 s (job 812): dcgmi: 17 results passed".into(),
            ..event()
        };
        assert!(run.validate().is_ok(), "{:?}", run.validate());
        let text = serde_json::to_string(&run).unwrap();
        assert!(text.contains(r#""action":"active_check""#), "{text}");
        assert_eq!(serde_json::from_str::<NodeEvent>(&text).unwrap(), run);
        let silent = NodeEvent {
            reason: " ".into(),
            ..run.clone()
        };
        assert!(silent.validate().is_err());
        let with_job = NodeEvent {
            job: idle_cancel().job,
            ..run
        };
        assert!(with_job.validate().is_err());
    }

    fn idle_cancel() -> NodeEvent {
        NodeEvent {
            action: NodeAction::IdleCancel,
            source: "healthd".into(),
            reason: "GPUs 0,1 idle for 35 min".into(),
            job: Some(JobAction {
                job_id: 42,
                run: 0,
                user: "alice".into(),
                account: Some("physics".into()),
                partition: "gpu".into(),
                gpus: vec![0, 1],
                idle_minutes: 35,
                policy: "util<5% for 600s, grace 1800s".into(),
                dry_run: false,
            }),
            ..event()
        }
    }

    #[test]
    fn job_actions_carry_their_job_and_round_trip() -> Result<(), Box<dyn std::error::Error>> {
        let e = idle_cancel();
        e.validate()?;
        let json = serde_json::to_string(&e)?;
        assert!(json.contains(r#""action":"idle_cancel""#), "{json}");
        assert!(!json.contains("run"), "run 0 is left out: {json}");
        let back: NodeEvent = serde_json::from_str(&json)?;
        assert_eq!(back, e);
        // drains stay without the field, so older readers read them
        assert!(!serde_json::to_string(&event())?.contains("job"));
        let field = |e: NodeEvent| match e.validate() {
            Err(RecordError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        };
        assert_eq!(
            field(NodeEvent {
                job: None,
                ..idle_cancel()
            }),
            "job"
        );
        assert_eq!(
            field(NodeEvent {
                action: NodeAction::Drain,
                ..idle_cancel()
            }),
            "job"
        );
        let mut no_gpus = idle_cancel();
        if let Some(j) = no_gpus.job.as_mut() {
            j.gpus.clear();
        }
        assert_eq!(field(no_gpus), "job.gpus");
        let mut bad_user = idle_cancel();
        if let Some(j) = bad_user.job.as_mut() {
            j.user = "a/b".into();
        }
        assert_eq!(field(bad_user), "job.user");
        Ok(())
    }

    #[test]
    fn valid_event_round_trips_and_ids_differ() -> Result<(), Box<dyn std::error::Error>> {
        let e = event();
        e.validate()?;
        let back: NodeEvent = serde_json::from_str(&serde_json::to_string(&e)?)?;
        assert_eq!(back, e);
        assert_ne!(NodeEvent::new_id("n", 1), NodeEvent::new_id("n", 1));
        Ok(())
    }

    #[test]
    fn invalid_fields_are_named() {
        let field = |e: NodeEvent| match e.validate() {
            Err(RecordError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        };
        assert_eq!(
            field(NodeEvent {
                node: "a/b".into(),
                ..event()
            }),
            "node"
        );
        assert_eq!(
            field(NodeEvent {
                reason: " ".into(),
                ..event()
            }),
            "reason"
        );
        assert_eq!(
            field(NodeEvent {
                time_ms: 0,
                ..event()
            }),
            "time_ms"
        );
        assert_eq!(
            field(NodeEvent {
                reason: "a\nb".into(),
                action: NodeAction::Resume,
                ..event()
            }),
            "reason"
        );
        assert!(
            serde_json::from_str::<NodeEvent>(r#"{"id":"x","bogus":1}"#).is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn keys_sort_by_node_then_time() {
        let a = NodeEvent {
            time_ms: 9,
            ..event()
        };
        let b = NodeEvent {
            time_ms: 10,
            ..event()
        };
        assert!(a.key() < b.key());
    }
}
