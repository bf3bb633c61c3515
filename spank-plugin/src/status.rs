//! Utilization samples for `--gpu-report`: one `GET /status` to the node's healthd.
//!
//! A minimal blocking HTTP/1.1 client over [`std::net::TcpStream`], loopback only, under one
//! short deadline for connect, write and read together ([`FETCH_BUDGET`]); the body is
//! capped ([`MAX_RESPONSE`]). Any failure (healthd not running, slow, refused, odd answer)
//! is an `Err` and the report says utilization is unavailable. No runtime, no threads.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The whole exchange with healthd (connect, request, response) must fit in this.
pub const FETCH_BUDGET: Duration = Duration::from_millis(100);

/// Largest response read; a bigger one is refused.
pub const MAX_RESPONSE: usize = 4 << 20;

/// healthd's `/status` document, its running jobs and their GPUs (the wire types that
/// healthd serialises; the report uses the jobs).
pub use sgpu_wire::healthd::{JobDoc as JobUsage, JobGpuDoc as GpuUsage, StatusDoc};

/// The address to ask: `status_listen`, with an unspecified address (`0.0.0.0`, `::`)
/// replaced by loopback; `None` for a non-loopback address (the plugin talks to its own
/// node's healthd only).
pub fn loopback_target(listen: SocketAddr) -> Option<SocketAddr> {
    let ip = match listen.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip if ip.is_loopback() => ip,
        _ => return None,
    };
    Some(SocketAddr::new(ip, listen.port()))
}

/// Why `/status` could not be read; the report then says utilization is unavailable.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// `status_listen` names another host: the plugin asks its own node's healthd only.
    #[error("status_listen {0} is not a loopback address")]
    NotLoopback(SocketAddr),
    /// The budget ran out.
    #[error("healthd did not answer in time")]
    Timeout,
    /// No connection (healthd not running, another port).
    #[error("connect {addr}: {error}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
    /// A socket option could not be set.
    #[error("{0}")]
    Socket(std::io::Error),
    /// The request could not be sent.
    #[error("request to {addr}: {error}")]
    Request {
        /// Where.
        addr: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
    /// The answer could not be read.
    #[error("reading from {addr}: {error}")]
    Read {
        /// Where.
        addr: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
    /// More than [`MAX_RESPONSE`].
    #[error("healthd's answer is too large")]
    TooLarge,
    /// Not HTTP.
    #[error("healthd sent no complete HTTP header")]
    NoHeader,
    /// Not 200.
    #[error("healthd answered {0:?}")]
    Status(String),
    /// A chunked body that does not parse.
    #[error("healthd sent a malformed chunked body")]
    BadChunks,
    /// A Content-Length that is not a number.
    #[error("healthd sent a bad Content-Length")]
    BadLength,
    /// Fewer bytes than announced.
    #[error("healthd's answer was cut short")]
    Short,
    /// Not a `/status` document of a version this plugin reads.
    #[error(transparent)]
    Decode(#[from] sgpu_wire::DecodeError),
}

/// Fetches and parses `/status` from healthd at `listen` within `budget`.
pub fn fetch(listen: SocketAddr, budget: Duration) -> Result<StatusDoc, StatusError> {
    let addr = loopback_target(listen).ok_or(StatusError::NotLoopback(listen))?;
    let body = http_get(addr, "/status", budget)?;
    parse(&body)
}

/// Parses a `/status` body ([`sgpu_wire::decode`]: another major version is refused).
pub fn parse(body: &[u8]) -> Result<StatusDoc, StatusError> {
    Ok(sgpu_wire::decode(body)?)
}

fn remaining(deadline: Instant) -> Result<Duration, StatusError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(StatusError::Timeout)
    } else {
        Ok(left)
    }
}

