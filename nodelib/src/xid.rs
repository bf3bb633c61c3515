//! XID errors: what each code means, whether it drains, and the node's XID record.
//!
//! # Classification
//!
//! [`classify`] maps a code to a [`XidInfo`] from a table built from NVIDIA's XID
//! documentation: "XID Errors", <https://docs.nvidia.com/deploy/xid-errors/> (the per-code
//! table of possible causes, and the Xid catalogue for Ampere and newer GPUs,
//! <https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html>, with its
//! immediate-action buckets; codes 126 to 158 were added from its R565-R575 rows: the
//! bucket RESET_GPU is [`XidClass::Hardware`], RESTART_APP [`XidClass::Application`], and
//! IGNORE, RESTART_VM, the subcode-dependent NVLink5 workflow (144-150) and 154 "GPU
//! recovery action changed" (whose action is in the log text, not the code NVML delivers)
//! [`XidClass::Driver`]), and the dynamic page retirement and row remapping guides
//! (<https://docs.nvidia.com/deploy/dynamic-page-retirement/>,
//! <https://docs.nvidia.com/deploy/a100-gpu-mem-error-mgmt/>) for 48, 63, 64, 92, 94, 95.
//!
//! - [`XidClass::Hardware`]: the GPU, its memory or its links need an admin (reset, RMA):
//!   the `gpu.xid` check fails at its configured severity (drain by default).
//! - [`XidClass::Application`]: the job's own fault (bad kernel, illegal address, killed
//!   channel); the GPU is fine: reported, never drains.
//! - [`XidClass::Driver`]: driver or firmware trouble that may or may not recur: warn.
//! - Codes not in the table: warn ([`XidClass::Unknown`]), never drain; an admin can
//!   promote them once understood.
//!
//! # Where XIDs come from, and the cursor
//!
//! NVML delivers XIDs through event sets, and an event set only sees XIDs raised after it
//! was registered: a short-lived prolog cannot learn about an XID from before it started.
//! So the check does not read NVML itself; it consumes a list of [`XidEvent`]s:
//!
//! - the daemon keeps an event set registered for the life of the process (through
//!   [`crate::gpu::NvmlWorker`]), drains it every cycle inside the NVML watchdog, and appends
//!   what it sees to the node's [`XidStore`] (`<state_dir>/xid-state.toml`);
//! - the prolog and epilog register their own event set too (catching XIDs raised while they
//!   run), record those, and evaluate everything in the store not yet reported.
//!
//! Every stored event has a node-local sequence number; `reported_through` is the cursor.
//! Whoever acts on events (drains, or decides not to) advances the cursor, so an XID is
//! reported once per node, not forever: after an admin fixes and resumes the node, the
//! old XID does not drain it again. The file is small (the last [`STORE_KEEP`] events), is
//! written atomically (temporary file, fsync, rename) and is updated under an exclusive
//! `flock`, so the prolog, epilog and daemon can share it.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What an XID says about the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XidClass {
    /// Hardware fault: drain (at the `gpu.xid` check's severity).
    Hardware,
    /// The application's fault: report, never drain.
    Application,
    /// Driver or firmware trouble: warn.
    Driver,
    /// Not in the table: warn.
    Unknown,
}

impl XidClass {
    /// The class's name (`hardware`, `application`, `driver`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            XidClass::Hardware => "hardware",
            XidClass::Application => "application",
            XidClass::Driver => "driver",
            XidClass::Unknown => "unknown",
        }
    }
}

/// One row of the XID table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XidInfo {
    /// The XID code.
    pub code: u64,
    /// Short name, as NVIDIA's table describes it.
    pub name: &'static str,
    /// What it means for the node.
    pub class: XidClass,
    /// What an admin should do.
    pub action: &'static str,
}

const RESET: &str = "drain, reset the GPU (or reboot); RMA if it recurs";
const RMA: &str = "drain, run diagnostics (dcgmi diag -r 3), RMA the board";
const APP: &str = "none for the node; the job's code or data caused it";
const WATCH: &str = "watch for recurrence; reset the GPU if it persists";
const NVLINK5: &str =
    "read the Xid's subcode (NVIDIA's NVLink5 workflow); reset the GPU if Xid 154 asks";

