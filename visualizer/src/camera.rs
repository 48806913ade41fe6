//! `CameraPlugin`: an orbit camera (mouse and keyboard), fitted to the city on the first
//! snapshot, and click-to-select.

use bevy::core_pipeline::tonemapping::Tonemapping;
use bevy::input::mouse::{AccumulatedMouseMotion, AccumulatedMouseScroll};
use bevy::prelude::*;

use crate::link::Selection;
use crate::model::cell_at;
use crate::twin_link::{Link, TwinView, ViewSettings};

/// Where the camera looks from: it orbits `focus` (world x, z) at `distance`.
#[derive(Component, Debug, Clone, Copy, PartialEq)]
pub struct OrbitCamera {
    /// The point looked at, on the ground (world x, z).
    pub focus: Vec2,
    /// Metres from the focus.
    pub distance: f32,
    /// Rotation around the vertical, radians.
    pub yaw: f32,
    /// Angle below the horizon, radians.
    pub pitch: f32,
}

impl Default for OrbitCamera {
    fn default() -> Self {
        OrbitCamera { focus: Vec2::ZERO, distance: 12_000.0, yaw: 0.0, pitch: 0.95 }
    }
}

impl OrbitCamera {
    /// The camera transform.
    pub fn transform(&self) -> Transform {
        let focus = Vec3::new(self.focus.x, 0.0, self.focus.y);
        let offset = Vec3::new(
            self.distance * self.pitch.cos() * self.yaw.sin(),
            self.distance * self.pitch.sin(),
            self.distance * self.pitch.cos() * self.yaw.cos(),
        );
        Transform::from_translation(focus + offset).looking_at(focus, Vec3::Y)
    }
}

/// The camera systems, ordered before what follows the viewport.
#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub struct CameraSet;

/// Spawns the camera and its light; steers it.
#[derive(Debug, Default)]
pub struct CameraPlugin;

impl Plugin for CameraPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<DragState>().add_systems(Startup, spawn_camera).add_systems(
            Update,
            (fit_on_first_snapshot, steer, click_to_select, apply_orbit).chain().in_set(CameraSet),
        );
    }
}

fn spawn_camera(mut commands: Commands) {
    let orbit = OrbitCamera::default();
    // Tonemapping off: the cells are unlit, so a cell shows exactly its legend colour.
    // World units are metres and a city is tens of kilometres across: push the far plane out.
    let projection = Projection::Perspective(PerspectiveProjection { far: 2_000_000.0, near: 1.0, ..default() });
    commands.spawn((Camera3d::default(), projection, Tonemapping::None, orbit, orbit.transform()));
    commands.spawn((
        DirectionalLight { illuminance: 8_000.0, shadow_maps_enabled: false, ..default() },
        Transform::from_xyz(-1.0, 3.0, 2.0).looking_at(Vec3::ZERO, Vec3::Y),
    ));
}

/// Where to look first instead of the whole city (`--focus`, `--zoom`).
#[derive(Resource, Debug, Clone, Copy, PartialEq)]
pub struct CameraStart {
    /// Latitude, longitude in degrees.
    pub focus: (f64, f64),
    /// Web-map zoom level.
    pub zoom: f64,
}

/// The first snapshot places the camera over the whole city, or where [`CameraStart`] says.
pub fn fit_on_first_snapshot(
    view: Res<TwinView>,
    start: Option<Res<CameraStart>>,
    windows: Query<&Window>,
    mut fitted: Local<bool>,
    mut cameras: Query<&mut OrbitCamera>,
) {
    if *fitted || view.snapshots == 0 {
        return;
    }
    let Some(projection) = view.projection else { return };
    let Ok(mut camera) = cameras.single_mut() else { return };
    *camera = match start {
        Some(start) => {
            let (lat, lng) = start.focus;
            let (x, z) = projection.to_world(lat, lng);
            let width = windows.iter().next().map_or(1280.0, Window::width);
            let distance = crate::model::distance_for_zoom(start.zoom, f64::from(width), lat);
            OrbitCamera { focus: Vec2::new(x, z), distance, ..OrbitCamera::default() }
        }
        None => fit(&view, &projection).unwrap_or(*camera),
    };
    *fitted = true;
}

/// A camera that sees every cell on the map.
pub fn fit(view: &TwinView, projection: &crate::model::Projection) -> Option<OrbitCamera> {
    let points: Vec<(f32, f32)> = view
        .cells
        .cells
        .keys()
        .map(|&cell| {
            let c = h3o::LatLng::from(cell);
            projection.to_world(c.lat(), c.lng())
        })
        .collect();
    let (first, rest) = points.split_first()?;
    let (mut lo, mut hi) = (Vec2::new(first.0, first.1), Vec2::new(first.0, first.1));
    for &(x, z) in rest {
        lo = lo.min(Vec2::new(x, z));
        hi = hi.max(Vec2::new(x, z));
    }
    let edge = view.cells.resolution.map_or(500.0, |r| r.edge_length_m() as f32);
    // Room for the cells' own size and for the tallest prisms (three edges high).
    let extent = (hi - lo).max_element() + 4.0 * edge;
    Some(OrbitCamera { focus: (lo + hi) / 2.0, distance: extent * 1.5, ..OrbitCamera::default() })
}

/// Whether the pointer is on a UI control.
fn over_ui(ui: &Query<&Interaction>) -> bool {
    ui.iter().any(|interaction| *interaction != Interaction::None)
}

