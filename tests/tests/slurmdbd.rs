//! sgpu's accounting against Slurm's own (issue 6 §5): a one-node test cluster of its own
//! with slurmdbd and MariaDB (`SGPU_CLUSTER_SLURMDBD=1`, in `/tmp/sgpu-cluster-dbd`, ports
//! apart from the default cluster's, so its slurmctld restarts never touch other tests) runs
//! GPU jobs; healthd forwards their records to a real acctd; each job's GPU count in acctd
//! equals `sacct`'s `gres/gpu` in `AllocTRES`, and its allocated GPU time agrees with
//! `gres/gpu` x `ElapsedRaw` to within 2 s per GPU (Slurm's 1 s resolution plus the gates'
//! lag); both figures are printed.
//!
//! Known gap (the ignored test): sgpu's allocated GPU time is GPUs x the prolog-to-epilog
//! wall time in ms, Slurm's is GPUs x (EndTime - StartTime) in whole seconds, so they differ
//! by the prolog's and epilog's lag (70 to 200 ms per job here, times its GPUs). Slurm
//! 22.05 gives the prolog/epilog no start or end time in their environment; the fix is for
//! the gates to take the job's StartTime/EndTime from slurmctld (`SLURM_TIME_FORMAT=%s
//! scontrol show job -o ID`) for the records' window, and for healthd's sampler to match a
//! job_end to its job_start by that same start.

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
    Ok(Some(SgpuJob {
        gpus,
        allocated_ms: n("allocated_gpu_ms")?,
        start_ms: n("start_time")?,
        end_ms: n("end_time")?,
    }))
}

#[test]
fn every_job_and_its_gpus_are_in_both_sgpu_and_slurm_accounting() -> TestResult {
    compare(false)
}

#[test]
#[ignore = "known gap: sgpu's window is prolog-to-epilog wall time, not Slurm's StartTime..EndTime (see the module documentation)"]
fn allocated_gpu_seconds_equal_slurms_sacct() -> TestResult {
    compare(true)
}

/// Runs GPU jobs on the slurmdbd cluster and compares acctd with sacct; `exact`: the
/// allocated GPU time too.
fn compare(exact: bool) -> TestResult {
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
    let mut mismatches = Vec::new();
    for id in jobs {
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
        } = sgpu;
        eprintln!(
            "job {id}: sacct gres/gpu={gpus} ElapsedRaw={elapsed} s -> {} GPU-s; sgpu {sgpu_gpus} \
             GPUs, window {start_ms}..{end_ms} ms -> allocated {allocated_ms} GPU-ms",
            gpus * elapsed
        );
        assert_eq!(sgpu_gpus, gpus, "job {id}: GPU count");
        let slurm_ms = gpus * elapsed * 1000;
        assert!(
            allocated_ms.abs_diff(slurm_ms) <= gpus * 2_000,
            "job {id}: sgpu {allocated_ms} GPU-ms, Slurm {gpus} x {elapsed} s: more than 2 s per GPU apart"
        );
        if exact && allocated_ms != slurm_ms {
            mismatches.push(format!(
                "job {id}: sgpu {allocated_ms} GPU-ms, Slurm {gpus} x {elapsed} s = {} GPU-ms",
                gpus * elapsed * 1000
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "allocated GPU time differs from Slurm's accounting:\n{}",
        mismatches.join("\n")
    );
    Ok(())
}
