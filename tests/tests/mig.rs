//! MIG slices as Slurm gres on a cluster of its own (`/tmp/sgpu-cluster-h18b`, 2 nodes, ports
//! 17720+, healthd status 18721+): GPU 0 of each node is split into 1g.10gb (GPU instance 7),
//! 1g.10gb (8) and 2g.20gb (3), given to Slurm as sites do (`gpu:<profile>` types, one
//! gres.conf line per slice with `MultipleFiles=` of the GPU's and the GPU instance's device
//! files), GPU 1 whole. A job on the 2g.20gb slice is gated on its slice and its GPU: it
//! passes while a neighbour slice is busy, its records and healthd's `/status` name the
//! slice, its job_end states the slice's share (2 of 7) and acctd bills 2/7 of its time, in a
//! report grouped by GPU model and MIG profile too (with the slice's whole time as its
//! slice-hours, and selected by `-G` with the parent GPU's model), and `sgpu seff` counts it
//! the same way under its parent GPU's model; a fault of the parent GPU drains the node
//! with a reason naming GPU and slice. The cluster runs slurmdbd: `sacct` counts the slice as
//! one `gres/gpu` over the same time as the record, which sgpu bills at 2/7.
//! The cluster is brought down at the end.

use std::path::Path;
use std::time::Duration;

use nvml_sim::{Process, State};
use sgpu_acct_client::{Client, ClientAuth};
use sgpu_spool::{MigShare, Record, RecordBody};
use sgpu_tests::acctd::Acctd;
use sgpu_tests::cluster::repo_root;
use sgpu_tests::sgpu::{self, node_files};
use sgpu_tests::{Cluster, node_state, poll};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const DIR: &str = "/tmp/sgpu-cluster-h18b";
const PORT: &str = "17720";
const MIG: &str = "1g.10gb:7 1g.10gb:8 2g.20gb:3";
const JOB_TIMEOUT: Duration = Duration::from_secs(90);

/// Brings the cluster down (also when the test fails).
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

/// The MIG- UUID of GPU 0's slice in GPU instance `gi` on `node`.
fn slice_uuid(
    cluster: &Cluster,
    node: &str,
    gi: u32,
) -> Result<String, Box<dyn std::error::Error>> {
    let state = State::load(node_files(cluster, node).nvml_state)?;
    let gpu = state.gpu(0).ok_or("no GPU 0")?;
    let m = gpu
        .mig_instances()
        .iter()
        .find(|m| m.gpu_instance_id == gi)
        .ok_or_else(|| format!("{node}: GPU 0 has no GPU instance {gi}: {:?}", gpu.mig))?;
    Ok(m.uuid.clone())
}

/// Cancels `id` until it sticks (a cancel during the prolog is undone by Slurm's requeue).
fn cancel(cluster: &Cluster, id: u32) -> TestResult {
    let start = std::time::Instant::now();
    loop {
        let _ = cluster.output("scancel", &[&id.to_string()]);
        std::thread::sleep(Duration::from_millis(300));
        let job = cluster.job(id)?;
        if sgpu_tests::cluster::TERMINAL_JOB_STATES.contains(&job.get("JobState")) {
            return Ok(());
        }
        if start.elapsed() > JOB_TIMEOUT {
            return Err(format!("job {id} cannot be cancelled: {job:?}").into());
        }
    }
}

