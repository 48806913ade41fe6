//! The on-disk frame: `[u32 body length][u32 CRC32C of body][body]`, little-endian.
//!
//! The body starts with a fixed header that lets the log index and filter a record without
//! decoding the event:
//!
//! | bytes | field |
//! |---|---|
//! | 8 | global position |
//! | 8 | stream sequence (1-based) |
//! | 8 | record time, i64 ns since the epoch |
//! | 8 | H3 cell (0 = none) |
//! | 8 | position of the stream's previous record (`u64::MAX` = none) |
//! | 4 | byte offset of that record in its segment |
//! | 1 | event kind storage index (0 = a type outside the known table) |
//! | 2 + n | stream id (u16 length, UTF-8) |
//! | 2 + n | type string, only when the kind index is 0 |
//! | 2 + n | organization (empty = none) |
//! | rest | the event, MessagePack storage encoding (`codec::msgpack`) |
//!
//! The back-pointer to the stream's previous record makes each stream a linked list inside
//! the log: reading a stream's history needs only its head in memory.

use h3o::CellIndex;

use crate::event::{Event, EventKind, Timestamp};

/// Bytes before the body: length and checksum.
pub(crate) const PREFIX_LEN: usize = 8;
/// Fixed part of the body header.
const FIXED_LEN: usize = 8 * 5 + 4 + 1;
/// Largest body accepted; a larger length field is treated as damage.
pub(crate) const MAX_BODY_LEN: usize = 16 << 20;
/// `prev_position` of a stream's first record.
pub(crate) const NO_PREV: u64 = u64::MAX;

/// The decoded header of a frame body (borrowing the body).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header<'a> {
    pub(crate) position: u64,
    pub(crate) seq: u64,
    pub(crate) time: Timestamp,
    pub(crate) cell: Option<CellIndex>,
    pub(crate) prev_position: u64,
    pub(crate) prev_offset: u32,
    pub(crate) kind: Option<EventKind>,
    pub(crate) stream: &'a str,
    pub(crate) ty: &'a str,
    pub(crate) organization: Option<&'a str>,
    /// The MessagePack event.
    pub(crate) event: &'a [u8],
}

/// Header fields the writer supplies for one record.
pub(crate) struct NewRecord<'a> {
    pub(crate) position: u64,
    pub(crate) seq: u64,
    pub(crate) time: Timestamp,
    pub(crate) prev_position: u64,
    pub(crate) prev_offset: u32,
    pub(crate) stream: &'a str,
    pub(crate) event: &'a Event,
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    // Callers check lengths before writing (see `check_lengths`).
    out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// Why a record cannot be written, if it cannot.
pub(crate) fn check_lengths(stream: &str, event: &Event) -> Result<(), String> {
    let too_long = |what: &str, len: usize| format!("{what} is {len} bytes; the log stores at most {}", u16::MAX);
    if stream.len() > usize::from(u16::MAX) {
        return Err(too_long("the stream id", stream.len()));
    }
    if stream.is_empty() {
        return Err("the stream id is empty".to_owned());
    }
    if event.kind().is_none() && event.ty.as_str().len() > usize::from(u16::MAX) {
        return Err(too_long("the event type", event.ty.as_str().len()));
    }
    if let Some(org) = &event.ext.organization
        && org.len() > usize::from(u16::MAX)
    {
        return Err(too_long("the organization", org.len()));
    }
    Ok(())
}

/// Appends one complete frame for `record` to `out`.
pub(crate) fn write_frame(out: &mut Vec<u8>, record: &NewRecord<'_>) {
    let start = out.len();
    out.extend_from_slice(&[0; PREFIX_LEN]);
    let body_start = out.len();
    let event = record.event;
    out.extend_from_slice(&record.position.to_le_bytes());
    out.extend_from_slice(&record.seq.to_le_bytes());
    out.extend_from_slice(&record.time.as_nanos().to_le_bytes());
    out.extend_from_slice(&event.ext.h3cell.map_or(0, u64::from).to_le_bytes());
    out.extend_from_slice(&record.prev_position.to_le_bytes());
    out.extend_from_slice(&record.prev_offset.to_le_bytes());
    let kind = event.kind();
    out.push(kind.map_or(0, EventKind::storage_index));
    put_str(out, record.stream);
    if kind.is_none() {
        put_str(out, event.ty.as_str());
    }
    put_str(out, event.ext.organization.as_deref().unwrap_or(""));
    crate::codec::msgpack::encode_into(event, out);
    let body_len = out.len() - body_start;
    let crc = crc32c::crc32c(&out[body_start..]);
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What is at a frame boundary.
#[derive(Debug)]
pub(crate) enum Probe {
    /// A complete frame whose checksum matches: its total length.
    Frame(usize),
    /// Fewer bytes than the prefix or the declared body; or a zero length (pre-zeroed or
    /// never-written space).
    Incomplete,
    /// The length field is beyond [`MAX_BODY_LEN`], or the checksum does not match.
    Bad(&'static str),
}

/// Checks the frame at the start of `bytes`.
pub(crate) fn probe(bytes: &[u8]) -> Probe {
    if bytes.len() < PREFIX_LEN {
        return Probe::Incomplete;
    }
    let body_len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if body_len == 0 {
        return Probe::Incomplete;
    }
    if body_len > MAX_BODY_LEN {
        return Probe::Bad("length field out of range");
    }
    let Some(body) = bytes.get(PREFIX_LEN..PREFIX_LEN + body_len) else {
        return Probe::Incomplete;
    };
    if crc32c::crc32c(body) != crc {
        return Probe::Bad("checksum mismatch");
    }
    Probe::Frame(PREFIX_LEN + body_len)
}

/// Decodes the header of a body whose checksum was verified.
pub(crate) fn parse_body(body: &[u8]) -> Result<Header<'_>, &'static str> {
    if body.len() < FIXED_LEN {
        return Err("body shorter than its header");
    }
    let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    let cell_raw = u64_at(24);
    let cell = if cell_raw == 0 { None } else { Some(CellIndex::try_from(cell_raw).map_err(|_| "bad H3 cell")?) };
    let prev_offset = u32::from_le_bytes(body[40..44].try_into().expect("4 bytes"));
    let kind_index = body[44];
    let kind = if kind_index == 0 {
        None
    } else {
        Some(EventKind::from_storage_index(kind_index).ok_or("unknown kind index")?)
    };
    let mut at = FIXED_LEN;
    let mut take_str = || -> Result<&str, &'static str> {
        let len_bytes = body.get(at..at + 2).ok_or("truncated header")?;
        let len = usize::from(u16::from_le_bytes(len_bytes.try_into().expect("2 bytes")));
        let text = body.get(at + 2..at + 2 + len).ok_or("truncated header")?;
        at += 2 + len;
        std::str::from_utf8(text).map_err(|_| "header string is not UTF-8")
    };
    let stream = take_str()?;
    let ty = match kind {
        Some(kind) => kind.type_str(),
        None => take_str()?,
    };
    let organization = take_str()?;
    Ok(Header {
        position: u64_at(0),
        seq: u64_at(8),
        time: Timestamp::from_nanos(u64_at(16) as i64),
        cell,
        prev_position: u64_at(32),
        prev_offset,
        kind,
        stream,
        ty,
        organization: (!organization.is_empty()).then_some(organization),
        event: &body[at..],
    })
}
