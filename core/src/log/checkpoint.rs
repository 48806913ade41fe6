//! The heads checkpoint (`heads.checkpoint`): every stream's head as it was at a position
//! below which every record is synced, so that opening the log indexes only the records after
//! it instead of every record it holds.
//!
//! It is a cache like the rest of the index: a missing, damaged or stale checkpoint costs a
//! full indexing pass, never a record. Opening still reads and verifies every frame (see
//! `docs/event-log-format.md`, "Recovery on open"); only the per-record work of indexing (a
//! random access into a table of every stream) is skipped for the records it covers.
//!
//! Layout (little-endian): magic `CTWINIDX`, version (`u32`), reserved (`u32`), the covered
//! position (`u64`: every record below it is indexed here), the number of streams (`u64`),
//! then per stream its id's length (`u16`), the id (UTF-8), its last sequence (`u64`), the
//! position (`u64`) and segment offset (`u32`) of its newest record; last, a CRC32C of
//! everything before it.

use std::path::Path;

use rustc_hash::FxHashMap;

use super::{StreamHead, StreamKey, frame};

/// The checkpoint's file name in the log's directory.
pub(super) const CHECKPOINT_FILE: &str = "heads.checkpoint";
const MAGIC: &[u8; 8] = b"CTWINIDX";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 32;
const CRC_LEN: usize = 4;
/// Fixed bytes of one stream's entry besides its id.
const ENTRY_LEN: usize = 2 + 8 + 8 + 4;

