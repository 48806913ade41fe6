//! The in-process publish-subscribe bus.
//!
//! Every committed event is published once, with its log position: publishers never wait for
//! subscribers, and subscribers never block each other (fan-out). A [`Subscription`] filters
//! by event-type pattern, cell (or any cell under a parent cell), bounding box, asset and
//! organization.
//!
//! One publisher, in commit order: the log writer thread publishes what each group commit
//! appended as one batch ([`Bus::publish_committed`]), so a subscriber pays one channel
//! message per group, not per event, and sees positions in increasing order. Each batch also
//! says where the group ended: positions below it that were not in any batch (dead letters,
//! cursors) are not for the bus, so a subscriber needs no memory of what it has seen beyond
//! one number.
//!
//! A key design decision: the log is the source of truth, so a subscriber that falls behind
//! does not lose events. When the channel reports that it lagged, the subscription replays
//! the positions it has not seen from the log, then goes on live: delivery is gap-free and
//! free of duplicates (each committed event once, in position order).
//!
//! Catching up costs a read and a decode of every missed event, so the twin's own consumers
//! (the cell router's pump, the read models, the run command's alert counter) subscribe
//! *paced* ([`Bus::subscribe_paced`]): asset actors wait ([`Bus::paced`], called by
//! [`crate::writer::LogWriter::submit`]) while one of them has more than a quarter of the
//! channel's batches still to take. When the consumer tasks are starved of CPU by thousands of
//! busy asset actors, the actors pause instead of the consumers falling into catch-up again
//! and again (a day at 100k assets re-read more than its whole log). The gate sits before the
//! writer's queue, so what passes it is bounded by that queue; the writer itself never waits
//! (cell actors' alerts, which a flush waits for, always go through). Outside subscribers
//! (gRPC and WebSocket clients) are never waited for: a slow client catches up from the log
//! and slows nobody.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

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

/// What a filter-less subscriber of the bus receives: the events of the streams the twin
/// publishes (assets, cells and rule hosts, the city stream). Other streams (dead letters,
/// sagas, consumer cursors) live in the log only; catching up from the log skips them too.
pub fn published_stream(stream: &str) -> bool {
    stream == crate::city::CITY_STREAM
        || stream.starts_with("asset:")
        || stream.starts_with("cell:")
        || stream.starts_with("rules:")
}

/// What subscriptions want. Empty lists mean "no restriction"; restrictions combine with
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

    /// Whether the filter lets everything through.
    fn is_open(&self) -> bool {
        self == &Filter::default()
    }
}

/// The events of one group commit, in position order; every position below `upto` has been
/// published by now or is not for the bus.
#[derive(Debug)]
struct Published {
    /// The batch's number: 1 for the first one published (0: not from the channel).
    seq: u64,
    upto: u64,
    /// The events in runs, as the writer's requests brought them (each request's list is
    /// published as it is, not moved into one list: an event is about 224 bytes).
    runs: Vec<Vec<Committed>>,
}

/// One delivered event: a handle into the batch it was published in (cloning it copies a
/// pointer, not the event).
#[derive(Debug, Clone)]
pub struct Delivered {
    batch: Arc<Published>,
    run: u32,
    index: u32,
}

impl Delivered {
    /// Handles to each of `events`, as if published together (to feed a consumer directly:
    /// tests, benches).
    pub fn batch(events: Vec<Committed>) -> Vec<Delivered> {
        let upto = events.iter().map(|c| c.position + 1).max().unwrap_or(0);
        let count = events.len();
        let batch = Arc::new(Published { seq: 0, upto, runs: vec![events] });
        (0..count).map(|index| Delivered { batch: Arc::clone(&batch), run: 0, index: index as u32 }).collect()
    }
}

impl std::ops::Deref for Delivered {
    type Target = Committed;

    fn deref(&self) -> &Committed {
        &self.batch.runs[self.run as usize][self.index as usize]
    }
}

/// The bus: publish committed events, subscribe with filters.
#[derive(Debug, Clone)]
pub struct Bus {
    tx: broadcast::Sender<Arc<Published>>,
    log: EventLog,
    published: Arc<AtomicU64>,
    /// The position after the latest published group commit.
    upto: Arc<AtomicU64>,
    pacing: Arc<Pacing>,
}

/// The paced subscribers' progress (see the module documentation).
#[derive(Debug)]
struct Pacing {
    /// Batches published so far.
    batches: AtomicU64,
    /// Each paced subscription's latest batch taken (gone when it is dropped).
    cursors: Mutex<Vec<Weak<AtomicU64>>>,
    /// A batch no paced subscription is behind of: the slowest cursor when last looked at.
    floor: AtomicU64,
    /// Signalled when a paced subscription takes a batch.
    progressed: tokio::sync::Notify,
    /// Most batches a paced subscriber may have left to take before producers wait.
    max_lag: u64,
}

