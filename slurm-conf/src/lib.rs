//! Parsers every sgpu component shares for Slurm's own files and syntax:
//! prolog/epilog learn from `slurm.conf` and `gres.conf` which GPUs a node
//! should have, healthd and the cli expand and compress hostlists for
//! drain/resume, and the cli's `conf check` reports what these parsers find
//! wrong in `slurm.conf`, `gres.conf` and `plugstack.conf`. Parsers never
//! panic; errors name the file and line and say what was expected.

#![forbid(unsafe_code)]

mod conf;
pub mod gres_conf;
pub mod hostlist;
pub mod plugstack;
pub mod slurm_conf;

pub use conf::{ConfError, ConfFile, Location, Source};
pub use gres_conf::{AutoDetect, GpuDevice, GpuIssue, GresConf, NodeGpus};
pub use hostlist::{Hostlist, HostlistError, compress, expand};
pub use plugstack::{PlugstackConf, SpankEntry};
pub use slurm_conf::{
    GresError, GresSpec, Node, Partition, SlurmConf, UNKNOWN_CLUSTER, ValueError, cluster_name,
};
