//! `sgpu check`: run the health checks on this node and print a table or JSON.
//!
//! It only looks: it never drains, and it does not advance the XID cursor (new XIDs its own
//! event set catches are recorded in the store, so the gate still sees them). It reads the
//! node's GPU history (PCIe width baseline, throttle streaks, counter rates) without adding
//! to it.
//!
//! # `--capture FILE`: judging a saved `nvidia-smi` output
//!
//! With `--capture`, the GPUs judged are those of a file saved on any GPU node with
//! `nvidia-smi -q -x > node.xml` (or `nvidia-smi -q > node.txt`): the capture is converted
//! into a state of the simulated NVML library (`nvml-sim`, see its `capture` module) and
//! the checks run through `nvml-wrapper` against it, the same code path and the same
//! catalogue and thresholds (from `sgpu.toml`) as the gates and the daemon. There is no
//! history for a capture: rates and the width baseline are reported `unknown`, and a HW
//! throttle counts as its first sighting (a warning). The simulated library is found at
//! `--nvml-sim PATH`, else `$SGPU_NVML_SIM_LIB`, else as `libnvml_sim.so` next to the
//! `sgpu` executable (where `cargo build` leaves it), in its `deps/`, or in
//! `../lib/sgpu/` beside it (where `make install` puts it); like `nvml_library`, it must be
//! owned by root or the caller and not group/world-writable.
//!
//! # `--active [NAME]`: an active check by hand
//!
//! Runs the active checks of sgpu.toml's `[active]` (or the one named) here and now, with
//! the same runner and contract as healthd's Slurm job (`sgpu_nodelib::active`: deadline,
//! process group killed past it), writes each result where healthd reads it, so the node's
//! `/status`, `sgpu status` and the policy see it at healthd's next run, and prints them
//! (exit 0 pass, 1 warn, 2 fail or timeout, 3 error). It refuses while Slurm shows a job on
//! the node (a stress test must not share a node with a user's job) unless `--force`: the
//! usual use is on a node drained for repair, before `sgpu resume`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde::Serialize;
use sgpu_nodelib::catalogue::Profile;
use sgpu_nodelib::checks::{self, CheckContext, CheckResult, Verdict};
use sgpu_nodelib::config::Config;
use sgpu_nodelib::gpu::{self, NvmlOptions};
use sgpu_nodelib::nodeconf::{self, NodeLayout};
use sgpu_nodelib::xid::XidStore;

/// Options of `sgpu check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Which checks to run.
    #[arg(long, value_enum, default_value_t = ProfileArg::Full)]
    pub profile: ProfileArg,
    /// GPUs this node should have (default: from gres.conf/slurm.conf for --node).
    #[arg(long, value_name = "N")]
    pub expected_gpus: Option<u32>,
    /// Slurm node name for the gres.conf lookup (default: the short host name).
    #[arg(long)]
    pub node: Option<String>,
    /// Judge as if a job held these GPU indices (e.g. `0,1`).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub gpus: Option<Vec<u32>>,
    /// Judge a saved `nvidia-smi -q -x` (or `nvidia-smi -q`) output instead of this node's
    /// GPUs: a dry run of what sgpu would do on the machine it came from.
    #[arg(long, value_name = "FILE")]
    pub capture: Option<PathBuf>,
    /// The simulated NVML library `--capture` loads (default: libnvml_sim.so next to sgpu,
    /// in its deps/ or ../lib/sgpu/, or $SGPU_NVML_SIM_LIB).
    #[arg(long, value_name = "PATH", requires = "capture")]
    pub nvml_sim: Option<PathBuf>,
    /// Run the active checks of sgpu.toml's [active] here and now (only NAME when given),
    /// record their results for healthd and print them.
    #[arg(
        long,
        value_name = "NAME",
        num_args = 0..=1,
        default_missing_value = "",
        conflicts_with = "capture"
    )]
    pub active: Option<String>,
    /// With --active: run even while Slurm shows a job on this node, or cannot be asked.
    #[arg(long, requires = "active")]
    pub force: bool,
}

/// The file name of the simulated NVML library as cargo builds it.
pub const SIM_LIBRARY_FILE: &str = "libnvml_sim.so";
/// The environment variable naming the simulated library.
pub const SIM_LIBRARY_ENV: &str = "SGPU_NVML_SIM_LIB";

