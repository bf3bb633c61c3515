//! The gates' readings from sgpu-healthd: one request on healthd's root-only Unix socket
//! (`gate_socket`), answered with its warm NVML session's snapshot and fresh processes and
//! energy ([`sgpu_wire::gate`]), so a gate pays neither `nvmlInit` nor attaching the GPUs.
//!
//! Trust: a user must never feed the gate a healthy snapshot of a broken GPU or an energy
//! counter that changes a bill. The socket file and its directory must be owned by root and
//! not group/world-writable, and the peer that accepted the connection must be root
//! (`SO_PEERCRED`); anything else is refused and the gate reads NVML itself. The whole
//! exchange (connect, ask, read) is bounded by `gate_healthd_timeout_ms`.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sgpu_nodelib::config::GateSettings;
use sgpu_nodelib::gpu::NodeSnapshot;
use sgpu_wire::gate::{self, GateReadings, GateRequest};

/// The uid the gate trusts as healthd: root.
pub const ROOT_UID: u32 = 0;

/// Why healthd's readings were not used (the gate then reads NVML itself).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file or socket operation failed (no socket: healthd is not running).
    #[error("{path}: {what}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The socket or its directory is not root's alone.
    #[error("{path}: {why}: refused (only a root-owned socket is trusted)")]
    Untrusted {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The process that accepted the connection is not root.
    #[error("{path}: the peer is uid {uid}, not root: refused")]
    Peer {
        /// The socket.
        path: PathBuf,
        /// The peer's uid.
        uid: u32,
    },
    /// No (whole) answer within the deadline.
    #[error("{path}: no answer within {} ms", timeout.as_millis())]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// The deadline.
        timeout: Duration,
    },
    /// The answer is longer than [`gate::MAX_ANSWER_BYTES`].
    #[error("{path}: the answer is longer than {} bytes", gate::MAX_ANSWER_BYTES)]
    TooLong {
        /// The socket.
        path: PathBuf,
    },
    /// The answer is not the document (or of another version).
    #[error("{0}")]
    Decode(#[from] sgpu_wire::DecodeError),
    /// healthd serves another node.
    #[error("healthd serves node {got:?}, this gate runs for {want:?}")]
    Node {
        /// The node healthd named.
        got: String,
        /// The gate's node.
        want: String,
    },
    /// healthd answered without a snapshot.
    #[error("healthd has no snapshot: {0}")]
    Healthd(String),
    /// The snapshot breaks the age rule.
    #[error("{0}")]
    Age(String),
}

/// healthd's readings, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// The node snapshot with the fresh readings applied.
    pub snapshot: NodeSnapshot,
    /// How old the snapshot was when the gate read it, ms.
    pub age_ms: u64,
    /// NVML indices whose processes and energy were read at the request.
    pub fresh_gpus: Vec<u32>,
}

/// Asks healthd on `settings.socket` for the node's readings, the GPUs of `minors` (device
/// minor numbers; `None`: all) read fresh, trusting only a socket and peer of `trusted_uid`
/// ([`ROOT_UID`] in the gates; tests pass another uid to see a root peer refused). `Ok(None)`:
/// `gate_socket = "off"`.
pub fn fetch(
    settings: &GateSettings,
    node: &str,
    minors: Option<Vec<u32>>,
    trusted_uid: u32,
) -> Result<Option<Fetched>, SourceError> {
    let Some(path) = &settings.socket else {
        return Ok(None);
    };
    let started = Instant::now();
    let deadline = started + settings.timeout;
    trusted_socket(path, trusted_uid)?;
    let mut stream = connect(path, deadline, settings.timeout)?;
    let uid = peer_uid(&stream).map_err(|source| SourceError::Io {
        path: path.clone(),
        what: "reading the peer's credentials",
        source,
    })?;
    if uid != trusted_uid {
        return Err(SourceError::Peer {
            path: path.clone(),
            uid,
        });
    }
    let request = GateRequest {
        version: Some(gate::VERSION),
        node: node.to_string(),
        minors,
    };
    let mut line = serde_json::to_vec(&request).map_err(|e| SourceError::Io {
        path: path.clone(),
        what: "encoding the request",
        source: std::io::Error::other(e),
    })?;
    line.push(b'\n');
    let io = |what: &'static str| {
        let path = path.clone();
        move |source| SourceError::Io { path, what, source }
    };
    let timed_out = || SourceError::Timeout {
        path: path.clone(),
        timeout: settings.timeout,
    };
    let left = remaining(deadline).ok_or_else(timed_out)?;
    stream
        .set_write_timeout(Some(left))
        .map_err(io("setting the write timeout"))?;
    stream.write_all(&line).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => timed_out(),
        _ => io("sending the request")(e),
    })?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(io("ending the request"))?;
    let body = read_answer(&mut stream, deadline, path, settings.timeout)?;
    let doc: GateReadings<NodeSnapshot> = sgpu_wire::decode(&body)?;
    accept(doc, node, sgpu_spool::now_ms(), settings)
}

