//! `TwinLinkPlugin`: the link's events into the [`TwinView`] resource, and the camera's
//! viewport back to the link as a subscription.

use std::collections::{BTreeMap, HashMap};

use bevy::prelude::*;

use crate::camera::OrbitCamera;
use crate::link::{LinkConfig, LinkEvent, LinkHandles, Selection, ViewRequest};
use crate::model::{AlertItem, AssetDatum, CellTable, METRICS, MetricSpec, Projection, Rate, Timeline, Viewport};

/// State of the connection to the twin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Connection {
    /// Not connected yet.
    #[default]
    Connecting,
    /// Streaming.
    Connected,
    /// Lost; the link retries.
    Lost(String),
}

/// Everything the viewer knows of the twin. Systems read it; only [`drain_link`] writes the
/// twin's data.
#[derive(Resource, Debug, Default)]
pub struct TwinView {
    /// Connection state.
    pub connection: Connection,
    /// The cells on the map.
    pub cells: CellTable,
    /// Cells changed since the map mesh was built.
    pub cells_dirty: bool,
    /// Markers in view (fine zoom).
    pub assets: HashMap<String, AssetDatum>,
    /// Markers changed since their mesh was built.
    pub assets_dirty: bool,
    /// Open alerts.
    pub alerts: Vec<AlertItem>,
    /// Details of the selection.
    pub details: Vec<String>,
    /// Events per second in view.
    pub rate: Rate,
    /// Inventory totals.
    pub inventory: Option<(u64, BTreeMap<String, u64>)>,
    /// World placement, fixed by the first snapshot.
    pub projection: Option<Projection>,
    /// Snapshots received (the first one fits the camera).
    pub snapshots: u64,
    /// The roads and buildings the twin serves (`Query.Geometry`), when it has some.
    pub served_geometry: Option<crate::geometry::Geometry>,
    /// The twin's history: its oldest event and its live clock (the time slider's ends).
    pub timeline: Timeline,
    /// The time the map shows when it shows the past (a history frame); `None` when live.
    pub history: Option<i64>,
    /// Asset lists received (`Query.Assets`): street zoom is drawn once one arrived.
    pub asset_loads: u64,
}

/// What the viewer shows: the metric (`M`), the level of detail (`[` `]`), the selection.
#[derive(Resource, Debug, Clone, Default, PartialEq)]
pub struct ViewSettings {
    /// Index into [`METRICS`].
    pub metric: usize,
    /// Zoom shift, in H3 resolutions.
    pub detail: i8,
    /// The subscribed viewport.
    pub subscribed: Option<Viewport>,
    /// What a click selected.
    pub selected: Option<Selection>,
    /// The time slider: the map as it was at this time (seconds since the epoch); live
    /// when `None`.
    pub at: Option<i64>,
}

impl ViewSettings {
    /// The metric shown.
    pub fn metric(&self) -> MetricSpec {
        METRICS[self.metric % METRICS.len()]
    }

    /// The request for the link.
    pub fn request(&self) -> ViewRequest {
        ViewRequest { viewport: self.subscribed, metric: self.metric().name.to_owned(), at: self.at }
    }

    /// Whether the map shows individual assets: street zoom, live (the past shows cells).
    pub fn shows_assets(&self) -> bool {
        self.subscribed.is_some_and(|v| v.fine()) && self.at.is_none()
    }
}

/// The system that applies the link's events; what draws the view runs after it.
#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub struct LinkSet;

/// The link's handles, as a resource (absent when the app runs without a twin, in tests).
#[derive(Resource, Debug)]
pub struct Link(pub LinkHandles);

/// Connects the ECS to the twin. See the module documentation.
#[derive(Debug, Default)]
pub struct TwinLinkPlugin {
    /// Where the twin is; `None` leaves it to the caller to insert a [`Link`] (tests do).
    pub config: Option<LinkConfig>,
    /// What to show first (`--at` starts in the past).
    pub settings: ViewSettings,
}

impl Plugin for TwinLinkPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<TwinView>().insert_resource(self.settings.clone()).add_systems(
            Update,
            (
                drain_link.in_set(LinkSet).before(crate::camera::CameraSet),
                follow_viewport.after(crate::camera::CameraSet),
                metric_keys,
            ),
        );
        if let Some(config) = &self.config {
            app.insert_resource(Link(crate::link::start(config.clone(), self.settings.request())));
        }
    }
}

/// At most this many link events per frame, so a burst never stalls a frame.
const EVENTS_PER_FRAME: usize = 512;

