//! `healthd-bench`: what the real `sgpu-healthd` costs a node while it runs: its CPU use
//! (% of one core) and peak RSS over a window, next to an idle baseline process (`sleep`)
//! started the same way and measured over the same window.
//!
//! Everything lives in a temporary directory: the simulated NVML library, a healthy GPU state
//! file, a slurm.conf and gres.conf for node `bench1`, an `sgpu.toml` (state and spool
//! directories inside, a `scontrol` stub that records every call so nothing reaches a real
//! slurmctld, `/status` on a free loopback port or off), and unless `--no-job` a job that the
//! real `sgpu-prolog` starts on every GPU, so healthd samples into it. Figures are printed,
//! never judged: the exit status is non-zero only when healthd exited early or (with `/status`
//! on) never reported a sample, which would make the figures meaningless.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use sgpu_wire::healthd::StatusDoc;

mod node;
use node::{CLUSTER, NODE, SimNode, write};

/// The job the prolog starts on every GPU (unless `--no-job`).
const JOB: u32 = 1000;
/// The targets.
const TARGET_CPU_PCT: f64 = 1.0;
const TARGET_RSS_MIB: f64 = 30.0;

/// Runs sgpu-healthd on a node with simulated GPUs and prints its CPU use and peak RSS next
/// to an idle baseline process's.
#[derive(Parser, Debug)]
#[command(name = "healthd-bench")]
struct Args {
    /// Length of the measured window, seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seconds healthd runs before the window opens (start-up, first full run).
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Simulated GPUs on the node.
    #[arg(long, default_value_t = 8)]
    gpus: u32,
    /// healthd's `sample_interval_s`.
    #[arg(long, default_value_t = 1)]
    sample_interval: u64,
    /// healthd's `check_interval_s` (seconds between full runs).
    #[arg(long, default_value_t = 30)]
    check_interval: u64,
    /// No job: by default the real sgpu-prolog starts job 1000 on every GPU before healthd
    /// starts, so healthd samples into a job's accumulators (flushed to sled every sample).
    #[arg(long)]
    no_job: bool,
    /// `status_listen = "off"`: no HTTP server (then nothing checks that samples happen).
    #[arg(long)]
    no_status: bool,
    /// Directory holding sgpu-healthd and sgpu-prolog [default: this program's directory].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The idle baseline program; it is given the run's length in seconds as its argument.
    #[arg(long, default_value = "/bin/sleep")]
    baseline: PathBuf,
    /// Keep the temporary directory (its path is printed) instead of deleting it.
    #[arg(long)]
    keep: bool,
    /// Run on this machine's real GPUs through the system's NVML (a GPU node) instead of
    /// the simulator; `--gpus` must then be the node's GPU count.
    #[arg(long)]
    system_nvml: bool,
}

/// The simulated node: its files, and the environment healthd is started with.
struct Node {
    sim: SimNode,
    log: PathBuf,
    calls: PathBuf,
    state_dir: PathBuf,
    env: Vec<(String, OsString)>,
}

impl Node {
    fn new(args: &Args, status: Option<SocketAddr>) -> Result<Node, String> {
        let sim = SimNode::new("sgpu-healthd-bench.", args.gpus, args.system_nvml)?;
        let d = sim.path();
        let gpus = args.gpus;
        // records every call; answers `show node` with an idle node, so nothing reaches a
        // real slurmctld and healthd sees a plausible cluster
        let calls = d.join("scontrol-calls.log");
        let scontrol = sim.scontrol(&format!(
            "echo \"$@\" >> '{}'\n\
             if [ \"$1\" = show ]; then\n  \
             echo 'NodeName={NODE} Arch=x86_64 CPUTot=2 Gres=gpu:h100:{gpus} \
             State=IDLE Partitions=gpu'\nfi\n",
            calls.display()
        ))?;
        let state_dir = d.join("state");
        let listen = status.map_or_else(|| "off".to_string(), |a| a.to_string());
        let config = d.join("sgpu.toml");
        write(
            &config,
            &format!(
                "{}state_dir = \"{}\"\nspool_dir = \"{}\"\n\
                 scontrol = \"{}\"\nnode_name = \"{NODE}\"\ncheck_interval_s = {}\n\
                 sample_interval_s = {}\nstatus_listen = \"{listen}\"\n\
                 gate_socket = \"{}\"\n",
                sim.nvml_line(),
                state_dir.display(),
                d.join("spool").display(),
                scontrol.display(),
                args.check_interval,
                args.sample_interval,
                d.join("run/healthd.sock").display(),
            ),
        )?;
        let mut env: Vec<(String, OsString)> = vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("SLURMD_NODENAME".into(), NODE.into()),
            ("SLURM_CLUSTER_NAME".into(), CLUSTER.into()),
            ("SLURM_CONF".into(), sim.slurm_conf.clone().into()),
            ("SGPU_CONFIG".into(), config.into()),
            ("SGPU_LOG".into(), "info".into()),
            (nvml_sim::STATE_ENV.into(), sim.state.clone().into()),
        ];
        env.extend(sim.system_env());
        Ok(Node {
            log: d.join("healthd.log"),
            calls,
            state_dir,
            env,
            sim,
        })
    }

    /// Starts `program` with the node's environment, stdin/stdout on /dev/null and stderr
    /// appended to the node's log.
    fn spawn(&self, program: &Path, args: &[String]) -> Result<Child, String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        Command::new(program)
            .args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.sim.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))
    }
}

