//! `prolog-bench`: how long the real `sgpu-prolog` (and `sgpu-epilog`) binaries take on a
//! node with simulated GPUs, next to a baseline program launched exactly the same way.
//!
//! Everything lives in a temporary directory: the simulated NVML library, a healthy GPU state
//! file, a slurm.conf and gres.conf for node `bench1`, an `sgpu.toml`, the state directory and
//! the spool. Each job id runs the baseline, then the prolog, then (unless `--no-epilog`) the
//! epilog, each as its own process with only the environment slurmd gives a prolog, and the
//! wall time of spawn-to-exit is recorded. Timings are printed, never judged: the exit status
//! is non-zero only when a gate failed (a non-zero exit, an error logged, a missing record),
//! which would make the timings meaningless.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use sgpu_spool::{RecordKind, Spool};

mod node;
use node::{CLUSTER, NODE, SimNode, write};

/// First job id; each run uses the next one.
const FIRST_JOB: u32 = 1000;
/// The targets for the prolog's added time.
const TARGET_MEDIAN: Duration = Duration::from_millis(20);
const TARGET_P99: Duration = Duration::from_millis(50);

/// Times sgpu-prolog and sgpu-epilog on a node with simulated GPUs against a baseline.
#[derive(Parser, Debug)]
#[command(name = "prolog-bench")]
struct Args {
    /// Timed runs of each program.
    #[arg(long, default_value_t = 200)]
    runs: u32,
    /// Untimed warm-up runs before them.
    #[arg(long, default_value_t = 10)]
    warmup: u32,
    /// Simulated GPUs on the node (the job gets all of them).
    #[arg(long, default_value_t = 8)]
    gpus: u32,
    /// NVLink links per GPU, all active (0: no NVLink, NOT_SUPPORTED as on PCIe boards; an
    /// H100 SXM has 18): what `gpu.nvlink` costs the prolog.
    #[arg(long, default_value_t = 0)]
    nvlink: u32,
    /// Directory holding sgpu-prolog and sgpu-epilog [default: this program's directory].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The baseline program, launched exactly like the gates.
    #[arg(long, default_value = "/bin/true")]
    baseline: PathBuf,
    /// Do not time sgpu-epilog.
    #[arg(long)]
    no_epilog: bool,
    /// Also write every timed run's wall and CPU times (ms) to this CSV file.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Keep the temporary directory (its path is printed) instead of deleting it.
    #[arg(long)]
    keep: bool,
    /// Run on this machine's real GPUs through the system's NVML (a GPU node) instead of
    /// the simulator; `--gpus` must then be the node's GPU count.
    #[arg(long)]
    system_nvml: bool,
    /// Run sgpu-healthd beside the gates (from `--bin-dir`), serving their readings on its
    /// gate socket, as on a node where it runs; without it the gates read NVML themselves
    /// (`gate_socket = "off"`).
    #[arg(long)]
    healthd: bool,
}

/// The simulated node: its files, and the environment every program is started with.
struct Node {
    sim: SimNode,
    /// Where the programs' stderr goes (one file, appended by every run).
    log: PathBuf,
    spool: PathBuf,
    drains: PathBuf,
    /// Environment shared by every run (the job id is added per run).
    env: Vec<(String, OsString)>,
    /// sgpu-healthd's stderr (with `--healthd`).
    healthd_log: PathBuf,
    /// healthd's gate socket (with `--healthd`).
    gate_socket: Option<PathBuf>,
}

