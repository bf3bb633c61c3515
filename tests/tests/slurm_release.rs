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

/// Brings the one-node cluster of [`hook_environment_has_the_start_and_the_end`]
/// down when the test ends, whatever happened.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(sgpu_tests::cluster::repo_root().join("tests/cluster/down"))
            .env("SGPU_CLUSTER_DIR", &self.0)
            .status();
    }
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
    let _down = Down(dir.clone());
    let port = port.to_string();
    let extra_s = extra.to_string_lossy().into_owned();
    // the same Slurm as the suite's cluster
    let prefix = base
        .slurm_prefix()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cluster = Cluster::up_in(
        &dir,
        &[
            ("SGPU_CLUSTER_NODES", "1"),
            ("SGPU_CLUSTER_GPUS", "1"),
            ("SGPU_CLUSTER_PORT", &port),
            ("SGPU_CLUSTER_EXTRA", &extra_s),
            ("SGPU_SLURM_PREFIX", &prefix),
        ],
    )?;
    let release = running_release(&cluster)?;
    let (major, minor) = release
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .ok_or("bad release")?;

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
