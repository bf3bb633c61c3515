//! The one module that talks to NVML (through `nvml-wrapper`).
//!
//! All NVML work runs on a dedicated worker thread ([`NvmlWorker`]); the caller waits for
//! each answer on a channel with a deadline. A driver call that never returns therefore
//! costs the caller the deadline, never more: it gets [`NvmlFailure::Hung`] and goes on
//! (typically to drain the node with "nvml hung").
//!
//! # The abandoned thread
//!
//! A thread blocked inside the driver cannot be cancelled or killed on its own. On a hang the
//! worker is abandoned: its channel is dropped, and every later request on that
//! [`NvmlWorker`] fails at once with the same `Hung` (no second thread piles up behind it).
//! - In a short-lived process (prolog, epilog, `sgpu check`) this is harmless: the process
//!   reports, drains and exits, and the exit takes the stuck thread with it (a thread in an
//!   uninterruptible driver sleep delays only the final reaping, which Slurm does not wait
//!   on once the prolog has exited).
//! - The daemon must not spawn a fresh worker every cycle while the old one is stuck (each
//!   would block too, leaking a thread per cycle). It keeps its one hung worker, reports
//!   `nvml.responsive` failing, and starts a new worker only after the old thread has come
//!   back ([`NvmlWorker::is_hung`] turns false once the stuck call returns).
//!
//! Values a board does not support (`NVML_ERROR_NOT_SUPPORTED`, or a symbol the installed
//! library lacks) are [`Reading::Unsupported`]: unknown, not failed.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{
    EccCounter, MemoryError, RetirementCause, TemperatureSensor, TemperatureThreshold,
};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, EventSet, Nvml};
use nvml_wrapper_sys::bindings as sys;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::xid::XidEvent;

/// The most events one drain of the XID event set takes (a storm cannot stall a run).
const MAX_XIDS_PER_DRAIN: usize = 1024;

/// Where and how patiently to reach NVML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvmlOptions {
    /// Library to load; `None`: the system's `libnvidia-ml.so.1`.
    pub library: Option<PathBuf>,
    /// Deadline for each request (for [`collect`]: for the whole run).
    pub timeout: Duration,
    /// Whether snapshots read the NVLink error counters (4 calls per active link: the
    /// daemon's and `sgpu check`'s `full` runs; the gates read link states only).
    pub nvlink_counters: bool,
}

impl NvmlOptions {
    /// The options `sgpu.toml` sets (`nvml_library`, `nvml_timeout_ms`).
    pub fn from_config(config: &Config) -> NvmlOptions {
        NvmlOptions {
            library: config.nvml_library.clone(),
            timeout: config.nvml_timeout,
            nvlink_counters: false,
        }
    }
}

/// One value read from NVML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reading<T> {
    /// The value.
    Value(T),
    /// The board or driver does not support the query: unknown, not a failure.
    Unsupported,
    /// The query failed (the message says how).
    Error(String),
}

impl<T> Reading<T> {
    /// The reading with its value (if any) converted.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Reading<U> {
        match self {
            Reading::Value(v) => Reading::Value(f(v)),
            Reading::Unsupported => Reading::Unsupported,
            Reading::Error(e) => Reading::Error(e),
        }
    }

    /// The value, if there is one.
    pub fn value(&self) -> Option<&T> {
        match self {
            Reading::Value(v) => Some(v),
            _ => None,
        }
    }

    /// The reading with its value converted; a value `f` makes nothing of is unsupported.
    pub fn and_then_opt<U>(self, f: impl FnOnce(T) -> Option<U>) -> Reading<U> {
        match self {
            Reading::Value(v) => f(v).map_or(Reading::Unsupported, Reading::Value),
            Reading::Unsupported => Reading::Unsupported,
            Reading::Error(e) => Reading::Error(e),
        }
    }

    pub(crate) fn from_result(r: Result<T, NvmlError>, lost: &mut bool) -> Reading<T> {
        match r {
            Ok(v) => Reading::Value(v),
            Err(NvmlError::NotSupported)
            | Err(NvmlError::FunctionNotFound)
            | Err(NvmlError::FailedToLoadSymbol(_)) => Reading::Unsupported,
            Err(NvmlError::GpuLost) => {
                *lost = true;
                Reading::Error(NvmlError::GpuLost.to_string())
            }
            Err(e) => Reading::Error(e.to_string()),
        }
    }
}

/// Used and total framebuffer memory, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryUsage {
    /// Allocated bytes.
    pub used: u64,
    /// Installed bytes.
    pub total: u64,
}

/// Row remapping state (`nvmlDeviceGetRemappedRows`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemappedRows {
    /// Rows remapped for correctable errors.
    pub correctable: u32,
    /// Rows remapped for uncorrectable errors.
    pub uncorrectable: u32,
    /// A remap waits for a GPU reset.
    pub pending: bool,
    /// A remap has failed.
    pub failure: bool,
}

/// The PCIe link now and at best.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PcieLink {
    /// Current generation.
    pub gen_current: Reading<u32>,
    /// Maximum generation of the device.
    pub gen_max: Reading<u32>,
    /// Current width (lanes).
    pub width_current: Reading<u32>,
    /// Maximum width.
    pub width_max: Reading<u32>,
}

/// NVSwitch fabric registration (`nvmlDeviceGetGpuFabricInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FabricInfo {
    /// `NVML_GPU_FABRIC_STATE_*`: 1 not started, 2 in progress, 3 completed.
    pub state: u8,
    /// The registration's result (an NVML return code; 0 is success).
    pub status: u32,
    /// NVLink clique id.
    pub clique_id: u32,
}

impl FabricInfo {
    /// `not started`, `in progress`, `completed` (or the raw number).
    pub fn state_name(&self) -> String {
        match u32::from(self.state) {
            sys::NVML_GPU_FABRIC_STATE_NOT_STARTED => "not started".into(),
            sys::NVML_GPU_FABRIC_STATE_IN_PROGRESS => "in progress".into(),
            sys::NVML_GPU_FABRIC_STATE_COMPLETED => "completed".into(),
            sys::NVML_GPU_FABRIC_STATE_NOT_SUPPORTED => "not supported".into(),
            n => format!("state {n}"),
        }
    }

