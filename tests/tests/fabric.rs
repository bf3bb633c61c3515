//! InfiniBand ports and NVLink links on a cluster of its own (`/tmp/sgpu-cluster-fabric`,
//! 2 nodes x 1 simulated GPU, ports 17550+): `sgpu-healthd` reads node1's InfiniBand ports
//! from a sysfs tree of the test's own (`[infiniband] sysfs_root`), records the healthy port
//! as the node's baseline, drains node1 when that port goes down with a reason that names
//! the port, and resumes it once the port is back (`ib.port` is auto-recoverable); then an
//! NVLink link going inactive drains node1 for `gpu.nvlink`. node2 stays in service
//! throughout. The cluster is brought down at the end. (Slurm shows a reason with sgpu's
//! drain stamp after it: `... [root@<time>]`.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use sgpu_tests::cluster::repo_root;
use sgpu_tests::sgpu::{self, node_files};
use sgpu_tests::{Cluster, Record, node_state, poll};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const DIR: &str = "/tmp/sgpu-cluster-fabric";
const PORT: &str = "17550";

/// Removes what the InfiniBand checks remember on every node (a baseline left from an
/// earlier run would expect its port on the next start, before the test sets up its tree).
fn forget_ports() {
    for n in ["node1", "node2"] {
        let state = Path::new(DIR).join("sgpu/nodes").join(n).join("state");
        for f in ["ib-baseline.json", "ib-counters.json", "gpu-history.json"] {
            let _ = std::fs::remove_file(state.join(f));
        }
    }
}

/// Brings the cluster down (also when the test fails), forgetting the ports first.
struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        forget_ports();
        let _ = std::process::Command::new(repo_root().join("tests/cluster/down"))
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

/// One port's sysfs files, as the kernel writes them (`ibstat` of a ConnectX-6 HDR port,
/// `mlx5_7`, in leptonai/gpud pull request #752; the down state as `ibstat` showed it for a
/// ConnectX-7 in leptonai/gpud pull request #482: State Down, Physical state Polling).
fn write_port(root: &Path, up: bool) -> std::io::Result<()> {
    let dir = root.join("mlx5_7/ports/1");
    std::fs::create_dir_all(dir.join("counters"))?;
    let (state, phys) = if up {
        ("4: ACTIVE", "5: LinkUp")
    } else {
        ("1: DOWN", "2: Polling")
    };
    std::fs::write(dir.join("state"), format!("{state}\n"))?;
    std::fs::write(dir.join("phys_state"), format!("{phys}\n"))?;
    std::fs::write(dir.join("rate"), "200 Gb/sec (4X HDR)\n")?;
    std::fs::write(dir.join("link_layer"), "InfiniBand\n")?;
    for c in [
        "symbol_error",
        "link_downed",
        "link_error_recovery",
        "port_rcv_errors",
    ] {
        std::fs::write(dir.join("counters").join(c), "0\n")?;
    }
    Ok(())
}

/// node1's sgpu.toml with `[infiniband]` pointing at `root`; healthd restarted.
fn use_tree(cluster: &Cluster, node: &str, root: &Path) -> TestResult {
    let f = node_files(cluster, node);
    let text = std::fs::read_to_string(&f.config)?;
    if !text.contains("[infiniband]") {
        std::fs::write(
            &f.config,
            format!(
                "{text}\n[infiniband]\nsysfs_root = \"{}\"\n",
                root.display()
            ),
        )?;
    }
    sgpu::stop_healthd(cluster, node)?;
    sgpu::start_healthd(cluster, node)?;
    Ok(())
}

#[test]
fn a_port_going_down_drains_its_node_naming_the_port() -> TestResult {
    forget_ports();
    let _down = Down;
    let cluster = Cluster::up_in(
        Path::new(DIR),
        &[
            ("SGPU_CLUSTER_NODES", "2"),
            ("SGPU_CLUSTER_GPUS", "1"),
            ("SGPU_CLUSTER_PORT", PORT),
        ],
    )?;
    let _lock = cluster.lock_exclusive()?;
    let nodes = cluster.nodes()?;
    let (n1, n2) = (nodes[0].as_str(), nodes[1].as_str());
    let _restore = sgpu::Restore::new(&cluster, &[n1, n2]);
    for n in [n1, n2] {
        sgpu::reset_gpus(&cluster, n)?;
        cluster.wait_node(n, Duration::from_secs(30), "in service", |r| {
            !node_state(r).1
        })?;
    }
    let state_dir = node_files(&cluster, n1).state_dir;
    let baseline = state_dir.join("ib-baseline.json");
    let _ = std::fs::remove_file(&baseline);
    let root: PathBuf = node_files(&cluster, n1).dir.join("sys-class-infiniband");
    let _ = std::fs::remove_dir_all(&root);
    write_port(&root, true)?;
    use_tree(&cluster, n1, &root)?;

    // a healthy run records the port as the node's baseline
    poll(Duration::from_secs(30), "the InfiniBand baseline", || {
        Ok(std::fs::read_to_string(&baseline)
            .ok()
            .filter(|t| t.contains("mlx5_7/1")))
    })?;
    let rec = cluster.node(n1)?;
    assert!(!node_state(&rec).1, "healthy: not drained: {rec:?}");

    // the port goes down: node1 is drained with the port in the reason
    write_port(&root, false)?;
    let rec = cluster.wait_node(n1, Duration::from_secs(30), "drained by sgpu", sgpu_drained)?;
    let reason = rec.get("Reason");
    assert!(
        reason.starts_with("sgpu: ib.port: mlx5_7/1 DOWN (Polling), expected ACTIVE (LinkUp) ["),
        "{reason}"
    );
    assert!(!node_state(&cluster.node(n2)?).1, "node2 is left alone");

    // the port comes back: ib.port is auto-recoverable, healthd resumes the node
    write_port(&root, true)?;
    cluster.wait_node(
        n1,
        Duration::from_secs(10 * sgpu::HEALTHD_INTERVAL_S),
        "resumed by healthd",
        |r| !node_state(r).1,
    )?;

    // NVLink: six links, all active, then link 3 goes down
    sgpu::update_gpus(&cluster, n1, |st| {
        if let Some(g) = st.gpu_mut(0) {
            g.nvlink = Some(nvml_sim::nvlink::NvLink::all_active(6));
        }
    })?;
    std::thread::sleep(Duration::from_secs(2 * sgpu::HEALTHD_INTERVAL_S));
    assert!(
        !node_state(&cluster.node(n1)?).1,
        "all links active: healthy"
    );
    sgpu::update_gpus(&cluster, n1, |st| {
        if let Some(nv) = st.gpu_mut(0).and_then(|g| g.nvlink.as_mut()) {
            nv.inactive = vec![3];
        }
    })?;
    let rec = cluster.wait_node(n1, Duration::from_secs(30), "drained by sgpu", sgpu_drained)?;
    let reason = rec.get("Reason");
    assert!(
        reason.starts_with(
            "sgpu: gpu.nvlink gpu0: NVLink 5 of 6 links active (inactive: 3), expected 6 \
             active (every link of the board) ["
        ),
        "{reason}"
    );
    assert!(!node_state(&cluster.node(n2)?).1, "node2 is left alone");
    Ok(())
}
