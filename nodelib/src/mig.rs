//! MIG: the MIG devices (slices) of a GPU in MIG mode as NVML reports them, and which slice a
//! Slurm GPU device is.
//!
//! A GPU in MIG mode is split into GPU instances, each holding one or more compute
//! instances; a MIG device (what CUDA, Slurm and a job see) is one compute instance. XIDs,
//! ECC and row remapping stay per GPU, so the gates judge a slice's parent GPU and check that
//! the slice itself is there. Under MIG the driver answers the parent's utilization and
//! remapped rows with `NOT_SUPPORTED` (N/A in every MIG capture): those checks are unknown
//! there, never failed.
//!
//! Slurm names a slice by device files (`gres.conf`, `MultipleFiles=/dev/nvidia0,
//! /dev/nvidia-caps/nvidia-cap21[,...cap22]`): the GPU's `/dev/nvidiaN` and the capability
//! files of the GPU instance (and compute instance). The driver's
//! `/proc/driver/nvidia-caps/mig-minors` maps capability minors to `gpuN/giG[/ciC]/access`;
//! without that file the driver's fixed layout is used (config 1, monitor 2, then per GPU 15
//! GPU instances of 9 minors each: the instance's access file, then compute instances 0 to 7;
//! `nvidia-cap21` is GPU 0's GPU instance 2, `nvidia-cap22` its compute instance 0, as in
//! Slurm's gres.conf documentation).

use std::collections::BTreeMap;
use std::path::Path;

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};
use serde::{Deserialize, Serialize};

use crate::gpu::{GpuProcess, MemoryUsage, Reading};

/// Where the driver lists the capability minors of MIG instances.
pub const MIG_MINORS_PATH: &str = "/proc/driver/nvidia-caps/mig-minors";

/// GPU instances per GPU in the driver's capability layout (ids 0 to 14).
const GI_PER_GPU: u32 = 15;
/// Minors per GPU instance: its access file and 8 compute instances.
const MINORS_PER_GI: u32 = 9;
/// The first GPU's first minor (after `config` 1 and `monitor` 2).
const FIRST_GPU_MINOR: u32 = 3;

/// One MIG device (a compute instance in a GPU instance) of a GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigDevice {
    /// Its MIG device index on the parent (`nvmlDeviceGetMigDeviceHandleByIndex`).
    pub index: u32,
    /// `MIG-...` UUID (what `CUDA_VISIBLE_DEVICES` names under MIG).
    pub uuid: Reading<String>,
    /// The profile, e.g. `1g.10gb`, from the device's name (`... MIG 1g.10gb`).
    pub profile: Reading<String>,
    /// GPU instance id.
    pub gpu_instance: Reading<u32>,
    /// Compute instance id within the GPU instance.
    pub compute_instance: Reading<u32>,
    /// Compute slices of its GPU instance (of the GPU's 7; A30 4).
    pub gpu_instance_slices: Reading<u32>,
    /// Compute slices of this compute instance.
    pub compute_slices: Reading<u32>,
    /// Compute slices of the whole GPU (`nvmlDeviceGetMaxMigDeviceCount`: 7; A30 4).
    pub gpu_slices: u32,
    /// The instance's memory.
    pub memory: Reading<MemoryUsage>,
    /// Compute processes on this MIG device.
    pub compute_processes: Reading<Vec<GpuProcess>>,
}

impl MigDevice {
    /// How the device is named in reasons and reports: `MIG 1g.10gb (GI 3 CI 0)`.
    pub fn label(&self) -> String {
        let profile = self.profile.value().map_or("?", String::as_str);
        match (self.gpu_instance.value(), self.compute_instance.value()) {
            (Some(g), Some(c)) => format!("MIG {profile} (GI {g} CI {c})"),
            _ => format!("MIG {profile} (device {})", self.index),
        }
    }
}

