//! `LogWriter`: one thread that owns appends to the event log, batches them and publishes
//! what was committed.
//!
//! Every append goes through it: asset actors, cell actors and the twin's city stream. The
//! writer drains everything queued (up to `max_batch` events) into one `append_batch`, so one
//! `write()` (and under `Durability::Always` one fsync: group commit) covers the events of
//! many actors: batching per mailbox drain. A stream whose expected sequence does not hold
//! fails alone; the rest of the batch is retried without it.
//!
//! The writer is also the bus's only publisher: after each group commit it publishes the
//! group's events meant for the bus as one batch, in position order, before it answers
//! anyone (an event is on the bus only once it is durable, and a caller that got its answer
//! finds its events published).
//!
//! Three ways to append: [`LogWriter::append`] awaits the answer and gets the events back
//! (nothing published: dead letters); [`LogWriter::append_published`] publishes them and
//! answers with their positions; [`LogWriter::submit`] publishes them and hands over a
//! callback that the writer thread runs once the events are committed (or refused), so an
//! asset actor goes on with its next message while its events wait for the group commit.
//! Requests are answered in the order they were queued (one queue, one thread): an actor's
//! appends stay in order, and [`LogWriter::flush`] returns once everything queued before it
//! is answered.
//!
//! The queue is bounded: when the writer falls behind, `append` waits (backpressure reaches
//! the producers instead of memory growing).

use citytwin_core::event::Event;
use citytwin_core::log::{Append, Appended, EventLog, Expected};
use tokio::sync::{mpsc, oneshot};

use crate::bus::{Bus, Committed};
use crate::snapshots::SnapshotSaver;

/// Asset snapshots waiting to be saved, at most (see [`SnapshotSaver`]).
const SNAPSHOT_QUEUE: usize = 16 * 1024;

/// Why an append failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WriteError(pub String);

/// What an append gives back: where each event landed, and the events themselves.
pub type Written = (Vec<Appended>, Vec<Event>);

/// What the writer thread runs once a submitted append is committed (and published) or
/// refused.
pub type Done = Box<dyn FnOnce(Result<(), WriteError>) + Send>;

struct Request {
    stream: String,
    expected: Expected,
    /// Positions unset until committed; published as this list (see [`LogWriter::submit`]).
    events: Vec<Committed>,
    reply: Reply,
}

/// Events to append, their positions unset until committed.
fn uncommitted(events: Vec<Event>) -> Vec<Committed> {
    events.into_iter().map(|event| Committed { position: 0, event }).collect()
}

enum Reply {
    /// Not published; the events come back.
    Wait(oneshot::Sender<Result<Written, WriteError>>),
    /// Published; the positions come back.
    Published(oneshot::Sender<Result<Vec<Appended>, WriteError>>),
    /// Published; the callback runs.
    Then(Done),
}

impl Reply {
    fn publishes(&self) -> bool {
        !matches!(self, Reply::Wait(_))
    }

    fn fail(self, error: WriteError) {
        // A caller that stopped waiting is not the writer's concern.
        match self {
            Reply::Wait(tx) => {
                let _ = tx.send(Err(error));
            }
            Reply::Published(tx) => {
                let _ = tx.send(Err(error));
            }
            Reply::Then(done) => done(Err(error)),
        }
    }
}

/// A handle to the writer thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LogWriter {
    tx: mpsc::Sender<Request>,
    /// The bus it publishes on (submissions wait for its paced subscribers).
    bus: Option<Bus>,
    /// Saves the snapshots that committed appends make possible.
    snapshots: SnapshotSaver,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("stream", &self.stream).field("events", &self.events.len()).finish()
    }
}

impl LogWriter {
    /// Starts the writer thread for `log`, publishing on `bus` (when given), and its snapshot
    /// thread; they stop when every handle is dropped.
    ///
    /// # Panics
    /// When the operating system cannot start a thread.
    pub fn start(log: EventLog, queue: usize, max_batch: usize, bus: Option<Bus>) -> LogWriter {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let bus_handle = bus.clone();
        let snapshots = SnapshotSaver::start(log.clone(), SNAPSHOT_QUEUE);
        std::thread::Builder::new()
            .name("citytwin-log-writer".into())
            .spawn(move || run(&log, bus.as_ref(), rx, max_batch.max(1)))
            .expect("start the log writer thread");
        LogWriter { tx, bus: bus_handle, snapshots }
    }

    /// The thread that saves snapshots once their events are committed (from a [`Done`]
    /// callback, say).
    pub fn snapshots(&self) -> &SnapshotSaver {
        &self.snapshots
    }

    async fn send(&self, request: Request) {
        if let Err(mpsc::error::SendError(request)) = self.tx.send(request).await {
            request.reply.fail(WriteError("the log writer has stopped".into()));
        }
    }

