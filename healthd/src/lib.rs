//! sgpu-healthd: GPU health checks, and the per-node host daemon built on them.
//!
//! It runs on every GPU node. It owns NVML access ([`gpu`], through `nvml-wrapper` with a
//! configurable library path, every call under a watchdog deadline), holds the check
//! catalogue ([`catalogue`]: checks are data, tunable in `sgpu.toml` via [`config`]), the
//! XID classification and the node's XID record ([`xid`]), and evaluates checks into
//! results, drain reasons and a verdict ([`checks`]). The prolog/epilog gates and
//! `sgpu check` call this library; the daemon ([`daemon`]: periodic `full` checks, XID
//! watch, drain/resume, per-job sampling in [`sampler`]/[`usage`]/[`store`], `/status` and
//! Prometheus `/metrics` in [`status`]/[`metrics`]/[`http`], the spool forwarder to acctd in
//! [`forward`]) is built on it.
//!
//! A run, as the prolog does it:
//!
//! ```no_run
//! use sgpu_healthd::{checks, config::Config, gpu, catalogue::Profile};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::discover(None)?;
//! let catalogue = config.catalogue();
//! let mut ctx = checks::CheckContext::new(Profile::Quick);
//! ctx.nvml_timeout = config.nvml_timeout;
//! ctx.pinned_driver_version = config.pinned_driver_version.clone();
//! let results = match gpu::collect(&gpu::NvmlOptions::from_config(&config), true) {
//!     Ok(c) => checks::evaluate(&c.snapshot, &ctx, &catalogue),
//!     Err(failure) => checks::evaluate_failure(&failure, &ctx, &catalogue),
//! };
//! if let Some(reason) = checks::drain_reason(&results) {
//!     eprintln!("would drain: {reason}");
//! }
//! std::process::exit(checks::Verdict::of(&results).exit_code());
//! # }
//! ```

pub mod breaker;
pub mod catalogue;
pub mod checks;
pub mod config;
pub mod daemon;
pub mod forward;
pub mod gpu;
pub mod history;
pub mod http;
pub mod metrics;
pub mod node_events;
pub mod nodeconf;
pub mod policy;
pub mod sampler;
pub mod slurmctl;
pub mod spool_probe;
pub mod status;
pub mod store;
pub mod trust;
pub mod usage;
pub mod xid;
