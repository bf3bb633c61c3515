//! `acct-bench`: sgpu-acctd's ingest throughput and report latency over many synthetic jobs,
//! for each of its stores on the same generated load (`--store both`, the default: sled,
//! then MariaDB; a summary table side by side at the end).
//!
//! Starts the real `sgpu-acctd` (`--auth none` on a free loopback port, its database in a
//! temporary directory; for MariaDB a private `mysqld` there, see
//! `sgpu_accounting::mariadb_server`, and a database and user of its own), sends `--jobs` synthetic jobs ([`synth`]) over HTTP in batches of
//! `--batch` records from `--clients` concurrent clients (each batch acknowledged only once
//! acctd flushed it to disk, as in production), then times reports through HTTP: the query
//! `sgpu report -S <month> -E <next month> --group-by account` sends (a calendar month, per
//! account, priced by acctd with the prices of [`ACCTD_TOML`]), the same per partition and
//! GPU model too, per user, a month with mid-day edges (partial days from per-job records),
//! a year per account by month, and the month and year in Europe/Berlin (`tz=`: the UTC days
//! holding local midnights read from records). With `--sgpu PATH` it also times the `sgpu report` command end
//! to end. Timings are printed, never judged; the exit status is non-zero only when
//! something did not work (a batch refused, a report whose totals disagree with what was
//! sent).

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use sgpu_acct_client::{Client, ClientAuth};

mod synth;

/// Times sgpu-acctd's ingest and reports over synthetic jobs.
#[derive(Parser, Debug)]
#[command(name = "acct-bench")]
struct Args {
    /// Jobs to generate and ingest (one job_end record each; with --usage also a
    /// job_usage).
    #[arg(long, default_value_t = 1_000_000)]
    jobs: u32,
    /// Also send each job's job_usage record (two records per job).
    #[arg(long)]
    usage: bool,
    /// Records per request.
    #[arg(long, default_value_t = 5_000)]
    batch: u32,
    /// Concurrent clients sending batches.
    #[arg(long, default_value_t = 2)]
    clients: u32,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Timed repetitions of each report.
    #[arg(long, default_value_t = 20)]
    reps: u32,
    /// Directory holding sgpu-acctd [default: this program's directory].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The sgpu command, to time `sgpu report` end to end as well.
    #[arg(long)]
    sgpu: Option<PathBuf>,
    /// Where the database goes (a temporary directory inside it) [default: $TMPDIR].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Use (and keep) this database instead of a temporary one.
    #[arg(long)]
    db: Option<PathBuf>,
    /// Send nothing: time the reports over what --db already holds (--jobs: how many jobs
    /// it holds, for the check).
    #[arg(long, requires = "db")]
    no_ingest: bool,
    /// Which of acctd's stores to measure: sled, mariadb, or both (one after the other, on
    /// the same generated load).
    #[arg(long, value_enum, default_value_t = StoreChoice::Both)]
    store: StoreChoice,
    /// The benchmark MariaDB's InnoDB buffer pool, MiB.
    #[arg(long, default_value_t = 2048)]
    mariadb_buffer_pool_mib: u32,
}

/// The stores `--store` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StoreChoice {
    /// The embedded sled store.
    Sled,
    /// MariaDB (a private server started for the run).
    Mariadb,
    /// Both, side by side.
    Both,
}

