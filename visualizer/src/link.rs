//! The network side: a tokio runtime on its own thread that talks to the twin over gRPC
//! (`Subscribe.Viewport`, `Query.*`) and hands what it learns to the ECS through a bounded
//! channel. The render loop only ever `try_recv`s; the link reconnects with backoff when the
//! server goes away.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use citytwin_core::event::{Event, EventKind, MaintenancePhase, Payload};
use citytwin_proto::convert::event_from_proto;
use citytwin_proto::v1;
use h3o::{CellIndex, Resolution};
use tokio::sync::{mpsc, watch};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::model::{AlertItem, AssetDatum, CellUpdate, MarkerStatus, Viewport};

/// Where the twin is and how to authenticate.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// `http://host:port`, or `https://` for a TLS server.
    pub endpoint: String,
    /// An organization's API token.
    pub token: String,
    /// PEM CA for `https://` (system roots otherwise).
    pub ca: Option<std::path::PathBuf>,
}

/// What the viewer asks the twin to stream.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewRequest {
    /// The map viewport; the whole twin at city zoom when `None` (before the first snapshot).
    pub viewport: Option<Viewport>,
    /// The metric aggregated per cell (empty: every metric).
    pub metric: String,
    /// The map as it was at this time (seconds since the epoch, the time slider); live when
    /// `None`.
    pub at: Option<i64>,
}

/// What a click selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// A cell.
    Cell(CellIndex),
    /// An asset.
    Asset(String),
}

/// Something the link learned, for the ECS.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkEvent {
    /// Connected to the twin.
    Connected,
    /// Lost (or could not reach) the twin; the link retries.
    Disconnected(String),
    /// A viewport frame of cells.
    Frame {
        /// Its resolution.
        resolution: Resolution,
        /// The map as it is (first frame of a stream), not a change.
        snapshot: bool,
        /// The map as it was at `until`, from the twin's log (the time slider).
        history: bool,
        /// Snapshots: the times of the twin's oldest and newest events, seconds since the
        /// epoch.
        span: (Option<i64>, Option<i64>),
        /// The frame's time: its latest event, or the time shown for a history frame.
        until: Option<i64>,
        /// Per cell.
        cells: Vec<CellUpdate>,
    },
    /// Assets in view (from `Query.Assets`): replaces the markers.
    Assets(Vec<(String, AssetDatum)>),
    /// A live event of one asset (fine zoom).
    AssetEvent(AssetChange),
    /// The open alerts in view.
    Alerts(Vec<AlertItem>),
    /// Inventory totals.
    Inventory {
        /// Assets.
        total: u64,
        /// By status.
        by_status: BTreeMap<String, u64>,
    },
    /// Details of the selection, as lines of text.
    Details(Vec<String>),
    /// The city's roads and buildings, as the twin serves them (parsed on the link thread).
    Geometry(crate::geometry::Geometry),
}

/// What one live event changes of an asset.
#[derive(Debug, Clone, PartialEq)]
pub struct AssetChange {
    /// The asset.
    pub asset_id: String,
    /// Its new position.
    pub location: Option<(f64, f64)>,
    /// Its new status.
    pub status: Option<MarkerStatus>,
    /// A new reading.
    pub reading: Option<(String, f64)>,
    /// Event time, seconds since the epoch.
    pub time: Option<i64>,
}

/// The ECS's ends of the link.
#[derive(Debug)]
pub struct LinkHandles {
    /// What the link learned (drained each frame, never awaited).
    pub events: Mutex<mpsc::Receiver<LinkEvent>>,
    /// The latest viewport request (the link follows the newest value).
    pub view: watch::Sender<ViewRequest>,
    /// Selections to look up.
    pub select: mpsc::UnboundedSender<Selection>,
}

/// The link's ends of the channels.
#[derive(Debug)]
pub struct LinkEnds {
    /// Where the link puts what it learned.
    pub events: mpsc::Sender<LinkEvent>,
    /// The viewer's latest request.
    pub view: watch::Receiver<ViewRequest>,
    /// Selections to look up.
    pub select: mpsc::UnboundedReceiver<Selection>,
}

/// Both ends of the link's channels, not connected to anything (the link thread takes the
/// [`LinkEnds`]; tests drive them directly).
pub fn channels(initial: ViewRequest) -> (LinkHandles, LinkEnds) {
    let (events_tx, events_rx) = mpsc::channel(1024);
    let (view_tx, view_rx) = watch::channel(initial);
    let (select_tx, select_rx) = mpsc::unbounded_channel();
    (
        LinkHandles { events: Mutex::new(events_rx), view: view_tx, select: select_tx },
        LinkEnds { events: events_tx, view: view_rx, select: select_rx },
    )
}

