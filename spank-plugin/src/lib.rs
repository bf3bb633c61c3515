//! spank_sgpu.so: the SPANK plugin slurmstepd loads from `plugstack.conf`.
//!
//! It registers user options on `sbatch`/`srun`/`salloc`, captures per-step GPU usage inside
//! slurmstepd and prints an end-of-job GPU summary. It is built with bindgen against the
//! installed `slurm/spank.h` so its `plugin_version` matches the running Slurm, and it never
//! crashes or stalls slurmstepd: every entry point catches panics, every error is logged and
//! turned into success (only a bad option value is refused), and NVML is read on a worker
//! thread under a deadline (`nvml_timeout_ms`, default 500 ms).
//!
//! ```text
//! # plugstack.conf
//! optional /usr/lib/x86_64-linux-gnu/slurm-wlm/spank_sgpu.so config=/etc/sgpu/sgpu.toml default_health=strict
//! ```
//!
//! # Why not the `slurm-spank` crate
//! `slurm-spank` 0.4 is a reasonable binding, but it links the SPANK symbols (so unit tests
//! need Slurm at link time), runs its own bindgen over a vendored-or-installed header, and
//! its shared option callback runs user code without `catch_unwind` (a panic there would
//! abort srun or slurmstepd). The plugin needs eight functions; a small wrapper over bindgen
//! output of the *installed* headers ([`ffi`]) is less code to trust than closing that gap.
//!
//! # Hooks and contexts
//! - `slurm_spank_init` (all contexts): parses the plugstack.conf arguments ([`args`]) and
//!   registers `--gpu-health=strict|warn|off` and `--gpu-report`. Option callbacks validate:
//!   a bad `--gpu-health` makes sbatch/srun/salloc fail with `error: sgpu: invalid
//!   --gpu-health value ...`.
//! - `slurm_spank_init_post_opt`, local (srun) and allocator (sbatch/salloc) contexts: sets
//!   the job-control variable `SGPU_GPU_HEALTH` (the option, else `default_health=`), which
//!   Slurm hands to the job's Prolog/Epilog as `SPANK_SGPU_GPU_HEALTH` (read by sgpu-prolog).
//! - `slurm_spank_init_post_opt`, remote context (slurmstepd, once per step, as root, after
//!   the options were replayed and before privileges are dropped and tasks forked; the job's
//!   environment is complete by then): the step's GPUs from `SLURM_STEP_GPUS`/`SLURM_JOB_GPUS`
//!   (Slurm's indices, mapped to NVML through gres.conf minor numbers, never
//!   `CUDA_VISIBLE_DEVICES`), its job, user and start time. Steps without GPUs cost nothing
//!   (NVML is never touched).
//! - `slurm_spank_task_post_fork`, remote (after Slurm forked every task of the step): on a
//!   short-lived thread, sgpu.toml and slurm.conf are read, the user's name looked up and
//!   the GPUs' start counters read, so files, NSS and NVML's initialisation (the plugin's
//!   main cost, measured with bench/spank-launch) overlap the tasks' start instead of
//!   delaying it. slurmstepd forks no task while it runs, but it may fork a task epilog
//!   (`srun --task-epilog`, `TaskEpilog`) as soon as a task ends: every fork of slurmstepd
//!   first waits until no thread of the plugin is alive ([`forkguard`]), and `exit` waits
//!   for the thread too, both at most `nvml_timeout_ms` + 1 s. `init_post_opt` itself only
//!   reads SPANK items and the step's environment.
//! - `slurm_spank_exit`, remote (once per step, after its tasks ended): reads the counters
//!   again and writes a `step_usage` record (step `batch`, `extern`, `interactive` or the
//!   number) to the node spool; at the end of the batch step (the end of the job on this
//!   node), with `--gpu-report`, appends the summary ([`report`]) to the job's stderr file.
//!   Utilization comes from one `GET /status` to the node's healthd (`status_listen`,
//!   loopback only, 100 ms for the whole exchange, [`status`]); without an answer the
//!   summary still has energy and time and says utilization is unavailable.
//!   It runs as root in slurmstepd, which is why the spool write happens here and not in a
//!   task hook (tasks run as the user).
//!
//! # Configuration
//! The node's `sgpu.toml` (for `nvml_library` and `spool_dir`) is `config=` (where `%n` is
//! replaced by `SLURMD_NODENAME` of slurmstepd's own environment, else the short host
//! name), else `$SGPU_CONFIG` in slurmstepd's environment (which it inherits from slurmd),
//! else `/etc/sgpu/sgpu.toml`; slurm.conf is `$SLURM_CONF` of that same environment.
//!
//! # Trust
//! slurmstepd runs the plugin as root, and the job's environment (`spank_getenv`) is the
//! user's: a batch script can `export SLURMD_NODENAME=..`, `SLURM_CONF=..` or
//! `SLURM_JOB_ACCOUNT=..` before `srun`. So no path and no identity is taken from it: paths
//! come from plugstack.conf, slurmstepd's own environment (`std::env`, slurmd's) or compiled
//! defaults; the job id, step and uid are SPANK items; the user name is the uid's; the
//! cluster is slurm.conf's `ClusterName`; the node is sgpu.toml's `node_name`, else
//! slurmstepd's `SLURMD_NODENAME`, else the host name. `step_usage` records carry no account
//! or partition (acctd takes them from the job's `job_start`/`job_end`, written by the
//! prolog and epilog from slurmd's environment). sgpu.toml and the NVML library it names are
//! refused unless owned by root and not group/world-writable (`sgpu_nodelib::trust`).

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int};
use std::panic::AssertUnwindSafe;
use std::sync::{Mutex, MutexGuard};

