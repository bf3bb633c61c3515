//! The simulated driver's process-wide state: init reference count, the state file and its
//! last good parse, event sets and which XIDs this process has seen.
//!
//! One mutex guards it all; no call holds it while sleeping (hangs and event waits poll
//! with the lock released), so a blocked call never blocks the others.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nvml_wrapper_sys::bindings as sys;

use crate::state::{Gpu, STATE_ENV, State, mtime_secs, unix_now};

pub(crate) type Ret = sys::nvmlReturn_t;

pub(crate) const SUCCESS: Ret = sys::nvmlReturn_enum_NVML_SUCCESS;
pub(crate) const UNINITIALIZED: Ret = sys::nvmlReturn_enum_NVML_ERROR_UNINITIALIZED;
pub(crate) const INVALID_ARGUMENT: Ret = sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;
pub(crate) const NOT_SUPPORTED: Ret = sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED;
pub(crate) const NOT_FOUND: Ret = sys::nvmlReturn_enum_NVML_ERROR_NOT_FOUND;
pub(crate) const INSUFFICIENT_SIZE: Ret = sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE;
pub(crate) const DRIVER_NOT_LOADED: Ret = sys::nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED;
pub(crate) const TIMEOUT: Ret = sys::nvmlReturn_enum_NVML_ERROR_TIMEOUT;
pub(crate) const GPU_IS_LOST: Ret = sys::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST;
pub(crate) const ARGUMENT_VERSION_MISMATCH: Ret =
    sys::nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
pub(crate) const UNKNOWN: Ret = sys::nvmlReturn_enum_NVML_ERROR_UNKNOWN;

/// How often a hung call re-reads the state file.
pub(crate) const HANG_POLL: Duration = Duration::from_millis(50);
/// How often an event wait re-reads the state file.
pub(crate) const EVENT_POLL: Duration = Duration::from_millis(20);

/// At most this many GPUs (device handles are addresses inside a static array).
pub(crate) use crate::state::MAX_GPUS;

static DEVICE_SLOTS: [u8; MAX_GPUS] = [0; MAX_GPUS];

/// The device handle of GPU `index`: a stable address no caller dereferences.
pub(crate) fn device_handle(index: usize) -> sys::nvmlDevice_t {
    DEVICE_SLOTS[index.min(MAX_GPUS - 1)..].as_ptr() as *mut sys::nvmlDevice_st
}

/// The GPU index a device handle stands for, if it is one of ours.
pub(crate) fn device_index(dev: sys::nvmlDevice_t) -> Option<usize> {
    let base = DEVICE_SLOTS.as_ptr() as usize;
    let p = dev as usize;
    (p >= base && p < base + MAX_GPUS).then(|| p - base)
}

/// The most MIG devices a GPU may have handles for.
const MIG_PER_GPU: usize = crate::mig::MAX_MIG_DEVICES + 1;

static MIG_SLOTS: [u8; MAX_GPUS * MIG_PER_GPU] = [0; MAX_GPUS * MIG_PER_GPU];

/// The device handle of MIG device `slot` (its index) of GPU `gpu`.
pub(crate) fn mig_handle(gpu: usize, slot: usize) -> sys::nvmlDevice_t {
    let i =
        (gpu.min(MAX_GPUS - 1) * MIG_PER_GPU + slot.min(MIG_PER_GPU - 1)).min(MIG_SLOTS.len() - 1);
    MIG_SLOTS[i..].as_ptr() as *mut sys::nvmlDevice_st
}

/// The (GPU index, MIG device index) a MIG device handle stands for, if it is one of ours.
pub(crate) fn mig_index(dev: sys::nvmlDevice_t) -> Option<(usize, usize)> {
    let base = MIG_SLOTS.as_ptr() as usize;
    let p = dev as usize;
    (p >= base && p < base + MIG_SLOTS.len())
        .then(|| ((p - base) / MIG_PER_GPU, (p - base) % MIG_PER_GPU))
}

pub(crate) fn event_set_handle(id: usize) -> sys::nvmlEventSet_t {
    std::ptr::without_provenance_mut(id << 4)
}

pub(crate) fn event_set_id(set: sys::nvmlEventSet_t) -> usize {
    (set as usize) >> 4
}

/// Identity of a state file version: a rewrite (even within one mtime tick) changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileSig {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl FileSig {
    fn of(meta: &std::fs::Metadata) -> FileSig {
        FileSig {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime().saturating_mul(1_000_000_000) + meta.mtime_nsec(),
            ctime_ns: meta.ctime().saturating_mul(1_000_000_000) + meta.ctime_nsec(),
        }
    }
}

