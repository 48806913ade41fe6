//! The pure logic of one asset: `decide(&state, command) -> Result<Vec<Event>, Rejection>` and
//! `apply(&mut state, &event)`. No actors, no I/O: the actor only moves messages, persists
//! and publishes.
//!
//! Observations from the outside (a sensor's `metric.recorded`, an inventory system's
//! `asset.created`) arrive as [`AssetCommand::Observe`]: `decide` checks them against the
//! asset's lifecycle and returns the event to store plus the events it implies
//! (`asset.online` when an offline asset reports, `alert.triggered` when a threshold is
//! crossed, `asset.battery_low`). `apply` folds any stored event into the state and holds no
//! business rules.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use citytwin_core::event::{
    AlertTriggered, AssetOffline, AssetOnline, BatteryLow, EcoString, Event, EventKind, Location, MaintenancePhase,
    Payload, Severity, Timestamp, Unit,
};
use serde::{Deserialize, Serialize};

/// Where an asset is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Lifecycle {
    /// No `asset.created` yet: the twin does not know the asset.
    #[default]
    Unregistered,
    /// Registered, not yet in service.
    Created,
    /// In service, not yet heard from.
    Commissioned,
    /// Reporting.
    Online,
    /// Silent (announced, or no heartbeat within its interval).
    Offline,
    /// Under maintenance.
    Maintenance,
    /// Out of service for good.
    Decommissioned,
    /// Removed from the inventory (history stays in the log).
    Deleted,
}

impl Lifecycle {
    /// Whether the asset is in service (readings accepted).
    pub const fn in_service(self) -> bool {
        matches!(self, Lifecycle::Commissioned | Lifecycle::Online | Lifecycle::Offline | Lifecycle::Maintenance)
    }

    /// The name used in read models and APIs.
    pub const fn name(self) -> &'static str {
        match self {
            Lifecycle::Unregistered => "unregistered",
            Lifecycle::Created => "created",
            Lifecycle::Commissioned => "commissioned",
            Lifecycle::Online => "online",
            Lifecycle::Offline => "offline",
            Lifecycle::Maintenance => "maintenance",
            Lifecycle::Decommissioned => "decommissioned",
            Lifecycle::Deleted => "deleted",
        }
    }
}

/// Last value and running statistics of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricStats {
    /// Latest value (by event time).
    pub last: f64,
    /// Its time.
    pub last_time: Timestamp,
    /// Its unit.
    pub unit: Unit,
    /// Readings so far.
    pub count: u64,
    /// Sum of readings (for the mean).
    pub sum: f64,
    /// Smallest reading.
    pub min: f64,
    /// Largest reading.
    pub max: f64,
}

impl MetricStats {
    /// Mean of all readings.
    pub fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }
}

/// A threshold on one metric; crossing it raises an alert once, and it re-arms when the value
/// returns within bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    /// Alert when the value is above this.
    pub above: Option<f64>,
    /// Alert when the value is below this.
    pub below: Option<f64>,
    /// Severity of the alert.
    pub severity: Severity,
}

impl Threshold {
    fn breached_by(&self, value: f64) -> Option<f64> {
        match (self.above, self.below) {
            (Some(above), _) if value > above => Some(above),
            (_, Some(below)) if value < below => Some(below),
            _ => None,
        }
    }
}

/// Battery level below which `asset.battery_low` is derived from a `battery` reading: the same
/// limit as the shipped `battery_low` rule (`scenarios/rules/battery-low.toml`), so a derived
/// event reaches the rule.
pub const BATTERY_LOW_PCT: f64 = 15.0;