impl MigDevice {
    /// The slice's share of its GPU for the accounting records: its compute instance's
    /// compute slices (from NVML's attributes, else the profile's `Nc.`/`Ng` count) of the
    /// GPU's [`MigDevice::gpu_slices`]. `None` when the profile or the count is unknown or
    /// does not fit in the GPU.
    pub fn share(&self) -> Option<sgpu_spool::MigShare> {
        let profile = self.profile.value()?.clone();
        let slices = match self.compute_slices.value() {
            Some(&n) => n,
            None => slices_of_profile(&profile)?,
        };
        (slices >= 1 && slices <= self.gpu_slices).then_some(sgpu_spool::MigShare {
            profile,
            slices,
            of: self.gpu_slices,
        })
    }
}

/// The compute slices a profile names: `1c.3g.20gb` (a compute instance) 1, `3g.40gb` 3.
pub fn slices_of_profile(profile: &str) -> Option<u32> {
    let first = profile.split('.').next()?;
    let n = first
        .strip_suffix('c')
        .or_else(|| first.strip_suffix('g'))?;
    n.parse().ok()
}

/// The profile in a MIG device's name: `NVIDIA H100 80GB HBM3 MIG 1g.10gb` is `1g.10gb`.
pub fn profile_of_name(name: &str) -> Option<String> {
    let (_, p) = name.rsplit_once(" MIG ")?;
    let p = p.trim();
    (!p.is_empty()).then(|| p.to_string())
}

/// An instance id NVML does not wrap (`nvmlDeviceGetGpuInstanceId` or
/// `nvmlDeviceGetComputeInstanceId`, chosen by `gpu`); a library without the symbol reads as
/// unsupported.
fn instance_id(nvml: &Nvml, d: &Device<'_>, gpu: bool) -> Result<u32, NvmlError> {
    let lib = nvml.lib();
    let sym = if gpu {
        lib.nvmlDeviceGetGpuInstanceId.as_ref()
    } else {
        lib.nvmlDeviceGetComputeInstanceId.as_ref()
    };
    let sym = sym.map_err(|e| NvmlError::FailedToLoadSymbol(e.to_string()))?;
    let mut id = 0u32;
    // SAFETY: the handle comes from the wrapper and stays valid while `nvml` lives; `id` is a
    // valid, writable local.
    let rc = unsafe { sym(d.handle(), &mut id) };
    crate::gpu::nvml_return(rc).map(|()| id)
}

/// Reads the MIG devices of a GPU whose MIG mode is on: every index below
/// `nvmlDeviceGetMaxMigDeviceCount` that holds one (`NOT_FOUND` ones are free). `lost` is set
/// when a call says the GPU is lost.
pub fn read_mig_devices(
    nvml: &Nvml,
    d: &Device<'_>,
    lost: &mut bool,
) -> Result<Vec<MigDevice>, NvmlError> {
    let max = d.mig_device_count()?;
    let mut out = Vec::new();
    for i in 0..max {
        let m = match d.mig_device_by_index(i) {
            Ok(m) => m,
            Err(NvmlError::NotFound) => continue,
            Err(e) => return Err(e),
        };
        let l = &mut *lost;
        let attrs = m.attributes();
        let (gpu_instance_slices, compute_slices) = match attrs {
            Ok(a) => (
                Reading::Value(a.gpu_instance_slice_count),
                Reading::Value(a.compute_instance_slice_count),
            ),
            Err(e) => {
                let r: Reading<u32> = Reading::from_result(Err(e), l);
                (r.clone(), r)
            }
        };
        out.push(MigDevice {
            index: i,
            uuid: Reading::from_result(m.uuid(), l),
            profile: Reading::from_result(m.name(), l).and_then_opt(|n| profile_of_name(&n)),
            gpu_instance: Reading::from_result(instance_id(nvml, &m, true), l),
            compute_instance: Reading::from_result(instance_id(nvml, &m, false), l),
            gpu_instance_slices,
            compute_slices,
            gpu_slices: max,
            memory: Reading::from_result(
                m.memory_info().map(|mi| MemoryUsage {
                    used: mi.used,
                    total: mi.total,
                }),
                l,
            ),
            compute_processes: Reading::from_result(
                m.running_compute_processes()
                    .map(|ps| ps.into_iter().map(GpuProcess::from).collect()),
                l,
            ),
        });
    }
    Ok(out)
}

