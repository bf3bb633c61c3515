//! Support code for sgpu's cross-component tests: the real Slurm test cluster and the
//! simulated NVML library. The tests themselves live in `tests/tests/`.
