//! The node spool forwarder (issue 5 §2, issue 6 §1 and §5) on the real test cluster:
//! `sgpu-healthd` on each node sends its spool to a real `sgpu-acctd` and removes only what
//! acctd acknowledged. GPU jobs arrive exactly once; records spooled while acctd is down
//! arrive when it is back; `kill -9` of acctd during a large ingest loses no acknowledged
//! record and stores none twice.
//!
//! The cluster's healthd does not forward by default (other tests read the spool), so each
//! test takes the cluster's exclusive lock and turns forwarding on with
//! [`sgpu_tests::acctd::forward_to`], which puts the configuration back when it drops.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use sgpu_acct_client::{Client, ClientAuth, ClientError};
use sgpu_spool::{GpuUsage, Record, RecordBody, RecordId, RecordKind, Spool, Usage};
use sgpu_tests::acctd::{Acctd, forward_to};
use sgpu_tests::sgpu::{self, node_files};
use sgpu_tests::{Cluster, poll};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// `ClusterName` in the test cluster's slurm.conf.
const CLUSTER: &str = "sgpu-test";
const JOB_TIMEOUT: Duration = Duration::from_secs(60);

fn client(acctd: &Acctd) -> Client {
    Client::new(
        &acctd.url(),
        ClientAuth::Munge { socket: None },
        Duration::from_secs(30),
    )
    .unwrap()
}

/// acctd's records of `job` as "kind step node" -> how many; empty when it has none.
fn stored(c: &Client, job: u32) -> Result<BTreeMap<String, u32>, ClientError> {
    let v = match c.get_json(&format!("/v1/jobs/{CLUSTER}/{job}")) {
        Ok(v) => v,
        Err(ClientError::Http { status: 404, .. }) => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    let mut out = BTreeMap::new();
    for r in v["records"].as_array().into_iter().flatten() {
        let id = &r["id"];
        let key = format!(
            "{} {} {}",
            id["kind"].as_str().unwrap_or("?"),
            id["step"].as_str().unwrap_or("-"),
            id["node"].as_str().unwrap_or("?")
        );
        *out.entry(key).or_insert(0) += 1;
    }
    Ok(out)
}

/// The spool files of `job` (or of any job when `None`) on `node`.
fn spooled(
    cluster: &Cluster,
    node: &str,
    job: Option<u32>,
) -> Result<usize, sgpu_spool::SpoolError> {
    let spool = Spool::open(node_files(cluster, node).spool_dir)?;
    let mut n = 0;
    for e in spool.list()? {
        match job {
            None => n += 1,
            Some(j) => {
                if spool.read(&e).is_ok_and(|r| r.id().job_id() == j) {
                    n += 1;
                }
            }
        }
    }
    Ok(n)
}

/// Whether `node`'s spool holds the `job_usage` record of `job`.
fn spool_has_usage(
    cluster: &Cluster,
    node: &str,
    job: u32,
) -> Result<bool, sgpu_spool::SpoolError> {
    let spool = Spool::open(node_files(cluster, node).spool_dir)?;
    Ok(spool.list()?.iter().any(|e| {
        spool
            .read(e)
            .is_ok_and(|r| r.id().job_id() == job && r.id().kind() == RecordKind::JobUsage)
    }))
}

/// A forward metric's value from the node's `/metrics` (0 when absent).
fn metric(cluster: &Cluster, node: &str, series: &str) -> Result<f64, Box<dyn std::error::Error>> {
    let (code, text) = sgpu::healthd_get(cluster, node, "/metrics")?;
    assert_eq!(code, 200, "{text}");
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0))
}

/// Whether acctd has a finished GPU job's start, end and usage from `node`.
fn complete(s: &BTreeMap<String, u32>, node: &str) -> bool {
    ["job_end", "job_start", "job_usage"]
        .iter()
        .all(|k| s.contains_key(&format!("{k} - {node}")))
}

