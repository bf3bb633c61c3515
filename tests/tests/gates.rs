//! sgpu-prolog and sgpu-epilog on the real test cluster with simulated GPUs: healthy jobs
//! leave start and end records with honest energy; a bad GPU drains the node with a precise
//! reason and the job is requeued onto a healthy node.

use std::time::Duration;

use nvml_sim::State;
use sgpu_spool::RecordBody;
use sgpu_tests::sgpu::{self, node_files};
use sgpu_tests::{Cluster, node_state};

const JOB_TIMEOUT: Duration = Duration::from_secs(90);

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn healthy_job_leaves_start_and_end_records_with_energy() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_shared()?;
    let node = "node2";
    let state = State::load(node_files(&cluster, node).nvml_state)?;
    let id = cluster.sbatch(&["-w", node, "--gres=gpu:2", "-o", "/dev/null"], "sleep 3")?;
    let job = cluster.wait_job(id, JOB_TIMEOUT)?;
    assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");

    let recs = sgpu::spool_records(&cluster, node, id)?;
    let start = recs
        .iter()
        .find_map(|r| match r.body() {
            RecordBody::JobStart(s) => Some(s),
            _ => None,
        })
        .ok_or_else(|| format!("no job_start record for job {id}: {recs:?}"))?;
    let end = recs
        .iter()
        .find_map(|r| match r.body() {
            RecordBody::JobEnd(e) => Some(e),
            _ => None,
        })
        .ok_or_else(|| format!("no job_end record for job {id}: {recs:?}"))?;
    assert_eq!(start.user, "root");
    assert_eq!(start.partition.as_deref(), Some("gpu"));
    assert_eq!(start.gpus.len(), 2);
    assert_eq!(end.gpus.len(), 2);
    assert_eq!(end.start_time, start.start_time);
    let wall_ms = end.end_time - end.start_time;
    assert!(wall_ms >= 3_000, "the job slept 3 s, wall {wall_ms} ms");
    // allocated time is over slurmctld's StartTime..EndTime (whole seconds), which the
    // gates' window follows by their lag
    let slurm = end
        .slurm_window
        .ok_or("the epilog did not read Slurm's window")?;
    let (slurm_start, slurm_end) = slurm.ms();
    assert_eq!(
        (slurm_start, slurm_end),
        (
            1000 * epoch_s(job.get("StartTime"))?,
            1000 * epoch_s(job.get("EndTime"))?
        ),
        "the record's window is the job's StartTime/EndTime: {job:?}"
    );
    assert_eq!(end.allocated_gpu_ms, 2 * (slurm_end - slurm_start));
    assert!(
        slurm_start <= end.start_time + 1_000 && end.start_time < slurm_start + 2_000,
        "Slurm start {slurm_start} ms, prolog {} ms",
        end.start_time
    );
    assert!(
        slurm_end <= end.end_time + 1_000 && end.end_time < slurm_end + 2_000,
        "Slurm end {slurm_end} ms, epilog {} ms",
        end.end_time
    );
    for g in &end.gpus {
        // the simulated GPU with this UUID draws a constant power: energy = power x time
        let sim = state
            .gpus
            .iter()
            .find(|s| s.uuid == g.uuid)
            .ok_or_else(|| format!("record names GPU {} the node does not have", g.uuid))?;
        let power_mw = f64::from(sim.power_usage_mw.unwrap_or(0));
        let delta = g.energy_delta_mj.ok_or("no energy delta")? as f64;
        let expected = power_mw * wall_ms as f64 / 1000.0;
        // the counters are read a few milliseconds from the timestamps: allow 250 ms of power
        let slack = power_mw * 0.25;
        assert!(
            (delta - expected).abs() <= slack,
            "gpu {}: energy delta {delta} mJ, power x time {expected} mJ",
            g.uuid
        );
    }
    Ok(())
}

/// Unix seconds of a time as `scontrol show job` prints it (local `YYYY-MM-DDTHH:MM:SS`).
fn epoch_s(t: &str) -> Result<u64, String> {
    sgpu_nodelib::slurmctl::parse_slurm_time(t)
        .and_then(|s| u64::try_from(s).ok())
        .ok_or_else(|| format!("{t:?} is not a Slurm time"))
}

