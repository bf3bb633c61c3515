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
//! A frame of a few records compresses poorly on its own (a node's forwarder sends a handful
//! of records at a time: one record's JSON, 660 bytes, is about 350 compressed alone), so the
//! log trains a zstd dictionary on the first [`TRAIN_RECORDS`] records it receives and
//! compresses every later frame with it (about 110 bytes for one record). The dictionary is
//! trained on this site's own records, kept durably beside the segments as
//! `<db>/records/dict-<id>.zdict` (written, synced and renamed before any frame uses it) and
//! used from then on, also after a restart (the newest readable one). Each frame names its
//! dictionary in its header (zstd's dictionary id; none for the frames written before, which
//! read as they always did), so `zstd -d -D records/dict-<id>.zdict` reads a segment back; a
//! frame naming a dictionary that is missing or unreadable is an error naming its segment,
//! offset and dictionary.
//!
//! sled's cost per write grows with the bytes in its nodes, and records are the bulk of the
//! bytes: keeping them out of the tree is what lets ingest keep up (bench/README.md). A
//! batch is appended and synced ([`ValueLog::sync`]) before sled refers to it, so sled never
//! points at bytes that a crash could lose; bytes a crash leaves unreferenced at a segment's
//! tail are never read, and each open starts a new segment, so nothing is appended after
//! them. An admin can read (or, with sled lost, recover) the records with any tool: `cat`
//! for the plain segments, `zstdcat` for the others.

use std::collections::{BTreeMap, HashMap, VecDeque};
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
/// The dictionary is trained on the first this many records the log receives (without one)
/// ...
pub const TRAIN_RECORDS: usize = 2_000;
/// ... or on as many as fill this many bytes, whichever comes first (a record longer than
/// [`FRAME_BYTES`] is not a sample).
const TRAIN_BYTES: usize = 4 * 1024 * 1024;
/// The dictionary's size: on generated job records, 8 KiB compresses a single record to 112
/// bytes, 16 KiB to 107, 32 KiB to 106 (zstd level 1, frames of one record).
const DICT_BYTES: usize = 16 * 1024;
/// The first dictionary id this log gives (zstd's format keeps ids below 32768 for a
/// registry of public dictionaries); each new dictionary gets one above every id present.
const FIRST_DICT_ID: u32 = 32_768;

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

/// A dictionary for reading frames, or why it cannot be used.
type Dictionary = Result<Arc<zstd::zstd_safe::DDict<'static>>, String>;

/// The most a frame may hold decompressed (what its header says is checked against it
/// before anything is allocated); the log writes frames of [`FRAME_BYTES`], and a longer
/// record alone.
const FRAME_MAX: u64 = 1 << 30;

/// A digested dictionary for reading, or why zstd refuses `bytes`.
fn ddict(bytes: &[u8]) -> Result<Arc<zstd::zstd_safe::DDict<'static>>, String> {
    zstd::zstd_safe::DDict::try_create(bytes)
        .map(Arc::new)
        .ok_or_else(|| "zstd refuses its tables".to_string())
}

/// Decompresses one frame with a dictionary.
fn decode_with(frame: &[u8], dict: &zstd::zstd_safe::DDict<'_>) -> Result<Vec<u8>, String> {
    let size = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) if n <= FRAME_MAX => n as usize,
        Ok(Some(n)) => return Err(format!("its header says {n} bytes")),
        Ok(None) | Err(_) => return Err("no content size in its header".into()),
    };
    let mut dctx =
        zstd::zstd_safe::DCtx::try_create().ok_or_else(|| "no zstd context".to_string())?;
    let mut plain = Vec::with_capacity(size);
    dctx.decompress_using_ddict(&mut plain, frame, dict)
        .map_err(zstd::zstd_safe::get_error_name)?;
    Ok(plain)
}

/// Decompresses one frame without a dictionary, reading at most `max` bytes out of it
/// ([`FRAME_MAX`]; its header's content size is not required: frames written before the
/// dictionary may not all carry one).
fn decode_plain(frame: &[u8], max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let decoder = zstd::stream::read::Decoder::new(frame).map_err(|e| e.to_string())?;
    let mut plain = Vec::new();
    decoder
        .take(max.saturating_add(1))
        .read_to_end(&mut plain)
        .map_err(|e| e.to_string())?;
    if plain.len() as u64 > max {
        return Err(format!("it holds more than {max} bytes"));
    }
    Ok(plain)
}