    /// Registered and working: state completed, status success.
    pub fn healthy(&self) -> bool {
        u32::from(self.state) == sys::NVML_GPU_FABRIC_STATE_COMPLETED
            && self.status == sys::nvmlReturn_enum_NVML_SUCCESS
    }
}

/// A compute process on a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuProcess {
    /// Process id.
    pub pid: u32,
    /// GPU memory it uses, bytes, when NVML can tell.
    pub used_memory: Option<u64>,
}

impl From<nvml_wrapper::struct_wrappers::device::ProcessInfo> for GpuProcess {
    fn from(p: nvml_wrapper::struct_wrappers::device::ProcessInfo) -> GpuProcess {
        GpuProcess {
            pid: p.pid,
            used_memory: match p.used_gpu_memory {
                UsedGpuMemory::Used(b) => Some(b),
                UsedGpuMemory::Unavailable => None,
            },
        }
    }
}

/// Clock throttle reason bits that mean hardware trouble, with their names.
pub const HW_THROTTLE_REASONS: &[(u64, &str)] = &[
    (
        sys::nvmlClocksThrottleReasonHwSlowdown as u64,
        "hw_slowdown",
    ),
    (
        sys::nvmlClocksThrottleReasonHwThermalSlowdown as u64,
        "hw_thermal_slowdown",
    ),
    (
        sys::nvmlClocksThrottleReasonHwPowerBrakeSlowdown as u64,
        "hw_power_brake",
    ),
];

/// Everything one run reads about one GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuSnapshot {
    /// NVML index.
    pub index: u32,
    /// The GPU has fallen off the bus (a query answered `GPU_IS_LOST`).
    pub lost: bool,
    /// `GPU-...` UUID.
    pub uuid: Reading<String>,
    /// Product name.
    pub name: Reading<String>,
    /// PCI bus id, `00000000:18:00.0`.
    pub pci_bus_id: Reading<String>,
    /// Device minor number (`/dev/nvidia<minor>`): how Slurm's gres indices map to NVML's.
    pub minor_number: Reading<u32>,
    /// GPU temperature, °C.
    pub temperature_c: Reading<u32>,
    /// Slowdown temperature threshold, °C.
    pub slowdown_threshold_c: Reading<u32>,
    /// Power draw, milliwatts.
    pub power_mw: Reading<u32>,
    /// Energy counter since driver load, millijoules.
    pub energy_mj: Reading<u64>,
    /// GPU utilization, percent.
    pub utilization_gpu_pct: Reading<u32>,
    /// Memory utilization, percent.
    pub utilization_memory_pct: Reading<u32>,
    /// Framebuffer memory.
    pub memory: Reading<MemoryUsage>,
    /// Volatile uncorrectable ECC errors (since driver load).
    pub ecc_volatile_uncorrected: Reading<u64>,
    /// Volatile corrected ECC errors (since driver load).
    pub ecc_volatile_corrected: Reading<u64>,
    /// Pages retired so far (single-bit and double-bit causes together; pre-Ampere).
    pub retired_pages: Reading<u32>,
    /// Retired pages waiting for a reload.
    pub retired_pages_pending: Reading<bool>,
    /// Row remapping state.
    pub remapped_rows: Reading<RemappedRows>,
    /// Current clocks throttle reasons, NVML bitmask.
    pub throttle_reasons: Reading<u64>,
    /// PCIe link.
    pub pcie: PcieLink,
    /// PCIe replays since the last reset.
    pub pcie_replays: Reading<u32>,
    /// NVSwitch fabric registration (unsupported without an NVSwitch fabric).
    pub fabric: Reading<FabricInfo>,
    /// NVLink links, by link number (unsupported on a board without NVLink).
    pub nvlink: Reading<Vec<crate::nvlink::Link>>,
    /// MIG mode (current).
    pub mig_mode: Reading<bool>,
    /// The MIG devices (slices) while MIG is on (unsupported while it is off or absent).
    pub mig_devices: Reading<Vec<crate::mig::MigDevice>>,
    /// Persistence mode.
    pub persistence_mode: Reading<bool>,
    /// Running compute processes.
    pub compute_processes: Reading<Vec<GpuProcess>>,
}

impl GpuSnapshot {
    /// A GPU about which nothing is known yet: every reading unsupported (a starting point
    /// for building snapshots in tests and tools).
    pub fn unknown(index: u32) -> GpuSnapshot {
        let mut g = GpuSnapshot::lost(index, String::new());
        g.lost = false;
        g.uuid = Reading::Unsupported;
        g.name = Reading::Unsupported;
        g.pci_bus_id = Reading::Unsupported;
        g.minor_number = Reading::Unsupported;
        g.temperature_c = Reading::Unsupported;
        g.slowdown_threshold_c = Reading::Unsupported;
        g.power_mw = Reading::Unsupported;
        g.energy_mj = Reading::Unsupported;
        g.utilization_gpu_pct = Reading::Unsupported;
        g.utilization_memory_pct = Reading::Unsupported;
        g.memory = Reading::Unsupported;
        g.ecc_volatile_uncorrected = Reading::Unsupported;
        g.ecc_volatile_corrected = Reading::Unsupported;
        g.retired_pages = Reading::Unsupported;
        g.retired_pages_pending = Reading::Unsupported;
        g.remapped_rows = Reading::Unsupported;
        g.throttle_reasons = Reading::Unsupported;
        g.pcie = PcieLink {
            gen_current: Reading::Unsupported,
            gen_max: Reading::Unsupported,
            width_current: Reading::Unsupported,
            width_max: Reading::Unsupported,
        };
        g.pcie_replays = Reading::Unsupported;
        g.fabric = Reading::Unsupported;
        g.nvlink = Reading::Unsupported;
        g.mig_mode = Reading::Unsupported;
        g.mig_devices = Reading::Unsupported;
        g.persistence_mode = Reading::Unsupported;
        g.compute_processes = Reading::Unsupported;
        g
    }

