//! Real geometry for scenarios: roads (GeoJSON LineStrings) that assets stand along and
//! buses drive, and areas given as GeoJSON polygons. Lengths and interpolation are
//! great-circle (haversine) via `geo`.

use std::path::Path;
use std::str::FromStr;

use citytwin_core::event::Location;
use geo::{
    Contains, Distance, Euclidean, Haversine, InterpolateLine, Length, LineString, MultiPolygon, Point, Polygon,
};
use geojson::{FeatureCollection, GeometryValue};

use crate::rng::SimRng;
use crate::scenario::METRES_PER_DEGREE;

/// One road (a GeoJSON LineString feature).
#[derive(Debug, Clone, PartialEq)]
pub struct Road {
    /// `id` property (or the feature id), e.g. `way/4253`.
    pub id: String,
    /// `name` property.
    pub name: Option<String>,
    /// `highway` property (OpenStreetMap road class).
    pub highway: Option<String>,
    /// The line, x = longitude, y = latitude.
    pub line: LineString<f64>,
    /// Length in metres.
    pub length_m: f64,
}

impl Road {
    /// The point `ratio` (0..=1) of the way along the road.
    pub fn point_at(&self, ratio: f64) -> Location {
        let point = Haversine.point_at_ratio_from_start(&self.line, ratio.clamp(0.0, 1.0));
        point.map_or_else(|| first(&self.line), |p| Location::new(p.y(), p.x()))
    }

    /// Approximate distance from `at` to the road, in metres.
    pub fn distance_m(&self, at: Location) -> f64 {
        let k = at.lat.to_radians().cos();
        // Scale longitudes so a degree is the same distance both ways, then measure.
        let scaled: LineString<f64> = self.line.coords().map(|c| (c.x * k, c.y)).collect();
        Euclidean.distance(&Point::new(at.lng * k, at.lat), &scaled) * METRES_PER_DEGREE
    }
}

fn first(line: &LineString<f64>) -> Location {
    line.0.first().map_or(Location::new(0.0, 0.0), |c| Location::new(c.y, c.x))
}

/// The roads of a scenario.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Roads {
    /// Every road.
    pub roads: Vec<Road>,
    /// The file's `attribution` member, when present (reports show it).
    pub attribution: Option<String>,
}

fn read_collection(path: &Path) -> Result<FeatureCollection, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    FeatureCollection::from_str(&text)
        .map_err(|e| format!("{} is not a GeoJSON FeatureCollection: {e}", path.display()))
}

fn line_of(coordinates: &[geojson::Position]) -> LineString<f64> {
    coordinates.iter().filter(|p| p.as_slice().len() >= 2).map(|p| (p[0], p[1])).collect()
}

impl Roads {
    /// Reads the LineString (and MultiLineString) features of a GeoJSON file.
    ///
    /// # Errors
    /// When the file cannot be read or holds no road.
    pub fn load(path: &Path) -> Result<Roads, String> {
        let collection = read_collection(path)?;
        let attribution = collection
            .foreign_members
            .as_ref()
            .and_then(|m| m.get("attribution"))
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let mut roads = Vec::new();
        for (n, feature) in collection.features.iter().enumerate() {
            let text = |key: &str| feature.property(key).and_then(|v| v.as_str()).map(str::to_owned);
            let lines: Vec<LineString<f64>> = match feature.geometry.as_ref().map(|g| &g.value) {
                Some(GeometryValue::LineString { coordinates }) => vec![line_of(coordinates)],
                Some(GeometryValue::MultiLineString { coordinates }) => {
                    coordinates.iter().map(|c| line_of(c)).collect()
                }
                _ => continue,
            };
            for (k, line) in lines.into_iter().enumerate() {
                if line.0.len() < 2 {
                    continue;
                }
                let length_m = Haversine.length(&line);
                let id = text("id").unwrap_or_else(|| format!("feature/{n}"));
                let id = if k == 0 { id } else { format!("{id}#{k}") };
                roads.push(Road { id, name: text("name"), highway: text("highway"), line, length_m });
            }
        }
        if roads.is_empty() {
            return Err(format!("{} has no LineString feature (roads)", path.display()));
        }
        Ok(Roads { roads, attribution })
    }

    /// Roads whose `name` or `id` is `key`.
    pub fn matching(&self, key: &str) -> Vec<&Road> {
        self.roads.iter().filter(|r| r.id == key || r.name.as_deref() == Some(key)).collect()
    }

    /// A random point on the roads of the given classes (all when empty), chosen in proportion
    /// to length; `None` when no road has such a class.
    pub fn random_point(&self, classes: &[String], rng: &mut SimRng) -> Option<Location> {
        let eligible: Vec<&Road> = self
            .roads
            .iter()
            .filter(|r| classes.is_empty() || r.highway.as_ref().is_some_and(|h| classes.contains(h)))
            .collect();
        let total: f64 = eligible.iter().map(|r| r.length_m).sum();
        if eligible.is_empty() || total <= 0.0 {
            return None;
        }
        let mut target = rng.unit() * total;
        for road in &eligible {
            if target < road.length_m {
                return Some(road.point_at(target / road.length_m));
            }
            target -= road.length_m;
        }
        eligible.last().map(|r| r.point_at(1.0))
    }
}

