//! `scale-bench`: what one node's sgpu-healthd asks of slurmctld, how fast an XID drains its
//! node, and how long `sgpu status` over every node takes, as the cluster grows (10, 100 and
//! 1,000 nodes listed by default).
//!
//! It runs on a real test cluster of its own (`tests/cluster/up` in `--dir`, slurmctld on
//! `--port`): 2 real slurmd with 2 simulated GPUs each and sgpu installed (healthd on both,
//! `check_interval_s` 2 as in the cluster tests), plus `SIZE - 2` ghost nodes that slurm.conf
//! lists (State=DOWN) but no slurmd runs. node1's healthd is restarted with `scontrol` and
//! `squeue` wrappers first on its `PATH` that log every call and the bytes it printed, then
//! measured over a window at rest, and through an injected XID 79 until slurmctld shows the
//! node drained. Figures are printed, never judged; needs root (slurmd).

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use sgpu_tests::{Cluster, node_state, sgpu};

/// Real nodes (slurmd + healthd).
const REAL: usize = 2;
/// The node measured.
const NODE: &str = "node1";

/// Measures healthd's slurmctld traffic, drain latency and `sgpu status` over clusters of
/// growing size.
#[derive(Parser, Debug)]
#[command(name = "scale-bench")]
struct Args {
    /// Nodes listed in slurm.conf (2 real, the rest ghosts), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    sizes: Vec<usize>,
    /// Seconds node1's healthd is watched at rest.
    #[arg(long, default_value_t = 30)]
    window: u64,
    /// The cluster's directory.
    #[arg(long, default_value = "/tmp/sgpu-cluster-scale")]
    dir: PathBuf,
    /// slurmctld's port (slurmd take the next two, the ghosts PORT+99).
    #[arg(long, default_value_t = 17150)]
    port: u16,
}

/// One cluster size's figures.
struct Row {
    listed: usize,
    list_bytes: usize,
    list_ms: f64,
    calls_per_min: f64,
    bytes_per_min: f64,
    drain_ms: u128,
    drain_calls: usize,
    drain_bytes: u64,
    status_ms: u128,
    status_rows: usize,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scale-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `name` on `PATH`.
fn which(name: &str) -> Result<PathBuf, String> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| format!("{name} not on PATH (install slurm-client)"))
}

/// Writes wrappers for `scontrol` and `squeue` into `dir` that log `<bytes> <start> <end>
/// <program> <args>` per call
/// to `log` and pass the real program's output and status through.
fn wrappers(dir: &Path, log: &Path) -> Result<(), Box<dyn Error>> {
    std::fs::create_dir_all(dir)?;
    for name in ["scontrol", "squeue"] {
        let real = which(name)?;
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\ns=$(date +%s.%N)\nt=$(mktemp)\n'{real}' \"$@\" > \"$t\"\nrc=$?\n\
                 cat \"$t\"\necho \"$(wc -c < \"$t\") $s $(date +%s.%N) {name} $*\" >> '{log}'\n\
                 rm -f \"$t\"\nexit $rc\n",
                real = real.display(),
                log = log.display()
            ),
        )?;
        let mut perm = std::fs::metadata(&path)?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&path, perm)?;
    }
    Ok(())
}

/// (calls, bytes) logged by the wrappers.
fn logged(log: &Path) -> (usize, u64) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let bytes = text
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    (text.lines().count(), bytes)
}

/// Starts node1's healthd as `sgpu::start_healthd` does, with `wrap` first on its `PATH`.
fn start_wrapped_healthd(cluster: &Cluster, wrap: &Path) -> Result<(), Box<dyn Error>> {
    use std::os::unix::process::CommandExt;
    let f = sgpu::node_files(cluster, NODE);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&f.healthd_log)?;
    let path = format!(
        "{}:{}",
        wrap.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    );
    let child = Command::new(sgpu::sgpu_dir(cluster).join("bin/sgpu-healthd"))
        .env("PATH", path)
        .env("SGPU_CONFIG", &f.config)
        .env("SGPU_NVML_SIM_STATE", &f.nvml_state)
        .env("SLURM_CONF", cluster.slurm_conf())
        .env("SGPU_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()?;
    std::fs::write(&f.healthd_pid, format!("{}\n", child.id()))?;
    Ok(())
}

/// node1 healthy, in service, with the cluster's own healthd.
fn restore(cluster: &Cluster) -> Result<(), Box<dyn Error>> {
    sgpu::stop_healthd(cluster, NODE)?;
    sgpu::reset_gpus(cluster, NODE)?;
    if node_state(&cluster.node(NODE)?).1 {
        cluster.output(
            "scontrol",
            &["update", &format!("NodeName={NODE}"), "State=RESUME"],
        )?;
    }
    sgpu::start_healthd(cluster, NODE)?;
    Ok(())
}

