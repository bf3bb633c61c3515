//! The check catalogue: which checks exist, what they look at and what a failure costs.
//!
//! Checks are data. [`CATALOGUE`] is the built-in table; [`Catalogue::effective`] merges it
//! with the admin's `[checks."<id>"]` overrides from `sgpu.toml` (already validated by
//! [`crate::config`]) into the table the evaluator uses.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// What a failing check does to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The check is switched off (an admin override); it is not evaluated.
    Off,
    /// Reported only.
    Info,
    /// Reported as a warning; the node stays in service.
    Warn,
    /// The node is drained (and a prolog fails so Slurm requeues the job).
    Drain,
}

impl Severity {
    /// The name used in `sgpu.toml` and in output (`drain`, `warn`, `info`, `off`).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Off => "off",
            Severity::Info => "info",
            Severity::Warn => "warn",
            Severity::Drain => "drain",
        }
    }

    /// Parses a name as written in `sgpu.toml`.
    pub fn parse(s: &str) -> Option<Severity> {
        match s {
            "off" => Some(Severity::Off),
            "info" => Some(Severity::Info),
            "warn" => Some(Severity::Warn),
            "drain" => Some(Severity::Drain),
            _ => None,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which run a check belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// The prolog gate: cheap checks, run before every job.
    Quick,
    /// The daemon's periodic run and `sgpu check`: everything.
    Full,
    /// The epilog: damage a job may have left (XIDs, ECC, lost GPUs, leaked processes).
    Post,
}

impl Profile {
    /// The profile's name (`quick`, `full`).
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Quick => "quick",
            Profile::Full => "full",
            Profile::Post => "post",
        }
    }
}

/// A numeric threshold a check compares against, tunable in `sgpu.toml`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThresholdSpec {
    /// The key in `[checks."<id>"]`.
    pub name: &'static str,
    /// The built-in value.
    pub default: f64,
    /// What it means, with its unit.
    pub description: &'static str,
}

/// One check, as built in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckSpec {
    /// Stable identifier, e.g. `gpu.xid`; the key admins use in `sgpu.toml`.
    pub id: &'static str,
    /// What the check looks at, one sentence.
    pub description: &'static str,
    /// Severity of a failure unless overridden.
    pub default_severity: Severity,
    /// The profiles that run it.
    pub profiles: &'static [Profile],
    /// The failure message; `{observed}` and `{threshold}` are substituted.
    pub reason_template: &'static str,
    /// Tunable thresholds and their defaults.
    pub thresholds: &'static [ThresholdSpec],
    /// Whether the condition can clear by itself (so automation may resume a node it drained
    /// for it once the check passes again); false means an admin must act (reset, RMA).
    pub auto_recoverable: bool,
}

const BOTH: &[Profile] = &[Profile::Quick, Profile::Full];
const FULL: &[Profile] = &[Profile::Full];
const QUICK_POST: &[Profile] = &[Profile::Quick, Profile::Post];
const ALL: &[Profile] = &[Profile::Quick, Profile::Full, Profile::Post];

