//! sgpu on a cluster of realistic size: 12 real slurmd (2 simulated GPUs each, a healthd on
//! every one) and 1,000 ghost nodes that slurm.conf defines but no slurmd runs
//! (`SGPU_CLUSTER_GHOSTS`, State=DOWN, so `scontrol show node -o` lists all 1,012: ~570 KB,
//! nine times what a pipe holds).
//!
//! The cluster is its own (`/tmp/sgpu-cluster-big`, slurmctld on port 17117, slurmd on
//! 17118..17129, healthd status on 18118..18129), apart from the default two-node one.
//! It is stopped again at the end. Before sgpu read its children's output while they ran, healthd could not list the nodes
//! ("scontrol show node -o did not finish within 10s") and drained nothing here.

use std::path::Path;
use std::time::{Duration, Instant};

use sgpu_tests::sgpu::{self, HEALTHD_INTERVAL_S, node_files};
use sgpu_tests::{Cluster, Record, node_state, poll};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Where the large cluster lives.
const DIR: &str = "/tmp/sgpu-cluster-big";
/// Real nodes (slurmd + healthd each).
const NODES: usize = 12;
/// Ghost nodes (listed, not running).
const GHOSTS: usize = 1000;

fn big_cluster() -> Result<Cluster, Box<dyn std::error::Error>> {
    let nodes = NODES.to_string();
    let ghosts = GHOSTS.to_string();
    Ok(Cluster::up_in(
        Path::new(DIR),
        &[
            ("SGPU_CLUSTER_PORT", "17117"),
            ("SGPU_CLUSTER_NODES", &nodes),
            ("SGPU_CLUSTER_GPUS", "2"),
            ("SGPU_CLUSTER_GHOSTS", &ghosts),
        ],
    )?)
}

/// Stops the large cluster when dropped (its 12 slurmd and healthd would otherwise share the
/// CPUs with every later test); a munged someone else relies on is left running.
struct StopWhenDone;

impl Drop for StopWhenDone {
    fn drop(&mut self) {
        let _ =
            std::process::Command::new(sgpu_tests::cluster::repo_root().join("tests/cluster/down"))
                .arg("--keep-munge")
                .env("SGPU_CLUSTER_DIR", DIR)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
    }
}

fn sgpu_drained(r: &Record) -> bool {
    node_state(r).1 && r.get("Reason").starts_with("sgpu:")
}

#[test]
fn xid_drains_a_node_among_a_thousand_and_status_lists_them_all() -> TestResult {
    let t0 = Instant::now();
    // dropped last: after the lock and the node restore below
    let _stop = StopWhenDone;
    let cluster = big_cluster()?;
    eprintln!(
        "large cluster up (or found up) in {} ms",
        t0.elapsed().as_millis()
    );
    let _lock = cluster.lock_exclusive()?;
    let listed = cluster.output("scontrol", &["show", "node", "-o"])?;
    let lines = listed.lines().count();
    eprintln!(
        "scontrol show node -o: {lines} nodes, {} bytes",
        listed.len()
    );
    assert_eq!(lines, NODES + GHOSTS);
    assert!(listed.len() > 8 * 65536, "{} bytes", listed.len());

    // this cluster is the test's own: whatever an earlier run left, start from healthy GPUs
    // and no sgpu drain
    for n in cluster.nodes()? {
        sgpu::reset_gpus(&cluster, &n)?;
        if sgpu_drained(&cluster.node(&n)?) {
            cluster.output(
                "scontrol",
                &["update", &format!("NodeName={n}"), "State=RESUME"],
            )?;
        }
    }
    let node = "node1";
    let _restore = sgpu::Restore::new(&cluster, &[node]);
    assert!(
        sgpu::healthd_pid(&cluster, node).is_some(),
        "sgpu-healthd does not run on {node}"
    );
    cluster.wait_node(node, Duration::from_secs(30), "in service", |r| {
        !node_state(r).1
    })?;
    let log = node_files(&cluster, node).healthd_log;
    let log_before = std::fs::read_to_string(&log).unwrap_or_default().len();

    let injected = Instant::now();
    sgpu::update_gpus(&cluster, node, |s| {
        s.inject_xid(1, 79);
    })?;
    // the usual latency: within a few check intervals, as on the two-node cluster
    let rec = poll(
        Duration::from_secs(5 * HEALTHD_INTERVAL_S + 5),
        "node1 drained by sgpu",
        || {
            let r = cluster.node(node)?;
            Ok(sgpu_drained(&r).then_some(r))
        },
    )?;
    eprintln!(
        "XID 79 injection -> {node} DRAIN among {} nodes: {} ms (check interval {} s)",
        NODES + GHOSTS,
        injected.elapsed().as_millis(),
        HEALTHD_INTERVAL_S
    );
    assert!(
        rec.get("Reason").starts_with("sgpu: gpu.xid gpu1: xid 79"),
        "{rec:?}"
    );
    // healthd logs the drain once its breaker has recounted the nodes
    let new = poll(Duration::from_secs(10), "healthd to log the drain", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let new = text.get(log_before..).unwrap_or("").to_string();
        Ok(new
            .contains("drained node1: sgpu: gpu.xid gpu1: xid 79")
            .then_some(new))
    })?;
    assert!(
        !new.contains("did not finish within"),
        "healthd timed out on scontrol:\n{new}"
    );

    // `sgpu status` over every node: the real ones with their healthd, the ghosts unknown
    let mut cmd = cluster.command(&sgpu::cargo_bin("sgpu-cli", "sgpu")?.to_string_lossy());
    cmd.args(["status", "--json"]);
    for n in cluster.nodes()? {
        let addr = sgpu::healthd_status_addr(&cluster, &n)?;
        cmd.arg(format!("--healthd={n}=http://{addr}"));
    }
    // ghosts: an address that refuses at once (healthd's port range of no node)
    cmd.arg("--healthd=http://127.0.0.1:17250")
        .env("SGPU_CONFIG", "/nonexistent/sgpu.toml")
        .env_remove("SGPU_ACCTD_AUTH");
    let started = Instant::now();
    let out = cmd.output()?;
    eprintln!(
        "sgpu status over {} nodes: {} ms, {} bytes of JSON",
        NODES + GHOSTS,
        started.elapsed().as_millis(),
        out.stdout.len()
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    assert_eq!(rows.len(), NODES + GHOSTS);
    let names: std::collections::BTreeSet<&str> =
        rows.iter().filter_map(|r| r["node"].as_str()).collect();
    assert_eq!(names.len(), NODES + GHOSTS);
    for i in 1..=NODES {
        assert!(names.contains(format!("node{i}").as_str()), "node{i}");
    }
    for g in [1, 500, GHOSTS] {
        assert!(
            names.contains(format!("ghost{g:04}").as_str()),
            "ghost{g:04}"
        );
    }
    let me = rows
        .iter()
        .find(|r| r["node"] == node)
        .ok_or("node1 not in status")?;
    assert!(me["state"].as_str().unwrap_or("").contains("DRAIN"), "{me}");
    // every real node's healthd answered; the ghosts' could not
    for r in &rows {
        let name = r["node"].as_str().unwrap_or("");
        let unknown = r["health"].as_str().unwrap_or("").starts_with("unknown");
        assert_eq!(unknown, name.starts_with("ghost"), "{r}");
    }
    let ghost = rows
        .iter()
        .find(|r| r["node"] == "ghost0500")
        .ok_or("ghost0500 not in status")?;
    assert!(
        ghost["state"].as_str().unwrap_or("").starts_with("DOWN"),
        "{ghost}"
    );
    Ok(())
}
