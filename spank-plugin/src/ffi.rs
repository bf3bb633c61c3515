//! A small safe wrapper over the bindgen output for `slurm/spank.h`.
//!
//! The SPANK functions (`spank_getenv`, `slurm_error`, ...) live in the process that loads
//! the plugin (slurmstepd, srun, sbatch, slurmd: all export them from `libslurmfull`). They
//! are resolved at run time from the host process (`dlopen(NULL)`), not linked: the plugin
//! then has no undefined symbols, its unit tests link without Slurm, and a host that lacks a
//! function makes the plugin inert (logged to stderr) instead of failing to load.

use std::ffi::{CStr, CString, c_char, c_int};
use std::sync::OnceLock;

/// The generated bindings (types, constants, the `SpankApi` function table).
#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    missing_docs,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]
pub mod sys {
    include!(concat!(env!("OUT_DIR"), "/spank_bindings.rs"));
}

/// Where the plugin has been loaded (`spank_context()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// srun.
    Local,
    /// slurmstepd.
    Remote,
    /// sbatch/salloc.
    Allocator,
    /// slurmd.
    Slurmd,
    /// Prolog/Epilog run by slurmd (`slurmstepd spank prolog|epilog`).
    JobScript,
    /// Unknown.
    Error,
}

static API: OnceLock<Option<sys::SpankApi>> = OnceLock::new();

/// The host's SPANK functions, if it has them all.
fn api() -> Option<&'static sys::SpankApi> {
    API.get_or_init(|| {
        let this: libloading::Library = libloading::os::unix::Library::this().into();
        // SAFETY: the symbols are looked up with the types bindgen derived from the
        // installed spank.h, the header of the Slurm the plugin is loaded by
        // (plugin_version makes Slurm refuse a plugin built for another version).
        unsafe { sys::SpankApi::from_library(this) }.ok()
    })
    .as_ref()
}

fn cstring(s: &str) -> CString {
    // an interior NUL cannot be passed to C: cut the text there
    let cut = s.split('\0').next().unwrap_or_default();
    CString::new(cut).unwrap_or_default()
}

/// Logs through Slurm's `slurm_error` (slurmstepd's log, or `srun: error: ...` on the
/// user's terminal); stderr when the host has no SPANK.
pub fn log_error(msg: &str) {
    let m = cstring(msg);
    match api() {
        // SAFETY: "%s" with one NUL-terminated string argument.
        Some(a) => unsafe { (a.slurm_error)(c"%s".as_ptr(), m.as_ptr()) },
        None => eprintln!("error: {msg}"),
    }
}

/// Logs through Slurm's `slurm_info` (the daemon's log only).
pub fn log_info(msg: &str) {
    let m = cstring(msg);
    if let Some(a) = api() {
        // SAFETY: "%s" with one NUL-terminated string argument.
        unsafe { (a.slurm_info)(c"%s".as_ptr(), m.as_ptr()) }
    }
}

/// The plugin's context, as Slurm reports it.
pub fn context() -> Context {
    let Some(a) = api() else {
        return Context::Error;
    };
    // SAFETY: no arguments; valid in every context.
    match unsafe { (a.spank_context)() } {
        sys::spank_context::S_CTX_LOCAL => Context::Local,
        sys::spank_context::S_CTX_REMOTE => Context::Remote,
        sys::spank_context::S_CTX_ALLOCATOR => Context::Allocator,
        sys::spank_context::S_CTX_SLURMD => Context::Slurmd,
        sys::spank_context::S_CTX_JOB_SCRIPT => Context::JobScript,
        sys::spank_context::S_CTX_ERROR => Context::Error,
    }
}

fn strerror(a: &sys::SpankApi, rc: sys::spank_err_t) -> String {
    // SAFETY: spank_strerror returns a static string (or NULL).
    let p = unsafe { (a.spank_strerror)(rc) };
    if p.is_null() {
        return format!("spank error {rc}");
    }
    // SAFETY: non-NULL, NUL-terminated, static.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// A SPANK call that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpankError {
    /// The process exports no SPANK API (not slurmstepd, srun or salloc).
    #[error("SPANK functions not found in this process")]
    NoApi,
    /// Slurm refused the call (`spank_strerror`'s text).
    #[error("{0}")]
    Slurm(String),
}

/// A user option the plugin registers (`--name[=arg]`).
#[derive(Debug, Clone, Copy)]
pub struct OptionSpec {
    /// Long option name, without `--`.
    pub name: &'static CStr,
    /// One word describing the argument, `None` for a flag.
    pub arginfo: Option<&'static CStr>,
    /// Help text.
    pub usage: &'static CStr,
    /// Value passed back to the callback.
    pub val: c_int,
}

/// Signature of an option callback.
pub type OptionCallback = unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int;

/// The SPANK handle of one hook call; valid only for the duration of that call.
#[derive(Debug)]
pub struct Spank {
    raw: sys::spank_t,
}

impl Spank {
    /// Wraps the handle Slurm passed to a hook.
    ///
    /// # Safety
    /// `raw` must be the handle of the hook call in progress, and the `Spank` must not
    /// outlive it.
    pub unsafe fn from_raw(raw: sys::spank_t) -> Spank {
        Spank { raw }
    }