/// Reads the (Multi)Polygon features of a GeoJSON file as one area.
///
/// # Errors
/// When the file cannot be read or holds no polygon.
pub fn load_area(path: &Path) -> Result<MultiPolygon<f64>, String> {
    let collection = read_collection(path)?;
    let mut polygons = Vec::new();
    for feature in &collection.features {
        let rings_of = |rings: &Vec<Vec<geojson::Position>>| {
            let mut rings = rings.iter().map(|r| line_of(r));
            let exterior = rings.next().unwrap_or_else(|| LineString::new(Vec::new()));
            Polygon::new(exterior, rings.collect())
        };
        match feature.geometry.as_ref().map(|g| &g.value) {
            Some(GeometryValue::Polygon { coordinates }) => polygons.push(rings_of(coordinates)),
            Some(GeometryValue::MultiPolygon { coordinates }) => polygons.extend(coordinates.iter().map(rings_of)),
            _ => {}
        }
    }
    if polygons.is_empty() {
        return Err(format!("{} has no Polygon feature", path.display()));
    }
    Ok(MultiPolygon::new(polygons))
}

/// Whether `area` contains `at`.
pub fn area_contains(area: &MultiPolygon<f64>, at: Location) -> bool {
    area.contains(&Point::new(at.lng, at.lat))
}

/// A closed route through `stops`, for moving assets: position by distance travelled.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    stops: Vec<Location>,
    /// Distance from the first stop to each stop (and back to the first, last), metres.
    cumulative: Vec<f64>,
}

impl Route {
    /// A loop through the stops (at least two).
    pub fn new(stops: Vec<Location>) -> Route {
        let mut cumulative = vec![0.0];
        for i in 0..stops.len() {
            let (a, b) = (stops[i], stops[(i + 1) % stops.len()]);
            let leg = Haversine.distance(Point::new(a.lng, a.lat), Point::new(b.lng, b.lat));
            cumulative.push(cumulative[i] + leg);
        }
        Route { stops, cumulative }
    }

    /// The loop's length in metres.
    pub fn length_m(&self) -> f64 {
        self.cumulative.last().copied().unwrap_or(0.0)
    }

    /// Where a vehicle is after travelling `distance_m` from the first stop.
    pub fn position(&self, distance_m: f64) -> Location {
        let length = self.length_m();
        if length <= 0.0 || self.stops.len() < 2 {
            return self.stops.first().copied().unwrap_or(Location::new(0.0, 0.0));
        }
        let d = distance_m.rem_euclid(length);
        let leg = self.cumulative.partition_point(|c| *c <= d).saturating_sub(1).min(self.stops.len() - 1);
        let (a, b) = (self.stops[leg], self.stops[(leg + 1) % self.stops.len()]);
        let span = self.cumulative[leg + 1] - self.cumulative[leg];
        let t = if span > 0.0 { (d - self.cumulative[leg]) / span } else { 0.0 };
        Location::new(a.lat + (b.lat - a.lat) * t, a.lng + (b.lng - a.lng) * t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped_roads() -> Roads {
        Roads::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/geo/helsinki-roads.geojson")).unwrap()
    }

    #[test]
    fn the_shipped_extract_loads_with_its_attribution() {
        let roads = shipped_roads();
        assert!(roads.roads.len() > 500, "{}", roads.roads.len());
        assert!(roads.attribution.as_deref().is_some_and(|a| a.contains("OpenStreetMap contributors")));
        let total: f64 = roads.roads.iter().map(|r| r.length_m).sum();
        assert!(total > 20_000.0 && total < 200_000.0, "{total} m of road in central Helsinki");
        assert!(!roads.matching("Mannerheimintie").is_empty());
    }

    #[test]
    fn points_on_roads_lie_on_a_road_of_the_class() {
        let roads = shipped_roads();
        let mut rng = SimRng::new(1, 2);
        let classes = vec!["primary".to_owned()];
        for _ in 0..200 {
            let at = roads.random_point(&classes, &mut rng).unwrap();
            let nearest = roads
                .roads
                .iter()
                .filter(|r| r.highway.as_deref() == Some("primary"))
                .map(|r| r.distance_m(at))
                .fold(f64::MAX, f64::min);
            assert!(nearest < 1.0, "{at:?} is {nearest} m from the nearest primary road");
        }
        assert!(roads.random_point(&["runway".to_owned()], &mut rng).is_none());
    }

    #[test]
    fn a_route_loops_through_its_stops() {
        let stops = vec![Location::new(60.0, 24.0), Location::new(60.01, 24.0), Location::new(60.01, 24.02)];
        let route = Route::new(stops.clone());
        let first_leg = route.cumulative[1];
        assert!((first_leg - 1112.0).abs() < 5.0, "{first_leg}");
        assert_eq!(route.position(0.0), stops[0]);
        assert_eq!(route.position(route.length_m()), stops[0], "a loop");
        let halfway = route.position(first_leg / 2.0);
        assert!((halfway.lat - 60.005).abs() < 1e-9 && halfway.lng == 24.0);
        assert_eq!(route.position(first_leg), stops[1]);
    }

    #[test]
    fn polygons_contain_points() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("area.geojson");
        std::fs::write(
            &path,
            r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{},"geometry":
            {"type":"Polygon","coordinates":[[[24.9,60.1],[25.0,60.1],[25.0,60.2],[24.9,60.2],[24.9,60.1]]]}}]}"#,
        )
        .unwrap();
        let area = load_area(&path).unwrap();
        assert!(area_contains(&area, Location::new(60.15, 24.95)));
        assert!(!area_contains(&area, Location::new(60.25, 24.95)));
        assert!(
            load_area(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/geo/helsinki-roads.geojson")).is_err()
        );
    }
}
