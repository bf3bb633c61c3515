//! The circuit breaker: automation never holds more than a configured share of a partition
//! or of the cluster drained.
//!
//! For the whole cluster and for each partition the node belongs to (each a *scope*), the
//! limit is `max(breaker_min_nodes, floor(breaker_max_fraction × total))`, `total` being
//! the scope's nodes as `scontrol show node -o` lists them. sgpu *holds* a node when it is
//! drained with an `sgpu:` reason (also when it went DOWN since). Every path that drains
//! (healthd, sgpu-prolog, sgpu-epilog) goes through the same three steps, with slurmctld's
//! node list as the only shared state:
//!
//! 1. **Pre-check** ([`judge`]): the scope's other held nodes + 1 must fit the limit, else
//!    the breaker is open and the node is not drained.
//! 2. **Drain, then recount** ([`settle_and_recount`]): nodes that fail in the same moment
//!    all pass the pre-check, so after its drain a node waits until the second its drain
//!    was stamped with (Slurm's `[user@time]` reason suffix) is over, plus a margin for
//!    clock skew ([`SETTLE_MARGIN`]), and lists the nodes again. By then every drain
//!    stamped no later than its own is visible, and every later drain sorts after it.
//! 3. **Give back**: the held nodes of each scope are ordered by (reason time, node name);
//!    a node whose place is not within the scope's limit resumes itself at once (if its
//!    reason is still its own) and reports the breaker open. Every node computes the same
//!    order, so at most `limit` nodes stay drained however many failed together (fewer
//!    when a node ahead gives back too: the rule errs on the side of service).
//!
//! Since Slurm 23.02 slurmctld appends reasons of its own to a drain's (`sgpu: ... : Not
//! responding` when the node stops answering) and stamps the reason with that later time
//! (measured on 26.05.3; 22.05 leaves reason and time alone). Such a node was drained by
//! sgpu before its stamp, so its time counts as unreadable ([`NodeInfo::reason_time`] is
//! `None`): it sorts first and counts against a newcomer, never after one.
//!
//! There is no time window: a drain counts as long as sgpu holds the node, so a slow storm
//! is capped like a fast one. The breaker closes when held nodes leave that state: sgpu
//! resumes a recovered node, an admin resumes one, or an admin takes the drains over with
//! `sgpu breaker reset` (the reasons become the admin's, so they no longer count). When
//! open, the node is not drained, the job still gets its gate verdict, and the reason is
//! in the log, `/status`, `/metrics` and `sgpu status`.
//!
//! Admin drains (any other reason) and admin DOWN/FAIL states never count: the breaker
//! limits what a bug in sgpu could do, not what admins do.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::BreakerConfig;
use crate::slurmctl::{NodeInfo, NodeState, Scontrol, SlurmctlError};

/// How long past the second of its own drain a node waits before it recounts: allowance
/// for the clock difference between this node and slurmctld (NTP keeps it far below).
pub const SETTLE_MARGIN: Duration = Duration::from_millis(1000);

/// The most nodes sgpu may hold drained in a scope of `total` nodes.
///
/// `floor(fraction × total)`, computed with a 1e-9 allowance so that shares such as
/// 0.29 × 100 (28.999999999999996 in floating point) give 29, and never below `min_nodes`.
pub fn limit(total: usize, config: &BreakerConfig) -> usize {
    let share = (config.max_fraction * total as f64 + 1e-9).floor();
    let share = if share.is_finite() && share > 0.0 {
        share as usize
    } else {
        0
    };
    share.max(config.min_nodes as usize)
}

/// Why the breaker refused a drain: the first scope that would go over its limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trip {
    /// `cluster` or `partition <name>`.
    pub scope: String,
    /// Other nodes of the scope held drained by sgpu (ahead of this one, after a recount).
    pub drained: usize,
    /// Nodes in the scope.
    pub total: usize,
    /// The scope's limit.
    pub limit: usize,
}

impl fmt::Display for Trip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker open: {}: {} of {} nodes already held drained by sgpu, limit {} \
             (`sgpu breaker reset` hands them to the admins)",
            self.scope, self.drained, self.total, self.limit
        )
    }
}

