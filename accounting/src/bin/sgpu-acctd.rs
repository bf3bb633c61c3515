//! `sgpu-acctd`: the accounting service (see the `sgpu_accounting` crate).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use sgpu_accounting::auth::{Authenticator, NoAuthentication};
use sgpu_accounting::day::day_of;
use sgpu_accounting::http::{AppState, DEFAULT_MAX_BODY_BYTES, router};
use sgpu_accounting::sled_store::SledStore;
use sgpu_accounting::store::Store;

/// sgpu accounting service: stores usage records, keeps GPU-hour and energy rollups.
#[derive(Debug, Parser)]
#[command(name = "sgpu-acctd", version)]
struct Args {
    /// Address to listen on (loopback only until MUNGE authentication exists).
    #[arg(long, default_value = "127.0.0.1:6830")]
    listen: SocketAddr,
    /// Database directory.
    #[arg(long, default_value = "/var/lib/sgpu/acctd.sled")]
    db: PathBuf,
    /// Largest accepted request body, bytes; larger gets 413.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Keep per-job records this many days after they end (default: forever).
    #[arg(long)]
    retention_days: Option<u32>,
    /// Keep rollup rows this many days (default: forever).
    #[arg(long)]
    rollup_retention_days: Option<u32>,
    /// How often retention runs, seconds.
    #[arg(long, default_value_t = 3600)]
    purge_interval_s: u64,
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
    let auth: Arc<dyn Authenticator> = Arc::new(NoAuthentication);
    if !auth.is_real() && !args.listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {}: MUNGE authentication is not implemented yet, so acctd \
             listens on loopback addresses only",
            args.listen
        );
    }
    let store = Arc::new(
        SledStore::open(&args.db)
            .with_context(|| format!("opening the store at {}", args.db.display()))?,
    );
    if args.retention_days.is_some() || args.rollup_retention_days.is_some() {
        let store = store.clone();
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
    let state = AppState {
        store: store.clone(),
        auth,
        policy: Arc::new(sgpu_accounting::auth::Policy::default()),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let local = listener.local_addr().context("reading the bound address")?;
    // Tests and scripts read this line to find a port chosen by the OS (`--listen ...:0`).
    println!("sgpu-acctd listening on {local}");
    tracing::warn!("no authentication (MUNGE not implemented yet): loopback only");
    axum::serve(listener, router(state, args.max_body_bytes))
        .with_graceful_shutdown(shutdown())
        .await
        .context("serving HTTP")?;
    store.flush().context("flushing the store at shutdown")?;
    Ok(())
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
