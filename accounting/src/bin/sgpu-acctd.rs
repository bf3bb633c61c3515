//! `sgpu-acctd`: the accounting service (see the `sgpu_accounting` crate).

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use sgpu_accounting::admin_comment::{self, AdminCommentConfig, NotifyingStore};
use sgpu_accounting::auth::{
    Authenticator, MungeAuthenticator, NoAuthentication, Policy, group_id, user_id,
};
use sgpu_accounting::coordinators;
use sgpu_accounting::day::day_of;
use sgpu_accounting::http::{AppState, DEFAULT_MAX_BODY_BYTES, Limits, router_with};
use sgpu_accounting::migrate;
use sgpu_accounting::mysql_store::MysqlStore;
use sgpu_accounting::serve::{ServeLimits, serve};
use sgpu_accounting::site::{DEFAULT_CONFIG, Site, SiteConfig};
use sgpu_accounting::sled_store::SledStore;
use sgpu_accounting::store::Store;

/// jemalloc, as sled recommends: with glibc's malloc a third of ingest CPU went to the
/// allocator.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How callers are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AuthMode {
    /// Every request carries a MUNGE credential made for it (`Authorization: MUNGE ...`).
    Munge,
    /// No authentication: everyone may do everything; loopback addresses only.
    None,
}

/// sgpu accounting service: stores usage records, keeps GPU-hour and energy rollups.
///
/// Who may do what (with --auth munge): root and the --ingest-uid users (the SlurmUser) send
/// records; root, --admin-uid users and members of --admin-group groups read everything;
/// any other user reads only their own jobs and totals.
#[derive(Debug, Parser)]
#[command(name = "sgpu-acctd", version)]
struct Args {
    /// Address to listen on (with --auth none: loopback addresses only).
    #[arg(long, default_value = "127.0.0.1:6830")]
    listen: SocketAddr,
    /// Authentication: `munge` (every request carries a MUNGE credential) or `none`
    /// (loopback only; every caller may do everything).
    #[arg(long, value_enum, default_value_t = AuthMode::Munge)]
    auth: AuthMode,
    /// munged's socket (default: libmunge's, /run/munge/munge.socket.2).
    #[arg(long)]
    munge_socket: Option<PathBuf>,
    /// A user (uid or name) allowed to send records besides root: the SlurmUser.
    /// Repeatable.
    #[arg(long = "ingest-uid", value_name = "UID|NAME")]
    ingest_uids: Vec<String>,
    /// A user (uid or name) who reads everything and may run admin commands. Repeatable.
    #[arg(long = "admin-uid", value_name = "UID|NAME")]
    admin_uids: Vec<String>,
    /// A group (gid or name) whose members (primary or supplementary) are admins.
    /// Repeatable.
    #[arg(long = "admin-group", value_name = "NAME|GID")]
    admin_groups: Vec<String>,
    /// The store: a directory (the embedded sled store), or
    /// `mysql://USER@HOST:PORT/DATABASE` (MariaDB/MySQL; options such as
    /// `?socket=/run/mysqld/mysqld.sock` after it; the password from --db-password-file,
    /// never in the URL). acctd creates and migrates the database's tables itself.
    #[arg(
        long,
        default_value = "/var/lib/sgpu/acctd.sled",
        value_name = "DIR|URL"
    )]
    db: String,
    /// The MariaDB/MySQL user's password: the file's first line. The file must be a regular
    /// file owned by root (or acctd's user) that no group or other user may read.
    #[arg(long, value_name = "FILE")]
    db_password_file: Option<PathBuf>,
    /// Where acctd keeps its own small files (the AdminComment queue) when the store is
    /// MariaDB/MySQL; with the sled store they live in its directory.
    #[arg(long, default_value = "/var/lib/sgpu", value_name = "DIR")]
    state_dir: PathBuf,
    /// Largest accepted request body, bytes; larger gets 413.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Time a client has to send a request's body, seconds; slower gets 408.
    #[arg(long, default_value_t = 30)]
    body_timeout_s: u64,
    /// Time a client has to send a request's headers, seconds; slower is disconnected.
    #[arg(long, default_value_t = 10)]
    header_timeout_s: u64,
    /// Connections served at once; more are answered 503 and closed.
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// Keep per-job records this many days after they end (default: forever).
    #[arg(long)]
    retention_days: Option<u32>,
    /// Keep rollup rows this many days (default: forever).
    #[arg(long)]
    rollup_retention_days: Option<u32>,
    /// How often retention runs, seconds.
    #[arg(long, default_value_t = 3600)]
    purge_interval_s: u64,
    /// At job end, write the job's GPU summary into its AdminComment in slurmdbd
    /// (`sacctmgr -i modify job`; acctd must be a Slurm operator: root or the SlurmUser).
    #[arg(long)]
    admin_comment: bool,
    /// The prefix that marks sgpu's AdminComment (comments without it are left alone).
    #[arg(long, default_value = sgpu_accounting::admin_comment::DEFAULT_PREFIX)]
    admin_comment_prefix: String,
    /// Seconds without a new record of an ended job before its AdminComment is written.
    #[arg(long, default_value_t = 30)]
    admin_comment_delay_s: u64,
    /// Directory of Slurm's `sacct` and `sacctmgr` (default: found on PATH).
    #[arg(long, value_name = "DIR")]
    slurm_bin: Option<PathBuf>,
    /// acctd's configuration: the site's time zone, prices with their dates, account
    /// coordinators (owned by root, not group/world-writable). Default:
    /// /etc/sgpu/acctd.toml when it exists, else the system's time zone, no prices and no
    /// coordinators.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Instead of serving: `migrate` (move a sled store's history into MariaDB/MySQL).
    #[command(subcommand)]
    command: Option<Command>,
}

