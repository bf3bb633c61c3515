//! The `sgpu` command: the admin and user front end of the suite.
//!
//! Subcommands (`drain`, `resume`, `status`, `check`, `report`, `conf check`) are thin layers
//! over the library crates: hostlists and configuration come from `sgpu-slurm-conf`, checks
//! from `sgpu-healthd`, reports from `sgpu-accounting`.

pub mod admin;
pub mod check;
pub mod conf;
pub mod report;
pub mod seff;
pub mod settings;
pub mod timespec;

use clap::{Parser, Subcommand};

/// Exit code when sgpu itself could not do its job (bad config, bad usage); distinct from
/// `check`'s 0 healthy / 1 warn / 2 drain.
pub const EXIT_SGPU_ERROR: i32 = 3;

/// Command line of `sgpu`.
#[derive(Debug, Parser)]
#[command(name = "sgpu", version, about = "Slurm GPU health and accounting")]
pub struct Cli {
    /// Configuration file (default: $SGPU_CONFIG, else /etc/sgpu/sgpu.toml).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<std::path::PathBuf>,
    /// sgpu-acctd's URL (default: [accounting] url in sgpu.toml, else $SGPU_ACCTD_URL, else
    /// http://127.0.0.1:6830).
    #[arg(long, global = true, value_name = "URL")]
    pub acctd: Option<String>,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the health checks on this node, or on a saved `nvidia-smi -q -x` output with
    /// `--capture`, and print the results (exit 0 healthy, 1 warn, 2 drain-worthy).
    Check(check::CheckArgs),
    /// Check slurm.conf, gres.conf, plugstack.conf and sgpu.toml (`sgpu conf check`).
    Conf(conf::ConfArgs),
    /// Drain nodes with a reason (kept in acctd's node history).
    Drain(admin::DrainArgs),
    /// Resume drained nodes whose sgpu checks pass (--force for any).
    Resume(admin::ResumeArgs),
    /// Per node: Slurm state and reason, who drained it, sgpu health, breaker.
    Status(admin::StatusArgs),
    /// Drains and resumes of nodes, from acctd's node history.
    History(admin::HistoryArgs),
    /// The circuit breaker: nodes held drained by sgpu per scope; `reset` closes it.
    Breaker(admin::BreakerArgs),
    /// GPU-hours (allocated, used), energy and cost per account/user/... over a window.
    Report(report::ReportArgs),
    /// Jobs that ran in a window, with their GPU figures.
    Jobs(report::JobsArgs),
    /// One job per node and per GPU.
    Job(report::JobArgs),
    /// One job's efficiency (jobstats/seff style): GPU utilization, memory, idle time and
    /// energy from sgpu, CPU and memory from Slurm's accounting, and hints.
    Seff(seff::SeffArgs),
    /// Records acctd kept apart: a different record was stored under their identity
    /// (admins only).
    Conflicts(report::ConflictsArgs),
}

/// Runs the parsed command line; returns the process exit code. `check` and `conf check`
/// read sgpu.toml themselves (they report a bad file instead of stopping); every other
/// subcommand gets the [`settings::Settings`] resolved once here.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    use settings::EnvConfig::{Optional, Required};
    let settings =
        |env| settings::Settings::resolve(cli.config.as_deref(), cli.acctd.as_deref(), env);
    match cli.command {
        Command::Check(args) => check::run(cli.config.as_deref(), &args),
        Command::Conf(args) => conf::run(cli.config.as_deref(), &args),
        Command::Drain(a) => admin::drain(&settings(Optional)?, &a),
        Command::Resume(a) => admin::resume(&settings(Optional)?, &a),
        Command::Status(a) => admin::status(&settings(Optional)?, &a),
        Command::History(a) => admin::history(&settings(Optional)?, &a),
        Command::Breaker(a) => admin::breaker(&settings(Optional)?, &a),
        Command::Report(a) => report::report(&settings(Required)?, &a),
        Command::Jobs(a) => report::jobs(&settings(Required)?, &a),
        Command::Job(a) => report::job(&settings(Required)?, &a),
        Command::Seff(a) => seff::seff(&settings(Required)?, &a),
        Command::Conflicts(a) => report::conflicts(&settings(Required)?, &a),
    }
}
