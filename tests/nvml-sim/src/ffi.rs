//! The exported NVML C functions.
//!
//! Names, signatures and struct layouts are NVIDIA's `nvml.h`, through `nvml-wrapper-sys`'s
//! bindings. Every function catches panics (returning `NVML_ERROR_UNKNOWN`), checks that the
//! library is initialised (`NVML_ERROR_UNINITIALIZED`), that handles are ours and output
//! pointers non-NULL (`NVML_ERROR_INVALID_ARGUMENT`), blocks while a hang is injected, and
//! returns `NVML_ERROR_GPU_IS_LOST` for a GPU marked `lost`.
//!
//! These functions are not meant to be called from Rust: load the cdylib through
//! `nvml-wrapper` instead.

#![allow(non_snake_case)] // NVML's own function and parameter names.

use std::ffi::{CStr, c_char, c_int, c_uint, c_ulonglong};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use nvml_wrapper_sys::bindings as sys;

use crate::runtime::{self, *};
use crate::state::{Gpu, PciAddress, ProcessKind, unix_now};

/// Runs an NVML call body, turning its result (or a panic) into a return code.
pub(crate) fn guard(f: impl FnOnce() -> Result<(), Ret>) -> Ret {
    let _call = runtime::InFlight::enter();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => SUCCESS,
        Ok(Err(code)) => code,
        Err(_) => UNKNOWN,
    }
}

/// Writes `v` through an output pointer.
///
/// # Safety
/// `p` must be NULL or valid for a write of `T`.
pub(crate) unsafe fn put<T>(p: *mut T, v: T) -> Result<(), Ret> {
    if p.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    // SAFETY: non-NULL, and valid for writes per this function's contract.
    unsafe { p.write(v) };
    Ok(())
}

/// Copies `s` and a terminating NUL into a caller buffer of `len` bytes.
///
/// # Safety
/// `buf` must be NULL or valid for writes of `len` bytes.
unsafe fn put_str(buf: *mut c_char, len: c_uint, s: &str) -> Result<(), Ret> {
    if buf.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    let bytes = s.as_bytes();
    if bytes.len() + 1 > len as usize {
        return Err(INSUFFICIENT_SIZE);
    }
    // SAFETY: `buf` holds at least `len` >= bytes.len() + 1 bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), bytes.len());
        buf.add(bytes.len()).write(0);
    }
    Ok(())
}

/// Copies `s` into a fixed C char array, NUL-terminated and truncated if needed.
fn fill_chars<const N: usize>(dst: &mut [c_char; N], s: &str) {
    let bytes = s.as_bytes();
    let n = bytes.len().min(N.saturating_sub(1));
    for (d, b) in dst.iter_mut().zip(&bytes[..n]) {
        *d = *b as c_char;
    }
    for d in dst.iter_mut().skip(n) {
        *d = 0;
    }
}

/// Reads a C string argument.
///
/// # Safety
/// `s` must be NULL or a valid NUL-terminated string.
unsafe fn arg_str<'a>(s: *const c_char) -> Result<&'a str, Ret> {
    if s.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    // SAFETY: non-NULL and NUL-terminated per this function's contract.
    let s = unsafe { CStr::from_ptr(s) };
    s.to_str().map_err(|_| INVALID_ARGUMENT)
}

fn enable_state(on: bool) -> sys::nvmlEnableState_t {
    if on {
        sys::nvmlEnableState_enum_NVML_FEATURE_ENABLED
    } else {
        sys::nvmlEnableState_enum_NVML_FEATURE_DISABLED
    }
}

fn supported<T: Copy>(v: Option<T>) -> Result<T, Ret> {
    v.ok_or(NOT_SUPPORTED)
}

const MIB: u64 = 1024 * 1024;

/// `NVML_VALUE_NOT_AVAILABLE` as the unsigned types NVML stores it in.
const NOT_AVAILABLE_U64: u64 = u64::MAX;
const NOT_AVAILABLE_U32: u32 = u32::MAX;

/// Event types every simulated GPU reports as supported. Only XIDs are ever delivered.
pub(crate) const SUPPORTED_EVENTS: u64 = (sys::nvmlEventTypeSingleBitEccError
    | sys::nvmlEventTypeDoubleBitEccError
    | sys::nvmlEventTypePState
    | sys::nvmlEventTypeXidCriticalError
    | sys::nvmlEventTypeClock) as u64;

fn error_cstr(code: Ret) -> &'static CStr {
    match code {
        sys::nvmlReturn_enum_NVML_SUCCESS => c"Success",
        sys::nvmlReturn_enum_NVML_ERROR_UNINITIALIZED => c"Uninitialized",
        sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT => c"Invalid Argument",
        sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED => c"Not Supported",
        sys::nvmlReturn_enum_NVML_ERROR_NO_PERMISSION => c"Insufficient Permissions",
        sys::nvmlReturn_enum_NVML_ERROR_ALREADY_INITIALIZED => c"Already Initialized",
        sys::nvmlReturn_enum_NVML_ERROR_NOT_FOUND => c"Not Found",
        sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE => c"Insufficient Size",
        sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_POWER => c"Insufficient External Power",
        sys::nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED => c"Driver Not Loaded",
        sys::nvmlReturn_enum_NVML_ERROR_TIMEOUT => c"Timeout",
        sys::nvmlReturn_enum_NVML_ERROR_IRQ_ISSUE => c"Interrupt Request Issue",
        sys::nvmlReturn_enum_NVML_ERROR_LIBRARY_NOT_FOUND => c"NVML Shared Library Not Found",
        sys::nvmlReturn_enum_NVML_ERROR_FUNCTION_NOT_FOUND => c"Function Not Found",
        sys::nvmlReturn_enum_NVML_ERROR_CORRUPTED_INFOROM => c"Corrupted infoROM",
        sys::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST => c"GPU is lost",
        sys::nvmlReturn_enum_NVML_ERROR_RESET_REQUIRED => c"GPU requires restart",
        sys::nvmlReturn_enum_NVML_ERROR_OPERATING_SYSTEM => {
            c"The operating system has blocked the request"
        }
        sys::nvmlReturn_enum_NVML_ERROR_LIB_RM_VERSION_MISMATCH => {
            c"RM has detected an NVML/RM version mismatch"
        }
        sys::nvmlReturn_enum_NVML_ERROR_IN_USE => c"In use by another client",
        sys::nvmlReturn_enum_NVML_ERROR_MEMORY => c"Insufficient Memory",
        sys::nvmlReturn_enum_NVML_ERROR_NO_DATA => c"No data",
        sys::nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH => c"Argument version mismatch",
        sys::nvmlReturn_enum_NVML_ERROR_DEPRECATED => c"Deprecated",
        sys::nvmlReturn_enum_NVML_ERROR_NOT_READY => c"Not ready",
        sys::nvmlReturn_enum_NVML_ERROR_GPU_NOT_FOUND => c"GPU not found",
        sys::nvmlReturn_enum_NVML_ERROR_INVALID_STATE => c"Invalid state",
        _ => c"Unknown Error",
    }
}

