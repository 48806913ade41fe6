//! `LogWriter`: one thread that owns appends to the event log and batches them.
//!
//! Every append goes through it: asset actors, cell actors and the twin's city stream. The
//! writer drains everything queued (up to `max_batch` events) into one `append_batch`, so one
//! `write()` (and under `Durability::Always` one fsync: group commit) covers the events of
//! many actors: batching per mailbox drain. A stream whose expected sequence does not hold
//! fails alone; the rest of the batch is retried without it.
//!
//! Two ways to wait: [`LogWriter::append`] awaits the answer; [`LogWriter::submit`] hands
//! over a callback that the writer thread runs once the events are committed (or refused),
//! so an asset actor goes on with its next message while its events wait for the group
//! commit. Requests are answered in the order they were queued (one queue, one thread):
//! an actor's appends stay in order, and [`LogWriter::flush`] returns once everything
//! queued before it is answered.
//!
//! The queue is bounded: when the writer falls behind, `append` waits (backpressure reaches
//! the producers instead of memory growing).

use std::collections::HashSet;

use citytwin_core::event::Event;
use citytwin_core::log::{Append, Appended, EventLog, Expected};
use tokio::sync::{mpsc, oneshot};

/// Why an append failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WriteError(pub String);

/// What an append gives back: where each event landed, and the events themselves.
pub type Written = (Vec<Appended>, Vec<Event>);

/// What the writer thread runs once a submitted append is committed or refused.
pub type Done = Box<dyn FnOnce(Result<Written, WriteError>) + Send>;

struct Request {
    stream: String,
    expected: Expected,
    events: Vec<Event>,
    reply: Reply,
}

enum Reply {
    Wait(oneshot::Sender<Result<Written, WriteError>>),
    Then(Done),
}

impl Reply {
    fn send(self, result: Result<Written, WriteError>) {
        match self {
            // A caller that stopped waiting is not the writer's concern.
            Reply::Wait(tx) => {
                let _ = tx.send(result);
            }
            Reply::Then(done) => done(result),
        }
    }
}

/// A handle to the writer thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LogWriter {
    tx: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("stream", &self.stream).field("events", &self.events.len()).finish()
    }
}

impl LogWriter {
    /// Starts the writer thread for `log`; it stops when every handle is dropped.
    ///
    /// # Panics
    /// When the operating system cannot start a thread.
    pub fn start(log: EventLog, queue: usize, max_batch: usize) -> LogWriter {
        let (tx, rx) = mpsc::channel(queue.max(1));
        std::thread::Builder::new()
            .name("citytwin-log-writer".into())
            .spawn(move || run(&log, rx, max_batch.max(1)))
            .expect("start the log writer thread");
        LogWriter { tx }
    }

    /// Appends `events` to `stream`, the first with the `expected` sequence check; returns
    /// where they landed and the events, once the log's durability policy holds.
    ///
    /// # Errors
    /// When the sequence check fails (nothing written), the log refuses the batch, or the
    /// writer has stopped.
    ///
    /// # Cancel safety
    /// Dropping the future does not cancel the append: the events may still be written.
    pub async fn append(&self, stream: String, expected: Expected, events: Vec<Event>) -> Result<Written, WriteError> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send(Request { stream, expected, events, reply: Reply::Wait(reply) })
            .await
            .map_err(|_| WriteError("the log writer has stopped".into()))?;
        done.await.map_err(|_| WriteError("the log writer stopped before answering".into()))?
    }

    /// Queues an append and returns without waiting for it (only for room in the queue:
    /// backpressure); `done` runs on the writer thread with the outcome, exactly once (also
    /// when the writer has stopped). Keep `done` short: it delays the next group commit.
    pub async fn submit(&self, stream: String, expected: Expected, events: Vec<Event>, done: Done) {
        let request = Request { stream, expected, events, reply: Reply::Then(done) };
        if let Err(mpsc::error::SendError(request)) = self.tx.send(request).await {
            request.reply.send(Err(WriteError("the log writer has stopped".into())));
        }
    }

    /// Returns once every append queued before it has been answered.
    ///
    /// # Errors
    /// When the writer has stopped.
    pub async fn flush(&self) -> Result<(), WriteError> {
        self.append(String::new(), Expected::Any, Vec::new()).await.map(|_| ())
    }
}

fn run(log: &EventLog, mut rx: mpsc::Receiver<Request>, max_batch: usize) {
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
        write(log, &mut pending);
    }
}

/// Appends every pending request in one batch; a request whose sequence check fails is
/// answered alone and the rest retried.
fn write(log: &EventLog, pending: &mut Vec<Request>) {
    let mut failed: HashSet<String> = HashSet::new();
    loop {
        let batch: Vec<Append<'_>> = pending
            .iter()
            .filter(|r| !failed.contains(&r.stream))
            .flat_map(|r| {
                r.events.iter().enumerate().map(move |(i, event)| Append {
                    stream: &r.stream,
                    expected: if i == 0 { r.expected } else { Expected::Any },
                    event,
                })
            })
            .collect();
        let result = log.append_batch(&batch);
        drop(batch);
        match result {
            Ok(appended) => {
                let mut appended = appended.into_iter();
                for request in pending.drain(..) {
                    if failed.contains(&request.stream) {
                        continue;
                    }
                    let mine: Vec<Appended> = appended.by_ref().take(request.events.len()).collect();
                    request.reply.send(Ok((mine, request.events)));
                }
                return;
            }
            Err(citytwin_core::Error::WrongExpectedSequence { stream, expected, actual }) => {
                let message = format!("stream {stream:?} is at sequence {actual}, expected {expected}");
                let (refused, kept): (Vec<Request>, Vec<Request>) = pending.drain(..).partition(|r| r.stream == stream);
                for request in refused {
                    request.reply.send(Err(WriteError(message.clone())));
                }
                *pending = kept;
                failed.insert(stream);
                if pending.is_empty() {
                    return;
                }
            }
            Err(error) => {
                let message = error.to_string();
                for request in pending.drain(..) {
                    request.reply.send(Err(WriteError(message.clone())));
                }
                return;
            }
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
        let writer = LogWriter::start(log.clone(), 1024, 4096);
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
}