#[test]
fn a_job_on_a_mig_slice_is_gated_sampled_and_drains_naming_gpu_and_slice() -> TestResult {
    let _down = Down;
    let cluster = Cluster::up_in(
        Path::new(DIR),
        &[
            ("SGPU_CLUSTER_NODES", "2"),
            ("SGPU_CLUSTER_GPUS", "2"),
            ("SGPU_CLUSTER_PORT", PORT),
            ("SGPU_CLUSTER_MIG", MIG),
            // Slurm's accounting, to compare its gres/gpu count and time with the records
            ("SGPU_CLUSTER_SLURMDBD", "1"),
        ],
    )?;
    let _lock = cluster.lock_exclusive()?;
    let (n1, n2) = ("node1", "node2");
    let _restore = sgpu::Restore::new(&cluster, &[n1, n2]);
    for n in [n1, n2] {
        sgpu::reset_gpus(&cluster, n)?;
        cluster.wait_node(n, Duration::from_secs(30), "in service", |r| {
            !node_state(r).1
        })?;
    }
    // Slurm sees the slices as typed GPUs
    let gres = cluster.node(n1)?.get("Gres").to_string();
    assert!(
        gres.contains("gpu:1g.10gb:2") && gres.contains("gpu:2g.20gb:1"),
        "{gres}"
    );
    let uuid = slice_uuid(&cluster, n1, 3)?;

    // 1. a healthy job on the 2g.20gb slice, while a neighbour slice (GPU instance 7) runs
    // another process with memory in use: the GPU's own lists show it, the job's slice not
    sgpu::update_gpus(&cluster, n1, |st| {
        if let Some(m) = st
            .gpu_mut(0)
            .and_then(|g| g.mig.as_mut())
            .and_then(|m| m.instances.iter_mut().find(|m| m.gpu_instance_id == 7))
        {
            m.memory_used_mib = 6000;
            m.processes.push(Process {
                pid: 4711,
                used_memory_mib: Some(5900),
                kind: Default::default(),
            });
        }
    })?;
    let id = cluster.sbatch(
        &["-w", n1, "--gres=gpu:2g.20gb:1", "-o", "/dev/null"],
        "sleep 6",
    )?;
    // while it runs, healthd maps the slice to the job
    let status = poll(
        JOB_TIMEOUT,
        "healthd's /status showing the slice's job",
        || {
            let (code, body) = sgpu::healthd_get(&cluster, n1, "/status")?;
            if code != 200 {
                return Ok(None);
            }
            let doc: serde_json::Value = serde_json::from_str(&body)?;
            let held = doc["gpus"].as_array().is_some_and(|gs| {
                gs.iter().any(|g| {
                    g["uuid"].as_str() == Some(uuid.as_str())
                        && g["job_id"].as_u64() == Some(u64::from(id))
                })
            });
            Ok(held.then_some(doc))
        },
    )?;
    let slice_doc = status["gpus"]
        .as_array()
        .and_then(|gs| {
            gs.iter()
                .find(|g| g["uuid"].as_str() == Some(uuid.as_str()))
        })
        .ok_or("no slice in /status")?;
    assert_eq!(slice_doc["index"].as_u64(), Some(0), "{slice_doc}");
    assert!(
        slice_doc["name"]
            .as_str()
            .is_some_and(|n| n.ends_with("MIG 2g.20gb")),
        "{slice_doc}"
    );
    // the slice by its parent GPU and profile, with no utilization (none per slice)
    assert_eq!(slice_doc["mig_profile"], "2g.20gb", "{slice_doc}");
    let parent = status["gpus"]
        .as_array()
        .and_then(|gs| {
            gs.iter()
                .find(|g| g["index"].as_u64() == Some(0) && g.get("mig_parent_uuid").is_none())
        })
        .and_then(|g| g["uuid"].as_str())
        .ok_or_else(|| format!("no parent GPU 0 in /status: {status}"))?;
    assert!(parent.starts_with("GPU-"), "{status}");
    assert_eq!(slice_doc["mig_parent_uuid"], parent, "{slice_doc}");
    assert!(slice_doc["utilization_pct"].is_null(), "{slice_doc}");
    let job_gpu = status["jobs"]
        .as_array()
        .and_then(|js| {
            js.iter()
                .find(|j| j["job_id"].as_u64() == Some(u64::from(id)))
        })
        .and_then(|j| j["gpus"].as_array())
        .and_then(|gs| {
            gs.iter()
                .find(|g| g["uuid"].as_str() == Some(uuid.as_str()))
        })
        .ok_or_else(|| format!("no job slice in /status: {status}"))?;
    assert_eq!(job_gpu["mig_profile"], "2g.20gb", "{job_gpu}");
    assert_eq!(job_gpu["mig_parent_uuid"], parent, "{job_gpu}");
    assert_eq!(job_gpu["samples"].as_u64(), Some(0), "{job_gpu}");
    let job = cluster.wait_job(id, JOB_TIMEOUT)?;
    assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");
    assert!(
        !node_state(&cluster.node(n1)?).1,
        "a busy neighbour slice drains nothing"
    );
    let recs = sgpu::spool_records(&cluster, n1, id)?;
    let start = recs
        .iter()
        .find_map(|r| match r.body() {
            RecordBody::JobStart(s) => Some(s),
            _ => None,
        })
        .ok_or_else(|| format!("no job_start record for job {id}: {recs:?}"))?;
    assert_eq!(start.gpus.len(), 1, "{start:?}");
    assert_eq!(
        start.gpus[0].uuid, uuid,
        "the record names the job's slice: {start:?}"
    );
    assert_eq!(
        start.gpus[0].name.as_deref(),
        Some("NVIDIA H100 80GB HBM3 MIG 2g.20gb")
    );
    assert_eq!(
        start.gpus[0].energy_mj, None,
        "NVML has no energy per slice"
    );
    // the SPANK plugin's batch step record names the slice too, without the GPU's energy
    let step = recs
        .iter()
        .find_map(|r| match (r.id().step(), r.body()) {
            (Some("batch"), RecordBody::StepUsage(u)) => Some(u),
            _ => None,
        })
        .ok_or_else(|| format!("no batch step record for job {id}: {recs:?}"))?;
    assert_eq!(step.gpus.len(), 1, "{step:?}");
    assert_eq!(step.gpus[0].uuid, uuid, "{step:?}");
    assert_eq!(step.gpus[0].energy_mj, None, "{step:?}");
    billed_by_share(&recs, id)?;
    slurm_counts_the_slice_as_one_gpu(&cluster, &recs, id)?;

    // 2. a fault of the parent GPU the prolog finds (healthd paused, so the gate is first):
    // the node is drained with a reason that names the GPU and the job's slice
    {
        let _paused = sgpu::pause_healthd(&cluster, n1)?;
        sgpu::update_gpus(&cluster, n1, |st| {
            if let Some(g) = st.gpu_mut(0) {
                g.ecc.volatile_uncorrected = 2;
            }
        })?;
        let id = cluster.sbatch(
            &["-w", n1, "--gres=gpu:2g.20gb:1", "-o", "/dev/null"],
            "true",
        )?;
        let rec = cluster.wait_node(n1, JOB_TIMEOUT, "drained by sgpu", |r| {
            node_state(r).1 && r.get("Reason").starts_with("sgpu:")
        })?;
        cancel(&cluster, id)?;
        let reason = rec.get("Reason");
        assert!(
            reason.starts_with("sgpu: gpu.ecc_uncorrectable gpu0 MIG 2g.20gb (GI 3 CI 0): "),
            "{reason}"
        );
        assert!(!node_state(&cluster.node(n2)?).1, "node2 is left alone");
        sgpu::reset_gpus(&cluster, n1)?;
    }
    Ok(())
}

