//! The node-scoped reads (`SlurmConf::read_for_node`, `GresConf::read_for_node`) against the
//! full reads: on generated slurm.conf and gres.conf files (overlapping node lines, zero
//! padding, NodeSets, partitions naming unknown nodes, NodeAddr lists, per-node AutoDetect,
//! invalid host lists), every answer about a node and every error (file and line) are the
//! same. The seed is fixed so every run checks the same cases.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

use sgpu_slurm_conf::{ConfFile, GresConf, SlurmConf};

fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x14e0_5c0f),
        failure_persistence: None,
        ..Config::default()
    }
}

/// A node host list: a few forms that overlap, pad differently or are invalid.
fn names() -> impl Strategy<Value = String> {
    let prefix = prop::sample::select(vec!["gpu", "gpu0", "n", "n1", "cpu"]);
    let range = (0u64..30, 0u64..12, 0usize..3)
        .prop_map(|(lo, span, zeros)| format!("{}{lo}-{}", "0".repeat(zeros), lo + span));
    prop_oneof![
        6 => (prefix.clone(), prop::collection::vec(range, 1..3))
            .prop_map(|(p, r)| format!("{p}[{}]", r.join(","))),
        2 => (prefix.clone(), 0u64..40).prop_map(|(p, n)| format!("{p}{n}")),
        1 => (prefix.clone(), 1u64..4, 1u64..4)
            .prop_map(|(p, a, b)| format!("{p}[1-{a}]-x[1-{b}]")),
        1 => prop::sample::select(vec!["gpu[3-1]", "n[1-2", "gpu[0-9]-ib", "login"])
            .prop_map(String::from),
    ]
}

/// One slurm.conf line.
fn slurm_line() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (names(), 0u32..4, prop::option::of(prop::sample::select(vec!["a", "b"])),
              prop::option::of(names()), prop::option::of(prop::sample::select(vec!["6818", "x", "[6818-6819]"])))
            .prop_map(|(n, g, f, addr, port)| {
                let mut l = format!("NodeName={n} CPUs=8 Gres=gpu:{g}");
                if let Some(f) = f { l.push_str(&format!(" Feature={f}")); }
                if let Some(a) = addr { l.push_str(&format!(" NodeAddr={a}")); }
                if let Some(p) = port { l.push_str(&format!(" Port={p}")); }
                l
            }),
        2 => (prop::sample::select(vec!["p1", "p2", "p1"]),
              prop_oneof![Just("ALL".to_string()), names(), Just("set1".to_string()), Just("set1,gpu[1-2]".to_string())])
            .prop_map(|(p, n)| format!("PartitionName={p} Nodes={n} Default=YES")),
        1 => prop_oneof![names().prop_map(|n| format!("Nodes={n}")), Just("Feature=a".to_string())]
            .prop_map(|x| format!("NodeSet=set1 {x}")),
        1 => Just("NodeName=DEFAULT RealMemory=1000".to_string()),
        1 => Just("ClusterName=Big".to_string()),
    ]
}

fn gres_line() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (names(), 0u32..3, prop::option::of(prop::sample::select(vec!["nvml", "off"])))
            .prop_map(|(n, last, ad)| {
                let mut l = format!("NodeName={n} Name=gpu File=/dev/nvidia[0-{last}]");
                if let Some(a) = ad { l.push_str(&format!(" AutoDetect={a}")); }
                l
            }),
        1 => (names(), prop::sample::select(vec!["nvml", "off"]))
            .prop_map(|(n, a)| format!("NodeName={n} AutoDetect={a}")),
        1 => Just("Name=gpu Type=x File=/dev/nvidia7".to_string()),
        1 => Just("AutoDetect=nvml".to_string()),
    ]
}

/// Errors as printed (file, line and message).
fn texts(errors: &[sgpu_slurm_conf::ConfError]) -> Vec<String> {
    errors.iter().map(ToString::to_string).collect()
}

