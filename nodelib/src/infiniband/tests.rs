use super::*;
use crate::checks::Verdict;

/// One port of a fixture tree: device, port, `state`, `phys_state`, `rate` (None: no file),
/// `link_layer`, error counters.
struct Fixture {
    device: &'static str,
    port: u32,
    state: &'static str,
    phys_state: &'static str,
    rate: Option<&'static str>,
    link_layer: &'static str,
    counters: &'static [(&'static str, u64)],
}

const ZERO: &[(&str, u64)] = &[
    ("symbol_error", 0),
    ("link_downed", 0),
    ("link_error_recovery", 0),
    ("port_rcv_errors", 0),
];

/// A healthy HDR port: `ibstat` of a ConnectX-6 (`mlx5_7`, State: Active, Physical state:
/// LinkUp, Rate: 200, Link layer: InfiniBand) in leptonai/gpud pull request #752, written as
/// the kernel's sysfs files show those values.
const HDR_ACTIVE: Fixture = Fixture {
    device: "mlx5_7",
    port: 1,
    state: "4: ACTIVE",
    phys_state: "5: LinkUp",
    rate: Some("200 Gb/sec (4X HDR)"),
    link_layer: "InfiniBand",
    counters: ZERO,
};

/// A dual-port QDR HCA, both ports active: prometheus/procfs `sysfs/class_infiniband_test.go`
/// (`mlx4_0`, MT4099, ports 1 and 2 ACTIVE/LinkUp at 40 Gb/s, error counters 0).
const QDR_PORT1: Fixture = Fixture {
    device: "mlx4_0",
    port: 1,
    state: "4: ACTIVE",
    phys_state: "5: LinkUp",
    rate: Some("40 Gb/sec (4X QDR)"),
    link_layer: "InfiniBand",
    counters: ZERO,
};
const QDR_PORT2: Fixture = Fixture {
    port: 2,
    ..QDR_PORT1
};

/// A port down, polling for a peer: `ibstat` of a ConnectX-7 (`mlx5_10`, MT4129, State: Down,
/// Physical state: Polling, Rate: 10, Link layer: InfiniBand) in leptonai/gpud pull request
/// #482.
const CX7_POLLING: Fixture = Fixture {
    device: "mlx5_10",
    port: 1,
    state: "1: DOWN",
    phys_state: "2: Polling",
    rate: Some("10 Gb/sec (4X SDR)"),
    link_layer: "InfiniBand",
    counters: ZERO,
};

/// A port physically up but logically down (no subnet manager answered): `ibstat` of
/// `mlx5_7` (MT4124, State: Down, Physical state: LinkUp, Rate: 200) in
/// Mellanox/network-operator issue #249.
const DOWN_LINKUP: Fixture = Fixture {
    device: "mlx5_7",
    port: 1,
    state: "1: DOWN",
    phys_state: "5: LinkUp",
    rate: Some("200 Gb/sec (4X HDR)"),
    link_layer: "InfiniBand",
    counters: ZERO,
};

/// A disabled port: `ibstat` of `mlx5_8` (MT4125, State: Down, Physical state: Disabled) in
/// leptonai/gpud pull request #99 (no rate shown there: no `rate` file here).
const DISABLED: Fixture = Fixture {
    device: "mlx5_8",
    port: 1,
    state: "1: DOWN",
    phys_state: "3: Disabled",
    rate: None,
    link_layer: "InfiniBand",
    counters: ZERO,
};

/// RoCE: `ibstat` of a node with two ConnectX-7 ports on Ethernet (`mlx5_0`, `mlx5_1`,
/// MT4129, State: Active, Physical state: LinkUp, Rate: 200, Link layer: Ethernet) and a
/// disabled ConnectX-6 port (`mlx5_10`, MT4125, Down/Disabled), in kvcache-ai/Mooncake issue
/// #1999; the rate as the kernel writes 200 Gb/s for such a port.
const ROCE_0: Fixture = Fixture {
    device: "mlx5_0",
    port: 1,
    state: "4: ACTIVE",
    phys_state: "5: LinkUp",
    rate: Some("200 Gb/sec (4X HDR)"),
    link_layer: "Ethernet",
    counters: ZERO,
};
const ROCE_1: Fixture = Fixture {
    device: "mlx5_1",
    ..ROCE_0
};
const ROCE_DISABLED: Fixture = Fixture {
    device: "mlx5_10",
    ..DISABLED
};