/// Runs the real sgpu-prolog for job [`JOB`] holding every GPU (as slurmd would), so the
/// spool holds its `job_start` record.
fn start_job(node: &Node, bin_dir: &Path, gpus: u32) -> Result<(), String> {
    let prolog = bin_dir.join("sgpu-prolog");
    let gpus = (0..gpus)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let log = File::options()
        .create(true)
        .append(true)
        .open(&node.log)
        .map_err(|e| format!("{}: {e}", node.log.display()))?;
    let st = Command::new(&prolog)
        .env_clear()
        .envs(node.env.iter().map(|(k, v)| (k, v)))
        .env("SLURM_JOB_ID", JOB.to_string())
        .env("SLURM_JOB_USER", "bench")
        .env("SLURM_JOB_UID", "1000")
        .env("SLURM_JOB_PARTITION", "gpu")
        .env("SLURM_JOB_GPUS", &gpus)
        .env("CUDA_VISIBLE_DEVICES", &gpus)
        .current_dir(node.sim.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .status()
        .map_err(|e| {
            format!(
                "cannot run {} (cargo build --release -p sgpu-prolog-epilog, or --no-job): {e}",
                prolog.display()
            )
        })?;
    if !st.success() {
        return Err(format!(
            "sgpu-prolog for job {JOB} failed ({st}); see {}",
            node.log.display()
        ));
    }
    Ok(())
}

/// Clock ticks per second (`/proc/<pid>/stat` counts CPU time in them).
fn clk_tck() -> f64 {
    // SAFETY: sysconf only reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU time of a process from `/proc/<pid>/stat`: (own user + system, waited-for children's
/// user + system), in clock ticks.
fn cpu_ticks(pid: u32) -> Result<(u64, u64), String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    // the command name is in parentheses and may hold spaces: fields start after the last ')'
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| format!("{path}: unexpected format"))?;
    // after ')': state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17)
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Result<u64, String> {
        f.get(i - 3)
            .and_then(|v| v.parse::<i64>().ok())
            .map(|v| v.max(0) as u64)
            .ok_or_else(|| format!("{path}: field {i} missing"))
    };
    Ok((num(14)? + num(15)?, num(16)? + num(17)?))
}

/// The `key:` lines of a `/proc` file such as `status` or `smaps_rollup`, first value only.
fn proc_kb(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// What one process cost over the window.
struct Cost {
    cpu_pct: f64,
    children_cpu_pct: f64,
    hwm_kb: u64,
    rss_kb: u64,
    threads: u64,
}

fn cost(pid: u32, before: (u64, u64), window: Duration) -> Result<Cost, String> {
    let after = cpu_ticks(pid)?;
    let pct =
        |a: u64, b: u64| (a.saturating_sub(b)) as f64 / clk_tck() / window.as_secs_f64() * 100.0;
    Ok(Cost {
        cpu_pct: pct(after.0, before.0),
        children_cpu_pct: pct(after.1, before.1),
        hwm_kb: proc_kb(pid, "status", "VmHWM").unwrap_or(0),
        rss_kb: proc_kb(pid, "status", "VmRSS").unwrap_or(0),
        threads: proc_kb(pid, "status", "Threads").unwrap_or(0),
    })
}

/// A free loopback port (bound and released; healthd binds it a moment later).
fn free_port() -> Result<SocketAddr, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot bind loopback: {e}"))?;
    l.local_addr().map_err(|e| e.to_string())
}

