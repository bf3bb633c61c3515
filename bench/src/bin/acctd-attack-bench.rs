//! acctd-attack-bench: a legitimate client's report latency with and without hostile
//! clients (issue 11 §4). Printed, never judged (bench/README.md).
//!
//! Starts the real `sgpu-acctd` (`--auth munge` when munged answers, else `--auth none` on
//! loopback, said in the output) with 2 s header and body deadlines, ingests a day of jobs as
//! root through the client crate, then times `GET /v1/report` over that day, first quiet,
//! then while attacker threads keep going: slow-header connections (128 held open, renewed
//! as acctd drops them), declared-oversized bodies, slow bodies, garbage credentials and
//! huge `/v1/jobs` windows. Prints median/p90/max of both and their ratio (target: within
//! 2x), and what the attackers were answered. Exits 1 only when something did not work: a
//! report was wrong, or an attack got an answer other than its refusal.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sgpu_acct_client::{Client, ClientAuth};
use sgpu_spool::{GpuEnd, JobEnd, Record, RecordBody, RecordId, RecordKind};

const DAY_MS: u64 = 86_400_000;
const D: u64 = 19_783 * DAY_MS; // 2024-03-01
const REPORT: &str = "/v1/report?start=2024-03-01&end=2024-03-02";
const SAMPLES: usize = 300;

struct Acctd(Child);