    fn lost(index: u32, message: String) -> GpuSnapshot {
        fn err<T>(m: &str) -> Reading<T> {
            Reading::Error(m.to_string())
        }
        let m = message.as_str();
        GpuSnapshot {
            index,
            lost: true,
            uuid: err(m),
            name: err(m),
            pci_bus_id: err(m),
            minor_number: err(m),
            temperature_c: err(m),
            slowdown_threshold_c: err(m),
            power_mw: err(m),
            energy_mj: err(m),
            utilization_gpu_pct: err(m),
            utilization_memory_pct: err(m),
            memory: err(m),
            ecc_volatile_uncorrected: err(m),
            ecc_volatile_corrected: err(m),
            retired_pages: err(m),
            retired_pages_pending: err(m),
            remapped_rows: err(m),
            throttle_reasons: err(m),
            pcie: PcieLink {
                gen_current: err(m),
                gen_max: err(m),
                width_current: err(m),
                width_max: err(m),
            },
            pcie_replays: err(m),
            fabric: err(m),
            nvlink: err(m),
            mig_mode: err(m),
            mig_devices: err(m),
            persistence_mode: err(m),
            compute_processes: err(m),
        }
    }

    /// The UUID, if it was read.
    pub fn uuid(&self) -> Option<&str> {
        self.uuid.value().map(String::as_str)
    }
}

/// Everything one run reads about the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSnapshot {
    /// Driver version, e.g. `550.54.15`.
    pub driver_version: Reading<String>,
    /// The GPUs NVML reports, by index.
    pub gpus: Vec<GpuSnapshot>,
}

impl NodeSnapshot {
    /// Replaces each GPU's readings that `fresh` holds (processes, energy, MIG devices when
    /// re-read; a GPU found lost stays lost). A reading for a GPU the snapshot lacks is
    /// ignored.
    pub fn apply_fresh(&mut self, fresh: &[FreshGpu]) {
        for f in fresh {
            let Some(g) = self.gpus.iter_mut().find(|g| g.index == f.index) else {
                continue;
            };
            g.lost |= f.lost;
            g.energy_mj = f.energy_mj.clone();
            g.compute_processes = f.compute_processes.clone();
            if let Some(m) = &f.mig_devices {
                g.mig_devices = m.clone();
            }
        }
    }
}

/// What a gate needs read at the moment it asks (the rest of a [`NodeSnapshot`] may be up to
/// `gate_max_age_ms` old): one GPU's compute processes (leftovers) and energy counter (the
/// job's bill), and its MIG devices (their processes) when it is in MIG mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FreshGpu {
    /// NVML index.
    pub index: u32,
    /// A query answered `GPU_IS_LOST`.
    pub lost: bool,
    /// Energy counter since driver load, millijoules.
    pub energy_mj: Reading<u64>,
    /// Running compute processes.
    pub compute_processes: Reading<Vec<GpuProcess>>,
    /// The MIG devices, re-read for a GPU in MIG mode (`None`: not re-read).
    pub mig_devices: Option<Reading<Vec<crate::mig::MigDevice>>>,
}

/// Why NVML gave no snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NvmlFailure {
    /// NVML could not be initialised.
    #[error("nvml init failed ({kind}): {message}")]
    Init {
        /// What kind of failure.
        kind: InitFailure,
        /// The details.
        message: String,
    },
    /// NVML did not answer within the deadline.
    #[error("nvml hung: no answer after {} ms while {during}", waited.as_millis())]
    Hung {
        /// How long the caller waited.
        waited: Duration,
        /// What the worker was doing, e.g. `init` or `reading gpu3`.
        during: String,
    },
    /// A node-level query failed (device count), or the worker died.
    #[error("nvml query failed: {0}")]
    Query(String),
}

/// The kinds of NVML init failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitFailure {
    /// The library could not be loaded (missing, wrong path).
    LibraryNotFound,
    /// The library loaded but the kernel driver is not.
    DriverNotLoaded,
    /// Anything else.
    Other,
}

impl std::fmt::Display for InitFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InitFailure::LibraryNotFound => "library not loadable",
            InitFailure::DriverNotLoaded => "driver not loaded",
            InitFailure::Other => "error",
        })
    }
}

fn init_failure(library: &str, e: NvmlError) -> NvmlFailure {
    let kind = match e {
        NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound => InitFailure::LibraryNotFound,
        NvmlError::DriverNotLoaded => InitFailure::DriverNotLoaded,
        _ => InitFailure::Other,
    };
    NvmlFailure::Init {
        kind,
        message: format!("{library}: {e}"),
    }
}

/// What the node's XID event set delivered in one drain.
#[derive(Debug, Clone, PartialEq)]
pub struct XidDrain {
    /// The events, in delivery order (ids 0: not yet recorded).
    pub events: Vec<XidEvent>,
    /// GPUs that could not be registered for XID events (lost, unsupported).
    pub unregistered: Vec<u32>,
}

/// One GPU's readings for per-job sampling and metrics (a cheap subset of [`GpuSnapshot`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuSample {
    /// NVML index.
    pub index: u32,
    /// The GPU has fallen off the bus.
    pub lost: bool,
    /// `GPU-...` UUID, if read.
    pub uuid: Option<String>,
    /// Product name, if read.
    pub name: Option<String>,
    /// GPU utilization, percent.
    pub utilization_gpu_pct: Option<u32>,
    /// Memory-bandwidth utilization (NVML's `utilization.memory`: time the memory was read
    /// or written), percent; read with `utilization_gpu_pct`.
    pub utilization_memory_pct: Option<u32>,
    /// Framebuffer memory in use, bytes.
    pub memory_used_bytes: Option<u64>,
    /// Power draw, milliwatts.
    pub power_mw: Option<u32>,
    /// Energy counter since driver load, millijoules.
    pub energy_mj: Option<u64>,
    /// GPU temperature, °C.
    pub temperature_c: Option<u32>,
    /// Volatile uncorrectable ECC errors.
    pub ecc_volatile_uncorrected: Option<u64>,
    /// For a MIG slice's sample: its GPU's UUID (`None`: a whole GPU). A slice's sample has
    /// its GPU's `index`, its own `MIG-` UUID, `<GPU name> MIG <profile>` and its memory;
    /// NVML reads utilization, power, energy, temperature and ECC per GPU only, so those
    /// are `None` (unknown) for a slice, and the GPU's own utilization is `NOT_SUPPORTED`
    /// under MIG.
    pub mig_parent: Option<String>,
}

enum Request {
    Snapshot,
    Fresh { gpus: Vec<(u32, bool)> },
    Sample,
    WatchXids,
    DrainXids { wait_ms: u32 },
}