/// What to do instead of serving.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Moves a sled store's whole history (records, conflicts, node events) into a
    /// MariaDB/MySQL database, rebuilding rollups there as ingest does, then checks that
    /// both hold the same and prints the totals. Stop acctd first. Run it again after an
    /// interruption: it resumes, nothing counts twice. No sled record changes (an older sled
    /// format is converted on open, as acctd does).
    Migrate(MigrateArgs),
}

/// `sgpu-acctd migrate`'s arguments.
#[derive(Debug, clap::Args)]
struct MigrateArgs {
    /// The sled store's directory (what acctd's --db named).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/sgpu/acctd.sled")]
    from: PathBuf,
    /// The MariaDB/MySQL database: `mysql://USER@HOST:PORT/DATABASE` (as acctd's --db).
    #[arg(long, value_name = "URL")]
    db: String,
    /// The database user's password: the file's first line (as acctd's --db-password-file).
    #[arg(long, value_name = "FILE")]
    db_password_file: Option<PathBuf>,
    /// The MariaDB acctd's --state-dir: jobs still waiting for their AdminComment are added
    /// to its queue there.
    #[arg(long, default_value = "/var/lib/sgpu", value_name = "DIR")]
    state_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SGPU_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Some(Command::Migrate(m)) = args.command {
        return tokio::task::spawn_blocking(move || run_migrate(&m))
            .await
            .context("the move")?;
    }
    let policy = policy(&args)?;
    let auth = authenticator(&args)?;
    let (store, sled) = open_store(&args).await?;
    if args.retention_days.is_some() || args.rollup_retention_days.is_some() {
        spawn_retention(&args, store.clone());
    }
    let served = served_store(&args, &store, sled.is_some())?;
    let site = Arc::new(site_config(&args)?);
    if site.coordinators_from_slurm {
        tokio::spawn(coordinators::refresh_slurm(
            site.site.coordinators.clone(),
            args.slurm_bin.clone(),
            Duration::from_secs(site.refresh_s),
        ));
    }
    let state = AppState {
        store: served,
        auth,
        policy: Arc::new(policy),
        site: site.site.clone(),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let local = listener.local_addr().context("reading the bound address")?;
    // Tests and scripts read this line to find a port chosen by the OS (`--listen ...:0`).
    println!("sgpu-acctd listening on {local}");
    match args.auth {
        AuthMode::None => tracing::warn!("--auth none: no authentication, loopback only"),
        AuthMode::Munge => tracing::info!("authenticating requests with MUNGE"),
    }
    let app = router_with(
        state,
        Limits {
            max_body_bytes: args.max_body_bytes,
            body_timeout: Duration::from_secs(args.body_timeout_s.max(1)),
        },
    );
    let limits = ServeLimits {
        max_connections: args.max_connections.max(1),
        header_timeout: Duration::from_secs(args.header_timeout_s.max(1)),
        ..ServeLimits::default()
    };
    serve(listener, app, limits, shutdown())
        .await
        .context("serving HTTP")?;
    if let Some(sled) = sled {
        sled.flush().context("flushing the store at shutdown")?;
    }
    Ok(())
}

/// `--auth`'s authenticator (MUNGE: munged checked now rather than every request answered
/// 503); without authentication only a loopback `--listen` is allowed.
fn authenticator(args: &Args) -> anyhow::Result<Arc<dyn Authenticator>> {
    let auth: Arc<dyn Authenticator> = match args.auth {
        AuthMode::None => Arc::new(NoAuthentication),
        AuthMode::Munge => {
            // Fail now rather than answer every request 503.
            let opts = sgpu_munge::Options::with_socket(args.munge_socket.as_deref());
            sgpu_munge::encode(b"sgpu-acctd start", &opts)
                .context("checking munged at startup (acctd --auth munge needs it)")?;
            Arc::new(MungeAuthenticator::new(args.munge_socket.clone()))
        }
    };
    if !auth.is_real() && !args.listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {} with --auth none: without authentication acctd listens \
             on loopback addresses only; use --auth munge",
            args.listen
        );
    }
    Ok(auth)
}

