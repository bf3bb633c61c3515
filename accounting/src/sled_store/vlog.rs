//! The record log: the stored records' JSON, appended to segment files; sled keeps only where
//! each record is ([`Loc`]).
//!
//! Segments written since format 3 are `<db>/records/<segment>.jsonl.zst`: a sequence of
//! independent zstd frames, each the JSON lines of up to [`FRAME_BYTES`] of one batch's
//! records (so `zstdcat` reads a segment back as JSON lines, one record per line). A record
//! is found by its frame (offset and compressed length) and its place in the decompressed
//! frame ([`Loc::Framed`]); the last few decompressed frames are cached, since reads go
//! through records stored together (a day's jobs arrive together). Segments of earlier
//! formats are plain JSON lines, `<segment>.jsonl` ([`Loc::Plain`]), and are still read.
//!
//! sled's cost per write grows with the bytes in its nodes, and records are the bulk of the
//! bytes: keeping them out of the tree is what lets ingest keep up (bench/README.md). A
//! batch is appended and synced ([`ValueLog::sync`]) before sled refers to it, so sled never
//! points at bytes that a crash could lose; bytes a crash leaves unreferenced at a segment's
//! tail are never read, and each open starts a new segment, so nothing is appended after
//! them. An admin can read (or, with sled lost, recover) the records with any tool: `cat`
//! for the plain segments, `zstdcat` for the others.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use serde::{Deserialize, Serialize};

use crate::store::StoreError;

/// A new segment is started once the current one holds this many bytes.
const SEGMENT_BYTES: u64 = 256 * 1024 * 1024;

/// A frame holds the JSON lines of one batch's records up to this many bytes (a record
/// longer than that is a frame of its own): large enough that zstd finds the records'
/// repetitions, small enough that reading one record decompresses little.
pub const FRAME_BYTES: usize = 32 * 1024;
/// zstd's compression level for the frames (1: its fastest; on record JSON it compresses as
/// well as the default level 3).
const LEVEL: i32 = 1;
/// Decompressed frames kept for the next reads.
const CACHED_FRAMES: usize = 32;

/// Where a record's JSON is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Loc {
    /// In a plain segment (`.jsonl`, formats 1 and 2): byte offset and length (without the
    /// newline).
    Plain {
        /// Segment number.
        segment: u32,
        /// Byte offset in the segment.
        offset: u64,
        /// Length in bytes.
        len: u32,
    },
    /// In a zstd frame of a compressed segment (`.jsonl.zst`).
    Framed {
        /// Segment number.
        segment: u32,
        /// The frame's byte offset in the segment.
        offset: u64,
        /// The frame's compressed length.
        frame_len: u32,
        /// The record's byte offset in the decompressed frame.
        start: u32,
        /// The record's length in bytes (without the newline).
        len: u32,
    },
}

impl Loc {
    /// The segment the record is in.
    pub fn segment(&self) -> u32 {
        match self {
            Loc::Plain { segment, .. } | Loc::Framed { segment, .. } => *segment,
        }
    }

    /// The stored form of a [`Loc::Plain`] in format 2's job entries: 16 bytes, big-endian
    /// (segment, offset, length); `None` for a framed one.
    #[cfg(test)]
    pub fn encode_plain(&self, out: &mut Vec<u8>) -> Option<()> {
        let Loc::Plain {
            segment,
            offset,
            len,
        } = self
        else {
            return None;
        };
        out.extend_from_slice(&segment.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        Some(())
    }

    /// Reads format 2's 16-byte stored form; `None` unless 16 bytes.
    pub fn decode_plain(b: &[u8]) -> Option<Loc> {
        let b: &[u8; 16] = b.try_into().ok()?;
        let (s, rest) = b.split_first_chunk::<4>()?;
        let (o, l) = rest.split_first_chunk::<8>()?;
        let l: &[u8; 4] = l.try_into().ok()?;
        Some(Loc::Plain {
            segment: u32::from_be_bytes(*s),
            offset: u64::from_be_bytes(*o),
            len: u32::from_be_bytes(*l),
        })
    }
}

/// A decompressed frame: (segment, offset) and its JSON lines.
type CachedFrame = ((u32, u64), Arc<Vec<u8>>);

/// A compressed frame and its records' places in it (start, length).
type Frame = (Vec<u8>, Vec<(u32, u32)>);

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
    /// The last frames decompressed, newest last: (segment, offset) and the frame's JSON.
    frames: Mutex<VecDeque<CachedFrame>>,
    /// zstd's compression context, kept between appends.
    compressor: Mutex<Option<zstd::bulk::Compressor<'static>>>,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |e| StoreError::Engine(format!("{what}: {e}"))
}

