//! NVLink: a GPU's links (`[gpu.nvlink]`) and the NVML calls that read them.
//!
//! ```toml
//! [gpu.nvlink]
//! links = 18                          # links the board has (H100 SXM 18, A100 SXM 12, V100 SXM2 6)
//! inactive = [3, 5]                   # links that are down (default: none)
//!
//! [[gpu.nvlink.errors]]               # error counters of one link (default 0)
//! link = 3
//! crc_flit = 120
//! crc_data = 0
//! replay = 4
//! recovery = 1
//! ```
//!
//! Unset (`[gpu.nvlink]` absent): the board has no NVLink, and both calls return
//! `NVML_ERROR_NOT_SUPPORTED`, as NVIDIA's library does on PCIe boards without it. No
//! `nvidia-smi -q` capture shows link states (its report has no NVLink section), so a
//! converted capture has none either. A board that can carry a bridge but has none (A100
//! PCIe) is `links = 12` with every link in `inactive`.
//!
//! - `nvmlDeviceGetNvLinkState(device, link, isActive)`: `NVML_FEATURE_ENABLED` for an
//!   active link, `DISABLED` for one in `inactive`; a link number at or past `links` is
//!   `NVML_ERROR_INVALID_ARGUMENT` ("link is invalid", nvml.h).
//! - `nvmlDeviceGetNvLinkErrorCounter(device, link, counter, value)`: `DL_REPLAY`,
//!   `DL_RECOVERY`, `DL_CRC_FLIT`, `DL_CRC_DATA` from `[[gpu.nvlink.errors]]` (0 when the link
//!   has no entry); `DL_ECC_DATA` and any other counter are `NOT_SUPPORTED`; a link past
//!   `links` is `INVALID_ARGUMENT`.

#![allow(non_snake_case)] // NVML's own parameter names.

use std::ffi::{c_uint, c_ulonglong};

use nvml_wrapper_sys::bindings as sys;
use serde::{Deserialize, Serialize};

use crate::ffi::{guard, put};
use crate::runtime::{INVALID_ARGUMENT, NOT_SUPPORTED, with_gpu};

/// `NVML_NVLINK_MAX_LINKS`: the most links a GPU can have.
pub const MAX_LINKS: u32 = sys::NVML_NVLINK_MAX_LINKS;

/// A GPU's NVLink links (`[gpu.nvlink]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvLink {
    /// How many links the board has (1 to 18): links `0..links` answer.
    pub links: u32,
    /// The links that are down.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inactive: Vec<u32>,
    /// Error counters per link (`[[gpu.nvlink.errors]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<LinkErrors>,
}

/// One link's error counters (`[[gpu.nvlink.errors]]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkErrors {
    /// The link.
    pub link: u32,
    /// `NVML_NVLINK_ERROR_DL_CRC_FLIT`: flow-control digit CRC errors.
    #[serde(default)]
    pub crc_flit: u64,
    /// `NVML_NVLINK_ERROR_DL_CRC_DATA`: data CRC errors.
    #[serde(default)]
    pub crc_data: u64,
    /// `NVML_NVLINK_ERROR_DL_REPLAY`: transmit replays.
    #[serde(default)]
    pub replay: u64,
    /// `NVML_NVLINK_ERROR_DL_RECOVERY`: link recoveries.
    #[serde(default)]
    pub recovery: u64,
}

impl NvLink {
    /// `links` links, all active, no errors.
    pub fn all_active(links: u32) -> NvLink {
        NvLink {
            links,
            ..NvLink::default()
        }
    }

    /// Whether `link` is active (`None`: the board has no such link).
    pub fn is_active(&self, link: u32) -> Option<bool> {
        (link < self.links).then(|| !self.inactive.contains(&link))
    }

    /// One counter of one link (`None`: no such link).
    pub fn counter(&self, link: u32, which: sys::nvmlNvLinkErrorCounter_t) -> Option<Option<u64>> {
        if link >= self.links {
            return None;
        }
        let e = self.errors.iter().find(|e| e.link == link);
        let get = |f: fn(&LinkErrors) -> u64| Some(e.map_or(0, f));
        Some(match which {
            sys::nvmlNvLinkErrorCounter_enum_NVML_NVLINK_ERROR_DL_REPLAY => get(|e| e.replay),
            sys::nvmlNvLinkErrorCounter_enum_NVML_NVLINK_ERROR_DL_RECOVERY => get(|e| e.recovery),
            sys::nvmlNvLinkErrorCounter_enum_NVML_NVLINK_ERROR_DL_CRC_FLIT => get(|e| e.crc_flit),
            sys::nvmlNvLinkErrorCounter_enum_NVML_NVLINK_ERROR_DL_CRC_DATA => get(|e| e.crc_data),
            _ => None,
        })
    }

    /// Checks what serde cannot: 1 to 18 links, link numbers below `links`, each once.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_LINKS).contains(&self.links) {
            return Err(format!(
                "nvlink.links = {}: a board has 1 to {MAX_LINKS} links (leave [gpu.nvlink] out \
                 for a board without NVLink)",
                self.links
            ));
        }
        let mut seen = Vec::new();
        for &l in &self.inactive {
            if l >= self.links || seen.contains(&l) {
                return Err(format!(
                    "nvlink.inactive: link {l} is past links = {} or listed twice",
                    self.links
                ));
            }
            seen.push(l);
        }
        let mut seen = Vec::new();
        for e in &self.errors {
            if e.link >= self.links || seen.contains(&e.link) {
                return Err(format!(
                    "nvlink.errors: link {} is past links = {} or listed twice",
                    e.link, self.links
                ));
            }
            seen.push(e.link);
        }
        Ok(())
    }
}

/// `nvmlDeviceGetNvLinkState`: `[gpu.nvlink]`'s state of `link`.
///
/// # Safety
/// As in NVIDIA's `nvml.h`: `isActive` is NULL or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetNvLinkState(
    device: sys::nvmlDevice_t,
    link: c_uint,
    isActive: *mut sys::nvmlEnableState_t,
) -> sys::nvmlReturn_t {
    guard(move || {
        with_gpu(device, |_, g, _| {
            let nv = g.nvlink.as_ref().ok_or(NOT_SUPPORTED)?;
            let active = nv.is_active(link).ok_or(INVALID_ARGUMENT)?;
            let state = if active {
                sys::nvmlEnableState_enum_NVML_FEATURE_ENABLED
            } else {
                sys::nvmlEnableState_enum_NVML_FEATURE_DISABLED
            };
            // SAFETY: the caller's out-pointer, valid for one value as NVML's API says; put
            // checks for NULL.
            unsafe { put(isActive, state) }
        })
    })
}

/// `nvmlDeviceGetNvLinkErrorCounter`: one of `[[gpu.nvlink.errors]]`'s counters.
///
/// # Safety
/// As in NVIDIA's `nvml.h`: `counterValue` is NULL or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetNvLinkErrorCounter(
    device: sys::nvmlDevice_t,
    link: c_uint,
    counter: sys::nvmlNvLinkErrorCounter_t,
    counterValue: *mut c_ulonglong,
) -> sys::nvmlReturn_t {
    guard(move || {
        with_gpu(device, |_, g, _| {
            let nv = g.nvlink.as_ref().ok_or(NOT_SUPPORTED)?;
            let value = nv
                .counter(link, counter)
                .ok_or(INVALID_ARGUMENT)?
                .ok_or(NOT_SUPPORTED)?;
            // SAFETY: the caller's out-pointer, valid for one value as NVML's API says; put
            // checks for NULL.
            unsafe { put(counterValue, value) }
        })
    })
}
