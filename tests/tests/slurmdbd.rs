//! sgpu's accounting against Slurm's own (issue 6 §5): a one-node test cluster of its own
//! with slurmdbd and MariaDB (`SGPU_CLUSTER_SLURMDBD=1`, in `/tmp/sgpu-cluster-dbd`, ports
//! apart from the default cluster's, so its slurmctld restarts never touch other tests) runs
//! GPU jobs; healthd forwards their records to a real acctd; each job's GPU count in acctd
//! equals `sacct`'s `gres/gpu` in `AllocTRES`, and its allocated GPU time equals `gres/gpu`
//! x `ElapsedRaw` exactly: the epilog reads the job's StartTime/EndTime from slurmctld
//! (`SLURM_TIME_FORMAT=%s scontrol show job -o ID`, `slurm_job_times`, on by default) into
//! the job_end record's `slurm_window`, and acctd counts allocated time over it. Both
//! figures are printed, with the gates' own prolog-to-epilog window beside them.

use std::path::Path;
use std::time::{Duration, Instant};

use sgpu_acct_client::{Client, ClientAuth, ClientError};
use sgpu_tests::Cluster;
use sgpu_tests::acctd::{Acctd, forward_to};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const CLUSTER: &str = "sgpu-test";
/// Where the slurmdbd cluster lives, and its first port (the default cluster uses 16817..).
const DIR: &str = "/tmp/sgpu-cluster-dbd";
const PORT: &str = "16917";

fn dbd_cluster() -> Result<Cluster, sgpu_tests::ClusterError> {
    Cluster::up_in(
        Path::new(DIR),
        &[
            ("SGPU_CLUSTER_PORT", PORT),
            ("SGPU_CLUSTER_NODES", "1"),
            ("SGPU_CLUSTER_SLURMDBD", "1"),
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
    let _fwd = forward_to(&cluster, &["node1"], &acctd.url(), "")?;
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
