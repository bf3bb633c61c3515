//! Support code for sgpu's cross-component tests.
//!
//! The tests in `tests/tests/` drive real parts: the Slurm test cluster that
//! `tests/cluster/up` starts (slurmctld, one `slurmd -N nodeX` per node, MUNGE) and the
//! simulated NVML library (`tests/nvml-sim`). This crate holds what those tests share:
//! bringing the cluster up, locking it against parallel tests, submitting jobs and reading
//! `scontrol` records.

#![forbid(unsafe_code)]

pub mod acctd;
pub mod cluster;
pub mod cluster_acctd;
pub mod sgpu;

pub use cluster::{Cluster, ClusterError, Record, node_state};

/// Calls `f` every 20 ms until it returns `Some`, for at most `timeout`; the error names
/// `what` was waited for.
pub fn poll<T>(
    timeout: std::time::Duration,
    what: &str,
    mut f: impl FnMut() -> Result<Option<T>, Box<dyn std::error::Error>>,
) -> Result<T, Box<dyn std::error::Error>> {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}").into());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
