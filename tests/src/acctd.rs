//! A real `sgpu-acctd` for cross-component tests: its own temporary database, a free loopback
//! port, the binary built with the same cargo and profile as the test.
//!
//! [`Acctd::start`] builds (a no-op when fresh) and starts it; the port stays the same across
//! [`Acctd::kill9`] and [`Acctd::restart`], so a forwarder configured with [`Acctd::url`]
//! reaches the restarted service. The process is stopped and its database removed on drop.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::ClusterError;

/// A running (or killed, until restarted) `sgpu-acctd`.
#[derive(Debug)]
pub struct Acctd {
    bin: PathBuf,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    args: Vec<String>,
    child: Option<Child>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Builds `sgpu-acctd` with the cargo and profile of this test binary; returns its path.
fn build_acctd() -> Result<PathBuf, ClusterError> {
    crate::sgpu::cargo_bin("sgpu-accounting", "sgpu-acctd")
}

/// A loopback port nobody listens on now (the OS picks it).
fn free_port() -> Result<u16, ClusterError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io(Path::new("127.0.0.1:0")))?;
    let port = l.local_addr().map_err(io(Path::new("127.0.0.1:0")))?.port();
    Ok(port)
}

impl Acctd {
    /// Starts `sgpu-acctd --listen 127.0.0.1:<free port> --db <temp dir>/acctd.sled` plus
    /// `extra_args`, and waits until it listens. Without `--config` among them, acctd gets
    /// an acctd.toml of `time_zone = "UTC"` (reports in UTC whatever the host's zone).
    pub fn start(extra_args: &[&str]) -> Result<Acctd, ClusterError> {
        let bin = build_acctd()?;
        let dir = tempfile::Builder::new()
            .prefix("sgpu-acctd-test")
            .tempdir()
            .map_err(io(&std::env::temp_dir()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        if !args.iter().any(|a| a == "--config") {
            let config = dir.path().join("acctd.toml");
            std::fs::write(&config, "time_zone = \"UTC\"\n").map_err(io(&config))?;
            args.push("--config".into());
            args.push(config.to_string_lossy().into_owned());
        }
        let mut acctd = Acctd {
            bin,
            dir,
            addr,
            args,
            child: None,
        };
        acctd.spawn()?;
        Ok(acctd)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its database directory.
    pub fn db(&self) -> PathBuf {
        self.dir.path().join("acctd.sled")
    }

    /// Its log (stderr of every run, appended).
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("acctd.log")
    }

    /// Whether the process runs now.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn spawn(&mut self) -> Result<(), ClusterError> {
        let log_path = self.log();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(&log_path))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--listen")
            .arg(self.addr.to_string())
            .arg("--db")
            .arg(self.db())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let line = format!("{cmd:?}");
        // The port was free a moment ago, or held by the previous run until it exited: try
        // a few times before giving up.
        let began = Instant::now();
        loop {
            let mut child = cmd.spawn().map_err(|source| ClusterError::Spawn {
                cmd: line.clone(),
                source,
            })?;
            let mut first = String::new();
            if let Some(out) = child.stdout.take() {
                let _ = BufReader::new(out).read_line(&mut first);
            }
            if first.starts_with("sgpu-acctd listening on ") {
                self.child = Some(child);
                return Ok(());
            }
            let status = child.wait().map_err(io(&self.bin))?;
            if began.elapsed() > Duration::from_secs(10) {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: String = log
                    .lines()
                    .rev()
                    .take(10)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(ClusterError::Failed {
                    cmd: line,
                    status,
                    stderr: tail,
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills it with SIGKILL (no flush, no cleanup) and waits until it is gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it with SIGTERM (a graceful shutdown that flushes), escalating to SIGKILL after
    /// 10 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let began = Instant::now();
        while matches!(child.try_wait(), Ok(None)) {
            if began.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
    }

    /// Starts it again on the same port and database (stopping it first if it runs).
    pub fn restart(&mut self) -> Result<(), ClusterError> {
        self.stop();
        self.spawn()
    }
}

impl Drop for Acctd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Nodes whose `sgpu-healthd` forwards its spool to an acctd, until dropped: then their
/// configuration is put back and healthd restarted without forwarding.
///
/// The test cluster's healthd does not forward by default (other tests read the records
/// it leaves in the spool), so a test that wants forwarding takes
/// [`Cluster::lock_exclusive`](crate::Cluster::lock_exclusive) and this guard.
#[derive(Debug)]
pub struct Forwarding<'a> {
    cluster: &'a crate::Cluster,
    saved: Vec<(String, PathBuf, String)>,
}

/// The `[accounting]` table the test cluster's nodes get: `url`, MUNGE authentication
/// through the system munged (healthd runs as root, which acctd lets ingest), a 1 s
/// interval and short backoffs, plus `extra` lines (e.g. `auth = "none"`).
pub fn accounting_table(url: &str, extra: &str) -> String {
    format!(
        "\n# added by sgpu_tests::acctd::forward_to\n[accounting]\nurl = \"{url}\"\n\
         forward_interval_s = 1\nforward_backoff_max_s = 2\n{extra}"
    )
}

/// Makes `nodes`' healthd forward to `url` (see [`accounting_table`] for `extra`) and
/// restarts them; hold the cluster's exclusive lock meanwhile.
pub fn forward_to<'a>(
    cluster: &'a crate::Cluster,
    nodes: &[&str],
    url: &str,
    extra: &str,
) -> Result<Forwarding<'a>, ClusterError> {
    let mut guard = Forwarding {
        cluster,
        saved: Vec::new(),
    };
    for node in nodes {
        let f = crate::sgpu::node_files(cluster, node);
        let original = std::fs::read_to_string(&f.config).map_err(io(&f.config))?;
        let text = format!("{original}{}", accounting_table(url, extra));
        guard
            .saved
            .push((node.to_string(), f.config.clone(), original));
        std::fs::write(&f.config, text).map_err(io(&f.config))?;
        crate::sgpu::stop_healthd(cluster, node)?;
        crate::sgpu::start_healthd(cluster, node)?;
    }
    Ok(guard)
}

impl Drop for Forwarding<'_> {
    fn drop(&mut self) {
        for (node, path, original) in &self.saved {
            let _ = std::fs::write(path, original);
            let _ = crate::sgpu::stop_healthd(self.cluster, node);
            let _ = crate::sgpu::start_healthd(self.cluster, node);
        }
    }
}
