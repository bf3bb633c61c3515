//! What Slurm says about nodes (`scontrol show node -o`), who drained them, and the rule
//! `sgpu resume` follows.

use std::path::Path;
use std::time::Duration;

use sgpu_nodelib::slurmctl::{self, SGPU_REASON_PREFIX, Scontrol};

/// How long `sgpu status` and friends wait for `scontrol show node` (a 10,000-node cluster
/// answers in well under a second; slurmctld busy with a storm may take longer).
pub const SHOW_NODES_TIMEOUT: Duration = Duration::from_secs(30);

/// Prefix of the reason `sgpu drain` gives Slurm: `sgpu-admin(<user>): <text>`. It does not
/// start with [`SGPU_REASON_PREFIX`] (`sgpu:`), so healthd never resumes an admin's drain.
pub const ADMIN_REASON_PREFIX: &str = "sgpu-admin";

/// One node as `scontrol show node -o` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmNode {
    /// `NodeName=`.
    pub name: String,
    /// `State=`, e.g. `IDLE+DRAIN`.
    pub state: String,
    /// The reason without Slurm's `[user@time]` suffix.
    pub reason: Option<String>,
    /// Who set the reason (the suffix's user).
    pub reason_user: Option<String>,
    /// When (the suffix's time, as Slurm prints it).
    pub reason_time: Option<String>,
}

impl SlurmNode {
    /// Whether the node is drained or draining.
    pub fn drained(&self) -> bool {
        self.state
            .split('+')
            .any(|f| matches!(f, "DRAIN" | "DRAINED" | "DRAINING"))
    }

    /// Whether the node is DOWN or FAIL/FAILING (an admin's state, or slurmctld's for a node
    /// that stopped answering).
    pub fn down_or_failed(&self) -> bool {
        slurmctl::NodeState {
            state: self.state.clone(),
            reason: None,
        }
        .down_or_failed()
    }

    /// Who drained the node, and when, as `sgpu status` shows it: Slurm's `user@time`; but
    /// once slurmctld appended a reason of its own (23.02+: `... : Not responding`) that user
    /// and time are slurmctld's, so the drainer is named from the reason's start (`sgpu` for
    /// `sgpu:`, the admin for `sgpu-admin(<user>):`, `?` otherwise) and slurmctld's part
    /// follows: `sgpu, then slurmctld root@2026-12-04T00:39:07`.
    pub fn drained_by(&self) -> String {
        let (Some(u), Some(t)) = (&self.reason_user, &self.reason_time) else {
            return "-".into();
        };
        let reason = self.reason.as_deref().unwrap_or("");
        if slurmctl::split_appended(reason).1.is_none() {
            return format!("{u}@{t}");
        }
        let who = if reason.starts_with(SGPU_REASON_PREFIX) {
            "sgpu".to_string()
        } else if let Some(admin) = reason
            .strip_prefix(ADMIN_REASON_PREFIX)
            .and_then(|r| r.strip_prefix('('))
            .and_then(|r| r.split_once("):"))
        {
            admin.0.to_string()
        } else {
            "?".to_string()
        };
        format!("{who}, then slurmctld {u}@{t}")
    }

    /// The reason as Slurm shows it, with `[user@time]`.
    pub fn full_reason(&self) -> Option<String> {
        let r = self.reason.clone()?;
        Some(match (&self.reason_user, &self.reason_time) {
            (Some(u), Some(t)) => format!("{r} [{u}@{t}]"),
            _ => r,
        })
    }
}

/// Parses one record of `scontrol show node -o` (`None`: no `NodeName=`), with
/// [`slurmctl::node_fields`]: an admin's reason cannot stand in for the state.
pub fn parse_node(line: &str) -> Option<SlurmNode> {
    let f = slurmctl::node_fields(line);
    let get = |key: &str| f.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
    let name = get("NodeName")?;
    let (mut reason, mut reason_user, mut reason_time) = (None, None, None);
    if let Some(raw) = get("Reason").filter(|r| !r.is_empty() && r != "(null)") {
        match raw.rfind(" [") {
            Some(i) if raw.ends_with(']') => {
                let suffix = &raw[i + 2..raw.len() - 1];
                if let Some((u, t)) = suffix.rsplit_once('@') {
                    reason_user = Some(u.to_string());
                    reason_time = Some(t.to_string());
                }
                reason = Some(raw[..i].to_string());
            }
            _ => reason = Some(raw),
        }
    }
    Some(SlurmNode {
        name,
        state: get("State").unwrap_or_default(),
        reason,
        reason_user,
        reason_time,
    })
}

/// Why the node list could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ShowNodesError {
    /// scontrol could not be found or run, or failed (the error says which and why).
    #[error(transparent)]
    Scontrol(#[from] slurmctl::SlurmctlError),
    /// Its output is not a node list.
    #[error("{command} printed {why}")]
    Output {
        /// The command run.
        command: String,
        /// What is wrong with the output.
        why: String,
    },
}

