//! Shared set-up for tests that load the simulated NVML through `sgpu_nodelib::gpu`.
//!
//! `SGPU_NVML_SIM_STATE` is process-wide and the simulated library's state is global, so
//! every test takes [`Sim::start`]'s lock for its whole run.

#![allow(dead_code)]

use std::time::Duration;

use sgpu_nodelib::catalogue::{Catalogue, Profile};
use sgpu_nodelib::checks::{self, CheckContext, CheckResult, Status};
use sgpu_nodelib::gpu::{self, NvmlOptions};

#[allow(unused_imports)]
pub use nvml_sim::testing::{Sim, library, lock, set_state_env};

/// Deadline used by the tests: short, but generous for a loaded 2-core machine.
pub const TIMEOUT: Duration = Duration::from_millis(2000);

/// NVML options pointing at the simulated library.
pub fn options(timeout: Duration) -> NvmlOptions {
    NvmlOptions {
        library: Some(library().to_path_buf()),
        timeout,
        nvlink_counters: true,
    }
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