/// `GET /status`, healthd's document ([`sgpu_wire::healthd::StatusDoc`]).
fn get_status(addr: SocketAddr) -> Result<StatusDoc, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}: no HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "{addr}: {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    sgpu_wire::decode(body.as_bytes()).map_err(|e| format!("{addr}: {e}"))
}

/// Sleeps `d`, checking every 200 ms that healthd still runs.
fn watch(healthd: &mut Child, d: Duration) -> Result<(), String> {
    let end = Instant::now() + d;
    loop {
        if let Some(st) = healthd.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("sgpu-healthd exited early: {st}"));
        }
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(200)));
    }
}

fn stop(child: &mut Child) {
    // SAFETY: kill on the pid of a child we started and have not yet waited for.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Where healthd's resident memory is, from `/proc/<pid>/smaps_rollup` and `status`.
fn memory_breakdown(pid: u32) {
    let r = |k| proc_kb(pid, "smaps_rollup", k).map_or("?".into(), |v| format!("{:.1}", mib(v)));
    let s = |k| proc_kb(pid, "status", k).map_or("?".into(), |v| format!("{:.1}", mib(v)));
    println!(
        "healthd memory now, MiB: Rss {} = anonymous {} + file-backed {} + shmem {}; Pss {}; \
         VmSize {}; VmData {}; VmStk {}",
        s("VmRSS"),
        s("RssAnon"),
        s("RssFile"),
        s("RssShmem"),
        r("Pss"),
        s("VmSize"),
        s("VmData"),
        s("VmStk"),
    );
}

fn bench(args: &Args) -> Result<bool, String> {
    if args.seconds == 0 {
        return Err("--seconds must be at least 1".into());
    }
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
            .ok_or("cannot tell this program's directory: pass --bin-dir")?,
    };
    let bin_dir =
        std::path::absolute(&bin_dir).map_err(|e| format!("{}: {e}", bin_dir.display()))?;
    let healthd_bin = bin_dir.join("sgpu-healthd");
    if !healthd_bin.is_file() {
        return Err(format!(
            "{} not found: cargo build --release -p sgpu-healthd -p nvml-sim",
            healthd_bin.display()
        ));
    }
    let status = if args.no_status {
        None
    } else {
        Some(free_port()?)
    };
    let node = Node::new(args, status)?;
    if !args.no_job {
        start_job(&node, &bin_dir, args.gpus)?;
    }
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "sgpu-healthd benchmark: {} s window after {} s warm-up, node {NODE} with {} {} GPUs, \
         sample_interval_s = {}, check_interval_s = {}, status {}",
        args.seconds,
        args.warmup,
        args.gpus,
        node.sim.kind(),
        args.sample_interval,
        args.check_interval,
        status.map_or_else(|| "off".into(), |a| format!("on {a}"))
    );
    println!("healthd:  {}", healthd_bin.display());
    println!(
        "job:      {}",
        if args.no_job {
            "none (--no-job)".to_string()
        } else {
            format!(
                "{JOB} on all {} GPUs (started by the real sgpu-prolog)",
                args.gpus
            )
        }
    );
    println!("node:     {}", node.sim.path().display());
    println!("machine:  {nproc} CPUs, {}", cpu_model());
    println!("load average before: {}", loadavg());

    // both run side by side over the same window; the baseline outlives it
    let total = args.warmup + args.seconds;
    let mut baseline = node.spawn(&args.baseline, &[(total + 30).to_string()])?;
    let mut healthd = node.spawn(&healthd_bin, &[])?;
    let started = Instant::now();
    let result = measure(args, &node, &mut healthd, &baseline, status);
    stop(&mut healthd);
    stop(&mut baseline);
    println!(
        "load average after:  {} ({:.1} s in all)",
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    let problems = match result {
        Ok(p) => p,
        Err(e) => vec![e],
    };
    for p in &problems {
        println!("PROBLEM: {p}");
    }
    if !problems.is_empty() {
        println!(
            "healthd did not run properly, so the figures mean little; its stderr: {}",
            node.log.display()
        );
    }
    if args.keep || !problems.is_empty() {
        let kept = node.sim.dir.keep();
        println!("kept {}", kept.display());
    }
    Ok(problems.is_empty())
}

