//! acctd under hostile clients (issue 11 §4), on loopback, in process, with the real munged:
//! while a legitimate client (root, through the client crate) keeps ingesting and reporting,
//! slow-header and slow-body clients, an oversized body, forged, replayed, digest-less and
//! expired credentials, a swapped body and huge query windows are each refused with the
//! right status, and the legitimate client gets every answer right. Every loop is bounded;
//! nothing here asserts on time (bench/README.md has the latency figures).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use sgpu_accounting::auth::{MungeAuthenticator, Policy};
use sgpu_accounting::http::Limits;
use sgpu_accounting::serve::ServeLimits;
use sgpu_acct_client::{Client, ClientAuth};

const D: u64 = 19_783 * DAY; // 2024-03-01

fn limits() -> (Limits, ServeLimits) {
    (
        Limits {
            max_body_bytes: 256 * 1024,
            body_timeout: Duration::from_secs(1),
        },
        ServeLimits {
            max_connections: 64,
            header_timeout: Duration::from_secs(1),
            ..ServeLimits::default()
        },
    )
}

fn root_cred(payload: &str, ttl: Option<u32>) -> String {
    let opts = sgpu_munge::Options { socket: None, ttl };
    sgpu_munge::encode(payload.as_bytes(), &opts).expect("munged runs (tests/cluster/up starts it)")
}

/// Sends `head` (request line and headers, without the final blank line) then `body`, and
/// returns the status acctd answered, or `None` when it closed without an answer.
fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    s.write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    text.split_whitespace().nth(1)?.parse().ok()
}

fn authz(method: &str, path: &str, body: &[u8]) -> String {
    format!(
        "Authorization: MUNGE {}",
        root_cred(&sgpu_munge::request::payload(method, path, body), None)
    )
}

