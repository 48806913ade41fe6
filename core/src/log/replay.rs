//! Filtered replay: an iterator over the log in position order.
//!
//! Filters are evaluated on frame headers, so records that do not match are never decoded.
//! The block index skips whole blocks of 1,024 frames that lie before the start position or
//! outside the time range.

use std::os::unix::fs::FileExt;

use h3o::CellIndex;

use super::frame::{self, Probe};
use super::segment::Segment;
use super::{Position, Record, corrupt, io_error};
use crate::Result;
use crate::event::{Timestamp, TypePattern, cell_within};

/// Which records a replay yields. Empty lists and `None` mean "no restriction"; the
/// restrictions combine with AND, the entries of one list with OR.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplayFilter {
    /// Start at this position.
    pub from_position: Position,
    /// Only records with time ≥ this (timestamp-based start).
    pub from_time: Option<Timestamp>,
    /// Only records with time < this.
    pub to_time: Option<Timestamp>,
    /// Only these event types.
    pub types: Vec<TypePattern>,
    /// Only these streams.
    pub streams: Vec<String>,
    /// Only records in these H3 cells or any cell under them (a parent cell).
    pub cells: Vec<CellIndex>,
    /// Only this organization's records.
    pub organization: Option<String>,
}

impl ReplayFilter {
    fn matches(&self, header: &frame::Header<'_>) -> bool {
        let time = header.time;
        self.from_time.is_none_or(|from| time >= from)
            && self.to_time.is_none_or(|to| time < to)
            && (self.types.is_empty() || self.types.iter().any(|p| p.matches(header.ty)))
            && (self.streams.is_empty() || self.streams.iter().any(|s| s == header.stream))
            && (self.cells.is_empty()
                || header.cell.is_some_and(|cell| self.cells.iter().any(|&c| cell_within(cell, c))))
            && self.organization.as_deref().is_none_or(|org| header.organization == Some(org))
    }

    fn block_may_match(&self, min_time: i64, max_time: i64) -> bool {
        self.from_time.is_none_or(|from| max_time >= from.as_nanos())
            && self.to_time.is_none_or(|to| min_time < to.as_nanos())
    }
}

/// Replay iterator; see [`super::EventLog::replay`].
#[derive(Debug)]
pub struct Replay {
    segments: Vec<Segment>,
    end: Position,
    filter: ReplayFilter,
    segment_idx: usize,
    block_idx: usize,
    buf: Vec<u8>,
    cursor: usize,
    failed: bool,
    cancelled: Option<Cancelled>,
}

/// See [`Replay::until_cancelled`].
struct Cancelled(Box<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cancelled(..)")
    }
}

impl Replay {
    pub(crate) fn new(segments: Vec<Segment>, end: Position, filter: ReplayFilter) -> Self {
        let segment_idx = segments.partition_point(|s| s.next <= filter.from_position);
        Replay {
            segments,
            end,
            filter,
            segment_idx,
            block_idx: 0,
            buf: Vec::new(),
            cursor: 0,
            failed: false,
            cancelled: None,
        }
    }

    /// Ends the replay early once `cancelled` returns true, checked before each block of the
    /// log is read (a block is 1,024 records). A selective filter can scan the
    /// whole log between two matches: a reader whose consumer has gone, or a server that is
    /// stopping, need not wait for that scan.
    #[must_use]
    pub fn until_cancelled(mut self, cancelled: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.cancelled = Some(Cancelled(Box::new(cancelled)));
        self
    }

    /// Loads the next block that may hold matches; false at the end.
    fn load_next_block(&mut self) -> Result<bool> {
        loop {
            if self.cancelled.as_ref().is_some_and(|Cancelled(cancelled)| cancelled()) {
                return Ok(false);
            }
            let Some(segment) = self.segments.get(self.segment_idx) else {
                return Ok(false);
            };
            if segment.base >= self.end {
                return Ok(false);
            }
            let Some(block) = segment.blocks.get(self.block_idx) else {
                self.segment_idx += 1;
                self.block_idx = 0;
                continue;
            };
            let i = self.block_idx;
            self.block_idx += 1;
            let block_end_position = segment.blocks.get(i + 1).map_or(segment.next, |b| b.first_position);
            if block_end_position <= self.filter.from_position
                || !self.filter.block_may_match(block.min_time, block.max_time)
            {
                continue;
            }
            let (start, end) = segment.block_range(i);
            self.buf.resize((end - start) as usize, 0);
            segment
                .file
                .read_exact_at(&mut self.buf, start)
                .map_err(|e| io_error(format!("reading {}", segment.path.display()), e))?;
            self.cursor = 0;
            return Ok(true);
        }
    }

    fn next_record(&mut self) -> Result<Option<Record>> {
        loop {
            if self.cursor >= self.buf.len() && !self.load_next_block()? {
                return Ok(None);
            }
            while self.cursor < self.buf.len() {
                let segment = &self.segments[self.segment_idx];
                let at = self.cursor;
                let offset = || u64::from(segment.blocks[self.block_idx - 1].offset) + at as u64;
                let len = match frame::probe(&self.buf[at..]) {
                    Probe::Frame(len) => len,
                    Probe::Bad(reason) => return Err(corrupt(&segment.path, offset(), reason)),
                    Probe::Incomplete => {
                        return Err(corrupt(&segment.path, offset(), "incomplete frame"));
                    }
                };
                self.cursor += len;
                let header = frame::parse_body(&self.buf[at + frame::PREFIX_LEN..at + len])
                    .map_err(|reason| corrupt(&segment.path, offset(), reason))?;
                if header.position >= self.end {
                    self.segment_idx = self.segments.len();
                    return Ok(None);
                }
                if header.position < self.filter.from_position || !self.filter.matches(&header) {
                    continue;
                }
                return Ok(Some(Record::from_header(&header)));
            }
        }
    }
}

impl Iterator for Replay {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let next = self.next_record().transpose();
        if matches!(next, Some(Err(_))) {
            self.failed = true;
        }
        next
    }
}