/// The scopes `node` belongs to: the cluster, then each of its partitions (members listed).
fn scopes<'a>(nodes: &'a [NodeInfo], node: &str) -> Vec<(String, Vec<&'a NodeInfo>)> {
    let mut scopes: Vec<(String, Vec<&NodeInfo>)> =
        vec![("cluster".to_string(), nodes.iter().collect())];
    if let Some(me) = nodes.iter().find(|n| n.name == node) {
        for p in &me.partitions {
            let members = nodes.iter().filter(|n| n.partitions.contains(p)).collect();
            scopes.push((format!("partition {p}"), members));
        }
    }
    scopes
}

/// Judges whether `node` may be drained now, given every node of the cluster: every scope's
/// other sgpu-held nodes + 1 must fit its limit. `Err` names the first scope (cluster first,
/// then partitions) that would exceed it.
pub fn judge(nodes: &[NodeInfo], node: &str, config: &BreakerConfig) -> Result<(), Trip> {
    for (scope, members) in scopes(nodes, node) {
        let drained = members
            .iter()
            .filter(|n| n.name != node && n.state.drained_by_sgpu())
            .count();
        let total = members.len().max(1);
        let limit = limit(total, config);
        if drained + 1 > limit {
            return Err(Trip {
                scope,
                drained,
                total,
                limit,
            });
        }
    }
    Ok(())
}

/// After `node` was drained: whether it may stay drained, given the node list read once its
/// drain's second is over. The held nodes of each scope are ordered by (reason time, name)
/// (an unreadable time, or a reason slurmctld appended to, sorts first: it counts against
/// the newcomer); `node` stays only if
/// its place is within the limit of every scope. `Err`: the first scope it does not fit.
pub fn keep_after_recount(
    nodes: &[NodeInfo],
    node: &str,
    config: &BreakerConfig,
) -> Result<(), Trip> {
    for (scope, members) in scopes(nodes, node) {
        let mut held: Vec<&NodeInfo> = members
            .iter()
            .copied()
            .filter(|n| n.state.drained_by_sgpu())
            .collect();
        held.sort_by(|a, b| {
            (a.reason_time.unwrap_or(i64::MIN), &a.name)
                .cmp(&(b.reason_time.unwrap_or(i64::MIN), &b.name))
        });
        let total = members.len().max(1);
        let limit = limit(total, config);
        // not held (any more): nothing of ours to keep; the caller looks at the state
        let ahead = held.iter().position(|n| n.name == node).unwrap_or(0);
        if ahead + 1 > limit {
            return Err(Trip {
                scope,
                // of the nodes ahead, those past the limit give their drains back too
                drained: ahead.min(limit),
                total,
                limit,
            });
        }
    }
    Ok(())
}

/// One scope as `sgpu breaker status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScopeCount {
    /// `cluster` or `partition <name>`.
    pub scope: String,
    /// Nodes sgpu holds drained.
    pub held: usize,
    /// Nodes in the scope.
    pub total: usize,
    /// The scope's limit.
    pub limit: usize,
}

impl ScopeCount {
    /// Whether the breaker refuses every further drain in this scope.
    pub fn open(&self) -> bool {
        self.held >= self.limit
    }
}

/// The cluster and every partition: how many nodes sgpu holds drained against the limit.
pub fn scope_counts(nodes: &[NodeInfo], config: &BreakerConfig) -> Vec<ScopeCount> {
    let mut partitions: Vec<&String> = nodes.iter().flat_map(|n| &n.partitions).collect();
    partitions.sort();
    partitions.dedup();
    let count = |scope: String, members: Vec<&NodeInfo>| {
        let total = members.len().max(1);
        ScopeCount {
            scope,
            held: members.iter().filter(|n| n.state.drained_by_sgpu()).count(),
            total,
            limit: limit(total, config),
        }
    };
    let mut out = vec![count("cluster".into(), nodes.iter().collect())];
    for p in partitions {
        let members = nodes.iter().filter(|n| n.partitions.contains(p)).collect();
        out.push(count(format!("partition {p}"), members));
    }
    out
}