/// `--profile` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProfileArg {
    /// The prolog's quick gate.
    Quick,
    /// Everything.
    Full,
}

/// The check context `sgpu check` gives the catalogue: profile, NVML deadline, pinned
/// driver and the GPUs asked for (the expected GPU count is the caller's).
fn context(config: &Config, args: &CheckArgs) -> CheckContext {
    let mut ctx = CheckContext::new(match args.profile {
        ProfileArg::Quick => Profile::Quick,
        ProfileArg::Full => Profile::Full,
    });
    ctx.nvml_timeout = config.nvml_timeout;
    ctx.pinned_driver_version = config.pinned_driver_version.clone();
    ctx.job_gpus = args.gpus.clone();
    ctx
}

/// Runs `sgpu check`; returns the exit code (0 healthy, 1 warn, 2 drain).
pub fn run(config_path: Option<&Path>, args: &CheckArgs) -> anyhow::Result<i32> {
    let config = Config::discover(config_path)?;
    if let Some(capture) = &args.capture {
        return run_capture(&config, args, capture);
    }
    if let Some(name) = &args.active {
        return run_active(&config, args, name);
    }
    let catalogue = config.catalogue();
    let mut notes: Vec<String> = Vec::new();
    let mut ctx = context(&config, args);
    ctx.expected_gpu_count = match args.expected_gpus {
        Some(n) => Some(n),
        None => expected_from_slurm(args.node.as_deref(), &mut notes),
    };
    ctx.infiniband = Some(config.infiniband.clone());
    let opts = NvmlOptions {
        nvlink_counters: ctx.profile == sgpu_nodelib::catalogue::Profile::Full,
        ..NvmlOptions::from_config(&config)
    };

    let results = match gpu::collect(&opts, true) {
        Ok(collected) => {
            match XidStore::open(&config.state_dir) {
                Ok(mut store) => {
                    store.record(collected.xids.events);
                    if let Err(e) = store.save() {
                        notes.push(format!("XIDs not saved: {e}"));
                    }
                    ctx.xids = store.unreported();
                }
                Err(e) => {
                    notes.push(format!(
                        "XID store unavailable ({e}); showing only XIDs seen now"
                    ));
                    ctx.xids = collected.xids.events;
                }
            }
            let (results, note) = checks::evaluate_remembering(
                &collected.snapshot,
                &mut ctx,
                &catalogue,
                &config.state_dir,
                false,
            );
            notes.extend(note);
            results
        }
        Err(failure) => checks::evaluate_failure(&failure, &ctx, &catalogue),
    };
    let verdict = Verdict::of(&results);
    let out = if args.json {
        render_json(&results, verdict, &notes)
    } else {
        let mut t = render_table(&results, verdict);
        for n in &notes {
            let _ = writeln!(t, "note: {n}");
        }
        t
    };
    print!("{out}");
    Ok(verdict.exit_code())
}

/// Where the simulated NVML library is: `explicit`, `$SGPU_NVML_SIM_LIB`, or beside the
/// running executable (itself, `deps/`, `../lib/sgpu/`).
pub fn find_sim_library(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        anyhow::ensure!(
            p.is_file(),
            "--nvml-sim {}: no such file (build it with `cargo build -p nvml-sim`: \
             target/<profile>/{SIM_LIBRARY_FILE})",
            p.display()
        );
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(SIM_LIBRARY_ENV) {
        let p = PathBuf::from(p);
        anyhow::ensure!(
            p.is_file(),
            "${SIM_LIBRARY_ENV}={}: no such file",
            p.display()
        );
        return Ok(p);
    }
    let exe = std::env::current_exe().context("cannot locate the sgpu executable")?;
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let candidates = [
        dir.join(SIM_LIBRARY_FILE),
        dir.join("deps").join(SIM_LIBRARY_FILE),
        dir.join("../lib/sgpu").join(SIM_LIBRARY_FILE),
    ];
    candidates
        .iter()
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .cloned()
        .ok_or_else(|| {
            let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            anyhow::anyhow!(
                "--capture needs the simulated NVML library and none was found (looked at {}): \
                 build it with `cargo build -p nvml-sim` and pass --nvml-sim PATH or set \
                 ${SIM_LIBRARY_ENV}",
                looked.join(", ")
            )
        })
}