macro_rules! xid {
    ($code:expr, $name:expr, $class:ident, $action:expr) => {
        XidInfo {
            code: $code,
            name: $name,
            class: XidClass::$class,
            action: $action,
        }
    };
}

/// The XID table (see the module documentation for the sources), sorted by code.
pub static XID_TABLE: &[XidInfo] = &[
    xid!(8, "GPU stopped processing", Driver, WATCH),
    xid!(13, "graphics engine exception", Application, APP),
    xid!(31, "GPU memory page fault", Application, APP),
    xid!(32, "invalid or corrupted push buffer stream", Driver, WATCH),
    xid!(38, "driver firmware error", Driver, WATCH),
    xid!(
        43,
        "GPU stopped processing (channel reset)",
        Application,
        APP
    ),
    xid!(
        45,
        "preemptive cleanup after previous errors",
        Application,
        APP
    ),
    xid!(48, "double-bit ECC error", Hardware, RESET),
    xid!(
        54,
        "auxiliary power not connected",
        Hardware,
        "drain, check the board's power cables"
    ),
    xid!(56, "display engine error", Driver, WATCH),
    xid!(
        57,
        "error programming video memory interface",
        Hardware,
        RMA
    ),
    xid!(58, "unstable video memory interface", Hardware, RMA),
    xid!(
        61,
        "internal micro-controller breakpoint/warning",
        Driver,
        WATCH
    ),
    xid!(62, "internal micro-controller halt", Hardware, RESET),
    xid!(
        63,
        "ECC page retirement or row remap recorded",
        Hardware,
        "drain, reset the GPU to activate the remap"
    ),
    xid!(
        64,
        "ECC page retirement or row remap failure",
        Hardware,
        RMA
    ),
    xid!(69, "graphics engine class error", Driver, WATCH),
    xid!(74, "NVLink error", Hardware, RESET),
    xid!(
        79,
        "GPU has fallen off the bus",
        Hardware,
        "drain, reboot; check PCIe, power and cooling; RMA if it recurs"
    ),
    xid!(80, "corrupted data sent to GPU", Hardware, RESET),
    xid!(81, "VGA subsystem error", Hardware, RESET),
    xid!(92, "high single-bit ECC error rate", Hardware, RESET),
    xid!(
        93,
        "InfoROM wear limit reached (non-fatal)",
        Driver,
        "plan a board replacement"
    ),
    xid!(
        94,
        "contained ECC error",
        Hardware,
        "drain, reset the GPU to remap the row"
    ),
    xid!(95, "uncontained ECC error", Hardware, RESET),
    xid!(109, "context switch timeout", Driver, WATCH),
    xid!(110, "security fault", Hardware, RESET),
    xid!(119, "GSP RPC timeout", Hardware, RESET),
    xid!(120, "GSP error", Hardware, RESET),
    xid!(121, "C2C link error", Hardware, RESET),
    xid!(126, "copy engine CE10 error", Application, APP),
    xid!(127, "copy engine CE11 error", Application, APP),
    xid!(128, "copy engine CE12 error", Application, APP),
    xid!(129, "copy engine CE13 error", Application, APP),
    xid!(130, "copy engine CE14 error", Application, APP),
    xid!(131, "copy engine CE15 error", Application, APP),
    xid!(132, "copy engine CE16 error", Application, APP),
    xid!(133, "copy engine CE17 error", Application, APP),
    xid!(134, "copy engine CE18 error", Application, APP),
    xid!(135, "copy engine CE19 error", Application, APP),
    xid!(136, "NVLink link training failed", Hardware, RESET),
    xid!(
        137,
        "NVLink privilege error (illegal peer access)",
        Application,
        APP
    ),
    xid!(139, "optical flow engine OFA1 error", Application, APP),
    xid!(140, "unrecovered ECC error", Hardware, RESET),
    xid!(143, "GPU initialization failure", Hardware, RMA),
    xid!(144, "NVLink SAW error", Driver, NVLINK5),
    xid!(145, "NVLink RLW error", Driver, NVLINK5),
    xid!(146, "NVLink TLW error", Driver, NVLINK5),
    xid!(147, "NVLink TREX error", Driver, NVLINK5),
    xid!(148, "NVLink NVLPW_CTRL error", Driver, NVLINK5),
    xid!(149, "NVLink NETIR error", Driver, NVLINK5),
    xid!(150, "NVLink MSE error", Driver, NVLINK5),
    xid!(
        151,
        "key rotation error (confidential computing)",
        Driver,
        "restart the VM (confidential computing); contact support if it recurs"
    ),
    xid!(
        154,
        "GPU recovery action changed",
        Driver,
        "read the kernel log: the action it names (GPU reset, node reboot) applies to the Xids before it"
    ),
    xid!(
        155,
        "NVLink software-defined error (link down)",
        Hardware,
        RESET
    ),
    xid!(
        156,
        "resource retirement event",
        Hardware,
        "drain, reset the GPU to complete the retirement"
    ),
    xid!(
        157,
        "resource retirement failure",
        Driver,
        "no spare resources left: plan service (dcgmi diag -r 3); the Xid may recur"
    ),
    xid!(158, "GPU fatal timeout", Hardware, RESET),
];

