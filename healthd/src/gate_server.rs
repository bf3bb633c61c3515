//! The gates' readings: healthd answers `sgpu-prolog`/`sgpu-epilog` on a root-only Unix
//! socket (`gate_socket`, default `/run/sgpu/healthd.sock`) with its warm NVML session's
//! node snapshot, so a gate pays neither `nvmlInit` nor attaching the GPUs (docs/
//! gpu-validation.md, "Costs").
//!
//! - One OS thread accepts ([`GateServer::spawn`]); each connection is served on a thread
//!   of its own, at most [`MAX_CONNECTIONS`] at once (one more is closed unanswered), with a
//!   request of at most [`gate::MAX_REQUEST_BYTES`] and [`IO_TIMEOUT`] per read and write.
//! - NVML work runs on a session of its own (not the check run's, the XID watch's or the
//!   sampler's), so a slow client or driver never holds up those loops. Requests take
//!   turns on it: a snapshot at most `gate_max_age_ms` old is reused, an older one is read
//!   again; then the asked GPUs' processes, energy and MIG devices are read for the request
//!   ([`sgpu_wire::gate`]'s age rule).
//! - The directory is made (or kept) root's with mode 0700, the socket 0600; a socket
//!   another live healthd answers on is left alone (this one then serves none), a stale
//!   one is replaced. The gate on its side trusts only a root peer.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sgpu_nodelib::config::Config;
use sgpu_nodelib::gpu::{NodeSnapshot, NvmlFailure, NvmlOptions, Reading};
use sgpu_spool::now_ms;
use sgpu_wire::gate::{self, GateReadings, GateRequest};
use tracing::{debug, error, info, warn};

use crate::daemon::Session;

/// The most connections served at once; more are closed unanswered (the gate falls back).
pub const MAX_CONNECTIONS: usize = 8;

/// The longest a client may take to send its request, or to take the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum GateServerError {
    /// A file operation failed.
    #[error("{path}: {what}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The path is in use by something that must not be replaced.
    #[error("{path}: {why}")]
    InUse {
        /// The path.
        path: PathBuf,
        /// What is there.
        why: String,
    },
}

/// The cached snapshot and the NVML session it comes from.
struct State {
    session: Session,
    snapshot: Option<(u64, NodeSnapshot)>,
}

/// What answers the gates.
pub struct GateServer {
    node: String,
    max_age_ms: u64,
    state: Mutex<State>,
    active: AtomicUsize,
}

/// Removes the socket when the daemon stops (only once this daemon bound it).
#[derive(Debug)]
pub struct SocketGuard {
    path: PathBuf,
    bound: Arc<AtomicBool>,
}