/// An asset's state, rebuilt by folding its events with [`apply`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AssetState {
    /// The asset's id.
    pub asset_id: String,
    /// Its type (`air_quality_sensor`...).
    pub asset_type: String,
    /// Its organization.
    pub organization: Option<EcoString>,
    /// Lifecycle.
    pub status: Lifecycle,
    /// Where it is (moving assets: last reported).
    pub location: Option<Location>,
    /// Expected seconds between readings.
    pub reporting_interval_s: Option<u32>,
    /// Last time anything was heard from it.
    pub last_seen: Option<Timestamp>,
    /// Per metric.
    pub metrics: BTreeMap<String, MetricStats>,
    /// Thresholds per metric, and whether each is currently breached.
    pub thresholds: BTreeMap<String, (Threshold, bool)>,
    /// Latest battery level.
    pub battery_pct: Option<f64>,
    /// Whether the battery is reported low (re-armed above the limit).
    pub battery_low: bool,
    /// Firmware version.
    pub firmware: Option<String>,
    /// Number of events applied (the stream sequence).
    pub version: u64,
    /// The identities of the latest events applied, to recognise a redelivered one.
    #[serde(default)]
    pub recent: RecentIds,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, continued from `hash` over `bytes`.
fn fnv(hash: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(hash, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Hashes of the CloudEvents identities (`source` + `id`) of an asset's latest
/// [`RecentIds::CAPACITY`] events: an observation seen among them is a duplicate (a broker
/// redelivering after a lost acknowledgement, a client retrying) and is accepted without
/// being stored again. 128 bytes per live asset; rebuilt by replay like the rest of the state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RecentIds {
    hashes: Vec<u64>,
    next: usize,
}

impl RecentIds {
    /// How many identities are remembered.
    pub const CAPACITY: usize = 16;

    /// A stable hash of an event's identity (FNV-1a over source, a separator, id).
    ///
    /// FNV runs byte by byte, one multiply after another, and a source is often longer than
    /// the id (`/simulator/day-at-100k-assets`) and the same for every event of a feed: the
    /// hash after a source and the separator is kept per thread for the latest source, so
    /// each event hashes only its id. The result is the same either way.
    pub fn identity(event: &Event) -> u64 {
        thread_local! {
            static AFTER_SOURCE: std::cell::RefCell<(EcoString, u64)> =
                std::cell::RefCell::new((EcoString::new(), fnv(FNV_OFFSET, [0xff])));
        }
        let after_source = AFTER_SOURCE.with_borrow_mut(|(source, hash)| {
            if *source != event.source {
                *hash = fnv(fnv(FNV_OFFSET, event.source.bytes()), [0xff]);
                source.clone_from(&event.source);
            }
            *hash
        });
        fnv(after_source, event.id.bytes())
    }

    /// Whether `event`'s identity is among the latest.
    pub fn contains(&self, event: &Event) -> bool {
        let identity = Self::identity(event);
        self.hashes.contains(&identity)
    }

    fn push(&mut self, event: &Event) {
        let identity = Self::identity(event);
        if self.hashes.len() < Self::CAPACITY {
            self.hashes.push(identity);
        } else {
            self.hashes[self.next] = identity;
        }
        self.next = (self.next + 1) % Self::CAPACITY;
    }
}

/// What an asset can be asked to do.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant, reason = "readings, nearly every command, are kept inline: see `Observe`")]
pub enum AssetCommand {
    /// Accept an observation about this asset (any event whose asset id is this asset's).
    ///
    /// Inline, not boxed: a reading is allocated on the ingest side and would be freed by
    /// the asset on another thread (a cross-thread free per reading, about 7 % of a run's
    /// CPU), while moving it costs a copy of a few cache lines that are read anyway.
    Observe(Event),
    /// Set (or clear, with `None`) a threshold on a metric.
    SetThreshold {
        /// The metric.
        metric: String,
        /// The threshold.
        threshold: Option<Threshold>,
        /// Event id and time for the resulting configuration event.
        event_id: String,
        /// When.
        time: Timestamp,
    },
    /// The heartbeat deadline passed at `now`: go offline if nothing was heard in time.
    CheckHeartbeat {
        /// Current time (event time in simulation, wall time live).
        now: Timestamp,
    },
}

/// Why a command was refused. The actor replies with it; it never stops the actor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The asset has no `asset.created` event.
    #[error("unknown asset {0:?}: it was never created")]
    UnknownAsset(String),
    /// The event does not fit the lifecycle.
    #[error("asset {asset:?} is {from}: {event} is not allowed")]
    InvalidTransition {
        /// The asset.
        asset: String,
        /// Its status.
        from: &'static str,
        /// The refused event type.
        event: String,
    },
    /// The event names another asset.
    #[error("event is about asset {found:?}, not {expected:?}")]
    WrongAsset {
        /// This actor's asset.
        expected: String,
        /// The event's.
        found: String,
    },
    /// The event has no time; the twin works in event time.
    #[error("event {0:?} has no time")]
    Untimed(String),
    /// The asset already exists.
    #[error("asset {0:?} already exists")]
    AlreadyExists(String),
    /// The event names another organization than the asset's.
    #[error("asset {asset:?} belongs to organization {owner:?}, not {found:?}")]
    WrongOrganization {
        /// The asset.
        asset: String,
        /// Its organization.
        owner: String,
        /// The event's.
        found: String,
    },
}

