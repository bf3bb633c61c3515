//! The node's state files (`<state_dir>/gpu-history.json`, the XID store, the InfiniBand
//! baseline and counters): each is replaced whole, atomically, so a reader or a crash sees
//! the old file or the new one, never a torn one.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` atomically and durably: a temporary file beside it
/// (`.<name>.tmp.<pid>`), written and fsynced, renamed over `path`, then the directory
/// fsynced, so the new file survives a crash once this returns. The temporary file is
/// removed when a step fails. The directory must exist. For state that must not go back
/// (the XID store).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, true)
}

/// [`write_atomic`] without the directory's fsync: a crash right after may lose the rename
/// (the old file stays). For caches that are rebuilt (the GPU history, the InfiniBand
/// baseline and counters): one fsync fewer on the gates' path.
pub fn write_cache(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, false)
}

fn replace(path: &Path, bytes: &[u8], sync_dir: bool) -> std::io::Result<()> {
    let tmp = temporary(path)?;
    let written = File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if sync_dir {
        if let Ok(d) = File::open(dir_of(path)) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// The directory `path` is in (`.` for a bare file name).
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// `.<name>.tmp.<pid>` beside `path`.
fn temporary(path: &Path) -> std::io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}: not a file name", path.display()),
        )
    })?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".tmp.{}", std::process::id()));
    Ok(dir_of(path).join(tmp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("state.json");
        for text in ["{\"a\":1}", "{}"] {
            if let Err(e) = write_atomic(&path, text.as_bytes()) {
                panic!("{e}");
            }
            assert_eq!(fs::read_to_string(&path).ok().as_deref(), Some(text));
        }
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // a directory in the way: the rename fails
        let path = dir.path().join("taken");
        fs::create_dir(&path).unwrap_or_else(|e| panic!("{e}"));
        fs::write(path.join("x"), "old").unwrap_or_else(|e| panic!("{e}"));
        assert!(write_cache(&path, b"new").is_err());
        assert_eq!(
            fs::read_to_string(path.join("x")).ok().as_deref(),
            Some("old")
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names, ["taken"]);
        assert!(write_atomic(Path::new("/"), b"x").is_err(), "no file name");
    }
}
