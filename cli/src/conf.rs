//! `sgpu conf check`: reads the live slurm.conf, gres.conf, plugstack.conf and sgpu.toml of
//! this node and reports what is missing or inconsistent, each finding with where it is and
//! the line that fixes it.
//!
//! It only reads (and, unless `--no-nvml`, asks NVML how many GPUs it sees). Exit code: 0
//! nothing found, 1 warnings only, 2 at least one error.

use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::Serialize;
use sgpu_nodelib::checks;
use sgpu_nodelib::config::Config;
use sgpu_nodelib::gpu::{self, NvmlOptions};
use sgpu_nodelib::nodeconf;
use sgpu_slurm_conf::{
    ConfFile, GresConf, Location, Node, NodeGpus, PlugstackConf, SlurmConf, SpankEntry,
};

/// File name of the SPANK plugin in plugstack.conf.
pub const PLUGIN_FILE: &str = "spank_sgpu.so";

/// Options of `sgpu conf`.
#[derive(Debug, Args)]
pub struct ConfArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ConfCommand,
}

/// Subcommands of `sgpu conf`.
#[derive(Debug, Subcommand)]
pub enum ConfCommand {
    /// Check slurm.conf, gres.conf, plugstack.conf and sgpu.toml for what sgpu needs
    /// (exit 0 clean, 1 warnings, 2 errors).
    Check(ConfCheckArgs),
}

/// Options of `sgpu conf check`.
#[derive(Debug, Args)]
pub struct ConfCheckArgs {
    /// slurm.conf to read (default: $SLURM_CONF, else /etc/slurm/slurm.conf).
    #[arg(long, value_name = "PATH")]
    pub slurm_conf: Option<PathBuf>,
    /// Slurm node name whose GPUs are checked (default: the short host name).
    #[arg(long)]
    pub node: Option<String>,
    /// Do not ask NVML how many GPUs it sees.
    #[arg(long)]
    pub no_nvml: bool,
    /// The running Slurm's version, e.g. 22.05.8 (default: from `scontrol --version`).
    #[arg(long, value_name = "VERSION")]
    pub slurm_version: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Worth knowing; nothing breaks.
    Note,
    /// sgpu works, but not as well as it should.
    Warn,
    /// sgpu (or Slurm) will not work as intended.
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Note => "note",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// One thing `conf check` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// How bad it is.
    pub level: Level,
    /// A short stable id (for scripts and tests), e.g. `prolog.missing`.
    pub id: &'static str,
    /// `file:line` (or just the file) the finding is about.
    pub at: Option<String>,
    /// What is wrong.
    pub problem: String,
    /// What to write or do to fix it.
    pub fix: Option<String>,
}

