//! What differs between the Slurm releases sgpu runs on, checked on the running test cluster:
//! Debian's 22.05 by default, or a release built by `scripts/build-slurm` when the cluster was
//! brought up with `SGPU_SLURM_PREFIX` (CI's second leg: 26.05.3).
//!
//! - `sgpu conf check` compares the installed SPANK plugin with the Slurm that runs (asking
//!   the `scontrol` the node's sgpu.toml names): the plugin built for this cluster passes, one
//!   built for another release is an error naming both releases.
//! - The Prolog's and Epilog's `SLURM_JOB_START_TIME`/`SLURM_JOB_END_TIME` (Slurm 23.02+):
//!   recorded on a one-node cluster of its own whose extra `Prolog=`/`Epilog=` lines dump
//!   them. Measured on 26.05.3: the Prolog's end is projected (start + time limit), the
//!   Epilog's is the job's real end, equal to squeue's `EndTime`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sgpu_tests::Cluster;
use sgpu_tests::sgpu;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// `sgpu --config NODE_TOML conf check --json` against `slurm_conf`, with a `PATH` that holds
/// no built Slurm: the version compared is the one of the `scontrol` sgpu.toml names.
fn conf_check(
    cluster: &Cluster,
    slurm_conf: &Path,
) -> Result<Vec<serde_json::Value>, Box<dyn std::error::Error>> {
    let node = sgpu::node_files(cluster, "node1");
    let out = Command::new(sgpu::cargo_bin("sgpu-cli", "sgpu")?)
        .arg("--config")
        .arg(&node.config)
        .args(["conf", "check", "--json", "--no-nvml", "--node", "node1"])
        .arg("--slurm-conf")
        .arg(slurm_conf)
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .env_remove("SLURM_CONF")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&stdout)
        .map_err(|e| format!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)))?;
    let findings = v["findings"].as_array().cloned().unwrap_or_default();
    eprintln!("{}", serde_json::to_string_pretty(&findings)?);
    Ok(findings)
}

fn with_id<'a>(findings: &'a [serde_json::Value], id: &str) -> Option<&'a serde_json::Value> {
    findings.iter().find(|f| f["id"] == id)
}

/// The running Slurm's `major.minor`, from this cluster's `scontrol --version`.
fn running_release(cluster: &Cluster) -> Result<String, Box<dyn std::error::Error>> {
    let v = cluster.output("scontrol", &["--version"])?;
    let v = v.trim().rsplit(' ').next().unwrap_or("").to_string();
    let mm: Vec<&str> = v.split('.').take(2).collect();
    if mm.len() != 2 {
        return Err(format!("scontrol --version printed {v:?}").into());
    }
    Ok(mm.join("."))
}

#[test]
fn conf_check_compares_the_plugin_with_the_running_slurm() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_shared()?;
    let release = running_release(&cluster)?;
    if let Some(prefix) = cluster.slurm_prefix() {
        assert!(
            prefix.to_string_lossy().contains(&release),
            "{} runs Slurm {release}",
            prefix.display()
        );
    }

    // the plugin installed in this cluster was built for the Slurm it runs
    let findings = conf_check(&cluster, cluster.slurm_conf())?;
    assert!(with_id(&findings, "plugin.version").is_none());
    assert!(with_id(&findings, "plugin.unloadable").is_none());
    assert!(with_id(&findings, "slurm.version_unknown").is_none());

    // a plugin built for another Slurm: on a built Slurm, the main target's (Debian's 22.05
    // headers); on Debian's, one built for another release earlier, when there is one
    let (dir, _) = sgpu_tests_target()?;
    let other: Option<PathBuf> = if cluster.slurm_prefix().is_some() {
        Some(dir.join("libspank_sgpu.so"))
    } else {
        std::fs::read_dir(dir.parent().unwrap_or(&dir))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("slurm-"))
            })
            .map(|p| {
                p.join(dir.file_name().unwrap_or_default())
                    .join("libspank_sgpu.so")
            })
            .find(|p| p.is_file())
    };
    let Some(other) = other else {
        eprintln!("no plugin built for another Slurm here: only the matching one was checked");
        return Ok(());
    };
    let site = tempfile::tempdir()?;
    let conf = std::fs::read_to_string(cluster.slurm_conf())?;
    // installed under the name plugstack.conf lists (Cargo builds libspank_sgpu.so)
    let installed = site.path().join("spank_sgpu.so");
    std::fs::copy(&other, &installed)?;
    let plugstack = site.path().join("plugstack.conf");
    std::fs::write(&plugstack, format!("optional {}\n", installed.display()))?;
    let conf: String = conf
        .lines()
        .map(|l| {
            if l.starts_with("PlugStackConfig=") {
                format!("PlugStackConfig={}\n", plugstack.display())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let slurm_conf = site.path().join("slurm.conf");
    std::fs::write(&slurm_conf, conf)?;
    let findings = conf_check(&cluster, &slurm_conf)?;
    let f = with_id(&findings, "plugin.version").ok_or("no plugin.version finding")?;
    assert_eq!(f["level"], "error");
    let problem = f["problem"].as_str().unwrap_or("");
    assert!(
        problem.contains(&format!("but Slurm {release} runs here")),
        "{problem}"
    );
    assert!(problem.contains("silently skipped"), "{problem}");
    Ok(())
}

/// The directory this test's cargo profile builds into (`target/debug`), and the profile.
fn sgpu_tests_target() -> Result<(PathBuf, String), Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let deps = exe.parent().ok_or("no parent of the test binary")?;
    let dir = if deps.ends_with("deps") {
        deps.parent().ok_or("no target dir")?
    } else {
        deps
    };
    let profile = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "debug".into());
    Ok((dir.to_path_buf(), profile))
}