impl Node {
    fn new(gpus: u32, system_nvml: bool, healthd: bool) -> Result<Node, String> {
        let sim = SimNode::new("sgpu-prolog-bench.", gpus, system_nvml)?;
        let d = sim.path();
        // a drain would mean the simulated node is not healthy: record it, never reach a
        // real slurmctld; the epilog's `squeue` beside it (slurm_job_times) answers with an
        // ended job's line
        let drains = d.join("drains.log");
        // healthd (with --healthd) asks for its node's state: an idle node; every other call
        // (a drain's) is recorded
        let scontrol = sim.scontrol(&format!(
            "if [ \"$1\" = show ] && [ \"$2\" = node ]; then\n  \
             echo 'NodeName={NODE} Arch=x86_64 CPUTot=2 Gres=gpu:{gpus} State=IDLE Partitions=gpu'\n  \
             exit 0\nfi\necho \"$@\" >> '{}'\n",
            drains.display()
        ))?;
        let squeue = d.join("squeue");
        write(
            &squeue,
            "#!/bin/sh\nnow=$(date +%s)\necho \"${3#--jobs=}|COMPLETING|$((now - 1))|$now|0|\"\n",
        )?;
        std::fs::set_permissions(&squeue, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", squeue.display()))?;
        let spool = d.join("spool");
        let config = d.join("sgpu.toml");
        let gate_socket = healthd.then(|| d.join("run/healthd.sock"));
        let healthd_lines = match &gate_socket {
            Some(socket) => format!(
                "node_name = \"{NODE}\"\nstatus_listen = \"off\"\ngate_socket = \"{}\"\n",
                socket.display()
            ),
            None => "gate_socket = \"off\"\n".to_string(),
        };
        write(
            &config,
            &format!(
                "{}state_dir = \"{}\"\nspool_dir = \"{}\"\nscontrol = \"{}\"\n{healthd_lines}",
                sim.nvml_line(),
                d.join("state").display(),
                spool.display(),
                scontrol.display()
            ),
        )?;
        let job_gpus = (0..gpus)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        // what slurmd 22.05 gives Prolog/Epilog (no PATH), plus sgpu's configuration and
        // the simulator's state file
        let mut env: Vec<(String, OsString)> = vec![
            ("SLURMD_NODENAME".into(), NODE.into()),
            ("SLURM_CLUSTER_NAME".into(), CLUSTER.into()),
            ("SLURM_JOB_USER".into(), "bench".into()),
            ("SLURM_JOB_UID".into(), "1000".into()),
            ("SLURM_JOB_PARTITION".into(), "gpu".into()),
            ("SLURM_JOB_GPUS".into(), job_gpus.clone().into()),
            ("CUDA_VISIBLE_DEVICES".into(), job_gpus.into()),
            ("SLURM_CONF".into(), sim.slurm_conf.clone().into()),
            ("SGPU_CONFIG".into(), config.into()),
            (nvml_sim::STATE_ENV.into(), sim.state.clone().into()),
        ];
        env.extend(sim.system_env());
        Ok(Node {
            log: d.join("stderr.log"),
            healthd_log: d.join("healthd.log"),
            gate_socket,
            spool,
            drains,
            env,
            sim,
        })
    }
}

/// One timed program.
struct Program {
    label: String,
    path: PathBuf,
    /// Wall time of each timed run.
    wall: Vec<Duration>,
    /// CPU time (user + system) of each timed run.
    cpu: Vec<Duration>,
    /// Job ids whose run exited non-zero, with the status.
    failed: Vec<(u32, String)>,
}

impl Program {
    fn new(label: &str, path: PathBuf) -> Result<Program, String> {
        if !path.is_file() {
            return Err(format!(
                "{} not found (build it: cargo build --release -p sgpu-prolog-epilog)",
                path.display()
            ));
        }
        Ok(Program {
            label: label.to_string(),
            path,
            wall: Vec::new(),
            cpu: Vec::new(),
            failed: Vec::new(),
        })
    }