/// Applies what the link learned since the last frame. Never waits.
pub fn drain_link(link: Option<Res<Link>>, mut view: ResMut<TwinView>, settings: Res<ViewSettings>, time: Res<Time>) {
    let Some(link) = link else { return };
    let Ok(mut events) = link.0.events.lock() else { return };
    let alert_metric = settings.metric().name.is_empty();
    for _ in 0..EVENTS_PER_FRAME {
        let Ok(event) = events.try_recv() else { break };
        apply(&mut view, event, alert_metric, time.elapsed_secs_f64());
    }
}

/// One link event into the view.
pub fn apply(view: &mut TwinView, event: LinkEvent, alert_metric: bool, now: f64) {
    match event {
        LinkEvent::Connected => view.connection = Connection::Connected,
        LinkEvent::Disconnected(reason) => view.connection = Connection::Lost(reason),
        LinkEvent::Frame { resolution, snapshot, history, span: (since, latest), until, cells } => {
            if snapshot {
                debug!(cells = cells.len(), ?resolution, history, "snapshot");
                view.timeline.since = since.or(view.timeline.since);
                view.timeline.live = view.timeline.live.max(latest);
            }
            if !snapshot && view.history.is_some() {
                // A live frame sent before the viewer went back in time: the past stays.
                return;
            }
            if view.projection.is_none() {
                view.projection = Projection::around(cells.iter().map(|c| c.cell));
            }
            if snapshot {
                view.snapshots += 1;
            } else {
                view.rate.record(now, cells.iter().map(|c| c.events).sum());
            }
            view.cells.apply(resolution, snapshot, &cells, alert_metric);
            if history {
                view.history = until;
                view.cells.until = until;
            } else {
                view.history = None;
                view.timeline.live = view.timeline.live.max(view.cells.until).max(until);
            }
            view.cells_dirty = true;
        }
        LinkEvent::Assets(assets) => {
            view.assets = assets.into_iter().collect();
            view.assets_dirty = true;
            view.asset_loads += 1;
        }
        LinkEvent::AssetEvent(_) if view.history.is_some() => {
            // Sent live before the viewer went back in time: the past stays as it was.
        }
        LinkEvent::AssetEvent(change) => {
            if let Some(asset) = view.assets.get_mut(&change.asset_id) {
                if let Some((lat, lng)) = change.location {
                    (asset.lat, asset.lng) = (lat, lng);
                }
                if let Some(status) = change.status {
                    asset.status = status;
                }
                if let Some((metric, value)) = change.reading {
                    asset.last_values.insert(metric, value);
                }
                view.assets_dirty = true;
            }
            view.rate.record(now, 1);
            view.cells.until = view.cells.until.max(change.time);
            view.timeline.live = view.timeline.live.max(change.time);
        }
        LinkEvent::Alerts(alerts) => {
            view.alerts = alerts;
            view.alerts.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| a.rule_id.cmp(&b.rule_id)));
        }
        LinkEvent::Inventory { total, by_status } => view.inventory = Some((total, by_status)),
        LinkEvent::Details(lines) => view.details = lines,
        LinkEvent::Geometry(geometry) => view.served_geometry = Some(geometry),
    }
}

/// Renews the subscription when the camera moved far enough, or the detail changed.
pub fn follow_viewport(
    link: Option<Res<Link>>,
    mut settings: ResMut<ViewSettings>,
    mut view: ResMut<TwinView>,
    cameras: Query<&OrbitCamera>,
    windows: Query<&Window>,
) {
    let (Some(projection), Ok(camera)) = (view.projection, cameras.single()) else { return };
    if view.snapshots == 0 {
        return;
    }
    let width = windows.iter().next().map_or(1280.0, Window::width);
    let next =
        Viewport::of_camera(&projection, (camera.focus.x, camera.focus.y), camera.distance, width, settings.detail);
    let renew = settings.subscribed.is_none_or(|current| current.needs_resubscribe(&next));
    if renew {
        if settings.subscribed.is_none_or(|current| current.fine() != next.fine()) {
            view.cells_dirty = true;
        }
        debug!(?next, "subscribing");
        settings.subscribed = Some(next);
        if let Some(link) = link {
            link.0.view.send_replace(settings.request());
        }
    }
}

/// `M` cycles the metric, `[` and `]` change the level of detail.
pub fn metric_keys(keys: Res<ButtonInput<KeyCode>>, mut settings: ResMut<ViewSettings>, link: Option<Res<Link>>) {
    let mut changed = false;
    if keys.just_pressed(KeyCode::KeyM) {
        settings.metric = (settings.metric + 1) % METRICS.len();
        changed = true;
    }
    if keys.just_pressed(KeyCode::BracketRight) && settings.detail < 4 {
        settings.detail += 1;
        settings.subscribed = None;
    }
    if keys.just_pressed(KeyCode::BracketLeft) && settings.detail > -4 {
        settings.detail -= 1;
        settings.subscribed = None;
    }
    if changed && let Some(link) = link {
        link.0.view.send_replace(settings.request());
    }
}
