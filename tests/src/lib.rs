//! Support code for sgpu's cross-component tests.
//!
//! The tests in `tests/tests/` drive real parts: the Slurm test cluster that
//! `tests/cluster/up` starts (slurmctld, one `slurmd -N nodeX` per node, MUNGE) and the
//! simulated NVML library (`tests/nvml-sim`). This crate holds what those tests share:
//! bringing the cluster up, locking it against parallel tests, submitting jobs and reading
//! `scontrol` records.

pub mod acctd;
pub mod cluster;
pub mod cluster_acctd;
pub mod sgpu;

pub use cluster::{Cluster, ClusterError, Record, node_state};
