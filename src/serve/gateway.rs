//! What every protocol shares: authorization, rate limits, ingest with precise refusals, and
//! the queries, on top of the embedded twin. gRPC, HTTP, WebSocket, MQTT and AMQP only
//! translate their messages to and from these calls.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use citytwin_core::cep::{KeyPart, WindowResult};
use citytwin_core::event::{Event, EventKind, Location, Payload, Timestamp, TypePattern, ValidationError, cell_within};
use citytwin_core::log::ReplayFilter;
use citytwin_twin::asset::actor::{CommandError, asset_stream, state_at};
use citytwin_twin::asset::logic::{AssetState, Rejection};
use citytwin_twin::bus::{Committed, Filter, Subscription, within_bbox};
use citytwin_twin::cell::{CellConfig, cell_aggregates_at};
use citytwin_twin::city::{IngestError, Twin};
use citytwin_twin::deadletter::{DeadLetter, DeadLetterReason, dead_letter_entry, dead_letters, raw_dead_letter_entry};
use citytwin_twin::read::{AssetSummary, LiveReadModels, OpenAlert};
use citytwin_twin::rollup::Rollup;
use governor::NotUntil;
use governor::clock::{Clock, DefaultClock, QuantaInstant};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use h3o::{CellIndex, Resolution};

use super::auth::Principal;
use super::config::Limits;

/// One item of an ingest request, after the protocol decoded it.
#[derive(Debug)]
pub(crate) enum Input {
    /// An event (one that breaks the rules of events is refused by the twin, which
    /// dead-letters it).
    Event(Event),
    /// Not an event: why, and the raw bytes for the dead-letter queue.
    Bad {
        /// The event id, when one could be read.
        id: Option<String>,
        /// Why it is not an event.
        error: citytwin_core::Error,
        /// The input as received.
        raw: Vec<u8>,
        /// The protobuf message `raw` holds, when the protocol carries several
        /// (`citytwin.v1.Reading`); the dead letter's origin names it after the protocol.
        wire_type: Option<&'static str>,
    },
}

/// Why one input was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RefusalKind {
    Invalid,
    Refused,
    Unauthorized,
    Overloaded,
    Unavailable,
}

/// One refused input, precisely.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct Refusal {
    /// Its index in the request.
    pub(crate) index: usize,
    /// Its event id, when it had one.
    pub(crate) event_id: Option<String>,
    pub(crate) reason: RefusalKind,
    pub(crate) message: String,
    /// For invalid events: (attribute, rule) pairs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) violations: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) retry_after_ms: Option<u64>,
}

/// The answer to an ingest request.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub(crate) struct Outcome {
    /// Inputs durably appended.
    pub(crate) accepted: u64,
    /// The others.
    pub(crate) refusals: Vec<Refusal>,
}

/// A whole request refused before any of it was looked at.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("rate limit exceeded for organization {org:?}; retry after {retry_after:?}")]
    RateLimited { org: Arc<str>, retry_after: Duration },
    #[error("a batch of {size} events exceeds the burst limit of {limit} events per request; split it")]
    TooLarge { size: usize, limit: u32 },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("the twin is unavailable: {0}")]
    Unavailable(String),
}

/// Counters the server adds to the twin's.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) unauthorized: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) invalid_inputs: AtomicU64,
}

/// The server's totals (gRPC `Admin.Stats`, Prometheus `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stats {
    pub(crate) accepted: u64,
    pub(crate) rejected: u64,
    /// Invalid inputs: refused by the gateways' decoders or by the twin's validation.
    pub(crate) invalid: u64,
    pub(crate) shed: u64,
    pub(crate) unauthorized: u64,
    pub(crate) rate_limited: u64,
    pub(crate) log_position: u64,
    pub(crate) actors: citytwin_twin::shard::Occupancy,
}

impl RefusalKind {
    /// The name clients and metrics see.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            RefusalKind::Invalid => "invalid",
            RefusalKind::Refused => "refused",
            RefusalKind::Unauthorized => "unauthorized",
            RefusalKind::Overloaded => "overloaded",
            RefusalKind::Unavailable => "unavailable",
        }
    }
}