impl SocketGuard {
    /// Whether the socket is bound and served (after the first snapshot).
    pub fn is_serving(&self) -> bool {
        self.bound.load(Ordering::SeqCst)
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if self.is_serving() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl GateServer {
    /// A server for `node` reading NVML as `config` says (no session opened yet).
    pub fn new(config: &Config, node: &str) -> GateServer {
        GateServer {
            node: node.to_string(),
            max_age_ms: u64::try_from(config.gate.max_age.as_millis()).unwrap_or(u64::MAX),
            state: Mutex::new(State {
                session: Session::new(NvmlOptions::from_config(config)),
                snapshot: None,
            }),
            active: AtomicUsize::new(0),
        }
    }

    /// Reads a first snapshot (so the first gate finds the session warm; until then the
    /// gates find no socket and read NVML themselves at once), then binds
    /// `config.gate.socket` and serves it on a thread of its own. `Ok(None)`: switched off.
    pub fn spawn(config: &Config, node: &str) -> Result<Option<SocketGuard>, GateServerError> {
        let Some(path) = config.gate.socket.clone() else {
            return Ok(None);
        };
        // refuse at once what binding would refuse later (another live healthd's socket)
        check_path(&path)?;
        let server = Arc::new(GateServer::new(config, node));
        let guard = SocketGuard {
            path: path.clone(),
            bound: Arc::new(AtomicBool::new(false)),
        };
        let bound = Arc::clone(&guard.bound);
        std::thread::Builder::new()
            .name("sgpu-gate-socket".into())
            .spawn(move || {
                server.warm();
                let listener = match bind(&path) {
                    Ok(l) => l,
                    Err(e) => {
                        error!(
                            "cannot serve the gates' readings: {e}; the gates read NVML themselves"
                        );
                        return;
                    }
                };
                bound.store(true, Ordering::SeqCst);
                info!(socket = %path.display(), "serving the gates' readings");
                server.accept_loop(&listener);
            })
            .map_err(|source| GateServerError::Io {
                path: guard.path.clone(),
                what: "starting the gate socket thread",
                source,
            })?;
        Ok(Some(guard))
    }

    fn warm(&self) {
        if let Ok(mut st) = self.state.lock() {
            if let Err(e) = refresh(&mut st, self.max_age_ms) {
                warn!("gate socket: first snapshot failed ({e}); gates read NVML themselves");
            }
        }
    }

    fn accept_loop(self: &Arc<Self>, listener: &UnixListener) {
        for conn in listener.incoming() {
            let stream = match conn {
                Ok(s) => s,
                Err(e) => {
                    warn!("gate socket: accept: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            if self.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                self.active.fetch_sub(1, Ordering::SeqCst);
                debug!("gate socket: {MAX_CONNECTIONS} connections busy, one closed");
                continue;
            }
            let me = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("sgpu-gate-conn".into())
                .spawn(move || {
                    if let Err(e) = me.serve(stream) {
                        debug!("gate socket: {e}");
                    }
                    me.active.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                self.active.fetch_sub(1, Ordering::SeqCst);
                warn!("gate socket: cannot start a connection thread: {e}");
            }
        }
    }

    /// One connection: a request line, one answer.
    fn serve(&self, stream: UnixStream) -> std::io::Result<()> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let limit = u64::try_from(gate::MAX_REQUEST_BYTES).unwrap_or(u64::MAX);
        let mut line = Vec::new();
        BufReader::new((&stream).take(limit)).read_until(b'\n', &mut line)?;
        let answer = match sgpu_wire::decode::<GateRequest>(&line) {
            Ok(req) => self.answer(&req),
            Err(e) => self.refusal(format!("bad request: {e}")),
        };
        let body = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
        (&stream).write_all(&body)?;
        stream.shutdown(std::net::Shutdown::Both)
    }

    fn refusal(&self, why: String) -> GateReadings<NodeSnapshot> {
        let now = now_ms();
        GateReadings {
            version: Some(gate::VERSION),
            node: self.node.clone(),
            answered_at_ms: now,
            snapshot_taken_at_ms: now,
            fresh_gpus: Vec::new(),
            snapshot: None,
            error: Some(why),
        }
    }

    /// The snapshot (read again when older than the max age) with the asked GPUs' fresh
    /// readings applied.
    pub fn answer(&self, req: &GateRequest) -> GateReadings<NodeSnapshot> {
        if req.node != self.node {
            return self.refusal(format!(
                "this healthd serves node {:?}, not {:?}",
                self.node, req.node
            ));
        }
        let Ok(mut st) = self.state.lock() else {
            return self.refusal("the gate socket's state is poisoned".into());
        };
        let (taken, mut snapshot) = match refresh(&mut st, self.max_age_ms) {
            Ok(s) => s,
            Err(e) => return self.refusal(e.to_string()),
        };
        // the GPUs asked for by device minor (all when none named), with their MIG mode
        let gpus: Vec<(u32, bool)> = snapshot
            .gpus
            .iter()
            .filter(|g| match &req.minors {
                None => true,
                Some(m) => g.minor_number.value().is_some_and(|n| m.contains(n)),
            })
            .map(|g| (g.index, g.mig_mode == Reading::Value(true)))
            .collect();
        let fresh = if gpus.is_empty() {
            Ok(Vec::new())
        } else {
            st.session.fresh(&gpus)
        };
        match fresh {
            Ok(fresh) => {
                snapshot.apply_fresh(&fresh);
                GateReadings {
                    version: Some(gate::VERSION),
                    node: self.node.clone(),
                    answered_at_ms: now_ms(),
                    snapshot_taken_at_ms: taken,
                    fresh_gpus: fresh.iter().map(|f| f.index).collect(),
                    snapshot: Some(snapshot),
                    error: None,
                }
            }
            Err(e) => {
                st.snapshot = None;
                self.refusal(format!("reading processes and energy: {e}"))
            }
        }
    }
}

/// The cached snapshot when young enough, else a new one (cached).
fn refresh(st: &mut State, max_age_ms: u64) -> Result<(u64, NodeSnapshot), NvmlFailure> {
    let now = now_ms();
    if let Some((taken, snap)) = &st.snapshot {
        if now.saturating_sub(*taken) <= max_age_ms && *taken <= now {
            return Ok((*taken, snap.clone()));
        }
    }
    st.snapshot = None;
    let taken = now_ms();
    let snap = st.session.snapshot()?;
    st.snapshot = Some((taken, snap.clone()));
    Ok((taken, snap))
}

/// Makes the directory root's (0700) and binds the socket (0600), replacing a stale one.
fn bind(path: &Path) -> Result<UnixListener, GateServerError> {
    let io = |p: &Path, what: &'static str| {
        let p = p.to_path_buf();
        move |source| GateServerError::Io {
            path: p,
            what,
            source,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir, "creating the socket's directory"))?;
    }
    let meta = std::fs::metadata(dir).map_err(io(dir, "looking at the socket's directory"))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(GateServerError::InUse {
            path: dir.to_path_buf(),
            why: format!(
                "owned by uid {}, not this daemon's ({me}): gates would refuse it",
                meta.uid()
            ),
        });
    }
    if meta.mode() & 0o022 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(dir, "making the socket's directory 0700"))?;
    }
    if check_path(path)? {
        std::fs::remove_file(path).map_err(io(path, "removing the stale socket"))?;
    }
    let listener = UnixListener::bind(path).map_err(io(path, "binding"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io(path, "making the socket 0600"))?;
    Ok(listener)
}

/// Whether `path` may be bound: free (`Ok(false)`) or a stale socket to remove
/// (`Ok(true)`); a socket someone answers on, or another kind of file, is an error.
fn check_path(path: &Path) -> Result<bool, GateServerError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(GateServerError::InUse {
                    path: path.to_path_buf(),
                    why: "another process (a second healthd?) answers on it: left alone".into(),
                });
            }
            Ok(true)
        }
        Ok(_) => Err(GateServerError::InUse {
            path: path.to_path_buf(),
            why: "exists and is not a socket: left alone".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(GateServerError::Io {
            path: path.to_path_buf(),
            what: "looking at the socket",
            source,
        }),
    }
}

/// Starts serving, logging (not failing the daemon) when it cannot.
pub fn start(config: &Config, node: &str) -> Option<SocketGuard> {
    match GateServer::spawn(config, node) {
        Ok(None) => {
            info!("gate_socket = \"off\": the gates read NVML themselves");
            None
        }
        Ok(Some(g)) => Some(g),
        Err(e) => {
            error!("cannot serve the gates' readings: {e}; the gates read NVML themselves");
            None
        }
    }
}