/// Whether the left button moved since it went down (a drag, not a click).
#[derive(Resource, Debug, Default)]
pub struct DragState {
    moved: f32,
}

/// Left drag orbits, right (or middle) drag pans, the wheel zooms; arrows/WASD pan, Q/E
/// turn, +/- zoom, F fits the city.
#[allow(clippy::too_many_arguments)]
pub fn steer(
    mouse: Res<ButtonInput<MouseButton>>,
    keys: Res<ButtonInput<KeyCode>>,
    motion: Res<AccumulatedMouseMotion>,
    scroll: Res<AccumulatedMouseScroll>,
    time: Res<Time>,
    view: Res<TwinView>,
    mut drag: ResMut<DragState>,
    mut cameras: Query<&mut OrbitCamera>,
    ui: Query<&Interaction>,
) {
    let Ok(mut camera) = cameras.single_mut() else { return };
    let delta = motion.delta;
    if mouse.just_pressed(MouseButton::Left) {
        drag.moved = 0.0;
    }
    // A press on a UI control (the time slider) is the control's, not the camera's.
    if over_ui(&ui) {
        drag.moved = f32::INFINITY;
    } else if mouse.pressed(MouseButton::Left) {
        drag.moved += delta.length();
        camera.yaw -= delta.x * 0.005;
        camera.pitch = (camera.pitch + delta.y * 0.005).clamp(0.15, 1.55);
    }
    let (sin, cos) = camera.yaw.sin_cos();
    let (right, forward) = (Vec2::new(cos, -sin), Vec2::new(-sin, -cos));
    if mouse.pressed(MouseButton::Right) || mouse.pressed(MouseButton::Middle) {
        let scale = camera.distance * 0.0012;
        camera.focus += (-right * delta.x + forward * delta.y) * scale;
    }
    if scroll.delta.y != 0.0 {
        camera.distance = (camera.distance * (1.0 - scroll.delta.y.clamp(-5.0, 5.0) * 0.1)).clamp(50.0, 400_000.0);
    }
    let dt = time.delta_secs();
    let step = camera.distance * 0.8 * dt;
    let mut pan = Vec2::ZERO;
    for (key, alt, dir) in [
        (KeyCode::ArrowUp, KeyCode::KeyW, forward),
        (KeyCode::ArrowDown, KeyCode::KeyS, -forward),
        (KeyCode::ArrowLeft, KeyCode::KeyA, -right),
        (KeyCode::ArrowRight, KeyCode::KeyD, right),
    ] {
        if keys.pressed(key) || keys.pressed(alt) {
            pan += dir;
        }
    }
    camera.focus += pan * step;
    if keys.pressed(KeyCode::KeyQ) {
        camera.yaw += dt;
    }
    if keys.pressed(KeyCode::KeyE) {
        camera.yaw -= dt;
    }
    if keys.pressed(KeyCode::Equal) || keys.pressed(KeyCode::NumpadAdd) {
        camera.distance = (camera.distance * (1.0 - dt)).max(50.0);
    }
    if keys.pressed(KeyCode::Minus) || keys.pressed(KeyCode::NumpadSubtract) {
        camera.distance = (camera.distance * (1.0 + dt)).min(400_000.0);
    }
    if keys.just_pressed(KeyCode::KeyF)
        && let Some(fitted) = view.projection.and_then(|p| fit(&view, &p))
    {
        *camera = fitted;
    }
}

/// A click (a press and release without a drag) selects the asset or cell under the cursor.
pub fn click_to_select(
    mouse: Res<ButtonInput<MouseButton>>,
    drag: Res<DragState>,
    windows: Query<&Window>,
    cameras: Query<(&Camera, &GlobalTransform)>,
    view: Res<TwinView>,
    mut settings: ResMut<ViewSettings>,
    link: Option<Res<Link>>,
) {
    if !mouse.just_released(MouseButton::Left) || drag.moved > 4.0 {
        return;
    }
    let (Some(cursor), Ok((camera, transform)), Some(projection)) =
        (windows.iter().next().and_then(Window::cursor_position), cameras.single(), view.projection)
    else {
        return;
    };
    let Ok(ray) = camera.viewport_to_world(transform, cursor) else { return };
    let Some(distance) = ray.intersect_plane(Vec3::ZERO, InfinitePlane3d::new(Vec3::Y)) else { return };
    let ground = ray.get_point(distance);
    let (lat, lng) = projection.to_geo(ground.x, ground.z);
    let nearest = view
        .assets
        .iter()
        .map(|(id, a)| {
            let (x, z) = projection.to_world(a.lat, a.lng);
            (id, Vec2::new(x - ground.x, z - ground.z).length())
        })
        .min_by(|a, b| a.1.total_cmp(&b.1));
    let selection = match nearest {
        Some((id, metres)) if metres < 40.0 => Some(Selection::Asset(id.clone())),
        _ => view.cells.resolution.and_then(|r| cell_at(lat, lng, r)).map(Selection::Cell),
    };
    if let Some(selection) = selection {
        if let Some(link) = link {
            let _ = link.0.select.send(selection.clone());
        }
        settings.selected = Some(selection);
    }
}

fn apply_orbit(mut cameras: Query<(&OrbitCamera, &mut Transform), Changed<OrbitCamera>>) {
    for (orbit, mut transform) in &mut cameras {
        *transform = orbit.transform();
    }
}