/// Every node Slurm knows, in its order (`nodes`: only these, when given). scontrol's
/// output is read while it runs, under [`SHOW_NODES_TIMEOUT`] and
/// [`slurmctl::MAX_OUTPUT`].
pub fn show_nodes(
    scontrol: &Path,
    nodes: Option<&[String]>,
) -> Result<Vec<SlurmNode>, ShowNodesError> {
    let sc = Scontrol::locate(Some(scontrol))?.with_timeout(SHOW_NODES_TIMEOUT);
    let mut args: Vec<String> = vec!["show".into(), "node".into(), "-o".into()];
    if let Some(n) = nodes {
        args.push(n.join(","));
    }
    let out = sc.run_program(scontrol, &args, &[])?;
    let records = slurmctl::node_records(&out).map_err(|e| ShowNodesError::Output {
        command: format!("{} {}", scontrol.display(), args.join(" ")),
        why: e.to_string(),
    })?;
    Ok(records.iter().filter_map(|r| parse_node(r)).collect())
}

/// What the node's sgpu-healthd says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The last check run drained nothing (`healthy` or `warn`).
    Passing {
        /// `healthy` or `warn`.
        verdict: String,
    },
    /// The last check run found drain-worthy failures (the checks' reasons).
    Failing(Vec<String>),
    /// healthd has not run its checks yet.
    NotChecked,
    /// healthd could not be asked (why).
    Unknown(String),
}

/// Whether `sgpu resume` may resume a node, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeDecision {
    /// Resume it.
    Resume,
    /// Nothing to do: not drained.
    NotDrained,
    /// Refused without `--force` (the message says why and what to do).
    Refuse(String),
}

/// The rule: a node is resumed only if it is drained, its drain was sgpu's own (reason
/// starting `sgpu:`, set by healthd or the prolog; any other reason, `sgpu drain`'s
/// included, belongs to an admin who may be working on the node) and its healthd says its
/// checks pass now. A DOWN or FAIL node is never resumed without `--force` (RESUME would
/// bring it back, and DOWN/FAIL is an admin's or slurmctld's call). `--force` overrides the
/// refusals, never the state check.
pub fn resume_decision(node: &SlurmNode, health: &Health, force: bool) -> ResumeDecision {
    if !node.drained() && !node.down_or_failed() {
        return ResumeDecision::NotDrained;
    }
    if force {
        return ResumeDecision::Resume;
    }
    if node.down_or_failed() {
        return ResumeDecision::Refuse(format!(
            "the node is {} ({:?}): an admin's or slurmctld's state, not sgpu's drain; find \
             out why, then resume with --force",
            node.state,
            node.reason.as_deref().unwrap_or("no reason")
        ));
    }
    let reason = node.reason.as_deref().unwrap_or("");
    if !reason.starts_with(SGPU_REASON_PREFIX) {
        // after slurmctld's append its user is slurmctld's: name the drainer from the reason
        let appended = slurmctl::split_appended(reason).1.is_some();
        let by = match &node.reason_user {
            Some(_) if appended => format!(" by {}", node.drained_by()),
            Some(u) => format!(" by {u}"),
            None => String::new(),
        };
        return ResumeDecision::Refuse(format!(
            "drained{by} for another reason ({reason:?}), not by sgpu's checks; resume with \
             --force once that reason no longer holds"
        ));
    }
    match health {
        Health::Passing { .. } => ResumeDecision::Resume,
        Health::Failing(why) => ResumeDecision::Refuse(format!(
            "sgpu checks still fail on this node: {}; fix the GPU (or wait for healthd's next \
             check) and retry, or resume with --force",
            why.join("; ")
        )),
        Health::NotChecked => ResumeDecision::Refuse(
            "healthd has not checked this node's GPUs yet; retry in a moment, or resume with \
             --force"
                .into(),
        ),
        Health::Unknown(e) => ResumeDecision::Refuse(format!(
            "cannot tell whether sgpu checks pass: {e}; start sgpu-healthd on the node (or \
             pass --healthd), or resume with --force"
        )),
    }
}

