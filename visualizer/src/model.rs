//! What the viewer knows of the twin, and the pure mappings the systems use: metric → colour
//! and height, geography ↔ world coordinates, camera → viewport subscription.
//!
//! Nothing here touches Bevy's renderer or the network, so all of it is tested directly.

use std::collections::BTreeMap;

use h3o::{CellIndex, LatLng, Resolution};

/// A metric the map can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricSpec {
    /// The metric name in the twin's events (`pm25`); empty for the alert count.
    pub name: &'static str,
    /// What the legend calls it.
    pub label: &'static str,
    /// Its unit.
    pub unit: &'static str,
}

/// The metrics `M` cycles through, in order. The first is the default.
pub const METRICS: &[MetricSpec] = &[
    MetricSpec { name: "pm25", label: "PM2.5", unit: "ug/m3" },
    MetricSpec { name: "vehicle_count", label: "Traffic flow", unit: "vehicles" },
    MetricSpec { name: "avg_speed", label: "Average speed", unit: "km/h" },
    MetricSpec { name: "no2", label: "NO2", unit: "ug/m3" },
    MetricSpec { name: "temperature", label: "Temperature", unit: "C" },
    MetricSpec { name: "power", label: "Power", unit: "kW" },
    MetricSpec { name: "", label: "Open alerts", unit: "alerts" },
];

/// The legend's colour stops, low to high (linear interpolation in sRGB).
pub const RAMP: [[f32; 3]; 5] =
    [[0.16, 0.20, 0.55], [0.10, 0.55, 0.65], [0.30, 0.75, 0.30], [0.95, 0.80, 0.15], [0.85, 0.12, 0.10]];

/// The colour of `t` in 0..=1 on [`RAMP`] (clamped).
pub fn ramp(t: f64) -> [f32; 3] {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) } as f32;
    let scaled = t * (RAMP.len() - 1) as f32;
    let i = (scaled.floor() as usize).min(RAMP.len() - 2);
    let f = scaled - i as f32;
    let (a, b) = (RAMP[i], RAMP[i + 1]);
    [0, 1, 2].map(|c| a[c] * (1.0 - f) + b[c] * f)
}

/// What the map knows of one cell.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CellDatum {
    /// Latest value of the chosen metric (the alert count for the alert metric).
    pub value: Option<f64>,
    /// Events seen since the snapshot.
    pub events: u64,
    /// Open alerts (snapshot) plus alerts raised since.
    pub alerts: u64,
    /// Assets located there (from the snapshot).
    pub assets: u64,
    /// Latest event time, seconds since the epoch.
    pub last_time: Option<i64>,
}

/// One cell of a frame from the twin (a `CellSummary`, decoded).
#[derive(Debug, Clone, PartialEq)]
pub struct CellUpdate {
    /// The cell.
    pub cell: CellIndex,
    /// Events in it since the last frame (0 in a snapshot).
    pub events: u64,
    /// Alerts: open ones in a snapshot, raised since the last frame otherwise.
    pub alerts: u64,
    /// Mean of the metric.
    pub mean: Option<f64>,
    /// Assets located there (snapshot only).
    pub assets: u64,
    /// Latest event time, seconds since the epoch.
    pub last_time: Option<i64>,
}

/// The cells on the map, at one resolution, for one metric.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CellTable {
    /// The cells' resolution.
    pub resolution: Option<Resolution>,
    /// Per cell.
    pub cells: BTreeMap<CellIndex, CellDatum>,
    /// Latest event time of any frame (the twin's clock: sim time for a scenario).
    pub until: Option<i64>,
}

impl CellTable {
    /// Applies a frame: a snapshot replaces the table, a live frame updates it.
    pub fn apply(&mut self, resolution: Resolution, snapshot: bool, cells: &[CellUpdate], alert_metric: bool) {
        if snapshot || self.resolution != Some(resolution) {
            self.cells.clear();
            self.resolution = Some(resolution);
        }
        for update in cells {
            let datum = self.cells.entry(update.cell).or_default();
            if snapshot {
                datum.alerts = update.alerts;
                datum.assets = update.assets;
            } else {
                datum.events += update.events;
                datum.alerts += update.alerts;
            }
            if alert_metric {
                datum.value = Some(datum.alerts as f64);
            } else if update.mean.is_some() {
                datum.value = update.mean;
            }
            datum.last_time = datum.last_time.max(update.last_time);
            self.until = self.until.max(update.last_time);
        }
    }