pub mod args;
pub mod capture;
pub mod error;
pub mod ffi;
pub mod forkguard;
pub mod report;
pub mod status;

use args::PluginArgs;
use capture::StepStart;
use error::HookError;
use ffi::{Context, OptionSpec, Spank, sys};
use sgpu_nodelib::nodeconf::NodeLayout;

/// `plugin_name`: how Slurm names the plugin in its logs.
#[unsafe(no_mangle)]
pub static plugin_name: [u8; 5] = *b"sgpu\0";

/// `plugin_type`: must be `spank`.
#[unsafe(no_mangle)]
pub static plugin_type: [u8; 6] = *b"spank\0";

/// `plugin_version`: `SLURM_VERSION_NUMBER` of the headers the plugin was built against;
/// Slurm 22.05 refuses a plugin whose major.minor differs from its own.
#[unsafe(no_mangle)]
pub static plugin_version: u32 = sys::SLURM_VERSION_NUMBER;

/// The job-control variable `--gpu-health` travels in (`SPANK_` is prefixed by Slurm).
pub const HEALTH_CONTROL_VAR: &str = "SGPU_GPU_HEALTH";

const OPT_HEALTH: c_int = 1;
const OPT_REPORT: c_int = 2;

#[derive(Debug, Default)]
struct Options {
    health: Option<String>,
    report: bool,
}

/// What the step's hook read from Slurm in `init_post_opt` (cheap: SPANK items and the
/// step's environment); everything else is worked out later ([`prepare`]).
#[derive(Debug, Clone)]
struct StepEnv {
    job_id: u32,
    step: String,
    uid: u32,
    start_ms: u64,
    /// The step's GPUs as Slurm numbers them.
    slurm_gpus: Vec<u32>,
    /// `SLURMD_NODENAME` in slurmstepd's own environment (slurmd's, never the job's).
    env_node: Option<String>,
    /// slurm.conf, for the cluster name and gres.conf.
    slurm_conf: std::path::PathBuf,
    /// sgpu.toml to read (`None`: the default search).
    config_path: Option<std::path::PathBuf>,
    nvml_timeout: std::time::Duration,
    report: bool,
}