/// A MIG slice as the device files name it: the GPU's minor, its GPU instance and, when the
/// compute instance's capability file is listed too, the compute instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SliceAddress {
    /// The GPU's minor number (`/dev/nvidiaN`).
    pub gpu_minor: u32,
    /// GPU instance id.
    pub gpu_instance: u32,
    /// Compute instance id (`None`: the GPU instance's compute instances, as gres.conf lines
    /// that list only the GPU instance's capability mean).
    pub compute_instance: Option<u32>,
}

/// What one capability minor grants access to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cap {
    /// `gpuN/giG/access`.
    GpuInstance { gpu: u32, gi: u32 },
    /// `gpuN/giG/ciC/access`.
    ComputeInstance { gpu: u32, gi: u32, ci: u32 },
}

/// The driver's map of MIG capability minors (`mig-minors`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigMinors {
    /// minor → capability; empty: the driver's fixed layout.
    caps: BTreeMap<u32, Cap>,
    /// Where it was read from (`None`: the fixed layout).
    pub source: Option<String>,
}

impl MigMinors {
    /// Reads `path` (normally [`MIG_MINORS_PATH`]); a missing file gives the driver's fixed
    /// layout. Lines it does not know (`config 1`, `monitor 2`) are skipped.
    pub fn load(path: &Path) -> std::io::Result<MigMinors> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(MigMinors::parse(&text, &path.display().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(MigMinors::default()),
            Err(e) => Err(e),
        }
    }

    /// Parses the file's text (`gpu0/gi2/access 21`, `gpu0/gi2/ci0/access 22`, ...).
    pub fn parse(text: &str, source: &str) -> MigMinors {
        let mut caps = BTreeMap::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(path), Some(minor)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(minor) = minor.parse::<u32>() else {
                continue;
            };
            let parts: Vec<&str> = path.split('/').collect();
            let num = |s: &str, prefix: &str| s.strip_prefix(prefix)?.parse::<u32>().ok();
            let cap = match parts.as_slice() {
                [g, i, "access"] => num(g, "gpu")
                    .zip(num(i, "gi"))
                    .map(|(gpu, gi)| Cap::GpuInstance { gpu, gi }),
                [g, i, c, "access"] => match (num(g, "gpu"), num(i, "gi"), num(c, "ci")) {
                    (Some(gpu), Some(gi), Some(ci)) => Some(Cap::ComputeInstance { gpu, gi, ci }),
                    _ => None,
                },
                _ => None,
            };
            if let Some(cap) = cap {
                caps.insert(minor, cap);
            }
        }
        MigMinors {
            caps,
            source: Some(source.to_string()),
        }
    }

    fn cap(&self, minor: u32) -> Option<Cap> {
        if self.source.is_some() {
            return self.caps.get(&minor).copied();
        }
        // the driver's fixed layout
        let rel = minor.checked_sub(FIRST_GPU_MINOR)?;
        let gpu = rel / (GI_PER_GPU * MINORS_PER_GI);
        let within = rel % (GI_PER_GPU * MINORS_PER_GI);
        let (gi, k) = (within / MINORS_PER_GI, within % MINORS_PER_GI);
        Some(match k {
            0 => Cap::GpuInstance { gpu, gi },
            c => Cap::ComputeInstance { gpu, gi, ci: c - 1 },
        })
    }

    /// The slice a device's capability minors name, on the GPU of minor `gpu_minor` (`None`:
    /// the device file did not say; the capabilities' GPU is taken). `Err` says why the
    /// minors name no one slice.
    pub fn slice(&self, gpu_minor: Option<u32>, caps: &[u32]) -> Result<SliceAddress, SliceError> {
        let mut gpu = gpu_minor;
        let (mut gi, mut ci) = (None, None);
        for &m in caps {
            let cap = self.cap(m).ok_or_else(|| SliceError::NotACapability {
                minor: m,
                layout: self
                    .source
                    .clone()
                    .unwrap_or_else(|| "the driver's layout".to_string()),
            })?;
            let (g, i, c) = match cap {
                Cap::GpuInstance { gpu, gi } => (gpu, gi, None),
                Cap::ComputeInstance { gpu, gi, ci } => (gpu, gi, Some(ci)),
            };
            if gpu.is_some_and(|x| x != g) || gi.is_some_and(|x| x != i) {
                return Err(SliceError::OtherSlice {
                    minor: m,
                    gpu: g,
                    gpu_instance: i,
                });
            }
            gpu = Some(g);
            gi = Some(i);
            if c.is_some() {
                if ci.is_some() && ci != c {
                    return Err(SliceError::SecondComputeInstance { minor: m });
                }
                ci = c;
            }
        }
        match (gpu, gi) {
            (Some(gpu_minor), Some(gpu_instance)) => Ok(SliceAddress {
                gpu_minor,
                gpu_instance,
                compute_instance: ci,
            }),
            _ => Err(SliceError::NoCapability),
        }
    }
}

