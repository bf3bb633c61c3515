//! The real Slurm test cluster: GPU jobs get the GPUs they asked for, and a drained node
//! shows its reason and comes back when resumed.

use std::time::Duration;

use sgpu_tests::{Cluster, node_state};

const JOB_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn gpu_job_sees_the_gpus_it_asked_for() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_shared()?;
    let out_dir = tempfile::tempdir()?;
    let out = out_dir.path().join("job.out");
    let out_arg = format!("--output={}", out.display());
    let id = cluster.sbatch(
        &["--gres=gpu:2", "-N1", &out_arg],
        "echo \"JOB_GPUS=$SLURM_JOB_GPUS\"; echo \"CVD=$CUDA_VISIBLE_DEVICES\"; echo \"NODE=$SLURMD_NODENAME\"",
    )?;
    let rec = cluster.wait_job(id, JOB_TIMEOUT)?;
    assert_eq!(rec.get("JobState"), "COMPLETED", "job {id}: {rec:?}");
    let text = std::fs::read_to_string(&out)?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_default()
            .to_string()
    };
    let job_gpus = field("JOB_GPUS");
    let gpus: Vec<&str> = job_gpus.split(',').collect();
    assert_eq!(gpus.len(), 2, "SLURM_JOB_GPUS should list two GPUs: {text}");
    for g in &gpus {
        let idx: u32 = g.parse()?;
        assert!(idx < 4, "GPU index {idx} out of the node's 0..4: {text}");
    }
    assert_ne!(gpus[0], gpus[1], "two distinct GPUs: {text}");
    assert_eq!(
        field("CVD").split(',').count(),
        2,
        "CUDA_VISIBLE_DEVICES: {text}"
    );
    assert!(
        cluster.nodes()?.contains(&field("NODE")),
        "ran on a cluster node: {text}"
    );
    Ok(())
}

#[test]
fn two_jobs_on_one_node_get_disjoint_gpus() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_shared()?;
    let dir = tempfile::tempdir()?;
    let mut ids = Vec::new();
    for i in 0..2 {
        let out = format!("--output={}/job{i}.out", dir.path().display());
        // both jobs hold their GPUs at the same time: each waits for the other's file
        let script = format!(
            "echo $SLURM_JOB_GPUS > {d}/gpus{i}; for t in $(seq 100); do [ -e {d}/gpus{o} ] && break; sleep 0.1; done",
            d = dir.path().display(),
            o = 1 - i
        );
        ids.push(cluster.sbatch(&["--gres=gpu:2", "-w", "node1", "-n1", &out], &script)?);
    }
    for id in &ids {
        let rec = cluster.wait_job(*id, JOB_TIMEOUT)?;
        assert_eq!(rec.get("JobState"), "COMPLETED", "job {id}: {rec:?}");
    }
    let read = |i: usize| -> Result<Vec<String>, std::io::Error> {
        let s = std::fs::read_to_string(dir.path().join(format!("gpus{i}")))?;
        Ok(s.trim().split(',').map(str::to_string).collect())
    };
    let (a, b) = (read(0)?, read(1)?);
    assert_eq!(a.len(), 2);
    assert_eq!(b.len(), 2);
    assert!(
        a.iter().all(|g| !b.contains(g)),
        "GPUs overlap: {a:?} vs {b:?}"
    );
    Ok(())
}

#[test]
fn drained_node_shows_reason_and_resumes() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_exclusive()?;
    let node = "node2";
    let reason = "sgpu-test: drain and resume";
    // put the node back whatever happens below
    struct Resume<'a>(&'a Cluster, &'a str);
    impl Drop for Resume<'_> {
        fn drop(&mut self) {
            let _ = self.0.output(
                "scontrol",
                &["update", &format!("NodeName={}", self.1), "State=RESUME"],
            );
        }
    }
    let _resume = Resume(&cluster, node);
    cluster.output(
        "scontrol",
        &[
            "update",
            &format!("NodeName={node}"),
            "State=DRAIN",
            &format!("Reason={reason}"),
        ],
    )?;
    let rec = cluster.wait_node(node, JOB_TIMEOUT, "drained", |r| node_state(r).1)?;
    assert_eq!(
        rec.get("Reason").split(" [").next(),
        Some(reason),
        "{rec:?}"
    );
    let sinfo = cluster.output("sinfo", &["-R", "-h", "-o", "%N|%E"])?;
    assert!(
        sinfo.lines().any(|l| l == format!("{node}|{reason}")),
        "sinfo -R: {sinfo}"
    );

    // a job aimed at the drained node does not start there
    let id = cluster.sbatch(&["-w", node, "--gres=gpu:1"], "true")?;
    std::thread::sleep(Duration::from_secs(2));
    let job = cluster.job(id)?;
    assert_eq!(job.get("JobState"), "PENDING", "{job:?}");
    cluster.output("scancel", &[&id.to_string()])?;

    cluster.output(
        "scontrol",
        &["update", &format!("NodeName={node}"), "State=RESUME"],
    )?;
    let rec = cluster.wait_node(node, JOB_TIMEOUT, "resumed", |r| !node_state(r).1)?;
    assert_eq!(node_state(&rec).0, "IDLE", "{rec:?}");
    Ok(())
}
