//! The 3D visualizer (`citytwin-visualizer`): a Bevy application that shows a running twin
//! live. H3 cells are hexagonal prisms raised and coloured by a chosen metric (with a legend),
//! assets are markers by type and status at street zoom, alerts pulse on their cells and list
//! in a side panel, and a HUD shows the connection, the twin's clock, events/s and open
//! alerts.
//!
//! Each feature is a plugin: [`TwinLinkPlugin`] (network thread → ECS, camera → viewport
//! subscription), [`CameraPlugin`], [`CellMapPlugin`], [`AssetMarkerPlugin`], [`HudPlugin`],
//! [`GeometryPlugin`] (roads and buildings from a GeoJSON file), [`TimeSliderPlugin`] (the map
//! as it was at a past time, from the twin's log),
//! and [`CapturePlugin`] for headless screenshots. Systems are plain functions; the mappings
//! they use (metric → colour and height, camera → viewport) live in [`model`], tested
//! without Bevy.
//!
//! Invariant: it talks to a twin only through the gRPC API of `citytwin-proto`
//! (`Subscribe.Viewport`, `Query.*`); it never links `citytwin-twin`. The render loop never
//! waits on the network: the link runs on its own thread and the ECS only `try_recv`s.

// Bevy system parameters (`Res<T>`, `Query<D>`) carry lifetimes that every Bevy codebase
// elides; spelling `'_` on each would only add noise.
#![allow(elided_lifetimes_in_paths)]

pub mod camera;
pub mod capture;
pub mod cells;
pub mod geometry;
pub mod hud;
pub mod link;
pub mod markers;
pub mod model;
pub mod timeline;
pub mod twin_link;

use std::path::PathBuf;
use std::time::Duration;

use bevy::prelude::*;
use bevy::window::{PresentMode, WindowResolution};

pub use camera::CameraPlugin;
pub use capture::CapturePlugin;
pub use cells::CellMapPlugin;
pub use geometry::GeometryPlugin;
pub use hud::HudPlugin;
pub use markers::AssetMarkerPlugin;
pub use timeline::TimeSliderPlugin;
pub use twin_link::TwinLinkPlugin;

/// The twin's address, for the HUD.
#[derive(Resource, Debug, Clone)]
pub struct Endpoint(pub String);

/// `citytwin-visualizer`: watch a running twin in 3D.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "citytwin-visualizer",
    version,
    about = "Watch a running citytwin live as a 3D city map (over its gRPC API).",
    after_help = "Examples:\n  \
        citytwin-visualizer --connect http://127.0.0.1:50051 --token $TOKEN\n  \
        citytwin-visualizer --connect https://twin.example:50051 --tls-ca ca.pem --token $TOKEN\n  \
        xvfb-run -s '-screen 0 1280x720x24' citytwin-visualizer --connect http://127.0.0.1:50051 \\\n      \
        --token $TOKEN --screenshot city.png --after-frames 30\n\n\
        Keys: drag to orbit, right-drag to pan, wheel or +/- to zoom, arrows/WASD to pan, Q/E to turn,\n\
        M to switch the metric, [ and ] for less or more detail, F to fit the city, click a cell or\n\
        an asset for its details. Zoomed out the map shows cell aggregates; zoomed in (web zoom 14+)\n\
        it shows the assets in view. The time slider (bottom; , and . step 15 min, Shift 2 h, L goes\n\
        live) shows the map as it was, from the twin's log.\n\n\
        Street zoom, or the past, in a capture:\n  \
        citytwin-visualizer --token $TOKEN --focus 60.170,24.941 --zoom 16 --screenshot street.png\n  \
        citytwin-visualizer --token $TOKEN --at 2025-06-01T08:30:00Z --screenshot then.png"
)]
pub struct Args {
    /// The twin's gRPC address (`citytwin serve`): http://HOST:PORT, or https:// for TLS.
    #[arg(long, default_value = "http://127.0.0.1:50051", value_name = "URL")]
    pub connect: String,
    /// An organization's API token (`serve` prints a development one at startup).
    #[arg(long, env = "CITYTWIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// PEM CA the server's certificate chains to, for https:// (default: system roots).
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// Save a PNG of the window (and a .json sidecar beside it) and exit.
    #[arg(long, value_name = "PNG")]
    pub screenshot: Option<PathBuf>,
    /// With --screenshot: frames to render after the twin's first snapshot arrived.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub after_frames: u32,
    /// With --screenshot: give up waiting for the twin after this many seconds (exit 1).
    #[arg(long, default_value_t = 120, value_name = "S")]
    pub timeout_s: u64,
    /// Window size, WIDTHxHEIGHT.
    #[arg(long, default_value = "1280x720", value_parser = parse_size)]
    pub size: (u32, u32),
    /// Roads and buildings to draw under the cells: a GeoJSON file such as the scenario's
    /// (`scenarios/geo/helsinki-roads.geojson`). Without it, the viewer draws what the twin
    /// serves (`Query.Geometry`), if anything.
    #[arg(long, value_name = "GEOJSON")]
    pub geometry: Option<PathBuf>,
    /// Start in the past: the map as it was at this time (RFC 3339, e.g.
    /// 2025-06-01T08:30:00Z), read from the twin's log; `L` goes live.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub at: Option<i64>,
    /// Look at this point first instead of fitting the whole city: LAT,LNG in degrees.
    #[arg(long, value_name = "LAT,LNG", value_parser = parse_point, allow_hyphen_values = true)]
    pub focus: Option<(f64, f64)>,
    /// With --focus: the web-map zoom to start at (11 ≈ a city, 14+ ≈ streets with assets).
    #[arg(long, default_value_t = 15.0, value_name = "Z", requires = "focus", value_parser = parse_zoom)]
    pub zoom: f64,
}

