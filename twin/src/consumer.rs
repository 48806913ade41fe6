//! At-least-once consumers: a named cursor over the log with acknowledgements.
//!
//! A [`DurableConsumer`] delivers the events after its committed cursor that pass its filter.
//! The consumer acknowledges each after processing; an event not acknowledged within the ack
//! timeout is delivered again; [`DurableConsumer::commit`] stores the cursor (the position
//! below which everything was acknowledged) in the log, so a restarted consumer resumes there
//! and may see, again, what it processed but had not committed: processing must be
//! idempotent, and [`DurableConsumer::is_duplicate`] helps by remembering recent event ids.
//!
//! Consumers read the log, not the bus: a slow consumer never holds up producers or other
//! consumers.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use citytwin_core::event::{Data, EcoString, Event};
use citytwin_core::log::{EventLog, Expected, ReplayFilter};
use serde_json::json;

/// The type of a committed-cursor record.
pub const CURSOR_TYPE: &str = "com.smartcities.twin.consumer_committed";

/// One delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Log position (acknowledge with it).
    pub position: u64,
    /// The event.
    pub event: Event,
    /// 1 for the first delivery, more for redeliveries.
    pub attempt: u32,
}

/// See the module documentation.
#[derive(Debug)]
pub struct DurableConsumer {
    log: EventLog,
    name: String,
    filter: ReplayFilter,
    ack_timeout: Duration,
    /// Everything below this is acknowledged and committed.
    committed: u64,
    /// Next position to read from the log.
    read_from: u64,
    /// Delivered, not yet acknowledged: position → (event, attempt, redeliver at).
    in_flight: BTreeMap<u64, (Event, u32, Instant)>,
    /// Acknowledged positions at or above the low-water mark.
    acked: HashSet<u64>,
    recent_ids: VecDeque<EcoString>,
    recent_set: HashSet<EcoString>,
}

const RECENT_IDS: usize = 100_000;

impl DurableConsumer {
    /// The stream holding a consumer's cursor.
    pub fn stream(name: &str) -> String {
        format!("consumer:{name}")
    }

    /// Opens consumer `name` at its committed cursor (position 0 when new).
    ///
    /// # Errors
    /// When the log cannot be read.
    pub fn open(log: EventLog, name: &str, filter: ReplayFilter, ack_timeout: Duration) -> citytwin_core::Result<Self> {
        let last = log.read_stream(&Self::stream(name), log.stream_seq(&Self::stream(name)).max(1))?;
        let committed = match last.last().map(|r| r.event()).transpose()?.and_then(|e| e.data) {
            Some(Data::Json(value)) => value["cursor"].as_u64().unwrap_or(0),
            _ => 0,
        };
        Ok(DurableConsumer {
            log,
            name: name.to_owned(),
            filter,
            ack_timeout,
            committed,
            read_from: committed,
            in_flight: BTreeMap::new(),
            acked: HashSet::new(),
            recent_ids: VecDeque::new(),
            recent_set: HashSet::new(),
        })
    }

    /// Up to `max` deliveries: overdue unacknowledged events first, then new ones.
    ///
    /// # Errors
    /// When the log cannot be read.
    pub fn poll(&mut self, now: Instant, max: usize) -> citytwin_core::Result<Vec<Delivery>> {
        let mut out = Vec::new();
        for (position, (event, attempt, due)) in self.in_flight.iter_mut() {
            if out.len() >= max {
                return Ok(out);
            }
            if *due <= now {
                *attempt += 1;
                *due = now + self.ack_timeout;
                out.push(Delivery { position: *position, event: event.clone(), attempt: *attempt });
            }
        }
        let filter = ReplayFilter { from_position: self.read_from, ..self.filter.clone() };
        let end = self.log.next_position();
        for record in self.log.replay(filter) {
            if out.len() >= max {
                return Ok(out);
            }
            let record = record?;
            self.read_from = record.position + 1;
            let event = record.event()?;
            self.in_flight.insert(record.position, (event.clone(), 1, now + self.ack_timeout));
            out.push(Delivery { position: record.position, event, attempt: 1 });
        }
        // Positions the filter skipped count as acknowledged.
        self.read_from = self.read_from.max(end);
        Ok(out)
    }

