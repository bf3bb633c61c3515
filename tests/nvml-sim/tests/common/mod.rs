//! Shared set-up for the tests that load the simulated library through `nvml-wrapper`.
//!
//! `SGPU_NVML_SIM_STATE` is process-wide and the library's state is global (one load per
//! process), so every test takes [`Sim::start`]'s lock for its whole run.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use nvml_sim::{STATE_ENV, State};
use nvml_wrapper::Nvml;
use tempfile::TempDir;

static LOCK: Mutex<()> = Mutex::new(());

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

/// One test's simulated node: a state file in a temporary directory, named by the
/// environment variable, under the test-binary-wide lock.
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

    /// Initialises NVML on the simulated library, as product code does.
    pub fn nvml(&self) -> Nvml {
        open().unwrap_or_else(|e| panic!("Nvml init on {}: {e}", library().display()))
    }

    /// Applies a change to the state file (keeping energy counters continuous).
    pub fn update(&self, change: impl FnOnce(&mut State)) -> State {
        State::update(&self.state_path, change).expect("update state")
    }

    pub fn load(&self) -> State {
        State::load(&self.state_path).expect("load state")
    }
}

/// `Nvml::builder().lib_path(..).init()` on the installed library.
pub fn open() -> Result<Nvml, nvml_wrapper::error::NvmlError> {
    Nvml::builder().lib_path(library().as_os_str()).init()
}

/// Sets or clears the state-file variable. Callers hold the lock.
pub fn set_state_env(path: Option<&Path>) {
    // SAFETY: the tests of this binary that touch the environment or NVML are serialised by
    // LOCK, and nothing else in the process reads the environment concurrently.
    unsafe {
        match path {
            Some(p) => std::env::set_var(STATE_ENV, p),
            None => std::env::remove_var(STATE_ENV),
        }
    }
}

/// Takes the lock without a state (for tests of init failures).
pub fn lock() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}
