//! sgpu-prolog and sgpu-epilog: the quick health gates Slurm runs around every job.
//!
//! slurmd runs `sgpu-prolog` (Slurm `Prolog=`) before a job starts on a node: it checks the
//! job's GPUs with the `quick` profile of the health-check catalogue, drains the node and
//! fails (so Slurm requeues the job) when a GPU is bad, and writes a job-start record to the
//! node spool. `sgpu-epilog` (Slurm `Epilog=`) writes the job-end record and looks for damage
//! the job left. Records flow from the spool to `sgpu-acctd` via healthd's forwarder.
