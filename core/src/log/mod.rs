//! The durable event log: the write model of citytwin and the source of truth every asset
//! actor rebuilds from.
//!
//! - Append-only segment files of checksummed frames (see `frame` and
//!   `docs/event-log-format.md`), a global gap-free [`Position`] per record and a 1-based
//!   sequence per stream (an asset id, a saga, a cell: any name).
//! - Batched appends with group commit: concurrent appenders share one fsync. The
//!   [`Durability`] policy says what "acknowledged" means; [`EventLog::append`] returns only
//!   once it holds. After an fsync or write error the log is poisoned and refuses writes.
//! - Optimistic concurrency: [`Expected`] sequence per stream; a mismatch is
//!   [`Error::WrongExpectedSequence`] and nothing of the batch is written.
//! - Indexes: each frame points back to its stream's previous frame, so a stream's history
//!   is read without scanning (only each stream's head is kept in memory); a sparse block
//!   index (time range and first position per 1,024 frames) serves time-range and
//!   position-based reads. Both are rebuilt from the segments on open: they are caches.
//! - Snapshots per stream (caches: not fsynced, ignored when damaged);
//!   [`EventLog::load_stream`] = latest snapshot + tail.
//! - Filtered replay ([`ReplayFilter`]): time range, type patterns, streams, H3 cells (or any
//!   cell under a parent), organization, start position.
//! - Retention by age and size, whole segments only, never past the archive watermark.
//! - Recovery on open: every frame's checksum is verified; a torn tail is truncated and
//!   logged; any other damage is a hard [`RecoveryError`] naming file and offset. The stream
//!   heads come from the heads checkpoint (written on [`EventLog::checkpoint`], on close and
//!   periodically at segment rolls) plus the records after it, so a restart indexes only
//!   what was appended since.
//!
//! It is not: async. It uses std threads and blocking I/O; callers on an async runtime run
//! appends on a blocking thread pool or a dedicated writer.

mod checkpoint;
mod dirlock;
mod frame;
mod replay;
mod segment;
mod snapshot;
mod uncache;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use h3o::CellIndex;
use rustc_hash::FxHashMap;

pub use crate::event::TypePattern;
pub use replay::{Replay, ReplayFilter};
pub use snapshot::Snapshot;

use crate::event::{Event, EventType, Timestamp};
use crate::{Error, Result};
use segment::Segment;

/// A record's global position: 0, 1, 2, ... without gaps, in append order.
pub type Position = u64;

/// When an append counts as acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The frames are written and fsynced before `append` returns: an acknowledged event
    /// survives a crash of the process and of the machine.
    Always,
    /// The frames are written to the operating system before `append` returns (they survive
    /// a crash of the process) and fsynced within this interval (a machine crash loses at
    /// most the last interval).
    Interval(Duration),
    /// Written to the operating system before `append` returns; fsynced only when a segment
    /// is sealed and on close. For tests and load generation.
    Never,
}

impl Durability {
    /// Parses `always`, `never`, `interval` (5 ms) or `interval:<duration>` (`interval:20ms`),
    /// as command-line flags and configuration files write it.
    ///
    /// # Errors
    /// A message naming the accepted forms.
    pub fn parse(text: &str) -> std::result::Result<Durability, String> {
        match text {
            "always" => Ok(Durability::Always),
            "never" => Ok(Durability::Never),
            "interval" => Ok(Durability::Interval(Duration::from_millis(5))),
            other => match other.strip_prefix("interval:").map(crate::duration::parse_duration) {
                Some(Ok(interval)) => Ok(Durability::Interval(interval)),
                _ => Err(format!("unknown durability {other:?}: always, interval, interval:<duration> or never")),
            },
        }
    }
}

impl std::fmt::Display for Durability {
    /// The form [`Durability::parse`] reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Durability::Always => f.write_str("always"),
            Durability::Never => f.write_str("never"),
            Durability::Interval(interval) if *interval == Duration::from_millis(5) => f.write_str("interval"),
            Durability::Interval(interval) => write!(f, "interval:{}", crate::duration::format_duration(*interval)),
        }
    }
}

/// Which segments retention may delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Delete sealed segments whose newest record is older than this.
    pub max_age: Option<Duration>,
    /// Delete the oldest sealed segments while the log is larger than this.
    pub max_bytes: Option<u64>,
    /// Delete only segments below the archive watermark ([`EventLog::set_archived`]).
    pub require_archive: bool,
}

/// How the log is opened.
#[derive(Clone)]
pub struct LogConfig {
    /// What "acknowledged" means.
    pub durability: Durability,
    /// A segment is sealed and a new one started once it reaches this size.
    pub segment_bytes: u64,
    /// Retention, applied by [`EventLog::apply_retention`].
    pub retention: RetentionPolicy,
    /// How often, at most, a segment roll writes the heads checkpoint (in the background), so
    /// that opening the log after a crash indexes only the records since; `None` writes it only
    /// on [`EventLog::checkpoint`] and on close. A roll writes none while one is being written.
    pub checkpoint_every: Option<Duration>,
    /// The time recorded for events that carry none.
    pub clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
}

impl std::fmt::Debug for LogConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogConfig")
            .field("durability", &self.durability)
            .field("segment_bytes", &self.segment_bytes)
            .field("retention", &self.retention)
            .field("checkpoint_every", &self.checkpoint_every)
            .finish_non_exhaustive()
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            durability: Durability::Always,
            segment_bytes: 64 << 20,
            retention: RetentionPolicy::default(),
            checkpoint_every: Some(Duration::from_secs(60)),
            clock: Arc::new(|| {
                let since_epoch =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                Timestamp::from_nanos(i64::try_from(since_epoch.as_nanos()).unwrap_or(i64::MAX))
            }),
        }
    }
}

/// The sequence a stream must be at for an append to go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Whatever it is.
    Any,
    /// Exactly this last sequence (0 = the stream has no record yet).
    Seq(u64),
}

/// One event to append to one stream.
#[derive(Debug, Clone, Copy)]
pub struct Append<'a> {
    /// The stream (asset id, saga id, cell...).
    pub stream: &'a str,
    /// Optimistic-concurrency check, evaluated in batch order.
    pub expected: Expected,
    /// The event.
    pub event: &'a Event,
}

/// Where an appended event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Its global position.
    pub position: Position,
    /// Its sequence in its stream.
    pub seq: u64,
}