fn transition_error(state: &AssetState, event: &Event) -> Rejection {
    Rejection::InvalidTransition {
        asset: state.asset_id.clone(),
        from: state.status.name(),
        event: event.ty.to_string(),
    }
}

fn derived(cause: &Event, suffix: &str, payload: impl Into<Payload>, time: Timestamp) -> Event {
    let mut event = Event::new(format!("{}:{suffix}", cause.id), "/twin/assets", payload).with_time(time);
    // Set only when the cause has them: a write to a rare attribute makes room for them all.
    if let Some(subject) = &cause.rare.subject {
        event.rare.subject = Some(subject.clone());
    }
    event.ext.organization.clone_from(&cause.ext.organization);
    if let Some(region) = &cause.ext.rare.region {
        event.ext.rare.region = Some(region.clone());
    }
    event.ext.h3cell = cause.ext.h3cell;
    event.ext.provenance = cause.ext.provenance;
    event.ext.rare.causationid = Some(cause.id.to_string());
    event.ext.rare.correlationid = cause.ext.rare.correlationid.clone().or_else(|| Some(cause.id.to_string()));
    event
}

/// Decides what a command means for the asset: the events to append, or why not.
///
/// # Errors
/// A [`Rejection`] when the command does not fit the asset's state.
pub fn decide(state: &AssetState, command: &AssetCommand) -> Result<Vec<Event>, Rejection> {
    let decision = decide_lean(state, command)?;
    let mut events = Vec::with_capacity(decision.derived.len() + 1);
    if decision.keeps_event
        && let AssetCommand::Observe(event) = command
    {
        events.push(event.clone());
    }
    events.extend(decision.derived);
    Ok(events)
}

/// What [`decide`] returns, without a copy of an observed event: whether the observation
/// itself is stored, and the events derived from the command (they follow it).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The observed event is stored (first).
    pub keeps_event: bool,
    /// Events the command causes (`asset.online`, threshold alerts, configuration changes...).
    pub derived: Vec<Event>,
}

impl Decision {
    /// Appends the events to store to `events`, moving the observed event out of `command`:
    /// the same list as [`decide`] returns.
    pub fn append_events(self, command: AssetCommand, events: &mut Vec<Event>) {
        self.for_each_event(command, |event| events.push(event));
    }

    /// Hands each event to store to `each`, in order, moving the observed event out of
    /// `command` (for a caller that keeps them in a list of its own kind).
    pub fn for_each_event(self, command: AssetCommand, mut each: impl FnMut(Event)) {
        if self.keeps_event
            && let AssetCommand::Observe(event) = command
        {
            each(event);
        }
        self.derived.into_iter().for_each(each);
    }
}