/// Brings a test's one-node cluster of its own ([`side_cluster`]) down when the test ends,
/// whatever happened.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(sgpu_tests::cluster::repo_root().join("tests/cluster/down"))
            .env("SGPU_CLUSTER_DIR", &self.0)
            .status();
    }
}

/// A one-node cluster of a test's own in `dir` beside the suite's `base`, on the same Slurm
/// (its prefix, or Debian's), slurmctld on `port`, `gpus` simulated GPUs and `extra` added
/// to slurm.conf. The guard, made before the cluster starts, brings it down however the
/// test ends.
fn side_cluster(
    base: &Cluster,
    dir: &Path,
    port: u16,
    gpus: u32,
    extra: &Path,
) -> Result<(Down, Cluster), Box<dyn std::error::Error>> {
    let down = Down(dir.to_path_buf());
    let prefix = base
        .slurm_prefix()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cluster = Cluster::up_in(
        dir,
        &[
            ("SGPU_CLUSTER_NODES", "1"),
            ("SGPU_CLUSTER_GPUS", &gpus.to_string()),
            ("SGPU_CLUSTER_PORT", &port.to_string()),
            ("SGPU_CLUSTER_EXTRA", &extra.to_string_lossy()),
            ("SGPU_SLURM_PREFIX", &prefix),
        ],
    )?;
    Ok((down, cluster))
}

/// `(major, minor)` of a release such as `26.05.3`.
fn release_pair(release: &str) -> Result<(u32, u32), Box<dyn std::error::Error>> {
    release
        .split_once('.')
        .and_then(|(a, b)| {
            let minor = b.split('.').next().unwrap_or(b);
            Some((a.parse::<u32>().ok()?, minor.parse::<u32>().ok()?))
        })
        .ok_or_else(|| format!("cannot read a release from {release:?}").into())
}

/// One job's `StartTime`/`EndTime` in Unix seconds, from `squeue` (fields no user can set).
fn squeue_window(cluster: &Cluster, id: u32) -> Result<(i64, i64), Box<dyn std::error::Error>> {
    let out = cluster
        .command("squeue")
        .args([
            "-h",
            "-t",
            "all",
            "-j",
            &id.to_string(),
            "-O",
            "StartTime:|,EndTime:|",
        ])
        .env("SLURM_TIME_FORMAT", "%s")
        .output()?;
    let line = String::from_utf8_lossy(&out.stdout);
    let mut f = line.trim().split('|');
    let start = f.next().unwrap_or("").parse()?;
    let end = f.next().unwrap_or("").parse()?;
    Ok((start, end))
}

