//! `citytwin-visualizer`: see `citytwin-visualizer --help`.

use clap::Parser;

fn main() -> bevy::app::AppExit {
    let args = citytwin_visualizer::Args::parse();
    match citytwin_visualizer::app(&args) {
        Ok(mut app) => app.run(),
        Err(error) => {
            eprintln!("error: {error:#}");
            bevy::app::AppExit::error()
        }
    }
}
