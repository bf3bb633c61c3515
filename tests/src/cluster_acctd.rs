//! A long-running `sgpu-acctd` for the test cluster as a whole (the demo, and trying things
//! by hand): MUNGE-authenticated on a fixed loopback port, its database under the cluster's
//! directory, and every node's healthd forwarding to it. Tests start their own short-lived
//! acctd instead ([`crate::acctd::Acctd`]); their `Cluster::up` puts the nodes' configuration
//! back (no forwarding), so the two never mix.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Cluster, ClusterError};

/// The line that opens the `[accounting]` table `start` appends to a node's sgpu.toml.
const MARKER: &str = "\n# the cluster's acctd (sgpu-testcluster acctd start)\n";

/// Where the cluster's acctd listens.
pub const ADDR: &str = "127.0.0.1:16830";

fn io(path: &std::path::Path) -> impl Fn(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The pid file `tests/cluster/down` stops it by.
pub fn pid_file(cluster: &Cluster) -> PathBuf {
    cluster.dir().join("run/sgpu-acctd.pid")
}

/// The URL of the cluster's acctd.
pub fn url() -> String {
    format!("http://{ADDR}")
}

fn running(cluster: &Cluster) -> Option<i32> {
    crate::sgpu::live_pid(&pid_file(cluster), "sgpu-acctd")
}

/// Starts the cluster's acctd (if it is not running) and makes every node's healthd
/// forward to it with MUNGE (if it does not yet).
pub fn start(cluster: &Cluster) -> Result<(), ClusterError> {
    use std::os::unix::process::CommandExt;
    if running(cluster).is_none() {
        let bin = crate::sgpu::cargo_bin("sgpu-accounting", "sgpu-acctd")?;
        let dir = cluster.dir().join("acctd");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let log_path = cluster.dir().join("log/sgpu-acctd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(&log_path))?;
        let log2 = log.try_clone().map_err(io(&log_path))?;
        let mut cmd = Command::new(&bin);
        cmd.args(["--listen", ADDR, "--db"])
            .arg(dir.join("acctd.sled"))
            .env("SGPU_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        let child = cmd.spawn().map_err(|source| ClusterError::Spawn {
            cmd: format!("{cmd:?}"),
            source,
        })?;
        let pid = pid_file(cluster);
        std::fs::write(&pid, format!("{}\n", child.id())).map_err(io(&pid))?;
        let start = Instant::now();
        while std::net::TcpStream::connect(ADDR).is_err() {
            if start.elapsed() > Duration::from_secs(15) {
                return Err(ClusterError::Parse {
                    cmd: format!("{cmd:?}"),
                    detail: format!(
                        "sgpu-acctd did not listen on {ADDR} within 15 s; see {}",
                        log_path.display()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for node in cluster.nodes()? {
        let f = crate::sgpu::node_files(cluster, &node);
        let text = std::fs::read_to_string(&f.config).map_err(io(&f.config))?;
        if text.contains("[accounting]") {
            continue;
        }
        let text = format!(
            "{text}{MARKER}[accounting]\n\
             url = \"{}\"\nforward_interval_s = 2\nforward_backoff_max_s = 10\n",
            url()
        );
        std::fs::write(&f.config, text).map_err(io(&f.config))?;
        crate::sgpu::stop_healthd(cluster, &node)?;
        crate::sgpu::start_healthd(cluster, &node)?;
    }
    Ok(())
}

/// Stops the cluster's acctd, if it runs (its database stays), and takes the nodes'
/// forwarding back out of their sgpu.toml (restarting their healthd).
pub fn stop(cluster: &Cluster) -> Result<(), ClusterError> {
    for node in cluster.nodes()? {
        let f = crate::sgpu::node_files(cluster, &node);
        let text = std::fs::read_to_string(&f.config).map_err(io(&f.config))?;
        if let Some(i) = text.find(MARKER) {
            std::fs::write(&f.config, &text[..i]).map_err(io(&f.config))?;
            crate::sgpu::stop_healthd(cluster, &node)?;
            crate::sgpu::start_healthd(cluster, &node)?;
        }
    }
    if let Some(pid) = running(cluster) {
        let _ = Command::new("kill").arg(pid.to_string()).status();
        let start = Instant::now();
        while running(cluster).is_some() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let pid = pid_file(cluster);
    match std::fs::remove_file(&pid) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(&pid)(e)),
    }
}