impl Finding {
    fn new(level: Level, id: &'static str, at: Option<String>, problem: impl Into<String>) -> Self {
        Finding {
            level,
            id,
            at,
            problem: problem.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

fn loc(l: &Location) -> Option<String> {
    Some(l.to_string())
}

fn file(p: &Path) -> Option<String> {
    Some(p.display().to_string())
}

/// What `conf check` looks at.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// slurm.conf.
    pub slurm_conf: PathBuf,
    /// sgpu.toml named explicitly (`--config`), else discovered.
    pub sgpu_config: Option<PathBuf>,
    /// The node whose GPUs are checked.
    pub node: Option<String>,
    /// Whether to ask NVML for the GPU count.
    pub nvml: bool,
    /// The running Slurm's version (`major.minor[.micro]`), when known.
    pub slurm_version: Option<String>,
}

/// Runs every check; findings in the order they were found.
pub fn check(inputs: &Inputs) -> Vec<Finding> {
    let mut out = Vec::new();
    let config = check_sgpu_config(inputs.sgpu_config.as_deref(), &mut out);
    if let Some(c) = &config {
        check_dirs(c, &mut out);
    }
    let (slurm, errors) = SlurmConf::load_lenient(&inputs.slurm_conf);
    if !inputs.slurm_conf.exists() {
        out.push(
            Finding::new(
                Level::Error,
                "slurm_conf.missing",
                file(&inputs.slurm_conf),
                "slurm.conf not found",
            )
            .fix("pass --slurm-conf PATH or set SLURM_CONF"),
        );
        return out;
    }
    for e in errors {
        out.push(Finding::new(
            Level::Error,
            "slurm_conf.syntax",
            e.location().and_then(loc),
            e.to_string(),
        ));
    }
    let scontrol = config.as_ref().and_then(|c| c.scontrol.as_deref());
    let running = slurm_version(inputs.slurm_version.as_deref(), scontrol, &slurm.path);
    // Slurm 24.05+ runs every Prolog=/Epilog= line; older ones only the last. An unknown
    // release is taken as a current one (no error for a line a 24.05+ slurmd runs).
    let accumulate = running.is_none_or(|v| v >= (24, 5));
    check_hooks(&slurm, accumulate, &mut out);
    check_gres(&slurm, inputs, config.as_ref(), &mut out);
    check_plugstack(&slurm, inputs, running, &mut out);
    if let Some(c) = &config {
        check_active(&slurm, inputs, c, &mut out);
    }
    out
}

/// A Slurm time limit (`MaxTime=`) in seconds: `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`,
/// `D-HH:MM`, `D-HH:MM:SS`; `None` for `INFINITE`/`UNLIMITED` or what does not parse.
fn slurm_time_s(text: &str) -> Option<u64> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("infinite") || t.eq_ignore_ascii_case("unlimited") {
        return None;
    }
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().ok()?, Some(r)),
        None => (0, None),
    };
    let nums = |s: &str| -> Option<Vec<u64>> { s.split(':').map(|p| p.parse().ok()).collect() };
    let secs = match rest {
        // D-HH, D-HH:MM, D-HH:MM:SS
        Some(r) => match nums(r)?.as_slice() {
            [h] => h * 3600,
            [h, m] => h * 3600 + m * 60,
            [h, m, s] => h * 3600 + m * 60 + s,
            _ => return None,
        },
        None => match nums(t)?.as_slice() {
            [m] => m * 60,
            [m, s] => m * 60 + s,
            [h, m, s] => h * 3600 + m * 60 + s,
            _ => return None,
        },
    };
    Some(days * 86_400 + secs)
}

/// `[active]`: the maintenance partition exists, holds this node, allows the checks' time
/// limits and sits below the users' partitions; each check's program is on this node.
fn check_active(slurm: &SlurmConf, inputs: &Inputs, config: &Config, out: &mut Vec<Finding>) {
    let a = &config.active;
    if a.checks.is_empty() {
        return;
    }
    let at = config.source.as_deref().and_then(file);
    check_active_programs(a, at.as_ref(), out);
    let Some(name) = a.partition.as_deref() else {
        return;
    };
    let Some(part) = slurm.partitions.iter().find(|p| p.name == name) else {
        out.push(
            Finding::new(
                Level::Error,
                "active.partition",
                at,
                format!("[active] partition {name:?} is not in slurm.conf: sbatch will refuse every check"),
            )
            .fix(format!(
                "PartitionName={name} Nodes=<the GPU nodes> MaxTime=120 State=UP Hidden=YES \
                 PriorityTier=0 OverSubscribe=EXCLUSIVE AllowGroups=root (docs/operations.md, \
                 \"Active checks\")"
            )),
        );
        return;
    };
    if let Some(node) = inputs.node.clone().or_else(nodeconf::short_hostname) {
        check_active_partition_on(slurm, part, &node, out);
    }
    check_active_max_time(a, part, out);
}

/// Each active check's program is an executable file on this node (`at`: sgpu.toml).
fn check_active_programs(
    a: &sgpu_nodelib::active::ActiveSettings,
    at: Option<&String>,
    out: &mut Vec<Finding>,
) {
    for c in &a.checks {
        let program = c.command.first().map(String::as_str).unwrap_or("");
        let runnable = std::fs::metadata(program)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if !runnable {
            out.push(
                Finding::new(
                    Level::Error,
                    "active.command",
                    at.cloned(),
                    format!(
                        "active check {}: {program} is not an executable file on this node: \
                         every run would be an error",
                        c.name
                    ),
                )
                .fix("install it (DCGM: the datacenter-gpu-manager package) or fix `command`"),
            );
        }
    }
}

