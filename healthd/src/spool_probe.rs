//! Whether the node spool can take records: each check run, healthd opens the spool (owner
//! and mode checked, [`sgpu_spool::Spool::open`]), writes, syncs and removes a small probe
//! file in its `tmp/`, and reads the free space of its filesystem. A full disk or an
//! unwritable spool is then a metric (`sgpu_spool_writable`, `sgpu_spool_free_bytes`), an
//! error in healthd's log, and, in the gates, an sgpu error that `fail_closed` decides on
//! (docs/operations.md, "The spool is full or unwritable").

use std::io::Write;
use std::path::Path;

/// How much the probe writes: one page, as a record roughly is.
pub const PROBE_BYTES: usize = 4096;

/// What the last probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolHealth {
    /// `None` when a record can be written; else why not.
    pub error: Option<String>,
    /// Bytes free for root on the spool's filesystem, when readable.
    pub free_bytes: Option<u64>,
}

/// Bytes available on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statvfs is a valid value to be filled in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    // field widths differ between platforms
    #[allow(clippy::useless_conversion)]
    let (blocks, size) = (u64::from(st.f_bfree), u64::from(st.f_frsize));
    Some(blocks.saturating_mul(size))
}

/// Probes the spool at `dir`.
pub fn probe(dir: &Path) -> SpoolHealth {
    let error = write_probe(dir).err().map(|e| e.to_string());
    SpoolHealth {
        error,
        free_bytes: free_bytes(dir),
    }
}

/// Why the spool cannot take records.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    /// The spool is missing, not sgpu's or not safe (the spool's error says how to fix it).
    #[error(transparent)]
    Spool(#[from] sgpu_spool::SpoolError),
    /// A record-sized file cannot be written and synced in `tmp/`.
    #[error("cannot write {}: {error}", path.display())]
    Write {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
}

fn write_probe(dir: &Path) -> Result<(), ProbeError> {
    let spool = sgpu_spool::Spool::open(dir)?;
    let path = spool
        .dir()
        .join("tmp")
        .join(format!(".probe.{}", std::process::id()));
    let result = std::fs::File::create(&path)
        .and_then(|mut f| {
            f.write_all(&[0u8; PROBE_BYTES])?;
            f.sync_all()
        })
        .map_err(|error| ProbeError::Write {
            path: path.clone(),
            error,
        });
    let _ = std::fs::remove_file(&path);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writable_spool_passes_and_a_broken_one_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let h = probe(&spool);
        assert_eq!(h.error, None);
        assert!(h.free_bytes.is_some_and(|b| b > 0));
        // nothing is left behind
        assert_eq!(std::fs::read_dir(spool.join("tmp")).unwrap().count(), 0);
        // a file where the spool should be
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let h = probe(&file);
        assert!(h.error.is_some_and(|e| e.contains("not a directory")));
    }

    #[test]
    fn a_full_filesystem_is_an_error() {
        // /dev/full answers every write with ENOSPC: a spool whose tmp/ is full
        if !Path::new("/dev/full").exists() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let spool = sgpu_spool::Spool::open(dir.path()).unwrap();
        let probe_path = spool
            .dir()
            .join("tmp")
            .join(format!(".probe.{}", std::process::id()));
        std::os::unix::fs::symlink("/dev/full", &probe_path).unwrap();
        let e = write_probe(dir.path()).unwrap_err().to_string();
        assert!(e.contains("No space left on device"), "{e}");
    }
}
