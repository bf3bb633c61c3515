//! sgpu-healthd: the per-node host daemon.
//!
//! It runs on every GPU node, built on the node library (`sgpu_nodelib`: NVML access, the
//! check catalogue and evaluation, XID store, config, Slurm control calls, breaker) that the
//! prolog/epilog gates, the SPANK plugin and `sgpu check` share. The daemon ([`daemon`]:
//! periodic `full` checks, XID watch, drain/resume decisions in [`policy`], per-job sampling
//! in [`sampler`]/[`usage`]/[`store`], `/status` and Prometheus `/metrics` in
//! [`status`]/[`metrics`]/[`http`], the spool forwarder to acctd in [`forward`], the node
//! history forwarder in [`event_forward`], the spool probe in [`spool_probe`], active checks
//! on idle nodes through Slurm in [`active`]) is this crate.

pub mod active;
pub mod daemon;
pub mod event_forward;
pub mod forward;
pub mod gate_server;
pub mod http;
pub mod idle;
pub mod idle_act;
pub mod metrics;
pub mod policy;
pub mod sampler;
pub mod spool_probe;
pub mod status;
pub mod store;
pub mod usage;