/// Warm-up, window, figures; the problems found (an `Err` when healthd died).
fn measure(
    args: &Args,
    node: &Node,
    healthd: &mut Child,
    baseline: &Child,
    status: Option<SocketAddr>,
) -> Result<Vec<String>, String> {
    let mut problems = Vec::new();
    watch(healthd, Duration::from_secs(args.warmup))?;
    // /status answers before the window (connection set-up costs are the warm-up's)
    let mut samples_before = None;
    if let Some(addr) = status {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match get_status(addr) {
                Ok(doc) => {
                    samples_before = Some(doc.sampling.samples_total);
                    break;
                }
                Err(e) if Instant::now() >= deadline => {
                    problems.push(format!("/status never answered: {e}"));
                    break;
                }
                Err(_) => watch(healthd, Duration::from_millis(250))?,
            }
        }
    }
    let (hp, bp) = (healthd.id(), baseline.id());
    let (h0, b0) = (cpu_ticks(hp)?, cpu_ticks(bp)?);
    let t0 = Instant::now();
    watch(healthd, Duration::from_secs(args.seconds))?;
    let window = t0.elapsed();
    let h = cost(hp, h0, window)?;
    let b = cost(bp, b0, window)?;
    memory_breakdown(hp);
    let sled = node.state_dir.join("healthd.sled");
    println!(
        "healthd threads: {}; sled database {}: {} KiB on disk",
        h.threads,
        sled.display(),
        dir_size(&sled) / 1024
    );

    println!();
    println!(
        "{:<28}{:>14}{:>16}{:>14}{:>12}",
        "over the window", "CPU % of core", "children CPU %", "peak RSS MiB", "RSS MiB"
    );
    let row = |label: &str, c: &Cost| {
        println!(
            "{label:<28}{:>14.3}{:>16.3}{:>14.1}{:>12.1}",
            c.cpu_pct,
            c.children_cpu_pct,
            mib(c.hwm_kb),
            mib(c.rss_kb)
        );
    };
    row(&format!("baseline {}", args.baseline.display()), &b);
    row("sgpu-healthd", &h);
    println!(
        "{:<28}{:>14.3}{:>16}{:>14.1}",
        "  added by sgpu-healthd",
        h.cpu_pct - b.cpu_pct,
        "",
        mib(h.hwm_kb) - mib(b.hwm_kb)
    );
    println!(
        "(CPU: user + system time from /proc/<pid>/stat over {:.1} s; children: scontrol and \
         other programs healthd ran and waited for; peak RSS: VmHWM)",
        window.as_secs_f64()
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "targets: CPU < {TARGET_CPU_PCT}% of a core: {} ({:.3}%); RSS < {TARGET_RSS_MIB} MiB: {} \
         ({:.1} MiB peak)",
        verdict(h.cpu_pct < TARGET_CPU_PCT),
        h.cpu_pct,
        verdict(mib(h.hwm_kb) < TARGET_RSS_MIB),
        mib(h.hwm_kb)
    );
    println!("(figures are reported, never judged: missing a target does not fail the benchmark)");
    println!();

    // after the window: checking costs nothing measured
    if let Some(addr) = status {
        match get_status(addr) {
            Ok(doc) => {
                let after = doc.sampling.samples_total;
                let during = after.saturating_sub(samples_before.unwrap_or(0));
                let running = doc.jobs.iter().find(|j| j.job_id == JOB);
                let job = running.map(|j| j.samples).map_or_else(
                    || "no running job".to_string(),
                    |n| format!("job {JOB}: {n} samples"),
                );
                println!(
                    "/status: samples_total {after} ({during} in the window, ~{} expected); {job}",
                    args.seconds / args.sample_interval.max(1)
                );
                if !args.no_job && running.is_none() {
                    problems.push(format!("/status does not list job {JOB} as running"));
                }
                if during == 0 {
                    problems.push("/status shows no samples taken in the window".into());
                }
            }
            Err(e) => problems.push(format!("/status after the window: {e}")),
        }
    }
    let calls = std::fs::read_to_string(&node.calls).unwrap_or_default();
    let drains = calls.lines().filter(|l| l.contains("State=DRAIN")).count();
    println!(
        "scontrol stub: {} calls ({drains} drains)",
        calls.lines().count()
    );
    if drains > 0 {
        println!(
            "note: healthd drained the simulated node: see {}",
            node.log.display()
        );
    }
    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
    let errors = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .count();
    if errors > 0 {
        println!(
            "note: healthd logged {errors} WARN/ERROR lines ({})",
            node.log.display()
        );
    }
    Ok(problems)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match bench(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("healthd-bench: {e}");
            ExitCode::from(2)
        }
    }
}
