//! The state file: its schema, validation, atomic saving, and the energy model.
//!
//! See the crate documentation for the file format and the semantics of every field.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nvml_wrapper_sys::bindings as sys;
use serde::{Deserialize, Serialize};

/// The environment variable naming the state file the library reads.
pub const STATE_ENV: &str = "SGPU_NVML_SIM_STATE";

/// Why a state file could not be loaded, or saved.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file could not be read or written.
    #[error("state file {path}: {source}")]
    Io {
        /// The state file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (this includes unknown keys).
    #[error("state file {path}: {message}")]
    Parse {
        /// The state file.
        path: PathBuf,
        /// What is wrong, with the position and key as `toml` reports them.
        message: String,
    },
    /// The file parses but is inconsistent (duplicate UUIDs, bad PCI bus id, ...).
    #[error("state file {path}: invalid state: {message}")]
    Invalid {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The state could not be serialised (a value out of TOML's range, such as a `u64` above
    /// `i64::MAX`).
    #[error("state: cannot serialise: {0}")]
    Serialize(String),
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The whole simulated node: driver versions, GPUs and the XID log.
///
/// Every `Option` field left unset makes the matching NVML query return
/// `NVML_ERROR_NOT_SUPPORTED`, as a real driver does for a feature the board lacks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// `nvmlSystemGetDriverVersion`, e.g. `"550.54.15"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<String>,
    /// `nvmlSystemGetNVMLVersion`, e.g. `"12.550.54.15"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvml_version: Option<String>,
    /// `nvmlSystemGetCudaDriverVersion[_v2]`, as NVML encodes it: 1000 × major + 10 × minor
    /// (`12040` is CUDA 12.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_driver_version: Option<i32>,
    /// Unix time (seconds, fractional allowed) at which every GPU's energy counter equalled its
    /// `energy_mj_at_epoch`. Unset: the file's modification time (so hand-written files work,
    /// but then every rewrite restarts the counters: set it explicitly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<f64>,
    /// The whole driver hangs: every call except `nvmlShutdown`, `nvmlErrorString` and
    /// `nvmlEventSetFree` blocks (re-reading the file every 50 ms) until this is cleared.
    #[serde(default, skip_serializing_if = "is_false")]
    pub hang: bool,
    /// A slow driver: every `nvmlInit*` takes this many milliseconds (it sleeps after reading
    /// the file, holding no lock). 0: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub init_delay_ms: u64,
    /// Every `fork()` of a process that has loaded the library appends one line to this file
    /// (created if missing): `fork pid=<pid> prog=<name> in_flight=<n>`, where `n` counts the
    /// NVML calls other threads were inside at the fork. Unset: forks are not recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fork_log: Option<PathBuf>,
    /// The GPUs, `[[gpu]]` in the file. Their `index` values must be 0..n (any order).
    #[serde(default, rename = "gpu", skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<Gpu>,
    /// The XID error log, `[[xid]]` in the file, delivered through NVML event sets.
    #[serde(default, rename = "xid", skip_serializing_if = "Vec::is_empty")]
    pub xids: Vec<Xid>,
}

/// One GPU (`[[gpu]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    /// NVML index (`nvmlDeviceGetHandleByIndex_v2`, `nvmlDeviceGetIndex`).
    pub index: u32,
    /// `nvmlDeviceGetName`, e.g. `"NVIDIA H100 80GB HBM3"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `nvmlDeviceGetUUID`, `"GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"`; unique.
    pub uuid: String,
    /// `nvmlDeviceGetSerial`; unique when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// PCI address, `"0000:17:00.0"` or `"00000000:17:00.0"` (domain:bus:device.function, hex).
    pub pci_bus_id: String,
    /// `nvmlPciInfo_t.pciDeviceId` (device id << 16 | vendor id); default `0x233010DE` (H100 SXM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_device_id: Option<u32>,
    /// `nvmlPciInfo_t.pciSubSystemId`; default `0x16C110DE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_subsystem_id: Option<u32>,
    /// `nvmlDeviceGetMinorNumber` (the N of `/dev/nvidiaN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor_number: Option<u32>,
    /// Total framebuffer memory, MiB (`nvmlDeviceGetMemoryInfo[_v2]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_total_mib: Option<u64>,
    /// Used memory, MiB. Free = total − reserved − used.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub memory_used_mib: u64,
    /// Memory reserved by the driver, MiB (`nvmlMemory_v2_t.reserved`; counted as used by v1).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub memory_reserved_mib: u64,
    /// `nvmlDeviceGetPowerManagementLimit`, milliwatts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_limit_mw: Option<u32>,
    /// `nvmlDeviceGetEnforcedPowerLimit`, milliwatts; unset: `power_limit_mw`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced_power_limit_mw: Option<u32>,
    /// `nvmlDeviceGetPowerUsage`, milliwatts; also the rate at which energy accumulates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_usage_mw: Option<u32>,
    /// Energy counter (millijoules) at `epoch`. `nvmlDeviceGetTotalEnergyConsumption` returns
    /// `energy_mj_at_epoch + power_usage_mw × (now − epoch in seconds)`. Unset: not supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_mj_at_epoch: Option<u64>,
    /// `nvmlDeviceGetTemperature(NVML_TEMPERATURE_GPU)`, °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<u32>,
    /// Slowdown threshold, °C (`NVML_TEMPERATURE_THRESHOLD_SLOWDOWN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temp_slowdown_c: Option<u32>,
    /// Shutdown threshold, °C (`NVML_TEMPERATURE_THRESHOLD_SHUTDOWN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temp_shutdown_c: Option<u32>,
    /// Maximum GPU operating temperature, °C (`NVML_TEMPERATURE_THRESHOLD_GPU_MAX`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temp_gpu_max_c: Option<u32>,
    /// Maximum memory operating temperature, °C (`NVML_TEMPERATURE_THRESHOLD_MEM_MAX`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temp_mem_max_c: Option<u32>,
    /// `nvmlUtilization_t.gpu`, percent (0–100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_gpu: Option<u32>,
    /// `nvmlUtilization_t.memory`, percent (0–100). `nvmlDeviceGetUtilizationRates` needs both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_memory: Option<u32>,
    /// `nvmlDeviceGetPersistenceMode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence_mode: Option<bool>,
    /// `nvmlDeviceGetEccMode` (current and pending). ECC counters are only reported when true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecc_enabled: Option<bool>,
    /// `nvmlDeviceGetCurrPcieLinkGeneration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_gen_current: Option<u32>,
    /// `nvmlDeviceGetMaxPcieLinkGeneration` (and `nvmlDeviceGetGpuMaxPcieLinkGeneration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_gen_max: Option<u32>,
    /// `nvmlDeviceGetCurrPcieLinkWidth`. Below `pcie_width_max`: a degraded link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_width_current: Option<u32>,
    /// `nvmlDeviceGetMaxPcieLinkWidth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_width_max: Option<u32>,
    /// `nvmlDeviceGetCurrentClocksThrottleReasons` / `...EventReasons`, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_reasons: Option<Vec<ThrottleReason>>,
    /// `nvmlDeviceGetAccountingMode`. When true, `nvmlDeviceGetAccountingPids` lists the pids
    /// of `[[gpu.process]]`; when false it returns `NOT_SUPPORTED`, like the real driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accounting_mode: Option<bool>,
    /// The GPU has fallen off the bus: every call on it (and handle look-ups that reach it)
    /// returns `NVML_ERROR_GPU_IS_LOST`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub lost: bool,
    /// Calls on this GPU block (re-reading the file every 50 ms) until this is cleared.
    #[serde(default, skip_serializing_if = "is_false")]
    pub hang: bool,
    /// ECC error counters (`[gpu.ecc]`), reported while `ecc_enabled = true`.
    #[serde(default, skip_serializing_if = "EccCounters::is_zero")]
    pub ecc: EccCounters,
    /// Retired pages (`[gpu.retired_pages]`). Unset: not supported (as on Ampere/Hopper, which
    /// remap rows instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_pages: Option<RetiredPages>,
    /// Row remapping (`[gpu.remapped_rows]`). Unset: not supported (pre-Ampere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remapped_rows: Option<RemappedRows>,
    /// Running processes (`[[gpu.process]]`).
    #[serde(default, rename = "process", skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<Process>,
    /// `nvmlDeviceGetPcieReplayCounter`: PCIe replays since the last reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_replay_counter: Option<u32>,
    /// `nvmlDeviceGetUtilizationRates` aside, what `nvmlDeviceGetPerformanceState` returns
    /// (0 for P0 .. 15 for P15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performance_state: Option<u32>,
    /// `nvmlDeviceGetMigMode` (current and pending). Unset: not supported (pre-Ampere,
    /// PCIe boards without MIG).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig_mode: Option<bool>,
    /// MIG: pending mode and the MIG devices (`[gpu.mig]`, see [`crate::mig`]). Needs
    /// `mig_mode`; devices only while it is `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig: Option<crate::mig::Mig>,
    /// NVSwitch fabric registration (`[gpu.fabric]`, `nvmlDeviceGetGpuFabricInfo`). Unset:
    /// not supported (no NVSwitch fabric, or a driver before R530).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fabric: Option<Fabric>,
    /// NVLink links (`[gpu.nvlink]`, see [`crate::nvlink`]). Unset: no NVLink
    /// (`NOT_SUPPORTED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvlink: Option<crate::nvlink::NvLink>,
}

/// NVSwitch fabric registration of a GPU (`[gpu.fabric]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fabric {
    /// `not_started`, `in_progress` or `completed`.
    pub state: FabricState,
    /// The registration's result once completed: `"Success"` is `NVML_SUCCESS`; any other
    /// text is reported as `NVML_ERROR_UNKNOWN` (nvidia-smi prints the error's name).
    #[serde(default = "success")]
    pub status: String,
    /// The NVLink clique the GPU belongs to.
    #[serde(default)]
    pub clique_id: u32,
}