/// A parsed state file and the epoch its energy counters start from.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) state: State,
    pub(crate) epoch: f64,
}

impl Snapshot {
    fn hung(&self, gpu: Option<usize>) -> bool {
        self.state.hang
            || gpu
                .and_then(|i| self.state.gpus.get(i))
                .is_some_and(|g| g.hang)
    }
}

pub(crate) struct EventSetData {
    created: Instant,
    created_unix: f64,
    /// Registered event mask per GPU index.
    registered: BTreeMap<usize, u64>,
    /// XID ids already delivered through this set.
    delivered: BTreeSet<u64>,
}

struct Global {
    init_count: u32,
    path: Option<PathBuf>,
    sig: Option<FileSig>,
    current: Option<Arc<Snapshot>>,
    /// XID id → when this process first saw it in the file.
    first_seen: BTreeMap<u64, Instant>,
    sets: BTreeMap<usize, EventSetData>,
    next_set: usize,
}

static GLOBAL: Mutex<Global> = Mutex::new(Global {
    init_count: 0,
    path: None,
    sig: None,
    current: None,
    first_seen: BTreeMap::new(),
    sets: BTreeMap::new(),
    next_set: 1,
});

fn global() -> MutexGuard<'static, Global> {
    GLOBAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn log(msg: &str) {
    if msg.starts_with("nvml-sim") {
        eprintln!("{msg}");
    } else {
        eprintln!("nvml-sim: {msg}");
    }
}

impl Global {
    /// Re-reads the state file if it changed since the last look. Errors (only possible when
    /// there is no good state yet) are returned; later failures keep the last good state and
    /// are logged once per file version.
    fn refresh(&mut self) -> Result<(), String> {
        let Some(path) = self.path.clone() else {
            return Err(format!("{STATE_ENV} is not set"));
        };
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                let msg = format!("state file {}: {e}", path.display());
                if self.current.is_none() {
                    return Err(msg);
                }
                if self.sig.is_some() {
                    log(&format!("{msg}; keeping the last good state"));
                    self.sig = None;
                }
                return Ok(());
            }
        };
        let sig = FileSig::of(&meta);
        if self.sig == Some(sig) && self.current.is_some() {
            return Ok(());
        }
        match State::load(&path) {
            Ok(state) => {
                let now = Instant::now();
                for x in &state.xids {
                    self.first_seen.entry(x.id).or_insert(now);
                }
                let epoch = state.effective_epoch(mtime_secs(&meta));
                self.current = Some(Arc::new(Snapshot { state, epoch }));
                self.sig = Some(sig);
                Ok(())
            }
            Err(e) => {
                if self.current.is_none() {
                    return Err(e.to_string());
                }
                if self.sig != Some(sig) {
                    log(&format!("{e}; keeping the last good state"));
                }
                self.sig = Some(sig);
                Ok(())
            }
        }
    }

    fn snapshot(&mut self) -> Result<Arc<Snapshot>, Ret> {
        if self.init_count == 0 {
            return Err(UNINITIALIZED);
        }
        // With a good state loaded, refresh never fails.
        let _ = self.refresh();
        self.current.clone().ok_or(UNINITIALIZED)
    }
}

/// `nvmlInit*`: first init reads `SGPU_NVML_SIM_STATE` and loads the file; later ones count
/// (and switch to another file if the variable now names one). Takes `init_delay_ms`, and
/// blocks while the state says `hang = true`.
pub(crate) fn init() -> Result<(), Ret> {
    let mut delay = Duration::ZERO;
    {
        let mut g = global();
        if g.init_count == 0 {
            let Some(path) = std::env::var_os(STATE_ENV) else {
                log(&format!(
                    "{STATE_ENV} is not set: no simulated GPUs (returning NVML_ERROR_DRIVER_NOT_LOADED)"
                ));
                return Err(DRIVER_NOT_LOADED);
            };
            let path = PathBuf::from(path);
            if g.path.as_ref() != Some(&path) {
                g.first_seen.clear();
            }
            g.path = Some(path.clone());
            g.sig = None;
            g.current = None;
            if let Err(e) = g.refresh() {
                let (code, name) = if std::fs::metadata(&path).is_err() {
                    (DRIVER_NOT_LOADED, "NVML_ERROR_DRIVER_NOT_LOADED")
                } else {
                    (UNKNOWN, "NVML_ERROR_UNKNOWN")
                };
                log(&format!("nvmlInit fails ({name}): {e}"));
                return Err(code);
            }
        } else {
            // A session of an earlier test in this process may not have shut down yet (its
            // worker thread ends on its own time): a new init that names another state file
            // switches to it, or it would read the old test's GPUs.
            if let Some(path) = std::env::var_os(STATE_ENV).map(PathBuf::from) {
                if g.path.as_ref() != Some(&path) {
                    g.first_seen.clear();
                    g.path = Some(path);
                    g.sig = None;
                }
            }
            let _ = g.refresh();
        }
        if g.init_count == 0 {
            let gpus = g.current.as_ref().map_or(0, |s| s.state.gpus.len());
            // the cost model spins for the driver's init: not under the state lock
            drop(g);
            if let Err(e) = crate::latency::on_first_init(gpus) {
                log(&e);
                return Err(UNKNOWN);
            }
            g = global();
        }
        g.init_count += 1;
        if let Some(snap) = &g.current {
            set_fork_log(snap.state.fork_log.clone());
            delay = Duration::from_millis(snap.state.init_delay_ms);
        }
    }
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }
    wait_not_hung(None).map(|_| ())
}

