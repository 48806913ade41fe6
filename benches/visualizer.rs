//! What the visualizer rebuilds on the CPU when the map changes: the merged meshes.
//!
//! - `prism_mesh_10k_cells`: every cell of a 10,267-cell disk (k = 58 at resolution 9, about
//!   the whole of a large city) as a vertex-coloured hexagonal prism, then the `Mesh` handed
//!   to Bevy. The viewer does this once per batch of frames that changed the cells.
//! - `marker_mesh_100k_assets`: 100,000 asset markers (five types, five statuses) as one lit
//!   mesh, what street zoom rebuilds when the assets in view change.
//!
//! GPU frame times are not measured here (no GPU on the build machines); these are the CPU
//! costs that decide whether a live map stays interactive. Run with
//! `cargo bench -p citytwin-visualizer --bench visualizer`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use citytwin_visualizer::cells::prism_mesh;
use citytwin_visualizer::markers::marker_mesh;
use citytwin_visualizer::model::{AssetDatum, CellTable, CellUpdate, MarkerStatus, Projection};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use h3o::{LatLng, Resolution};

/// A deterministic value per cell (no RNG: the figures must not depend on a seed).
fn value(i: usize) -> f64 {
    ((i * 7919) % 1000) as f64 / 10.0
}

fn cells() -> (CellTable, Projection) {
    let center = LatLng::new(60.17, 24.94).expect("valid").to_cell(Resolution::Nine);
    let updates: Vec<CellUpdate> = center
        .grid_disk::<Vec<_>>(58)
        .into_iter()
        .enumerate()
        .map(|(i, cell)| CellUpdate {
            cell,
            events: 0,
            alerts: u64::from(i % 97 == 0),
            mean: Some(value(i)),
            assets: 3,
            last_time: Some(1_700_000_000),
        })
        .collect();
    let mut table = CellTable::default();
    table.apply(Resolution::Nine, true, &updates, false);
    let projection = Projection::around(table.cells.keys().copied()).expect("cells");
    (table, projection)
}

fn assets(n: usize) -> Vec<AssetDatum> {
    const TYPES: [&str; 5] = ["air_quality_sensor", "traffic_counter", "streetlight", "bus", "energy_meter"];
    const STATUSES: [MarkerStatus; 5] = [
        MarkerStatus::Online,
        MarkerStatus::Offline,
        MarkerStatus::Alerting,
        MarkerStatus::Maintenance,
        MarkerStatus::Inactive,
    ];
    (0..n)
        .map(|i| AssetDatum {
            asset_type: TYPES[i % TYPES.len()].to_owned(),
            // A 316 × 316 grid over about 10 × 10 km.
            lat: 60.12 + (i / 316) as f64 * 0.000_28,
            lng: 24.85 + (i % 316) as f64 * 0.000_56,
            status: STATUSES[(i / 7) % STATUSES.len()],
            last_values: BTreeMap::new(),
        })
        .collect()
}

fn meshes(c: &mut Criterion) {
    let (table, projection) = cells();
    let mut group = c.benchmark_group("visualizer");
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(table.cells.len() as u64));
    group.bench_function("prism_mesh_10k_cells", |b| {
        b.iter(|| black_box(prism_mesh(black_box(&table), &projection, false).build()));
    });
    let markers = assets(100_000);
    group.throughput(Throughput::Elements(markers.len() as u64));
    group.bench_function("marker_mesh_100k_assets", |b| {
        b.iter(|| black_box(marker_mesh(black_box(&markers).iter(), &projection).build()));
    });
    group.finish();
}

criterion_group!(benches, meshes);
criterion_main!(benches);
