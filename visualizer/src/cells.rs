//! `CellMapPlugin`: the H3 cells as hexagonal prisms, height and colour by the chosen metric,
//! merged into one mesh (one draw call for 10k cells); alerts pulse as halos over their cells;
//! the selected cell carries a beacon.

use bevy::asset::RenderAssetUsages;
use bevy::mesh::{Indices, PrimitiveTopology};
use bevy::prelude::*;
use h3o::CellIndex;

use crate::link::Selection;
use crate::model::{CellTable, Projection, normalized, ramp};
use crate::twin_link::{LinkSet, TwinView, ViewSettings};

/// The prisms' mesh entity.
#[derive(Component, Debug)]
pub struct CellPrisms;

/// The alert halos' mesh entity.
#[derive(Component, Debug)]
pub struct AlertHalos;

/// The selection beacon.
#[derive(Component, Debug)]
pub struct SelectionBeacon;

/// Prism heights: the tallest is this many cell edge lengths; an empty cell is a thin tile.
const HEIGHT_EDGES: f32 = 3.0;
const BASE_EDGES: f32 = 0.08;
/// Side walls are darker than tops, so the prisms read as 3D while unlit.
const SIDE_SHADE: f32 = 0.62;
/// Cells without a reading of the metric.
const NO_DATA: [f32; 3] = [0.32, 0.34, 0.38];

/// Draws the cells. See the module documentation.
#[derive(Debug, Default)]
pub struct CellMapPlugin;

impl Plugin for CellMapPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(Startup, spawn_cell_map)
            .add_systems(Update, (rebuild_cells.after(LinkSet), pulse_alerts, place_beacon));
    }
}

fn spawn_cell_map(
    mut commands: Commands,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
) {
    let unlit = StandardMaterial { unlit: true, cull_mode: None, double_sided: true, ..default() };
    commands.spawn((CellPrisms, MeshMaterial3d(materials.add(unlit)), Transform::default(), Visibility::Hidden));
    let halo = StandardMaterial {
        base_color: Color::srgba(1.0, 0.1, 0.2, 0.5),
        emissive: LinearRgba::rgb(2.0, 0.1, 0.2),
        alpha_mode: AlphaMode::Blend,
        unlit: true,
        cull_mode: None,
        ..default()
    };
    commands.spawn((AlertHalos, MeshMaterial3d(materials.add(halo)), Transform::default(), Visibility::Hidden));
    let beacon = StandardMaterial { base_color: Color::WHITE, unlit: true, ..default() };
    commands.spawn((
        SelectionBeacon,
        Mesh3d(meshes.add(Cylinder::new(1.0, 1.0))),
        MeshMaterial3d(materials.add(beacon)),
        Transform::default(),
        Visibility::Hidden,
    ));
}

/// Gives `entity` a new mesh (a fresh asset, the old one dropped: Bevy's mesh slabs do not
/// take a replaced vertex layout in place), hidden when there is nothing to draw.
pub fn replace_mesh(
    commands: &mut Commands,
    meshes: &mut Assets<Mesh>,
    entity: Entity,
    old: Option<&Mesh3d>,
    mesh: MeshBuilder,
    visible: bool,
) {
    if let Some(old) = old {
        meshes.remove(&old.0);
    }
    let mut target = commands.entity(entity);
    if mesh.is_empty() {
        target.remove::<Mesh3d>().insert(Visibility::Hidden);
    } else {
        target
            .insert((Mesh3d(meshes.add(mesh.build())), if visible { Visibility::Visible } else { Visibility::Hidden }));
    }
}

/// Rebuilds the prisms and halos when the cells changed.
pub fn rebuild_cells(
    mut commands: Commands,
    mut view: ResMut<TwinView>,
    settings: Res<ViewSettings>,
    mut meshes: ResMut<Assets<Mesh>>,
    prisms: Query<(Entity, Option<&Mesh3d>), With<CellPrisms>>,
    halos: Query<(Entity, Option<&Mesh3d>), With<AlertHalos>>,
    mut pacer: Local<Pacer>,
) {
    if !view.cells_dirty || !pacer.ready() {
        return;
    }
    let Some(projection) = view.projection else { return };
    view.cells_dirty = false;
    let started = std::time::Instant::now();
    if let Ok((entity, old)) = prisms.single() {
        // At street zoom the cells lie flat, so the asset markers stand clear.
        let flat = settings.shows_assets();
        replace_mesh(&mut commands, &mut meshes, entity, old, prism_mesh(&view.cells, &projection, flat), true);
        if let Ok((entity, old)) = halos.single() {
            replace_mesh(&mut commands, &mut meshes, entity, old, halo_mesh(&view.cells, &projection, flat), true);
        }
    }
    pacer.built(started);
}

