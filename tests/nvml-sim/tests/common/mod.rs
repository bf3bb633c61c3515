//! Shared set-up for the tests that load the simulated library through `nvml-wrapper`.
//!
//! `SGPU_NVML_SIM_STATE` is process-wide and the library's state is global (one load per
//! process), so every test takes [`Sim::start`]'s lock for its whole run.

#![allow(dead_code)]

use nvml_wrapper::Nvml;

pub use nvml_sim::testing::{Sim, library, lock, set_state_env};

/// NVML on a test's simulated node.
pub trait SimNvml {
    /// Initialises NVML on the simulated library, as product code does.
    fn nvml(&self) -> Nvml;
}

impl SimNvml for Sim {
    fn nvml(&self) -> Nvml {
        open().unwrap_or_else(|e| panic!("Nvml init on {}: {e}", library().display()))
    }
}

/// `Nvml::builder().lib_path(..).init()` on the installed library.
pub fn open() -> Result<Nvml, nvml_wrapper::error::NvmlError> {
    Nvml::builder().lib_path(library().as_os_str()).init()
}