/// Checks an answer: its node, its snapshot and the age rule ([`sgpu_wire::gate`]).
pub fn accept(
    doc: GateReadings<NodeSnapshot>,
    node: &str,
    now_ms: u64,
    settings: &GateSettings,
) -> Result<Option<Fetched>, SourceError> {
    if doc.node != node {
        return Err(SourceError::Node {
            got: doc.node,
            want: node.to_string(),
        });
    }
    let max_age = u64::try_from(settings.max_age.as_millis()).unwrap_or(u64::MAX);
    let wait = u64::try_from(settings.timeout.as_millis()).unwrap_or(u64::MAX);
    let age_ms = doc
        .check_age(now_ms, max_age, wait)
        .map_err(SourceError::Age)?;
    let Some(snapshot) = doc.snapshot else {
        return Err(SourceError::Healthd(
            doc.error.unwrap_or_else(|| "no reason given".into()),
        ));
    };
    Ok(Some(Fetched {
        snapshot,
        age_ms,
        fresh_gpus: doc.fresh_gpus,
    }))
}

fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    (!left.is_zero()).then_some(left)
}

/// The socket must be a socket owned by `uid`, in a directory owned by `uid` that nobody
/// else may write.
fn trusted_socket(path: &Path, uid: u32) -> Result<(), SourceError> {
    let untrusted = |p: &Path, why: String| SourceError::Untrusted {
        path: p.to_path_buf(),
        why,
    };
    let meta = std::fs::symlink_metadata(path).map_err(|source| SourceError::Io {
        path: path.to_path_buf(),
        what: "looking at the socket",
        source,
    })?;
    if !meta.file_type().is_socket() {
        return Err(untrusted(path, "not a socket".into()));
    }
    if meta.uid() != uid {
        return Err(untrusted(path, format!("owned by uid {}", meta.uid())));
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let dmeta = std::fs::metadata(dir).map_err(|source| SourceError::Io {
        path: dir.to_path_buf(),
        what: "looking at the socket's directory",
        source,
    })?;
    if dmeta.uid() != uid {
        return Err(untrusted(dir, format!("owned by uid {}", dmeta.uid())));
    }
    if dmeta.mode() & 0o022 != 0 {
        return Err(untrusted(
            dir,
            format!("group/world-writable (mode {:o})", dmeta.mode() & 0o7777),
        ));
    }
    Ok(())
}

/// Connects within the deadline: a connect that blocks (healthd stopped with a full backlog)
/// is left on its own thread, which ends with the gate's short-lived process.
fn connect(path: &Path, deadline: Instant, timeout: Duration) -> Result<UnixStream, SourceError> {
    let (tx, rx) = mpsc::channel();
    let target = path.to_path_buf();
    std::thread::Builder::new()
        .name("sgpu-healthd-connect".into())
        .spawn(move || {
            let _ = tx.send(UnixStream::connect(&target));
        })
        .map_err(|source| SourceError::Io {
            path: path.to_path_buf(),
            what: "starting the connect thread",
            source,
        })?;
    let timed_out = || SourceError::Timeout {
        path: path.to_path_buf(),
        timeout,
    };
    match rx.recv_timeout(remaining(deadline).ok_or_else(timed_out)?) {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(SourceError::Io {
            path: path.to_path_buf(),
            what: "connecting",
            source,
        }),
        Err(_) => Err(timed_out()),
    }
}

/// The uid of the process at the other end (`SO_PEERCRED`: who called `listen`).
fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::ucred>())
        .map_err(std::io::Error::other)?;
    // SAFETY: a valid socket fd, a ucred-sized buffer and its length, as SO_PEERCRED takes.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Reads the answer until healthd closes, within the deadline and the size bound.
fn read_answer(
    stream: &mut UnixStream,
    deadline: Instant,
    path: &Path,
    timeout: Duration,
) -> Result<Vec<u8>, SourceError> {
    let timed_out = || SourceError::Timeout {
        path: path.to_path_buf(),
        timeout,
    };
    let mut body = Vec::with_capacity(64 * 1024);
    let mut buf = [0u8; 64 * 1024];
    loop {
        let left = remaining(deadline).ok_or_else(timed_out)?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|source| SourceError::Io {
                path: path.to_path_buf(),
                what: "setting the read timeout",
                source,
            })?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(body),
            Ok(n) => {
                if body.len() + n > gate::MAX_ANSWER_BYTES {
                    return Err(SourceError::TooLong {
                        path: path.to_path_buf(),
                    });
                }
                body.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out());
            }
            Err(source) => {
                return Err(SourceError::Io {
                    path: path.to_path_buf(),
                    what: "reading the answer",
                    source,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