/// Paces the rebuilds of a big merged mesh: a rebuild that cost more than a few
/// milliseconds waits twenty times its cost before the next one, so rebuilding takes at most
/// a twentieth of the time and a busy live map never stalls the frame loop (changes merge
/// into the next rebuild). Cheap rebuilds are never held back.
#[derive(Debug, Default)]
pub struct Pacer {
    last: Option<(std::time::Instant, std::time::Duration)>,
}

impl Pacer {
    /// Rebuilds cheaper than this run whenever something changed.
    const FREE: std::time::Duration = std::time::Duration::from_millis(4);

    /// Whether a rebuild may run now.
    pub fn ready(&self) -> bool {
        self.last.is_none_or(|(at, cost)| cost < Self::FREE || at.elapsed() >= cost * 20)
    }

    /// Notes a rebuild that started at `started` and just ended.
    pub fn built(&mut self, started: std::time::Instant) {
        self.last = Some((started, started.elapsed()));
    }
}

/// How cells look on a map: the value range is the whole map's, found once (a per-cell
/// look-up of the range made a 10k-cell mesh quadratic).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Looks {
    range: Option<(f64, f64)>,
    flat: bool,
}

impl Looks {
    /// The looks of `table`'s cells; `flat` at street zoom, where the cells lie flat and
    /// dimmed, a backdrop the asset markers stand out from.
    pub fn of(table: &CellTable, flat: bool) -> Self {
        Looks { range: table.range(), flat }
    }

    /// Height (world units) and top colour (sRGB) of a cell as drawn.
    pub fn look(&self, table: &CellTable, cell: CellIndex) -> (f32, [f32; 3]) {
        let edge = cell.resolution().edge_length_m() as f32;
        let value = table.cells.get(&cell).and_then(|d| d.value);
        let (height, colour) = match (value, self.range) {
            (Some(value), Some(range)) => {
                let t = normalized(value, range);
                (edge * (BASE_EDGES + HEIGHT_EDGES * t as f32), ramp(t))
            }
            _ => (edge * BASE_EDGES, NO_DATA),
        };
        if self.flat { (height.min(FLAT_HEIGHT), colour.map(|c| c * FLAT_SHADE)) } else { (height, colour) }
    }
}

/// One cell as drawn (see [`Looks`]).
pub fn drawn_look(table: &CellTable, cell: CellIndex, flat: bool) -> (f32, [f32; 3]) {
    Looks::of(table, flat).look(table, cell)
}

/// Height of the flat cells at street zoom, in metres.
const FLAT_HEIGHT: f32 = 2.0;
/// How much the flat cells are dimmed.
const FLAT_SHADE: f32 = 0.45;

/// The corners of a cell in world x, z, shrunk a little so neighbours stay apart.
fn corners(cell: CellIndex, projection: &Projection, shrink: f32) -> (Vec2, Vec<Vec2>) {
    let center = h3o::LatLng::from(cell);
    let (cx, cz) = projection.to_world(center.lat(), center.lng());
    let c = Vec2::new(cx, cz);
    let ring = cell
        .boundary()
        .iter()
        .map(|corner| {
            let (x, z) = projection.to_world(corner.lat(), corner.lng());
            c + (Vec2::new(x, z) - c) * shrink
        })
        .collect();
    (c, ring)
}

/// One mesh of every cell's prism, vertex-coloured.
pub fn prism_mesh(table: &CellTable, projection: &Projection, flat: bool) -> MeshBuilder {
    // A hexagon: hub and six corners on top, four vertices per wall.
    let mut mesh = MeshBuilder::with_capacity(table.cells.len() * 31, table.cells.len() * 54);
    let looks = Looks::of(table, flat);
    for &cell in table.cells.keys() {
        let (height, colour) = looks.look(table, cell);
        let (center, ring) = corners(cell, projection, 0.94);
        mesh.prism(center, &ring, 0.0, height, colour);
    }
    mesh
}