/// The job states that mean a job holds a node (`scontrol show node`'s State flags).
fn busy(state: &str) -> bool {
    state
        .split('+')
        .any(|f| matches!(f, "ALLOCATED" | "MIXED" | "COMPLETING"))
}

/// `sgpu check --active [NAME]`: active checks run here, recorded for healthd.
fn run_active(config: &Config, args: &CheckArgs, name: &str) -> anyhow::Result<i32> {
    use sgpu_nodelib::active::{self, Outcome};
    let file = config
        .source
        .as_deref()
        .map_or_else(|| "sgpu.toml".to_string(), |p| p.display().to_string());
    let all = &config.active.checks;
    if all.is_empty() {
        anyhow::bail!("{file} lists no active check ([[active.check]] under [active])");
    }
    let chosen: Vec<_> = if name.is_empty() {
        all.iter().collect()
    } else {
        let Some(c) = config.active.check(name) else {
            anyhow::bail!(
                "{file} has no active check {name:?}; it has: {}",
                all.iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        vec![c]
    };
    let node = args
        .node
        .clone()
        .or_else(|| config.node_name.clone())
        .or_else(nodeconf::short_hostname)
        .context("no --node, no node_name in sgpu.toml and no readable host name")?;
    if !args.force {
        let state = sgpu_nodelib::slurmctl::Scontrol::locate(config.scontrol.as_deref())
            .and_then(|s| s.node_state(&node))
            .with_context(|| {
                format!(
                    "cannot ask Slurm whether a job runs on {node}; --force runs the check \
                     anyway"
                )
            })?;
        if busy(&state.state) {
            anyhow::bail!(
                "{node} is {} in Slurm: a job runs on it, and an active check must not share \
                 the node with one (drain it and wait, or --force)",
                state.state
            );
        }
    }
    let mut results = Vec::new();
    let mut notes = Vec::new();
    for c in chosen {
        eprintln!(
            "running active check {} (deadline {} s): {}",
            c.name,
            c.deadline.as_secs(),
            c.command.join(" ")
        );
        let r = active::run(c, &node, None);
        if let Err(e) = active::save_result(&config.state_dir, &r) {
            notes.push(format!("{}: result not recorded for healthd: {e}", c.name));
        }
        if let Err(e) = active::record_run(&config.spool_dir, &r, "sgpu-admin") {
            notes.push(format!("{}: not in the node's history: {e}", c.name));
        }
        results.push(r);
    }
    let worst = results
        .iter()
        .map(|r| r.outcome.exit_code())
        .max()
        .unwrap_or(Outcome::Pass.exit_code());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        let mut rows = vec![
            ["CHECK", "OUTCOME", "SECONDS", "GPU", "MESSAGE"]
                .map(String::from)
                .to_vec(),
        ];
        for r in &results {
            rows.push(vec![
                format!("{}{}", active::CHECK_PREFIX, r.check),
                r.outcome.as_str().to_string(),
                format!("{:.1}", r.duration().as_secs_f64()),
                r.gpu.map_or_else(|| "-".into(), |g| g.to_string()),
                r.message.clone(),
            ]);
        }
        print!("{}", crate::admin::table(&rows));
    }
    for n in notes {
        eprintln!("note: {n}");
    }
    Ok(worst)
}

/// `sgpu check --capture FILE`: the capture's GPUs judged through the simulator.
fn run_capture(config: &Config, args: &CheckArgs, file: &Path) -> anyhow::Result<i32> {
    let capture = nvml_sim::Capture::load(file)?;
    let library = find_sim_library(args.nvml_sim.as_deref())?;
    // the library is loaded into this process: the same rule as sgpu.toml's nvml_library
    sgpu_nodelib::trust::check_file(&library)
        .map_err(|e| anyhow::anyhow!("the simulated NVML library: {e}"))?;
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let state_path = dir.path().join("state.toml");
    let mut state = capture.state.clone();
    state.epoch = Some(nvml_sim::unix_now());
    state
        .save(&state_path)
        .with_context(|| format!("cannot write the simulator state for {}", file.display()))?;
    // SAFETY: sgpu is single-threaded here (no NVML thread has started yet); the simulated
    // library reads the variable at its first nvmlInit, on the thread started below.
    unsafe { std::env::set_var(nvml_sim::STATE_ENV, &state_path) };
    let catalogue = config.catalogue();
    let mut ctx = context(config, args);
    ctx.expected_gpu_count = args.expected_gpus;
    let opts = NvmlOptions {
        library: Some(library),
        timeout: config.nvml_timeout,
        nvlink_counters: true,
    };
    let mut notes: Vec<String> = vec![format!(
        "capture {} ({:?}, driver {})",
        file.display(),
        capture.format,
        capture.state.driver_version.as_deref().unwrap_or("?")
    )];
    notes.extend(capture.notes.iter().cloned());
    let results = match gpu::collect(&opts, false) {
        Ok(c) => checks::evaluate(&c.snapshot, &ctx, &catalogue),
        Err(failure) => checks::evaluate_failure(&failure, &ctx, &catalogue),
    };
    let verdict = Verdict::of(&results);
    let per_gpu = gpu_verdicts(&results, &capture);
    let out = if args.json {
        let mut v: serde_json::Value =
            serde_json::from_str(&render_json(&results, verdict, &notes))
                .unwrap_or_else(|_| serde_json::json!({}));
        v["gpus"] = serde_json::to_value(&per_gpu).unwrap_or_default();
        format!("{v}\n")
    } else {
        let mut t = render_table(&results, verdict);
        for g in &per_gpu {
            let _ = writeln!(
                t,
                "gpu{} {} {}: {}{}",
                g.gpu,
                g.bus_id,
                g.name,
                g.verdict,
                g.reason
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            );
        }
        for n in &notes {
            let _ = writeln!(t, "note: {n}");
        }
        t
    };
    print!("{out}");
    Ok(verdict.exit_code())
}

/// One GPU's verdict in a capture.
#[derive(Debug, Serialize)]
pub struct GpuVerdict {
    /// NVML index.
    pub gpu: u32,
    /// The bus id the capture gave.
    pub bus_id: String,
    /// Product name.
    pub name: String,
    /// The worst failure's verdict.
    pub verdict: Verdict,
    /// `check: message` of the worst failure (none when healthy).
    pub reason: Option<String>,
    /// The check that decided.
    pub check: Option<&'static str>,
}

fn gpu_verdicts(results: &[CheckResult], capture: &nvml_sim::Capture) -> Vec<GpuVerdict> {
    capture
        .state
        .gpus
        .iter()
        .map(|g| {
            let mine: Vec<CheckResult> = results
                .iter()
                .filter(|r| r.gpu == Some(g.index))
                .cloned()
                .collect();
            let verdict = Verdict::of(&mine);
            // the first failure of the highest severity (the one a drain would name)
            let worst = mine
                .iter()
                .filter(|r| r.status == checks::Status::Fail)
                .fold(None::<&CheckResult>, |best, r| match best {
                    Some(b) if b.severity >= r.severity => Some(b),
                    _ => Some(r),
                });
            let decided = worst.filter(|_| verdict != Verdict::Healthy);
            GpuVerdict {
                gpu: g.index,
                bus_id: capture
                    .bus_ids
                    .get(g.index as usize)
                    .cloned()
                    .unwrap_or_default(),
                name: g.name.clone().unwrap_or_else(|| "?".into()),
                verdict,
                reason: decided.map(|r| format!("{}: {}", r.check, r.message)),
                check: decided.map(|r| r.check),
            }
        })
        .collect()
}

/// The node's expected GPU count from slurm.conf (`$SLURM_CONF` or /etc/slurm/slurm.conf)
/// and its gres.conf; `None` (with a note) when they cannot tell.
fn expected_from_slurm(node: Option<&str>, notes: &mut Vec<String>) -> Option<u32> {
    let node = match node.map(str::to_string).or_else(nodeconf::short_hostname) {
        Some(n) => n,
        None => {
            notes.push("no host name: GPU count not checked (use --node)".into());
            return None;
        }
    };
    match NodeLayout::load(&nodeconf::slurm_conf_path(), &node) {
        Ok(layout) => {
            notes.extend(layout.notes.iter().cloned());
            let count = layout.expected_count();
            if count.is_none() {
                notes.push(format!("node {node} has no GPUs in slurm.conf/gres.conf"));
            }
            count
        }
        Err(e) => {
            notes.push(format!("{e} (or use --expected-gpus)"));
            None
        }
    }
}

fn gpu_cell(r: &CheckResult) -> String {
    r.gpu.map_or_else(|| "-".to_string(), |g| g.to_string())
}

/// The results as an aligned text table, then the verdict (and drain reason).
pub fn render_table(results: &[CheckResult], verdict: Verdict) -> String {
    let header = [
        "CHECK",
        "GPU",
        "STATUS",
        "SEVERITY",
        "OBSERVED",
        "THRESHOLD",
    ];
    let rows: Vec<[String; 6]> = results
        .iter()
        .map(|r| {
            [
                r.check.to_string(),
                gpu_cell(r),
                r.status.as_str().to_string(),
                r.severity.as_str().to_string(),
                r.observed.clone(),
                r.threshold.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    let _ = writeln!(out, "verdict: {verdict}");
    if let Some(reason) = checks::drain_reason(results) {
        let _ = writeln!(out, "drain reason: {reason}");
    }
    out
}

/// The `--json` document: verdict, exit code, drain reason, notes, results.
#[derive(Serialize)]
struct JsonReport<'a> {
    verdict: Verdict,
    exit_code: i32,
    drain_reason: Option<String>,
    notes: &'a [String],
    results: &'a [CheckResult],
}

/// The results as one JSON object: verdict, exit code, drain reason, notes, results.
pub fn render_json(results: &[CheckResult], verdict: Verdict, notes: &[String]) -> String {
    let report = JsonReport {
        verdict,
        exit_code: verdict.exit_code(),
        drain_reason: checks::drain_reason(results),
        notes,
        results,
    };
    // Serialising plain strings, numbers and enums cannot fail; fall back to an error
    // object rather than panicking if it ever does.
    let mut out = serde_json::to_string(&report).unwrap_or_else(|e| {
        serde_json::json!({ "error": format!("could not encode the results: {e}") }).to_string()
    });
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sgpu_nodelib::catalogue::Severity;
    use sgpu_nodelib::checks::Status;

    fn sample() -> Vec<CheckResult> {
        vec![
            CheckResult {
                check: "gpu.temperature",
                gpu: Some(1),
                uuid: Some("GPU-1".into()),
                observed: "91 C".into(),
                threshold: "90 C".into(),
                severity: Severity::Drain,
                status: Status::Fail,
                message: "temperature 91 C >= 90 C".into(),
                enforced: true,
            },
            CheckResult {
                check: "gpu.count",
                gpu: None,
                uuid: None,
                observed: "8".into(),
                threshold: "8".into(),
                severity: Severity::Drain,
                status: Status::Pass,
                message: "ok \"quoted\"\n".into(),
                enforced: true,
            },
        ]
    }

    #[test]
    fn table_is_aligned_and_ends_with_the_verdict() {
        let t = render_table(&sample(), Verdict::Drain);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "CHECK            GPU  STATUS  SEVERITY  OBSERVED  THRESHOLD"
        );
        assert_eq!(
            lines[1],
            "gpu.temperature  1    fail    drain     91 C      90 C"
        );
        assert_eq!(
            lines[2],
            "gpu.count        -    pass    drain     8         8"
        );
        assert_eq!(lines[3], "verdict: drain");
        assert_eq!(
            lines[4],
            "drain reason: sgpu: gpu.temperature gpu1: temperature 91 C >= 90 C"
        );
    }

    #[test]
    fn json_escapes_and_nulls() {
        let j = render_json(&sample(), Verdict::Drain, &["a \"note\"".into()]);
        assert!(j.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&j).expect("valid JSON");
        assert_eq!(v["verdict"], "drain");
        assert_eq!(v["exit_code"], 2);
        assert_eq!(
            v["drain_reason"],
            "sgpu: gpu.temperature gpu1: temperature 91 C >= 90 C"
        );
        assert_eq!(v["notes"][0], "a \"note\"");
        assert_eq!(v["results"][0]["check"], "gpu.temperature");
        assert_eq!(v["results"][0]["gpu"], 1);
        assert_eq!(v["results"][0]["uuid"], "GPU-1");
        assert!(v["results"][1]["gpu"].is_null());
        assert!(v["results"][1]["uuid"].is_null());
        assert_eq!(v["results"][1]["message"], "ok \"quoted\"\n");
    }
}
