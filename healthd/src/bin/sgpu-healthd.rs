//! `sgpu-healthd [--config PATH] [--once]`: the per-node daemon (see `sgpu_healthd::daemon`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sgpu_healthd::daemon::{self, Daemon, Trigger};
use sgpu_nodelib::config::Config;

/// sgpu's node daemon: periodic GPU checks, XID watch, drain and resume through slurmctld.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// sgpu.toml to read (default: $SGPU_CONFIG, else /etc/sgpu/sgpu.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run the full checks once, act on them, print the verdict and exit (0 healthy, 1 warn,
    /// 2 drain-worthy).
    #[arg(long)]
    once: bool,
}

fn main() -> ExitCode {
    // the idle policy's appending child, run as a job's user (sgpu_healthd::idle_act)
    let raw: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let Some((path, text)) = sgpu_healthd::idle_act::append_args(&raw) {
        return match sgpu_healthd::idle_act::append_as_user(&path, &text) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        };
    }
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SGPU_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(3)
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = Config::discover(args.config.as_deref()).context("configuration")?;
    let node = daemon::node_name(&config)?;
    let mut d = Daemon::new(config.clone(), node)?;
    if args.once {
        let report = d.run_once(Trigger::Periodic);
        println!("{}: {:?}", report.verdict, report.decision);
        return Ok(ExitCode::from(report.verdict.exit_code() as u8));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let result = rt.block_on(daemon::run(d, &config));
    // a run stuck in a hung driver must not keep the process alive
    rt.shutdown_timeout(Duration::from_millis(500));
    result?;
    Ok(ExitCode::SUCCESS)
}
