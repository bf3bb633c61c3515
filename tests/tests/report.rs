//! `sgpu report`, `sgpu jobs` and `sgpu job` (issue 6 §3, §5) on the real test cluster: GPU
//! jobs in two accounts (`--account`, free text without slurmdbd) by two users (root and
//! `sgpu-test-a`) run with `--gres=gpu:N` on simulated GPUs; their spool records go to a
//! real `sgpu-acctd`; the real `sgpu` command then reports GPU-hours equal to GPUs x the
//! jobs' elapsed time and energy within a few percent of simulated power x time, in its
//! table, `-P`, `-p`, `--format` and `--json` outputs. With MUNGE, the second user sees only
//! their own rows.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use nvml_sim::State;
use sgpu_acct_client::{Client, ClientAuth};
use sgpu_spool::{Record, RecordBody};
use sgpu_tests::Cluster;
use sgpu_tests::acctd::Acctd;
use sgpu_tests::sgpu::{self, node_files};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const JOB_TIMEOUT: Duration = Duration::from_secs(120);
const USER_A: &str = "sgpu-test-a";

struct Job {
    id: u32,
    user: String,
    account: &'static str,
    gpus: u64,
    node: String,
    elapsed_s: u64,
    records: Vec<Record>,
}

fn submit(
    cluster: &Cluster,
    user: Option<&str>,
    account: &str,
    gpus: u64,
    secs: u32,
) -> TestResult2<u32> {
    let gres = format!("--gres=gpu:{gpus}");
    let script = format!("sleep {secs}");
    let args = [
        "--parsable",
        "--account",
        account,
        &gres,
        "-o",
        "/dev/null",
        "--wrap",
        &script,
    ];
    let out = match user {
        None => cluster.command("sbatch").args(args).output()?,
        Some(u) => cluster
            .command("runuser")
            .args(["-u", u, "--", "sbatch"])
            .args(args)
            .output()?,
    };
    if !out.status.success() {
        return Err(format!("sbatch: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap_or("")
        .parse()?)
}

type TestResult2<T> = Result<T, Box<dyn std::error::Error>>;

/// `[D-]HH:MM:SS` as seconds.
fn hms(s: &str) -> u64 {
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (d.parse().unwrap_or(0), r),
        None => (0, s),
    };
    rest.split(':')
        .fold(0u64, |acc, p| acc * 60 + p.parse::<u64>().unwrap_or(0))
        + days * 86_400
}

/// The job's records once its epilog wrote `job_end`.
fn records_of(cluster: &Cluster, node: &str, id: u32) -> TestResult2<Vec<Record>> {
    let start = Instant::now();
    loop {
        let recs = sgpu::spool_records(cluster, node, id)?;
        if recs
            .iter()
            .any(|r| matches!(r.body(), RecordBody::JobEnd(_)))
        {
            return Ok(recs);
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!("no job_end record of job {id} on {node}: {recs:?}").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sgpu_cmd(config: &std::path::Path, url: &str) -> TestResult2<Command> {
    let bin = sgpu::cargo_bin("sgpu-cli", "sgpu")?;
    let mut c = Command::new(bin);
    c.arg("--config").arg(config).args(["--acctd", url]);
    Ok(c)
}

fn run(mut c: Command) -> TestResult2<String> {
    let out = c.output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{c:?} failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(stdout)
}

/// Per (account, user): (allocated GPU-ms, energy mJ, expected energy from the simulation).
fn expected(
    jobs: &[Job],
    states: &BTreeMap<String, State>,
) -> BTreeMap<(String, String), (u64, u64, f64)> {
    let mut out: BTreeMap<(String, String), (u64, u64, f64)> = BTreeMap::new();
    for j in jobs {
        let e = out
            .entry((j.account.to_string(), j.user.clone()))
            .or_default();
        for r in &j.records {
            if let RecordBody::JobEnd(b) = r.body() {
                let span = b.end_time - b.start_time;
                let (alloc_start, alloc_end) = b.allocated_window();
                for g in &b.gpus {
                    e.0 += alloc_end - alloc_start;
                    e.1 += g.energy_delta_mj.unwrap_or(0);
                    let sim = states[&j.node]
                        .gpus
                        .iter()
                        .find(|s| s.uuid == g.uuid)
                        .expect("record names a simulated GPU");
                    e.2 += f64::from(sim.power_usage_mw.unwrap_or(0)) * span as f64 / 1000.0;
                }
            }
        }
    }
    out
}

#[test]
fn report_shows_gpu_hours_and_energy_per_account_and_user() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_shared()?;
    // prices live in acctd's configuration; the user's own sgpu.toml says other prices and
    // another currency, which must change nothing
    let dir = tempfile::tempdir()?;
    let acctd_toml = dir.path().join("acctd.toml");
    std::fs::write(
        &acctd_toml,
        "time_zone = \"UTC\"\n[prices]\ncurrency = \"EUR\"\n[[prices.period]]\n\
         gpu_hour = 2.0\nkwh = 0.30\n",
    )?;
    let acctd_toml = acctd_toml.to_string_lossy().into_owned();
    let mut acctd = Acctd::start(&["--auth", "none", "--config", &acctd_toml])?;
    let config = dir.path().join("sgpu.toml");
    std::fs::write(
        &config,
        "[accounting]\nauth = \"none\"\n\n[prices]\ncurrency = \"USD\"\ngpu_hour = 0.0\nkwh = 0.0\n",
    )?;

    // Two accounts, two users, 1 and 2 GPUs; all submitted first so they run side by side.
    let plan: [(Option<&str>, &'static str, u64, u32); 4] = [
        (None, "sgpu-phys", 2, 4),
        (None, "sgpu-chem", 1, 3),
        (Some(USER_A), "sgpu-phys", 1, 3),
        (Some(USER_A), "sgpu-chem", 2, 2),
    ];
    let mut ids = Vec::new();
    for (user, account, gpus, secs) in plan {
        ids.push((
            submit(&cluster, user, account, gpus, secs)?,
            user,
            account,
            gpus,
        ));
    }
    let mut jobs = Vec::new();
    for (id, user, account, gpus) in ids {
        let job = cluster.wait_job(id, JOB_TIMEOUT)?;
        assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");
        assert_eq!(job.get("Account"), account, "{job:?}");
        let node = job.get("NodeList").to_string();
        let records = records_of(&cluster, &node, id)?;
        jobs.push(Job {
            id,
            user: user.unwrap_or("root").to_string(),
            account,
            gpus,
            elapsed_s: hms(job.get("RunTime")),
            node,
            records,
        });
    }
    let mut states = BTreeMap::new();
    for j in &jobs {
        if !states.contains_key(&j.node) {
            states.insert(
                j.node.clone(),
                State::load(node_files(&cluster, &j.node).nvml_state)?,
            );
        }
    }

    // The records go to acctd as the forwarder would send them.
    let all: Vec<&Record> = jobs.iter().flat_map(|j| &j.records).collect();
    let batch = serde_json::to_vec(&all)?;
    let client = Client::new(&acctd.url(), ClientAuth::None, Duration::from_secs(30))?;
    let reply = client.post_records(&batch)?;
    assert_eq!(reply.rejected, 0, "{:?}", reply.results);

    let want = expected(&jobs, &states);
    // GPU time is GPUs x elapsed: the epilog took the job's window from slurmctld, so the
    // records' allocated time is Slurm's RunTime exactly
    for j in &jobs {
        let key = (j.account.to_string(), j.user.clone());
        let per_job: u64 = j
            .records
            .iter()
            .filter_map(|r| match r.body() {
                RecordBody::JobEnd(b) => {
                    assert!(
                        b.slurm_window.is_some(),
                        "job {}: no Slurm window: {b:?}",
                        j.id
                    );
                    Some(b.allocated_gpu_ms)
                }
                _ => None,
            })
            .sum();
        let slurm_ms = j.gpus * j.elapsed_s * 1000;
        assert_eq!(
            per_job, slurm_ms,
            "job {}: records {per_job} GPU-ms, Slurm {} GPUs x {} s",
            j.id, j.gpus, j.elapsed_s
        );
        assert!(want.contains_key(&key));
    }

    // --json: exact figures per account and user.
    let window = ["-S", "now-2hours", "-E", "now+1hours"];
    let mut c = sgpu_cmd(&config, &acctd.url())?;
    c.arg("report")
        .args(window)
        .args(["--group-by", "account,user", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&run(c)?)?;
    assert_eq!(
        json["currency"], "EUR",
        "acctd's currency, not sgpu.toml's: {json}"
    );
    assert_eq!(json["time_zone"], "UTC", "{json}");
    let rows = json["rows"].as_array().ok_or("no rows")?;
    let mine: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| {
            r["account"]
                .as_str()
                .is_some_and(|a| a.starts_with("sgpu-"))
        })
        .collect();
    assert_eq!(mine.len(), want.len(), "{json}");
    for r in &mine {
        let key = (
            r["account"].as_str().unwrap_or("").to_string(),
            r["user"].as_str().unwrap_or("").to_string(),
        );
        let (alloc, energy, sim_energy) = want[&key];
        assert_eq!(r["allocated_gpu_ms"].as_u64(), Some(alloc), "{key:?}: {r}");
        assert_eq!(r["energy_mj"].as_u64(), Some(energy), "{key:?}: {r}");
        assert_eq!(r["jobs"].as_u64(), Some(1), "{key:?}: {r}");
        let got = energy as f64;
        assert!(
            (got - sim_energy).abs() <= 0.03 * sim_energy,
            "{key:?}: energy {got} mJ, simulated power x time {sim_energy} mJ"
        );
        // acctd's prices, rounded once to a millionth of a euro
        let cost = r["cost"].as_f64().ok_or("no cost")?;
        let want_cost = alloc as f64 / 3.6e6 * 2.0 + energy as f64 / 3.6e9 * 0.30;
        assert!(
            (cost - want_cost).abs() <= 0.6e-6,
            "{key:?}: cost {cost} vs {want_cost}"
        );
    }

    // -P with --format: the same rows, `|` between fields, the header first.
    let mut c = sgpu_cmd(&config, &acctd.url())?;
    c.arg("report").args(window).args([
        "-A",
        "sgpu-phys,sgpu-chem",
        "-P",
        "--format",
        "account,User,Jobs,GPUHours,EnergyKWh,Cost",
    ]);
    let text = run(c)?;
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("Account|User|Jobs|GPUHours|EnergyKWh|Cost"),
        "{text}"
    );
    let body: Vec<&str> = lines.collect();
    assert_eq!(body.len(), want.len(), "{text}");
    for ((account, user), (alloc, energy, _)) in &want {
        let cost = *alloc as f64 / 3.6e6 * 2.0 + *energy as f64 / 3.6e9 * 0.30;
        let line = format!(
            "{account}|{user}|1|{:.2}|{:.3}|{cost:.2}",
            *alloc as f64 / 3.6e6,
            *energy as f64 / 3.6e9
        );
        assert!(body.contains(&line.as_str()), "{line} not in\n{text}");
    }

    // -p -n, one user: `|` after every field, no header.
    let mut c = sgpu_cmd(&config, &acctd.url())?;
    c.arg("report").args(window).args([
        "-u",
        USER_A,
        "-A",
        "sgpu-phys",
        "-p",
        "-n",
        "-o",
        "User,Account,Jobs",
    ]);
    assert_eq!(run(c)?, format!("{USER_A}|sgpu-phys|1|\n"));

    // The table: a title, the header, a dashes line, one aligned line per group.
    let mut c = sgpu_cmd(&config, &acctd.url())?;
    c.arg("report")
        .args(window)
        .args(["-A", "sgpu-phys,sgpu-chem", "--group-by", "account"]);
    let table = run(c)?;
    println!("sgpu report --group-by account:\n{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("GPU usage ") && lines[0].ends_with("cost in EUR"),
        "{table}"
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        [
            "Account",
            "Jobs",
            "GPUHours",
            "UsedGPUHours",
            "GPUUtil",
            "EnergyKWh",
            "AvgPowerW",
            "Cost"
        ],
        "{table}"
    );
    assert!(lines[2].chars().all(|c| c == '-' || c == ' '), "{table}");
    assert_eq!(lines.len(), 5, "{table}");
    for l in &lines[3..] {
        assert_eq!(l.len(), lines[2].len(), "not aligned:\n{table}");
    }
    assert!(lines[3].trim_start().starts_with("sgpu-chem "), "{table}");

    // sgpu jobs and sgpu job: the jobs with their GPUs, one line per GPU.
    let mut c = sgpu_cmd(&config, &acctd.url())?;
    c.arg("jobs").args(window).args([
        "-A",
        "sgpu-phys,sgpu-chem",
        "-P",
        "-o",
        "JobID,User,Account,GPUs,State",
    ]);
    let listed = run(c)?;
    for j in &jobs {
        let line = format!("{}|{}|{}|{}|COMPLETED", j.id, j.user, j.account, j.gpus);
        assert!(listed.lines().any(|l| l == line), "{line} not in\n{listed}");
    }
    let j = &jobs[0];
    let mut c = sgpu_cmd(&config, &acctd.url())?;
    c.args(["job", &j.id.to_string(), "-M", "sgpu-test", "-P", "-n"]);
    let per_gpu = run(c)?;
    assert_eq!(per_gpu.lines().count() as u64, j.gpus, "{per_gpu}");
    assert!(
        per_gpu
            .lines()
            .all(|l| l.starts_with(&format!("{}|", j.node))),
        "{per_gpu}"
    );

    // With MUNGE: the second user sees only their own rows and cannot ask for root's.
    acctd.stop();
    let munge_acctd = Acctd::start(&["--auth", "munge"])?;
    let root = Client::new(
        &munge_acctd.url(),
        ClientAuth::Munge { socket: None },
        Duration::from_secs(30),
    )?;
    assert_eq!(root.post_records(&batch)?.rejected, 0);
    let plain = dir.path().join("plain.toml");
    std::fs::write(&plain, "[accounting]\nauth = \"munge\"\n")?;
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    std::fs::set_permissions(&plain, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let bin = sgpu::cargo_bin("sgpu-cli", "sgpu")?;
    let as_a = |extra: &[&str]| -> std::io::Result<std::process::Output> {
        cluster
            .command("runuser")
            .args(["-u", USER_A, "--"])
            .arg(&bin)
            .arg("--config")
            .arg(&plain)
            .args(["--acctd", &munge_acctd.url(), "report"])
            .args(window)
            .args(extra)
            .output()
    };
    let out = as_a(&["--group-by", "user", "--json"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let users: Vec<&str> = json["rows"]
        .as_array()
        .ok_or("no rows")?
        .iter()
        .filter_map(|r| r["user"].as_str())
        .collect();
    assert_eq!(users, [USER_A], "{json}");
    let out = as_a(&["-u", "root"])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("403") && err.contains("root"), "{err}");
    Ok(())
}
