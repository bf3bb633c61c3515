//! The record log: the stored records' JSON, appended to segment files, one record per
//! line (`<db>/records/<segment>.jsonl`); sled keeps only where each record is ([`Loc`]).
//!
//! sled's cost per write grows with the bytes in its nodes, and records are the bulk of the
//! bytes: keeping them out of the tree is what lets ingest keep up (bench/README.md). A
//! batch is appended and synced ([`ValueLog::sync`]) before sled refers to it, so sled never
//! points at bytes that a crash could lose; bytes a crash leaves unreferenced at a segment's
//! tail are never read, and each open starts a new segment, so nothing is appended after
//! them. Segments are plain JSON lines: an admin can read (or, with sled lost, recover) the
//! records with any tool.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::store::StoreError;

/// A new segment is started once the current one holds this many bytes.
const SEGMENT_BYTES: u64 = 256 * 1024 * 1024;

/// Where a record's JSON is: segment, byte offset and length (without the newline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// Segment number.
    pub segment: u32,
    /// Byte offset in the segment.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
}

impl Loc {
    /// Stored form: 16 bytes, big-endian.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.segment.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
    }

    /// Reads the stored form; `None` unless 16 bytes.
    pub fn decode(b: &[u8]) -> Option<Loc> {
        let b: &[u8; 16] = b.try_into().ok()?;
        let (s, rest) = b.split_first_chunk::<4>()?;
        let (o, l) = rest.split_first_chunk::<8>()?;
        let l: &[u8; 4] = l.try_into().ok()?;
        Some(Loc {
            segment: u32::from_be_bytes(*s),
            offset: u64::from_be_bytes(*o),
            len: u32::from_be_bytes(*l),
        })
    }
}

/// The segment being appended to.
struct Current {
    id: u32,
    file: Arc<File>,
    len: u64,
}

/// The record log of one database.
pub struct ValueLog {
    dir: PathBuf,
    current: Mutex<Current>,
    /// Open segments for reading.
    readers: RwLock<HashMap<u32, Arc<File>>>,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |e| StoreError::Engine(format!("{what}: {e}"))
}

fn segment_name(id: u32) -> String {
    format!("{id:08}.jsonl")
}

impl ValueLog {
    /// Opens the log in `dir` (created if needed) and starts a new segment.
    pub fn open(dir: &Path) -> Result<ValueLog, StoreError> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let last = Self::list(dir)?.into_iter().max().unwrap_or(0);
        let current = Self::create_segment(dir, last + 1)?;
        Ok(ValueLog {
            dir: dir.to_path_buf(),
            current: Mutex::new(current),
            readers: RwLock::new(HashMap::new()),
        })
    }

    /// Segment numbers present in `dir`.
    fn list(dir: &Path) -> Result<Vec<u32>, StoreError> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(io(format!("listing {}", dir.display())))?;
        for e in entries {
            let e = e.map_err(io(format!("listing {}", dir.display())))?;
            let name = e.file_name();
            if let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".jsonl"))
                .and_then(|n| n.parse::<u32>().ok())
            {
                out.push(id);
            }
        }
        Ok(out)
    }

    fn create_segment(dir: &Path, id: u32) -> Result<Current, StoreError> {
        let path = dir.join(segment_name(id));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(io(format!("creating {}", path.display())))?;
        // the new name must survive a crash as well as the bytes
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(format!("syncing {}", dir.display())))?;
        Ok(Current {
            id,
            file: Arc::new(file),
            len: 0,
        })
    }

    /// Appends `items` (one line each) and returns where each went, and the file to
    /// [`ValueLog::sync`] before anything refers to them.
    pub fn append(&self, items: &[&[u8]]) -> Result<(Vec<Loc>, Arc<File>), StoreError> {
        let mut cur = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if cur.len >= SEGMENT_BYTES {
            *cur = Self::create_segment(&self.dir, cur.id + 1)?;
        }
        let mut buf = Vec::with_capacity(items.iter().map(|i| i.len() + 1).sum());
        let mut locs = Vec::with_capacity(items.len());
        for item in items {
            let len = u32::try_from(item.len())
                .map_err(|_| StoreError::Engine("a record over 4 GiB".into()))?;
            locs.push(Loc {
                segment: cur.id,
                offset: cur.len + buf.len() as u64,
                len,
            });
            buf.extend_from_slice(item);
            buf.push(b'\n');
        }
        let name = segment_name(cur.id);
        if let Err(e) = (&*cur.file).write_all(&buf) {
            // a partial write leaves bytes nobody refers to; the next append must not
            // land after them at offsets computed from a stale length: start a segment
            *cur = Self::create_segment(&self.dir, cur.id + 1)?;
            return Err(io(format!("appending to {name}"))(e));
        }
        cur.len += buf.len() as u64;
        Ok((locs, cur.file.clone()))
    }

    /// Makes what was appended to `file` durable.
    pub fn sync(file: &File) -> Result<(), StoreError> {
        file.sync_data()
            .map_err(io("syncing the record log".to_string()))
    }

    /// The bytes at `loc`.
    pub fn read(&self, loc: Loc) -> Result<Vec<u8>, StoreError> {
        let file = self.reader(loc.segment)?;
        let mut buf = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut buf, loc.offset)
            .map_err(io(format!(
                "reading {} bytes at {} of segment {}",
                loc.len,
                loc.offset,
                segment_name(loc.segment)
            )))?;
        Ok(buf)
    }

    fn reader(&self, id: u32) -> Result<Arc<File>, StoreError> {
        if let Some(f) = self
            .readers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
        {
            return Ok(f.clone());
        }
        let path = self.dir.join(segment_name(id));
        let f = Arc::new(File::open(&path).map_err(io(format!("opening {}", path.display())))?);
        self.readers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, f.clone());
        Ok(f)
    }

    /// The segment being appended to.
    pub fn current_segment(&self) -> u32 {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .id
    }

    /// Deletes the segments (other than the one being appended to) that `live` says
    /// nothing refers to; returns how many.
    pub fn remove_unreferenced(&self, live: &dyn Fn(u32) -> bool) -> Result<usize, StoreError> {
        let current = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .id;
        let mut removed = 0;
        for id in Self::list(&self.dir)? {
            if id != current && !live(id) {
                self.readers
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
                let path = self.dir.join(segment_name(id));
                std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_items_read_back_after_reopen_in_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (locs, file) = {
            let log = ValueLog::open(dir.path()).unwrap();
            let (locs, file) = log.append(&[b"{\"a\":1}", b"{\"b\":22}"]).unwrap();
            ValueLog::sync(&file).unwrap();
            assert_eq!(log.read(locs[1]).unwrap(), b"{\"b\":22}");
            (locs, file)
        };
        drop(file);
        let log = ValueLog::open(dir.path()).unwrap();
        assert_eq!(log.read(locs[0]).unwrap(), b"{\"a\":1}");
        let (more, _) = log.append(&[b"x"]).unwrap();
        assert_eq!(
            more[0].segment,
            locs[0].segment + 1,
            "each open starts a segment"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(segment_name(locs[0].segment))).unwrap(),
            "{\"a\":1}\n{\"b\":22}\n"
        );
        let mut enc = Vec::new();
        more[0].encode(&mut enc);
        assert_eq!(Loc::decode(&enc), Some(more[0]));
        // the old segment goes when nothing refers to it; the current one never
        assert_eq!(log.remove_unreferenced(&|_| false).unwrap(), 1);
        assert!(log.read(locs[0]).is_err());
        assert_eq!(log.read(more[0]).unwrap(), b"x");
    }
}
