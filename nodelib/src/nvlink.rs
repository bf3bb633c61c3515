//! NVLink: each GPU's links, read through NVML, and the two checks that judge them.
//!
//! NVML has no call that says how many links a board has: tools ask
//! `nvmlDeviceGetNvLinkState` for links 0 up to `NVML_NVLINK_MAX_LINKS` (18). A board
//! without NVLink answers `NOT_SUPPORTED` for link 0 (sgpu asks no further); a board with N
//! links answers for them and `NOT_SUPPORTED` (or `INVALID_ARGUMENT`) for the others, which
//! are skipped. A PCIe board that could carry a
//! bridge but has none answers for every link, each inactive (A100 PCIe without a bridge:
//! all 12 links "down", NVIDIA/NVSentinel#1481), so an inactive link alone is no fault:
//!
//! - `gpu.nvlink` fails when fewer links are active than expected: `expected_active_links`
//!   when the admin set it, else every link of the board once one of them is active, and
//!   never fewer than the most links this GPU has had active on this node (the GPU history).
//!   A board whose links are all inactive and never were is not judged. Real fault this
//!   catches: a V100-SXM2 with links 3 and 5 `<inactive>` beside four active ones
//!   (Azure/azhpc-diagnostics#73).
//! - `gpu.nvlink_errors` judges the four error counters NVML keeps per link
//!   (`nvmlDeviceGetNvLinkErrorCounter`: `DL_CRC_FLIT`, `DL_CRC_DATA`, `DL_REPLAY`,
//!   `DL_RECOVERY`) by their rise since a reference reading at most an hour old, counted
//!   over at least an hour. They are read only by the `full` runs (healthd, `sgpu check`):
//!   four driver calls per active link.
//!
//! The XIDs that report NVLink faults (74, 136, 144-150, ...) stay `gpu.xid`'s, classified
//! as before.

use std::collections::BTreeMap;

use nvml_wrapper::Device;
use nvml_wrapper::enum_wrappers::nv_link::ErrorCounter;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper_sys::bindings as sys;
use serde::{Deserialize, Serialize};

use crate::catalogue::{self as cat, Catalogue, EffectiveCheck, Profile, Severity};
use crate::checks::{CheckResult, Status, rising_errors};
use crate::gpu::{GpuSnapshot, Reading};
use crate::history::{CounterReading, GpuRecord};

/// The error counters read per active link, by the name sgpu gives them.
pub const ERROR_COUNTERS: &[(&str, ErrorCounter)] = &[
    ("crc_flit", ErrorCounter::DlCrcFlit),
    ("crc_data", ErrorCounter::DlCrcData),
    ("replay", ErrorCounter::DlReplay),
    ("recovery", ErrorCounter::DlRecovery),
];

/// One NVLink link of a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The link number (0-based).
    pub link: u32,
    /// `nvmlDeviceGetNvLinkState`: the link is active.
    pub active: bool,
    /// Error counters by name ([`ERROR_COUNTERS`]), when they were read (active links of a
    /// `full` run) and the driver has them.
    pub errors: BTreeMap<String, u64>,
}