/// [`decide`] for the high-throughput path: the observed event is moved, not copied (see
/// [`Decision::append_events`]).
///
/// # Errors
/// A [`Rejection`] when the command does not fit the asset's state.
pub fn decide_lean(state: &AssetState, command: &AssetCommand) -> Result<Decision, Rejection> {
    let derived = |events| Ok(Decision { keeps_event: false, derived: events });
    match command {
        // Seen already: accepted, nothing new to store (at-least-once delivery made idempotent).
        AssetCommand::Observe(event) if state.recent.contains(event) => {
            Ok(Decision { keeps_event: false, derived: Vec::new() })
        }
        AssetCommand::Observe(event) => Ok(Decision { keeps_event: true, derived: observe(state, event)? }),
        AssetCommand::SetThreshold { metric, threshold, event_id, time } => {
            if state.status == Lifecycle::Unregistered {
                return Err(Rejection::UnknownAsset(state.asset_id.clone()));
            }
            let payload = citytwin_core::event::ConfigurationChanged {
                user_id: "twin".into(),
                key: format!("assets.{}.thresholds.{metric}", state.asset_id),
                old_value: state.thresholds.get(metric).map(|(t, _)| threshold_text(t)),
                new_value: threshold.as_ref().map_or_else(|| "none".to_owned(), threshold_text),
            };
            derived(vec![
                Event::new(event_id.clone(), "/twin/assets", payload)
                    .with_time(*time)
                    .with_subject(state.asset_id.clone()),
            ])
        }
        AssetCommand::CheckHeartbeat { now } => {
            let (Some(interval), Some(last_seen)) = (state.reporting_interval_s, state.last_seen) else {
                return derived(Vec::new());
            };
            let grace = heartbeat_grace(interval);
            if state.status != Lifecycle::Online || now.as_nanos() - last_seen.as_nanos() < grace.as_nanos() as i64 {
                return derived(Vec::new());
            }
            let payload = AssetOffline {
                asset_id: state.asset_id.clone(),
                reason: Some("heartbeat_timeout".into()),
                last_seen: Some(last_seen),
            };
            let mut event =
                Event::new(format!("{}:offline:{}", state.asset_id, now.as_nanos()), "/twin/assets", payload)
                    .with_time(*now)
                    .with_subject(state.asset_id.clone());
            event.ext.organization.clone_from(&state.organization);
            derived(vec![event])
        }
    }
}

/// How long after the last reading an asset with `interval_s` counts as offline: two
/// intervals (one missed reading is tolerated).
pub fn heartbeat_grace(interval_s: u32) -> Duration {
    Duration::from_secs(u64::from(interval_s) * 2)
}

fn threshold_text(threshold: &Threshold) -> String {
    let above = threshold.above.map_or_else(String::new, |v| format!(">{v}"));
    let below = threshold.below.map_or_else(String::new, |v| format!("<{v}"));
    format!("{above}{below} {}", threshold.severity)
}