/// A record read back from the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Global position.
    pub position: Position,
    /// Sequence within its stream.
    pub seq: u64,
    /// The event's time, or the append time for events without one.
    pub time: Timestamp,
    /// The stream.
    pub stream: String,
    /// The event's type.
    pub ty: EventType,
    /// The event's H3 cell.
    pub cell: Option<CellIndex>,
    /// The event's organization.
    pub organization: Option<String>,
    /// The event, MessagePack-encoded; see [`Record::event`].
    pub bytes: Vec<u8>,
}

impl Record {
    /// Decodes the event.
    ///
    /// # Errors
    /// When the stored bytes are not an event this build can read.
    pub fn event(&self) -> Result<Event> {
        crate::codec::msgpack::decode(&self.bytes)
    }

    fn from_header(header: &frame::Header<'_>) -> Self {
        Record {
            position: header.position,
            seq: header.seq,
            time: header.time,
            stream: header.stream.to_owned(),
            ty: header.kind.map_or_else(|| EventType::new(header.ty), EventType::from),
            cell: header.cell,
            organization: header.organization.map(str::to_owned),
            bytes: header.event.to_vec(),
        }
    }
}

/// A stream's state for rehydration: its latest snapshot and the records after it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamLoad {
    /// The latest usable snapshot.
    pub snapshot: Option<Snapshot>,
    /// Records after the snapshot's sequence (all records when there is none), in order.
    pub records: Vec<Record>,
}

/// What [`EventLog::apply_retention`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Segment files deleted.
    pub deleted_segments: Vec<PathBuf>,
    /// Bytes freed.
    pub freed_bytes: u64,
    /// The first position still in the log.
    pub first_position: Position,
}

/// Damage found while opening a log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// A frame or header is damaged somewhere other than a torn tail.
    #[error("corrupt log: {file}: at byte offset {offset}: {reason}")]
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the damaged frame (or header) in it.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Segment files do not follow each other without gaps.
    #[error("corrupt log: {file}: starts at position {found}, expected {expected} (a segment is missing)")]
    Gap {
        /// The segment after the gap.
        file: PathBuf,
        /// Its base position.
        found: u64,
        /// The position the previous segment ended at.
        expected: u64,
    },
}

pub(crate) fn io_error(context: String, source: std::io::Error) -> Error {
    Error::Io { context, source }
}

/// A stream id as the head table keys it: inline up to 23 bytes (`asset:` and an asset id
/// of up to 17), so looking a stream up compares bytes in the table's own bucket rather than
/// in a separately allocated string (a cache miss per append among 100k streams).
type StreamKey = smol_str::SmolStr;

#[derive(Debug, Clone, Copy)]
struct StreamHead {
    seq: u64,
    /// Position of the stream's newest record, or `frame::NO_PREV` when every record is gone
    /// (retention) and only the sequence is remembered.
    position: u64,
    offset: u32,
}

/// What the segment reader of [`EventLog::open`] hands to the indexing thread, in log order.
enum Scanned {
    /// Verified frames of segment `file` (an index into the list of segments).
    Frames { file: usize, frames: Vec<ScannedRecord> },
    /// Segment `file` read to its end or to its first damaged frame (after its frames).
    Segment { file: usize, segment: Segment, valid_len: u64, damage: Option<segment::Damage> },
    /// Reading stopped here (after everything before it).
    Failed(Error),
}

/// What indexing needs of one verified frame.
struct ScannedRecord {
    stream: StreamKey,
    seq: u64,
    position: u64,
    prev_position: u64,
    offset: u64,
}

/// Frames handed over at a time.
const SCANNED_CHUNK: usize = 8_192;

/// Reads and verifies every segment in order (see [`segment::scan`]), noting each segment's
/// block index, and sends their frames from position `indexed` on (those before it are in the
/// heads checkpoint) and the segments' results to `tx`; a failure is sent last.
fn scan_segments(files: Vec<(u64, PathBuf)>, indexed: u64, tx: &std::sync::mpsc::SyncSender<Scanned>) {
    if let Err(error) = send_segments(files, indexed, tx) {
        let _ = tx.send(Scanned::Failed(error));
    }
}

/// [`scan_segments`] up to its first failure; stops early, with `Ok`, once the receiver is gone
/// (the indexing failed).
fn send_segments(files: Vec<(u64, PathBuf)>, indexed: u64, tx: &std::sync::mpsc::SyncSender<Scanned>) -> Result<()> {
    let mut previous_next = None;
    for (file, (base, path)) in files.into_iter().enumerate() {
        if let Some(expected) = previous_next
            && expected != base
        {
            return Err(RecoveryError::Gap { file: path, found: base, expected }.into());
        }
        let read = File::open(&path).map_err(|e| io_error(format!("opening {}", path.display()), e))?;
        let mut seg =
            Segment { base, next: base, path: path.clone(), file: Arc::new(read), len: 0, blocks: Vec::new() };
        let mut frames = Vec::with_capacity(SCANNED_CHUNK);
        let mut receiver_gone = false;
        let scanned = segment::scan(&path, base, |found| {
            let header = found.header;
            seg.note_frame(header.position, found.offset, header.time.as_nanos());
            if header.position < indexed {
                return Ok(());
            }
            frames.push(ScannedRecord {
                stream: StreamKey::new(header.stream),
                seq: header.seq,
                position: header.position,
                prev_position: header.prev_position,
                offset: found.offset,
            });
            if frames.len() == SCANNED_CHUNK {
                let full = std::mem::replace(&mut frames, Vec::with_capacity(SCANNED_CHUNK));
                if tx.send(Scanned::Frames { file, frames: full }).is_err() {
                    receiver_gone = true;
                    return Err("the log's indexing stopped".into());
                }
            }
            Ok(())
        });
        if receiver_gone || (!frames.is_empty() && tx.send(Scanned::Frames { file, frames }).is_err()) {
            return Ok(());
        }
        let (valid_len, damage) = scanned?;
        previous_next = Some(seg.next);
        if tx.send(Scanned::Segment { file, segment: seg, valid_len, damage }).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

struct State {
    segments: Vec<Segment>,
    /// Write handle of the last segment.
    active: File,
    /// Sync handle of the last segment (shared with group-commit leaders).
    active_sync: Arc<File>,
    next_position: u64,
    streams: FxHashMap<StreamKey, StreamHead>,
    buf: Vec<u8>,
    archived: u64,
    /// When a roll last started writing the heads checkpoint (or the log was opened).
    last_checkpoint: std::time::Instant,
}

/// The heads checkpoint on disk, shared with the thread a roll writes it from.
#[derive(Debug, Default)]
struct CheckpointFile {
    /// The position the checkpoint on disk covers (0: none).
    written: u64,
    /// Retention deleted every record below this: a checkpoint covering less is stale.
    floor: u64,
}

impl CheckpointFile {
    /// Writes `bytes`, the checkpoint covering `covered`, unless the one on disk is as new or
    /// retention made it stale. Every record below `covered` must be synced.
    fn write(&mut self, dir: &Path, covered: u64, bytes: &[u8]) -> Result<()> {
        if covered <= self.written || covered < self.floor {
            return Ok(());
        }
        write_atomic(dir, checkpoint::CHECKPOINT_FILE, bytes)?;
        self.written = covered;
        Ok(())
    }
}

#[derive(Default)]
struct SyncState {
    /// Every position below this is on stable storage.
    synced: u64,
    /// A leader is syncing.
    syncing: bool,
}

struct Inner {
    dir: PathBuf,
    snapshots: Arc<snapshot::SnapshotStore>,
    config: LogConfig,
    state: Mutex<State>,
    sync: Mutex<SyncState>,
    synced_cv: Condvar,
    poisoned: AtomicBool,
    /// How much of the active segment has left the page cache (see [`uncache`]).
    uncached: Mutex<uncache::Uncached>,
    checkpoint: Arc<Mutex<CheckpointFile>>,
    /// The thread writing a roll's checkpoint, if one was started.
    checkpoint_writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The directory's lock, released after everything above is closed (fields drop after
    /// [`Drop for Inner`](Inner::drop), in order).
    _lock: dirlock::DirLock,
}

/// The event log. Cheap to clone (shared); safe to use from many threads.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog").field("dir", &self.inner.dir).field("config", &self.inner.config).finish()
    }
}