/// NVML calls in progress in this process (every exported function counts itself).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Where forks are recorded (`fork_log` of the state last loaded by an init).
static FORK_LOG: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Counts one exported call as in progress until dropped.
pub(crate) struct InFlight;

impl InFlight {
    /// Marks a call as started.
    pub(crate) fn enter() -> InFlight {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

unsafe extern "C" {
    fn pthread_atfork(
        prepare: Option<unsafe extern "C" fn()>,
        parent: Option<unsafe extern "C" fn()>,
        child: Option<unsafe extern "C" fn()>,
    ) -> std::ffi::c_int;
}

/// Records the fork log and, the first time one is set, registers the fork handler (the
/// library is never unloaded: `-z nodelete`, so the handler stays valid).
fn set_fork_log(path: Option<PathBuf>) {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    let wanted = path.is_some();
    *FORK_LOG.lock().unwrap_or_else(|p| p.into_inner()) = path;
    if wanted {
        REGISTERED.call_once(|| {
            // SAFETY: registers a handler of static lifetime (the library stays loaded).
            unsafe { pthread_atfork(None, Some(after_fork_in_parent), None) };
        });
    }
}

/// `pthread_atfork` parent handler: appends one line to the fork log.
unsafe extern "C" fn after_fork_in_parent() {
    let _ = std::panic::catch_unwind(|| {
        // the forking thread itself is in no NVML call
        let in_flight = IN_FLIGHT.load(Ordering::SeqCst);
        let Some(path) = FORK_LOG.try_lock().ok().and_then(|g| g.clone()) else {
            return;
        };
        let prog = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
        let line = format!(
            "fork pid={} prog={} in_flight={in_flight}\n",
            std::process::id(),
            prog.trim()
        );
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    });
}

/// `nvmlShutdown`: decrements the init count; the last one frees every event set.
pub(crate) fn shutdown() -> Result<(), Ret> {
    let mut g = global();
    if g.init_count == 0 {
        return Err(UNINITIALIZED);
    }
    g.init_count -= 1;
    if g.init_count == 0 {
        g.sets.clear();
        drop(g);
        crate::latency::on_last_shutdown();
    }
    Ok(())
}

/// The current state, after blocking while the driver (or GPU `gpu`) hangs.
pub(crate) fn wait_not_hung(gpu: Option<usize>) -> Result<Arc<Snapshot>, Ret> {
    loop {
        let snap = global().snapshot()?;
        if !snap.hung(gpu) {
            return Ok(snap);
        }
        std::thread::sleep(HANG_POLL);
    }
}

/// Runs `f` on GPU `dev`'s current state: checks init and the handle, blocks while hung,
/// and returns `GPU_IS_LOST` for a lost GPU. A MIG device handle (whose parent is neither
/// hung nor lost) gets `NOT_SUPPORTED`: whole-GPU queries are not answered for a MIG device.
pub(crate) fn with_gpu<R>(
    dev: sys::nvmlDevice_t,
    f: impl FnOnce(&Snapshot, &Gpu, usize) -> Result<R, Ret>,
) -> Result<R, Ret> {
    with_device(dev, |d| match d {
        Device::Gpu { snap, gpu, index } => f(snap, gpu, index),
        Device::Mig(_) => Err(NOT_SUPPORTED),
    })
}

/// A handle the library handed out, resolved against the current state.
pub(crate) enum Device<'a> {
    /// A whole GPU.
    Gpu {
        snap: &'a Snapshot,
        gpu: &'a Gpu,
        index: usize,
    },
    /// A MIG device.
    Mig(crate::mig::MigView<'a>),
}

impl<'a> Device<'a> {
    /// Whether this is a MIG device.
    pub(crate) fn is_mig(&self) -> bool {
        matches!(self, Device::Mig(_))
    }

    /// The MIG device, if this is one.
    pub(crate) fn mig(&self) -> Option<&crate::mig::MigView<'a>> {
        match self {
            Device::Mig(m) => Some(m),
            Device::Gpu { .. } => None,
        }
    }
}

/// Runs `f` on the GPU or MIG device `dev` stands for: checks init and the handle, blocks
/// while the GPU (a MIG device's parent) hangs, and returns `GPU_IS_LOST` for a lost one. A
/// MIG handle whose device no longer exists (the file changed) is `INVALID_ARGUMENT`.
pub(crate) fn with_device<R>(
    dev: sys::nvmlDevice_t,
    f: impl FnOnce(Device<'_>) -> Result<R, Ret>,
) -> Result<R, Ret> {
    let (index, slot) = match (device_index(dev), mig_index(dev)) {
        (Some(i), _) => (i, None),
        (None, Some((i, s))) => (i, Some(s)),
        (None, None) => return Err(INVALID_ARGUMENT),
    };
    let snap = wait_not_hung(Some(index))?;
    let gpu = snap.state.gpus.get(index).ok_or(INVALID_ARGUMENT)?;
    if gpu.lost {
        return Err(GPU_IS_LOST);
    }
    match slot {
        None => f(Device::Gpu {
            snap: &snap,
            gpu,
            index,
        }),
        Some(s) => {
            let instance = gpu.mig_instances().get(s).ok_or(INVALID_ARGUMENT)?;
            f(Device::Mig(crate::mig::MigView {
                parent: gpu,
                parent_index: index,
                instance,
            }))
        }
    }
}

/// `nvmlEventSetCreate`: the set's creation time is taken after re-reading the file, so XIDs
/// already in the file count as seen before it.
pub(crate) fn event_set_create() -> Result<usize, Ret> {
    wait_not_hung(None)?;
    let mut g = global();
    g.snapshot()?;
    let id = g.next_set;
    g.next_set += 1;
    g.sets.insert(
        id,
        EventSetData {
            created: Instant::now(),
            created_unix: unix_now(),
            registered: BTreeMap::new(),
            delivered: BTreeSet::new(),
        },
    );
    Ok(id)
}

pub(crate) fn event_set_register(set: usize, gpu: usize, mask: u64) -> Result<(), Ret> {
    let mut g = global();
    if g.init_count == 0 {
        return Err(UNINITIALIZED);
    }
    let data = g.sets.get_mut(&set).ok_or(INVALID_ARGUMENT)?;
    *data.registered.entry(gpu).or_insert(0) |= mask;
    Ok(())
}

pub(crate) fn event_set_free(set: usize) -> Result<(), Ret> {
    let mut g = global();
    if g.init_count == 0 {
        return Err(UNINITIALIZED);
    }
    g.sets.remove(&set).map(|_| ()).ok_or(INVALID_ARGUMENT)
}

/// One delivered XID: (GPU index, XID code).
pub(crate) struct XidEvent {
    pub(crate) gpu: usize,
    pub(crate) code: u64,
}

/// `nvmlEventSetWait_v2`: the next undelivered XID for this set, waiting up to `timeout`.
pub(crate) fn event_set_wait(set: usize, timeout: Duration) -> Result<XidEvent, Ret> {
    let deadline = Instant::now() + timeout;
    loop {
        let snap = wait_not_hung(None)?;
        {
            let mut g = global();
            let g = &mut *g;
            let data = g.sets.get_mut(&set).ok_or(INVALID_ARGUMENT)?;
            let xid_bit = u64::from(sys::nvmlEventTypeXidCriticalError);
            for x in &snap.state.xids {
                let gpu = x.gpu as usize;
                let registered = data.registered.get(&gpu).is_some_and(|m| m & xid_bit != 0);
                if !registered || data.delivered.contains(&x.id) {
                    continue;
                }
                let seen_after = g.first_seen.get(&x.id).is_some_and(|t| *t > data.created);
                let stamped_after = x.timestamp.is_some_and(|t| t >= data.created_unix);
                if seen_after || stamped_after {
                    data.delivered.insert(x.id);
                    return Ok(XidEvent { gpu, code: x.code });
                }
            }
            let lost = data
                .registered
                .keys()
                .any(|i| snap.state.gpus.get(*i).is_some_and(|g| g.lost));
            if lost {
                return Err(GPU_IS_LOST);
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(TIMEOUT);
        }
        std::thread::sleep(EVENT_POLL.min(deadline - now));
    }
}
