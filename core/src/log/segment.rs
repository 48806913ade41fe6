//! Segment files: naming, headers, the in-memory summary of each segment, and the scan that
//! verifies frames and rebuilds the indexes on open.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::frame::{self, Probe};
use super::{RecoveryError, io_error};
use crate::Result;

/// Bytes at the start of every segment: magic, format version, reserved, base position.
pub(crate) const HEADER_LEN: u64 = 24;
const MAGIC: &[u8; 8] = b"CTWINLOG";
/// The segment format version this build writes and reads.
pub(crate) const SEGMENT_VERSION: u32 = 1;
/// Frames per time-index block.
pub(crate) const BLOCK_FRAMES: u64 = 1024;

/// A summary of up to [`BLOCK_FRAMES`] consecutive frames: the sparse time and position index.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Block {
    pub(crate) first_position: u64,
    pub(crate) offset: u32,
    pub(crate) min_time: i64,
    pub(crate) max_time: i64,
}

/// One segment file, as the log knows it in memory.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    /// Position of the first frame.
    pub(crate) base: u64,
    /// One past the position of the last frame.
    pub(crate) next: u64,
    pub(crate) path: PathBuf,
    /// Read handle (positional reads only).
    pub(crate) file: Arc<File>,
    /// Bytes of valid frames plus the header.
    pub(crate) len: u64,
    pub(crate) blocks: Vec<Block>,
}

impl Segment {
    /// Records a frame written at `offset` into the block index.
    pub(crate) fn note_frame(&mut self, position: u64, offset: u64, time: i64) {
        let starts_block = (position - self.base).is_multiple_of(BLOCK_FRAMES);
        if starts_block || self.blocks.is_empty() {
            self.blocks.push(Block { first_position: position, offset: offset as u32, min_time: time, max_time: time });
        } else if let Some(block) = self.blocks.last_mut() {
            block.min_time = block.min_time.min(time);
            block.max_time = block.max_time.max(time);
        }
        self.next = position + 1;
    }

    /// Latest record time in this segment (for age-based retention).
    pub(crate) fn max_time(&self) -> Option<i64> {
        self.blocks.iter().map(|b| b.max_time).max()
    }

    /// Byte range `[start, end)` of block `i`.
    pub(crate) fn block_range(&self, i: usize) -> (u64, u64) {
        let start = u64::from(self.blocks[i].offset);
        let end = self.blocks.get(i + 1).map_or(self.len, |next| u64::from(next.offset));
        (start, end)
    }
}

pub(crate) fn segment_name(base: u64) -> String {
    format!("{base:020}.seg")
}

