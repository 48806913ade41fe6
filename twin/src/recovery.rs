//! Recovery: brings every asset's snapshot up to date with the log in one sequential pass.
//!
//! Rebuilding assets one by one means one random read per record of each asset's tail
//! (back-pointers): a million assets with tens of events each is tens of millions of reads.
//! Instead, when the twin starts, [`fold_assets`] replays the log once, in position order,
//! from the *fold cursor* (the position below which every asset's snapshot already includes
//! all of its events), folds each record of an asset stream into that asset's state with the
//! same [`apply`] the actors use, saves every state it touched as the asset's snapshot, makes
//! the snapshots durable, then moves the cursor to the end of the log. After that, an asset
//! rehydrates from one snapshot read and an empty tail.
//!
//! When the snapshots already cover nearly everything (assets snapshot when they passivate, so
//! after a clean stop only the live ones' latest events are missing), the indexes of the log
//! and of the snapshot table tell which streams are behind, and only those streams' missing
//! records are read, through their back-pointers, instead of replaying the log.
//!
//! The invariant the cursor stands for: every asset stream with events below the cursor has a
//! snapshot including them all. A pass keeps it: the streams it touched get a snapshot at
//! their latest sequence, the others had one already. Snapshots are caches, so a lost or
//! damaged one is not a correctness problem: the fold (and an actor) fill a stream's gap from
//! its records in the log.

use std::time::{Duration, Instant};

use citytwin_core::event::Event;
use citytwin_core::log::{EventLog, Record, ReplayFilter};

use crate::asset::logic::{AssetState, apply};

/// The name of the assets' fold cursor in the snapshot table.
pub const ASSET_CURSOR: &str = "assets";

/// What a fold did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FoldReport {
    /// The cursor it started from (every asset event below it was already in the snapshots).
    pub from: u64,
    /// The position it folded up to (the end of the log when it started).
    pub to: u64,
    /// Asset events folded.
    pub events: u64,
    /// Assets whose snapshot it brought up to date.
    pub assets: usize,
    /// Whether it replayed the log (else it read only the streams behind their snapshots).
    pub replayed: bool,
    /// How long it took.
    pub elapsed: Duration,
}

/// One asset being folded: its state and the sequence that state includes.
struct Folding {
    state: AssetState,
    seq: u64,
}

/// Records handed to one fold worker at a time.
const CHUNK: usize = 65_536;