/// The table row for `code`, or an [`XidClass::Unknown`] row (warn) for codes not in it.
pub fn classify(code: u64) -> XidInfo {
    match XID_TABLE.binary_search_by_key(&code, |x| x.code) {
        Ok(i) => XID_TABLE[i],
        Err(_) => XidInfo {
            code,
            name: "unknown XID",
            class: XidClass::Unknown,
            action: "look the code up in NVIDIA's XID catalogue",
        },
    }
}

/// One XID occurrence on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct XidEvent {
    /// Node-local sequence number, assigned by [`XidStore::record`] (0 until recorded).
    pub id: u64,
    /// NVML index of the GPU that raised it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_index: Option<u32>,
    /// UUID of that GPU, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_uuid: Option<String>,
    /// The XID code.
    pub code: u64,
    /// When it was seen, Unix seconds.
    pub time: f64,
}

/// How many events the store keeps (the oldest go first).
pub const STORE_KEEP: usize = 256;

/// The store's file name inside `state_dir`.
pub const STORE_FILE: &str = "xid-state.toml";

const LOCK_FILE: &str = "xid-state.lock";

/// How long [`XidStore::open`] waits for another process's lock.
const LOCK_WAIT: Duration = Duration::from_millis(500);

/// Why the XID store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum XidStoreError {
    /// Reading, writing or locking failed.
    #[error("xid store {}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error("xid store {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Another process held the lock for too long.
    #[error("xid store {}: still locked by another process after {} ms", path.display(), LOCK_WAIT.as_millis())]
    Busy {
        /// The lock file.
        path: PathBuf,
    },
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    #[serde(default)]
    next_id: u64,
    #[serde(default)]
    reported_through: u64,
    #[serde(default, rename = "event")]
    events: Vec<XidEvent>,
}

/// The node's XID record and "reported through" cursor, held under an exclusive lock from
/// [`XidStore::open`] until drop.
#[derive(Debug)]
pub struct XidStore {
    path: PathBuf,
    data: StoreFile,
    _lock: File,
}

impl XidStore {
    /// Locks and loads `<dir>/xid-state.toml` (creating `dir` if needed; a missing file is an
    /// empty store). Waits at most half a second for another process's lock.
    pub fn open(dir: impl AsRef<Path>) -> Result<XidStore, XidStoreError> {
        let dir = dir.as_ref();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| XidStoreError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        let start = Instant::now();
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is passed.
            let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(XidStoreError::Io {
                    path: lock_path,
                    source: err,
                });
            }
            if start.elapsed() >= LOCK_WAIT {
                return Err(XidStoreError::Busy { path: lock_path });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let path = dir.join(STORE_FILE);
        let data = match fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| XidStoreError::Parse {
                path: path.clone(),
                message: e.to_string().trim_end().to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StoreFile::default(),
            Err(source) => return Err(XidStoreError::Io { path, source }),
        };
        Ok(XidStore {
            path,
            data,
            _lock: lock,
        })
    }