    /// Acknowledges a delivery: it will not be delivered again.
    pub fn ack(&mut self, position: u64) {
        if let Some((event, _, _)) = self.in_flight.remove(&position) {
            self.acked.insert(position);
            if self.recent_set.insert(event.id.clone()) {
                self.recent_ids.push_back(event.id);
                if self.recent_ids.len() > RECENT_IDS
                    && let Some(old) = self.recent_ids.pop_front()
                {
                    self.recent_set.remove(&old);
                }
            }
        }
    }

    /// Whether an event with this id was acknowledged recently (for idempotent processing of
    /// redeliveries after a restart).
    pub fn is_duplicate(&self, event_id: &str) -> bool {
        self.recent_set.contains(event_id)
    }

    /// The position below which every delivery is acknowledged.
    pub fn low_water(&self) -> u64 {
        self.in_flight.keys().next().copied().unwrap_or(self.read_from)
    }

    /// Stores the cursor (the low-water mark) in the log.
    ///
    /// # Errors
    /// When the log refuses the append.
    pub fn commit(&mut self) -> citytwin_core::Result<u64> {
        let cursor = self.low_water();
        if cursor == self.committed {
            return Ok(cursor);
        }
        let mut record =
            Event::untyped(format!("{}:{cursor}", Self::stream(&self.name)), "/twin/consumers", CURSOR_TYPE);
        record.data = Some(Data::Json(json!({ "consumer": self.name, "cursor": cursor })));
        self.log.append(&Self::stream(&self.name), Expected::Any, &record)?;
        self.committed = cursor;
        self.acked.retain(|p| *p >= cursor);
        Ok(cursor)
    }
}

#[cfg(test)]
mod tests {
    use citytwin_core::event::Timestamp;
    use citytwin_core::log::{Durability, LogConfig};

    use super::*;
    use citytwin_core::event::TypePattern;

    fn event(n: u32, ty: &str) -> Event {
        Event::untyped(format!("e{n}"), "/t", ty).with_time(Timestamp::from_secs(i64::from(n)))
    }

    #[test]
    fn unacknowledged_events_are_redelivered_and_commits_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let log =
            EventLog::open(dir.path(), LogConfig { durability: Durability::Never, ..LogConfig::default() }).unwrap();
        for n in 0..6 {
            let ty = if n % 2 == 0 { "com.smartcities.alert.triggered" } else { "com.example.noise" };
            log.append("s", Expected::Any, &event(n, ty)).unwrap();
        }
        let filter =
            ReplayFilter { types: vec![TypePattern::new("com.smartcities.alert.*")], ..ReplayFilter::default() };
        let timeout = Duration::from_secs(30);
        let mut consumer = DurableConsumer::open(log.clone(), "alerts", filter.clone(), timeout).unwrap();
        let t0 = Instant::now();
        let first: Vec<u64> = consumer.poll(t0, 10).unwrap().iter().map(|d| d.position).collect();
        assert_eq!(first, [0, 2, 4]);
        consumer.ack(0);
        consumer.ack(4);
        assert!(consumer.poll(t0, 10).unwrap().is_empty(), "nothing is due before the ack timeout");
        let again = consumer.poll(t0 + timeout, 10).unwrap();
        assert_eq!(
            again.iter().map(|d| (d.position, d.attempt)).collect::<Vec<_>>(),
            [(2, 2)],
            "unacknowledged: redelivered"
        );
        assert_eq!(consumer.commit().unwrap(), 2, "committed up to the first unacknowledged");
        assert!(consumer.is_duplicate("e4"));

        // Restart: resumes at the committed cursor; position 4 comes again (processed but
        // beyond the committed cursor) and is recognisable as a duplicate only by the app.
        let mut restarted = DurableConsumer::open(log.clone(), "alerts", filter, timeout).unwrap();
        let resumed: Vec<u64> = restarted.poll(t0, 10).unwrap().iter().map(|d| d.position).collect();
        assert_eq!(resumed, [2, 4]);
        restarted.ack(2);
        restarted.ack(4);
        let end = log.next_position();
        assert_eq!(restarted.commit().unwrap(), end, "everything read is acknowledged");
    }
}
