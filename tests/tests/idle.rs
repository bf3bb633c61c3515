//! Idle GPUs acted on while jobs run (issue 16 §2), on a three-node cluster of the test's own
//! (`/tmp/sgpu-cluster-idle`, slurmctld on 17520, slurmd 17521-17523, healthd's status on
//! 18521-18523; a node has as many CPUs as the machine, 2 here, so two jobs per node) with
//! two simulated GPUs per node and short windows (on a built Slurm, `SGPU_SLURM_PREFIX`:
//! `/tmp/sgpu-cluster-idle-release`, 17540-17543, 18541-18543): `[idle]` window 3 s, partition `gpu` warns, mails (a
//! recording mail program) and cancels after a 20 s grace; partition `plain` has no policy;
//! account `bench` is exempt.
//!
//! A job whose GPU sits at 0% is warned (a line in its output file), mailed, then cancelled,
//! and each action reaches the history of an acctd of the test's own (`sgpu history
//! --jobs`), its usage record its idle time (`sgpu job --json`); a busy job, a job of the exempt
//! account and a job in `plain` are untouched (still running, nothing in their output); a job
//! whose GPU comes back to work after the warning is not cancelled.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sgpu_spool::{NodeAction, NodeEvent};
use sgpu_tests::acctd::{Acctd, accounting_table};
use sgpu_tests::sgpu::{self, node_files};
use sgpu_tests::{Cluster, poll};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const DIR: &str = "/tmp/sgpu-cluster-idle";
const PORT: &str = "17520";
/// With `SGPU_SLURM_PREFIX` set: `/tmp/sgpu-cluster-idle-release`, slurmctld on 17540.
const RELEASE_PORT: &str = "17540";
const WAIT: Duration = Duration::from_secs(90);

struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(sgpu_tests::cluster::repo_root().join("tests/cluster/down"))
            .env("SGPU_CLUSTER_DIR", &self.0)
            .status();
    }
}

