use super::*;
use crate::slurmctl::NodeState;

fn cfg(fraction: f64, min: u32) -> BreakerConfig {
    BreakerConfig {
        max_fraction: fraction,
        min_nodes: min,
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

fn node(name: &str, parts: &[&str], state: &str, reason: Option<&str>, t: Option<i64>) -> NodeInfo {
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
    assert_eq!(judge(&nodes, "node1", &d), Ok(()));
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
    let trip = judge(&nodes, "node2", &d).unwrap_err();
    assert_eq!(
        trip,
        Trip {
            scope: "cluster".into(),
            drained: 1,
            total: 2,
            limit: 1,
        }
    );
    assert!(trip.to_string().contains("1 of 2 nodes"), "{trip}");
    // the node's own drain does not count against itself
    assert_eq!(judge(&nodes, "node1", &d), Ok(()));
}

#[test]
fn admin_drains_do_not_count_and_old_sgpu_drains_do() {
    let d = BreakerConfig::default();
    let nodes = vec![
        node(
            "n1",
            &["gpu"],
            "IDLE+DRAIN",
            Some("bad dimm"),
            Some(NOW - 5),
        ),
        node("n2", &["gpu"], "DOWN", Some("psu"), Some(NOW - 5)),
        node("n3", &["gpu"], "IDLE", None, None),
    ];
    assert_eq!(judge(&nodes, "n3", &d), Ok(()));
    // an sgpu drain a week old still counts: a slow storm is capped like a fast one
    for t in [Some(NOW - 7 * 86400), None] {
        let nodes = vec![
            node(
                "n1",
                &["gpu"],
                "DOWN+DRAIN",
                Some("sgpu: gpu.lost gpu0: x"),
                t,
            ),
            node("n3", &["gpu"], "IDLE", None, None),
        ];
        assert!(judge(&nodes, "n3", &d).is_err());
    }
}

/// `count` nodes n01.. of one partition, the first `drained` of them drained by sgpu at
/// the given times.
fn storm(count: usize, drained: &[(usize, i64)]) -> Vec<NodeInfo> {
    (1..=count)
        .map(|i| {
            let name = format!("n{i:02}");
            match drained.iter().find(|(n, _)| *n == i) {
                Some((_, t)) => node(&name, &["gpu"], "IDLE+DRAIN", Some("sgpu: gpu.x"), Some(*t)),
                None => node(&name, &["gpu"], "IDLE", None, None),
            }
        })
        .collect()
}

#[test]
fn recount_keeps_the_first_in_time_then_name_order() {
    // a dozen nodes drained in the same second, limit 3: n01, n02, n03 stay
    let d = cfg(0.25, 1);
    let all: Vec<(usize, i64)> = (1..=12).map(|i| (i, NOW)).collect();
    let nodes = storm(12, &all);
    let kept: Vec<String> = (1..=12)
        .map(|i| format!("n{i:02}"))
        .filter(|n| keep_after_recount(&nodes, n, &d).is_ok())
        .collect();
    assert_eq!(kept, ["n01", "n02", "n03"]);
    let trip = keep_after_recount(&nodes, "n04", &d).unwrap_err();
    assert_eq!((trip.drained, trip.total, trip.limit), (3, 12, 3));
    // the last in line counts only those that stay
    let trip = keep_after_recount(&nodes, "n12", &d).unwrap_err();
    assert_eq!(trip.drained, 3);
    // an earlier second wins over a name: n12 drained first stays, n03 goes
    let mut times = all.clone();
    times[11].1 = NOW - 1;
    let nodes = storm(12, &times);
    assert!(keep_after_recount(&nodes, "n12", &d).is_ok());
    assert!(keep_after_recount(&nodes, "n02", &d).is_ok());
    assert!(keep_after_recount(&nodes, "n03", &d).is_err());
    // a node that is no longer drained keeps nothing and trips nothing
    let nodes = storm(12, &[(1, NOW)]);
    assert!(keep_after_recount(&nodes, "n05", &d).is_ok());
}

#[test]
fn a_drain_slurmctld_restamped_stays_ahead_of_newcomers() {
    // limit 1: n1 drained by sgpu long ago, then slurmd stopped answering; slurmctld
    // (23.02+) appended "Not responding" and stamped the reason with a later second
    // than n2's drain. n1 is still first in line and n2 gives its drain back.
    let d = cfg(0.0, 1);
    let line = |name: &str, reason: &str, t: &str| {
        crate::slurmctl::parse_node_info(&format!(
            "NodeName={name} State=DOWN+DRAIN+NOT_RESPONDING Partitions=gpu \
             Reason={reason} [root@{t}]"
        ))
        .unwrap()
    };
    let nodes = vec![
        line(
            "n1",
            "sgpu: gpu.xid gpu0: xid 79 : Not responding",
            "2026-12-04T00:39:09",
        ),
        line("n2", "sgpu: gpu.xid gpu0: xid 79", "2026-12-04T00:39:08"),
    ];
    assert_eq!(nodes[0].reason_time, None);
    assert!(keep_after_recount(&nodes, "n1", &d).is_ok());
    assert!(keep_after_recount(&nodes, "n2", &d).is_err());
}

#[test]
fn every_order_of_views_ends_within_the_limit() {
    // whatever order the nodes recount in, a node that saw itself within the limit is
    // never passed by a later one: later drains are stamped later (settle rule)
    let d = cfg(0.25, 1);
    let mut kept = Vec::new();
    let mut drained: Vec<(usize, i64)> = Vec::new();
    for i in 1..=12usize {
        // node i drains at NOW + i / 4 (four per second), recounts after its second
        drained.push((i, NOW + (i as i64) / 4));
    }
    for i in 1..=12usize {
        let t = NOW + (i as i64) / 4;
        let visible: Vec<(usize, i64)> = drained.iter().copied().filter(|(_, s)| *s <= t).collect();
        let nodes = storm(12, &visible);
        if keep_after_recount(&nodes, &format!("n{i:02}"), &d).is_ok() {
            kept.push(i);
        }
    }
    assert_eq!(kept, [1, 2, 3]);
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
    let trip = judge(&nodes, "a1", &d).unwrap_err();
    assert_eq!(
        (trip.scope.as_str(), trip.drained, trip.total, trip.limit),
        ("partition a", 1, 3, 1)
    );
    // a node of partition b may still be drained: cluster 1 + 1 <= 2, partition b 0 + 1 <= 1
    assert_eq!(judge(&nodes, "b3", &d), Ok(()));
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
    assert_eq!(judge(&nodes, "n5", &d), Ok(()));
    nodes[1] = node(
        "n1",
        &["gpu"],
        "IDLE+DRAIN",
        Some("sgpu: b"),
        Some(NOW - 10),
    );
    let trip = judge(&nodes, "n5", &d).unwrap_err();
    assert_eq!(
        (trip.scope.as_str(), trip.drained, trip.limit),
        ("cluster", 2, 2)
    );
}

#[test]
fn scope_counts_for_the_admin() {
    let d = cfg(0.25, 1);
    let mut nodes = storm(12, &[(1, NOW), (2, NOW), (3, NOW)]);
    nodes.push(node("x1", &["other"], "IDLE", None, None));
    let c = scope_counts(&nodes, &d);
    assert_eq!(c.len(), 3);
    assert_eq!(
        (c[0].held, c[0].total, c[0].limit, c[0].open()),
        (3, 13, 3, true)
    );
    assert_eq!(c[1].scope, "partition gpu");
    assert_eq!((c[1].held, c[1].total, c[1].open()), (3, 12, true));
    assert_eq!((c[2].held, c[2].limit, c[2].open()), (0, 1, false));
}

#[test]
fn unknown_node_is_judged_on_the_cluster_alone() {
    let d = BreakerConfig::default();
    let nodes = vec![node("n1", &["gpu"], "IDLE", None, None)];
    assert_eq!(judge(&nodes, "elsewhere", &d), Ok(()));
    assert_eq!(judge(&[], "elsewhere", &d), Ok(()));
}