/// The step once prepared: its identity and GPUs (with start counters), and where its
/// record goes.
#[derive(Debug)]
struct Prepared {
    start: StepStart,
    spool_dir: std::path::PathBuf,
    nvml: sgpu_nodelib::gpu::NvmlOptions,
    /// The step's NVML session, open from the start reading to the end reading (no thread
    /// holds it in between; `None` once taken).
    session: Option<sgpu_nodelib::gpu::Session>,
    /// healthd's `/status` (`status_listen`; `None`: off).
    status_listen: Option<std::net::SocketAddr>,
    /// Things to log (GPU mapping notes).
    notes: Vec<String>,
}

#[derive(Debug)]
struct Step {
    env: StepEnv,
    /// The preparation, off the launch path ([`hook_task_post_fork`]).
    reading: Option<Reading>,
}

/// The preparation: on its thread, or already done (no thread could be started).
#[derive(Debug)]
enum Reading {
    Thread(forkguard::Pending<Result<Prepared, HookError>>),
    Done(Box<Result<Prepared, HookError>>),
}

/// The longest slurmstepd waits for the plugin's threads, at a fork or in `exit`: the NVML
/// deadline plus [`forkguard::MARGIN`] for files and NSS.
fn thread_bound(env: &StepEnv) -> std::time::Duration {
    env.nvml_timeout + forkguard::MARGIN
}

/// Reads the configuration, the cluster name, the user name and, when `counters`, the
/// step's GPUs and their start counters (one NVML session under the NVML deadline). All
/// of it waits on files, NSS or the driver, so it runs after the tasks were forked.
fn prepare(env: &StepEnv, counters: bool) -> Result<Prepared, HookError> {
    let config = sgpu_nodelib::config::Config::discover(env.config_path.as_deref())?;
    let node = config
        .node_name
        .clone()
        .or_else(|| env.env_node.clone())
        .or_else(sgpu_nodelib::nodeconf::short_hostname)
        .ok_or(HookError::NodeName)?;
    // identity from what the user cannot set: slurm.conf (slurmd's path) and the uid item;
    // slurm.conf is read once, for the cluster's name and the GPUs' mapping (gres.conf)
    let slurm = slurm_conf(&env.slurm_conf, &node);
    let cluster = slurm
        .as_ref()
        .and_then(|(c, _)| c.cluster())
        .unwrap_or_else(|| sgpu_slurm_conf::UNKNOWN_CLUSTER.into());
    let user = sgpu_spool::passwd::user_name(env.uid).unwrap_or_else(|| env.uid.to_string());
    let mut nvml = sgpu_nodelib::gpu::NvmlOptions::from_config(&config);
    nvml.timeout = nvml.timeout.min(env.nvml_timeout);
    let (session, mut snap) = capture::open_and_read(&nvml)?;
    let mut notes = Vec::new();
    let layout = match &slurm {
        Some((conf, errors)) => Some(NodeLayout::of(conf, errors, &node)),
        None => {
            let missing = sgpu_nodelib::nodeconf::LayoutError::NoSlurmConf {
                path: env.slurm_conf.clone(),
            };
            notes.push(missing.to_string());
            None
        }
    };
    let mut gpus = capture::gpus_at_start(
        &env.slurm_gpus,
        &mut snap,
        &session,
        layout.as_ref(),
        &mut notes,
    );
    if !counters {
        for g in &mut gpus {
            g.energy_mj = None;
        }
    }
    // The run this step belongs to: the prolog's note (root's state_dir, never the job's
    // environment, which is the user's); a job whose prolog ran no sgpu counts as run 0.
    let run = match sgpu_spool::job_note::read_run(&config.state_dir, env.job_id) {
        Ok(r) => r.unwrap_or(0),
        Err(e) => {
            notes.push(format!("{e}; the step is recorded as run 0"));
            0
        }
    };
    Ok(Prepared {
        start: StepStart {
            cluster,
            job_id: env.job_id,
            run,
            step: env.step.clone(),
            node,
            user,
            uid: env.uid,
            // the job's own SLURM_JOB_ACCOUNT/PARTITION can be exported by its script; the
            // job's account and partition come from job_start/job_end (slurmd's prolog
            // environment) in acctd
            account: None,
            partition: None,
            start_ms: env.start_ms,
            gpus,
        },
        spool_dir: config.spool_dir.clone(),
        nvml,
        session: Some(session),
        status_listen: config.status_listen,
        notes,
    })
}

