//! Snapshots: the latest saved state of each stream, in one append-only table.
//!
//! Files `snapshots/table-<n>.snap` (`n` grows with each compaction): a header (magic
//! `CTWINSNT`, u32 version), then entries `[u32 length of the rest][u32 CRC32C of the rest]`
//! with the rest `[u64 sequence][u16 stream length][stream id][state bytes]`. Saving appends an
//! entry; an in-memory index (a 128-bit hash of the stream id → where its latest entry lies) is
//! rebuilt by one sequential scan on open, and a load is one positioned read. When dead entries
//! (superseded ones) outweigh the live ones, the live entries are copied into a new table and
//! the old one is deleted.
//!
//! One file instead of one file per stream: a city has millions of streams, and rebuilding a
//! million assets must not cost a million `open` calls, nor a passivation a `create` and a
//! `rename`.
//!
//! A key design decision: snapshots are caches. The log is the truth; a missing or damaged
//! snapshot only means replaying more of the stream. So entries are not fsynced one by one,
//! and an entry that fails its checks (torn by a crash, bad media) is skipped with a warning
//! rather than failing the open. [`SnapshotStore::sync`] makes everything saved so far durable,
//! for callers that record a cursor meaning "the table holds everything below position P"
//! ([`SnapshotStore::set_cursor`]; written after the sync, by rename).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;

use super::{io_error, lock};
use crate::Result;

const MAGIC: &[u8; 8] = b"CTWINSNT";
const VERSION: u32 = 1;
const HEADER_LEN: u64 = 12;
/// Entries: length and CRC, then sequence and stream length.
const ENTRY_PREFIX: usize = 8;
const ENTRY_FIXED: usize = 10;
/// Compact when the table holds this much more than its live entries (and at least this much
/// dead data), so small tables never churn.
const COMPACT_MIN_DEAD: u64 = 64 << 20;
/// A compaction copies live entries in chunks of about this many bytes, taking the lock once
/// per chunk.
const COMPACT_CHUNK: u64 = 1 << 20;

/// A stream's saved state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The stream sequence the state includes (every event up to and including it).
    pub seq: u64,
    /// The state, in whatever encoding its owner chose.
    pub state: Vec<u8>,
}

/// Where a stream's latest entry lies.
#[derive(Debug, Clone, Copy)]
struct Loc {
    table: u32,
    offset: u64,
    len: u32,
    seq: u64,
}

struct Table {
    number: u32,
    path: PathBuf,
    file: Arc<File>,
    len: u64,
}

struct State {
    index: FxHashMap<u128, Loc>,
    /// Tables by number: the active one (last) takes appends; older ones are being compacted
    /// away or hold live entries until the next compaction.
    tables: BTreeMap<u32, Table>,
    live_bytes: u64,
    total_bytes: u64,
    /// Reused entry buffer.
    buf: Vec<u8>,
}

impl State {
    /// Bytes of superseded entries.
    fn dead_bytes(&self) -> u64 {
        self.total_bytes.saturating_sub(self.live_bytes)
    }
}

/// The snapshot table (see the module documentation).
pub(crate) struct SnapshotStore {
    dir: PathBuf,
    state: Mutex<State>,
    /// See [`COMPACT_MIN_DEAD`].
    compact_min_dead: u64,
    /// A compaction is running (one at a time; saves meanwhile do not start another).
    compacting: std::sync::atomic::AtomicBool,
    /// The store is closing: a running compaction stops at its next chunk (both tables stay;
    /// the next open finishes the job).
    closing: std::sync::atomic::AtomicBool,
    /// After a failed compaction, the dead bytes to reach before trying again (no retry on
    /// every save while the disk is full or failing).
    retry_at_dead: AtomicU64,
    /// The thread of the latest background compaction.
    compactor: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A 128-bit hash of a stream id (two FNV-1a passes with different offsets): collisions are
/// out of reach in practice, and the id stored in each entry is checked on load anyway.
fn key(stream: &str) -> u128 {
    let fnv =
        |seed: u64| stream.bytes().fold(seed, |hash, b| (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    (u128::from(fnv(0xcbf2_9ce4_8422_2325)) << 64) | u128::from(fnv(0x6c62_272e_07bb_0142))
}

fn table_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("table-{number:06}.snap"))
}

fn cursor_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("cursor.{name}"))
}

