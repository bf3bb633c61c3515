//! sgpu-healthd: the per-node host daemon.
//!
//! It runs on every GPU node. It owns NVML access (through `nvml-wrapper`, with a
//! configurable library path), runs the periodic `full` health checks and watches NVML XID
//! events, drains the node through slurmctld when a check fails (and resumes only nodes it
//! drained itself), samples per-GPU usage mapped to jobs, serves Prometheus metrics and
//! forwards usage records from the node spool to `sgpu-acctd`. Configuration files are read
//! with `sgpu-slurm-conf`. This crate is filled in by the health-check and daemon issues.
