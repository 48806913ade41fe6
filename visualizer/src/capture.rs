//! `CapturePlugin`: `--screenshot out.png --after-frames N` renders N frames once the twin's
//! first snapshot is on the map, saves the window to a PNG and a JSON sidecar (where each
//! cell's top lies in the image, the hottest cell, the legend's top colour, the HUD panel),
//! then exits. A capture taken before the map is drawn (pipelines compile asynchronously:
//! seconds on a software renderer) is retried. Without a drawn map before the timeout it
//! saves what it has and exits with an error.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy::render::view::screenshot::{Screenshot, ScreenshotCaptured};

use crate::cells::Looks;
use crate::hud::{STATUS_PANEL, legend_top_rgb};
use crate::twin_link::{TwinView, ViewSettings};

/// What to capture. See the module documentation.
#[derive(Resource, Debug, Clone)]
pub struct CapturePlugin {
    /// The PNG to write.
    pub path: PathBuf,
    /// Frames to render after the first snapshot.
    pub after_frames: u32,
    /// Give up waiting for the twin after this long.
    pub timeout: Duration,
}

impl Plugin for CapturePlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(self.clone())
            .insert_resource(CaptureState {
                started: Instant::now(),
                frames: 0,
                pending: false,
                attempts: 0,
                probes: Vec::new(),
            })
            .add_systems(Last, request_capture);
    }
}

#[derive(Resource, Debug)]
struct CaptureState {
    started: Instant,
    /// Frames rendered since the first snapshot (reset after a capture that came too early).
    frames: u32,
    /// A screenshot is on its way.
    pending: bool,
    attempts: u32,
    /// Pixels where cells must be drawn (their tops' centres).
    probes: Vec<(u32, u32)>,
}

/// Whether what the viewer asked for is on the map: a snapshot placed and subscribed to the
/// camera's view, the assets in view at street zoom, the requested past time.
fn settled(view: &TwinView, settings: &ViewSettings) -> bool {
    let assets = !settings.shows_assets() || (view.asset_loads > 0 && !view.assets_dirty);
    let time = settings.at.is_none_or(|at| view.history == Some(at));
    view.snapshots > 0
        && view.projection.is_some()
        && settings.subscribed.is_some()
        && !view.cells_dirty
        && assets
        && time
}

/// Whether the map is drawn: most probed pixels differ from the clear colour. Pipelines
/// compile asynchronously (seconds on a software renderer), so early frames may show only the
/// UI; such a capture is retried.
fn drawn(image: &image::RgbImage, probes: &[(u32, u32)], clear: [u8; 3]) -> bool {
    let inside: Vec<_> = probes.iter().filter(|(x, y)| *x < image.width() && *y < image.height()).collect();
    let differ =
        inside.iter().filter(|&&&(x, y)| image.get_pixel(x, y).0.iter().zip(clear).any(|(a, b)| a.abs_diff(b) > 8));
    !inside.is_empty() && differ.count() * 2 > inside.len()
}

