//! The `sgpu` command: the admin and user front end of the suite.
//!
//! Subcommands (`drain`, `resume`, `status`, `check`, `report`, `conf check`) are thin layers
//! over the library crates: hostlists and configuration come from `sgpu-slurm-conf`, checks
//! from `sgpu-healthd`, reports from `sgpu-accounting`.