/// Declares an exported NVML function returning `nvmlReturn_t`, with panic catching.
macro_rules! nvml_fn {
    ($(#[doc = $doc:literal])+ fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[doc = $doc])+
        ///
        /// # Safety
        /// As in NVIDIA's `nvml.h`: pointer arguments are NULL or valid for the access the
        /// function makes (buffers for the length passed).
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> sys::nvmlReturn_t {
            crate::latency::pay(stringify!($name));
            guard(move || $body)
        }
    };
}

// ---------------------------------------------------------------------------------------
// Initialisation and system queries
// ---------------------------------------------------------------------------------------

nvml_fn! {
    /// Initialises the library (reference counted): reads `SGPU_NVML_SIM_STATE`.
    fn nvmlInit_v2() { runtime::init() }
}

nvml_fn! {
    /// The pre-`_v2` name of `nvmlInit_v2`.
    fn nvmlInit() { runtime::init() }
}

nvml_fn! {
    /// `nvmlInit_v2` with flags (accepted and ignored).
    fn nvmlInitWithFlags(flags: c_uint) {
        let _ = flags;
        runtime::init()
    }
}

nvml_fn! {
    /// Drops one reference taken by an init; the last frees all event sets.
    fn nvmlShutdown() { runtime::shutdown() }
}

/// The description of a return code (static storage).
///
/// # Safety
/// None: any value is accepted.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlErrorString(result: sys::nvmlReturn_t) -> *const c_char {
    match catch_unwind(|| error_cstr(result).as_ptr()) {
        Ok(p) => p,
        Err(_) => c"Unknown Error".as_ptr(),
    }
}

nvml_fn! {
    /// `driver_version` of the state file.
    fn nvmlSystemGetDriverVersion(version: *mut c_char, length: c_uint) {
        let snap = wait_not_hung(None)?;
        let v = snap.state.driver_version.as_deref().ok_or(NOT_SUPPORTED)?;
        // SAFETY: the caller's buffer of `length` bytes, as NVML's API says; put_str checks for
        // NULL and writes at most that many.
        unsafe { put_str(version, length, v) }
    }
}

nvml_fn! {
    /// `nvml_version` of the state file.
    fn nvmlSystemGetNVMLVersion(version: *mut c_char, length: c_uint) {
        let snap = wait_not_hung(None)?;
        let v = snap.state.nvml_version.as_deref().ok_or(NOT_SUPPORTED)?;
        // SAFETY: the caller's buffer of `length` bytes, as NVML's API says; put_str checks for
        // NULL and writes at most that many.
        unsafe { put_str(version, length, v) }
    }
}

fn cuda_driver_version(out: *mut c_int) -> Result<(), Ret> {
    let snap = wait_not_hung(None)?;
    let v = supported(snap.state.cuda_driver_version)?;
    // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says; put
    // checks for NULL.
    unsafe { put(out, v) }
}

nvml_fn! {
    /// `cuda_driver_version` of the state file.
    fn nvmlSystemGetCudaDriverVersion(cudaDriverVersion: *mut c_int) {
        cuda_driver_version(cudaDriverVersion)
    }
}

nvml_fn! {
    /// `cuda_driver_version` of the state file.
    fn nvmlSystemGetCudaDriverVersion_v2(cudaDriverVersion: *mut c_int) {
        cuda_driver_version(cudaDriverVersion)
    }
}

fn device_count(out: *mut c_uint) -> Result<(), Ret> {
    let snap = wait_not_hung(None)?;
    let n = snap.state.gpus.len().min(MAX_GPUS) as c_uint;
    // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says; put
    // checks for NULL.
    unsafe { put(out, n) }
}

nvml_fn! {
    /// Number of `[[gpu]]` entries (lost GPUs included, as the real driver counts them).
    fn nvmlDeviceGetCount_v2(deviceCount: *mut c_uint) { device_count(deviceCount) }
}

nvml_fn! {
    /// The pre-`_v2` name of `nvmlDeviceGetCount_v2`.
    fn nvmlDeviceGetCount(deviceCount: *mut c_uint) { device_count(deviceCount) }
}

// ---------------------------------------------------------------------------------------
// Device handles
// ---------------------------------------------------------------------------------------

/// Returns the handle of the first GPU matching `pred`, with the lost/hang rules of a call
/// on that GPU.
fn handle_where(out: *mut sys::nvmlDevice_t, pred: impl Fn(&Gpu) -> bool) -> Result<(), Ret> {
    if out.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    let snap = wait_not_hung(None)?;
    let index = snap
        .state
        .gpus
        .iter()
        .position(pred)
        .filter(|i| *i < MAX_GPUS)
        .ok_or(NOT_FOUND)?;
    let handle = device_handle(index);
    with_gpu(handle, |_, _, _| Ok(()))?;
    // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says; put
    // checks for NULL.
    unsafe { put(out, handle) }
}

fn handle_by_index(index: c_uint, out: *mut sys::nvmlDevice_t) -> Result<(), Ret> {
    if out.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    let snap = wait_not_hung(None)?;
    let index = index as usize;
    if index >= snap.state.gpus.len().min(MAX_GPUS) {
        return Err(INVALID_ARGUMENT);
    }
    let handle = device_handle(index);
    with_gpu(handle, |_, _, _| Ok(()))?;
    // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says; put
    // checks for NULL.
    unsafe { put(out, handle) }
}

nvml_fn! {
    /// Handle of GPU `index`; `GPU_IS_LOST` if that GPU is lost.
    fn nvmlDeviceGetHandleByIndex_v2(index: c_uint, device: *mut sys::nvmlDevice_t) {
        handle_by_index(index, device)
    }
}