    /// Appends `events` to `stream`, the first with the `expected` sequence check; returns
    /// where they landed and the events, once the log's durability policy holds. They are
    /// not published.
    ///
    /// # Errors
    /// When the sequence check fails (nothing written), the log refuses the batch, or the
    /// writer has stopped.
    ///
    /// # Cancel safety
    /// Dropping the future does not cancel the append: the events may still be written.
    pub async fn append(&self, stream: String, expected: Expected, events: Vec<Event>) -> Result<Written, WriteError> {
        let (reply, done) = oneshot::channel();
        self.send(Request { stream, expected, events: uncommitted(events), reply: Reply::Wait(reply) }).await;
        done.await.map_err(|_| WriteError("the log writer stopped before answering".into()))?
    }

    /// As [`LogWriter::append`], and publishes the events on the bus once they are durable;
    /// returns where they landed.
    ///
    /// # Errors
    /// As [`LogWriter::append`].
    pub async fn append_published(
        &self,
        stream: String,
        expected: Expected,
        events: Vec<Event>,
    ) -> Result<Vec<Appended>, WriteError> {
        let (reply, done) = oneshot::channel();
        self.send(Request { stream, expected, events: uncommitted(events), reply: Reply::Published(reply) }).await;
        done.await.map_err(|_| WriteError("the log writer stopped before answering".into()))?
    }

    /// Queues an append to be published once committed and returns without waiting for it
    /// (only for room in the queue: backpressure); `done` runs on the writer thread with the
    /// outcome, exactly once (also when the writer has stopped). Keep `done` short: it delays
    /// the next group commit.
    ///
    /// The events come as [`Committed`] with any position: the writer sets each one's and
    /// publishes the list as it is, without moving the events again (an asset actor builds
    /// its list that way from the start: the hot path).
    pub async fn submit(&self, stream: String, expected: Expected, events: Vec<Committed>, done: Done) {
        // Asset actors' appends wait for the twin's own bus consumers (see `crate::bus`).
        if let Some(bus) = &self.bus {
            bus.paced().await;
        }
        self.send(Request { stream, expected, events, reply: Reply::Then(done) }).await;
    }

    /// Returns once every append queued before it has been answered.
    ///
    /// # Errors
    /// When the writer has stopped.
    pub async fn flush(&self) -> Result<(), WriteError> {
        self.append(String::new(), Expected::Any, Vec::new()).await.map(|_| ())
    }
}

fn run(log: &EventLog, bus: Option<&Bus>, mut rx: mpsc::Receiver<Request>, max_batch: usize) {
    let mut pending: Vec<Request> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut n_events = first.events.len();
        pending.push(first);
        while n_events < max_batch {
            match rx.try_recv() {
                Ok(request) => {
                    n_events += request.events.len();
                    pending.push(request);
                }
                Err(_) => break,
            }
        }
        write(log, bus, &mut pending);
    }
}

/// Appends every pending request in one batch, publishes what is for the bus, then answers;
/// a request whose sequence check fails is answered alone and the rest retried.
fn write(log: &EventLog, bus: Option<&Bus>, pending: &mut Vec<Request>) {
    loop {
        let batch: Vec<Append<'_>> = pending
            .iter()
            .flat_map(|r| {
                r.events.iter().enumerate().map(move |(i, committed)| Append {
                    stream: &r.stream,
                    expected: if i == 0 { r.expected } else { Expected::Any },
                    event: &committed.event,
                })
            })
            .collect();
        let result = log.append_batch(&batch);
        drop(batch);
        match result {
            Ok(appended) => {
                answer(bus, std::mem::take(pending), appended);
                return;
            }
            Err(citytwin_core::Error::WrongExpectedSequence { stream, expected, actual }) => {
                let message = format!("stream {stream:?} is at sequence {actual}, expected {expected}");
                let (refused, kept): (Vec<Request>, Vec<Request>) = pending.drain(..).partition(|r| r.stream == stream);
                for request in refused {
                    request.reply.fail(WriteError(message.clone()));
                }
                *pending = kept;
                if pending.is_empty() {
                    return;
                }
            }
            Err(error) => {
                let message = error.to_string();
                for request in pending.drain(..) {
                    request.reply.fail(WriteError(message.clone()));
                }
                return;
            }
        }
    }
}