fn success() -> String {
    "Success".to_string()
}

/// `nvmlGpuFabricState_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FabricState {
    /// `NVML_GPU_FABRIC_STATE_NOT_STARTED`.
    NotStarted,
    /// `NVML_GPU_FABRIC_STATE_IN_PROGRESS`.
    InProgress,
    /// `NVML_GPU_FABRIC_STATE_COMPLETED`.
    Completed,
}

impl FabricState {
    /// NVML's value for this state.
    pub fn raw(self) -> u8 {
        (match self {
            FabricState::NotStarted => sys::NVML_GPU_FABRIC_STATE_NOT_STARTED,
            FabricState::InProgress => sys::NVML_GPU_FABRIC_STATE_IN_PROGRESS,
            FabricState::Completed => sys::NVML_GPU_FABRIC_STATE_COMPLETED,
        }) as u8
    }
}

/// ECC error counters (`[gpu.ecc]`), for `nvmlDeviceGetTotalEccErrors`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EccCounters {
    /// Corrected errors since the last driver load.
    #[serde(default)]
    pub volatile_corrected: u64,
    /// Uncorrected errors since the last driver load.
    #[serde(default)]
    pub volatile_uncorrected: u64,
    /// Corrected errors over the board's lifetime.
    #[serde(default)]
    pub aggregate_corrected: u64,
    /// Uncorrected errors over the board's lifetime.
    #[serde(default)]
    pub aggregate_uncorrected: u64,
}