/// The shared gateway. Cheap to share through an `Arc`.
#[derive(Debug)]
pub(crate) struct Gateway {
    pub(crate) twin: Twin,
    pub(crate) models: LiveReadModels,
    /// The twin's cell actors' settings (routing resolution, rules), for aggregate queries.
    cells: CellConfig,
    /// Asset → organization, for the cheap checks before the asset actor (which has the last
    /// word: it refuses events naming another organization).
    owners: RwLock<HashMap<String, Arc<str>>>,
    events: DefaultKeyedRateLimiter<Arc<str>>,
    requests: DefaultKeyedRateLimiter<Arc<str>>,
    event_burst: u32,
    pub(crate) counters: Counters,
    /// The city's geometry for viewers, when the twin has one.
    pub(crate) geometry: Option<CityGeometry>,
}

/// Roads and buildings of the city, as the GeoJSON text viewers draw.
#[derive(Debug, Clone)]
pub(crate) struct CityGeometry {
    /// A GeoJSON FeatureCollection.
    pub(crate) geojson: Arc<str>,
    /// The file it came from (its name, for display).
    pub(crate) source: String,
}

impl CityGeometry {
    /// Reads a GeoJSON FeatureCollection file.
    pub(crate) fn load(path: &std::path::Path) -> anyhow::Result<CityGeometry> {
        use anyhow::Context as _;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
        if value["type"] != "FeatureCollection" || !value["features"].is_array() {
            anyhow::bail!("{}: expected a GeoJSON FeatureCollection", path.display());
        }
        let source = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        Ok(CityGeometry { geojson: Arc::from(text), source })
    }
}

/// Per-protocol figures of one ingest request (the `metrics` facade; a no-op without a
/// recorder).
fn record(origin: &str, outcome: &Outcome, elapsed: Duration) {
    let protocol = origin.split(':').next().unwrap_or(origin).to_owned();
    metrics::histogram!("citytwin_gateway_ingest_seconds", "protocol" => protocol.clone()).record(elapsed);
    metrics::counter!("citytwin_gateway_events_total", "protocol" => protocol.clone(), "outcome" => "accepted")
        .increment(outcome.accepted);
    let mut kinds: Vec<RefusalKind> = outcome.refusals.iter().map(|r| r.reason).collect();
    kinds.sort_unstable_by_key(|k| k.as_str());
    for chunk in kinds.chunk_by(|a, b| a == b) {
        metrics::counter!("citytwin_gateway_events_total", "protocol" => protocol.clone(), "outcome" => chunk[0].as_str())
            .increment(chunk.len() as u64);
    }
}

fn quota(per_second: u32, burst: u32) -> Quota {
    let one = NonZeroU32::MIN;
    Quota::per_second(NonZeroU32::new(per_second).unwrap_or(one)).allow_burst(NonZeroU32::new(burst).unwrap_or(one))
}

impl Gateway {
    /// A gateway over a started twin whose read models hold every asset already.
    pub(crate) fn new(twin: Twin, models: LiveReadModels, cells: CellConfig, limits: &Limits) -> Self {
        let owners = models.read(|m| {
            m.assets.iter().filter_map(|(id, a)| Some((id.clone(), Arc::from(a.organization.as_deref()?)))).collect()
        });
        Gateway {
            twin,
            models,
            cells,
            owners: RwLock::new(owners),
            events: RateLimiter::keyed(quota(limits.events_per_second, limits.event_burst)),
            requests: RateLimiter::keyed(quota(limits.requests_per_second, limits.request_burst)),
            event_burst: limits.event_burst,
            counters: Counters::default(),
            geometry: None,
        }
    }

    /// The server's totals as of now.
    pub(crate) async fn stats(&self) -> Stats {
        let counts = self.twin.stats();
        Stats {
            accepted: counts.accepted,
            rejected: counts.rejected,
            invalid: counts.invalid + self.counters.invalid_inputs.load(Ordering::Relaxed),
            shed: counts.shed,
            unauthorized: self.counters.unauthorized.load(Ordering::Relaxed),
            rate_limited: self.counters.rate_limited.load(Ordering::Relaxed),
            log_position: self.twin.log().next_position(),
            actors: self.twin.occupancy().await.unwrap_or_default(),
        }
    }

    /// The commissioning sagas `who` may see: its organization's, or all for an admin.
    pub(crate) async fn sagas(&self, who: &Principal) -> Result<Vec<citytwin_twin::saga::SagaSummary>, RequestError> {
        let log = self.twin.log().clone();
        let mut sagas = blocking(move || citytwin_twin::saga::sagas(&log)).await?;
        sagas.retain(|s| who.admin || s.organization.as_deref().is_some_and(|org| who.may_access(org)));
        Ok(sagas)
    }

