//! Active checks on idle nodes through Slurm, on a cluster of its own
//! (`/tmp/sgpu-cluster-h19c`, 3 nodes x 1 simulated GPU, ports 17600+, healthd status
//! 18601-18603; on a built Slurm, `SGPU_SLURM_PREFIX`: `/tmp/sgpu-cluster-h19c-release`,
//! ports 17610+), with a hidden maintenance partition `maint` from
//! `tests/cluster/active-extra.conf`:
//!
//! 1. a site command that fails on node1 and passes elsewhere: node1 is drained with a reason
//!    naming the check and its measurement, node2 stays in service; each run was a job of
//!    partition `maint` on that node (the command logs `SLURM_JOB_ID` and
//!    `SLURM_JOB_PARTITION`);
//! 2. node3 runs a user job when its check falls due: nothing is submitted (healthd's state
//!    says it waits for the node to be idle) until the user job ends, then the check runs
//!    there;
//! 3. node1, repaired, passes its check by hand (`sgpu check --active`, refused on node3
//!    while its user job ran); `sgpu status` shows the pass; it stays drained until its
//!    admin resumes it;
//! 4. a check that hangs (a shell waiting on a child) on node2: killed at its 3 s deadline,
//!    with its child, reported as `timeout` (node2 drained for it), and the job ends, handing
//!    the node back to Slurm;
//! 5. every run above, passed or not, by its job or by hand, left an `active_check` event in
//!    its node's history spool naming the check, the outcome, the job and the measurement;
//!    forwarded to an acctd, node1's are what `sgpu history node1 --active` lists.
//!
//! The checks run every 0.002 h (7.2 s) with the whole interval as stagger, so each run
//! waits for events (drains, result files, states), never for a fixed time. The cluster is
//! brought down at the end.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sgpu_tests::acctd::Acctd;
use sgpu_tests::cluster::repo_root;
use sgpu_tests::sgpu::{self, node_files};
use sgpu_tests::{Cluster, Record, node_state, poll};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const DIR: &str = "/tmp/sgpu-cluster-h19c";
const PORT: &str = "17600";
/// With `SGPU_SLURM_PREFIX` set: `/tmp/sgpu-cluster-h19c-release`, slurmctld on 17610.
const RELEASE_PORT: &str = "17610";

