//! MIG: a GPU split into GPU and compute instances (`[gpu.mig]`), and the NVML calls that
//! read them.
//!
//! ```toml
//! [[gpu]]
//! index = 0
//! name = "NVIDIA H100 80GB HBM3"
//! memory_total_mib = 81559
//! mig_mode = true                     # current MIG mode (nvmlDeviceGetMigMode)
//!
//! [gpu.mig]
//! pending = true                      # pending mode (after the next GPU reset); default: current
//!
//! [[gpu.mig.instance]]                # one MIG device: a compute instance in a GPU instance
//! profile = "1g.10gb"                 # a profile of this board (table below); "Nc.<gi profile>"
//!                                     #   for a compute instance of N compute slices
//! gpu_instance_id = 7                 # 0..14, one profile per GPU instance
//! compute_instance_id = 0             # default 0
//! uuid = "MIG-0b5a1f3e-8c1d-5e2f-9a61-1c2d4e6f8a10"   # unique, "MIG-..."
//! memory_total_mib = 9984             # default: parent memory × the profile's share
//! memory_used_mib = 1200              # default 0
//!
//! [[gpu.mig.instance.process]]        # what runs on this MIG device
//! pid = 4242
//! used_memory_mib = 1100
//! ```
//!
//! Boards and profiles (NVIDIA's MIG user guide, "Supported MIG Profiles"; the board is
//! recognised by the parent's `memory_total_mib`): A30 24 GB (`1g.6gb` ×4, `1g.6gb+me`,
//! `2g.12gb` ×2, `2g.12gb+me`, `4g.24gb`; 4 compute slices), A100 40 GB (`1g.5gb` ×7,
//! `1g.5gb+me`, `1g.10gb` ×4, `2g.10gb` ×3, `3g.20gb` ×2, `4g.20gb`, `7g.40gb`), 80 GB A100
//! and H100 (`1g.10gb` ×7, `1g.10gb+me`, `1g.20gb` ×4, `2g.20gb` ×3, `3g.40gb` ×2, `4g.40gb`,
//! `7g.80gb`), H100 NVL 94 GB (`1g.12gb` … `7g.94gb`), GH200 96 GB (`1g.12gb` … `7g.96gb`)
//! and H200 141 GB (`1g.18gb` ×7, `1g.18gb+me`, `1g.35gb` ×4, `2g.35gb` ×3, `3g.71gb` ×2,
//! `4g.71gb`, `7g.141gb`). An instance's memory defaults to what the driver reports for its
//! profile where a real reading is known (the H200's, from `nvidia-smi mig -lgip` on a real
//! H200 with driver 580: 1g.18gb 16 GiB, 1g.35gb and 2g.35gb 32.5 GiB, 3g.71gb and 4g.71gb
//! 69.75 GiB, 7g.141gb 140 GiB; the A100s' 20 GB profiles 19968 MiB from the shared
//! captures), else to the parent's memory times the profile's share. That H200, with MIG
//! disabled, answered `nvmlDeviceGetMigMode` with (0, 0), as `mig_mode = false` does here.
//! Validation refuses a profile the board lacks, more instances of a
//! profile than the board allows, GPU instances whose compute slices add up past the board's
//! 7 (A30: 4), compute instances past their GPU instance's slices, duplicate ids or UUIDs,
//! and instances while `mig_mode` is not `true`.
//!
//! What the driver answers (as the shared captures of A100s in MIG mode, drivers 510 and
//! 535, show, and as `nvml.h` documents):
//! - `nvmlDeviceGetMigMode`: `mig_mode` (current) and `[gpu.mig] pending`; `NOT_SUPPORTED`
//!   when `mig_mode` is unset (a board without MIG).
//! - `nvmlDeviceGetMaxMigDeviceCount`: the board's maximum (7; A30 4) with MIG on, 0 with it
//!   off, `NOT_SUPPORTED` without MIG.
//! - `nvmlDeviceGetMigDeviceHandleByIndex`: the instances in (GPU instance, compute
//!   instance) order; an index at or past the maximum count is `INVALID_ARGUMENT`, one
//!   without an instance `NOT_FOUND`; `NOT_SUPPORTED` with MIG off or absent.
//! - On a MIG device handle: `nvmlDeviceIsMigDeviceHandle` (1; 0 on a GPU handle),
//!   `nvmlDeviceGetDeviceHandleFromMigDeviceHandle` (the parent; `INVALID_ARGUMENT` for a GPU
//!   handle), `nvmlDeviceGetGpuInstanceId`, `nvmlDeviceGetComputeInstanceId`,
//!   `nvmlDeviceGetUUID` (`MIG-...`), `nvmlDeviceGetName` (`<parent name> MIG <profile>`),
//!   `nvmlDeviceGetMemoryInfo[_v2]` (the instance's memory), `nvmlDeviceGetAttributes_v2`
//!   (SMs, slices, memory), the running-process lists (the instance's processes, with their
//!   instance ids). Every other call on a MIG handle is `NOT_SUPPORTED`; a lost or hung parent
//!   makes its MIG handles lost or hung too.
//! - On the parent with MIG on: utilization and remapped rows are `NOT_SUPPORTED` (N/A in
//!   every MIG capture); the process lists hold the parent's `[[gpu.process]]` and every
//!   instance's processes, each with its GPU and compute instance ids (as `nvidia-smi` lists
//!   them). ECC counters stay as the file says (driver 510 printed volatile counters N/A
//!   under MIG, 535 printed them: leave `ecc_enabled` or `[gpu.ecc]` to the fixture).