/// Runs retention (`--retention-days`, `--rollup-retention-days`) every
/// `--purge-interval-s`, on a blocking thread, logging what it removed.
fn spawn_retention(args: &Args, store: Arc<dyn Store>) {
    let (rec, roll) = (args.retention_days, args.rollup_retention_days);
    let every = Duration::from_secs(args.purge_interval_s.max(1));
    tokio::spawn(async move {
        loop {
            let today = day_of(sgpu_spool::now_ms());
            let s = store.clone();
            let res = tokio::task::spawn_blocking(move || {
                s.purge(
                    rec.map(|d| today.saturating_sub(d)),
                    roll.map(|d| today.saturating_sub(d)),
                )
            })
            .await;
            match res {
                Ok(Ok(stats)) => tracing::info!(
                    records = stats.records,
                    rollups = stats.rollups,
                    "retention purge"
                ),
                Ok(Err(e)) => tracing::error!("retention purge failed: {e}"),
                Err(e) => tracing::error!("retention purge panicked: {e}"),
            }
            tokio::time::sleep(every).await;
        }
    });
}

/// The store the HTTP API serves: `store`, or with `--admin-comment` one that tells the
/// AdminComment writer (started here; its queue beside a sled store, `is_sled`, else in
/// `--state-dir`) of every job end.
fn served_store(
    args: &Args,
    store: &Arc<dyn Store>,
    is_sled: bool,
) -> anyhow::Result<Arc<dyn Store>> {
    if !args.admin_comment {
        return Ok(store.clone());
    }
    if args.admin_comment_prefix.is_empty()
        || !args
            .admin_comment_prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.:".contains(&b))
    {
        bail!(
            "--admin-comment-prefix {:?}: use lower-case letters, digits and - _ . : only \
             (sacctmgr changes quotes, before Slurm 23.02 it lowers capitals, and \
             slurmdbd quotes the value in SQL)",
            args.admin_comment_prefix
        );
    }
    let mut cfg = AdminCommentConfig::new(&args.admin_comment_prefix);
    cfg.slurm_bin = args.slurm_bin.clone();
    cfg.delay = Duration::from_secs(args.admin_comment_delay_s);
    cfg.due_file = Some(if is_sled {
        PathBuf::from(&args.db).join(migrate::SLED_DUE_FILE)
    } else {
        args.state_dir.join(migrate::STATE_DUE_FILE)
    });
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let inner = store.clone();
    tokio::spawn(admin_comment::writer(inner.clone(), cfg, rx));
    tracing::info!(
        prefix = %args.admin_comment_prefix,
        "writing GPU summaries into jobs' AdminComment"
    );
    Ok(Arc::new(NotifyingStore::new(inner, tx)))
}