enum Reply {
    Snapshot(Result<NodeSnapshot, NvmlFailure>),
    Fresh(Vec<FreshGpu>),
    Sample(Result<Vec<GpuSample>, NvmlFailure>),
    Watch(Result<Vec<u32>, NvmlFailure>),
    Xids(Result<Vec<XidEvent>, NvmlFailure>),
}

type Job = (Request, Sender<Reply>);

/// What the worker is doing now, for the hang message.
type Progress = Arc<Mutex<String>>;

fn set_progress(p: &Progress, what: impl Into<String>) {
    if let Ok(mut g) = p.lock() {
        *g = what.into();
    }
}

/// A thread that owns an NVML session; every request is answered within the deadline or
/// reported as [`NvmlFailure::Hung`].
#[derive(Debug)]
pub struct NvmlWorker {
    jobs: Option<Sender<Job>>,
    timeout: Duration,
    progress: Progress,
    busy: Arc<AtomicBool>,
    hung: Option<NvmlFailure>,
}

impl NvmlWorker {
    /// Starts the worker and initialises NVML on it, waiting at most `opts.timeout`.
    pub fn start(opts: &NvmlOptions) -> Result<NvmlWorker, NvmlFailure> {
        NvmlWorker::start_by(opts, Instant::now() + opts.timeout)
    }

    /// Like [`NvmlWorker::start`], but when init hangs the abandoned worker comes back with
    /// the failure, so a long-lived caller can wait for [`NvmlWorker::is_hung`] to turn false
    /// before it starts another (never piling up stuck threads).
    pub fn start_or_abandoned(
        opts: &NvmlOptions,
    ) -> Result<NvmlWorker, (NvmlFailure, Option<Box<NvmlWorker>>)> {
        NvmlWorker::start_inner(opts, Instant::now() + opts.timeout)
    }

    fn start_by(opts: &NvmlOptions, deadline: Instant) -> Result<NvmlWorker, NvmlFailure> {
        NvmlWorker::start_inner(opts, deadline).map_err(|(f, _)| f)
    }

    fn start_inner(
        opts: &NvmlOptions,
        deadline: Instant,
    ) -> Result<NvmlWorker, (NvmlFailure, Option<Box<NvmlWorker>>)> {
        let started = Instant::now();
        let progress: Progress = Arc::new(Mutex::new("init".to_string()));
        let busy = Arc::new(AtomicBool::new(true));
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let (init_tx, init_rx) = mpsc::channel::<Result<(), NvmlFailure>>();
        let library: Option<OsString> = opts.library.as_ref().map(|p| p.clone().into_os_string());
        let (p, b) = (progress.clone(), busy.clone());
        let nvlink_counters = opts.nvlink_counters;
        let spawned = std::thread::Builder::new()
            .name("sgpu-nvml".into())
            .spawn(move || worker_main(library, nvlink_counters, jobs_rx, init_tx, p, b));
        if let Err(e) = spawned {
            return Err((
                NvmlFailure::Query(format!("cannot start the NVML thread: {e}")),
                None,
            ));
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        match init_rx.recv_timeout(wait) {
            Ok(Ok(())) => Ok(NvmlWorker {
                jobs: Some(jobs_tx),
                timeout: opts.timeout,
                progress,
                busy,
                hung: None,
            }),
            Ok(Err(f)) => Err((f, None)),
            Err(RecvTimeoutError::Timeout) => {
                let failure = NvmlFailure::Hung {
                    waited: started.elapsed(),
                    during: "init".into(),
                };
                let abandoned = NvmlWorker {
                    jobs: None,
                    timeout: opts.timeout,
                    progress,
                    busy,
                    hung: Some(failure.clone()),
                };
                Err((failure, Some(Box::new(abandoned))))
            }
            Err(RecvTimeoutError::Disconnected) => Err((
                NvmlFailure::Query("the NVML thread died during init".into()),
                None,
            )),
        }
    }

    /// Whether this worker can serve no more requests (a request or init hung, or its
    /// thread stopped): replace it, but only once [`NvmlWorker::is_hung`] is false.
    pub fn is_abandoned(&self) -> bool {
        self.hung.is_some() || self.jobs.is_none()
    }

    /// Whether a request hung (and the thread is still stuck in it).
    pub fn is_hung(&self) -> bool {
        self.hung.is_some() && self.busy.load(Ordering::SeqCst)
    }

    fn call(&mut self, req: Request, deadline: Instant) -> Result<Reply, NvmlFailure> {
        if let Some(h) = &self.hung {
            return Err(h.clone());
        }
        let Some(jobs) = &self.jobs else {
            return Err(NvmlFailure::Query("the NVML thread has stopped".into()));
        };
        let started = Instant::now();
        let (tx, rx) = mpsc::channel();
        if jobs.send((req, tx)).is_err() {
            return Err(NvmlFailure::Query("the NVML thread has stopped".into()));
        }
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(reply) => Ok(reply),
            Err(RecvTimeoutError::Timeout) => {
                let during = self
                    .progress
                    .lock()
                    .map(|g| g.clone())
                    .unwrap_or_else(|_| "unknown".into());
                let failure = NvmlFailure::Hung {
                    waited: started.elapsed(),
                    during,
                };
                // Abandon the thread: dropping the sender ends its loop if it ever returns.
                self.jobs = None;
                self.hung = Some(failure.clone());
                Err(failure)
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.jobs = None;
                Err(NvmlFailure::Query("the NVML thread died".into()))
            }
        }
    }

    /// Reads a [`NodeSnapshot`], waiting at most the configured timeout.
    pub fn snapshot(&mut self) -> Result<NodeSnapshot, NvmlFailure> {
        let deadline = Instant::now() + self.timeout;
        self.snapshot_by(deadline)
    }

    fn snapshot_by(&mut self, deadline: Instant) -> Result<NodeSnapshot, NvmlFailure> {
        match self.call(Request::Snapshot, deadline)? {
            Reply::Snapshot(r) => r,
            _ => Err(NvmlFailure::Query("unexpected reply".into())),
        }
    }