/// Starts the link thread.
pub fn start(config: LinkConfig, initial: ViewRequest) -> LinkHandles {
    let (handles, LinkEnds { events: events_tx, view: view_rx, select: select_rx }) = channels(initial);
    std::thread::Builder::new()
        .name("twin-link".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            match runtime {
                Ok(runtime) => runtime.block_on(run(config, events_tx, view_rx, select_rx)),
                Err(error) => tracing::error!(%error, "cannot start the link's runtime"),
            }
        })
        .expect("spawning the link thread");
    handles
}

async fn run(
    config: LinkConfig,
    events: mpsc::Sender<LinkEvent>,
    mut view: watch::Receiver<ViewRequest>,
    mut select: mpsc::UnboundedReceiver<Selection>,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let reason = match connect(&config).await {
            Ok(channel) => {
                backoff = Duration::from_millis(250);
                if events.send(LinkEvent::Connected).await.is_err() {
                    return;
                }
                session(&config.token, channel, &events, &mut view, &mut select).await
            }
            Err(error) => error,
        };
        if events.is_closed() {
            return;
        }
        tracing::warn!(%reason, retry_in = ?backoff, "twin link down");
        if events.send(LinkEvent::Disconnected(reason)).await.is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn connect(config: &LinkConfig) -> Result<Channel, String> {
    let mut endpoint = Channel::from_shared(config.endpoint.clone())
        .map_err(|e| format!("bad address {}: {e}", config.endpoint))?
        .connect_timeout(Duration::from_secs(3));
    if config.endpoint.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        tls = match &config.ca {
            Some(ca) => {
                let pem = std::fs::read(ca).map_err(|e| format!("reading {}: {e}", ca.display()))?;
                tls.ca_certificate(Certificate::from_pem(pem))
            }
            None => tls.with_native_roots(),
        };
        endpoint = endpoint.tls_config(tls).map_err(|e| format!("TLS: {e}"))?;
    }
    endpoint.connect().await.map_err(|e| format!("connecting to {}: {e}", config.endpoint))
}

fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

fn proto_bbox(viewport: Option<&Viewport>) -> Option<v1::BoundingBox> {
    viewport.map(|v| v1::BoundingBox { south: v.bbox.0, west: v.bbox.1, north: v.bbox.2, east: v.bbox.3 })
}