/// The job_end of `job` (one 2g.20gb slice of an H100) states the slice's share and its
/// share of the GPU's energy; acctd, given the job's records, bills 2/7 of its allocated time,
/// and a report grouped by GPU model and MIG profile (`sgpu report --group-by gpu,profile`)
/// shows it under the parent GPU's model and the profile, with its energy.
fn billed_by_share(recs: &[Record], job: u32) -> TestResult {
    let end = recs
        .iter()
        .find_map(|r| match r.body() {
            RecordBody::JobEnd(e) => Some(e),
            _ => None,
        })
        .ok_or_else(|| format!("no job_end record for job {job}: {recs:?}"))?;
    assert_eq!(end.gpus.len(), 1, "{end:?}");
    let share = MigShare {
        profile: "2g.20gb".into(),
        slices: 2,
        of: 7,
    };
    assert_eq!(end.gpus[0].mig.as_ref(), Some(&share), "{end:?}");
    // NVML counts energy per GPU: the slice's share of its GPU's energy over the job
    let energy = end.gpus[0]
        .energy_delta_mj
        .ok_or_else(|| format!("no energy share for the slice: {end:?}"))?;
    assert!(energy > 0, "{end:?}");
    assert_eq!(
        end.gpus[0].energy_start_mj, None,
        "the GPU's counter is not the slice's"
    );
    let device_ms = end.allocated_gpu_ms;
    assert!(device_ms >= 1_000, "the job ran for seconds: {end:?}");
    // 2/7 of the slice's time, to the nearest ms
    let billed = (device_ms * 2 * 2 + 7) / 14;
    assert_eq!(end.allocated_gpu_equiv_ms(), billed);

    let acctd = Acctd::start(&["--auth", "none"])?;
    let client = Client::new(&acctd.url(), ClientAuth::None, Duration::from_secs(30))?;
    let reply = client.post_records(&serde_json::to_vec(recs)?)?;
    assert_eq!(reply.rejected, 0, "{:?}", reply.results);
    let (from_s, to_s) = (end.start_time / 1000 - 3_600, end.end_time / 1000 + 3_600);
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("sgpu.toml");
    std::fs::write(&config, "[accounting]\nauth = \"none\"\n")?;
    let sgpu = |args: &[&str]| -> Result<String, Box<dyn std::error::Error>> {
        let out = std::process::Command::new(sgpu::cargo_bin("sgpu-cli", "sgpu")?)
            .arg("--config")
            .arg(&config)
            .args(["--acctd", &acctd.url()])
            .args(args)
            .output()?;
        if !out.status.success() {
            return Err(format!("sgpu {args:?}: {out:?}").into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (from, to) = (from_s.to_string(), to_s.to_string());
    let report = |extra: &[&str]| -> Result<String, Box<dyn std::error::Error>> {
        let mut args = vec!["report", "--utc", "-S", &from, "-E", &to];
        args.extend(["--group-by", "gpu,profile"]);
        args.extend(extra);
        sgpu(&args)
    };
    // acctd's sums, exactly: one row, the parent GPU's model, the profile, 2/7 of the time
    let doc: serde_json::Value = serde_json::from_str(&report(&["--json"])?)?;
    let rows = doc["rows"].as_array().ok_or("no rows")?;
    assert_eq!(rows.len(), 1, "{doc}");
    assert_eq!(rows[0]["gpu"], "NVIDIA H100 80GB HBM3", "{doc}");
    assert_eq!(rows[0]["profile"], "2g.20gb", "{doc}");
    assert_eq!(rows[0]["allocated_gpu_ms"].as_u64(), Some(billed), "{doc}");
    assert_eq!(rows[0]["jobs"].as_u64(), Some(1), "{doc}");
    assert_eq!(rows[0]["energy_mj"].as_u64(), Some(energy), "{doc}");
    // and its slice-hours: the slice's whole allocated time, once
    assert_eq!(rows[0]["slice_ms"].as_u64(), Some(device_ms), "{doc}");
    // healthd samples no utilization per slice: used time, utilization and waste unknown
    // (null), measured over 0 GPU-ms; never a made-up 0
    for k in [
        "used_gpu_ms",
        "used_gpu_hours",
        "gpu_util_pct",
        "waste_gpu_hours",
    ] {
        assert!(rows[0][k].is_null(), "{k}: {doc}");
    }
    assert_eq!(rows[0]["used_measured_gpu_ms"].as_u64(), Some(0), "{doc}");
    assert_eq!(
        report(&["-P", "-n", "-o", "GPUModel,Profile,Jobs"])?,
        "NVIDIA H100 80GB HBM3|2g.20gb|1\n"
    );
    // the table: UsedGPUHours and GPUUtil empty, MeasuredGPUHours beside them says over
    // what time (0.00 here)
    let table = report(&[])?;
    let header = table
        .lines()
        .nth(1)
        .ok_or_else(|| format!("no header: {table}"))?;
    assert!(
        header.contains("UsedGPUHours MeasuredGPUHours GPUUtil"),
        "{table}"
    );
    assert_eq!(
        report(&[
            "-P",
            "-n",
            "-o",
            "Profile,UsedGPUHours,MeasuredGPUHours,GPUUtil"
        ])?,
        "2g.20gb||0.00|\n"
    );
    // -G with the parent GPU's model selects its slice; another model selects nothing
    let doc: serde_json::Value =
        serde_json::from_str(&report(&["--json", "-G", "NVIDIA H100 80GB HBM3"])?)?;
    assert_eq!(doc["rows"].as_array().map(Vec::len), Some(1), "{doc}");
    assert_eq!(
        doc["rows"][0]["slice_ms"].as_u64(),
        Some(device_ms),
        "{doc}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&report(&["--json", "-G", "NVIDIA A100-SXM4-40GB"])?)?;
    assert_eq!(doc["rows"].as_array().map(Vec::len), Some(0), "{doc}");

    // sgpu seff counts the slice as billed (2/7 of its time), its slice-hours apart, and
    // shows it under its parent GPU's model with its profile and share
    let cluster = recs.first().ok_or("no records")?.id().cluster();
    let id = job.to_string();
    let seff = ["seff", &id, "-M", cluster, "--sacct", "/bin/false"];
    let doc: serde_json::Value = serde_json::from_str(&sgpu(&[&seff[..], &["--json"]].concat())?)?;
    let gpu = &doc["gpu"];
    assert_eq!(gpu["allocated_gpu_ms"].as_u64(), Some(billed), "{doc}");
    assert_eq!(gpu["slice_ms"].as_u64(), Some(device_ms), "{doc}");
    let g = &gpu["gpus"][0];
    assert_eq!(g["allocated_gpu_ms"].as_u64(), Some(billed), "{doc}");
    assert_eq!(g["slice_ms"].as_u64(), Some(device_ms), "{doc}");
    assert_eq!(g["energy_mj"].as_u64(), Some(energy), "{doc}");
    assert_eq!(
        g["mig"],
        serde_json::json!({"profile": "2g.20gb", "parent_model": "NVIDIA H100 80GB HBM3",
                           "slices": 2, "of": 7}),
        "{doc}"
    );
    let text = sgpu(&seff)?;
    let row = text
        .lines()
        .find(|l| l.contains("2g.20gb (2/7)"))
        .ok_or_else(|| format!("no slice row in seff's table: {text}"))?;
    assert!(row.contains("NVIDIA H100 80GB HBM3"), "{text}");
    assert!(
        text.contains(&format!(
            "GPU-hours: allocated {:.4}",
            billed as f64 / 3.6e6
        )),
        "{text}"
    );
    assert!(text.contains("MIG slice-hours: "), "{text}");
    Ok(())
}

/// Slurm's accounting of the slice's job (`sacct`: `gres/gpu` in AllocTRES, ElapsedRaw)
/// against the job_end: Slurm counts the slice as one GPU, as the record's device count
/// does, over the same window (`allocated_gpu_ms` = gres/gpu x ElapsedRaw x 1000, the
/// epilog's window being slurmctld's); sgpu bills 2/7 of that.
fn slurm_counts_the_slice_as_one_gpu(cluster: &Cluster, recs: &[Record], job: u32) -> TestResult {
    let end = recs
        .iter()
        .find_map(|r| match r.body() {
            RecordBody::JobEnd(e) => Some(e),
            _ => None,
        })
        .ok_or_else(|| format!("no job_end record for job {job}"))?;
    let id = job.to_string();
    let line = poll(JOB_TIMEOUT, "slurmdbd's record of the job", || {
        let out = cluster.output(
            "sacct",
            &[
                "-X",
                "-P",
                "-n",
                "-o",
                "JobID,AllocTRES,ElapsedRaw,State",
                "-j",
                &id,
            ],
        )?;
        Ok(out
            .lines()
            .find(|l| l.starts_with(&format!("{id}|")) && l.ends_with("|COMPLETED"))
            .map(str::to_string))
    })?;
    let f: Vec<&str> = line.split('|').collect();
    let gres: u64 = f[1]
        .split(',')
        .find_map(|t| t.strip_prefix("gres/gpu="))
        .ok_or_else(|| format!("no gres/gpu in AllocTRES: {line}"))?
        .parse()?;
    let elapsed_s: u64 = f[2].parse()?;
    assert_eq!(gres, 1, "Slurm counts the slice as one GPU: {line}");
    assert_eq!(end.gpus.len() as u64, gres, "{line} vs {end:?}");
    assert!(
        end.slurm_window.is_some(),
        "the epilog read slurmctld's window: {end:?}"
    );
    assert_eq!(
        end.allocated_gpu_ms,
        gres * elapsed_s * 1000,
        "{line} vs {end:?}"
    );
    assert_eq!(
        end.allocated_gpu_equiv_ms(),
        (gres * elapsed_s * 1000 * 2 * 2 + 7) / 14,
        "2/7 of Slurm's GPU time"
    );
    Ok(())
}