/// The maintenance partition `part` holds `node` and sits below the users' partitions of
/// `node` (a lower `PriorityTier`).
fn check_active_partition_on(
    slurm: &SlurmConf,
    part: &sgpu_slurm_conf::slurm_conf::Partition,
    node: &str,
    out: &mut Vec<Finding>,
) {
    let name = part.name.as_str();
    let where_ = loc(&part.at);
    if !part.nodes.iter().any(|n| n == node) {
        out.push(
            Finding::new(
                Level::Error,
                "active.partition_nodes",
                where_.clone(),
                format!("partition {name} does not hold {node}: its checks could never run"),
            )
            .fix(format!("add {node} to the partition's Nodes=")),
        );
    }
    // user partitions of this node: the maintenance one must come after them
    let tier = |p: &sgpu_slurm_conf::slurm_conf::Partition| {
        p.param("PriorityTier")
            .and_then(|t| t.parse::<u32>().ok())
            .unwrap_or(1)
    };
    let mine = tier(part);
    if let Some(user) = slurm
        .partitions
        .iter()
        .filter(|p| p.name != name && p.nodes.iter().any(|n| n == node))
        .find(|p| tier(p) <= mine)
    {
        out.push(
            Finding::new(
                Level::Warn,
                "active.priority",
                where_,
                format!(
                    "partition {name} has PriorityTier={mine}, not below {} of {}: Slurm \
                     may give the node to a check before a waiting user job",
                    tier(user),
                    user.name
                ),
            )
            .fix(format!(
                "PriorityTier=0 on {name}, above 0 on the users' partitions"
            )),
        );
    }
}

/// The maintenance partition `part`'s `MaxTime` allows the longest check's job (its
/// deadline plus the runner's margin).
fn check_active_max_time(
    a: &sgpu_nodelib::active::ActiveSettings,
    part: &sgpu_slurm_conf::slurm_conf::Partition,
    out: &mut Vec<Finding>,
) {
    let name = &part.name;
    let longest = a
        .checks
        .iter()
        .map(|c| c.deadline)
        .max()
        .unwrap_or_default();
    let needed = (longest + sgpu_nodelib::active::JOB_TIME_MARGIN).as_secs();
    if let Some(max) = part.param("MaxTime").and_then(slurm_time_s) {
        if max < needed {
            out.push(
                Finding::new(
                    Level::Error,
                    "active.max_time",
                    loc(&part.at),
                    format!(
                        "partition {name} has MaxTime of {max} s, but the longest check asks \
                         for {needed} s (deadline_s plus a minute): sbatch refuses it"
                    ),
                )
                .fix(format!("MaxTime={} or more", needed.div_ceil(60))),
            );
        }
    }
}

fn check_sgpu_config(explicit: Option<&Path>, out: &mut Vec<Finding>) -> Option<Config> {
    // the same lookup and trust checks as the gates and the plugin
    match Config::discover(explicit) {
        Ok(c) if c.source.is_none() => {
            out.push(Finding::new(
                Level::Note,
                "sgpu_toml.defaults",
                file(&Config::locate(explicit).0),
                "no sgpu.toml: built-in defaults apply",
            ));
            Some(c)
        }
        Ok(c) => Some(c),
        Err(e) => {
            out.push(Finding::new(
                Level::Error,
                "sgpu_toml.invalid",
                None,
                e.to_string(),
            ));
            None
        }
    }
}

