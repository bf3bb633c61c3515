//! Parsers for Slurm's configuration files and hostlists, shared by every sgpu component.
