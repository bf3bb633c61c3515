//! sgpu installed in the test cluster, as an admin would install it on every node.
//!
//! The cluster's `Prolog=`/`Epilog=` hooks (written by `tests/cluster/up`) run
//! `$SGPU_CLUSTER_DIR/sgpu/bin/sgpu-{prolog,epilog}` with the node's own
//! `sgpu/nodes/<node>/sgpu.toml` and simulated GPUs (`nvml.toml`, read by the simulated
//! `libnvidia-ml.so.1` in `sgpu/lib`). [`install`] builds and copies the binaries and writes
//! those files; every node starts with healthy GPUs.
//!
//! The SPANK plugin `spank_sgpu.so` is installed in `sgpu/lib` and listed in the cluster's
//! `etc/plugstack.conf`. A cluster of a built Slurm (`SGPU_SLURM_PREFIX`, see
//! `tests/cluster/up`) gets a plugin built against that Slurm's headers, in a target directory
//! of its own (`target/slurm-<release>`), so the main target's plugin (Debian's 22.05) is
//! never overwritten; its nodes' `sgpu.toml` name that Slurm's `scontrol`.
//!
//! Each node also runs `sgpu-healthd` with that node's environment (started by [`install`],
//! pid in `sgpu/nodes/<node>/healthd.pid`, log in `healthd.log` beside it); it is restarted
//! when its binary or configuration changed and stopped by `tests/cluster/down`.

use std::path::{Path, PathBuf};
use std::process::Command;

use nvml_sim::State;

use crate::cluster::{Cluster, ClusterError};

/// GPUs per node in the test cluster (as `tests/cluster/up` configures it by default).
pub const GPUS_PER_NODE: u32 = 4;

/// The binaries installed into the cluster.
pub const BINARIES: &[&str] = &["sgpu-prolog", "sgpu-epilog", "sgpu-healthd"];

/// The test cluster's `check_interval_s` for `sgpu-healthd`.
pub const HEALTHD_INTERVAL_S: u64 = 2;

/// The test cluster's `resume_after` for `sgpu-healthd`.
pub const HEALTHD_RESUME_AFTER: u32 = 2;

/// The test cluster's `sample_interval_s` for `sgpu-healthd`.
pub const HEALTHD_SAMPLE_INTERVAL_S: u64 = 1;

/// `sgpu-healthd`'s `/status` and `/metrics` port on the `i`-th node (1-based) is the
/// cluster's slurmctld port plus this plus `i` (node1 and node2 share one machine).
pub const HEALTHD_STATUS_PORT_OFFSET: u16 = 1000;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The cargo target directory and profile this test binary was built in
/// (`target/<profile>/deps/<test>` -> (`target/<profile>`, `<profile>`)).
pub(crate) fn target_profile_dir() -> Result<(PathBuf, String), ClusterError> {
    let exe = std::env::current_exe().map_err(io(Path::new("/proc/self/exe")))?;
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .ok_or_else(|| ClusterError::Parse {
            cmd: "current_exe".into(),
            detail: format!("cannot find the target directory from {}", exe.display()),
        })?;
    let profile = dir
        .file_name()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "debug".into());
    Ok((dir.to_path_buf(), profile))
}

/// Runs `cargo build --quiet --workspace ARGS` with the same cargo and profile as this test (a
/// no-op when the outputs are fresh) and returns the directory holding them. Features are
/// always resolved over the whole workspace: builds of different package sets would each
/// compile their own copy of tokio, axum and the rest (CI ran out of disk with four).
pub fn cargo_build(args: &[&str]) -> Result<PathBuf, ClusterError> {
    let (dir, profile) = target_profile_dir()?;
    let mut all = vec!["--workspace"];
    all.extend_from_slice(args);
    cargo_build_with(Command::new(env!("CARGO")), &all, &profile)?;
    Ok(dir)
}

/// Builds the SPANK plugin against the Slurm installed in `prefix` (its `include/`), in
/// `<target>/slurm-<prefix's name>`, and returns the directory holding `libspank_sgpu.so`.
fn build_spank_for(prefix: &Path) -> Result<PathBuf, ClusterError> {
    let (dir, profile) = target_profile_dir()?;
    let release = prefix
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "prefix".into());
    let target = dir
        .parent()
        .unwrap_or(&dir)
        .join(format!("slurm-{release}"));
    let mut cmd = Command::new(env!("CARGO"));
    cmd.env("SLURM_INCLUDE_DIR", prefix.join("include"))
        .env("CARGO_TARGET_DIR", &target);
    cargo_build_with(cmd, &["-p", "sgpu-spank", "--lib"], &profile)?;
    Ok(target.join(&profile))
}