/// Check id: NVML initialises (library present, driver loaded).
pub const NVML_INIT: &str = "nvml.init";
/// Check id: NVML answers within the deadline.
pub const NVML_RESPONSIVE: &str = "nvml.responsive";
/// Check id: GPU count matches gres.conf.
pub const GPU_COUNT: &str = "gpu.count";
/// Check id: the job's GPUs exist.
pub const GPU_JOB_GPUS_EXIST: &str = "gpu.job_gpus_exist";
/// Check id: GPU lost / fallen off the bus.
pub const GPU_LOST: &str = "gpu.lost";
/// Check id: XID errors since the last check.
pub const GPU_XID: &str = "gpu.xid";
/// Check id: volatile uncorrectable ECC errors.
pub const GPU_ECC_UNCORRECTABLE: &str = "gpu.ecc_uncorrectable";
/// Check id: retired pages pending.
pub const GPU_RETIRED_PAGES_PENDING: &str = "gpu.retired_pages_pending";
/// Check id: row remapping pending.
pub const GPU_ROW_REMAP_PENDING: &str = "gpu.row_remap_pending";
/// Check id: row remapping failure.
pub const GPU_ROW_REMAP_FAILURE: &str = "gpu.row_remap_failure";
/// Check id: temperature near the slowdown threshold.
pub const GPU_TEMPERATURE: &str = "gpu.temperature";
/// Check id: clocks throttled by hardware.
pub const GPU_THROTTLE: &str = "gpu.throttle";
/// Check id: PCIe link below the device's maximum.
pub const GPU_PCIE_LINK: &str = "gpu.pcie_link";
/// Check id: processes or memory left on a GPU at job start.
pub const GPU_LEFTOVER_PROCESSES: &str = "gpu.leftover_processes";
/// Check id: driver version differs from the pinned one.
pub const DRIVER_VERSION: &str = "driver.version";
/// Check id: persistence mode off.
pub const GPU_PERSISTENCE_MODE: &str = "gpu.persistence_mode";
/// Check id: corrected ECC errors per hour.
pub const GPU_ECC_CORRECTABLE_RATE: &str = "gpu.ecc_correctable_rate";
/// Check id: pages retired (pre-Ampere).
pub const GPU_RETIRED_PAGES: &str = "gpu.retired_pages";
/// Check id: PCIe replays per minute.
pub const GPU_PCIE_REPLAY_RATE: &str = "gpu.pcie_replay_rate";
/// Check id: NVSwitch fabric registration.
pub const GPU_FABRIC: &str = "gpu.fabric";
/// Check id: NVLink links active.
pub const GPU_NVLINK: &str = "gpu.nvlink";
/// Check id: NVLink error counters by rate.
pub const GPU_NVLINK_ERRORS: &str = "gpu.nvlink_errors";
/// Check id: InfiniBand/RoCE ports up at their rate.
pub const IB_PORT: &str = "ib.port";
/// Check id: InfiniBand/RoCE port error counters by rate.
pub const IB_ERRORS: &str = "ib.errors";

