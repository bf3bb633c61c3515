//! sgpu's SPANK plugin (`spank_sgpu.so`) loaded by the real sbatch/srun/slurmstepd of the
//! test cluster: user options, per-step records, the end-of-job GPU report, and jobs that
//! run whatever the plugin meets.

use std::time::Duration;

use nvml_sim::State;
use sgpu_spool::{RecordBody, Usage};
use sgpu_tests::sgpu::{self, node_files};
use sgpu_tests::{Cluster, node_state};

const JOB_TIMEOUT: Duration = Duration::from_secs(90);

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The `step_usage` records of `job` on `node`, by step name.
fn step_records(
    cluster: &Cluster,
    node: &str,
    job: u32,
) -> Result<Vec<(String, Usage)>, Box<dyn std::error::Error>> {
    let mut v: Vec<(String, Usage)> = sgpu::spool_records(cluster, node, job)?
        .into_iter()
        .filter_map(|r| {
            let step = r.id().step()?.to_string();
            match r.into_parts().2 {
                RecordBody::StepUsage(u) => Some((step, u)),
                _ => None,
            }
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

/// A scratch directory for job output, readable by slurmstepd (jobs run as root here).
fn out_dir() -> Result<tempfile::TempDir, Box<dyn std::error::Error>> {
    Ok(tempfile::Builder::new()
        .prefix("sgpu-spank-test")
        .tempdir_in("/tmp")?)
}

#[test]
fn plugin_is_listed_and_its_options_are_offered() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_shared()?;
    let conf = std::fs::read_to_string(cluster.dir().join("etc/plugstack.conf"))?;
    assert!(conf.contains(&sgpu::plugstack_line(&cluster)), "{conf}");
    let help = cluster.output("sbatch", &["--help"])?;
    assert!(help.contains("--gpu-health=strict|warn|off"), "{help}");
    assert!(help.contains("--gpu-report"), "{help}");
    Ok(())
}

#[test]
fn bogus_gpu_health_is_refused_at_submission() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_shared()?;
    for prog in ["sbatch", "srun"] {
        let mut cmd = cluster.command(prog);
        cmd.arg("--gpu-health=bogus");
        if prog == "sbatch" {
            cmd.args(["--wrap", "true"]);
        } else {
            cmd.args(["-N1", "true"]);
        }
        let out = cmd.output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{prog} accepted --gpu-health=bogus");
        assert!(
            stderr.contains(&format!(
                "{prog}: error: sgpu: invalid --gpu-health value \"bogus\": expected one of \
                 strict, warn, off"
            )),
            "{prog}: {stderr}"
        );
    }
    Ok(())
}

#[test]
fn gpu_report_names_the_gpus_and_their_energy() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_exclusive()?;
    let node = "node2";
    // without healthd the report still has energy and time, and says utilization is unknown
    let _paused = sgpu::pause_healthd(&cluster, node)?;
    let state = State::load(node_files(&cluster, node).nvml_state)?;
    let dir = out_dir()?;
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let id = cluster.sbatch(
        &[
            "-w",
            node,
            "--gres=gpu:2",
            "--gpu-report",
            "-o",
            &out.to_string_lossy(),
            "-e",
            &err.to_string_lossy(),
        ],
        "echo hello; sleep 3",
    )?;
    let job = cluster.wait_job(id, JOB_TIMEOUT)?;
    assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");
    assert_eq!(std::fs::read_to_string(&out)?, "hello\n");
    let report = std::fs::read_to_string(&err)?;
    assert!(
        report.contains(&format!("sgpu: GPU report for job {id} on {node} (2 GPUs")),
        "{report}"
    );
    assert!(
        report.contains("utilization unavailable (healthd not reachable)"),
        "{report}"
    );

    let steps = step_records(&cluster, node, id)?;
    let (_, batch) = steps
        .iter()
        .find(|(s, _)| s == "batch")
        .ok_or_else(|| format!("no batch step record for job {id}: {steps:?}"))?;
    assert_eq!(batch.gpus.len(), 2);
    let wall_ms = batch.window_end - batch.window_start;
    assert!(wall_ms >= 3_000, "the job slept 3 s, window {wall_ms} ms");
    assert_eq!(batch.allocated_gpu_ms, 2 * wall_ms);
    let mut expected_total = 0.0;
    for g in &batch.gpus {
        // the report names each GPU of the job by its simulated UUID
        assert!(report.contains(&g.uuid), "{} not in {report}", g.uuid);
        let sim = state
            .gpus
            .iter()
            .find(|s| s.uuid == g.uuid)
            .ok_or_else(|| format!("record names GPU {} the node does not have", g.uuid))?;
        let power_mw = f64::from(sim.power_usage_mw.unwrap_or(0));
        let expected = power_mw * wall_ms as f64 / 1000.0;
        let delta = g.energy_mj.ok_or("no energy")? as f64;
        assert!(
            (delta - expected).abs() <= expected * 0.03,
            "gpu {}: energy {delta} mJ, power x time {expected} mJ",
            g.uuid
        );
        expected_total += expected;
    }
    // the summary's total, "energy 417.3 J (0.000116 kWh)"
    let total_j: f64 = report
        .lines()
        .find(|l| l.contains("GPU-hours; energy"))
        .and_then(|l| l.split("; energy ").nth(1))
        .and_then(|t| t.split(" J").next())
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| format!("no energy total in {report}"))?;
    let expected_j = expected_total / 1000.0;
    assert!(
        (total_j - expected_j).abs() <= expected_j * 0.03,
        "report says {total_j} J, power x time is {expected_j} J:\n{report}"
    );
    Ok(())
}