/// Asserts every record of the job is stored exactly once (the SPANK plugin's per-step
/// records, when it wrote some, included).
fn each_once(job: u32, s: &BTreeMap<String, u32>) {
    assert!(s.values().all(|&n| n == 1), "job {job}: {s:?}");
}

/// The test support itself: acctd keeps its port and database across kill -9 and restart.
#[test]
fn acctd_keeps_port_and_db_across_kill9() {
    let mut acctd = Acctd::start(&[]).unwrap();
    assert!(acctd.url().starts_with("http://127.0.0.1:"));
    TcpStream::connect(acctd.addr()).unwrap();
    acctd.kill9();
    assert!(!acctd.running());
    assert!(TcpStream::connect(acctd.addr()).is_err());
    acctd.restart().unwrap();
    assert!(acctd.running());
    TcpStream::connect(acctd.addr()).unwrap();
    assert!(acctd.db().exists());
    let db = acctd.db();
    drop(acctd);
    assert!(!db.exists(), "the temporary database is removed on drop");
}

#[test]
fn gpu_jobs_are_forwarded_once_and_leave_the_spool() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_exclusive()?;
    let acctd = Acctd::start(&[])?;
    let _fwd = forward_to(&cluster, &["node1", "node2"], &acctd.url(), "")?;
    let c = client(&acctd);
    let jobs: Vec<(u32, &str)> = vec![
        (
            cluster.sbatch(
                &["-w", "node1", "--gres=gpu:2", "-o", "/dev/null"],
                "sleep 3",
            )?,
            "node1",
        ),
        (
            cluster.sbatch(
                &["-w", "node2", "--gres=gpu:1", "-o", "/dev/null"],
                "sleep 2",
            )?,
            "node2",
        ),
    ];
    for (id, node) in &jobs {
        let job = cluster.wait_job(*id, JOB_TIMEOUT)?;
        assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");
        poll(
            Duration::from_secs(30),
            &format!("job {id}'s start, end and usage in acctd"),
            || Ok(complete(&stored(&c, *id)?, node).then_some(())),
        )?;
        poll(
            Duration::from_secs(10),
            &format!("job {id}'s records to leave {node}'s spool"),
            || Ok((spooled(&cluster, node, Some(*id))? == 0).then_some(())),
        )?;
        let got = stored(&c, *id)?;
        eprintln!("job {id} in acctd: {got:?}");
        each_once(*id, &got);
        // the usage record acctd holds is the sampler's, for the job's two or one GPUs
        let v = c.get_json(&format!("/v1/jobs/{CLUSTER}/{id}"))?;
        let usage = v["records"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["id"]["kind"] == "job_usage"))
            .ok_or("no job_usage")?;
        let gpus = usage["body"]["gpus"].as_array().map(Vec::len);
        let want = if *node == "node1" { 2 } else { 1 };
        assert_eq!(gpus, Some(want), "{usage}");
    }
    let (_, scrape) = sgpu::healthd_get(&cluster, "node1", "/metrics")?;
    let forward: Vec<&str> = scrape
        .lines()
        .filter(|l| l.contains("sgpu_forward_"))
        .collect();
    eprintln!("node1's forwarder metrics:\n{}", forward.join("\n"));
    assert!(
        metric(
            &cluster,
            "node1",
            "sgpu_forward_records_total{result=\"accepted\"}"
        )? >= 3.0
    );
    assert_eq!(
        metric(&cluster, "node1", "sgpu_forward_held_records")?,
        0.0,
        "nothing is held once the jobs are finalised"
    );
    Ok(())
}

