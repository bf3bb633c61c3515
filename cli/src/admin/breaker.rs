//! `sgpu breaker status` and `sgpu breaker reset`: the admin's side of the circuit breaker
//! (`sgpu_nodelib::breaker`).
//!
//! The breaker is open in a scope (the cluster, a partition) while sgpu holds as many of its
//! nodes drained as the limit allows. `reset` closes it by handing every sgpu drain to the
//! admins: each node is drained again with the reason `sgpu-admin(<user>): breaker reset:
//! <old reason>`, which no longer starts with `sgpu:`, so it stops counting and sgpu never
//! resumes it. Nodes stay out of service; resume them with `sgpu resume --force` once seen to.

use serde::Serialize;
use sgpu_nodelib::breaker::ScopeCount;
use sgpu_nodelib::slurmctl::NodeInfo;

use super::nodes::admin_reason;

/// The reason `sgpu breaker reset` gives a node sgpu held drained for `old`.
pub fn reset_reason(user: &str, old: &str) -> String {
    admin_reason(user, &format!("breaker reset: {old}"))
}

/// The nodes `reset` hands over, in name order (those in `scope`, when given: `cluster` or
/// a partition name).
pub fn held_nodes<'a>(nodes: &'a [NodeInfo], partition: Option<&str>) -> Vec<&'a NodeInfo> {
    let mut held: Vec<&NodeInfo> = nodes
        .iter()
        .filter(|n| n.state.drained_by_sgpu())
        .filter(|n| partition.is_none_or(|p| n.partitions.iter().any(|q| q == p)))
        .collect();
    held.sort_by(|a, b| a.name.cmp(&b.name));
    held
}

/// One row of `sgpu breaker status --json`.
#[derive(Debug, Serialize)]
pub struct StatusRow<'a> {
    /// The scope and its counts.
    #[serde(flatten)]
    pub count: &'a ScopeCount,
    /// `open` or `closed`.
    pub breaker: &'static str,
}

/// The rows of `sgpu breaker status`, a header first.
pub fn status_rows(counts: &[ScopeCount]) -> Vec<Vec<String>> {
    let mut rows = vec![
        ["SCOPE", "HELD", "NODES", "LIMIT", "BREAKER"]
            .map(String::from)
            .to_vec(),
    ];
    for c in counts {
        rows.push(vec![
            c.scope.clone(),
            c.held.to_string(),
            c.total.to_string(),
            c.limit.to_string(),
            if c.open() { "open" } else { "closed" }.into(),
        ]);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use sgpu_nodelib::slurmctl::parse_node_info;

    #[test]
    fn reset_hands_sgpu_drains_to_the_admin() {
        let nodes: Vec<NodeInfo> = [
            "NodeName=b State=IDLE+DRAIN Partitions=gpu Reason=sgpu: gpu.xid gpu0: xid 79 [root@2026-11-23T09:45:10]",
            "NodeName=a State=DOWN+DRAIN Partitions=gpu,big Reason=sgpu: gpu.lost gpu1: x [root@2026-11-23T09:45:10]",
            "NodeName=c State=IDLE+DRAIN Partitions=gpu Reason=bad dimm [root@2026-11-23T09:45:10]",
            "NodeName=d State=IDLE Partitions=gpu",
        ]
        .iter()
        .filter_map(|l| parse_node_info(l))
        .collect();
        let names = |v: Vec<&NodeInfo>| v.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(held_nodes(&nodes, None)), ["a", "b"]);
        assert_eq!(names(held_nodes(&nodes, Some("big"))), ["a"]);
        let r = reset_reason("ann", "sgpu: gpu.xid gpu0: xid 79");
        assert_eq!(
            r,
            "sgpu-admin(ann): breaker reset: sgpu: gpu.xid gpu0: xid 79"
        );
        assert!(!r.starts_with(sgpu_nodelib::slurmctl::SGPU_REASON_PREFIX));
    }

    #[test]
    fn status_table() {
        let c = ScopeCount {
            scope: "cluster".into(),
            held: 3,
            total: 12,
            limit: 3,
        };
        let rows = status_rows(std::slice::from_ref(&c));
        assert_eq!(rows[1], ["cluster", "3", "12", "3", "open"]);
    }
}