    /// Ingests from a trusted producer in this process (the scenario simulator under
    /// `citytwin run --serve`): straight into the twin, no token or rate limit, noting the
    /// owner of each asset created with an organization so that organizations see only
    /// their own assets. Leaves `events` empty, its buffer kept for the caller to refill.
    pub(crate) async fn ingest_local(
        &self,
        events: &mut Vec<Event>,
    ) -> Vec<Result<usize, citytwin_twin::city::IngestError>> {
        let created: Vec<(usize, String, Arc<str>)> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind() == Some(EventKind::AssetCreated))
            .filter_map(|(i, e)| Some((i, e.asset_id()?.to_owned(), Arc::from(e.ext.organization.as_deref()?))))
            .collect();
        let results = self.twin.ingest_batch(&mut *events).await;
        if !created.is_empty()
            && let Ok(mut owners) = self.owners.write()
        {
            for (index, asset, org) in created {
                if results[index].is_ok() {
                    owners.entry(asset).or_insert(org);
                }
            }
        }
        results
    }

    /// The organization owning `asset`, when known.
    pub(crate) fn owner(&self, asset: &str) -> Option<Arc<str>> {
        self.owners.read().ok()?.get(asset).cloned()
    }

    /// Whether `who` may see `event`: its organization's events, or city-level ones (no
    /// organization and no asset of another organization).
    pub(crate) fn visible(&self, who: &Principal, event: &Event) -> bool {
        if who.admin {
            return true;
        }
        match (&event.ext.organization, event.asset_id()) {
            (Some(org), _) => who.may_access(org),
            (None, Some(asset)) => self.owner(asset).is_none_or(|owner| who.may_access(&owner)),
            (None, None) => true,
        }
    }

    /// Counts one non-ingest request against `who`'s request bucket.
    pub(crate) fn admit_request(&self, who: &Principal) -> Result<(), RequestError> {
        self.requests.check_key(&who.org).map_err(|not_until| self.limited(who, &not_until))
    }

    /// Counts a refusal by a rate limit and says when to retry.
    fn limited(&self, who: &Principal, not_until: &NotUntil<QuantaInstant>) -> RequestError {
        self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
        RequestError::RateLimited {
            org: Arc::clone(&who.org),
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        }
    }

    fn admit_events(&self, who: &Principal, count: usize) -> Result<(), RequestError> {
        let Some(n) = NonZeroU32::new(u32::try_from(count).unwrap_or(u32::MAX)) else { return Ok(()) };
        match self.events.check_key_n(&who.org, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(self.limited(who, &not_until)),
            Err(_) => Err(RequestError::TooLarge { size: count, limit: self.event_burst }),
        }
    }

    /// Ingests a request's inputs for `who`: every input is accepted (durably appended) or
    /// refused with a precise reason, and every refused one is in the dead-letter queue
    /// before this returns (shed telemetry aside, which is counted). `origin` names the
    /// protocol for raw dead letters (`http`, `grpc`, `mqtt:<organization>`).
    ///
    /// # Errors
    /// A whole request over the rate limit or the burst size is refused before anything is
    /// looked at (nothing is dead-lettered: the client is told to retry).
    pub(crate) async fn ingest(
        &self,
        who: &Principal,
        origin: &str,
        inputs: Vec<Input>,
    ) -> Result<Outcome, RequestError> {
        let started = std::time::Instant::now();
        self.admit_events(who, inputs.len())?;
        let mut outcome = Outcome::default();
        let mut entries = Vec::new();
        let mut events = Vec::with_capacity(inputs.len());
        let mut places = Vec::with_capacity(inputs.len());
        let mut creations: Vec<(usize, String)> = Vec::new();
        for (index, input) in inputs.into_iter().enumerate() {
            let mut event = match input {
                Input::Event(event) => event,
                Input::Bad { id, error, raw, wire_type } => {
                    self.counters.invalid_inputs.fetch_add(1, Ordering::Relaxed);
                    let message = error.to_string();
                    let name = id.clone().unwrap_or_else(|| format!("{origin}:{index}"));
                    let reason = DeadLetterReason::InvalidFormat(message.clone());
                    let origin = wire_type.map_or_else(|| origin.to_owned(), |wire| format!("{origin}:{wire}"));
                    entries.push(raw_dead_letter_entry(&name, &origin, &raw, Some(&who.org), &reason));
                    outcome.refusals.push(Refusal {
                        index,
                        event_id: id,
                        reason: RefusalKind::Invalid,
                        violations: violations(&error),
                        message,
                        retry_after_ms: None,
                    });
                    continue;
                }
            };
            if let Err(message) = self.authorize_write(who, &mut event) {
                self.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
                // Filed under the sender, not under the organization the event claims.
                let mut entry = dead_letter_entry(&event, &DeadLetterReason::Unauthorized(message.clone()));
                entry.ext.organization = Some(who.org.as_ref().into());
                entries.push(entry);
                outcome.refusals.push(Refusal {
                    index,
                    event_id: Some(event.id.to_string()),
                    reason: RefusalKind::Unauthorized,
                    message,
                    violations: Vec::new(),
                    retry_after_ms: None,
                });
                continue;
            }
            if event.kind() == Some(EventKind::AssetCreated)
                && let Some(asset) = event.asset_id()
            {
                creations.push((index, asset.to_owned()));
            }
            places.push((index, event.id.clone()));
            events.push(event);
        }
        // Refusals are durable before the answer, like acceptances.
        self.twin.dead_letter_entries(entries).await.map_err(|e| RequestError::Unavailable(e.to_string()))?;
        let results = self.twin.ingest_batch(events).await;
        let mut accepted_indices = Vec::new();
        for ((index, id), result) in places.into_iter().zip(results) {
            match result {
                Ok(_) => {
                    outcome.accepted += 1;
                    accepted_indices.push(index);
                }
                Err(error) => outcome.refusals.push(refusal(index, id.to_string(), &error)),
            }
        }
        if !creations.is_empty()
            && let Ok(mut owners) = self.owners.write()
        {
            for (index, asset) in creations {
                if accepted_indices.binary_search(&index).is_ok() {
                    owners.entry(asset).or_insert_with(|| Arc::clone(&who.org));
                }
            }
        }
        outcome.refusals.sort_by_key(|r| r.index);
        record(origin, &outcome, started.elapsed());
        Ok(outcome)
    }

    /// Stamps `who`'s organization on an event that names none; refuses one that names
    /// another, or that is about another organization's asset.
    fn authorize_write(&self, who: &Principal, event: &mut Event) -> Result<(), String> {
        match &event.ext.organization {
            Some(org) if !who.may_access(org) => {
                return Err(format!("the event names organization {org:?}; the token is for {:?}", &*who.org));
            }
            Some(_) => {}
            None => event.ext.organization = Some(who.org.as_ref().into()),
        }
        if let Some(asset) = event.asset_id()
            && let Some(owner) = self.owner(asset)
            && !who.may_access(&owner)
        {
            return Err(format!("asset {asset:?} belongs to another organization"));
        }
        Ok(())
    }

    fn check_asset(&self, who: &Principal, asset: &str) -> Result<(), RequestError> {
        match self.owner(asset) {
            Some(owner) if who.may_access(&owner) => Ok(()),
            _ => Err(RequestError::NotFound(format!("no asset {asset:?} in organization {:?}", &*who.org))),
        }
    }

    /// An asset's state, now or at `at` (time travel).
    pub(crate) async fn asset_state(
        &self,
        who: &Principal,
        asset: &str,
        at: Option<Timestamp>,
    ) -> Result<AssetState, RequestError> {
        self.check_asset(who, asset)?;
        match at {
            None => self.twin.asset_state(asset).await.map_err(|e| RequestError::Unavailable(e.to_string())),
            Some(at) => {
                let (log, asset) = (self.twin.log().clone(), asset.to_owned());
                blocking(move || state_at(&log, &asset, at)).await
            }
        }
    }

    /// An asset's events with time in `from..=to` whose type matches, oldest first; at most
    /// `limit`, and whether more matched.
    pub(crate) async fn history(
        &self,
        who: &Principal,
        asset: &str,
        range: (Option<Timestamp>, Option<Timestamp>),
        types: Vec<TypePattern>,
        limit: usize,
    ) -> Result<(Vec<Event>, bool), RequestError> {
        self.check_asset(who, asset)?;
        let (log, stream) = (self.twin.log().clone(), asset_stream(asset));
        blocking(move || {
            let mut out = Vec::new();
            for record in log.read_stream(&stream, 1)? {
                if range.0.is_some_and(|from| record.time < from) || range.1.is_some_and(|to| record.time > to) {
                    continue;
                }
                let event = record.event()?;
                if types.is_empty() || types.iter().any(|p| p.matches(event.ty.as_str())) {
                    if out.len() == limit {
                        return Ok((out, true));
                    }
                    out.push(event);
                }
            }
            Ok::<_, citytwin_core::Error>((out, false))
        })
        .await
    }

    /// Window results of `cell` (a routing cell or a parent), optionally as they were at
    /// `at`, rolled up to `resolution` when it is coarser than the routing cells.
    pub(crate) async fn cell_aggregates(
        &self,
        cell: CellIndex,
        resolution: Option<Resolution>,
        at: Option<Timestamp>,
    ) -> Result<Vec<WindowResult>, RequestError> {
        let routing = self.cells.resolution;
        if cell.resolution() > routing {
            return Err(RequestError::InvalidArgument(format!(
                "cell {cell} is finer than the twin's resolution {}; ask for its parent",
                u8::from(routing)
            )));
        }
        let results = match at {
            Some(at) => {
                let (log, config) = (self.twin.log().clone(), self.cells.clone());
                blocking(move || cell_aggregates_at(&log, &config, cell, at)).await?
            }
            None => {
                let mut results = Vec::new();
                for child in cell.children(routing) {
                    let found = self.twin.cell_aggregates(child).await;
                    results.extend(found.map_err(|e| RequestError::Unavailable(e.to_string()))?);
                }
                results
            }
        };
        Ok(match resolution {
            Some(target) if target < routing => rollup(results, target),
            _ => results,
        })
    }

    /// Open alerts `who` may see, optionally only in `cells` (or under them).
    pub(crate) fn open_alerts(&self, who: &Principal, cells: &[CellIndex]) -> Vec<(String, OpenAlert)> {
        self.models.read(|m| {
            m.open_alerts
                .iter()
                .filter(|(_, alert)| {
                    alert.asset_id.as_deref().is_none_or(|a| self.owner(a).is_none_or(|owner| who.may_access(&owner)))
                })
                .filter(|(_, alert)| {
                    cells.is_empty() || alert.cell.is_some_and(|c| cells.iter().any(|&area| cell_within(c, area)))
                })
                .map(|(id, alert)| (id.clone(), alert.clone()))
                .collect()
        })
    }

    /// `who`'s assets inside `bbox` (all of them without one) whose type is one of `types`
    /// (any when empty), at most `limit` in asset-id order, each with its open-alert count;
    /// and whether more matched.
    pub(crate) fn assets(
        &self,
        who: &Principal,
        bbox: Option<(f64, f64, f64, f64)>,
        types: &[String],
        limit: usize,
    ) -> (Vec<(String, AssetSummary, u32)>, bool) {
        self.models.read(|m| {
            let mut alerts: HashMap<&str, u32> = HashMap::new();
            for alert in m.open_alerts.values() {
                if let Some(asset) = &alert.asset_id {
                    *alerts.entry(asset).or_default() += 1;
                }
            }
            let mut matching = m
                .assets
                .iter()
                .filter(|(_, a)| who.may_see(a.organization.as_deref()))
                .filter(|(_, a)| types.is_empty() || types.contains(&a.asset_type))
                .filter(|(_, a)| bbox.is_none_or(|b| a.location.is_some_and(|l| within_bbox(b, l.lat, l.lng))));
            let page: Vec<_> = matching
                .by_ref()
                .take(limit)
                .map(|(id, a)| (id.clone(), a.clone(), alerts.get(id.as_str()).copied().unwrap_or(0)))
                .collect();
            (page, matching.next().is_some())
        })
    }

    /// The current state of the map at `resolution` inside `bbox`, over `who`'s assets: per
    /// cell, the assets located there, the mean of their latest `metric` values (of every
    /// metric when empty), the open alerts, and the latest time one was heard from.
    pub(crate) fn cell_snapshot(
        &self,
        who: &Principal,
        bbox: Option<(f64, f64, f64, f64)>,
        resolution: Resolution,
        metric: &str,
    ) -> BTreeMap<CellIndex, CellSnapshot> {
        self.models.read(|m| {
            let mut cells: BTreeMap<CellIndex, CellSnapshot> = BTreeMap::new();
            let placed = |cell: CellIndex| {
                let center = h3o::LatLng::from(cell);
                bbox.is_none_or(|b| within_bbox(b, center.lat(), center.lng()))
            };
            for summary in m.assets.values() {
                if !who.may_see(summary.organization.as_deref()) {
                    continue;
                }
                let in_view = match summary.location {
                    Some(l) => bbox.is_none_or(|b| within_bbox(b, l.lat, l.lng)),
                    None => summary.cell.is_some_and(placed),
                };
                // Finer than the twin's resolution: the cell of the asset's own location.
                let cell = match (summary.cell, summary.location) {
                    (Some(c), _) if c.resolution() >= resolution => c.parent(resolution),
                    (_, Some(l)) => l.cell(resolution),
                    (c, None) => c,
                };
                let Some(cell) = cell.filter(|_| in_view) else { continue };
                let slot = cells.entry(cell).or_default();
                slot.assets += 1;
                for (name, (value, _)) in &summary.last_values {
                    if metric.is_empty() || name == metric {
                        slot.sum += value;
                        slot.readings += 1;
                    }
                }
                slot.last_seen = slot.last_seen.max(summary.last_seen);
            }
            for alert in m.open_alerts.values() {
                let Some(cell) = alert.cell.and_then(|c| c.parent(resolution)) else { continue };
                if self.alert_visible(who, alert.asset_id.as_deref()) && placed(cell) {
                    cells.entry(cell).or_default().alerts += 1;
                }
            }
            cells
        })
    }

    /// The map at `resolution` inside `bbox` as it was at `at`, over `who`'s assets, read from
    /// the log (the time slider), as [`Gateway::cell_snapshot`] reads it now: per cell, the
    /// assets heard from in the `lookback` before `at`, the mean of their latest values of
    /// `metric` in that span (of every metric when empty), the alerts raised in it, and the
    /// latest time one was heard from. An asset is placed where its latest located event put
    /// it, else where it is now. Only the span is read (the log skips blocks by time); the
    /// replay stops early once `cancelled` says so (the viewer moved on).
    ///
    /// # Errors
    /// When the log cannot be read.
    pub(crate) async fn cell_snapshot_at(
        self: &Arc<Self>,
        who: &Principal,
        map: PastMap,
        cancelled: impl Fn() -> bool + Send + 'static,
    ) -> Result<BTreeMap<CellIndex, CellSnapshot>, RequestError> {
        let (gateway, who) = (Arc::clone(self), who.clone());
        blocking(move || gateway.replay_map(&who, &map, cancelled)).await
    }

    fn replay_map(
        &self,
        who: &Principal,
        map: &PastMap,
        cancelled: impl Fn() -> bool,
    ) -> citytwin_core::Result<BTreeMap<CellIndex, CellSnapshot>> {
        let PastMap { bbox, resolution, ref metric, at, lookback } = *map;
        /// One asset as the span left it.
        #[derive(Default)]
        struct Seen {
            /// Where its latest located event put it.
            location: Option<Location>,
            /// Latest value per metric, with its time.
            values: BTreeMap<String, (Timestamp, f64)>,
            /// Latest time it was heard from (an offline notice is not hearing from it).
            last: Option<Timestamp>,
        }
        let filter = ReplayFilter {
            from_time: Some(at.saturating_sub(lookback)),
            to_time: Some(at.saturating_add(Duration::from_nanos(1))),
            ..ReplayFilter::default()
        };
        let mut assets: HashMap<String, Seen> = HashMap::new();
        let mut alerts: Vec<(CellIndex, Option<String>)> = Vec::new();
        for (n, record) in self.twin.log().replay(filter).enumerate() {
            if n % 4096 == 0 && cancelled() {
                break;
            }
            let record = record?;
            let time = record.time;
            let event = record.event()?;
            if let Some(Payload::AlertTriggered(alert)) = event.payload() {
                if let Some(cell) = alert.cell.and_then(|c| c.parent(resolution))
                    && self.visible(who, &event)
                {
                    alerts.push((cell, alert.asset_id.clone()));
                }
                continue;
            }
            let Some(asset) = event.asset_id() else { continue };
            let seen = assets.entry(asset.to_owned()).or_default();
            if let Some(location) = event.location() {
                seen.location = Some(location);
            }
            if let Some(Payload::MetricRecorded(m)) = event.payload()
                && (metric.is_empty() || m.metric_type == *metric)
                && seen.values.get(m.metric_type.as_str()).is_none_or(|(t, _)| *t <= time)
            {
                seen.values.insert(m.metric_type.to_string(), (time, m.value));
            }
            if event.kind() != Some(EventKind::AssetOffline) {
                seen.last = seen.last.max(Some(time));
            }
        }
        let in_view = |l: Location| bbox.is_none_or(|b| within_bbox(b, l.lat, l.lng));
        let mut cells: BTreeMap<CellIndex, CellSnapshot> = BTreeMap::new();
        self.models.read(|m| {
            for (asset, seen) in assets {
                let now = m.assets.get(&asset);
                // The same rule as the live map: an asset of no organization only admins see.
                if !who.may_see(now.and_then(|a| a.organization.as_deref()).or(self.owner(&asset).as_deref())) {
                    continue;
                }
                let Some(location) = seen.location.or_else(|| now.and_then(|a| a.location)) else { continue };
                let Some(cell) = location.cell(resolution).filter(|_| in_view(location)) else { continue };
                let slot = cells.entry(cell).or_default();
                slot.assets += 1;
                for (_, value) in seen.values.values() {
                    slot.sum += value;
                    slot.readings += 1;
                }
                slot.last_seen = slot.last_seen.max(seen.last);
            }
        });
        for (cell, asset) in alerts {
            let center = h3o::LatLng::from(cell);
            if self.alert_visible(who, asset.as_deref())
                && bbox.is_none_or(|b| within_bbox(b, center.lat(), center.lng()))
            {
                cells.entry(cell).or_default().alerts += 1;
            }
        }
        Ok(cells)
    }

    /// Whether `who` may see an alert about `asset`: city-level alerts (no asset, or an asset
    /// of no known owner) and those about assets it may access.
    fn alert_visible(&self, who: &Principal, asset: Option<&str>) -> bool {
        asset.is_none_or(|a| self.owner(a).is_none_or(|o| who.may_access(&o)))
    }

    /// The resolution the twin routes events to cells at.
    pub(crate) fn routing_resolution(&self) -> Resolution {
        self.cells.resolution
    }

    /// The times of the log's first and last records (by position, over every
    /// organization): the ends of a time slider.
    pub(crate) fn history_span(&self) -> (Option<Timestamp>, Option<Timestamp>) {
        let log = self.twin.log();
        let time = |position| log.read(position).ok().flatten().map(|record| record.time);
        let (first, next) = (log.first_position(), log.next_position());
        if next <= first { (None, None) } else { (time(first), time(next - 1)) }
    }

    /// Asset counts by type, status and cell, over `who`'s assets.
    pub(crate) fn inventory(&self, who: &Principal) -> citytwin_twin::read::Inventory {
        self.models.read(|m| m.inventory_of(|summary| who.may_see(summary.organization.as_deref())))
    }

    /// Dead letters of `who`'s organization (every one for an admin), newest last.
    pub(crate) async fn dead_letters(&self, who: &Principal) -> Result<Vec<DeadLetter>, RequestError> {
        let log = self.twin.log().clone();
        let letters = blocking(move || dead_letters(&log)).await?;
        Ok(letters.into_iter().filter(|l| who.may_see(l.organization.as_deref())).collect())
    }

    /// A live subscription; callers pass on only what [`Gateway::visible`] lets their caller
    /// see.
    pub(crate) fn subscribe(&self, filter: Filter) -> Subscription {
        self.twin.subscribe(filter)
    }

    /// The log's records matching `filter` below position `until`, that `who` may see,
    /// handed to `each` in position order; stops early when `each` returns false, or once
    /// `cancelled` returns true (checked between blocks of the log: a selective filter
    /// scans much of the log between two matches, and nobody should wait for that scan once
    /// the consumer has gone or the server is stopping).
    pub(crate) fn replay_until(
        &self,
        who: &Principal,
        filter: ReplayFilter,
        assets: &[String],
        until: u64,
        cancelled: impl Fn() -> bool + Send + Sync + 'static,
        mut each: impl FnMut(Committed) -> bool,
    ) -> citytwin_core::Result<()> {
        for record in self.twin.log().replay(filter).until_cancelled(cancelled) {
            let record = record?;
            if record.position >= until {
                break;
            }
            let event = record.event()?;
            if !assets.is_empty() && !event.asset_id().is_some_and(|a| assets.iter().any(|x| x == a)) {
                continue;
            }
            if self.visible(who, &event) && !each(Committed { position: record.position, event }) {
                break;
            }
        }
        Ok(())
    }
}