/// One store's figures, for the side-by-side table.
struct Summary {
    store: &'static str,
    records: usize,
    ingest_s: f64,
    bytes: u64,
    /// (report, median ms, p90 ms)
    reports: Vec<(&'static str, f64, f64)>,
}

struct Acctd {
    child: Child,
    url: String,
}

impl Drop for Acctd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// acctd's configuration in the benchmark: UTC, and prices that change at a midnight in
/// June (every report is priced, as at a site with prices).
const ACCTD_TOML: &str = "time_zone = \"UTC\"\n\
    [prices]\ncurrency = \"EUR\"\n\
    [[prices.period]]\ngpu_hour = 1.0\nkwh = 0.25\npartition = { gpu-long = 0.8 }\n\
    [[prices.period]]\nfrom = \"2025-06-15\"\ngpu_hour = 1.2\nkwh = 0.30\n\
    gpu_model = { \"NVIDIA H100 80GB HBM3\" = 2.5 }\n";

fn start_acctd(
    bin: &std::path::Path,
    db_args: &[std::ffi::OsString],
    config: &std::path::Path,
) -> Result<Acctd, String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let child = Command::new(bin)
        .args(["--auth", "none", "--listen", &addr.to_string()])
        .args(db_args)
        .arg("--config")
        .arg(config)
        .env("SGPU_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let mut acctd = Acctd {
        child,
        url: format!("http://{addr}"),
    };
    let t0 = Instant::now();
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = acctd.child.try_wait() {
            return Err(format!("sgpu-acctd exited ({status}) before listening"));
        }
        if t0.elapsed() > Duration::from_secs(900) {
            return Err("sgpu-acctd did not listen within 900 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(acctd)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn du(path: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += du(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Times `reps` GET requests; returns the sorted latencies (ms) and the last answer.
fn time_get(
    client: &Client,
    path: &str,
    reps: u32,
) -> Result<(Vec<f64>, serde_json::Value), String> {
    let mut times = Vec::new();
    let mut last = serde_json::Value::Null;
    // one untimed warm-up
    client.get_json(path).map_err(|e| format!("{path}: {e}"))?;
    for _ in 0..reps {
        let t = Instant::now();
        last = client.get_json(path).map_err(|e| format!("{path}: {e}"))?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok((times, last))
}

fn sum_rows(v: &serde_json::Value, key: &str) -> u64 {
    v.get("rows")
        .and_then(|r| r.as_array())
        .map(|rows| rows.iter().filter_map(|r| r.get(key)?.as_u64()).sum())
        .unwrap_or(0)
}

fn run(a: &Args) -> Result<(), String> {
    let bin_dir = match &a.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(PathBuf::from))
            .ok_or("cannot find this program's directory; pass --bin-dir")?,
    };
    if a.db.is_some() && a.store != StoreChoice::Sled {
        return Err("--db names a sled directory: add --store sled".into());
    }
    let stores: &[StoreChoice] = match a.store {
        StoreChoice::Both => &[StoreChoice::Sled, StoreChoice::Mariadb],
        StoreChoice::Sled => &[StoreChoice::Sled],
        StoreChoice::Mariadb => &[StoreChoice::Mariadb],
    };
    let mut summaries = Vec::new();
    for store in stores {
        summaries.push(run_store(a, &bin_dir, *store)?);
    }
    if summaries.len() > 1 {
        side_by_side(&summaries);
    }
    Ok(())
}

/// The summaries as one table, a column per store.
fn side_by_side(summaries: &[Summary]) {
    println!();
    println!(
        "side by side ({} jobs, the same generated load):",
        a_jobs(summaries)
    );
    let mut head = format!("  {:<58}", "");
    for s in summaries {
        head.push_str(&format!(" {:>16}", s.store));
    }
    println!("{head}");
    let row = |name: &str, f: &dyn Fn(&Summary) -> String| {
        let mut line = format!("  {name:<58}");
        for s in summaries {
            line.push_str(&format!(" {:>16}", f(s)));
        }
        println!("{line}");
    };
    row("ingest, records/s (durable, through HTTP)", &|s| {
        format!(
            "{:.0}",
            s.records as f64 / s.ingest_s.max(f64::MIN_POSITIVE)
        )
    });
    row("store on disk, MiB", &|s| {
        format!("{:.0}", s.bytes as f64 / 1_048_576.0)
    });
    row("bytes per record", &|s| {
        format!("{:.0}", s.bytes as f64 / s.records.max(1) as f64)
    });
    if let Some(first) = summaries.first() {
        for (i, (name, _, _)) in first.reports.iter().enumerate() {
            row(&format!("{name}, median / p90 ms"), &|s| {
                s.reports
                    .get(i)
                    .map_or("-".into(), |(_, m, p)| format!("{m:.1} / {p:.1}"))
            });
        }
    }
}

fn a_jobs(summaries: &[Summary]) -> usize {
    summaries.iter().map(|s| s.records).max().unwrap_or(0)
}

/// One store: acctd on it, ingest, reports; returns its figures.
fn run_store(a: &Args, bin_dir: &std::path::Path, store: StoreChoice) -> Result<Summary, String> {
    let base = a.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("acct-bench")
        .tempdir_in(&base)
        .map_err(|e| format!("{}: {e}", base.display()))?;
    let name: &'static str = if store == StoreChoice::Mariadb {
        "MariaDB"
    } else {
        "sled"
    };
    println!();
    println!("=== store: {name}");
    // sled: the directory; MariaDB: the server, the database's directory in its datadir
    let (db_args, size_dir, _server) = if store == StoreChoice::Mariadb {
        // a buffer pool that holds the benchmark's tables (1.4 GiB at 1M jobs), as on a
        // database server sized for its data
        let server = sgpu_accounting::mariadb_server::MariaDb::create_sized(
            &tmp.path().join("mariadb"),
            None,
            true,
            a.mariadb_buffer_pool_mib,
        )
        .map_err(|e| format!("starting a MariaDB for the benchmark: {e}"))?;
        let password = format!("bench-{}", std::process::id());
        let url = server
            .create_database("sgpu_bench", "sgpu_bench", &password)
            .map_err(|e| e.to_string())?;
        let pw_file = tmp.path().join("db-password");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&pw_file)
                .map_err(|e| format!("{}: {e}", pw_file.display()))?;
            writeln!(f, "{password}").map_err(|e| format!("{}: {e}", pw_file.display()))?;
        }
        let args: Vec<std::ffi::OsString> = vec![
            "--db".into(),
            url.into(),
            "--db-password-file".into(),
            pw_file.into(),
        ];
        let size_dir = server.dir().join("data").join("sgpu_bench");
        (args, size_dir, Some(server))
    } else {
        let db =
            a.db.clone()
                .unwrap_or_else(|| tmp.path().join("acctd.sled"));
        (vec!["--db".into(), db.clone().into()], db, None)
    };
    let acctd_toml = tmp.path().join("acctd.toml");
    std::fs::write(&acctd_toml, ACCTD_TOML)
        .map_err(|e| format!("{}: {e}", acctd_toml.display()))?;
    let t_open = Instant::now();
    let acctd = start_acctd(&bin_dir.join("sgpu-acctd"), &db_args, &acctd_toml)?;
    println!(
        "sgpu-acctd listening after {:.1} s (opening the database)",
        t_open.elapsed().as_secs_f64()
    );
    let client = Client::new(&acctd.url, ClientAuth::None, Duration::from_secs(600))
        .map_err(|e| e.to_string())?;
    println!(
        "acct-bench: {} jobs ({} record(s) each), batches of {} records, {} client(s), seed {}",
        a.jobs,
        if a.usage { 2 } else { 1 },
        a.batch,
        a.clients,
        a.seed
    );
    let (records, ingest_s) = if a.no_ingest {
        (0, f64::NAN)
    } else {
        ingest(a, &client, tmp.path(), name)?
    };
    let bytes = du(&size_dir);
    println!(
        "database: {:.0} MiB on disk ({:.0} bytes/record){}",
        bytes as f64 / 1_048_576.0,
        bytes as f64 / records.max(1) as f64,
        if store == StoreChoice::Mariadb {
            " (the database's InnoDB files; the server's redo log and system tablespace not counted)"
        } else {
            ""
        }
    );
    if store != StoreChoice::Mariadb {
        // where sled's bytes are: the record log (the records' JSON) and the rest (sled)
        let log = du(&size_dir.join("records"));
        println!(
            "  record log {:.0} bytes/record, sled {:.0} bytes/record",
            log as f64 / records.max(1) as f64,
            bytes.saturating_sub(log) as f64 / records.max(1) as f64
        );
    }
    // sgpu refuses a config anyone may write (/dev/null included): an empty one of our own
    let config = tmp.path().join("sgpu.toml");
    std::fs::write(&config, "").map_err(|e| format!("{}: {e}", config.display()))?;
    let reports = reports(a, &client, &acctd.url, &config)?;
    drop(acctd);
    Ok(Summary {
        store: name,
        records,
        ingest_s,
        bytes,
        reports,
    })
}

