//! The gRPC API (`citytwin.v1`): thin translations between the wire types and [`Gateway`]
//! calls. Authentication happens in an interceptor that puts the caller's [`Principal`] into
//! the request's extensions.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use citytwin_core::event::{Event, EventKind, Payload, Timestamp, TypePattern, ValidationError, Violation, parse_cell};
use citytwin_core::log::ReplayFilter;
use citytwin_proto::convert::{
    event_from_proto, event_from_reading, event_to_proto, reading_from_event, timestamp_from_proto, timestamp_to_proto,
};
use citytwin_proto::v1;
use citytwin_proto::v1::ingest_item::Item;
use citytwin_twin::bus::{Committed, Filter};
use citytwin_twin::cell::routing_cell;
use futures_util::{Stream, StreamExt};
use h3o::{CellIndex, Resolution};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{Principal, Tokens};
use super::gateway::{CellSnapshot, Gateway, Input, Outcome, PastMap, RefusalKind, RequestError};

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Events the twin sends a slow subscriber before it waits for it (the subscription itself
/// never loses events: it catches up from the log).
const STREAM_BUFFER: usize = 1024;

/// The services, sharing one gateway.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    gateway: Arc<Gateway>,
    /// Becomes true when the server stops: open streams then end, so that a graceful stop
    /// does not wait for clients that never hang up (a viewer, a live subscription).
    stopping: tokio::sync::watch::Receiver<bool>,
    /// The tasks feeding response streams, each holding the gateway: a graceful stop waits
    /// for them (they end once their stream is dropped) before it takes the twin back.
    tasks: TaskTracker,
}

impl Api {
    pub(crate) fn new(gateway: Arc<Gateway>, stopping: tokio::sync::watch::Receiver<bool>, tasks: TaskTracker) -> Self {
        Api { gateway, stopping, tasks }
    }

    /// A response stream that ends when the server stops.
    fn until_stopped<T: Send + 'static>(
        &self,
        stream: impl Stream<Item = Result<T, Status>> + Send + 'static,
    ) -> Stream_<T> {
        let mut stopping = self.stopping.clone();
        stream
            .take_until(async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            })
            .boxed()
    }

    /// The caller, counted against its request bucket, and the request's message.
    fn admit<T>(&self, request: Request<T>) -> Result<(Principal, T), Status> {
        let who = principal(&request)?;
        self.gateway.admit_request(&who).map_err(status)?;
        Ok((who, request.into_inner()))
    }
}

/// The interceptor: `authorization: Bearer <token>` → [`Principal`] in the extensions.
pub(crate) fn authenticate(tokens: Arc<Tokens>) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let header = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let principal = tokens.authenticate(header).map_err(|e| Status::unauthenticated(e.to_string()))?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    request.extensions().get::<Principal>().cloned().ok_or_else(|| Status::unauthenticated("no credentials"))
}

/// The gRPC status for a refused request, with a `retry-after` hint where there is one.
pub(crate) fn status(error: RequestError) -> Status {
    let message = error.to_string();
    match error {
        RequestError::RateLimited { retry_after, .. } => {
            let mut status = Status::resource_exhausted(message);
            let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(value) = seconds.to_string().parse() {
                status.metadata_mut().insert("retry-after", value);
            }
            if let Ok(value) = retry_after.as_millis().to_string().parse() {
                status.metadata_mut().insert("retry-after-ms", value);
            }
            status
        }
        RequestError::TooLarge { .. } | RequestError::InvalidArgument(_) => Status::invalid_argument(message),
        RequestError::NotFound(_) => Status::not_found(message),
        RequestError::Unavailable(_) => Status::unavailable(message),
    }
}