/// The `(mean, max, memory peak)` utilization the report gives `uuid`.
fn reported_utilization(report: &str, uuid: &str) -> Option<(f64, u32, u64)> {
    let line = report.lines().find(|l| l.contains(uuid))?;
    let rest = line.split("utilization mean ").nth(1)?;
    let (mean, rest) = rest.split_once("% max ")?;
    let (max, rest) = rest.split_once("%, memory peak ")?;
    let (peak, _) = rest.split_once(" MiB")?;
    Some((mean.parse().ok()?, max.parse().ok()?, peak.parse().ok()?))
}

#[test]
fn gpu_report_shows_healthd_utilization_and_idle_share() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_exclusive()?;
    let node = "node2";
    let _restore = sgpu::Restore::new(&cluster, &[node]);
    cluster.wait_node(node, Duration::from_secs(10), "in service", |r| {
        !node_state(r).1
    })?;
    sgpu::update_gpus(&cluster, node, |s| {
        for g in &mut s.gpus {
            // (memory use on an idle GPU would make healthd drain the node: leftover memory)
            g.utilization_gpu = Some(40);
        }
    })?;
    let dir = out_dir()?;
    let err = dir.path().join("err");
    let id = cluster.sbatch(
        &[
            "-w",
            node,
            "--gres=gpu:2",
            "--gpu-report",
            "-o",
            "/dev/null",
            "-e",
            &err.to_string_lossy(),
        ],
        "sleep 4",
    )?;
    let job = cluster.wait_job(id, JOB_TIMEOUT)?;
    assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");
    let report = std::fs::read_to_string(&err)?;
    assert!(
        report.contains(&format!("sgpu: GPU report for job {id} on {node} (2 GPUs")),
        "{report}"
    );
    assert!(!report.contains("unavailable"), "{report}");
    let steps = step_records(&cluster, node, id)?;
    let (_, batch) = steps
        .iter()
        .find(|(s, _)| s == "batch")
        .ok_or_else(|| format!("no batch step record for job {id}: {steps:?}"))?;
    assert_eq!(batch.gpus.len(), 2);
    for g in &batch.gpus {
        let (mean, max, peak) = reported_utilization(&report, &g.uuid)
            .ok_or_else(|| format!("no utilization for {} in {report}", g.uuid))?;
        // a sample taken before the update or after the job may differ
        assert!(
            (35.0..=41.0).contains(&mean),
            "{} mean {mean}:\n{report}",
            g.uuid
        );
        assert_eq!(max, 40, "{report}");
        assert_eq!(peak, 0, "the simulated GPUs use no memory: {report}");
    }
    let idle: f64 = report
        .lines()
        .find_map(|l| l.split("GPUs were idle ").nth(1))
        .and_then(|t| t.split('%').next())
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("no idle verdict in {report}"))?;
    assert!((59.0..=65.0).contains(&idle), "idle {idle}%:\n{report}");
    Ok(())
}