/// The compressing side: zstd's context, kept between appends, and the dictionary in use or
/// the samples to train one on.
struct Compress {
    /// zstd's context (with the dictionary loaded, if any); made at the first append.
    compressor: Option<zstd::bulk::Compressor<'static>>,
    /// The dictionary the frames are compressed with.
    dict: Option<(u32, Vec<u8>)>,
    /// Samples for training one (records' JSON lines, back to back) and their lengths,
    /// while there is no dictionary and training has not failed.
    samples: Option<(Vec<u8>, Vec<usize>)>,
    /// How many records to train on (tests train on fewer).
    train_records: usize,
}

/// The record log of one database.
pub struct ValueLog {
    dir: PathBuf,
    current: Mutex<Current>,
    /// Open segments for reading.
    readers: RwLock<HashMap<u32, Arc<File>>>,
    /// The last frames decompressed, newest last: (segment, offset) and the frame's JSON.
    frames: Mutex<VecDeque<CachedFrame>>,
    /// Compression state.
    compress: Mutex<Compress>,
    /// The dictionaries present, by id (also the unreadable ones, with the reason).
    dicts: RwLock<BTreeMap<u32, Dictionary>>,
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

/// The file name of dictionary `id`.
fn dict_name(id: u32) -> String {
    format!("dict-{id}.zdict")
}

/// Syncs directory `dir` (a new name in it must survive a crash).
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing {}", dir.display())))
}

impl ValueLog {
    /// Opens the log in `dir` (created if needed) and starts a new segment.
    pub fn open(dir: &Path) -> Result<ValueLog, StoreError> {
        Self::open_training(dir, TRAIN_RECORDS)
    }