    /// Reads what must be fresh when a gate asks healthd ([`FreshGpu`]) of the GPUs in
    /// `gpus` (NVML index, and whether the GPU is in MIG mode, so its MIG devices' processes
    /// are read too), waiting at most the configured timeout.
    pub fn fresh(&mut self, gpus: &[(u32, bool)]) -> Result<Vec<FreshGpu>, NvmlFailure> {
        let deadline = Instant::now() + self.timeout;
        let gpus = gpus.to_vec();
        match self.call(Request::Fresh { gpus }, deadline)? {
            Reply::Fresh(r) => Ok(r),
            _ => Err(NvmlFailure::Query("unexpected reply".into())),
        }
    }

    /// Reads every GPU's [`GpuSample`], waiting at most the configured timeout.
    pub fn sample(&mut self) -> Result<Vec<GpuSample>, NvmlFailure> {
        let deadline = Instant::now() + self.timeout;
        match self.call(Request::Sample, deadline)? {
            Reply::Sample(r) => r,
            _ => Err(NvmlFailure::Query("unexpected reply".into())),
        }
    }

    /// Registers every GPU for XID events on the worker's event set (creating it), so later
    /// [`NvmlWorker::drain_xids`] calls see XIDs raised from now on. Returns the GPUs that
    /// could not be registered.
    pub fn watch_xids(&mut self) -> Result<Vec<u32>, NvmlFailure> {
        let deadline = Instant::now() + self.timeout;
        self.watch_xids_by(deadline)
    }

    fn watch_xids_by(&mut self, deadline: Instant) -> Result<Vec<u32>, NvmlFailure> {
        match self.call(Request::WatchXids, deadline)? {
            Reply::Watch(r) => r,
            _ => Err(NvmlFailure::Query("unexpected reply".into())),
        }
    }

    /// Takes the XIDs the event set holds, waiting up to `wait` for the first one (bounded
    /// by the timeout). Without [`NvmlWorker::watch_xids`] first, there are none.
    pub fn drain_xids(&mut self, wait: Duration) -> Result<Vec<XidEvent>, NvmlFailure> {
        let deadline = Instant::now() + self.timeout.max(wait + self.timeout / 2);
        self.drain_xids_by(wait, deadline)
    }

    fn drain_xids_by(
        &mut self,
        wait: Duration,
        deadline: Instant,
    ) -> Result<Vec<XidEvent>, NvmlFailure> {
        let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        match self.call(Request::DrainXids { wait_ms }, deadline)? {
            Reply::Xids(r) => r,
            _ => Err(NvmlFailure::Query("unexpected reply".into())),
        }
    }
}

/// The result of one [`collect`] run.
#[derive(Debug, Clone, PartialEq)]
pub struct Collected {
    /// The node's state.
    pub snapshot: NodeSnapshot,
    /// XIDs the run's own event set saw while it ran.
    pub xids: XidDrain,
}

/// An NVML session that no thread owns, for a caller that bounds every wait itself (the
/// SPANK plugin runs each call on a short-lived thread of its own under its deadline). It
/// stays open between readings with no thread alive, so a step's start and end share one
/// initialisation while slurmstepd forks in between; dropping it shuts NVML down. Its calls
/// have no deadline of their own: never make them on a thread that must not hang.
pub struct Session {
    nvml: Nvml,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session")
    }
}

impl Session {
    /// Loads the library (`opts.library`, else the system's) and initialises NVML (no
    /// deadline; `opts.timeout` is the caller's to apply).
    pub fn open(opts: &NvmlOptions) -> Result<Session, NvmlFailure> {
        let mut builder = Nvml::builder();
        if let Some(lib) = &opts.library {
            builder.lib_path(lib.as_os_str());
        }
        let name = opts
            .library
            .as_ref()
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_else(|| "libnvidia-ml.so.1".into());
        builder
            .init()
            .map(|nvml| Session { nvml })
            .map_err(|e| init_failure(&name, e))
    }

    /// Reads a [`NodeSnapshot`] (no deadline: see [`Session`]).
    pub fn snapshot(&self) -> Result<NodeSnapshot, NvmlFailure> {
        read_snapshot(&self.nvml, &Progress::default(), false)
    }

    /// A [`NodeSnapshot`] with only what names each GPU and its energy counter: UUID, name,
    /// minor number (to map Slurm's numbering) and energy; every other reading is
    /// `Unsupported`. Four driver calls per GPU where [`Session::snapshot`] makes dozens.
    pub fn identities(&self) -> Result<NodeSnapshot, NvmlFailure> {
        let count = self
            .nvml
            .device_count()
            .map_err(|e| NvmlFailure::Query(format!("device count: {e}")))?;
        let mut gpus = Vec::with_capacity(count as usize);
        for index in 0..count {
            let mut g = GpuSnapshot::unknown(index);
            match self.nvml.device_by_index(index) {
                Ok(d) => {
                    let l = &mut g.lost;
                    g.uuid = Reading::from_result(d.uuid(), l);
                    g.name = Reading::from_result(d.name(), l);
                    g.minor_number = Reading::from_result(d.minor_number(), l);
                    g.energy_mj = Reading::from_result(d.total_energy_consumption(), l);
                }
                Err(e) => {
                    g = GpuSnapshot::lost(index, e.to_string());
                    g.lost = matches!(e, NvmlError::GpuLost);
                }
            }
            gpus.push(g);
        }
        Ok(NodeSnapshot {
            driver_version: Reading::Unsupported,
            gpus,
        })
    }

    /// Adds MIG to an [`identities`](Session::identities) snapshot: each GPU's MIG mode and,
    /// where it is on, its MIG devices. For callers whose GPUs may be MIG slices (the SPANK
    /// plugin when gres.conf lists slices for the node); two calls per GPU without MIG.
    pub fn add_mig(&self, snap: &mut NodeSnapshot) {
        for g in &mut snap.gpus {
            if g.lost {
                continue;
            }
            let Ok(d) = self.nvml.device_by_index(g.index) else {
                continue;
            };
            let l = &mut g.lost;
            g.mig_mode = Reading::from_result(d.mig_mode().map(|m| m.current != 0), l);
            g.mig_devices = match g.mig_mode {
                Reading::Value(true) => {
                    let r = crate::mig::read_mig_devices(&self.nvml, &d, l);
                    Reading::from_result(r, l)
                }
                _ => Reading::Unsupported,
            };
        }
    }