nvml_fn! {
    /// The pre-`_v2` name of `nvmlDeviceGetHandleByIndex_v2`.
    fn nvmlDeviceGetHandleByIndex(index: c_uint, device: *mut sys::nvmlDevice_t) {
        handle_by_index(index, device)
    }
}

nvml_fn! {
    /// Handle of the GPU with this UUID (`NOT_FOUND` if none).
    fn nvmlDeviceGetHandleByUUID(uuid: *const c_char, device: *mut sys::nvmlDevice_t) {
        // SAFETY: the caller's NUL-terminated string, as NVML's API says; arg_str checks for
        // NULL.
        let uuid = unsafe { arg_str(uuid) }?;
        handle_where(device, |g| g.uuid == uuid)
    }
}

nvml_fn! {
    /// Handle of the GPU with this serial (`NOT_FOUND` if none).
    fn nvmlDeviceGetHandleBySerial(serial: *const c_char, device: *mut sys::nvmlDevice_t) {
        // SAFETY: the caller's NUL-terminated string, as NVML's API says; arg_str checks for
        // NULL.
        let serial = unsafe { arg_str(serial) }?;
        handle_where(device, |g| g.serial.as_deref() == Some(serial))
    }
}

fn handle_by_pci(bus_id: *const c_char, out: *mut sys::nvmlDevice_t) -> Result<(), Ret> {
    // SAFETY: the caller's NUL-terminated string, as NVML's API says; arg_str checks for NULL.
    let s = unsafe { arg_str(bus_id) }?;
    let want = PciAddress::parse(s).ok_or(INVALID_ARGUMENT)?;
    handle_where(out, |g| g.pci_address() == Some(want))
}

nvml_fn! {
    /// Handle of the GPU at this PCI address (any of NVML's accepted spellings).
    fn nvmlDeviceGetHandleByPciBusId_v2(pciBusId: *const c_char, device: *mut sys::nvmlDevice_t) {
        handle_by_pci(pciBusId, device)
    }
}

nvml_fn! {
    /// The pre-`_v2` name of `nvmlDeviceGetHandleByPciBusId_v2`.
    fn nvmlDeviceGetHandleByPciBusId(pciBusId: *const c_char, device: *mut sys::nvmlDevice_t) {
        handle_by_pci(pciBusId, device)
    }
}

// ---------------------------------------------------------------------------------------
// Identity
// ---------------------------------------------------------------------------------------

nvml_fn! {
    /// The GPU's NVML index.
    fn nvmlDeviceGetIndex(device: sys::nvmlDevice_t, index: *mut c_uint) {
        // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says; put
        // checks for NULL.
        with_gpu(device, |_, _, i| unsafe { put(index, i as c_uint) })
    }
}

nvml_fn! {
    /// `uuid`.
    fn nvmlDeviceGetUUID(device: sys::nvmlDevice_t, uuid: *mut c_char, length: c_uint) {
        // SAFETY: the caller's buffer of `length` bytes, as NVML's API says; put_str checks for
        // NULL and writes at most that many.
        with_device(device, |d| {
            let v = match &d {
                Device::Gpu { gpu, .. } => gpu.uuid.as_str(),
                Device::Mig(m) => m.instance.uuid.as_str(),
            };
            // SAFETY: as above.
            unsafe { put_str(uuid, length, v) }
        })
    }
}

nvml_fn! {
    /// `name`; a MIG device's is `<parent name> MIG <profile>`.
    fn nvmlDeviceGetName(device: sys::nvmlDevice_t, name: *mut c_char, length: c_uint) {
        with_device(device, |d| {
            let v = match &d {
                Device::Gpu { gpu, .. } => gpu.name.clone().ok_or(NOT_SUPPORTED)?,
                Device::Mig(m) => format!(
                    "{} MIG {}",
                    m.parent.name.as_deref().unwrap_or("NVIDIA GPU"),
                    m.instance.profile
                ),
            };
            // SAFETY: the caller's buffer of `length` bytes, as NVML's API says; put_str checks
            // for NULL and writes at most that many.
            unsafe { put_str(name, length, &v) }
        })
    }
}

nvml_fn! {
    /// `serial`.
    fn nvmlDeviceGetSerial(device: sys::nvmlDevice_t, serial: *mut c_char, length: c_uint) {
        with_gpu(device, |_, g, _| {
            let v = g.serial.as_deref().ok_or(NOT_SUPPORTED)?;
            // SAFETY: the caller's buffer of `length` bytes, as NVML's API says; put_str checks
            // for NULL and writes at most that many.
            unsafe { put_str(serial, length, v) }
        })
    }
}

fn pci_info(device: sys::nvmlDevice_t, out: *mut sys::nvmlPciInfo_t) -> Result<(), Ret> {
    with_gpu(device, |_, g, _| {
        let a = g.pci_address().ok_or(NOT_SUPPORTED)?;
        let mut info = sys::nvmlPciInfo_t {
            busIdLegacy: [0; 16],
            domain: a.domain,
            bus: a.bus,
            device: a.device,
            pciDeviceId: g
                .pci_device_id
                .unwrap_or(crate::state::DEFAULT_PCI_DEVICE_ID),
            pciSubSystemId: g
                .pci_subsystem_id
                .unwrap_or(crate::state::DEFAULT_PCI_SUBSYSTEM_ID),
            busId: [0; 32],
        };
        fill_chars(&mut info.busIdLegacy, &a.bus_id_legacy());
        fill_chars(&mut info.busId, &a.bus_id());
        // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says; put
        // checks for NULL.
        unsafe { put(out, info) }
    })
}

nvml_fn! {
    /// PCI address and ids (`pci_bus_id`, `pci_device_id`, `pci_subsystem_id`).
    fn nvmlDeviceGetPciInfo_v3(device: sys::nvmlDevice_t, pci: *mut sys::nvmlPciInfo_t) {
        pci_info(device, pci)
    }
}

nvml_fn! {
    /// Same layout and answer as `nvmlDeviceGetPciInfo_v3`.
    fn nvmlDeviceGetPciInfo_v2(device: sys::nvmlDevice_t, pci: *mut sys::nvmlPciInfo_t) {
        pci_info(device, pci)
    }
}

nvml_fn! {
    /// `minor_number`.
    fn nvmlDeviceGetMinorNumber(device: sys::nvmlDevice_t, minorNumber: *mut c_uint) {
        // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says; put
        // checks for NULL.
        with_gpu(device, |_, g, _| unsafe { put(minorNumber, supported(g.minor_number)?) })
    }
}