fn encode_entry(buf: &mut Vec<u8>, stream: &str, seq: u64, state: &[u8]) {
    buf.clear();
    let rest_len = ENTRY_FIXED + stream.len() + state.len();
    buf.extend_from_slice(&u32::try_from(rest_len).unwrap_or(u32::MAX).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&(stream.len() as u16).to_le_bytes());
    buf.extend_from_slice(stream.as_bytes());
    buf.extend_from_slice(state);
    let crc = crc32c::crc32c(&buf[ENTRY_PREFIX..]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// A decoded entry: sequence, stream id, state.
fn decode_entry(rest: &[u8]) -> Option<(u64, &str, &[u8])> {
    let seq = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
    let len = usize::from(u16::from_le_bytes(rest.get(8..10)?.try_into().ok()?));
    let stream = std::str::from_utf8(rest.get(10..10 + len)?).ok()?;
    Some((seq, stream, &rest[10 + len..]))
}

/// Every stream's last sequence in the log, for [`SnapshotStore::open`] to check the entries
/// against: sorted by the index's key, so that the entries, sorted the same way, are checked
/// in one merge. A lookup per entry in the log's table of stream heads was a cache miss each:
/// with a million streams, most of the time a restart spent opening the log. (`None`: no
/// entry is ahead, for tests of the store alone.)
pub(crate) struct LogSeqs(Option<Vec<(u128, u64)>>);

impl LogSeqs {
    /// From each stream's id and last sequence.
    pub(crate) fn new<'a>(heads: impl Iterator<Item = (&'a str, u64)>) -> LogSeqs {
        let mut seqs: Vec<(u128, u64)> = heads.map(|(stream, seq)| (key(stream), seq)).collect();
        seqs.sort_unstable();
        LogSeqs(Some(seqs))
    }

    /// No entry is ahead of the log.
    #[cfg(test)]
    pub(crate) fn unlimited() -> LogSeqs {
        LogSeqs(None)
    }

    /// For each of `found`, whether its sequence is ahead of its stream's in the log.
    fn ahead(&self, found: &[Found]) -> Vec<bool> {
        let Some(seqs) = &self.0 else {
            return vec![false; found.len()];
        };
        let mut order: Vec<(u128, usize, u64)> =
            found.iter().enumerate().map(|(i, entry)| (entry.key, i, entry.loc.seq)).collect();
        order.sort_unstable();
        let mut ahead = vec![false; found.len()];
        let mut next = 0;
        for (key, i, seq) in order {
            while seqs.get(next).is_some_and(|&(stream, _)| stream < key) {
                next += 1;
            }
            let log_seq = seqs.get(next).filter(|&&(stream, _)| stream == key).map_or(0, |&(_, seq)| seq);
            ahead[i] = seq > log_seq;
        }
        ahead
    }
}

/// A valid entry found by [`scan`], in table order.
struct Found {
    key: u128,
    loc: Loc,
}

impl SnapshotStore {
    /// Opens the table in `dir` (created when missing), rebuilding the index by one scan;
    /// compacts when dead entries dominate.
    ///
    /// `log_seqs` gives each stream's last sequence in the log: an entry ahead of it (a
    /// machine crash lost appends that a snapshot had seen) is dropped, so it can never be
    /// taken for the state at that sequence once the stream grows back to it.
    #[cfg(test)]
    pub(crate) fn open(dir: &Path, log_seqs: &LogSeqs) -> Result<Arc<SnapshotStore>> {
        Self::open_with(dir, COMPACT_MIN_DEAD, log_seqs)
    }

    #[cfg(test)]
    fn open_with(dir: &Path, compact_min_dead: u64, log_seqs: &LogSeqs) -> Result<Arc<SnapshotStore>> {
        Self::open_read(dir, read_tables(dir)?, log_seqs, compact_min_dead)
    }

    /// [`SnapshotStore::open`] from tables already read by [`read_tables`].
    pub(crate) fn from_read(dir: &Path, read: TablesRead, log_seqs: LogSeqs) -> Result<Arc<SnapshotStore>> {
        Self::open_read(dir, read, &log_seqs, COMPACT_MIN_DEAD)
    }