#[test]
fn two_srun_steps_give_two_step_records_and_the_batch_step() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_shared()?;
    let node = "node2";
    let id = cluster.sbatch(
        &["-w", node, "--gres=gpu:2", "-o", "/dev/null"],
        "srun --gres=gpu:1 sleep 0.5; srun --gres=gpu:2 true",
    )?;
    let job = cluster.wait_job(id, JOB_TIMEOUT)?;
    assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");
    let steps = step_records(&cluster, node, id)?;
    let names: Vec<&str> = steps.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(names, ["0", "1", "batch"], "{steps:?}");
    assert_eq!(steps[0].1.gpus.len(), 1, "step 0 asked for one GPU");
    assert_eq!(steps[1].1.gpus.len(), 2, "step 1 asked for two GPUs");
    let batch = &steps[2].1;
    for (name, u) in &steps[..2] {
        assert!(
            u.window_start >= batch.window_start && u.window_end <= batch.window_end,
            "step {name} lies within the batch step: {u:?} vs {batch:?}"
        );
        assert!(u.gpus.iter().all(|g| g.energy_mj.is_some()), "{u:?}");
    }
    assert!(steps[0].1.window_end - steps[0].1.window_start >= 500);
    Ok(())
}

#[test]
fn gpu_health_warn_reaches_the_prolog_the_job_runs_and_the_node_drains() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_exclusive()?;
    let node = "node1";
    // healthd would drain node1 before the job lands there; this test is about the prolog
    let _paused = sgpu::pause_healthd(&cluster, node)?;
    let _restore = sgpu::Restore::new(&cluster, &[node]);
    sgpu::update_gpus(&cluster, node, |s| {
        if let Some(g) = s.gpu_mut(2) {
            g.ecc.volatile_uncorrected = 3;
        }
    })?;
    let id = cluster.sbatch(
        &[
            "-w",
            node,
            "--gres=gpu:1",
            "--gpu-health=warn",
            "-o",
            "/dev/null",
        ],
        "true",
    )?;
    let job = cluster.wait_job(id, JOB_TIMEOUT)?;
    // strict would have failed the prolog and requeued the job: warn reached sgpu-prolog
    assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");
    assert_eq!(job.get("Restarts"), "0", "{job:?}");
    let rec = cluster.node(node)?;
    assert!(
        node_state(&rec).1
            && rec
                .get("Reason")
                .starts_with("sgpu: gpu.ecc_uncorrectable gpu2:"),
        "node-level policy: the node is drained even though the job ran: {rec:?}"
    );
    Ok(())
}

#[test]
fn jobs_run_when_the_spool_is_unusable() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_exclusive()?;
    let node = "node2";
    let spool = node_files(&cluster, node).spool_dir;
    // the spool refuses a world-writable directory: every write fails (root ignores mode bits)
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o777))?;
    struct Back(std::path::PathBuf);
    impl Drop for Back {
        fn drop(&mut self) {
            let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o700));
        }
    }
    let _back = Back(spool.clone());
    let dir = out_dir()?;
    let out = dir.path().join("out");
    let id = cluster.sbatch(
        &[
            "-w",
            node,
            "--gres=gpu:1",
            "--gpu-report",
            "-o",
            &out.to_string_lossy(),
        ],
        "srun true; echo done",
    )?;
    let job = cluster.wait_job(id, JOB_TIMEOUT)?;
    assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");
    let text = std::fs::read_to_string(&out)?;
    assert!(text.contains("done"), "{text}");
    // the report does not depend on the spool
    assert!(text.contains("sgpu: GPU report for job"), "{text}");
    let log = std::fs::read_to_string(cluster.dir().join(format!("log/slurmd-{node}.log")))?;
    assert!(
        log.contains(&format!("sgpu: exit: job {id} step batch: spool:")),
        "the plugin logs why it wrote no record"
    );
    Ok(())
}