/// Nodes to ask about: the names the node lines define, and some others.
fn probes(slurm: &SlurmConf) -> Vec<String> {
    let mut v: Vec<String> = slurm
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .take(40)
        .collect();
    v.extend(
        [
            "gpu1", "gpu01", "gpu001", "n1", "n11", "n01", "cpu3", "login", "set1", "gpu1-x1",
        ]
        .map(String::from),
    );
    v
}

fn check(slurm_text: &str, gres_text: &str) -> Result<(), TestCaseError> {
    let dir = "/nonexistent-sgpu-for-node";
    let slurm_path = format!("{dir}/slurm.conf");
    let gres_path = format!("{dir}/gres.conf");
    let (full, full_errors) = SlurmConf::parse_str_lenient(slurm_text, &slurm_path);
    let (full_gres, full_gres_errors) = GresConf::parse_str_lenient(gres_text, &gres_path);
    for node in probes(&full) {
        let (scoped, errors) =
            SlurmConf::parse_str_lenient_for_node(slurm_text, &slurm_path, &node);
        prop_assert_eq!(
            texts(&errors),
            texts(&full_errors),
            "slurm.conf errors for {}",
            node
        );
        prop_assert_eq!(scoped.node(&node), full.node(&node), "node {}", node);
        let parts = |c: &SlurmConf| -> Vec<String> {
            c.partitions_of(&node)
                .iter()
                .map(|p| p.name.clone())
                .collect()
        };
        prop_assert_eq!(parts(&scoped), parts(&full), "partitions of {}", node);
        prop_assert_eq!(scoped.cluster(), full.cluster());
        prop_assert_eq!(&scoped.gres_types, &full.gres_types);
        let (gres, gerrors) = GresConf::parse_str_lenient_for_node(gres_text, &gres_path, &node);
        prop_assert_eq!(
            texts(&gerrors),
            texts(&full_gres_errors),
            "gres.conf errors for {}",
            node
        );
        let strip = |c: &GresConf| -> Vec<(String, Vec<std::path::PathBuf>, usize)> {
            c.records_for(&node)
                .map(|r| (r.name.clone(), r.files.clone(), r.at.line))
                .collect()
        };
        prop_assert_eq!(strip(&gres), strip(&full_gres), "gres records of {}", node);
        prop_assert_eq!(gres.autodetect_for(&node), full_gres.autodetect_for(&node));
        prop_assert_eq!(
            gres.expected_gpus(&node, Some(&scoped)),
            full_gres.expected_gpus(&node, Some(&full)),
            "expected GPUs of {}",
            node
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(600))]

    #[test]
    fn scoped_reads_agree_with_full_reads(
        slurm in prop::collection::vec(slurm_line(), 1..8),
        gres in prop::collection::vec(gres_line(), 0..5),
    ) {
        let slurm_text = format!("GresTypes=gpu\n{}\n", slurm.join("\n"));
        check(&slurm_text, &gres.join("\n"))?;
    }
}