fn measure(args: &Args, size: usize, sgpu_bin: &Path) -> Result<Row, Box<dyn Error>> {
    let port = args.port.to_string();
    let ghosts = (size - REAL).to_string();
    let nodes = REAL.to_string();
    let cluster = Cluster::up_in(
        &args.dir,
        &[
            ("SGPU_CLUSTER_PORT", &port),
            ("SGPU_CLUSTER_NODES", &nodes),
            ("SGPU_CLUSTER_GPUS", "2"),
            ("SGPU_CLUSTER_GHOSTS", &ghosts),
        ],
    )?;
    let _lock = cluster.lock_exclusive()?;

    // the node list itself: median of 5
    let mut times = Vec::new();
    let mut listed = (0, 0);
    for _ in 0..5 {
        let t = Instant::now();
        let out = cluster.output("scontrol", &["show", "node", "-o"])?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        listed = (out.lines().count(), out.len());
    }
    times.sort_by(f64::total_cmp);

    // node1's healthd behind the counting wrappers
    let wrap = args.dir.join("bench-wrap");
    let log = wrap.join("calls.log");
    wrappers(&wrap, &log)?;
    sgpu::stop_healthd(&cluster, NODE)?;
    sgpu::reset_gpus(&cluster, NODE)?;
    if node_state(&cluster.node(NODE)?).1 {
        cluster.output(
            "scontrol",
            &["update", &format!("NodeName={NODE}"), "State=RESUME"],
        )?;
    }
    start_wrapped_healthd(&cluster, &wrap)?;
    let result = (|| -> Result<Row, Box<dyn Error>> {
        std::thread::sleep(Duration::from_secs(3));
        let _ = std::fs::remove_file(&log);
        std::thread::sleep(Duration::from_secs(args.window));
        let (calls, bytes) = logged(&log);
        let per_min = 60.0 / args.window as f64;

        let _ = std::fs::remove_file(&log);
        let t = Instant::now();
        sgpu::update_gpus(&cluster, NODE, |s| {
            s.inject_xid(0, 79);
        })?;
        let drain_ms = loop {
            let r = cluster.node(NODE)?;
            if node_state(&r).1 && r.get("Reason").starts_with("sgpu:") {
                break t.elapsed().as_millis();
            }
            if t.elapsed() > Duration::from_secs(60) {
                return Err(format!("{NODE} not drained 60 s after XID 79").into());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // the breaker's recount after the drain belongs to the drain's cost
        std::thread::sleep(Duration::from_secs(4));
        let (drain_calls, drain_bytes) = logged(&log);

        let mut cmd = cluster.command(&sgpu_bin.to_string_lossy());
        cmd.args(["status", "--json"]);
        for n in cluster.nodes()? {
            let addr = sgpu::healthd_status_addr(&cluster, &n)?;
            cmd.arg(format!("--healthd={n}=http://{addr}"));
        }
        // the ghosts: a loopback port nothing listens on (refused at once)
        cmd.arg(format!("--healthd=http://127.0.0.1:{}", args.port + 98))
            .env("SGPU_CONFIG", "/nonexistent/sgpu.toml")
            .env_remove("SGPU_ACCTD_AUTH");
        let t = Instant::now();
        let out = cmd.output()?;
        let status_ms = t.elapsed().as_millis();
        if !out.status.success() {
            return Err(format!(
                "sgpu status failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
        Ok(Row {
            listed: listed.0,
            list_bytes: listed.1,
            list_ms: times[times.len() / 2],
            calls_per_min: calls as f64 * per_min,
            bytes_per_min: bytes as f64 * per_min,
            drain_ms,
            drain_calls,
            drain_bytes,
            status_ms,
            status_rows: rows.len(),
        })
    })();
    restore(&cluster)?;
    result
}

fn run(args: &Args) -> Result<(), Box<dyn Error>> {
    if args.sizes.iter().any(|&s| s <= REAL) {
        return Err(format!("every size must be above {REAL} (the real nodes)").into());
    }
    let sgpu_bin = sgpu::cargo_bin("sgpu-cli", "sgpu")?;
    println!(
        "scale-bench: {REAL} real nodes (2 simulated GPUs, healthd check_interval_s = {}) + \
         ghosts; node1's healthd watched {} s at rest, then through an XID 79",
        sgpu::HEALTHD_INTERVAL_S,
        args.window
    );
    let mut rows = Vec::new();
    for &size in &args.sizes {
        eprintln!("scale-bench: {size} nodes ...");
        rows.push(measure(args, size, &sgpu_bin)?);
    }
    println!(
        "{:>6} {:>10} {:>8} | {:>13} {:>13} | {:>8} {:>11} {:>11} | {:>9} {:>5}",
        "nodes",
        "list B",
        "list ms",
        "ctld calls/m",
        "ctld B/min",
        "drain ms",
        "drain calls",
        "drain B",
        "status ms",
        "rows"
    );
    for r in &rows {
        println!(
            "{:>6} {:>10} {:>8.1} | {:>13.1} {:>13.0} | {:>8} {:>11} {:>11} | {:>9} {:>5}",
            r.listed,
            r.list_bytes,
            r.list_ms,
            r.calls_per_min,
            r.bytes_per_min,
            r.drain_ms,
            r.drain_calls,
            r.drain_bytes,
            r.status_ms,
            r.status_rows
        );
    }
    Ok(())
}