/// Sends the jobs; returns the records sent and the seconds it took. `dir`: where the
/// pre-generated batches go.
fn ingest(
    a: &Args,
    client: &Client,
    dir: &std::path::Path,
    store: &str,
) -> Result<(usize, f64), String> {
    let per_batch_jobs = if a.usage {
        (a.batch / 2).max(1)
    } else {
        a.batch.max(1)
    };
    // The batches are generated before the clock starts, into a file per client (records
    // reach a head node over the network: making them costs it nothing); during the timed
    // part each client reads its next batch from that file and posts it.
    let clients = a.clients.max(1);
    let t_gen = Instant::now();
    let mut plans = Vec::new();
    for c in 0..clients {
        let path = dir.join(format!("batches-{c}.json"));
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?,
        );
        let mut batches = Vec::new();
        let mut first = 1 + c * per_batch_jobs;
        while first <= a.jobs {
            let n = per_batch_jobs.min(a.jobs - first + 1);
            let (body, records) = synth::batch(a.seed, first, n, a.jobs, a.usage);
            file.write_all(&body)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            batches.push((body.len(), records));
            first = first.saturating_add(per_batch_jobs * clients);
        }
        file.flush()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        plans.push((path, batches));
    }
    println!(
        "generated the batches in {:.1} s (not timed)",
        t_gen.elapsed().as_secs_f64()
    );
    let t0 = Instant::now();
    let mut handles = Vec::new();
    let (done_tx, done_rx) = mpsc::channel::<Result<(usize, f64), String>>();
    for (path, batches) in plans {
        let client = client.clone();
        let done = done_tx.clone();
        handles.push(std::thread::spawn(move || {
            let send = || -> Result<(usize, f64), String> {
                let mut file = std::io::BufReader::new(
                    std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?,
                );
                let (mut sent, mut post_s) = (0usize, 0.0);
                for (len, n) in batches {
                    let mut body = vec![0u8; len];
                    std::io::Read::read_exact(&mut file, &mut body)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    let t = Instant::now();
                    let r = client
                        .post_records(&body)
                        .map_err(|e| format!("posting a batch: {e}"))?;
                    if r.accepted + r.duplicate != n {
                        return Err(format!(
                            "a batch of {n}: {} accepted, {} rejected (first: {:?})",
                            r.accepted,
                            r.rejected,
                            r.results
                                .iter()
                                .find(|x| x.status == sgpu_acct_client::RecordStatus::Rejected)
                        ));
                    }
                    post_s += t.elapsed().as_secs_f64();
                    sent += n;
                }
                let _ = std::fs::remove_file(&path);
                Ok((sent, post_s))
            };
            let _ = done.send(send());
        }));
    }
    drop(done_tx);
    let mut records = 0usize;
    for r in done_rx {
        records += r?.0;
    }
    for h in handles {
        let _ = h.join();
    }
    let ingest_s = t0.elapsed().as_secs_f64();
    let rate = records as f64 / ingest_s;
    let durable = if store == "sled" {
        "the record log and sled are synced"
    } else {
        "its MariaDB transaction is committed"
    };
    println!(
        "ingest ({store}): {records} records in {ingest_s:.1} s = {rate:.0} records/s \
         (durable: each batch acknowledged after {durable}; senders on the same cores)  \
         target >= 50000: {}",
        if rate >= 50_000.0 { "met" } else { "MISSED" }
    );
    Ok((records, ingest_s))
}