/// Why a gres.conf device's capability minors name no one MIG slice
/// ([`MigMinors::slice`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SliceError {
    /// A minor that is no MIG instance's capability.
    #[error("nvidia-cap{minor} is no MIG instance's capability ({layout})")]
    NotACapability {
        /// The capability file's minor.
        minor: u32,
        /// Where the minors were read (the driver's file, or its fixed layout).
        layout: String,
    },
    /// A minor of another slice than the device's other files.
    #[error(
        "nvidia-cap{minor} is GPU {gpu}'s GPU instance {gpu_instance}, not the same slice as \
         the device's other files"
    )]
    OtherSlice {
        /// The capability file's minor.
        minor: u32,
        /// The GPU (device minor) it belongs to.
        gpu: u32,
        /// Its GPU instance.
        gpu_instance: u32,
    },
    /// A second compute instance of the same GPU instance.
    #[error("nvidia-cap{minor} names a second compute instance")]
    SecondComputeInstance {
        /// The capability file's minor.
        minor: u32,
    },
    /// No capability file at all.
    #[error("no MIG capability file among the device's files")]
    NoCapability,
}

/// How a job's slice is known: by the device files Slurm gave it, or by UUID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SliceKey {
    /// GPU instance (and compute instance, when known) from gres.conf's capability files.
    Instance {
        /// GPU instance id.
        gpu_instance: u32,
        /// Compute instance id (`None`: any of the GPU instance's).
        compute_instance: Option<u32>,
    },
    /// The `MIG-...` UUID (`CUDA_VISIBLE_DEVICES` under MIG).
    Uuid(String),
}

/// One MIG slice a job holds on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobSlice {
    /// The NVML index of its GPU.
    pub gpu: u32,
    /// Which slice of that GPU.
    pub key: SliceKey,
}

impl JobSlice {
    /// Whether MIG device `d` is (part of) this slice.
    pub fn matches(&self, d: &MigDevice) -> bool {
        match &self.key {
            SliceKey::Instance {
                gpu_instance,
                compute_instance,
            } => {
                d.gpu_instance.value() == Some(gpu_instance)
                    && compute_instance.is_none_or(|c| d.compute_instance.value() == Some(&c))
            }
            SliceKey::Uuid(u) => d.uuid.value() == Some(u),
        }
    }

    /// The slice as named before its device is found: `GI 3`, `GI 3 CI 0` or its UUID.
    pub fn describe(&self) -> String {
        match &self.key {
            SliceKey::Instance {
                gpu_instance,
                compute_instance: Some(c),
            } => format!("MIG slice GI {gpu_instance} CI {c}"),
            SliceKey::Instance { gpu_instance, .. } => format!("MIG slice GI {gpu_instance}"),
            SliceKey::Uuid(u) => format!("MIG slice {u}"),
        }
    }