/// `GET path` over HTTP/1.1 with `Connection: close`; the body of a 200 answer.
fn http_get(addr: SocketAddr, path: &str, budget: Duration) -> Result<Vec<u8>, StatusError> {
    let deadline = Instant::now() + budget;
    let mut s = TcpStream::connect_timeout(&addr, remaining(deadline)?)
        .map_err(|error| StatusError::Connect { addr, error })?;
    s.set_nodelay(true).map_err(StatusError::Socket)?;
    s.set_write_timeout(Some(remaining(deadline)?))
        .map_err(StatusError::Socket)?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .map_err(|error| StatusError::Request { addr, error })?;
    let mut buf = Vec::with_capacity(16 << 10);
    let mut chunk = [0u8; 16 << 10];
    loop {
        s.set_read_timeout(Some(remaining(deadline)?))
            .map_err(StatusError::Socket)?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                if buf.len() > MAX_RESPONSE {
                    return Err(StatusError::TooLarge);
                }
                // stop as soon as a Content-Length body is complete
                if let Some(body) = complete_body(&buf) {
                    return body;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(StatusError::Read { addr, error }),
        }
    }
    complete_body(&buf).unwrap_or_else(|| response_body(&buf, true))
}

/// The body once the response is complete by its `Content-Length` (`None`: read on).
fn complete_body(buf: &[u8]) -> Option<Result<Vec<u8>, StatusError>> {
    let (head, body) = split_head(buf)?;
    let len = header(head, "content-length")?
        .trim()
        .parse::<usize>()
        .ok()?;
    (body.len() >= len).then(|| response_body(buf, false))
}