    /// Appends events, giving each the next sequence number; returns them as stored.
    pub fn record(&mut self, events: impl IntoIterator<Item = XidEvent>) -> Vec<XidEvent> {
        let mut out = Vec::new();
        for mut e in events {
            self.data.next_id = self.data.next_id.max(self.data.reported_through) + 1;
            e.id = self.data.next_id;
            out.push(e.clone());
            self.data.events.push(e);
        }
        let excess = self.data.events.len().saturating_sub(STORE_KEEP);
        self.data.events.drain(..excess);
        out
    }

    /// Events not yet reported (after the cursor), oldest first.
    pub fn unreported(&self) -> Vec<XidEvent> {
        let through = self.data.reported_through;
        self.data
            .events
            .iter()
            .filter(|e| e.id > through)
            .cloned()
            .collect()
    }

    /// The cursor: the highest id already reported.
    pub fn reported_through(&self) -> u64 {
        self.data.reported_through
    }

    /// Advances the cursor to `id` (never backwards).
    pub fn mark_reported(&mut self, id: u64) {
        self.data.reported_through = self.data.reported_through.max(id);
    }

    /// Writes the store atomically: temporary file, fsync, rename, fsync of the directory.
    pub fn save(&self) -> Result<(), XidStoreError> {
        let text = toml::to_string(&self.data).map_err(|e| XidStoreError::Parse {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        crate::state_file::write_atomic(&self.path, text.as_bytes()).map_err(|source| {
            XidStoreError::Io {
                path: self.path.clone(),
                source,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique() {
        assert!(XID_TABLE.windows(2).all(|w| w[0].code < w[1].code));
    }

    #[test]
    fn hardware_xids_drain() {
        for code in [48, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120] {
            assert_eq!(classify(code).class, XidClass::Hardware, "xid {code}");
        }
        assert_eq!(classify(79).name, "GPU has fallen off the bus");
    }

    #[test]
    fn application_xids_never_drain() {
        for code in [13, 31, 43, 45] {
            assert_eq!(classify(code).class, XidClass::Application, "xid {code}");
        }
    }

    #[test]
    fn driver_and_unknown_xids_warn() {
        assert_eq!(classify(61).class, XidClass::Driver);
        assert_eq!(classify(8).class, XidClass::Driver);
        let u = classify(9999);
        assert_eq!((u.code, u.class), (9999, XidClass::Unknown));
    }

    fn ev(code: u64) -> XidEvent {
        XidEvent {
            id: 0,
            gpu_index: Some(2),
            gpu_uuid: None,
            code,
            time: 1.0,
        }
    }

    #[test]
    fn store_cursor_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = XidStore::open(dir.path()).unwrap();
            assert!(s.unreported().is_empty());
            let rec = s.record([ev(79), ev(13)]);
            assert_eq!(rec.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1, 2]);
            s.save().unwrap();
        }
        {
            let mut s = XidStore::open(dir.path()).unwrap();
            assert_eq!(s.unreported().len(), 2);
            s.mark_reported(2);
            s.save().unwrap();
        }
        let mut s = XidStore::open(dir.path()).unwrap();
        assert!(
            s.unreported().is_empty(),
            "reported XIDs are not reported again"
        );
        let rec = s.record([ev(48)]);
        assert_eq!(rec[0].id, 3);
        assert_eq!(s.unreported(), rec);
        s.mark_reported(1); // never backwards
        assert_eq!(s.reported_through(), 2);
    }

    #[test]
    fn store_keeps_a_bounded_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = XidStore::open(dir.path()).unwrap();
        s.record((0..STORE_KEEP + 10).map(|_| ev(13)));
        assert_eq!(s.unreported().len(), STORE_KEEP);
        assert_eq!(s.unreported()[0].id, 11);
    }

    #[test]
    fn second_opener_waits_then_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        let _held = XidStore::open(dir.path()).unwrap();
        // flock locks belong to the open file description, so a second open in the same
        // process contends like another process would.
        let e = XidStore::open(dir.path()).unwrap_err();
        assert!(matches!(e, XidStoreError::Busy { .. }), "{e}");
    }
}
