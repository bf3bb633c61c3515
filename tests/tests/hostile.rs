//! Users write into what slurmctld prints about their jobs (name, comment, work dir, output
//! path, account string), and none of it may bend a bill: jobs with hostile fields (`=`,
//! spaces, newlines, quotes, `JobState=`, `StartTime=`, `NodeList=`, `UserId=`, non-ASCII)
//! go through real `sbatch --gres=gpu:N` on the test cluster, and each job's allocated GPU
//! time in its job-end record equals GPUs x Slurm's elapsed time, exactly.
//!
//! Before the epilog read jobs from `squeue` with trusted fields only, a job named
//! `x JobState=COMPLETED StartTime=1 EndTime=2` was billed 1 s whatever it ran.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sgpu_spool::RecordBody;
use sgpu_tests::sgpu;
use sgpu_tests::{Cluster, cluster::TERMINAL_JOB_STATES};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// What slurmctld says of a job, from `squeue` fields no user can write into (state, start,
/// end, node list), read independently of sgpu's own parser.
struct SlurmJob {
    state: String,
    start_s: u64,
    end_s: u64,
    node: String,
}

fn slurm_job(cluster: &Cluster, id: u32) -> Result<Option<SlurmJob>, Box<dyn std::error::Error>> {
    let mut cmd = cluster.command("squeue");
    cmd.args([
        "-h",
        "-t",
        "all",
        "-j",
        &id.to_string(),
        "-o",
        "%A|%T|%S|%e|%N",
    ])
    .env("SLURM_TIME_FORMAT", "%s");
    let out = cmd.output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let Some(line) = text.lines().find(|l| l.starts_with(&format!("{id}|"))) else {
        return Ok(None);
    };
    let f: Vec<&str> = line.split('|').collect();
    let [_, state, start, end, node] = f.as_slice() else {
        return Err(format!("squeue printed {line:?}").into());
    };
    Ok(Some(SlurmJob {
        state: state.to_string(),
        start_s: start.parse().unwrap_or(0),
        end_s: end.parse().unwrap_or(0),
        node: node.to_string(),
    }))
}

fn wait_ended(cluster: &Cluster, id: u32) -> Result<SlurmJob, Box<dyn std::error::Error>> {
    let t = Instant::now();
    loop {
        if let Some(j) = slurm_job(cluster, id)?
            && TERMINAL_JOB_STATES.contains(&j.state.as_str())
        {
            return Ok(j);
        }
        if t.elapsed() > JOB_TIMEOUT {
            return Err(format!("job {id} did not end within {JOB_TIMEOUT:?}").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn hostile_job_fields_do_not_change_allocated_gpu_time() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_shared()?;
    let tmp = TempDir(std::env::temp_dir().join(format!("sgpu-hostile-{}", std::process::id())));
    let workdir = tmp
        .0
        .join("w JobState=COMPLETED StartTime=1 EndTime=2 NodeList=node9 UserId=0(0)");
    std::fs::create_dir_all(&workdir)?;
    let workdir = workdir.to_string_lossy().into_owned();
    let out_path = tmp
        .0
        .join("o EndTime=2 JobState=CANCELLED %j")
        .to_string_lossy()
        .into_owned();

    // (what it attacks, sbatch options, GPUs)
    let cases: Vec<(&str, Vec<String>, u32)> = vec![
        (
            "name with fields",
            vec![
                "-J".into(),
                "x JobState=COMPLETED StartTime=1 EndTime=2".into(),
            ],
            2,
        ),
        (
            "name with line breaks",
            vec![
                "-J".into(),
                "nl\nJobId=1 JobState=COMPLETED\nStartTime=1\nEndTime=2".into(),
            ],
            1,
        ),
        (
            "comment with fields",
            vec![
                "--comment".into(),
                "c = StartTime=1 EndTime=2 NodeList=node9 UserId=alice(1001)".into(),
            ],
            1,
        ),
        (
            "comment with a line break",
            vec![
                "--comment".into(),
                "l1\nJobId=1 JobState=COMPLETED StartTime=1 EndTime=2 Restarts=3".into(),
            ],
            2,
        ),
        ("work dir", vec!["-D".into(), workdir.clone()], 1),
        (
            "non-ASCII name, account string",
            vec![
                "-J".into(),
                "ünïcødé ☃ UserId=alice(1001) StartTime=1".into(),
                "-A".into(),
                "x StartTime=1 EndTime=2".into(),
            ],
            1,
        ),
        (
            "quotes, output path",
            vec![
                "-J".into(),
                "q'uote\"s = == JobState=CANCELLED EndTime=".into(),
                "-o".into(),
                out_path.clone(),
            ],
            2,
        ),
    ];

    let mut jobs = Vec::new();
    for (what, opts, gpus) in &cases {
        let mut args: Vec<String> = opts.clone();
        args.push(format!("--gres=gpu:{gpus}"));
        if !opts.iter().any(|o| o == "-o") {
            args.extend(["-o".to_string(), "/dev/null".to_string()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = cluster.sbatch(&refs, "sleep 2")?;
        jobs.push((id, *what, *gpus));
    }
    for (id, what, gpus) in jobs {
        let job = wait_ended(&cluster, id)?;
        assert_eq!(job.state, "COMPLETED", "{what}: job {id}");
        let elapsed_s = job.end_s.saturating_sub(job.start_s);
        assert!(
            (2..=60).contains(&elapsed_s),
            "{what}: Slurm says job {id} ran {elapsed_s} s ({}..{})",
            job.start_s,
            job.end_s
        );
        let recs = sgpu::spool_records(&cluster, &job.node, id)?;
        let end = recs
            .iter()
            .find_map(|r| match r.body() {
                RecordBody::JobEnd(e) => Some(e),
                _ => None,
            })
            .ok_or_else(|| format!("{what}: no job_end record for job {id}: {recs:?}"))?;
        assert_eq!(end.gpus.len(), gpus as usize, "{what}: {end:?}");
        let window = end
            .slurm_window
            .ok_or_else(|| format!("{what}: job {id}: the epilog did not read Slurm's window"))?;
        assert_eq!(
            (window.start_s, window.end_s),
            (job.start_s, job.end_s),
            "{what}: job {id}: the record's window is not Slurm's"
        );
        assert_eq!(
            end.allocated_gpu_ms,
            u64::from(gpus) * elapsed_s * 1000,
            "{what}: job {id}: allocated GPU time is not GPUs x Slurm's elapsed time"
        );
        eprintln!(
            "{what}: job {id}, {gpus} GPU(s) x {elapsed_s} s = {} GPU-ms",
            end.allocated_gpu_ms
        );
    }
    Ok(())
}