/// Unix time now, seconds with a fraction.
fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Waits until the second `node`'s drain was stamped with is over (plus [`SETTLE_MARGIN`])
/// and returns the node list read after that. `drained_at`: local Unix seconds right after
/// the drain returned (used when Slurm's stamp cannot be read).
pub fn settle_and_recount(
    scontrol: &Scontrol,
    node: &str,
    drained_at: f64,
    margin: Duration,
) -> Result<Vec<NodeInfo>, SlurmctlError> {
    let mut stamp = drained_at.floor();
    loop {
        let wait = stamp + 1.0 + margin.as_secs_f64() - now_s();
        if wait > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(wait.min(5.0)));
        }
        let nodes = scontrol.nodes()?;
        let mine = nodes
            .iter()
            .find(|n| n.name == node)
            .and_then(|n| n.reason_time)
            .map(|t| t as f64);
        match mine {
            // Slurm stamped the drain later than this clock says: wait for that second
            Some(t) if t > stamp && now_s() < t + 1.0 + margin.as_secs_f64() => stamp = t,
            _ => return Ok(nodes),
        }
    }
}

/// What [`guarded_drain`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guarded {
    /// Drained, and within the limit after the recount.
    Drained,
    /// Already drained by sgpu: left as it is.
    AlreadyHeld(NodeState),
    /// DOWN, FAIL or drained by someone else: not touched.
    HeldByOthers(NodeState),
    /// The breaker refused the drain; `gave_back`: the node was drained, then resumed
    /// because the recount put it past the limit.
    Open {
        /// Why.
        trip: Trip,
        /// Whether the node was drained and given back.
        gave_back: bool,
    },
}

/// Why a guarded drain could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// scontrol failed (reading the nodes, draining, resuming).
    #[error(transparent)]
    Slurm(#[from] SlurmctlError),
    /// The node was drained past the limit and could not be given back.
    #[error("{trip}; drained {node} but could not resume it: {error}; resume it by hand")]
    GiveBack {
        /// The node.
        node: String,
        /// Why it had to be given back.
        trip: Trip,
        /// What went wrong.
        error: String,
    },
}

/// Gives `node` back after a recount put it past the limit: resumes it if Slurm still shows
/// the sgpu drain of `reason` (an admin may have taken it over meanwhile).
pub fn give_back(
    scontrol: &Scontrol,
    node: &str,
    reason: &str,
    trip: Trip,
) -> Result<Guarded, GuardError> {
    let now = scontrol.node_state(node)?;
    let ours = now.drained_by_sgpu()
        && !now.down_or_failed()
        && now
            .reason
            .as_deref()
            .is_some_and(|r| reason.starts_with(r) || r.starts_with(reason));
    if ours {
        scontrol.resume(node).map_err(|e| GuardError::GiveBack {
            node: node.to_string(),
            trip: trip.clone(),
            error: e.to_string(),
        })?;
    }
    Ok(Guarded::Open {
        trip,
        gave_back: true,
    })
}

/// Drains `node` for `reason` under the breaker, as the gates do: leaves a node held by
/// others or already held by sgpu alone, refuses when the pre-check trips, and gives the
/// drain back when the recount puts the node past the limit.
pub fn guarded_drain(
    scontrol: &Scontrol,
    node: &str,
    reason: &str,
    config: &BreakerConfig,
) -> Result<Guarded, GuardError> {
    let nodes = scontrol.nodes()?;
    let state = match nodes.iter().find(|n| n.name == node) {
        Some(n) => n.state.clone(),
        None => scontrol.node_state(node)?,
    };
    if state.held_by_others() {
        return Ok(Guarded::HeldByOthers(state));
    }
    if state.drained_by_sgpu() {
        return Ok(Guarded::AlreadyHeld(state));
    }
    if let Err(trip) = judge(&nodes, node, config) {
        return Ok(Guarded::Open {
            trip,
            gave_back: false,
        });
    }
    scontrol.drain(node, reason)?;
    let drained_at = now_s();
    let nodes = settle_and_recount(scontrol, node, drained_at, SETTLE_MARGIN)?;
    match keep_after_recount(&nodes, node, config) {
        Ok(()) => Ok(Guarded::Drained),
        Err(trip) => give_back(scontrol, node, reason, trip),
    }
}

#[cfg(test)]
mod tests;