/// slurm.conf at `path`, read for `node` (its record, not the other nodes': the cost does
/// not grow with the cluster), with the problems met reading it; `None` when it is no file
/// (as [`NodeLayout::load`] and [`sgpu_slurm_conf::cluster_name`] treat it).
fn slurm_conf(
    path: &std::path::Path,
    node: &str,
) -> Option<(sgpu_slurm_conf::SlurmConf, Vec<sgpu_slurm_conf::ConfError>)> {
    path.is_file()
        .then(|| sgpu_slurm_conf::SlurmConf::load_lenient_for_node(path, node))
}

static ARGS: Mutex<Option<PluginArgs>> = Mutex::new(None);
static OPTIONS: Mutex<Options> = Mutex::new(Options {
    health: None,
    report: false,
});
static STEP: Mutex<Option<Step>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn plugin_args() -> PluginArgs {
    lock(&ARGS).clone().unwrap_or_default()
}

/// Runs a hook body: a panic or an error is logged and the hook succeeds, so sgpu never
/// fails or kills a job step.
fn guard(hook: &str, f: impl FnOnce() -> Result<(), HookError>) -> c_int {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            ffi::log_error(&format!("sgpu: {hook}: {e}"));
            0
        }
        Err(_) => {
            ffi::log_error(&format!(
                "sgpu: {hook}: internal error (panic); step continues"
            ));
            0
        }
    }
}

/// The option callback (sbatch/srun/salloc parse the command line, slurmstepd replays it).
unsafe extern "C" fn option_cb(val: c_int, optarg: *const c_char, _remote: c_int) -> c_int {
    // SAFETY: Slurm passes NULL or the option's argument string.
    let arg = unsafe { ffi::opt_str(optarg) };
    std::panic::catch_unwind(AssertUnwindSafe(|| match val {
        OPT_HEALTH => match args::parse_health(arg.as_deref().unwrap_or("")) {
            Ok(h) => {
                lock(&OPTIONS).health = Some(h);
                0
            }
            Err(e) => {
                ffi::log_error(&format!("sgpu: {e}"));
                -1
            }
        },
        OPT_REPORT => {
            lock(&OPTIONS).report = true;
            0
        }
        _ => 0,
    }))
    .unwrap_or(-1)
}

fn hook_init(sp: &Spank, argv: Vec<String>) -> Result<(), HookError> {
    let (parsed, errors) = PluginArgs::parse(&argv);
    for e in &errors {
        ffi::log_error(&format!("sgpu: {e}; ignoring it"));
    }
    *lock(&ARGS) = Some(parsed);
    if !matches!(
        ffi::context(),
        Context::Local | Context::Remote | Context::Allocator
    ) {
        return Ok(());
    }
    sp.register_option(
        OptionSpec {
            name: c"gpu-health",
            arginfo: Some(c"strict|warn|off"),
            usage: c"How sgpu's prolog treats this job's GPUs: strict (default: a bad GPU \
                     requeues the job), warn (log, run anyway), off (no per-job checks)",
            val: OPT_HEALTH,
        },
        option_cb,
    )
    .map_err(|source| HookError::Register {
        option: "gpu-health",
        source,
    })?;
    sp.register_option(
        OptionSpec {
            name: c"gpu-report",
            arginfo: None,
            usage: c"At the end of the job, write a GPU summary (GPUs, energy, GPU-hours) to \
                     the job's stderr",
            val: OPT_REPORT,
        },
        option_cb,
    )
    .map_err(|source| HookError::Register {
        option: "gpu-report",
        source,
    })
}

