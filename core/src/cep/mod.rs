//! Complex event processing: windows, aggregates and patterns over event time.
//!
//! [`Engine`] is a pure state machine: [`Engine::process`] takes one event and appends
//! [`Output`]s; [`Engine::advance_watermark`] moves event time forward (a host calls it from
//! its own clock so that idle keys still close windows and fire negations). No clock, no
//! randomness, no I/O: the same inputs give the same outputs.
//!
//! - Event time with a watermark = newest event time − `max_out_of_orderness`. Window rules
//!   assign events on arrival and close windows when the watermark passes their end (late
//!   events within `allowed_lateness` update and re-emit; beyond it they become
//!   [`Output::Late`]). Pattern rules see events in event-time order: events wait in a buffer
//!   until the watermark passes them, so out-of-order arrival within the bound does not change
//!   results; an event older than the watermark is late.
//! - Rules ([`rules::Rule`]) come from TOML (`docs/rules.md`): tumbling, sliding and session
//!   windows with count/sum/avg/min/max/last/p50/p95, conjunctions of conditions, negation
//!   (`unless`), grouping by asset, asset type, metric and H3 cell; sequences with a
//!   selection strategy, `within`, and negation after the last step (`absent`), which fires
//!   when the watermark passes its deadline.
//! - Matches emit [`Alert`]s (convertible to `alert.triggered` events with `causationid` and
//!   `correlationid`) and carry the rule's named actions.
//! - State is bounded: closed windows and expired runs are purged; [`Engine::state_size`]
//!   returns to zero once the watermark passes everything.
//!
//! It is not: a scheduler or a runtime. The twin's cell actors host one engine per cell.

mod agg;
mod pattern;
pub mod rules;
mod window;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use h3o::CellIndex;
use rustc_hash::FxHashMap;

use crate::event::{AlertTriggered, Event, Payload, Provenance, Severity, Timestamp};
use rules::{GroupBy, Matcher, RuleKind};
pub use rules::{Rule, RuleErrors, parse_rules};

/// Engine settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// How far behind the newest event time the watermark trails.
    pub max_out_of_orderness: Duration,
    /// Cap on partial matches per key and rule (skip-till-any-match can multiply them);
    /// the oldest are dropped and counted beyond it.
    pub max_runs_per_key: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { max_out_of_orderness: Duration::from_secs(5), max_runs_per_key: 1024 }
    }
}

/// One part of a group key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyPart {
    /// An asset id.
    Asset(String),
    /// An asset type.
    AssetType(String),
    /// A metric (or event type).
    Metric(String),
    /// An H3 cell at the rule's resolution.
    Cell(CellIndex),
}

/// A group key: the values of a rule's `group_by` parts, in order (empty: one global group).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Key(pub Vec<KeyPart>);

impl Key {
    /// The cell part, if the key has one.
    pub fn cell(&self) -> Option<CellIndex> {
        self.0.iter().find_map(|part| match part {
            KeyPart::Cell(cell) => Some(*cell),
            _ => None,
        })
    }

    /// The asset part, if the key has one.
    pub fn asset(&self) -> Option<&str> {
        self.0.iter().find_map(|part| match part {
            KeyPart::Asset(asset) => Some(asset.as_str()),
            _ => None,
        })
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("*");
        }
        for (i, part) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{part}")?;
        }
        Ok(())
    }
}

impl fmt::Display for KeyPart {
    /// `asset=…`, `asset_type=…`, `metric=…` or `cell=…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPart::Asset(v) => write!(f, "asset={v}"),
            KeyPart::AssetType(v) => write!(f, "asset_type={v}"),
            KeyPart::Metric(v) => write!(f, "metric={v}"),
            KeyPart::Cell(v) => write!(f, "cell={v}"),
        }
    }
}

/// How a window result relates to earlier ones for the same window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Emission {
    /// A partial result before the window closed (`early_every`).
    Early,
    /// The result when the watermark passed the window's end.
    Final,
    /// A corrected result after a late event within the allowed lateness.
    Update,
}