#[test]
fn gpu_health_off_runs_the_job_on_a_node_with_an_xid_and_the_epilog_obeys_the_breaker() -> TestResult
{
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_exclusive()?;
    let _restore = sgpu::Restore::new(&cluster, &["node1", "node2"]);
    let node = "node1";
    let healthd_state = |n: &str| {
        std::fs::read_to_string(node_files(&cluster, n).state_dir.join("healthd-state.toml"))
            .unwrap_or_default()
    };
    // node2 drained by sgpu (an ECC fault): the circuit breaker (one sgpu-drained node of
    // two) then keeps node1 up when its healthd records an XID, so a job can land there
    sgpu::update_gpus(&cluster, "node2", |s| {
        if let Some(g) = s.gpu_mut(0) {
            g.ecc.volatile_uncorrected = 2;
        }
    })?;
    cluster.wait_node("node2", Duration::from_secs(15), "drained by sgpu", |r| {
        node_state(r).1 && r.get("Reason").starts_with("sgpu:")
    })?;
    sgpu::update_gpus(&cluster, node, |s| {
        s.inject_xid(2, 79);
    })?;
    let start = std::time::Instant::now();
    while !healthd_state(node).contains("[breaker_open]") {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "node1's healthd did not record the XID behind an open breaker: {}",
            healthd_state(node)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !node_state(&cluster.node(node)?).1,
        "the breaker keeps node1 up"
    );

    let id = cluster.sbatch(
        &[
            "-w",
            node,
            "--gres=gpu:1",
            "--gpu-health=off",
            "-o",
            "/dev/null",
        ],
        "true",
    )?;
    let job = cluster.wait_job(id, JOB_TIMEOUT)?;
    // the prolog found the XID (healthd's XID store) but --gpu-health=off skipped acting on
    // it for this job: strict would have drained the node and requeued the job
    assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");
    assert_eq!(job.get("Restarts"), "0", "{job:?}");
    let kinds: Vec<String> = sgpu::spool_records(&cluster, node, id)?
        .iter()
        .map(|r| r.id().kind().to_string())
        .collect();
    assert!(
        kinds.iter().any(|k| k == "job_start") && kinds.iter().any(|k| k == "job_end"),
        "the gates ran and recorded the job: {kinds:?}"
    );
    // node-level policy: --gpu-health=off spares the job, not the node; but the epilog,
    // like every path that drains, obeys the open breaker: node1 stays up after the job
    assert!(
        !node_state(&cluster.node(node)?).1,
        "the epilog drained past the circuit breaker: {:?}",
        cluster.node(node)?
    );
    // the breaker closes when node2 leaves sgpu's hands: then node1 is drained for the XID
    sgpu::reset_gpus(&cluster, "node2")?;
    cluster.output("scontrol", &["update", "NodeName=node2", "State=RESUME"])?;
    let rec = cluster.wait_node(node, Duration::from_secs(15), "drained by sgpu", |r| {
        node_state(r).1 && r.get("Reason").starts_with("sgpu: gpu.xid gpu2:")
    })?;
    assert!(rec.get("Reason").contains("79"), "{rec:?}");
    Ok(())
}

#[test]
fn salloc_with_srun_records_its_step() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_shared()?;
    let node = "node2";
    let out = cluster
        .command("salloc")
        .args([
            "-w",
            node,
            "--gres=gpu:1",
            "srun",
            "--gres=gpu:1",
            "sleep",
            "0.3",
        ])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "salloc failed: {stderr}");
    // "salloc: Granted job allocation 123"
    let id: u32 = stderr
        .lines()
        .find_map(|l| l.split("Granted job allocation ").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("no job id in {stderr}"))?;
    let job = cluster.wait_job(id, JOB_TIMEOUT)?;
    assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");
    let steps = step_records(&cluster, node, id)?;
    let names: Vec<&str> = steps.iter().map(|(s, _)| s.as_str()).collect();
    // an allocation without a batch script: the srun step only (no batch step)
    assert_eq!(names, ["0"], "{steps:?}");
    let step = &steps[0].1;
    assert_eq!(step.gpus.len(), 1, "{step:?}");
    assert!(step.gpus[0].energy_mj.is_some_and(|e| e > 0), "{step:?}");
    assert!(step.window_end - step.window_start >= 300, "{step:?}");
    Ok(())
}

#[test]
fn a_job_of_a_plain_user_is_captured_and_gets_its_report() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_shared()?;
    let node = "node2";
    let user = "sgpu-test-a";
    let uid: u32 =
        String::from_utf8_lossy(&cluster.command("id").args(["-u", user]).output()?.stdout)
            .trim()
            .parse()?;
    let dir = out_dir()?;
    // the job writes its output as the user
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777))?;
    let out = dir.path().join("out");
    let sub = cluster
        .command("runuser")
        .args([
            "-u",
            user,
            "--",
            "sbatch",
            "--parsable",
            "-w",
            node,
            "--gres=gpu:1",
        ])
        .args([
            "--gpu-report",
            "-o",
            &out.to_string_lossy(),
            "--wrap",
            "srun true; echo done",
        ])
        .output()?;
    assert!(
        sub.status.success(),
        "{}",
        String::from_utf8_lossy(&sub.stderr)
    );
    let id: u32 = String::from_utf8_lossy(&sub.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap_or("")
        .parse()?;
    let job = cluster.wait_job(id, JOB_TIMEOUT)?;
    assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");
    assert!(job.get("UserId").starts_with(user), "{job:?}");
    let text = std::fs::read_to_string(&out)?;
    assert!(text.contains("done"), "{text}");
    // slurmstepd (root) appends the report to the user's own output file
    assert!(
        text.contains(&format!("sgpu: GPU report for job {id} on {node} (1 GPU")),
        "{text}"
    );
    let steps = step_records(&cluster, node, id)?;
    let names: Vec<&str> = steps.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(names, ["0", "batch"], "{steps:?}");
    for (name, u) in &steps {
        assert_eq!((u.user.as_str(), u.uid), (user, uid), "step {name}: {u:?}");
    }
    Ok(())
}