impl Pacing {
    /// Whether the slowest paced subscriber has more than `max_lag` batches still to take.
    ///
    /// Taken on every submission, so cheap while no subscriber is near the limit: a cursor
    /// only moves forward and a new subscription starts at the newest batch, so the slowest
    /// cursor found earlier (`floor`) never exceeds the slowest one now. The cursors are read
    /// (under the lock, each upgraded) only when that bound says the limit may be passed.
    fn behind(&self) -> bool {
        let published = self.batches.load(Ordering::Acquire);
        if published.saturating_sub(self.floor.load(Ordering::Acquire)) <= self.max_lag {
            return false;
        }
        // Gone subscriptions are pruned when they drop (not on this path).
        let cursors = self.cursors.lock().unwrap_or_else(PoisonError::into_inner);
        let slowest = cursors
            .iter()
            .filter_map(Weak::upgrade)
            .map(|cursor| cursor.load(Ordering::Acquire))
            .min()
            .unwrap_or(published)
            .min(published);
        drop(cursors);
        self.floor.fetch_max(slowest, Ordering::AcqRel);
        published - slowest > self.max_lag
    }
}

impl Bus {
    /// A bus over `log` buffering `capacity` published batches (group commits) for slow
    /// subscribers before they must catch up from the log.
    pub fn new(log: EventLog, capacity: usize) -> Bus {
        let (tx, _) = broadcast::channel(capacity.max(1));
        let pacing = Pacing {
            batches: AtomicU64::new(0),
            cursors: Mutex::default(),
            floor: AtomicU64::new(0),
            progressed: tokio::sync::Notify::new(),
            max_lag: (capacity as u64 / 4).max(1),
        };
        Bus { tx, log, published: Arc::default(), upto: Arc::default(), pacing: Arc::new(pacing) }
    }

    /// Publishes the events one group commit appended, in position order (in runs: the
    /// writer's requests' lists, each as it is), with the position after the group (never
    /// waits). The log writer is the only publisher: batches must come in commit order.
    pub(crate) fn publish_committed(&self, upto: u64, runs: Vec<Vec<Committed>>) {
        debug_assert!({
            let positions: Vec<u64> = runs.iter().flatten().map(|c| c.position).collect();
            positions.windows(2).all(|w| w[0] < w[1]) && positions.last().is_none_or(|&last| last < upto)
        });
        let count: usize = runs.iter().map(Vec::len).sum();
        self.published.fetch_add(count as u64, Ordering::Release);
        self.upto.fetch_max(upto, Ordering::AcqRel);
        let seq = self.pacing.batches.fetch_add(1, Ordering::AcqRel) + 1;
        // No subscriber is not an error.
        let _ = self.tx.send(Arc::new(Published { seq, upto, runs }));
    }

    /// How many events have been published so far (a subscriber that has received this many
    /// since the bus started has seen them all).
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// The position after the latest group commit published: a subscription has seen
    /// everything committed before it once [`Subscription::recv_until`] with it returns
    /// `None`.
    pub fn published_upto(&self) -> u64 {
        self.upto.load(Ordering::Acquire)
    }

    /// Waits while a paced subscriber has more than a quarter of the channel's batches still
    /// to take (returns at once when none lags that far, or there is none).
    pub async fn paced(&self) {
        if !self.pacing.behind() {
            return;
        }
        loop {
            // Registered before the check, so progress in between is not missed.
            let progressed = self.pacing.progressed.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            if !self.pacing.behind() {
                return;
            }
            progressed.await;
        }
    }

    /// As [`Bus::subscribe`], for a consumer that producers wait for (see the module
    /// documentation): the twin's own consumers, never an outside client.
    pub fn subscribe_paced(&self, filter: Filter) -> Subscription {
        let mut subscription = self.subscribe(filter);
        let cursor = Arc::new(AtomicU64::new(self.pacing.batches.load(Ordering::Acquire)));
        self.pacing.cursors.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::downgrade(&cursor));
        subscription.pace = Some((cursor, Arc::clone(&self.pacing)));
        subscription
    }

    /// Subscribes to every event committed from now on that passes `filter`.
    pub fn subscribe(&self, filter: Filter) -> Subscription {
        let rx = self.tx.subscribe();
        let start = self.log.next_position();
        Subscription {
            rx,
            log: self.log.clone(),
            open: filter.is_open(),
            filter,
            low_water: start,
            current: None,
            backlog: VecDeque::new(),
            recovered: 0,
            start,
            pace: None,
        }
    }
}