/// Runs log reads off the async workers; any failure is `Unavailable`.
async fn blocking<T: Send + 'static, E: std::fmt::Display>(
    read: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, RequestError> {
    tokio::task::spawn_blocking(move || read().map_err(|e| e.to_string()))
        .await
        .map_err(|e| RequestError::Unavailable(e.to_string()))?
        .map_err(RequestError::Unavailable)
}

fn violations(error: &citytwin_core::Error) -> Vec<(String, String)> {
    match error {
        citytwin_core::Error::Invalid(invalid) => pairs(invalid),
        _ => Vec::new(),
    }
}

/// Each broken rule as (attribute, problem).
fn pairs(invalid: &ValidationError) -> Vec<(String, String)> {
    invalid.violations().iter().map(|v| (v.attribute.clone(), v.rule.clone())).collect()
}

fn refusal(index: usize, id: String, error: &IngestError) -> Refusal {
    let mut violations = Vec::new();
    let (reason, retry_after_ms) = match error {
        IngestError::Invalid(problems) => {
            violations = pairs(problems);
            (RefusalKind::Invalid, None)
        }
        IngestError::Refused(CommandError::Rejected(Rejection::WrongOrganization { .. })) => {
            (RefusalKind::Unauthorized, None)
        }
        IngestError::Refused(_) => (RefusalKind::Refused, None),
        IngestError::Overloaded { retry_after } => {
            (RefusalKind::Overloaded, Some(u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX)))
        }
        _ => (RefusalKind::Unavailable, Some(1000)),
    };
    Refusal { index, event_id: Some(id), reason, message: error.to_string(), violations, retry_after_ms }
}