#![allow(non_snake_case)] // NVML's own parameter names.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::c_uint;

use nvml_wrapper_sys::bindings as sys;
use serde::{Deserialize, Serialize};

use crate::ffi::{guard, put};
use crate::runtime::{
    INVALID_ARGUMENT, NOT_FOUND, NOT_SUPPORTED, mig_handle, with_device, with_gpu,
};
use crate::state::Gpu;

/// The most MIG devices one GPU can hold (NVML's largest `nvmlDeviceGetMaxMigDeviceCount`).
pub const MAX_MIG_DEVICES: usize = 7;

/// Highest GPU instance id a GPU hands out (A100/H100: 0 to 14).
pub const MAX_GPU_INSTANCE_ID: u32 = 14;

/// Highest compute instance id within a GPU instance (0 to 7).
pub const MAX_COMPUTE_INSTANCE_ID: u32 = 7;

/// A GPU's MIG configuration (`[gpu.mig]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mig {
    /// The pending MIG mode (applied at the next GPU reset); unset: the current mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<bool>,
    /// The MIG devices (`[[gpu.mig.instance]]`), kept in (GPU instance, compute instance)
    /// order, which is their MIG device index.
    #[serde(default, rename = "instance", skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<MigInstance>,
}

/// One MIG device: a compute instance in a GPU instance (`[[gpu.mig.instance]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigInstance {
    /// The profile, e.g. `"1g.10gb"`, or `"1c.3g.40gb"` for a compute instance of one compute
    /// slice in a `3g.40gb` GPU instance.
    pub profile: String,
    /// `nvmlDeviceGetGpuInstanceId`.
    pub gpu_instance_id: u32,
    /// `nvmlDeviceGetComputeInstanceId` (default 0).
    #[serde(default)]
    pub compute_instance_id: u32,
    /// `nvmlDeviceGetUUID` of the MIG device, `"MIG-..."`; unique.
    pub uuid: String,
    /// Memory of the GPU instance, MiB; unset: the parent's memory × the profile's share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_total_mib: Option<u64>,
    /// Used memory, MiB.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub memory_used_mib: u64,
    /// Processes on this MIG device (`[[gpu.mig.instance.process]]`).
    #[serde(default, rename = "process", skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<crate::state::Process>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A MIG board: its profiles and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Board {
    /// What the board is called in messages.
    pub name: &'static str,
    /// Compute slices of the whole GPU (7; A30 4): also the most MIG devices.
    pub slices: u32,
    /// Streaming multiprocessors per compute slice (A100 14, H100/H200 16, A30 14).
    pub sms_per_slice: u32,
    /// Its GPU instance profiles.
    pub profiles: &'static [Profile],
}