/// Which node runs `job`: where the test pinned it.
fn node_of(job: u32, jobs: &[(u32, &'static str)]) -> &'static str {
    jobs.iter()
        .find(|(j, _)| *j == job)
        .map_or("node1", |(_, n)| n)
}

/// The NVML index of the GPU `job` holds on `node`, from the node's healthd `/status` (its
/// running jobs, from their `job_start` records).
fn gpu_of(cluster: &Cluster, node: &str, job: u32) -> Result<u32, Box<dyn std::error::Error>> {
    poll(WAIT, &format!("job {job} in {node}'s /status"), || {
        let (_, body) = sgpu::healthd_get(cluster, node, "/status")?;
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let jobs = doc["jobs"].as_array().cloned().unwrap_or_default();
        Ok(jobs
            .iter()
            .find(|j| j["job_id"].as_u64() == Some(u64::from(job)))
            .and_then(|j| j["gpus"][0]["index"].as_u64())
            .and_then(|i| u32::try_from(i).ok()))
    })
}

/// `sgpu ARGS` against the test's acctd, as root; its stdout.
fn sgpu_cli(
    cluster: &Cluster,
    acctd: &str,
    args: &[&str],
) -> Result<String, Box<dyn std::error::Error>> {
    let bin = sgpu::cargo_bin("sgpu-cli", "sgpu")?;
    let out = cluster
        .command(&bin.to_string_lossy())
        .arg(format!("--acctd={acctd}"))
        .args(args)
        // no sgpu.toml: built-in defaults (the default path is absent here)
        .env_remove("SGPU_CONFIG")
        .env_remove("SGPU_ACCTD_AUTH")
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn set_util(cluster: &Cluster, node: &str, gpu: u32, util: u32) -> TestResult {
    sgpu::update_gpus(cluster, node, |s| {
        if let Some(g) = s.gpu_mut(gpu) {
            g.utilization_gpu = Some(util);
            g.utilization_memory = Some(util);
        }
    })?;
    Ok(())
}

fn output(dir: &Path, job: u32) -> String {
    std::fs::read_to_string(dir.join(format!("job-{job}.out"))).unwrap_or_default()
}

fn state(cluster: &Cluster, job: u32) -> String {
    cluster
        .job(job)
        .map(|r| r.get("JobState").to_string())
        .unwrap_or_default()
}

#[test]
fn idle_jobs_are_warned_then_cancelled_and_only_they() -> TestResult {
    // on the Slurm the suite runs on (`SGPU_SLURM_PREFIX`: CI's release leg), else Debian's;
    // a release's cluster has a directory and ports of its own
    let prefix = std::env::var("SGPU_SLURM_PREFIX").unwrap_or_default();
    let (dir, port) = if prefix.is_empty() {
        (PathBuf::from(DIR), PORT)
    } else {
        (PathBuf::from(format!("{DIR}-release")), RELEASE_PORT)
    };
    let dir = dir.as_path();
    let work = tempfile::Builder::new().prefix("sgpu-idle").tempdir()?;
    // the cluster's directory outlives a run: only this run's history counts
    let started_ms = sgpu_spool::now_ms();
    let extra = work.path().join("extra.conf");
    std::fs::write(
        &extra,
        "PartitionName=plain Nodes=node3 Default=NO MaxTime=INFINITE State=UP\n",
    )?;
    let _down = Down(dir.to_path_buf());
    let cluster = Cluster::up_in(
        dir,
        &[
            ("SGPU_CLUSTER_NODES", "3"),
            ("SGPU_CLUSTER_GPUS", "2"),
            ("SGPU_CLUSTER_PORT", port),
            ("SGPU_CLUSTER_EXTRA", &extra.to_string_lossy()),
            ("SGPU_SLURM_PREFIX", &prefix),
        ],
    )?;

    // the site's mail program: records its arguments
    let mails = work.path().join("mails");
    let mailer = work.path().join("mail");
    std::fs::write(
        &mailer,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", mails.display()),
    )?;
    std::fs::set_permissions(&mailer, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let out_dir = work.path().join("out");
    std::fs::create_dir_all(&out_dir)?;

    // every GPU busy until a job's GPU is set idle; then every healthd with the policy,
    // forwarding records and history to an acctd of the test's own
    let acctd = Acctd::start(&[])?;
    for node in ["node1", "node2", "node3"] {
        for g in 0..2 {
            set_util(&cluster, node, g, 90)?;
        }
        let f = node_files(&cluster, node);
        let mut config = std::fs::read_to_string(&f.config)?;
        config.push_str(&format!(
            "\n[idle]\nutil_below_pct = 5\nwindow_s = 3\nmail_program = \"{}\"\n\
             exempt_accounts = [\"bench\"]\nmax_cancels_per_hour = 10\n\
             [idle.partition.gpu]\nwarn = true\nmail = true\ncancel_after_s = 20\n",
            mailer.display()
        ));
        config.push_str(&accounting_table(&acctd.url(), ""));
        std::fs::write(&f.config, config)?;
        sgpu::stop_healthd(&cluster, node)?;
        sgpu::start_healthd(&cluster, node)?;
    }

    let o = format!("{}/job-%j.out", out_dir.display());
    let submit = |extra: &[&str]| -> Result<u32, Box<dyn std::error::Error>> {
        let mut args = vec!["--gres=gpu:1", "-o", o.as_str()];
        args.extend_from_slice(extra);
        Ok(cluster.sbatch(&args, "sleep 600")?)
    };
    let idle = submit(&["-w", "node1"])?;
    let back = submit(&["-w", "node1"])?;
    let busy = submit(&["-w", "node2"])?;
    let exempt = submit(&["-w", "node2", "-A", "bench"])?;
    let plain = submit(&["-w", "node3", "-p", "plain"])?;
    let placed = [
        (idle, "node1"),
        (back, "node1"),
        (busy, "node2"),
        (exempt, "node2"),
        (plain, "node3"),
    ];
    let cleanup = Cancel(&cluster, placed.iter().map(|(j, _)| *j).collect());
    for j in [idle, exempt, plain, back] {
        let node = node_of(j, &placed);
        set_util(&cluster, node, gpu_of(&cluster, node, j)?, 0)?;
    }
    let _ = gpu_of(&cluster, "node2", busy)?;

    // the job that comes back: warned, then its GPU works again
    poll(WAIT, "the warning in the returning job's output", || {
        Ok(output(&out_dir, back).contains("idle for").then_some(()))
    })?;
    set_util(&cluster, "node1", gpu_of(&cluster, "node1", back)?, 80)?;

    // the idle job: warned, then cancelled after the grace period
    let warned = poll(WAIT, "the idle job warned", || {
        let text = output(&out_dir, idle);
        Ok(text.contains("idle for").then_some(text))
    })?;
    let gpu = gpu_of(&cluster, "node1", idle)?;
    assert!(
        warned.contains(&format!("sgpu: job {idle} on node1: GPU {gpu} idle for"))
            && warned.contains("will be cancelled in 20 s unless its GPUs are used"),
        "{warned}"
    );
    let ended = cluster.wait_job(idle, WAIT)?;
    assert_eq!(ended.get("JobState"), "CANCELLED", "{ended:?}");
    let text = output(&out_dir, idle);
    eprintln!("the idle job's output:\n{text}");
    assert!(
        text.contains(&format!(
            "sgpu: job {idle} cancelled: GPU {gpu} on node1 idle for"
        )),
        "{text}"
    );
    // two more sample cycles for the others, then they are all untouched
    std::thread::sleep(Duration::from_secs(3));
    for j in [busy, exempt, plain, back] {
        assert_eq!(state(&cluster, j), "RUNNING", "job {j}");
    }
    for j in [busy, exempt, plain] {
        let text = output(&out_dir, j);
        assert!(
            !text.contains("sgpu:"),
            "job {j} was told something: {text}"
        );
    }
    assert!(
        !output(&out_dir, back).contains("cancelled:"),
        "{}",
        output(&out_dir, back)
    );
    let mail = std::fs::read_to_string(&mails).unwrap_or_default();
    assert!(
        mail.lines().any(
            |l| l.starts_with(&format!("-s sgpu: job {idle} on node1")) && l.ends_with(" root")
        ),
        "mail program called as MailProg is: {mail}"
    );

    // /metrics: the exempt and plain jobs' GPUs are idle (measured, not acted on)
    for j in [exempt, plain] {
        let (_, metrics) = sgpu::healthd_get(&cluster, node_of(j, &placed), "/metrics")?;
        assert!(
            metrics.lines().any(|l| l.starts_with("sgpu_job_idle_gpus{")
                && l.contains(&format!("job_id=\"{j}\""))
                && l.ends_with(" 1")),
            "job {j} idle in /metrics:\n{metrics}"
        );
    }
    let (_, metrics) = sgpu::healthd_get(&cluster, "node1", "/metrics")?;
    assert!(
        metrics.contains("sgpu_idle_actions_total{action=\"cancel\"} 1"),
        "{metrics}"
    );

    // acctd's history (`sgpu history --jobs`): warn, mail and cancel of the idle job, a
    // warning and a mail for the returning one, nothing for the others
    let events: Vec<NodeEvent> = poll(WAIT, "the idle actions in acctd's history", || {
        let out = sgpu_cli(&cluster, &acctd.url(), &["history", "--jobs", "--json"])?;
        let mut events: Vec<NodeEvent> = serde_json::from_str(&out).unwrap_or_default();
        events.retain(|e| e.time_ms >= started_ms);
        let has = |job: u32, a: NodeAction| {
            events.iter().any(|e| {
                e.action == a && e.job.as_ref().is_some_and(|j| j.job_id == u64::from(job))
            })
        };
        Ok(
            (has(idle, NodeAction::IdleCancel) && has(back, NodeAction::IdleMail))
                .then_some(events),
        )
    })?;
    eprintln!(
        "{}",
        sgpu_cli(&cluster, &acctd.url(), &["history", "--jobs"])?
    );
    let of = |job: u32| -> Vec<NodeAction> {
        let mut v: Vec<_> = events
            .iter()
            .filter(|e| e.job.as_ref().is_some_and(|a| a.job_id == u64::from(job)))
            .map(|e| e.action)
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        of(idle),
        vec![
            NodeAction::IdleWarn,
            NodeAction::IdleMail,
            NodeAction::IdleCancel
        ]
    );
    assert_eq!(of(back), vec![NodeAction::IdleWarn, NodeAction::IdleMail]);
    for j in [busy, exempt, plain] {
        assert!(of(j).is_empty(), "job {j}: {:?}", of(j));
    }

    // the cancelled job's usage record, in acctd, carries its idle time
    let idle_gpu_ms: u64 = poll(WAIT, "the idle job's job_usage record in acctd", || {
        let out = sgpu_cli(
            &cluster,
            &acctd.url(),
            &["job", &idle.to_string(), "--json"],
        )?;
        Ok(out.split("\"idle_gpu_ms\":").nth(1).and_then(|rest| {
            rest.trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        }))
    })?;
    assert!(
        idle_gpu_ms >= 20_000,
        "idle through the grace period: {idle_gpu_ms}"
    );
    drop(cleanup);
    Ok(())
}

/// Cancels the test's jobs however it ends.
struct Cancel<'a>(&'a Cluster, Vec<u32>);

impl Drop for Cancel<'_> {
    fn drop(&mut self) {
        for j in &self.1 {
            let _ = self.0.output("scancel", &[&j.to_string()]);
        }
    }
}