// ---------------------------------------------------------------------------------------
// Thermals, power, energy, utilisation, memory
// ---------------------------------------------------------------------------------------

nvml_fn! {
    /// `temperature_c` (sensor `NVML_TEMPERATURE_GPU` only).
    fn nvmlDeviceGetTemperature(
        device: sys::nvmlDevice_t,
        sensorType: sys::nvmlTemperatureSensors_t,
        temp: *mut c_uint,
    ) {
        with_gpu(device, |_, g, _| {
            if sensorType != sys::nvmlTemperatureSensors_enum_NVML_TEMPERATURE_GPU {
                return Err(INVALID_ARGUMENT);
            }
            // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says;
            // put checks for NULL.
            unsafe { put(temp, supported(g.temperature_c)?) }
        })
    }
}

nvml_fn! {
    /// `temp_shutdown_c`, `temp_slowdown_c`, `temp_mem_max_c`, `temp_gpu_max_c`; other
    /// thresholds are not supported.
    fn nvmlDeviceGetTemperatureThreshold(
        device: sys::nvmlDevice_t,
        thresholdType: sys::nvmlTemperatureThresholds_t,
        temp: *mut c_uint,
    ) {
        with_gpu(device, |_, g, _| {
            let v = match thresholdType {
                sys::nvmlTemperatureThresholds_enum_NVML_TEMPERATURE_THRESHOLD_SHUTDOWN => {
                    g.temp_shutdown_c
                }
                sys::nvmlTemperatureThresholds_enum_NVML_TEMPERATURE_THRESHOLD_SLOWDOWN => {
                    g.temp_slowdown_c
                }
                sys::nvmlTemperatureThresholds_enum_NVML_TEMPERATURE_THRESHOLD_MEM_MAX => {
                    g.temp_mem_max_c
                }
                sys::nvmlTemperatureThresholds_enum_NVML_TEMPERATURE_THRESHOLD_GPU_MAX => {
                    g.temp_gpu_max_c
                }
                t if t < sys::nvmlTemperatureThresholds_enum_NVML_TEMPERATURE_THRESHOLD_COUNT => {
                    None
                }
                _ => return Err(INVALID_ARGUMENT),
            };
            // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says;
            // put checks for NULL.
            unsafe { put(temp, supported(v)?) }
        })
    }
}

nvml_fn! {
    /// `power_usage_mw`.
    fn nvmlDeviceGetPowerUsage(device: sys::nvmlDevice_t, power: *mut c_uint) {
        // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says; put
        // checks for NULL.
        with_gpu(device, |_, g, _| unsafe { put(power, supported(g.power_usage_mw)?) })
    }
}

nvml_fn! {
    /// `power_limit_mw`.
    fn nvmlDeviceGetPowerManagementLimit(device: sys::nvmlDevice_t, limit: *mut c_uint) {
        // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says; put
        // checks for NULL.
        with_gpu(device, |_, g, _| unsafe { put(limit, supported(g.power_limit_mw)?) })
    }
}

nvml_fn! {
    /// `enforced_power_limit_mw`, else `power_limit_mw`.
    fn nvmlDeviceGetEnforcedPowerLimit(device: sys::nvmlDevice_t, limit: *mut c_uint) {
        with_gpu(device, |_, g, _| {
            let v = supported(g.enforced_power_limit_mw.or(g.power_limit_mw))?;
            // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says;
            // put checks for NULL.
            unsafe { put(limit, v) }
        })
    }
}

nvml_fn! {
    /// `energy_mj_at_epoch + power_usage_mw × (now − epoch)`, millijoules.
    fn nvmlDeviceGetTotalEnergyConsumption(device: sys::nvmlDevice_t, energy: *mut c_ulonglong) {
        with_gpu(device, |snap, g, _| {
            let v = g.energy_mj(snap.epoch, unix_now()).ok_or(NOT_SUPPORTED)?;
            // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says;
            // put checks for NULL.
            unsafe { put(energy, v) }
        })
    }
}

nvml_fn! {
    /// `utilization_gpu` and `utilization_memory` (both must be set); `NOT_SUPPORTED` while
    /// MIG is on (N/A in every MIG capture).
    fn nvmlDeviceGetUtilizationRates(
        device: sys::nvmlDevice_t,
        utilization: *mut sys::nvmlUtilization_t,
    ) {
        with_gpu(device, |_, g, _| {
            if g.mig_on() {
                return Err(NOT_SUPPORTED);
            }
            let u = sys::nvmlUtilization_t {
                gpu: supported(g.utilization_gpu)?,
                memory: supported(g.utilization_memory)?,
            };
            // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says;
            // put checks for NULL.
            unsafe { put(utilization, u) }
        })
    }
}

/// (total, reserved, used, free) in bytes of a GPU or MIG device.
fn device_memory(d: &Device<'_>) -> Result<(u64, u64, u64, u64), Ret> {
    match d {
        Device::Gpu { gpu, .. } => memory_bytes(gpu),
        Device::Mig(m) => {
            let (total, used) = m.memory_bytes();
            Ok((total, 0, used, total - used))
        }
    }
}

/// (total, reserved, used, free) in bytes.
fn memory_bytes(g: &Gpu) -> Result<(u64, u64, u64, u64), Ret> {
    let total = supported(g.memory_total_mib)?.saturating_mul(MIB);
    let reserved = g.memory_reserved_mib.saturating_mul(MIB).min(total);
    let used = g.memory_used_mib.saturating_mul(MIB).min(total - reserved);
    Ok((total, reserved, used, total - reserved - used))
}

nvml_fn! {
    /// Memory, v1 layout: `used` includes the driver-reserved memory.
    fn nvmlDeviceGetMemoryInfo(device: sys::nvmlDevice_t, memory: *mut sys::nvmlMemory_t) {
        with_device(device, |d| {
            let (total, reserved, used, free) = device_memory(&d)?;
            let m = sys::nvmlMemory_t { total, free, used: used + reserved };
            // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says;
            // put checks for NULL.
            unsafe { put(memory, m) }
        })
    }
}

/// `NVML_STRUCT_VERSION(Memory, 2)`.
const MEMORY_V2_VERSION: c_uint =
    (std::mem::size_of::<sys::nvmlMemory_v2_t>() as c_uint) | (2 << 24);

