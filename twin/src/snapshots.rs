//! `SnapshotSaver`: one thread that saves asset snapshots after their events are committed,
//! many per write.
//!
//! An asset actor takes a snapshot of its state every `snapshot_every` events; it may only be
//! saved once those events are in the log (a snapshot is never ahead of the log), so the log
//! writer's thread hands it over after the group commit. Saving it there would delay the next
//! group commit, and a blocking-pool task per snapshot made tokio start a thread for each one
//! that queued behind the snapshot table's lock: hundreds of threads under load, each costing
//! a fresh 2 MiB of allocator metadata. This thread instead takes whatever is queued and saves
//! it with one `write()` ([`EventLog::save_snapshots`]).
//!
//! Snapshots are a cache: when the queue is full a snapshot is skipped and counted (the asset
//! then rehydrates from an older snapshot and a longer tail), and one older than the
//! stream's saved snapshot is dropped, so a late save never replaces a newer one (an actor
//! that passivates writes its own).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use citytwin_core::log::EventLog;
use tokio::sync::oneshot;

/// Snapshots saved in one write, at most.
const MAX_GROUP: usize = 4096;

enum Job {
    Save {
        stream: String,
        seq: u64,
        state: Vec<u8>,
    },
    /// Answered once everything queued before it is saved.
    Flush(oneshot::Sender<()>),
}

/// A handle to the snapshot thread. Cheap to clone; the thread stops when every handle is
/// dropped.
#[derive(Debug, Clone)]
pub struct SnapshotSaver {
    tx: SyncSender<Job>,
    skipped: Arc<AtomicU64>,
}

impl SnapshotSaver {
    /// Starts the thread for `log`, with room for `queue` snapshots.
    ///
    /// # Panics
    /// When the operating system cannot start a thread.
    pub fn start(log: EventLog, queue: usize) -> SnapshotSaver {
        let (tx, rx) = std::sync::mpsc::sync_channel(queue.max(1));
        std::thread::Builder::new()
            .name("citytwin-snapshots".into())
            .spawn(move || run(&log, &rx))
            .expect("start the snapshot thread");
        SnapshotSaver { tx, skipped: Arc::default() }
    }

    /// Queues `state` as `stream`'s snapshot at `seq` (whose events must be committed) and
    /// returns at once; `false` when it was skipped (queue full, or the thread gone).
    pub fn offer(&self, stream: String, seq: u64, state: Vec<u8>) -> bool {
        match self.tx.try_send(Job::Save { stream, seq, state }) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                let skipped = self.skipped.fetch_add(1, Ordering::Relaxed) + 1;
                if skipped.is_power_of_two() {
                    tracing::warn!(
                        skipped,
                        "the snapshot queue is full: skipping snapshots (assets rehydrate from longer tails)"
                    );
                }
                false
            }
        }
    }

    /// Snapshots skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Returns once every snapshot queued before it has been saved (or failed to be).
    pub async fn flush(&self) {
        let (reply, done) = oneshot::channel();
        // Blocks at most while the queue is full: the thread is emptying it.
        let tx = self.tx.clone();
        let sent = tokio::task::spawn_blocking(move || tx.send(Job::Flush(reply)).is_ok()).await;
        if matches!(sent, Ok(true)) {
            let _ = done.await;
        }
    }
}

fn run(log: &EventLog, rx: &Receiver<Job>) {
    let mut group: Vec<(String, u64, Vec<u8>)> = Vec::new();
    let mut flushes = Vec::new();
    while let Ok(first) = rx.recv() {
        for job in std::iter::once(first).chain(rx.try_iter()) {
            match job {
                Job::Save { stream, seq, state } => group.push((stream, seq, state)),
                Job::Flush(reply) => flushes.push(reply),
            }
            if group.len() >= MAX_GROUP {
                break;
            }
        }
        save(log, &mut group);
        for reply in flushes.drain(..) {
            let _ = reply.send(());
        }
    }
}

/// Saves the group's newest snapshot of each stream, unless the stream already has one as
/// new; empties the group.
fn save(log: &EventLog, group: &mut Vec<(String, u64, Vec<u8>)>) {
    // Stable: a stream's snapshots stay in queue order (ascending), and the last one is kept.
    group.sort_by(|a, b| a.0.cmp(&b.0));
    let mut keep: Vec<(&str, u64, &[u8])> = Vec::with_capacity(group.len());
    for (i, (stream, seq, state)) in group.iter().enumerate() {
        let newest_queued = group.get(i + 1).is_none_or(|next| next.0 != *stream);
        if newest_queued && log.snapshot_seq(stream).is_none_or(|saved| saved < *seq) {
            keep.push((stream, *seq, state));
        }
    }
    if let Err(error) = log.save_snapshots(&keep) {
        // One refusal fails the whole write: save the rest one by one.
        tracing::warn!(%error, "saving a group of snapshots failed; saving them one by one");
        for (stream, seq, state) in keep {
            if let Err(error) = log.save_snapshot(stream, seq, state) {
                tracing::warn!(stream, %error, "saving a snapshot failed (it is only a cache)");
            }
        }
    }
    group.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use citytwin_core::event::Event;
    use citytwin_core::event::Timestamp;
    use citytwin_core::log::{Expected, LogConfig};

    fn log_with(dir: &std::path::Path, streams: &[(&str, u32)]) -> EventLog {
        let log = EventLog::open(dir.join("log"), LogConfig::default()).unwrap();
        for &(stream, n) in streams {
            for i in 0..n {
                let event = Event::untyped(format!("{stream}-{i}"), "/t", "com.example.t")
                    .with_time(Timestamp::from_secs(i64::from(i)));
                log.append(stream, Expected::Any, &event).unwrap();
            }
        }
        log
    }

    #[tokio::test]
    async fn the_newest_snapshot_of_each_stream_is_saved_and_a_late_older_one_does_not_replace_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_with(dir.path(), &[("a", 5), ("b", 3)]);
        let saver = SnapshotSaver::start(log.clone(), 64);
        assert!(saver.offer("a".into(), 2, b"a2".to_vec()));
        assert!(saver.offer("b".into(), 3, b"b3".to_vec()));
        assert!(saver.offer("a".into(), 4, b"a4".to_vec()));
        saver.flush().await;
        assert_eq!(log.load_snapshot("a").unwrap().map(|s| (s.seq, s.state)), Some((4, b"a4".to_vec())));
        assert_eq!(log.load_snapshot("b").unwrap().map(|s| (s.seq, s.state)), Some((3, b"b3".to_vec())));

        // A passivating actor wrote a newer one itself; the queued older one must not win.
        log.save_snapshot("a", 5, b"a5").unwrap();
        assert!(saver.offer("a".into(), 4, b"a4 again".to_vec()));
        saver.flush().await;
        assert_eq!(log.load_snapshot("a").unwrap().map(|s| s.seq), Some(5));
        assert_eq!(saver.skipped(), 0);
    }

    #[test]
    fn a_refused_snapshot_does_not_lose_the_others_of_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_with(dir.path(), &[("a", 2), ("b", 2)]);
        // "b" at 9 is ahead of its stream (2): the log refuses it, and only it.
        let mut group = vec![("b".to_owned(), 9, b"b9".to_vec()), ("a".to_owned(), 2, b"a2".to_vec())];
        save(&log, &mut group);
        assert!(group.is_empty());
        assert_eq!(log.load_snapshot("a").unwrap().map(|s| (s.seq, s.state)), Some((2, b"a2".to_vec())));
        assert_eq!(log.snapshot_seq("b"), None);
    }
}
