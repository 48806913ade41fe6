//! The transactional outbox: exactly-once external effects.
//!
//! An event that must leave the twin (an alert with a `notify:` action, say) is committed to
//! the log together with the state change that caused it — it *is* that state change, one
//! append — so there is never a state change without its message or a message without its
//! state change. An [`OutboxRelay`] then reads such events from the log after its cursor,
//! publishes each to its [`Sink`] with the event id as the message id, and records the new
//! cursor in the log (`outbox:<sink>` stream). A crash between publishing and recording
//! publishes the message once more after the restart, with the same id: sinks deduplicate by
//! message id (as NATS JetStream does with `Nats-Msg-Id`), which makes the effect
//! exactly-once.
//!
//! Every sink call goes through a circuit breaker (the `failsafe` crate): after consecutive
//! failures the relay stops calling the sink for a backoff period (open), then lets one call
//! through (half-open) and closes again when it succeeds.

use std::future::Future;
use std::time::Duration;

use citytwin_core::codec::json;
use citytwin_core::event::{Data, Event, TypePattern};
use citytwin_core::log::{EventLog, Expected, ReplayFilter};
use failsafe::futures::CircuitBreaker as _;
use failsafe::{Config, StateMachine, backoff, failure_policy};
use serde_json::json;

/// An external destination (webhook, message broker...).
pub trait Sink: Send + Sync {
    /// A stable name (the relay's cursor is kept per sink).
    fn name(&self) -> &str;
    /// Publishes one message. `message_id` is the same on every retry of the same event: the
    /// sink must deduplicate by it.
    fn publish(&self, message_id: &str, payload: Vec<u8>) -> impl Future<Output = Result<(), String>> + Send;
}

/// The type of a relay-cursor record.
pub const RELAYED_TYPE: &str = "com.smartcities.twin.outbox_relayed";

/// What a relay pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayReport {
    /// Messages published.
    pub published: usize,
    /// Whether the pass stopped on a failure or an open circuit (the rest waits for the next pass).
    pub stopped: Option<String>,
}

type Breaker = StateMachine<failure_policy::ConsecutiveFailures<backoff::Constant>, ()>;

/// Relays outbox events from the log to a sink. See the module documentation.
pub struct OutboxRelay<S: Sink> {
    log: EventLog,
    sink: S,
    select: Vec<TypePattern>,
    breaker: Breaker,
    cursor: u64,
}

impl<S: Sink> std::fmt::Debug for OutboxRelay<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay")
            .field("sink", &self.sink.name())
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

fn stream(sink: &str) -> String {
    format!("outbox:{sink}")
}

impl<S: Sink> OutboxRelay<S> {
    /// A relay of events of the `select` types to `sink`, resuming at its recorded cursor; the
    /// circuit opens after `failures` consecutive failures, for `open_for` each time.
    ///
    /// # Errors
    /// When the log cannot be read.
    pub fn open(
        log: EventLog,
        sink: S,
        select: Vec<TypePattern>,
        failures: u32,
        open_for: Duration,
    ) -> citytwin_core::Result<Self> {
        let name = stream(sink.name());
        let records = log.read_stream(&name, log.stream_seq(&name).max(1))?;
        let cursor = match records.last().map(|r| r.event()).transpose()?.and_then(|e| e.data) {
            Some(Data::Json(value)) => value["cursor"].as_u64().unwrap_or(0),
            _ => 0,
        };
        let policy = failure_policy::consecutive_failures(failures.max(1), backoff::constant(open_for));
        let breaker = Config::new().failure_policy(policy).build();
        Ok(OutboxRelay { log, sink, select, breaker, cursor })
    }

    /// The position below which everything was relayed.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Publishes every selected event after the cursor, in order, recording progress after
    /// each; stops at the first failure or while the circuit is open.
    ///
    /// # Errors
    /// When the log cannot be read or written.
    pub async fn run_once(&mut self) -> citytwin_core::Result<RelayReport> {
        let mut report = RelayReport::default();
        let filter = ReplayFilter { from_position: self.cursor, types: self.select.clone(), ..ReplayFilter::default() };
        let end = self.log.next_position();
        let mut pending: Vec<(u64, Event)> = Vec::new();
        for record in self.log.replay(filter) {
            // A damaged record is an error, never skipped silently.
            let record = record?;
            if record.position < end {
                pending.push((record.position, record.event()?));
            }
        }
        for (position, event) in pending {
            let payload = json::encode(&event);
            match self.breaker.call(self.sink.publish(&event.id, payload)).await {
                Ok(()) => {
                    self.record(position + 1)?;
                    report.published += 1;
                }
                Err(failsafe::Error::Rejected) => {
                    report.stopped = Some("circuit open".into());
                    return Ok(report);
                }
                Err(failsafe::Error::Inner(error)) => {
                    report.stopped = Some(error);
                    return Ok(report);
                }
            }
        }
        if self.cursor < end {
            // Nothing selected up to `end`: move past it.
            self.record(end)?;
        }
        Ok(report)
    }

