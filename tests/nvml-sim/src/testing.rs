//! Test harness for processes that load the simulated library in-process.
//!
//! `SGPU_NVML_SIM_STATE` is process-wide and the library's state is global (one load per
//! process), so every test of a binary that touches them takes [`Sim::start`]'s (or
//! [`lock`]'s) lock for its whole run. Test-only code: it panics on set-up failures.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use tempfile::TempDir;

use crate::{STATE_ENV, State};

static LOCK: Mutex<()> = Mutex::new(());

/// The simulated library, installed once per process as `libnvidia-ml.so.1`.
pub fn library() -> &'static Path {
    static LIB: OnceLock<(TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = LIB.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir for the library: {e}"));
        let path = crate::install_library(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        (dir, path)
    });
    path
}

/// One test's simulated node: a state file in a temporary directory, named by the
/// environment variable, under the process-wide lock.
pub struct Sim {
    /// The temporary directory (state file, and anything else the test puts there).
    pub dir: TempDir,
    /// The state file.
    pub state_path: PathBuf,
    _lock: MutexGuard<'static, ()>,
}

impl Sim {
    /// Writes `state` and points `SGPU_NVML_SIM_STATE` at it.
    pub fn start(state: &State) -> Sim {
        let lock = lock();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let state_path = dir.path().join("nvml-state.toml");
        state
            .save(&state_path)
            .unwrap_or_else(|e| panic!("save state: {e}"));
        set_state_env(Some(&state_path));
        Sim {
            dir,
            state_path,
            _lock: lock,
        }
    }

    /// Applies a change to the state file (keeping energy counters continuous).
    pub fn update(&self, change: impl FnOnce(&mut State)) -> State {
        State::update(&self.state_path, change).unwrap_or_else(|e| panic!("update state: {e}"))
    }

    /// The state file as it is now.
    pub fn load(&self) -> State {
        State::load(&self.state_path).unwrap_or_else(|e| panic!("load state: {e}"))
    }
}

/// Sets or clears the state-file variable. Callers hold the lock.
pub fn set_state_env(path: Option<&Path>) {
    // SAFETY: every test of the process that touches the environment or NVML is serialised
    // by LOCK, and nothing else in the process reads the environment concurrently.
    unsafe {
        match path {
            Some(p) => std::env::set_var(STATE_ENV, p),
            None => std::env::remove_var(STATE_ENV),
        }
    }
}

/// Takes the lock without a state (for tests of init failures, or that set up their own).
pub fn lock() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}