/// Brings the cluster in this directory down (also when the test fails).
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = std::process::Command::new(repo_root().join("tests/cluster/down"))
            .arg("--keep-munge")
            .env("SGPU_CLUSTER_DIR", &self.0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// `(source, reason)` of the `active_check` events in `node`'s history spool, oldest first.
fn history(
    cluster: &Cluster,
    node: &str,
) -> Result<Vec<(String, String)>, Box<dyn std::error::Error>> {
    let spool = sgpu_spool::EventSpool::open(&node_files(cluster, node).spool_dir)?;
    let mut events = Vec::new();
    for (_, e) in spool.pending()? {
        let e = e?;
        if e.action == sgpu_spool::NodeAction::ActiveCheck {
            assert_eq!(e.node, node);
            events.push((e.time_ms, e.source, e.reason));
        }
    }
    events.sort();
    Ok(events.into_iter().map(|(_, s, r)| (s, r)).collect())
}

/// Whether `events` has one by `source` whose reason starts with `start` and has `rest`.
fn has(events: &[(String, String)], source: &str, start: &str, rest: &str) -> bool {
    events
        .iter()
        .any(|(s, r)| s == source && r.starts_with(start) && r.contains(rest))
}

fn sgpu_drained(r: &Record) -> bool {
    node_state(r).1 && r.get("Reason").starts_with("sgpu:")
}

fn write_script(path: &Path, body: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

/// `node`'s sgpu.toml as installed plus `active`; healthd restarted with it, with nothing
/// of earlier active checks remembered.
fn configure(cluster: &Cluster, node: &str, active: &str) -> TestResult {
    let f = node_files(cluster, node);
    let text = std::fs::read_to_string(&f.config)?;
    let base = text.split("\n[active]").next().unwrap_or(&text).to_string();
    sgpu::stop_healthd(cluster, node)?;
    let _ = std::fs::remove_dir_all(f.state_dir.join("active"));
    let _ = std::fs::remove_file(f.state_dir.join("active-state.json"));
    let _ = std::fs::remove_file(f.state_dir.join("healthd-state.toml"));
    std::fs::write(&f.config, format!("{base}\n{active}"))?;
    sgpu::start_healthd(cluster, node)?;
    Ok(())
}

fn active_table(name: &str, command: &Path, deadline_s: u64) -> String {
    format!(
        "[active]\npartition = \"maint\"\npending_timeout_s = 300\n\n[[active.check]]\n\
         name = \"{name}\"\ncommand = [\"{}\"]\ninterval_h = 0.002\ndeadline_s = {deadline_s}\n",
        command.display()
    )
}

/// The newest result of `check` on `node`, if it ran.
fn result(cluster: &Cluster, node: &str, check: &str) -> Option<serde_json::Value> {
    let path = node_files(cluster, node)
        .state_dir
        .join("active")
        .join(format!("{check}.json"));
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

fn outcome(v: &serde_json::Value) -> &str {
    v["outcome"].as_str().unwrap_or("")
}

/// Lines the site command logged: (node, job id, partition).
fn runs(log: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().map(str::to_string);
            Some((w.next()?, w.next()?, w.next()?))
        })
        .collect()
}

/// `sgpu check --active matmul` on `node`, with its sgpu.toml and the cluster's Slurm.
fn sgpu_check_active(
    cluster: &Cluster,
    node: &str,
) -> Result<std::process::Output, Box<dyn std::error::Error>> {
    let bin = sgpu::cargo_bin("sgpu-cli", "sgpu")?;
    let out = cluster
        .command(&bin.to_string_lossy())
        .args(["check", "--active", "matmul", "--node", node])
        .env("SGPU_CONFIG", node_files(cluster, node).config)
        .output()?;
    eprintln!(
        "$ sgpu check --active matmul --node {node}\n{}{}(exit {:?})",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code()
    );
    Ok(out)
}

#[test]
fn active_checks_run_in_slurm_jobs_on_idle_nodes_and_drain_through_the_policy() -> TestResult {
    // on the Slurm the suite runs on (`SGPU_SLURM_PREFIX`: CI's release leg), else Debian's;
    // a release's cluster has a directory and ports of its own
    let prefix = std::env::var("SGPU_SLURM_PREFIX").unwrap_or_default();
    let (dir, port) = if prefix.is_empty() {
        (PathBuf::from(DIR), PORT)
    } else {
        (PathBuf::from(format!("{DIR}-release")), RELEASE_PORT)
    };
    let dir = dir.as_path();
    let _down = Down(dir.to_path_buf());
    let extra: PathBuf = repo_root().join("tests/cluster/active-extra.conf");
    let cluster = Cluster::up_in(
        dir,
        &[
            ("SGPU_CLUSTER_NODES", "3"),
            ("SGPU_CLUSTER_GPUS", "1"),
            ("SGPU_CLUSTER_PORT", port),
            ("SGPU_CLUSTER_EXTRA", &extra.to_string_lossy()),
            ("SGPU_SLURM_PREFIX", &prefix),
        ],
    )?;
    let _lock = cluster.lock_exclusive()?;
    let nodes = cluster.nodes()?;
    let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let [n1, n2, n3] = names[..] else {
        return Err(format!("expected 3 nodes, got {nodes:?}").into());
    };
    let _restore = sgpu::Restore::new(&cluster, &[n1, n2, n3]);
    for n in [n1, n2, n3] {
        sgpu::reset_gpus(&cluster, n)?;
        cluster.wait_node(n, Duration::from_secs(30), "in service", |r| {
            !node_state(r).1
        })?;
    }

    // the site's check: logs where it ran, fails where a flag file says so
    let log = dir.join("active-runs.log");
    let _ = std::fs::remove_file(&log);
    let site = dir.join("site-check");
    write_script(
        &site,
        &format!(
            "echo \"$SGPU_NODE $SLURM_JOB_ID $SLURM_JOB_PARTITION\" >> {log}\n\
             if [ -e {dir}/fail-$SGPU_NODE ]; then\n  echo 'gpu0 ok'\n  \
             echo 'matmul 12.5 TFLOPS on gpu0, expected at least 600'\n  exit 1\nfi\n\
             echo 'matmul 640 TFLOPS'\n",
            log = log.display(),
            dir = dir.display()
        ),
    )?;
    let fail1 = dir.join(format!("fail-{n1}"));
    std::fs::write(&fail1, "")?;

    // node3 is busy with a user job before its check is turned on
    let user_job = cluster.sbatch(&["-w", n3, "-p", "gpu", "-o", "/dev/null"], "sleep 600")?;
    cluster.wait_node(n3, Duration::from_secs(30), "running the user job", |r| {
        r.get("State").starts_with("MIXED") || r.get("State").starts_with("ALLOCATED")
    })?;

    for n in [n1, n2, n3] {
        configure(&cluster, n, &active_table("matmul", &site, 5))?;
    }

    // 1. the check fails on node1 only: node1 drained naming the check and the measurement
    let rec = cluster.wait_node(n1, Duration::from_secs(60), "drained by sgpu", sgpu_drained)?;
    let reason = rec.get("Reason");
    assert!(
        reason.starts_with(
            "sgpu: active.matmul: exit 1: matmul 12.5 TFLOPS on gpu0, expected at least 600 ["
        ),
        "{reason}"
    );
    poll(Duration::from_secs(60), "node2's check to pass", || {
        Ok(result(&cluster, n2, "matmul").filter(|r| outcome(r) == "pass"))
    })?;
    assert!(!node_state(&cluster.node(n2)?).1, "node2 stays in service");
    let ran = runs(&log);
    for n in [n1, n2] {
        let mine: Vec<_> = ran.iter().filter(|(node, _, _)| node == n).collect();
        assert!(!mine.is_empty(), "{n} ran the check: {ran:?}");
        for (_, job, partition) in mine {
            assert!(job.parse::<u64>().is_ok(), "{n}: in a Slurm job: {ran:?}");
            assert_eq!(partition, "maint", "{n}: in the maintenance partition");
        }
    }
    let r1 = result(&cluster, n1, "matmul").ok_or("node1's result")?;
    assert_eq!(outcome(&r1), "fail");
    assert_eq!(r1["exit_code"], 1);

    // 2. node3 runs a user job: its check waits, nothing is submitted, until the job ends
    let state3 = node_files(&cluster, n3).state_dir.join("active-state.json");
    let waiting = poll(
        Duration::from_secs(60),
        "node3's check to wait for idle",
        || {
            let text = std::fs::read_to_string(&state3).unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            Ok(v["checks"]["matmul"]["waiting"]
                .as_str()
                .filter(|w| w.contains("not IDLE"))
                .map(str::to_string))
        },
    )?;
    assert!(
        waiting.starts_with("the node is MIXED") || waiting.starts_with("the node is ALLOCATED"),
        "{waiting}"
    );
    // /status says so too (sgpu status's ACTIVE column reads it)
    poll(
        Duration::from_secs(30),
        "node3's /status to show the wait",
        || {
            let (code, body) = sgpu::healthd_get(&cluster, n3, "/status")?;
            let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            Ok(Some(()).filter(|()| {
                code == 200
                    && doc["active"][0]["name"] == "matmul"
                    && doc["active"][0]["waiting"]
                        .as_str()
                        .is_some_and(|w| w.contains("not IDLE"))
            }))
        },
    )?;
    assert!(
        result(&cluster, n3, "matmul").is_none(),
        "no check ran on the busy node3"
    );
    assert!(
        runs(&log).iter().all(|(n, _, _)| n != n3),
        "node3 never ran it while busy"
    );
    let maint3 = cluster.output("squeue", &["-h", "-p", "maint", "-w", n3, "-o", "%i"])?;
    assert_eq!(
        maint3.trim(),
        "",
        "no sgpu job queued for node3 while it is busy"
    );
    // by hand too: refused while the job runs
    let by_hand = sgpu_check_active(&cluster, n3)?;
    assert_eq!(by_hand.status.code(), Some(3), "{by_hand:?}");
    let err = String::from_utf8_lossy(&by_hand.stderr);
    assert!(err.contains("a job runs on it"), "{err}");
    cluster.output("scancel", &[&user_job.to_string()])?;
    let r3 = poll(Duration::from_secs(60), "node3's check once idle", || {
        Ok(result(&cluster, n3, "matmul"))
    })?;
    assert_eq!(outcome(&r3), "pass", "{r3}");
    assert!(runs(&log).iter().any(|(n, _, p)| n == n3 && p == "maint"));

    // 3. a hanging check on node2 (node1 fixed and resumed by its admin, so the breaker
    //    lets node2 drain): killed at its deadline with its child, reported, node handed back
    // the admin repairs node1 and runs the check by hand: it passes, healthd reads the
    // result (sgpu status shows it) and the node is resumed by the admin (active checks are
    // not auto-recoverable)
    std::fs::remove_file(&fail1)?;
    let by_hand = sgpu_check_active(&cluster, n1)?;
    let out = String::from_utf8_lossy(&by_hand.stdout);
    assert_eq!(by_hand.status.code(), Some(0), "{by_hand:?}");
    assert!(out.contains("active.matmul  pass"), "{out}");
    let r1 = result(&cluster, n1, "matmul").ok_or("node1's by-hand result")?;
    assert_eq!((outcome(&r1), r1.get("job_id")), ("pass", None));
    let addr = sgpu::healthd_status_addr(&cluster, n1)?;
    let sgpu_bin = sgpu::cargo_bin("sgpu-cli", "sgpu")?;
    let status = poll(
        Duration::from_secs(30),
        "sgpu status to show the pass",
        || {
            let out = cluster
                .command(&sgpu_bin.to_string_lossy())
                .args(["status", n1, &format!("--healthd={n1}=http://{addr}")])
                .env("SGPU_CONFIG", "/nonexistent/sgpu.toml")
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            Ok(Some(text).filter(|t| t.contains("matmul: pass at ")))
        },
    )?;
    assert!(status.contains("ACTIVE"), "{status}");
    assert!(
        sgpu_drained(&cluster.node(n1)?),
        "healthd does not resume a node drained for an active check"
    );
    configure(&cluster, n1, "")?;
    cluster.output(
        "scontrol",
        &["update", &format!("NodeName={n1}"), "State=RESUME"],
    )?;
    cluster.wait_node(n1, Duration::from_secs(30), "resumed", |r| !node_state(r).1)?;
    let pids = dir.join("hang.pids");
    let _ = std::fs::remove_file(&pids);
    let hang = dir.join("hang-check");
    write_script(
        &hang,
        &format!("sleep 1000 &\necho $$ $! > {}\nwait\n", pids.display()),
    )?;
    configure(&cluster, n2, &active_table("hang", &hang, 3))?;
    let rec = cluster.wait_node(n2, Duration::from_secs(60), "drained by sgpu", sgpu_drained)?;
    let reason = rec.get("Reason");
    assert!(
        reason.starts_with(
            "sgpu: active.hang: no answer within 3 s (deadline_s); its process group was \
             killed ["
        ),
        "{reason}"
    );
    let r = result(&cluster, n2, "hang").ok_or("node2's hang result")?;
    assert_eq!(outcome(&r), "timeout");
    let job = r["job_id"].as_u64().ok_or("the result names its job")?;
    // the shell and its child are gone (or zombies waiting for their reaper)
    for pid in std::fs::read_to_string(&pids)?.split_whitespace() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("gone");
        assert!(matches!(state, "gone" | "Z" | "X"), "pid {pid} is {state}");
    }
    // the job ended: Slurm has the node back (drained, no job on it)
    poll(Duration::from_secs(30), "the hang job to end", || {
        let out = cluster.output(
            "squeue",
            &["-h", "-t", "all", "-j", &job.to_string(), "-o", "%T"],
        )?;
        Ok(Some(out.trim().to_string()).filter(|s| {
            !matches!(
                s.as_str(),
                "RUNNING" | "PENDING" | "COMPLETING" | "CONFIGURING"
            )
        }))
    })?;
    let rec = cluster.wait_node(n2, Duration::from_secs(30), "free of jobs", |r| {
        let s = r.get("State");
        !s.contains("ALLOCATED") && !s.contains("MIXED") && !s.contains("COMPLETING")
    })?;
    assert!(
        sgpu_drained(&rec),
        "node2 stays drained for the timeout: {rec:?}"
    );
    assert!(!node_state(&cluster.node(n3)?).1, "node3 is left alone");

    // 5. each run is a line of its node's history, whatever its outcome
    let h1 = history(&cluster, n1)?;
    assert!(
        has(&h1, "healthd", "active.matmul fail in ", "(job ")
            && has(
                &h1,
                "healthd",
                "active.matmul fail",
                "matmul 12.5 TFLOPS on gpu0"
            ),
        "{h1:?}"
    );
    assert!(
        has(
            &h1,
            "sgpu-admin",
            "active.matmul pass in ",
            "(by hand): matmul 640 TFLOPS"
        ),
        "{h1:?}"
    );
    let h2 = history(&cluster, n2)?;
    assert!(
        has(&h2, "healthd", "active.matmul pass in ", "(job "),
        "{h2:?}"
    );
    assert!(
        has(
            &h2,
            "healthd",
            "active.hang timeout in ",
            &format!("(job {job}): ")
        ),
        "{h2:?}"
    );
    let h3 = history(&cluster, n3)?;
    assert!(
        has(&h3, "healthd", "active.matmul pass in ", "(job "),
        "{h3:?}"
    );
    assert!(
        !has(&h3, "sgpu-admin", "", ""),
        "the refused run is not one: {h3:?}"
    );
    // acctd takes them: node1's healthd forwards its spool, `sgpu history --active` lists
    // node1's runs (its job's failure and the pass by hand) and nothing else
    let acctd = Acctd::start(&[])?;
    let _fwd = sgpu_tests::acctd::forward_to(&cluster, &[n1], &acctd.url(), "")?;
    let shown = poll(
        Duration::from_secs(60),
        "node1's runs in acctd's history",
        || {
            let out = cluster
                .command(&sgpu_bin.to_string_lossy())
                .arg(format!("--acctd={}", acctd.url()))
                .args(["history", n1, "--active", "--json"])
                .env("SGPU_CONFIG", "/nonexistent/sgpu.toml")
                .env_remove("SUDO_USER")
                .env_remove("SGPU_ACCTD_AUTH")
                .output()?;
            let events: Vec<sgpu_spool::NodeEvent> =
                serde_json::from_slice(&out.stdout).unwrap_or_default();
            Ok(Some(events).filter(|e| e.len() >= h1.len()))
        },
    )?;
    let listed: Vec<(String, String)> = shown
        .iter()
        .map(|e| (e.source.clone(), e.reason.clone()))
        .collect();
    assert!(
        shown
            .iter()
            .all(|e| e.action == sgpu_spool::NodeAction::ActiveCheck && e.node == n1),
        "{listed:?}"
    );
    assert!(
        has(&listed, "healthd", "active.matmul fail in ", "(job ")
            && has(&listed, "sgpu-admin", "active.matmul pass in ", "(by hand)"),
        "{listed:?}"
    );
    Ok(())
}