#[test]
fn records_spooled_while_acctd_is_down_arrive_once_when_it_is_back() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_exclusive()?;
    let mut acctd = Acctd::start(&[])?;
    acctd.stop();
    let _fwd = forward_to(&cluster, &["node1", "node2"], &acctd.url(), "")?;
    let mut jobs = Vec::new();
    for (node, gres) in [("node1", "gpu:1"), ("node2", "gpu:2"), ("node1", "gpu:3")] {
        let gres = format!("--gres={gres}");
        let id = cluster.sbatch(&["-w", node, &gres, "-o", "/dev/null"], "sleep 2")?;
        jobs.push((id, node));
    }
    for (id, node) in &jobs {
        let job = cluster.wait_job(*id, JOB_TIMEOUT)?;
        assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");
        // start, end and the sampler's usage wait in the spool
        poll(
            Duration::from_secs(20),
            &format!("job {id}'s usage record in {node}'s spool"),
            || Ok(spool_has_usage(&cluster, node, *id)?.then_some(())),
        )?;
    }
    let failures = poll(Duration::from_secs(10), "a failed forwarding round", || {
        let n = metric(&cluster, "node1", "sgpu_forward_failures_total")?;
        Ok((n > 0.0).then_some(n))
    })?;
    eprintln!("forwarding rounds failed while acctd was down: {failures}");

    acctd.restart()?;
    let c = client(&acctd);
    for (id, node) in &jobs {
        poll(
            Duration::from_secs(30),
            &format!("job {id}'s records in acctd"),
            || Ok(complete(&stored(&c, *id)?, node).then_some(())),
        )?;
        poll(
            Duration::from_secs(10),
            &format!("job {id}'s records to leave {node}'s spool"),
            || Ok((spooled(&cluster, node, Some(*id))? == 0).then_some(())),
        )?;
        each_once(*id, &stored(&c, *id)?);
    }
    Ok(())
}

/// A synthetic `job_usage` record of job `job` on `node` (one GPU, 60 s).
fn synthetic_usage(job: u32, node: &str) -> Record {
    let id = RecordId::new(CLUSTER, job, None, node, RecordKind::JobUsage).unwrap();
    let start = 1_790_000_000_000 + u64::from(job) * 1000;
    Record::new(
        id,
        start + 60_000,
        RecordBody::JobUsage(Usage {
            user: "alice".into(),
            uid: 1001,
            account: Some("physics".into()),
            partition: Some("gpu".into()),
            window_start: start,
            window_end: start + 60_000,
            allocated_gpu_ms: 60_000,
            used_gpu_ms: 30_000,
            gpus: vec![GpuUsage {
                index: 0,
                uuid: format!("GPU-synthetic-{job}"),
                name: Some("NVIDIA H100 80GB HBM3".into()),
                samples: 60,
                util_mean_pct: 50.0,
                util_max_pct: 90,
                mem_peak_mib: 1024,
                energy_mj: Some(42_000_000),
                used_gpu_ms: 30_000,
                idle_ms: None,
                idle_periods: None,
            }],
            idle_gpu_ms: None,
        }),
    )
    .unwrap()
}