/// A GPU instance profile of a board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// The name, e.g. `1g.10gb`.
    pub name: &'static str,
    /// Compute slices (the `Ng` of the name).
    pub slices: u32,
    /// Share of the memory, in eighths (A30: in quarters scaled to eighths).
    pub memory_eighths: u32,
    /// NVML's `NVML_GPU_INSTANCE_PROFILE_*` id.
    pub nvml_id: u32,
    /// The most instances of this profile on one GPU.
    pub max_count: u32,
    /// SMs of the full-GPU profile (7g: fewer than 7 × per-slice SMs on every board).
    pub sms: u32,
    /// The instance's memory as the driver reports it, MiB, where a real reading is known
    /// (H200: `nvidia-smi mig -lgip` on driver 5xx, 2026-12-04; A100: the shared MIG
    /// captures); 0: not known, the parent's memory × `memory_eighths` / 8 is used.
    pub mib: u64,
}

const P1: u32 = sys::NVML_GPU_INSTANCE_PROFILE_1_SLICE;
const P1ME: u32 = sys::NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1;
const P1X2: u32 = sys::NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2;
const P2: u32 = sys::NVML_GPU_INSTANCE_PROFILE_2_SLICE;
const P2ME: u32 = sys::NVML_GPU_INSTANCE_PROFILE_2_SLICE_REV1;
const P3: u32 = sys::NVML_GPU_INSTANCE_PROFILE_3_SLICE;
const P4: u32 = sys::NVML_GPU_INSTANCE_PROFILE_4_SLICE;
const P7: u32 = sys::NVML_GPU_INSTANCE_PROFILE_7_SLICE;

macro_rules! profiles {
    ($($name:literal $slices:literal $eighths:literal $id:ident $max:literal $sms:literal $mib:literal),* $(,)?) => {
        &[$(Profile { name: $name, slices: $slices, memory_eighths: $eighths, nvml_id: $id,
                      max_count: $max, sms: $sms, mib: $mib }),*]
    };
}