/// The built-in catalogue, in evaluation (and display) order.
pub static CATALOGUE: &[CheckSpec] = &[
    CheckSpec {
        id: NVML_INIT,
        description: "NVML initialises: the library loads and the NVIDIA driver is present",
        default_severity: Severity::Drain,
        profiles: ALL,
        reason_template: "nvml init failed: {observed}",
        thresholds: &[],
        auto_recoverable: false,
    },
    CheckSpec {
        id: NVML_RESPONSIVE,
        description: "NVML answers every query within nvml_timeout_ms (a hung driver call fails)",
        default_severity: Severity::Drain,
        profiles: ALL,
        reason_template: "nvml {observed}",
        thresholds: &[],
        auto_recoverable: false,
    },
    CheckSpec {
        id: GPU_COUNT,
        description: "the number of GPUs NVML sees equals the count gres.conf declares for the node",
        default_severity: Severity::Drain,
        profiles: ALL,
        reason_template: "{observed} GPUs visible, gres.conf expects {threshold}",
        thresholds: &[],
        auto_recoverable: false,
    },
    CheckSpec {
        id: GPU_JOB_GPUS_EXIST,
        description: "every GPU index allocated to the job exists on the node",
        default_severity: Severity::Drain,
        profiles: BOTH,
        reason_template: "job GPU {observed} not present ({threshold} GPUs visible)",
        thresholds: &[],
        auto_recoverable: false,
    },
    CheckSpec {
        id: GPU_LOST,
        description: "the GPU answers NVML (not lost / fallen off the bus)",
        default_severity: Severity::Drain,
        profiles: ALL,
        reason_template: "GPU lost ({observed})",
        thresholds: &[],
        auto_recoverable: false,
    },
    CheckSpec {
        id: GPU_XID,
        description: "XID errors since the last check, classified from NVIDIA's XID catalogue \
                      (hardware: fail at this severity; driver/unknown: warn; application: info)",
        default_severity: Severity::Drain,
        profiles: ALL,
        reason_template: "{observed}",
        thresholds: &[],
        auto_recoverable: false,
    },
    CheckSpec {
        id: GPU_ECC_UNCORRECTABLE,
        description: "volatile (since driver load) uncorrectable ECC error count",
        default_severity: Severity::Drain,
        profiles: ALL,
        reason_template: "{observed} uncorrectable ECC errors (max {threshold})",
        thresholds: &[ThresholdSpec {
            name: "max_errors",
            default: 0.0,
            description: "highest tolerated volatile uncorrectable ECC count",
        }],
        auto_recoverable: false,
    },
    CheckSpec {
        id: GPU_RETIRED_PAGES_PENDING,
        description: "pages waiting for a driver reload to be retired (pre-Ampere GPUs): \
                      the GPU needs a reset; draining lets the running job finish first",
        default_severity: Severity::Drain,
        profiles: ALL,
        reason_template: "page retirement pending: reset GPU after the running job",
        thresholds: &[],
        auto_recoverable: false,
    },
    CheckSpec {
        id: GPU_ROW_REMAP_PENDING,
        description: "a memory row remapping waits for a GPU reset (Ampere and newer): \
                      draining lets the running job finish, then reset the GPU",
        default_severity: Severity::Drain,
        profiles: ALL,
        reason_template: "row remap pending: reset GPU after the running job",
        thresholds: &[],
        auto_recoverable: false,
    },
    CheckSpec {
        id: GPU_ROW_REMAP_FAILURE,
        description: "a memory row remapping failed (no spare rows): the board needs service",
        default_severity: Severity::Drain,
        profiles: ALL,
        reason_template: "row remap failure, RMA",
        thresholds: &[],
        auto_recoverable: false,
    },
    CheckSpec {
        id: GPU_TEMPERATURE,
        description: "GPU temperature against the board's slowdown threshold minus a margin",
        default_severity: Severity::Drain,
        profiles: BOTH,
        reason_template: "temperature {observed} >= {threshold}",
        thresholds: &[ThresholdSpec {
            name: "margin_c",
            default: 0.0,
            description: "fail this many degrees C below the slowdown threshold",
        }],
        auto_recoverable: true,
    },
    CheckSpec {
        id: GPU_THROTTLE,
        description: "clocks throttled by hw_slowdown, hw_thermal_slowdown or hw_power_brake: \
                      a warning when seen, this severity once seen on drain_after_checks \
                      consecutive checks (sw_power_cap and gpu_idle are normal)",
        default_severity: Severity::Drain,
        profiles: BOTH,
        reason_template: "clocks throttled: {observed}",
        thresholds: &[ThresholdSpec {
            name: "drain_after_checks",
            default: 3.0,
            description: "consecutive checks that must see a HW throttle reason before it \
                          fails at the check's severity (before that: warn)",
        }],
        auto_recoverable: true,
    },
    CheckSpec {
        id: GPU_PCIE_LINK,
        description: "PCIe link, while the GPU is busy (idle boards lower it to save power): \
                      the generation against the board's maximum, the width against the \
                      widest link this GPU has reported on this node; or, always, the width \
                      against expected_width when set",
        default_severity: Severity::Drain,
        profiles: BOTH,
        reason_template: "PCIe link {observed}, expected {threshold}",
        thresholds: &[
            ThresholdSpec {
                name: "max_gen_deficit",
                default: 0.0,
                description: "tolerated generations below the maximum while busy",
            },
            ThresholdSpec {
                name: "max_width_deficit",
                default: 0.0,
                description: "tolerated lanes below the expected width",
            },
            ThresholdSpec {
                name: "busy_util_pct",
                default: 50.0,
                description: "GPU utilization (percent) from which the generation is judged",
            },
            ThresholdSpec {
                name: "expected_width",
                default: 0.0,
                description: "the link width every GPU should have (0: the widest each GPU \
                              has reported on this node)",
            },
        ],
        auto_recoverable: false,
    },
    CheckSpec {
        id: GPU_LEFTOVER_PROCESSES,
        description: "compute processes or used memory left on the job's GPUs at job start \
                      (quick only: on a busy node, running jobs' processes are expected)",
        default_severity: Severity::Drain,
        profiles: QUICK_POST,
        reason_template: "leftover {observed} (max {threshold})",
        thresholds: &[
            ThresholdSpec {
                name: "max_processes",
                default: 0.0,
                description: "highest tolerated number of compute processes",
            },
            ThresholdSpec {
                name: "max_memory_used_mib",
                default: 1024.0,
                description: "highest tolerated used framebuffer memory, MiB",
            },
        ],
        auto_recoverable: true,
    },
    CheckSpec {
        id: DRIVER_VERSION,
        description: "the driver version equals pinned_driver_version (when pinned)",
        default_severity: Severity::Drain,
        profiles: BOTH,
        reason_template: "driver {observed}, pinned {threshold}",
        thresholds: &[],
        auto_recoverable: false,
    },
    CheckSpec {
        id: GPU_PERSISTENCE_MODE,
        description: "persistence mode is on (off makes every NVML init slow; a setting, \
                      not a fault: healthy A10G, T4 and V100 captures run with it off)",
        default_severity: Severity::Info,
        profiles: FULL,
        reason_template: "persistence mode off",
        thresholds: &[],
        auto_recoverable: true,
    },
    CheckSpec {
        id: GPU_ECC_CORRECTABLE_RATE,
        description: "corrected ECC errors per hour since an earlier check (a lifetime count \
                      says nothing: healthy boards accumulate thousands)",
        default_severity: Severity::Warn,
        profiles: FULL,
        reason_template: "{observed} corrected ECC errors/h (max {threshold})",
        thresholds: &[ThresholdSpec {
            name: "max_per_hour",
            default: 100.0,
            description: "highest tolerated rate of corrected ECC errors, per hour",
        }],
        auto_recoverable: true,
    },
    CheckSpec {
        id: GPU_RETIRED_PAGES,
        description: "pages retired for ECC errors (pre-Ampere): the board's memory is \
                      failing; a warning above max_pages, a drain from max_pages_drain",
        default_severity: Severity::Warn,
        profiles: FULL,
        reason_template: "{observed} retired pages (max {threshold})",
        thresholds: &[
            ThresholdSpec {
                name: "max_pages",
                default: 0.0,
                description: "retired pages tolerated without a warning",
            },
            ThresholdSpec {
                name: "max_pages_drain",
                default: 60.0,
                description: "retired pages from which the check drains",
            },
        ],
        auto_recoverable: false,
    },
    CheckSpec {
        id: GPU_PCIE_REPLAY_RATE,
        description: "PCIe replays per minute since an earlier check (healthy H100/H200 show \
                      a few since reset; DCGM's health check flags more than 8 a minute)",
        default_severity: Severity::Warn,
        profiles: FULL,
        reason_template: "{observed} PCIe replays/min (max {threshold})",
        thresholds: &[ThresholdSpec {
            name: "max_per_minute",
            default: 8.0,
            description: "highest tolerated PCIe replay rate, per minute",
        }],
        auto_recoverable: true,
    },
    CheckSpec {
        id: GPU_FABRIC,
        description: "NVSwitch fabric registration (HGX/DGX): state Completed with status \
                      Success; anything else leaves the GPU without NVLink peers",
        default_severity: Severity::Drain,
        profiles: BOTH,
        reason_template: "fabric {observed}",
        thresholds: &[],
        auto_recoverable: true,
    },
    CheckSpec {
        id: GPU_NVLINK,
        description: "NVLink links of a board that has them are active: fewer active links \
                      than expected_active_links (when set), than the most this GPU has had \
                      active on this node, or an inactive link beside active ones fails; a \
                      board whose links are all inactive and never were (a PCIe board \
                      without a bridge) is not judged",
        default_severity: Severity::Drain,
        profiles: BOTH,
        reason_template: "NVLink {observed}, expected {threshold}",
        thresholds: &[ThresholdSpec {
            name: "expected_active_links",
            default: 0.0,
            description: "active links every GPU should have (0: the board's own links, \
                          once one of them is active, and the most seen on this node)",
        }],
        auto_recoverable: false,
    },
    CheckSpec {
        id: GPU_NVLINK_ERRORS,
        description: "NVLink error counters (CRC flit, CRC data, replay, recovery) per link: \
                      their rise since a reference reading at most an hour old, per hour \
                      (counted over at least an hour); a rise above warn_per_hour warns, \
                      above drain_per_hour fails at this severity",
        default_severity: Severity::Drain,
        profiles: FULL,
        reason_template: "{observed}",
        thresholds: &[
            ThresholdSpec {
                name: "warn_per_hour",
                default: 0.0,
                description: "errors per hour on one link and counter tolerated without \
                              a warning",
            },
            ThresholdSpec {
                name: "drain_per_hour",
                default: 100.0,
                description: "errors per hour on one link and counter above which the \
                              check fails at its severity",
            },
        ],
        auto_recoverable: false,
    },
    CheckSpec {
        id: IB_PORT,
        description: "InfiniBand/RoCE ports ([infiniband] in sgpu.toml, else the node's \
                      baseline of ports once up): present, ACTIVE and LinkUp, at their \
                      expected rate or above",
        default_severity: Severity::Drain,
        profiles: BOTH,
        reason_template: "{observed}",
        thresholds: &[],
        auto_recoverable: true,
    },
    CheckSpec {
        id: IB_ERRORS,
        description: "InfiniBand/RoCE port error counters (symbol_error, link_downed, \
                      link_error_recovery, port_rcv_errors) of active ports: their rise since \
                      a reference reading at most an hour old, per hour (counted over at \
                      least an hour); above warn_per_hour warns, above drain_per_hour fails \
                      at this severity",
        default_severity: Severity::Drain,
        profiles: FULL,
        reason_template: "{observed}",
        thresholds: &[
            ThresholdSpec {
                name: "warn_per_hour",
                default: 0.0,
                description: "errors per hour on one port and counter tolerated without a \
                              warning",
            },
            ThresholdSpec {
                name: "drain_per_hour",
                default: 10.0,
                description: "errors per hour on one port and counter above which the check \
                              fails at its severity",
            },
        ],
        auto_recoverable: false,
    },
];

