//! Helpers shared by the integration tests: acctd's router served in process, a tiny
//! blocking HTTP/1.1 client, and records.

#![allow(dead_code, clippy::too_many_arguments)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use sgpu_spool::{GpuEnd, GpuUsage, JobEnd, Record, RecordBody, RecordId, RecordKind, Usage};

/// Serves acctd's router over a store in `dir` ([`TestDb`]) on a free loopback port (a thread with
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
    let store: std::sync::Arc<dyn sgpu_accounting::store::Store> =
        std::sync::Arc::from(TestDb::new(dir).open());
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
            mig: None,
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

/// Whether `SGPU_TEST_STORE` names MariaDB (`mariadb`) rather than sled (unset or `sled`);
/// any other value fails the test.
pub fn mariadb() -> bool {
    match std::env::var("SGPU_TEST_STORE").as_deref() {
        Err(_) | Ok("" | "sled") => false,
        Ok("mariadb") => true,
        Ok(other) => panic!("SGPU_TEST_STORE={other}: use sled or mariadb"),
    }
}

/// The test process's MariaDB server (socket only), started on first use and stopped, its
/// directory removed, when the process ends.
pub fn mariadb_server() -> &'static std::sync::Mutex<sgpu_accounting::mariadb_server::MariaDb> {
    static SERVER: std::sync::OnceLock<std::sync::Mutex<sgpu_accounting::mariadb_server::MariaDb>> =
        std::sync::OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sgpu-mariadb-it-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::sync::Mutex::new(
            sgpu_accounting::mariadb_server::MariaDb::create(&dir, None, true)
                .unwrap_or_else(|e| panic!("starting a MariaDB for the tests: {e}")),
        )
    })
}

/// A store for one test, of the kind `SGPU_TEST_STORE` names: a sled directory under `dir`,
/// or a database of its own on [`mariadb_server`], for a user of its own (`sgpu_<db>`) whose
/// password is in a root-only file under `dir` (acctd gets it with `--db-password-file`).
pub enum TestDb {
    /// The sled directory.
    Sled(std::path::PathBuf),
    /// The store URL and the password file.
    MariaDb {
        /// `mysql://sgpu@localhost/<db>?socket=...`
        url: String,
        /// Holds the password.
        password_file: std::path::PathBuf,
    },
}

impl TestDb {
    /// A new, empty store for a test whose files go under `dir`.
    pub fn new(dir: &std::path::Path) -> TestDb {
        if mariadb() {
            TestDb::new_mariadb(dir)
        } else {
            TestDb::Sled(dir.join("db"))
        }
    }