/// Reads every link of `d` (links 0 to `NVML_NVLINK_MAX_LINKS - 1`, skipping those the
/// board does not have): `Err(NotSupported)` for a board without NVLink (link 0 not
/// supported: one call). With `counters`, also the error counters of each active link.
pub fn read_links(d: &Device<'_>, counters: bool) -> Result<Vec<Link>, NvmlError> {
    let mut links = Vec::new();
    for n in 0..sys::NVML_NVLINK_MAX_LINKS {
        let w = d.link_wrapper_for(n);
        let active = match w.is_active() {
            Ok(a) => a,
            // a link the board does not have (past its last, or one left out in between, as
            // DCGM skips them): not a link
            Err(NvmlError::NotSupported | NvmlError::InvalidArg) if n > 0 => continue,
            Err(e) => return Err(e),
        };
        let mut errors = BTreeMap::new();
        if counters && active {
            for (name, which) in ERROR_COUNTERS {
                match w.error_counter(*which) {
                    Ok(v) => {
                        errors.insert((*name).to_string(), v);
                    }
                    Err(NvmlError::NotSupported | NvmlError::FunctionNotFound) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        links.push(Link {
            link: n,
            active,
            errors,
        });
    }
    Ok(links)
}

/// The key of one link's counter in the GPU history: `<link>/<counter>`.
pub fn counter_key(link: u32, counter: &str) -> String {
    format!("{link}/{counter}")
}

/// Folds one GPU's links into its history record: the most active links seen, and the
/// counters' reference readings (kept while the counter has not gone down and the reference
/// is younger than an hour).
pub fn observe(record: &mut GpuRecord, g: &GpuSnapshot, now: f64) {
    let Reading::Value(links) = &g.nvlink else {
        return;
    };
    let active = links.iter().filter(|l| l.active).count() as u32;
    if active > 0 {
        record.nvlink_active_best =
            Some(record.nvlink_active_best.map_or(active, |b| b.max(active)));
    }
    for l in links {
        for (name, &value) in &l.errors {
            let key = counter_key(l.link, name);
            match record.nvlink_errors.get(&key) {
                Some(r) if value >= r.value && now - r.at < crate::history::RATE_WINDOW_S => {}
                _ => {
                    record
                        .nvlink_errors
                        .insert(key, CounterReading { value, at: now });
                }
            }
        }
    }
}

/// Errors per hour between a reference and now, counted over at least an hour (`None`: the
/// counter went down).
pub fn per_hour(reference: CounterReading, value: u64, now: f64) -> Option<f64> {
    if value < reference.value {
        return None;
    }
    let span = (now - reference.at).max(crate::history::RATE_WINDOW_S);
    Some((value - reference.value) as f64 * 3600.0 / span)
}

fn result(
    c: &EffectiveCheck,
    g: &GpuSnapshot,
    status: Status,
    severity: Severity,
    observed: String,
    threshold: String,
    message: String,
) -> CheckResult {
    CheckResult {
        check: c.spec.id,
        gpu: Some(g.index),
        uuid: g.uuid().map(str::to_string),
        observed,
        threshold,
        severity,
        status,
        message,
        enforced: c.enforce,
    }
}

fn list(links: &[u32]) -> String {
    links
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `gpu.nvlink` and `gpu.nvlink_errors` for one GPU still on the bus (those `profile` runs).
pub fn results(
    catalogue: &Catalogue,
    profile: Profile,
    g: &GpuSnapshot,
    record: Option<&GpuRecord>,
    now: f64,
) -> Vec<CheckResult> {
    let mut out = Vec::new();
    if let Some(c) = catalogue
        .get(cat::GPU_NVLINK)
        .filter(|c| c.runs_in(profile))
    {
        out.push(state_result(c, g, record));
    }
    if let Some(c) = catalogue
        .get(cat::GPU_NVLINK_ERRORS)
        .filter(|c| c.runs_in(profile))
    {
        out.extend(error_result(c, g, record, now));
    }
    out
}

fn state_result(c: &EffectiveCheck, g: &GpuSnapshot, record: Option<&GpuRecord>) -> CheckResult {
    let links = match &g.nvlink {
        Reading::Value(l) => l,
        Reading::Unsupported => {
            return result(
                c,
                g,
                Status::Unknown,
                c.severity,
                "n/a".into(),
                String::new(),
                "no NVLink on this board (not supported)".into(),
            );
        }
        Reading::Error(e) => {
            return result(
                c,
                g,
                Status::Unknown,
                c.severity,
                "error".into(),
                String::new(),
                format!("query failed: {e}"),
            );
        }
    };
    let total = links.len() as u32;
    let active = links.iter().filter(|l| l.active).count() as u32;
    let inactive: Vec<u32> = links.iter().filter(|l| !l.active).map(|l| l.link).collect();
    let configured = c.threshold("expected_active_links");
    let best = record.and_then(|r| r.nvlink_active_best).unwrap_or(0);
    let (want, source) = if configured > 0.0 {
        (configured as u32, "expected_active_links")
    } else if active > 0 && total >= best {
        (total, "every link of the board")
    } else {
        (best, "most active on this node")
    };
    let mut observed = format!("{active} of {total} links active");
    if !inactive.is_empty() && active > 0 {
        observed.push_str(&format!(" (inactive: {})", list(&inactive)));
    }
    let threshold = format!("{want} active ({source})");
    if want == 0 {
        return result(
            c,
            g,
            Status::Unknown,
            c.severity,
            observed,
            "none expected".into(),
            format!(
                "all {total} links inactive and none ever active here: not judged (a board \
                 without a bridge?; set expected_active_links)"
            ),
        );
    }
    let status = if active < want {
        Status::Fail
    } else {
        Status::Pass
    };
    let message = if status == Status::Fail {
        c.spec
            .reason_template
            .replace("{observed}", &observed)
            .replace("{threshold}", &threshold)
    } else {
        "ok".into()
    };
    result(c, g, status, c.severity, observed, threshold, message)
}

fn error_result(
    c: &EffectiveCheck,
    g: &GpuSnapshot,
    record: Option<&GpuRecord>,
    now: f64,
) -> Option<CheckResult> {
    let Reading::Value(links) = &g.nvlink else {
        return None;
    };
    if links.iter().all(|l| l.errors.is_empty()) {
        // counters not read (the gates) or not kept by this driver
        return None;
    }
    let (warn_at, drain_at) = (c.threshold("warn_per_hour"), c.threshold("drain_per_hour"));
    let threshold = format!(
        "rise <= {}/h (warn), <= {}/h (drain)",
        fmt(warn_at),
        fmt(drain_at)
    );
    let mut worst: Option<(f64, u32, &str, u64)> = None;
    for l in links {
        for (name, &value) in &l.errors {
            let Some(rate) = record
                .and_then(|r| r.nvlink_errors.get(&counter_key(l.link, name)))
                .and_then(|r| per_hour(*r, value, now))
            else {
                continue;
            };
            if worst.is_none_or(|(w, ..)| rate > w) {
                worst = Some((rate, l.link, name.as_str(), value));
            }
        }
    }
    let Some((rate, link, name, value)) = worst else {
        return Some(result(
            c,
            g,
            Status::Unknown,
            c.severity,
            "no reference".into(),
            threshold,
            "a rate needs an earlier reading (a count alone is not judged)".into(),
        ));
    };
    let observed = format!("link {link} {name} errors {rate:.1}/h (count {value})");
    let (status, severity) = rising_errors(rate, warn_at, drain_at, c.severity);
    let message = if status == Status::Fail {
        format!("NVLink {observed}")
    } else {
        "ok".into()
    };
    Some(result(c, g, status, severity, observed, threshold, message))
}

fn fmt(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests;