/// The spool and state directories: root-owned, not writable by others.
fn check_dirs(config: &Config, out: &mut Vec<Finding>) {
    for (what, dir, private) in [
        ("state_dir", &config.state_dir, false),
        ("spool_dir", &config.spool_dir, true),
    ] {
        let Ok(meta) = std::fs::metadata(dir) else {
            out.push(Finding::new(
                Level::Note,
                "dir.absent",
                file(dir),
                format!("{what} does not exist yet; sgpu-prolog creates it at the first job"),
            ));
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o002 != 0 {
            out.push(
                Finding::new(
                    Level::Error,
                    "dir.world_writable",
                    file(dir),
                    format!("{what} is writable by everyone (mode {mode:04o}): any user can forge records"),
                )
                .fix(format!("chmod 0700 {}", dir.display())),
            );
        } else if private && mode & 0o020 != 0 {
            out.push(
                Finding::new(
                    Level::Error,
                    "dir.group_writable",
                    file(dir),
                    format!(
                        "{what} is writable by its group (mode {mode:04o}): sgpu refuses such a \
                         spool, so records would be lost"
                    ),
                )
                .fix(format!("chmod 0700 {}", dir.display())),
            );
        } else if private && mode & 0o077 != 0 {
            out.push(
                Finding::new(
                    Level::Warn,
                    "dir.not_private",
                    file(dir),
                    format!("{what} is readable by others (mode {mode:04o}); records name users and jobs"),
                )
                .fix(format!("chmod 0700 {}", dir.display())),
            );
        }
        if meta.uid() != 0 {
            out.push(
                Finding::new(
                    Level::Warn,
                    "dir.owner",
                    file(dir),
                    format!("{what} is owned by uid {}, not root", meta.uid()),
                )
                .fix(format!("chown root: {}", dir.display())),
            );
        }
    }
}

/// A Prolog/Epilog program that Slurm could not run.
#[derive(Debug, thiserror::Error)]
enum ProgramError {
    /// It cannot be read (missing, no permission).
    #[error("{path}: {error}")]
    Unreadable { path: String, error: std::io::Error },
    /// No execute bit.
    #[error("{path} is not executable")]
    NotExecutable { path: String },
}

/// Whether the program at `path` is, or runs, `program` (a wrapper script naming it).
fn runs(path: &str, program: &str) -> Result<bool, ProgramError> {
    let p = Path::new(path);
    let meta = std::fs::metadata(p).map_err(|error| ProgramError::Unreadable {
        path: path.to_string(),
        error,
    })?;
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(ProgramError::NotExecutable {
            path: path.to_string(),
        });
    }
    if p.file_name().is_some_and(|n| n == program) {
        return Ok(true);
    }
    // A wrapper script: small text that names the program.
    if meta.len() <= 1 << 20 {
        if let Ok(text) = std::fs::read_to_string(p) {
            return Ok(text.contains(program));
        }
    }
    Ok(false)
}

/// Where sgpu is installed: the prefix of this `sgpu` (`<prefix>/bin/sgpu`) when its
/// `sbin/sgpu-prolog` is there (`make install`, the Debian packages), else `/usr/local`.
fn install_prefix() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
        .filter(|p| p.join("sbin/sgpu-prolog").exists())
        .unwrap_or_else(|| PathBuf::from("/usr/local"))
}