#[test]
fn hook_environment_has_the_start_and_the_end() -> TestResult {
    // a one-node cluster of its own beside the suite's, whose extra Prolog=/Epilog= lines
    // dump the hooks' environment (since 24.05 such lines accumulate; before, the last wins)
    let base = Cluster::existing().or_else(|_| Cluster::up())?;
    let dir = PathBuf::from(format!("{}-hook-env", base.dir().display()));
    let port: u16 = std::env::var("SGPU_CLUSTER_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(16817)
        + 50;
    let dumps = dir.join("hook-env");
    std::fs::create_dir_all(&dumps)?;
    let mut extra_conf = String::new();
    // two Epilog= lines: the first one runs only where they accumulate
    for (hook, key) in [
        ("prolog", "Prolog"),
        ("epilog-first", "Epilog"),
        ("epilog", "Epilog"),
    ] {
        let script = dir.join(format!("{hook}-env.sh"));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nf={}/$SLURM_JOB_ID.{hook}\nenv > $f.tmp && mv $f.tmp $f\n",
                dumps.display()
            ),
        )?;
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        extra_conf.push_str(&format!("{key}={}\n", script.display()));
    }
    let extra = dir.join("extra.conf");
    std::fs::write(&extra, extra_conf)?;
    let (_down, cluster) = side_cluster(&base, &dir, port, 1, &extra)?;
    let release = running_release(&cluster)?;
    let (major, minor) = release_pair(&release)?;

    // a 5-minute limit, a 1-second job: the real end is far from the projected one
    let id = cluster.sbatch(&["--time=5", "--gres=gpu:1", "-o", "/dev/null"], "sleep 1")?;
    let rec = cluster.wait_job(id, Duration::from_secs(60))?;
    assert_eq!(rec.get("JobState"), "COMPLETED");
    let read = |hook: &str| -> Result<String, Box<dyn std::error::Error>> {
        let dump = dumps.join(format!("{id}.{hook}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !dump.exists() {
            if std::time::Instant::now() > deadline {
                return Err(format!("the {hook} of job {id} left no {}", dump.display()).into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(std::fs::read_to_string(&dump)?)
    };
    let var = |env: &str, name: &str| -> Option<i64> {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.trim().parse().ok())
    };
    let (start, end) = squeue_window(&cluster, id)?;
    let prolog = read("prolog")?;
    let epilog = read("epilog")?;
    eprintln!(
        "Slurm {release}: squeue StartTime={start} EndTime={end}; \
         Prolog SLURM_JOB_START_TIME={:?} SLURM_JOB_END_TIME={:?}; \
         Epilog SLURM_JOB_START_TIME={:?} SLURM_JOB_END_TIME={:?}",
        var(&prolog, "SLURM_JOB_START_TIME"),
        var(&prolog, "SLURM_JOB_END_TIME"),
        var(&epilog, "SLURM_JOB_START_TIME"),
        var(&epilog, "SLURM_JOB_END_TIME"),
    );
    assert!(
        end < start + 5 * 60,
        "the job ended at {end}, before its limit"
    );
    if (major, minor) >= (23, 2) {
        // the Prolog's end is projected: the start plus the time limit
        assert_eq!(var(&prolog, "SLURM_JOB_START_TIME"), Some(start));
        assert_eq!(var(&prolog, "SLURM_JOB_END_TIME"), Some(start + 5 * 60));
        // the Epilog's is the job's real end, as slurmctld has it
        assert_eq!(var(&epilog, "SLURM_JOB_START_TIME"), Some(start));
        assert_eq!(var(&epilog, "SLURM_JOB_END_TIME"), Some(end));
    } else {
        for env in [&prolog, &epilog] {
            assert_eq!(var(env, "SLURM_JOB_START_TIME"), None);
            assert_eq!(var(env, "SLURM_JOB_END_TIME"), None);
        }
    }
    // the Epilog= line before the last ran (and so did sgpu's own hooks) only since 24.05
    let first = dumps.join(format!("{id}.epilog-first"));
    assert_eq!(
        first.exists(),
        (major, minor) >= (24, 5),
        "{}",
        first.display()
    );
    if (major, minor) >= (24, 5) {
        // sgpu's own epilog ran beside the dumps: its job-end record carries Slurm's window
        // (from the Epilog's environment on 23.02+, squeue before), equal to squeue's
        let new = sgpu::node_files(&cluster, "node1").spool_dir.join("new");
        let name = format!(",{id},,node1,job_end.json");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let record = loop {
            let found = std::fs::read_dir(&new)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.to_string_lossy().ends_with(&name));
            if let Some(p) = found {
                break std::fs::read_to_string(p)?;
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("no job_end record of job {id} in {}", new.display()).into());
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let v: serde_json::Value = serde_json::from_str(&record)?;
        assert_eq!(v["body"]["slurm_window"]["start_s"], start, "{record}");
        assert_eq!(v["body"]["slurm_window"]["end_s"], end, "{record}");
    }
    Ok(())
}

/// `State=` and the raw `Reason=` of node1, and the node as sgpu reads it.
fn node1(
    cluster: &Cluster,
) -> Result<(String, sgpu_nodelib::slurmctl::NodeInfo), Box<dyn std::error::Error>> {
    let line = cluster.output("scontrol", &["show", "node", "-o", "node1"])?;
    let info = sgpu_nodelib::slurmctl::parse_node_info(line.trim())
        .ok_or_else(|| format!("no node in {line:?}"))?;
    Ok((line.trim().to_string(), info))
}

/// Waits until node1's state says `want` (e.g. `NOT_RESPONDING`), up to `secs`.
fn wait_node1(
    cluster: &Cluster,
    secs: u64,
    want: impl Fn(&str) -> bool,
) -> Result<(String, sgpu_nodelib::slurmctl::NodeInfo), Box<dyn std::error::Error>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let (line, info) = node1(cluster)?;
        if want(&info.state.state) {
            return Ok((line, info));
        }
        if std::time::Instant::now() > deadline {
            return Err(
                format!("node1 did not reach the state waited for in {secs} s: {line}").into(),
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_drained_node_that_stops_answering_stays_sgpus() -> TestResult {
    // a one-node cluster of its own whose slurmctld gives up on a silent slurmd in 5 s
    let base = Cluster::existing().or_else(|_| Cluster::up())?;
    let dir = PathBuf::from(format!("{}-not-responding", base.dir().display()));
    let port: u16 = match base.slurm_prefix() {
        Some(_) => {
            std::env::var("SGPU_CLUSTER_PORT")
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or(17717)
                + 70
        }
        None => 17795,
    };
    std::fs::create_dir_all(&dir)?;
    let extra = dir.join("extra.conf");
    std::fs::write(&extra, "SlurmdTimeout=5\n")?;
    let (_down, cluster) = side_cluster(&base, &dir, port, 1, &extra)?;
    let release = running_release(&cluster)?;
    let (major, minor) = release_pair(&release)?;

    // drained as sgpu drains (healthd, the gates): its reason, through scontrol
    let ours = "sgpu: gpu.xid gpu0: xid 79 GPU has fallen off the bus";
    let status = cluster
        .command("scontrol")
        .args(["update", "NodeName=node1", "State=DRAIN"])
        .arg(format!("Reason={ours}"))
        .status()?;
    assert!(status.success());
    let (_, drained) = node1(&cluster)?;
    let drained_at = drained
        .reason_time
        .ok_or("no reason time after the drain")?;
    assert_eq!(drained.state.reason.as_deref(), Some(ours));

    // slurmd goes silent: slurmctld marks the node DOWN+NOT_RESPONDING
    let pid = std::fs::read_to_string(dir.join("run/slurmd-node1.pid"))?;
    let pid: u32 = pid.trim().parse()?;
    // the slurmd this test's cluster started, by its pid
    assert!(
        Command::new("kill")
            .arg(pid.to_string())
            .status()?
            .success()
    );
    std::thread::sleep(Duration::from_secs(1));
    let (line, down) = wait_node1(&cluster, 60, |s| s.contains("DOWN"))?;
    eprintln!("Slurm {release}: {line}");
    let reason = down.state.reason.clone().unwrap_or_default();
    assert!(down.state.drained_by_sgpu(), "{line}");
    assert!(down.state.down_or_failed(), "{line}");
    let (own, appended) = sgpu_nodelib::slurmctl::split_appended(&reason);
    assert_eq!(own, ours, "{line}");
    if (major, minor) >= (23, 2) {
        // slurmctld appended its reason and restamped it: sgpu no longer trusts the time
        assert_eq!(appended, Some("Not responding"), "{line}");
        assert_eq!(down.reason_time, None, "{line}");
    } else {
        assert_eq!(appended, None, "{line}");
        assert_eq!(down.reason_time, Some(drained_at), "{line}");
    }
    // the breaker still counts it as sgpu's, first in line
    let all = vec![down.clone()];
    let counts = sgpu_nodelib::breaker::scope_counts(&all, &Default::default());
    assert!(counts.iter().all(|c| c.held == 1), "{counts:?}");

    // slurmd comes back (ReturnToService=2): drained, still by sgpu, so healthd may resume it
    let node_dir = sgpu::node_files(&cluster, "node1");
    let status = cluster
        .command("slurmd")
        .args(["-N", "node1"])
        .env("SGPU_CONFIG", &node_dir.config)
        .env("SGPU_NVML_SIM_STATE", &node_dir.nvml_state)
        .status()?;
    assert!(status.success());
    let (line, back) = wait_node1(&cluster, 60, |s| {
        !s.contains("DOWN") && !s.contains("NOT_RESPONDING")
    })?;
    eprintln!("Slurm {release}, slurmd back: {line}");
    assert!(back.state.drained_by_sgpu(), "{line}");
    assert!(!back.state.down_or_failed(), "{line}");
    assert_eq!(
        sgpu_nodelib::slurmctl::split_appended(back.state.reason.as_deref().unwrap_or("")).0,
        ours
    );
    Ok(())
}

#[test]
fn prolog_runs_in_the_job_with_run_in_job() -> TestResult {
    // PrologFlags=RunInJob (24.05+): the Prolog runs in the job's extern step. On a one-node
    // cluster of its own, a second Prolog= line records what sgpu-prolog sees there (its
    // parent; the same hook wrapper exec's sgpu-prolog), and sgpu's gate passes the job.
    // The cluster has no cgroups (CgroupPlugin=disabled): that the prolog then sees only
    // the job's GPUs (ConstrainDevices=yes) is not shown here; sgpu-prolog's unit tests
    // (run_in_job) cover what it judges then.
    let base = Cluster::existing().or_else(|_| Cluster::up())?;
    let release = running_release(&base)?;
    let (major, minor) = release_pair(&release)?;
    if (major, minor) < (24, 5) {
        eprintln!("Slurm {release} has no PrologFlags=RunInJob (24.05+): nothing to run");
        return Ok(());
    }
    let dir = PathBuf::from(format!("{}-run-in-job", base.dir().display()));
    let port: u16 = std::env::var("SGPU_CLUSTER_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(17717)
        + 60; // 26.05: 17777, 25.11: 17797 (the default cluster's healthd has 17818..)
    let dumps = dir.join("prolog-parent");
    std::fs::create_dir_all(&dumps)?;
    let script = dir.join("parent.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntr '\\0' ' ' < /proc/$PPID/cmdline > {}/$SLURM_JOB_ID\n",
            dumps.display()
        ),
    )?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let extra = dir.join("extra.conf");
    std::fs::write(
        &extra,
        format!("PrologFlags=RunInJob\nProlog={}\n", script.display()),
    )?;
    let (_down, cluster) = side_cluster(&base, &dir, port, 2, &extra)?;
    let flags = cluster.output("scontrol", &["show", "config"])?;
    let flags = flags
        .lines()
        .find(|l| l.starts_with("PrologFlags"))
        .unwrap_or("")
        .to_string();
    assert!(flags.contains("RunInJob"), "{flags}");

    let id = cluster.sbatch(&["--gres=gpu:1", "-o", "/dev/null"], "sleep 1")?;
    let rec = cluster.wait_job(id, Duration::from_secs(60))?;
    assert_eq!(rec.get("JobState"), "COMPLETED");
    let dump = dumps.join(id.to_string());
    let parent = std::fs::read_to_string(&dump)
        .map_err(|e| format!("the Prolog of job {id} left no {}: {e}", dump.display()))?;
    eprintln!("Slurm {release}, {flags}: the Prolog's parent is {parent:?}");
    assert_eq!(parent.trim(), format!("slurmstepd: [{id}.extern]"));
    // sgpu's gate ran there and passed: its job_start record, the node not drained
    let new = sgpu::node_files(&cluster, "node1").spool_dir.join("new");
    let name = format!(",{id},,node1,job_start.json");
    let found = std::fs::read_dir(&new)
        .map_err(|e| format!("{}: {e}", new.display()))?
        .filter_map(Result::ok)
        .any(|e| e.path().to_string_lossy().ends_with(&name));
    assert!(
        found,
        "no job_start record of job {id} in {}",
        new.display()
    );
    let node = cluster.output("scontrol", &["show", "node", "-o", "node1"])?;
    assert!(!node.contains("DRAIN"), "{node}");
    Ok(())
}