#[expect(clippy::too_many_arguments, reason = "a Bevy system's parameters: what it reads, one each")]
fn request_capture(
    mut commands: Commands,
    config: Res<CapturePlugin>,
    mut state: ResMut<CaptureState>,
    view: Res<TwinView>,
    settings: Res<ViewSettings>,
    clear: Res<ClearColor>,
    cameras: Query<(&Camera, &GlobalTransform)>,
    windows: Query<&Window>,
) {
    if state.pending {
        return;
    }
    if settled(&view, &settings) {
        state.frames += 1;
    }
    let timed_out = state.started.elapsed() > config.timeout;
    if state.frames < config.after_frames && !timed_out {
        return;
    }
    state.pending = true;
    state.attempts += 1;
    let Ok((camera, transform)) = cameras.single() else { return };
    let scale = windows.iter().next().map_or(1.0, Window::scale_factor);
    let (sidecar, probes) = sidecar(&view, &settings, camera, transform, scale);
    state.probes = probes;
    let path = config.path.clone();
    let json = path.with_extension("json");
    let clear = clear.0.to_srgba().to_u8_array_no_alpha();
    let snapshot = view.snapshots > 0;
    commands.spawn(Screenshot::primary_window()).observe(
        move |captured: On<ScreenshotCaptured>, mut state: ResMut<CaptureState>, mut exit: MessageWriter<AppExit>| {
            let image = match captured.image.clone().try_into_dynamic() {
                Ok(image) => image.to_rgb8(),
                Err(error) => {
                    error!(%error, "converting the screenshot");
                    exit.write(AppExit::error());
                    return;
                }
            };
            let ready = snapshot && drawn(&image, &state.probes, clear);
            if !ready && !timed_out {
                // Too early: render on and try again.
                state.pending = false;
                state.frames = 0;
                return;
            }
            if !ready {
                error!("the map was not drawn before the timeout: saving what there is");
            }
            let saved = image
                .save(&path)
                .map_err(|e| e.to_string())
                .and_then(|()| std::fs::write(&json, &sidecar).map_err(|e| format!("writing {}: {e}", json.display())));
            match &saved {
                Ok(()) => info!(attempts = state.attempts, "screenshot saved to {}", path.display()),
                Err(error) => error!(%error, "saving the screenshot to {}", path.display()),
            }
            exit.write(if saved.is_ok() && ready { AppExit::Success } else { AppExit::error() });
        },
    );
}

/// The sidecar JSON: where each cell's top centre (and at street zoom each marker) lies in the
/// image, and the pixels to probe: the cells', or at street zoom the markers'.
/// Positions are in logical pixels; `scale_factor` turns them into the image's.
fn sidecar(
    view: &TwinView,
    settings: &ViewSettings,
    camera: &Camera,
    transform: &GlobalTransform,
    scale: f32,
) -> (String, Vec<(u32, u32)>) {
    let mut cells = Vec::new();
    let mut probes = Vec::new();
    // At street zoom the cells lie flat and the markers are what must be drawn.
    let street = settings.shows_assets();
    let mut probe = |pixel: Vec2| {
        if pixel.x >= 0.0 && pixel.y >= 0.0 {
            probes.push(((pixel.x * scale) as u32, (pixel.y * scale) as u32));
        }
    };
    if let Some(projection) = view.projection {
        let looks = Looks::of(&view.cells, street);
        for (&cell, datum) in &view.cells.cells {
            let c = h3o::LatLng::from(cell);
            let (x, z) = projection.to_world(c.lat(), c.lng());
            let (height, colour) = looks.look(&view.cells, cell);
            if let Ok(pixel) = camera.world_to_viewport(transform, Vec3::new(x, height, z)) {
                if !street {
                    probe(pixel);
                }
                cells.push(serde_json::json!({
                    "cell": cell.to_string(),
                    "x": pixel.x,
                    "y": pixel.y,
                    "value": datum.value,
                    "rgb": colour.map(|c| (c * 255.0).round() as u8),
                }));
            }
        }
    }
    // Markers' middles (street zoom), for tests that look for them.
    let mut markers = Vec::new();
    if let (Some(projection), true) = (view.projection, street) {
        for (id, asset) in &view.assets {
            let (x, z) = projection.to_world(asset.lat, asset.lng);
            let (_, height) = crate::model::marker_shape(&asset.asset_type);
            if let Ok(pixel) = camera.world_to_viewport(transform, Vec3::new(x, height / 2.0, z)) {
                probe(pixel);
                markers.push(serde_json::json!({
                    "asset": id,
                    "x": pixel.x,
                    "y": pixel.y,
                    "status": asset.status.label(),
                }));
            }
        }
    }
    let (x, y, w, h) = STATUS_PANEL;
    let json = serde_json::json!({
        "history": view.history,
        "time": view.cells.until,
        "zoom": settings.subscribed.map(|v| v.zoom),
        "markers": markers,
        "hottest": view.cells.hottest().map(|(cell, _)| cell.to_string()),
        "legend_top": legend_top_rgb(),
        "status_panel": [x, y, w, h],
        "scale_factor": scale,
        "cells": cells,
    });
    (json.to_string(), probes)
}
