//! A simulated `libnvidia-ml.so.1`: NVIDIA's Management Library, driven by a TOML file.
//!
//! No machine sgpu is developed or tested on has a GPU. This crate builds, as a `cdylib`, a
//! library exporting the NVML C functions sgpu reaches through `nvml-wrapper` (same names,
//! signatures and struct layouts, from `nvml-wrapper-sys`), so the real wrapper code path
//! runs in tests. Its GPUs, counters and faults come from a state file that tests rewrite to
//! inject faults into running processes. On a real GPU node NVIDIA's library is loaded
//! instead. As an `rlib` (`nvml_sim`) it offers tests a typed API for that file ([`State`])
//! and for installing the library ([`install_library`]).
//!
//! # Getting the library
//!
//! Building the package (`cargo build -p nvml-sim`, or any `cargo test` that builds it) writes
//! `target/<profile>/libnvml_sim.so` (also under `target/<profile>/deps/`). Its soname is
//! already `libnvidia-ml.so.1`; only the file name differs, so copy it:
//!
//! ```text
//! cp target/debug/libnvml_sim.so /some/dir/libnvidia-ml.so.1
//! ```
//!
//! or, from a test, `nvml_sim::install_library(dir)` (which finds the build next to the
//! test executable) and open it with
//! `nvml_wrapper::Nvml::builder().lib_path(path.as_os_str()).init()`.
//!
//! # The state file
//!
//! `SGPU_NVML_SIM_STATE` names it; it is read when the process first initialises NVML. If the
//! variable is unset, or the file is missing, `nvmlInit` fails with
//! `NVML_ERROR_DRIVER_NOT_LOADED`; if the file does not parse or validate (an unknown key
//! included: a typo in a fault must not look like a healthy GPU) it fails with
//! `NVML_ERROR_UNKNOWN`. Either way a message naming the file (and the key) goes to stderr.
//!
//! ```toml
//! driver_version = "550.54.15"        # nvmlSystemGetDriverVersion
//! nvml_version = "12.550.54.15"       # nvmlSystemGetNVMLVersion
//! cuda_driver_version = 12040         # nvmlSystemGetCudaDriverVersion[_v2] (12.4)
//! epoch = 1732350000.0                # Unix s at which energy == energy_mj_at_epoch
//!                                     #   (default: the file's mtime)
//! hang = false                        # true: every call blocks until cleared
//! init_delay_ms = 0                   # a slow driver: every nvmlInit* takes this long
//! fork_log = "/tmp/forks.log"         # optional: one line per fork() of a process that
//!                                     #   loaded the library (see Semantics)
//!
//! [[gpu]]
//! index = 0                           # indices must be 0..n, each once
//! name = "NVIDIA H100 80GB HBM3"
//! uuid = "GPU-5f3e0c1a-9b7d-4e2f-8a61-0c2d4e6f8a10"   # unique, "GPU-..."
//! serial = "1654922000001"
//! pci_bus_id = "00000000:18:00.0"     # or "0000:18:00.0"; unique
//! pci_device_id = 0x233010DE          # optional (this default)
//! pci_subsystem_id = 0x16C110DE       # optional (this default)
//! minor_number = 0                    # /dev/nvidia0
//! memory_total_mib = 81559
//! memory_used_mib = 1024              # default 0
//! memory_reserved_mib = 0             # default 0; free = total - reserved - used
//! power_limit_mw = 700000
//! enforced_power_limit_mw = 700000    # default: power_limit_mw
//! power_usage_mw = 350000
//! energy_mj_at_epoch = 1000000000
//! temperature_c = 45
//! temp_slowdown_c = 90
//! temp_shutdown_c = 92
//! temp_gpu_max_c = 87
//! temp_mem_max_c = 95
//! utilization_gpu = 97                # percent
//! utilization_memory = 40             # percent
//! persistence_mode = true
//! ecc_enabled = true                  # ECC counters are reported only when true
//! pcie_gen_current = 5
//! pcie_gen_max = 5
//! pcie_width_current = 8              # < pcie_width_max: a degraded link
//! pcie_width_max = 16
//! throttle_reasons = ["hw_slowdown", "hw_thermal_slowdown"]
//! accounting_mode = false
//! lost = false                        # true: every call on it -> NVML_ERROR_GPU_IS_LOST
//! hang = false                        # true: calls on this GPU block until cleared
//!
//! [gpu.ecc]                           # all default 0
//! volatile_corrected = 3
//! volatile_uncorrected = 0
//! aggregate_corrected = 12
//! aggregate_uncorrected = 1
//!
//! [gpu.retired_pages]                 # absent: not supported (as on A100/H100)
//! pending = true
//! single_bit = [{ address = 0x1f2e3d, timestamp = 1732340000 }]
//! double_bit = [{ address = 0xabc000 }]
//!
//! [gpu.remapped_rows]                 # absent: not supported (pre-Ampere)
//! correctable = 2
//! uncorrectable = 1
//! pending = true
//! failure = false
//!
//! [[gpu.process]]
//! pid = 4242
//! used_memory_mib = 30000             # absent: NVML_VALUE_NOT_AVAILABLE
//! kind = "compute"                    # "compute" (default), "graphics", "compute_graphics"
//!
//! [[xid]]
//! id = 1                              # unique
//! gpu = 0                             # GPU index
//! code = 79
//! timestamp = 1732350100.5            # optional, Unix s
//! ```
//!
//! Every optional GPU value left unset makes its query return `NVML_ERROR_NOT_SUPPORTED`, as
//! a real driver does for a feature a board lacks. Throttle reason names: `gpu_idle`,
//! `applications_clocks_setting`, `sw_power_cap`, `hw_slowdown`, `sync_boost`,
//! `sw_thermal_slowdown`, `hw_thermal_slowdown`, `hw_power_brake` (or
//! `hw_power_brake_slowdown`), `display_clock_setting`, mapped to NVML's
//! `nvmlClocksThrottleReason*` bits.
//!
//! # Semantics
//!
//! - **Re-reading.** Every call `stat`s the file and re-parses it when its device, inode,
//!   size, mtime or ctime changed, so a rewrite is seen by the very next call of every
//!   process. [`State::save`] writes atomically (temporary file, then `rename`). If a later
//!   version fails to parse, the last good state stays in force and the error is logged to
//!   stderr once per file version.
//! - **Init and shutdown** are reference counted, as in NVIDIA's library: every successful
//!   `nvmlInit*` needs one `nvmlShutdown`; the first init (from zero) reads
//!   `SGPU_NVML_SIM_STATE` again, so a process may switch state files between sessions.
//!   Calls made while uninitialised return `NVML_ERROR_UNINITIALIZED`; a handle that is not a
//!   simulated GPU (or names one the file no longer has) returns
//!   `NVML_ERROR_INVALID_ARGUMENT`; an unset output pointer too.
//! - **Lost GPU** (`lost = true`): every call on the device returns `NVML_ERROR_GPU_IS_LOST`,
//!   and so do `nvmlDeviceGetHandleBy*` when they reach it; the device count still includes
//!   it, as the real driver's does.
//! - **Hang** (`hang = true`, top level or per GPU): calls block (the whole driver, or that
//!   GPU's calls) while the flag is present, re-reading the file every 50 ms, and proceed
//!   normally once a rewrite clears it. A killed process simply dies. `nvmlShutdown`,
//!   `nvmlErrorString` and `nvmlEventSetFree` never block.
//! - **Forks.** With `fork_log` set, the library (once loaded and initialised in a process)
//!   appends `fork pid=<pid> prog=<name> in_flight=<n>` to that file after every `fork()` of
//!   the process (a `pthread_atfork` parent handler), `n` being the NVML calls other threads
//!   were inside when it forked. A test reads it to prove that no thread is inside the driver
//!   (a slow `nvmlInit`, say) when a host process such as slurmstepd forks.
//! - **Energy.** `nvmlDeviceGetTotalEnergyConsumption` returns, in millijoules,
//!   `energy_mj_at_epoch + power_usage_mw × (now − epoch)` with times in Unix seconds (mW × s
//!   = mJ). Every process computes it from the same file and the wall clock, so a prolog and
//!   a later epilog see one coherent, growing counter. To change the power without a jump,
//!   save with [`State::write_preserving_energy`] (or [`State::update`]), which folds the
//!   energy accumulated so far into `energy_mj_at_epoch` and moves `epoch` to now. Leaving
//!   `epoch` unset makes it the file's mtime: fine for a hand-written file, but every rewrite
//!   then restarts the counters.
//! - **XIDs.** An event set is created at some instant (after the file is re-read). It
//!   delivers each `[[xid]]` entry exactly once, provided its GPU was registered for
//!   `nvmlEventTypeXidCriticalError` with that set (at any time before the wait), and either
//!   this process first saw the entry in the file after the set was created, or the entry's
//!   `timestamp` is at or after the set's creation time. Entries go out in file order, one
//!   per `nvmlEventSetWait_v2`, as `eventType = nvmlEventTypeXidCriticalError`, `eventData`
//!   = the code, instance ids = `0xFFFFFFFF`. With nothing to deliver the wait polls the file
//!   every 20 ms up to `timeoutms` and then returns `NVML_ERROR_TIMEOUT` (`0` = no wait).
//!   If a registered GPU is lost and nothing is pending, it returns
//!   `NVML_ERROR_GPU_IS_LOST`. "First seen" is remembered for the life of the process
//!   (the library is never unloaded), keyed by `id`, so ids must not be reused;
//!   [`State::inject_xid`] picks fresh ones and stamps them with the current time.
//!   Supported event types: single/double-bit ECC, P-state, XID and clock; registering
//!   others returns `NVML_ERROR_NOT_SUPPORTED`. Only XIDs are ever delivered.
//! - **Lists** (running processes, retired pages, accounting pids) follow NVML's size
//!   protocol: a count smaller than needed (such as 0 with a NULL buffer) returns
//!   `NVML_ERROR_INSUFFICIENT_SIZE` and the needed count; an empty list is success with 0.
//! - **Panics** inside the library are caught in every exported function and returned as
//!   `NVML_ERROR_UNKNOWN`; nothing read from the file or the system is unwrapped.

