//! The circuit breaker: automation never drains more than a configured share of a partition
//! or of the cluster.
//!
//! Before the daemon drains its node it lists every node (`scontrol show node -o`) and, for
//! the whole cluster and for each partition the node belongs to (each a *scope*), counts
//!
//! - `total`: the scope's nodes (this node included);
//! - `drained`: the scope's *other* nodes that are drained with an `sgpu:` reason set within
//!   the last `breaker_window_s` (the reason's time is Slurm's `[user@time]` suffix; a drain
//!   whose time cannot be read counts, to be safe).
//!
//! The scope's limit is `max(breaker_min_nodes, floor(breaker_max_fraction × total))`, and
//! draining is allowed only if `drained + 1 <= limit` in every scope. Otherwise the breaker
//! is open: the node is not drained, the daemon says so at error level and keeps checking
//! (the drain happens on a later run once the breaker closes).
//!
//! Admin drains (any other reason) never count: the breaker limits what a bug in sgpu could
//! do, not what admins do.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::BreakerConfig;
use crate::slurmctl::NodeInfo;

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
    /// Other nodes of the scope recently drained by sgpu.
    pub drained: usize,
    /// Nodes in the scope.
    pub total: usize,
    /// The scope's limit.
    pub limit: usize,
    /// The window, seconds.
    pub window_s: u64,
}

impl fmt::Display for Trip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker open: {}: {} of {} nodes already drained by sgpu within {} s, \
             limit {}",
            self.scope, self.drained, self.total, self.window_s, self.limit
        )
    }
}

/// Whether a node counts as recently drained by sgpu.
fn recent_sgpu_drain(n: &NodeInfo, now: i64, window: Duration) -> bool {
    n.state.drained_by_sgpu()
        && n.reason_time.is_none_or(|t| {
            now.saturating_sub(t) <= i64::try_from(window.as_secs()).unwrap_or(i64::MAX)
        })
}

