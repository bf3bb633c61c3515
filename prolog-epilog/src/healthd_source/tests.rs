use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;

use sgpu_nodelib::gpu::{GpuProcess, GpuSnapshot, Reading};

use super::*;

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

fn snapshot() -> NodeSnapshot {
    let mut g = GpuSnapshot::unknown(0);
    g.uuid = Reading::Value("GPU-0".into());
    g.energy_mj = Reading::Value(123_456);
    g.compute_processes = Reading::Value(vec![GpuProcess {
        pid: 42,
        used_memory: Some(1 << 20),
    }]);
    g.ecc_volatile_uncorrected = Reading::Value(0);
    NodeSnapshot {
        driver_version: Reading::Value("580.159.04".into()),
        gpus: vec![g],
    }
}

fn answer(node: &str, taken_ms: u64) -> GateReadings<NodeSnapshot> {
    GateReadings {
        version: Some(gate::VERSION),
        node: node.into(),
        answered_at_ms: taken_ms,
        snapshot_taken_at_ms: taken_ms,
        fresh_gpus: vec![0],
        snapshot: Some(snapshot()),
        error: None,
    }
}

fn settings(socket: &Path) -> GateSettings {
    GateSettings {
        socket: Some(socket.to_path_buf()),
        max_age: Duration::from_millis(2000),
        timeout: Duration::from_millis(2000),
    }
}

/// Serves one connection on `listener`: reads the request line, answers `doc`.
fn serve_one(
    listener: UnixListener,
    doc: GateReadings<NodeSnapshot>,
) -> std::thread::JoinHandle<Option<GateRequest>> {
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().ok()?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).ok()?;
        let req: GateRequest = serde_json::from_str(&line).ok()?;
        let mut w = &stream;
        w.write_all(&serde_json::to_vec(&doc).ok()?).ok()?;
        Some(req)
    })
}

fn private_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

#[test]
fn a_trusted_answer_is_taken_with_its_snapshot_round_tripped() {
    let dir = private_dir();
    let path = dir.path().join("healthd.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = serve_one(listener, answer("node1", sgpu_spool::now_ms()));
    let got = fetch(&settings(&path), "node1", Some(vec![0]), euid())
        .unwrap()
        .unwrap();
    assert_eq!(
        got.snapshot,
        snapshot(),
        "the snapshot survives the wire unchanged"
    );
    assert_eq!(got.fresh_gpus, vec![0]);
    let req = server.join().unwrap().unwrap();
    assert_eq!(req.node, "node1");
    assert_eq!(req.minors, Some(vec![0]));
    assert_eq!(req.version, Some(gate::VERSION));
}

#[test]
fn off_asks_nothing() {
    let mut s = settings(Path::new("/nonexistent"));
    s.socket = None;
    assert!(fetch(&s, "node1", None, euid()).unwrap().is_none());
}

#[test]
fn no_healthd_is_an_error_naming_the_socket() {
    let dir = private_dir();
    let path = dir.path().join("healthd.sock");
    let e = fetch(&settings(&path), "node1", None, euid()).unwrap_err();
    assert!(e.to_string().contains("healthd.sock"), "{e}");
}

#[test]
fn a_socket_of_another_owner_or_in_a_writable_directory_is_refused() {
    let dir = private_dir();
    let path = dir.path().join("healthd.sock");
    let _listener = UnixListener::bind(&path).unwrap();
    // the gate trusts only `trusted_uid`: a socket owned by anyone else is refused unasked
    let e = fetch(&settings(&path), "node1", None, euid().wrapping_add(1)).unwrap_err();
    assert!(matches!(e, SourceError::Untrusted { .. }), "{e}");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o733)).unwrap();
    let e = fetch(&settings(&path), "node1", None, euid()).unwrap_err();
    assert!(e.to_string().contains("world-writable"), "{e}");
}

/// A root-owned socket in a root-owned directory whose listener is NOT root (a user who
/// got a listening socket renamed there) is refused by its peer credentials. The listener
/// runs on a thread whose effective uid is nobody's (a per-thread `setresuid` syscall), so
/// this needs root; without it the test says so and checks nothing else.
#[test]
fn a_listener_that_is_not_root_is_refused_by_its_peer_credentials() {
    if euid() != 0 {
        eprintln!("not root: the peer-credential refusal needs a listener of another uid");
        return;
    }
    const NOBODY: u32 = 65534;
    let dir = private_dir();
    // nobody may pass through (not write): still a trusted directory
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let user_dir = dir.path().join("user");
    std::fs::create_dir(&user_dir).unwrap();
    std::os::unix::fs::chown(&user_dir, Some(NOBODY), Some(NOBODY)).unwrap();
    let user_path = user_dir.join("fake.sock");
    let (tx, rx) = mpsc::channel();
    let p = user_path.clone();
    let server = std::thread::spawn(move || {
        // SAFETY: the raw syscall changes only this thread's effective uid (glibc's
        // setresuid would change every thread's).
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, -1i64, i64::from(NOBODY), -1i64) };
        assert_eq!(rc, 0, "setresuid");
        let listener = UnixListener::bind(&p).unwrap();
        tx.send(()).unwrap();
        serve_one(listener, answer("node1", sgpu_spool::now_ms())).join()
    });
    rx.recv().unwrap();
    // root moves the user's listening socket into the trusted place and owns the file
    let path = dir.path().join("healthd.sock");
    std::fs::rename(&user_path, &path).unwrap();
    std::os::unix::fs::chown(&path, Some(0), Some(0)).unwrap();
    let e = fetch(&settings(&path), "node1", None, ROOT_UID).unwrap_err();
    assert!(
        matches!(e, SourceError::Peer { uid: NOBODY, .. }),
        "a fake healthd is refused by its uid: {e}"
    );
    // the fake server gets no request (the gate hung up before asking)
    drop(server.join());
}

#[test]
fn peer_uid_is_the_other_end() {
    let (a, _b) = UnixStream::pair().unwrap();
    assert_eq!(peer_uid(&a).unwrap(), euid());
}

#[test]
fn another_node_a_stale_snapshot_or_no_snapshot_is_refused() {
    let s = GateSettings {
        socket: None,
        max_age: Duration::from_millis(2000),
        timeout: Duration::from_millis(100),
    };
    let now = 1_000_000;
    assert!(accept(answer("node1", now - 500), "node1", now, &s).is_ok());
    let e = accept(answer("node2", now), "node1", now, &s).unwrap_err();
    assert!(matches!(e, SourceError::Node { .. }), "{e}");
    let e = accept(answer("node1", now - 2_101), "node1", now, &s).unwrap_err();
    assert!(matches!(e, SourceError::Age(_)), "{e}");
    let mut none = answer("node1", now);
    none.snapshot = None;
    none.error = Some("nvml init failed".into());
    let e = accept(none, "node1", now, &s).unwrap_err();
    assert!(e.to_string().contains("nvml init failed"), "{e}");
}

#[test]
fn an_answer_that_never_comes_times_out() {
    let dir = private_dir();
    let path = dir.path().join("healthd.sock");
    let listener = UnixListener::bind(&path).unwrap();
    // accepted and never answered
    let held = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let mut s = settings(&path);
    s.timeout = Duration::from_millis(50);
    let e = fetch(&s, "node1", None, euid()).unwrap_err();
    assert!(matches!(e, SourceError::Timeout { .. }), "{e}");
    drop(held.join());
}
