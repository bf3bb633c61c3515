//! The `[infiniband]` table: which InfiniBand/RoCE ports the node must have up, and where
//! sysfs lists them.
//!
//! ```toml
//! [infiniband]
//! sysfs_root = "/sys/class/infiniband"   # default; tests point it at a tree of their own
//! ports = ["mlx5_0/1", "mlx5_1/1"]       # <device>/<port>, each must be ACTIVE (LinkUp)
//! rate_gbps = 400                        # the least rate of every expected port, Gb/s
//! ```
//!
//! Without `ports` the node's baseline decides (`crate::infiniband`): the ports that were up
//! when the node first ran the check with a port up. Thresholds and severities of the
//! checks themselves are `[checks."ib.port"]` and `[checks."ib.errors"]`.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::accounting::Invalid;
use crate::infiniband::{IbSettings, valid_port_name};

/// The table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInfiniband {
    sysfs_root: Option<Spanned<PathBuf>>,
    #[serde(default)]
    ports: Vec<Spanned<String>>,
    rate_gbps: Option<Spanned<f64>>,
}

impl RawInfiniband {
    /// Checks every value, naming the key of the first bad one.
    pub(super) fn validate(self) -> Result<IbSettings, Invalid> {
        let mut s = IbSettings::default();
        if let Some(root) = self.sysfs_root {
            let span = root.span();
            let root = root.into_inner();
            if !root.is_absolute() {
                return Err((
                    span.start,
                    "infiniband.sysfs_root".into(),
                    format!("{} is not an absolute path", root.display()),
                ));
            }
            s.sysfs_root = root;
        }
        for p in self.ports {
            let span = p.span();
            let name = p.into_inner();
            if !valid_port_name(&name) {
                return Err((
                    span.start,
                    "infiniband.ports".into(),
                    format!("{name:?} is not <device>/<port> (e.g. \"mlx5_0/1\")"),
                ));
            }
            if s.ports.contains(&name) {
                return Err((
                    span.start,
                    "infiniband.ports".into(),
                    format!("{name:?} is listed twice"),
                ));
            }
            s.ports.push(name);
        }
        if let Some(r) = self.rate_gbps {
            let v = *r.get_ref();
            if !(v.is_finite() && v > 0.0 && v <= 10_000.0) {
                return Err((
                    r.span().start,
                    "infiniband.rate_gbps".into(),
                    format!("{v} is out of range (above 0, at most 10000 Gb/s)"),
                ));
            }
            s.rate_gbps = Some(v);
        }
        Ok(s)
    }
}