/// Times the reports; returns (short name, median, p90) of each.
fn reports(
    a: &Args,
    client: &Client,
    url: &str,
    config: &std::path::Path,
) -> Result<Vec<(&'static str, f64, f64)>, String> {
    // Reports.
    let month = "start=2025-06-01&end=2025-07-01";
    let cases = [
        (
            "monthly per-account (sgpu report -S 2025-06-01 -E 2025-07-01 --group-by account)",
            format!("/v1/report?{month}&group_by=account"),
        ),
        (
            "monthly per-account, also per partition and GPU model",
            format!("/v1/report?{month}&group_by=account,partition,gpu"),
        ),
        (
            "monthly per-user",
            format!("/v1/report?{month}&group_by=user"),
        ),
        (
            "month with mid-day edges (2025-06-01T12:00 to 2025-07-01T12:00)",
            format!(
                "/v1/report?start={}&end={}&group_by=account",
                1_748_779_200u64, 1_751_371_200u64
            ),
        ),
        (
            "year per account by month",
            "/v1/report?start=2025-01-01&end=2026-01-01&group_by=account,month".to_string(),
        ),
        (
            "monthly per-account in Europe/Berlin (local midnights: two cut UTC days)",
            format!("/v1/report?{month}&group_by=account&tz=Europe/Berlin"),
        ),
        (
            "year per account by month in Europe/Berlin",
            "/v1/report?start=2025-01-01&end=2026-01-01&group_by=account,month\
             &tz=Europe/Berlin"
                .to_string(),
        ),
    ];
    println!("report latency over HTTP, {} reps (ms):", a.reps);
    println!(
        "  {:<80} {:>8} {:>8} {:>8}",
        "report", "median", "p90", "max"
    );
    const SHORT: [&str; 7] = [
        "monthly per-account",
        "same, per partition and GPU model",
        "monthly per-user",
        "month with mid-day edges",
        "year per account by month",
        "monthly per-account, Europe/Berlin",
        "year per account by month, Europe/Berlin",
    ];
    let mut monthly_median = f64::NAN;
    let mut out = Vec::new();
    for (i, (name, path)) in cases.iter().enumerate() {
        let (t, last) = time_get(client, path, a.reps)?;
        if i == 0 {
            monthly_median = pct(&t, 50.0);
        }
        out.push((
            SHORT.get(i).copied().unwrap_or("?"),
            pct(&t, 50.0),
            pct(&t, 90.0),
        ));
        println!(
            "  {name:<80} {:>8.1} {:>8.1} {:>8.1}  ({} rows)",
            pct(&t, 50.0),
            pct(&t, 90.0),
            t.last().copied().unwrap_or(f64::NAN),
            last.get("rows")
                .and_then(|r| r.as_array())
                .map_or(0, Vec::len)
        );
        if i == 4 {
            // The year holds every job that ended in it (jobs end by 2026-01-03 at most).
            let jobs = sum_rows(&last, "jobs");
            if jobs > u64::from(a.jobs) || jobs + u64::from(a.jobs) / 50 < u64::from(a.jobs) {
                return Err(format!("year report counts {jobs} jobs of {} sent", a.jobs));
            }
        }
    }
    println!(
        "monthly per-account report median {monthly_median:.1} ms  target < 200 ms: {}",
        if monthly_median < 200.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    if let Some(sgpu) = &a.sgpu {
        let mut t = Vec::new();
        for _ in 0..a.reps.clamp(1, 10) {
            let s = Instant::now();
            let out = Command::new(sgpu)
                .args([
                    "--acctd",
                    url,
                    "report",
                    "-S",
                    "2025-06-01",
                    "-E",
                    "2025-07-01",
                    "--group-by",
                    "account",
                    "-P",
                ])
                .env("SGPU_ACCTD_AUTH", "none")
                .env("SGPU_CONFIG", config)
                .output()
                .map_err(|e| format!("{}: {e}", sgpu.display()))?;
            t.push(s.elapsed().as_secs_f64() * 1000.0);
            if !out.status.success() {
                return Err(format!(
                    "sgpu report failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        t.sort_by(f64::total_cmp);
        println!(
            "sgpu report (whole command, monthly per-account): median {:.1} ms, max {:.1} ms",
            pct(&t, 50.0),
            t.last().copied().unwrap_or(f64::NAN)
        );
    }
    let _ = std::io::stdout().flush();
    Ok(out)
}

fn main() -> ExitCode {
    let a = Args::parse();
    match run(&a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("acct-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