    /// Runs the program once for `job`; records the times when `timed`.
    fn run(&mut self, node: &Node, job: u32, stderr: &File, timed: bool) -> Result<(), String> {
        let stderr = stderr
            .try_clone()
            .map_err(|e| format!("{}: {e}", node.log.display()))?;
        let mut cmd = Command::new(&self.path);
        cmd.env_clear()
            .envs(node.env.iter().map(|(k, v)| (k, v)))
            .env("SLURM_JOB_ID", job.to_string())
            .current_dir(node.sim.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let cpu0 = children_cpu();
        let start = Instant::now();
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run {}: {e}", self.path.display()))?;
        let wall = start.elapsed();
        let cpu = children_cpu().saturating_sub(cpu0);
        if !status.success() {
            self.failed.push((job, status.to_string()));
        }
        if timed {
            self.wall.push(wall);
            self.cpu.push(cpu);
        }
        Ok(())
    }
}

/// User plus system time of all waited-for children so far.
fn children_cpu() -> Duration {
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    // SAFETY: rusage is plain old data, and getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid `who` and a valid pointer to a live rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Median, p90, p99 and max of some durations (nearest-rank percentiles).
#[derive(Clone, Copy)]
struct Summary {
    median: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
}

impl Summary {
    fn of(samples: &[Duration]) -> Summary {
        let mut s = samples.to_vec();
        s.sort_unstable();
        let pct = |p: f64| {
            if s.is_empty() {
                return Duration::ZERO;
            }
            // nearest rank: the smallest value with at least p% of the samples at or below it
            let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
            s[rank.clamp(1, s.len()) - 1]
        };
        Summary {
            median: pct(50.0),
            p90: pct(90.0),
            p99: pct(99.0),
            max: pct(100.0),
        }
    }

    fn minus(self, base: Summary) -> Summary {
        Summary {
            median: self.median.saturating_sub(base.median),
            p90: self.p90.saturating_sub(base.p90),
            p99: self.p99.saturating_sub(base.p99),
            max: self.max.saturating_sub(base.max),
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn row(label: &str, s: Summary, cpu: Option<Duration>) {
    println!(
        "  {label:<24}{:>9}{:>9}{:>9}{:>9}{:>11}",
        ms(s.median),
        ms(s.p90),
        ms(s.p99),
        ms(s.max),
        cpu.map_or_else(String::new, ms)
    );
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The file system type of `path` (it matters: the gates create and fsync files).
fn fs_type(path: &Path) -> String {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return "unknown".into();
    };
    // SAFETY: statfs is plain old data that statfs only writes into.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a valid pointer to a live statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "unknown".into();
    }
    // magic numbers from statfs(2)
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    match st.f_type as i64 {
        0xEF53 => "ext4".into(),
        0x0102_1994 => "tmpfs".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x794C_7630 => "overlayfs".into(),
        other => format!("type {other:#x}"),
    }
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

/// What went wrong in the gate runs, if anything (each line a problem).
fn verify(node: &Node, jobs: &[u32], programs: &[&Program], epilog: bool) -> Vec<String> {
    let mut problems = Vec::new();
    for p in programs {
        if !p.failed.is_empty() {
            let (job, status) = &p.failed[0];
            problems.push(format!(
                "{}: {} of {} runs failed (first: job {job}, {status})",
                p.label,
                p.failed.len(),
                jobs.len()
            ));
        }
    }
    if let Ok(text) = std::fs::read_to_string(&node.drains) {
        if let Some(first) = text.lines().next() {
            problems.push(format!(
                "the gates drained the node {} times (first: scontrol {first})",
                text.lines().count()
            ));
        }
    }
    // with fail_closed off an sgpu error still exits 0: its log line gives it away
    if let Ok(f) = File::open(&node.log) {
        let errors: Vec<String> = BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.contains(": error: "))
            .collect();
        if let Some(first) = errors.first() {
            problems.push(format!(
                "{} error lines logged (first: {first})",
                errors.len()
            ));
        }
    }
    let mut starts = BTreeSet::new();
    let mut ends = BTreeSet::new();
    match Spool::open(&node.spool).and_then(|s| {
        s.list()?
            .iter()
            .map(|e| s.read(e))
            .collect::<Result<Vec<_>, _>>()
    }) {
        Ok(records) => {
            for r in &records {
                match r.id().kind() {
                    RecordKind::JobStart => starts.insert(r.id().job_id()),
                    RecordKind::JobEnd => ends.insert(r.id().job_id()),
                    _ => false,
                };
            }
        }
        Err(e) => problems.push(format!("spool {}: {e}", node.spool.display())),
    }
    let missing = |set: &BTreeSet<u32>, kind: &str, problems: &mut Vec<String>| {
        let absent: Vec<u32> = jobs.iter().copied().filter(|j| !set.contains(j)).collect();
        if let Some(first) = absent.first() {
            problems.push(format!(
                "{} of {} jobs have no {kind} record (first: job {first})",
                absent.len(),
                jobs.len()
            ));
        }
    };
    missing(&starts, "job_start", &mut problems);
    if epilog {
        missing(&ends, "job_end", &mut problems);
    }
    println!(
        "records: {} job_start, {} job_end in the spool for {} jobs",
        starts.len(),
        ends.len(),
        jobs.len()
    );
    problems
}

/// sgpu-healthd beside the gates, stopped (SIGTERM) when dropped.
struct Healthd {
    child: std::process::Child,
}

impl Healthd {
    /// Starts it with the node's environment and waits (at most 60 s) for its gate socket.
    fn start(node: &Node, program: &Path, socket: &Path) -> Result<Healthd, String> {
        if !program.is_file() {
            return Err(format!(
                "{} not found (build it: cargo build --release -p sgpu-healthd)",
                program.display()
            ));
        }
        let log = File::create(&node.healthd_log)
            .map_err(|e| format!("{}: {e}", node.healthd_log.display()))?;
        let child = Command::new(program)
            .env_clear()
            .envs(node.env.iter().map(|(k, v)| (k, v)))
            .env("PATH", "/usr/bin:/bin")
            .env("SGPU_LOG", "info")
            .current_dir(node.sim.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let mut h = Healthd { child };
        let end = Instant::now() + Duration::from_secs(60);
        while !socket.exists() {
            if let Some(st) = h.exited() {
                return Err(format!(
                    "sgpu-healthd exited at start ({st}): {}",
                    node.healthd_log.display()
                ));
            }
            if Instant::now() > end {
                return Err(format!(
                    "sgpu-healthd made no gate socket in 60 s: {}",
                    node.healthd_log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(h)
    }

    /// Its exit status, if it has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Healthd {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill on the pid of a child we started and have not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many gate runs took healthd's readings and how many read NVML themselves (their
/// `readings:` log lines).
fn readings(node: &Node) -> (usize, usize) {
    let Ok(f) = File::open(&node.log) else {
        return (0, 0);
    };
    let mut counts = (0, 0);
    for line in BufReader::new(f).lines().map_while(Result::ok) {
        if line.contains("readings: healthd") {
            counts.0 += 1;
        } else if line.contains("readings: nvml") {
            counts.1 += 1;
        }
    }
    counts
}

/// One line per timed job: its id, then wall and CPU ms of each program.
fn write_csv(
    path: &Path,
    jobs: &[u32],
    baseline: &Program,
    prolog: &Program,
    epilog: Option<&Program>,
) -> Result<(), String> {
    let mut out = String::from("job,baseline_wall_ms,baseline_cpu_ms,prolog_wall_ms,prolog_cpu_ms");
    if epilog.is_some() {
        out.push_str(",epilog_wall_ms,epilog_cpu_ms");
    }
    out.push('\n');
    let f = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1000.0);
    for (i, job) in jobs.iter().enumerate() {
        out.push_str(&format!(
            "{job},{},{},{},{}",
            f(baseline.wall[i]),
            f(baseline.cpu[i]),
            f(prolog.wall[i]),
            f(prolog.cpu[i])
        ));
        if let Some(e) = epilog {
            out.push_str(&format!(",{},{}", f(e.wall[i]), f(e.cpu[i])));
        }
        out.push('\n');
    }
    write(path, &out)
}

fn bench(args: &Args) -> Result<bool, String> {
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
            .ok_or("cannot tell this program's directory: pass --bin-dir")?,
    };
    // the programs run in the node's directory: relative paths would not resolve there
    let bin_dir =
        std::path::absolute(&bin_dir).map_err(|e| format!("{}: {e}", bin_dir.display()))?;
    let mut baseline = Program::new(
        &format!("baseline {}", args.baseline.display()),
        std::path::absolute(&args.baseline)
            .map_err(|e| format!("{}: {e}", args.baseline.display()))?,
    )?;
    let mut prolog = Program::new("sgpu-prolog", bin_dir.join("sgpu-prolog"))?;
    let mut epilog = if args.no_epilog {
        None
    } else {
        Some(Program::new("sgpu-epilog", bin_dir.join("sgpu-epilog"))?)
    };
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }

    let node = Node::new(args.gpus, args.system_nvml, args.healthd)?;
    if args.nvlink > 0 && args.system_nvml {
        return Err("--nvlink sets simulated links: not with --system-nvml".into());
    }
    if args.nvlink > 0 {
        nvml_sim::State::update(&node.sim.state, |st| {
            for g in &mut st.gpus {
                g.nvlink = Some(nvml_sim::nvlink::NvLink::all_active(args.nvlink));
            }
        })
        .map_err(|e| format!("--nvlink {}: {e}", args.nvlink))?;
    }
    let stderr = File::create(&node.log).map_err(|e| format!("{}: {e}", node.log.display()))?;
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "sgpu prolog benchmark: {} timed runs after {} warm-ups, node {NODE} with {} {} GPUs \
         (the job holds all of them), {} NVLink links each",
        args.runs,
        args.warmup,
        args.gpus,
        node.sim.kind(),
        args.nvlink
    );
    println!("gates:   {}", bin_dir.display());
    println!(
        "node:    {} ({}; set TMPDIR to move it)",
        node.sim.path().display(),
        fs_type(node.sim.path())
    );
    println!("machine: {nproc} CPUs, {}", cpu_model());
    println!("load average before: {}", loadavg());

    let mut healthd = match &node.gate_socket {
        Some(socket) => {
            let h = Healthd::start(&node, &bin_dir.join("sgpu-healthd"), socket)?;
            println!(
                "healthd: sgpu-healthd beside the gates, gate socket {}",
                socket.display()
            );
            Some(h)
        }
        None => {
            println!("healthd: none (the gates read NVML themselves)");
            None
        }
    };

    let total = args.warmup + args.runs;
    let jobs: Vec<u32> = (FIRST_JOB..FIRST_JOB + total).collect();
    let started = Instant::now();
    let ran = (|| -> Result<(), String> {
        for (i, &job) in jobs.iter().enumerate() {
            let timed = i >= args.warmup as usize;
            baseline.run(&node, job, &stderr, timed)?;
            prolog.run(&node, job, &stderr, timed)?;
            if let Some(e) = epilog.as_mut() {
                e.run(&node, job, &stderr, timed)?;
            }
        }
        Ok(())
    })();
    let healthd_exit = healthd.as_mut().and_then(Healthd::exited);
    drop(healthd);
    ran?;
    println!(
        "load average after:  {} ({:.1} s in all)",
        loadavg(),
        started.elapsed().as_secs_f64()
    );

    println!();
    println!(
        "wall time, ms            {:>9}{:>9}{:>9}{:>9}{:>11}",
        "median", "p90", "p99", "max", "cpu median"
    );
    let base = Summary::of(&baseline.wall);
    let cpu_median = |p: &Program| Summary::of(&p.cpu).median;
    row(&baseline.label, base, Some(cpu_median(&baseline)));
    let pro = Summary::of(&prolog.wall);
    row("sgpu-prolog", pro, Some(cpu_median(&prolog)));
    let added = pro.minus(base);
    row("  added by sgpu-prolog", added, None);
    if let Some(e) = &epilog {
        let epi = Summary::of(&e.wall);
        row("sgpu-epilog", epi, Some(cpu_median(e)));
        row("  added by sgpu-epilog", epi.minus(base), None);
    }
    println!("(added = the gate's percentile minus the baseline's; cpu = user + system time)");
    println!();
    let verdict = |v: Duration, t: Duration| if v < t { "met" } else { "MISSED" };
    println!(
        "targets for the prolog's added time: median < {} ms: {} ({} ms); p99 < {} ms: {} ({} ms)",
        TARGET_MEDIAN.as_millis(),
        verdict(added.median, TARGET_MEDIAN),
        ms(added.median),
        TARGET_P99.as_millis(),
        verdict(added.p99, TARGET_P99),
        ms(added.p99),
    );
    println!("(timings are reported, never judged: missing a target does not fail the benchmark)");
    println!();

    if let Some(path) = &args.csv {
        write_csv(
            path,
            &jobs[args.warmup as usize..],
            &baseline,
            &prolog,
            epilog.as_ref(),
        )?;
        println!("samples: {}", path.display());
    }

    let mut checked: Vec<&Program> = vec![&baseline, &prolog];
    if let Some(e) = &epilog {
        checked.push(e);
    }
    let mut problems = verify(&node, &jobs, &checked, epilog.is_some());
    let (from_healthd, from_nvml) = readings(&node);
    println!("readings: {from_healthd} gate runs from healthd, {from_nvml} from their own NVML");
    if node.gate_socket.is_some() {
        if let Some(st) = healthd_exit {
            problems.push(format!(
                "sgpu-healthd exited during the runs ({st}): {}",
                node.healthd_log.display()
            ));
        }
        if from_nvml > 0 {
            problems.push(format!(
                "{from_nvml} gate runs read NVML themselves although healthd ran (why: \
                 'readings: nvml' lines in {})",
                node.log.display()
            ));
        }
    }
    for p in &problems {
        println!("PROBLEM: {p}");
    }
    if !problems.is_empty() {
        println!(
            "the gates did not run cleanly, so the timings above mean little; their stderr: {}",
            node.log.display()
        );
    }
    if args.keep || !problems.is_empty() {
        let kept = node.sim.dir.keep();
        println!("kept {}", kept.display());
    }
    Ok(problems.is_empty())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match bench(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("prolog-bench: {e}");
            ExitCode::from(2)
        }
    }
}