fn write_tree(root: &Path, ports: &[&Fixture]) {
    let _ = std::fs::remove_dir_all(root);
    for f in ports {
        let dir = root.join(f.device).join("ports").join(f.port.to_string());
        std::fs::create_dir_all(dir.join("counters")).unwrap();
        std::fs::write(dir.join("state"), format!("{}\n", f.state)).unwrap();
        std::fs::write(dir.join("phys_state"), format!("{}\n", f.phys_state)).unwrap();
        if let Some(r) = f.rate {
            std::fs::write(dir.join("rate"), format!("{r}\n")).unwrap();
        }
        std::fs::write(dir.join("link_layer"), format!("{}\n", f.link_layer)).unwrap();
        for (name, v) in f.counters {
            std::fs::write(dir.join("counters").join(name), format!("{v}\n")).unwrap();
        }
    }
}

struct Node {
    dir: tempfile::TempDir,
    settings: IbSettings,
}

impl Node {
    fn new(ports: &[&Fixture]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let settings = IbSettings {
            sysfs_root: dir.path().join("sys/class/infiniband"),
            ..IbSettings::default()
        };
        write_tree(&settings.sysfs_root, ports);
        Node { dir, settings }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn set(&self, ports: &[&Fixture]) {
        write_tree(&self.settings.sysfs_root, ports);
    }

    fn run(&self, profile: Profile, save: bool, now: f64) -> IbRun {
        evaluate(
            &self.settings,
            profile,
            &Catalogue::default(),
            &self.state_dir(),
            save,
            now,
        )
    }
}

fn failing(run: &IbRun) -> Vec<String> {
    run.results
        .iter()
        .filter(|r| r.status == Status::Fail)
        .map(|r| format!("{} {}: {}", r.severity, r.check, r.message))
        .collect()
}

#[test]
fn rates_parse_as_the_kernel_writes_them() {
    assert_eq!(parse_rate("200 Gb/sec (4X HDR)"), Some(200.0));
    assert_eq!(parse_rate("2.5 Gb/sec (1X SDR)"), Some(2.5));
    assert_eq!(parse_rate("40 Gb/sec (4X QDR)\n"), Some(40.0));
    assert_eq!(parse_rate("400 Gb/sec (4X NDR)"), Some(400.0));
    assert_eq!(parse_rate(""), None);
    assert_eq!(parse_rate("fast"), None);
    assert_eq!(parse_rate("-1 Gb/sec"), None);
}

#[test]
fn a_tree_reads_as_ports() {
    let node = Node::new(&[&QDR_PORT2, &HDR_ACTIVE, &QDR_PORT1, &CX7_POLLING]);
    let ports = read_ports(&node.settings.sysfs_root).unwrap();
    let names: Vec<String> = ports.iter().map(Port::name).collect();
    assert_eq!(names, ["mlx4_0/1", "mlx4_0/2", "mlx5_10/1", "mlx5_7/1"]);
    let hdr = &ports[3];
    assert_eq!(
        (hdr.state.as_str(), hdr.phys_state.as_str()),
        ("ACTIVE", "LinkUp")
    );
    assert_eq!(hdr.rate_gbps, Some(200.0));
    assert_eq!(hdr.link_layer, "InfiniBand");
    assert_eq!(hdr.counters.len(), 4);
    assert!(hdr.is_up());
    assert!(!ports[2].is_up(), "DOWN/Polling");
    // no RDMA device at all: nothing, not an error
    assert!(
        read_ports(&node.dir.path().join("none"))
            .unwrap()
            .is_empty()
    );
    // a counter that is not a number is an error naming the file
    let bad = node
        .settings
        .sysfs_root
        .join("mlx5_7/ports/1/counters/symbol_error");
    std::fs::write(&bad, "lots\n").unwrap();
    let e = read_ports(&node.settings.sysfs_root)
        .unwrap_err()
        .to_string();
    assert!(e.contains("symbol_error") && e.contains("lots"), "{e}");
}

#[test]
fn healthy_trees_pass_and_record_the_baseline() {
    for tree in [vec![&HDR_ACTIVE], vec![&QDR_PORT1, &QDR_PORT2]] {
        let node = Node::new(&tree);
        let run = node.run(Profile::Quick, true, 1000.0);
        assert!(failing(&run).is_empty(), "{:?}", run.results);
        assert_eq!(run.results.len(), tree.len(), "one ib.port result per port");
        assert!(run.notes.is_empty(), "{:?}", run.notes);
        let b = Baseline::load(&node.state_dir()).unwrap().unwrap();
        assert_eq!(b.ports.len(), tree.len());
        assert_eq!(b.recorded_at, 1000.0);
    }
}

#[test]
fn a_port_that_goes_down_drains_naming_the_port() {
    // healthy first: the baseline records mlx5_7/1 at 200 Gb/s
    let node = Node::new(&[&HDR_ACTIVE, &DISABLED]);
    let run = node.run(Profile::Quick, true, 1000.0);
    assert!(failing(&run).is_empty(), "{:?}", run.results);
    let b = Baseline::load(&node.state_dir()).unwrap().unwrap();
    assert_eq!(
        b.ports.keys().collect::<Vec<_>>(),
        ["mlx5_7/1"],
        "the disabled port is not expected"
    );

    // the same port, logically down with the link up (network-operator #249)
    node.set(&[&DOWN_LINKUP, &DISABLED]);
    let run = node.run(Profile::Quick, true, 1030.0);
    let r = run
        .results
        .iter()
        .find(|r| r.status == Status::Fail)
        .unwrap();
    assert_eq!(
        r.drain_reason(),
        "sgpu: ib.port: mlx5_7/1 DOWN (LinkUp), expected ACTIVE (LinkUp)"
    );
    assert!(r.drains());
    assert_eq!(Verdict::of(&run.results), Verdict::Drain);

    // and gone altogether
    node.set(&[&DISABLED]);
    let run = node.run(Profile::Full, true, 1060.0);
    assert_eq!(failing(&run), ["drain ib.port: mlx5_7/1 missing"]);

    // a slower link than the baseline's (the same HCA at EDR)
    let edr = Fixture {
        rate: Some("100 Gb/sec (4X EDR)"),
        ..HDR_ACTIVE
    };
    node.set(&[&edr]);
    let run = node.run(Profile::Quick, true, 1090.0);
    assert_eq!(
        failing(&run),
        ["drain ib.port: mlx5_7/1 at 100 Gb/s, expected 200 Gb/s (baseline)"]
    );
    // deleting the file resets the baseline: the next run records the port at 100
    std::fs::remove_file(node.state_dir().join(BASELINE_FILE)).unwrap();
    let run = node.run(Profile::Quick, true, 1120.0);
    assert!(failing(&run).is_empty(), "{:?}", run.results);
}

#[test]
fn configured_ports_and_rate_are_judged_without_a_baseline() {
    // ports from sgpu.toml: one polling (gpud #482), one expected but absent
    let mut node = Node::new(&[&CX7_POLLING, &HDR_ACTIVE]);
    node.settings.ports = vec!["mlx5_10/1".into(), "mlx5_0/1".into(), "mlx5_7/1".into()];
    node.settings.rate_gbps = Some(400.0);
    let run = node.run(Profile::Quick, false, 1000.0);
    assert_eq!(
        failing(&run),
        [
            "drain ib.port: mlx5_10/1 DOWN (Polling), expected ACTIVE (LinkUp)",
            "drain ib.port: mlx5_0/1 missing",
            "drain ib.port: mlx5_7/1 at 200 Gb/s, expected 400 Gb/s (sgpu.toml)",
        ]
    );
    assert!(
        !node.state_dir().exists(),
        "sgpu check (save = false) writes nothing"
    );
}

#[test]
fn nothing_expected_is_not_judged() {
    // a node with a down port and no baseline: unknown, never a drain
    let node = Node::new(&[&CX7_POLLING]);
    let run = node.run(Profile::Full, true, 1000.0);
    assert!(failing(&run).is_empty());
    assert_eq!(run.results.len(), 1);
    assert_eq!(run.results[0].status, Status::Unknown);
    assert_eq!(Baseline::load(&node.state_dir()).unwrap(), None);
    // no RDMA devices at all: no result
    let none = Node::new(&[]);
    assert!(none.run(Profile::Full, true, 1000.0).results.is_empty());
    // ib.port switched off
    let mut o = BTreeMap::new();
    o.insert(
        cat::IB_PORT.to_string(),
        crate::catalogue::CheckOverride {
            enabled: Some(false),
            ..Default::default()
        },
    );
    let off = evaluate(
        &node.settings,
        Profile::Quick,
        &Catalogue::effective(&o),
        &node.state_dir(),
        true,
        1.0,
    );
    assert!(off.results.is_empty());
}

fn counting(symbol: u64, downed: u64) -> Fixture {
    let counters: &'static [(&'static str, u64)] = Box::leak(Box::new([
        ("symbol_error", symbol),
        ("link_downed", downed),
        ("link_error_recovery", 0),
        ("port_rcv_errors", 0),
    ]));
    Fixture {
        counters,
        ..HDR_ACTIVE
    }
}