fn parse_zoom(text: &str) -> Result<f64, String> {
    let zoom: f64 = text.parse().map_err(|e| format!("{text:?}: {e}"))?;
    if (0.0..=22.0).contains(&zoom) { Ok(zoom) } else { Err(format!("{text:?}: a web-map zoom lies in 0..22")) }
}

fn parse_time(text: &str) -> Result<i64, String> {
    citytwin_core::event::Timestamp::parse_rfc3339(text)
        .map(citytwin_core::event::Timestamp::as_secs)
        .map_err(|e| format!("{text:?}: {e} (expected RFC 3339, e.g. 2025-06-01T08:30:00Z)"))
}

fn parse_point(text: &str) -> Result<(f64, f64), String> {
    let (lat, lng) = text.split_once(',').ok_or_else(|| format!("{text:?}: expected LAT,LNG, e.g. 60.17,24.94"))?;
    let parse = |v: &str| v.trim().parse::<f64>().map_err(|e| format!("{v:?}: {e}"));
    let (lat, lng) = (parse(lat)?, parse(lng)?);
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lng) {
        return Err(format!("{text:?}: latitude must lie in -90..90 and longitude in -180..180"));
    }
    Ok((lat, lng))
}

fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let (w, h) = text.split_once('x').ok_or_else(|| format!("{text:?}: expected WIDTHxHEIGHT, e.g. 1280x720"))?;
    let parse = |v: &str| v.parse::<u32>().map_err(|e| format!("{v:?}: {e}"));
    Ok((parse(w)?, parse(h)?))
}

/// Builds the visualizer app for `args` (not run).
///
/// # Errors
/// When the `--geometry` file cannot be read.
pub fn app(args: &Args) -> anyhow::Result<App> {
    let geometry = match &args.geometry {
        Some(path) => geometry::Geometry::load(path)?,
        None => geometry::Geometry::default(),
    };
    let mut app = App::new();
    let window = Window {
        title: format!("citytwin - {}", args.connect),
        resolution: WindowResolution::new(args.size.0, args.size.1),
        present_mode: PresentMode::AutoVsync,
        ..default()
    };
    app.add_plugins(DefaultPlugins.set(WindowPlugin { primary_window: Some(window), ..default() }))
        .insert_resource(ClearColor(Color::srgb(0.07, 0.08, 0.11)))
        .insert_resource(Endpoint(args.connect.clone()))
        .add_plugins((
            TwinLinkPlugin {
                config: Some(link::LinkConfig {
                    endpoint: args.connect.clone(),
                    token: args.token.clone(),
                    ca: args.tls_ca.clone(),
                }),
                settings: twin_link::ViewSettings { at: args.at, ..default() },
            },
            CameraPlugin,
            TimeSliderPlugin,
            CellMapPlugin,
            AssetMarkerPlugin,
            HudPlugin,
            GeometryPlugin { geometry },
        ));
    if let Some(focus) = args.focus {
        app.insert_resource(camera::CameraStart { focus, zoom: args.zoom });
    }
    if let Some(path) = &args.screenshot {
        app.add_plugins(CapturePlugin {
            path: path.clone(),
            after_frames: args.after_frames,
            timeout: Duration::from_secs(args.timeout_s),
        });
    }
    Ok(app)
}