/// A filtered, gap-free view of the bus. See the module documentation.
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Arc<Published>>,
    log: EventLog,
    filter: Filter,
    /// The filter lets everything through (no per-event check).
    open: bool,
    /// Every position below this has been delivered, filtered out or is not for the bus.
    low_water: u64,
    /// The batch being delivered and where its next event is (run, index in the run).
    current: Option<(Arc<Published>, u32, u32)>,
    backlog: VecDeque<Delivered>,
    /// Events recovered from the log after the channel lagged.
    pub recovered: u64,
    start: u64,
    /// For a paced subscription: the latest batch taken, and whom to tell.
    pace: Option<(Arc<AtomicU64>, Arc<Pacing>)>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Producers waiting for this subscriber must not wait for one that is gone.
        if let Some((cursor, pacing)) = self.pace.take() {
            drop(cursor);
            pacing.cursors.lock().unwrap_or_else(PoisonError::into_inner).retain(|c| c.strong_count() > 0);
            pacing.progressed.notify_waiters();
        }
    }
}

impl Subscription {
    /// The first log position this subscription delivers: every event before it is in the
    /// log already (replay up to here, then follow the subscription: no gap, no duplicate).
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The next matching event of the batch in hand, if any.
    fn next_in_current(&mut self) -> Option<Delivered> {
        let (batch, run, index) = self.current.as_mut()?;
        while let Some(events) = batch.runs.get(*run as usize) {
            let Some(committed) = events.get(*index as usize) else {
                *run += 1;
                *index = 0;
                continue;
            };
            let at = *index;
            *index += 1;
            // Below the low-water mark: delivered already from the log while catching up.
            if committed.position >= self.low_water && (self.open || self.filter.matches(&committed.event)) {
                return Some(Delivered { batch: Arc::clone(batch), run: *run, index: at });
            }
        }
        self.low_water = self.low_water.max(batch.upto);
        self.current = None;
        None
    }

