//! sgpu-healthd on the real test cluster with simulated GPUs: an XID drains an idle node
//! within moments, an application XID does not, a cleared recoverable fault is resumed (an
//! admin's drain never is), and the circuit breaker keeps a second node up.
//!
//! Every node runs `sgpu-healthd` (installed and started by `Cluster::up`) with
//! `check_interval_s = 2`, `resume_after = 2` and a breaker that allows one sgpu-drained
//! node of the two.

use std::time::{Duration, Instant};

use sgpu_tests::sgpu::{self, HEALTHD_INTERVAL_S, HEALTHD_RESUME_AFTER, node_files};
use sgpu_tests::{Cluster, Record, node_state};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const INTERVAL: Duration = Duration::from_secs(HEALTHD_INTERVAL_S);
const JOB_TIMEOUT: Duration = Duration::from_secs(60);

/// Puts nodes back in service and their GPUs back to health, whatever the test did.
struct Restore<'a> {
    cluster: &'a Cluster,
    nodes: &'a [&'a str],
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        for node in self.nodes {
            let _ = sgpu::reset_gpus(self.cluster, node);
            let _ = self.cluster.output(
                "scontrol",
                &["update", &format!("NodeName={node}"), "State=RESUME"],
            );
        }
    }
}

fn sgpu_drained(r: &Record) -> bool {
    node_state(r).1 && r.get("Reason").starts_with("sgpu:")
}