    /// The smallest and largest value on the map (equal bounds widened so `t` stays defined).
    pub fn range(&self) -> Option<(f64, f64)> {
        let mut values = self.cells.values().filter_map(|d| d.value).filter(|v| v.is_finite());
        let first = values.next()?;
        let (low, high) = values.fold((first, first), |(lo, hi), v| (lo.min(v), hi.max(v)));
        Some(if high > low { (low, high) } else { (low - 0.5, high + 0.5) })
    }

    /// The cell with the largest value.
    pub fn hottest(&self) -> Option<(CellIndex, f64)> {
        self.cells
            .iter()
            .filter_map(|(cell, d)| d.value.map(|v| (*cell, v)))
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
    }
}

/// Where `value` falls in `range`, 0..=1.
pub fn normalized(value: f64, (low, high): (f64, f64)) -> f64 {
    ((value - low) / (high - low)).clamp(0.0, 1.0)
}

/// Lifecycle status of an asset as the markers colour it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MarkerStatus {
    /// Reporting.
    Online,
    /// Silent past its interval, or offline.
    Offline,
    /// With an open alert.
    Alerting,
    /// In maintenance.
    Maintenance,
    /// Created or commissioned, not yet online; or decommissioned.
    Inactive,
}

impl MarkerStatus {
    /// From the twin's status name and open-alert count.
    pub fn from_twin(status: &str, open_alerts: u32) -> Self {
        match status {
            _ if open_alerts > 0 => MarkerStatus::Alerting,
            "online" => MarkerStatus::Online,
            "offline" => MarkerStatus::Offline,
            "maintenance" => MarkerStatus::Maintenance,
            _ => MarkerStatus::Inactive,
        }
    }

    /// The marker colour (sRGB).
    pub fn colour(self) -> [f32; 3] {
        match self {
            MarkerStatus::Online => [0.20, 0.85, 0.35],
            MarkerStatus::Offline => [0.45, 0.45, 0.50],
            MarkerStatus::Alerting => [1.00, 0.15, 0.55],
            MarkerStatus::Maintenance => [1.00, 0.60, 0.10],
            MarkerStatus::Inactive => [0.35, 0.60, 0.95],
        }
    }

    /// What the legend calls it.
    pub fn label(self) -> &'static str {
        match self {
            MarkerStatus::Online => "online",
            MarkerStatus::Offline => "offline",
            MarkerStatus::Alerting => "alerting",
            MarkerStatus::Maintenance => "maintenance",
            MarkerStatus::Inactive => "inactive",
        }
    }
}

/// What the markers know of one asset.
#[derive(Debug, Clone, PartialEq)]
pub struct AssetDatum {
    /// Its type (`air_quality_sensor`).
    pub asset_type: String,
    /// Where it is.
    pub lat: f64,
    /// Where it is.
    pub lng: f64,
    /// Its status.
    pub status: MarkerStatus,
    /// Latest value per metric.
    pub last_values: BTreeMap<String, f64>,
}

/// Marker size (width, height) in metres by asset type: a shape per type.
pub fn marker_shape(asset_type: &str) -> (f32, f32) {
    match asset_type {
        t if t.contains("bus") => (22.0, 10.0),
        t if t.contains("light") => (5.0, 30.0),
        t if t.contains("traffic") || t.contains("counter") => (12.0, 12.0),
        t if t.contains("meter") => (9.0, 6.0),
        t if t.contains("parking") => (10.0, 3.0),
        _ => (8.0, 16.0),
    }
}

/// A local flat projection around an origin: metres east (x) and south (z), y up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Projection {
    /// The origin, degrees.
    pub lat0: f64,
    /// The origin, degrees.
    pub lng0: f64,
}

const METRES_PER_DEGREE: f64 = 111_320.0;

impl Projection {
    /// World x, z (metres) of a point.
    pub fn to_world(&self, lat: f64, lng: f64) -> (f32, f32) {
        let x = (lng - self.lng0) * METRES_PER_DEGREE * self.lat0.to_radians().cos();
        let z = -(lat - self.lat0) * METRES_PER_DEGREE;
        (x as f32, z as f32)
    }

    /// The point at world x, z.
    pub fn to_geo(&self, x: f32, z: f32) -> (f64, f64) {
        let lat = self.lat0 - f64::from(z) / METRES_PER_DEGREE;
        let lng = self.lng0 + f64::from(x) / (METRES_PER_DEGREE * self.lat0.to_radians().cos());
        (lat, lng)
    }

    /// A projection centred on the middle of `cells`.
    pub fn around(cells: impl IntoIterator<Item = CellIndex>) -> Option<Self> {
        let (mut south, mut west, mut north, mut east) = (90.0f64, 180.0f64, -90.0f64, -180.0f64);
        let mut any = false;
        for cell in cells {
            let c = LatLng::from(cell);
            (south, north, west, east) = (south.min(c.lat()), north.max(c.lat()), west.min(c.lng()), east.max(c.lng()));
            any = true;
        }
        any.then(|| Projection { lat0: (south + north) / 2.0, lng0: (west + east) / 2.0 })
    }
}