    /// Takes a batch from the channel (`None`: nothing there, or the bus is closed when
    /// `closed` is set).
    fn take(&mut self, received: Result<Arc<Published>, broadcast::error::RecvError>, closed: &mut bool) {
        match received {
            Ok(batch) => {
                if let Some((cursor, pacing)) = &self.pace {
                    cursor.store(batch.seq, Ordering::Release);
                    pacing.progressed.notify_waiters();
                }
                self.current = Some((batch, 0, 0));
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, paced = self.pace.is_some(), "bus subscriber lagged: catching up from the log");
                self.catch_up();
            }
            Err(broadcast::error::RecvError::Closed) => *closed = true,
        }
    }

    /// The next matching committed event; `None` once the bus is closed.
    pub async fn recv(&mut self) -> Option<Delivered> {
        self.recv_until(u64::MAX).await
    }

    /// The next matching event committed before `end` (see [`Bus::published_upto`]), waiting
    /// for it if need be; `None` once every position before `end` has been delivered or
    /// passed over (or the bus is closed). For a consumer that must have seen everything up
    /// to a point, e.g. every alert of a finished run.
    pub async fn recv_until(&mut self, end: u64) -> Option<Delivered> {
        loop {
            if let Some(next) = self.backlog.pop_front() {
                return Some(next);
            }
            if let Some(next) = self.next_in_current() {
                return Some(next);
            }
            if self.low_water >= end {
                return None;
            }
            let received = self.rx.recv().await;
            let mut closed = false;
            self.take(received, &mut closed);
            if closed {
                return None;
            }
        }
    }

    /// The next matching event if one is ready now, without waiting.
    pub fn try_recv(&mut self) -> Option<Delivered> {
        loop {
            if let Some(next) = self.backlog.pop_front() {
                return Some(next);
            }
            if let Some(next) = self.next_in_current() {
                return Some(next);
            }
            let received = match self.rx.try_recv() {
                Ok(batch) => Ok(batch),
                Err(broadcast::error::TryRecvError::Lagged(missed)) => Err(broadcast::error::RecvError::Lagged(missed)),
                Err(_) => return None,
            };
            let mut closed = false;
            self.take(received, &mut closed);
        }
    }

    /// Waits for at least one matching event, then returns it with every other matching event
    /// ready now, up to about `max` (a consumer that works in batches pays one wake-up per
    /// batch). `None` once the bus is closed.
    pub async fn recv_batch(&mut self, max: usize) -> Option<Vec<Delivered>> {
        let first = self.recv().await?;
        let mut batch = vec![first];
        while batch.len() < max {
            match self.try_recv() {
                Some(next) => batch.push(next),
                None => break,
            }
        }
        Some(batch)
    }

    /// Replays every unseen position from the log into the backlog.
    fn catch_up(&mut self) {
        // Everything published and not delivered yet is in the log: read from the low-water
        // mark to the end as it is now (batches still in the channel below it are skipped).
        let until = self.log.next_position();
        // The log skips other types without decoding them (its frames say the type).
        let filter =
            ReplayFilter { from_position: self.low_water, types: self.filter.types.clone(), ..ReplayFilter::default() };
        for record in self.log.replay(filter) {
            let record = match record {
                Ok(record) => record,
                Err(error) => {
                    tracing::error!(%error, "catching up from the log failed");
                    break;
                }
            };
            if record.position >= until {
                break;
            }
            if !published_stream(&record.stream) {
                continue;
            }
            match record.event() {
                Ok(event) if self.open || self.filter.matches(&event) => {
                    self.recovered += 1;
                    let batch = Published {
                        seq: 0,
                        upto: record.position + 1,
                        runs: vec![vec![Committed { position: record.position, event }]],
                    };
                    self.backlog.push_back(Delivered { batch: Arc::new(batch), run: 0, index: 0 });
                }
                Ok(_) => {}
                Err(error) => tracing::error!(%error, position = record.position, "undecodable record skipped"),
            }
        }
        self.low_water = self.low_water.max(until);
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

    fn open_log(dir: &std::path::Path) -> EventLog {
        EventLog::open(dir, LogConfig { durability: Durability::Never, ..LogConfig::default() }).unwrap()
    }

    /// Appends 100 events in groups of 10 (with a dead letter after each group, which is not
    /// for the bus), publishes each group as the writer does, then calls `after_each`.
    fn commit_groups(log: &EventLog, bus: &Bus, mut after_each: impl FnMut()) {
        for group in 0..10 {
            let mut committed = Vec::new();
            for n in group * 10..group * 10 + 10 {
                let e = event(n, "a1", 40.7);
                committed.push(Committed {
                    position: log.append("asset:a1", Expected::Any, &e).unwrap().position,
                    event: e,
                });
            }
            let noise =
                log.append(crate::deadletter::DEAD_LETTER_STREAM, Expected::Any, &event(1000 + group, "x", 0.0));
            // In runs, as the writer publishes its requests' lists (an empty one too).
            let rest = committed.split_off(4);
            bus.publish_committed(noise.unwrap().position + 1, vec![committed, Vec::new(), rest]);
            after_each();
        }
    }

    #[tokio::test]
    async fn subscribers_get_every_published_event_once_in_order_even_after_lagging() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(dir.path());
        let bus = Bus::new(log.clone(), 4);
        let mut live = bus.subscribe(Filter::default());
        let mut lagging = bus.subscribe(Filter::default());
        let mut org_a = bus.subscribe(Filter { organizations: vec!["org_a".into()], ..Filter::default() });
        // Typed subscribers catch up through the log's own type filter (no decoding of others).
        let typed = |pattern: &str| Filter { types: vec![TypePattern::new(pattern)], ..Filter::default() };
        let mut metrics = bus.subscribe(typed("com.smartcities.asset.metric_recorded"));
        let mut alerts = bus.subscribe(typed("com.smartcities.alert.*"));
        let mut published = Vec::new();
        // `live` drains as the groups come; the others read only afterwards: the 4-batch
        // channel has dropped the first 6 groups for them.
        commit_groups(&log, &bus, || {
            while let Some(next) = live.try_recv() {
                published.push((next.position, next.event.id.clone()));
            }
        });
        assert_eq!(live.recovered, 0, "a subscriber that keeps up reads nothing from the log");
        assert_eq!(published.len(), 100, "every asset event, no dead letter");
        assert!(published.windows(2).all(|w| w[0].0 < w[1].0), "in position order");
        assert_eq!(bus.published(), 100);
        let mut caught_up = Vec::new();
        while caught_up.len() < 100 {
            let next = lagging.recv().await.unwrap();
            caught_up.push((next.position, next.event.id.clone()));
        }
        assert_eq!(caught_up, published, "the log filled the gap: same events, same order, no duplicate");
        assert!(lagging.recovered > 0, "the channel lagged and the log filled the gap");
        assert!(lagging.try_recv().is_none(), "nothing twice");
        let mut typed_caught_up = Vec::new();
        while let Some(next) = metrics.try_recv() {
            typed_caught_up.push((next.position, next.event.id.clone()));
        }
        assert_eq!(typed_caught_up, published, "a typed subscriber catches up with every match");
        assert!(metrics.recovered > 0);
        assert!(alerts.try_recv().is_none(), "nothing of another type");
        assert_eq!(alerts.recovered, 0);
        let evens = org_a.recv_batch(1000).await.unwrap();
        let mut evens: Vec<u64> = evens.iter().map(|d| d.position).collect();
        while let Some(next) = org_a.try_recv() {
            evens.push(next.position);
        }
        assert_eq!(evens.len(), 50);
        let by_position: std::collections::HashMap<u64, &citytwin_core::event::EcoString> =
            published.iter().map(|(p, id)| (*p, id)).collect();
        assert!(evens.iter().all(|p| by_position[p].trim_start_matches('e').parse::<u64>().unwrap() % 2 == 0));
    }

    #[tokio::test]
    async fn recv_until_ends_once_everything_before_the_end_is_seen_even_with_no_match_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(dir.path());
        let bus = Bus::new(log.clone(), 4);
        let odd = || bus.subscribe(Filter { organizations: vec!["org_b".into()], ..Filter::default() });
        let (mut lagging, mut live) = (odd(), odd());
        // Each group ends with a dead letter, which is not for the bus: the end lies past every
        // event a subscriber can see.
        let mut seen_live = 0;
        commit_groups(&log, &bus, || {
            while live.try_recv().is_some() {
                seen_live += 1;
            }
        });
        let end = bus.published_upto();
        assert_eq!(end, log.next_position(), "the last group's end, dead letter included");
        assert_eq!(seen_live, 50);
        assert!(live.recv_until(end).await.is_none(), "seen everything already: ends at once");
        let mut seen = 0;
        while let Some(next) = lagging.recv_until(end).await {
            assert_eq!(next.event.ext.organization.as_deref(), Some("org_b"));
            seen += 1;
        }
        assert_eq!(seen, 50, "every match before the end, and then the end");
        assert!(lagging.recovered > 0, "it caught up from the log on the way");
    }

    #[tokio::test]
    async fn producers_wait_for_a_paced_subscriber_only_and_only_while_it_lags() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(dir.path());
        // 8 batches of room: producers wait once a paced subscriber has more than 2 to take.
        let bus = Bus::new(log.clone(), 8);
        let _outside = bus.subscribe(Filter::default());
        let publish = |n: u64| {
            let e = event(n, "a1", 40.7);
            let position = log.append("asset:a1", Expected::Any, &e).unwrap().position;
            bus.publish_committed(position + 1, vec![vec![Committed { position, event: e }]]);
        };
        for n in 0..5 {
            publish(n);
        }
        // An outside subscriber that never reads holds nobody up.
        tokio::time::timeout(std::time::Duration::from_secs(5), bus.paced()).await.expect("no paced subscriber");
        let mut paced = bus.subscribe_paced(Filter::default());
        for n in 5..9 {
            publish(n);
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        {
            let mut waiting = std::pin::pin!(bus.paced());
            assert!(waiting.as_mut().poll(&mut cx).is_pending(), "4 batches behind: producers wait");
            // Taking two batches brings it to 2 behind: the producer goes on.
            for _ in 0..2 {
                paced.recv().await.unwrap();
            }
            assert!(waiting.as_mut().poll(&mut cx).is_ready(), "caught up enough: released");
        }
        for n in 9..13 {
            publish(n);
        }
        let mut waiting = std::pin::pin!(bus.paced());
        assert!(waiting.as_mut().poll(&mut cx).is_pending(), "behind again");
        // A paced subscriber that goes away wakes whoever waited for it.
        drop(paced);
        assert!(waiting.as_mut().poll(&mut cx).is_ready(), "gone: nobody waits for it");
    }

    #[tokio::test]
    async fn a_subscription_starts_after_what_the_log_holds_when_it_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(dir.path());
        let bus = Bus::new(log.clone(), 64);
        // Committed before the subscription, published after it (the writer is a step behind).
        let before = event(1, "a1", 40.7);
        let at = log.append("asset:a1", Expected::Any, &before).unwrap().position;
        let mut subscription = bus.subscribe(Filter::default());
        assert_eq!(subscription.start(), at + 1);
        bus.publish_committed(at + 1, vec![vec![Committed { position: at, event: before }]]);
        let after = event(2, "a1", 40.7);
        let next = log.append("asset:a1", Expected::Any, &after).unwrap().position;
        bus.publish_committed(next + 1, vec![vec![Committed { position: next, event: after }]]);
        assert_eq!(subscription.recv().await.unwrap().position, next, "the replay below start() has the first");
        assert!(subscription.try_recv().is_none());
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