/// A request's events in order: `events`, then `items`.
fn inputs(request: v1::IngestRequest) -> Vec<Input> {
    let v1::IngestRequest { events, items } = request;
    let mut inputs = Vec::with_capacity(events.len() + items.len());
    inputs.extend(events.iter().map(cloud_event_input));
    inputs.extend(items.iter().map(|item| match &item.item {
        Some(Item::Event(event)) => cloud_event_input(event),
        Some(Item::Reading(reading)) => match event_from_reading(reading) {
            Ok(event) => Input::Event(event),
            Err(error) => bad_input(&reading.id, error, reading, "citytwin.v1.Reading"),
        },
        None => bad_input(
            "",
            ValidationError::new(vec![Violation::new("item", "is empty: set event or reading")]).into(),
            item,
            "citytwin.v1.IngestItem",
        ),
    }));
    inputs
}

fn cloud_event_input(wire: &v1::CloudEvent) -> Input {
    match event_from_proto(wire) {
        Ok(event) => Input::Event(event),
        Err(error) => bad_input(&wire.id, error, wire, "citytwin.v1.CloudEvent"),
    }
}

/// An input that is no event, kept as received (and named) for the dead-letter queue.
fn bad_input(id: &str, error: citytwin_core::Error, wire: &impl prost::Message, wire_type: &'static str) -> Input {
    Input::Bad {
        id: (!id.is_empty()).then(|| id.to_owned()),
        error,
        raw: wire.encode_to_vec(),
        wire_type: Some(wire_type),
    }
}