/// The boards the simulator knows, with NVIDIA's profile tables.
pub const BOARDS: [Board; 7] = [
    Board {
        name: "A30 24GB",
        slices: 4,
        sms_per_slice: 14,
        profiles: profiles![
            "1g.6gb" 1 2 P1 4 14 0, "1g.6gb+me" 1 2 P1ME 1 14 0, "2g.12gb" 2 4 P2 2 28 0,
            "2g.12gb+me" 2 4 P2ME 1 28 0, "4g.24gb" 4 8 P4 1 56 0,
        ],
    },
    Board {
        name: "A100 40GB",
        slices: 7,
        sms_per_slice: 14,
        profiles: profiles![
            "1g.5gb" 1 1 P1 7 14 0, "1g.5gb+me" 1 1 P1ME 1 14 0, "1g.10gb" 1 2 P1X2 4 14 0,
            "2g.10gb" 2 2 P2 3 28 0, "3g.20gb" 3 4 P3 2 42 19968, "4g.20gb" 4 4 P4 1 56 19968,
            "7g.40gb" 7 8 P7 1 98 0,
        ],
    },
    Board {
        name: "A100 80GB",
        slices: 7,
        sms_per_slice: 14,
        profiles: profiles![
            "1g.10gb" 1 1 P1 7 14 0, "1g.10gb+me" 1 1 P1ME 1 14 0, "1g.20gb" 1 2 P1X2 4 14 19968,
            "2g.20gb" 2 2 P2 3 28 0, "3g.40gb" 3 4 P3 2 42 0, "4g.40gb" 4 4 P4 1 56 0,
            "7g.80gb" 7 8 P7 1 98 0,
        ],
    },
    Board {
        name: "H100 80GB",
        slices: 7,
        sms_per_slice: 16,
        profiles: profiles![
            "1g.10gb" 1 1 P1 7 16 0, "1g.10gb+me" 1 1 P1ME 1 16 0, "1g.20gb" 1 2 P1X2 4 16 0,
            "2g.20gb" 2 2 P2 3 32 0, "3g.40gb" 3 4 P3 2 60 0, "4g.40gb" 4 4 P4 1 64 0,
            "7g.80gb" 7 8 P7 1 132 0,
        ],
    },
    Board {
        name: "H100 NVL 94GB",
        slices: 7,
        sms_per_slice: 16,
        profiles: profiles![
            "1g.12gb" 1 1 P1 7 16 0, "1g.12gb+me" 1 1 P1ME 1 16 0, "1g.24gb" 1 2 P1X2 4 16 0,
            "2g.24gb" 2 2 P2 3 32 0, "3g.47gb" 3 4 P3 2 60 0, "4g.47gb" 4 4 P4 1 64 0,
            "7g.94gb" 7 8 P7 1 132 0,
        ],
    },
    Board {
        name: "GH200 96GB",
        slices: 7,
        sms_per_slice: 16,
        profiles: profiles![
            "1g.12gb" 1 1 P1 7 16 0, "1g.12gb+me" 1 1 P1ME 1 16 0, "1g.24gb" 1 2 P1X2 4 16 0,
            "2g.24gb" 2 2 P2 3 32 0, "3g.48gb" 3 4 P3 2 60 0, "4g.48gb" 4 4 P4 1 64 0,
            "7g.96gb" 7 8 P7 1 132 0,
        ],
    },
    Board {
        name: "H200 141GB",
        slices: 7,
        sms_per_slice: 16,
        profiles: profiles![
            "1g.18gb" 1 1 P1 7 16 16384, "1g.18gb+me" 1 1 P1ME 1 16 16384, "1g.35gb" 1 2 P1X2 4 16 33280,
            "2g.35gb" 2 2 P2 3 32 33280, "3g.71gb" 3 4 P3 2 60 71424, "4g.71gb" 4 4 P4 1 64 71424,
            "7g.141gb" 7 8 P7 1 132 143360,
        ],
    },
];

/// The MIG board a GPU is, from its memory (GiB, rounded) and, for 80 GB, its name.
pub fn board_of(gpu: &Gpu) -> Option<&'static Board> {
    let gib = gpu.memory_total_mib?.div_ceil(1024);
    let hopper = gpu
        .name
        .as_deref()
        .is_some_and(|n| n.contains("H100") || n.contains("H200") || n.contains("GH200"));
    let name = match gib {
        23..=25 => "A30 24GB",
        39..=41 => "A100 40GB",
        79..=81 if hopper => "H100 80GB",
        79..=81 => "A100 80GB",
        93..=95 => "H100 NVL 94GB",
        96..=97 => "GH200 96GB",
        139..=144 => "H200 141GB",
        _ => return None,
    };
    BOARDS.iter().find(|b| b.name == name)
}