#[test]
fn kill9_of_acctd_during_a_large_ingest_keeps_every_acknowledged_record_once() -> TestResult {
    const RECORDS: u32 = 2000;
    const FIRST_JOB: u32 = 3_000_000;
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_exclusive()?;
    let node = "node1";
    let mut acctd = Acctd::start(&[])?;
    // forwarding starts with acctd down, so the whole backlog is in the spool first
    acctd.stop();
    let _fwd = forward_to(&cluster, &[node], &acctd.url(), "forward_batch = 50\n")?;
    let spool = Spool::open(node_files(&cluster, node).spool_dir)?;
    for job in FIRST_JOB..FIRST_JOB + RECORDS {
        spool.write(&synthetic_usage(job, node))?;
    }
    acctd.restart()?;
    // kill -9 acctd twice while the forwarder works through the backlog
    for left in [RECORDS * 3 / 4, RECORDS / 3] {
        let began = Instant::now();
        // the first record that left the spool: (when, how many were left), for a rate
        let mut first_drop: Option<(Instant, usize)> = None;
        loop {
            let n = spooled(&cluster, node, None)?;
            if first_drop.is_none() && n < RECORDS as usize {
                first_drop = Some((Instant::now(), n));
            }
            if n <= left as usize {
                if let Some((t, n0)) = first_drop.filter(|_| left == RECORDS * 3 / 4) {
                    let secs = t.elapsed().as_secs_f64();
                    eprintln!(
                        "forwarding rate (debug build, 50 per batch): {} \
                         records in {secs:.2} s = {:.0} records/s",
                        n0 - n,
                        (n0 - n) as f64 / secs
                    );
                }
                break;
            }
            assert!(
                began.elapsed() < Duration::from_secs(120),
                "the backlog did not fall to {left} in 120 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        acctd.kill9();
        eprintln!(
            "killed acctd with {} records left in the spool",
            spooled(&cluster, node, None)?
        );
        acctd.restart()?;
    }
    poll(Duration::from_secs(180), "the spool to empty", || {
        Ok((spooled(&cluster, node, None)? == 0).then_some(()))
    })?;
    let bad = node_files(&cluster, node).spool_dir.join("bad");
    let c = client(&acctd);
    let mut missing = Vec::new();
    for job in FIRST_JOB..FIRST_JOB + RECORDS {
        let s = stored(&c, job)?;
        let want: BTreeMap<String, u32> = [(format!("job_usage - {node}"), 1)].into();
        if s != want {
            missing.push((job, s));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {RECORDS} records not stored exactly once (first: {:?}); bad/: {:?}",
        missing.len(),
        missing.first(),
        std::fs::read_dir(&bad).map(|d| d.count()).unwrap_or(0)
    );
    let dup = metric(
        &cluster,
        node,
        "sgpu_forward_records_total{result=\"duplicate\"}",
    )?;
    let acc = metric(
        &cluster,
        node,
        "sgpu_forward_records_total{result=\"accepted\"}",
    )?;
    eprintln!(
        "{RECORDS} records: {acc} accepted, {dup} duplicates (stored before a kill, acknowledged after)"
    );
    assert!(acc + dup >= f64::from(RECORDS));
    Ok(())
}

#[test]
fn a_refused_credential_keeps_every_record_in_the_spool() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_exclusive()?;
    let node = "node2";
    let acctd = Acctd::start(&[])?;
    // no credential: acctd (MUNGE) answers 401; nothing may be dropped or moved to bad/
    let fwd = forward_to(&cluster, &[node], &acctd.url(), "auth = \"none\"\n")?;
    let id = cluster.sbatch(&["-w", node, "--gres=gpu:1", "-o", "/dev/null"], "sleep 1")?;
    let job = cluster.wait_job(id, JOB_TIMEOUT)?;
    assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");
    poll(
        Duration::from_secs(20),
        &format!("job {id}'s usage record in {node}'s spool"),
        || Ok(spool_has_usage(&cluster, node, id)?.then_some(())),
    )?;
    let failures = poll(
        Duration::from_secs(10),
        "a refused forwarding round",
        || {
            let n = metric(&cluster, node, "sgpu_forward_failures_total")?;
            Ok((n >= 2.0).then_some(n))
        },
    )?;
    let log = std::fs::read_to_string(node_files(&cluster, node).healthd_log)?;
    assert!(
        log.lines().rev().take(200).any(|l| l.contains("401")),
        "healthd logs acctd's refusal"
    );
    assert_eq!(
        metric(
            &cluster,
            node,
            "sgpu_forward_records_total{result=\"rejected\"}"
        )?,
        0.0
    );
    let kept = spooled(&cluster, node, Some(id))?;
    assert!(kept >= 3, "start, end and usage stay: {kept}");
    assert!(stored(&client(&acctd), id)?.is_empty());
    eprintln!("{failures} refused rounds, job {id}: {kept} records kept");
    // with the credential back, they arrive
    drop(fwd);
    let _fwd = forward_to(&cluster, &[node], &acctd.url(), "")?;
    let c = client(&acctd);
    poll(
        Duration::from_secs(30),
        &format!("job {id}'s records in acctd"),
        || Ok(complete(&stored(&c, id)?, node).then_some(())),
    )?;
    each_once(id, &stored(&c, id)?);
    Ok(())
}