impl Drop for Acctd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn job_end(job: u32) -> Record {
    let gpus = vec![GpuEnd {
        index: 0,
        uuid: format!("GPU-{job}"),
        name: Some("NVIDIA H100 80GB HBM3".into()),
        energy_start_mj: Some(0),
        energy_end_mj: Some(1000),
        energy_delta_mj: Some(1000),
        mig: None,
    }];
    let start = D + u64::from(job % 20) * 3_600_000;
    let body = JobEnd {
        user: format!("user{}", job % 50),
        uid: 2000 + job % 50,
        account: Some(format!("acct{}", job % 7)),
        partition: Some("gpu".into()),
        start_time: start,
        end_time: start + 3_600_000,
        allocated_gpu_ms: 3_600_000,
        gpus,
        exit: None,
        slurm_window: None,
    };
    let id = RecordId::new("bench", job, None, "n1", RecordKind::JobEnd).expect("valid id");
    Record::new(id, start, RecordBody::JobEnd(body)).expect("valid record")
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Report latencies in ms, sorted; checks each report's total.
fn time_reports(c: &Client, want_ms: u64) -> Result<Vec<f64>, String> {
    let mut out = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let t = Instant::now();
        let v = c.get_json(REPORT).map_err(|e| format!("report: {e}"))?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        let total: u64 = v["rows"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|x| x["allocated_gpu_ms"].as_u64())
                    .sum()
            })
            .unwrap_or(0);
        if total != want_ms {
            return Err(format!("report total {total}, expected {want_ms}: {v}"));
        }
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// One raw request; the status acctd answered (0: closed without one).
fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> u16 {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes());
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    String::from_utf8_lossy(&resp)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn run() -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe.parent().ok_or("no binary directory")?;
    let bin = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.join("sgpu-acctd"));
    let munge = sgpu_munge_ok();
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let auth = if munge { "munge" } else { "none" };
    let _acctd = Acctd(
        Command::new(&bin)
            .args(["--auth", auth, "--listen", &addr.to_string(), "--db"])
            .arg(tmp.path().join("db"))
            .args(["--header-timeout-s", "2", "--body-timeout-s", "2"])
            .args(["--max-connections", "512"])
            .env("SGPU_LOG", "error")
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?,
    );
    let t0 = Instant::now();
    while TcpStream::connect(addr).is_err() {
        if t0.elapsed() > Duration::from_secs(60) {
            return Err("sgpu-acctd did not listen within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("sgpu-acctd --auth {auth} on {addr} (2 s header/body deadlines, 512 connections)");
    let client_auth = if munge {
        ClientAuth::Munge { socket: None }
    } else {
        ClientAuth::None
    };
    let c = Client::new(
        &format!("http://{addr}"),
        client_auth,
        Duration::from_secs(30),
    )
    .map_err(|e| e.to_string())?;
    let jobs = 2_000u32;
    for chunk in (1..=jobs).collect::<Vec<_>>().chunks(500) {
        let recs: Vec<Record> = chunk.iter().map(|&j| job_end(j)).collect();
        let body = serde_json::to_vec(&recs).map_err(|e| e.to_string())?;
        c.post_records(&body).map_err(|e| format!("ingest: {e}"))?;
    }
    let want = u64::from(jobs) * 3_600_000;
    let quiet = time_reports(&c, want)?;

    let stop = Arc::new(AtomicBool::new(false));
    let unexpected = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut attackers = Vec::new();
    // 128 slow-header connections, renewed when dropped
    for _ in 0..4 {
        let stop = stop.clone();
        attackers.push(std::thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                held.retain(|s| {
                    let mut b = [0u8; 1];
                    let _ = s.set_nonblocking(true);
                    !matches!((&*s).read(&mut b), Ok(0))
                });
                while held.len() < 32 {
                    let Ok(mut s) = TcpStream::connect(addr) else {
                        break;
                    };
                    let _ = s.write_all(b"GET /v1/report HTTP/1.1\r\nHost: x\r\n");
                    held.push(s);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }));
    }
    // request floods, each refused: (head, body, expected status)
    let floods: Vec<(String, Vec<u8>, u16)> = vec![
        (
            "POST /v1/records HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\
             Authorization: MUNGE bogus"
                .into(),
            Vec::new(),
            if munge { 401 } else { 413 },
        ),
        (
            format!(
                "GET /v1/jobs?start=0&end=99999999999 HTTP/1.1\r\nHost: x{}",
                if munge {
                    "\r\nAuthorization: MUNGE MUNGE:bogus:"
                } else {
                    ""
                }
            ),
            Vec::new(),
            if munge { 401 } else { 400 },
        ),
        (
            "POST /v1/records HTTP/1.1\r\nHost: x\r\nContent-Length: 100".into(),
            b"[".to_vec(),
            if munge { 401 } else { 408 },
        ),
    ];
    for (head, body, expect) in floods {
        let (stop, unexpected, sent) = (stop.clone(), unexpected.clone(), sent.clone());
        attackers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let got = raw(addr, &head, &body);
                sent.fetch_add(1, Ordering::Relaxed);
                if got != expect {
                    unexpected.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "attack {:?} answered {got}, expected {expect}",
                        head.lines().next()
                    );
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    let attacked = time_reports(&c, want);
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = a.join();
    }
    let attacked = attacked?;
    let line = |name: &str, v: &[f64]| {
        println!(
            "{name:<16} report latency ms: median {:.2}  p90 {:.2}  max {:.2}  ({} reports)",
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 1.0),
            v.len()
        );
    };
    line("quiet", &quiet);
    line("under attack", &attacked);
    let ratio = pct(&attacked, 0.5) / pct(&quiet, 0.5);
    let ratio90 = pct(&attacked, 0.9) / pct(&quiet, 0.9);
    println!(
        "ratio under attack / quiet: median {ratio:.2}x, p90 {ratio90:.2}x (target within 2x: {})",
        if ratio <= 2.0 { "met" } else { "MISSED" }
    );
    println!(
        "attack requests answered: {} (each refused as expected but {})",
        sent.load(Ordering::Relaxed),
        unexpected.load(Ordering::Relaxed)
    );
    if unexpected.load(Ordering::Relaxed) > 0 {
        return Err("an attack got an answer other than its refusal".into());
    }
    Ok(())
}

/// Whether munged makes credentials here.
fn sgpu_munge_ok() -> bool {
    let c = Client::new(
        "http://127.0.0.1:9",
        ClientAuth::Munge { socket: None },
        Duration::from_millis(200),
    );
    // the credential is made before connecting: a transport error means munge worked
    match c.map(|c| c.get_json("/")) {
        Ok(Err(sgpu_acct_client::ClientError::Credential(_))) | Err(_) => false,
        Ok(_) => true,
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("acctd-attack-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