const ARCHIVE_FILE: &str = "archive.watermark";
const RETIRED_FILE: &str = "retired.streams";

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // NOTE: a panic while holding a log lock leaves consistent data (state changes are
    // applied after I/O succeeds), so a poisoned mutex is still usable.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl EventLog {
    /// Opens (or creates) the log in `dir`, verifying every frame and truncating a torn tail.
    ///
    /// # Errors
    /// [`Error::Recovery`] for damage other than a torn tail, [`Error::Io`] for I/O failures.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<EventLog> {
        let dir = dir.as_ref().to_owned();
        std::fs::create_dir_all(&dir).map_err(|e| io_error(format!("creating {}", dir.display()), e))?;
        let lock = dirlock::DirLock::acquire(&dir)?;
        let mut streams: FxHashMap<StreamKey, StreamHead> = load_retired(&dir)?;
        let files = segment::list(&dir)?;
        let first_base = files.first().map_or(0, |f| f.0);
        let checkpoint = match checkpoint::read(&dir) {
            checkpoint::Read::Found(found) if found.covered < first_base => {
                tracing::warn!(
                    covered = found.covered,
                    first_position = first_base,
                    "ignoring a stale heads checkpoint (retention deleted records after it): indexing every record"
                );
                None
            }
            checkpoint::Read::Found(found) => Some(found),
            checkpoint::Read::Damaged(reason) => {
                tracing::warn!(%reason, "ignoring a damaged heads checkpoint: indexing every record");
                None
            }
            checkpoint::Read::Missing => None,
        };
        // Every record below it was synced when the checkpoint was written.
        let covered = checkpoint.as_ref().map_or(0, |c| c.covered);
        let n_files = files.len();
        let paths: Vec<PathBuf> = files.iter().map(|(_, path)| path.clone()).collect();
        let mut segments: Vec<Segment> = Vec::with_capacity(n_files);
        // A thread reads and verifies the segments while this one indexes their records: on a
        // log of millions of streams, the stream heads' map (a random access per record) is the
        // larger part of the work, the reading (a sequential pass with a checksum per frame)
        // most of the rest. A third reads the snapshot tables, which needs nothing of the log
        // until their entries are checked against the stream heads, below.
        let snapshots_dir = dir.join("snapshots");
        let tables = std::thread::scope(|scope| -> Result<snapshot::TablesRead> {
            let tables = std::thread::Builder::new()
                .name("log-open-snapshots".into())
                .spawn_scoped(scope, || snapshot::read_tables(&snapshots_dir))
                .map_err(|e| io_error("starting the snapshot tables' reader".into(), e))?;
            let (tx, rx) = std::sync::mpsc::sync_channel::<Scanned>(4);
            std::thread::Builder::new()
                .name("log-open-scan".into())
                .spawn_scoped(scope, move || scan_segments(files, covered, &tx))
                .map_err(|e| io_error("starting the log's segment reader".into(), e))?;
            if let Some(checkpoint) = &checkpoint {
                checkpoint.load_into(&mut streams, first_base);
            }
            for scanned in rx {
                match scanned {
                    Scanned::Frames { file, frames } => {
                        for frame in frames {
                            let head = streams.get_mut(frame.stream.as_str());
                            // A stream's first record after retention deleted its predecessors
                            // points before the first segment: any sequence is then consistent.
                            let predecessor_deleted = head.is_none()
                                && frame.prev_position != frame::NO_PREV
                                && frame.prev_position < first_base;
                            let expected_seq = head.as_ref().map_or(1, |h| h.seq + 1);
                            if frame.seq != expected_seq && !predecessor_deleted {
                                let reason = format!(
                                    "stream {:?} record has sequence {}, expected {expected_seq}",
                                    frame.stream.as_str(),
                                    frame.seq
                                );
                                return Err(corrupt(&paths[file], frame.offset, &reason));
                            }
                            let new =
                                StreamHead { seq: frame.seq, position: frame.position, offset: frame.offset as u32 };
                            match head {
                                Some(existing) => *existing = new,
                                None => {
                                    streams.insert(frame.stream, new);
                                }
                            }
                        }
                    }
                    Scanned::Segment { file, segment: mut seg, valid_len, damage } => {
                        let path = seg.path.clone();
                        let is_tail = file + 1 == n_files;
                        seg.len = valid_len.max(segment::HEADER_LEN);
                        let file_len = std::fs::metadata(&path)
                            .map_err(|e| io_error(format!("reading {}", path.display()), e))?
                            .len();
                        match damage {
                            None if valid_len == file_len => {}
                            Some(damage) if is_tail && !damage.followed_by_valid_frame && seg.next >= covered => {
                                tracing::warn!(
                                    file = %path.display(),
                                    offset = damage.offset,
                                    dropped_bytes = file_len - damage.offset,
                                    reason = %damage.reason,
                                    "truncating torn tail of the event log (an append that was never acknowledged)"
                                );
                                truncate(&path, damage.offset, valid_len == 0, seg.base)?;
                                seg.len = damage.offset.max(segment::HEADER_LEN);
                            }
                            Some(damage) => {
                                let reason = if is_tail && !damage.followed_by_valid_frame {
                                    format!(
                                        "{} at position {}, below position {covered}, which was synced when the \
                                         heads checkpoint was written: not a torn tail (removing {} would \
                                         truncate the log here)",
                                        damage.reason,
                                        seg.next,
                                        checkpoint::CHECKPOINT_FILE
                                    )
                                } else {
                                    damage.reason
                                };
                                return Err(corrupt(&path, damage.offset, &reason));
                            }
                            None => {
                                return Err(RecoveryError::Corrupt {
                                    file: path,
                                    offset: valid_len,
                                    reason: "bytes after the last frame of a sealed segment".into(),
                                }
                                .into());
                            }
                        }
                        segments.push(seg);
                    }
                    Scanned::Failed(error) => return Err(error),
                }
            }
            tables.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })?;
        let next_position = segments.last().map_or(0, |s| s.next);
        if next_position < covered {
            // A torn tail is found in the last segment; damage before `covered` there is a
            // Corrupt error above, so only missing files get here.
            let reason = format!(
                "the log ends at position {next_position}, but every record below {covered} was synced when this \
                 checkpoint was written: synced records are missing"
            );
            return Err(corrupt(&dir.join(checkpoint::CHECKPOINT_FILE), 0, &reason));
        }
        let active = match segments.last() {
            Some(last) => {
                let file = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&last.path)
                    .map_err(|e| io_error(format!("opening {}", last.path.display()), e))?;
                // A killed process leaves written frames in the page cache, unsynced: sync
                // them, so that everything below `next_position` is on disk, as the sync state
                // and a checkpoint written before the next append take for granted. (Sealed
                // segments were synced when they were sealed.)
                file.sync_data().map_err(|e| io_error(format!("syncing {}", last.path.display()), e))?;
                file
            }
            None => {
                let (file, seg) = segment::create(&dir, 0)?;
                segments.push(seg);
                file
            }
        };
        let active_sync =
            Arc::new(active.try_clone().map_err(|e| io_error("cloning the active segment handle".into(), e))?);
        let archived = read_archived(&dir)?;
        // The streams' sequences (sorted, 24 bytes each) are dropped once the store is open.
        let log_seqs = snapshot::LogSeqs::new(streams.iter().map(|(s, h)| (s.as_str(), h.seq)));
        let snapshots = snapshot::SnapshotStore::from_read(&snapshots_dir, tables, log_seqs)?;
        let state = State {
            segments,
            active,
            active_sync,
            next_position,
            streams,
            buf: Vec::with_capacity(1 << 16),
            archived,
            last_checkpoint: std::time::Instant::now(),
        };
        let inner = Arc::new(Inner {
            dir,
            snapshots,
            config,
            state: Mutex::new(state),
            sync: Mutex::new(SyncState { synced: next_position, syncing: false }),
            synced_cv: Condvar::new(),
            poisoned: AtomicBool::new(false),
            uncached: Mutex::default(),
            checkpoint: Arc::new(Mutex::new(CheckpointFile { written: covered, floor: 0 })),
            checkpoint_writer: Mutex::new(None),
            _lock: lock,
        });
        if let Durability::Interval(interval) = inner.config.durability {
            spawn_flusher(Arc::downgrade(&inner), interval);
        }
        Ok(EventLog { inner })
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The durability policy appends wait for.
    pub fn durability(&self) -> Durability {
        self.inner.config.durability
    }

    /// Appends one event to `stream`.
    ///
    /// # Errors
    /// As [`EventLog::append_batch`].
    pub fn append(&self, stream: &str, expected: Expected, event: &Event) -> Result<Appended> {
        let appended = self.append_batch(&[Append { stream, expected, event }])?;
        Ok(appended[0])
    }

    /// Appends a batch atomically with respect to concurrency checks: either every event is
    /// written (in order, at consecutive positions) or none is. Returns once the
    /// [`Durability`] policy holds for the whole batch.
    ///
    /// # Errors
    /// [`Error::WrongExpectedSequence`] (nothing written), [`Error::Poisoned`] after an
    /// earlier I/O failure, [`Error::Io`] when writing or syncing fails (the log is then
    /// poisoned), [`Error::Rejected`] for a stream id or type too long to store.
    pub fn append_batch(&self, batch: &[Append<'_>]) -> Result<Vec<Appended>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let (appended, end) = self.write_batch(batch)?;
        match self.inner.config.durability {
            Durability::Always => self.wait_synced(end)?,
            Durability::Interval(_) | Durability::Never => {}
        }
        Ok(appended)
    }

    fn check_poisoned(&self) -> Result<()> {
        if self.inner.poisoned.load(Ordering::Acquire) { Err(Error::Poisoned) } else { Ok(()) }
    }

    fn poison(&self, error: Error) -> Error {
        self.inner.poisoned.store(true, Ordering::Release);
        tracing::error!(%error, dir = %self.inner.dir.display(), "event log poisoned: refusing further writes");
        error
    }

    /// Writes the batch's frames; returns where they landed and the position after them.
    ///
    /// One pass under the writer lock: each append's expectation is checked against the
    /// stream's head (as updated by earlier appends of the same batch) and its frame encoded
    /// into the batch buffer; only when every check passed is the buffer written.
    fn write_batch(&self, batch: &[Append<'_>]) -> Result<(Vec<Appended>, u64)> {
        for append in batch {
            frame::check_lengths(append.stream, append.event).map_err(Error::Rejected)?;
        }
        let mut guard = lock(&self.inner.state);
        self.check_poisoned()?;
        let state = &mut *guard;

        let active = state.segments.last().expect("an active segment always exists");
        if active.len >= self.inner.config.segment_bytes && state.next_position > active.base {
            self.roll(state).map_err(|e| self.poison(e))?;
        }

        let now = (self.inner.config.clock)();
        let base_offset = state.segments.last().map_or(0, |s| s.len);
        state.buf.clear();
        let mut appended = Vec::with_capacity(batch.len());
        let mut notes = Vec::with_capacity(batch.len());
        // Heads move in place as the frames are encoded (one lookup per append); each stream's
        // head from before the batch is kept, to put back if the batch is not written after all.
        let mut undo: Vec<(&str, Option<StreamHead>)> = Vec::new();
        let written = (|| {
            for (i, append) in batch.iter().enumerate() {
                let head = state.streams.get_mut(append.stream);
                let prev = head.as_deref().copied();
                let current = prev.map_or(0, |h| h.seq);
                if let Expected::Seq(expected) = append.expected
                    && expected != current
                {
                    return Err(Error::WrongExpectedSequence {
                        stream: append.stream.to_owned(),
                        expected,
                        actual: current,
                    });
                }
                let (prev_position, prev_offset) = prev.map_or((frame::NO_PREV, 0), |h| (h.position, h.offset));
                let position = state.next_position + i as u64;
                let seq = current + 1;
                let offset = base_offset + state.buf.len() as u64;
                if offset > u64::from(u32::MAX) {
                    return Err(Error::Rejected(format!(
                        "batch too large: segment would exceed 4 GiB at event {i}; append smaller batches"
                    )));
                }
                let time = append.event.time.unwrap_or(now);
                let record = frame::NewRecord {
                    position,
                    seq,
                    time,
                    prev_position,
                    prev_offset,
                    stream: append.stream,
                    event: append.event,
                };
                frame::write_frame(&mut state.buf, &record);
                let new = StreamHead { seq, position, offset: offset as u32 };
                match head {
                    Some(head) => {
                        if !(state.next_position..position).contains(&head.position) {
                            // The first append to this stream in the batch.
                            undo.push((append.stream, Some(*head)));
                        }
                        *head = new;
                    }
                    None => {
                        undo.push((append.stream, None));
                        state.streams.insert(StreamKey::from(append.stream), new);
                    }
                }
                appended.push(Appended { position, seq });
                notes.push((position, offset, time.as_nanos()));
            }
            state
                .active
                .write_all(&state.buf)
                .map_err(|e| self.poison(io_error("appending to the event log".into(), e)))
        })();
        if let Err(error) = written {
            for (stream, before) in undo.into_iter().rev() {
                match before {
                    Some(head) => {
                        state.streams.insert(StreamKey::from(stream), head);
                    }
                    None => {
                        state.streams.remove(stream);
                    }
                }
            }
            return Err(error);
        }
        let segment = state.segments.last_mut().expect("an active segment always exists");
        for (position, offset, time) in notes {
            segment.note_frame(position, offset, time);
        }
        segment.len += state.buf.len() as u64;
        state.next_position += batch.len() as u64;
        let end = state.next_position;
        if state.buf.capacity() > 8 << 20 {
            state.buf = Vec::with_capacity(1 << 16);
        }
        Ok((appended, end))
    }

    /// Seals the active segment (synced) and starts a new one.
    fn roll(&self, state: &mut State) -> Result<()> {
        state.active.sync_data().map_err(|e| io_error("syncing a sealed segment".into(), e))?;
        uncache::sealed(&state.active);
        {
            let mut sync = lock(&self.inner.sync);
            sync.synced = sync.synced.max(state.next_position);
        }
        if let Some(every) = self.inner.config.checkpoint_every
            && state.last_checkpoint.elapsed() >= every
        {
            self.checkpoint_in_background(state);
        }
        let (file, segment) = segment::create(&self.inner.dir, state.next_position)?;
        state.active_sync = Arc::new(file.try_clone().map_err(|e| io_error("cloning a segment handle".into(), e))?);
        state.active = file;
        state.segments.push(segment);
        Ok(())
    }

    /// Starts writing the heads checkpoint as `state` is now (every record synced) on its own
    /// thread, unless the last one is still being written. The heads are encoded here, under
    /// the writer lock: about 40 bytes per stream.
    fn checkpoint_in_background(&self, state: &mut State) {
        let mut writer = lock(&self.inner.checkpoint_writer);
        if writer.as_ref().is_some_and(|running| !running.is_finished()) {
            return;
        }
        if let Some(done) = writer.take() {
            let _ = done.join();
        }
        state.last_checkpoint = std::time::Instant::now();
        let covered = state.next_position;
        let bytes = checkpoint::encode(covered, &state.streams);
        let (file, dir) = (Arc::clone(&self.inner.checkpoint), self.inner.dir.clone());
        let spawned = std::thread::Builder::new().name("citytwin-log-checkpoint".into()).spawn(move || {
            if let Err(error) = lock(&file).write(&dir, covered, &bytes) {
                tracing::warn!(%error, "writing the heads checkpoint failed: the next open indexes more records");
            }
        });
        match spawned {
            Ok(handle) => *writer = Some(handle),
            Err(error) => tracing::warn!(%error, "could not start the heads checkpoint writer"),
        }
    }

    /// Waits for a checkpoint a roll started writing.
    #[cfg(test)]
    fn wait_for_checkpoint_writer(&self) {
        if let Some(writer) = lock(&self.inner.checkpoint_writer).take() {
            writer.join().expect("the checkpoint writer does not panic");
        }
    }

    /// Writes the heads checkpoint (`heads.checkpoint`), covering every record appended so
    /// far, after syncing them: the next open indexes only records appended after it. Closing
    /// the log does the same, and rolls do it periodically ([`LogConfig::checkpoint_every`]).
    ///
    /// # Errors
    /// [`Error::Poisoned`], or [`Error::Io`] when syncing or writing fails.
    pub fn checkpoint(&self) -> Result<()> {
        self.check_poisoned()?;
        // Not under the writer lock: a roll's checkpoint may be being written meanwhile.
        let written = lock(&self.inner.checkpoint).written;
        let (covered, bytes) = {
            let state = lock(&self.inner.state);
            if state.next_position <= written {
                return Ok(());
            }
            (state.next_position, checkpoint::encode(state.next_position, &state.streams))
        };
        self.wait_synced(covered)?;
        lock(&self.inner.checkpoint).write(&self.inner.dir, covered, &bytes)
    }

    /// Blocks until every position below `end` is synced, syncing as the group-commit leader
    /// when nobody else is: one fsync covers every append written before it started.
    fn wait_synced(&self, end: u64) -> Result<()> {
        let mut sync = lock(&self.inner.sync);
        loop {
            self.check_poisoned()?;
            if sync.synced >= end {
                return Ok(());
            }
            if sync.syncing {
                sync = self.inner.synced_cv.wait(sync).unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            sync.syncing = true;
            drop(sync);
            let result = self.sync_now();
            sync = lock(&self.inner.sync);
            sync.syncing = false;
            if let Ok(target) = result {
                sync.synced = sync.synced.max(target);
            }
            self.inner.synced_cv.notify_all();
            result?;
        }
    }

    /// Syncs the active segment; returns the position everything below which is now durable.
    fn sync_now(&self) -> Result<u64> {
        let (file, target, segment, bytes) = {
            let state = lock(&self.inner.state);
            let active = state.segments.last().expect("an active segment always exists");
            (Arc::clone(&state.active_sync), state.next_position, active.base, active.len)
        };
        match file.sync_data() {
            Ok(()) => {
                lock(&self.inner.uncached).synced(&file, segment, bytes);
                Ok(target)
            }
            Err(e) => Err(self.poison(io_error("syncing the event log".into(), e))),
        }
    }

    /// Syncs everything written so far (whatever the durability policy).
    ///
    /// # Errors
    /// [`Error::Io`] when syncing fails (the log is then poisoned).
    pub fn flush(&self) -> Result<()> {
        let end = lock(&self.inner.state).next_position;
        self.wait_synced(end)
    }

    /// The position the next append will get.
    pub fn next_position(&self) -> Position {
        lock(&self.inner.state).next_position
    }

    /// The first position still in the log (retention deletes from the front).
    pub fn first_position(&self) -> Position {
        lock(&self.inner.state).segments.first().map_or(0, |s| s.base)
    }

    /// The last sequence of `stream` (0 when it has no record).
    pub fn stream_seq(&self, stream: &str) -> u64 {
        lock(&self.inner.state).streams.get(stream).map_or(0, |h| h.seq)
    }

    /// The streams whose id starts with `prefix`, with their last sequence (from the index:
    /// no read).
    pub fn streams_with_prefix(&self, prefix: &str) -> Vec<(String, u64)> {
        let state = lock(&self.inner.state);
        state.streams.iter().filter(|(s, _)| s.starts_with(prefix)).map(|(s, h)| (s.to_string(), h.seq)).collect()
    }

    /// Number of streams the log knows.
    pub fn stream_count(&self) -> usize {
        lock(&self.inner.state).streams.len()
    }

    /// Total bytes of segment files.
    pub fn size_bytes(&self) -> u64 {
        lock(&self.inner.state).segments.iter().map(|s| s.len).sum()
    }

    /// Whether an I/O failure has poisoned the log.
    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.load(Ordering::Acquire)
    }

    /// The records of `stream` with sequence ≥ `from_seq`, in order, read by following the
    /// stream's back-pointers from its head (no scan of other streams' records).
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::Recovery`] when a frame cannot be read or is damaged.
    pub fn read_stream(&self, stream: &str, from_seq: u64) -> Result<Vec<Record>> {
        let (head, segments) = {
            let state = lock(&self.inner.state);
            let Some(&head) = state.streams.get(stream) else {
                return Ok(Vec::new());
            };
            if head.seq < from_seq {
                // Nothing that new (a rehydration whose snapshot is current): no read at all.
                return Ok(Vec::new());
            }
            let segments: Vec<(u64, u64, PathBuf, Arc<File>)> =
                state.segments.iter().map(|s| (s.base, s.next, s.path.clone(), Arc::clone(&s.file))).collect();
            (head, segments)
        };
        let first = segments.first().map_or(0, |s| s.0);
        let mut records = Vec::new();
        let (mut position, mut offset) = (head.position, head.offset);
        let mut buf = vec![0u8; 512];
        while position != frame::NO_PREV && position >= first {
            let index = segments.partition_point(|s| s.1 <= position);
            let Some((_, _, path, file)) = segments.get(index) else {
                break;
            };
            let body = read_frame_at(file, path, u64::from(offset), &mut buf)?;
            let header = frame::parse_body(body).map_err(|reason| corrupt(path, u64::from(offset), reason))?;
            if header.position != position || header.stream != stream {
                return Err(corrupt(path, u64::from(offset), "stream back-pointer leads to another record"));
            }
            if header.seq < from_seq {
                break;
            }
            records.push(Record::from_header(&header));
            position = header.prev_position;
            offset = header.prev_offset;
        }
        records.reverse();
        Ok(records)
    }

    /// The record at `position`, if it is still in the log.
    ///
    /// # Errors
    /// As [`EventLog::read_stream`].
    pub fn read(&self, position: Position) -> Result<Option<Record>> {
        let filter = ReplayFilter { from_position: position, ..ReplayFilter::default() };
        let mut replay = self.replay(filter);
        match replay.next() {
            Some(Ok(record)) if record.position == position => Ok(Some(record)),
            Some(Err(e)) => Err(e),
            _ => Ok(None),
        }
    }

    /// Replays the records that match `filter`, in position order, up to the position that
    /// was next when the replay started.
    pub fn replay(&self, filter: ReplayFilter) -> Replay {
        let (segments, end) = {
            let state = lock(&self.inner.state);
            (state.segments.clone(), state.next_position)
        };
        Replay::new(segments, end, filter)
    }

    /// Saves a snapshot of `stream` that includes every event up to `seq`.
    ///
    /// # Errors
    /// [`Error::Rejected`] when `seq` is beyond the stream's last sequence; [`Error::Io`].
    pub fn save_snapshot(&self, stream: &str, seq: u64, state: &[u8]) -> Result<()> {
        let current = self.stream_seq(stream);
        if seq > current {
            return Err(Error::Rejected(format!(
                "snapshot of {stream:?} at sequence {seq}, but the stream is at {current}"
            )));
        }
        self.inner.snapshots.save(stream, seq, state)
    }

    /// Saves many snapshots at once (one write), each as [`EventLog::save_snapshot`] would.
    ///
    /// # Errors
    /// [`Error::Rejected`] when a sequence is beyond its stream's last one (nothing is
    /// saved then); [`Error::Io`].
    pub fn save_snapshots<'a>(&self, snapshots: &[(&'a str, u64, &'a [u8])]) -> Result<()> {
        {
            let state = lock(&self.inner.state);
            for &(stream, seq, _) in snapshots {
                let current = state.streams.get(stream).map_or(0, |h| h.seq);
                if seq > current {
                    return Err(Error::Rejected(format!(
                        "snapshot of {stream:?} at sequence {seq}, but the stream is at {current}"
                    )));
                }
            }
        }
        self.inner.snapshots.save_many(snapshots.iter().copied())
    }

    /// The latest usable snapshot of `stream` (not ahead of the log), without its tail.
    ///
    /// # Errors
    /// [`Error::Io`] when the snapshot table cannot be read.
    pub fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        let current = self.stream_seq(stream);
        Ok(match self.inner.snapshots.load(stream)? {
            Some(s) if s.seq > current => {
                tracing::warn!(stream, snapshot_seq = s.seq, log_seq = current, "ignoring a snapshot ahead of the log");
                None
            }
            other => other,
        })
    }

    /// The sequence `stream`'s latest snapshot includes, without reading it (`None`: no
    /// snapshot). The snapshot itself may still turn out damaged when read.
    pub fn snapshot_seq(&self, stream: &str) -> Option<u64> {
        self.inner.snapshots.seq_of(stream)
    }

    /// Makes every snapshot saved so far durable (before recording a cursor that relies on
    /// them).
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn sync_snapshots(&self) -> Result<()> {
        self.inner.snapshots.sync()
    }

    /// The position recorded under `name` by [`EventLog::set_snapshot_cursor`] (0 when none,
    /// and when it is beyond the log: a machine crash lost the appends it counted on).
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn snapshot_cursor(&self, name: &str) -> Result<Position> {
        let cursor = self.inner.snapshots.cursor(name)?;
        let next = self.next_position();
        if cursor > next {
            tracing::warn!(name, cursor, next, "ignoring a snapshot cursor beyond the log");
            return Ok(0);
        }
        Ok(cursor)
    }

    /// Records, durably, that the snapshots of some family of streams (the caller's `name`)
    /// include every event of theirs below `position`. Call [`EventLog::sync_snapshots`] first.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn set_snapshot_cursor(&self, name: &str, position: Position) -> Result<()> {
        self.inner.snapshots.set_cursor(name, position)
    }

    /// Streams with a snapshot, and the bytes their snapshots take (live, and in all).
    pub fn snapshot_stats(&self) -> (usize, u64, u64) {
        self.inner.snapshots.stats()
    }

    /// The latest snapshot of `stream` and the records after it: what an actor needs to
    /// rebuild its state. A snapshot ahead of the log (possible after a machine crash lost
    /// unsynced appends under a relaxed durability policy) is ignored and the stream is
    /// rebuilt from its records.
    ///
    /// # Errors
    /// As [`EventLog::read_stream`], and when a snapshot file is damaged.
    pub fn load_stream(&self, stream: &str) -> Result<StreamLoad> {
        let snapshot = self.load_snapshot(stream)?;
        let from_seq = snapshot.as_ref().map_or(1, |s| s.seq + 1);
        let records = self.read_stream(stream, from_seq)?;
        Ok(StreamLoad { snapshot, records })
    }

    /// Records that an archiver has safely stored every record below `position`; retention
    /// with `require_archive` deletes only below it. Persisted (synced) across restarts.
    ///
    /// # Errors
    /// [`Error::Io`] when the watermark cannot be stored.
    pub fn set_archived(&self, position: Position) -> Result<()> {
        let mut state = lock(&self.inner.state);
        let position = position.max(state.archived);
        write_atomic(&self.inner.dir, ARCHIVE_FILE, &position.to_le_bytes())?;
        state.archived = position;
        Ok(())
    }

    /// The archive watermark: every record below it is archived.
    pub fn archived(&self) -> Position {
        lock(&self.inner.state).archived
    }

    /// Deletes whole sealed segments as the retention policy allows (`now` is the time the
    /// age rule measures from). The active segment is never deleted.
    ///
    /// # Errors
    /// [`Error::Io`] when a file cannot be deleted.
    pub fn apply_retention(&self, now: Timestamp) -> Result<RetentionReport> {
        let policy = self.inner.config.retention.clone();
        let mut state = lock(&self.inner.state);
        let mut report = RetentionReport::default();
        let mut total: u64 = state.segments.iter().map(|s| s.len).sum();
        let cutoff = policy.max_age.map(|age| now.saturating_sub(age).as_nanos());
        while state.segments.len() > 1 {
            let oldest = &state.segments[0];
            let archived_ok = !policy.require_archive || oldest.next <= state.archived;
            let too_old = cutoff.is_some_and(|cutoff| oldest.max_time().is_none_or(|t| t < cutoff));
            let too_big = policy.max_bytes.is_some_and(|max| total > max);
            if !(archived_ok && (too_old || too_big)) {
                break;
            }
            let oldest = state.segments.remove(0);
            let first_remaining = state.segments[0].base;
            // Streams whose every record goes keep their sequence in the retired file.
            let retired: Vec<(String, u64)> = state
                .streams
                .iter_mut()
                .filter(|(_, head)| head.position != frame::NO_PREV && head.position < first_remaining)
                .map(|(stream, head)| {
                    head.position = frame::NO_PREV;
                    (stream.to_string(), head.seq)
                })
                .collect();
            if !retired.is_empty() {
                let all_retired: Vec<(&str, u64)> = state
                    .streams
                    .iter()
                    .filter(|(_, head)| head.position == frame::NO_PREV)
                    .map(|(stream, head)| (&**stream, head.seq))
                    .collect();
                write_retired(&self.inner.dir, &all_retired)?;
            }
            std::fs::remove_file(&oldest.path)
                .map_err(|e| io_error(format!("deleting {}", oldest.path.display()), e))?;
            total -= oldest.len;
            report.freed_bytes += oldest.len;
            report.deleted_segments.push(oldest.path);
        }
        report.first_position = state.segments[0].base;
        // Appends go on while a roll's checkpoint that this waits for is being written.
        drop(state);
        if !report.deleted_segments.is_empty() {
            let mut checkpoint = lock(&self.inner.checkpoint);
            checkpoint.floor = checkpoint.floor.max(report.first_position);
            if checkpoint.written < checkpoint.floor {
                // Records after the checkpoint are gone: it no longer says what to index.
                let path = self.inner.dir.join(checkpoint::CHECKPOINT_FILE);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_error(format!("removing {}", path.display()), e)),
                }
                checkpoint.written = 0;
            }
            drop(checkpoint);
            segment::sync_dir(&self.inner.dir)?;
        }
        Ok(report)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A background snapshot compaction must not outlive the log (a reopen would find two
        // stores on one directory).
        self.snapshots.close();
        let writer = self.checkpoint_writer.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(writer) = writer.take() {
            let _ = writer.join();
        }
        if !self.poisoned.load(Ordering::Acquire) {
            let state = self.state.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Err(error) = state.active.sync_data() {
                tracing::error!(%error, "syncing the event log on close failed");
                return;
            }
            // Everything is synced: the next open indexes only what is appended after this.
            let mut checkpoint = lock(&self.checkpoint);
            if state.next_position > checkpoint.written {
                let bytes = checkpoint::encode(state.next_position, &state.streams);
                if let Err(error) = checkpoint.write(&self.dir, state.next_position, &bytes) {
                    tracing::warn!(%error, "writing the heads checkpoint on close failed: the next open indexes every record");
                }
            }
        }
    }
}

/// Syncs the log every `interval` while it lives (the `Interval` durability policy).
fn spawn_flusher(inner: Weak<Inner>, interval: Duration) {
    let spawned = std::thread::Builder::new().name("citytwin-log-flush".into()).spawn(move || {
        loop {
            std::thread::park_timeout(interval);
            let Some(inner) = inner.upgrade() else { return };
            let log = EventLog { inner };
            if log.is_poisoned() {
                return;
            }
            let end = log.next_position();
            if let Err(error) = log.wait_synced(end) {
                tracing::error!(%error, "periodic event log sync failed");
                return;
            }
        }
    });
    if let Err(error) = spawned {
        tracing::error!(%error, "could not start the event log flusher; syncs happen on segment roll and close only");
    }
}

fn corrupt(path: &Path, offset: u64, reason: &str) -> Error {
    RecoveryError::Corrupt { file: path.to_owned(), offset, reason: reason.to_owned() }.into()
}

/// Reads the frame at `offset` (one positional read for frames up to `buf.len()`), verifies
/// its checksum and returns its body.
fn read_frame_at<'a>(file: &File, path: &Path, offset: u64, buf: &'a mut Vec<u8>) -> Result<&'a [u8]> {
    let read = file.read_at(buf, offset).map_err(|e| io_error(format!("reading {}", path.display()), e))?;
    let body_len = if read >= frame::PREFIX_LEN {
        u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize
    } else {
        return Err(corrupt(path, offset, "frame beyond the end of its segment"));
    };
    if body_len > frame::MAX_BODY_LEN {
        return Err(corrupt(path, offset, "length field out of range"));
    }
    let total = frame::PREFIX_LEN + body_len;
    if total > read {
        if buf.len() < total {
            buf.resize(total, 0);
        }
        file.read_exact_at(&mut buf[read..total], offset + read as u64)
            .map_err(|e| io_error(format!("reading {}", path.display()), e))?;
    }
    match frame::probe(&buf[..total]) {
        frame::Probe::Frame(_) => Ok(&buf[frame::PREFIX_LEN..total]),
        frame::Probe::Bad(reason) => Err(corrupt(path, offset, reason)),
        frame::Probe::Incomplete => Err(corrupt(path, offset, "incomplete frame")),
    }
}

/// Truncates a torn tail; rewrites the header when even that was torn.
fn truncate(path: &Path, at: u64, header_torn: bool, base: u64) -> Result<()> {
    let context = || format!("truncating {}", path.display());
    let file = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| io_error(context(), e))?;
    if header_torn && at < segment::HEADER_LEN {
        drop(file);
        std::fs::remove_file(path).map_err(|e| io_error(context(), e))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        segment::create(dir, base)?;
        return Ok(());
    }
    file.set_len(at).map_err(|e| io_error(context(), e))?;
    file.sync_all().map_err(|e| io_error(context(), e))
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let target = dir.join(name);
    let temp = dir.join(format!("{name}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, &target)
    };
    write().map_err(|e| io_error(format!("writing {}", target.display()), e))?;
    segment::sync_dir(dir)
}

fn read_archived(dir: &Path) -> Result<u64> {
    match std::fs::read(dir.join(ARCHIVE_FILE)) {
        Ok(bytes) => bytes
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(|| corrupt(&dir.join(ARCHIVE_FILE), 0, "archive watermark shorter than 8 bytes")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_error(format!("reading {}", dir.join(ARCHIVE_FILE).display()), e)),
    }
}

/// `retired.streams`: for streams whose every record retention deleted, their last
/// sequence, so that sequences never restart. Lines of `<seq> <stream>`.
fn write_retired(dir: &Path, retired: &[(&str, u64)]) -> Result<()> {
    let mut text = String::new();
    for (stream, seq) in retired {
        text.push_str(&format!("{seq} {}\n", stream.escape_default()));
    }
    write_atomic(dir, RETIRED_FILE, text.as_bytes())
}

fn load_retired(dir: &Path) -> Result<FxHashMap<StreamKey, StreamHead>> {
    let path = dir.join(RETIRED_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FxHashMap::default()),
        Err(e) => return Err(io_error(format!("reading {}", path.display()), e)),
    };
    let mut heads = FxHashMap::default();
    for (i, line) in text.lines().enumerate() {
        let parsed = line.split_once(' ').and_then(|(seq, stream)| Some((seq.parse::<u64>().ok()?, unescape(stream)?)));
        let Some((seq, stream)) = parsed else {
            return Err(corrupt(&path, i as u64, "unreadable line"));
        };
        heads.insert(StreamKey::from(stream), StreamHead { seq, position: frame::NO_PREV, offset: 0 });
    }
    Ok(heads)
}

/// Reverses `str::escape_default`.
fn unescape(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            '\\' => out.push('\\'),
            '\'' => out.push('\''),
            '"' => out.push('"'),
            'u' => {
                let rest: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let hex = rest.strip_prefix('{')?;
                out.push(char::from_u32(u32::from_str_radix(hex, 16).ok()?)?);
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests;