    fn record(&mut self, cursor: u64) -> citytwin_core::Result<()> {
        let name = stream(self.sink.name());
        let mut record = Event::untyped(format!("{name}:{cursor}"), "/twin/outbox", RELAYED_TYPE);
        record.data = Some(Data::Json(json!({ "sink": self.sink.name(), "cursor": cursor })));
        self.log.append(&name, Expected::Any, &record)?;
        self.cursor = cursor;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use citytwin_core::event::Timestamp;
    use citytwin_core::log::{Durability, LogConfig};

    use super::*;

    /// Deduplicates by message id, like a broker with idempotent publishing; fails the first
    /// `fail_first` calls.
    #[derive(Default)]
    struct Broker {
        fail_first: u32,
        calls: AtomicU32,
        delivered: Mutex<Vec<String>>,
        seen: Mutex<BTreeSet<String>>,
    }

    impl Sink for &Broker {
        fn name(&self) -> &str {
            "broker"
        }

        async fn publish(&self, message_id: &str, _payload: Vec<u8>) -> Result<(), String> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            if call < self.fail_first {
                return Err(format!("broker unavailable (call {call})"));
            }
            if self.seen.lock().unwrap().insert(message_id.to_owned()) {
                self.delivered.lock().unwrap().push(message_id.to_owned());
            }
            Ok(())
        }
    }

    fn log(dir: &std::path::Path) -> EventLog {
        EventLog::open(dir, LogConfig { durability: Durability::Never, ..LogConfig::default() }).unwrap()
    }

    fn alerts(log: &EventLog, range: std::ops::Range<u32>) {
        for n in range {
            let event = Event::untyped(format!("alert-{n}"), "/cep", "com.smartcities.alert.triggered")
                .with_time(Timestamp::from_secs(i64::from(n)));
            log.append("cell:x", Expected::Any, &event).unwrap();
            let noise = Event::untyped(format!("noise-{n}"), "/x", "com.example.noise")
                .with_time(Timestamp::from_secs(i64::from(n)));
            log.append("x", Expected::Any, &noise).unwrap();
        }
    }

    fn select() -> Vec<TypePattern> {
        vec![TypePattern::new("com.smartcities.alert.*")]
    }

    #[tokio::test]
    async fn relays_in_order_and_a_crash_before_recording_publishes_once_more_with_the_same_id() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        alerts(&log, 0..3);
        let broker = Broker::default();
        let mut relay = OutboxRelay::open(log.clone(), &broker, select(), 3, Duration::from_secs(3600)).unwrap();
        assert_eq!(relay.run_once().await.unwrap(), RelayReport { published: 3, stopped: None });
        let cursor = relay.cursor();

        // A crash after publishing alert-3 but before recording it: simulate by publishing
        // it directly, then rolling the relay back to the recorded cursor (a fresh open).
        alerts(&log, 3..4);
        (&broker).publish("alert-3", Vec::new()).await.unwrap();
        let mut restarted = OutboxRelay::open(log.clone(), &broker, select(), 3, Duration::from_secs(3600)).unwrap();
        assert_eq!(restarted.cursor(), cursor);
        assert_eq!(restarted.run_once().await.unwrap().published, 1, "republished after the restart");
        assert_eq!(
            *broker.delivered.lock().unwrap(),
            ["alert-0", "alert-1", "alert-2", "alert-3"],
            "the effect happened once each"
        );
        assert_eq!(broker.calls.load(Ordering::SeqCst), 5, "alert-3 reached the broker twice, deduplicated by id");
    }

    #[tokio::test]
    async fn the_circuit_opens_after_consecutive_failures_and_stops_calling_the_sink() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        alerts(&log, 0..2);
        let broker = Broker { fail_first: 100, ..Broker::default() };
        let mut relay = OutboxRelay::open(log.clone(), &broker, select(), 3, Duration::from_secs(3600)).unwrap();
        for _ in 0..3 {
            let report = relay.run_once().await.unwrap();
            assert!(report.stopped.unwrap().starts_with("broker unavailable"));
        }
        let calls = broker.calls.load(Ordering::SeqCst);
        assert_eq!(calls, 3);
        assert_eq!(relay.run_once().await.unwrap().stopped.as_deref(), Some("circuit open"));
        assert_eq!(broker.calls.load(Ordering::SeqCst), calls, "an open circuit does not call the sink");
        assert_eq!(relay.cursor(), 0, "nothing was skipped");
    }

    #[tokio::test]
    async fn a_half_open_trial_closes_the_circuit_again() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        alerts(&log, 0..2);
        // The sink recovers after two failures; the circuit opens after two, for no time at
        // all, so the next pass is the half-open trial.
        let broker = Broker { fail_first: 2, ..Broker::default() };
        let mut relay = OutboxRelay::open(log.clone(), &broker, select(), 2, Duration::ZERO).unwrap();
        assert!(relay.run_once().await.unwrap().stopped.is_some());
        assert!(relay.run_once().await.unwrap().stopped.is_some());
        assert_eq!(relay.run_once().await.unwrap(), RelayReport { published: 2, stopped: None });
        assert_eq!(*broker.delivered.lock().unwrap(), ["alert-0", "alert-1"]);
    }
}