/// `Prolog=`, `Epilog=` and what Slurm does after a failed prolog.
fn check_hooks(slurm: &SlurmConf, accumulate: bool, out: &mut Vec<Finding>) {
    let prefix = install_prefix();
    let at_key = |key: &str| {
        slurm
            .settings
            .get(key)
            .and_then(|s| loc(&s.at))
            .or_else(|| file(&slurm.path))
    };
    for (key, name, program, paths) in [
        (
            "prolog",
            "Prolog",
            "sgpu-prolog",
            slurm.prolog_paths_of(false, accumulate),
        ),
        (
            "epilog",
            "Epilog",
            "sgpu-epilog",
            slurm.prolog_paths_of(true, accumulate),
        ),
    ] {
        let fix = format!("{name}={}", prefix.join("sbin").join(program).display());
        if paths.is_empty() {
            out.push(
                Finding::new(
                    Level::Error,
                    if key == "prolog" {
                        "prolog.missing"
                    } else {
                        "epilog.missing"
                    },
                    at_key(key),
                    format!("{name} is not set: slurmd never runs {program}"),
                )
                .fix(fix),
            );
            continue;
        }
        let mut found = false;
        for p in &paths {
            match runs(p, program) {
                Ok(true) => found = true,
                Ok(false) => {}
                Err(e) => out.push(
                    Finding::new(
                        Level::Error,
                        "hook.unusable",
                        at_key(key),
                        format!("{name} program unusable: {e}"),
                    )
                    .fix(format!("install it, or chmod 0755 {p}")),
                ),
            }
        }
        if !found {
            out.push(
                Finding::new(
                    Level::Error,
                    if key == "prolog" {
                        "prolog.not_sgpu"
                    } else {
                        "epilog.not_sgpu"
                    },
                    at_key(key),
                    format!("{name}={} does not run {program}", paths.join(",")),
                )
                .fix(format!("{fix} (or call it from your own {name} script)")),
            );
        }
    }
    let sched = slurm.get("SchedulerParameters").unwrap_or("");
    if !sched
        .split(',')
        .any(|p| p.trim() == "nohold_on_prolog_fail")
    {
        let at = slurm
            .settings
            .get("schedulerparameters")
            .and_then(|s| loc(&s.at))
            .or_else(|| file(&slurm.path));
        let fix = if sched.is_empty() {
            "SchedulerParameters=nohold_on_prolog_fail".to_string()
        } else {
            format!("SchedulerParameters={sched},nohold_on_prolog_fail")
        };
        out.push(
            Finding::new(
                Level::Warn,
                "scheduler.hold_on_prolog_fail",
                at,
                "a job whose prolog fails (bad GPU) is requeued held and waits for an admin",
            )
            .fix(fix),
        );
    }
}

/// The node's GPUs: slurm.conf against gres.conf, and both against what NVML sees.
fn check_gres(slurm: &SlurmConf, inputs: &Inputs, config: Option<&Config>, out: &mut Vec<Finding>) {
    let Some(node) = inputs.node.clone().or_else(nodeconf::short_hostname) else {
        out.push(
            Finding::new(
                Level::Warn,
                "node.unknown",
                None,
                "no host name: the node's GPUs were not checked",
            )
            .fix("pass --node NAME"),
        );
        return;
    };
    let Some(def) = slurm.node(&node) else {
        out.push(
            Finding::new(
                Level::Error,
                "node.not_in_slurm_conf",
                file(&slurm.path),
                format!("slurm.conf has no NodeName line for {node}"),
            )
            .fix(format!(
                "NodeName={node} Gres=gpu:N ... (or pass --node NAME)"
            )),
        );
        return;
    };
    let gres_path = slurm.gres_conf_path();
    let (gres, errors) = if gres_path.exists() {
        GresConf::load_lenient(&gres_path)
    } else {
        (GresConf::default(), Vec::new())
    };
    for e in errors {
        out.push(Finding::new(
            Level::Error,
            "gres_conf.syntax",
            e.location().and_then(loc),
            e.to_string(),
        ));
    }
    let expected = gres.expected_gpus(&node, Some(slurm));
    report_gpu_issues(slurm, def, &node, &gres_path, &expected, out);
    if def.gpu_count() == 0 {
        out.push(Finding::new(
            Level::Note,
            "node.no_gpus",
            loc(&def.at),
            format!("{node} has no GPUs in slurm.conf; sgpu has nothing to check there"),
        ));
        return;
    }
    if !inputs.nvml {
        return;
    }
    let Some(config) = config else { return };
    check_gpu_count(config, &node, def, &gres_path, expected.count, out);
}

/// What gres.conf and slurm.conf disagree on for `node` ([`NodeGpus::issues`]), each at the
/// line to fix.
fn report_gpu_issues(
    slurm: &SlurmConf,
    def: &Node,
    node: &str,
    gres_path: &Path,
    expected: &NodeGpus,
    out: &mut Vec<Finding>,
) {
    for issue in &expected.issues {
        let at = if matches!(issue, sgpu_slurm_conf::GpuIssue::GpuNotInGresTypes) {
            slurm
                .settings
                .get("grestypes")
                .and_then(|s| loc(&s.at))
                .or_else(|| loc(&def.at))
        } else if gres_path.exists() {
            file(gres_path)
        } else {
            loc(&def.at)
        };
        let fix = match issue {
            sgpu_slurm_conf::GpuIssue::GpuNotInGresTypes => Some("GresTypes=gpu".to_string()),
            sgpu_slurm_conf::GpuIssue::CountMismatch { slurm_conf, .. } => Some(format!(
                "list {slurm_conf} GPU(s) for {node} in {} (Name=gpu File=/dev/nvidia[0-{}])",
                gres_path.display(),
                slurm_conf.saturating_sub(1)
            )),
            _ => None,
        };
        let mut f = Finding::new(Level::Error, "gres.inconsistent", at, issue.to_string());
        f.fix = fix;
        out.push(f);
    }
}