nvml_fn! {
    /// Memory, v2 layout (`version` must be `nvmlMemory_v2`).
    fn nvmlDeviceGetMemoryInfo_v2(device: sys::nvmlDevice_t, memory: *mut sys::nvmlMemory_v2_t) {
        with_device(device, |d| {
            if memory.is_null() {
                return Err(INVALID_ARGUMENT);
            }
            // SAFETY: non-NULL; the caller provides an nvmlMemory_v2_t.
            let version = unsafe { (*memory).version };
            if version != MEMORY_V2_VERSION {
                return Err(ARGUMENT_VERSION_MISMATCH);
            }
            let (total, reserved, used, free) = device_memory(&d)?;
            let m = sys::nvmlMemory_v2_t { version, total, reserved, free, used };
            // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says;
            // put checks for NULL.
            unsafe { put(memory, m) }
        })
    }
}

// ---------------------------------------------------------------------------------------
// ECC, retired pages, remapped rows
// ---------------------------------------------------------------------------------------

nvml_fn! {
    /// `ecc_enabled` (current and pending alike).
    fn nvmlDeviceGetEccMode(
        device: sys::nvmlDevice_t,
        current: *mut sys::nvmlEnableState_t,
        pending: *mut sys::nvmlEnableState_t,
    ) {
        with_gpu(device, |_, g, _| {
            if current.is_null() || pending.is_null() {
                return Err(INVALID_ARGUMENT);
            }
            let on = supported(g.ecc_enabled)?;
            // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says;
            // put checks for NULL.
            unsafe {
                put(current, enable_state(on))?;
                put(pending, enable_state(on))
            }
        })
    }
}

nvml_fn! {
    /// `[gpu.ecc]` counters; `NOT_SUPPORTED` unless `ecc_enabled = true`.
    fn nvmlDeviceGetTotalEccErrors(
        device: sys::nvmlDevice_t,
        errorType: sys::nvmlMemoryErrorType_t,
        counterType: sys::nvmlEccCounterType_t,
        eccCounts: *mut c_ulonglong,
    ) {
        with_gpu(device, |_, g, _| {
            use sys::{
                nvmlEccCounterType_enum_NVML_AGGREGATE_ECC as AGGREGATE,
                nvmlEccCounterType_enum_NVML_VOLATILE_ECC as VOLATILE,
                nvmlMemoryErrorType_enum_NVML_MEMORY_ERROR_TYPE_CORRECTED as CORRECTED,
                nvmlMemoryErrorType_enum_NVML_MEMORY_ERROR_TYPE_UNCORRECTED as UNCORRECTED,
            };
            let e = &g.ecc;
            let v = match (errorType, counterType) {
                (CORRECTED, VOLATILE) => e.volatile_corrected,
                (UNCORRECTED, VOLATILE) => e.volatile_uncorrected,
                (CORRECTED, AGGREGATE) => e.aggregate_corrected,
                (UNCORRECTED, AGGREGATE) => e.aggregate_uncorrected,
                _ => return Err(INVALID_ARGUMENT),
            };
            if g.ecc_enabled != Some(true) {
                return Err(NOT_SUPPORTED);
            }
            // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says;
            // put checks for NULL.
            unsafe { put(eccCounts, v) }
        })
    }
}

/// The size-query protocol NVML list functions share: `*count` is the caller's capacity in,
/// the number of entries out; too small (including 0 with a NULL buffer) gives
/// `INSUFFICIENT_SIZE` with the needed count; an empty list is `SUCCESS` with 0.
///
/// # Safety
/// `count` must be NULL or valid; when `SUCCESS` is returned with entries, `write` is called
/// only after checking the capacity.
unsafe fn list_protocol(
    count: *mut c_uint,
    needed: usize,
    buffer_is_null: bool,
    write: impl FnOnce() -> Result<(), Ret>,
) -> Result<(), Ret> {
    if count.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    // SAFETY: non-NULL and valid per the contract.
    let capacity = unsafe { *count } as usize;
    let needed_c = c_uint::try_from(needed).map_err(|_| UNKNOWN)?;
    if needed == 0 {
        // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says; put
        // checks for NULL.
        return unsafe { put(count, 0) };
    }
    if capacity < needed {
        // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says; put
        // checks for NULL.
        unsafe { put(count, needed_c) }?;
        return Err(INSUFFICIENT_SIZE);
    }
    if buffer_is_null {
        return Err(INVALID_ARGUMENT);
    }
    write()?;
    // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says; put
    // checks for NULL.
    unsafe { put(count, needed_c) }
}

fn retired_pages(
    device: sys::nvmlDevice_t,
    cause: sys::nvmlPageRetirementCause_t,
    page_count: *mut c_uint,
    addresses: *mut c_ulonglong,
    timestamps: *mut c_ulonglong,
) -> Result<(), Ret> {
    with_gpu(device, |_, g, _| {
        let pages = match cause {
            sys::nvmlPageRetirementCause_enum_NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS => {
                g.retired_pages.as_ref().map(|r| &r.single_bit)
            }
            sys::nvmlPageRetirementCause_enum_NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR => {
                g.retired_pages.as_ref().map(|r| &r.double_bit)
            }
            _ => return Err(INVALID_ARGUMENT),
        };
        let pages = pages.ok_or(NOT_SUPPORTED)?;
        // SAFETY: the count and array pointers are the caller's, the array holding `*count`
        // entries as NVML's list protocol says; list_protocol checks for NULL and writes only
        // within that capacity.
        unsafe {
            list_protocol(page_count, pages.len(), addresses.is_null(), || {
                for (i, p) in pages.iter().enumerate() {
                    addresses.add(i).write(p.address);
                    if !timestamps.is_null() {
                        timestamps.add(i).write(p.timestamp);
                    }
                }
                Ok(())
            })
        }
    })
}

nvml_fn! {
    /// Retired page addresses for a cause (`[gpu.retired_pages]`).
    fn nvmlDeviceGetRetiredPages(
        device: sys::nvmlDevice_t,
        cause: sys::nvmlPageRetirementCause_t,
        pageCount: *mut c_uint,
        addresses: *mut c_ulonglong,
    ) {
        retired_pages(device, cause, pageCount, addresses, std::ptr::null_mut())
    }
}

nvml_fn! {
    /// Retired page addresses and timestamps for a cause.
    fn nvmlDeviceGetRetiredPages_v2(
        device: sys::nvmlDevice_t,
        cause: sys::nvmlPageRetirementCause_t,
        pageCount: *mut c_uint,
        addresses: *mut c_ulonglong,
        timestamps: *mut c_ulonglong,
    ) {
        retired_pages(device, cause, pageCount, addresses, timestamps)
    }
}

