//! sgpu's accounting against Slurm's own (issue 6 §5): a one-node test cluster of its own
//! with slurmdbd and MariaDB (`SGPU_CLUSTER_SLURMDBD=1`, in `/tmp/sgpu-cluster-dbd`, ports
//! apart from the default cluster's, so its slurmctld restarts never touch other tests) runs
//! GPU jobs; healthd forwards their records to a real acctd; each job's GPU count in acctd
//! equals `sacct`'s `gres/gpu` in `AllocTRES`, and its allocated GPU time equals `gres/gpu`
//! x `ElapsedRaw` exactly: the epilog reads the job's StartTime/EndTime from slurmctld
//! (`SLURM_TIME_FORMAT=%s scontrol show job -o ID`, `slurm_job_times`, on by default) into
//! the job_end record's `slurm_window`, and acctd counts allocated time over it. Both
//! figures are printed, with the gates' own prolog-to-epilog window beside them.
//!
//! Issue 11 §2: jobs have runs. The cluster has two nodes and a preempting partition
//! (`tests/cluster/slurmdbd-extra.conf`); [`every_run_is_billed_as_sacct_bills_it`] runs a
//! job the admin requeues, a job requeued by preemption, a job array, a job cancelled right
//! as it starts (during or just after its prolog: the race is Slurm's), and a job whose
//! prolog gate fails on node1 and that runs again on node2; per job and run, sgpu's
//! allocated GPU time equals `sacct --duplicates`' `gres/gpu` x `ElapsedRaw` of that run,
//! and the totals agree.

use std::path::Path;
use std::time::{Duration, Instant};

use sgpu_acct_client::{Client, ClientAuth, ClientError};
use sgpu_tests::acctd::{Acctd, forward_to};
use sgpu_tests::{Cluster, sgpu};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const CLUSTER: &str = "sgpu-test";
/// Where the slurmdbd cluster lives, and its first port (the default cluster uses 16817..).
const DIR: &str = "/tmp/sgpu-cluster-dbd";
const PORT: &str = "16917";
/// The same on a Slurm built by `scripts/build-slurm` (`SGPU_SLURM_PREFIX`, CI's second
/// leg): `/tmp/sgpu-cluster-dbd<release>` (e.g. `dbd2605`) on ports 17890..17993 (slurmdbd
/// and its MariaDB at +100 and +101).
const BUILT_PORT: &str = "17890";

/// The directory and first port of the slurmdbd cluster for the Slurm these tests run on
/// (`SGPU_DBD_CLUSTER_DIR` and `SGPU_DBD_CLUSTER_PORT` name another, for a developer who
/// runs these tests beside others on one machine).
fn dbd_place() -> (String, String) {
    if let (Ok(dir), Ok(port)) = (
        std::env::var("SGPU_DBD_CLUSTER_DIR"),
        std::env::var("SGPU_DBD_CLUSTER_PORT"),
    ) {
        return (dir, port);
    }
    let (dir, port) = dbd_release_place();
    (dir, port.to_string())
}

/// [`dbd_place`] by release.
fn dbd_release_place() -> (String, &'static str) {
    let prefix = std::env::var("SGPU_SLURM_PREFIX").unwrap_or_default();
    let version = Path::new(&prefix)
        .file_name()
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_default();
    let release: String = version.split('.').take(2).collect::<Vec<_>>().concat();
    if prefix.is_empty() || release.is_empty() {
        (DIR.to_string(), PORT)
    } else {
        (format!("{DIR}{release}"), BUILT_PORT)
    }
}

fn dbd_cluster() -> Result<Cluster, sgpu_tests::ClusterError> {
    let extra = sgpu_tests::cluster::repo_root().join("tests/cluster/slurmdbd-extra.conf");
    let extra = extra.to_string_lossy().into_owned();
    let (dir, port) = dbd_place();
    Cluster::up_in(
        Path::new(&dir),
        &[
            ("SGPU_CLUSTER_PORT", port.as_str()),
            ("SGPU_CLUSTER_NODES", "2"),
            ("SGPU_CLUSTER_SLURMDBD", "1"),
            ("SGPU_CLUSTER_EXTRA", &extra),
        ],
    )
}

/// `sacct -X -P -n -o JobID,AllocTRES,ElapsedRaw,State -j ID`: (gres/gpu count, ElapsedRaw)
/// once slurmdbd has the finished job.
fn sacct_gpu_seconds(
    cluster: &Cluster,
    id: u32,
) -> Result<Option<(u64, u64)>, Box<dyn std::error::Error>> {
    let out = cluster.output(
        "sacct",
        &[
            "-X",
            "-P",
            "-n",
            "-o",
            "JobID,AllocTRES,ElapsedRaw,State",
            "-j",
            &id.to_string(),
        ],
    )?;
    let Some(line) = out.lines().find(|l| l.starts_with(&format!("{id}|"))) else {
        return Ok(None);
    };
    let f: Vec<&str> = line.split('|').collect();
    if f.len() < 4 || f[3] != "COMPLETED" {
        return Ok(None);
    }
    let gpus = f[1]
        .split(',')
        .find_map(|t| t.strip_prefix("gres/gpu="))
        .ok_or_else(|| format!("no gres/gpu in AllocTRES of job {id}: {line}"))?
        .parse()?;
    Ok(Some((gpus, f[2].parse()?)))
}

/// What acctd's `job_end` record of a job says.
#[derive(Debug, Clone, Copy)]
struct SgpuJob {
    gpus: u64,
    allocated_ms: u64,
    start_ms: u64,
    end_ms: u64,
    /// `slurm_window`: (start_s, end_s), when the epilog read it.
    slurm: Option<(u64, u64)>,
}