fn cargo_build_with(mut cmd: Command, args: &[&str], profile: &str) -> Result<(), ClusterError> {
    cmd.current_dir(crate::cluster::repo_root())
        .args(["build", "--quiet"])
        .args(args);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let line = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| ClusterError::Spawn {
        cmd: line.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(ClusterError::Failed {
            cmd: line,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

/// Builds the node's sgpu binaries and the plugin; returns the directory holding them.
fn build_binaries() -> Result<PathBuf, ClusterError> {
    cargo_build(&["--bins", "--lib"])
}

/// Builds one binary of a workspace package; returns its path.
pub fn cargo_bin(package: &str, bin: &str) -> Result<PathBuf, ClusterError> {
    let _ = package; // features are resolved over the whole workspace (see `cargo_build`)
    Ok(cargo_build(&["--bin", bin])?.join(bin))
}

/// Copies `src` to `dst` so that a process executing the old `dst` is never disturbed; a
/// `dst` with the same content is left alone. Returns whether it was replaced.
fn replace_file(src: &Path, dst: &Path) -> Result<bool, ClusterError> {
    let new = std::fs::read(src).map_err(io(src))?;
    if std::fs::read(dst).is_ok_and(|old| old == new) {
        return Ok(false);
    }
    let tmp = dst.with_extension("new");
    std::fs::write(&tmp, &new).map_err(io(&tmp))?;
    let perm = std::fs::metadata(src).map_err(io(src))?.permissions();
    std::fs::set_permissions(&tmp, perm).map_err(io(&tmp))?;
    std::fs::rename(&tmp, dst).map_err(io(dst))?;
    Ok(true)
}

/// Writes `text` to `path` unless it already holds it; returns whether it wrote.
fn write_if_changed(path: &Path, text: &str) -> Result<bool, ClusterError> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    std::fs::write(path, text).map_err(io(path))?;
    Ok(true)
}

/// Where sgpu lives in the cluster.
pub fn sgpu_dir(cluster: &Cluster) -> PathBuf {
    cluster.dir().join("sgpu")
}

/// One node's sgpu files.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    /// The node's directory.
    pub dir: PathBuf,
    /// Its `sgpu.toml`.
    pub config: PathBuf,
    /// Its simulated GPUs.
    pub nvml_state: PathBuf,
    /// Its `state_dir` (XID store, job notes).
    pub state_dir: PathBuf,
    /// healthd's gate socket (`gate_socket`), in a directory of its own.
    pub gate_socket: PathBuf,
    /// Its spool.
    pub spool_dir: PathBuf,
    /// `sgpu-healthd`'s pid file.
    pub healthd_pid: PathBuf,
    /// `sgpu-healthd`'s log (stderr).
    pub healthd_log: PathBuf,
}

/// The files of `node`.
pub fn node_files(cluster: &Cluster, node: &str) -> NodeFiles {
    let dir = sgpu_dir(cluster).join("nodes").join(node);
    NodeFiles {
        config: dir.join("sgpu.toml"),
        nvml_state: dir.join("nvml.toml"),
        state_dir: dir.join("state"),
        gate_socket: dir.join("run/healthd.sock"),
        spool_dir: dir.join("spool"),
        healthd_pid: dir.join("healthd.pid"),
        healthd_log: dir.join("healthd.log"),
        dir,
    }
}

/// A stable seed per node name, so UUIDs are the same on every run.
fn seed_for(node: &str) -> u64 {
    node.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Installs sgpu into the cluster: binaries, the simulated NVML library, and for every node a
/// configuration and healthy simulated GPUs. Call with no test running (inside `up`'s lock).
pub fn install(cluster: &Cluster) -> Result<(), ClusterError> {
    let built = build_binaries()?;
    let root = sgpu_dir(cluster);
    let bin = root.join("bin");
    let lib = root.join("lib");
    for d in [&bin, &lib] {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    let mut healthd_changed = false;
    for b in BINARIES {
        let replaced = replace_file(&built.join(b), &bin.join(b))?;
        healthd_changed |= replaced && *b == "sgpu-healthd";
    }
    // stage the library, then rename it into place: a process that has the old file mapped
    // keeps its copy intact
    let stage = built.join("sgpu-nvml-sim");
    std::fs::create_dir_all(&stage).map_err(io(&stage))?;
    let staged = nvml_sim::install_library(&stage).map_err(|e| ClusterError::Parse {
        cmd: "nvml_sim::install_library".into(),
        detail: e.to_string(),
    })?;
    let library = lib.join(nvml_sim::LIBRARY_NAME);
    healthd_changed |= replace_file(&staged, &library)?;
    let spank_built = match cluster.slurm_prefix() {
        Some(prefix) => build_spank_for(prefix)?,
        None => built.clone(),
    };
    install_spank_plugin(cluster, &spank_built, &lib)?;
    // a built Slurm's nodes use its scontrol/squeue/sacct (the hooks have no PATH)
    let scontrol_line = match cluster.slurm_prefix() {
        Some(prefix) => format!("scontrol = \"{}\"\n", prefix.join("bin/scontrol").display()),
        None => String::new(),
    };

    for node in cluster.nodes()? {
        let f = node_files(cluster, &node);
        for d in [&f.dir, &f.state_dir, &f.spool_dir] {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        let config = format!(
            "# sgpu on test-cluster node {node} (written by sgpu_tests::sgpu::install)\n\
             nvml_library = \"{}\"\n\
             nvml_timeout_ms = 2000\n\
             state_dir = \"{}\"\n\
             spool_dir = \"{}\"\n\
             node_name = \"{node}\"\n\
             check_interval_s = {HEALTHD_INTERVAL_S}\n\
             resume_after = {HEALTHD_RESUME_AFTER}\n\
             # one node of the two may be drained by sgpu at a time\n\
             breaker_max_fraction = 0.10\n\
             breaker_min_nodes = 1\n\
             sample_interval_s = {HEALTHD_SAMPLE_INTERVAL_S}\n\
             status_listen = \"{}\"\n\
             # the gates' readings from this node's healthd (never another node's socket);\n\
             # every gate sees the simulator as it is now (a fault injected just before a job)\n\
             gate_socket = \"{}\"\n\
             gate_max_age_ms = 0\n\
             {scontrol_line}",
            library.display(),
            f.state_dir.display(),
            f.spool_dir.display(),
            healthd_status_addr(cluster, &node)?,
            f.gate_socket.display(),
        );
        let config_changed = write_if_changed(&f.config, &config)?;
        let running = healthd_pid(cluster, &node);
        if running.is_some() && (healthd_changed || config_changed) {
            stop_healthd(cluster, &node)?;
        }
        if running.is_none() || healthd_changed || config_changed {
            reset_gpus(cluster, &node)?;
            start_healthd(cluster, &node)?;
        }
    }
    Ok(())
}

/// Where the SPANK plugin is installed in the cluster (Cargo builds `libspank_sgpu.so`;
/// plugstack.conf names it `spank_sgpu.so`).
pub fn spank_plugin_path(cluster: &Cluster) -> PathBuf {
    sgpu_dir(cluster).join("lib").join("spank_sgpu.so")
}

/// The plugstack.conf line that loads sgpu's SPANK plugin in the test cluster.
pub fn plugstack_line(cluster: &Cluster) -> String {
    format!("optional {}", spank_plugin_path(cluster).display())
}

/// Installs `spank_sgpu.so` and lists it in the cluster's plugstack.conf. slurmstepd (per
/// step), srun and sbatch read plugstack.conf each time: no restart needed. Each node's
/// slurmd (hence slurmstepd) runs with that node's `SGPU_CONFIG`, see `tests/cluster/up`.
fn install_spank_plugin(cluster: &Cluster, built: &Path, lib: &Path) -> Result<(), ClusterError> {
    replace_file(&built.join("libspank_sgpu.so"), &lib.join("spank_sgpu.so"))?;
    let conf = cluster.dir().join("etc/plugstack.conf");
    let text = format!(
        "# sgpu test cluster: SPANK plugins (written by sgpu_tests::sgpu::install)\n{}\n",
        plugstack_line(cluster)
    );
    write_if_changed(&conf, &text)?;
    Ok(())
}

/// The address of `node`'s `sgpu-healthd` `/status` and `/metrics` endpoint.
pub fn healthd_status_addr(
    cluster: &Cluster,
    node: &str,
) -> Result<std::net::SocketAddr, ClusterError> {
    let conf = cluster.slurm_conf();
    let text = std::fs::read_to_string(conf).map_err(io(conf))?;
    let ctld_port: u16 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("SlurmctldPort="))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(16817);
    let nodes = cluster.nodes()?;
    let i = nodes
        .iter()
        .position(|n| n == node)
        .ok_or_else(|| ClusterError::Parse {
            cmd: "healthd_status_addr".into(),
            detail: format!("{node} is not a node of the test cluster ({nodes:?})"),
        })?;
    let port = u16::try_from(i + 1)
        .ok()
        .and_then(|i| {
            ctld_port
                .checked_add(HEALTHD_STATUS_PORT_OFFSET)?
                .checked_add(i)
        })
        .ok_or_else(|| ClusterError::Parse {
            cmd: "healthd_status_addr".into(),
            detail: format!("no status port for {node} above slurmctld's {ctld_port}"),
        })?;
    Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}

/// `GET <path>` from `node`'s `sgpu-healthd` endpoint: (HTTP status, body).
pub fn healthd_get(
    cluster: &Cluster,
    node: &str,
    path: &str,
) -> Result<(u16, String), ClusterError> {
    use std::io::{Read, Write};
    let addr = healthd_status_addr(cluster, node)?;
    let fail = |detail: String| ClusterError::Parse {
        cmd: format!("GET http://{addr}{path}"),
        detail,
    };
    let mut stream = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
        .map_err(|e| fail(e.to_string()))?;
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| fail(e.to_string()))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| fail(e.to_string()))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| fail(format!("no HTTP header in {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| fail(format!("bad status line in {head:?}")))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body).ok_or_else(|| fail("bad chunked body".into()))?
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let n = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..n)?);
        body = rest.get(n..)?.strip_prefix("\r\n")?;
    }
}

/// Kills `node`'s `sgpu-healthd` with SIGKILL (no chance to clean up), waits until it is
/// gone, and starts it again.
pub fn kill9_and_restart_healthd(cluster: &Cluster, node: &str) -> Result<(), ClusterError> {
    if let Some(pid) = healthd_pid(cluster, node) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
        let start = std::time::Instant::now();
        // wait until the process has fully exited (a zombie, or reaped): its command line
        // empties earlier, while its files (the listening socket, the sled lock) may still
        // be open, and a new healthd started then finds them taken
        while !exited(pid) {
            if start.elapsed() > std::time::Duration::from_secs(5) {
                return Err(ClusterError::Parse {
                    cmd: format!("kill -KILL {pid}"),
                    detail: format!("{node}'s sgpu-healthd is still there after 5 s"),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    start_healthd(cluster, node)
}

/// Whether process `pid` has finished exiting and closed its files: gone, or a zombie whose
/// other threads are gone too. The main thread turns zombie (`Z`) as soon as it exits, while the
/// other threads of the process may still be exiting and holding its files (the listening
/// socket, the sled lock): seen under load, a healthd started then found its port taken.
fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // the state follows the parenthesised command name
        Ok(stat) => {
            let zombie = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state == "Z" || state == "X");
            // every other thread gone: only the (zombie) main thread is left in task/
            zombie
                && std::fs::read_dir(format!("/proc/{pid}/task"))
                    .map_or(true, |tasks| tasks.count() <= 1)
        }
    }
}

/// The pid in `pid_file` when that process runs and its command line names `program` (a
/// zombie has an empty command line; a recycled pid another one).
pub fn live_pid(pid_file: &Path, program: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains(program)
        .then_some(pid)
}

/// The pid of `node`'s running `sgpu-healthd`, if it runs.
pub fn healthd_pid(cluster: &Cluster, node: &str) -> Option<i32> {
    live_pid(&node_files(cluster, node).healthd_pid, "sgpu-healthd")
}

/// Starts `node`'s `sgpu-healthd` with the node's environment (as a unit file would).
pub fn start_healthd(cluster: &Cluster, node: &str) -> Result<(), ClusterError> {
    use std::os::unix::process::CommandExt;
    let f = node_files(cluster, node);
    let bin = sgpu_dir(cluster).join("bin/sgpu-healthd");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&f.healthd_log)
        .map_err(io(&f.healthd_log))?;
    let log2 = log.try_clone().map_err(io(&f.healthd_log))?;
    let mut cmd = Command::new(&bin);
    cmd.env("SGPU_CONFIG", &f.config)
        .env("SGPU_NVML_SIM_STATE", &f.nvml_state)
        .env("SLURM_CONF", cluster.slurm_conf())
        .env("SGPU_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        // its own process group: a test interrupted with ^C does not take it along
        .process_group(0);
    let child = cmd.spawn().map_err(|source| ClusterError::Spawn {
        cmd: format!("{cmd:?}"),
        source,
    })?;
    std::fs::write(&f.healthd_pid, format!("{}\n", child.id())).map_err(io(&f.healthd_pid))
}

/// Stops `node`'s `sgpu-healthd` (SIGTERM, then SIGKILL after 5 s), if it runs.
pub fn stop_healthd(cluster: &Cluster, node: &str) -> Result<(), ClusterError> {
    let Some(pid) = healthd_pid(cluster, node) else {
        return Ok(());
    };
    let kill = |sig: &str| {
        let _ = Command::new("kill")
            .args([sig, &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    };
    kill("-TERM");
    let start = std::time::Instant::now();
    let mut killed = false;
    // wait for the exit to complete (see `exited`), escalating to SIGKILL after 5 s
    while !exited(pid) {
        if !killed && start.elapsed() > std::time::Duration::from_secs(5) {
            kill("-KILL");
            killed = true;
        }
        if start.elapsed() > std::time::Duration::from_secs(10) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let f = node_files(cluster, node);
    let _ = std::fs::remove_file(&f.healthd_pid);
    Ok(())
}

/// Gives `node` healthy simulated GPUs again (same UUIDs as before) and forgets its XIDs.
/// GPU 0 is split into the MIG slices gres.conf lists for it ([`mig_of`]).
pub fn reset_gpus(cluster: &Cluster, node: &str) -> Result<(), ClusterError> {
    let f = node_files(cluster, node);
    let mut state = State::healthy_seeded(gpus_of(cluster, node), seed_for(node));
    let mig = mig_of(cluster, node);
    if !mig.is_empty() {
        let slices: Vec<(&str, u32)> = mig.iter().map(|(p, gi)| (p.as_str(), *gi)).collect();
        let split = state
            .gpu_mut(0)
            .ok_or_else(|| "no GPU 0".to_string())
            .and_then(|g| g.set_mig(&slices));
        split.map_err(|detail| ClusterError::Parse {
            cmd: "nvml_sim::Gpu::set_mig".into(),
            detail,
        })?;
    }
    state.save(&f.nvml_state).map_err(|e| ClusterError::Parse {
        cmd: "nvml_sim::State::save".into(),
        detail: e.to_string(),
    })?;
    let store = f.state_dir.join("xid-state.toml");
    match std::fs::remove_file(&store) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(&store)(e)),
    }
}

/// `node`'s lines of the cluster's gres.conf.
fn gres_lines(cluster: &Cluster, node: &str) -> Vec<String> {
    let gres = std::fs::read_to_string(cluster.dir().join("etc/gres.conf")).unwrap_or_default();
    let prefix = format!("NodeName={node} ");
    gres.lines()
        .filter(|l| l.starts_with(&prefix))
        .map(String::from)
        .collect()
}

/// How many GPUs `node` has in the cluster's gres.conf (`File=.../nvidia[A-N]` is GPUs up to
/// N, as `tests/cluster/up` writes it for `SGPU_CLUSTER_GPUS`; a node whose only GPU is split
/// into MIG slices has 1), else [`GPUS_PER_NODE`].
pub fn gpus_of(cluster: &Cluster, node: &str) -> u32 {
    let lines = gres_lines(cluster, node);
    let whole = lines.iter().find_map(|l| {
        let range = l.rsplit_once("nvidia[")?.1.strip_suffix(']')?;
        let (a, b) = range.split_once('-')?;
        let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
        b.checked_sub(a).map(|_| b + 1)
    });
    match whole {
        Some(n) => n,
        None if !mig_of(cluster, node).is_empty() => 1,
        None => GPUS_PER_NODE,
    }
}

/// The MIG slices of GPU 0 that the cluster's gres.conf lists for `node` (`SGPU_CLUSTER_MIG`
/// of `tests/cluster/up`): (profile, GPU instance id), the id from the capability file's
/// minor in the driver's layout (3 + 9 x id).
pub fn mig_of(cluster: &Cluster, node: &str) -> Vec<(String, u32)> {
    gres_lines(cluster, node)
        .iter()
        .filter_map(|l| {
            let ty = l.split_whitespace().find_map(|w| w.strip_prefix("Type="))?;
            let minor: u32 = l.rsplit_once("nvidia-cap")?.1.trim().parse().ok()?;
            let gi = minor.checked_sub(3).filter(|m| m % 9 == 0)? / 9;
            Some((ty.to_string(), gi))
        })
        .collect()
}

/// Changes `node`'s simulated GPUs (energy counters stay continuous).
pub fn update_gpus(
    cluster: &Cluster,
    node: &str,
    edit: impl FnOnce(&mut State),
) -> Result<(), ClusterError> {
    let f = node_files(cluster, node);
    State::update(&f.nvml_state, edit)
        .map(|_| ())
        .map_err(|e| ClusterError::Parse {
            cmd: "nvml_sim::State::update".into(),
            detail: e.to_string(),
        })
}

/// `node`'s `sgpu-healthd`, stopped until this guard drops (then started again).
#[derive(Debug)]
pub struct HealthdPaused<'a> {
    cluster: &'a Cluster,
    node: String,
}

/// Stops `node`'s `sgpu-healthd` for a test that must see what the gates alone do.
pub fn pause_healthd<'a>(
    cluster: &'a Cluster,
    node: &str,
) -> Result<HealthdPaused<'a>, ClusterError> {
    stop_healthd(cluster, node)?;
    Ok(HealthdPaused {
        cluster,
        node: node.to_string(),
    })
}