/// The reason `sgpu drain` gives Slurm.
pub fn admin_reason(user: &str, text: &str) -> String {
    format!("{ADMIN_REASON_PREFIX}({user}): {}", text.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(line: &str) -> SlurmNode {
        match parse_node(line) {
            Some(n) => n,
            None => panic!("no node in {line:?}"),
        }
    }

    #[test]
    fn the_drainer_survives_slurmctlds_append() {
        // measured on 26.05.3: slurmd stopped under an sgpu drain
        let n = node(
            "NodeName=node1 State=DOWN+DRAIN+NOT_RESPONDING Reason=sgpu: gpu.xid gpu0: xid 79 \
             : Not responding [root@2026-12-04T00:39:07]",
        );
        assert_eq!(
            n.drained_by(),
            "sgpu, then slurmctld root@2026-12-04T00:39:07"
        );
        let n = node(
            "NodeName=n State=IDLE+DRAIN Reason=sgpu-admin(ann): dimm : Not responding \
             [slurm@2026-12-04T00:39:07]",
        );
        assert_eq!(
            n.drained_by(),
            "ann, then slurmctld slurm@2026-12-04T00:39:07"
        );
        let refused = resume_decision(&n, &Health::NotChecked, false);
        assert!(
            matches!(&refused, ResumeDecision::Refuse(m) if m.contains("by ann, then slurmctld")),
            "{refused:?}"
        );
        // nothing appended: Slurm's user and time as they are
        let n =
            node("NodeName=n State=IDLE+DRAIN Reason=sgpu: gpu.xid x [root@2026-12-04T00:38:41]");
        assert_eq!(n.drained_by(), "root@2026-12-04T00:38:41");
        assert_eq!(node("NodeName=n State=IDLE").drained_by(), "-");
    }

    #[test]
    fn parses_reason_user_and_time() {
        let n = node(
            "NodeName=node1 Arch=x86_64 State=IDLE+DRAIN ThreadsPerCore=1 \
             Reason=sgpu-admin(ann): fan swap [root@2026-11-23T12:00:01] Comment=(null)",
        );
        assert_eq!(n.name, "node1");
        assert!(n.drained());
        assert_eq!(n.reason.as_deref(), Some("sgpu-admin(ann): fan swap"));
        assert_eq!(n.reason_user.as_deref(), Some("root"));
        assert_eq!(n.reason_time.as_deref(), Some("2026-11-23T12:00:01"));
        assert_eq!(
            n.full_reason().as_deref(),
            Some("sgpu-admin(ann): fan swap [root@2026-11-23T12:00:01]")
        );
        let idle = node("NodeName=node2 State=IDLE Reason=(null)");
        assert!(!idle.drained());
        assert_eq!(idle.reason, None);
        assert!(parse_node("garbage").is_none());
    }

    #[test]
    fn resume_rule() {
        let pass = Health::Passing {
            verdict: "healthy".into(),
        };
        let fail = Health::Failing(vec!["gpu0 xid 79".into()]);
        let sgpu =
            node("NodeName=n State=IDLE+DRAIN Reason=sgpu: xid 79 [slurm@2026-11-23T12:00:01]");
        let admin = node("NodeName=n State=IDLE+DRAIN Reason=bad fan [bob@2026-11-23T12:00:01]");
        let mine = node(
            "NodeName=n State=IDLE+DRAIN Reason=sgpu-admin(ann): x [root@2026-11-23T12:00:01]",
        );
        let idle = node("NodeName=n State=IDLE");
        assert_eq!(resume_decision(&sgpu, &pass, false), ResumeDecision::Resume);
        assert_eq!(
            resume_decision(&idle, &pass, true),
            ResumeDecision::NotDrained
        );
        let refused = |d| matches!(d, ResumeDecision::Refuse(_));
        assert!(refused(resume_decision(&admin, &pass, false)));
        assert!(refused(resume_decision(&mine, &pass, false)));
        assert!(refused(resume_decision(&sgpu, &fail, false)));
        assert!(refused(resume_decision(&sgpu, &Health::NotChecked, false)));
        assert!(refused(resume_decision(
            &sgpu,
            &Health::Unknown("down".into()),
            false
        )));
        match resume_decision(&admin, &pass, false) {
            ResumeDecision::Refuse(m) => assert!(m.contains("by bob"), "{m}"),
            d => panic!("{d:?}"),
        }
        match resume_decision(&sgpu, &fail, false) {
            ResumeDecision::Refuse(m) => assert!(m.contains("gpu0 xid 79"), "{m}"),
            d => panic!("{d:?}"),
        }
        assert_eq!(resume_decision(&admin, &fail, true), ResumeDecision::Resume);
        // DOWN and FAIL, even with sgpu's reason and passing checks: only with --force
        for line in [
            "NodeName=n State=DOWN Reason=x [root@2026-11-23T12:00:01]",
            "NodeName=n State=IDLE+FAIL Reason=psu [root@2026-11-23T12:00:01]",
            "NodeName=n State=DOWN+DRAIN Reason=sgpu: xid 79 [root@2026-11-23T12:00:01]",
        ] {
            let n = node(line);
            match resume_decision(&n, &pass, false) {
                ResumeDecision::Refuse(m) => assert!(m.contains("--force"), "{m}"),
                d => panic!("{line}: {d:?}"),
            }
            assert_eq!(resume_decision(&n, &pass, true), ResumeDecision::Resume);
        }
        assert!(!admin_reason("ann", "x").starts_with(SGPU_REASON_PREFIX));
    }
}
