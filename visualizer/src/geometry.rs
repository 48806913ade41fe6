//! `GeometryPlugin`: the scenario's roads (GeoJSON line strings) as flat strips and its
//! buildings (polygons) as low blocks; drawn once the map has a projection. At city zoom the
//! cell prisms stand over them; at street zoom the cells lie flat and the roads show.
//! The geometry comes from the twin (`Query.Geometry`: the scenario's file under
//! `citytwin run --serve`, `[twin] geometry` under `citytwin serve`) or from a local file
//! (`--geometry`), which wins when given.

use std::path::Path;

use bevy::prelude::*;

use crate::cells::{MeshBuilder, replace_mesh};
use crate::model::Projection;
use crate::twin_link::{LinkSet, TwinView};

/// Roads lie just above the cells' flat tiles of street zoom (2 m) and well under the
/// prisms of city zoom.
const ROAD_HEIGHT: f32 = 3.0;

/// Roads and buildings, in degrees (lng, lat as GeoJSON has them).
#[derive(Resource, Debug, Default, Clone, PartialEq)]
pub struct Geometry {
    /// Line strings with a width in metres (by `highway` class).
    pub roads: Vec<(Vec<(f64, f64)>, f32)>,
    /// Outer rings of polygons.
    pub buildings: Vec<Vec<(f64, f64)>>,
}

impl Geometry {
    /// Reads a GeoJSON FeatureCollection: LineString / MultiLineString as roads, Polygon /
    /// MultiPolygon as buildings; other geometries are skipped.
    ///
    /// # Errors
    /// When the file cannot be read or is not GeoJSON.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Geometry::parse(&text).with_context(|| path.display().to_string())
    }

    /// As [`Geometry::load`], from GeoJSON text.
    ///
    /// # Errors
    /// When the text is not a GeoJSON FeatureCollection.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let value: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
        let features = value["features"].as_array().context("expected a GeoJSON FeatureCollection")?;
        let ring = |v: &serde_json::Value| -> Vec<(f64, f64)> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
                .collect()
        };
        let mut geometry = Geometry::default();
        for feature in features {
            let width = road_width(feature["properties"]["highway"].as_str().unwrap_or(""));
            let coordinates = &feature["geometry"]["coordinates"];
            match feature["geometry"]["type"].as_str() {
                Some("LineString") => geometry.roads.push((ring(coordinates), width)),
                Some("MultiLineString") => {
                    geometry.roads.extend(coordinates.as_array().into_iter().flatten().map(|l| (ring(l), width)));
                }
                Some("Polygon") => geometry.buildings.push(ring(&coordinates[0])),
                Some("MultiPolygon") => {
                    geometry.buildings.extend(coordinates.as_array().into_iter().flatten().map(|p| ring(&p[0])));
                }
                _ => {}
            }
        }
        Ok(geometry)
    }

    /// The mesh, in world coordinates.
    pub fn mesh(&self, projection: &Projection) -> MeshBuilder {
        let mut mesh = MeshBuilder::default();
        let world = |&(lng, lat): &(f64, f64)| {
            let (x, z) = projection.to_world(lat, lng);
            Vec2::new(x, z)
        };
        for (line, width) in &self.roads {
            let points: Vec<Vec2> = line.iter().map(world).collect();
            for pair in points.windows(2) {
                mesh.strip(pair[0], pair[1], *width, ROAD_HEIGHT, [0.55, 0.57, 0.62]);
            }
        }
        for building in &self.buildings {
            let mut points: Vec<Vec2> = building.iter().map(world).collect();
            if points.len() > 1 && points.first() == points.last() {
                points.pop();
            }
            if points.len() >= 3 {
                let center = points.iter().copied().sum::<Vec2>() / points.len() as f32;
                mesh.prism(center, &points, 0.0, 15.0, [0.70, 0.68, 0.64]);
            }
        }
        mesh
    }
}

/// Road width in metres by OpenStreetMap `highway` class.
pub fn road_width(highway: &str) -> f32 {
    match highway {
        "motorway" | "trunk" | "primary" => 16.0,
        "secondary" | "tertiary" => 11.0,
        "footway" | "path" | "cycleway" | "steps" | "pedestrian" => 3.0,
        _ => 7.0,
    }
}

/// The geometry's mesh entity.
#[derive(Component, Debug)]
pub struct GeometryMesh;

/// Draws the scenario geometry. See the module documentation.
#[derive(Debug, Default)]
pub struct GeometryPlugin {
    /// What to draw.
    pub geometry: Geometry,
}

impl Plugin for GeometryPlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(self.geometry.clone())
            .add_systems(Startup, spawn_geometry)
            .add_systems(Update, build_geometry.after(LinkSet));
    }
}

fn spawn_geometry(mut commands: Commands, mut materials: ResMut<Assets<StandardMaterial>>) {
    let material = StandardMaterial { unlit: true, cull_mode: None, ..default() };
    commands.spawn((GeometryMesh, MeshMaterial3d(materials.add(material)), Transform::default(), Visibility::Hidden));
}

impl Geometry {
    /// Whether there is nothing to draw.
    pub fn is_empty(&self) -> bool {
        self.roads.is_empty() && self.buildings.is_empty()
    }
}

/// What the geometry mesh was built from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Built {
    /// Nothing yet.
    #[default]
    Nothing,
    /// The local `--geometry` file.
    Local,
    /// What the twin served.
    Served,
}

/// Builds the mesh once the first snapshot fixed the projection: from the local file when
/// one was given, else from what the twin serves (once it arrived).
pub fn build_geometry(
    mut commands: Commands,
    view: Res<TwinView>,
    geometry: Res<Geometry>,
    mut meshes: ResMut<Assets<Mesh>>,
    mut built: Local<Built>,
    entity: Query<(Entity, Option<&Mesh3d>), With<GeometryMesh>>,
) {
    let (Some(projection), Ok((entity, old))) = (view.projection, entity.single()) else { return };
    let source = match (*built, geometry.is_empty(), &view.served_geometry) {
        (Built::Nothing, false, _) => (Built::Local, &*geometry),
        (Built::Nothing, true, Some(served)) => (Built::Served, served),
        _ => return,
    };
    *built = source.0;
    replace_mesh(&mut commands, &mut meshes, entity, old, source.1.mesh(&projection), true);
}