impl EccCounters {
    /// All four counters are zero.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// Retired pages (`[gpu.retired_pages]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetiredPages {
    /// `nvmlDeviceGetRetiredPagesPendingStatus`: pages wait for a reboot to be retired.
    #[serde(default)]
    pub pending: bool,
    /// Pages retired for multiple single-bit ECC errors.
    #[serde(default)]
    pub single_bit: Vec<RetiredPage>,
    /// Pages retired for a double-bit ECC error.
    #[serde(default)]
    pub double_bit: Vec<RetiredPage>,
}

/// One retired page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetiredPage {
    /// Page address (what NVML reports).
    pub address: u64,
    /// Retirement time, as `nvmlDeviceGetRetiredPages_v2` reports it (default 0).
    #[serde(default)]
    pub timestamp: u64,
}

/// Row remapping (`[gpu.remapped_rows]`), for `nvmlDeviceGetRemappedRows`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemappedRows {
    /// Rows remapped for correctable errors.
    #[serde(default)]
    pub correctable: u32,
    /// Rows remapped for uncorrectable errors.
    #[serde(default)]
    pub uncorrectable: u32,
    /// A remapping is pending (needs a GPU reset).
    #[serde(default)]
    pub pending: bool,
    /// A remapping failed (no spare rows left).
    #[serde(default)]
    pub failure: bool,
}

