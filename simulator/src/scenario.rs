//! Scenario files: TOML in, a validated [`Scenario`] out, in two stages.
//!
//! Stage one deserializes the text into `Raw*` structs (syntax errors and unknown keys come
//! from `toml` with their position). Stage two validates every value and collects *all*
//! problems, each with the file, line, column and key path (`populations[1].metrics[0].unit`),
//! found by walking the spanned document that `toml` parses alongside. A what-if variant
//! (`extends = "base.toml"`) is merged over its bases first ([`extends`]). The format is
//! documented in `docs/scenarios.md`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use citytwin_core::event::{Location, Severity, Timestamp, Unit};
use h3o::{CellIndex, LatLng, Resolution};
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::geometry::Roads;
use crate::profile::Profile;

/// One problem in a scenario file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line and column, when the key could be located.
    pub line: Option<(usize, usize)>,
    /// The key path (`populations[0].count`), empty for file-level problems.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.line {
            write!(f, ":{line}:{column}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a scenario file (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ScenarioErrors(pub Vec<ScenarioError>);

impl fmt::Display for ScenarioErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Stage one: the raw file.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    city: RawCity,
    #[serde(default)]
    rules: Vec<String>,
    #[serde(default)]
    populations: Vec<RawPopulation>,
    #[serde(default)]
    incidents: Vec<RawIncident>,
    #[serde(default)]
    interventions: Vec<RawIntervention>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCity {
    name: String,
    seed: u64,
    resolution: Option<u8>,
    start: String,
    duration: String,
    time_zone: Option<String>,
    area: RawArea,
    geometry: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArea {
    center: Option<[f64; 2]>,
    radius_km: Option<f64>,
    bbox: Option<[f64; 4]>,
    geojson: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPopulation {
    name: Option<String>,
    #[serde(rename = "type")]
    asset_type: String,
    count: u32,
    id_prefix: Option<String>,
    organization: Option<String>,
    placement: Option<RawPlacement>,
    interval: String,
    jitter: Option<String>,
    #[serde(default)]
    metrics: Vec<RawMetric>,
    battery: Option<RawBattery>,
    faults: Option<RawFaults>,
    route: Option<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    stops: u32,
    speed_kmh: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlacement {
    kind: String,
    centers: Option<Vec<[f64; 2]>>,
    spread_m: Option<f64>,
    at: Option<Vec<[f64; 2]>>,
    #[serde(default)]
    highways: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetric {
    name: String,
    unit: String,
    distribution: RawDistribution,
    profile: Option<String>,
    noise: Option<f64>,
    drift_per_day: Option<f64>,
    range: Option<[f64; 2]>,
    decimals: Option<u8>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDistribution {
    kind: String,
    mean: Option<f64>,
    sd: Option<f64>,
    lambda: Option<f64>,
    mu: Option<f64>,
    sigma: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    value: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBattery {
    start_pct: Option<[f64; 2]>,
    drain_pct_per_day: f64,
    report_every: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFaults {
    offline_per_day: Option<f64>,
    offline_duration: Option<String>,
    stuck_per_day: Option<f64>,
    stuck_duration: Option<String>,
    out_of_range_per_day: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIncident {
    kind: String,
    #[serde(default)]
    per_day: f64,
    #[serde(default)]
    at: Vec<String>,
    center: Option<[f64; 2]>,
    duration: Option<String>,
    severity: Option<String>,
    radius_m: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntervention {
    name: String,
    from: String,
    to: String,
    effect: RawEffect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEffect {
    kind: String,
    metric: Option<String>,
    factor: Option<f64>,
    center: Option<[f64; 2]>,
    radius_m: Option<f64>,
    cell: Option<String>,
    road: Option<String>,
    population: Option<String>,
    count: Option<u32>,
    facility: Option<String>,
    #[serde(default)]
    affects: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// Stage two: the validated scenario.

/// A validated scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Where it was read from (rule paths are relative to its directory).
    pub file: PathBuf,
    /// City name.
    pub name: String,
    /// The seed: same scenario and seed, same event stream.
    pub seed: u64,
    /// H3 resolution of the twin's cells.
    pub resolution: Resolution,
    /// Simulated start.
    pub start: Timestamp,
    /// Simulated duration.
    pub duration: Duration,
    /// Offset of local time from UTC, in seconds (for diurnal and weekly profiles).
    pub utc_offset_s: i32,
    /// The city's area.
    pub area: Area,
    /// Roads (GeoJSON), when the scenario names a geometry file.
    pub roads: Option<Arc<Roads>>,
    /// That geometry file, resolved against the scenario's directory (served to viewers).
    pub geometry: Option<PathBuf>,
    /// CEP rule files, resolved against the scenario's directory.
    pub rules: Vec<PathBuf>,
    /// Asset populations, in file order.
    pub populations: Vec<Population>,
    /// Incident processes.
    pub incidents: Vec<Incident>,
    /// What-if interventions.
    pub interventions: Vec<Intervention>,
}

impl Scenario {
    /// The end of the simulated period.
    pub fn end(&self) -> Timestamp {
        Timestamp::from_nanos(self.start.as_nanos().saturating_add(duration_ns(self.duration)))
    }

    /// Assets at start (interventions may add more later).
    pub fn asset_count(&self) -> u64 {
        self.populations.iter().map(|p| u64::from(p.count)).sum()
    }
}

/// The city's area.
#[derive(Debug, Clone, PartialEq)]
pub enum Area {
    /// A disc.
    Circle {
        /// Centre.
        center: Location,
        /// Radius in metres.
        radius_m: f64,
    },
    /// `(south, west, north, east)` in degrees.
    BBox(f64, f64, f64, f64),
    /// GeoJSON polygons.
    Polygon(Arc<geo::MultiPolygon<f64>>),
}

impl Area {
    /// The bounding box `(south, west, north, east)`.
    pub fn bbox(&self) -> (f64, f64, f64, f64) {
        match self {
            Area::BBox(s, w, n, e) => (*s, *w, *n, *e),
            Area::Polygon(area) => {
                use geo::BoundingRect as _;
                area.bounding_rect().map_or((0.0, 0.0, 0.0, 0.0), |r| (r.min().y, r.min().x, r.max().y, r.max().x))
            }
            &Area::Circle { center, radius_m } => {
                let dlat = radius_m / METRES_PER_DEGREE;
                let dlng = dlat / center.lat.to_radians().cos().max(1e-6);
                (center.lat - dlat, center.lng - dlng, center.lat + dlat, center.lng + dlng)
            }
        }
    }

    /// Whether `at` lies in the area.
    pub fn contains(&self, at: Location) -> bool {
        match self {
            Area::BBox(s, w, n, e) => (*s..=*n).contains(&at.lat) && (*w..=*e).contains(&at.lng),
            Area::Circle { center, radius_m } => distance_m(*center, at) <= *radius_m,
            Area::Polygon(area) => crate::geometry::area_contains(area, at),
        }
    }
}

/// Metres per degree of latitude.
pub const METRES_PER_DEGREE: f64 = 111_320.0;

/// Distance between two points in metres (equirectangular: exact enough within a city).
pub fn distance_m(a: Location, b: Location) -> f64 {
    let x = (b.lng - a.lng) * ((a.lat + b.lat) / 2.0).to_radians().cos();
    let y = b.lat - a.lat;
    (x * x + y * y).sqrt() * METRES_PER_DEGREE
}

/// Nanoseconds of a duration, saturating.
pub fn duration_ns(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

/// An asset population.
#[derive(Debug, Clone, PartialEq)]
pub struct Population {
    /// Name (defaults to the type); `add_assets` interventions refer to it.
    pub name: String,
    /// Asset type (`air_quality_sensor`...).
    pub asset_type: String,
    /// How many.
    pub count: u32,
    /// Asset ids are `<prefix>-<n>`.
    pub id_prefix: String,
    /// Organization that owns them.
    pub organization: Option<String>,
    /// Where they stand.
    pub placement: Placement,
    /// Time between readings.
    pub interval: Duration,
    /// Uniform jitter on each reading's time, ±.
    pub jitter: Duration,
    /// What they measure.
    pub metrics: Vec<Metric>,
    /// Battery drain (battery-powered assets report `battery` in %).
    pub battery: Option<Battery>,
    /// Fault processes.
    pub faults: Faults,
    /// Moving assets (buses) drive a loop through stops.
    pub route: Option<RouteSpec>,
}

/// How a moving population drives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteSpec {
    /// Stops per route (each asset its own loop, on roads when the scenario has them).
    pub stops: u32,
    /// Average speed, km/h.
    pub speed_kmh: f64,
}

/// Where a population's assets stand.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// Uniformly over the area.
    Uniform,
    /// Normally around centres (picked in turn), with `spread_m` standard deviation.
    Clustered {
        /// Centres.
        centers: Vec<Location>,
        /// Spread in metres.
        spread_m: f64,
    },
    /// At given coordinates, in turn.
    Points(Vec<Location>),
    /// On the scenario's roads (of these `highway` classes; all when empty), in proportion to
    /// road length.
    AlongRoads(Vec<String>),
}

/// A metric a population reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Name (`pm25`, `vehicle_count`...).
    pub name: String,
    /// Unit.
    pub unit: Unit,
    /// The base distribution.
    pub distribution: Distribution,
    /// Shape over the day and week.
    pub profile: Profile,
    /// Relative Gaussian noise (standard deviation as a fraction of the value).
    pub noise: f64,
    /// Relative drift per day (0.01: +1 % per day).
    pub drift_per_day: f64,
    /// Physical range; values are clamped into it, and out-of-range faults land outside.
    pub range: (f64, f64),
    /// Decimal places kept.
    pub decimals: u8,
}

/// A base distribution (scaled by the profile at each reading).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Distribution {
    /// Normal (mean, standard deviation).
    Normal(f64, f64),
    /// Log-normal (μ, σ of the underlying normal).
    LogNormal(f64, f64),
    /// Poisson (λ): counts.
    Poisson(f64),
    /// Uniform over `[min, max)`.
    Uniform(f64, f64),
    /// Always the same value.
    Constant(f64),
}

/// Battery drain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Battery {
    /// Initial charge range, %.
    pub start_pct: (f64, f64),
    /// Drain per day, percentage points.
    pub drain_pct_per_day: f64,
    /// How often the battery level is reported.
    pub report_every: Duration,
}

/// Fault processes (rates per asset per day).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Faults {
    /// Offline periods per day.
    pub offline_per_day: f64,
    /// Mean offline period (exponentially distributed).
    pub offline_duration: Duration,
    /// Stuck-sensor periods per day.
    pub stuck_per_day: f64,
    /// Mean stuck period.
    pub stuck_duration: Duration,
    /// Out-of-range readings per day.
    pub out_of_range_per_day: f64,
}

/// An incident process (Poisson in time).
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    /// What kind.
    pub kind: IncidentKind,
    /// Mean occurrences per day.
    pub per_day: f64,
    /// Duration (outages, traffic incidents, forecast validity).
    pub duration: Duration,
    /// Severity of the reported event.
    pub severity: Severity,
    /// Radius of the effect (traffic slows, power fails) in metres.
    pub radius_m: f64,
    /// Scheduled occurrences every day at these local times (seconds after midnight), on
    /// top of the random ones.
    pub at: Vec<u32>,
    /// Where scheduled (and, when given, random) occurrences happen; by default a random
    /// traffic counter (traffic) or point of the area.
    pub center: Option<Location>,
}

/// Kinds of incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncidentKind {
    /// `traffic.incident_reported` at a traffic counter; traffic around it slows down.
    Traffic,
    /// `utility.outage_detected`; powered assets around it go silent.
    Outage,
    /// `weather.forecast_updated` for the city.
    Weather,
    /// `user.dashboard_viewed`.
    DashboardView,
    /// `user.alert_acknowledged` of the latest traffic incident.
    AlertAck,
}

/// A time-bounded what-if change.
#[derive(Debug, Clone, PartialEq)]
pub struct Intervention {
    /// Name (for reports).
    pub name: String,
    /// When it applies.
    pub window: Window,
    /// What it does.
    pub effect: Effect,
}

/// When an intervention applies: absolute, or daily in local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// From one instant to another.
    Absolute(Timestamp, Timestamp),
    /// Every day between two local times of day (seconds after midnight).
    Daily(u32, u32),
}

impl Window {
    /// Whether `time` falls in the window (local time = `time` + `utc_offset_s`).
    pub fn contains(&self, time: Timestamp, utc_offset_s: i32) -> bool {
        match *self {
            Window::Absolute(from, to) => from <= time && time < to,
            Window::Daily(from, to) => {
                let local = time.as_nanos() / 1_000_000_000 + i64::from(utc_offset_s);
                let second = u32::try_from(local.rem_euclid(86_400)).unwrap_or(0);
                if from <= to { (from..to).contains(&second) } else { second >= from || second < to }
            }
        }
    }
}

/// What an intervention does.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Multiply a metric's readings (within `area` when given).
    Scale {
        /// The metric.
        metric: String,
        /// The factor.
        factor: f64,
        /// Where (everywhere when `None`).
        area: Option<Zone>,
    },
    /// Close the roads in a zone: its traffic counters read no vehicles, traffic diverts to
    /// counters within `divert_m` around it (`factor` more vehicles, slower).
    CloseRoad {
        /// The closed stretch.
        zone: Zone,
        /// Extra traffic on the diversion (0.5: +50 %).
        factor: f64,
        /// How far around the closure traffic diverts.
        divert_m: f64,
    },
    /// Add assets of a population in a zone for the window.
    AddAssets {
        /// Index of the population copied.
        population: usize,
        /// How many.
        count: u32,
        /// Where.
        zone: Zone,
    },
    /// A substation fails: an outage event, and assets of the affected types in the zone go
    /// offline until it is restored.
    FailSubstation {
        /// Facility name.
        facility: String,
        /// Where.
        zone: Zone,
        /// Asset types that lose power.
        affects: Vec<String>,
    },
}

/// A place an effect applies to.
#[derive(Debug, Clone, PartialEq)]
pub enum Zone {
    /// A disc.
    Disc(Location, f64),
    /// An H3 cell (any resolution).
    Cell(CellIndex),
    /// Within a distance (m) of named roads.
    Roads(Vec<crate::geometry::Road>, f64),
}

impl Zone {
    /// Whether `at` is in the zone.
    pub fn contains(&self, at: Location) -> bool {
        match self {
            Zone::Disc(center, radius) => distance_m(*center, at) <= *radius,
            Zone::Cell(cell) => at.cell(cell.resolution()) == Some(*cell),
            Zone::Roads(roads, within) => roads.iter().any(|r| r.distance_m(at) <= *within),
        }
    }

    /// A representative point.
    pub fn center(&self) -> Location {
        match self {
            Zone::Disc(center, _) => *center,
            Zone::Roads(roads, _) => roads.first().map_or(Location::new(0.0, 0.0), |r| r.point_at(0.5)),
            Zone::Cell(cell) => {
                let ll = LatLng::from(*cell);
                Location::new(ll.lat(), ll.lng())
            }
        }
    }

    /// A radius that covers the zone, in metres.
    pub fn radius_m(&self) -> f64 {
        match self {
            Zone::Disc(_, radius) => *radius,
            Zone::Roads(roads, within) => roads.iter().map(|r| r.length_m / 2.0).fold(0.0, f64::max) + within,
            Zone::Cell(cell) => (cell.resolution().area_m2() / std::f64::consts::PI).sqrt() * 1.2,
        }
    }
}

/// Parses and validates a scenario file.
///
/// # Errors
/// Every problem found, each with file, line and key.
pub fn load(path: &Path) -> Result<Scenario, ScenarioErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ScenarioErrors(vec![ScenarioError {
            file: path.to_owned(),
            line: None,
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    parse(path, &text)
}

/// Parses and validates scenario text (`path` names it in errors and anchors relative paths).
///
/// A file may start from another: `extends = "base.toml"` (relative to the file, chains
/// allowed) merges it over its base: tables key by key, `rules` replaced as a whole,
/// `populations` and `interventions` entries merged into the base entry of the same `name`
/// (a population without one is named by its `type`) or appended, `incidents` appended.
/// Relative paths in a base stay relative to the base's own file.
///
/// # Errors
/// Every problem found, each with file, line and key.
pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioErrors> {
    let mut sources = vec![(path.to_owned(), text.to_owned())];
    let (merged, origins) = match extends::layers(path, text, &mut sources)? {
        Some(extends::Merged { table, origins }) => (Some(table), origins),
        None => (None, extends::Origins::new()),
    };
    let documents: Vec<Option<Spanned<DeTable<'_>>>> =
        sources.iter().map(|(_, text)| DeTable::parse(text).ok()).collect();
    let layers: Vec<Layer<'_>> = sources
        .iter()
        .zip(&documents)
        .map(|((path, text), document)| Layer { path, text, document: document.as_ref() })
        .collect();
    let raw: RawScenario = match merged {
        None => toml::from_str(text).map_err(|e| {
            ScenarioErrors(vec![ScenarioError {
                file: path.to_owned(),
                line: e.span().map(|span| line_col(text, span.start)),
                key: String::new(),
                message: e.message().trim().to_owned(),
            }])
        })?,
        Some(table) => RawScenario::deserialize(toml::Value::Table(table)).map_err(|e| {
            let chain: Vec<String> = sources.iter().skip(1).map(|(p, _)| p.display().to_string()).collect();
            ScenarioErrors(vec![ScenarioError {
                file: path.to_owned(),
                line: None,
                key: String::new(),
                message: format!("{} (merged over {})", e.message().trim(), chain.join(", then ")),
            }])
        })?,
    };
    let mut v = Validator { path, layers: &layers, origins: &origins, errors: Vec::new(), roads: None };
    let scenario = v.scenario(raw);
    if v.errors.is_empty() { Ok(scenario) } else { Err(ScenarioErrors(v.errors)) }
}

/// One file of a scenario: the file itself, then the bases it extends, in that order.
struct Layer<'a> {
    path: &'a Path,
    text: &'a str,
    document: Option<&'a Spanned<DeTable<'a>>>,
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
    (line, column)
}

/// One step of a key path.
#[derive(Debug, Clone)]
enum Seg {
    Key(&'static str),
    Index(usize),
}

struct Validator<'a> {
    path: &'a Path,
    layers: &'a [Layer<'a>],
    /// Where each entry of a merged array came from (see [`extends::Origins`]).
    origins: &'a extends::Origins,
    errors: Vec<ScenarioError>,
    roads: Option<Arc<Roads>>,
}

fn key_text(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn locate(document: &Spanned<DeTable<'_>>, path: &[Seg]) -> Option<Range<usize>> {
    let mut span = document.span();
    let mut value: Option<&DeValue<'_>> = None;
    let mut table = Some(document.get_ref());
    for seg in path {
        match seg {
            Seg::Key(key) => {
                let (_, found) = table?.iter().find(|(k, _)| k.get_ref().as_ref() == *key)?;
                span = found.span();
                value = Some(found.get_ref());
            }
            Seg::Index(i) => {
                let DeValue::Array(array) = value? else { return None };
                let found = array.get(*i)?;
                span = found.span();
                value = Some(found.get_ref());
            }
        }
        table = match value {
            Some(DeValue::Table(t)) => Some(t),
            _ => None,
        };
    }
    Some(span)
}

impl Validator<'_> {
    fn error(&mut self, path: &[Seg], message: impl Into<String>) {
        // The file that set the key: the scenario itself, else the nearest base that has it
        // (an entry of a merged array is looked up under its index in each file).
        let found = self.candidates(path).into_iter().find_map(|(layer, path)| {
            let layer = self.layers.get(layer)?;
            let span = locate(layer.document?, &path)?;
            Some((layer.path, line_col(layer.text, span.start)))
        });
        let (file, line) = found.map_or((self.path, None), |(file, line)| (file, Some(line)));
        self.errors.push(ScenarioError { file: file.to_owned(), line, key: key_text(path), message: message.into() });
    }

    /// The (layer, key path in that layer) pairs where the key at `path` of the merged
    /// scenario may be written, the most specific first.
    fn candidates(&self, path: &[Seg]) -> Vec<(usize, Vec<Seg>)> {
        if let [Seg::Key(array), Seg::Index(i), rest @ ..] = path
            && let Some(entries) = self.origins.get(*array).and_then(|entries| entries.get(*i))
        {
            return entries
                .iter()
                .map(|&(layer, index)| {
                    let mut translated = vec![Seg::Key(array), Seg::Index(index)];
                    translated.extend_from_slice(rest);
                    (layer, translated)
                })
                .collect();
        }
        (0..self.layers.len()).map(|layer| (layer, path.to_vec())).collect()
    }

    fn duration(&mut self, path: &[Seg], text: &str) -> Duration {
        match citytwin_core::duration::parse_duration(text) {
            Ok(d) => d,
            Err(e) => {
                self.error(path, format!("not a duration ({e}); write e.g. \"90s\", \"15m\", \"24h\", \"7d\""));
                Duration::ZERO
            }
        }
    }

    fn location(&mut self, path: &[Seg], [lat, lng]: [f64; 2]) -> Location {
        if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lng) {
            self.error(path, format!("[{lat}, {lng}] is not [latitude, longitude] in degrees"));
        }
        Location::new(lat, lng)
    }

    fn non_negative(&mut self, path: &[Seg], value: f64) -> f64 {
        if !value.is_finite() || value < 0.0 {
            self.error(path, format!("must be a number ≥ 0, not {value}"));
            return 0.0;
        }
        value
    }

    fn scenario(&mut self, raw: RawScenario) -> Scenario {
        let dir = self.path.parent().unwrap_or(Path::new(".")).to_owned();
        let city = raw.city;
        let resolution = match Resolution::try_from(city.resolution.unwrap_or(8)) {
            Ok(r) => r,
            Err(_) => {
                self.error(&[Seg::Key("city"), Seg::Key("resolution")], "an H3 resolution is 0 to 15");
                Resolution::Eight
            }
        };
        let start = match Timestamp::parse_rfc3339(&city.start) {
            Ok(t) => t,
            Err(e) => {
                self.error(&[Seg::Key("city"), Seg::Key("start")], format!("not an RFC 3339 time ({e})"));
                Timestamp::from_nanos(0)
            }
        };
        let duration = self.duration(&[Seg::Key("city"), Seg::Key("duration")], &city.duration);
        if duration.is_zero() && citytwin_core::duration::parse_duration(&city.duration).is_ok() {
            self.error(&[Seg::Key("city"), Seg::Key("duration")], "the scenario must last longer than zero");
        }
        let utc_offset_s = match city.time_zone.as_deref() {
            None | Some("UTC" | "Z") => 0,
            Some(text) => parse_offset(text).unwrap_or_else(|| {
                self.error(
                    &[Seg::Key("city"), Seg::Key("time_zone")],
                    format!("{text:?} is not \"UTC\" or a fixed offset like \"+01:00\" / \"-05:00\""),
                );
                0
            }),
        };
        let area_path = [Seg::Key("city"), Seg::Key("area")];
        let area = match (city.area.center, city.area.radius_km, city.area.bbox) {
            (None, None, None) if city.area.geojson.is_some() => {
                let file = dir.join(city.area.geojson.as_deref().unwrap_or_default());
                match crate::geometry::load_area(&file) {
                    Ok(area) => Area::Polygon(Arc::new(area)),
                    Err(e) => {
                        self.error(&[Seg::Key("city"), Seg::Key("area"), Seg::Key("geojson")], e);
                        Area::BBox(0.0, 0.0, 0.0, 0.0)
                    }
                }
            }
            (Some(center), Some(radius_km), None) => {
                let center = self.location(&[Seg::Key("city"), Seg::Key("area"), Seg::Key("center")], center);
                let radius = self.non_negative(&[Seg::Key("city"), Seg::Key("area"), Seg::Key("radius_km")], radius_km);
                Area::Circle { center, radius_m: radius * 1000.0 }
            }
            (None, None, Some([s, w, n, e])) => {
                if !(s < n && w < e) {
                    self.error(
                        &[Seg::Key("city"), Seg::Key("area"), Seg::Key("bbox")],
                        "bbox is [south, west, north, east] with south < north and west < east",
                    );
                }
                Area::BBox(s, w, n, e)
            }
            _ => {
                self.error(&area_path, "give either `center` and `radius_km`, `bbox`, or `geojson` (a polygon file)");
                Area::BBox(0.0, 0.0, 0.0, 0.0)
            }
        };
        let roads = city.geometry.as_deref().and_then(|file| match Roads::load(&dir.join(file)) {
            Ok(roads) => Some(Arc::new(roads)),
            Err(e) => {
                self.error(&[Seg::Key("city"), Seg::Key("geometry")], e);
                None
            }
        });
        self.roads.clone_from(&roads);
        let geometry = city.geometry.as_deref().map(|file| dir.join(file));
        let rules = raw
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let path = dir.join(rule);
                if !path.is_file() {
                    self.error(&[Seg::Key("rules"), Seg::Index(i)], format!("no rule file at {}", path.display()));
                }
                path
            })
            .collect();
        let populations: Vec<Population> =
            raw.populations.into_iter().enumerate().map(|(i, p)| self.population(i, p)).collect();
        for (i, population) in populations.iter().enumerate() {
            if populations[..i].iter().any(|p| p.id_prefix == population.id_prefix) {
                self.error(
                    &[Seg::Key("populations"), Seg::Index(i), Seg::Key("id_prefix")],
                    format!("id prefix {:?} is already used by another population", population.id_prefix),
                );
            }
        }
        let incidents = raw.incidents.into_iter().enumerate().map(|(i, r)| self.incident(i, r)).collect();
        let interventions = raw
            .interventions
            .into_iter()
            .enumerate()
            .map(|(i, r)| self.intervention(i, r, start, &populations))
            .collect();
        Scenario {
            file: self.path.to_owned(),
            name: city.name,
            seed: city.seed,
            resolution,
            start,
            duration,
            utc_offset_s,
            area,
            roads,
            geometry,
            rules,
            populations,
            incidents,
            interventions,
        }
    }

    fn population(&mut self, index: usize, raw: RawPopulation) -> Population {
        let at = |key: &'static str| [Seg::Key("populations"), Seg::Index(index), Seg::Key(key)];
        let name = raw.name.unwrap_or_else(|| raw.asset_type.clone());
        if raw.asset_type.is_empty() {
            self.error(&at("type"), "an asset type is required (e.g. \"air_quality_sensor\")");
        }
        let interval = self.duration(&at("interval"), &raw.interval);
        if interval < Duration::from_secs(1) {
            self.error(&at("interval"), "the reporting interval must be at least 1s");
        }
        let jitter = raw.jitter.as_deref().map_or(Duration::ZERO, |j| self.duration(&at("jitter"), j));
        if jitter * 2 >= interval && !interval.is_zero() {
            self.error(&at("jitter"), "the jitter (±) must be less than half the interval");
        }
        let placement = match raw.placement {
            None => Placement::Uniform,
            Some(p) => self.placement(index, p),
        };
        let metrics = raw.metrics.into_iter().enumerate().map(|(m, raw)| self.metric(index, m, raw)).collect();
        let battery = raw.battery.map(|b| {
            let start = b.start_pct.unwrap_or([60.0, 100.0]);
            if !(0.0..=100.0).contains(&start[0]) || !(start[0]..=100.0).contains(&start[1]) {
                self.error(
                    &[Seg::Key("populations"), Seg::Index(index), Seg::Key("battery"), Seg::Key("start_pct")],
                    "start_pct is [low, high] within 0..=100",
                );
            }
            let drain = self.non_negative(
                &[Seg::Key("populations"), Seg::Index(index), Seg::Key("battery"), Seg::Key("drain_pct_per_day")],
                b.drain_pct_per_day,
            );
            let every = b.report_every.as_deref().map_or(Duration::from_secs(3600), |t| {
                self.duration(
                    &[Seg::Key("populations"), Seg::Index(index), Seg::Key("battery"), Seg::Key("report_every")],
                    t,
                )
            });
            Battery { start_pct: (start[0], start[1]), drain_pct_per_day: drain, report_every: every.max(interval) }
        });
        let faults = raw.faults.map_or_else(Faults::default, |f| {
            let p = |key: &'static str| [Seg::Key("populations"), Seg::Index(index), Seg::Key("faults"), Seg::Key(key)];
            Faults {
                offline_per_day: self.non_negative(&p("offline_per_day"), f.offline_per_day.unwrap_or(0.0)),
                offline_duration: f
                    .offline_duration
                    .as_deref()
                    .map_or(Duration::from_secs(1800), |t| self.duration(&p("offline_duration"), t)),
                stuck_per_day: self.non_negative(&p("stuck_per_day"), f.stuck_per_day.unwrap_or(0.0)),
                stuck_duration: f
                    .stuck_duration
                    .as_deref()
                    .map_or(Duration::from_secs(3600), |t| self.duration(&p("stuck_duration"), t)),
                out_of_range_per_day: self
                    .non_negative(&p("out_of_range_per_day"), f.out_of_range_per_day.unwrap_or(0.0)),
            }
        });
        let route = raw.route.map(|r| {
            let at = |key: &'static str| [Seg::Key("populations"), Seg::Index(index), Seg::Key("route"), Seg::Key(key)];
            if r.stops < 2 {
                self.error(&at("stops"), "a route needs at least 2 stops");
            }
            if !(r.speed_kmh > 0.0 && r.speed_kmh < 300.0) {
                self.error(&at("speed_kmh"), "speed_kmh must be within (0, 300)");
            }
            RouteSpec { stops: r.stops.max(2), speed_kmh: r.speed_kmh }
        });
        let id_prefix = raw.id_prefix.unwrap_or_else(|| name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        Population {
            name,
            asset_type: raw.asset_type,
            count: raw.count,
            id_prefix,
            organization: raw.organization,
            placement,
            interval,
            jitter,
            metrics,
            battery,
            faults,
            route,
        }
    }

    fn placement(&mut self, index: usize, raw: RawPlacement) -> Placement {
        let at = |key: &'static str| [Seg::Key("populations"), Seg::Index(index), Seg::Key("placement"), Seg::Key(key)];
        match raw.kind.as_str() {
            "uniform" => Placement::Uniform,
            "clustered" => {
                let centers: Vec<Location> =
                    raw.centers.unwrap_or_default().into_iter().map(|c| self.location(&at("centers"), c)).collect();
                if centers.is_empty() {
                    self.error(&at("centers"), "clustered placement needs at least one [lat, lng] centre");
                }
                let spread_m = self.non_negative(&at("spread_m"), raw.spread_m.unwrap_or(300.0));
                Placement::Clustered { centers, spread_m }
            }
            "points" => {
                let points: Vec<Location> =
                    raw.at.unwrap_or_default().into_iter().map(|c| self.location(&at("at"), c)).collect();
                if points.is_empty() {
                    self.error(&at("at"), "points placement needs at least one [lat, lng]");
                }
                Placement::Points(points)
            }
            "along_roads" => {
                match self.roads.clone() {
                    None => {
                        self.error(&at("kind"), "along_roads placement needs `geometry` (a GeoJSON of roads) in [city]")
                    }
                    Some(roads) => {
                        for class in &raw.highways {
                            if !roads.roads.iter().any(|r| r.highway.as_ref() == Some(class)) {
                                self.error(&at("highways"), format!("no road of class {class:?} in the geometry"));
                            }
                        }
                    }
                }
                Placement::AlongRoads(raw.highways)
            }
            other => {
                self.error(
                    &at("kind"),
                    format!("unknown placement {other:?}: use uniform, clustered, points or along_roads"),
                );
                Placement::Uniform
            }
        }
    }

    fn metric(&mut self, population: usize, index: usize, raw: RawMetric) -> Metric {
        let base = [Seg::Key("populations"), Seg::Index(population), Seg::Key("metrics"), Seg::Index(index)];
        let at = |key: &'static str| {
            let mut path = base.to_vec();
            path.push(Seg::Key(key));
            path
        };
        let dist_at = |key: &'static str| {
            let mut path = base.to_vec();
            path.push(Seg::Key("distribution"));
            path.push(Seg::Key(key));
            path
        };
        if raw.name.is_empty() {
            self.error(&at("name"), "a metric needs a name");
        }
        let d = &raw.distribution;
        let need = |v: &mut Self, key: &'static str, value: Option<f64>| -> f64 {
            match value {
                Some(x) if x.is_finite() => x,
                _ => {
                    v.error(&dist_at(key), format!("a {} distribution needs a finite `{key}`", d.kind));
                    0.0
                }
            }
        };
        let distribution = match d.kind.as_str() {
            "normal" => {
                let (mean, sd) = (need(self, "mean", d.mean), need(self, "sd", d.sd));
                if sd < 0.0 {
                    self.error(&dist_at("sd"), "the standard deviation must be ≥ 0");
                }
                Distribution::Normal(mean, sd.max(0.0))
            }
            "lognormal" | "log_normal" => {
                let (mu, sigma) = (need(self, "mu", d.mu), need(self, "sigma", d.sigma));
                if sigma < 0.0 {
                    self.error(&dist_at("sigma"), "σ must be ≥ 0");
                }
                Distribution::LogNormal(mu, sigma.max(0.0))
            }
            "poisson" => {
                let lambda = need(self, "lambda", d.lambda);
                if lambda <= 0.0 {
                    self.error(&dist_at("lambda"), "λ must be > 0");
                }
                Distribution::Poisson(lambda.max(f64::MIN_POSITIVE))
            }
            "uniform" => {
                let (min, max) = (need(self, "min", d.min), need(self, "max", d.max));
                if min >= max {
                    self.error(&dist_at("max"), "max must be greater than min");
                }
                Distribution::Uniform(min, max.max(min))
            }
            "constant" => Distribution::Constant(need(self, "value", d.value)),
            other => {
                self.error(
                    &dist_at("kind"),
                    format!("unknown distribution {other:?}: use normal, lognormal, poisson, uniform or constant"),
                );
                Distribution::Constant(0.0)
            }
        };
        let profile = match raw.profile.as_deref() {
            None => Profile::flat(),
            Some(name) => Profile::named(name).unwrap_or_else(|| {
                self.error(&at("profile"), format!("unknown profile {name:?}; known: {}", Profile::NAMES.join(", ")));
                Profile::flat()
            }),
        };
        let range = raw.range.map_or((f64::MIN, f64::MAX), |[lo, hi]| (lo, hi));
        if range.0 >= range.1 {
            self.error(&at("range"), "range is [low, high] with low < high");
        }
        let unit = match Unit::from(raw.unit.as_str()).canonical() {
            Some(code) => Unit::from(code),
            None => {
                self.error(
                    &at("unit"),
                    format!(
                        "unknown unit {:?}: use a UCUM code such as \"ug/m3\", \"km/h\", \"{{count}}\", \"Cel\", \"%\"",
                        raw.unit
                    ),
                );
                Unit::from(raw.unit.as_str())
            }
        };
        Metric {
            name: raw.name,
            unit,
            distribution,
            profile,
            noise: self.non_negative(&at("noise"), raw.noise.unwrap_or(0.0)),
            drift_per_day: raw.drift_per_day.unwrap_or(0.0),
            range,
            decimals: raw.decimals.unwrap_or(2).min(9),
        }
    }

    fn incident(&mut self, index: usize, raw: RawIncident) -> Incident {
        let at = |key: &'static str| [Seg::Key("incidents"), Seg::Index(index), Seg::Key(key)];
        let kind = match raw.kind.as_str() {
            "traffic" => IncidentKind::Traffic,
            "outage" => IncidentKind::Outage,
            "weather" => IncidentKind::Weather,
            "dashboard_view" => IncidentKind::DashboardView,
            "alert_ack" => IncidentKind::AlertAck,
            other => {
                self.error(
                    &at("kind"),
                    format!("unknown incident {other:?}: use traffic, outage, weather, dashboard_view or alert_ack"),
                );
                IncidentKind::Traffic
            }
        };
        let severity = match raw.severity.as_deref() {
            None => Severity::Major,
            Some(text) => serde_json::from_value(serde_json::Value::String(text.to_owned())).unwrap_or_else(|_| {
                self.error(&at("severity"), format!("unknown severity {text:?}: info, warning, major, critical"));
                Severity::Major
            }),
        };
        let times = raw
            .at
            .iter()
            .filter_map(|text| {
                let parsed = time_of_day(text);
                if parsed.is_none() {
                    self.error(&at("at"), format!("{text:?} is not a time of day \"HH:MM\""));
                }
                parsed
            })
            .collect();
        if raw.per_day == 0.0 && raw.at.is_empty() {
            self.error(&at("per_day"), "an incident process needs `per_day` > 0 or scheduled times in `at`");
        }
        let center = raw.center.map(|c| self.location(&at("center"), c));
        Incident {
            kind,
            at: times,
            center,
            per_day: self.non_negative(&at("per_day"), raw.per_day),
            duration: raw.duration.as_deref().map_or(Duration::from_secs(3600), |t| self.duration(&at("duration"), t)),
            severity,
            radius_m: self.non_negative(&at("radius_m"), raw.radius_m.unwrap_or(400.0)),
        }
    }

    fn intervention(
        &mut self,
        index: usize,
        raw: RawIntervention,
        start: Timestamp,
        populations: &[Population],
    ) -> Intervention {
        let at = |key: &'static str| [Seg::Key("interventions"), Seg::Index(index), Seg::Key(key)];
        let eff = |key: &'static str| [Seg::Key("interventions"), Seg::Index(index), Seg::Key("effect"), Seg::Key(key)];
        let window = match (time_of_day(&raw.from), time_of_day(&raw.to)) {
            (Some(from), Some(to)) => Window::Daily(from, to),
            _ => {
                let mut instant = |key: &'static str, text: &str| {
                    Timestamp::parse_rfc3339(text).unwrap_or_else(|_| {
                        self.error(
                            &at(key),
                            format!("{text:?} is neither \"HH:MM\" (daily, local time) nor an RFC 3339 time"),
                        );
                        start
                    })
                };
                let (from, to) = (instant("from", &raw.from), instant("to", &raw.to));
                if to <= from {
                    self.error(&at("to"), "`to` must come after `from`");
                }
                Window::Absolute(from, to)
            }
        };
        let effect = raw.effect;
        let zone = |v: &mut Self| -> Option<Zone> {
            if let Some(road) = effect.road.as_deref() {
                let Some(roads) = v.roads.clone() else {
                    v.error(&eff("road"), "`road` needs `geometry` (a GeoJSON of roads) in [city]");
                    return None;
                };
                let found: Vec<crate::geometry::Road> = roads.matching(road).into_iter().cloned().collect();
                if found.is_empty() {
                    v.error(&eff("road"), format!("no road named (or with id) {road:?} in the geometry"));
                    return None;
                }
                return Some(Zone::Roads(found, effect.radius_m.unwrap_or(30.0)));
            }
            match (effect.center, effect.cell.as_deref()) {
                (Some(center), None) => {
                    let center = v.location(&eff("center"), center);
                    let radius = v.non_negative(&eff("radius_m"), effect.radius_m.unwrap_or(500.0));
                    Some(Zone::Disc(center, radius))
                }
                (None, Some(cell)) => match cell.parse::<CellIndex>() {
                    Ok(cell) => Some(Zone::Cell(cell)),
                    Err(e) => {
                        v.error(&eff("cell"), format!("not an H3 cell index ({e})"));
                        None
                    }
                },
                (None, None) => None,
                (Some(_), Some(_)) => {
                    v.error(&eff("cell"), "give either `center` (+ `radius_m`) or `cell`, not both");
                    None
                }
            }
        };
        let effect = match effect.kind.as_str() {
            "scale" => {
                let area = zone(self);
                let metric = effect.metric.clone().unwrap_or_else(|| {
                    self.error(&eff("metric"), "a scale effect needs the metric it scales");
                    String::new()
                });
                let factor = self.non_negative(&eff("factor"), effect.factor.unwrap_or(1.0));
                Effect::Scale { metric, factor, area }
            }
            "close_road" => {
                let zone = zone(self).unwrap_or_else(|| {
                    self.error(&eff("center"), "close_road needs where: `center` + `radius_m`, or `cell`");
                    Zone::Disc(Location::new(0.0, 0.0), 0.0)
                });
                let factor = self.non_negative(&eff("factor"), effect.factor.unwrap_or(0.5));
                let divert_m = zone.radius_m() + 600.0;
                Effect::CloseRoad { zone, factor, divert_m }
            }
            "add_assets" => {
                let zone = zone(self).unwrap_or_else(|| {
                    self.error(&eff("center"), "add_assets needs where: `center` + `radius_m`, or `cell`");
                    Zone::Disc(Location::new(0.0, 0.0), 0.0)
                });
                let name = effect.population.clone().unwrap_or_default();
                let population = populations.iter().position(|p| p.name == name).unwrap_or_else(|| {
                    let known: Vec<&str> = populations.iter().map(|p| p.name.as_str()).collect();
                    self.error(
                        &eff("population"),
                        format!("no population named {name:?} (known: {})", known.join(", ")),
                    );
                    0
                });
                Effect::AddAssets { population, count: effect.count.unwrap_or(0), zone }
            }
            "fail_substation" => {
                let zone = zone(self).unwrap_or_else(|| {
                    self.error(&eff("center"), "fail_substation needs where: `center` + `radius_m`, or `cell`");
                    Zone::Disc(Location::new(0.0, 0.0), 0.0)
                });
                let affects = if effect.affects.is_empty() {
                    vec!["streetlight".to_owned(), "energy_meter".to_owned()]
                } else {
                    effect.affects.clone()
                };
                Effect::FailSubstation {
                    facility: effect.facility.clone().unwrap_or_else(|| format!("substation_{index}")),
                    zone,
                    affects,
                }
            }
            other => {
                self.error(
                    &eff("kind"),
                    format!("unknown effect {other:?}: use scale, close_road, add_assets or fail_substation"),
                );
                Effect::Scale { metric: String::new(), factor: 1.0, area: None }
            }
        };
        Intervention { name: raw.name, window, effect }
    }
}

/// `"HH:MM"` or `"HH:MM:SS"` → seconds after midnight.
fn time_of_day(text: &str) -> Option<u32> {
    let parts: Vec<&str> = text.split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.len() != 2) {
        return None;
    }
    let numbers: Vec<u32> = parts.iter().map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let (h, m, s) = (numbers[0], numbers[1], numbers.get(2).copied().unwrap_or(0));
    (h <= 24 && m < 60 && s < 60 && h * 3600 + m * 60 + s <= 86_400).then_some(h * 3600 + m * 60 + s)
}

/// `"+01:00"`, `"-05:30"` → seconds east of UTC.
fn parse_offset(text: &str) -> Option<i32> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let seconds = time_of_day(rest)?;
    (seconds <= 14 * 3600).then(|| sign * i32::try_from(seconds).unwrap_or(0))
}

mod extends;

#[cfg(test)]
mod tests;