    fn open_read(
        dir: &Path,
        read: TablesRead,
        log_seqs: &LogSeqs,
        compact_min_dead: u64,
    ) -> Result<Arc<SnapshotStore>> {
        let TablesRead { tables, total_bytes, found, repairs, leftovers } = read;
        for path in leftovers {
            // One file per stream (earlier versions), or a compaction that did not finish.
            let _ = std::fs::remove_file(path);
        }
        for (path, repair) in repairs {
            repair.apply(&path)?;
        }
        let mut state =
            State { index: FxHashMap::default(), tables, live_bytes: 0, total_bytes, buf: Vec::with_capacity(4096) };
        // The entries in table order: a later one replaces an earlier one of its stream, and
        // one ahead of the log takes the stream's snapshot away.
        for (Found { key, loc }, ahead) in found.iter().zip(log_seqs.ahead(&found)) {
            if ahead {
                let table = &state.tables[&loc.table];
                let stream = stream_at(table, loc).unwrap_or_else(|| "?".into());
                tracing::warn!(stream, snapshot_seq = loc.seq, "dropping a snapshot ahead of the log");
                if let Some(old) = state.index.remove(key) {
                    state.live_bytes -= u64::from(old.len);
                }
                continue;
            }
            state.live_bytes += u64::from(loc.len);
            if let Some(old) = state.index.insert(*key, *loc) {
                state.live_bytes -= u64::from(old.len);
            }
        }
        if state.tables.is_empty() {
            let table = create_table(dir, 0)?;
            state.tables.insert(0, table);
        }
        let store = SnapshotStore {
            dir: dir.to_owned(),
            state: Mutex::new(state),
            compact_min_dead,
            compacting: Default::default(),
            closing: Default::default(),
            retry_at_dead: AtomicU64::new(0),
            compactor: Mutex::default(),
        };
        store.compact_if_worth_it()?;
        Ok(Arc::new(store))
    }

    /// Saves `state` as `stream`'s latest snapshot at `seq` (appended; not synced).
    pub(crate) fn save(self: &Arc<Self>, stream: &str, seq: u64, state: &[u8]) -> Result<()> {
        {
            let mut guard = lock(&self.state);
            let st = &mut *guard;
            let mut buf = std::mem::take(&mut st.buf);
            encode_entry(&mut buf, stream, seq, state);
            let result = append(st, &buf, key(stream), seq);
            st.buf = buf;
            result?;
        }
        self.compact_in_background();
        Ok(())
    }