/// A process using a GPU (`[[gpu.process]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    /// Process id.
    pub pid: u32,
    /// GPU memory used, MiB. Unset: `NVML_VALUE_NOT_AVAILABLE` (as inside some containers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_memory_mib: Option<u64>,
    /// Which process lists it appears in (default `"compute"`).
    #[serde(default, skip_serializing_if = "ProcessKind::is_compute")]
    pub kind: ProcessKind,
}

/// Which NVML process list a [`Process`] appears in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessKind {
    /// `nvmlDeviceGetComputeRunningProcesses*` (a CUDA context).
    #[default]
    Compute,
    /// `nvmlDeviceGetGraphicsRunningProcesses*`.
    Graphics,
    /// Both lists.
    ComputeGraphics,
}

impl ProcessKind {
    fn is_compute(&self) -> bool {
        *self == ProcessKind::Compute
    }

    pub(crate) fn in_compute(self) -> bool {
        matches!(self, ProcessKind::Compute | ProcessKind::ComputeGraphics)
    }

    pub(crate) fn in_graphics(self) -> bool {
        matches!(self, ProcessKind::Graphics | ProcessKind::ComputeGraphics)
    }
}

/// A clocks throttle ("event") reason, named as in the file; [`ThrottleReason::bit`] gives
/// NVML's bitmask constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleReason {
    /// `gpu_idle`: nothing running, clocks lowered (normal on an idle GPU).
    GpuIdle,
    /// `applications_clocks_setting`: clocks limited by the applications clocks setting.
    ApplicationsClocksSetting,
    /// `sw_power_cap`: software power scaling holds clocks below the power limit.
    SwPowerCap,
    /// `hw_slowdown`: hardware slowdown (thermal, power brake, ...), a bad sign.
    HwSlowdown,
    /// `sync_boost`: synchronised boost with other GPUs.
    SyncBoost,
    /// `sw_thermal_slowdown`: software thermal slowdown.
    SwThermalSlowdown,
    /// `hw_thermal_slowdown`: hardware thermal slowdown (the GPU is too hot).
    HwThermalSlowdown,
    /// `hw_power_brake` (alias `hw_power_brake_slowdown`): external power brake asserted.
    #[serde(alias = "hw_power_brake_slowdown")]
    HwPowerBrake,
    /// `display_clock_setting`: clocks limited by the display clock setting.
    DisplayClockSetting,
}

impl ThrottleReason {
    /// Every reason, in bit order.
    pub const ALL: [ThrottleReason; 9] = [
        ThrottleReason::GpuIdle,
        ThrottleReason::ApplicationsClocksSetting,
        ThrottleReason::SwPowerCap,
        ThrottleReason::HwSlowdown,
        ThrottleReason::SyncBoost,
        ThrottleReason::SwThermalSlowdown,
        ThrottleReason::HwThermalSlowdown,
        ThrottleReason::HwPowerBrake,
        ThrottleReason::DisplayClockSetting,
    ];

    /// NVML's bit for this reason (`nvmlClocksThrottleReason*` / `nvmlClocksEventReason*`).
    pub fn bit(self) -> u64 {
        u64::from(match self {
            ThrottleReason::GpuIdle => sys::nvmlClocksThrottleReasonGpuIdle,
            ThrottleReason::ApplicationsClocksSetting => {
                sys::nvmlClocksThrottleReasonApplicationsClocksSetting
            }
            ThrottleReason::SwPowerCap => sys::nvmlClocksThrottleReasonSwPowerCap,
            ThrottleReason::HwSlowdown => sys::nvmlClocksThrottleReasonHwSlowdown,
            ThrottleReason::SyncBoost => sys::nvmlClocksThrottleReasonSyncBoost,
            ThrottleReason::SwThermalSlowdown => sys::nvmlClocksThrottleReasonSwThermalSlowdown,
            ThrottleReason::HwThermalSlowdown => sys::nvmlClocksThrottleReasonHwThermalSlowdown,
            ThrottleReason::HwPowerBrake => sys::nvmlClocksThrottleReasonHwPowerBrakeSlowdown,
            ThrottleReason::DisplayClockSetting => sys::nvmlClocksThrottleReasonDisplayClockSetting,
        })
    }
}