/// A map viewport: what the viewer asks the twin to stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Viewport {
    /// South, west, north, east in degrees.
    pub bbox: (f64, f64, f64, f64),
    /// Web-map zoom level.
    pub zoom: f64,
}

/// The zoom at or above which the twin streams assets instead of cell aggregates (the
/// server's default).
pub const FINE_ZOOM: f64 = 14.0;

/// The H3 resolution the server aggregates at for a zoom level (the server's rule: about
/// one hexagon per 30 pixels), shifted by the viewer's `detail` (`[` and `]`).
pub fn zoom_resolution(zoom: f64) -> u8 {
    ((zoom - 2.0) * 0.75).round().clamp(0.0, 15.0) as u8
}

/// The web-map zoom at which `width_m` metres fill `width_px` pixels at latitude `lat`.
pub fn zoom_for(width_m: f64, width_px: f64, lat: f64) -> f64 {
    let metres_per_pixel = width_m.max(1.0) / width_px.max(1.0);
    (156_543.034 * lat.to_radians().cos() / metres_per_pixel).log2().clamp(0.0, 22.0)
}

/// The camera distance (metres) at which a window `width_px` wide shows web zoom `zoom` at
/// latitude `lat`: the inverse of [`Viewport::of_camera`]'s zoom (`--zoom`).
pub fn distance_for_zoom(zoom: f64, width_px: f64, lat: f64) -> f32 {
    let metres_per_pixel = 156_543.034 * lat.to_radians().cos() / zoom.clamp(0.0, 22.0).exp2();
    // of_camera sees 2 × 0.9 × distance metres across the window.
    (metres_per_pixel * width_px.max(1.0) / 1.8) as f32
}

/// The twin's history as the time slider spans it: from its oldest event to its live clock
/// (seconds since the epoch). The slider's position is `at`: a time in the past, or `None`
/// for live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeline {
    /// The twin's oldest event.
    pub since: Option<i64>,
    /// The latest event time seen live.
    pub live: Option<i64>,
}

impl Timeline {
    /// The span, when both ends are known and it is not empty.
    fn span(&self) -> Option<(i64, i64)> {
        let (since, live) = (self.since?, self.live?);
        (live > since).then_some((since, live))
    }

    /// Where `at` stands on the slider, 0 (oldest) to 1 (live).
    pub fn fraction(&self, at: Option<i64>) -> f32 {
        match (at, self.span()) {
            (Some(at), Some((since, live))) => ((at - since) as f64 / (live - since) as f64).clamp(0.0, 1.0) as f32,
            _ => 1.0,
        }
    }

    /// The time at `fraction` (0..=1) of the slider; live (`None`) at its last half percent.
    pub fn time_at(&self, fraction: f32) -> Option<i64> {
        let (since, live) = self.span()?;
        let fraction = f64::from(fraction.clamp(0.0, 1.0));
        (fraction < 0.995).then(|| since + ((live - since) as f64 * fraction).round() as i64)
    }

    /// `at` moved by `seconds` (back when negative), kept within the span; stepping past the
    /// live end goes live.
    pub fn step(&self, at: Option<i64>, seconds: i64) -> Option<i64> {
        let (since, live) = self.span()?;
        let next = at.unwrap_or(live).saturating_add(seconds);
        (next < live).then(|| next.max(since))
    }
}

impl Viewport {
    /// The viewport of a camera looking at `focus` (world x, z) from `distance` metres, with a
    /// window `width_px` wide; `detail` shifts the zoom (each step about one H3 resolution).
    pub fn of_camera(projection: &Projection, focus: (f32, f32), distance: f32, width_px: f32, detail: i8) -> Self {
        // About the ground width a 45° field of view sees at that distance, widened for tilt.
        let half = f64::from(distance) * 0.9;
        let (lat, lng) = projection.to_geo(focus.0, focus.1);
        let dlat = half / METRES_PER_DEGREE;
        let dlng = half / (METRES_PER_DEGREE * lat.to_radians().cos());
        let zoom = zoom_for(2.0 * half, f64::from(width_px), lat) + f64::from(detail) / 0.75;
        Viewport {
            bbox: ((lat - dlat).max(-90.0), (lng - dlng).max(-180.0), (lat + dlat).min(90.0), (lng + dlng).min(180.0)),
            zoom: zoom.clamp(0.0, 22.0),
        }
    }

