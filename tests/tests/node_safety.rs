//! Node safety on the real test cluster: an admin's DOWN or FAIL is never drained over nor
//! resumed by healthd, and what a job's script exports never becomes a record's identity or
//! a path the SPANK plugin (root, in slurmstepd) opens.

use std::time::Duration;

use sgpu_spool::RecordBody;
use sgpu_tests::sgpu::{self, HEALTHD_INTERVAL_S, HEALTHD_RESUME_AFTER, node_files};
use sgpu_tests::{Cluster, poll};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const INTERVAL: Duration = Duration::from_secs(HEALTHD_INTERVAL_S);
const JOB_TIMEOUT: Duration = Duration::from_secs(90);

fn healthd_json(
    cluster: &Cluster,
    node: &str,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let (code, body) = sgpu::healthd_get(cluster, node, "/status")?;
    assert_eq!(code, 200, "{body}");
    Ok(serde_json::from_str(&body)?)
}

#[test]
fn admin_down_and_fail_are_never_drained_over_nor_resumed() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_exclusive()?;
    let node = "node1";
    let _restore = sgpu::Restore::new(&cluster, &[node]);
    cluster.wait_node(node, Duration::from_secs(10), "in service", |r| {
        !sgpu_tests::node_state(r).1
    })?;
    for (state, reason) in [("DOWN", "admin: power supply"), ("FAIL", "admin: fan swap")] {
        sgpu::reset_gpus(&cluster, node)?;
        cluster.output(
            "scontrol",
            &[
                "update",
                &format!("NodeName={node}"),
                &format!("State={state}"),
                &format!("Reason={reason}"),
            ],
        )?;
        // a GPU falls off the bus on the admin's node: healthd runs at once, and leaves it
        sgpu::update_gpus(&cluster, node, |s| {
            s.inject_xid(0, 79);
        })?;
        poll(INTERVAL * 4, "healthd to see the XID and hold off", || {
            let doc = healthd_json(&cluster, node)?;
            let h = &doc["health"];
            let failing = h["verdict"].as_str() == Some("drain");
            let held = h["decision"].as_str() == Some("held_by_others")
                && h["decision_detail"]
                    .as_str()
                    .is_some_and(|d| d.contains(state) && d.contains(reason));
            Ok((failing && held).then_some(()))
        })?;
        // a few more runs, then the node still carries the admin's state and reason
        std::thread::sleep(INTERVAL * (HEALTHD_RESUME_AFTER + 1));
        let rec = cluster.node(node)?;
        assert!(
            rec.get("State").contains(state) && rec.get("Reason").starts_with(reason),
            "{state}: sgpu touched the admin's node: {rec:?}"
        );
        assert!(!rec.get("Reason").starts_with("sgpu:"), "{rec:?}");
        // healthy again: still the admin's
        sgpu::reset_gpus(&cluster, node)?;
        std::thread::sleep(INTERVAL * (HEALTHD_RESUME_AFTER + 2));
        let rec = cluster.node(node)?;
        assert!(
            rec.get("State").contains(state) && rec.get("Reason").starts_with(reason),
            "{state}: sgpu resumed the admin's node: {rec:?}"
        );
        cluster.output(
            "scontrol",
            &["update", &format!("NodeName={node}"), "State=RESUME"],
        )?;
        cluster.wait_node(node, Duration::from_secs(30), "back in service", |r| {
            !sgpu_tests::node_state(r).1 && !r.get("State").contains("DOWN")
        })?;
    }
    Ok(())
}

#[test]
fn exported_identity_and_paths_do_not_reach_the_step_record() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_shared()?;
    let node = "node2";
    // a slurm.conf of the user's, for a cluster of the user's name: srun itself must still
    // reach slurmctld, so it is a copy with another ClusterName
    let dir = tempfile::Builder::new()
        .prefix("sgpu-trust-test")
        .tempdir_in("/tmp")?;
    let real = std::fs::read_to_string(cluster.slurm_conf())?;
    let mine: String = real
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("ClusterName=") {
                "ClusterName=evil".to_string()
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    std::fs::write(dir.path().join("slurm.conf"), mine)?;
    let script = format!(
        "export SLURM_JOB_ACCOUNT=chemistry SLURM_JOB_PARTITION=debug SLURM_JOB_USER=mallory \
         SLURM_CLUSTER_NAME=evil SLURMD_NODENAME=node1 SGPU_CONFIG={d}/sgpu.toml\n\
         srun --gres=gpu:1 sleep 2\n\
         SLURM_CONF={d}/slurm.conf srun --gres=gpu:1 sleep 1\n",
        d = dir.path().display()
    );
    let id = cluster.sbatch(&["-w", node, "--gres=gpu:1", "-o", "/dev/null"], &script)?;
    let job = cluster.wait_job(id, JOB_TIMEOUT)?;
    assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");
    let records = sgpu::spool_records(&cluster, node, id)?;
    let cluster_name = records
        .iter()
        .find(|r| matches!(r.body(), RecordBody::JobStart(_)))
        .map(|r| r.id().cluster().to_string())
        .ok_or_else(|| format!("no job_start for job {id}: {records:?}"))?;
    let steps: Vec<_> = records
        .iter()
        .filter_map(|r| match r.body() {
            RecordBody::StepUsage(u) => Some((r.id().clone(), u.clone())),
            _ => None,
        })
        .filter(|(id, _)| id.step() != Some("batch"))
        .collect();
    assert_eq!(steps.len(), 2, "both srun steps have a record: {records:?}");
    for (rid, u) in &steps {
        assert_eq!(u.account, None, "the script's account: {u:?}");
        assert_eq!(u.partition, None, "the script's partition: {u:?}");
        assert_ne!(u.user, "mallory", "{u:?}");
        assert_eq!(rid.node(), node, "the script's node name: {rid:?}");
        assert_eq!(rid.cluster(), cluster_name, "the script's cluster: {rid:?}");
        assert_ne!(rid.cluster(), "evil");
        assert_eq!(u.gpus.len(), 1, "{u:?}");
    }
    // and the node's real spool got them (the script's SGPU_CONFIG named none)
    assert!(node_files(&cluster, node).spool_dir.exists());
    Ok(())
}
