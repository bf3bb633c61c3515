//! The node spool: a Maildir-style directory of one-record files.
//!
//! ```text
//! <dir>/tmp/  files being written (invisible to readers; leftovers of crashed writers)
//! <dir>/new/  complete, fsynced records waiting for acctd's acknowledgement
//! <dir>/bad/  records a reader could not use, each with a `<name>.why` note
//! ```
//!
//! A writer creates `tmp/<name>` exclusively, writes and fsyncs it, hard-links it to
//! `new/<name>` (which fails rather than replaces if the name exists), fsyncs `new/` and
//! unlinks the tmp name. A file in `new/` is therefore always complete and durable, any
//! number of processes may write at once, and nothing is ever overwritten.
//!
//! File names are `<nanos>.<pid>.<counter>.<random>_<key>.json`: the Unix time in
//! nanoseconds (20 digits, so names sort in write order), the writer's pid, a per-process
//! counter (10 digits) and 64 random bits in hex, then the record's [`RecordId::key`]. Two
//! writes of the same identity are two files; deduplication is the receiver's job.

use std::collections::hash_map::RandomState;
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::id::RecordId;
use crate::record::{Record, RecordError, now_ms};

/// Where the node spool lives unless configured otherwise.
pub const DEFAULT_SPOOL_DIR: &str = "/var/spool/sgpu";

/// Largest record file a reader accepts, in bytes (a record is a few KiB).
pub const MAX_RECORD_BYTES: u64 = 1 << 20;

/// How many fresh names a write tries before giving up on collisions.
const NAME_ATTEMPTS: u32 = 16;

/// What went wrong with the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A filesystem operation failed (retry later; the data is where it was).
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The spool directory (or a subdirectory) is writable by its group or by everyone.
    #[error(
        "{} is group- or world-writable (mode {mode:o}); refusing to use it as the sgpu spool (chmod go-w it, 0700 is expected)",
        path.display()
    )]
    WorldWritable {
        /// The offending directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The spool directory (or a subdirectory) belongs to someone other than root (or the
    /// user this process runs as): they could replace or plant records.
    #[error(
        "{} is owned by uid {uid}, not root; refusing to use it as the sgpu spool (chown root it)",
        path.display()
    )]
    NotOwned {
        /// The offending directory.
        path: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// A spool path exists but is not a directory (or is a symlink, for the subdirectories).
    #[error("{} is not a directory", path.display())]
    NotADirectory {
        /// The offending path.
        path: PathBuf,
    },
    /// The record given to [`Spool::write`] is invalid; nothing was written.
    #[error("refusing to spool an invalid record: {0}")]
    Invalid(#[source] RecordError),
    /// A spooled file cannot be used as a record; [`Spool::quarantine`] it.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why it is unusable.
        reason: String,
    },
    /// No unused file name was found (should not happen).
    #[error("no unique file name found in {} after {NAME_ATTEMPTS} attempts", path.display())]
    NameCollision {
        /// The directory.
        path: PathBuf,
    },
}