/// acctd.toml read into what acctd serves, and whether to read Slurm's coordinators.
struct LoadedSite {
    site: Arc<Site>,
    coordinators_from_slurm: bool,
    refresh_s: u64,
}

/// Reads `--config` (or /etc/sgpu/acctd.toml when it exists), logs what it says.
fn site_config(args: &Args) -> anyhow::Result<LoadedSite> {
    let default = PathBuf::from(DEFAULT_CONFIG);
    let path = match &args.config {
        Some(p) => Some(p.clone()),
        None => default.exists().then_some(default),
    };
    let cfg = match &path {
        Some(p) => SiteConfig::load(p)?,
        None => SiteConfig::system_default().unwrap_or_else(|e| {
            tracing::warn!("{e}; reports use UTC (set time_zone in {DEFAULT_CONFIG})");
            SiteConfig::default()
        }),
    };
    tracing::info!(
        config = %path.as_deref().map_or("(none)".into(), |p| p.display().to_string()),
        time_zone = cfg.zone.name(),
        price_periods = cfg.prices.as_ref().map_or(0, |p| p.periods.len()),
        configured_coordinators = cfg.coordinators.accounts.len(),
        slurm_coordinators = cfg.coordinators.slurm,
        "site settings"
    );
    Ok(LoadedSite {
        site: Arc::new(Site::new(&cfg)),
        coordinators_from_slurm: cfg.coordinators.slurm,
        refresh_s: cfg.coordinators.refresh_s,
    })
}

/// Opens the store `--db` names: a MariaDB/MySQL URL, else a sled directory (returned a
/// second time, as sled, for the flush at shutdown).
async fn open_store(args: &Args) -> anyhow::Result<(Arc<dyn Store>, Option<Arc<SledStore>>)> {
    if let Some(url) = mysql_url(&args.db) {
        let password = match &args.db_password_file {
            Some(p) => Some(read_password_file(p)?),
            None => None,
        };
        // the store runs its driver on a runtime of its own, which must not start inside
        // this one
        let store =
            tokio::task::spawn_blocking(move || MysqlStore::connect(&url, password.as_deref()))
                .await
                .context("connecting to the database")?
                .context("opening the MariaDB/MySQL store")?;
        tracing::info!(db = %store.target(), "store: MariaDB/MySQL");
        return Ok((Arc::new(store), None));
    }
    if args.db_password_file.is_some() {
        bail!(
            "--db-password-file is for a MariaDB/MySQL store (--db mysql://...); --db {} is a \
             sled directory",
            args.db
        );
    }
    let sled = Arc::new(
        SledStore::open(std::path::Path::new(&args.db))
            .with_context(|| format!("opening the store at {}", args.db))?,
    );
    Ok((sled.clone(), Some(sled)))
}

/// `db` as the driver's URL when it names MariaDB/MySQL (`mysql://`, `mariadb://`).
fn mysql_url(db: &str) -> Option<String> {
    match db.strip_prefix("mariadb://") {
        Some(rest) => Some(format!("mysql://{rest}")),
        None => db.starts_with("mysql://").then(|| db.to_string()),
    }
}