fn hook_init_post_opt(sp: &Spank) -> Result<(), HookError> {
    match ffi::context() {
        Context::Remote => return step_start(sp),
        Context::Local | Context::Allocator => {}
        _ => return Ok(()),
    }
    let health = lock(&OPTIONS)
        .health
        .clone()
        .or_else(|| plugin_args().default_health);
    if let Some(h) = health {
        sp.job_control_setenv(HEALTH_CONTROL_VAR, &h)
            .map_err(|source| HookError::HealthEnv { health: h, source })?;
    }
    Ok(())
}

fn step_start(sp: &Spank) -> Result<(), HookError> {
    let args = plugin_args();
    if !args.capture {
        return Ok(());
    }
    let getenv = |k: &str| sp.getenv(k).filter(|v| !v.is_empty());
    let slurm_gpus = capture::slurm_gpus(getenv);
    if slurm_gpus.is_empty() {
        // a step without GPUs: nothing to capture, NVML is not touched
        return Ok(());
    }
    let start_ms = sgpu_spool::now_ms();
    let item = |item: &'static str| move |source| HookError::Item { item, source };
    let job_id = sp
        .get_u32(sys::spank_item_S_JOB_ID)
        .map_err(item("job id"))?;
    let step_id = sp
        .get_u32(sys::spank_item_S_JOB_STEPID)
        .map_err(item("step id"))?;
    let uid = sp.get_uid().map_err(item("uid"))?;
    // slurmstepd runs as root: what it opens comes from plugstack.conf, slurmd's own
    // environment (std::env here) or compiled defaults, never from the job's environment
    // (spank_getenv), which the user's script can set before srun
    let env_node = std::env::var("SLURMD_NODENAME")
        .ok()
        .filter(|n| sgpu_nodelib::slurmctl::valid_node_name(n));
    let config_path = args.config_path(
        env_node
            .clone()
            .or_else(sgpu_nodelib::nodeconf::short_hostname)
            .as_deref(),
        std::env::var("SGPU_CONFIG").ok(),
    );
    let slurm_conf = std::env::var_os("SLURM_CONF")
        .filter(|c| !c.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(sgpu_nodelib::nodeconf::slurm_conf_path);
    let report = lock(&OPTIONS).report || args.report_always;
    *lock(&STEP) = Some(Step {
        env: StepEnv {
            job_id,
            step: capture::step_name(step_id),
            uid,
            start_ms,
            slurm_gpus,
            env_node,
            slurm_conf,
            config_path,
            nvml_timeout: args.nvml_timeout,
            report,
        },
        reading: None,
    });
    Ok(())
}

/// After the step's tasks were forked (remote context, once per task): prepares the step
/// ([`prepare`]: configuration, names, the GPUs' start counters) on a short-lived thread,
/// so reading files, NSS and NVML's initialisation overlap the tasks' start instead of
/// delaying it. Started once per step, after every task of the step was forked (Slurm
/// forks all tasks before the first `task_post_fork`); any later fork of slurmstepd (a task
/// epilog) waits for it first ([`forkguard`]), and [`hook_exit`] waits for its result, both
/// under [`thread_bound`].
fn hook_task_post_fork(_sp: &Spank) -> Result<(), HookError> {
    if ffi::context() != Context::Remote {
        return Ok(());
    }
    let mut guard = lock(&STEP);
    let Some(step) = guard.as_mut() else {
        return Ok(());
    };
    if step.reading.is_some() {
        return Ok(());
    }
    let env = step.env.clone();
    // from now on every fork of slurmstepd first waits for this thread (and NVML's)
    forkguard::arm(thread_bound(&env));
    let spawned = forkguard::run("sgpu-start", move || prepare(&env, true));
    step.reading = Some(match spawned {
        Ok(p) => Reading::Thread(p),
        // no thread: NVML is never called where nothing bounds the wait
        Err(e) => Reading::Done(Box::new(Err(HookError::Thread(e)))),
    });
    Ok(())
}

fn hook_exit(_sp: &Spank) -> Result<(), HookError> {
    if ffi::context() != Context::Remote {
        return Ok(());
    }
    let Some(mut taken) = lock(&STEP).take() else {
        return Ok(());
    };
    let end_ms = sgpu_spool::now_ms();
    let bound = thread_bound(&taken.env);
    forkguard::arm(bound);
    // the preparation (its NVML part bounded by its own deadline, the whole by `bound`);
    // without one (no task was forked) the step is prepared now and its GPUs have no start
    // counters
    let prepared = match taken.reading.take() {
        Some(Reading::Thread(p)) => wait_for("reading the step's start", p, bound),
        Some(Reading::Done(r)) => *r,
        None => {
            let env = taken.env.clone();
            match forkguard::run("sgpu-start", move || prepare(&env, false)) {
                Ok(p) => wait_for("reading the step", p, bound),
                Err(e) => Err(HookError::Thread(e)),
            }
        }
    };
    let result = finish_step(&taken, prepared, end_ms);
    // nothing of the plugin runs on once `exit` returns (slurmstepd may fork, then unload it)
    if let Err(alive) = forkguard::settle(bound) {
        ffi::log_error(&format!(
            "sgpu: exit: job {} step {}: threads still alive after {} ms: {alive}",
            taken.env.job_id,
            taken.env.step,
            bound.as_millis()
        ));
    }
    result
}

/// The result of a plugin thread, waiting at most `bound`; past it the thread is left
/// behind (and forks stop waiting for it).
fn wait_for<T>(
    what: &'static str,
    p: forkguard::Pending<Result<T, HookError>>,
    bound: std::time::Duration,
) -> Result<T, HookError> {
    p.wait(std::time::Instant::now() + bound)
        .unwrap_or_else(|| {
            forkguard::give_up();
            Err(HookError::Stuck { what, bound })
        })
}

/// The end of a step: end counters, the `step_usage` record and the report.
fn finish_step(
    taken: &Step,
    prepared: Result<Prepared, HookError>,
    end_ms: u64,
) -> Result<(), HookError> {
    let mut step = prepared.map_err(|e| HookError::NotPrepared {
        job_id: taken.env.job_id,
        step: taken.env.step.clone(),
        source: Box::new(e),
    })?;
    for n in &step.notes {
        ffi::log_info(&format!("sgpu: job {}: {n}", step.start.job_id));
    }
    let report_wanted = taken.env.report;
    // the end counters on the session the start opened (no second initialisation), on a
    // thread of its own under the NVML deadline
    let end = match step.session.take() {
        Some(session) => {
            let indices: Vec<u32> = step.start.gpus.iter().map(|g| g.index).collect();
            match forkguard::run("sgpu-end", move || {
                Ok(capture::end_readings_and_close(session, &indices))
            }) {
                Ok(p) => wait_for("reading the end counters", p, step.nvml.timeout),
                Err(e) => Err(HookError::Thread(e)),
            }
        }
        None => Err(HookError::NoSession),
    };
    let end = match end {
        Ok(readings) => readings,
        Err(e) => {
            ffi::log_error(&format!(
                "sgpu: job {} step {}: end counters: {e}",
                step.start.job_id, step.start.step
            ));
            BTreeMap::new()
        }
    };
    let mut result = Ok(());
    match capture::step_record(&step.start, end_ms, &end) {
        Ok(rec) => {
            if let Err(source) =
                sgpu_spool::Spool::open(&step.spool_dir).and_then(|s| s.write(&rec))
            {
                result = Err(HookError::Spool {
                    job_id: step.start.job_id,
                    step: step.start.step.clone(),
                    source,
                });
            }
        }
        Err(source) => {
            result = Err(HookError::Record {
                job_id: step.start.job_id,
                source,
            })
        }
    }
    if report_wanted && step.start.step == "batch" {
        let usage = job_usage(&step);
        let text = report::summary(
            &step.start,
            end_ms,
            &end,
            usage.as_ref().map(|u| u.as_ref()),
        );
        if let Err(e) = deliver_report(step.start.uid, &text) {
            ffi::log_error(&format!(
                "sgpu: job {}: --gpu-report: {e}; the summary:\n{text}",
                step.start.job_id
            ));
        }
    }
    result
}

/// healthd's record of this job's run (`None`: healthd not reachable; `Some(None)`: it has
/// none). One loopback request under [`status::FETCH_BUDGET`].
fn job_usage(step: &Prepared) -> Option<Option<status::JobUsage>> {
    let listen = step.status_listen?;
    match status::fetch(listen, status::FETCH_BUDGET) {
        Ok(doc) => Some(
            status::find_job(
                &doc,
                &step.start.cluster,
                step.start.job_id,
                step.start.start_ms,
            )
            .cloned(),
        ),
        Err(e) => {
            ffi::log_info(&format!(
                "sgpu: job {}: --gpu-report: no utilization from healthd: {e}",
                step.start.job_id
            ));
            None
        }
    }
}

/// Appends the summary to the job's stderr file. slurmstepd of a batch step has the job's
/// stderr file as its own fd 2 (Slurm 22.05, measured on the test cluster: it is also the
/// file the batch script's fd 2 points to); it is reopened with `O_APPEND` (never writing at
/// a stale offset) and used only when it is a regular file owned by the job's user, so
/// slurmd's log or a pipe is never written to.
/// Why `--gpu-report`'s summary could not be written to the job's stderr.
#[derive(Debug, thiserror::Error)]
enum ReportError {
    #[error("cannot open the job's stderr: {0}")]
    Open(std::io::Error),
    #[error("cannot stat the job's stderr: {0}")]
    Stat(std::io::Error),
    #[error("slurmstepd's stderr is not the job's output file")]
    NotTheJobs,
    #[error("cannot write to the job's stderr: {0}")]
    Write(std::io::Error),
}

fn deliver_report(uid: u32, text: &str) -> Result<(), ReportError> {
    use std::io::Write as _;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/proc/self/fd/2")
        .map_err(ReportError::Open)?;
    let md = f.metadata().map_err(ReportError::Stat)?;
    if !md.file_type().is_file() || md.uid() != uid {
        return Err(ReportError::NotTheJobs);
    }
    f.write_all(text.as_bytes()).map_err(ReportError::Write)
}

macro_rules! hook {
    ($name:ident, $label:literal, $body:expr) => {
        #[doc = concat!("SPANK hook `", stringify!($name), "`.")]
        ///
        /// # Safety
        /// Called by Slurm with its handle and the plugstack.conf arguments.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(sp: sys::spank_t, ac: c_int, av: *mut *mut c_char) -> c_int {
            // SAFETY: Slurm's handle for this call, and its argv of ac strings.
            let (sp, argv) = unsafe { (Spank::from_raw(sp), ffi::args(ac, av)) };
            let f: fn(&Spank, Vec<String>) -> Result<(), HookError> = $body;
            guard($label, || f(&sp, argv))
        }
    };
}

hook!(slurm_spank_init, "init", |sp, argv| hook_init(sp, argv));
hook!(slurm_spank_init_post_opt, "init_post_opt", |sp, _| {
    hook_init_post_opt(sp)
});
hook!(slurm_spank_task_post_fork, "task_post_fork", |sp, _| {
    hook_task_post_fork(sp)
});
hook!(slurm_spank_exit, "exit", |sp, _| hook_exit(sp));