/// The built-in spec of a check, if the id is known.
pub fn spec(id: &str) -> Option<&'static CheckSpec> {
    CATALOGUE.iter().find(|c| c.id == id)
}

/// Every known check id, in catalogue order.
pub fn ids() -> impl Iterator<Item = &'static str> {
    CATALOGUE.iter().map(|c| c.id)
}

/// An admin's override of one check, as validated from `[checks."<id>"]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckOverride {
    /// `severity = "..."`.
    pub severity: Option<Severity>,
    /// `enabled = true|false`.
    pub enabled: Option<bool>,
    /// `enforce = true|false` (false: a failure at `drain` is only a "would drain").
    pub enforce: Option<bool>,
    /// Threshold values by name (names already checked against the spec).
    pub thresholds: BTreeMap<String, f64>,
}

/// One check as it will run: the spec plus the admin's overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct EffectiveCheck {
    /// The built-in spec.
    pub spec: &'static CheckSpec,
    /// Severity after overrides.
    pub severity: Severity,
    /// False when disabled by `enabled = false` or `severity = "off"`.
    pub enabled: bool,
    /// False in observe-only mode (`enforce = false`, the node's or the check's own): a
    /// drain-worthy failure is reported as "would drain" and acted on by nobody.
    pub enforce: bool,
    /// Every threshold of the spec, with overrides applied.
    pub thresholds: BTreeMap<&'static str, f64>,
}