/// Publishes a committed group (one bus batch) and answers its requests, in queue order.
fn answer(bus: Option<&Bus>, requests: Vec<Request>, appended: Vec<Appended>) {
    let upto = appended.last().map(|a| a.position + 1);
    let mut appended = appended.into_iter();
    // Each request's list is one run of the bus batch, its positions set in place.
    let mut runs: Vec<Vec<Committed>> = Vec::with_capacity(if bus.is_some() { requests.len() } else { 0 });
    let mut replies: Vec<(Reply, Vec<Appended>, Vec<Event>)> = Vec::with_capacity(requests.len());
    for Request { mut events, reply, .. } in requests {
        let count = events.len();
        // A submitted batch's callback needs no positions: none are collected for it.
        let mine: Vec<Appended> = match reply {
            Reply::Then(_) => Vec::new(),
            _ => appended.as_slice().iter().take(count).copied().collect(),
        };
        for (committed, at) in events.iter_mut().zip(appended.by_ref().take(count)) {
            committed.position = at.position;
        }
        if reply.publishes() && bus.is_some() {
            runs.push(events);
            replies.push((reply, mine, Vec::new()));
        } else {
            replies.push((reply, mine, events.into_iter().map(|committed| committed.event).collect()));
        }
    }
    if let (Some(bus), Some(upto)) = (bus, upto) {
        bus.publish_committed(upto, runs);
    }
    for (reply, mine, events) in replies {
        match reply {
            Reply::Wait(tx) => {
                let _ = tx.send(Ok((mine, events)));
            }
            Reply::Published(tx) => {
                let _ = tx.send(Ok(mine));
            }
            Reply::Then(done) => done(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use citytwin_core::event::Timestamp;
    use citytwin_core::log::{Durability, LogConfig};

    use super::*;

    fn event(n: u32) -> Event {
        Event::untyped(format!("e{n}"), "/t", "com.example.t").with_time(Timestamp::from_secs(i64::from(n)))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_batches_and_conflicts_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let log =
            EventLog::open(dir.path(), LogConfig { durability: Durability::Always, ..LogConfig::default() }).unwrap();
        let writer = LogWriter::start(log.clone(), 1024, 4096, None);
        let tasks: Vec<_> = (0..50u32)
            .map(|i| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    writer.append(format!("s{i}"), Expected::Seq(0), vec![event(i), event(i + 1000)]).await
                })
            })
            .collect();
        for task in tasks {
            let (appended, events) = task.await.unwrap().unwrap();
            assert_eq!(appended.iter().map(|a| a.seq).collect::<Vec<_>>(), [1, 2]);
            assert_eq!(events.len(), 2);
        }
        assert_eq!(log.next_position(), 100);
        // A wrong expectation fails that request only.
        let (bad, good) = tokio::join!(
            writer.append("s1".into(), Expected::Seq(0), vec![event(1)]),
            writer.append("s2".into(), Expected::Seq(2), vec![event(2)]),
        );
        assert_eq!(bad.unwrap_err().0, "stream \"s1\" is at sequence 2, expected 0");
        assert_eq!(good.unwrap().0[0].seq, 3);
        assert_eq!(log.next_position(), 101);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_events_are_published_in_position_order_before_their_answer() {
        let dir = tempfile::tempdir().unwrap();
        let log =
            EventLog::open(dir.path(), LogConfig { durability: Durability::Never, ..LogConfig::default() }).unwrap();
        let bus = Bus::new(log.clone(), 1024);
        let mut subscription = bus.subscribe(crate::bus::Filter::default());
        let writer = LogWriter::start(log.clone(), 1024, 4096, Some(bus.clone()));
        let tasks: Vec<_> = (0..30u32)
            .map(|i| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    let stream = format!("asset:s{i}");
                    match i % 3 {
                        // Not for the bus: comes back with its events.
                        0 => writer.append("dead-letters".into(), Expected::Any, vec![event(i)]).await.unwrap().0,
                        1 => writer
                            .append_published(stream, Expected::Any, vec![event(i), event(i + 100)])
                            .await
                            .unwrap(),
                        _ => {
                            let (tx, rx) = oneshot::channel();
                            let done: Done = Box::new(move |result| tx.send(result).unwrap());
                            let events = vec![Committed { position: 0, event: event(i) }];
                            writer.submit(stream, Expected::Seq(0), events, done).await;
                            rx.await.unwrap().unwrap();
                            Vec::new()
                        }
                    }
                })
            })
            .collect();
        let mut answered = Vec::new();
        for task in tasks {
            answered.extend(task.await.unwrap());
        }
        // Everything answered is on the bus already: no waiting here.
        let mut published = Vec::new();
        while let Some(next) = subscription.try_recv() {
            published.push(next.position);
        }
        assert_eq!(published.len(), 10 * 2 + 10, "appends for the bus and submits, not the dead letters");
        assert!(published.windows(2).all(|w| w[0] < w[1]), "position order: {published:?}");
        let dead: Vec<u64> = answered.iter().map(|a| a.position).filter(|p| !published.contains(p)).collect();
        assert_eq!(dead.len(), 10, "the dead letters' positions are not published");
        assert_eq!(bus.published(), 30);
    }
}