impl Drop for HealthdPaused<'_> {
    fn drop(&mut self) {
        if healthd_pid(self.cluster, &self.node).is_none() {
            let _ = start_healthd(self.cluster, &self.node);
        }
    }
}

/// Puts nodes back in service and their simulated GPUs back to health when dropped,
/// whatever the test did (so a failing test leaves the cluster as it found it).
pub struct Restore<'a> {
    cluster: &'a Cluster,
    nodes: Vec<String>,
}

impl<'a> Restore<'a> {
    /// Restores `nodes` of `cluster` when dropped.
    pub fn new(cluster: &'a Cluster, nodes: &[&str]) -> Restore<'a> {
        Restore {
            cluster,
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
        }
    }
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        for node in &self.nodes {
            let _ = reset_gpus(self.cluster, node);
            let _ = self.cluster.output(
                "scontrol",
                &["update", &format!("NodeName={node}"), "State=RESUME"],
            );
        }
        // a job cancelled by the test may still be completing (its epilog running): the
        // next test must find the node schedulable, or Slurm places its job elsewhere
        for node in &self.nodes {
            let _ = self.cluster.wait_node(
                node,
                std::time::Duration::from_secs(30),
                "done completing and not drained",
                |r| {
                    !r.get("State")
                        .split('+')
                        .any(|f| f == "COMPLETING" || f == "DRAIN")
                },
            );
        }
    }
}

/// The records of `job` in `node`'s spool, oldest first.
pub fn spool_records(
    cluster: &Cluster,
    node: &str,
    job: u32,
) -> Result<Vec<sgpu_spool::Record>, ClusterError> {
    let spool_err = |e: sgpu_spool::SpoolError| ClusterError::Parse {
        cmd: format!("reading {node}'s spool"),
        detail: e.to_string(),
    };
    let spool = sgpu_spool::Spool::open(node_files(cluster, node).spool_dir).map_err(spool_err)?;
    let mut out = Vec::new();
    for e in spool.list().map_err(spool_err)? {
        let r = spool.read(&e).map_err(spool_err)?;
        if r.id().job_id() == job {
            out.push(r);
        }
    }
    Ok(out)
}