/// Folds every asset event from the cursor to the end of the log into the assets' snapshots
/// (see the module documentation). Call it while no asset actor runs (at startup).
///
/// One thread reads the log; workers (one per core) each own a share of the assets (by a
/// hash of the stream) and take the records in chunks, grouped by asset so each state is
/// looked up once per chunk and stays in cache while its records are applied.
///
/// # Errors
/// When the log or the snapshot table cannot be read or written, or holds undecodable
/// records.
pub fn fold_assets(log: &EventLog) -> citytwin_core::Result<FoldReport> {
    let started = Instant::now();
    let from = log.snapshot_cursor(ASSET_CURSOR)?;
    let to = log.next_position();
    let mut report = FoldReport { from, to, ..FoldReport::default() };
    if from >= to {
        return Ok(report);
    }
    // The snapshots may hold (nearly) everything already: assets snapshot when they
    // passivate, so after a clean stop or in a city where most assets are idle only the
    // live ones' latest events are missing. The indexes say which, without reading the log.
    let mut missing = 0;
    let mut behind = log.streams_with_prefix("asset:");
    behind.retain(|(stream, seq)| {
        let snapshot = log.snapshot_seq(stream).unwrap_or(0);
        missing += seq.saturating_sub(snapshot);
        *seq > snapshot
    });
    if missing <= (to - from) / 20 {
        // Few records to add: read them through each stream's back-pointers rather than
        // replaying the whole log.
        let (events, assets) = catch_up(log, &behind)?;
        return finish(log, report, events, assets, 0, started);
    }
    report.replayed = true;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    let (events, assets) = std::thread::scope(|scope| {
        let mut senders = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(u64, Record)>>(2);
            senders.push(tx);
            handles.push(scope.spawn(move || fold_worker(log, &rx)));
        }
        let mut chunks: Vec<Vec<(u64, Record)>> = (0..workers).map(|_| Vec::with_capacity(CHUNK)).collect();
        let mut read = || -> citytwin_core::Result<()> {
            for record in log.replay(ReplayFilter { from_position: from, ..ReplayFilter::default() }) {
                let record = record?;
                if record.position >= to {
                    break;
                }
                if !record.stream.starts_with("asset:") {
                    continue;
                }
                let hash = stream_hash(&record.stream);
                let worker = (hash % workers as u64) as usize;
                chunks[worker].push((hash, record));
                if chunks[worker].len() >= CHUNK {
                    let full = std::mem::replace(&mut chunks[worker], Vec::with_capacity(CHUNK));
                    if senders[worker].send(full).is_err() {
                        // The worker failed; its error is reported below.
                        break;
                    }
                }
            }
            Ok(())
        };
        let read_result = read();
        for (sender, chunk) in senders.into_iter().zip(chunks) {
            let _ = sender.send(chunk);
        }
        let mut totals = (0u64, 0usize);
        let mut failure = read_result.err();
        for handle in handles {
            match handle.join() {
                Ok(Ok((events, assets))) => totals = (totals.0 + events, totals.1 + assets),
                Ok(Err(error)) => failure = failure.or(Some(error)),
                Err(_) => failure = failure.or(Some(citytwin_core::Error::Rejected("a fold worker panicked".into()))),
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(totals),
        }
    })?;
    finish(log, report, events, assets, workers, started)
}

/// Makes the saved snapshots durable, moves the cursor, reports.
fn finish(
    log: &EventLog,
    mut report: FoldReport,
    events: u64,
    assets: usize,
    workers: usize,
    started: Instant,
) -> citytwin_core::Result<FoldReport> {
    log.sync_snapshots()?;
    log.set_snapshot_cursor(ASSET_CURSOR, report.to)?;
    report.events = events;
    report.assets = assets;
    report.elapsed = started.elapsed();
    tracing::info!(
        from = report.from,
        to = report.to,
        events = report.events,
        assets = report.assets,
        replayed = report.replayed,
        workers,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "asset snapshots brought up to date with the log"
    );
    Ok(report)
}

/// Brings the snapshots of the streams `behind` (stream, last sequence) up to date from their
/// own records. Returns the events applied and the assets saved.
fn catch_up(log: &EventLog, behind: &[(String, u64)]) -> citytwin_core::Result<(u64, usize)> {
    let mut events = 0;
    for slice in behind.chunks(SAVE_SLICE) {
        let mut folded = Vec::with_capacity(slice.len());
        for (stream, last) in slice {
            let asset_id = stream.strip_prefix("asset:").unwrap_or(stream);
            let mut folding = start_of(log, stream, asset_id)?;
            let before = folding.seq;
            fill_gap(log, stream, &mut folding, last + 1)?;
            events += folding.seq - before;
            folded.push((stream.as_str(), folding));
        }
        let refs: Vec<(&str, &Folding)> = folded.iter().map(|(stream, folding)| (*stream, folding)).collect();
        save_folded(log, &refs)?;
    }
    Ok((events, behind.len()))
}

/// A hash of a stream id (which worker folds it; groups a chunk's records by stream).
fn stream_hash(stream: &str) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(stream)
}

