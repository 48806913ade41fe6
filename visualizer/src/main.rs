//! `citytwin-visualizer`: see `citytwin-visualizer --help`.

use clap::Parser;

fn main() -> bevy::app::AppExit {
    let args = citytwin_visualizer::Args::parse();
    citytwin_visualizer::app(&args).run()
}