    /// Saves many snapshots with one write (a bulk checkpoint: recovery).
    pub(crate) fn save_many<'a>(
        self: &Arc<Self>,
        entries: impl IntoIterator<Item = (&'a str, u64, &'a [u8])>,
    ) -> Result<()> {
        {
            let mut guard = lock(&self.state);
            let st = &mut *guard;
            let mut all = Vec::new();
            let mut keys = Vec::new();
            let mut one = Vec::new();
            for (stream, seq, state) in entries {
                encode_entry(&mut one, stream, seq, state);
                keys.push((key(stream), seq, all.len() as u64, one.len() as u32));
                all.extend_from_slice(&one);
            }
            let table = st.tables.values_mut().next_back().expect("an active table always exists");
            (&*table.file).write_all(&all).map_err(|e| io_error(format!("writing {}", table.path.display()), e))?;
            let (number, base) = (table.number, table.len);
            table.len += all.len() as u64;
            st.total_bytes += all.len() as u64;
            st.live_bytes += all.len() as u64;
            for (k, seq, at, len) in keys {
                if let Some(old) = st.index.insert(k, Loc { table: number, offset: base + at, len, seq }) {
                    st.live_bytes -= u64::from(old.len);
                }
            }
        }
        self.compact_in_background();
        Ok(())
    }

    /// The sequence of `stream`'s latest snapshot, from the index (no read).
    pub(crate) fn seq_of(&self, stream: &str) -> Option<u64> {
        lock(&self.state).index.get(&key(stream)).map(|loc| loc.seq)
    }

    /// The latest intact snapshot of `stream`.
    pub(crate) fn load(&self, stream: &str) -> Result<Option<Snapshot>> {
        let (loc, file, path) = {
            let state = lock(&self.state);
            let Some(&loc) = state.index.get(&key(stream)) else { return Ok(None) };
            let Some(table) = state.tables.get(&loc.table) else { return Ok(None) };
            (loc, Arc::clone(&table.file), table.path.clone())
        };
        let mut bytes = vec![0; loc.len as usize];
        file.read_exact_at(&mut bytes, loc.offset)
            .map_err(|e| io_error(format!("reading snapshot of {stream:?} in {}", path.display()), e))?;
        let ignore = |reason: &str| {
            tracing::warn!(file = %path.display(), offset = loc.offset, stream, reason, "ignoring a damaged snapshot; the stream is replayed from the log");
            Ok(None)
        };
        let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        if crc32c::crc32c(&bytes[ENTRY_PREFIX..]) != crc {
            return ignore("snapshot checksum mismatch");
        }
        match decode_entry(&bytes[ENTRY_PREFIX..]) {
            Some((seq, stored, state)) if stored == stream => Ok(Some(Snapshot { seq, state: state.to_vec() })),
            Some(_) => ignore("the entry belongs to another stream"),
            None => ignore("malformed entry"),
        }
    }

    /// Makes every snapshot saved so far durable.
    pub(crate) fn sync(&self) -> Result<()> {
        let state = lock(&self.state);
        for table in state.tables.values() {
            table.file.sync_data().map_err(|e| io_error(format!("syncing {}", table.path.display()), e))?;
        }
        sync_dir(&self.dir)
    }

    /// A position recorded under `name` with [`SnapshotStore::set_cursor`] (0 when none).
    pub(crate) fn cursor(&self, name: &str) -> Result<u64> {
        let path = cursor_path(&self.dir, name);
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == 12 => {
                let value = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
                let crc = u32::from_le_bytes(bytes[8..].try_into().expect("4 bytes"));
                if crc32c::crc32c(&bytes[..8]) == crc {
                    Ok(value)
                } else {
                    tracing::warn!(file = %path.display(), "ignoring a damaged snapshot cursor");
                    Ok(0)
                }
            }
            Ok(_) => {
                tracing::warn!(file = %path.display(), "ignoring a malformed snapshot cursor");
                Ok(0)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io_error(format!("reading {}", path.display()), e)),
        }
    }

    /// Records `position` under `name`, durably (written to a temporary file, synced, renamed).
    pub(crate) fn set_cursor(&self, name: &str, position: u64) -> Result<()> {
        let path = cursor_path(&self.dir, name);
        let temp = path.with_extension(format!("{name}.tmp"));
        let mut bytes = position.to_le_bytes().to_vec();
        bytes.extend_from_slice(&crc32c::crc32c(&position.to_le_bytes()).to_le_bytes());
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&temp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&temp, &path)
        };
        write().map_err(|e| io_error(format!("writing {}", path.display()), e))?;
        sync_dir(&self.dir)
    }

    /// Streams with a snapshot, and the bytes of table they take (live) and in all.
    pub(crate) fn stats(&self) -> (usize, u64, u64) {
        let state = lock(&self.state);
        (state.index.len(), state.live_bytes, state.total_bytes)
    }

    /// Starts a compaction on its own thread when one is worth it and none is running: the
    /// saving thread (an asset actor passivating on the runtime, the log writer's helpers)
    /// never copies the table itself. A failed compaction only leaves more to compact.
    fn compact_in_background(self: &Arc<Self>) {
        if !self.worth_compacting() || self.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = Arc::clone(self);
        let spawned = std::thread::Builder::new().name("citytwin-snapshot-compaction".into()).spawn(move || {
            // Clears the flag however the thread ends (a panic included).
            struct Release<'a>(&'a std::sync::atomic::AtomicBool);
            impl Drop for Release<'_> {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::Release);
                }
            }
            loop {
                {
                    let _release = Release(&store.compacting);
                    // Saves go on meanwhile: compact again while that left enough dead entries.
                    loop {
                        match store.compact_incrementally() {
                            Ok(true) => continue,
                            Ok(false) => break,
                            Err(error) => {
                                let dead = lock(&store.state).dead_bytes();
                                store.retry_at_dead.store(dead + store.compact_min_dead, Ordering::Release);
                                tracing::warn!(%error, "compacting the snapshot table failed (it is only a cache; retried once more has been saved)");
                                return;
                            }
                        }
                    }
                }
                // A save between the last check and the flag's release started nothing.
                if !store.worth_compacting() || store.compacting.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        });
        match spawned {
            Ok(handle) => *lock(&self.compactor) = Some(handle),
            Err(error) => {
                self.compacting.store(false, Ordering::Release);
                tracing::warn!(%error, "could not start a snapshot compaction");
            }
        }
    }

    /// Whether a background compaction should start: dead entries dominate (see
    /// [`SnapshotStore::dead_dominate`]), beyond where the last failed one left off, and the
    /// store is not closing.
    fn worth_compacting(&self) -> bool {
        if self.closing.load(Ordering::Acquire) {
            return false;
        }
        let st = lock(&self.state);
        self.dead_dominate(&st) && st.dead_bytes() >= self.retry_at_dead.load(Ordering::Acquire)
    }

    /// Whether dead entries take more room than live ones (and at least
    /// [`COMPACT_MIN_DEAD`]).
    fn dead_dominate(&self, st: &State) -> bool {
        let dead = st.dead_bytes();
        dead >= self.compact_min_dead && dead >= st.live_bytes
    }

    /// Stops a running background compaction at its next chunk and waits for it (the log
    /// is closing).
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::Release);
        let handle = lock(&self.compactor).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    /// Waits for the background compaction started last, if any.
    #[cfg(test)]
    fn wait_for_compaction(&self) {
        let handle = lock(&self.compactor).take();
        if let Some(handle) = handle {
            handle.join().expect("the compaction thread does not panic");
        }
    }

    /// Compacts on this thread when dead entries dominate, unless a compaction is running
    /// (on open, and in tests).
    fn compact_if_worth_it(&self) -> Result<()> {
        if self.compacting.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let result = self.compact_incrementally();
        self.compacting.store(false, Ordering::Release);
        result.map(|_| ())
    }

    /// One compaction, when dead entries dominate; returns whether it ran.
    ///
    /// Incremental: the new table takes every save from the start, and the live entries of
    /// the old ones are copied over in chunks of about [`COMPACT_CHUNK`] bytes, read without
    /// the lock and written under it (an entry saved again meanwhile is not copied). Saves and
    /// loads wait for at most one chunk, not for the whole table (at a million assets a
    /// compaction rewrote 360 MB while every rehydration waited).
    fn compact_incrementally(&self) -> Result<bool> {
        // Start: a new active table; the live entries of the older ones, in file order so
        // the copy reads each sequentially.
        let (next, mut live, files) = {
            let mut guard = lock(&self.state);
            let st = &mut *guard;
            if !self.dead_dominate(st) {
                return Ok(false);
            }
            let next = st.tables.keys().next_back().map_or(0, |n| n + 1);
            let table = create_table(&self.dir, next)?;
            st.total_bytes += table.len;
            st.tables.insert(next, table);
            let live: Vec<(u128, Loc)> =
                st.index.iter().filter(|(_, l)| l.table < next).map(|(k, l)| (*k, *l)).collect();
            let files: BTreeMap<u32, (Arc<File>, PathBuf)> = st
                .tables
                .values()
                .filter(|t| t.number < next)
                .map(|t| (t.number, (Arc::clone(&t.file), t.path.clone())))
                .collect();
            (next, live, files)
        };
        live.sort_unstable_by_key(|(_, l)| (l.table, l.offset));
        let (mut bytes, mut kept) = (Vec::new(), Vec::new());
        let mut rest = live.as_slice();
        while !rest.is_empty() {
            let mut size = 0u64;
            let count = rest
                .iter()
                .take_while(|(_, l)| {
                    size += u64::from(l.len);
                    size <= COMPACT_CHUNK
                })
                .count()
                .max(1);
            let (chunk, after) = rest.split_at(count);
            rest = after;
            if self.closing.load(Ordering::Acquire) {
                // Both tables stay valid: the next open scans them and compacts again.
                return Ok(false);
            }
            bytes.clear();
            // Where each entry's bytes landed (none for an entry whose table is gone).
            let mut ranges = Vec::with_capacity(chunk.len());
            for (_, loc) in chunk {
                let Some((file, path)) = files.get(&loc.table) else {
                    ranges.push(None);
                    continue;
                };
                let at = bytes.len();
                bytes.resize(at + loc.len as usize, 0);
                file.read_exact_at(&mut bytes[at..], loc.offset)
                    .map_err(|e| io_error(format!("compacting {}", path.display()), e))?;
                ranges.push(Some(at..bytes.len()));
            }
            let mut guard = lock(&self.state);
            let st = &mut *guard;
            // Only what is still the latest entry of its stream is copied.
            kept.clear();
            for ((k, loc), range) in chunk.iter().zip(ranges) {
                let Some(range) = range else { continue };
                if st.index.get(k).is_some_and(|now| now.table == loc.table && now.offset == loc.offset) {
                    kept.push((*k, loc.seq, range));
                }
            }
            let table = st.tables.get_mut(&next).expect("the new table is active until the compaction ends");
            let mut out = Vec::with_capacity(kept.iter().map(|(_, _, r)| r.len()).sum());
            let mut locs = Vec::with_capacity(kept.len());
            for (k, seq, range) in &kept {
                locs.push((
                    *k,
                    Loc { table: next, offset: table.len + out.len() as u64, len: range.len() as u32, seq: *seq },
                ));
                out.extend_from_slice(&bytes[range.clone()]);
            }
            (&*table.file).write_all(&out).map_err(|e| io_error(format!("writing {}", table.path.display()), e))?;
            table.len += out.len() as u64;
            // The copies are live and their originals dead: live bytes stay, total grows.
            st.total_bytes += out.len() as u64;
            for (k, loc) in locs {
                st.index.insert(k, loc);
            }
        }
        // The copies must be durable before the originals go (a cursor may count on them).
        let active = lock(&self.state).tables.get(&next).map(|t| (Arc::clone(&t.file), t.path.clone()));
        if let Some((file, path)) = active {
            file.sync_data().map_err(|e| io_error(format!("syncing {}", path.display()), e))?;
        }
        sync_dir(&self.dir)?;
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let old: Vec<u32> = st.tables.keys().copied().filter(|&n| n < next).collect();
        let mut freed = 0;
        for number in old {
            if let Some(table) = st.tables.remove(&number) {
                freed += table.len;
                st.total_bytes -= table.len;
                let _ = std::fs::remove_file(&table.path);
            }
        }
        tracing::info!(live = st.index.len(), bytes = st.total_bytes, freed, "compacted the snapshot table");
        Ok(true)
    }
}