/// Combines window results of fine cells into their parents at `target`, with the twin's
/// rollup merge (counts and sums add, minima and maxima combine, averages re-weighted by
/// their metric's count; aggregates that do not merge from summaries are left out).
fn rollup(results: Vec<WindowResult>, target: Resolution) -> Vec<WindowResult> {
    /// (rule, key at the target resolution, window start, window end).
    type Group = (Arc<str>, Vec<KeyPart>, Timestamp, Timestamp);
    let mut groups: BTreeMap<Group, (WindowResult, Rollup)> = BTreeMap::new();
    for result in results {
        let key: Vec<KeyPart> = result
            .key
            .0
            .iter()
            .map(|part| match part {
                KeyPart::Cell(cell) => KeyPart::Cell(cell.parent(target).unwrap_or(*cell)),
                other => other.clone(),
            })
            .collect();
        let group = (Arc::clone(&result.rule_id), key.clone(), result.start, result.end);
        let (combined, merged) = groups.entry(group).or_insert_with(|| {
            let empty = WindowResult {
                rule_id: Arc::clone(&result.rule_id),
                key: citytwin_core::cep::Key(key),
                start: result.start,
                end: result.end,
                emission: result.emission,
                count: 0,
                values: Vec::new(),
            };
            (empty, Rollup::default())
        });
        combined.count += result.count;
        merged.merge(&result.values);
    }
    groups
        .into_values()
        .map(|(mut result, merged)| {
            result.values = merged.values.into_iter().collect();
            result
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use citytwin_core::cep::{Emission, Key};

    use super::*;

    #[test]
    fn rollups_weight_averages_by_count_and_combine_the_rest() {
        let parent: CellIndex = "862a1072fffffff".parse().unwrap();
        let children: Vec<CellIndex> = parent.children(Resolution::Eight).take(2).collect();
        let result = |cell: CellIndex, count: u64, avg: f64, max: f64| WindowResult {
            rule_id: Arc::from("r"),
            key: Key(vec![KeyPart::Cell(cell)]),
            start: Timestamp::from_secs(0),
            end: Timestamp::from_secs(60),
            emission: Emission::Final,
            count,
            values: vec![("avg(pm25)".into(), avg), ("max(pm25)".into(), max), ("count(pm25)".into(), count as f64)],
        };
        let rolled =
            rollup(vec![result(children[0], 1, 10.0, 10.0), result(children[1], 3, 30.0, 40.0)], Resolution::Six);
        assert_eq!(rolled.len(), 1);
        assert_eq!(rolled[0].key.cell(), Some(parent));
        assert_eq!(rolled[0].count, 4);
        let values: BTreeMap<_, _> = rolled[0].values.iter().cloned().collect();
        assert_eq!(values["avg(pm25)"], 25.0);
        assert_eq!(values["max(pm25)"], 40.0);
        assert_eq!(values["count(pm25)"], 4.0);
    }
}

/// What [`Gateway::cell_snapshot_at`] draws: the map at `resolution` inside `bbox` (all of
/// it when `None`), for `metric` (every metric when empty), as it was at `at` over the
/// `lookback` before it.
#[derive(Debug, Clone)]
pub(crate) struct PastMap {
    pub(crate) bbox: Option<(f64, f64, f64, f64)>,
    pub(crate) resolution: Resolution,
    pub(crate) metric: String,
    pub(crate) at: Timestamp,
    pub(crate) lookback: Duration,
}

/// One cell of [`Gateway::cell_snapshot`].
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CellSnapshot {
    /// Assets located in the cell.
    pub(crate) assets: u64,
    /// Open alerts in the cell.
    pub(crate) alerts: u64,
    /// Sum and number of the latest values of the metric.
    pub(crate) sum: f64,
    pub(crate) readings: u64,
    /// Latest time one of its assets was heard from.
    pub(crate) last_seen: Option<Timestamp>,
}
