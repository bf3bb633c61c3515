//! sgpu-healthd on the real test cluster with simulated GPUs: an XID drains an idle node
//! within moments, an application XID does not, a cleared recoverable fault is resumed (an
//! admin's drain never is), and the circuit breaker keeps a second node up.
//!
//! Every node runs `sgpu-healthd` (installed and started by `Cluster::up`) with
//! `check_interval_s = 2`, `resume_after = 2` and a breaker that allows one sgpu-drained
//! node of the two.

use std::time::{Duration, Instant};

use sgpu_tests::sgpu::{self, HEALTHD_INTERVAL_S, HEALTHD_RESUME_AFTER, node_files};
use sgpu_tests::{Cluster, Record, node_state, poll};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const INTERVAL: Duration = Duration::from_secs(HEALTHD_INTERVAL_S);
const JOB_TIMEOUT: Duration = Duration::from_secs(60);

fn sgpu_drained(r: &Record) -> bool {
    node_state(r).1 && r.get("Reason").starts_with("sgpu:")
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
    let _restore = sgpu::Restore::new(&cluster, &["node1"]);
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
    // healthd logs the drain once scontrol has returned: Slurm may show it a moment before
    poll(Duration::from_secs(5), "healthd logs the drain", || {
        Ok(healthd_log(&cluster, "node1")
            .contains("drained node1: sgpu: gpu.xid gpu2: xid 79")
            .then_some(()))
    })?;

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

/// Issue 13's reproduction: node2's GPUs as an idle L40S reports them (PCIe gen 1 of 4,
/// SW power cap active). The old rule drained the node within one check interval for
/// `gpu.pcie_link`; an idle board lowering its link is power management.
#[test]
fn an_idle_board_at_pcie_gen1_is_not_drained() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_exclusive()?;
    let node = "node2";
    let _restore = sgpu::Restore::new(&cluster, &[node]);
    ready(&cluster, node)?;
    sgpu::update_gpus(&cluster, node, |s| {
        for g in &mut s.gpus {
            g.pcie_gen_current = Some(1);
            g.pcie_gen_max = Some(4);
            g.utilization_gpu = Some(0);
            g.throttle_reasons = Some(vec![nvml_sim::ThrottleReason::SwPowerCap]);
        }
    })?;
    let history = node_files(&cluster, node)
        .state_dir
        .join("gpu-history.json");
    let before = std::fs::metadata(&history).and_then(|m| m.modified()).ok();
    stays(
        &cluster,
        node,
        INTERVAL * 2 + Duration::from_millis(500),
        "in service",
        |r| !node_state(r).1,
    )?;
    // healthd did check meanwhile (it rewrites the node's GPU history on every run)
    let after = std::fs::metadata(&history).and_then(|m| m.modified()).ok();
    assert!(
        after.is_some() && after != before,
        "healthd ran no check on {node}"
    );
    // and the prolog's quick gate lets a job run
    let id = cluster.sbatch(&["-w", node, "--gres=gpu:1", "-o", "/dev/null"], "true")?;
    let job = cluster.wait_job(id, JOB_TIMEOUT)?;
    assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");
    assert!(!node_state(&cluster.node(node)?).1, "{node} drained");
    Ok(())
}

#[test]
fn xid13_is_recorded_but_does_not_drain() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_exclusive()?;
    let _restore = sgpu::Restore::new(&cluster, &["node1"]);
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
    let _restore = sgpu::Restore::new(&cluster, &[node]);
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
    let _restore = sgpu::Restore::new(&cluster, &["node1", "node2"]);
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
    // the state file can be saved a moment before the log line is written: wait for it
    poll(
        Duration::from_secs(10),
        "healthd to say so in its log",
        || {
            Ok(healthd_log(&cluster, "node2")
                .contains("circuit breaker open: cluster: 1 of 2 nodes")
                .then_some(()))
        },
    )?;
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

