//! Shared set-up for the daemon's tests that load the simulated NVML.
//!
//! `SGPU_NVML_SIM_STATE` is process-wide and the simulated library's state is global, so
//! every test takes [`Sim::start`]'s lock for its whole run.

use std::time::Duration;

pub use nvml_sim::testing::{Sim, library};

/// Deadline used by the tests: short, but generous for a loaded 2-core machine.
pub const TIMEOUT: Duration = Duration::from_millis(2000);