fn create_table(dir: &Path, number: u32) -> Result<Table> {
    let path = table_path(dir, number);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_error(format!("creating {}", path.display()), e))?;
    let mut header = MAGIC.to_vec();
    header.extend_from_slice(&VERSION.to_le_bytes());
    file.write_all(&header).map_err(|e| io_error(format!("writing {}", path.display()), e))?;
    Ok(Table { number, path, file: Arc::new(file), len: HEADER_LEN })
}

/// Appends an entry to the active table and points the index at it.
fn append(state: &mut State, entry: &[u8], k: u128, seq: u64) -> Result<()> {
    let table = state.tables.values_mut().next_back().expect("an active table always exists");
    (&*table.file).write_all(entry).map_err(|e| io_error(format!("writing {}", table.path.display()), e))?;
    let loc = Loc { table: table.number, offset: table.len, len: entry.len() as u32, seq };
    table.len += entry.len() as u64;
    state.total_bytes += entry.len() as u64;
    state.live_bytes += entry.len() as u64;
    if let Some(old) = state.index.insert(k, loc) {
        state.live_bytes -= u64::from(old.len);
    }
    Ok(())
}

/// The tables of a snapshot directory, read and verified: the first half of opening the
/// store, which needs nothing of the log (so the log reads its segments meanwhile). It changes
/// no file: the repairs it found are made once the log has opened.
pub(crate) struct TablesRead {
    tables: BTreeMap<u32, Table>,
    total_bytes: u64,
    found: Vec<Found>,
    repairs: Vec<(PathBuf, Repair)>,
    /// Per-stream files of earlier versions, and tables of a compaction that did not finish.
    leftovers: Vec<PathBuf>,
}

