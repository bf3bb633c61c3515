//! spank_sgpu.so: the SPANK plugin slurmstepd loads from `plugstack.conf`.
//!
//! It registers user options on `sbatch`/`srun` (such as `--gpu-health=strict|warn|off`),
//! captures per-job and per-step GPU usage inside slurmstepd and prints an end-of-job GPU
//! efficiency summary. It is built with bindgen against the installed `slurm/spank.h` so its
//! `plugin_version` matches the running Slurm, and it must never crash or hang slurmstepd.