    /// The UUID and energy counter (mJ) of each GPU in `indices` (NVML's), and nothing
    /// else: three driver calls per GPU where a snapshot makes dozens for every GPU. A GPU
    /// that cannot be reached, or has no UUID, is left out; an unreadable counter is `None`.
    pub fn energy(&self, indices: &[u32]) -> Vec<(u32, String, Option<u64>)> {
        indices
            .iter()
            .filter_map(|&i| {
                let d = self.nvml.device_by_index(i).ok()?;
                let uuid = d.uuid().ok()?;
                Some((i, uuid, d.total_energy_consumption().ok()))
            })
            .collect()
    }
}

/// One run for a short-lived process (prolog, epilog, `sgpu check`): init, snapshot and
/// (with `watch_xids`) a non-blocking XID drain, all within one `opts.timeout` deadline.
pub fn collect(opts: &NvmlOptions, watch_xids: bool) -> Result<Collected, NvmlFailure> {
    let deadline = Instant::now() + opts.timeout;
    let mut worker = NvmlWorker::start_by(opts, deadline)?;
    let unregistered = if watch_xids {
        worker.watch_xids_by(deadline)?
    } else {
        Vec::new()
    };
    let snapshot = worker.snapshot_by(deadline)?;
    let events = if watch_xids {
        worker.drain_xids_by(Duration::ZERO, deadline)?
    } else {
        Vec::new()
    };
    Ok(Collected {
        snapshot,
        xids: XidDrain {
            events,
            unregistered,
        },
    })
}

fn worker_main(
    library: Option<OsString>,
    nvlink_counters: bool,
    jobs: Receiver<Job>,
    init: Sender<Result<(), NvmlFailure>>,
    progress: Progress,
    busy: Arc<AtomicBool>,
) {
    let mut builder = Nvml::builder();
    if let Some(lib) = &library {
        builder.lib_path(lib);
    }
    let name = library
        .as_ref()
        .map(|l| l.to_string_lossy().into_owned())
        .unwrap_or_else(|| "libnvidia-ml.so.1".into());
    let nvml = match builder.init() {
        Ok(n) => n,
        Err(e) => {
            busy.store(false, Ordering::SeqCst);
            let _ = init.send(Err(init_failure(&name, e)));
            return;
        }
    };
    busy.store(false, Ordering::SeqCst);
    if init.send(Ok(())).is_err() {
        return;
    }
    let mut set: Option<EventSet<'_>> = None;
    let mut registered: Vec<u32> = Vec::new();
    while let Ok((req, reply)) = jobs.recv() {
        busy.store(true, Ordering::SeqCst);
        let answer = match req {
            Request::Snapshot => Reply::Snapshot(read_snapshot(&nvml, &progress, nvlink_counters)),
            Request::Fresh { gpus } => {
                set_progress(&progress, "reading processes and energy");
                Reply::Fresh(read_fresh(&nvml, &gpus))
            }
            Request::Sample => Reply::Sample(read_samples(&nvml, &progress)),
            Request::WatchXids => {
                set_progress(&progress, "registering XID events");
                Reply::Watch(register_xids(&nvml, &mut set, &mut registered))
            }
            Request::DrainXids { wait_ms } => {
                set_progress(&progress, "waiting for XID events");
                Reply::Xids(Ok(match &set {
                    Some(s) => drain(s, wait_ms),
                    None => Vec::new(),
                }))
            }
        };
        set_progress(&progress, "idle");
        busy.store(false, Ordering::SeqCst);
        if reply.send(answer).is_err() {
            // The caller gave up on us (hang): stop serving.
            break;
        }
    }
}

fn read_snapshot(
    nvml: &Nvml,
    progress: &Progress,
    nvlink_counters: bool,
) -> Result<NodeSnapshot, NvmlFailure> {
    set_progress(progress, "reading the driver version");
    let mut ignore = false;
    let driver_version = Reading::from_result(nvml.sys_driver_version(), &mut ignore);
    set_progress(progress, "counting GPUs");
    let count = nvml
        .device_count()
        .map_err(|e| NvmlFailure::Query(format!("device count: {e}")))?;
    let mut gpus = Vec::with_capacity(count as usize);
    for index in 0..count {
        set_progress(progress, format!("reading gpu{index}"));
        gpus.push(match nvml.device_by_index(index) {
            Ok(d) => read_gpu(nvml, index, &d, nvlink_counters),
            Err(NvmlError::GpuLost) => GpuSnapshot::lost(index, NvmlError::GpuLost.to_string()),
            Err(e) => {
                let mut g = GpuSnapshot::lost(index, e.to_string());
                g.lost = false;
                g
            }
        });
    }
    Ok(NodeSnapshot {
        driver_version,
        gpus,
    })
}

fn read_samples(nvml: &Nvml, progress: &Progress) -> Result<Vec<GpuSample>, NvmlFailure> {
    set_progress(progress, "counting GPUs");
    let count = nvml
        .device_count()
        .map_err(|e| NvmlFailure::Query(format!("device count: {e}")))?;
    let mut out = Vec::with_capacity(count as usize);
    for index in 0..count {
        set_progress(progress, format!("sampling gpu{index}"));
        let mut s = GpuSample {
            index,
            lost: false,
            uuid: None,
            name: None,
            utilization_gpu_pct: None,
            utilization_memory_pct: None,
            memory_used_bytes: None,
            power_mw: None,
            energy_mj: None,
            temperature_c: None,
            ecc_volatile_uncorrected: None,
            mig_parent: None,
        };
        let mut slices = Vec::new();
        match nvml.device_by_index(index) {
            Ok(d) => {
                let mut lost = false;
                let l = &mut lost;
                s.uuid = opt(d.uuid(), l);
                s.name = opt(d.name(), l);
                let util = opt(d.utilization_rates(), l);
                s.utilization_gpu_pct = util.as_ref().map(|u| u.gpu);
                s.utilization_memory_pct = util.map(|u| u.memory);
                s.memory_used_bytes = opt(d.memory_info().map(|m| m.used), l);
                s.power_mw = opt(d.power_usage(), l);
                s.energy_mj = opt(d.total_energy_consumption(), l);
                s.temperature_c = opt(d.temperature(TemperatureSensor::Gpu), l);
                s.ecc_volatile_uncorrected = opt(
                    d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile),
                    l,
                );
                // MIG makes the GPU's utilization N/A: only then is its MIG mode asked (a
                // 0.15-0.27 ms call on a real H200, docs/gpu-validation.md), so a GPU without
                // MIG pays nothing for it on every sample
                if s.utilization_gpu_pct.is_none()
                    && opt(d.mig_mode(), l).is_some_and(|m| m.current != 0)
                {
                    set_progress(progress, format!("sampling gpu{index}'s MIG devices"));
                    let devices = opt(crate::mig::read_mig_devices(nvml, &d, l), l);
                    slices = devices
                        .into_iter()
                        .flatten()
                        .map(|m| slice_sample(&s, &m))
                        .collect();
                }
                s.lost = lost;
            }
            Err(NvmlError::GpuLost) => s.lost = true,
            Err(_) => {}
        }
        out.push(s);
        out.extend(slices);
    }
    Ok(out)
}