impl Board {
    /// The GPU instance profile named `name`.
    pub fn profile(&self, name: &str) -> Option<&'static Profile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    /// Every profile name, for messages.
    pub fn profile_names(&self) -> String {
        self.profiles
            .iter()
            .map(|p| p.name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A MIG device's profile split into its compute slices and its GPU instance profile:
/// `1c.3g.40gb` is (Some(1), `3g.40gb`), `1g.10gb` is (None, `1g.10gb`).
pub fn split_profile(profile: &str) -> Result<(Option<u32>, &str), String> {
    match profile.split_once('.') {
        Some((head, rest)) if head.ends_with('c') => {
            let n = head[..head.len() - 1]
                .parse::<u32>()
                .map_err(|_| format!("profile {profile:?}: `{head}` is not Nc"))?;
            Ok((Some(n), rest))
        }
        _ => Ok((None, profile)),
    }
}

impl MigInstance {
    /// The instance's GPU instance profile on `board` and its compute slices.
    pub fn resolve(&self, board: &Board) -> Result<(&'static Profile, u32), String> {
        let (ci, gi) = split_profile(&self.profile)?;
        let p = board.profile(gi).ok_or_else(|| {
            format!(
                "profile {:?} is not one of the {}'s: {}",
                self.profile,
                board.name,
                board.profile_names()
            )
        })?;
        let ci = ci.unwrap_or(p.slices);
        if ci == 0 || ci > p.slices {
            return Err(format!(
                "profile {:?}: a compute instance has 1 to {} compute slices in a {}",
                self.profile, p.slices, p.name
            ));
        }
        Ok((p, ci))
    }

    /// Total memory, MiB: `memory_total_mib`, else what the driver reports for the profile
    /// where known ([`Profile::mib`]), else the parent's × the profile's share.
    pub fn memory_total(&self, parent: &Gpu, board: &Board) -> u64 {
        if let Some(m) = self.memory_total_mib {
            return m;
        }
        match self.resolve(board) {
            Ok((p, _)) if p.mib > 0 => p.mib,
            Ok((p, _)) => parent.memory_total_mib.unwrap_or(0) * u64::from(p.memory_eighths) / 8,
            Err(_) => 0,
        }
    }
}

impl Mig {
    /// Checks what serde cannot (see the module documentation), for GPU `gpu`; `uuids` holds
    /// every UUID seen so far in the state (GPUs and MIG devices) and gets these added.
    pub fn validate(&self, gpu: &Gpu, uuids: &mut BTreeSet<String>) -> Result<(), String> {
        if gpu.mig_mode.is_none() {
            return Err(
                "[gpu.mig] needs mig_mode (the current MIG mode) set: a board without MIG has no [gpu.mig]"
                    .to_string(),
            );
        }
        if self.instances.is_empty() {
            return Ok(());
        }
        if gpu.mig_mode != Some(true) {
            return Err("mig.instance: MIG devices exist only while mig_mode = true".to_string());
        }
        let board = board_of(gpu).ok_or_else(|| {
            format!(
                "mig.instance: memory_total_mib = {:?} is no MIG board the simulator knows \
                 (24, 40, 80, 94, 96 or 141 GB)",
                gpu.memory_total_mib
            )
        })?;
        // GPU instance id -> (profile, compute slices used by its compute instances)
        let mut gis: BTreeMap<u32, (&'static Profile, u32)> = BTreeMap::new();
        let mut cis = BTreeSet::new();
        for m in &self.instances {
            let who = format!(
                "mig.instance gpu_instance_id {} compute_instance_id {}",
                m.gpu_instance_id, m.compute_instance_id
            );
            let (p, ci_slices) = m.resolve(board).map_err(|e| format!("{who}: {e}"))?;
            if m.gpu_instance_id > MAX_GPU_INSTANCE_ID {
                return Err(format!(
                    "{who}: gpu_instance_id is 0 to {MAX_GPU_INSTANCE_ID}"
                ));
            }
            if m.compute_instance_id > MAX_COMPUTE_INSTANCE_ID {
                return Err(format!(
                    "{who}: compute_instance_id is 0 to {MAX_COMPUTE_INSTANCE_ID}"
                ));
            }
            if !cis.insert((m.gpu_instance_id, m.compute_instance_id)) {
                return Err(format!("{who}: listed twice"));
            }
            if !m.uuid.starts_with("MIG-") || m.uuid.len() < 5 || m.uuid.contains('\0') {
                return Err(format!("{who}: uuid {:?} must start with \"MIG-\"", m.uuid));
            }
            if !uuids.insert(m.uuid.clone()) {
                return Err(format!("{who}: duplicate uuid {:?}", m.uuid));
            }
            let total = m.memory_total(gpu, board);
            if m.memory_used_mib > total {
                return Err(format!(
                    "{who}: memory_used_mib {} is more than its {total} MiB",
                    m.memory_used_mib
                ));
            }
            let entry = gis.entry(m.gpu_instance_id).or_insert((p, 0));
            if entry.0.name != p.name {
                return Err(format!(
                    "{who}: GPU instance {} is a {}, not a {}",
                    m.gpu_instance_id, entry.0.name, p.name
                ));
            }
            entry.1 += ci_slices;
            if entry.1 > p.slices {
                return Err(format!(
                    "{who}: the compute instances of GPU instance {} use {} compute slices; a {} has {}",
                    m.gpu_instance_id, entry.1, p.name, p.slices
                ));
            }
        }
        let used: u32 = gis.values().map(|(p, _)| p.slices).sum();
        if used > board.slices {
            return Err(format!(
                "mig.instance: the GPU instances use {used} compute slices; the {} has {}",
                board.name, board.slices
            ));
        }
        for p in board.profiles {
            let n = gis.values().filter(|(q, _)| q.name == p.name).count() as u32;
            if n > p.max_count {
                return Err(format!(
                    "mig.instance: {n} GPU instances of {}; the {} allows {}",
                    p.name, board.name, p.max_count
                ));
            }
        }
        Ok(())
    }

    /// Puts the instances in MIG device index order: (GPU instance, compute instance).
    pub fn sort(&mut self) {
        self.instances
            .sort_by_key(|m| (m.gpu_instance_id, m.compute_instance_id));
    }
}

impl Gpu {
    /// Turns MIG on with one MIG device (a full compute instance, id 0) per profile in
    /// `profiles`, GPU instance ids from where NVIDIA places each size (7g: 0, 4g and 3g: from
    /// 1, 2g and the double-memory 1g: from 3, 1g: from 7, the next free one), UUIDs derived
    /// from the GPU's, and memory from the profile's share. Fails like validation would for a
    /// board or profile the simulator does not know.
    pub fn split_mig(&mut self, profiles: &[&str]) -> Result<(), String> {
        let board = board_of(self).ok_or_else(|| {
            format!(
                "memory_total_mib = {:?} is no MIG board the simulator knows",
                self.memory_total_mib
            )
        })?;
        let mut used = BTreeSet::new();
        let mut placed = Vec::new();
        for name in profiles {
            let p = board.profile(name).ok_or_else(|| {
                format!(
                    "profile {name:?} is not one of the {}'s: {}",
                    board.name,
                    board.profile_names()
                )
            })?;
            let start = match (p.slices, p.memory_eighths) {
                (7, _) => 0,
                (3 | 4, _) => 1,
                (2, _) | (1, 2) => 3,
                _ => 7,
            };
            let gi = (start..=MAX_GPU_INSTANCE_ID)
                .find(|i| !used.contains(i))
                .ok_or_else(|| "no free GPU instance id".to_string())?;
            used.insert(gi);
            placed.push((*name, gi));
        }
        self.set_mig(&placed)
    }

    /// Turns MIG on with one MIG device (a full compute instance, id 0) per (profile, GPU
    /// instance id), UUIDs derived from the GPU's and the instance id, and memory from the
    /// profile's share; fails as validation would.
    pub fn set_mig(&mut self, instances: &[(&str, u32)]) -> Result<(), String> {
        let instances = instances
            .iter()
            .map(|&(profile, gi)| {
                let h = self.uuid.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                }) ^ u64::from(gi).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                MigInstance {
                    profile: profile.to_string(),
                    gpu_instance_id: gi,
                    compute_instance_id: 0,
                    uuid: format!(
                        "MIG-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                        h >> 32,
                        (h >> 16) & 0xffff,
                        h & 0xffff,
                        gi,
                        h & 0xffff_ffff_ffff
                    ),
                    memory_total_mib: None,
                    memory_used_mib: 0,
                    processes: Vec::new(),
                }
            })
            .collect();
        let mut mig = Mig {
            pending: None,
            instances,
        };
        mig.sort();
        let mut uuids = BTreeSet::new();
        let before = self.mig_mode;
        self.mig_mode = Some(true);
        if let Err(e) = mig.validate(self, &mut uuids) {
            self.mig_mode = before;
            return Err(e);
        }
        self.mig = Some(mig);
        Ok(())
    }

    /// MIG is on now (`mig_mode = true`).
    pub fn mig_on(&self) -> bool {
        self.mig_mode == Some(true)
    }

    /// The MIG devices, in index order (none while MIG is off).
    pub fn mig_instances(&self) -> &[MigInstance] {
        match (&self.mig, self.mig_on()) {
            (Some(m), true) => &m.instances,
            _ => &[],
        }
    }

    /// `nvmlDeviceGetMaxMigDeviceCount`: `None` without MIG, 0 with MIG off.
    pub fn max_mig_devices(&self) -> Option<u32> {
        match self.mig_mode? {
            false => Some(0),
            true => Some(board_of(self).map_or(MAX_MIG_DEVICES as u32, |b| b.slices)),
        }
    }
}

/// The NVML call's view of one MIG device.
pub(crate) struct MigView<'a> {
    pub(crate) parent: &'a Gpu,
    pub(crate) parent_index: usize,
    pub(crate) instance: &'a MigInstance,
}

impl MigView<'_> {
    /// The profile's figures on the parent's board (`None` for an unknown board).
    pub(crate) fn profile(&self) -> Option<(&'static Board, &'static Profile, u32)> {
        let board = board_of(self.parent)?;
        let (p, ci) = self.instance.resolve(board).ok()?;
        Some((board, p, ci))
    }

