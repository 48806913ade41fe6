//! The twin: the pure asset logic, and end-to-end ingest through a running twin (asset
//! actors, batching writer with `Interval(5ms)` durability, bus).
//!
//! Run with `cargo bench --bench twin`; `citytwin bench` covers larger populations and the
//! cell actors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use citytwin_core::event::{AssetCommissioned, AssetCreated, Event, Location, MetricRecorded, Timestamp, Unit};
use citytwin_core::log::{Durability, LogConfig};
use citytwin_twin::asset::logic::{AssetCommand, AssetState, apply, decide};
use citytwin_twin::city::{Twin, TwinConfig};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const T0: i64 = 1_736_899_200;

fn reading(asset: &str, n: u64) -> Event {
    Event::new(
        format!("{asset}-r{n}"),
        "/bench",
        MetricRecorded {
            asset_id: asset.to_owned(),
            metric_type: "pm25".into(),
            value: (n % 90) as f64,
            unit: Unit::from("ug/m3"),
            location: Some(Location::new(40.7128, -74.006)),
        },
    )
    .with_time(Timestamp::from_secs(T0 + n as i64))
}

fn lifecycle(asset: &str) -> [Event; 2] {
    [
        Event::new(
            format!("{asset}-c"),
            "/bench",
            AssetCreated {
                asset_id: asset.to_owned(),
                asset_type: "air_quality_sensor".into(),
                name: None,
                location: Some(Location::new(40.7128, -74.006)),
                reporting_interval_s: None,
                attributes: Default::default(),
            },
        )
        .with_time(Timestamp::from_secs(T0)),
        Event::new(
            format!("{asset}-m"),
            "/bench",
            AssetCommissioned { asset_id: asset.to_owned(), commissioned_by: None, firmware_version: None },
        )
        .with_time(Timestamp::from_secs(T0)),
    ]
}

fn logic(c: &mut Criterion) {
    let mut state = AssetState { asset_id: "s1".into(), ..AssetState::default() };
    for event in lifecycle("s1") {
        apply(&mut state, &event);
    }
    let commands: Vec<AssetCommand> = (0..10_000).map(|n| AssetCommand::Observe(Box::new(reading("s1", n)))).collect();
    let mut group = c.benchmark_group("twin");
    group.throughput(Throughput::Elements(commands.len() as u64));
    group.bench_function("asset_decide_apply", |b| {
        b.iter(|| {
            let mut state = state.clone();
            for command in &commands {
                for event in decide(&state, command).unwrap() {
                    apply(&mut state, &event);
                }
            }
            state.version
        })
    });
    group.finish();
}

fn ingest(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let assets: Vec<String> = (0..1000).map(|i| format!("a{i:04}")).collect();
    let twin = runtime.block_on(async {
        let log = LogConfig { durability: Durability::Interval(Duration::from_millis(5)), ..LogConfig::default() };
        let twin = Arc::new(Twin::start(TwinConfig { log, ..TwinConfig::new(dir.path()) }).await.unwrap());
        for asset in &assets {
            for event in lifecycle(asset) {
                twin.ingest(event).await.unwrap();
            }
        }
        twin
    });
    let mut next = 0u64;
    let mut group = c.benchmark_group("twin");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    const PER_ITER: u64 = 10_000;
    group.throughput(Throughput::Elements(PER_ITER));
    group.bench_function("ingest_10k_readings_1000_assets_64_producers", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let events: Vec<Event> =
                    (0..PER_ITER).map(|k| reading(&assets[(k % 1000) as usize], next + k)).collect();
                next += PER_ITER;
                let started = Instant::now();
                runtime.block_on(async {
                    let queue = Arc::new(std::sync::Mutex::new(events));
                    let tasks: Vec<_> = (0..64)
                        .map(|_| {
                            let (twin, queue) = (Arc::clone(&twin), Arc::clone(&queue));
                            tokio::spawn(async move {
                                loop {
                                    let event = queue.lock().unwrap().pop();
                                    let Some(event) = event else { return };
                                    twin.ingest(event).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.unwrap();
                    }
                });
                total += started.elapsed();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, logic, ingest);
criterion_main!(benches);
