//! Per-stream snapshots: the latest state bytes of a stream and the sequence they include.
//!
//! File `snapshots/<name>.snap`: magic `CTWINSNP`, u32 version, u32 CRC32C of the rest,
//! u64 sequence, u16 stream length, stream id, state bytes. Written to a temporary file and
//! renamed over the old one.
//!
//! A key design decision: snapshots are caches. The log is the truth; a missing or damaged
//! snapshot only means replaying more of the stream. So they are not fsynced (a snapshot every
//! N events would otherwise cost an fsync each), and a snapshot that fails its checks is
//! logged and ignored rather than failing the load.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::io_error;
use crate::Result;

const MAGIC: &[u8; 8] = b"CTWINSNP";
const VERSION: u32 = 1;

/// A stream's saved state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The stream sequence the state includes (every event up to and including it).
    pub seq: u64,
    /// The state, in whatever encoding its owner chose.
    pub state: Vec<u8>,
}

/// File name for a stream: hex of its id when short, else hex of a 128-bit hash (the id is
/// stored inside the file and checked on load).
fn file_name(stream: &str) -> String {
    if stream.len() <= 100 {
        let hex: String = stream.bytes().map(|b| format!("{b:02x}")).collect();
        format!("s{hex}.snap")
    } else {
        // FNV-1a, twice with different offsets, for a name that cannot collide in practice.
        let fnv =
            |seed: u64| stream.bytes().fold(seed, |hash, b| (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
        format!("h{:016x}{:016x}.snap", fnv(0xcbf2_9ce4_8422_2325), fnv(0x6c62_272e_07bb_0142))
    }
}

pub(crate) fn path(dir: &Path, stream: &str) -> PathBuf {
    dir.join(file_name(stream))
}

pub(crate) fn save(dir: &Path, stream: &str, snapshot: &Snapshot) -> Result<()> {
    let mut rest = Vec::with_capacity(10 + stream.len() + snapshot.state.len());
    rest.extend_from_slice(&snapshot.seq.to_le_bytes());
    rest.extend_from_slice(&(stream.len() as u16).to_le_bytes());
    rest.extend_from_slice(stream.as_bytes());
    rest.extend_from_slice(&snapshot.state);
    let mut bytes = Vec::with_capacity(16 + rest.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&rest).to_le_bytes());
    bytes.extend_from_slice(&rest);

    let target = path(dir, stream);
    let temp = target.with_extension("snap.tmp");
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&temp)?;
        file.write_all(&bytes)?;
        std::fs::rename(&temp, &target)
    };
    write().map_err(|e| io_error(format!("writing snapshot {}", target.display()), e))
}

/// The stream's snapshot, if one exists and is intact. A damaged snapshot (a crash before the
/// file reached the disk, bad media) is logged and ignored: the stream is replayed instead.
pub(crate) fn load(dir: &Path, stream: &str) -> Result<Option<Snapshot>> {
    let path = path(dir, stream);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(format!("reading snapshot {}", path.display()), e)),
    };
    let ignore = |reason: &str| {
        tracing::warn!(file = %path.display(), reason, "ignoring a damaged snapshot; the stream is replayed from the log");
        Ok(None)
    };
    if bytes.len() < 26 || &bytes[..8] != MAGIC {
        return ignore("not a citytwin snapshot");
    }
    if u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) != VERSION {
        return ignore("unsupported snapshot version");
    }
    let crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    let rest = &bytes[16..];
    if crc32c::crc32c(rest) != crc {
        return ignore("snapshot checksum mismatch");
    }
    let seq = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
    let len = usize::from(u16::from_le_bytes(rest[8..10].try_into().expect("2 bytes")));
    let Some(stored_stream) = rest.get(10..10 + len) else { return ignore("truncated snapshot") };
    if stored_stream != stream.as_bytes() {
        return ignore("snapshot belongs to another stream");
    }
    Ok(Some(Snapshot { seq, state: rest[10 + len..].to_vec() }))
}