/// The slurmstepd processes (`slurmstepd: [JOB.STEP]`) still running for `job`.
fn stepds_of(cluster: &Cluster, job: u32) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let ps = cluster.output("ps", &["-eo", "pid=,args="])?;
    let tag = format!("slurmstepd: [{job}.");
    Ok(ps
        .lines()
        .filter(|l| l.contains(&tag))
        .map(str::to_string)
        .collect())
}

#[test]
fn no_plugin_thread_is_alive_when_slurmstepd_forks() -> TestResult {
    // The plugin reads a step's start on a thread started in task_post_fork. A task that ends
    // within milliseconds makes slurmstepd fork again (here `srun --task-epilog`, which it
    // runs right after the task exits, before task_exit) while that thread would still be in
    // a slow nvmlInit. The simulator records, after every fork of a process that loaded it,
    // how many NVML calls other threads were inside.
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_exclusive()?;
    let node = "node2";
    let _restore = sgpu::Restore::new(&cluster, &[node]);
    let dir = out_dir()?;
    let forks = dir.path().join("forks.log");
    sgpu::update_gpus(&cluster, node, |s| {
        s.init_delay_ms = 200;
        s.fork_log = Some(forks.clone());
    })?;
    let log_path = cluster.dir().join(format!("log/slurmd-{node}.log"));
    let log_before = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
    let out = dir.path().join("out");
    let rounds = 15;
    // two tasks per step: two task epilogs, so each step forks again once the plugin's
    // thread has loaded the simulator (glibc runs no parent handler registered while the
    // fork's own prepare handlers run: a fork that waited for the simulator's loading
    // cannot be seen by it)
    let id = cluster.sbatch(
        &[
            "-w",
            node,
            "-n2",
            "--gres=gpu:1",
            "-o",
            &out.to_string_lossy(),
        ],
        &format!(
            "for i in $(seq {rounds}); do \
               srun -n2 --gres=gpu:1 --task-epilog=/bin/true /bin/true && echo step-ok; \
               srun -n1 --gres=gpu:1 /bin/true && echo step-ok; \
             done"
        ),
    )?;
    let job = cluster.wait_job(id, JOB_TIMEOUT)?;
    assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");
    let text = std::fs::read_to_string(&out)?;
    assert_eq!(
        text.lines().filter(|l| *l == "step-ok").count(),
        2 * rounds,
        "every step succeeds: {text}"
    );
    // no slurmstepd of the job is left (none hangs on the plugin)
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = stepds_of(&cluster, id)?;
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slurmstepd left: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let lines = std::fs::read_to_string(&forks)?;
    let stepd: Vec<&str> = lines
        .lines()
        .filter(|l| l.contains(" prog=slurmstepd "))
        .collect();
    let busy: Vec<&&str> = stepd
        .iter()
        .filter(|l| !l.ends_with(" in_flight=0"))
        .collect();
    assert!(
        busy.is_empty(),
        "slurmstepd forked while a thread was inside NVML ({} of {} forks): {busy:?}",
        busy.len(),
        stepd.len()
    );
    // the record is not vacuous: each step's second task epilog at least was forked with the
    // simulator loaded
    assert!(
        stepd.len() >= rounds,
        "{} slurmstepd forks seen: {lines}",
        stepd.len()
    );
    let log = std::fs::read(&log_path)?;
    let log = String::from_utf8_lossy(log.get(log_before as usize..).unwrap_or_default());
    assert!(
        !log.contains("sgpu: slurmstepd forks while"),
        "the plugin never gave up waiting: {log}"
    );
    // and the steps were captured, slow driver or not
    let steps = step_records(&cluster, node, id)?;
    assert_eq!(steps.len(), 2 * rounds + 1, "{steps:?}");
    assert!(
        steps
            .iter()
            .all(|(_, u)| u.gpus.len() == 1 && u.gpus[0].energy_mj.is_some()),
        "{steps:?}"
    );
    Ok(())
}