/// One connection's life: the viewport stream (renewed when the view changes), the open
/// alerts every two seconds, and selection look-ups. Returns why it ended.
async fn session(
    token: &str,
    channel: Channel,
    events: &mpsc::Sender<LinkEvent>,
    view: &mut watch::Receiver<ViewRequest>,
    select: &mut mpsc::UnboundedReceiver<Selection>,
) -> String {
    let mut subscribe = v1::subscribe_client::SubscribeClient::new(channel.clone());
    let mut query = v1::query_client::QueryClient::new(channel);
    let mut alerts_tick = tokio::time::interval(Duration::from_secs(2));
    // The city's geometry, once per connection (a twin without one answers with nothing).
    match query.geometry(authed(v1::GeometryRequest {}, token)).await {
        Ok(answer) => {
            let answer = answer.into_inner();
            if !answer.geojson.is_empty() {
                match crate::geometry::Geometry::parse(&answer.geojson) {
                    Ok(geometry) => {
                        tracing::info!(source = %answer.source, roads = geometry.roads.len(), buildings = geometry.buildings.len(), "geometry from the twin");
                        if events.send(LinkEvent::Geometry(geometry)).await.is_err() {
                            return "viewer closed".into();
                        }
                    }
                    Err(error) => tracing::warn!(source = %answer.source, %error, "the twin's geometry is not usable"),
                }
            }
        }
        Err(status) => tracing::debug!(status = %status.message(), "no geometry from the twin"),
    }
    loop {
        let request = view.borrow_and_update().clone();
        let viewport = request.viewport;
        // No viewport yet: the whole twin at a city-level zoom.
        let zoom = viewport.map_or(11.0, |v| v.zoom);
        // The past is shown as cells at every zoom: assets are live only.
        let fine = viewport.is_some_and(|v| v.fine()) && request.at.is_none();
        if fine {
            let assets = v1::AssetsRequest { bbox: proto_bbox(viewport.as_ref()), types: Vec::new(), limit: 20_000 };
            match query.assets(authed(assets, token)).await {
                Ok(answer) => {
                    let assets = answer.into_inner().assets.into_iter().filter_map(asset_datum).collect();
                    if events.send(LinkEvent::Assets(assets)).await.is_err() {
                        return "viewer closed".into();
                    }
                }
                Err(status) => return format!("Query.Assets: {}", status.message()),
            }
        }
        let stream_request = v1::ViewportRequest {
            bbox: proto_bbox(viewport.as_ref()),
            zoom,
            fine_zoom: crate::model::FINE_ZOOM,
            interval_s: 0.5,
            metric: request.metric.clone(),
            at: request.at.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
            lookback_s: 0.0,
        };
        let mut stream = match subscribe.viewport(authed(stream_request, token)).await {
            Ok(stream) => stream.into_inner(),
            Err(status) => return format!("Subscribe.Viewport: {}", status.message()),
        };
        loop {
            tokio::select! {
                changed = view.changed() => {
                    if changed.is_err() {
                        return "viewer closed".into();
                    }
                    break;
                }
                message = stream.message() => {
                    let update = match message {
                        Ok(Some(update)) => update,
                        Ok(None) => return "the twin ended the stream".into(),
                        Err(status) => return format!("stream: {}", status.message()),
                    };
                    let Some(event) = translate(update) else { continue };
                    if events.send(event).await.is_err() {
                        return "viewer closed".into();
                    }
                }
                _ = alerts_tick.tick() => {
                    let cells = Vec::new();
                    match query.open_alerts(authed(v1::OpenAlertsRequest { cells }, token)).await {
                        Ok(answer) => {
                            let alerts = answer.into_inner().alerts.into_iter().map(alert_item).collect();
                            if events.send(LinkEvent::Alerts(alerts)).await.is_err() {
                                return "viewer closed".into();
                            }
                        }
                        Err(status) => return format!("Query.OpenAlerts: {}", status.message()),
                    }
                    if let Ok(answer) = query.inventory(authed(v1::InventoryRequest {}, token)).await {
                        let answer = answer.into_inner();
                        let by_status = answer.by_status.into_iter().collect();
                        let _ = events.send(LinkEvent::Inventory { total: answer.total, by_status }).await;
                    }
                }
                Some(selection) = select.recv() => {
                    let lines = details(&mut query, token, &selection).await;
                    if events.send(LinkEvent::Details(lines)).await.is_err() {
                        return "viewer closed".into();
                    }
                }
            }
        }
    }
}

fn seconds(time: Option<&prost_types::Timestamp>) -> Option<i64> {
    time.map(|t| t.seconds)
}

fn parse_cell(text: &str) -> Option<CellIndex> {
    text.parse().ok()
}

fn alert_item(alert: v1::Alert) -> AlertItem {
    AlertItem {
        rule_id: alert.rule_id,
        severity: alert.severity,
        asset_id: alert.asset_id,
        cell: parse_cell(&alert.cell),
        time: seconds(alert.time.as_ref()),
    }
}

fn asset_datum(asset: v1::AssetSummary) -> Option<(String, AssetDatum)> {
    let (lat, lng) = (asset.lat?, asset.lng?);
    let datum = AssetDatum {
        status: MarkerStatus::from_twin(&asset.status, asset.open_alerts),
        asset_type: asset.asset_type,
        lat,
        lng,
        last_values: asset.last_values.into_iter().collect(),
    };
    Some((asset.asset_id, datum))
}

/// A viewport update as the ECS wants it.
pub fn translate(update: v1::ViewportUpdate) -> Option<LinkEvent> {
    match update.update? {
        v1::viewport_update::Update::Cells(frame) => {
            let resolution = Resolution::try_from(u8::try_from(frame.resolution).ok()?).ok()?;
            let cells = frame
                .cells
                .into_iter()
                .filter_map(|c| {
                    Some(CellUpdate {
                        cell: parse_cell(&c.cell)?,
                        events: c.events,
                        alerts: c.alerts,
                        mean: c.mean,
                        assets: c.assets,
                        last_time: seconds(c.last_time.as_ref()),
                    })
                })
                .collect();
            Some(LinkEvent::Frame {
                resolution,
                snapshot: frame.snapshot,
                history: frame.history,
                span: (seconds(frame.since.as_ref()), seconds(frame.latest.as_ref())),
                until: seconds(frame.until.as_ref()),
                cells,
            })
        }
        v1::viewport_update::Update::AssetEvent(delivery) => {
            let event = event_from_proto(delivery.event.as_ref()?).ok()?;
            asset_change(&event).map(LinkEvent::AssetEvent)
        }
    }
}