    /// (total, used) in bytes.
    pub(crate) fn memory_bytes(&self) -> (u64, u64) {
        const MIB: u64 = 1024 * 1024;
        let total = match board_of(self.parent) {
            Some(b) => self.instance.memory_total(self.parent, b),
            None => self.instance.memory_total_mib.unwrap_or(0),
        };
        let used = self.instance.memory_used_mib.min(total);
        (total * MIB, used * MIB)
    }
}

/// `nvmlDeviceGetMaxMigDeviceCount`.
///
/// # Safety
/// As in NVIDIA's `nvml.h`: `count` is NULL or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMaxMigDeviceCount(
    device: sys::nvmlDevice_t,
    count: *mut c_uint,
) -> sys::nvmlReturn_t {
    guard(move || {
        with_gpu(device, |_, g, _| {
            let n = g.max_mig_devices().ok_or(NOT_SUPPORTED)?;
            // SAFETY: the caller's out-pointer; put checks for NULL.
            unsafe { put(count, n) }
        })
    })
}

/// `nvmlDeviceGetMigDeviceHandleByIndex`: the `index`-th MIG device of a GPU.
///
/// # Safety
/// As in NVIDIA's `nvml.h`: `migDevice` is NULL or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
    device: sys::nvmlDevice_t,
    index: c_uint,
    migDevice: *mut sys::nvmlDevice_t,
) -> sys::nvmlReturn_t {
    guard(move || {
        with_gpu(device, |_, g, gi| {
            if !g.mig_on() {
                return Err(NOT_SUPPORTED);
            }
            let max = g.max_mig_devices().unwrap_or(0);
            if index >= max {
                return Err(INVALID_ARGUMENT);
            }
            if index as usize >= g.mig_instances().len() {
                return Err(NOT_FOUND);
            }
            // SAFETY: the caller's out-pointer; put checks for NULL.
            unsafe { put(migDevice, mig_handle(gi, index as usize)) }
        })
    })
}