/// The GPUs NVML sees on this node against the `expected` count slurm.conf/gres.conf give.
fn check_gpu_count(
    config: &Config,
    node: &str,
    def: &Node,
    gres_path: &Path,
    expected: u64,
    out: &mut Vec<Finding>,
) {
    match gpu::collect(&NvmlOptions::from_config(config), false) {
        Ok(c) => {
            // a GPU in MIG mode is its slices for Slurm (one gres.conf line each)
            let gpus = c.snapshot.gpus.len() as u64;
            let seen = checks::slurm_device_count(&c.snapshot).map_or(gpus, u64::from);
            let what = if seen == gpus {
                format!("{seen} GPU(s)")
            } else {
                format!("{seen} GPU(s) and MIG slices ({gpus} GPUs)")
            };
            // either count is a configuration Slurm runs (a MIG GPU listed whole or by slice)
            if seen != expected && gpus != expected {
                out.push(
                    Finding::new(
                        Level::Error,
                        "gpu.count",
                        if gres_path.exists() {
                            file(gres_path)
                        } else {
                            loc(&def.at)
                        },
                        format!(
                            "NVML sees {what} but slurm.conf/gres.conf give {node} {}",
                            expected
                        ),
                    )
                    .fix(format!(
                        "find the missing GPU (nvidia-smi -L, lspci), or set Gres=gpu:{seen} for \
                         {node} and list {seen} in gres.conf"
                    )),
                );
            }
        }
        Err(e) => out.push(
            Finding::new(
                Level::Error,
                "nvml.failed",
                None,
                format!("NVML: {e}; the GPU count was not compared"),
            )
            .fix("check the driver (nvidia-smi) and nvml_library in sgpu.toml"),
        ),
    }
}

