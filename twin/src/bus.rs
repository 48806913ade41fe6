//! The in-process publish-subscribe bus.
//!
//! Every committed event is published once, with its log position, on a broadcast channel:
//! publishers never wait for subscribers, and subscribers never block each other (fan-out).
//! A [`Subscription`] filters by event-type pattern, cell (or any cell under a parent cell),
//! bounding box, asset and organization.
//!
//! A key design decision: the log is the source of truth, so a subscriber that falls behind
//! does not lose events. When the channel reports that it lagged, the subscription replays
//! the positions it has not seen from the log, then goes on live: delivery is gap-free (each
//! committed event at least once, in no particular order across assets).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use citytwin_core::event::{Event, TypePattern, cell_within};
use citytwin_core::log::{EventLog, ReplayFilter};
use h3o::CellIndex;
use tokio::sync::broadcast;

/// A committed event and its log position.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// Position in the event log.
    pub position: u64,
    /// The event.
    pub event: Event,
}

/// What a subscription wants. Empty lists mean "no restriction"; restrictions combine with
/// AND, entries of one list with OR.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Event types (`com.smartcities.alert.*`).
    pub types: Vec<TypePattern>,
    /// Cells, or parent cells (any cell under them matches).
    pub cells: Vec<CellIndex>,
    /// `(south, west, north, east)` in degrees.
    pub bbox: Option<(f64, f64, f64, f64)>,
    /// Asset ids.
    pub assets: Vec<String>,
    /// Organizations.
    pub organizations: Vec<String>,
}

/// Whether a point lies in a `(south, west, north, east)` box, edges included.
pub fn within_bbox((south, west, north, east): (f64, f64, f64, f64), lat: f64, lng: f64) -> bool {
    (south..=north).contains(&lat) && (west..=east).contains(&lng)
}

impl Filter {
    /// Whether `event` passes.
    pub fn matches(&self, event: &Event) -> bool {
        let cell = event.ext.h3cell;
        (self.types.is_empty() || self.types.iter().any(|p| p.matches(event.ty.as_str())))
            && (self.cells.is_empty() || cell.is_some_and(|c| self.cells.iter().any(|&area| cell_within(c, area))))
            && self.bbox.is_none_or(|bbox| event.location().is_some_and(|l| within_bbox(bbox, l.lat, l.lng)))
            && (self.assets.is_empty() || event.asset_id().is_some_and(|a| self.assets.iter().any(|x| x == a)))
            && (self.organizations.is_empty()
                || event.ext.organization.as_deref().is_some_and(|o| self.organizations.iter().any(|x| x == o)))
    }
}

/// The bus: publish committed events, subscribe with filters.
#[derive(Debug, Clone)]
pub struct Bus {
    tx: broadcast::Sender<Arc<Committed>>,
    log: EventLog,
    published: Arc<std::sync::atomic::AtomicU64>,
}

impl Bus {
    /// A bus over `log` buffering `capacity` events for slow subscribers before they must
    /// catch up from the log.
    pub fn new(log: EventLog, capacity: usize) -> Bus {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Bus { tx, log, published: Arc::default() }
    }

    /// Publishes a committed event (never waits).
    pub fn publish(&self, position: u64, event: Event) {
        self.published.fetch_add(1, std::sync::atomic::Ordering::Release);
        // No subscriber is not an error.
        let _ = self.tx.send(Arc::new(Committed { position, event }));
    }

    /// How many events have been published so far (a subscriber that has received this many
    /// since the bus started has seen them all).
    pub fn published(&self) -> u64 {
        self.published.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Publishes events just appended, each with its position (as a writer append returns them).
    pub fn publish_appended(&self, appended: &[citytwin_core::log::Appended], events: &[Event]) {
        for (at, event) in appended.iter().zip(events) {
            self.publish(at.position, event.clone());
        }
    }

    /// As [`Bus::publish_appended`], taking the events (no copies).
    pub fn publish_owned(&self, appended: &[citytwin_core::log::Appended], events: Vec<Event>) {
        for (at, event) in appended.iter().zip(events) {
            self.publish(at.position, event);
        }
    }

    /// Subscribes to every event committed from now on that passes `filter`.
    pub fn subscribe(&self, filter: Filter) -> Subscription {
        let rx = self.tx.subscribe();
        let start = self.log.next_position();
        Subscription {
            rx,
            log: self.log.clone(),
            filter,
            low_water: start,
            seen: BTreeSet::new(),
            backlog: VecDeque::new(),
            recovered: 0,
            start,
        }
    }
}

/// A filtered, gap-free view of the bus. See the module documentation.
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Arc<Committed>>,
    log: EventLog,
    filter: Filter,
    /// Every position below this has been seen (delivered or filtered out).
    low_water: u64,
    /// Positions at or above `low_water` already seen.
    seen: BTreeSet<u64>,
    backlog: VecDeque<Arc<Committed>>,
    /// Events recovered from the log after the channel lagged.
    pub recovered: u64,
    start: u64,
}