/// The events an observation causes (the observation itself is not among them).
fn observe(state: &AssetState, event: &Event) -> Result<Vec<Event>, Rejection> {
    let Some(time) = event.time else {
        return Err(Rejection::Untimed(event.id.to_string()));
    };
    if let Some(found) = event.asset_id()
        && found != state.asset_id
    {
        return Err(Rejection::WrongAsset { expected: state.asset_id.clone(), found: found.to_owned() });
    }
    if let (Some(owner), Some(found)) = (&state.organization, &event.ext.organization)
        && owner != found
    {
        return Err(Rejection::WrongOrganization {
            asset: state.asset_id.clone(),
            owner: owner.to_string(),
            found: found.to_string(),
        });
    }
    use Lifecycle as L;
    let status = state.status;
    let Some(kind) = event.kind() else {
        // Unknown types about a known asset are carried through.
        return if status == L::Unregistered {
            Err(Rejection::UnknownAsset(state.asset_id.clone()))
        } else {
            Ok(Vec::new())
        };
    };
    let allowed = match kind {
        EventKind::AssetCreated => {
            if status != L::Unregistered {
                return Err(Rejection::AlreadyExists(state.asset_id.clone()));
            }
            true
        }
        EventKind::AssetCommissioned => status == L::Created,
        EventKind::AssetOnline => matches!(status, L::Commissioned | L::Offline | L::Online),
        EventKind::AssetOffline => matches!(status, L::Online | L::Commissioned),
        EventKind::AssetMaintenance => match event.payload() {
            Some(Payload::AssetMaintenance(m)) if m.phase == MaintenancePhase::Started => {
                matches!(status, L::Commissioned | L::Online | L::Offline)
            }
            _ => status == L::Maintenance,
        },
        EventKind::AssetDecommissioned => !matches!(status, L::Unregistered | L::Decommissioned | L::Deleted),
        EventKind::AssetDeleted => matches!(status, L::Created | L::Decommissioned),
        _ => status.in_service(),
    };
    if !allowed {
        return Err(if status == L::Unregistered {
            Rejection::UnknownAsset(state.asset_id.clone())
        } else {
            transition_error(state, event)
        });
    }
    let mut out = Vec::new();
    // A reading from a silent asset brings it online.
    let is_reading = matches!(kind, EventKind::MetricRecorded | EventKind::MetricBatchIngested | EventKind::BatteryLow);
    if is_reading && matches!(status, L::Commissioned | L::Offline) {
        let location = event.location().or(state.location);
        out.push(derived(event, "online", AssetOnline { asset_id: state.asset_id.clone(), location }, time));
    }
    if let Some(Payload::MetricRecorded(m)) = event.payload() {
        if let Some((threshold, breached)) = state.thresholds.get(m.metric_type.as_str()) {
            match threshold.breached_by(m.value) {
                Some(limit) if !breached => {
                    let alert = AlertTriggered {
                        alert_id: format!("{}:threshold:{}", event.id, m.metric_type),
                        rule_id: format!("threshold:{}", m.metric_type),
                        severity: threshold.severity,
                        asset_id: Some(state.asset_id.clone()),
                        cell: event.ext.h3cell,
                        threshold: Some(limit),
                        actual_value: Some(m.value),
                        values: BTreeMap::from([(m.metric_type.to_string(), m.value)]),
                        actions: Vec::new(),
                        message: Some(format!("{} {} crossed {limit}", m.metric_type, m.value)),
                    };
                    out.push(derived(event, &format!("threshold:{}", m.metric_type), alert, time));
                }
                _ => {}
            }
        }
        if m.metric_type == "battery" && m.value < BATTERY_LOW_PCT && !state.battery_low {
            let low = BatteryLow {
                asset_id: state.asset_id.clone(),
                battery_pct: m.value,
                threshold_pct: Some(BATTERY_LOW_PCT),
            };
            out.push(derived(event, "battery_low", low, time));
        }
    }
    Ok(out)
}