/// Slurm's version as (major, minor), from `--slurm-version` or `scontrol --version` (the
/// `scontrol` sgpu.toml names, else the one on `PATH`: the Slurm sgpu itself talks to).
fn slurm_version(
    given: Option<&str>,
    scontrol: Option<&Path>,
    slurm_conf: &Path,
) -> Option<(u32, u32)> {
    let text = match given {
        Some(v) => v.to_string(),
        None => {
            // scontrol wants a configuration even for --version.
            let sc = sgpu_nodelib::slurmctl::Scontrol::locate(scontrol).ok()?;
            let conf = slurm_conf.to_string_lossy();
            sc.run_program(sc.path(), &["--version".into()], &[("SLURM_CONF", &conf)])
                .ok()?
                .trim()
                .to_string()
        }
    };
    let v = text.rsplit(' ').next()?;
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Why a plugin's `plugin_version` could not be read (slurmstepd would refuse it too).
#[derive(Debug, thiserror::Error)]
enum PluginError {
    /// dlopen failed (missing library, wrong architecture, unresolved symbols).
    #[error(transparent)]
    Load(libloading::Error),
    /// Not a Slurm plugin.
    #[error("no plugin_version symbol: {0}")]
    NoVersion(libloading::Error),
    /// The symbol is there but null.
    #[error("plugin_version is null")]
    NullVersion,
}

/// The `plugin_version` a Slurm plugin was built with, read by loading it.
fn plugin_version(path: &Path) -> Result<u32, PluginError> {
    // SAFETY: the library is sgpu's own plugin (or claims to be); loading runs no code of
    // ours, and the symbol is read as the `uint32_t` Slurm's plugin ABI defines it to be.
    unsafe {
        let lib = libloading::Library::new(path).map_err(PluginError::Load)?;
        let sym: libloading::Symbol<'_, *const u32> = lib
            .get(b"plugin_version\0")
            .map_err(PluginError::NoVersion)?;
        let p = *sym;
        if p.is_null() {
            return Err(PluginError::NullVersion);
        }
        Ok(*p)
    }
}

/// plugstack.conf: the plugin is listed, exists, matches this Slurm, and its config parses.
fn check_plugstack(
    slurm: &SlurmConf,
    inputs: &Inputs,
    running: Option<(u32, u32)>,
    out: &mut Vec<Finding>,
) {
    let path = slurm.plugstack_path();
    let line = format!(
        "optional {}",
        install_prefix()
            .join("lib/slurm")
            .join(PLUGIN_FILE)
            .display()
    );
    if !path.exists() {
        out.push(
            Finding::new(
                Level::Warn,
                "plugstack.missing",
                file(&path),
                "no plugstack.conf: users get no --gpu-health/--gpu-report and no per-step capture",
            )
            .fix(line),
        );
        return;
    }
    let (stack, errors) = PlugstackConf::load_lenient(&path);
    for e in errors {
        out.push(Finding::new(
            Level::Error,
            "plugstack.syntax",
            e.location().and_then(loc),
            e.to_string(),
        ));
    }
    let Some(entry) = stack.find(PLUGIN_FILE) else {
        out.push(
            Finding::new(
                Level::Warn,
                "plugstack.no_plugin",
                file(&path),
                format!(
                    "{PLUGIN_FILE} is not listed: no --gpu-health/--gpu-report, no per-step capture"
                ),
            )
            .fix(line),
        );
        return;
    };
    let plugin_dir = slurm
        .get("PluginDir")
        .unwrap_or("/usr/lib/x86_64-linux-gnu/slurm-wlm");
    let Some(so) = entry.resolve(plugin_dir) else {
        out.push(
            Finding::new(
                Level::Error,
                "plugin.missing",
                loc(&entry.at),
                format!("{} does not exist", entry.path.display()),
            )
            .fix("install spank_sgpu.so there, or fix the path"),
        );
        return;
    };
    check_plugin_release(&so, entry, running, out);
    check_plugin_args(entry, inputs, out);
}

/// The plugin at `so` (listed by `entry`) loads and was built for the running Slurm release
/// (`running`: major, minor), the check slurmstepd's plugin loader makes.
fn check_plugin_release(
    so: &Path,
    entry: &SpankEntry,
    running: Option<(u32, u32)>,
    out: &mut Vec<Finding>,
) {
    match (plugin_version(so), running) {
        (Err(e), _) => out.push(Finding::new(
            Level::Error,
            "plugin.unloadable",
            loc(&entry.at),
            format!("{}: {e}", so.display()),
        )),
        (Ok(v), Some((major, minor))) => {
            let (pm, pn) = (v >> 16, (v >> 8) & 0xff);
            if (pm, pn) != (major, minor) {
                out.push(
                    Finding::new(
                        Level::Error,
                        "plugin.version",
                        loc(&entry.at),
                        format!(
                            "{} was built for Slurm {pm}.{pn:02} but Slurm {major}.{minor:02} runs \
                             here: Slurm refuses to load it ({}: {})",
                            so.display(),
                            if entry.required { "required" } else { "optional" },
                            if entry.required {
                                "srun, sbatch and slurmstepd fail"
                            } else {
                                "silently skipped, so --gpu-health, --gpu-report and step capture are lost"
                            }
                        ),
                    )
                    .fix(format!(
                        "rebuild sgpu against this Slurm's headers (SLURM_INCLUDE_DIR=<Slurm's \
                         prefix>/include, or Debian's libslurm-dev) and reinstall {PLUGIN_FILE}"
                    )),
                );
            }
        }
        (Ok(_), None) => out.push(Finding::new(
            Level::Warn,
            "slurm.version_unknown",
            None,
            "could not tell the running Slurm's version (scontrol --version); the plugin's was not compared",
        )),
    }
}

/// The plugin's plugstack.conf arguments: `config=` names a valid sgpu.toml,
/// `default_health=` a known mode, and no other key is unknown.
fn check_plugin_args(entry: &SpankEntry, inputs: &Inputs, out: &mut Vec<Finding>) {
    for arg in &entry.args {
        if let Some(cfg) = arg.strip_prefix("config=") {
            // `%n` is the node name, expanded by the plugin.
            let node = inputs.node.clone().or_else(nodeconf::short_hostname);
            let cfg = cfg.replace("%n", node.as_deref().unwrap_or("%n"));
            let p = Path::new(&cfg);
            if !p.exists() {
                out.push(
                    Finding::new(
                        Level::Error,
                        "plugin.config_missing",
                        loc(&entry.at),
                        format!("the plugin's config={cfg} does not exist"),
                    )
                    .fix("create it, or drop config= to use /etc/sgpu/sgpu.toml"),
                );
            } else if let Err(e) = Config::load(p) {
                out.push(Finding::new(
                    Level::Error,
                    "plugin.config_invalid",
                    loc(&entry.at),
                    format!("the plugin's config={cfg}: {e}"),
                ));
            }
        } else if let Some(v) = arg.strip_prefix("default_health=") {
            if !["strict", "warn", "off"].contains(&v.to_ascii_lowercase().as_str()) {
                out.push(
                    Finding::new(
                        Level::Error,
                        "plugin.default_health",
                        loc(&entry.at),
                        format!("default_health={v} is not one of strict, warn, off"),
                    )
                    .fix("default_health=strict"),
                );
            }
        } else {
            let key = arg.split_once('=').map_or(arg.as_str(), |(k, _)| k);
            if !PLUGIN_KEYS.contains(&key) {
                out.push(
                    Finding::new(
                        Level::Error,
                        "plugin.argument",
                        loc(&entry.at),
                        format!(
                            "unknown plugin argument {arg:?} (known: {})",
                            PLUGIN_KEYS.join(", ")
                        ),
                    )
                    .fix("remove it, or fix its spelling"),
                );
            }
        }
    }
}

/// The plugin's `plugstack.conf` argument keys (`key=value`).
const PLUGIN_KEYS: &[&str] = &[
    "config",
    "default_health",
    "nvml_timeout_ms",
    "report",
    "capture",
];

/// The findings as text: one block per finding, then a summary line.
pub fn render_text(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        let _ = write!(s, "{:<5} ", f.level.as_str());
        if let Some(at) = &f.at {
            let _ = write!(s, "{at}: ");
        }
        let _ = writeln!(s, "{} [{}]", f.problem, f.id);
        if let Some(fix) = &f.fix {
            let _ = writeln!(s, "      fix: {fix}");
        }
    }
    let count = |l| findings.iter().filter(|f| f.level == l).count();
    let _ = writeln!(
        s,
        "{} error(s), {} warning(s), {} note(s)",
        count(Level::Error),
        count(Level::Warn),
        count(Level::Note)
    );
    s
}

/// The exit code for these findings: 2 errors, 1 warnings, 0 otherwise.
pub fn exit_code(findings: &[Finding]) -> i32 {
    match findings.iter().map(|f| f.level).max() {
        Some(Level::Error) => 2,
        Some(Level::Warn) => 1,
        _ => 0,
    }
}

/// Runs `sgpu conf ...`; returns the exit code.
pub fn run(config_path: Option<&Path>, args: &ConfArgs) -> anyhow::Result<i32> {
    match &args.command {
        ConfCommand::Check(a) => {
            let inputs = Inputs {
                slurm_conf: a
                    .slurm_conf
                    .clone()
                    .unwrap_or_else(nodeconf::slurm_conf_path),
                sgpu_config: config_path.map(Path::to_path_buf),
                node: a.node.clone(),
                nvml: !a.no_nvml,
                slurm_version: a.slurm_version.clone(),
            };
            let findings = check(&inputs);
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "exit_code": exit_code(&findings), "findings": findings })
                    )?
                );
            } else {
                print!("{}", render_text(&findings));
            }
            Ok(exit_code(&findings))
        }
    }
}