/// Encodes `heads` as the checkpoint covering every record below `covered`.
pub(super) fn encode(covered: u64, heads: &FxHashMap<StreamKey, StreamHead>) -> Vec<u8> {
    let ids: usize = heads.keys().map(|stream| stream.len()).sum();
    let mut out = Vec::with_capacity(HEADER_LEN + heads.len() * ENTRY_LEN + ids + CRC_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&covered.to_le_bytes());
    out.extend_from_slice(&(heads.len() as u64).to_le_bytes());
    for (stream, head) in heads {
        // Stream ids are at most u16::MAX bytes (`frame::check_lengths`).
        out.extend_from_slice(&(stream.len() as u16).to_le_bytes());
        out.extend_from_slice(stream.as_bytes());
        out.extend_from_slice(&head.seq.to_le_bytes());
        out.extend_from_slice(&head.position.to_le_bytes());
        out.extend_from_slice(&head.offset.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A checkpoint read back whole and verified: its checksum, header and every entry.
#[derive(Debug)]
pub(super) struct Checkpoint {
    bytes: Vec<u8>,
    /// Every record below this position is indexed in it.
    pub(super) covered: u64,
    streams: usize,
}

/// What reading a checkpoint found.
#[derive(Debug)]
pub(super) enum Read {
    /// None was written (or retention removed it).
    Missing,
    /// Unusable, and why.
    Damaged(String),
    /// Verified.
    Found(Checkpoint),
}

/// Reads and verifies the checkpoint in `dir`; one that cannot be read is [`Read::Damaged`]
/// (a cache: opening goes on without it).
pub(super) fn read(dir: &Path) -> Read {
    let path = dir.join(CHECKPOINT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Read::Missing,
        Err(e) => return Read::Damaged(format!("reading {}: {e}", path.display())),
    };
    match verify(bytes) {
        Ok(checkpoint) => Read::Found(checkpoint),
        Err(reason) => Read::Damaged(reason),
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn verify(bytes: Vec<u8>) -> std::result::Result<Checkpoint, String> {
    if bytes.len() < HEADER_LEN + CRC_LEN {
        return Err(format!("{} bytes, shorter than a header", bytes.len()));
    }
    let (body, crc) = bytes.split_at(bytes.len() - CRC_LEN);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err("checksum mismatch".into());
    }
    if &body[..8] != MAGIC {
        return Err("not a citytwin heads checkpoint (bad magic)".into());
    }
    let version = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(format!("checkpoint format version {version}, this build reads {VERSION}"));
    }
    let covered = u64_at(body, 16);
    let streams = usize::try_from(u64_at(body, 24)).map_err(|_| "stream count out of range".to_owned())?;
    let mut entries = Entries { bytes: body, at: HEADER_LEN };
    let mut found = 0usize;
    for entry in entries.by_ref() {
        let (stream, _) = entry?;
        if stream.is_empty() {
            return Err(format!("an empty stream id at entry {found}"));
        }
        found += 1;
    }
    if found != streams || entries.at != body.len() {
        return Err(format!("{found} entries where the header says {streams}, or bytes after them"));
    }
    Ok(Checkpoint { bytes, covered, streams })
}

impl Checkpoint {
    /// Puts every head it holds into `heads` (replacing what `heads` had for the same stream).
    /// A head whose newest record is below `first_base` (deleted by retention since) keeps its
    /// sequence only, as `retired.streams` would.
    pub(super) fn load_into(&self, heads: &mut FxHashMap<StreamKey, StreamHead>, first_base: u64) {
        heads.reserve(self.streams);
        let body = &self.bytes[..self.bytes.len() - CRC_LEN];
        for (stream, mut head) in (Entries { bytes: body, at: HEADER_LEN }).map_while(std::result::Result::ok) {
            if head.position != frame::NO_PREV && head.position < first_base {
                head = StreamHead { seq: head.seq, position: frame::NO_PREV, offset: 0 };
            }
            heads.insert(StreamKey::new(stream), head);
        }
    }
}

/// The entries of a checkpoint's body, in order; an `Err` ends them.
struct Entries<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Entries<'_> {
    /// The error for the entry at `at`, which ends the entries.
    fn fail<T>(&mut self, what: &str) -> Option<std::result::Result<T, String>> {
        let error = format!("{what} at byte {}", self.at);
        self.at = self.bytes.len();
        Some(Err(error))
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = std::result::Result<(&'a str, StreamHead), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.bytes.len() {
            return None;
        }
        let rest = &self.bytes[self.at..];
        let Some(len) = rest.get(..2).map(|b| usize::from(u16::from_le_bytes([b[0], b[1]]))) else {
            return self.fail("an entry cut short");
        };
        let Some(entry) = rest.get(..ENTRY_LEN + len) else {
            return self.fail("an entry cut short");
        };
        let Ok(stream) = std::str::from_utf8(&entry[2..2 + len]) else {
            return self.fail("a stream id that is not UTF-8");
        };
        let fixed = &entry[2 + len..];
        let head = StreamHead {
            seq: u64_at(fixed, 0),
            position: u64_at(fixed, 8),
            offset: u32::from_le_bytes(fixed[16..20].try_into().expect("4 bytes")),
        };
        self.at += ENTRY_LEN + len;
        Some(Ok((stream, head)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads() -> FxHashMap<StreamKey, StreamHead> {
        let mut heads = FxHashMap::default();
        heads.insert(StreamKey::new("sensor_1"), StreamHead { seq: 3, position: 40, offset: 900 });
        heads.insert(StreamKey::new("ünïcode stream"), StreamHead { seq: 1, position: 7, offset: 24 });
        heads.insert(StreamKey::new("x".repeat(300)), StreamHead { seq: 9, position: frame::NO_PREV, offset: 0 });
        heads
    }

    fn as_pairs(heads: &FxHashMap<StreamKey, StreamHead>) -> Vec<(String, u64, u64, u32)> {
        let mut pairs: Vec<_> = heads.iter().map(|(s, h)| (s.to_string(), h.seq, h.position, h.offset)).collect();
        pairs.sort();
        pairs
    }

    #[test]
    fn heads_round_trip_and_those_below_the_first_segment_keep_their_sequence_only() {
        let bytes = encode(41, &heads());
        let checkpoint = verify(bytes).unwrap();
        assert_eq!(checkpoint.covered, 41);
        let mut loaded = FxHashMap::default();
        checkpoint.load_into(&mut loaded, 0);
        assert_eq!(as_pairs(&loaded), as_pairs(&heads()));
        let mut after_retention = FxHashMap::default();
        checkpoint.load_into(&mut after_retention, 10);
        let unicode = after_retention["ünïcode stream"];
        assert_eq!((unicode.seq, unicode.position, unicode.offset), (1, frame::NO_PREV, 0));
        assert_eq!(after_retention["sensor_1"].position, 40);
    }

    #[test]
    fn every_damage_is_found_before_anything_is_loaded() {
        let good = encode(41, &heads());
        for at in 0..good.len() {
            let mut bytes = good.clone();
            bytes[at] ^= 0x10;
            assert!(verify(bytes).is_err(), "a flipped bit at byte {at} goes unnoticed");
        }
        for len in 0..good.len() {
            assert!(verify(good[..len].to_vec()).is_err(), "cut to {len} bytes");
        }
        // A checksum that matches a body whose entries do not add up.
        let mut body = good[..good.len() - CRC_LEN].to_vec();
        body[24] = 4; // four streams announced, three present
        let crc = crc32c::crc32c(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        let error = verify(body).unwrap_err();
        assert!(error.contains("3 entries where the header says 4"), "{error}");
    }
}