    /// Registers a user option (only valid in `slurm_spank_init`).
    pub fn register_option(&self, spec: OptionSpec, cb: OptionCallback) -> Result<(), SpankError> {
        let a = api().ok_or(SpankError::NoApi)?;
        // Slurm keeps the pointer: the option lives as long as the process (a few bytes,
        // once per process).
        let opt: &'static mut sys::spank_option = Box::leak(Box::new(sys::spank_option {
            name: spec.name.as_ptr().cast_mut(),
            arginfo: spec
                .arginfo
                .map_or(std::ptr::null_mut(), |s| s.as_ptr().cast_mut()),
            usage: spec.usage.as_ptr().cast_mut(),
            has_arg: c_int::from(spec.arginfo.is_some()),
            val: spec.val,
            cb: Some(cb),
        }));
        // SAFETY: valid handle (from_raw's contract) and a 'static option with 'static strings.
        let rc = unsafe { (a.spank_option_register)(self.raw, opt) };
        if rc == sys::ESPANK_SUCCESS {
            Ok(())
        } else {
            Err(SpankError::Slurm(strerror(a, rc)))
        }
    }

    /// A `uint32_t` item such as `S_JOB_ID` or `S_JOB_STEPID`.
    pub fn get_u32(&self, item: sys::spank_item_t) -> Result<u32, SpankError> {
        let a = api().ok_or(SpankError::NoApi)?;
        let mut v: u32 = 0;
        // SAFETY: the u32 items take one `uint32_t *`; callers pass only such items.
        let rc = unsafe { (a.spank_get_item)(self.raw, item, &mut v as *mut u32) };
        if rc == sys::ESPANK_SUCCESS {
            Ok(v)
        } else {
            Err(SpankError::Slurm(strerror(a, rc)))
        }
    }

    /// A `uid_t` item (`S_JOB_UID`).
    pub fn get_uid(&self) -> Result<u32, SpankError> {
        let a = api().ok_or(SpankError::NoApi)?;
        let mut v: libc::uid_t = 0;
        // SAFETY: S_JOB_UID takes one `uid_t *`.
        let rc = unsafe {
            (a.spank_get_item)(
                self.raw,
                sys::spank_item_S_JOB_UID,
                &mut v as *mut libc::uid_t,
            )
        };
        if rc == sys::ESPANK_SUCCESS {
            Ok(v)
        } else {
            Err(SpankError::Slurm(strerror(a, rc)))
        }
    }

    /// A variable of the job's environment (remote context), `None` if unset.
    pub fn getenv(&self, name: &str) -> Option<String> {
        let a = api()?;
        let n = cstring(name);
        let mut len: usize = 4096;
        while len <= 1 << 20 {
            let mut buf = vec![0 as c_char; len];
            let clen = c_int::try_from(len).ok()?;
            // SAFETY: buf holds len bytes; Slurm NUL-terminates within it.
            let rc = unsafe { (a.spank_getenv)(self.raw, n.as_ptr(), buf.as_mut_ptr(), clen) };
            if rc == sys::ESPANK_SUCCESS {
                // SAFETY: NUL-terminated within buf on success.
                let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
                return Some(s.to_string_lossy().into_owned());
            }
            if rc != sys::slurm_err_t_ESPANK_NOSPACE {
                return None;
            }
            len *= 4;
        }
        None
    }

    /// Sets a job-control variable (local/allocator context): Slurm gives it to the job's
    /// Prolog and Epilog as `SPANK_<name>`.
    pub fn job_control_setenv(&self, name: &str, value: &str) -> Result<(), SpankError> {
        let a = api().ok_or(SpankError::NoApi)?;
        let (n, v) = (cstring(name), cstring(value));
        // SAFETY: valid handle and NUL-terminated strings.
        let rc = unsafe { (a.spank_job_control_setenv)(self.raw, n.as_ptr(), v.as_ptr(), 1) };
        if rc == sys::ESPANK_SUCCESS {
            Ok(())
        } else {
            Err(SpankError::Slurm(strerror(a, rc)))
        }
    }
}

/// Reads a hook's `argc`/`argv` (the plugstack.conf arguments).
///
/// # Safety
/// `argv` must point to `ac` valid NUL-terminated strings (or be NULL with `ac` 0).
pub unsafe fn args(ac: c_int, argv: *mut *mut c_char) -> Vec<String> {
    let n = usize::try_from(ac).unwrap_or(0);
    if argv.is_null() {
        return Vec::new();
    }
    (0..n)
        .filter_map(|i| {
            // SAFETY: i < ac, per the contract.
            let p = unsafe { *argv.add(i) };
            // SAFETY: a non-NULL argv entry is a NUL-terminated string.
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        })
        .collect()
}

/// A C string argument (option value), `None` for NULL.
///
/// # Safety
/// `p` must be NULL or a valid NUL-terminated string.
pub unsafe fn opt_str(p: *const c_char) -> Option<String> {
    // SAFETY: per the contract.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}