/// Reads every table in `dir` (created when missing), noting torn or damaged ends and the
/// leftovers of earlier versions and of an unfinished compaction.
pub(crate) fn read_tables(dir: &Path) -> Result<TablesRead> {
    std::fs::create_dir_all(dir).map_err(|e| io_error(format!("creating {}", dir.display()), e))?;
    let mut numbers = Vec::new();
    let mut read = TablesRead {
        tables: BTreeMap::new(),
        total_bytes: 0,
        found: Vec::new(),
        repairs: Vec::new(),
        leftovers: Vec::new(),
    };
    let entries = std::fs::read_dir(dir).map_err(|e| io_error(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(number) = name.strip_prefix("table-").and_then(|n| n.strip_suffix(".snap")) {
            if let Ok(number) = number.parse::<u32>() {
                numbers.push(number);
            }
        } else if name.ends_with(".snap") || name.ends_with(".snap.tmp") {
            read.leftovers.push(entry.path());
        }
    }
    numbers.sort_unstable();
    for number in numbers {
        let path = table_path(dir, number);
        let (len, repair) = scan(&path, number, &mut read.found)?;
        if let Some(repair) = repair {
            read.repairs.push((path.clone(), repair));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_error(format!("opening {}", path.display()), e))?;
        read.total_bytes += len;
        read.tables.insert(number, Table { number, path, file: Arc::new(file), len });
    }
    Ok(read)
}

/// The stream of the entry at `loc` (for a warning).
fn stream_at(table: &Table, loc: &Loc) -> Option<String> {
    let mut bytes = vec![0; loc.len as usize];
    table.file.read_exact_at(&mut bytes, loc.offset).ok()?;
    decode_entry(bytes.get(ENTRY_PREFIX..)?).map(|(_, stream, _)| stream.to_owned())
}

/// Reads table `number` at `path` front to back, adding its valid entries to `found` in order.
/// Returns the length of its intact part (later saves append after it) and, for a torn or
/// damaged end or an unknown header, the repair that makes the file match.
fn scan(path: &Path, number: u32, found: &mut Vec<Found>) -> Result<(u64, Option<Repair>)> {
    let file = File::open(path).map_err(|e| io_error(format!("opening {}", path.display()), e))?;
    let file_len = file.metadata().map_err(|e| io_error(format!("reading {}", path.display()), e))?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; HEADER_LEN as usize];
    if reader.read_exact(&mut header).is_err() || &header[..8] != MAGIC || header[8..12] != VERSION.to_le_bytes() {
        return Ok((HEADER_LEN, Some(Repair::Empty)));
    }
    let mut offset = HEADER_LEN;
    let mut prefix = [0u8; ENTRY_PREFIX];
    let mut rest = Vec::new();
    loop {
        if reader.read_exact(&mut prefix).is_err() {
            break;
        }
        let len = u32::from_le_bytes(prefix[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(prefix[4..].try_into().expect("4 bytes"));
        if len < ENTRY_FIXED || offset + (ENTRY_PREFIX + len) as u64 > file_len {
            break;
        }
        rest.resize(len, 0);
        if reader.read_exact(&mut rest).is_err() || crc32c::crc32c(&rest) != crc {
            break;
        }
        let Some((seq, stream, _)) = decode_entry(&rest) else { break };
        let entry_len = (ENTRY_PREFIX + len) as u32;
        offset += u64::from(entry_len);
        let loc = Loc { table: number, offset: offset - u64::from(entry_len), len: entry_len, seq };
        found.push(Found { key: key(stream), loc });
    }
    let repair = (offset < file_len).then_some(Repair::Cut { at: offset, file_len });
    Ok((offset, repair))
}

/// What opening must change in a table that [`scan`] read (only once the log opened).
#[derive(Debug, Clone, Copy)]
enum Repair {
    /// An unknown header: the table is rewritten empty.
    Empty,
    /// A torn or damaged end: cut off at `at`.
    Cut { at: u64, file_len: u64 },
}

impl Repair {
    fn apply(self, path: &Path) -> Result<()> {
        match self {
            Repair::Empty => {
                tracing::warn!(file = %path.display(), "ignoring a snapshot table with an unknown header");
                rewrite_empty(path)
            }
            Repair::Cut { at, file_len } => {
                tracing::warn!(file = %path.display(), offset = at, dropped_bytes = file_len - at, "cutting a torn or damaged end off the snapshot table");
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| io_error(format!("opening {}", path.display()), e))?;
                file.set_len(at).map_err(|e| io_error(format!("truncating {}", path.display()), e))
            }
        }
    }
}

fn rewrite_empty(path: &Path) -> Result<()> {
    let mut header = MAGIC.to_vec();
    header.extend_from_slice(&VERSION.to_le_bytes());
    std::fs::write(path, &header).map_err(|e| io_error(format!("rewriting {}", path.display()), e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(format!("syncing the directory {}", dir.display()), e))
}

#[cfg(test)]
pub(crate) fn table_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("table-")))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_ahead_of_the_log_are_found_by_one_merge_in_any_order() {
        // Streams 0..500 at sequence n in the log, stream 7 not in it at all; entries in a
        // scrambled order, some of a stream twice.
        let streams: Vec<(String, u64)> = (0..500u64).filter(|&n| n != 7).map(|n| (format!("s{n}"), n)).collect();
        let log = LogSeqs::new(streams.iter().map(|(s, n)| (s.as_str(), *n)));
        let mut entries = Vec::new();
        let mut expected = Vec::new();
        for i in 0..1_500u64 {
            let n = i * 7_919 % 500;
            let seq = n + i % 3; // at, one past, two past the log's sequence
            entries.push(Found { key: key(&format!("s{n}")), loc: Loc { table: 1, offset: i, len: 1, seq } });
            expected.push(seq > n || (n == 7 && seq > 0));
        }
        assert_eq!(log.ahead(&entries), expected);
        assert_eq!(LogSeqs::new(std::iter::empty()).ahead(&entries[..2]), [false, true], "sequence 0 is never ahead");
    }

    #[test]
    fn saves_and_loads_go_on_during_a_compaction_and_the_latest_entries_win() {
        // Entries of 4 KB over 600 streams: 2.4 MB live, so a compaction copies several chunks
        // while two threads keep saving and one keeps loading.
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open_with(dir.path(), 1 << 20, &LogSeqs::unlimited()).unwrap();
        let state = |n: u64, round: u64| format!("{n}@{round};").repeat(4096 / 8).into_bytes();
        let saver = |streams: std::ops::Range<u64>| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for round in 0..12u64 {
                    for n in streams.clone() {
                        store.save(&format!("asset:{n}"), round, &state(n, round)).unwrap();
                    }
                }
            })
        };
        let (first, second) = (saver(0..300), saver(300..600));
        let loader = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut seen = vec![0u64; 600];
                let mut loads = 0;
                while loads < 20_000 {
                    let n = (loads * 7919) % 600;
                    if let Some(snapshot) = store.load(&format!("asset:{n}")).unwrap() {
                        assert!(snapshot.seq >= seen[n as usize], "a stream's snapshot never goes back");
                        assert_eq!(snapshot.state, state(n, snapshot.seq));
                        seen[n as usize] = snapshot.seq;
                    }
                    loads += 1;
                }
            })
        };
        first.join().unwrap();
        second.join().unwrap();
        loader.join().unwrap();
        store.wait_for_compaction();
        store.compact_if_worth_it().unwrap();
        let stats = store.stats();
        assert!(stats.2 < 2 * stats.1 + (1 << 20) + 2 * HEADER_LEN, "compacted: {stats:?}");
        drop(store);
        let store = SnapshotStore::open_with(dir.path(), 1 << 20, &LogSeqs::unlimited()).unwrap();
        assert_eq!(store.stats().0, 600);
        assert_eq!(store.stats().1, stats.1, "live bytes as counted while running");
        for n in 0..600 {
            let snapshot = store.load(&format!("asset:{n}")).unwrap().unwrap();
            assert_eq!((snapshot.seq, snapshot.state), (11, state(n, 11)));
        }
    }

    #[test]
    fn the_latest_entry_of_each_stream_wins_across_reopens_and_compactions() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open_with(dir.path(), 4096, &LogSeqs::unlimited()).unwrap();
        for round in 0..20u64 {
            for n in 0..100 {
                store.save(&format!("asset:{n}"), round, format!("{n}@{round}").repeat(4).as_bytes()).unwrap();
            }
        }
        store.wait_for_compaction();
        let (streams, live, total) = store.stats();
        assert_eq!(streams, 100);
        assert!(total < 2 * live + 4096 + HEADER_LEN, "dead entries were compacted away: {live} live of {total}");
        assert!(table_files(dir.path()).len() == 1, "the old tables are gone");
        drop(store);
        let store = SnapshotStore::open_with(dir.path(), 4096, &LogSeqs::unlimited()).unwrap();
        for n in 0..100 {
            let snapshot = store.load(&format!("asset:{n}")).unwrap().unwrap();
            assert_eq!((snapshot.seq, snapshot.state), (19, format!("{n}@19").repeat(4).into_bytes()));
        }
        assert_eq!(store.load("asset:100").unwrap(), None);
    }

    #[test]
    fn a_torn_end_is_cut_off_and_earlier_entries_survive() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), &LogSeqs::unlimited()).unwrap();
        store.save("a", 1, b"first").unwrap();
        store.save("b", 1, b"second").unwrap();
        drop(store);
        let table = &table_files(dir.path())[0];
        let len = std::fs::metadata(table).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(table).unwrap().set_len(len - 3).unwrap();
        let store = SnapshotStore::open(dir.path(), &LogSeqs::unlimited()).unwrap();
        assert_eq!(store.load("a").unwrap().unwrap().state, b"first");
        assert_eq!(store.load("b").unwrap(), None, "the torn entry is gone");
        store.save("b", 2, b"again").unwrap();
        drop(store);
        let store = SnapshotStore::open(dir.path(), &LogSeqs::unlimited()).unwrap();
        assert_eq!(store.load("b").unwrap().unwrap(), Snapshot { seq: 2, state: b"again".to_vec() });
    }

    #[test]
    fn cursors_are_durable_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), &LogSeqs::unlimited()).unwrap();
        assert_eq!(store.cursor("assets").unwrap(), 0);
        store.set_cursor("assets", 1234).unwrap();
        store.set_cursor("cells", 99).unwrap();
        drop(store);
        let store = SnapshotStore::open(dir.path(), &LogSeqs::unlimited()).unwrap();
        assert_eq!((store.cursor("assets").unwrap(), store.cursor("cells").unwrap()), (1234, 99));
        let path = cursor_path(dir.path(), "assets");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(store.cursor("assets").unwrap(), 0, "a damaged cursor means starting from the beginning");
    }
}
