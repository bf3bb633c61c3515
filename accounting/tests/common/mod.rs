//! Helpers shared by the integration tests: acctd's router served in process, a tiny
//! blocking HTTP/1.1 client, and records.

#![allow(dead_code, clippy::too_many_arguments)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use sgpu_spool::{GpuEnd, GpuUsage, JobEnd, Record, RecordBody, RecordId, RecordKind, Usage};

/// Serves acctd's router over a sled store in `dir` on a free loopback port (a thread with
/// its own runtime), with `auth` and `policy` and a body limit of `max_body` bytes, through
/// acctd's own server ([`sgpu_accounting::serve::serve`]) with its default limits.
pub fn serve_in(
    dir: &std::path::Path,
    auth: std::sync::Arc<dyn sgpu_accounting::auth::Authenticator>,
    policy: sgpu_accounting::auth::Policy,
    max_body: usize,
) -> SocketAddr {
    serve_limited(
        dir,
        auth,
        policy,
        sgpu_accounting::http::Limits::new(max_body),
        sgpu_accounting::serve::ServeLimits::default(),
    )
}

/// [`serve_in`] under the given body and connection limits.
pub fn serve_limited(
    dir: &std::path::Path,
    auth: std::sync::Arc<dyn sgpu_accounting::auth::Authenticator>,
    policy: sgpu_accounting::auth::Policy,
    limits: sgpu_accounting::http::Limits,
    serve_limits: sgpu_accounting::serve::ServeLimits,
) -> SocketAddr {
    use sgpu_accounting::http::{AppState, router_with};
    let store =
        std::sync::Arc::new(sgpu_accounting::sled_store::SledStore::open(&dir.join("db")).unwrap());
    let state = AppState {
        store,
        auth,
        policy: std::sync::Arc::new(policy),
        site: Default::default(),
    };
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            sgpu_accounting::serve::serve(
                listener,
                router_with(state, limits),
                serve_limits,
                std::future::pending(),
            )
            .await
            .unwrap();
        });
    });
    addr
}

pub const HOUR: u64 = 3_600_000;
pub const DAY: u64 = 86_400_000;

/// Sends one request (`Connection: close`) and returns (status, body).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    // The server may answer (413) and close before reading all of a large body.
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text_end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&resp[..text_end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let mut body = resp[text_end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

pub fn job_end(
    cluster: &str,
    job: u32,
    node: &str,
    account: &str,
    user: &str,
    start: u64,
    end: u64,
    energies: &[u64],
) -> Record {
    let gpus: Vec<GpuEnd> = energies
        .iter()
        .enumerate()
        .map(|(i, &e)| GpuEnd {
            index: i as u32,
            uuid: format!("GPU-{node}-{i}"),
            name: Some("NVIDIA H100 80GB HBM3".into()),
            energy_start_mj: Some(10),
            energy_end_mj: Some(10 + e),
            energy_delta_mj: Some(e),
        })
        .collect();
    let body = JobEnd {
        user: user.into(),
        uid: 1000,
        account: Some(account.into()),
        partition: Some("gpu".into()),
        start_time: start,
        end_time: end,
        allocated_gpu_ms: gpus.len() as u64 * (end - start),
        gpus,
        exit: None,
        slurm_window: None,
    };
    let id = RecordId::new(cluster, job, None, node, RecordKind::JobEnd).unwrap();
    Record::new(id, end, RecordBody::JobEnd(body)).unwrap()
}

pub fn job_usage(
    cluster: &str,
    job: u32,
    node: &str,
    account: &str,
    user: &str,
    start: u64,
    end: u64,
    used: &[u64],
) -> Record {
    let gpus: Vec<GpuUsage> = used
        .iter()
        .enumerate()
        .map(|(i, &u)| GpuUsage {
            index: i as u32,
            uuid: format!("GPU-{node}-{i}"),
            name: Some("NVIDIA H100 80GB HBM3".into()),
            samples: 3,
            util_mean_pct: 40.0,
            util_max_pct: 90,
            mem_peak_mib: 100,
            energy_mj: None,
            used_gpu_ms: u,
            idle_ms: None,
            idle_periods: None,
        })
        .collect();
    let body = Usage {
        user: user.into(),
        uid: 1000,
        account: Some(account.into()),
        partition: Some("gpu".into()),
        window_start: start,
        window_end: end,
        allocated_gpu_ms: gpus.len() as u64 * (end - start),
        used_gpu_ms: used.iter().sum(),
        gpus,
        idle_gpu_ms: None,
    };
    let id = RecordId::new(cluster, job, None, node, RecordKind::JobUsage).unwrap();
    Record::new(id, end, RecordBody::JobUsage(body)).unwrap()
}

pub fn batch(records: &[Record]) -> Vec<u8> {
    serde_json::to_vec(records).unwrap()
}