    /// [`ValueLog::open`], training a dictionary (when there is none) on the first
    /// `train_records` records (0: never).
    pub fn open_training(dir: &Path, train_records: usize) -> Result<ValueLog, StoreError> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let last = Self::list(dir)?
            .into_iter()
            .map(|(id, _)| id)
            .max()
            .unwrap_or(0);
        let dicts = Self::load_dicts(dir)?;
        // the newest readable dictionary compresses from now on
        let dict = dicts
            .iter()
            .rev()
            .find_map(|(id, d)| d.as_ref().ok().map(|_| *id))
            .map(|id| {
                let path = dir.join(dict_name(id));
                std::fs::read(&path)
                    .map(|bytes| (id, bytes))
                    .map_err(io(format!("reading {}", path.display())))
            })
            .transpose()?;
        let samples = (dict.is_none() && train_records > 0).then(|| (Vec::new(), Vec::new()));
        let current = Self::create_segment(dir, last + 1)?;
        Ok(ValueLog {
            dir: dir.to_path_buf(),
            current: Mutex::new(current),
            readers: RwLock::new(HashMap::new()),
            frames: Mutex::new(VecDeque::with_capacity(CACHED_FRAMES)),
            compress: Mutex::new(Compress {
                compressor: None,
                dict,
                samples,
                train_records,
            }),
            dicts: RwLock::new(dicts),
        })
    }

    /// The dictionaries in `dir`: each `dict-<id>.zdict` must be a zstd dictionary whose id
    /// is its name's; one that is not is kept with the reason, for the reads that need it.
    fn load_dicts(dir: &Path) -> Result<BTreeMap<u32, Dictionary>, StoreError> {
        let mut out = BTreeMap::new();
        let entries = std::fs::read_dir(dir).map_err(io(format!("listing {}", dir.display())))?;
        for e in entries {
            let e = e.map_err(io(format!("listing {}", dir.display())))?;
            let name = e.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix("dict-")?.strip_suffix(".zdict"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let path = e.path();
            let dict = match std::fs::read(&path) {
                Err(e) => Err(format!("{}: {e}", path.display())),
                Ok(bytes) => match zstd::zstd_safe::get_dict_id_from_dict(&bytes) {
                    Some(found) if found.get() == id => {
                        ddict(&bytes).map_err(|why| format!("{}: {why}", path.display()))
                    }
                    Some(found) => Err(format!(
                        "{} holds dictionary {found}, not {id}",
                        path.display()
                    )),
                    None => Err(format!("{} is not a zstd dictionary", path.display())),
                },
            };
            if let Err(why) = &dict {
                tracing::error!("record log: {why}; frames compressed with it cannot be read");
            }
            out.insert(id, dict);
        }
        Ok(out)
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
        sync_dir(dir)?;
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
            let mut compress = self.compress.lock().unwrap_or_else(PoisonError::into_inner);
            self.sample(&mut compress, items);
            let compress = &mut *compress;
            let compressor = match &mut compress.compressor {
                Some(c) => c,
                None => {
                    let dict = compress
                        .dict
                        .as_ref()
                        .map_or(&[][..], |(_, d)| d.as_slice());
                    // a checksum per frame: a damaged frame is an error, never other JSON
                    let mut c = zstd::bulk::Compressor::with_dictionary(LEVEL, dict)
                        .map_err(io("starting zstd".to_string()))?;
                    c.include_checksum(true)
                        .map_err(io("starting zstd".to_string()))?;
                    compress.compressor.insert(c)
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

    /// Keeps `items` as samples while the log has no dictionary; once there are enough,
    /// trains one, stores it durably and compresses with it from then on. A dictionary that
    /// cannot be made (zstd refuses the samples, the file cannot be written) is logged and
    /// the log goes on without one: frames without a dictionary are as valid.
    fn sample(&self, compress: &mut Compress, items: &[&[u8]]) {
        let Some((data, sizes)) = &mut compress.samples else {
            return;
        };
        for item in items {
            if sizes.len() >= compress.train_records || data.len() >= TRAIN_BYTES {
                break;
            }
            if item.len() < FRAME_BYTES {
                data.extend_from_slice(item);
                data.push(b'\n');
                sizes.push(item.len() + 1);
            }
        }
        if sizes.len() < compress.train_records && data.len() < TRAIN_BYTES {
            return;
        }
        let Some((data, sizes)) = compress.samples.take() else {
            return;
        };
        match self.train(&data, &sizes) {
            Ok((id, dict)) => {
                tracing::info!(
                    dictionary = id,
                    bytes = dict.len(),
                    samples = sizes.len(),
                    "record log: compressing with a dictionary trained on this site's records"
                );
                compress.dict = Some((id, dict));
                compress.compressor = None;
            }
            Err(e) => {
                tracing::warn!("record log: no dictionary ({e}); frames compressed without one")
            }
        }
    }

    /// Trains a dictionary on `data` (samples of lengths `sizes`), gives it an id above every
    /// dictionary present and writes it durably (temporary file, sync, rename, sync of the
    /// directory) before anything is compressed with it.
    fn train(&self, data: &[u8], sizes: &[usize]) -> Result<(u32, Vec<u8>), StoreError> {
        let mut dict = zstd::dict::from_continuous(data, sizes, DICT_BYTES)
            .map_err(io("training a zstd dictionary".to_string()))?;
        let id = {
            let dicts = self.dicts.read().unwrap_or_else(PoisonError::into_inner);
            dicts.keys().next_back().map_or(FIRST_DICT_ID, |last| {
                last.saturating_add(1).max(FIRST_DICT_ID)
            })
        };
        // a trained dictionary's header: magic (4 bytes), then its id (little-endian)
        if zstd::zstd_safe::get_dict_id_from_dict(&dict).is_none() || dict.len() < 8 {
            return Err(StoreError::Engine("zstd made no dictionary".into()));
        }
        dict.splice(4..8, id.to_le_bytes());
        let path = self.dir.join(dict_name(id));
        let tmp = self.dir.join(format!("{}.tmp", dict_name(id)));
        (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(&dict)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })()
        .map_err(io(format!("writing {}", path.display())))?;
        sync_dir(&self.dir)?;
        self.dicts
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, ddict(&dict));
        Ok((id, dict))
    }

    /// The id of the dictionary frames are compressed with now, if any.
    #[cfg(test)]
    pub fn dictionary(&self) -> Option<u32> {
        let compress = self.compress.lock().unwrap_or_else(PoisonError::into_inner);
        compress.dict.as_ref().map(|(id, _)| *id)
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
        let plain = match zstd::zstd_safe::get_dict_id_from_frame(&compressed) {
            None => {
                decode_plain(&compressed, FRAME_MAX).map_err(|e| corrupt_frame(id, offset, e))?
            }
            Some(dict_id) => {
                let dict = self
                    .dicts
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&dict_id.get())
                    .cloned();
                let dict = match dict {
                    Some(Ok(d)) => d,
                    Some(Err(why)) => {
                        return Err(corrupt_frame(
                            id,
                            offset,
                            format!("compressed with dictionary {dict_id}, unreadable: {why}"),
                        ));
                    }
                    None => {
                        return Err(corrupt_frame(
                            id,
                            offset,
                            format!(
                                "compressed with dictionary {dict_id}, which is not in {} \
                                 (no {})",
                                self.dir.display(),
                                dict_name(dict_id.get())
                            ),
                        ));
                    }
                };
                decode_with(&compressed, &dict).map_err(|e| {
                    corrupt_frame(id, offset, format!("with dictionary {dict_id}: {e}"))
                })?
            }
        };
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
    fn a_frame_without_dictionary_is_read_up_to_its_limit() {
        let frame = zstd::bulk::compress(&[b'x'; 4096], 1).unwrap();
        assert_eq!(decode_plain(&frame, 4096).unwrap().len(), 4096);
        let err = decode_plain(&frame, 4095).unwrap_err();
        assert!(err.contains("more than 4095 bytes"), "{err}");
        assert!(decode_plain(b"not zstd", FRAME_MAX).is_err());
    }

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

    /// A job record's JSON, varied as a site's are.
    fn record(i: u32) -> Vec<u8> {
        format!(
            "{{\"version\":1,\"id\":{{\"cluster\":\"c\",\"job_id\":{i},\"node\":\"node{:03}\",\
             \"kind\":\"job_end\"}},\"body\":{{\"user\":\"user{:03}\",\"account\":\"acct{:02}\",\
             \"start_time\":{},\"end_time\":{},\"gpus\":[{{\"index\":0,\"uuid\":\"GPU-{:x}\",\
             \"energy_delta_mj\":{}}}]}}}}",
            i % 97,
            i % 41,
            i % 13,
            1_735_692_494_983u64 + u64::from(i) * 7_919,
            1_735_692_982_120u64 + u64::from(i) * 104_729,
            u64::from(i).wrapping_mul(0x9e37_79b9),
            u64::from(i) * 2_654_435 % 1_000_000_007,
        )
        .into_bytes()
    }

    /// Appends records `from..to` one per frame (as a node's forwarder sends them).
    fn one_by_one(log: &ValueLog, from: u32, to: u32) -> Vec<(Loc, Vec<u8>)> {
        (from..to)
            .map(|i| {
                let json = record(i);
                let (locs, file) = log.append(&[&json]).unwrap();
                ValueLog::sync(&file).unwrap();
                (locs[0], json)
            })
            .collect()
    }

    fn frame_len(loc: &Loc) -> u32 {
        match loc {
            Loc::Framed { frame_len, .. } => *frame_len,
            Loc::Plain { .. } => panic!("a new record in a plain segment"),
        }
    }

    #[test]
    fn a_dictionary_is_trained_on_the_first_records_and_frames_with_and_without_it_read_back() {
        let dir = tempfile::tempdir().unwrap();
        // a log of before dictionaries: frames without one
        let old = {
            let log = ValueLog::open_training(dir.path(), 0).unwrap();
            one_by_one(&log, 0, 50)
        };
        let log = ValueLog::open_training(dir.path(), 300).unwrap();
        assert_eq!(log.dictionary(), None);
        let before = one_by_one(&log, 50, 349);
        assert_eq!(log.dictionary(), None, "299 samples of 300");
        let after = one_by_one(&log, 349, 700);
        assert_eq!(log.dictionary(), Some(FIRST_DICT_ID));
        let dict = std::fs::read(dir.path().join(dict_name(FIRST_DICT_ID))).unwrap();
        assert_eq!(
            zstd::zstd_safe::get_dict_id_from_dict(&dict).map(|id| id.get()),
            Some(FIRST_DICT_ID)
        );
        // the frames name their dictionary, those before none
        let frame_dict = |log: &ValueLog, loc: &Loc| {
            let Loc::Framed {
                segment,
                offset,
                frame_len,
                ..
            } = *loc
            else {
                panic!("{loc:?}")
            };
            let bytes = log.read_at(segment, true, offset, frame_len).unwrap();
            zstd::zstd_safe::get_dict_id_from_frame(&bytes).map(|id| id.get())
        };
        assert_eq!(frame_dict(&log, &before[0].0), None);
        assert_eq!(frame_dict(&log, &after[1].0), Some(FIRST_DICT_ID));
        // one record per frame: with the dictionary a fraction of the bytes
        let mean = |v: &[(Loc, Vec<u8>)]| {
            v.iter().map(|(l, _)| u64::from(frame_len(l))).sum::<u64>() / v.len() as u64
        };
        let (without, with) = (mean(&before), mean(&after[1..]));
        assert!(with * 2 < without, "{with} bytes with, {without} without");
        let all: Vec<_> = old.iter().chain(&before).chain(&after).collect();
        for (loc, json) in &all {
            assert_eq!(&log.read(*loc).unwrap(), json);
        }
        // a reopened log reads both and keeps compressing with the same dictionary
        drop(log);
        let log = ValueLog::open_training(dir.path(), 300).unwrap();
        assert_eq!(log.dictionary(), Some(FIRST_DICT_ID));
        let more = one_by_one(&log, 700, 710);
        for (loc, json) in all.iter().copied().chain(&more) {
            assert_eq!(&log.read(*loc).unwrap(), json);
        }
        assert_eq!(frame_dict(&log, &more[0].0), Some(FIRST_DICT_ID));
        // zstd reads a segment back with the dictionary: `zstd -d -D dict-<id>.zdict`
        let segment = std::fs::read(dir.path().join(segment_name(2, true))).unwrap();
        let mut plain = Vec::new();
        std::io::Read::read_to_end(
            &mut zstd::stream::Decoder::with_dictionary(segment.as_slice(), &dict).unwrap(),
            &mut plain,
        )
        .unwrap();
        let lines: Vec<&[u8]> = plain
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), 650);
        assert_eq!(lines[649], record(699).as_slice());
    }

    #[test]
    fn a_frame_naming_a_missing_or_unreadable_dictionary_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = ValueLog::open_training(dir.path(), 200).unwrap();
        let written = one_by_one(&log, 0, 220);
        assert_eq!(log.dictionary(), Some(FIRST_DICT_ID));
        drop(log);
        let (plain_loc, plain_json) = &written[0];
        let (loc, _) = &written[219];
        let Loc::Framed { offset, .. } = *loc else {
            panic!("{loc:?}")
        };
        let at = format!("records/00000001.jsonl.zst at byte {offset}");
        let path = dir.path().join(dict_name(FIRST_DICT_ID));
        let good = std::fs::read(&path).unwrap();
        // missing
        std::fs::remove_file(&path).unwrap();
        let log = ValueLog::open_training(dir.path(), 0).unwrap();
        let err = log.read(*loc).unwrap_err().to_string();
        assert!(err.contains(&at), "{err}");
        assert!(
            err.contains("dictionary 32768") && err.contains("no dict-32768.zdict"),
            "{err}"
        );
        assert_eq!(
            &log.read(*plain_loc).unwrap(),
            plain_json,
            "no dictionary needed"
        );
        drop(log);
        // not a dictionary
        std::fs::write(&path, b"not a dictionary").unwrap();
        let log = ValueLog::open_training(dir.path(), 0).unwrap();
        let err = log.read(*loc).unwrap_err().to_string();
        assert!(err.contains(&at), "{err}");
        assert!(
            err.contains("dict-32768.zdict is not a zstd dictionary"),
            "{err}"
        );
        assert_eq!(
            log.dictionary(),
            None,
            "an unreadable dictionary is not used"
        );
        drop(log);
        // another dictionary under its name
        let mut other = good.clone();
        other.splice(4..8, 40_000u32.to_le_bytes());
        std::fs::write(&path, &other).unwrap();
        let log = ValueLog::open_training(dir.path(), 0).unwrap();
        let err = log.read(*loc).unwrap_err().to_string();
        assert!(err.contains("holds dictionary 40000, not 32768"), "{err}");
        drop(log);
        // damaged tables: the frame does not decode (or fails its checksum)
        let mut damaged = good.clone();
        let n = damaged.len();
        for b in &mut damaged[8..n.min(200)] {
            *b = !*b;
        }
        std::fs::write(&path, &damaged).unwrap();
        let log = ValueLog::open_training(dir.path(), 0).unwrap();
        match log.read(*loc) {
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.contains(&at) && e.contains("with dictionary 32768"),
                    "{e}"
                );
            }
            Ok(json) => panic!("read {} bytes through a damaged dictionary", json.len()),
        }
        drop(log);
        // a new dictionary is trained beside an unreadable one, with the next id
        std::fs::write(&path, b"junk").unwrap();
        let log = ValueLog::open_training(dir.path(), 200).unwrap();
        let fresh = one_by_one(&log, 300, 520);
        assert_eq!(log.dictionary(), Some(FIRST_DICT_ID + 1));
        assert_eq!(log.read(fresh[219].0).unwrap(), fresh[219].1);
        // and the good one put back reads the old frames again
        std::fs::write(&path, &good).unwrap();
        let log = ValueLog::open_training(dir.path(), 200).unwrap();
        assert_eq!(log.dictionary(), Some(FIRST_DICT_ID + 1), "the newest");
        assert_eq!(log.read(written[219].0).unwrap(), written[219].1);
        assert_eq!(log.read(fresh[219].0).unwrap(), fresh[219].1);
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