/// `GET path` from the node's healthd, as JSON.
fn status_json(
    cluster: &Cluster,
    node: &str,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let (code, body) = sgpu::healthd_get(cluster, node, "/status")?;
    assert_eq!(code, 200, "GET /status: {body}");
    Ok(serde_json::from_str(&body)?)
}

/// The running job `job` in a `/status` document.
fn status_job(status: &serde_json::Value, job: u32) -> Option<serde_json::Value> {
    status["jobs"]
        .as_array()?
        .iter()
        .find(|j| j["job_id"].as_u64() == Some(u64::from(job)))
        .cloned()
}

/// The `job_usage` record of `job` in the node's spool.
fn usage_record(
    cluster: &Cluster,
    node: &str,
    job: u32,
) -> Result<Option<(sgpu_spool::Usage, sgpu_spool::JobEnd)>, Box<dyn std::error::Error>> {
    let spool = sgpu_spool::Spool::open(node_files(cluster, node).spool_dir)?;
    let (mut usage, mut end) = (None, None);
    for e in spool.list()? {
        let r = spool.read(&e)?;
        if r.id().job_id() != job {
            continue;
        }
        match r.body() {
            sgpu_spool::RecordBody::JobUsage(u) => usage = Some(u.clone()),
            sgpu_spool::RecordBody::JobEnd(x) => end = Some(x.clone()),
            _ => {}
        }
    }
    Ok(usage.zip(end))
}

