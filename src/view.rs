//! `citytwin view`: starts the 3D visualizer (the `citytwin-visualizer` binary built beside
//! this one) against a running twin, with the development token a local `serve` left.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::Context as _;

/// `citytwin view`.
#[derive(Debug, clap::Args)]
pub(crate) struct ViewArgs {
    /// The twin's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051", value_name = "URL")]
    connect: String,
    /// An API token; by default the development token a local `citytwin serve` wrote into
    /// its data directory.
    #[arg(long, env = "CITYTWIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The data directory of the local `citytwin serve` (for its development token).
    #[arg(long, default_value = "data", value_name = "DIR")]
    data_dir: PathBuf,
    /// PEM CA for an https:// address.
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// Save a PNG of the window (and a .json sidecar) and exit.
    #[arg(long, value_name = "PNG")]
    screenshot: Option<PathBuf>,
    /// With --screenshot: frames to render once the twin's first snapshot arrived.
    #[arg(long, value_name = "N")]
    after_frames: Option<u32>,
    /// Window size, WIDTHxHEIGHT.
    #[arg(long, value_name = "WxH")]
    size: Option<String>,
    /// Roads and buildings to draw: a GeoJSON file (`scenarios/geo/helsinki-roads.geojson`);
    /// without it, what the twin serves (a scenario's geometry under `run --serve`).
    #[arg(long, value_name = "GEOJSON")]
    geometry: Option<PathBuf>,
    /// Start in the past: the map as it was at this RFC 3339 time, from the twin's log.
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// Look at LAT,LNG first instead of fitting the whole city.
    #[arg(long, value_name = "LAT,LNG", allow_hyphen_values = true)]
    focus: Option<String>,
    /// With --focus: the web-map zoom to start at (14+ shows assets).
    #[arg(long, value_name = "Z", requires = "focus")]
    zoom: Option<f64>,
}

/// Runs the visualizer and returns its exit status.
pub(crate) fn run(args: &ViewArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let visualizer = exe.with_file_name("citytwin-visualizer");
    anyhow::ensure!(
        visualizer.is_file(),
        "{} is not built: build it with `cargo build --release -p citytwin-visualizer` (or run it directly: \
         `cargo run --release -p citytwin-visualizer -- --connect {} --token ...`)",
        visualizer.display(),
        args.connect
    );
    let token = match &args.token {
        Some(token) => token.clone(),
        None => {
            let path = crate::serve::dev_token_path(&args.data_dir);
            std::fs::read_to_string(&path)
                .with_context(|| {
                    format!(
                        "no --token and no development token in {} (start `citytwin serve` without organizations, \
                         or pass --token / CITYTWIN_TOKEN)",
                        path.display()
                    )
                })?
                .trim()
                .to_owned()
        }
    };
    let mut command = Command::new(&visualizer);
    command.args(["--connect", &args.connect]).env("CITYTWIN_TOKEN", token);
    if let Some(ca) = &args.tls_ca {
        command.arg("--tls-ca").arg(ca);
    }
    if let Some(path) = &args.screenshot {
        command.arg("--screenshot").arg(path);
    }
    if let Some(frames) = args.after_frames {
        command.args(["--after-frames", &frames.to_string()]);
    }
    if let Some(geometry) = &args.geometry {
        command.arg("--geometry").arg(geometry);
    }
    if let Some(size) = &args.size {
        command.args(["--size", size]);
    }
    if let Some(at) = &args.at {
        command.args(["--at", at]);
    }
    if let Some(focus) = &args.focus {
        command.arg(format!("--focus={focus}"));
    }
    if let Some(zoom) = args.zoom {
        command.args(["--zoom", &zoom.to_string()]);
    }
    let status = command.status().with_context(|| format!("starting {}", visualizer.display()))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}