/// One XID error (`[[xid]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Xid {
    /// Unique identity of this occurrence: an event set delivers each id at most once.
    pub id: u64,
    /// Index of the GPU that raised it.
    pub gpu: u32,
    /// The XID code (e.g. 79: fallen off the bus; 48: double-bit ECC; 13: graphics engine
    /// exception), delivered as `nvmlEventData_t.eventData`.
    pub code: u64,
    /// When it happened, Unix seconds. An event set created at or before this time delivers
    /// it even if the process saw the entry before creating the set (see the crate docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<f64>,
}

/// The current Unix time, in seconds.
pub fn unix_now() -> f64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(_) => 0.0,
    }
}

/// Unix time (seconds) of a file's last modification.
pub(crate) fn mtime_secs(meta: &fs::Metadata) -> f64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The PCI address of a GPU, parsed from `pci_bus_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciAddress {
    /// PCI domain.
    pub domain: u32,
    /// Bus number.
    pub bus: u32,
    /// Device number.
    pub device: u32,
    /// Function number.
    pub function: u32,
}

impl PciAddress {
    /// Parses `domain:bus:device.function`, `bus:device.function` (domain 0) or without the
    /// function (function 0); hexadecimal, any case.
    pub fn parse(s: &str) -> Option<PciAddress> {
        let s = s.trim();
        let mut parts: Vec<&str> = s.split(':').collect();
        let (domain, bus, rest) = match parts.len() {
            3 => {
                let rest = parts.pop()?;
                let bus = parts.pop()?;
                (u32::from_str_radix(parts.pop()?, 16).ok()?, bus, rest)
            }
            2 => {
                let rest = parts.pop()?;
                (0, parts.pop()?, rest)
            }
            _ => return None,
        };
        let bus = u32::from_str_radix(bus, 16).ok()?;
        let (device, function) = match rest.split_once('.') {
            Some((d, f)) => (
                u32::from_str_radix(d, 16).ok()?,
                u32::from_str_radix(f, 16).ok()?,
            ),
            None => (u32::from_str_radix(rest, 16).ok()?, 0),
        };
        if bus > 0xff || device > 0x1f || function > 7 {
            return None;
        }
        Some(PciAddress {
            domain,
            bus,
            device,
            function,
        })
    }

    /// NVML's `busId` form: `"00000000:17:00.0"`.
    pub fn bus_id(&self) -> String {
        format!(
            "{:08X}:{:02X}:{:02X}.{:X}",
            self.domain, self.bus, self.device, self.function
        )
    }

    /// NVML's `busIdLegacy` form: `"0000:17:00.0"`.
    pub fn bus_id_legacy(&self) -> String {
        format!(
            "{:04X}:{:02X}:{:02X}.{:X}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl Gpu {
    /// This GPU's energy counter (millijoules) at Unix time `t`, given the state's effective
    /// epoch; `None` when the counter is unsupported (`energy_mj_at_epoch` unset).
    pub fn energy_mj(&self, epoch: f64, t: f64) -> Option<u64> {
        let base = self.energy_mj_at_epoch?;
        let elapsed = (t - epoch).max(0.0);
        let power = f64::from(self.power_usage_mw.unwrap_or(0));
        // mW × s = mJ.
        let gained = (power * elapsed).floor();
        Some(base.saturating_add(gained as u64))
    }

    /// The parsed PCI address (`None` if `pci_bus_id` is malformed; validation rejects that).
    pub fn pci_address(&self) -> Option<PciAddress> {
        PciAddress::parse(&self.pci_bus_id)
    }

    /// Throttle reasons as NVML's bitmask (0 when unset).
    pub fn throttle_mask(&self) -> u64 {
        self.throttle_reasons
            .iter()
            .flatten()
            .fold(0, |m, r| m | r.bit())
    }

    /// A healthy H100 SXM at `index` with the given identity strings.
    fn healthy(index: u32, uuid: String, serial: String, pci_bus_id: String) -> Gpu {
        Gpu {
            index,
            name: Some("NVIDIA H100 80GB HBM3".to_string()),
            uuid,
            serial: Some(serial),
            pci_bus_id,
            // The defaults (H100 SXM) apply.
            pci_device_id: None,
            pci_subsystem_id: None,
            minor_number: Some(index),
            memory_total_mib: Some(81_559),
            memory_used_mib: 0,
            memory_reserved_mib: 0,
            power_limit_mw: Some(700_000),
            enforced_power_limit_mw: Some(700_000),
            power_usage_mw: Some(69_000 + 1_000 * (index % 8)),
            energy_mj_at_epoch: Some(1_000_000_000 + 12_345_678 * u64::from(index)),
            temperature_c: Some(31 + index % 5),
            temp_slowdown_c: Some(90),
            temp_shutdown_c: Some(92),
            temp_gpu_max_c: Some(87),
            temp_mem_max_c: Some(95),
            utilization_gpu: Some(0),
            utilization_memory: Some(0),
            persistence_mode: Some(true),
            ecc_enabled: Some(true),
            pcie_gen_current: Some(5),
            pcie_gen_max: Some(5),
            pcie_width_current: Some(16),
            pcie_width_max: Some(16),
            throttle_reasons: Some(vec![ThrottleReason::GpuIdle]),
            accounting_mode: Some(false),
            lost: false,
            hang: false,
            ecc: EccCounters::default(),
            retired_pages: None,
            remapped_rows: Some(RemappedRows::default()),
            processes: Vec::new(),
            pcie_replay_counter: Some(0),
            performance_state: Some(0),
            mig_mode: Some(false),
            mig: None,
            fabric: Some(Fabric {
                state: FabricState::Completed,
                status: success(),
                clique_id: 0,
            }),
            // off by default: NVLink is added by the tests that judge it
            nvlink: None,
        }
    }
}

/// The most GPUs a state may describe.
pub const MAX_GPUS: usize = 1024;

/// Default `pciDeviceId`: H100 SXM5 80GB (device 0x2330, vendor NVIDIA 0x10DE).
pub const DEFAULT_PCI_DEVICE_ID: u32 = 0x2330_10DE;
/// Default `pciSubSystemId`.
pub const DEFAULT_PCI_SUBSYSTEM_ID: u32 = 0x16C1_10DE;

/// PCI buses of the eight GPUs of a typical HGX H100 board.
const HGX_BUSES: [u32; 8] = [0x18, 0x2a, 0x3a, 0x5d, 0x9a, 0xab, 0xba, 0xdb];

/// splitmix64: a small, good mixing function for identifiers (not for cryptography).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    mix(nanos ^ (u64::from(std::process::id()) << 32) ^ mix(n))
}

impl State {
    /// A healthy node of `n` H100 SXM GPUs with realistic values, unique (random) UUIDs and
    /// serials, distinct PCI bus ids, `epoch` = now, and no faults. Like a real H100 it
    /// reports remapped rows (all zero) but not retired pages, and `gpu_idle` as its only
    /// throttle reason.
    pub fn healthy(n: u32) -> State {
        State::healthy_seeded(n, fresh_seed())
    }

    /// [`State::healthy`] with identifiers derived from `seed` (same seed, same UUIDs).
    pub fn healthy_seeded(n: u32, seed: u64) -> State {
        let gpus = (0..n)
            .map(|i| {
                let a = mix(seed ^ mix(u64::from(i)));
                let b = mix(a);
                let uuid = format!(
                    "GPU-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                    a >> 32,
                    (a >> 16) & 0xffff,
                    a & 0xffff,
                    b >> 48,
                    b & 0xffff_ffff_ffff
                );
                let serial = format!("1654{:09}", mix(b) % 1_000_000_000);
                let bus = if (i as usize) < HGX_BUSES.len() {
                    HGX_BUSES[i as usize]
                } else {
                    // Past eight GPUs: other buses of a second root complex.
                    (0x20 + 0x08 * (i - 8)) & 0xff
                };
                let domain = if i < 8 { 0 } else { 1 + (i - 8) / 28 };
                Gpu::healthy(i, uuid, serial, format!("{domain:08X}:{bus:02X}:00.0"))
            })
            .collect();
        State {
            driver_version: Some("550.54.15".to_string()),
            nvml_version: Some("12.550.54.15".to_string()),
            cuda_driver_version: Some(12040),
            epoch: Some(unix_now()),
            hang: false,
            init_delay_ms: 0,
            fork_log: None,
            gpus,
            xids: Vec::new(),
        }
    }

    /// Parses a state from TOML text; `path` only names the source in errors.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<State, StateError> {
        let mut state: State = toml::from_str(text).map_err(|e| StateError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        state.validate().map_err(|message| StateError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        state.gpus.sort_by_key(|g| g.index);
        for g in &mut state.gpus {
            if let Some(m) = &mut g.mig {
                m.sort();
            }
        }
        Ok(state)
    }

    /// Reads and validates a state file.
    pub fn load(path: impl AsRef<Path>) -> Result<State, StateError> {
        let path = path.as_ref();
        let text = fs::read_to_string(path).map_err(|source| StateError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        State::from_toml_str(&text, path)
    }

    /// The state as TOML text.
    pub fn to_toml_string(&self) -> Result<String, StateError> {
        toml::to_string(self).map_err(|e| StateError::Serialize(e.to_string()))
    }

    /// Checks what serde cannot: unique indices 0..n, UUIDs, serials and PCI addresses,
    /// well-formed PCI ids, percentages, XIDs naming existing GPUs with unique ids.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.gpus.len();
        if n > MAX_GPUS {
            return Err(format!(
                "{n} GPUs: the simulator handles at most {MAX_GPUS}"
            ));
        }
        let mut indices = BTreeSet::new();
        let mut uuids = BTreeSet::new();
        let mut serials = BTreeSet::new();
        let mut pcis = Vec::new();
        let mut mig_uuids = Vec::new();
        for g in &self.gpus {
            let who = format!("gpu index {}", g.index);
            if g.index as usize >= n {
                return Err(format!(
                    "{who}: indices must be 0..{n} (there are {n} [[gpu]] entries)"
                ));
            }
            if !indices.insert(g.index) {
                return Err(format!("{who}: duplicate index"));
            }
            if !g.uuid.starts_with("GPU-") || g.uuid.len() < 5 {
                return Err(format!("{who}: uuid {:?} must start with \"GPU-\"", g.uuid));
            }
            if !uuids.insert(g.uuid.clone()) {
                return Err(format!("{who}: duplicate uuid {:?}", g.uuid));
            }
            if let Some(s) = &g.serial
                && !serials.insert(s.clone())
            {
                return Err(format!("{who}: duplicate serial {s:?}"));
            }
            let Some(pci) = g.pci_address() else {
                return Err(format!(
                    "{who}: pci_bus_id {:?} is not domain:bus:device.function (hex)",
                    g.pci_bus_id
                ));
            };
            if pcis.contains(&pci) {
                return Err(format!("{who}: duplicate pci_bus_id {:?}", g.pci_bus_id));
            }
            pcis.push(pci);
            for (field, v) in [
                ("utilization_gpu", g.utilization_gpu),
                ("utilization_memory", g.utilization_memory),
            ] {
                if v.is_some_and(|v| v > 100) {
                    return Err(format!("{who}: {field} must be a percentage (0-100)"));
                }
            }
            for (field, s) in [
                ("name", g.name.as_deref()),
                ("uuid", Some(g.uuid.as_str())),
                ("serial", g.serial.as_deref()),
            ] {
                if s.is_some_and(|s| s.contains('\0')) {
                    return Err(format!("{who}: {field} contains a NUL character"));
                }
            }
            if let Some(nv) = &g.nvlink {
                nv.validate().map_err(|e| format!("{who}: {e}"))?;
            }
            if let Some(m) = &g.mig {
                mig_uuids.push((who.clone(), m, g));
            }
        }
        // MIG UUIDs after every GPU's, so a MIG device never takes a GPU's UUID unnoticed
        for (who, m, g) in mig_uuids {
            m.validate(g, &mut uuids)
                .map_err(|e| format!("{who}: {e}"))?;
        }
        let mut ids = BTreeSet::new();
        for x in &self.xids {
            if x.gpu as usize >= n {
                return Err(format!(
                    "xid id {}: gpu {} does not exist (there are {n} GPUs)",
                    x.id, x.gpu
                ));
            }
            if !ids.insert(x.id) {
                return Err(format!("xid id {}: duplicate id", x.id));
            }
        }
        for (field, s) in [
            ("driver_version", self.driver_version.as_deref()),
            ("nvml_version", self.nvml_version.as_deref()),
        ] {
            if s.is_some_and(|s| s.contains('\0')) {
                return Err(format!("{field} contains a NUL character"));
            }
        }
        Ok(())
    }

    /// Writes the state atomically: a temporary file in the same directory, then `rename`, so
    /// a reader never sees half a file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), StateError> {
        let path = path.as_ref();
        let io_err = |source| StateError::Io {
            path: path.to_path_buf(),
            source,
        };
        self.validate().map_err(|message| StateError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        let text = self.to_toml_string()?;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "state.toml".to_string());
        let tmp = path.with_file_name(format!(
            ".{file_name}.tmp.{}.{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.flush()?;
            drop(f);
            fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(io_err)
    }

    /// The epoch energy is computed from: `epoch`, or else `mtime` (the file's mtime).
    pub fn effective_epoch(&self, mtime: f64) -> f64 {
        self.epoch.unwrap_or(mtime)
    }

    /// Folds the energy accumulated up to `now` (Unix seconds) into each GPU's
    /// `energy_mj_at_epoch` and sets `epoch = now`, using this state's own power values.
    /// Call it before changing `power_usage_mw` so the counter stays continuous. Without an
    /// `epoch` nothing has accumulated yet: only `epoch` is set.
    pub fn rebase_energy(&mut self, now: f64) {
        if let Some(epoch) = self.epoch {
            for g in &mut self.gpus {
                if let Some(e) = g.energy_mj(epoch, now) {
                    g.energy_mj_at_epoch = Some(e);
                }
            }
        }
        self.epoch = Some(now);
    }

    /// Saves this state to `path` keeping every GPU's energy counter continuous: the energy
    /// accumulated under the file currently at `path` (its epoch and its power values; GPUs
    /// matched by UUID) up to now becomes this state's `energy_mj_at_epoch`, and `epoch` = now.
    /// From then on the counter grows at this state's `power_usage_mw`. Without a file at
    /// `path`, this is [`State::save`] with `epoch` set to now if unset.
    pub fn write_preserving_energy(&mut self, path: impl AsRef<Path>) -> Result<(), StateError> {
        let path = path.as_ref();
        let old = match fs::metadata(path) {
            Ok(meta) => Some((State::load(path)?, mtime_secs(&meta))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(StateError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let now = unix_now();
        match old {
            Some((old, mtime)) => {
                let old_epoch = old.effective_epoch(mtime);
                for g in &mut self.gpus {
                    if let Some(e) = old
                        .gpus
                        .iter()
                        .find(|o| o.uuid == g.uuid)
                        .and_then(|o| o.energy_mj(old_epoch, now))
                    {
                        g.energy_mj_at_epoch = Some(e);
                    }
                }
                self.epoch = Some(now);
            }
            None => {
                if self.epoch.is_none() {
                    self.epoch = Some(now);
                }
            }
        }
        self.save(path)
    }

    /// Loads the file at `path`, lets `change` edit the state, and writes it back with
    /// [`State::write_preserving_energy`]: the way a test injects a fault into running
    /// processes, e.g. `State::update(&p, |s| s.gpus[0].lost = true)`.
    pub fn update(
        path: impl AsRef<Path>,
        change: impl FnOnce(&mut State),
    ) -> Result<State, StateError> {
        let path = path.as_ref();
        let mut state = State::load(path)?;
        change(&mut state);
        state.write_preserving_energy(path)?;
        Ok(state)
    }

    /// Appends an XID error on GPU `gpu` with `code`, timestamped now, with a fresh id
    /// (greater than every id in the state, and than the current time in microseconds, so ids
    /// stay unique even after entries are removed); returns the id.
    pub fn inject_xid(&mut self, gpu: u32, code: u64) -> u64 {
        let now = unix_now();
        let max = self.xids.iter().map(|x| x.id).max().unwrap_or(0);
        let id = max.saturating_add(1).max((now * 1e6) as u64);
        self.xids.push(Xid {
            id,
            gpu,
            code,
            timestamp: Some(now),
        });
        id
    }

    /// The GPU with NVML index `index`.
    pub fn gpu(&self, index: u32) -> Option<&Gpu> {
        self.gpus.iter().find(|g| g.index == index)
    }

    /// The GPU with NVML index `index`, mutably.
    pub fn gpu_mut(&mut self, index: u32) -> Option<&mut Gpu> {
        self.gpus.iter_mut().find(|g| g.index == index)
    }
}