impl SpoolError {
    /// Whether the error is about the file's content (quarantine it) rather than transient.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, SpoolError::Corrupt { .. })
    }
}

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SpoolError {
    move |source| SpoolError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A complete record file in `new/`, as listed by [`Spool::list`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    name: OsString,
    path: PathBuf,
    key: Option<String>,
}

impl Entry {
    /// The file name inside `new/`.
    pub fn file_name(&self) -> &OsStr {
        &self.name
    }

    /// The file's full path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record key encoded in the name, if the name follows the spool's scheme.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

/// An open node spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    tmp: PathBuf,
    new: PathBuf,
    bad: PathBuf,
}

impl Spool {
    /// Opens the spool at `dir`, creating it and `tmp/`, `new/`, `bad/` (mode 0700) if missing.
    ///
    /// Refuses a spool or subdirectory that is group- or world-writable or owned by anyone
    /// but root (or this process's user), and subdirectories that are symlinks.
    pub fn open(dir: impl AsRef<Path>) -> Result<Spool, SpoolError> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.exists() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io_err("create spool directory", &dir))?;
        }
        check_dir(&dir, fs::metadata(&dir).map_err(io_err("stat", &dir))?)?;
        let spool = Spool {
            tmp: dir.join("tmp"),
            new: dir.join("new"),
            bad: dir.join("bad"),
            dir,
        };
        for sub in [&spool.tmp, &spool.new, &spool.bad] {
            match DirBuilder::new().mode(0o700).create(sub) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("create spool directory", sub)(e)),
            }
            check_dir(sub, fs::symlink_metadata(sub).map_err(io_err("stat", sub))?)?;
        }
        Ok(spool)
    }

    /// The spool's root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Validates and durably spools `record`; returns its path in `new/`.
    pub fn write(&self, record: &Record) -> Result<PathBuf, SpoolError> {
        record.validate().map_err(SpoolError::Invalid)?;
        let mut bytes = record.to_json().map_err(SpoolError::Invalid)?;
        bytes.push(b'\n');
        let key = record.id().key();
        for _ in 0..NAME_ATTEMPTS {
            let name = format!("{}_{key}.json", unique_prefix());
            let tmp = self.tmp.join(&name);
            let mut file = match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("create", &tmp)(e)),
            };
            let written = file
                .write_all(&bytes)
                .and_then(|()| file.sync_all())
                .map_err(io_err("write", &tmp));
            drop(file);
            if let Err(e) = written {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            let new = self.new.join(&name);
            match fs::hard_link(&tmp, &new) {
                Ok(()) => {}
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        continue;
                    }
                    return Err(io_err("link into new/", &new)(e));
                }
            }
            sync_dir(&self.new)?;
            // The record is durable in new/ now; a tmp name that survives a failure here is
            // only a leftover for clean_tmp, not a second copy.
            let _ = fs::remove_file(&tmp);
            return Ok(new);
        }
        Err(SpoolError::NameCollision {
            path: self.tmp.clone(),
        })
    }

    /// Lists the complete records in `new/`, oldest write first.
    ///
    /// Every entry except dot-files is listed, foreign ones too, so a reader meets (and
    /// quarantines) anything that does not belong rather than leaving it unseen.
    pub fn list(&self) -> Result<Vec<Entry>, SpoolError> {
        let mut entries = Vec::new();
        for ent in fs::read_dir(&self.new).map_err(io_err("list", &self.new))? {
            let ent = ent.map_err(io_err("list", &self.new))?;
            let name = ent.file_name();
            if name.as_encoded_bytes().first() == Some(&b'.') {
                continue;
            }
            let key = name.to_str().and_then(key_of_name).map(str::to_owned);
            entries.push(Entry {
                path: self.new.join(&name),
                name,
                key,
            });
        }
        entries.sort();
        Ok(entries)
    }

    /// Reads and validates one listed record.
    ///
    /// [`SpoolError::Corrupt`] (see [`SpoolError::is_corrupt`]) means the file will never be
    /// readable: not a regular file, too large, not a valid record, or its name's key
    /// disagrees with its content.
    pub fn read(&self, entry: &Entry) -> Result<Record, SpoolError> {
        let path = self.new.join(&entry.name);
        let corrupt = |reason: String| SpoolError::Corrupt {
            path: path.clone(),
            reason,
        };
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(corrupt("is a symbolic link".into()));
            }
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let md = file.metadata().map_err(io_err("stat", &path))?;
        if !md.is_file() {
            return Err(corrupt("is not a regular file".into()));
        }
        if md.len() > MAX_RECORD_BYTES {
            return Err(corrupt(format!(
                "{} bytes, over the {MAX_RECORD_BYTES}-byte record limit",
                md.len()
            )));
        }
        let mut bytes = Vec::new();
        file.take(MAX_RECORD_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err("read", &path))?;
        let record = Record::from_json(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if let Some(name_key) = &entry.key {
            let key = record.id().key();
            if *name_key != key {
                return Err(corrupt(format!(
                    "file name says {name_key} but the record is {key}"
                )));
            }
        }
        Ok(record)
    }

    /// Deletes an acknowledged record from `new/` durably; a missing file is not an error.
    pub fn remove(&self, entry: &Entry) -> Result<(), SpoolError> {
        let path = self.new.join(&entry.name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("remove", &path)(e)),
        }
        sync_dir(&self.new)
    }

    /// Moves an unusable file to `bad/` with a `<name>.why` note; returns its new path.
    pub fn quarantine(&self, entry: &Entry, reason: &str) -> Result<PathBuf, SpoolError> {
        let from = self.new.join(&entry.name);
        let mut target = entry.name.clone();
        let mut n = 0u32;
        while fs::symlink_metadata(self.bad.join(&target)).is_ok() {
            n += 1;
            target = entry.name.clone();
            target.push(format!(".{n}"));
        }
        let to = self.bad.join(&target);
        let mut why_name = target.clone();
        why_name.push(".why");
        let why = self.bad.join(why_name);
        let note = format!(
            "file: {}\nquarantined_at_ms: {}\nby_pid: {}\nreason: {}\n",
            from.display(),
            now_ms(),
            std::process::id(),
            reason.replace('\n', "\n  ")
        );
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&why)
            .map_err(io_err("create", &why))?;
        f.write_all(note.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io_err("write", &why))?;
        fs::rename(&from, &to).map_err(io_err("move to bad/", &from))?;
        sync_dir(&self.bad)?;
        sync_dir(&self.new)?;
        Ok(to)
    }

    /// Removes files in `tmp/` last modified at least `older_than` ago (crashed writers'
    /// leftovers); returns how many were removed. An hour is a safe age.
    pub fn clean_tmp(&self, older_than: Duration) -> Result<usize, SpoolError> {
        let now = SystemTime::now();
        let mut removed = 0;
        for ent in fs::read_dir(&self.tmp).map_err(io_err("list", &self.tmp))? {
            let ent = ent.map_err(io_err("list", &self.tmp))?;
            let path = ent.path();
            let md = match fs::symlink_metadata(&path) {
                Ok(md) => md,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("stat", &path)(e)),
            };
            if md.is_dir() {
                continue;
            }
            let age = md
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or(Duration::ZERO);
            if age < older_than {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &path)(e)),
            }
        }
        Ok(removed)
    }

    /// The most recently written entry for `id` still in `new/`, if any.
    pub fn find_latest(&self, id: &RecordId) -> Result<Option<Entry>, SpoolError> {
        let key = id.key();
        Ok(self
            .list()?
            .into_iter()
            .rev()
            .find(|e| e.key.as_deref() == Some(key.as_str())))
    }
}