/// Flat halos above the cells with open alerts (`flat`: over flat cells, at street zoom).
pub fn halo_mesh(table: &CellTable, projection: &Projection, flat: bool) -> MeshBuilder {
    let mut mesh = MeshBuilder::default();
    let looks = Looks::of(table, flat);
    for (&cell, datum) in &table.cells {
        if datum.alerts == 0 {
            continue;
        }
        let (height, _) = looks.look(table, cell);
        let (center, ring) = corners(cell, projection, 1.1);
        mesh.prism(
            center,
            &ring,
            height + 5.0,
            height + 5.0 + cell.resolution().edge_length_m() as f32 * 0.06,
            [1.0; 3],
        );
    }
    mesh
}

/// Alerts pulse: the halo material breathes.
fn pulse_alerts(
    time: Res<Time>,
    halos: Query<&MeshMaterial3d<StandardMaterial>, With<AlertHalos>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
) {
    let Ok(handle) = halos.single() else { return };
    let Some(mut material) = materials.get_mut(&handle.0) else { return };
    let pulse = 0.5 + 0.5 * (time.elapsed_secs() * 4.0).sin();
    material.base_color = Color::srgba(1.0, 0.15, 0.25, 0.25 + 0.5 * pulse);
}

/// The beacon stands on the selected cell.
fn place_beacon(
    settings: Res<ViewSettings>,
    view: Res<TwinView>,
    mut beacon: Query<(&mut Transform, &mut Visibility), With<SelectionBeacon>>,
) {
    let Ok((mut transform, mut visibility)) = beacon.single_mut() else { return };
    let placed = match (&settings.selected, view.projection) {
        (Some(Selection::Cell(cell)), Some(projection)) => {
            let c = h3o::LatLng::from(*cell);
            let (x, z) = projection.to_world(c.lat(), c.lng());
            let edge = cell.resolution().edge_length_m() as f32;
            let (height, _) = drawn_look(&view.cells, *cell, settings.shows_assets());
            Some((Vec3::new(x, height + edge * 0.5, z), Vec3::new(edge * 0.08, edge, edge * 0.08)))
        }
        (Some(Selection::Asset(id)), Some(projection)) => view.assets.get(id).map(|a| {
            let (x, z) = projection.to_world(a.lat, a.lng);
            (Vec3::new(x, 40.0, z), Vec3::new(2.0, 60.0, 2.0))
        }),
        _ => None,
    };
    match placed {
        Some((at, scale)) => {
            *transform = Transform::from_translation(at).with_scale(scale);
            *visibility = Visibility::Visible;
        }
        None => *visibility = Visibility::Hidden,
    }
}

/// A prism's vertex colours (linear RGBA): its top's, and its walls' (darker, so prisms read
/// as 3D while unlit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shade {
    top: [f32; 4],
    side: [f32; 4],
}

impl Shade {
    /// The shade of a top of sRGB `colour`.
    pub fn of(colour: [f32; 3]) -> Self {
        let linear =
            |c: [f32; 3], shade: f32| Color::srgb(c[0] * shade, c[1] * shade, c[2] * shade).to_linear().to_f32_array();
        Shade { top: linear(colour, 1.0), side: linear(colour, SIDE_SHADE) }
    }
}

/// Accumulates triangles into one vertex-coloured mesh.
#[derive(Debug, Default)]
pub struct MeshBuilder {
    positions: Vec<[f32; 3]>,
    normals: Vec<[f32; 3]>,
    colours: Vec<[f32; 4]>,
    indices: Vec<u32>,
}

impl MeshBuilder {
    fn vertex(&mut self, at: Vec3, normal: Vec3, colour: [f32; 4]) -> u32 {
        let index = self.positions.len() as u32;
        self.positions.push(at.to_array());
        self.normals.push(normal.to_array());
        self.colours.push(colour);
        index
    }

    /// A builder with room for `vertices` and `indices`.
    pub fn with_capacity(vertices: usize, indices: usize) -> Self {
        MeshBuilder {
            positions: Vec::with_capacity(vertices),
            normals: Vec::with_capacity(vertices),
            colours: Vec::with_capacity(vertices),
            indices: Vec::with_capacity(indices),
        }
    }