pub mod capture;
mod ffi;
pub mod latency;
pub mod mig;
pub mod nvlink;
mod runtime;
pub mod state;
pub mod testing;

use std::path::{Path, PathBuf};

pub use capture::{Capture, CaptureError, CaptureFormat};
pub use mig::{Mig, MigInstance};
pub use state::{
    EccCounters, Fabric, FabricState, Gpu, PciAddress, Process, ProcessKind, RemappedRows,
    RetiredPage, RetiredPages, STATE_ENV, State, StateError, ThrottleReason, Xid, unix_now,
};

/// The file name NVIDIA's library is loaded by, and the cdylib's soname.
pub const LIBRARY_NAME: &str = "libnvidia-ml.so.1";

/// The file name Cargo gives the built cdylib.
pub const CDYLIB_FILE: &str = "libnvml_sim.so";

/// Environment variable that, when set, names the built cdylib to use (overrides the search
/// next to the running executable).
pub const LIB_ENV: &str = "SGPU_NVML_SIM_LIB";

/// Why the built library could not be found or installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// No built cdylib where one was looked for.
    #[error(
        "nvml-sim: the simulated NVML library ({CDYLIB_FILE}) was not found; looked at: {}. \
         Build it with `cargo build -p nvml-sim` (same profile as the tests), or set \
         {LIB_ENV} to its path",
        .looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound {
        /// The paths tried.
        looked: Vec<PathBuf>,
    },
    /// Copying it failed.
    #[error("nvml-sim: cannot install {from} as {to}: {source}")]
    Copy {
        /// The built library.
        from: PathBuf,
        /// The destination.
        to: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Finds the built cdylib: `$SGPU_NVML_SIM_LIB` if set, else `libnvml_sim.so` in the running
/// executable's directory, its parent, or their `deps/` (a test executable lives in
/// `target/<profile>/deps/`; the library in `target/<profile>/` and `deps/`), the most
/// recently modified one if several exist.
pub fn find_cdylib() -> Result<PathBuf, InstallError> {
    if let Some(p) = std::env::var_os(LIB_ENV) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(InstallError::NotFound { looked: vec![p] });
    }
    let mut looked = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        let dirs: Vec<&Path> = exe.ancestors().skip(1).take(2).collect();
        for dir in dirs {
            looked.push(dir.join(CDYLIB_FILE));
            looked.push(dir.join("deps").join(CDYLIB_FILE));
        }
    }
    looked.dedup();
    let newest = looked
        .iter()
        .filter_map(|p| {
            let modified = std::fs::metadata(p).ok()?.modified().ok()?;
            Some((modified, p.clone()))
        })
        .max_by_key(|(m, _)| *m)
        .map(|(_, p)| p);
    newest.ok_or(InstallError::NotFound { looked })
}

/// Copies the built cdylib into `dir` as `libnvidia-ml.so.1` and returns that path. The copy
/// is atomic (temporary file, then `rename`), so a process that has the old file mapped
/// keeps working.
pub fn install_library(dir: impl AsRef<Path>) -> Result<PathBuf, InstallError> {
    let from = find_cdylib()?;
    let to = dir.as_ref().join(LIBRARY_NAME);
    let tmp = dir
        .as_ref()
        .join(format!(".{LIBRARY_NAME}.tmp.{}", std::process::id()));
    let result = std::fs::copy(&from, &tmp).and_then(|_| std::fs::rename(&tmp, &to));
    if let Err(source) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(InstallError::Copy { from, to, source });
    }
    Ok(to)
}
