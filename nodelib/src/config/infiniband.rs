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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/sgpu/sgpu.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_table_sets_root_ports_and_rate() {
        let c = parse(
            "[infiniband]\nsysfs_root = \"/srv/ib\"\nports = [\"mlx5_0/1\", \"mlx5_1/1\"]\n\
             rate_gbps = 400\n",
        )
        .unwrap();
        assert_eq!(c.infiniband.sysfs_root, Path::new("/srv/ib"));
        assert_eq!(c.infiniband.ports, ["mlx5_0/1", "mlx5_1/1"]);
        assert_eq!(c.infiniband.rate_gbps, Some(400.0));
        let d = parse("").unwrap();
        assert_eq!(d.infiniband, crate::infiniband::IbSettings::default());
        assert_eq!(
            d.infiniband.sysfs_root,
            Path::new(crate::infiniband::DEFAULT_ROOT)
        );
    }

    #[test]
    fn bad_values_name_file_line_and_key() {
        for (text, want) in [
            (
                "[infiniband]\nports = [\"mlx5_0\"]\n",
                "/etc/sgpu/sgpu.toml:2: infiniband.ports: \"mlx5_0\" is not <device>/<port>",
            ),
            (
                "[infiniband]\nports = [\"mlx5_0/1\",\n \"mlx5_0/1\"]\n",
                "/etc/sgpu/sgpu.toml:3: infiniband.ports: \"mlx5_0/1\" is listed twice",
            ),
            (
                "\n[infiniband]\nrate_gbps = 0\n",
                "/etc/sgpu/sgpu.toml:3: infiniband.rate_gbps: 0 is out of range",
            ),
            (
                "[infiniband]\nsysfs_root = \"sys/class\"\n",
                "/etc/sgpu/sgpu.toml:2: infiniband.sysfs_root: sys/class is not an absolute",
            ),
            (
                "[infiniband]\nport = [\"mlx5_0/1\"]\n",
                "unknown field `port`",
            ),
            (
                "[checks.\"ib.errors\"]\ndrain_per_minute = 3\n",
                "unknown key for this check; valid keys: severity, enabled, enforce, \
                 warn_per_hour, drain_per_hour",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