/// `nvmlDeviceIsMigDeviceHandle`: 1 for a MIG device handle, 0 for a GPU's.
///
/// # Safety
/// As in NVIDIA's `nvml.h`: `isMigDevice` is NULL or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceIsMigDeviceHandle(
    device: sys::nvmlDevice_t,
    isMigDevice: *mut c_uint,
) -> sys::nvmlReturn_t {
    guard(move || {
        with_device(device, |d| {
            // SAFETY: the caller's out-pointer; put checks for NULL.
            unsafe { put(isMigDevice, c_uint::from(d.is_mig())) }
        })
    })
}

/// `nvmlDeviceGetDeviceHandleFromMigDeviceHandle`: the parent GPU of a MIG device.
///
/// # Safety
/// As in NVIDIA's `nvml.h`: `device` is NULL or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetDeviceHandleFromMigDeviceHandle(
    migDevice: sys::nvmlDevice_t,
    device: *mut sys::nvmlDevice_t,
) -> sys::nvmlReturn_t {
    guard(move || {
        with_device(migDevice, |d| {
            let m = d.mig().ok_or(INVALID_ARGUMENT)?;
            // SAFETY: the caller's out-pointer; put checks for NULL.
            unsafe { put(device, crate::runtime::device_handle(m.parent_index)) }
        })
    })
}

