//! Shared set-up for tests that load the simulated NVML through `sgpu_healthd::gpu`.
//!
//! `SGPU_NVML_SIM_STATE` is process-wide and the simulated library's state is global, so
//! every test takes [`Sim::start`]'s lock for its whole run.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use nvml_sim::{STATE_ENV, State};
use sgpu_healthd::catalogue::{Catalogue, Profile};
use sgpu_healthd::checks::{self, CheckContext, CheckResult, Status};
use sgpu_healthd::gpu::{self, NvmlOptions};
use tempfile::TempDir;

static LOCK: Mutex<()> = Mutex::new(());

/// Deadline used by the tests: short, but generous for a loaded 2-core machine.
pub const TIMEOUT: Duration = Duration::from_millis(2000);

/// The simulated library, installed once per test binary as `libnvidia-ml.so.1`.
pub fn library() -> &'static Path {
    static LIB: OnceLock<(TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = LIB.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir for the library");
        let path = nvml_sim::install_library(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        (dir, path)
    });
    path
}

/// NVML options pointing at the simulated library.
pub fn options(timeout: Duration) -> NvmlOptions {
    NvmlOptions {
        library: Some(library().to_path_buf()),
        timeout,
    }
}

/// One test's simulated node, under the binary-wide lock.
pub struct Sim {
    pub dir: TempDir,
    pub state_path: PathBuf,
    _lock: MutexGuard<'static, ()>,
}

impl Sim {
    /// Writes `state` and points `SGPU_NVML_SIM_STATE` at it.
    pub fn start(state: &State) -> Sim {
        let lock = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().expect("tempdir");
        let state_path = dir.path().join("nvml-state.toml");
        state.save(&state_path).expect("save state");
        set_state_env(Some(&state_path));
        Sim {
            dir,
            state_path,
            _lock: lock,
        }
    }

    /// Rewrites the state file (energy stays continuous).
    pub fn update(&self, change: impl FnOnce(&mut State)) -> State {
        State::update(&self.state_path, change).expect("update state")
    }
}

/// Sets or clears the state-file variable. Callers hold the lock.
pub fn set_state_env(path: Option<&Path>) {
    // SAFETY: tests of this binary that touch the environment or NVML are serialised by LOCK.
    unsafe {
        match path {
            Some(p) => std::env::set_var(STATE_ENV, p),
            None => std::env::remove_var(STATE_ENV),
        }
    }
}

/// Takes the lock without a state (for init-failure tests).
pub fn lock() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// One collect-and-evaluate run with the default catalogue.
pub fn run(ctx: &CheckContext) -> Vec<CheckResult> {
    let cat = Catalogue::default();
    match gpu::collect(&options(TIMEOUT), true) {
        Ok(c) => checks::evaluate(&c.snapshot, ctx, &cat),
        Err(f) => checks::evaluate_failure(&f, ctx, &cat),
    }
}

/// A context for `profile` expecting `n` GPUs.
pub fn context(profile: Profile, n: u32) -> CheckContext {
    let mut ctx = CheckContext::new(profile);
    ctx.expected_gpu_count = Some(n);
    ctx.nvml_timeout = TIMEOUT;
    ctx
}

/// The failing results.
pub fn failures(results: &[CheckResult]) -> Vec<&CheckResult> {
    results
        .iter()
        .filter(|r| r.status == Status::Fail)
        .collect()
}