/// A MIG device's sample (see [`GpuSample::mig_parent`]).
fn slice_sample(gpu: &GpuSample, m: &crate::mig::MigDevice) -> GpuSample {
    GpuSample {
        index: gpu.index,
        lost: false,
        uuid: m.uuid.value().cloned(),
        name: match (&gpu.name, m.profile.value()) {
            (Some(n), Some(p)) => Some(format!("{n} MIG {p}")),
            (n, _) => n.clone(),
        },
        utilization_gpu_pct: None,
        utilization_memory_pct: None,
        memory_used_bytes: m.memory.value().map(|mem| mem.used),
        power_mw: None,
        energy_mj: None,
        temperature_c: None,
        ecc_volatile_uncorrected: None,
        mig_parent: gpu.uuid.clone(),
    }
}

/// A value, or `None` when unsupported or failed (marking a lost GPU).
fn opt<T>(r: Result<T, NvmlError>, lost: &mut bool) -> Option<T> {
    match Reading::from_result(r, lost) {
        Reading::Value(v) => Some(v),
        _ => None,
    }
}

fn read_gpu(nvml: &Nvml, index: u32, d: &Device<'_>, nvlink_counters: bool) -> GpuSnapshot {
    let mut lost = false;
    let l = &mut lost;
    let uuid = Reading::from_result(d.uuid(), l);
    let name = Reading::from_result(d.name(), l);
    let pci_bus_id = Reading::from_result(d.pci_info().map(|p| p.bus_id), l);
    let minor_number = Reading::from_result(d.minor_number(), l);
    let temperature_c = Reading::from_result(d.temperature(TemperatureSensor::Gpu), l);
    let slowdown_threshold_c =
        Reading::from_result(d.temperature_threshold(TemperatureThreshold::Slowdown), l);
    let power_mw = Reading::from_result(d.power_usage(), l);
    let energy_mj = Reading::from_result(d.total_energy_consumption(), l);
    let util = d.utilization_rates();
    let (utilization_gpu_pct, utilization_memory_pct) = match util {
        Ok(u) => (Reading::Value(u.gpu), Reading::Value(u.memory)),
        Err(e) => {
            let r: Reading<u32> = Reading::from_result(Err(e), l);
            (r.clone(), r)
        }
    };
    let memory = Reading::from_result(
        d.memory_info().map(|m| MemoryUsage {
            used: m.used,
            total: m.total,
        }),
        l,
    );
    let ecc_volatile_uncorrected = Reading::from_result(
        d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile),
        l,
    );
    let ecc_volatile_corrected = Reading::from_result(
        d.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile),
        l,
    );
    let retired_pages = Reading::from_result(
        d.retired_pages(RetirementCause::MultipleSingleBitEccErrors)
            .and_then(|sbe| {
                d.retired_pages(RetirementCause::DoubleBitEccError)
                    .map(|dbe| u32::try_from(sbe.len() + dbe.len()).unwrap_or(u32::MAX))
            }),
        l,
    );
    let retired_pages_pending = Reading::from_result(d.are_pages_pending_retired(), l);
    let remapped_rows = Reading::from_result(remapped_rows(nvml, d), l);
    let throttle_reasons = Reading::from_result(d.current_throttle_reasons().map(|r| r.bits()), l);
    let pcie = PcieLink {
        gen_current: Reading::from_result(d.current_pcie_link_gen(), l),
        gen_max: Reading::from_result(d.max_pcie_link_gen(), l),
        width_current: Reading::from_result(d.current_pcie_link_width(), l),
        width_max: Reading::from_result(d.max_pcie_link_width(), l),
    };
    let pcie_replays = Reading::from_result(d.pcie_replay_counter(), l);
    let fabric = Reading::from_result(fabric_info(nvml, d), l);
    let nvlink = Reading::from_result(crate::nvlink::read_links(d, nvlink_counters), l);
    let mig_mode = Reading::from_result(d.mig_mode().map(|m| m.current != 0), l);
    let mig_devices = match mig_mode {
        Reading::Value(true) => {
            let r = crate::mig::read_mig_devices(nvml, d, l);
            Reading::from_result(r, l)
        }
        _ => Reading::Unsupported,
    };
    let persistence_mode = Reading::from_result(d.is_in_persistent_mode(), l);
    let compute_processes = Reading::from_result(
        d.running_compute_processes()
            .map(|ps| ps.into_iter().map(GpuProcess::from).collect()),
        l,
    );
    GpuSnapshot {
        index,
        lost,
        uuid,
        name,
        pci_bus_id,
        minor_number,
        temperature_c,
        slowdown_threshold_c,
        power_mw,
        energy_mj,
        utilization_gpu_pct,
        utilization_memory_pct,
        memory,
        ecc_volatile_uncorrected,
        ecc_volatile_corrected,
        retired_pages,
        retired_pages_pending,
        remapped_rows,
        throttle_reasons,
        pcie,
        pcie_replays,
        fabric,
        nvlink,
        mig_mode,
        mig_devices,
        persistence_mode,
        compute_processes,
    }
}