    /// Whether assets (rather than cell aggregates) are streamed at this zoom.
    pub fn fine(&self) -> bool {
        self.zoom >= FINE_ZOOM
    }

    /// Whether moving from `self` (the subscribed viewport) to `next` warrants a new
    /// subscription: another resolution or level of detail, or a pan of more than a quarter
    /// of the view.
    pub fn needs_resubscribe(&self, next: &Viewport) -> bool {
        if zoom_resolution(self.zoom) != zoom_resolution(next.zoom) || self.fine() != next.fine() {
            return true;
        }
        let (s0, w0, n0, e0) = self.bbox;
        let (s1, w1, n1, e1) = next.bbox;
        let (height, width) = (n0 - s0, e0 - w0);
        ((s1 + n1) / 2.0 - (s0 + n0) / 2.0).abs() > height / 4.0
            || ((w1 + e1) / 2.0 - (w0 + e0) / 2.0).abs() > width / 4.0
            || ((n1 - s1) / height - 1.0).abs() > 0.5
    }
}

/// The cell under a point at a resolution.
pub fn cell_at(lat: f64, lng: f64, resolution: Resolution) -> Option<CellIndex> {
    LatLng::new(lat, lng).ok().map(|ll| ll.to_cell(resolution))
}

/// Events per second over a sliding window of frames.
#[derive(Debug, Clone, Default)]
pub struct Rate {
    samples: std::collections::VecDeque<(f64, u64)>,
}

impl Rate {
    /// Records `events` seen at time `now` (seconds).
    pub fn record(&mut self, now: f64, events: u64) {
        self.samples.push_back((now, events));
        while self.samples.front().is_some_and(|(t, _)| now - t > 5.0) {
            self.samples.pop_front();
        }
    }

    /// Events per second over the window.
    pub fn per_second(&self) -> f64 {
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else { return 0.0 };
        let span = last.0 - first.0;
        if span <= 0.0 {
            return 0.0;
        }
        let events: u64 = self.samples.iter().skip(1).map(|(_, n)| n).sum();
        events as f64 / span
    }
}

