//! `sgpu-healthd [--config PATH] [--once]`: the per-node daemon (see `sgpu_healthd::daemon`).
//! `sgpu-healthd --run-active NAME [--config PATH]` runs one active check here, writes its
//! result and exits (what healthd's Slurm job for the check runs; see
//! `sgpu_healthd::active`).

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
    #[arg(long, conflicts_with = "run_active")]
    once: bool,
    /// Run the active check NAME here (inside sgpu's Slurm job), write its result to
    /// <state_dir>/active/NAME.json and exit: 0 pass, 1 warn, 2 fail or timeout, 3 error.
    #[arg(long, value_name = "NAME")]
    run_active: Option<String>,
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
    if let Some(name) = &args.run_active {
        return run_active(&config, &node, name);
    }
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

/// `--run-active NAME`: the check under its deadline, its result kept for healthd.
fn run_active(config: &Config, node: &str, name: &str) -> anyhow::Result<ExitCode> {
    let Some(check) = config.active.check(name) else {
        anyhow::bail!(
            "no active check {name:?} in {} (listed: {})",
            config.source.as_deref().map_or_else(
                || "the built-in configuration".into(),
                |p| p.display().to_string()
            ),
            config
                .active
                .checks
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    // slurmd sets these in the batch job's environment; the job is root's own (healthd's)
    let job = std::env::var("SLURM_JOB_ID")
        .ok()
        .and_then(|j| j.parse::<u64>().ok());
    let partition = std::env::var("SLURM_JOB_PARTITION").unwrap_or_default();
    let result = sgpu_nodelib::active::run(check, node, job.map(|j| (j, partition.as_str())));
    sgpu_nodelib::active::save_result(&config.state_dir, &result)
        .context("keeping the active check's result")?;
    // every run is a line of the node's history; without it the result still stands
    if let Err(e) = sgpu_nodelib::active::record_run(&config.spool_dir, &result, "healthd") {
        eprintln!("active check {name}: not in the node's history: {e}");
    }
    println!(
        "active check {name} on {node}: {} in {:.1} s: {}",
        result.outcome.as_str(),
        result.duration().as_secs_f64(),
        result.message
    );
    Ok(ExitCode::from(result.outcome.exit_code() as u8))
}