nvml_fn! {
    /// `retired_pages.pending`.
    fn nvmlDeviceGetRetiredPagesPendingStatus(
        device: sys::nvmlDevice_t,
        isPending: *mut sys::nvmlEnableState_t,
    ) {
        with_gpu(device, |_, g, _| {
            let r = g.retired_pages.as_ref().ok_or(NOT_SUPPORTED)?;
            // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says;
            // put checks for NULL.
            unsafe { put(isPending, enable_state(r.pending)) }
        })
    }
}

nvml_fn! {
    /// `[gpu.remapped_rows]`: correctable, uncorrectable, pending (0/1), failure (0/1).
    fn nvmlDeviceGetRemappedRows(
        device: sys::nvmlDevice_t,
        corrRows: *mut c_uint,
        uncRows: *mut c_uint,
        isPending: *mut c_uint,
        failureOccurred: *mut c_uint,
    ) {
        with_gpu(device, |_, g, _| {
            if corrRows.is_null() || uncRows.is_null() || isPending.is_null()
                || failureOccurred.is_null()
            {
                return Err(INVALID_ARGUMENT);
            }
            // N/A in every MIG capture
            if g.mig_on() {
                return Err(NOT_SUPPORTED);
            }
            let r = g.remapped_rows.as_ref().ok_or(NOT_SUPPORTED)?;
            // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says;
            // put checks for NULL.
            unsafe {
                put(corrRows, r.correctable)?;
                put(uncRows, r.uncorrectable)?;
                put(isPending, c_uint::from(r.pending))?;
                put(failureOccurred, c_uint::from(r.failure))
            }
        })
    }
}

// ---------------------------------------------------------------------------------------
// Clocks throttle reasons, PCIe, persistence, fans
// ---------------------------------------------------------------------------------------

fn throttle_reasons(device: sys::nvmlDevice_t, out: *mut c_ulonglong) -> Result<(), Ret> {
    with_gpu(device, |_, g, _| {
        if g.throttle_reasons.is_none() {
            return Err(NOT_SUPPORTED);
        }
        // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says; put
        // checks for NULL.
        unsafe { put(out, g.throttle_mask()) }
    })
}

fn supported_throttle_reasons(device: sys::nvmlDevice_t, out: *mut c_ulonglong) -> Result<(), Ret> {
    with_gpu(device, |_, g, _| {
        if g.throttle_reasons.is_none() {
            return Err(NOT_SUPPORTED);
        }
        let all = crate::state::ThrottleReason::ALL
            .iter()
            .fold(0, |m, r| m | r.bit());
        // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says; put
        // checks for NULL.
        unsafe { put(out, all) }
    })
}

nvml_fn! {
    /// `throttle_reasons` as NVML's bitmask.
    fn nvmlDeviceGetCurrentClocksThrottleReasons(
        device: sys::nvmlDevice_t,
        clocksThrottleReasons: *mut c_ulonglong,
    ) {
        throttle_reasons(device, clocksThrottleReasons)
    }
}

nvml_fn! {
    /// The newer name of `nvmlDeviceGetCurrentClocksThrottleReasons`.
    fn nvmlDeviceGetCurrentClocksEventReasons(
        device: sys::nvmlDevice_t,
        clocksEventReasons: *mut c_ulonglong,
    ) {
        throttle_reasons(device, clocksEventReasons)
    }
}

nvml_fn! {
    /// Every reason the simulator knows (when `throttle_reasons` is set).
    fn nvmlDeviceGetSupportedClocksThrottleReasons(
        device: sys::nvmlDevice_t,
        supportedClocksThrottleReasons: *mut c_ulonglong,
    ) {
        supported_throttle_reasons(device, supportedClocksThrottleReasons)
    }
}

nvml_fn! {
    /// The newer name of `nvmlDeviceGetSupportedClocksThrottleReasons`.
    fn nvmlDeviceGetSupportedClocksEventReasons(
        device: sys::nvmlDevice_t,
        supportedClocksEventReasons: *mut c_ulonglong,
    ) {
        supported_throttle_reasons(device, supportedClocksEventReasons)
    }
}

nvml_fn! {
    /// `pcie_gen_current`.
    fn nvmlDeviceGetCurrPcieLinkGeneration(device: sys::nvmlDevice_t, currLinkGen: *mut c_uint) {
        // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says; put
        // checks for NULL.
        with_gpu(device, |_, g, _| unsafe { put(currLinkGen, supported(g.pcie_gen_current)?) })
    }
}

nvml_fn! {
    /// `pcie_gen_max`.
    fn nvmlDeviceGetMaxPcieLinkGeneration(device: sys::nvmlDevice_t, maxLinkGen: *mut c_uint) {
        // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says; put
        // checks for NULL.
        with_gpu(device, |_, g, _| unsafe { put(maxLinkGen, supported(g.pcie_gen_max)?) })
    }
}

nvml_fn! {
    /// `pcie_gen_max` (the GPU's own maximum).
    fn nvmlDeviceGetGpuMaxPcieLinkGeneration(
        device: sys::nvmlDevice_t,
        maxLinkGenDevice: *mut c_uint,
    ) {
        // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says; put
        // checks for NULL.
        with_gpu(device, |_, g, _| unsafe { put(maxLinkGenDevice, supported(g.pcie_gen_max)?) })
    }
}

nvml_fn! {
    /// `pcie_width_current`.
    fn nvmlDeviceGetCurrPcieLinkWidth(device: sys::nvmlDevice_t, currLinkWidth: *mut c_uint) {
        // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says; put
        // checks for NULL.
        with_gpu(device, |_, g, _| unsafe { put(currLinkWidth, supported(g.pcie_width_current)?) })
    }
}

nvml_fn! {
    /// `pcie_width_max`.
    fn nvmlDeviceGetMaxPcieLinkWidth(device: sys::nvmlDevice_t, maxLinkWidth: *mut c_uint) {
        // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says; put
        // checks for NULL.
        with_gpu(device, |_, g, _| unsafe { put(maxLinkWidth, supported(g.pcie_width_max)?) })
    }
}

nvml_fn! {
    /// `pcie_replay_counter`.
    fn nvmlDeviceGetPcieReplayCounter(device: sys::nvmlDevice_t, value: *mut c_uint) {
        // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says; put
        // checks for NULL.
        with_gpu(device, |_, g, _| unsafe { put(value, supported(g.pcie_replay_counter)?) })
    }
}