#[test]
fn a_gpu_job_is_sampled_and_its_usage_survives_a_healthd_kill9() -> TestResult {
    let cluster = Cluster::up()?;
    // exclusive: the test kills node1's healthd and changes its GPUs
    let _lock = cluster.lock_exclusive()?;
    let node = "node1";
    let _restore = sgpu::Restore::new(&cluster, &[node]);
    ready(&cluster, node)?;
    // the simulator runs every GPU of the node at 60 %
    sgpu::update_gpus(&cluster, node, |s| {
        for g in &mut s.gpus {
            g.utilization_gpu = Some(60);
        }
    })?;
    let state = nvml_sim::State::load(node_files(&cluster, node).nvml_state)?;
    // the job runs until the test has seen healthd come back (a fixed length would race a
    // slow machine: the job could end while healthd is down), then 2 s more
    let flag_dir = tempfile::tempdir()?;
    let flag = flag_dir.path().join("release");
    let script = format!(
        "for i in $(seq 600); do [ -e {f} ] && break; sleep 0.2; done; sleep 2",
        f = flag.display()
    );
    let id = cluster.sbatch(&["-w", node, "--gres=gpu:2", "-o", "/dev/null"], &script)?;

    // healthd follows the job: its accumulators show in /status and grow
    let first = poll(
        Duration::from_secs(20),
        "the job in /status with 2 samples",
        || {
            let s = status_json(&cluster, node)?;
            Ok(status_job(&s, id).filter(|j| j["samples"].as_u64() >= Some(2)))
        },
    )?;
    eprintln!("/status job entry: {first}");
    assert_eq!(first["gpus"].as_array().map(Vec::len), Some(2), "{first}");
    assert_eq!(first["user"], "root");
    assert_eq!(first["util_mean_pct"].as_f64(), Some(60.0), "{first}");
    assert_eq!(first["util_max_pct"].as_u64(), Some(60), "{first}");
    assert!(
        first["energy_mj"].as_u64().is_some_and(|e| e > 0),
        "{first}"
    );
    let status = status_json(&cluster, node)?;
    let held: Vec<&serde_json::Value> = status["gpus"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter(|g| g["job_id"].as_u64() == Some(u64::from(id)))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(held.len(), 2, "two GPUs are held by the job: {status}");
    assert!(status["health"]["verdict"].is_string(), "{status}");
    assert_eq!(status["breaker"]["open"], false, "{status}");

    // /metrics has job-labelled per-GPU series
    let (code, metrics) = sgpu::healthd_get(&cluster, node, "/metrics")?;
    assert_eq!(code, 200);
    let job_label = format!("job_id=\"{id}\"");
    let util_lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("sgpu_gpu_utilization_ratio{") && l.contains(&job_label))
        .collect();
    assert_eq!(util_lines.len(), 2, "{metrics}");
    assert!(
        util_lines
            .iter()
            .all(|l| l.contains("user=\"root\"") && l.ends_with(" 0.6")),
        "{util_lines:?}"
    );
    assert!(
        metrics.contains("sgpu_healthd_sample_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(metrics.contains("sgpu_check_failing{"), "{metrics}");
    assert!(
        metrics.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );

    // kill -9 mid-job and restart: the samples before the kill are kept and it goes on
    let before_kill = status_job(&status_json(&cluster, node)?, id)
        .and_then(|j| j["samples"].as_u64())
        .ok_or("the job left /status")?;
    sgpu::kill9_and_restart_healthd(&cluster, node)?;
    let resumed = poll(
        Duration::from_secs(20),
        "the job back in /status, sampled on",
        || {
            let Ok(s) = status_json(&cluster, node) else {
                return Ok(None); // not listening yet
            };
            Ok(status_job(&s, id).filter(|j| j["samples"].as_u64() > Some(before_kill)))
        },
    )?;
    eprintln!("samples before the kill: {before_kill}; after the restart: {resumed}");
    std::fs::write(&flag, b"")?;

    let job = cluster.wait_job(id, JOB_TIMEOUT)?;
    assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");
    let (usage, end) = poll(Duration::from_secs(10), "the job's usage record", || {
        usage_record(&cluster, node, id)
    })?;
    eprintln!("job_usage: {usage:?}");
    assert_eq!(
        (usage.window_start, usage.window_end),
        (end.start_time, end.end_time)
    );
    // job_usage's allocated time is over the gates' window (job_end's may be Slurm's)
    let wall_ms = end.end_time - end.start_time;
    assert_eq!(usage.allocated_gpu_ms, 2 * wall_ms);
    assert!(wall_ms >= 2_000, "{wall_ms}");
    assert_eq!(usage.gpus.len(), 2);
    for g in &usage.gpus {
        assert!(
            (g.util_mean_pct - 60.0).abs() < 1e-9 && g.util_max_pct == 60,
            "GPU {}: mean {} max {} (the simulator ran it at 60 %)",
            g.uuid,
            g.util_mean_pct,
            g.util_max_pct
        );
        assert!(
            g.samples > before_kill,
            "GPU {}: {} samples, {before_kill} were taken before the kill",
            g.uuid,
            g.samples
        );
        // one sample a second, minus the restart's gap and the edges
        assert!(
            g.samples + 6 >= wall_ms / 1000,
            "{} samples in {wall_ms} ms",
            g.samples
        );
        let expected_used = wall_ms * 6 / 10;
        assert!(g.used_gpu_ms.abs_diff(expected_used) <= 1, "{g:?}");
        let sim = state
            .gpus
            .iter()
            .find(|s| s.uuid == g.uuid)
            .ok_or_else(|| format!("usage names GPU {} the node does not have", g.uuid))?;
        let power_mw = f64::from(sim.power_usage_mw.unwrap_or(0));
        let expected = power_mw * wall_ms as f64 / 1000.0;
        let energy = g.energy_mj.ok_or("no energy")? as f64;
        assert!(
            (energy - expected).abs() <= power_mw * 0.25,
            "GPU {}: energy {energy} mJ, power x time {expected} mJ",
            g.uuid
        );
    }
    assert_eq!(
        usage.used_gpu_ms,
        usage.gpus.iter().map(|g| g.used_gpu_ms).sum::<u64>()
    );
    // the job is no longer followed
    let s = status_json(&cluster, node)?;
    assert!(status_job(&s, id).is_none(), "{s}");
    Ok(())
}