/// acctd's `job_end` record of `job`, once it is there.
fn acctd_job_end(c: &Client, job: u32) -> Result<Option<SgpuJob>, Box<dyn std::error::Error>> {
    let v = match c.get_json(&format!("/v1/jobs/{CLUSTER}/{job}")) {
        Ok(v) => v,
        Err(ClientError::Http { status: 404, .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let Some(end) = v["records"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["id"]["kind"] == "job_end"))
    else {
        return Ok(None);
    };
    let b = &end["body"];
    let n = |k: &str| {
        b[k].as_u64()
            .ok_or_else(|| format!("job_end without {k}: {end}"))
    };
    let gpus = b["gpus"].as_array().map_or(0, Vec::len) as u64;
    let w = &b["slurm_window"];
    Ok(Some(SgpuJob {
        gpus,
        allocated_ms: n("allocated_gpu_ms")?,
        start_ms: n("start_time")?,
        end_ms: n("end_time")?,
        slurm: w["start_s"].as_u64().zip(w["end_s"].as_u64()),
    }))
}

/// The sum of `key` over the rows (or jobs) of an acctd answer.
fn sum_of(v: &serde_json::Value, list: &str, key: &str) -> u64 {
    v[list]
        .as_array()
        .map_or(0, |rows| rows.iter().filter_map(|r| r[key].as_u64()).sum())
}

#[test]
fn allocated_gpu_seconds_equal_slurms_sacct() -> TestResult {
    let cluster = dbd_cluster()?;
    let _lock = cluster.lock_exclusive()?;
    let acctd = Acctd::start(&[])?;
    let _fwd = forward_to(&cluster, &["node1", "node2"], &acctd.url(), "")?;
    let c = Client::new(
        &acctd.url(),
        ClientAuth::Munge { socket: None },
        Duration::from_secs(30),
    )?;
    let mut jobs = Vec::new();
    for (gpus, secs) in [(1, 1), (2, 3), (4, 2)] {
        let gres = format!("--gres=gpu:{gpus}");
        let id = cluster.sbatch(&[&gres, "-o", "/dev/null"], &format!("sleep {secs}"))?;
        jobs.push(id);
    }
    let (mut first_s, mut last_s, mut slurm_total_ms) = (u64::MAX, 0, 0);
    for &id in &jobs {
        let job = cluster.wait_job(id, Duration::from_secs(60))?;
        assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");
        let began = Instant::now();
        let (sacct, sgpu) = loop {
            let s = sacct_gpu_seconds(&cluster, id)?;
            let g = acctd_job_end(&c, id)?;
            if let (Some(s), Some(g)) = (s, g) {
                break (s, g);
            }
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "job {id}: sacct {s:?}, acctd {g:?} after 30 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let (gpus, elapsed) = sacct;
        let SgpuJob {
            gpus: sgpu_gpus,
            allocated_ms,
            start_ms,
            end_ms,
            slurm,
        } = sgpu;
        eprintln!(
            "job {id}: sacct gres/gpu={gpus} ElapsedRaw={elapsed} s -> {} GPU-s; sgpu {sgpu_gpus} \
             GPUs, Slurm window {slurm:?} s -> allocated {allocated_ms} GPU-ms; the gates' window \
             {start_ms}..{end_ms} ms would give {} GPU-ms",
            gpus * elapsed,
            sgpu_gpus * (end_ms - start_ms)
        );
        assert_eq!(sgpu_gpus, gpus, "job {id}: GPU count");
        let (slurm_start, slurm_end) =
            slurm.ok_or_else(|| format!("job {id}: the job_end has no slurm_window"))?;
        assert_eq!(slurm_end - slurm_start, elapsed, "job {id}: Slurm's window");
        let slurm_ms = gpus * elapsed * 1000;
        assert_eq!(
            allocated_ms, slurm_ms,
            "job {id}: sgpu {allocated_ms} GPU-ms, Slurm {gpus} x {elapsed} s"
        );
        first_s = first_s.min(slurm_start);
        last_s = last_s.max(slurm_end);
        slurm_total_ms += slurm_ms;
    }

    // acctd's queries agree: the job list (whole jobs) and a report over the jobs' span
    // (records clipped to the window; no other job ran on this cluster meanwhile)
    let ids: Vec<String> = jobs.iter().map(u32::to_string).collect();
    let window = format!("start={first_s}&end={}", last_s + 1);
    let listed = c.get_json(&format!("/v1/jobs?{window}&jobs={}", ids.join(",")))?;
    assert_eq!(
        listed["jobs"].as_array().map(Vec::len),
        Some(jobs.len()),
        "{listed}"
    );
    assert_eq!(
        sum_of(&listed, "jobs", "allocated_gpu_ms"),
        slurm_total_ms,
        "{listed}"
    );
    let report = c.get_json(&format!("/v1/report?{window}"))?;
    eprintln!("report {window}: {report}");
    assert_eq!(
        sum_of(&report, "rows", "allocated_gpu_ms"),
        slurm_total_ms,
        "{report}"
    );
    Ok(())
}

/// One run of a job as `sacct --duplicates` has it.
#[derive(Debug, Clone)]
struct SacctRun {
    gpus: u64,
    elapsed_s: u64,
    start_s: u64,
    state: String,
    node: String,
}

/// Every run of `id` that slurmdbd has finished, by start (`sacct --duplicates -X`, times as
/// Unix seconds); `None` while a run is still open there.
fn sacct_runs(
    cluster: &Cluster,
    id: u32,
) -> Result<Option<Vec<SacctRun>>, Box<dyn std::error::Error>> {
    let mut cmd = cluster.command("sacct");
    cmd.env("SLURM_TIME_FORMAT", "%s").args([
        "--duplicates",
        "-X",
        "-P",
        "-n",
        "-o",
        "JobIDRaw,AllocTRES,ElapsedRaw,Start,End,State,NodeList",
        "-j",
        &id.to_string(),
    ]);
    let out = cmd.output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut runs = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('|').collect();
        if f.len() < 7 || f[0] != id.to_string() {
            continue;
        }
        let (Ok(start_s), Ok(_end_s)) = (f[3].parse::<u64>(), f[4].parse::<u64>()) else {
            // Start or End "Unknown": a run not finished (or never started) yet
            if f[5] == "PENDING" {
                continue;
            }
            return Ok(None);
        };
        let gpus = f[1]
            .split(',')
            .find_map(|t| t.strip_prefix("gres/gpu="))
            .map_or(Ok(0), str::parse)?;
        runs.push(SacctRun {
            gpus,
            elapsed_s: f[2].parse()?,
            start_s,
            state: f[5].to_string(),
            node: f[6].to_string(),
        });
    }
    if runs.iter().any(|r| r.state == "RUNNING") {
        return Ok(None);
    }
    runs.sort_by_key(|r| r.start_s);
    Ok(Some(runs))
}

/// Per run, each node's (node, GPUs, allocated GPU-ms) from its `job_end`.
type RunEnds = std::collections::BTreeMap<u32, Vec<(String, u64, u64)>>;

/// acctd's `job_end` records of `job`, by run.
fn acctd_runs(c: &Client, job: u32) -> Result<RunEnds, Box<dyn std::error::Error>> {
    let mut out = std::collections::BTreeMap::new();
    let v = match c.get_json(&format!("/v1/jobs/{CLUSTER}/{job}")) {
        Ok(v) => v,
        Err(ClientError::Http { status: 404, .. }) => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for r in v["records"].as_array().into_iter().flatten() {
        if r["id"]["kind"] != "job_end" {
            continue;
        }
        let run = r["id"]["run"].as_u64().unwrap_or(0) as u32;
        let node = r["id"]["node"].as_str().unwrap_or("").to_string();
        let gpus = r["body"]["gpus"].as_array().map_or(0, Vec::len) as u64;
        let allocated = r["body"]["allocated_gpu_ms"]
            .as_u64()
            .ok_or_else(|| format!("job_end without allocated_gpu_ms: {r}"))?;
        out.entry(run)
            .or_insert_with(Vec::new)
            .push((node, gpus, allocated));
    }
    Ok(out)
}

/// Waits for `pred` on job `id`'s `scontrol show job` record.
fn wait_job_until(
    cluster: &Cluster,
    id: u32,
    what: &str,
    pred: impl Fn(&sgpu_tests::cluster::Record) -> bool,
) -> Result<sgpu_tests::cluster::Record, Box<dyn std::error::Error>> {
    let began = Instant::now();
    loop {
        let job = cluster.job(id)?;
        if pred(&job) {
            return Ok(job);
        }
        if began.elapsed() > Duration::from_secs(90) {
            return Err(format!("job {id} not {what} after 90 s: {job:?}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A requeued job waits for a begin time Slurm sets minutes ahead: let it run now.
fn release_requeued(cluster: &Cluster, id: u32, restarts: u32) -> TestResult {
    let r = restarts.to_string();
    wait_job_until(cluster, id, "requeued", |j| {
        j.get("JobState") == "PENDING" && j.get("Restarts") == r
    })?;
    cluster.output(
        "scontrol",
        &["update", &format!("JobId={id}"), "StartTime=now"],
    )?;
    Ok(())
}

/// Compares every run of `id`: sgpu's allocated GPU-ms of run k equals sacct's k-th run's
/// `gres/gpu` x `ElapsedRaw`; returns Slurm's total for the job.
fn compare_runs(
    cluster: &Cluster,
    c: &Client,
    what: &str,
    id: u32,
    runs_expected: usize,
) -> Result<u64, Box<dyn std::error::Error>> {
    let began = Instant::now();
    loop {
        let sacct = sacct_runs(cluster, id)?;
        let sgpu = acctd_runs(c, id)?;
        let complete = sacct.as_ref().is_some_and(|s| {
            s.len() == runs_expected
                && s.iter()
                    .enumerate()
                    .all(|(k, r)| r.gpus == 0 || sgpu.contains_key(&(k as u32)))
        });
        if complete {
            let sacct = sacct.unwrap_or_default();
            let mut total = 0;
            for (k, run) in sacct.iter().enumerate() {
                let slurm_ms = run.gpus * run.elapsed_s * 1000;
                let ours: u64 = sgpu
                    .get(&(k as u32))
                    .map_or(0, |v| v.iter().map(|(_, _, a)| a).sum());
                eprintln!(
                    "{what}: job {id} run {k}: sacct {} on {} gres/gpu={} ElapsedRaw={} -> \
                     {slurm_ms} GPU-ms; sgpu {:?} -> {ours} GPU-ms",
                    run.state,
                    run.node,
                    run.gpus,
                    run.elapsed_s,
                    sgpu.get(&(k as u32))
                );
                assert_eq!(
                    ours, slurm_ms,
                    "{what}: job {id} run {k}: sgpu {ours} GPU-ms, sacct {run:?}"
                );
                total += slurm_ms;
            }
            let extra: Vec<&u32> = sgpu
                .keys()
                .filter(|k| **k as usize >= sacct.len())
                .collect();
            assert!(
                extra.is_empty(),
                "{what}: job {id}: sgpu has runs {extra:?} sacct lacks"
            );
            return Ok(total);
        }
        if began.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "{what}: job {id}: after 60 s sacct has {sacct:?}, acctd {sgpu:?} \
                 (expected {runs_expected} runs)"
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn every_run_is_billed_as_sacct_bills_it() -> TestResult {
    let cluster = dbd_cluster()?;
    let _lock = cluster.lock_exclusive()?;
    let acctd = Acctd::start(&[])?;
    let _fwd = forward_to(&cluster, &["node1", "node2"], &acctd.url(), "")?;
    let c = Client::new(
        &acctd.url(),
        ClientAuth::Munge { socket: None },
        Duration::from_secs(30),
    )?;
    let idle = |node: &str| -> TestResult {
        cluster.wait_node(node, Duration::from_secs(60), "idle", |r| {
            r.get("State") == "IDLE"
        })?;
        Ok(())
    };
    idle("node1")?;
    idle("node2")?;
    let mut checks: Vec<(&str, u32, usize)> = Vec::new();
    let t0 = sgpu_spool::now_ms() / 1000 - 10;

    // 1. The admin requeues a running job; it runs again and completes.
    let requeued = cluster.sbatch(
        &["--gres=gpu:2", "-w", "node2", "-o", "/dev/null"],
        r#"if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then sleep 2; else sleep 60; fi"#,
    )?;
    wait_job_until(&cluster, requeued, "running", |j| {
        j.get("JobState") == "RUNNING"
    })?;
    std::thread::sleep(Duration::from_secs(3));
    cluster.output("scontrol", &["requeue", &requeued.to_string()])?;
    release_requeued(&cluster, requeued, 1)?;
    checks.push(("admin requeue", requeued, 2));

    // 2. Preemption: a job of the higher-priority partition takes node1's GPUs; the
    //    preempted job goes back to the queue (PreemptMode=REQUEUE) and runs again.
    let low = cluster.sbatch(
        &["--gres=gpu:4", "-w", "node1", "-o", "/dev/null"],
        r#"if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then sleep 1; else sleep 60; fi"#,
    )?;
    wait_job_until(&cluster, low, "running", |j| j.get("JobState") == "RUNNING")?;
    std::thread::sleep(Duration::from_secs(2));
    let high = cluster.sbatch(
        &[
            "-p",
            "high",
            "--gres=gpu:4",
            "-w",
            "node1",
            "-o",
            "/dev/null",
        ],
        "sleep 2",
    )?;
    release_requeued(&cluster, low, 1)?;
    checks.push(("preempted", low, 2));
    checks.push(("preemptor", high, 1));

    // 3. A job array: each task is a job of its own.
    let array = cluster.sbatch(
        &["--array=1-3", "--gres=gpu:1", "-o", "/dev/null"],
        "sleep 1",
    )?;

    // 4. A job cancelled as it starts (while its prolog runs, or just after).
    let cancelled = cluster.sbatch(&["--gres=gpu:1", "-o", "/dev/null"], "sleep 30")?;
    wait_job_until(&cluster, cancelled, "started", |j| {
        j.get("JobState") != "PENDING"
    })?;
    cluster.output("scancel", &[&cancelled.to_string()])?;
    checks.push(("cancelled at start", cancelled, 1));

    for (what, id, _) in &checks {
        cluster.wait_job(*id, Duration::from_secs(120))?;
        eprintln!("{what}: job {id} ended");
    }
    // the array's tasks, by their own job ids, once all three have ended
    let began = Instant::now();
    let task_ids: Vec<u32> = loop {
        let out = cluster.output(
            "sacct",
            &[
                "-X",
                "-P",
                "-n",
                "-o",
                "JobIDRaw,State",
                "-j",
                &array.to_string(),
            ],
        )?;
        let mut ids: Vec<(u32, String)> = out
            .lines()
            .filter_map(|l| l.split_once('|'))
            .filter_map(|(id, st)| Some((id.trim().parse().ok()?, st.to_string())))
            .collect();
        ids.sort();
        ids.dedup_by_key(|(id, _)| *id);
        let ended = ids
            .iter()
            .all(|(_, st)| !matches!(st.as_str(), "PENDING" | "RUNNING" | "REQUEUED"));
        if ids.len() == 3 && ended {
            break ids.into_iter().map(|(id, _)| id).collect();
        }
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "array {array}: tasks {out:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    for &t in &task_ids {
        checks.push(("array task", t, 1));
    }

    // 5. The prolog's gate fails on node1 (a GPU with uncorrectable ECC errors): node1 is
    //    drained, the job requeued, and it runs on node2. node1's healthd is paused (its
    //    periodic check would drain node1 before the job lands there) until node1 is healthy
    //    again; it then forwards the failed run's records.
    {
        let paused = sgpu::pause_healthd(&cluster, "node1")?;
        let _restore = sgpu::Restore::new(&cluster, &["node1"]);
        sgpu::update_gpus(&cluster, "node1", |s| {
            if let Some(g) = s.gpu_mut(2) {
                g.ecc.volatile_uncorrected = 3;
            }
        })?;
        let moved = cluster.sbatch(&["--gres=gpu:1", "-o", "/dev/null"], "sleep 2")?;
        release_requeued(&cluster, moved, 1)?;
        let job = cluster.wait_job(moved, Duration::from_secs(120))?;
        assert_eq!(job.get("NodeList"), "node2", "{job:?}");
        assert_eq!(job.get("Restarts"), "1", "{job:?}");
        checks.push(("failed gate, ran elsewhere", moved, 2));
        drop(_restore);
        drop(paused);
    }

    let mut slurm_total = 0;
    for (what, id, runs) in &checks {
        slurm_total += compare_runs(&cluster, &c, what, *id, *runs)?;
    }
    // the totals agree: the jobs listed by acctd add up to Slurm's
    let ids: Vec<String> = checks.iter().map(|(_, id, _)| id.to_string()).collect();
    let listed = c.get_json(&format!(
        "/v1/jobs?start={t0}&end={}&jobs={}",
        sgpu_spool::now_ms() / 1000 + 60,
        ids.join(",")
    ))?;
    assert_eq!(
        sum_of(&listed, "jobs", "allocated_gpu_ms"),
        slurm_total,
        "{listed}"
    );
    eprintln!(
        "{} jobs, Slurm's total {slurm_total} GPU-ms, acctd's the same",
        checks.len()
    );
    // conflicts (printed: a rerun's step that starts while the previous run's epilog still
    // runs can carry the previous run's number; such a record is kept, not billed)
    let conflicts = c.get_json("/v1/conflicts")?;
    for k in conflicts["conflicts"].as_array().into_iter().flatten() {
        eprintln!("conflict kept by acctd: {}", k["key"]);
    }
    Ok(())
}

/// `sgpu` aimed at `acctd` and this cluster's Slurm (`SLURM_CONF`, its clients first on
/// `PATH`, so `sgpu seff` runs this cluster's sacct).
fn sgpu_at(
    cluster: &Cluster,
    url: &str,
    args: &[&str],
) -> Result<String, Box<dyn std::error::Error>> {
    let bin = sgpu::cargo_bin("sgpu-cli", "sgpu")?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("sgpu.toml");
    std::fs::write(&config, "")?;
    let mut cmd = cluster.command(&bin.to_string_lossy());
    cmd.arg("--config")
        .arg(&config)
        .args(["--acctd", url])
        .args(args);
    let out = cmd.output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(stdout)
}

/// `sacct -X -n -P -o AdminComment` of job `id` (empty until written).
fn admin_comment(cluster: &Cluster, id: u32) -> Result<String, Box<dyn std::error::Error>> {
    let out = cluster.output(
        "sacct",
        &[
            "-j",
            &id.to_string(),
            "-X",
            "-n",
            "-P",
            "-o",
            "AdminComment",
        ],
    )?;
    Ok(out.lines().next().unwrap_or("").trim().to_string())
}

/// Issue 16 §4: at job end acctd writes the job's GPU summary into its AdminComment in
/// slurmdbd (`sgpu1:` + lower-case base32 of a versioned JSON): a one-node job with a hostile name
/// and comment and a two-node job (one writer, acctd, for both nodes' records). The
/// comment is there in `sacct -o AdminComment`, decodes with coreutils' `base32 -d`,
/// holds nothing the user set, and its figures equal `sgpu seff --json`'s and the records
/// `sgpu job --json` shows. An admin's own AdminComment is left alone.
#[test]
fn the_gpu_summary_is_in_slurms_admin_comment() -> TestResult {
    let cluster = dbd_cluster()?;
    let _lock = cluster.lock_exclusive()?;
    // acctd runs sacct/sacctmgr through wrappers that aim them at this cluster
    let bin = tempfile::tempdir()?;
    for program in ["sacct", "sacctmgr"] {
        let cmd = cluster.command(program);
        let real = cmd.get_program().to_string_lossy().into_owned();
        let conf = cmd
            .get_envs()
            .find(|(k, _)| *k == "SLURM_CONF")
            .and_then(|(_, v)| v)
            .map(|v| v.to_string_lossy().into_owned())
            .ok_or("the cluster's command sets no SLURM_CONF")?;
        let path = bin.path().join(program);
        std::fs::write(
            &path,
            format!("#!/bin/sh\nSLURM_CONF='{conf}' exec '{real}' \"$@\"\n"),
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    let bin_dir = bin.path().to_string_lossy().into_owned();
    let acctd = Acctd::start(&[
        "--admin-comment",
        "--admin-comment-delay-s",
        "1",
        "--slurm-bin",
        &bin_dir,
    ])?;
    let _fwd = forward_to(&cluster, &["node1", "node2"], &acctd.url(), "")?;
    let hostile = "x' \"; DROP TABLE job_table; -- sgpu1:AAAA";
    let one = cluster.sbatch(
        &[
            "--gres=gpu:2",
            "-o",
            "/dev/null",
            &format!("--job-name={hostile}"),
            &format!("--comment={hostile}"),
        ],
        "sleep 3",
    )?;
    let two = cluster.sbatch(
        &["-N", "2", "--gres=gpu:1", "-o", "/dev/null"],
        "srun sleep 2",
    )?;
    let admins = cluster.sbatch(&["--gres=gpu:1", "-o", "/dev/null"], "sleep 3")?;
    cluster.output(
        "scontrol",
        &[
            "update",
            &format!("JobId={admins}"),
            "AdminComment=rack 4 | bad PSU",
        ],
    )?;
    for id in [one, two, admins] {
        let job = cluster.wait_job(id, Duration::from_secs(90))?;
        assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");
    }
    for (id, nodes) in [(one, 1usize), (two, 2)] {
        let began = Instant::now();
        let comment = loop {
            let c = admin_comment(&cluster, id)?;
            if !c.is_empty() {
                break c;
            }
            assert!(
                began.elapsed() < Duration::from_secs(90),
                "job {id}: no AdminComment after 90 s; acctd's log: {}",
                std::fs::read_to_string(acctd.log()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        eprintln!("job {id}: AdminComment {comment} ({} bytes)", comment.len());
        let payload = comment
            .strip_prefix("sgpu1:")
            .ok_or_else(|| format!("job {id}: AdminComment {comment:?} lacks the prefix"))?;
        // lower-case RFC 4648 base32: coreutils decodes it in upper case
        let mut dec = std::process::Command::new("base32")
            .arg("-d")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        {
            use std::io::Write;
            let mut stdin = dec.stdin.take().ok_or("base32 -d: no stdin")?;
            stdin.write_all(payload.to_ascii_uppercase().as_bytes())?;
        }
        let out = dec.wait_with_output()?;
        assert!(out.status.success(), "base32 -d refused {payload:?}");
        let json = String::from_utf8(out.stdout)?;
        eprintln!("job {id}: {json}");
        assert!(!json.contains("DROP") && !json.contains("x'"), "{json}");
        let summary: serde_json::Value = serde_json::from_str(&json)?;
        assert_eq!(summary["v"], 1, "{json}");

        // the same figures as sgpu seff and sgpu job
        let seff: serde_json::Value = serde_json::from_str(&sgpu_at(
            &cluster,
            &acctd.url(),
            &["seff", &id.to_string(), "-M", CLUSTER, "--json"],
        )?)?;
        let gpu = &seff["gpu"];
        assert_eq!(summary["alloc_gpu_ms"], gpu["allocated_gpu_ms"], "{seff}");
        assert_eq!(summary["energy_mj"], gpu["energy_mj"], "{seff}");
        assert_eq!(summary["used_gpu_ms"], gpu["used_gpu_ms"], "{seff}");
        let per_gpu = summary["per_gpu"].as_array().ok_or("no per_gpu")?;
        assert_eq!(per_gpu.len(), gpu["gpus"].as_array().map_or(0, Vec::len));
        let on: std::collections::BTreeSet<&str> =
            per_gpu.iter().filter_map(|g| g["node"].as_str()).collect();
        assert_eq!(on.len(), nodes, "{json}");
        let job: serde_json::Value = serde_json::from_str(&sgpu_at(
            &cluster,
            &acctd.url(),
            &["job", &id.to_string(), "-M", CLUSTER, "--json"],
        )?)?;
        let ends: Vec<&serde_json::Value> = job["records"]
            .as_array()
            .map(|r| r.iter().filter(|r| r["id"]["kind"] == "job_end").collect())
            .unwrap_or_default();
        assert_eq!(ends.len(), nodes, "{job}");
        let allocated: u64 = ends
            .iter()
            .filter_map(|r| r["body"]["allocated_gpu_ms"].as_u64())
            .sum();
        assert_eq!(summary["alloc_gpu_ms"].as_u64(), Some(allocated), "{job}");
        let energy: u64 = ends
            .iter()
            .flat_map(|r| r["body"]["gpus"].as_array().cloned().unwrap_or_default())
            .filter_map(|g| g["energy_delta_mj"].as_u64())
            .sum();
        assert_eq!(summary["energy_mj"].as_u64(), Some(energy), "{job}");
        // and a person reads the same job in sgpu seff
        eprintln!(
            "$ sgpu seff {id}\n{}",
            sgpu_at(
                &cluster,
                &acctd.url(),
                &["seff", &id.to_string(), "-M", CLUSTER]
            )?
        );
    }
    // the admin's note stays (acctd tried: its job ended and was forwarded)
    let began = Instant::now();
    while !std::fs::read_to_string(acctd.log())?.contains("left alone") {
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "acctd did not judge job {admins}'s AdminComment"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(admin_comment(&cluster, admins)?, "rack 4 | bad PSU");

    // a job that asked for 4 GPUs and used one, 3 GiB of its 80 GiB: sgpu seff says so. The
    // GPU gets busy only while the job runs (a GPU busy before the prolog or after the
    // epilog is a leftover process, and the gates drain the node for it).
    let _restore = sgpu::Restore::new(&cluster, &["node2"]);
    let busy = cluster.sbatch(
        &["-w", "node2", "--gres=gpu:4", "-o", "/dev/null"],
        "sleep 16",
    )?;
    let began = Instant::now();
    while cluster
        .output("squeue", &["-h", "-j", &busy.to_string(), "-o", "%T"])?
        .trim()
        != "RUNNING"
    {
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "job {busy} did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    sgpu::update_gpus(&cluster, "node2", |s| {
        s.gpus[0].utilization_gpu = Some(80);
        s.gpus[0].memory_used_mib = 3 * 1024;
    })?;
    // while it runs: acctd has only its job_start; the figures so far come from healthd
    let status = format!(
        "node2=http://{}",
        sgpu::healthd_status_addr(&cluster, "node2")?
    );
    let began = Instant::now();
    let running = loop {
        std::thread::sleep(Duration::from_millis(500));
        let out = sgpu_at(
            &cluster,
            &acctd.url(),
            &[
                "seff",
                &busy.to_string(),
                "-M",
                CLUSTER,
                "--healthd",
                &status,
            ],
        );
        match out {
            Ok(out) if out.contains("1 in use") => break out,
            out => assert!(
                began.elapsed() < Duration::from_secs(8),
                "job {busy} running: sgpu seff: {out:?}"
            ),
        }
    };
    eprintln!("$ sgpu seff {busy} (running)\n{running}");
    assert!(running.contains("RUNNING (figures so far)"), "{running}");
    assert!(running.contains("3072 / 81920 MiB"), "{running}");
    std::thread::sleep(Duration::from_secs(3));
    sgpu::update_gpus(&cluster, "node2", |s| {
        s.gpus[0].utilization_gpu = Some(0);
        s.gpus[0].memory_used_mib = 0;
    })?;
    let job = cluster.wait_job(busy, Duration::from_secs(90))?;
    assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");
    let began = Instant::now();
    let seff = loop {
        let out = sgpu_at(
            &cluster,
            &acctd.url(),
            &["seff", &busy.to_string(), "-M", CLUSTER],
        );
        match out {
            Ok(out) if out.contains("in use") => break out,
            _ => {}
        }
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "job {busy}: sgpu seff shows no sampled GPU after 60 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("$ sgpu seff {busy}\n{seff}");
    assert!(seff.contains("GPUs: 4 allocated, 1 in use"), "{seff}");
    assert!(seff.contains("asked for 4 GPUs, used 1"), "{seff}");
    assert!(
        seff.contains("GPU memory peak 3.0 GiB of 80 GiB: a smaller GPU or a MIG slice fits"),
        "{seff}"
    );
    assert!(seff.contains("CPU efficiency (Slurm):"), "{seff}");

    // sgpu report's largest wasters over these jobs: healthd measured idle time on every
    // GPU here, so the ranking is by idle GPU-hours, and -P says so per row
    let top = sgpu_at(
        &cluster,
        &acctd.url(),
        &[
            "report",
            "-S",
            "now-1hours",
            "-E",
            "now+1hours",
            "--group-by",
            "user",
            "--top",
            "1",
            "-P",
        ],
    )?;
    eprintln!("$ sgpu report --group-by user --top 1 -P\n{top}");
    let lines: Vec<&str> = top.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(
            "User|Jobs|GPUHours|UsedGPUHours|GPUUtil|EnergyKWh|AvgPowerW|IdleGPUHours|WasteGPUHours|WasteBy"
        ),
        "{top}"
    );
    assert_eq!(lines.len(), 2, "{top}");
    assert!(
        lines[1].starts_with("root|") && lines[1].ends_with("|idle"),
        "{top}"
    );
    Ok(())
}

/// `sacctmgr -i ARGS` on the slurmdbd cluster; an error names the command.
fn sacctmgr(cluster: &Cluster, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let mut all = vec!["-i"];
    all.extend_from_slice(args);
    Ok(cluster.output("sacctmgr", &all)?)
}

/// `sgpu ARGS` run as `user` (its own uid and gid, so MUNGE says who asks), with an empty
/// sgpu.toml; stdout, or an error with stderr.
fn sgpu_as(
    cluster: &Cluster,
    user: &str,
    url: &str,
    args: &[&str],
) -> Result<Result<String, String>, Box<dyn std::error::Error>> {
    use std::os::unix::fs::PermissionsExt;
    let bin = sgpu::cargo_bin("sgpu-cli", "sgpu")?;
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let config = dir.path().join("sgpu.toml");
    std::fs::write(&config, "")?;
    let id = |flag: &str| -> Result<String, Box<dyn std::error::Error>> {
        let out = std::process::Command::new("id")
            .args([flag, user])
            .output()?;
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    };
    let mut cmd = cluster.command("setpriv");
    cmd.arg(format!("--reuid={}", id("-u")?))
        .arg(format!("--regid={}", id("-g")?))
        .arg("--init-groups")
        .arg(&bin)
        .arg("--config")
        .arg(&config)
        .args(["--acctd", url])
        .args(args);
    let out = cmd.output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{}{stdout}", String::from_utf8_lossy(&out.stderr)))
    })
}

/// A one-GPU `job_end` of `user` in `account`: one hour on 2026-01-15 from `hour`:00 UTC.
fn coordinated_job(job: u32, user: &str, uid: u32, account: &str, hour: u64) -> sgpu_spool::Record {
    use sgpu_spool::{GpuEnd, JobEnd, Record, RecordBody, RecordId, RecordKind};
    const H: u64 = 3_600_000;
    let start = 1_768_435_200_000 + hour * H; // 2026-01-15T00:00:00Z + hours
    let body = JobEnd {
        user: user.into(),
        uid,
        account: Some(account.into()),
        partition: Some("gpu".into()),
        start_time: start,
        end_time: start + H,
        gpus: vec![GpuEnd {
            index: 0,
            uuid: format!("GPU-coord-{job}"),
            name: Some("NVIDIA H100 80GB HBM3".into()),
            energy_start_mj: Some(0),
            energy_end_mj: Some(1_000),
            energy_delta_mj: Some(1_000),
            mig: None,
        }],
        allocated_gpu_ms: H,
        exit: None,
        slurm_window: None,
    };
    let id =
        RecordId::new(CLUSTER, job, None, "node1", RecordKind::JobEnd).expect("a valid record id");
    Record::new(id, start + H, RecordBody::JobEnd(body)).expect("a valid record")
}

/// Issue 17 §4: Slurm's own account coordinators, read by acctd through `sacctmgr show
/// account withcoord`, see the jobs and totals of the accounts they coordinate (and their
/// own), nothing else; a user who coordinates nothing sees only their own; a coordinator
/// removed in slurmdbd loses the view at acctd's next read. Every caller runs the real
/// `sgpu` under its own uid (MUNGE says who it is).
#[test]
fn slurm_coordinators_see_their_accounts_and_nothing_else() -> TestResult {
    const COORD: &str = "sgpu-test-a";
    const OTHER: &str = "sgpu-test-b";
    const X: &str = "sgpu-coord-x";
    const Y: &str = "sgpu-coord-y";
    let cluster = dbd_cluster()?;
    let _lock = cluster.lock_exclusive()?;
    // a clean start: nothing of an earlier run in slurmdbd (errors: nothing to delete)
    let _ = sacctmgr(
        &cluster,
        &["delete", "coordinator", &format!("names={COORD}")],
    );
    for u in [COORD, OTHER] {
        let _ = sacctmgr(&cluster, &["delete", "user", &format!("name={u}")]);
    }
    let _ = sacctmgr(&cluster, &["delete", "account", &format!("name={X},{Y}")]);
    sacctmgr(
        &cluster,
        &[
            "add",
            "account",
            &format!("{X},{Y}"),
            &format!("cluster={CLUSTER}"),
        ],
    )?;
    sacctmgr(&cluster, &["add", "user", COORD, &format!("account={Y}")])?;
    sacctmgr(
        &cluster,
        &["add", "user", OTHER, &format!("account={X},{Y}")],
    )?;
    sacctmgr(
        &cluster,
        &[
            "add",
            "coordinator",
            &format!("account={X}"),
            &format!("names={COORD}"),
        ],
    )?;
    let withcoord = cluster.output(
        "sacctmgr",
        &[
            "-n",
            "-P",
            "show",
            "account",
            "withcoord",
            "format=Account,Coordinators",
        ],
    )?;
    eprintln!("sacctmgr show account withcoord:\n{withcoord}");
    assert!(
        withcoord.lines().any(|l| l == format!("{X}|{COORD}")),
        "{withcoord}"
    );

    // acctd reads them through the cluster's sacctmgr every second
    let bin = tempfile::tempdir()?;
    let cmd = cluster.command("sacctmgr");
    let real = cmd.get_program().to_string_lossy().into_owned();
    let conf = cmd
        .get_envs()
        .find(|(k, _)| *k == "SLURM_CONF")
        .and_then(|(_, v)| v)
        .map(|v| v.to_string_lossy().into_owned())
        .ok_or("the cluster's command sets no SLURM_CONF")?;
    let wrapper = bin.path().join("sacctmgr");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nSLURM_CONF='{conf}' exec '{real}' \"$@\"\n"),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    let config = bin.path().join("acctd.toml");
    std::fs::write(
        &config,
        "time_zone = \"UTC\"\n[coordinators]\nslurm = true\nrefresh_s = 1\n",
    )?;
    let acctd = Acctd::start(&[
        "--auth",
        "munge",
        "--slurm-bin",
        &bin.path().to_string_lossy(),
        "--config",
        &config.to_string_lossy(),
    ])?;
    let uid = |u: &str| -> Result<u32, Box<dyn std::error::Error>> {
        let out = std::process::Command::new("id").args(["-u", u]).output()?;
        Ok(String::from_utf8(out.stdout)?.trim().parse()?)
    };
    let records = [
        coordinated_job(970_001, OTHER, uid(OTHER)?, X, 1), // OTHER in the coordinated X
        coordinated_job(970_002, OTHER, uid(OTHER)?, Y, 2), // OTHER in Y: not COORD's
        coordinated_job(970_003, COORD, uid(COORD)?, Y, 3), // COORD's own, in Y
    ];
    let root = Client::new(
        &acctd.url(),
        ClientAuth::Munge { socket: None },
        Duration::from_secs(30),
    )?;
    let reply = root.post_records(&serde_json::to_vec(&records)?)?;
    assert_eq!(reply.accepted, 3, "{:?}", reply.results);

    let url = acctd.url();
    let window = ["-S", "2026-01-15", "-E", "2026-01-16"];
    let report = |user: &str, extra: &[&str]| -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let mut args = vec!["report"];
        args.extend(window);
        args.extend([
            "--group-by",
            "account,user",
            "-P",
            "-n",
            "-o",
            "Account,User,Jobs",
        ]);
        args.extend(extra);
        let out = sgpu_as(&cluster, user, &url, &args)?.map_err(|e| format!("{user}: {e}"))?;
        Ok(out.lines().map(str::to_string).collect())
    };
    let jobs = |user: &str| -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let mut args = vec!["jobs"];
        args.extend(window);
        args.extend(["-P", "-n", "-o", "JobID,User,Account"]);
        let out = sgpu_as(&cluster, user, &url, &args)?.map_err(|e| format!("{user}: {e}"))?;
        Ok(out.lines().map(str::to_string).collect())
    };
    // acctd reads Slurm's coordinators at start and every second: wait for the first read
    let began = Instant::now();
    let mine = vec![format!("{X}|{OTHER}|1"), format!("{Y}|{COORD}|1")];
    loop {
        let rows = report(COORD, &[])?;
        if rows == mine {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(60) && rows == [format!("{Y}|{COORD}|1")],
            "{COORD}'s report: {rows:?}; acctd's log: {}",
            std::fs::read_to_string(acctd.log()).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // the coordinator: X's jobs and totals and their own, never OTHER's job in Y
    assert_eq!(
        jobs(COORD)?,
        [format!("970001|{OTHER}|{X}"), format!("970003|{COORD}|{Y}")]
    );
    assert_eq!(report(COORD, &["-A", Y])?, [format!("{Y}|{COORD}|1")]);
    assert_eq!(report(COORD, &["-u", OTHER])?, [format!("{X}|{OTHER}|1")]);
    let job = |user: &str, id: &str| sgpu_as(&cluster, user, &url, &["job", id, "-M", CLUSTER]);
    assert!(job(COORD, "970001")?.is_ok());
    let refused = job(COORD, "970002")?.expect_err("another account's job");
    assert!(refused.contains("no records"), "{refused}");
    // a user who coordinates nothing: their own jobs only
    assert_eq!(
        report(OTHER, &[])?,
        [format!("{X}|{OTHER}|1"), format!("{Y}|{OTHER}|1")]
    );
    assert!(job(OTHER, "970003")?.is_err());
    // root sees all three
    assert_eq!(jobs("root")?.len(), 3);

    // Slurm takes the coordinator away: acctd's next read takes the view away
    sacctmgr(
        &cluster,
        &[
            "delete",
            "coordinator",
            &format!("account={X}"),
            &format!("names={COORD}"),
        ],
    )?;
    let began = Instant::now();
    loop {
        let rows = report(COORD, &[])?;
        if rows == [format!("{Y}|{COORD}|1")] {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(60) && rows == mine,
            "{COORD}'s report after the coordinator was removed: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    for u in [COORD, OTHER] {
        sacctmgr(&cluster, &["delete", "user", &format!("name={u}")])?;
    }
    sacctmgr(&cluster, &["delete", "account", &format!("name={X},{Y}")])?;
    Ok(())
}