/// Judges whether `node` may be drained now (`now`: Unix seconds), given every node of the
/// cluster. `Err` names the first scope (cluster first, then partitions) that would exceed
/// its limit.
pub fn judge(nodes: &[NodeInfo], node: &str, config: &BreakerConfig, now: i64) -> Result<(), Trip> {
    let counts = |members: &[&NodeInfo]| {
        let drained = members
            .iter()
            .filter(|n| n.name != node && recent_sgpu_drain(n, now, config.window))
            .count();
        (drained, members.len().max(1))
    };
    let mut scopes: Vec<(String, Vec<&NodeInfo>)> =
        vec![("cluster".to_string(), nodes.iter().collect())];
    if let Some(me) = nodes.iter().find(|n| n.name == node) {
        for p in &me.partitions {
            let members = nodes.iter().filter(|n| n.partitions.contains(p)).collect();
            scopes.push((format!("partition {p}"), members));
        }
    }
    for (scope, members) in scopes {
        let (drained, total) = counts(&members);
        let limit = limit(total, config);
        if drained + 1 > limit {
            return Err(Trip {
                scope,
                drained,
                total,
                limit,
                window_s: config.window.as_secs(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slurmctl::NodeState;

    fn cfg(fraction: f64, min: u32) -> BreakerConfig {
        BreakerConfig {
            max_fraction: fraction,
            min_nodes: min,
            window: Duration::from_secs(3600),
        }
    }

    #[test]
    fn limit_arithmetic() {
        let d = BreakerConfig::default();
        // 10% of the cluster, at least one node
        assert_eq!(limit(1, &d), 1);
        assert_eq!(limit(2, &d), 1);
        assert_eq!(limit(19, &d), 1);
        assert_eq!(limit(20, &d), 2);
        assert_eq!(limit(1000, &d), 100);
        assert_eq!(limit(0, &d), 1);
        // floating point: 0.29 x 100 is 28.999999999999996
        assert_eq!(limit(100, &cfg(0.29, 0)), 29);
        assert_eq!(limit(10, &cfg(0.3, 0)), 3);
        assert_eq!(limit(7, &cfg(0.5, 0)), 3);
        // min_nodes wins over a small share; a zero floor with a zero share forbids draining
        assert_eq!(limit(10, &cfg(0.1, 4)), 4);
        assert_eq!(limit(10, &cfg(0.0, 0)), 0);
        assert_eq!(limit(10, &cfg(1.0, 0)), 10);
    }

    fn node(
        name: &str,
        parts: &[&str],
        state: &str,
        reason: Option<&str>,
        t: Option<i64>,
    ) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            partitions: parts.iter().map(|p| p.to_string()).collect(),
            state: NodeState {
                state: state.into(),
                reason: reason.map(String::from),
            },
            reason_time: t,
        }
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn two_node_cluster_allows_one_sgpu_drain() {
        let d = BreakerConfig::default();
        let idle = |n| node(n, &["gpu"], "IDLE", None, None);
        let nodes = vec![idle("node1"), idle("node2")];
        assert_eq!(judge(&nodes, "node1", &d, NOW), Ok(()));
        let nodes = vec![
            node(
                "node1",
                &["gpu"],
                "IDLE+DRAIN",
                Some("sgpu: gpu.xid gpu2: xid 79"),
                Some(NOW - 5),
            ),
            idle("node2"),
        ];
        let trip = judge(&nodes, "node2", &d, NOW).unwrap_err();
        assert_eq!(
            trip,
            Trip {
                scope: "cluster".into(),
                drained: 1,
                total: 2,
                limit: 1,
                window_s: 3600
            }
        );
        assert!(trip.to_string().contains("1 of 2 nodes"), "{trip}");
        // the node's own drain does not count against itself
        assert_eq!(judge(&nodes, "node1", &d, NOW), Ok(()));
    }

    #[test]
    fn admin_drains_and_old_drains_do_not_count() {
        let d = BreakerConfig::default();
        let nodes = vec![
            node(
                "n1",
                &["gpu"],
                "IDLE+DRAIN",
                Some("bad dimm"),
                Some(NOW - 5),
            ),
            node(
                "n2",
                &["gpu"],
                "DOWN+DRAIN",
                Some("sgpu: gpu.lost gpu0: x"),
                Some(NOW - 7200),
            ),
            node("n3", &["gpu"], "IDLE", None, None),
        ];
        assert_eq!(judge(&nodes, "n3", &d, NOW), Ok(()));
        // an sgpu drain with an unreadable time counts
        let nodes = vec![
            node(
                "n1",
                &["gpu"],
                "IDLE+DRAIN",
                Some("sgpu: gpu.lost gpu0: x"),
                None,
            ),
            node("n3", &["gpu"], "IDLE", None, None),
        ];
        assert!(judge(&nodes, "n3", &d, NOW).is_err());
    }

    #[test]
    fn partition_limit_applies_even_when_cluster_has_room() {
        // 20 nodes: cluster limit 2; partition "a" has 3 nodes: limit max(1, 0) = 1
        let mut nodes: Vec<NodeInfo> = (0..17)
            .map(|i| node(&format!("b{i}"), &["b"], "IDLE", None, None))
            .collect();
        nodes.push(node(
            "a0",
            &["a", "all"],
            "IDLE+DRAIN",
            Some("sgpu: x"),
            Some(NOW),
        ));
        nodes.push(node("a1", &["a", "all"], "IDLE", None, None));
        nodes.push(node("a2", &["a"], "IDLE", None, None));
        let d = BreakerConfig::default();
        let trip = judge(&nodes, "a1", &d, NOW).unwrap_err();
        assert_eq!(
            (trip.scope.as_str(), trip.drained, trip.total, trip.limit),
            ("partition a", 1, 3, 1)
        );
        // a node of partition b may still be drained: cluster 1 + 1 <= 2, partition b 0 + 1 <= 1
        assert_eq!(judge(&nodes, "b3", &d, NOW), Ok(()));
    }

    #[test]
    fn cluster_limit_reached() {
        let d = BreakerConfig::default();
        let mut nodes: Vec<NodeInfo> = (0..20)
            .map(|i| node(&format!("n{i}"), &["gpu"], "IDLE", None, None))
            .collect();
        nodes[0] = node(
            "n0",
            &["gpu"],
            "MIXED+DRAIN",
            Some("sgpu: a"),
            Some(NOW - 10),
        );
        assert_eq!(judge(&nodes, "n5", &d, NOW), Ok(()));
        nodes[1] = node(
            "n1",
            &["gpu"],
            "IDLE+DRAIN",
            Some("sgpu: b"),
            Some(NOW - 10),
        );
        let trip = judge(&nodes, "n5", &d, NOW).unwrap_err();
        assert_eq!(
            (trip.scope.as_str(), trip.drained, trip.limit),
            ("cluster", 2, 2)
        );
    }

    #[test]
    fn unknown_node_is_judged_on_the_cluster_alone() {
        let d = BreakerConfig::default();
        let nodes = vec![node("n1", &["gpu"], "IDLE", None, None)];
        assert_eq!(judge(&nodes, "elsewhere", &d, NOW), Ok(()));
        assert_eq!(judge(&[], "elsewhere", &d, NOW), Ok(()));
    }
}