/// Polls `f` every 20 ms until it returns `Some`, for at most `timeout`.
fn poll<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<Option<T>, Box<dyn std::error::Error>>,
) -> Result<T, Box<dyn std::error::Error>> {
    let start = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts `pred` holds for the node's record throughout `period`.
fn stays(
    cluster: &Cluster,
    node: &str,
    period: Duration,
    what: &str,
    pred: impl Fn(&Record) -> bool,
) -> TestResult {
    let start = Instant::now();
    while start.elapsed() < period {
        let rec = cluster.node(node)?;
        assert!(pred(&rec), "{node} is no longer {what}: {rec:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The node is up (not drained) and its healthd running, before a test starts.
fn ready(cluster: &Cluster, node: &str) -> TestResult {
    assert!(
        sgpu::healthd_pid(cluster, node).is_some(),
        "sgpu-healthd does not run on {node}"
    );
    cluster.wait_node(node, Duration::from_secs(10), "in service", |r| {
        !node_state(r).1
    })?;
    Ok(())
}

fn healthd_log(cluster: &Cluster, node: &str) -> String {
    std::fs::read_to_string(node_files(cluster, node).healthd_log).unwrap_or_default()
}

fn healthd_state(cluster: &Cluster, node: &str) -> String {
    std::fs::read_to_string(
        node_files(cluster, node)
            .state_dir
            .join("healthd-state.toml"),
    )
    .unwrap_or_default()
}

#[test]
fn xid79_on_an_idle_node_drains_it_at_once() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_exclusive()?;
    let _restore = Restore {
        cluster: &cluster,
        nodes: &["node1"],
    };
    ready(&cluster, "node1")?;
    ready(&cluster, "node2")?;

    let injected = Instant::now();
    sgpu::update_gpus(&cluster, "node1", |s| {
        s.inject_xid(2, 79);
    })?;
    let rec = poll(Duration::from_secs(15), "node1 drained by sgpu", || {
        let r = cluster.node("node1")?;
        Ok(sgpu_drained(&r).then_some(r))
    })?;
    let took = injected.elapsed();
    eprintln!(
        "XID 79 injection -> node1 DRAIN: {} ms (check interval {} s)",
        took.as_millis(),
        HEALTHD_INTERVAL_S
    );
    let reason = rec.get("Reason");
    assert!(
        reason.starts_with("sgpu: gpu.xid gpu2: xid 79"),
        "reason names the check, the GPU and the XID: {reason}"
    );
    assert!(
        healthd_log(&cluster, "node1").contains("drained node1: sgpu: gpu.xid gpu2: xid 79"),
        "healthd logs the drain"
    );

    // a job pinned to node1 does not start there; one that may go anywhere runs on node2
    let pinned = cluster.sbatch(&["-w", "node1", "--gres=gpu:1", "-o", "/dev/null"], "true")?;
    let free = cluster.sbatch(&["--gres=gpu:1", "-o", "/dev/null"], "true")?;
    let job = cluster.wait_job(free, JOB_TIMEOUT);
    let pinned_rec = cluster.job(pinned);
    let _ = cluster.output("scancel", &[&pinned.to_string()]);
    let job = job?;
    assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");
    assert_eq!(job.get("NodeList"), "node2", "{job:?}");
    let pinned_rec = pinned_rec?;
    assert_eq!(
        pinned_rec.get("JobState"),
        "PENDING",
        "a job pinned to the drained node must not run: {pinned_rec:?}"
    );
    // and node1 is still drained for the XID (gpu.xid does not clear by itself)
    let rec = cluster.node("node1")?;
    assert!(sgpu_drained(&rec), "{rec:?}");
    Ok(())
}

#[test]
fn xid13_is_recorded_but_does_not_drain() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_exclusive()?;
    let _restore = Restore {
        cluster: &cluster,
        nodes: &["node1"],
    };
    ready(&cluster, "node1")?;
    sgpu::update_gpus(&cluster, "node1", |s| {
        s.inject_xid(0, 13);
    })?;
    // the watch records it in the node's XID store, and a run marks it reported
    let store = node_files(&cluster, "node1")
        .state_dir
        .join("xid-state.toml");
    poll(
        Duration::from_secs(10),
        "XID 13 recorded and judged",
        || {
            let text = std::fs::read_to_string(&store).unwrap_or_default();
            let recorded = text.contains("code = 13");
            let reported = text
                .lines()
                .find_map(|l| l.strip_prefix("reported_through = "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .is_some_and(|n| n >= 1);
            Ok((recorded && reported).then_some(()))
        },
    )?;
    // two check intervals later the node is still in service
    stays(
        &cluster,
        "node1",
        INTERVAL * 2 + Duration::from_millis(500),
        "in service",
        |r| !node_state(r).1,
    )?;
    assert!(
        healthd_log(&cluster, "node1").contains("XID 13 on gpu0"),
        "healthd logs the XID"
    );
    Ok(())
}

#[test]
fn recoverable_fault_is_resumed_and_admin_drain_is_not() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_exclusive()?;
    let node = "node1";
    let _restore = Restore {
        cluster: &cluster,
        nodes: &[node],
    };
    ready(&cluster, node)?;
    let too_hot = |s: &mut nvml_sim::State| {
        if let Some(g) = s.gpu_mut(1) {
            g.temperature_c = g.temp_slowdown_c.map(|t| t + 2);
        }
    };
    let hot_reason = "sgpu: gpu.temperature gpu1:";

    // a GPU too hot: drained; cooled down: resumed after resume_after healthy runs
    sgpu::update_gpus(&cluster, node, too_hot)?;
    let rec = cluster.wait_node(node, INTERVAL * 3, "drained for temperature", sgpu_drained)?;
    assert!(rec.get("Reason").starts_with(hot_reason), "{rec:?}");
    let cooled = Instant::now();
    sgpu::reset_gpus(&cluster, node)?;
    cluster.wait_node(
        node,
        INTERVAL * (HEALTHD_RESUME_AFTER + 3),
        "resumed",
        |r| !node_state(r).1,
    )?;
    eprintln!(
        "fault cleared -> node resumed: {} ms (resume_after {HEALTHD_RESUME_AFTER} x {HEALTHD_INTERVAL_S} s)",
        cooled.elapsed().as_millis()
    );
    assert!(healthd_log(&cluster, node).contains("resumed node1"));

    // the same fault, but an admin takes the drain over: never resumed by sgpu
    sgpu::update_gpus(&cluster, node, too_hot)?;
    cluster.wait_node(node, INTERVAL * 3, "drained for temperature", sgpu_drained)?;
    cluster.output(
        "scontrol",
        &[
            "update",
            &format!("NodeName={node}"),
            "State=DRAIN",
            "Reason=admin: checking the fans",
        ],
    )?;
    sgpu::reset_gpus(&cluster, node)?;
    stays(
        &cluster,
        node,
        INTERVAL * (HEALTHD_RESUME_AFTER + 2),
        "drained by the admin",
        |r| node_state(r).1 && r.get("Reason").starts_with("admin: checking the fans"),
    )?;
    Ok(())
}

#[test]
fn breaker_keeps_the_second_node_up() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_exclusive()?;
    let _restore = Restore {
        cluster: &cluster,
        nodes: &["node1", "node2"],
    };
    ready(&cluster, "node1")?;
    ready(&cluster, "node2")?;
    let ecc = |s: &mut nvml_sim::State| {
        if let Some(g) = s.gpu_mut(0) {
            g.ecc.volatile_uncorrected = 2;
        }
    };
    sgpu::update_gpus(&cluster, "node1", ecc)?;
    cluster.wait_node("node1", INTERVAL * 3, "drained by sgpu", sgpu_drained)?;
    sgpu::update_gpus(&cluster, "node2", ecc)?;
    // node2's healthd finds the same fault, but one sgpu-drained node of two is the limit
    poll(INTERVAL * 3, "node2's breaker to open", || {
        Ok(healthd_state(&cluster, "node2")
            .contains("[breaker_open]")
            .then_some(()))
    })?;
    let state = healthd_state(&cluster, "node2");
    assert!(
        state.contains("drained = 1") && state.contains("limit = 1"),
        "{state}"
    );
    assert!(
        healthd_log(&cluster, "node2").contains("circuit breaker open: cluster: 1 of 2 nodes"),
        "healthd says so in its log"
    );
    stays(
        &cluster,
        "node2",
        INTERVAL + Duration::from_millis(500),
        "up",
        |r| !node_state(r).1,
    )?;
    let rec = cluster.node("node1")?;
    assert!(sgpu_drained(&rec), "node1 stays drained: {rec:?}");
    Ok(())
}