fn ingest_response(outcome: Outcome, offset: u64) -> v1::IngestResponse {
    v1::IngestResponse {
        accepted: outcome.accepted,
        rejected: outcome.refusals.len() as u64,
        rejections: outcome
            .refusals
            .into_iter()
            .map(|r| v1::Rejection {
                index: r.index as u64 + offset,
                event_id: r.event_id.unwrap_or_default(),
                reason: match r.reason {
                    RefusalKind::Invalid => v1::RejectionReason::Invalid,
                    RefusalKind::Refused => v1::RejectionReason::Refused,
                    RefusalKind::Unauthorized => v1::RejectionReason::Unauthorized,
                    RefusalKind::Overloaded => v1::RejectionReason::Overloaded,
                    RefusalKind::Unavailable => v1::RejectionReason::Unavailable,
                } as i32,
                message: r.message,
                violations: r
                    .violations
                    .into_iter()
                    .map(|(attribute, problem)| v1::Violation { attribute, problem })
                    .collect(),
                retry_after_ms: r.retry_after_ms.map_or(0, |ms| u32::try_from(ms).unwrap_or(u32::MAX)),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl v1::ingest_server::Ingest for Api {
    async fn ingest(&self, request: Request<v1::IngestRequest>) -> Result<Response<v1::IngestResponse>, Status> {
        let who = principal(&request)?;
        let outcome = self.gateway.ingest(&who, "grpc", inputs(request.into_inner())).await.map_err(status)?;
        Ok(Response::new(ingest_response(outcome, 0)))
    }

    async fn ingest_stream(
        &self,
        request: Request<Streaming<v1::IngestRequest>>,
    ) -> Result<Response<v1::IngestResponse>, Status> {
        let who = principal(&request)?;
        let mut stream = request.into_inner();
        let mut total = v1::IngestResponse::default();
        let mut offset = 0u64;
        while let Some(batch) = stream.message().await? {
            let count = (batch.events.len() + batch.items.len()) as u64;
            let outcome = self.gateway.ingest(&who, "grpc", inputs(batch)).await.map_err(status)?;
            let part = ingest_response(outcome, offset);
            total.accepted += part.accepted;
            total.rejected += part.rejected;
            total.rejections.extend(part.rejections);
            offset += count;
        }
        Ok(Response::new(total))
    }
}

fn time_arg(time: Option<&prost_types::Timestamp>) -> Option<Timestamp> {
    time.map(timestamp_from_proto)
}

fn cell_arg(text: &str) -> Result<CellIndex, Status> {
    parse_cell(text).map_err(Status::invalid_argument)
}

fn cells_arg(texts: &[String]) -> Result<Vec<CellIndex>, Status> {
    texts.iter().map(|t| cell_arg(t)).collect()
}

fn types_arg(texts: &[String]) -> Vec<TypePattern> {
    texts.iter().map(|t| TypePattern::new(t.as_str())).collect()
}

fn asset_state(state: citytwin_twin::asset::logic::AssetState) -> v1::AssetState {
    v1::AssetState {
        asset_id: state.asset_id,
        asset_type: state.asset_type,
        organization: state.organization.map(String::from).unwrap_or_default(),
        status: state.status.name().to_owned(),
        lat: state.location.map(|l| l.lat),
        lng: state.location.map(|l| l.lng),
        last_seen: state.last_seen.map(timestamp_to_proto),
        metrics: state
            .metrics
            .into_iter()
            .map(|(name, m)| {
                let stats = v1::MetricStats {
                    last: m.last,
                    last_time: Some(timestamp_to_proto(m.last_time)),
                    unit: m.unit.to_string(),
                    count: m.count,
                    mean: m.mean(),
                    min: m.min,
                    max: m.max,
                };
                (name, stats)
            })
            .collect(),
        battery_pct: state.battery_pct,
        battery_low: state.battery_low,
        firmware: state.firmware.unwrap_or_default(),
        version: state.version,
        reporting_interval_s: state.reporting_interval_s.unwrap_or(0),
    }
}

/// A group key as its parts' text (`asset=…`, `asset_type=…`, `metric=…`, `cell=…`).
pub(crate) fn key_text(key: &citytwin_core::cep::Key) -> Vec<String> {
    key.0.iter().map(ToString::to_string).collect()
}

#[tonic::async_trait]
impl v1::query_server::Query for Api {
    async fn get_asset(&self, request: Request<v1::GetAssetRequest>) -> Result<Response<v1::AssetState>, Status> {
        let (who, request) = self.admit(request)?;
        let state =
            self.gateway.asset_state(&who, &request.asset_id, time_arg(request.at.as_ref())).await.map_err(status)?;
        Ok(Response::new(asset_state(state)))
    }

    async fn asset_history(
        &self,
        request: Request<v1::AssetHistoryRequest>,
    ) -> Result<Response<v1::AssetHistoryResponse>, Status> {
        let (who, request) = self.admit(request)?;
        let limit = if request.limit == 0 { 10_000 } else { request.limit as usize };
        let range = (time_arg(request.from.as_ref()), time_arg(request.to.as_ref()));
        let (events, truncated) = self
            .gateway
            .history(&who, &request.asset_id, range, types_arg(&request.types), limit)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::AssetHistoryResponse { events: events.iter().map(event_to_proto).collect(), truncated }))
    }

    async fn cell_aggregates(
        &self,
        request: Request<v1::CellAggregatesRequest>,
    ) -> Result<Response<v1::CellAggregatesResponse>, Status> {
        let (_, request) = self.admit(request)?;
        let cell = cell_arg(&request.cell)?;
        let resolution = request
            .resolution
            .map(|r| {
                u8::try_from(r)
                    .ok()
                    .and_then(|r| Resolution::try_from(r).ok())
                    .ok_or_else(|| Status::invalid_argument(format!("resolution {r} is not 0..=15")))
            })
            .transpose()?;
        let results =
            self.gateway.cell_aggregates(cell, resolution, time_arg(request.at.as_ref())).await.map_err(status)?;
        Ok(Response::new(v1::CellAggregatesResponse {
            results: results
                .into_iter()
                .map(|r| v1::WindowResult {
                    rule_id: r.rule_id.to_string(),
                    key: key_text(&r.key),
                    cell: r.key.cell().map(|c| c.to_string()).unwrap_or_default(),
                    start: Some(timestamp_to_proto(r.start)),
                    end: Some(timestamp_to_proto(r.end)),
                    count: r.count,
                    values: r.values.into_iter().collect(),
                })
                .collect(),
        }))
    }

    async fn inventory(
        &self,
        request: Request<v1::InventoryRequest>,
    ) -> Result<Response<v1::InventoryResponse>, Status> {
        let (who, _) = self.admit(request)?;
        let inventory = self.gateway.inventory(&who);
        Ok(Response::new(v1::InventoryResponse {
            total: inventory.by_type.values().sum(),
            by_type: inventory.by_type.into_iter().collect(),
            by_status: inventory.by_status.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            by_cell: inventory.by_cell.into_iter().collect(),
        }))
    }

    async fn open_alerts(
        &self,
        request: Request<v1::OpenAlertsRequest>,
    ) -> Result<Response<v1::OpenAlertsResponse>, Status> {
        let (who, request) = self.admit(request)?;
        let cells = cells_arg(&request.cells)?;
        let alerts = self
            .gateway
            .open_alerts(&who, &cells)
            .into_iter()
            .map(|(alert_id, a)| v1::Alert {
                alert_id,
                rule_id: a.rule_id,
                severity: a.severity.to_string(),
                asset_id: a.asset_id.unwrap_or_default(),
                cell: a.cell.map(|c| c.to_string()).unwrap_or_default(),
                time: a.time.map(timestamp_to_proto),
                actions: a.actions,
            })
            .collect();
        Ok(Response::new(v1::OpenAlertsResponse { alerts }))
    }

    async fn assets(&self, request: Request<v1::AssetsRequest>) -> Result<Response<v1::AssetsResponse>, Status> {
        let (who, request) = self.admit(request)?;
        let bbox = bbox_arg(request.bbox.as_ref())?;
        let limit = if request.limit == 0 { 10_000 } else { request.limit as usize };
        let (assets, truncated) = self.gateway.assets(&who, bbox, &request.types, limit);
        let assets = assets
            .into_iter()
            .map(|(asset_id, a, open_alerts)| v1::AssetSummary {
                asset_id,
                asset_type: a.asset_type,
                status: a.status.name().to_owned(),
                lat: a.location.map(|l| l.lat),
                lng: a.location.map(|l| l.lng),
                cell: a.cell.map(|c| c.to_string()).unwrap_or_default(),
                last_values: a.last_values.into_iter().map(|(metric, (value, _))| (metric, value)).collect(),
                open_alerts,
                last_seen: a.last_seen.map(timestamp_to_proto),
            })
            .collect();
        Ok(Response::new(v1::AssetsResponse { assets, truncated }))
    }

    async fn geometry(&self, request: Request<v1::GeometryRequest>) -> Result<Response<v1::GeometryResponse>, Status> {
        self.admit(request)?;
        let (geojson, source) = match &self.gateway.geometry {
            Some(g) => (g.geojson.to_string(), g.source.clone()),
            None => (String::new(), String::new()),
        };
        Ok(Response::new(v1::GeometryResponse { geojson, source }))
    }
}

fn bbox_arg(bbox: Option<&v1::BoundingBox>) -> Result<Option<(f64, f64, f64, f64)>, Status> {
    let Some(b) = bbox else { return Ok(None) };
    let ok = (-90.0..=90.0).contains(&b.south)
        && (-90.0..=90.0).contains(&b.north)
        && (-180.0..=180.0).contains(&b.west)
        && (-180.0..=180.0).contains(&b.east)
        && b.south <= b.north
        && b.west <= b.east;
    if !ok {
        return Err(Status::invalid_argument(format!(
            "bbox {b:?} must have south <= north within -90..90 and west <= east within -180..180"
        )));
    }
    Ok(Some((b.south, b.west, b.north, b.east)))
}

/// A committed event for a stream: as a typed reading when `readings` asks for them and it is
/// one, else as a CloudEvent.
fn delivery(committed: &Committed, readings: bool) -> v1::Delivery {
    let reading = if readings { reading_from_event(&committed.event) } else { None };
    let event = if reading.is_none() { Some(event_to_proto(&committed.event)) } else { None };
    v1::Delivery { position: committed.position, event, reading }
}

/// A subscription as a response stream, read as the client takes it (no task and no channel
/// in between: an event costs one poll, not a hand-off between tasks): what `who` may see, as
/// `message` renders it (`None` skips an event). It counts as one of `tasks` until tonic drops
/// it, so a graceful stop waits for it to let go of the gateway.
fn subscription_stream<T: Send + 'static>(
    tasks: &TaskTracker,
    gateway: Arc<Gateway>,
    who: Principal,
    subscription: citytwin_twin::bus::Subscription,
    message: impl Fn(&Committed) -> Option<T> + Send + 'static,
) -> impl Stream<Item = Result<T, Status>> + Send + 'static {
    // The tracker's token last: dropped after the gateway.
    let state = (subscription, gateway, who, message, tasks.token());
    futures_util::stream::unfold(state, |(mut subscription, gateway, who, message, token)| async move {
        loop {
            let committed = subscription.recv().await?;
            if gateway.visible(&who, &committed.event)
                && let Some(rendered) = message(&committed)
            {
                return Some((Ok(rendered), (subscription, gateway, who, message, token)));
            }
        }
    })
}