/// A 4,000-node cluster: the scoped read keeps one node (it did not fall back to the full
/// read) and answers as the full read does.
#[test]
fn a_large_cluster_is_read_for_one_node() {
    let slurm = "ClusterName=big\nGresTypes=gpu\n\
        NodeName=gpu[0001-3000] CPUs=64 Gres=gpu:8 NodeAddr=10.1.[0-11].[1-250]\n\
        NodeName=gpu[3001-4000]-ib CPUs=64 Gres=gpu:4 Feature=ib\n\
        NodeName=login[1-2]\n\
        NodeSet=ibnodes Feature=ib\n\
        PartitionName=all Nodes=ALL Default=YES\n\
        PartitionName=gpu Nodes=gpu[0001-3000],ibnodes\n\
        PartitionName=part Nodes=gpu[0001-2000]\n";
    let gres = "AutoDetect=nvml\nNodeName=gpu[0001-3000] Name=gpu File=/dev/nvidia[0-7]\n\
        NodeName=gpu[3001-4000]-ib Name=gpu File=/dev/nvidia[0-3]\n\
        NodeName=login[1-2] AutoDetect=off\n";
    let (full, errors) = SlurmConf::parse_str_lenient(slurm, "/x/slurm.conf");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(full.nodes.len(), 4002);
    for node in [
        "gpu0001",
        "gpu2500",
        "gpu3000",
        "gpu3001-ib",
        "login2",
        "gpu1",
        "gpu4000",
    ] {
        let (scoped, e) = SlurmConf::parse_str_lenient_for_node(slurm, "/x/slurm.conf", node);
        assert!(e.is_empty());
        assert!(
            scoped.nodes.len() <= 1,
            "{node}: {} nodes kept",
            scoped.nodes.len()
        );
        assert_eq!(scoped.node(node), full.node(node), "{node}");
        let parts = |c: &SlurmConf| -> Vec<String> {
            c.partitions_of(node)
                .iter()
                .map(|p| p.name.clone())
                .collect()
        };
        assert_eq!(parts(&scoped), parts(&full), "{node}");
        let (g, _) = GresConf::parse_str_lenient_for_node(gres, "/x/gres.conf", node);
        let (fg, _) = GresConf::parse_str_lenient(gres, "/x/gres.conf");
        assert_eq!(
            g.expected_gpus(node, Some(&scoped)),
            fg.expected_gpus(node, Some(&full)),
            "{node}"
        );
        assert!(scoped_gres(&g), "{node}: gres.conf read in full");
    }
    let (scoped, _) = SlurmConf::parse_str_lenient_for_node(slurm, "/x/slurm.conf", "gpu2751");
    let addr = scoped.node("gpu2751").map(|n| n.addr.clone());
    assert_eq!(addr, Some("10.1.11.1".to_string()));
    assert_eq!(
        addr.as_deref(),
        full.node("gpu2751").map(|n| n.addr.as_str())
    );
    // an unknown partition name makes the scoped read fall back, with the full read's error
    let bad = format!("{slurm}PartitionName=bad Nodes=gpu[3999-4001]\n");
    let (_, full_errors) = SlurmConf::parse_str_lenient(&bad, "/x/slurm.conf");
    let (_, errs) = SlurmConf::parse_str_lenient_for_node(&bad, "/x/slurm.conf", "gpu0001");
    assert_eq!(texts(&errs), texts(&full_errors));
    assert_eq!(errs.len(), 1);
}

/// Whether a gres.conf read kept at most one node per line (it was not read in full).
fn scoped_gres(g: &GresConf) -> bool {
    g.records
        .iter()
        .all(|r| r.nodes.as_ref().is_none_or(|n| n.len() <= 1))
        && g.node_autodetect.iter().all(|a| a.nodes.len() <= 1)
}

#[test]
fn autodetect_lines_of_one_value_over_the_same_nodes_are_read_for_one_node() {
    // a common layout: the same AutoDetect on each line of a range, another value elsewhere
    let gres = "NodeName=gpu[001-100] AutoDetect=nvml Name=gpu File=/dev/nvidia[0-3]\n\
        NodeName=gpu[001-100] AutoDetect=nvml Name=gpu File=/dev/nvidia[4-7]\n\
        NodeName=cpu[1-10] AutoDetect=off\n";
    let (full, full_errors) = GresConf::parse_str_lenient(gres, "/x/gres.conf");
    for node in ["gpu001", "gpu050", "cpu3", "gpu101"] {
        let (g, errors) = GresConf::parse_str_lenient_for_node(gres, "/x/gres.conf", node);
        assert_eq!(texts(&errors), texts(&full_errors), "{node}");
        assert!(scoped_gres(&g), "{node}: gres.conf read in full");
        assert_eq!(g.autodetect_for(node), full.autodetect_for(node), "{node}");
        assert_eq!(
            g.records_for(node).count(),
            full.records_for(node).count(),
            "{node}"
        );
    }
    // lines of different values over one node still fall back, with the full read's error
    let clash = format!("{gres}NodeName=gpu050 AutoDetect=off\n");
    let (_, full_errors) = GresConf::parse_str_lenient(&clash, "/x/gres.conf");
    let (g, errors) = GresConf::parse_str_lenient_for_node(&clash, "/x/gres.conf", "gpu001");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(texts(&errors), texts(&full_errors));
    assert!(!scoped_gres(&g));
}