/// The file name of segment `id`: compressed (this format's) or plain (earlier formats').
fn segment_name(id: u32, compressed: bool) -> String {
    if compressed {
        format!("{id:08}.jsonl.zst")
    } else {
        format!("{id:08}.jsonl")
    }
}

fn corrupt_frame(segment: u32, offset: u64, message: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: format!("records/{} at byte {offset}", segment_name(segment, true)),
        message: format!("record log frame: {message}"),
    }
}

impl ValueLog {
    /// Opens the log in `dir` (created if needed) and starts a new segment.
    pub fn open(dir: &Path) -> Result<ValueLog, StoreError> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let last = Self::list(dir)?
            .into_iter()
            .map(|(id, _)| id)
            .max()
            .unwrap_or(0);
        let current = Self::create_segment(dir, last + 1)?;
        Ok(ValueLog {
            dir: dir.to_path_buf(),
            current: Mutex::new(current),
            readers: RwLock::new(HashMap::new()),
            frames: Mutex::new(VecDeque::with_capacity(CACHED_FRAMES)),
            compressor: Mutex::new(None),
        })
    }

    /// Segments present in `dir`: number, and whether compressed.
    fn list(dir: &Path) -> Result<Vec<(u32, bool)>, StoreError> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(io(format!("listing {}", dir.display())))?;
        for e in entries {
            let e = e.map_err(io(format!("listing {}", dir.display())))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let (stem, compressed) = match name.strip_suffix(".jsonl.zst") {
                Some(stem) => (Some(stem), true),
                None => (name.strip_suffix(".jsonl"), false),
            };
            if let Some(id) = stem.and_then(|n| n.parse::<u32>().ok()) {
                out.push((id, compressed));
            }
        }
        Ok(out)
    }

    fn create_segment(dir: &Path, id: u32) -> Result<Current, StoreError> {
        let path = dir.join(segment_name(id, true));
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

    /// Appends `items` (one JSON line each), compressed in frames of up to [`FRAME_BYTES`],
    /// and returns where each went, and the file to [`ValueLog::sync`] before anything
    /// refers to them.
    pub fn append(&self, items: &[&[u8]]) -> Result<(Vec<Loc>, Arc<File>), StoreError> {
        // compress outside the segment lock: frame offsets are known only once appended
        let mut frames: Vec<Frame> = Vec::new();
        {
            let mut compressor = self
                .compressor
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let compressor = match &mut *compressor {
                Some(c) => c,
                None => {
                    // a checksum per frame: a damaged frame is an error, never other JSON
                    let mut c = zstd::bulk::Compressor::new(LEVEL)
                        .map_err(io("starting zstd".to_string()))?;
                    c.include_checksum(true)
                        .map_err(io("starting zstd".to_string()))?;
                    compressor.insert(c)
                }
            };
            let mut plain = Vec::with_capacity(FRAME_BYTES + 1024);
            let mut places = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let start = u32::try_from(plain.len()).unwrap_or(u32::MAX);
                let len = u32::try_from(item.len())
                    .map_err(|_| StoreError::Engine("a record over 4 GiB".into()))?;
                plain.extend_from_slice(item);
                plain.push(b'\n');
                places.push((start, len));
                if plain.len() >= FRAME_BYTES || i + 1 == items.len() {
                    let frame = compressor
                        .compress(&plain)
                        .map_err(io("compressing records".to_string()))?;
                    frames.push((frame, std::mem::take(&mut places)));
                    plain.clear();
                }
            }
        }
        let mut cur = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if cur.len >= SEGMENT_BYTES {
            *cur = Self::create_segment(&self.dir, cur.id + 1)?;
        }
        let mut buf = Vec::with_capacity(frames.iter().map(|(f, _)| f.len()).sum());
        let mut locs = Vec::with_capacity(items.len());
        for (frame, places) in &frames {
            let offset = cur.len + buf.len() as u64;
            let frame_len = u32::try_from(frame.len())
                .map_err(|_| StoreError::Engine("a record log frame over 4 GiB".into()))?;
            for &(start, len) in places {
                locs.push(Loc::Framed {
                    segment: cur.id,
                    offset,
                    frame_len,
                    start,
                    len,
                });
            }
            buf.extend_from_slice(frame);
        }
        let name = segment_name(cur.id, true);
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

    /// The record's JSON at `loc`.
    pub fn read(&self, loc: Loc) -> Result<Vec<u8>, StoreError> {
        match loc {
            Loc::Plain {
                segment,
                offset,
                len,
            } => self.read_at(segment, false, offset, len),
            Loc::Framed {
                segment,
                offset,
                frame_len,
                start,
                len,
            } => {
                let frame = self.frame(segment, offset, frame_len)?;
                let (start, len) = (start as usize, len as usize);
                match frame.get(start..start + len) {
                    Some(json) if frame.get(start + len) == Some(&b'\n') => Ok(json.to_vec()),
                    _ => Err(corrupt_frame(
                        segment,
                        offset,
                        format!(
                            "no record of {len} bytes at {start} of its {} bytes",
                            frame.len()
                        ),
                    )),
                }
            }
        }
    }

    fn read_at(
        &self,
        id: u32,
        compressed: bool,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, StoreError> {
        let file = self.reader(id, compressed)?;
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, offset).map_err(io(format!(
            "reading {len} bytes at {offset} of segment {}",
            segment_name(id, compressed)
        )))?;
        Ok(buf)
    }

    /// The decompressed frame at `offset` of segment `id`, from the cache or the disk.
    fn frame(&self, id: u32, offset: u64, frame_len: u32) -> Result<Arc<Vec<u8>>, StoreError> {
        let mut frames = self.frames.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = frames.iter().position(|(at, _)| *at == (id, offset)) {
            let hit = frames.remove(i).map(|(_, f)| f);
            if let Some(f) = hit {
                frames.push_back(((id, offset), f.clone()));
                return Ok(f);
            }
        }
        drop(frames);
        let compressed = self.read_at(id, true, offset, frame_len)?;
        let plain = zstd::stream::decode_all(compressed.as_slice())
            .map_err(|e| corrupt_frame(id, offset, e))?;
        let plain = Arc::new(plain);
        let mut frames = self.frames.lock().unwrap_or_else(PoisonError::into_inner);
        if frames.len() >= CACHED_FRAMES {
            frames.pop_front();
        }
        frames.push_back(((id, offset), plain.clone()));
        Ok(plain)
    }

    fn reader(&self, id: u32, compressed: bool) -> Result<Arc<File>, StoreError> {
        if let Some(f) = self
            .readers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
        {
            return Ok(f.clone());
        }
        let path = self.dir.join(segment_name(id, compressed));
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
        for (id, compressed) in Self::list(&self.dir)? {
            if id != current && !live(id) {
                self.readers
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
                self.frames
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .retain(|((segment, _), _)| *segment != id);
                let path = self.dir.join(segment_name(id, compressed));
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
            more[0].segment(),
            locs[0].segment() + 1,
            "each open starts a segment"
        );
        // the segment is zstd frames of JSON lines: zstdcat reads it back
        let whole = std::fs::read(dir.path().join(segment_name(locs[0].segment(), true))).unwrap();
        assert_eq!(
            zstd::stream::decode_all(whole.as_slice()).unwrap(),
            b"{\"a\":1}\n{\"b\":22}\n"
        );
        let stored = postcard::to_stdvec(&more[0]).unwrap();
        assert_eq!(postcard::from_bytes::<Loc>(&stored).unwrap(), more[0]);
        // the old segment goes when nothing refers to it; the current one never
        assert_eq!(log.remove_unreferenced(&|_| false).unwrap(), 1);
        assert!(log.read(locs[0]).is_err());
        assert_eq!(log.read(more[0]).unwrap(), b"x");
    }

    #[test]
    fn a_batch_is_cut_into_frames_and_every_record_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = ValueLog::open(dir.path()).unwrap();
        let items: Vec<Vec<u8>> = (0..3000)
            .map(|i| format!("{{\"job_id\":{i},\"user\":\"user{}\"}}", i % 7).into_bytes())
            .collect();
        let refs: Vec<&[u8]> = items.iter().map(Vec::as_slice).collect();
        let (locs, file) = log.append(&refs).unwrap();
        ValueLog::sync(&file).unwrap();
        let frames: std::collections::BTreeSet<u64> = locs
            .iter()
            .map(|l| match l {
                Loc::Framed { offset, .. } => *offset,
                Loc::Plain { .. } => panic!("a new record in a plain segment"),
            })
            .collect();
        let bytes: usize = items.iter().map(|i| i.len() + 1).sum();
        assert_eq!(frames.len(), bytes.div_ceil(FRAME_BYTES), "{bytes} bytes");
        // read back out of order (past the frame cache) and in order
        for i in (0..items.len()).rev().step_by(7).chain(0..items.len()) {
            assert_eq!(log.read(locs[i]).unwrap(), items[i], "record {i}");
        }
        let size = std::fs::metadata(dir.path().join(segment_name(1, true)))
            .unwrap()
            .len();
        assert!(
            size * 4 < bytes as u64,
            "{size} compressed bytes of {bytes}"
        );
    }

    #[test]
    fn plain_segments_of_earlier_formats_are_still_read_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("00000001.jsonl"),
            b"{\"a\":1}\n{\"b\":22}\n",
        )
        .unwrap();
        let log = ValueLog::open(dir.path()).unwrap();
        let mut stored = Vec::new();
        let old = Loc::Plain {
            segment: 1,
            offset: 8,
            len: 8,
        };
        old.encode_plain(&mut stored).unwrap();
        assert_eq!(Loc::decode_plain(&stored), Some(old));
        assert_eq!(log.read(old).unwrap(), b"{\"b\":22}");
        let (new, _) = log.append(&[b"c"]).unwrap();
        assert_eq!(new[0].segment(), 2, "numbered after the plain segment");
        assert_eq!(log.remove_unreferenced(&|_| false).unwrap(), 1);
        assert!(!dir.path().join("00000001.jsonl").exists());
    }

    #[test]
    fn a_damaged_frame_is_an_error_naming_the_segment_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let log = ValueLog::open(dir.path()).unwrap();
        let (locs, file) = log.append(&[b"{\"a\":1}"]).unwrap();
        ValueLog::sync(&file).unwrap();
        let path = dir.path().join(segment_name(1, true));
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 3..].copy_from_slice(b"???");
        std::fs::write(&path, &bytes).unwrap();
        let fresh = ValueLog::open(dir.path()).unwrap();
        let err = fresh.read(locs[0]).unwrap_err().to_string();
        assert!(
            err.contains("records/00000001.jsonl.zst at byte 0"),
            "{err}"
        );
    }
}