/// The aggregates of one key in one window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult {
    /// The rule.
    pub rule_id: Arc<str>,
    /// The group.
    pub key: Key,
    /// Window start (inclusive).
    pub start: Timestamp,
    /// Window end (exclusive).
    pub end: Timestamp,
    /// Which emission this is.
    pub emission: Emission,
    /// Number of values in the window, all metrics together.
    pub count: u64,
    /// `("avg(pm25)", 41.2)`, in the rule's order; aggregates of empty metrics are left out.
    pub values: Vec<(String, f64)>,
}

/// A rule matched.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// The rule.
    pub rule_id: Arc<str>,
    /// Its severity.
    pub severity: Severity,
    /// The group it matched in.
    pub key: Key,
    /// Event time of the match (window end; last step; or the negation's deadline).
    pub time: Timestamp,
    /// The window, for window rules.
    pub window: Option<(Timestamp, Timestamp)>,
    /// The values that triggered it (`sum(vehicle_count)`, `avg(avg_speed)`, step values).
    pub values: BTreeMap<String, f64>,
    /// Ids of the triggering events (at most 16; window rules keep the first ones).
    pub causes: Vec<String>,
    /// Correlation id carried over from the triggering events.
    pub correlation: Option<String>,
    /// Named actions for the host to route.
    pub actions: Vec<String>,
    /// The rule's message.
    pub message: Option<String>,
}

/// Most triggering event ids an alert carries.
pub const MAX_CAUSES: usize = 16;

impl Alert {
    /// A deterministic id: rule, key and time.
    pub fn alert_id(&self) -> String {
        format!("{}:{}:{}", self.rule_id, self.key, self.time.as_nanos())
    }

    /// The `alert.triggered` event for this alert (source `/cep/<rule>`, `causationid` = the
    /// triggering ids, `correlationid` carried over, `h3cell` from the key).
    pub fn to_event(&self) -> Event {
        let alert_id = self.alert_id();
        let threshold_value = self.values.iter().next().map(|(_, v)| *v);
        let payload = AlertTriggered {
            alert_id: alert_id.clone(),
            rule_id: self.rule_id.to_string(),
            severity: self.severity,
            asset_id: self.key.asset().map(str::to_owned),
            cell: self.key.cell(),
            threshold: None,
            actual_value: threshold_value,
            values: self.values.clone(),
            actions: self.actions.clone(),
            message: self.message.clone(),
        };
        let mut event = Event::new(alert_id, format!("/cep/{}", self.rule_id), payload)
            .with_time(self.time)
            .with_provenance(Provenance::Live);
        event.ext.h3cell = self.key.cell();
        if !self.causes.is_empty() {
            event.ext.rare.causationid = Some(self.causes.join(","));
        }
        if let Some(correlation) = &self.correlation {
            event.ext.rare.correlationid = Some(correlation.clone());
        }
        event
    }
}

/// An event the engine could not use for a rule because it arrived too late.
#[derive(Debug, Clone, PartialEq)]
pub struct LateEvent {
    /// The rule.
    pub rule_id: Arc<str>,
    /// The event.
    pub event_id: String,
    /// Its time.
    pub time: Timestamp,
    /// The watermark when it arrived.
    pub watermark: Timestamp,
}

/// What the engine emits.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Aggregates of a window.
    Window(WindowResult),
    /// A rule matched.
    Alert(Alert),
    /// An event arrived beyond the allowed lateness: not dropped silently, reported here.
    Late(LateEvent),
    /// An event without `time` cannot be placed in event time.
    Untimed {
        /// The event.
        event_id: String,
    },
}

/// A value-carrying fact of an event: a metric sample, or the event itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fact<'a> {
    pub(crate) time: i64,
    pub(crate) metric: Option<&'a str>,
    pub(crate) value: Option<f64>,
}

/// What the engine knows of one incoming event while routing it.
pub(crate) struct Incoming<'a> {
    pub(crate) event: &'a Event,
    pub(crate) asset_type: Option<&'a str>,
}

impl Matcher {
    pub(crate) fn matches(&self, event: &Event, fact: &Fact<'_>) -> bool {
        self.types.as_ref().is_none_or(|p| p.matches(event.ty.as_str()))
            && self.metric.as_deref().is_none_or(|m| fact.metric == Some(m))
            && self.value.is_none_or(|(op, threshold)| fact.value.is_some_and(|v| op.holds(v, threshold)))
    }
}

