//! Which files sgpu lets steer a root process: the configuration and the NVML library.
//!
//! sgpu's binaries run as root (healthd, the gates under slurmd, the SPANK plugin inside
//! slurmstepd). A file they read for what to load or where to write must be one only root
//! (or, for a tool run by a user, that user) can change: owned by root or by the process's
//! effective user, and neither group- nor world-writable; the same for the directory that
//! holds it (else the file can be swapped). Otherwise the file is refused with what is
//! wrong and how to fix it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Why a file is not trusted (the message says which file, why, and what to do).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Untrusted(pub String);

/// The effective uid of this process.
fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Checks one path's owner and mode (`what`: "file" or "directory", for the message).
fn check_one(path: &Path, md: &std::fs::Metadata, what: &str, me: u32) -> Result<(), Untrusted> {
    let uid = md.uid();
    if uid != 0 && uid != me {
        return Err(Untrusted(format!(
            "{}: the {what} is owned by uid {uid}, not root{}: anyone who owns it could steer \
             sgpu; chown root it",
            path.display(),
            if me == 0 {
                String::new()
            } else {
                format!(" or uid {me}")
            }
        )));
    }
    let mode = md.mode() & 0o7777;
    // a sticky directory (/tmp) lets only owners replace their files
    let sticky_dir = md.is_dir() && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky_dir {
        return Err(Untrusted(format!(
            "{}: the {what} is group- or world-writable (mode {mode:o}); chmod go-w it",
            path.display()
        )));
    }
    Ok(())
}

/// Checks that `path` (a file sgpu is about to read or load) and its directory are owned
/// by root or by this process's user and not group/world-writable. Symlinks are followed
/// (the target is what gets read) and the link's directory is checked too.
pub fn check_file(path: &Path) -> Result<(), Untrusted> {
    check_file_as(path, euid())
}

/// [`check_file`] for a process whose effective uid is `me`.
pub fn check_file_as(path: &Path, me: u32) -> Result<(), Untrusted> {
    let md = std::fs::metadata(path)
        .map_err(|e| Untrusted(format!("{}: cannot check its owner: {e}", path.display())))?;
    check_one(path, &md, "file", me)?;
    let mut dirs = vec![path.parent().map(Path::to_path_buf)];
    if let Ok(real) = std::fs::canonicalize(path) {
        if real != path {
            check_one(&real, &md, "file", me)?;
            dirs.push(real.parent().map(Path::to_path_buf));
        }
    }
    for dir in dirs.into_iter().flatten() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".").to_path_buf()
        } else {
            dir
        };
        let md = std::fs::metadata(&dir)
            .map_err(|e| Untrusted(format!("{}: cannot check its owner: {e}", dir.display())))?;
        check_one(&dir, &md, "directory", me)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn owner_and_mode_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sgpu.toml");
        std::fs::write(&f, "").unwrap();
        chmod(&f, 0o644);
        let me = euid();
        assert_eq!(check_file_as(&f, me), Ok(()));
        chmod(&f, 0o664);
        let e = check_file_as(&f, me).unwrap_err().0;
        assert!(
            e.contains("sgpu.toml: the file is group- or world-writable (mode 664)"),
            "{e}"
        );
        chmod(&f, 0o646);
        assert!(check_file_as(&f, me).is_err());
        chmod(&f, 0o644);
        // the directory too
        chmod(dir.path(), 0o777);
        let e = check_file_as(&f, me).unwrap_err().0;
        assert!(
            e.contains("the directory is group- or world-writable"),
            "{e}"
        );
        chmod(dir.path(), 0o1777);
        assert_eq!(check_file_as(&f, me), Ok(()), "a sticky directory is fine");
        chmod(dir.path(), 0o700);
        // a file of someone else (as seen by a process of another uid)
        if me == 0 {
            // root's file is trusted by everyone
            assert_eq!(check_file_as(&f, 4242), Ok(()));
            let uid = 4242;
            std::os::unix::fs::chown(&f, Some(uid), None).unwrap();
            let e = check_file_as(&f, 0).unwrap_err().0;
            assert!(e.contains("owned by uid 4242, not root"), "{e}");
            assert_eq!(
                check_file_as(&f, uid),
                Ok(()),
                "the user's own file, for the user"
            );
        }
        let e = check_file(&dir.path().join("none")).unwrap_err().0;
        assert!(e.contains("none: cannot check its owner"), "{e}");
    }

    #[test]
    fn symlink_targets_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        chmod(&open, 0o777);
        let target = open.join("lib.so");
        std::fs::write(&target, "").unwrap();
        chmod(&target, 0o644);
        let safe = dir.path().join("safe");
        std::fs::create_dir(&safe).unwrap();
        let link = safe.join("lib.so");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = check_file(&link).unwrap_err().0;
        assert!(
            e.contains("open: the directory is group- or world-writable"),
            "{e}"
        );
    }
}
