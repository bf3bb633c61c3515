//! sgpu-prolog and sgpu-epilog: the quick health gates Slurm runs around every job.
//!
//! slurmd runs `sgpu-prolog` (Slurm `Prolog=`) before a job starts on a node: it checks the
//! node and the job's GPUs with the `quick` profile of the health-check catalogue (in
//! `sgpu-healthd`), and on a drain-worthy finding drains the node through slurmctld with a
//! precise reason and exits non-zero, so Slurm requeues the job elsewhere. On success it
//! leaves the epilog a note (start time, energy counters) and writes a job-start record to
//! the node spool. `sgpu-epilog` (Slurm `Epilog=`) writes the job-end record (energy deltas,
//! allocated GPU time) and runs the `post` profile for damage the job left (XIDs, ECC, lost
//! GPUs, leaked processes). healthd's forwarder carries spool records to `sgpu-acctd`.
//!
//! The gates never fail a healthy node because sgpu itself erred: such errors (a panic
//! included) are logged and the exit is 0, unless `fail_closed = true` is configured. An
//! unknown `--gpu-health` value is checked as `strict`, with a line in the log.

pub mod env;
pub mod gate;
pub mod handoff;
pub mod healthd_source;
pub mod log;
pub mod records;
pub mod run_in_job;
pub mod run_window;
pub mod slurm_times;

pub use env::{HealthMode, JobEnv};
pub use gate::GateReport;

/// Which gate a binary is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// `sgpu-prolog`.
    Prolog,
    /// `sgpu-epilog`.
    Epilog,
}

impl Gate {
    /// The program name, used in logs.
    pub fn name(self) -> &'static str {
        match self {
            Gate::Prolog => "sgpu-prolog",
            Gate::Epilog => "sgpu-epilog",
        }
    }
}

/// Runs a gate as slurmd would: reads the job from the environment and the configuration
/// from `$SGPU_CONFIG` (or `/etc/sgpu/sgpu.toml`), logs, and returns the exit status.
pub fn main_for(gate: Gate) -> i32 {
    let logger = log::Logger::open(gate.name());
    let job = match JobEnv::from_process() {
        Ok(j) => j,
        Err(e) => {
            // not started by slurmd (or slurmd changed): nothing to check against
            logger.error(&format!("{e}"));
            return 0;
        }
    };
    let config = match gate::load_config(None) {
        Ok(c) => c,
        Err(e) => {
            logger.error(&format!("job {}: configuration: {e}", job.job_id));
            // fail_closed cannot be read from a broken file: fail open, loudly
            return 0;
        }
    };
    for w in &job.warnings {
        logger.error(&format!("job {}: {w}", job.job_id));
    }
    // a bug in sgpu must not take slurmd's gate down with it: a panic is an sgpu error, and
    // fail_closed decides as for any other
    let run = catch_panic(|| match gate {
        Gate::Prolog => gate::prolog(&config, &job),
        Gate::Epilog => gate::epilog(&config, &job),
    });
    let report = match run {
        Ok(r) => r,
        Err(what) => {
            let code = i32::from(config.fail_closed);
            logger.error(&format!(
                "job {} on {}: internal error (panic: {what}); exit {code} (fail_closed = {}); \
                 please report this",
                job.job_id, job.node, config.fail_closed
            ));
            return code;
        }
    };
    for line in &report.log {
        if report.sgpu_error || report.drain_reason.is_some() {
            logger.error(&format!("job {}: {line}", job.job_id));
        } else {
            logger.info(&format!("job {}: {line}", job.job_id));
        }
    }
    logger.info(&format!(
        "job {} on {}: verdict {}, exit {}",
        job.job_id,
        job.node,
        report.verdict.map_or("not checked", |v| v.as_str()),
        report.exit_code
    ));
    report.exit_code
}

/// A panic caught by [`catch_panic`]: its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Panicked(pub String);

/// Runs `f`, turning a panic into `Err` with its message.
pub fn catch_panic<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, Panicked> {
    std::panic::catch_unwind(f).map_err(|panic| {
        Panicked(
            panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_errors() {
        assert_eq!(catch_panic(|| 7), Ok(7));
        let n = 3;
        assert_eq!(
            catch_panic(|| -> i32 { panic!("bad index {n}") }),
            Err(Panicked("bad index 3".to_string()))
        );
        assert_eq!(
            catch_panic(|| -> i32 { panic!("static") }),
            Err(Panicked("static".to_string()))
        );
    }
}