/// What a live event changes of its asset's marker.
pub fn asset_change(event: &Event) -> Option<AssetChange> {
    let payload = event.payload()?;
    let mut change = AssetChange {
        asset_id: payload.asset_id()?.to_owned(),
        location: None,
        status: None,
        reading: None,
        time: event.time.map(|t| t.as_secs()),
    };
    match payload {
        Payload::MetricRecorded(m) => {
            change.location = m.location.map(|l| (l.lat, l.lng));
            change.reading = Some((m.metric_type.to_string(), m.value));
        }
        Payload::AssetCreated(c) => change.location = c.location.map(|l| (l.lat, l.lng)),
        Payload::AssetOnline(o) => {
            change.location = o.location.map(|l| (l.lat, l.lng));
            change.status = Some(MarkerStatus::Online);
        }
        Payload::AlertTriggered(_) => change.status = Some(MarkerStatus::Alerting),
        Payload::AssetMaintenance(m) => {
            change.status = Some(match m.phase {
                MaintenancePhase::Started => MarkerStatus::Maintenance,
                MaintenancePhase::Completed => MarkerStatus::Offline,
            })
        }
        _ => {
            change.status = match event.kind()? {
                EventKind::AssetOffline => Some(MarkerStatus::Offline),
                EventKind::AssetCommissioned | EventKind::AssetDecommissioned => Some(MarkerStatus::Inactive),
                _ => None,
            }
        }
    }
    Some(change)
}

/// Lines describing a selected cell or asset.
async fn details(
    query: &mut v1::query_client::QueryClient<Channel>,
    token: &str,
    selection: &Selection,
) -> Vec<String> {
    match selection {
        Selection::Cell(cell) => {
            let mut lines = vec![format!("cell {cell} (res {})", u8::from(cell.resolution()))];
            let request = v1::CellAggregatesRequest { cell: cell.to_string(), resolution: None, at: None };
            match query.cell_aggregates(authed(request, token)).await {
                Ok(answer) => {
                    let mut results = answer.into_inner().results;
                    results.sort_by(|a, b| a.rule_id.cmp(&b.rule_id));
                    if results.is_empty() {
                        lines.push("no rule windows yet".into());
                    }
                    for window in results.iter().take(8) {
                        let mut values: Vec<String> =
                            window.values.iter().map(|(k, v)| format!("{k} {v:.1}")).collect();
                        values.sort();
                        lines.push(format!(
                            "rule {} [{}]: {}",
                            window.rule_id,
                            window.key.join(","),
                            values.join(", ")
                        ));
                    }
                }
                Err(status) => lines.push(format!("aggregates: {}", status.message())),
            }
            let request = v1::OpenAlertsRequest { cells: vec![cell.to_string()] };
            if let Ok(answer) = query.open_alerts(authed(request, token)).await {
                let alerts = answer.into_inner().alerts;
                lines.push(format!("open alerts: {}", alerts.len()));
                lines.extend(alerts.iter().take(5).map(|a| format!("  {} {} {}", a.severity, a.rule_id, a.asset_id)));
            }
            lines
        }
        Selection::Asset(asset) => {
            let request = v1::GetAssetRequest { asset_id: asset.clone(), at: None };
            let state = match query.get_asset(authed(request, token)).await {
                Ok(state) => state.into_inner(),
                Err(status) => return vec![format!("asset {asset}: {}", status.message())],
            };
            let mut lines = vec![
                format!("asset {} ({})", state.asset_id, state.asset_type),
                format!("status {} | version {}", state.status, state.version),
            ];
            if let Some(battery) = state.battery_pct {
                lines.push(format!("battery {battery:.0}%{}", if state.battery_low { " (low)" } else { "" }));
            }
            let mut metrics: Vec<_> = state.metrics.iter().collect();
            metrics.sort_by(|a, b| a.0.cmp(b.0));
            for (name, m) in metrics {
                lines.push(format!("{name}: {:.1} {} (mean {:.1}, n {})", m.last, m.unit, m.mean, m.count));
            }
            let history =
                v1::AssetHistoryRequest { asset_id: asset.clone(), from: None, to: None, types: vec![], limit: 0 };
            if let Ok(answer) = query.asset_history(authed(history, token)).await {
                let events = answer.into_inner().events;
                lines.push("last events:".into());
                for event in events.iter().rev().take(5) {
                    let kind = event.r#type.rsplit('.').next().unwrap_or_default();
                    lines.push(format!("  {kind}"));
                }
            }
            lines
        }
    }
}