fn split_head(buf: &[u8]) -> Option<(&str, &[u8])> {
    let at = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(buf.get(..at)?).ok()?;
    Some((head, buf.get(at + 4..)?))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// The body of a complete response (`eof`: the connection was closed after it).
fn response_body(buf: &[u8], eof: bool) -> Result<Vec<u8>, StatusError> {
    let (head, body) = split_head(buf).ok_or(StatusError::NoHeader)?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("");
    if status != "200" {
        return Err(StatusError::Status(status.to_string()));
    }
    if header(head, "transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        return dechunk(body).ok_or(StatusError::BadChunks);
    }
    if let Some(len) = header(head, "content-length") {
        let len: usize = len.trim().parse().map_err(|_| StatusError::BadLength)?;
        return body
            .get(..len)
            .map(<[u8]>::to_vec)
            .ok_or(StatusError::Short);
    }
    if eof {
        Ok(body.to_vec())
    } else {
        Err(StatusError::Short)
    }
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = body.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(body.get(..eol)?).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        body = body.get(eol + 2..)?;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// The run of `job_id` on `cluster` the step belongs to: the latest that started no later
/// than shortly after the step (`step_start_ms`), else the latest.
pub fn find_job<'a>(
    doc: &'a StatusDoc,
    cluster: &str,
    job_id: u32,
    step_start_ms: u64,
) -> Option<&'a JobUsage> {
    let runs = || {
        doc.jobs
            .iter()
            .filter(|j| j.job_id == job_id && j.cluster.eq_ignore_ascii_case(cluster))
    };
    runs()
        .filter(|j| j.start_time_ms <= step_start_ms.saturating_add(60_000))
        .max_by_key(|j| j.start_time_ms)
        .or_else(|| runs().max_by_key(|j| j.start_time_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Test-only: the value, or a panic naming what went wrong.
    trait Must<T> {
        fn must(self) -> T;
    }

    impl<T, E: std::fmt::Debug> Must<T> for Result<T, E> {
        fn must(self) -> T {
            match self {
                Ok(v) => v,
                Err(e) => panic!("{e:?}"),
            }
        }
    }

    impl<T> Must<T> for Option<T> {
        fn must(self) -> T {
            match self {
                Some(v) => v,
                None => panic!("expected a value"),
            }
        }
    }

    const DOC: &str = r#"{"version":1,"node":"node2","healthd_version":"0.1.0","now_ms":1,
      "started_at_ms":0,"health":null,"drained":null,
      "breaker":{"open":false,"trip":null,"refusals_total":0},
      "sampling":{"interval_s":10,"last_sample_ms":null,"last_duration_ms":null,"error":null,
                  "samples_total":0,"jobs_finalised_total":0},"gpus":[],"jobs":[
      {"cluster":"sgpu-test","job_id":7,"user":"root","account":null,"partition":"gpu",
       "start_time_ms":1000,"samples":3,"util_mean_pct":40.0,"util_max_pct":40,"energy_mj":5,
       "gpus":[{"index":0,"uuid":"GPU-a","samples":3,"util_mean_pct":40.0,"util_max_pct":41,
                "mem_peak_mib":512,"energy_mj":5}]},
      {"cluster":"sgpu-test","job_id":7,"user":"root","account":null,"partition":"gpu",
       "start_time_ms":900000,"samples":0,"util_mean_pct":0.0,"util_max_pct":0,"energy_mj":null,
       "gpus":[]}]}"#;

    #[test]
    fn parses_status_and_finds_the_run() {
        let doc = parse(DOC.as_bytes()).must();
        let j = find_job(&doc, "sgpu-test", 7, 2000).must();
        assert_eq!(j.start_time_ms, 1000);
        assert_eq!(j.gpus[0].mem_peak_mib, 512);
        assert_eq!(
            find_job(&doc, "sgpu-test", 7, 10_000_000)
                .must()
                .start_time_ms,
            900000
        );
        assert!(find_job(&doc, "other", 7, 2000).is_none());
        assert!(parse(b"{\"version\":2}").is_err());
        assert!(parse(b"not json").is_err());
    }

    #[test]
    fn loopback_only() {
        let a = |s: &str| s.parse::<SocketAddr>().must();
        assert_eq!(
            loopback_target(a("0.0.0.0:9411")),
            Some(a("127.0.0.1:9411"))
        );
        assert_eq!(loopback_target(a("[::1]:9411")), Some(a("[::1]:9411")));
        assert_eq!(loopback_target(a("10.0.0.1:9411")), None);
    }

    fn serve_once(answer: Vec<u8>, delay: Duration) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").must();
        let addr = l.local_addr().must();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut req = [0u8; 1024];
                let _ = s.read(&mut req);
                std::thread::sleep(delay);
                let _ = s.write_all(&answer);
            }
        });
        addr
    }

    #[test]
    fn fetches_content_length_and_chunked_answers() {
        let body = DOC.as_bytes();
        let mut a = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        a.extend_from_slice(body);
        let doc = fetch(serve_once(a, Duration::ZERO), FETCH_BUDGET).must();
        assert_eq!(doc.jobs.len(), 2);

        let (x, y) = body.split_at(10);
        let mut c = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for part in [x, y] {
            c.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            c.extend_from_slice(part);
            c.extend_from_slice(b"\r\n");
        }
        c.extend_from_slice(b"0\r\n\r\n");
        let doc = fetch(serve_once(c, Duration::ZERO), FETCH_BUDGET).must();
        assert_eq!(doc.jobs.len(), 2);
    }

    #[test]
    fn failures_are_errors_within_the_budget() {
        // nobody listening
        let l = TcpListener::bind("127.0.0.1:0").must();
        let addr = l.local_addr().must();
        drop(l);
        assert!(fetch(addr, FETCH_BUDGET).is_err());
        // a server that answers too late
        let slow = serve_once(
            b"HTTP/1.1 200 OK\r\n\r\n{}".to_vec(),
            Duration::from_secs(2),
        );
        let t = Instant::now();
        assert!(fetch(slow, FETCH_BUDGET).is_err());
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        // not 200
        let e = fetch(
            serve_once(
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec(),
                Duration::ZERO,
            ),
            FETCH_BUDGET,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("404"), "{e}");
    }
}