/// The readings of `gpus` that a gate needs fresh (see [`FreshGpu`]).
fn read_fresh(nvml: &Nvml, gpus: &[(u32, bool)]) -> Vec<FreshGpu> {
    gpus.iter()
        .map(|&(index, mig)| match nvml.device_by_index(index) {
            Ok(d) => {
                let mut lost = false;
                let l = &mut lost;
                let energy_mj = Reading::from_result(d.total_energy_consumption(), l);
                let compute_processes = Reading::from_result(
                    d.running_compute_processes()
                        .map(|ps| ps.into_iter().map(GpuProcess::from).collect()),
                    l,
                );
                let mig_devices = mig.then(|| {
                    let r = crate::mig::read_mig_devices(nvml, &d, l);
                    Reading::from_result(r, l)
                });
                FreshGpu {
                    index,
                    lost,
                    energy_mj,
                    compute_processes,
                    mig_devices,
                }
            }
            Err(e) => FreshGpu {
                index,
                lost: matches!(e, NvmlError::GpuLost),
                energy_mj: Reading::Error(e.to_string()),
                compute_processes: Reading::Error(e.to_string()),
                mig_devices: mig.then(|| Reading::Error(e.to_string())),
            },
        })
        .collect()
}

/// Maps an NVML return code to the wrapper's error (only the codes that matter here).
pub(crate) fn nvml_return(rc: sys::nvmlReturn_t) -> Result<(), NvmlError> {
    match rc {
        sys::nvmlReturn_enum_NVML_SUCCESS => Ok(()),
        sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED => Err(NvmlError::NotSupported),
        sys::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST => Err(NvmlError::GpuLost),
        sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT => Err(NvmlError::InvalidArg),
        sys::nvmlReturn_enum_NVML_ERROR_UNINITIALIZED => Err(NvmlError::Uninitialized),
        sys::nvmlReturn_enum_NVML_ERROR_NO_PERMISSION => Err(NvmlError::NoPermission),
        _ => Err(NvmlError::Unknown),
    }
}

/// `nvmlDeviceGetRemappedRows`, which `nvml-wrapper` does not wrap; a library without the
/// symbol (drivers before R450) reads as unsupported.
fn remapped_rows(nvml: &Nvml, d: &Device<'_>) -> Result<RemappedRows, NvmlError> {
    let sym = match nvml.lib().nvmlDeviceGetRemappedRows.as_ref() {
        Ok(s) => s,
        Err(e) => return Err(NvmlError::FailedToLoadSymbol(e.to_string())),
    };
    let (mut corr, mut unc, mut pending, mut failure) = (0u32, 0u32, 0u32, 0u32);
    // SAFETY: the handle comes from the wrapper and stays valid while `nvml` lives; the four
    // output pointers are valid, distinct locals.
    let rc = unsafe { sym(d.handle(), &mut corr, &mut unc, &mut pending, &mut failure) };
    nvml_return(rc)?;
    Ok(RemappedRows {
        correctable: corr,
        uncorrectable: unc,
        pending: pending != 0,
        failure: failure != 0,
    })
}

/// `nvmlDeviceGetGpuFabricInfo`, which `nvml-wrapper` 0.13 does not wrap (its `sys` table
/// has the symbol); a library without it (drivers before R530) reads as unsupported.
fn fabric_info(nvml: &Nvml, d: &Device<'_>) -> Result<FabricInfo, NvmlError> {
    let sym = match nvml.lib().nvmlDeviceGetGpuFabricInfo.as_ref() {
        Ok(s) => s,
        Err(e) => return Err(NvmlError::FailedToLoadSymbol(e.to_string())),
    };
    let mut info = sys::nvmlGpuFabricInfo_t {
        clusterUuid: [0; 16],
        status: 0,
        cliqueId: 0,
        state: 0,
    };
    // SAFETY: the handle comes from the wrapper and stays valid while `nvml` lives; `info` is
    // a valid, writable struct of the type the function fills.
    let rc = unsafe { sym(d.handle(), &mut info) };
    nvml_return(rc)?;
    if u32::from(info.state) == sys::NVML_GPU_FABRIC_STATE_NOT_SUPPORTED {
        return Err(NvmlError::NotSupported);
    }
    Ok(FabricInfo {
        state: info.state,
        status: info.status,
        clique_id: info.cliqueId,
    })
}

fn register_xids<'n>(
    nvml: &'n Nvml,
    set: &mut Option<EventSet<'n>>,
    registered: &mut Vec<u32>,
) -> Result<Vec<u32>, NvmlFailure> {
    if set.is_none() {
        *set = Some(
            nvml.create_event_set()
                .map_err(|e| NvmlFailure::Query(format!("event set: {e}")))?,
        );
    }
    let Some(s) = set.as_ref() else {
        return Err(NvmlFailure::Query("event set missing".into()));
    };
    let sym = nvml
        .lib()
        .nvmlDeviceRegisterEvents
        .as_ref()
        .map_err(|e| NvmlFailure::Query(format!("nvmlDeviceRegisterEvents: {e}")))?;
    let count = nvml
        .device_count()
        .map_err(|e| NvmlFailure::Query(format!("device count: {e}")))?;
    let mut failed = Vec::new();
    for index in 0..count {
        if registered.contains(&index) {
            continue;
        }
        let ok = match nvml.device_by_index(index) {
            // The raw call (rather than `Device::register_events`, which frees the whole set
            // when one GPU fails) keeps the other GPUs' registrations when one is lost.
            // SAFETY: valid device and event set handles from the wrapper, both alive here.
            Ok(d) => unsafe {
                nvml_return(sym(
                    d.handle(),
                    EventTypes::CRITICAL_XID_ERROR.bits(),
                    s.handle(),
                ))
                .is_ok()
            },
            Err(_) => false,
        };
        if ok {
            registered.push(index);
        } else {
            failed.push(index);
        }
    }
    Ok(failed)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn drain(set: &EventSet<'_>, wait_ms: u32) -> Vec<XidEvent> {
    let mut out = Vec::new();
    let mut wait = wait_ms;
    while out.len() < MAX_XIDS_PER_DRAIN {
        match set.wait(wait) {
            Ok(ev) => {
                wait = 0;
                let Some(XidError::Value(code)) = ev.event_data else {
                    continue;
                };
                out.push(XidEvent {
                    id: 0,
                    gpu_index: ev.device.index().ok(),
                    gpu_uuid: ev.device.uuid().ok(),
                    code,
                    time: unix_now(),
                });
            }
            // Timeout: nothing (more) pending. GpuLost: a registered GPU is gone and nothing
            // is pending (gpu.lost reports it). Anything else: stop, keep what we have.
            Err(_) => break,
        }
    }
    out
}