/// `nvmlDeviceGetGpuInstanceId` of a MIG device (`NOT_SUPPORTED` on a GPU handle).
///
/// # Safety
/// As in NVIDIA's `nvml.h`: `id` is NULL or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceId(
    device: sys::nvmlDevice_t,
    id: *mut c_uint,
) -> sys::nvmlReturn_t {
    guard(move || {
        with_device(device, |d| {
            let m = d.mig().ok_or(NOT_SUPPORTED)?;
            // SAFETY: the caller's out-pointer; put checks for NULL.
            unsafe { put(id, m.instance.gpu_instance_id) }
        })
    })
}

/// `nvmlDeviceGetComputeInstanceId` of a MIG device (`NOT_SUPPORTED` on a GPU handle).
///
/// # Safety
/// As in NVIDIA's `nvml.h`: `id` is NULL or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeInstanceId(
    device: sys::nvmlDevice_t,
    id: *mut c_uint,
) -> sys::nvmlReturn_t {
    guard(move || {
        with_device(device, |d| {
            let m = d.mig().ok_or(NOT_SUPPORTED)?;
            // SAFETY: the caller's out-pointer; put checks for NULL.
            unsafe { put(id, m.instance.compute_instance_id) }
        })
    })
}

/// `nvmlDeviceGetAttributes_v2` of a MIG device: SMs, slices and memory of its profile
/// (`NOT_SUPPORTED` on a GPU handle, as on a GPU without MIG).
///
/// # Safety
/// As in NVIDIA's `nvml.h`: `attributes` is NULL or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetAttributes_v2(
    device: sys::nvmlDevice_t,
    attributes: *mut sys::nvmlDeviceAttributes_t,
) -> sys::nvmlReturn_t {
    guard(move || {
        with_device(device, |d| {
            let m = d.mig().ok_or(NOT_SUPPORTED)?;
            let (board, p, ci) = m.profile().ok_or(NOT_SUPPORTED)?;
            let (total, _) = m.memory_bytes();
            let sms = if ci == p.slices {
                p.sms
            } else {
                ci * board.sms_per_slice
            };
            let a = sys::nvmlDeviceAttributes_t {
                multiprocessorCount: sms,
                sharedCopyEngineCount: p.slices,
                sharedDecoderCount: p.slices.min(5),
                sharedEncoderCount: 0,
                sharedJpegCount: u32::from(p.name.ends_with("+me") || p.slices == board.slices),
                sharedOfaCount: u32::from(p.name.ends_with("+me") || p.slices == board.slices),
                gpuInstanceSliceCount: p.slices,
                computeInstanceSliceCount: ci,
                memorySizeMB: total / (1024 * 1024),
            };
            // SAFETY: the caller's out-pointer; put checks for NULL.
            unsafe { put(attributes, a) }
        })
    })
}