#[test]
fn bad_gpu_drains_node_and_job_runs_elsewhere() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_exclusive()?;
    // sgpu-healthd would drain node1 within its check interval, often before Slurm places
    // the job there; this test is about the prolog, so node1 runs without the daemon (its
    // guard drops last: the node is restored before the daemon starts again)
    let _paused = sgpu::pause_healthd(&cluster, "node1")?;
    let _restore = sgpu::Restore::new(&cluster, &["node1"]);
    // an uncorrectable ECC error on node1's gpu2: node1 must not take jobs
    sgpu::update_gpus(&cluster, "node1", |s| {
        if let Some(g) = s.gpu_mut(2) {
            g.ecc.volatile_uncorrected = 3;
        }
    })?;
    // node1 has the lower weight: Slurm places the job there first, once it is idle (a job
    // cancelled by an earlier test may still be completing there)
    cluster.wait_node("node1", JOB_TIMEOUT, "idle", |r| r.get("State") == "IDLE")?;
    let id = cluster.sbatch(&["--gres=gpu:1", "-o", "/dev/null"], "true")?;
    let rec = cluster.wait_node("node1", JOB_TIMEOUT, "drained by sgpu", |r| {
        node_state(r).1 && r.get("Reason").starts_with("sgpu:")
    })?;
    let reason = rec.get("Reason");
    assert!(
        reason.starts_with("sgpu: gpu.ecc_uncorrectable gpu2:"),
        "reason names the check and the GPU: {reason}"
    );
    // the failed prolog sent the job back to the queue (not held: nohold_on_prolog_fail)
    let start = std::time::Instant::now();
    loop {
        let job = cluster.job(id)?;
        if job.get("JobState") == "PENDING" && job.get("Restarts") != "0" {
            break;
        }
        assert!(
            start.elapsed() < JOB_TIMEOUT,
            "job {id} was not requeued: {job:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Slurm makes a requeued batch job wait two minutes before it is eligible again; an
    // admin (here the test) may release it at once
    cluster.output(
        "scontrol",
        &["update", &format!("JobId={id}"), "StartTime=now"],
    )?;
    let job = cluster.wait_job(id, JOB_TIMEOUT)?;
    assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");
    assert_eq!(
        job.get("NodeList"),
        "node2",
        "requeued onto the healthy node: {job:?}"
    );
    // node1 is still drained, with sgpu's reason
    let rec = cluster.node("node1")?;
    assert!(node_state(&rec).1, "{rec:?}");
    assert!(
        rec.get("Reason")
            .starts_with("sgpu: gpu.ecc_uncorrectable gpu2:"),
        "{rec:?}"
    );
    Ok(())
}

/// Submits a job pinned to `node`, waits until sgpu drained the node, cancels the job and
/// returns the drain reason.
fn drain_reason_for_job_on(
    cluster: &Cluster,
    node: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let id = cluster.sbatch(&["-w", node, "--gres=gpu:4", "-o", "/dev/null"], "true")?;
    let waited = cluster.wait_node(node, JOB_TIMEOUT, "drained by sgpu", |r| {
        node_state(r).1 && r.get("Reason").starts_with("sgpu:")
    });
    let rec = waited?;
    // cancel until it sticks: a cancel that lands while the prolog still runs is undone by
    // Slurm's requeue when the prolog fails
    let start = std::time::Instant::now();
    let job = loop {
        let _ = cluster.output("scancel", &[&id.to_string()]);
        std::thread::sleep(Duration::from_millis(300));
        let job = cluster.job(id)?;
        if sgpu_tests::cluster::TERMINAL_JOB_STATES.contains(&job.get("JobState")) {
            break job;
        }
        assert!(
            start.elapsed() < JOB_TIMEOUT,
            "job {id} cannot be cancelled: {job:?}"
        );
    };
    assert_ne!(
        job.get("JobState"),
        "COMPLETED",
        "job {id} ran on a bad node: {job:?}"
    );
    Ok(rec.get("Reason").to_string())
}

#[test]
fn each_drain_worthy_fault_gives_its_reason() -> TestResult {
    use nvml_sim::{Process, ProcessKind, RemappedRows, RetiredPages};
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_exclusive()?;
    let node = "node1";
    let _restore = sgpu::Restore::new(&cluster, &[node]);
    type Inject = Box<dyn Fn(&mut nvml_sim::Gpu)>;
    let faults: Vec<(&str, Inject)> = vec![
        ("sgpu: gpu.lost gpu1:", Box::new(|g| g.lost = true)),
        (
            "sgpu: gpu.ecc_uncorrectable gpu1:",
            Box::new(|g| g.ecc.volatile_uncorrected = 1),
        ),
        (
            "sgpu: gpu.retired_pages_pending gpu1:",
            Box::new(|g| {
                g.retired_pages = Some(RetiredPages {
                    pending: true,
                    ..RetiredPages::default()
                })
            }),
        ),
        (
            "sgpu: gpu.row_remap_pending gpu1:",
            Box::new(|g| {
                g.remapped_rows = Some(RemappedRows {
                    uncorrectable: 1,
                    pending: true,
                    ..RemappedRows::default()
                })
            }),
        ),
        (
            "sgpu: gpu.row_remap_failure gpu1:",
            Box::new(|g| {
                g.remapped_rows = Some(RemappedRows {
                    failure: true,
                    ..RemappedRows::default()
                })
            }),
        ),
        (
            "sgpu: gpu.temperature gpu1:",
            Box::new(|g| g.temperature_c = g.temp_slowdown_c.map(|t| t + 2)),
        ),
        // A HW throttle seen once warns; it drains when it persists (nodelib/tests/sim.rs).
        // A busy link narrower than the x16 this GPU showed in the cases above (the gate
        // records each GPU's widest link in the node's history) is degraded.
        (
            "sgpu: gpu.pcie_link gpu1:",
            Box::new(|g| {
                g.pcie_width_current = Some(8);
                g.utilization_gpu = Some(90);
            }),
        ),
        (
            "sgpu: gpu.fabric gpu1:",
            Box::new(|g| {
                if let Some(f) = g.fabric.as_mut() {
                    f.state = nvml_sim::FabricState::InProgress;
                }
            }),
        ),
        (
            "sgpu: gpu.leftover_processes gpu1:",
            Box::new(|g| {
                g.processes.push(Process {
                    pid: 4242,
                    used_memory_mib: Some(20_000),
                    kind: ProcessKind::Compute,
                })
            }),
        ),
    ];
    let mut wrong = Vec::new();
    for (want, inject) in &faults {
        sgpu::reset_gpus(&cluster, node)?;
        sgpu::update_gpus(&cluster, node, |s| {
            if let Some(g) = s.gpu_mut(1) {
                inject(g);
            }
        })?;
        let reason = drain_reason_for_job_on(&cluster, node)?;
        if !reason.starts_with(want) {
            wrong.push(format!("expected {want:?}, got {reason:?}"));
        }
        // heal the GPUs before resuming: the cancelled job's epilog (post profile) may still
        // run, and must not find the fault and drain the node again under the next fault
        sgpu::reset_gpus(&cluster, node)?;
        cluster.output(
            "scontrol",
            &["update", &format!("NodeName={node}"), "State=RESUME"],
        )?;
        cluster.wait_node(node, JOB_TIMEOUT, "back in service", |r| !node_state(r).1)?;
    }
    assert!(
        wrong.is_empty(),
        "wrong drain reasons:\n{}",
        wrong.join("\n")
    );
    Ok(())
}

/// A real capture loaded with `sgpu-testcluster gpu NODE capture FILE`: the A100 board
/// with a remapped row pending drains the node with a reason that says to reset it.
#[test]
fn a_real_capture_with_a_pending_row_remap_drains_saying_reset() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_exclusive()?;
    let node = "node1";
    let _restore = sgpu::Restore::new(&cluster, &[node]);
    let capture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/gpu-captures/faults/a100-sxm4-80gb-x4-remap-pending-dram-correctable.txt"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sgpu-testcluster"))
        .args(["gpu", node, "capture", capture])
        .env("SGPU_CLUSTER_DIR", cluster.dir())
        .output()?;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let reason = drain_reason_for_job_on(&cluster, node)?;
    assert!(
        reason.starts_with(
            "sgpu: gpu.row_remap_pending gpu1: row remap pending: reset GPU after the running job"
        ),
        "{reason}"
    );
    sgpu::reset_gpus(&cluster, node)?;
    Ok(())
}

#[test]
fn hung_driver_drains_within_the_deadline() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_exclusive()?;
    let node = "node1";
    let _restore = sgpu::Restore::new(&cluster, &[node]);
    sgpu::update_gpus(&cluster, node, |s| s.hang = true)?;
    // the prolog can only write this reason if it gave up on the hung driver (after the node
    // config's nvml_timeout_ms, 2000) instead of hanging with it
    let reason = drain_reason_for_job_on(&cluster, node)?;
    // the reason gives the time it waited: the deadline, plus what a loaded machine adds
    let waited_ms = reason
        .strip_prefix("sgpu: nvml.responsive: nvml hung after ")
        .and_then(|r| r.split_once(" ms"))
        .and_then(|(ms, _)| ms.parse::<u64>().ok());
    assert!(
        waited_ms.is_some_and(|ms| (2000..3000).contains(&ms)),
        "reason: {reason}"
    );
    Ok(())
}