    /// A vertical prism over `ring` (world x, z) from `bottom` to `top`, its top `colour`
    /// (sRGB) and its walls shaded.
    pub fn prism(&mut self, center: Vec2, ring: &[Vec2], bottom: f32, top: f32, colour: [f32; 3]) {
        self.shaded_prism(center, ring, bottom, top, Shade::of(colour));
    }

    /// [`MeshBuilder::prism`] with the colours already converted (many prisms, few colours).
    pub fn shaded_prism(&mut self, center: Vec2, ring: &[Vec2], bottom: f32, top: f32, shade: Shade) {
        let Shade { top: top_colour, side: side_colour } = shade;
        let hub = self.vertex(Vec3::new(center.x, top, center.y), Vec3::Y, top_colour);
        let first = self.positions.len() as u32;
        for p in ring {
            self.vertex(Vec3::new(p.x, top, p.y), Vec3::Y, top_colour);
        }
        let n = ring.len() as u32;
        // The materials draw both faces (`cull_mode: None`), so winding does not matter.
        for i in 0..n {
            self.indices.extend([hub, first + i, first + (i + 1) % n]);
        }
        for i in 0..ring.len() {
            let (p, q) = (ring[i], ring[(i + 1) % ring.len()]);
            let mut out = Vec2::new(q.y - p.y, p.x - q.x).normalize_or_zero();
            if out.dot((p + q) / 2.0 - center) < 0.0 {
                out = -out;
            }
            let normal = Vec3::new(out.x, 0.0, out.y);
            let a = self.vertex(Vec3::new(p.x, bottom, p.y), normal, side_colour);
            let b = self.vertex(Vec3::new(q.x, bottom, q.y), normal, side_colour);
            let c = self.vertex(Vec3::new(q.x, top, q.y), normal, side_colour);
            let d = self.vertex(Vec3::new(p.x, top, p.y), normal, side_colour);
            self.indices.extend([a, b, c, a, c, d]);
        }
    }

    /// A flat strip `width` wide from `p` to `q` (world x, z) at height `y`: a road segment.
    pub fn strip(&mut self, p: Vec2, q: Vec2, width: f32, y: f32, colour: [f32; 3]) {
        let side = (q - p).perp().normalize_or_zero() * (width / 2.0);
        if side == Vec2::ZERO {
            return;
        }
        let c = Color::srgb(colour[0], colour[1], colour[2]).to_linear().to_f32_array();
        let corners = [p - side, p + side, q + side, q - side];
        let first = self.positions.len() as u32;
        for corner in corners {
            self.vertex(Vec3::new(corner.x, y, corner.y), Vec3::Y, c);
        }
        self.indices.extend([first, first + 1, first + 2, first, first + 2, first + 3]);
    }

    /// A box standing on the ground at `at` (world x, z).
    pub fn block(&mut self, at: Vec2, width: f32, height: f32, shade: Shade) {
        let h = width / 2.0;
        let ring = [at + Vec2::new(-h, -h), at + Vec2::new(h, -h), at + Vec2::new(h, h), at + Vec2::new(-h, h)];
        self.shaded_prism(at, &ring, 0.0, height, shade);
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// The mesh.
    pub fn build(self) -> Mesh {
        Mesh::new(PrimitiveTopology::TriangleList, RenderAssetUsages::default())
            .with_inserted_attribute(Mesh::ATTRIBUTE_POSITION, self.positions)
            .with_inserted_attribute(Mesh::ATTRIBUTE_NORMAL, self.normals)
            .with_inserted_attribute(Mesh::ATTRIBUTE_COLOR, self.colours)
            .with_inserted_indices(Indices::U32(self.indices))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn a_costly_rebuild_holds_the_next_one_back_and_a_cheap_one_does_not() {
        let mut pacer = Pacer::default();
        assert!(pacer.ready(), "the first build runs at once");
        // A build that took 50 ms: the next waits a second (20 × its cost).
        pacer.built(Instant::now() - Duration::from_millis(50));
        assert!(!pacer.ready());
        pacer.built(Instant::now());
        assert!(pacer.ready(), "a build of microseconds never waits");
    }
}