/// Forwards a stream (a [`subscription_stream`]) into a channel the response already has (a
/// replay's, after its log part); ends when the client goes away.
fn forward<T: Send + 'static>(
    tasks: &TaskTracker,
    stream: impl Stream<Item = Result<T, Status>> + Send + 'static,
    tx: mpsc::Sender<Result<T, Status>>,
) {
    tasks.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                () = tx.closed() => return,
                next = stream.next() => {
                    let Some(item) = next else { return };
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
}

#[tonic::async_trait]
impl v1::subscribe_server::Subscribe for Api {
    type EventsStream = Stream_<v1::Delivery>;
    type ViewportStream = Stream_<v1::ViewportUpdate>;

    async fn events(&self, request: Request<v1::SubscribeRequest>) -> Result<Response<Self::EventsStream>, Status> {
        let (who, request) = self.admit(request)?;
        let filter = Filter {
            types: types_arg(&request.types),
            cells: cells_arg(&request.cells)?,
            bbox: bbox_arg(request.bbox.as_ref())?,
            assets: request.assets,
            organizations: Vec::new(),
        };
        let readings = request.readings;
        let subscription = self.gateway.subscribe(filter);
        let stream = subscription_stream(&self.tasks, Arc::clone(&self.gateway), who, subscription, move |c| {
            Some(delivery(c, readings))
        });
        Ok(Response::new(self.until_stopped(stream)))
    }

    async fn viewport(&self, request: Request<v1::ViewportRequest>) -> Result<Response<Self::ViewportStream>, Status> {
        let (who, request) = self.admit(request)?;
        let bbox = bbox_arg(request.bbox.as_ref())?;
        let fine_zoom = if request.fine_zoom > 0.0 { request.fine_zoom } else { 14.0 };
        // Frames at most every 10 ms and at least hourly; 1 s when unset (or not positive).
        let interval_s = if request.interval_s > 0.0 { request.interval_s.clamp(0.01, 3600.0) } else { 1.0 };
        let interval = Duration::from_secs_f64(interval_s);
        let filter = Filter { bbox, ..Filter::default() };
        let (tx, rx) = mpsc::channel::<Result<v1::ViewportUpdate, Status>>(STREAM_BUFFER);
        let gateway = Arc::clone(&self.gateway);
        // Cells no finer than the twin routes events at (finer frames would stay empty).
        let resolution = zoom_resolution(request.zoom.min(fine_zoom - 0.01)).min(self.gateway.routing_resolution());
        if let Some(at) = time_arg(request.at.as_ref()) {
            // The time slider: one frame of the map as it was, from the log.
            let lookback = lookback_arg(request.lookback_s)?;
            let span = gateway.history_span();
            let gone = tx.clone();
            let cells = gateway
                .cell_snapshot_at(&who, PastMap { bbox, resolution, metric: request.metric, at, lookback }, move || {
                    gone.is_closed()
                })
                .await
                .map_err(status)?;
            let mut frame = snapshot_frame(&cells, resolution, span);
            frame.until = Some(timestamp_to_proto(at));
            frame.history = true;
            let update = v1::ViewportUpdate { update: Some(v1::viewport_update::Update::Cells(frame)) };
            self.tasks.spawn(async move {
                if tx.send(Ok(update)).await.is_ok() {
                    tx.closed().await;
                }
            });
        } else {
            // The map as it is, then per-cell frames of what changes; at street zoom also every
            // event of the assets in view.
            let fine = request.zoom >= fine_zoom;
            let mut subscription = self.gateway.subscribe(filter);
            let metric = request.metric;
            let span = gateway.history_span();
            let snapshot = snapshot_frame(&gateway.cell_snapshot(&who, bbox, resolution, &metric), resolution, span);
            self.tasks.spawn(async move {
                let update = v1::ViewportUpdate { update: Some(v1::viewport_update::Update::Cells(snapshot)) };
                if tx.send(Ok(update)).await.is_err() {
                    return;
                }
                let mut frame = CellFrameBuilder::new(resolution, metric);
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = tx.closed() => return,
                        _ = tick.tick() => {
                            let update = v1::ViewportUpdate { update: Some(v1::viewport_update::Update::Cells(frame.take())) };
                            if tx.send(Ok(update)).await.is_err() {
                                return;
                            }
                        }
                        next = subscription.recv() => {
                            let Some(committed) = next else { return };
                            if !gateway.visible(&who, &committed.event) {
                                continue;
                            }
                            frame.add(&committed.event);
                            if fine && committed.event.asset_id().is_some() {
                                let update = v1::ViewportUpdate {
                                    update: Some(v1::viewport_update::Update::AssetEvent(delivery(&committed, false))),
                                };
                                if tx.send(Ok(update)).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            });
        }
        Ok(Response::new(self.until_stopped(ReceiverStream::new(rx))))
    }
}

/// The longest look-back of a history frame: a month of the log per request at most.
const MAX_LOOKBACK: Duration = Duration::from_secs(31 * 86_400);

/// `lookback_s` (an hour when 0): positive, at most [`MAX_LOOKBACK`], or INVALID_ARGUMENT.
fn lookback_arg(seconds: f64) -> Result<Duration, Status> {
    let seconds = if seconds == 0.0 { 3600.0 } else { seconds };
    Duration::try_from_secs_f64(seconds).ok().filter(|d| !d.is_zero() && *d <= MAX_LOOKBACK).ok_or_else(|| {
        Status::invalid_argument(format!(
            "lookback_s: {seconds} is not a number of seconds in (0, {}]",
            MAX_LOOKBACK.as_secs()
        ))
    })
}

/// The H3 resolution that suits a web-map zoom level: about one hexagon per 30 pixels.
pub(crate) fn zoom_resolution(zoom: f64) -> Resolution {
    let resolution = ((zoom - 2.0) * 0.75).round().clamp(0.0, 15.0) as u8;
    Resolution::try_from(resolution).unwrap_or(Resolution::Zero)
}

/// The first frame of a viewport stream: the map as the read models have it, with the span
/// of the twin's history (`since`, `latest`).
fn snapshot_frame(
    cells: &BTreeMap<CellIndex, CellSnapshot>,
    resolution: Resolution,
    (since, latest): (Option<Timestamp>, Option<Timestamp>),
) -> v1::CellFrame {
    v1::CellFrame {
        resolution: u32::from(u8::from(resolution)),
        until: cells.values().filter_map(|c| c.last_seen).max().map(timestamp_to_proto),
        snapshot: true,
        since: since.map(timestamp_to_proto),
        latest: latest.map(timestamp_to_proto),
        history: false,
        cells: cells
            .iter()
            .map(|(cell, c)| v1::CellSummary {
                cell: cell.to_string(),
                events: 0,
                alerts: c.alerts,
                mean: (c.readings > 0).then(|| c.sum / c.readings as f64),
                last_time: c.last_seen.map(timestamp_to_proto),
                assets: c.assets,
            })
            .collect(),
    }
}

/// Accumulates what happened per cell between two viewport frames.
#[derive(Debug)]
pub(crate) struct CellFrameBuilder {
    resolution: Resolution,
    metric: String,
    cells: BTreeMap<CellIndex, (u64, u64, f64, u64, Option<Timestamp>)>,
}

impl CellFrameBuilder {
    pub(crate) fn new(resolution: Resolution, metric: String) -> Self {
        CellFrameBuilder { resolution, metric, cells: BTreeMap::new() }
    }

    pub(crate) fn add(&mut self, event: &Event) {
        let alert_cell = || match event.payload() {
            Some(Payload::AlertTriggered(alert)) => alert.cell.and_then(|c| c.parent(self.resolution)),
            _ => None,
        };
        let Some(cell) = routing_cell(event, self.resolution).or_else(alert_cell) else { return };
        let slot = self.cells.entry(cell).or_insert((0, 0, 0.0, 0, None));
        slot.0 += 1;
        if event.kind() == Some(EventKind::AlertTriggered) {
            slot.1 += 1;
        }
        if let Some(Payload::MetricRecorded(m)) = event.payload()
            && (self.metric.is_empty() || m.metric_type == self.metric)
        {
            slot.2 += m.value;
            slot.3 += 1;
        }
        if event.time > slot.4 {
            slot.4 = event.time;
        }
    }

    pub(crate) fn take(&mut self) -> v1::CellFrame {
        let cells = std::mem::take(&mut self.cells);
        let until = cells.values().filter_map(|s| s.4).max();
        v1::CellFrame {
            resolution: u32::from(u8::from(self.resolution)),
            until: until.map(timestamp_to_proto),
            snapshot: false,
            since: None,
            latest: None,
            history: false,
            cells: cells
                .into_iter()
                .map(|(cell, (events, alerts, sum, n, last))| v1::CellSummary {
                    cell: cell.to_string(),
                    events,
                    alerts,
                    mean: (n > 0).then(|| sum / n as f64),
                    last_time: last.map(timestamp_to_proto),
                    assets: 0,
                })
                .collect(),
        }
    }
}

#[tonic::async_trait]
impl v1::replay_server::Replay for Api {
    type ReplayStream = Stream_<v1::Delivery>;

    async fn replay(&self, request: Request<v1::ReplayRequest>) -> Result<Response<Self::ReplayStream>, Status> {
        let (who, request) = self.admit(request)?;
        let types = types_arg(&request.types);
        let cells = cells_arg(&request.cells)?;
        let to = time_arg(request.to.as_ref());
        let filter = ReplayFilter {
            from_time: time_arg(request.from.as_ref()),
            to_time: to.map(|t| Timestamp::from_nanos(t.as_nanos().saturating_add(1))),
            types: types.clone(),
            cells: cells.clone(),
            ..ReplayFilter::default()
        };
        // Subscribe first: the log holds everything before the subscription's start, the
        // subscription everything from it on: no gap, no duplicate.
        let follow = request.follow && to.is_none();
        let subscription = follow.then(|| {
            self.gateway.subscribe(Filter {
                types,
                cells,
                bbox: None,
                assets: request.assets.clone(),
                organizations: Vec::new(),
            })
        });
        let until = subscription.as_ref().map_or(u64::MAX, citytwin_twin::bus::Subscription::start);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let gateway = Arc::clone(&self.gateway);
        let (assets, readings) = (request.assets, request.readings);
        let tasks = self.tasks.clone();
        self.tasks.spawn(async move {
            let (replay_gateway, replay_who, replay_tx) = (Arc::clone(&gateway), who.clone(), tx.clone());
            let replayed = tokio::task::spawn_blocking(move || {
                // The stream's receiver goes when the client does, or when tonic drops the
                // response stream once the server stops (`until_stopped`).
                let gone = replay_tx.clone();
                replay_gateway.replay_until(
                    &replay_who,
                    filter,
                    &assets,
                    until,
                    move || gone.is_closed(),
                    |committed| replay_tx.blocking_send(Ok(delivery(&committed, readings))).is_ok(),
                )
            })
            .await;
            let failed = match replayed {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error.to_string()),
                Err(error) => Some(error.to_string()),
            };
            if let Some(error) = failed {
                let _ = tx.send(Err(Status::internal(format!("replay failed: {error}")))).await;
                return;
            }
            if let Some(subscription) = subscription {
                let live =
                    subscription_stream(&tasks, gateway, who, subscription, move |c| Some(delivery(c, readings)));
                forward(&tasks, live, tx);
            }
        });
        Ok(Response::new(self.until_stopped(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl v1::admin_server::Admin for Api {
    async fn dead_letters(
        &self,
        request: Request<v1::DeadLettersRequest>,
    ) -> Result<Response<v1::DeadLettersResponse>, Status> {
        let (who, request) = self.admit(request)?;
        let mut letters = self.gateway.dead_letters(&who).await.map_err(status)?;
        if request.pending_only {
            letters.retain(|l| l.status == citytwin_twin::deadletter::DeadLetterStatus::Pending);
        }
        if request.limit > 0 {
            let keep = request.limit as usize;
            letters.drain(..letters.len().saturating_sub(keep));
        }
        let dead_letters = letters
            .into_iter()
            .map(|l| v1::DeadLetter {
                event_id: l.original.as_ref().map(|e| e.id.to_string()).unwrap_or_default(),
                reason: l.reason,
                message: l.message,
                status: format!("{:?}", l.status).to_lowercase(),
                event: l.original.as_ref().map(event_to_proto),
            })
            .collect();
        Ok(Response::new(v1::DeadLettersResponse { dead_letters }))
    }

    async fn reprocess(
        &self,
        request: Request<v1::ReprocessRequest>,
    ) -> Result<Response<v1::ReprocessResponse>, Status> {
        let who = principal(&request)?;
        if !who.admin {
            return Err(Status::permission_denied("reprocessing dead letters needs an admin organization"));
        }
        let attempts = request.into_inner().max_attempts;
        let policy = citytwin_twin::deadletter::RetryPolicy {
            max_attempts: if attempts == 0 { 5 } else { attempts },
            ..Default::default()
        };
        let report =
            self.gateway.twin.reprocess_dead_letters(policy).await.map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(v1::ReprocessResponse {
            resolved: report.resolved as u64,
            exhausted: report.exhausted as u64,
            skipped: report.skipped as u64,
        }))
    }

    async fn sagas(&self, request: Request<v1::SagasRequest>) -> Result<Response<v1::SagasResponse>, Status> {
        let (who, request) = self.admit(request)?;
        let listed = self.gateway.sagas(&who).await.map_err(status)?;
        let sagas: Vec<v1::Saga> = listed
            .into_iter()
            .filter(|s| request.saga_id.is_empty() || s.saga_id == request.saga_id)
            .map(|s| {
                let names = |steps: &[citytwin_twin::saga::Step]| steps.iter().map(|s| s.name().to_owned()).collect();
                let (failed_step, failure) = s
                    .state
                    .failed
                    .as_ref()
                    .map_or_else(Default::default, |(step, why)| (step.name().to_owned(), why.clone()));
                v1::Saga {
                    status: s.state.status().to_owned(),
                    completed: names(&s.state.completed),
                    compensated: names(&s.state.compensated),
                    failed_step,
                    failure,
                    organization: s.organization.unwrap_or_default(),
                    saga_id: s.saga_id,
                }
            })
            .collect();
        if sagas.is_empty() && !request.saga_id.is_empty() {
            return Err(Status::not_found(format!("no saga {:?} in organization {:?}", request.saga_id, &*who.org)));
        }
        Ok(Response::new(v1::SagasResponse { sagas }))
    }

    async fn stats(&self, request: Request<v1::StatsRequest>) -> Result<Response<v1::StatsResponse>, Status> {
        let _who = principal(&request)?;
        let stats = self.gateway.stats().await;
        Ok(Response::new(v1::StatsResponse {
            accepted: stats.accepted,
            rejected: stats.rejected,
            invalid: stats.invalid,
            shed: stats.shed,
            unauthorized: stats.unauthorized,
            rate_limited: stats.rate_limited,
            log_position: stats.log_position,
            live_assets: stats.actors.live as u64,
            stopping_assets: stats.actors.stopping as u64,
            waiting_assets: stats.actors.waiting as u64,
            asset_waits: stats.actors.waited,
        }))
    }
}
