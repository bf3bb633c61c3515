//! sgpu-nodelib: what every sgpu process on a GPU node shares.
//!
//! NVML access ([`gpu`], through `nvml-wrapper` with a configurable library path, every call
//! under a watchdog deadline), the check catalogue ([`catalogue`]: checks are data, tunable in
//! `sgpu.toml` via [`config`]), the XID classification and the node's XID record ([`xid`]),
//! the per-node GPU history ([`history`]), MIG slices ([`mig`]), NVLink links ([`nvlink`]) and InfiniBand/RoCE
//! ports ([`infiniband`]), check evaluation into results, drain reasons and a verdict
//! ([`checks`]), the node's layout ([`nodeconf`]), the Slurm control calls
//! ([`slurmctl`]) and the breaker every drain goes through ([`breaker`]), file ownership rules
//! ([`trust`]), atomic state-file writes ([`state_file`]), the active checks' contract and
//! runner ([`active`]) and the node history events ([`node_events`]). The prolog/epilog gates, the
//! SPANK plugin, `sgpu` and the daemon (`sgpu-healthd`) call this library.
//!
//! It runs inside slurmstepd (the SPANK plugin) and the prolog, so it links no async
//! runtime, HTTP server or client, embedded database or metrics library
//! (`tests/tests/architecture.rs` fails when one appears). [`config`] parses the whole
//! `sgpu.toml`, the daemon's settings included, so one file has one parser.
//!
//! A run, as the prolog does it:
//!
//! ```no_run
//! use sgpu_nodelib::{checks, config::Config, gpu, catalogue::Profile};
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

pub mod active;
pub mod breaker;
pub mod catalogue;
pub mod checks;
pub mod config;
pub mod gpu;
pub mod history;
pub mod infiniband;
pub mod mig;
pub mod node_events;
pub mod nodeconf;
pub mod nvlink;
pub mod slurmctl;
pub mod state_file;
pub mod trust;
pub mod xid;