/// Folds one stored event into the state. Holds no business rules: every event that reached
/// the log is applied as it is.
pub fn apply(state: &mut AssetState, event: &Event) {
    state.version += 1;
    state.recent.push(event);
    if let Some(time) = event.time
        && state.last_seen.is_none_or(|seen| time > seen)
        && !matches!(
            event.kind(),
            Some(EventKind::AssetOffline | EventKind::ConfigurationChanged | EventKind::AlertTriggered)
        )
    {
        state.last_seen = Some(time);
    }
    if state.organization.is_none() {
        state.organization.clone_from(&event.ext.organization);
    }
    let Some(payload) = event.payload() else {
        return;
    };
    match payload {
        Payload::AssetCreated(created) => {
            state.asset_id.clone_from(&created.asset_id);
            state.asset_type.clone_from(&created.asset_type);
            state.location = created.location;
            state.reporting_interval_s = created.reporting_interval_s;
            state.status = Lifecycle::Created;
        }
        Payload::AssetCommissioned(commissioned) => {
            state.status = Lifecycle::Commissioned;
            if commissioned.firmware_version.is_some() {
                state.firmware.clone_from(&commissioned.firmware_version);
            }
        }
        Payload::AssetOnline(online) => {
            state.status = Lifecycle::Online;
            state.location = online.location.or(state.location);
        }
        Payload::AssetOffline(_) => state.status = Lifecycle::Offline,
        Payload::AssetMaintenance(m) => {
            state.status = match m.phase {
                MaintenancePhase::Started => Lifecycle::Maintenance,
                MaintenancePhase::Completed => Lifecycle::Offline,
            }
        }
        Payload::AssetDecommissioned(_) => state.status = Lifecycle::Decommissioned,
        Payload::AssetDeleted(_) => state.status = Lifecycle::Deleted,
        Payload::FirmwareUpdated(f) if f.status == citytwin_core::event::FirmwareStatus::Succeeded => {
            state.firmware = Some(f.to_version.clone());
        }
        Payload::BatteryLow(b) => {
            state.battery_pct = Some(b.battery_pct);
            state.battery_low = true;
        }
        Payload::MetricRecorded(m) => {
            let time = event.time.unwrap_or_default();
            record(state, &m.metric_type, m.value, &m.unit, time);
            if m.location.is_some() {
                state.location = m.location;
            }
        }
        Payload::MetricBatchIngested(batch) => {
            for reading in &batch.readings {
                record(state, &reading.metric_type, reading.value, &reading.unit, reading.time);
            }
            if batch.location.is_some() {
                state.location = batch.location;
            }
        }
        Payload::AlertTriggered(alert) => {
            if let Some(metric) = alert.rule_id.strip_prefix("threshold:")
                && let Some((_, breached)) = state.thresholds.get_mut(metric)
            {
                *breached = true;
            }
        }
        Payload::ConfigurationChanged(change) => apply_threshold_change(state, &change.key, &change.new_value),
        _ => {}
    }
}

fn record(state: &mut AssetState, metric: &str, value: f64, unit: &Unit, time: Timestamp) {
    // The hot path (a metric seen before, in the same unit): one lookup, no allocation.
    match state.metrics.get_mut(metric) {
        Some(stats) => {
            if time >= stats.last_time {
                stats.last = value;
                stats.last_time = time;
                if stats.unit != *unit {
                    stats.unit = unit.clone();
                }
            }
            stats.count += 1;
            stats.sum += value;
            stats.min = stats.min.min(value);
            stats.max = stats.max.max(value);
        }
        None => {
            let first = MetricStats {
                last: value,
                last_time: time,
                unit: unit.clone(),
                count: 1,
                sum: value,
                min: value,
                max: value,
            };
            state.metrics.insert(metric.to_owned(), first);
        }
    }
    if let Some((threshold, breached)) = state.thresholds.get_mut(metric)
        && threshold.breached_by(value).is_none()
    {
        *breached = false;
    }
    if metric == "battery" {
        state.battery_pct = Some(value);
        if value >= BATTERY_LOW_PCT {
            state.battery_low = false;
        }
    }
}

/// Thresholds travel as `configuration_changed` events with key
/// `assets.<id>.thresholds.<metric>` and value `>55 critical`, `<5 warning` or `none`.
fn apply_threshold_change(state: &mut AssetState, key: &str, value: &str) {
    let Some(metric) = key.rsplit_once(".thresholds.").map(|(_, m)| m) else {
        return;
    };
    if value == "none" {
        state.thresholds.remove(metric);
        return;
    }
    let Some((bounds, severity)) = value.rsplit_once(' ') else {
        return;
    };
    let severity = match severity {
        "info" => Severity::Info,
        "major" => Severity::Major,
        "critical" => Severity::Critical,
        _ => Severity::Warning,
    };
    let mut threshold = Threshold { above: None, below: None, severity };
    // ">55<5": each bound starts with its operator.
    let mut rest = bounds;
    while !rest.is_empty() {
        let op = rest.as_bytes()[0];
        let end = rest[1..].find(['>', '<']).map_or(rest.len(), |i| i + 1);
        if let Ok(v) = rest[1..end].parse::<f64>() {
            if op == b'>' { threshold.above = Some(v) } else { threshold.below = Some(v) }
        }
        rest = &rest[end..];
    }
    state.thresholds.insert(metric.to_owned(), (threshold, false));
}

impl fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests;