impl Subscription {
    /// Marks `position` seen; returns false if it already was (or precedes the subscription).
    fn mark(&mut self, position: u64) -> bool {
        if position < self.low_water || !self.seen.insert(position) {
            return false;
        }
        while self.seen.remove(&self.low_water) {
            self.low_water += 1;
        }
        true
    }

    /// The first log position this subscription delivers: every event before it is in the
    /// log already (replay up to here, then follow the subscription: no gap, no duplicate).
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The next matching committed event; `None` once the bus is closed.
    pub async fn recv(&mut self) -> Option<Arc<Committed>> {
        loop {
            if let Some(next) = self.backlog.pop_front() {
                return Some(next);
            }
            match self.rx.recv().await {
                Ok(committed) => {
                    if self.mark(committed.position) && self.filter.matches(&committed.event) {
                        return Some(committed);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "bus subscriber lagged: catching up from the log");
                    self.catch_up();
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next matching event if one is ready now, without waiting.
    pub fn try_recv(&mut self) -> Option<Arc<Committed>> {
        loop {
            if let Some(next) = self.backlog.pop_front() {
                return Some(next);
            }
            match self.rx.try_recv() {
                Ok(committed) => {
                    if self.mark(committed.position) && self.filter.matches(&committed.event) {
                        return Some(committed);
                    }
                }
                Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "bus subscriber lagged: catching up from the log");
                    self.catch_up();
                }
                Err(_) => return None,
            }
        }
    }

    /// Replays every unseen position from the log into the backlog.
    fn catch_up(&mut self) {
        let filter = ReplayFilter { from_position: self.low_water, ..ReplayFilter::default() };
        let replay = self.log.replay(filter);
        for record in replay {
            let record = match record {
                Ok(record) => record,
                Err(error) => {
                    tracing::error!(%error, "catching up from the log failed");
                    return;
                }
            };
            if !self.mark(record.position) {
                continue;
            }
            match record.event() {
                Ok(event) if self.filter.matches(&event) => {
                    self.recovered += 1;
                    self.backlog.push_back(Arc::new(Committed { position: record.position, event }));
                }
                Ok(_) => {}
                Err(error) => tracing::error!(%error, position = record.position, "undecodable record skipped"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use citytwin_core::event::{Location, MetricRecorded, Timestamp, Unit};
    use citytwin_core::log::{Durability, Expected, LogConfig};
    use h3o::Resolution;

    use super::*;

    fn event(n: u64, asset: &str, lat: f64) -> Event {
        Event::new(
            format!("e{n}"),
            "/t",
            MetricRecorded {
                asset_id: asset.into(),
                metric_type: "x".into(),
                value: n as f64,
                unit: Unit::from("1"),
                location: Some(Location::new(lat, -74.0)),
            },
        )
        .with_time(Timestamp::from_secs(n as i64))
        .with_organization(if n.is_multiple_of(2) { "org_a" } else { "org_b" })
        .with_derived_cell(Resolution::Ten)
    }

    #[tokio::test]
    async fn a_lagging_subscriber_catches_up_from_the_log_without_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let log =
            EventLog::open(dir.path(), LogConfig { durability: Durability::Never, ..LogConfig::default() }).unwrap();
        let bus = Bus::new(log.clone(), 4);
        let mut all = bus.subscribe(Filter::default());
        let mut org_a = bus.subscribe(Filter { organizations: vec!["org_a".into()], ..Filter::default() });
        // Commit 100 events, publishing them in a scrambled order (as concurrent actors do).
        let events: Vec<Event> = (0..100).map(|n| event(n, "a1", 40.7)).collect();
        let mut positions: Vec<(u64, Event)> =
            events.iter().map(|e| (log.append("a1", Expected::Any, e).unwrap().position, e.clone())).collect();
        positions.reverse();
        for (position, event) in positions {
            bus.publish(position, event);
        }
        let mut seen = Vec::new();
        while seen.len() < 100 {
            seen.push(all.recv().await.unwrap().position);
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        assert!(all.recovered > 0, "the 4-slot channel lagged and the log filled the gap");
        let mut evens = Vec::new();
        while evens.len() < 50 {
            evens.push(org_a.recv().await.unwrap().position);
        }
        assert!(evens.iter().all(|p| p % 2 == 0));
    }

    #[test]
    fn filters_by_parent_cell_bbox_asset_and_type() {
        let inside = event(1, "a1", 40.7);
        let parent = inside.ext.h3cell.unwrap().parent(Resolution::Six).unwrap();
        let far = event(2, "a2", 48.85);
        let by_cell = Filter { cells: vec![parent], ..Filter::default() };
        assert!(by_cell.matches(&inside) && !by_cell.matches(&far));
        let by_bbox = Filter { bbox: Some((40.0, -75.0, 41.0, -73.0)), ..Filter::default() };
        assert!(by_bbox.matches(&inside) && !by_bbox.matches(&far));
        let by_asset = Filter { assets: vec!["a2".into()], ..Filter::default() };
        assert!(!by_asset.matches(&inside) && by_asset.matches(&far));
        let by_type = Filter { types: vec![TypePattern::new("com.smartcities.alert.*")], ..Filter::default() };
        assert!(!by_type.matches(&inside));
    }
}