#[test]
fn rising_error_counters_warn_then_drain() {
    let node = Node::new(&[&counting(0, 0)]);
    // the first full run has no reference: unknown
    let run = node.run(Profile::Full, true, 0.0);
    let errs: Vec<_> = run
        .results
        .iter()
        .filter(|r| r.check == cat::IB_ERRORS)
        .collect();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].status, Status::Unknown);
    // ten minutes later one flap: 1 per hour (counted over at least an hour), a warning
    node.set(&[&counting(0, 1)]);
    let run = node.run(Profile::Full, true, 600.0);
    assert_eq!(
        failing(&run),
        ["warn ib.errors: mlx5_7/1 link_downed rising: 1.0/h (count 1)"]
    );
    assert_eq!(Verdict::of(&run.results), Verdict::Warn);
    // symbol errors past the drain rate (10/h by default)
    node.set(&[&counting(40, 1)]);
    let run = node.run(Profile::Full, true, 1200.0);
    let r = run
        .results
        .iter()
        .find(|r| r.check == cat::IB_ERRORS)
        .unwrap();
    assert!(r.drains(), "{r:?}");
    assert_eq!(
        r.drain_reason(),
        "sgpu: ib.errors: mlx5_7/1 symbol_error rising: 40.0/h (count 40)"
    );
    // a counter reset (driver reload) restarts the reference: no rate, no failure
    node.set(&[&counting(0, 0)]);
    let run = node.run(Profile::Full, true, 1300.0);
    assert!(failing(&run).is_empty(), "{:?}", run.results);
    // the quick profile (the prolog) does not judge counters
    node.set(&[&counting(500, 9)]);
    let run = node.run(Profile::Quick, true, 1400.0);
    assert!(run.results.iter().all(|r| r.check == cat::IB_PORT));
}