/// A client that opens a connection and sends part of a request line, then nothing: acctd
/// must close it after its header timeout. Returns whether it did (within 10 s).
fn slow_header(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.write_all(b"GET /v1/report?start=2024-03-01&end=2024-03-02 HTTP/1.1\r\nHost: x\r\n");
    let mut buf = [0u8; 512];
    // closed (0 bytes) or answered 408, and then closed
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => String::from_utf8_lossy(&buf[..n]).contains(" 408 "),
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn every_attack_is_refused_while_a_legitimate_client_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (l, sl) = limits();
    let addr = serve_limited(
        dir.path(),
        Arc::new(MungeAuthenticator::new(None)),
        Policy::default(),
        l,
        sl,
    );
    let url = format!("http://{addr}");
    let report = "/v1/report?start=2024-03-01&end=2024-03-02";

    // the legitimate client: a job_end per round, then the day's report, which must count it
    let legit = {
        let url = url.clone();
        std::thread::spawn(move || {
            let c = Client::new(
                &url,
                ClientAuth::Munge { socket: None },
                Duration::from_secs(30),
            )
            .unwrap();
            let mut worst = Duration::ZERO;
            for job in 1..=40u32 {
                let r = job_end(
                    "alpha",
                    job,
                    "n1",
                    "physics",
                    "alice",
                    D + HOUR,
                    D + 2 * HOUR,
                    &[10],
                );
                let reply = c.post_records(&batch(&[r])).unwrap();
                assert_eq!(reply.accepted, 1, "{reply:?}");
                let t = Instant::now();
                let v = c.get_json(report).unwrap();
                worst = worst.max(t.elapsed());
                let total: u64 = v["rows"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|r| r["allocated_gpu_ms"].as_u64())
                    .sum();
                assert_eq!(total, u64::from(job) * HOUR, "{v}");
            }
            worst
        })
    };

    // slow-header clients, at once
    let slow: Vec<_> = (0..16)
        .map(|_| std::thread::spawn(move || slow_header(addr)))
        .collect();

    // an oversized body, declared: 413 before a byte of it is read (none is sent)
    let big_path = "/v1/records";
    let head = format!(
        "POST {big_path} HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n{}",
        authz("POST", big_path, b"[]")
    );
    assert_eq!(raw(addr, &head, b""), Some(413));
    // ... and one sent chunked (no length up front): 413 once it passes the limit
    let chunk = vec![b' '; 300 * 1024];
    let mut chunked = format!("{:x}\r\n", chunk.len()).into_bytes();
    chunked.extend_from_slice(&chunk);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let head = format!(
        "POST {big_path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n{}",
        authz("POST", big_path, &chunk)
    );
    assert_eq!(raw(addr, &head, &chunked), Some(413));

    // a slow body: 10 of 100 bytes, then silence: 408
    let body = b"[]";
    let head = format!(
        "POST /v1/records HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n{}",
        authz("POST", "/v1/records", body)
    );
    assert_eq!(raw(addr, &head, b"[         "), Some(408));

    // a forged credential (one byte changed), a replayed one, one without the body digest
    let path = report;
    let good = root_cred(&sgpu_munge::request::payload("GET", path, b""), None);
    let mut forged = good.clone().into_bytes();
    let i = forged.len() / 2;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let get = |cred: &str| {
        raw(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: MUNGE {cred}"),
            b"",
        )
    };
    assert_eq!(get(&forged), Some(401));
    assert_eq!(get(&good), Some(200));
    assert_eq!(get(&good), Some(401), "a replay");
    assert_eq!(get(&root_cred(&format!("GET {path}"), None)), Some(401));
    // expired: a 1 s credential used 3 s later (munge has no skew allowance for expiry)
    let short = root_cred(&sgpu_munge::request::payload("GET", path, b""), Some(1));

    // a swapped body: the credential was made for another body
    let batch_body = batch(&[job_end(
        "alpha",
        999,
        "n1",
        "physics",
        "mallory",
        D,
        D + HOUR,
        &[1],
    )]);
    let head = format!(
        "POST /v1/records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{}",
        batch_body.len(),
        authz("POST", "/v1/records", b"[]")
    );
    assert_eq!(raw(addr, &head, &batch_body), Some(401));

    // a window of all time naming its jobs (what `sgpu jobs -j ID` asks) reads only the
    // days that have records
    let q = "/v1/jobs?start=0&end=253402300799&jobs=1";
    let head = format!("GET {q} HTTP/1.1\r\nHost: x\r\n{}", authz("GET", q, b""));
    assert_eq!(raw(addr, &head, b""), Some(200), "{q}");

    // huge windows
    for q in [
        "/v1/jobs?start=0&end=99999999999",
        "/v1/jobs?start=0&end=253402300799",
        "/v1/report?start=0&end=99999999999999",
    ] {
        let head = format!("GET {q} HTTP/1.1\r\nHost: x\r\n{}", authz("GET", q, b""));
        assert_eq!(raw(addr, &head, b""), Some(400), "{q}");
    }

    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(get(&short), Some(401), "expired");

    for s in slow {
        assert!(
            s.join().unwrap(),
            "a slow-header client was not disconnected"
        );
    }
    let worst = legit.join().unwrap();
    eprintln!("legitimate client: worst report latency under attack {worst:?}");
    // nothing the attackers sent was stored: 40 jobs, none of mallory's
    let c = Client::new(
        &url,
        ClientAuth::Munge { socket: None },
        Duration::from_secs(30),
    )
    .unwrap();
    let v = c
        .get_json("/v1/jobs?start=2024-03-01&end=2024-03-02")
        .unwrap();
    assert_eq!(v["jobs"].as_array().map(Vec::len), Some(40), "{v}");
}

#[test]
fn connections_over_the_limit_get_503_unread() {
    let dir = tempfile::tempdir().unwrap();
    let (l, mut sl) = limits();
    sl.max_connections = 2;
    sl.header_timeout = Duration::from_secs(5);
    let addr = serve_limited(
        dir.path(),
        Arc::new(MungeAuthenticator::new(None)),
        Policy::default(),
        l,
        sl,
    );
    // two idle connections hold both slots
    let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut resp = String::new();
    let _ = third.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp:?}");
    assert!(resp.contains("max-connections"), "{resp:?}");
    drop(held);
    // the slots come back
    let q = "/v1/report?start=2024-03-01&end=2024-03-02";
    let head = format!("GET {q} HTTP/1.1\r\nHost: x\r\n{}", authz("GET", q, b""));
    let began = Instant::now();
    loop {
        match raw(addr, &head, b"") {
            Some(200) => break,
            other => assert!(
                began.elapsed() < Duration::from_secs(10),
                "after the idle clients left: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