/// The facts of an event: one per reading of a batch, one per metric event, else one
/// without metric (with `battery_pct` as value for `battery_low`).
fn facts(event: &Event, time: i64) -> Facts<'_> {
    match event.payload() {
        Some(Payload::MetricRecorded(m)) => {
            Facts::One([Fact { time, metric: Some(&m.metric_type), value: Some(m.value) }])
        }
        Some(Payload::MetricBatchIngested(batch)) => Facts::Many(
            batch
                .readings
                .iter()
                .map(|r| Fact { time: r.time.as_nanos(), metric: Some(&r.metric_type), value: Some(r.value) })
                .collect(),
        ),
        Some(Payload::BatteryLow(b)) => Facts::One([Fact { time, metric: None, value: Some(b.battery_pct) }]),
        _ => Facts::One([Fact { time, metric: None, value: None }]),
    }
}

/// The facts of one event: almost always one (kept inline: no allocation per event).
enum Facts<'a> {
    One([Fact<'a>; 1]),
    Many(Vec<Fact<'a>>),
}

impl<'a> std::ops::Deref for Facts<'a> {
    type Target = [Fact<'a>];

    fn deref(&self) -> &[Fact<'a>] {
        match self {
            Facts::One(one) => one,
            Facts::Many(many) => many,
        }
    }
}

/// Writes the key bytes of `incoming` for `group_by` into `out`; false when the event has no
/// value for a part (no asset, no location...) and so belongs to no group of the rule.
pub(crate) fn key_bytes(
    group_by: &[GroupBy],
    resolution: Option<h3o::Resolution>,
    incoming: &Incoming<'_>,
    fact: &Fact<'_>,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    for part in group_by {
        let text = match part {
            GroupBy::Asset => incoming.event.asset_id(),
            GroupBy::AssetType => Some(incoming.asset_type.unwrap_or("unknown")),
            GroupBy::Metric => Some(fact.metric.unwrap_or(incoming.event.ty.as_str())),
            GroupBy::Cell => {
                let Some(resolution) = resolution else {
                    return false;
                };
                let cell =
                    incoming.event.ext.h3cell.or_else(|| incoming.event.location().and_then(|l| l.cell(resolution)));
                let Some(cell) =
                    cell.and_then(|c| if c.resolution() >= resolution { c.parent(resolution) } else { None })
                else {
                    return false;
                };
                out.push(b'c');
                out.extend_from_slice(&u64::from(cell).to_le_bytes());
                continue;
            }
        };
        let Some(text) = text else { return false };
        out.push(match part {
            GroupBy::Asset => b'a',
            GroupBy::AssetType => b't',
            _ => b'm',
        });
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    true
}

/// Decodes key bytes written by [`key_bytes`].
pub(crate) fn decode_key(bytes: &[u8]) -> Key {
    let mut parts = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let tag = bytes[at];
        at += 1;
        if tag == b'c' {
            let raw = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
            at += 8;
            parts.push(KeyPart::Cell(CellIndex::try_from(raw).expect("key cells are valid")));
            continue;
        }
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        at += 4;
        let text = String::from_utf8_lossy(&bytes[at..at + len]).into_owned();
        at += len;
        parts.push(match tag {
            b'a' => KeyPart::Asset(text),
            b't' => KeyPart::AssetType(text),
            _ => KeyPart::Metric(text),
        });
    }
    Key(parts)
}

/// Keys interned to slots, with their state; slots are reused after a key is purged.
#[derive(Debug)]
pub(crate) struct KeyTable<S> {
    index: FxHashMap<Box<[u8]>, u32>,
    pub(crate) slots: Vec<Option<(Box<[u8]>, S)>>,
    free: Vec<u32>,
}

impl<S> Default for KeyTable<S> {
    fn default() -> Self {
        KeyTable { index: FxHashMap::default(), slots: Vec::new(), free: Vec::new() }
    }
}

impl<S> KeyTable<S> {
    pub(crate) fn slot(&mut self, key: &[u8], new: impl FnOnce() -> S) -> u32 {
        if let Some(&slot) = self.index.get(key) {
            return slot;
        }
        let boxed: Box<[u8]> = key.into();
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some((boxed.clone(), new()));
                slot
            }
            None => {
                self.slots.push(Some((boxed.clone(), new())));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(boxed, slot);
        slot
    }

    pub(crate) fn get_mut(&mut self, slot: u32) -> Option<&mut S> {
        self.slots.get_mut(slot as usize).and_then(|s| s.as_mut()).map(|(_, state)| state)
    }

    pub(crate) fn key(&self, slot: u32) -> Option<&[u8]> {
        self.slots.get(slot as usize).and_then(|s| s.as_ref()).map(|(key, _)| &**key)
    }

    pub(crate) fn remove(&mut self, slot: u32) {
        if let Some((key, _)) = self.slots.get_mut(slot as usize).and_then(Option::take) {
            self.index.remove(&key);
            self.free.push(slot);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }
}

enum Op {
    Window(window::WindowOp),
    Pattern(pattern::PatternOp),
}

/// (op index, key bytes, step mask (bit 31: negation), value): what one pattern rule needs
/// of a buffered event.
pub(crate) type Hit = (usize, Box<[u8]>, u32, Option<f64>);

/// An event waiting for the watermark before pattern rules see it.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) time: i64,
    arrival: u64,
    pub(crate) event_id: Arc<str>,
    pub(crate) correlation: Option<Arc<str>>,
    /// One hit per interested pattern rule.
    pub(crate) hits: Vec<Hit>,
}

/// The CEP engine. See the module documentation.
pub struct Engine {
    config: EngineConfig,
    ops: Vec<Op>,
    max_time: Option<i64>,
    watermark: Option<i64>,
    asset_types: FxHashMap<Box<str>, Box<str>>,
    pending: VecDeque<Pending>,
    arrivals: u64,
    late_count: u64,
    key_buf: Vec<u8>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("rules", &self.ops.len())
            .field("watermark", &self.watermark.map(Timestamp::from_nanos))
            .field("state_size", &self.state_size())
            .finish()
    }
}

impl Engine {
    /// An engine running `rules`.
    pub fn new(rules: Vec<Rule>, config: EngineConfig) -> Self {
        let ops = rules
            .into_iter()
            .map(|rule| {
                let rule = Arc::new(rule);
                match &rule.kind {
                    RuleKind::Window(_) => Op::Window(window::WindowOp::new(Arc::clone(&rule))),
                    RuleKind::Pattern(_) => {
                        Op::Pattern(pattern::PatternOp::new(Arc::clone(&rule), config.max_runs_per_key))
                    }
                }
            })
            .collect();
        Engine {
            config,
            ops,
            max_time: None,
            watermark: None,
            asset_types: FxHashMap::default(),
            pending: VecDeque::new(),
            arrivals: 0,
            late_count: 0,
            key_buf: Vec::with_capacity(64),
        }
    }

    /// Tells the engine an asset's type (also learnt from `asset.created` events), for rules
    /// grouped by asset type.
    pub fn register_asset(&mut self, asset_id: &str, asset_type: &str) {
        self.asset_types.insert(asset_id.into(), asset_type.into());
    }

    /// The current watermark.
    pub fn watermark(&self) -> Option<Timestamp> {
        self.watermark.map(Timestamp::from_nanos)
    }

    /// Events reported late so far (one per event and rule).
    pub fn late_count(&self) -> u64 {
        self.late_count
    }

    /// Open windows + partial matches + buffered events + interned keys: zero when idle.
    pub fn state_size(&self) -> usize {
        self.pending.len()
            + self
                .ops
                .iter()
                .map(|op| match op {
                    Op::Window(w) => w.state_size(),
                    Op::Pattern(p) => p.state_size(),
                })
                .sum::<usize>()
    }

    /// Feeds one event; appends what it causes to `out`.
    pub fn process(&mut self, event: &Event, out: &mut Vec<Output>) {
        let Some(time) = event.time else {
            out.push(Output::Untimed { event_id: event.id.to_string() });
            return;
        };
        let time = time.as_nanos();
        if let Some(Payload::AssetCreated(created)) = event.payload() {
            self.register_asset(&created.asset_id, &created.asset_type);
        }
        let asset_type = event.asset_id().and_then(|id| self.asset_types.get(id)).map(|t| &**t);
        let incoming = Incoming { event, asset_type };
        let facts = facts(event, time);
        let watermark = self.watermark;
        // One buffered entry per fact (a batch's readings each wait at their own time).
        let mut pending: Vec<Option<Pending>> = Vec::new();
        for (op_index, op) in self.ops.iter_mut().enumerate() {
            match op {
                Op::Window(op) => {
                    let late = op.on_event(&incoming, &facts, watermark, &mut self.key_buf, out);
                    self.late_count += late;
                }
                Op::Pattern(op) => {
                    for (fact_index, fact) in facts.iter().enumerate() {
                        let Some((mask, key)) = op.classify(&incoming, fact, &mut self.key_buf) else {
                            continue;
                        };
                        if watermark.is_some_and(|wm| fact.time < wm) {
                            self.late_count += 1;
                            out.push(Output::Late(LateEvent {
                                rule_id: Arc::clone(op.rule_id()),
                                event_id: event.id.to_string(),
                                time: Timestamp::from_nanos(fact.time),
                                watermark: Timestamp::from_nanos(watermark.unwrap_or(i64::MIN)),
                            }));
                            continue;
                        }
                        if pending.len() < facts.len() {
                            pending.resize_with(facts.len(), || None);
                        }
                        let entry = pending[fact_index].get_or_insert_with(|| Pending {
                            time: fact.time,
                            arrival: 0,
                            event_id: event.id.as_str().into(),
                            correlation: event.ext.rare.correlationid.as_deref().map(Into::into),
                            hits: Vec::new(),
                        });
                        entry.hits.push((op_index, key, mask, fact.value));
                    }
                }
            }
        }
        for mut entry in pending.into_iter().flatten() {
            self.arrivals += 1;
            entry.arrival = self.arrivals;
            let at = match self.pending.back() {
                Some(last) if (last.time, last.arrival) > (entry.time, entry.arrival) => {
                    self.pending.partition_point(|p| (p.time, p.arrival) <= (entry.time, entry.arrival))
                }
                _ => self.pending.len(),
            };
            self.pending.insert(at, entry);
        }
        let newest = facts.iter().map(|f| f.time).max().unwrap_or(time);
        if self.max_time.is_none_or(|max| newest > max) {
            self.max_time = Some(newest);
            let bound = i64::try_from(self.config.max_out_of_orderness.as_nanos()).unwrap_or(i64::MAX);
            let candidate = newest.saturating_sub(bound);
            if self.watermark.is_none_or(|wm| candidate > wm) {
                self.advance_to(candidate, out);
            }
        }
    }

    /// Moves the watermark to `to` (never backwards): windows close, buffered events reach
    /// pattern rules, negations whose deadline passed fire.
    pub fn advance_watermark(&mut self, to: Timestamp, out: &mut Vec<Output>) {
        if self.watermark.is_none_or(|wm| to.as_nanos() > wm) {
            self.advance_to(to.as_nanos(), out);
        }
    }

    fn advance_to(&mut self, watermark: i64, out: &mut Vec<Output>) {
        self.watermark = Some(watermark);
        while self.pending.front().is_some_and(|p| p.time <= watermark) {
            let entry = self.pending.pop_front().expect("checked non-empty");
            for op in &mut self.ops {
                if let Op::Pattern(op) = op {
                    op.fire_deadlines(entry.time, out);
                }
            }
            for (op_index, key, mask, value) in &entry.hits {
                if let Op::Pattern(op) = &mut self.ops[*op_index] {
                    op.on_event(&entry, key, *mask, *value, out);
                }
            }
        }
        for op in &mut self.ops {
            match op {
                Op::Window(op) => op.on_watermark(watermark, out),
                Op::Pattern(op) => op.fire_deadlines(watermark, out),
            }
        }
    }
}

#[cfg(test)]
mod tests;