#[test]
fn counter_references_age_out_after_an_hour() {
    let mut k = Counters::default();
    let port = |v: u64| {
        let mut p = read_ports_fixture();
        p.counters.insert("symbol_error".into(), v);
        p
    };
    assert!(k.observe(&[port(5)], 0.0), "first reading");
    assert!(
        !k.observe(&[port(9)], 1800.0),
        "reference kept: nothing to write"
    );
    let r = k.ports["mlx5_7/1"]["symbol_error"];
    assert_eq!((r.value, r.at), (5, 0.0), "kept within the window");
    assert_eq!(r.per_hour(9, 1800.0), Some(4.0));
    assert_eq!(r.per_hour(3, 1800.0), None, "went down");
    k.observe(&[port(12)], RATE_WINDOW_S + 1.0);
    assert_eq!(
        k.ports["mlx5_7/1"]["symbol_error"].value, 12,
        "replaced once old"
    );
}

fn read_ports_fixture() -> Port {
    let node = Node::new(&[&HDR_ACTIVE]);
    read_ports(&node.settings.sysfs_root).unwrap().remove(0)
}

#[test]
fn port_names_are_checked() {
    assert!(valid_port_name("mlx5_0/1"));
    assert!(valid_port_name("hfi1_0/1"));
    for bad in ["mlx5_0", "mlx5_0/", "/1", "mlx5_0/x", "../x/1", "a b/1"] {
        assert!(!valid_port_name(bad), "{bad}");
    }
}

#[test]
fn roce_ports_are_judged_as_infiniband_ports() {
    let node = Node::new(&[&ROCE_0, &ROCE_1, &ROCE_DISABLED]);
    let ports = read_ports(&node.settings.sysfs_root).unwrap();
    assert_eq!(ports[0].link_layer, "Ethernet");
    let run = node.run(Profile::Full, true, 1000.0);
    assert!(failing(&run).is_empty(), "{:?}", run.results);
    let b = Baseline::load(&node.state_dir()).unwrap().unwrap();
    assert_eq!(
        b.ports.keys().collect::<Vec<_>>(),
        ["mlx5_0/1", "mlx5_1/1"],
        "the disabled port is never expected"
    );
    let down = Fixture {
        state: "1: DOWN",
        phys_state: "3: Disabled",
        ..ROCE_1
    };
    node.set(&[&ROCE_0, &down, &ROCE_DISABLED]);
    let run = node.run(Profile::Quick, true, 1030.0);
    assert_eq!(
        failing(&run),
        ["drain ib.port: mlx5_1/1 DOWN (Disabled), expected ACTIVE (LinkUp)"]
    );
}

#[test]
fn a_port_without_a_readable_rate_is_judged_by_its_state_alone() {
    // a port up whose rate file is missing: recorded with rate 0, never failed for its rate
    let no_rate = Fixture {
        rate: None,
        ..HDR_ACTIVE
    };
    let node = Node::new(&[&no_rate]);
    for now in [1000.0, 1030.0] {
        let run = node.run(Profile::Quick, true, now);
        assert!(failing(&run).is_empty(), "{:?}", run.results);
    }
    let b = Baseline::load(&node.state_dir()).unwrap().unwrap();
    assert_eq!(b.ports["mlx5_7/1"].rate_gbps, 0.0);
    // its rate shows up later: the baseline takes it, and a slower rate then fails
    node.set(&[&HDR_ACTIVE]);
    assert!(failing(&node.run(Profile::Quick, true, 1060.0)).is_empty());
    let edr = Fixture {
        rate: Some("100 Gb/sec (4X EDR)"),
        ..HDR_ACTIVE
    };
    node.set(&[&edr]);
    assert_eq!(failing(&node.run(Profile::Quick, true, 1090.0)).len(), 1);
}