/// An open alert as the side panel lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertItem {
    /// The rule.
    pub rule_id: String,
    /// Severity.
    pub severity: String,
    /// The asset, if any.
    pub asset_id: String,
    /// Its cell.
    pub cell: Option<CellIndex>,
    /// When, seconds since the epoch.
    pub time: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_steps_within_the_twins_history_and_goes_live_past_its_end() {
        let timeline = Timeline { since: Some(1_000), live: Some(11_000) };
        assert_eq!(timeline.step(None, -900), Some(10_100), "back from live");
        assert_eq!(timeline.step(Some(1_500), -900), Some(1_000), "not before the oldest event");
        assert_eq!(timeline.step(Some(10_500), 900), None, "past the live end: live");
        assert_eq!(timeline.fraction(Some(6_000)), 0.5);
        assert_eq!(timeline.fraction(None), 1.0);
        assert_eq!(timeline.time_at(0.25), Some(3_500));
        assert_eq!(timeline.time_at(0.999), None, "the slider's end is live");
        let unknown = Timeline { since: None, live: Some(11_000) };
        assert_eq!(unknown.step(None, -900), None, "no history known: stays live");
        assert_eq!(unknown.time_at(0.5), None);
    }

    #[test]
    fn a_camera_placed_for_a_zoom_sees_that_zoom() {
        let projection = Projection { lat0: 60.17, lng0: 24.94 };
        for zoom in [11.0, 14.0, 16.5] {
            let distance = distance_for_zoom(zoom, 1280.0, 60.17);
            let viewport = Viewport::of_camera(&projection, (0.0, 0.0), distance, 1280.0, 0);
            assert!((viewport.zoom - zoom).abs() < 1e-3, "zoom {zoom}: got {viewport:?}");
        }
    }

    fn cell(lat: f64, lng: f64) -> CellIndex {
        cell_at(lat, lng, Resolution::Eight).unwrap()
    }

    fn update(cell: CellIndex, mean: Option<f64>, events: u64, alerts: u64) -> CellUpdate {
        CellUpdate { cell, events, alerts, mean, assets: 2, last_time: Some(100) }
    }

    #[test]
    fn the_ramp_runs_from_the_first_stop_to_the_last() {
        assert_eq!(ramp(0.0), RAMP[0]);
        assert_eq!(ramp(1.0), RAMP[4]);
        assert_eq!(ramp(7.0), RAMP[4], "clamped");
        assert_eq!(ramp(f64::NAN), RAMP[0]);
        let mid = ramp(0.125);
        for ch in 0..3 {
            assert!((mid[ch] - (RAMP[0][ch] + RAMP[1][ch]) / 2.0).abs() < 1e-6, "{mid:?}");
        }
    }

    #[test]
    fn a_snapshot_replaces_the_table_and_live_frames_update_it() {
        let (a, b) = (cell(60.17, 24.94), cell(60.20, 24.66));
        let mut table = CellTable::default();
        table.apply(Resolution::Eight, true, &[update(a, Some(10.0), 0, 1), update(b, Some(40.0), 0, 0)], false);
        assert_eq!(table.range(), Some((10.0, 40.0)));
        assert_eq!(table.hottest(), Some((b, 40.0)));
        table.apply(Resolution::Eight, false, &[update(a, Some(70.0), 3, 2), update(b, None, 1, 0)], false);
        assert_eq!(
            table.cells[&a],
            CellDatum { value: Some(70.0), events: 3, alerts: 3, assets: 2, last_time: Some(100) }
        );
        assert_eq!(table.cells[&b].value, Some(40.0), "a frame without readings keeps the value");
        assert_eq!(table.hottest(), Some((a, 70.0)));
        table.apply(Resolution::Eight, true, &[update(b, Some(5.0), 0, 0)], false);
        assert_eq!(table.cells.len(), 1);
        assert_eq!(table.range(), Some((4.5, 5.5)), "one value: a range around it");
    }

    #[test]
    fn the_alert_metric_counts_alerts() {
        let a = cell(60.17, 24.94);
        let mut table = CellTable::default();
        table.apply(Resolution::Eight, true, &[update(a, Some(10.0), 0, 2)], true);
        table.apply(Resolution::Eight, false, &[update(a, Some(10.0), 1, 1)], true);
        assert_eq!(table.cells[&a].value, Some(3.0));
    }

    #[test]
    fn the_projection_round_trips_and_points_north_to_minus_z() {
        let p = Projection { lat0: 60.17, lng0: 24.94 };
        let (x, z) = p.to_world(60.18, 24.95);
        assert!(x > 500.0 && z < -1000.0, "{x} {z}");
        let (lat, lng) = p.to_geo(x, z);
        assert!((lat - 60.18).abs() < 1e-6 && (lng - 24.95).abs() < 1e-6);
    }

    #[test]
    fn zooming_in_switches_from_cells_to_assets_and_changes_the_resolution() {
        let p = Projection { lat0: 60.17, lng0: 24.94 };
        let city = Viewport::of_camera(&p, (0.0, 0.0), 20_000.0, 1280.0, 0);
        let street = Viewport::of_camera(&p, (0.0, 0.0), 400.0, 1280.0, 0);
        assert!(!city.fine() && street.fine(), "{city:?} {street:?}");
        assert!(zoom_resolution(city.zoom) < 8, "{city:?}");
        assert!(city.needs_resubscribe(&street));
        let (s, w, n, e) = city.bbox;
        assert!(s < 60.17 && n > 60.17 && w < 24.94 && e > 24.94);
    }

    #[test]
    fn small_pans_keep_the_subscription_and_large_ones_renew_it() {
        let p = Projection { lat0: 60.17, lng0: 24.94 };
        let view = Viewport::of_camera(&p, (0.0, 0.0), 5_000.0, 1280.0, 0);
        assert!(!view.needs_resubscribe(&Viewport::of_camera(&p, (500.0, 0.0), 5_000.0, 1280.0, 0)));
        assert!(view.needs_resubscribe(&Viewport::of_camera(&p, (3_000.0, 0.0), 5_000.0, 1280.0, 0)));
        assert!(view.needs_resubscribe(&Viewport::of_camera(&p, (0.0, 0.0), 5_000.0, 1280.0, 2)), "more detail");
    }

    #[test]
    fn the_event_rate_is_measured_over_the_window() {
        let mut rate = Rate::default();
        rate.record(0.0, 0);
        rate.record(1.0, 100);
        rate.record(2.0, 300);
        assert!((rate.per_second() - 200.0).abs() < 1e-9);
        rate.record(10.0, 50);
        assert_eq!(rate.per_second(), 0.0, "old samples leave the window");
    }

    #[test]
    fn markers_show_alerts_before_status() {
        assert_eq!(MarkerStatus::from_twin("online", 1), MarkerStatus::Alerting);
        assert_eq!(MarkerStatus::from_twin("online", 0), MarkerStatus::Online);
        assert_eq!(MarkerStatus::from_twin("commissioned", 0), MarkerStatus::Inactive);
        assert_ne!(marker_shape("bus"), marker_shape("streetlight"));
    }
}
