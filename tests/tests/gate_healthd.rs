//! The gates take the GPUs' readings from sgpu-healthd on the real test cluster (a cluster
//! of its own, `/tmp/sgpu-cluster-h20g`, ports 17700+; healthd's status ports 18701+): with
//! healthd running the prolog's readings are healthd's (the job note says so), a leftover
//! process on the job's GPU, which only healthd's fresh read at the request can see (healthd's
//! own `full` runs do not judge leftovers), still drains the node with the same reason; with
//! healthd stopped the gates read NVML themselves and the job runs with its records.

use std::path::Path;
use std::time::Duration;

use nvml_sim::state::{Process, ProcessKind};
use sgpu_spool::RecordBody;
use sgpu_tests::cluster::repo_root;
use sgpu_tests::sgpu::{self, node_files};
use sgpu_tests::{Cluster, node_state, poll};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const DIR: &str = "/tmp/sgpu-cluster-h20g";
const PORT: &str = "17700";
const JOB_TIMEOUT: Duration = Duration::from_secs(90);

/// Takes the cluster down when the test ends, however it ends.
struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        let _ = std::process::Command::new(repo_root().join("tests/cluster/down"))
            .arg("--keep-munge")
            .env("SGPU_CLUSTER_DIR", DIR)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The `readings` of job `id`'s prolog note on `node` (run 0), once the note exists.
fn note_readings(
    cluster: &Cluster,
    node: &str,
    id: u32,
) -> Result<String, Box<dyn std::error::Error>> {
    let path = sgpu_spool::job_note::path(&node_files(cluster, node).state_dir, id, 0);
    poll(JOB_TIMEOUT, "the prolog's job note", || {
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        let v: serde_json::Value = serde_json::from_str(&text)?;
        Ok(Some(v["readings"].as_str().unwrap_or("absent").to_string()))
    })
}

/// Asks healthd's gate socket as a gate would (every GPU read fresh) and returns its answer.
fn ask_healthd(socket: &Path, node: &str) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(JOB_TIMEOUT))?;
    let request = serde_json::json!({"version": 1, "node": node, "minors": null});
    s.write_all(format!("{request}\n").as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    Ok(serde_json::from_slice(&body)?)
}

/// Runs a `sleep` job on `node`, returns the prolog's readings source; checks the job
/// completed with both records.
fn job_on(cluster: &Cluster, node: &str) -> Result<String, Box<dyn std::error::Error>> {
    let id = cluster.sbatch(&["-w", node, "--gres=gpu:1", "-o", "/dev/null"], "sleep 4")?;
    let readings = note_readings(cluster, node, id)?;
    let job = cluster.wait_job(id, JOB_TIMEOUT)?;
    assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");
    let recs = sgpu::spool_records(cluster, node, id)?;
    let start = recs.iter().find_map(|r| match r.body() {
        RecordBody::JobStart(s) => Some(s.clone()),
        _ => None,
    });
    let end = recs.iter().find_map(|r| match r.body() {
        RecordBody::JobEnd(e) => Some(e.clone()),
        _ => None,
    });
    let (start, end) = (start.ok_or("no job_start")?, end.ok_or("no job_end")?);
    assert_eq!(start.gpus.len(), 1, "{start:?}");
    assert_eq!(end.gpus.len(), 1, "{end:?}");
    let g = &end.gpus[0];
    assert!(
        g.energy_start_mj.is_some() && g.energy_end_mj.is_some() && g.energy_delta_mj.is_some(),
        "energy at both ends: {g:?}"
    );
    Ok(readings)
}

#[test]
fn gates_read_healthd_and_fall_back_to_nvml() -> TestResult {
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
        cluster.wait_node(n, JOB_TIMEOUT, "idle", |r| r.get("State") == "IDLE")?;
        // healthd serves its gate socket once it read its first snapshot
        let socket = node_files(&cluster, n).gate_socket;
        poll(JOB_TIMEOUT, "healthd's gate socket", || {
            Ok(socket.exists().then_some(()))
        })?;
    }

    // healthd running: the prolog takes its readings, and the job's records are whole
    assert_eq!(job_on(&cluster, n2)?, "healthd");

    // a leftover process on node1's GPU: healthd's own runs do not judge it, the prolog
    // does, on healthd's readings read at the request
    sgpu::update_gpus(&cluster, n1, |s| {
        if let Some(g) = s.gpu_mut(0) {
            g.processes.push(Process {
                pid: 777_777,
                used_memory_mib: Some(512),
                kind: ProcessKind::Compute,
            });
        }
    })?;
    let id = cluster.sbatch(&["-w", n1, "--gres=gpu:1", "-o", "/dev/null"], "true")?;
    let rec = cluster.wait_node(n1, JOB_TIMEOUT, "drained by sgpu", |r| {
        node_state(r).1 && r.get("Reason").starts_with("sgpu:")
    })?;
    let reason = rec.get("Reason");
    assert!(
        reason.starts_with("sgpu: gpu.leftover_processes gpu0:"),
        "the reason names the check and the GPU: {reason}"
    );
    let _ = cluster.output("scancel", &[&id.to_string()]);
    // what the prolog was answered: healthd's snapshot shows the process it read fresh
    let socket = node_files(&cluster, n1).gate_socket;
    let answer = ask_healthd(&socket, n1)?;
    let pids: Vec<u64> = answer["snapshot"]["gpus"][0]["compute_processes"]["value"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p["pid"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(pids, vec![777_777], "healthd's answer: {answer}");

    // healthd stopped on node2: the gates read NVML themselves, the job runs as before
    let paused = sgpu::pause_healthd(&cluster, n2)?;
    assert!(
        !node_files(&cluster, n2).gate_socket.exists(),
        "a stopped healthd leaves no socket"
    );
    assert_eq!(job_on(&cluster, n2)?, "nvml");
    drop(paused);
    Ok(())
}