/// One fold worker: its assets' states, fed chunk by chunk; saves their snapshots at the end.
/// Returns how many events it folded and how many assets it saved.
fn fold_worker(
    log: &EventLog,
    chunks: &std::sync::mpsc::Receiver<Vec<(u64, Record)>>,
) -> citytwin_core::Result<(u64, usize)> {
    let mut assets: rustc_hash::FxHashMap<String, Folding> = rustc_hash::FxHashMap::default();
    let mut events = 0u64;
    while let Ok(mut chunk) = chunks.recv() {
        // Stable: an asset's records keep their log order.
        chunk.sort_by_key(|(hash, _)| *hash);
        let mut at = 0;
        while at < chunk.len() {
            let stream = chunk[at].1.stream.as_str();
            let mut end = at + 1;
            while end < chunk.len() && chunk[end].0 == chunk[at].0 && chunk[end].1.stream == stream {
                end += 1;
            }
            let folding = match assets.get_mut(stream) {
                Some(folding) => folding,
                None => {
                    // A snapshot taken after the cursor (every N events, at passivation) may
                    // hold all of this already: then there is nothing to read or save.
                    let last = chunk[end - 1].1.seq;
                    if log.snapshot_seq(stream).is_some_and(|seq| seq >= last) {
                        at = end;
                        continue;
                    }
                    let asset_id = stream.strip_prefix("asset:").unwrap_or(stream);
                    let start = start_of(log, stream, asset_id)?;
                    assets.entry(stream.to_owned()).or_insert(start)
                }
            };
            for (_, record) in &chunk[at..end] {
                if record.seq <= folding.seq {
                    // Already in a snapshot taken after the cursor (every N events, at passivation).
                    continue;
                }
                if record.seq > folding.seq + 1 {
                    // A snapshot is missing (a cache that was lost): the stream's own records
                    // fill the gap.
                    fill_gap(log, stream, folding, record.seq)?;
                }
                apply(&mut folding.state, &record.event()?);
                folding.seq = record.seq;
                events += 1;
            }
            at = end;
        }
    }
    let all: Vec<(&str, &Folding)> = assets.iter().map(|(stream, folding)| (stream.as_str(), folding)).collect();
    save_folded(log, &all)?;
    Ok((events, assets.len()))
}

/// Saves folded states as the streams' snapshots, in slices of [`SAVE_SLICE`], each with one
/// write.
fn save_folded(log: &EventLog, folded: &[(&str, &Folding)]) -> citytwin_core::Result<()> {
    for slice in folded.chunks(SAVE_SLICE) {
        let encoded: Vec<Vec<u8>> = slice
            .iter()
            .map(|(_, folding)| rmp_serde::to_vec(&folding.state))
            .collect::<Result<_, _>>()
            .map_err(|e| citytwin_core::Error::Rejected(e.to_string()))?;
        let entries: Vec<(&str, u64, &[u8])> =
            slice.iter().zip(&encoded).map(|((stream, folding), bytes)| (*stream, folding.seq, &bytes[..])).collect();
        log.save_snapshots(&entries)?;
    }
    Ok(())
}

/// How many snapshots one write saves.
const SAVE_SLICE: usize = 4096;

/// Where folding `stream` starts: its snapshot, or nothing.
fn start_of(log: &EventLog, stream: &str, asset_id: &str) -> citytwin_core::Result<Folding> {
    let snapshot = log.load_snapshot(stream)?;
    let decoded = snapshot.and_then(|s| match rmp_serde::from_slice::<AssetState>(&s.state) {
        Ok(state) => Some(Folding { state, seq: s.seq }),
        Err(error) => {
            tracing::warn!(stream, %error, "ignoring an undecodable asset snapshot");
            None
        }
    });
    Ok(decoded.unwrap_or_else(|| Folding {
        state: AssetState { asset_id: asset_id.to_owned(), ..AssetState::default() },
        seq: 0,
    }))
}

/// Applies `stream`'s records after `folding.seq` and before `before` (read through the
/// stream's back-pointers).
fn fill_gap(log: &EventLog, stream: &str, folding: &mut Folding, before: u64) -> citytwin_core::Result<()> {
    let missing: Vec<Record> =
        log.read_stream(stream, folding.seq + 1)?.into_iter().filter(|r| r.seq < before).collect();
    for record in missing {
        let event: Event = record.event()?;
        apply(&mut folding.state, &event);
        folding.seq = record.seq;
    }
    Ok(())
}