    /// The MIG devices of `gpu` that are this slice.
    pub fn devices<'a>(&self, gpu: &'a crate::gpu::GpuSnapshot) -> Vec<&'a MigDevice> {
        match gpu.mig_devices.value() {
            Some(ds) if gpu.index == self.gpu => ds.iter().filter(|d| self.matches(d)).collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_layout_matches_slurms_example_and_the_file() {
        let fixed = MigMinors::default();
        // Slurm's gres.conf documentation: nvidia-cap21 and 22 are GPU 0's GI 2 and its CI 0
        assert_eq!(
            fixed.slice(Some(0), &[21, 22]),
            Ok(SliceAddress {
                gpu_minor: 0,
                gpu_instance: 2,
                compute_instance: Some(0)
            })
        );
        // a GPU instance alone (Compute Canada's generated gres.conf lists only it)
        assert_eq!(
            fixed.slice(Some(1), &[3 + 135 + 7 * 9]),
            Ok(SliceAddress {
                gpu_minor: 1,
                gpu_instance: 7,
                compute_instance: None
            })
        );
        // the same layout written out as the driver's file
        let mut text = String::from("config 1\nmonitor 2\n");
        let mut m = 3;
        for gpu in 0..2 {
            for gi in 0..15 {
                text.push_str(&format!("gpu{gpu}/gi{gi}/access {m}\n"));
                m += 1;
                for ci in 0..8 {
                    text.push_str(&format!("gpu{gpu}/gi{gi}/ci{ci}/access {m}\n"));
                    m += 1;
                }
            }
        }
        let file = MigMinors::parse(&text, "mig-minors");
        for minor in 3..m {
            assert_eq!(file.cap(minor), fixed.cap(minor), "minor {minor}");
        }
        assert_eq!(file.cap(1), None, "config is no instance");
        assert_eq!(file.cap(m), None, "past the file");
    }

    #[test]
    fn minors_that_name_no_one_slice_are_refused() {
        let fixed = MigMinors::default();
        assert!(
            fixed
                .slice(Some(0), &[1])
                .unwrap_err()
                .to_string()
                .contains("nvidia-cap1 ")
        );
        // GI 2 of GPU 0 and GI 3: two slices
        assert!(fixed.slice(Some(0), &[21, 30]).is_err());
        // the capability is GPU 1's, the device file GPU 0's
        assert!(fixed.slice(Some(0), &[3 + 135]).is_err());
        assert!(fixed.slice(Some(0), &[]).is_err());
        // the GPU comes from the capability when no /dev/nvidiaN is listed
        assert_eq!(fixed.slice(None, &[3 + 135]).unwrap().gpu_minor, 1);
    }

    #[test]
    fn profiles_from_names() {
        assert_eq!(
            profile_of_name("NVIDIA H100 80GB HBM3 MIG 1g.10gb").as_deref(),
            Some("1g.10gb")
        );
        assert_eq!(
            profile_of_name("NVIDIA A100-SXM4-40GB MIG 1c.3g.20gb").as_deref(),
            Some("1c.3g.20gb")
        );
        assert_eq!(profile_of_name("NVIDIA H100 80GB HBM3"), None);
    }

    #[test]
    fn a_slices_share_of_its_gpu() {
        assert_eq!(slices_of_profile("2g.20gb"), Some(2));
        assert_eq!(slices_of_profile("1c.3g.20gb"), Some(1));
        assert_eq!(slices_of_profile("7g.141gb"), Some(7));
        assert_eq!(slices_of_profile("1g.18gb+me"), Some(1));
        assert_eq!(slices_of_profile("big"), None);
        let mut d = MigDevice {
            index: 0,
            uuid: Reading::Value("MIG-1".into()),
            profile: Reading::Value("3g.40gb".into()),
            gpu_instance: Reading::Value(2),
            compute_instance: Reading::Value(0),
            gpu_instance_slices: Reading::Value(3),
            compute_slices: Reading::Value(3),
            gpu_slices: 7,
            memory: Reading::Unsupported,
            compute_processes: Reading::Unsupported,
        };
        let share = |d: &MigDevice| d.share().map(|s| (s.profile, s.slices, s.of));
        assert_eq!(share(&d), Some(("3g.40gb".into(), 3, 7)));
        // NVML's attributes first: a 1-slice compute instance of the 3g instance
        d.compute_slices = Reading::Value(1);
        assert_eq!(share(&d), Some(("3g.40gb".into(), 1, 7)));
        // without them, the profile's count
        d.compute_slices = Reading::Unsupported;
        assert_eq!(share(&d), Some(("3g.40gb".into(), 3, 7)));
        // a count that does not fit the GPU, or no profile: no share
        d.gpu_slices = 2;
        assert_eq!(share(&d), None);
        d.gpu_slices = 7;
        d.profile = Reading::Unsupported;
        assert_eq!(share(&d), None);
    }
}