/// The segment files in `dir`, sorted by base position.
pub(crate) fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| io_error(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if let Ok(base) = stem.parse::<u64>() {
            found.push((base, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

fn header_bytes(base: u64) -> [u8; HEADER_LEN as usize] {
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&base.to_le_bytes());
    header
}

/// Creates a new segment file with its header, synced, and syncs the directory.
pub(crate) fn create(dir: &Path, base: u64) -> Result<(File, Segment)> {
    let path = dir.join(segment_name(base));
    let mut file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .append(true)
        .open(&path)
        .map_err(|e| io_error(format!("creating {}", path.display()), e))?;
    file.write_all(&header_bytes(base)).map_err(|e| io_error(format!("writing {}", path.display()), e))?;
    file.sync_all().map_err(|e| io_error(format!("syncing {}", path.display()), e))?;
    sync_dir(dir)?;
    let read = File::open(&path).map_err(|e| io_error(format!("opening {}", path.display()), e))?;
    let segment = Segment { base, next: base, path, file: Arc::new(read), len: HEADER_LEN, blocks: Vec::new() };
    Ok((file, segment))
}

/// NOTE: a new or renamed file is only durable once its directory entry is; fsync the
/// directory on Unix.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error(format!("syncing directory {}", dir.display()), e))
}

/// One verified frame found by [`scan`], with what the indexes need.
pub(crate) struct ScannedFrame<'a> {
    pub(crate) offset: u64,
    pub(crate) header: frame::Header<'a>,
}

/// Where a scan stopped early.
#[derive(Debug)]
pub(crate) struct Damage {
    pub(crate) offset: u64,
    pub(crate) reason: String,
    /// Whether a valid frame with the next position follows the damaged one, which means the
    /// damage is not a torn tail but corruption in the middle.
    pub(crate) followed_by_valid_frame: bool,
}

/// Reads the whole segment, verifies its header and every frame, and calls `each` for every
/// valid frame in order. Stops at the first damaged frame and reports it.
///
/// Returns the file's bytes length of valid data and the damage, if any.
pub(crate) fn scan(
    path: &Path,
    base: u64,
    mut each: impl FnMut(ScannedFrame<'_>) -> std::result::Result<(), String>,
) -> Result<(u64, Option<Damage>)> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io_error(format!("reading {}", path.display()), e))?;
    if bytes.len() < HEADER_LEN as usize {
        return Ok((
            0,
            Some(Damage { offset: 0, reason: "segment header is incomplete".into(), followed_by_valid_frame: false }),
        ));
    }
    if bytes[..HEADER_LEN as usize] != header_bytes(base) {
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        let reason = if &bytes[..8] != MAGIC {
            "not a citytwin log segment (bad magic)".to_owned()
        } else if version != SEGMENT_VERSION {
            format!("segment format version {version}, this build reads {SEGMENT_VERSION}")
        } else {
            "segment header does not match its file name".to_owned()
        };
        return Err(RecoveryError::Corrupt { file: path.to_owned(), offset: 0, reason }.into());
    }
    let mut offset = HEADER_LEN as usize;
    let mut expected = base;
    while offset < bytes.len() {
        let damage =
            |reason: String, followed_by_valid_frame| Damage { offset: offset as u64, reason, followed_by_valid_frame };
        match frame::probe(&bytes[offset..]) {
            Probe::Frame(len) => {
                let body = &bytes[offset + frame::PREFIX_LEN..offset + len];
                let header = match frame::parse_body(body) {
                    Ok(header) => header,
                    Err(reason) => {
                        return Ok((offset as u64, Some(damage(reason.to_owned(), false))));
                    }
                };
                if header.position != expected {
                    let reason = format!("frame holds position {}, expected {expected}", header.position);
                    return Err(RecoveryError::Corrupt { file: path.to_owned(), offset: offset as u64, reason }.into());
                }
                if let Err(reason) = each(ScannedFrame { offset: offset as u64, header }) {
                    return Err(RecoveryError::Corrupt { file: path.to_owned(), offset: offset as u64, reason }.into());
                }
                expected += 1;
                offset += len;
            }
            Probe::Incomplete => {
                return Ok((offset as u64, Some(damage("incomplete frame".into(), false))));
            }
            Probe::Bad(reason) => {
                let followed = next_frame_is_valid(&bytes[offset..], expected + 1);
                return Ok((offset as u64, Some(damage(reason.into(), followed))));
            }
        }
    }
    Ok((offset as u64, None))
}

/// Whether, skipping the damaged frame by its length field, a valid frame holding
/// `next_position` follows.
fn next_frame_is_valid(bytes: &[u8], next_position: u64) -> bool {
    let body_len = u32::from_le_bytes(bytes[0..4].try_into().expect("probed prefix")) as usize;
    if body_len > frame::MAX_BODY_LEN {
        return false;
    }
    let next = frame::PREFIX_LEN + body_len;
    match bytes.get(next..).map(frame::probe) {
        Some(Probe::Frame(len)) => frame::parse_body(&bytes[next + frame::PREFIX_LEN..next + len])
            .is_ok_and(|header| header.position == next_position),
        _ => false,
    }
}