nvml_fn! {
    /// `performance_state` (0 = P0 .. 15 = P15).
    fn nvmlDeviceGetPerformanceState(device: sys::nvmlDevice_t, pState: *mut sys::nvmlPstates_t) {
        with_gpu(device, |_, g, _| {
            let p = supported(g.performance_state)?;
            if p > 15 {
                return Err(UNKNOWN);
            }
            // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says;
            // put checks for NULL.
            unsafe { put(pState, p as sys::nvmlPstates_t) }
        })
    }
}

nvml_fn! {
    /// `mig_mode` (current) and `[gpu.mig] pending` (default: current); 1 enabled, 0 disabled.
    fn nvmlDeviceGetMigMode(
        device: sys::nvmlDevice_t,
        currentMode: *mut c_uint,
        pendingMode: *mut c_uint,
    ) {
        with_gpu(device, |_, g, _| {
            let on = supported(g.mig_mode)?;
            let pending = g.mig.as_ref().and_then(|m| m.pending).unwrap_or(on);
            // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says;
            // put checks for NULL.
            unsafe {
                put(currentMode, c_uint::from(on))?;
                put(pendingMode, c_uint::from(pending))
            }
        })
    }
}

nvml_fn! {
    /// `[gpu.fabric]`: state, status (`"Success"` or `NVML_ERROR_UNKNOWN`), clique id.
    fn nvmlDeviceGetGpuFabricInfo(
        device: sys::nvmlDevice_t,
        gpuFabricInfo: *mut sys::nvmlGpuFabricInfo_t,
    ) {
        with_gpu(device, |_, g, _| {
            let f = g.fabric.as_ref().ok_or(NOT_SUPPORTED)?;
            let status = if f.status.eq_ignore_ascii_case("success") {
                sys::nvmlReturn_enum_NVML_SUCCESS
            } else {
                sys::nvmlReturn_enum_NVML_ERROR_UNKNOWN
            };
            let info = sys::nvmlGpuFabricInfo_t {
                clusterUuid: [0; 16],
                status,
                cliqueId: f.clique_id,
                state: f.state.raw(),
            };
            // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says;
            // put checks for NULL.
            unsafe { put(gpuFabricInfo, info) }
        })
    }
}

nvml_fn! {
    /// `persistence_mode`.
    fn nvmlDeviceGetPersistenceMode(device: sys::nvmlDevice_t, mode: *mut sys::nvmlEnableState_t) {
        with_gpu(device, |_, g, _| {
            // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says;
            // put checks for NULL.
            unsafe { put(mode, enable_state(supported(g.persistence_mode)?)) }
        })
    }
}

nvml_fn! {
    /// Not supported (an SXM board has no fan of its own).
    fn nvmlDeviceGetFanSpeed(device: sys::nvmlDevice_t, speed: *mut c_uint) {
        let _ = speed;
        with_gpu(device, |_, _, _| Err(NOT_SUPPORTED))
    }
}

nvml_fn! {
    /// Not supported (an SXM board has no fan of its own).
    fn nvmlDeviceGetFanSpeed_v2(device: sys::nvmlDevice_t, fan: c_uint, speed: *mut c_uint) {
        let _ = (fan, speed);
        with_gpu(device, |_, _, _| Err(NOT_SUPPORTED))
    }
}

// ---------------------------------------------------------------------------------------
// Processes and accounting
// ---------------------------------------------------------------------------------------

/// Fills a process list with the `[[gpu.process]]` entries of `kind`: on a GPU with MIG on,
/// its own and every MIG device's (with their instance ids); on a MIG device, its own.
fn processes<T>(
    device: sys::nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut T,
    graphics: bool,
    make: impl Fn(u32, u64, (u32, u32)) -> T,
) -> Result<(), Ret> {
    with_device(device, |d| {
        let none = (NOT_AVAILABLE_U32, NOT_AVAILABLE_U32);
        let ids = |m: &crate::mig::MigInstance| (m.gpu_instance_id, m.compute_instance_id);
        let all: Vec<(&crate::state::Process, (u32, u32))> = match &d {
            Device::Gpu { gpu, .. } => gpu
                .processes
                .iter()
                .map(|p| (p, none))
                .chain(
                    gpu.mig_instances()
                        .iter()
                        .flat_map(|m| m.processes.iter().map(move |p| (p, ids(m)))),
                )
                .collect(),
            Device::Mig(m) => m
                .instance
                .processes
                .iter()
                .map(|p| (p, ids(m.instance)))
                .collect(),
        };
        let list: Vec<_> = all
            .into_iter()
            .filter(|(p, _)| {
                if graphics {
                    ProcessKind::in_graphics(p.kind)
                } else {
                    ProcessKind::in_compute(p.kind)
                }
            })
            .collect();
        // SAFETY: the count and array pointers are the caller's, the array holding `*count`
        // entries as NVML's list protocol says; list_protocol checks for NULL and writes only
        // within that capacity.
        unsafe {
            list_protocol(count, list.len(), infos.is_null(), || {
                for (i, (p, ids)) in list.iter().enumerate() {
                    let mem = p
                        .used_memory_mib
                        .map(|m| m.saturating_mul(MIB))
                        .unwrap_or(NOT_AVAILABLE_U64);
                    infos.add(i).write(make(p.pid, mem, *ids));
                }
                Ok(())
            })
        }
    })
}

fn info_v2(pid: u32, used: u64, (gi, ci): (u32, u32)) -> sys::nvmlProcessInfo_t {
    sys::nvmlProcessInfo_t {
        pid,
        usedGpuMemory: used,
        gpuInstanceId: gi,
        computeInstanceId: ci,
    }
}

fn info_v1(pid: u32, used: u64, _ids: (u32, u32)) -> sys::nvmlProcessInfo_v1_t {
    sys::nvmlProcessInfo_v1_t {
        pid,
        usedGpuMemory: used,
    }
}

nvml_fn! {
    /// Compute processes (`[[gpu.process]]` of kind compute).
    fn nvmlDeviceGetComputeRunningProcesses_v3(
        device: sys::nvmlDevice_t,
        infoCount: *mut c_uint,
        infos: *mut sys::nvmlProcessInfo_t,
    ) {
        processes(device, infoCount, infos, false, info_v2)
    }
}