/// `sgpu-acctd migrate`: checks the sled directory, opens the database, then the sled store
/// (refused while an acctd holds it), moves everything ([`sgpu_accounting::migrate`]) and
/// prints what both hold.
fn run_migrate(m: &MigrateArgs) -> anyhow::Result<()> {
    let Some(url) = mysql_url(&m.db) else {
        bail!(
            "--db {}: the move's target is a MariaDB/MySQL database, \
             mysql://USER@HOST:PORT/DATABASE",
            m.db
        );
    };
    let password = match &m.db_password_file {
        Some(p) => Some(read_password_file(p)?),
        None => None,
    };
    migrate::check_source(&m.from)?;
    let db = MysqlStore::connect(&url, password.as_deref()).with_context(|| {
        "opening the MariaDB/MySQL database: check that the server runs and is reachable \
         at that address, that the database and user exist with rights on it, and the \
         password in --db-password-file"
    })?;
    let sled = migrate::open_source(&m.from)?;
    eprintln!("moving {} into {}", m.from.display(), db.target());
    let done = migrate::migrate(&sled, &db, db.target(), &mut |step| eprintln!("{step}"))?;
    println!(
        "moved {} into {}: both hold the same",
        m.from.display(),
        db.target()
    );
    for line in done.tally.lines() {
        println!("  {line}");
    }
    println!(
        "written now: {} records ({} were there already), {} conflicts, {} node events",
        done.moved.records, done.moved.already, done.moved.conflicts, done.moved.events
    );
    let due = migrate::move_due_jobs(&m.from, &m.state_dir)?;
    if due > 0 {
        println!(
            "{due} jobs waiting for their AdminComment added to {}",
            m.state_dir.join(migrate::STATE_DUE_FILE).display()
        );
    }
    if let Some((first, last)) = done.moved.rollup_days {
        println!(
            "rollup rows taken as they are (retention had removed records or rollups): {} \
             of {} to {}",
            done.moved.rollup_rows,
            sgpu_accounting::day::format_day(first),
            sgpu_accounting::day::format_day(last)
        );
    }
    Ok(())
}

/// The database password: the first line of `path`, a regular file (not a link) owned by
/// root or this process's user, with no group or other permission bits.
fn read_password_file(path: &std::path::Path) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("--db-password-file {}", path.display()))?;
    if !meta.file_type().is_file() {
        bail!(
            "--db-password-file {}: not a regular file (a link or something else); name the \
             file itself",
            path.display()
        );
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        bail!(
            "--db-password-file {}: owned by uid {}, not root: `chown root {}`",
            path.display(),
            meta.uid(),
            path.display()
        );
    }
    if meta.mode() & 0o077 != 0 {
        bail!(
            "--db-password-file {}: mode {:o} lets others read the password: `chmod 600 {}`",
            path.display(),
            meta.mode() & 0o7777,
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--db-password-file {}", path.display()))?;
    let password = text.lines().next().unwrap_or("").to_string();
    if password.is_empty() {
        bail!(
            "--db-password-file {}: the first line is empty; write the password there",
            path.display()
        );
    }
    Ok(password)
}

/// The authorisation policy from the command line, names resolved to ids.
fn policy(args: &Args) -> anyhow::Result<Policy> {
    let users = |flag: &str, names: &[String]| -> anyhow::Result<Vec<u32>> {
        names
            .iter()
            .map(|n| {
                user_id(n).with_context(|| {
                    format!("{flag} {n}: no such user on this host; give a uid or a user name")
                })
            })
            .collect()
    };
    let groups = args
        .admin_groups
        .iter()
        .map(|n| {
            group_id(n).with_context(|| {
                format!("--admin-group {n}: no such group on this host; give a gid or a group name")
            })
        })
        .collect::<anyhow::Result<Vec<u32>>>()?;
    Ok(Policy {
        ingest_uids: users("--ingest-uid", &args.ingest_uids)?,
        admin_uids: users("--admin-uid", &args.admin_uids)?,
        admin_gids: groups,
    })
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}