impl EffectiveCheck {
    /// A threshold's effective value (0 for a name the spec lacks, which the evaluator never
    /// asks for).
    pub fn threshold(&self, name: &str) -> f64 {
        self.thresholds.get(name).copied().unwrap_or(0.0)
    }

    /// Whether it runs in `profile`.
    pub fn runs_in(&self, profile: Profile) -> bool {
        self.enabled && self.severity != Severity::Off && self.spec.profiles.contains(&profile)
    }
}

/// The effective catalogue: defaults merged with config overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalogue {
    checks: Vec<EffectiveCheck>,
}

impl Default for Catalogue {
    fn default() -> Self {
        Catalogue::effective(&BTreeMap::new())
    }
}

impl Catalogue {
    /// Merges the built-in table with overrides keyed by check id. Unknown ids and threshold
    /// names are ignored here: [`crate::config`] rejects them with file and line.
    pub fn effective(overrides: &BTreeMap<String, CheckOverride>) -> Catalogue {
        Catalogue::effective_enforcing(overrides, true)
    }

    /// [`Catalogue::effective`] with the node's `enforce` setting as every check's default.
    pub fn effective_enforcing(
        overrides: &BTreeMap<String, CheckOverride>,
        enforce: bool,
    ) -> Catalogue {
        let checks = CATALOGUE
            .iter()
            .map(|spec| {
                let o = overrides.get(spec.id);
                let severity = o.and_then(|o| o.severity).unwrap_or(spec.default_severity);
                let enabled =
                    o.and_then(|o| o.enabled).unwrap_or(true) && severity != Severity::Off;
                let thresholds = spec
                    .thresholds
                    .iter()
                    .map(|t| {
                        let v = o
                            .and_then(|o| o.thresholds.get(t.name).copied())
                            .unwrap_or(t.default);
                        (t.name, v)
                    })
                    .collect();
                EffectiveCheck {
                    spec,
                    severity,
                    enabled,
                    enforce: o.and_then(|o| o.enforce).unwrap_or(enforce),
                    thresholds,
                }
            })
            .collect();
        Catalogue { checks }
    }