nvml_fn! {
    /// Compute processes, `_v2` (same layout as `_v3`).
    fn nvmlDeviceGetComputeRunningProcesses_v2(
        device: sys::nvmlDevice_t,
        infoCount: *mut c_uint,
        infos: *mut sys::nvmlProcessInfo_t,
    ) {
        processes(device, infoCount, infos, false, info_v2)
    }
}

nvml_fn! {
    /// Compute processes, v1 layout (pid, used memory).
    fn nvmlDeviceGetComputeRunningProcesses(
        device: sys::nvmlDevice_t,
        infoCount: *mut c_uint,
        infos: *mut sys::nvmlProcessInfo_v1_t,
    ) {
        processes(device, infoCount, infos, false, info_v1)
    }
}

nvml_fn! {
    /// Graphics processes (`[[gpu.process]]` of kind graphics).
    fn nvmlDeviceGetGraphicsRunningProcesses_v3(
        device: sys::nvmlDevice_t,
        infoCount: *mut c_uint,
        infos: *mut sys::nvmlProcessInfo_t,
    ) {
        processes(device, infoCount, infos, true, info_v2)
    }
}

nvml_fn! {
    /// Graphics processes, `_v2` (same layout as `_v3`).
    fn nvmlDeviceGetGraphicsRunningProcesses_v2(
        device: sys::nvmlDevice_t,
        infoCount: *mut c_uint,
        infos: *mut sys::nvmlProcessInfo_t,
    ) {
        processes(device, infoCount, infos, true, info_v2)
    }
}

nvml_fn! {
    /// Graphics processes, v1 layout.
    fn nvmlDeviceGetGraphicsRunningProcesses(
        device: sys::nvmlDevice_t,
        infoCount: *mut c_uint,
        infos: *mut sys::nvmlProcessInfo_v1_t,
    ) {
        processes(device, infoCount, infos, true, info_v1)
    }
}

nvml_fn! {
    /// MPS compute processes: always none (the simulator has no MPS server).
    fn nvmlDeviceGetMPSComputeRunningProcesses_v3(
        device: sys::nvmlDevice_t,
        infoCount: *mut c_uint,
        infos: *mut sys::nvmlProcessInfo_t,
    ) {
        let _ = infos;
        // SAFETY: the count and array pointers are the caller's, the array holding `*count`
        // entries as NVML's list protocol says; list_protocol checks for NULL and writes only
        // within that capacity.
        with_gpu(device, |_, _, _| unsafe { list_protocol(infoCount, 0, true, || Ok(())) })
    }
}

nvml_fn! {
    /// `accounting_mode`.
    fn nvmlDeviceGetAccountingMode(device: sys::nvmlDevice_t, mode: *mut sys::nvmlEnableState_t) {
        with_gpu(device, |_, g, _| {
            // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says;
            // put checks for NULL.
            unsafe { put(mode, enable_state(supported(g.accounting_mode)?)) }
        })
    }
}

nvml_fn! {
    /// Pids of `[[gpu.process]]` while `accounting_mode = true`, else not supported.
    fn nvmlDeviceGetAccountingPids(
        device: sys::nvmlDevice_t,
        count: *mut c_uint,
        pids: *mut c_uint,
    ) {
        with_gpu(device, |_, g, _| {
            if g.accounting_mode != Some(true) {
                return Err(NOT_SUPPORTED);
            }
            let list: Vec<u32> = g.processes.iter().map(|p| p.pid).collect();
            // SAFETY: the count and array pointers are the caller's, the array holding `*count`
            // entries as NVML's list protocol says; list_protocol checks for NULL and writes
            // only within that capacity.
            unsafe {
                list_protocol(count, list.len(), pids.is_null(), || {
                    for (i, pid) in list.iter().enumerate() {
                        pids.add(i).write(*pid);
                    }
                    Ok(())
                })
            }
        })
    }
}

// ---------------------------------------------------------------------------------------
// Events (XIDs)
// ---------------------------------------------------------------------------------------

nvml_fn! {
    /// A new, empty event set; XIDs are judged against its creation time.
    fn nvmlEventSetCreate(set: *mut sys::nvmlEventSet_t) {
        if set.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        let id = runtime::event_set_create()?;
        // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says; put
        // checks for NULL.
        unsafe { put(set, event_set_handle(id)) }
    }
}

nvml_fn! {
    /// Event types the simulated GPU supports (ECC, P-state, XID, clock).
    fn nvmlDeviceGetSupportedEventTypes(device: sys::nvmlDevice_t, eventTypes: *mut c_ulonglong) {
        // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says; put
        // checks for NULL.
        with_gpu(device, |_, _, _| unsafe { put(eventTypes, SUPPORTED_EVENTS) })
    }
}

nvml_fn! {
    /// Registers event types of a GPU with a set (`NOT_SUPPORTED` for unsupported types).
    fn nvmlDeviceRegisterEvents(
        device: sys::nvmlDevice_t,
        eventTypes: c_ulonglong,
        set: sys::nvmlEventSet_t,
    ) {
        let index = with_gpu(device, |_, _, i| Ok(i))?;
        if eventTypes & !SUPPORTED_EVENTS != 0 {
            return Err(NOT_SUPPORTED);
        }
        runtime::event_set_register(event_set_id(set), index, eventTypes)
    }
}

nvml_fn! {
    /// Waits up to `timeoutms` for the set's next XID (see the crate docs for which XIDs).
    fn nvmlEventSetWait_v2(
        set: sys::nvmlEventSet_t,
        data: *mut sys::nvmlEventData_t,
        timeoutms: c_uint,
    ) {
        if data.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        let ev = runtime::event_set_wait(
            event_set_id(set),
            Duration::from_millis(u64::from(timeoutms)),
        )?;
        let out = sys::nvmlEventData_t {
            device: device_handle(ev.gpu),
            eventType: u64::from(sys::nvmlEventTypeXidCriticalError),
            eventData: ev.code,
            gpuInstanceId: NOT_AVAILABLE_U32,
            computeInstanceId: NOT_AVAILABLE_U32,
        };
        // SAFETY: the caller's out-pointers, each valid for one value as NVML's API says; put
        // checks for NULL.
        unsafe { put(data, out) }
    }
}

nvml_fn! {
    /// Frees an event set.
    fn nvmlEventSetFree(set: sys::nvmlEventSet_t) {
        runtime::event_set_free(event_set_id(set))
    }
}
