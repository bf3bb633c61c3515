//! healthd's gate socket against the simulated NVML: the answer, its fresh readings over a
//! cached snapshot, refusals, the socket's modes, and a second healthd leaving a live socket
//! alone.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::{Sim, library};
use nvml_sim::State;
use nvml_sim::state::{Process, ProcessKind};
use sgpu_healthd::gate_server::GateServer;
use sgpu_nodelib::config::{Config, GateSettings};
use sgpu_nodelib::gpu::NodeSnapshot;
use sgpu_wire::gate::{GateReadings, GateRequest, VERSION};

fn config(socket: &Path, max_age: Duration) -> Config {
    Config {
        nvml_library: Some(library().to_path_buf()),
        nvml_timeout: common::TIMEOUT,
        gate: GateSettings {
            socket: Some(socket.to_path_buf()),
            max_age,
            timeout: Duration::from_millis(100),
        },
        ..Config::default()
    }
}

fn ask(socket: &Path, request: &[u8]) -> GateReadings<NodeSnapshot> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut body = Vec::new();
    s.read_to_end(&mut body).unwrap();
    sgpu_wire::decode(&body).unwrap()
}

/// Waits until the server has read its first snapshot and bound the socket.
fn serving(guard: &sgpu_healthd::gate_server::SocketGuard) {
    // a bound only against a hang: the simulator answers in microseconds
    for _ in 0..12_000 {
        if guard.is_serving() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the gate socket was not served within a minute");
}

fn request(node: &str, minors: Option<Vec<u32>>) -> Vec<u8> {
    let mut r = serde_json::to_vec(&GateRequest {
        version: Some(VERSION),
        node: node.into(),
        minors,
    })
    .unwrap();
    r.push(b'\n');
    r
}

#[test]
fn a_gate_gets_a_cached_snapshot_with_fresh_processes() {
    let sim = Sim::start(&State::healthy(2));
    let socket = sim.dir.path().join("run/healthd.sock");
    // a snapshot kept for a minute: only the fresh readings may change between answers
    let guard = GateServer::spawn(&config(&socket, Duration::from_secs(60)), "node1")
        .unwrap()
        .unwrap();
    serving(&guard);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&socket), 0o600, "socket");
    assert_eq!(mode(socket.parent().unwrap()), 0o700, "its directory");

    let first = ask(&socket, &request("node1", None));
    assert_eq!(first.node, "node1");
    assert_eq!(first.error, None);
    assert_eq!(first.fresh_gpus, vec![0, 1]);
    let snap = first.snapshot.clone().unwrap();
    assert_eq!(snap.gpus.len(), 2);
    assert_eq!(snap.gpus[1].compute_processes.value(), Some(&vec![]));

    // a process appears on gpu1 (minor 1); the gate asks for that GPU only
    sim.update(|s| {
        if let Some(g) = s.gpu_mut(1) {
            g.processes.push(Process {
                pid: 4242,
                used_memory_mib: Some(100),
                kind: ProcessKind::Compute,
            });
        }
    });
    let second = ask(&socket, &request("node1", Some(vec![1])));
    assert_eq!(
        second.snapshot_taken_at_ms, first.snapshot_taken_at_ms,
        "the snapshot is reused within gate_max_age_ms"
    );
    assert_eq!(second.fresh_gpus, vec![1]);
    let g1 = &second.snapshot.as_ref().unwrap().gpus[1];
    let pids: Vec<u32> = g1
        .compute_processes
        .value()
        .unwrap()
        .iter()
        .map(|p| p.pid)
        .collect();
    assert_eq!(pids, vec![4242], "processes are read at the request");

    // another node's gate, and a request that is not one, are refused with a reason
    let other = ask(&socket, &request("node2", None));
    assert!(other.snapshot.is_none());
    assert!(other.error.unwrap().contains("node2"));
    let bad = ask(&socket, b"{\"hello\":1}\n");
    assert!(bad.snapshot.is_none());
    assert!(bad.error.unwrap().contains("bad request"));

    // a second healthd leaves the live socket alone
    let e = GateServer::spawn(&config(&socket, Duration::from_secs(60)), "node1").unwrap_err();
    assert!(e.to_string().contains("answers on it"), "{e}");
    assert!(socket.exists());
    drop(guard);
    assert!(!socket.exists(), "the socket goes with the daemon");
}

#[test]
fn max_age_zero_reads_a_new_snapshot_for_every_request() {
    let sim = Sim::start(&State::healthy(1));
    let socket = sim.dir.path().join("run/healthd.sock");
    let guard = GateServer::spawn(&config(&socket, Duration::ZERO), "node1")
        .unwrap()
        .unwrap();
    serving(&guard);
    let first = ask(&socket, &request("node1", None));
    sim.update(|s| {
        if let Some(g) = s.gpu_mut(0) {
            g.ecc.volatile_uncorrected = 3;
        }
    });
    let second = ask(&socket, &request("node1", None));
    let ecc = |d: &GateReadings<NodeSnapshot>| {
        d.snapshot.as_ref().unwrap().gpus[0]
            .ecc_volatile_uncorrected
            .value()
            .copied()
    };
    assert_eq!(ecc(&first), Some(0));
    assert_eq!(
        ecc(&second),
        Some(3),
        "a fault injected between two gates is seen"
    );
}

#[test]
fn a_stale_socket_is_replaced_and_a_file_is_left_alone() {
    let sim = Sim::start(&State::healthy(1));
    let dir = sim.dir.path().join("run");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let socket = dir.join("healthd.sock");
    // a socket nobody listens on (a killed healthd's)
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let guard = GateServer::spawn(&config(&socket, Duration::ZERO), "node1")
        .unwrap()
        .unwrap();
    serving(&guard);
    assert!(ask(&socket, &request("node1", None)).snapshot.is_some());
    drop(guard);
    let file = dir.join("not-a-socket");
    std::fs::write(&file, "x").unwrap();
    let e = GateServer::spawn(&config(&file, Duration::ZERO), "node1").unwrap_err();
    assert!(e.to_string().contains("not a socket"), "{e}");
}