pub(crate) fn check_dir(path: &Path, md: fs::Metadata) -> Result<(), SpoolError> {
    if !md.is_dir() {
        return Err(SpoolError::NotADirectory {
            path: path.to_path_buf(),
        });
    }
    let uid = std::os::unix::fs::MetadataExt::uid(&md);
    if uid != 0 && uid != nix::unistd::geteuid().as_raw() {
        return Err(SpoolError::NotOwned {
            path: path.to_path_buf(),
            uid,
        });
    }
    let mode = md.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(SpoolError::WorldWritable {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// `<nanos:020>.<pid:010>.<counter:010>.<random:016x>`, unique per write.
fn unique_prefix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let pid = std::process::id();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // RandomState is seeded from the OS per process: not cryptographic, but it keeps
    // writers in different pid namespaces sharing one spool apart.
    let mut h = RandomState::new().build_hasher();
    h.write_u128(nanos);
    h.write_u32(pid);
    h.write_u64(n);
    format!("{nanos:020}.{pid:010}.{n:010}.{:016x}", h.finish())
}

/// The key part of a spool file name, if it follows the naming scheme.
fn key_of_name(name: &str) -> Option<&str> {
    let (prefix, key) = name.strip_suffix(".json")?.split_once('_')?;
    let parts: Vec<&str> = prefix.split('.').collect();
    let ok = parts.len() == 4
        && parts[..3]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && parts[3].len() == 16
        && parts[3].bytes().all(|b| b.is_ascii_hexdigit());
    (ok && !key.is_empty()).then_some(key)
}

#[cfg(test)]
mod tests;