    /// The effective check with this id.
    pub fn get(&self, id: &str) -> Option<&EffectiveCheck> {
        self.checks.iter().find(|c| c.spec.id == id)
    }

    /// All checks, in catalogue order.
    pub fn checks(&self) -> &[EffectiveCheck] {
        &self.checks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_well_formed() {
        let mut seen = std::collections::BTreeSet::new();
        for c in CATALOGUE {
            assert!(seen.insert(c.id), "duplicate id {}", c.id);
            assert!(c.id.contains('.') && c.id.is_ascii(), "{}", c.id);
            assert!(!c.profiles.is_empty(), "{}", c.id);
            assert!(c.default_severity != Severity::Off, "{}", c.id);
        }
    }

    #[test]
    fn defaults_without_overrides() {
        let cat = Catalogue::default();
        let t = cat.get(GPU_TEMPERATURE).unwrap();
        assert_eq!(t.severity, Severity::Drain);
        assert!(t.enabled);
        assert_eq!(t.threshold("margin_c"), 0.0);
        let p = cat.get(GPU_PERSISTENCE_MODE).unwrap();
        assert_eq!(p.severity, Severity::Info);
        assert!(p.runs_in(Profile::Full) && !p.runs_in(Profile::Quick));
        assert_eq!(cat.checks().len(), CATALOGUE.len());
    }

    #[test]
    fn overrides_merge_per_field() {
        let mut o = BTreeMap::new();
        o.insert(
            GPU_TEMPERATURE.to_string(),
            CheckOverride {
                severity: Some(Severity::Warn),
                enabled: None,
                enforce: None,
                thresholds: [("margin_c".to_string(), 5.0)].into_iter().collect(),
            },
        );
        o.insert(
            GPU_PCIE_LINK.to_string(),
            CheckOverride {
                thresholds: [("max_gen_deficit".to_string(), 2.0)].into_iter().collect(),
                ..Default::default()
            },
        );
        o.insert(
            GPU_THROTTLE.to_string(),
            CheckOverride {
                enabled: Some(false),
                ..Default::default()
            },
        );
        o.insert(
            GPU_XID.to_string(),
            CheckOverride {
                severity: Some(Severity::Off),
                ..Default::default()
            },
        );
        let cat = Catalogue::effective(&o);
        let t = cat.get(GPU_TEMPERATURE).unwrap();
        assert_eq!((t.severity, t.threshold("margin_c")), (Severity::Warn, 5.0));
        let p = cat.get(GPU_PCIE_LINK).unwrap();
        assert_eq!(p.severity, Severity::Drain);
        assert_eq!(p.threshold("max_gen_deficit"), 2.0);
        assert_eq!(p.threshold("max_width_deficit"), 0.0, "untouched default");
        assert!(!cat.get(GPU_THROTTLE).unwrap().runs_in(Profile::Full));
        assert!(!cat.get(GPU_XID).unwrap().runs_in(Profile::Quick));
        // Untouched checks keep their defaults.
        assert_eq!(
            cat.get(GPU_LOST).unwrap(),
            Catalogue::default().get(GPU_LOST).unwrap()
        );
    }
}