    /// A new, empty database on [`mariadb_server`], whatever `SGPU_TEST_STORE` says.
    pub fn new_mariadb(dir: &std::path::Path) -> TestDb {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let db = format!("it{}", N.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
        let password = format!("pw-{}-{db}", std::process::id());
        let url = mariadb_server()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .create_database(&db, &format!("sgpu_{db}"), &password)
            .unwrap();
        let password_file = dir.join("db-password");
        write_private(&password_file, &password);
        TestDb::MariaDb { url, password_file }
    }

    /// The `--db ...` arguments that make acctd use this store.
    pub fn acctd_args(&self) -> Vec<std::ffi::OsString> {
        match self {
            TestDb::Sled(p) => vec!["--db".into(), p.into()],
            TestDb::MariaDb { url, password_file } => vec![
                "--db".into(),
                url.into(),
                "--db-password-file".into(),
                password_file.into(),
            ],
        }
    }

    /// Opens the store in this process.
    pub fn open(&self) -> Box<dyn sgpu_accounting::store::Store> {
        match self {
            TestDb::Sled(p) => Box::new(sgpu_accounting::sled_store::SledStore::open(p).unwrap()),
            TestDb::MariaDb { url, password_file } => {
                let password = std::fs::read_to_string(password_file).unwrap();
                Box::new(
                    sgpu_accounting::mysql_store::MysqlStore::connect(url, Some(password.trim()))
                        .unwrap(),
                )
            }
        }
    }
}

/// Writes `text` to a new file that only its owner may read (mode 0600).
pub fn write_private(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.write_all(b"\n").unwrap();
}

/// Starts the real `sgpu-acctd` (`--auth none`, a free loopback port) with `args` (its
/// store: `--db ...`) and its log (stderr) to `log`; returns it and where it listens.
pub fn spawn_acctd(
    args: &[std::ffi::OsString],
    log: std::fs::File,
) -> (std::process::Child, SocketAddr) {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sgpu-acctd"))
        .args(["--auth", "none", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::from(log))
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("sgpu-acctd listening on ")
        .unwrap_or_else(|| panic!("acctd did not start: {line:?} (see its log)"))
        .parse()
        .unwrap();
    (child, addr)
}

/// Every record `store` holds and their keys; fails if a key is stored twice.
pub fn stored_once(
    store: &dyn sgpu_accounting::store::Store,
) -> (Vec<Record>, std::collections::HashSet<String>) {
    let mut stored = Vec::new();
    store.for_each_record(&mut |r| stored.push(r)).unwrap();
    let keys: std::collections::HashSet<String> = stored.iter().map(|r| r.id().key()).collect();
    assert_eq!(keys.len(), stored.len(), "a key stored twice");
    (stored, keys)
}

/// Fails unless `store`'s rollups equal what its records add up to
/// ([`sgpu_accounting::store::verify`]).
pub fn assert_rollups_match(store: &dyn sgpu_accounting::store::Store) {
    let v = sgpu_accounting::store::verify(store).unwrap();
    assert!(
        v.mismatches.is_empty(),
        "rollups disagree with records: {:#?}",
        &v.mismatches[..v.mismatches.len().min(5)]
    );
}

/// A sender that behaves like a node's forwarder, on its own thread: batches of
/// `jobs_per_batch` jobs (their records from `records_of(job)`, jobs numbered from 1), each
/// kept (its "spool") and posted again 20 ms later until `post` says it was acknowledged.
pub struct Sender {
    acked: std::sync::Arc<std::sync::Mutex<Vec<Record>>>,
    done: std::sync::Arc<std::sync::atomic::AtomicU32>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Sender {
    /// Starts sending. `post(body, records)` posts one batch and returns whether acctd
    /// acknowledged it (checking the answer); a batch not acknowledged after `max_attempts`
    /// fails the test.
    pub fn start(
        jobs_per_batch: u32,
        max_attempts: u32,
        records_of: fn(u32) -> Vec<Record>,
        mut post: impl FnMut(&[u8], &[Record]) -> bool + Send + 'static,
    ) -> Sender {
        use std::sync::atomic::Ordering;
        let acked: std::sync::Arc<std::sync::Mutex<Vec<Record>>> = Default::default();
        let done: std::sync::Arc<std::sync::atomic::AtomicU32> = Default::default();
        let stop: std::sync::Arc<std::sync::atomic::AtomicBool> = Default::default();
        let thread = {
            let (acked, done, stop) = (acked.clone(), done.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut job = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    let records: Vec<Record> = (0..jobs_per_batch)
                        .flat_map(|_| {
                            job += 1;
                            records_of(job)
                        })
                        .collect();
                    let body = batch(&records);
                    let mut attempts = 0;
                    while !post(&body, &records) {
                        attempts += 1;
                        assert!(attempts < max_attempts, "a batch never acknowledged");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    acked.lock().unwrap().extend(records.iter().cloned());
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        Sender {
            acked,
            done,
            stop,
            thread,
        }
    }

    /// Waits until `n` more batches are acknowledged.
    pub fn wait_batches(&self, n: u32) {
        use std::sync::atomic::Ordering;
        let target = self.done.load(Ordering::SeqCst) + n;
        while self.done.load(Ordering::SeqCst) < target {
            assert!(!self.thread.is_finished(), "the sender stopped");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops after the batch in hand is acknowledged; returns every acknowledged record.
    pub fn stop(self) -> Vec<Record> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap();
        std::mem::take(&mut *self.acked.lock().unwrap())
    }
}
