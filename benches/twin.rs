//! The twin: the pure asset logic, end-to-end ingest through a running twin (asset actors,
//! `Interval(5ms)` durability, bus), an asset actor round trip, and the cell router's fan-out.
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
            asset_id: asset.into(),
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
    let commands: Vec<AssetCommand> = (0..10_000).map(|n| AssetCommand::Observe(reading("s1", n))).collect();
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

fn actors(c: &mut Criterion) {
    use citytwin_core::cep::parse_rules;
    use citytwin_twin::asset::actor::{AssetActor, AssetArgs, AssetConfig, AssetMsg};
    use citytwin_twin::bus::{Bus, Committed, Delivered};
    use citytwin_twin::cell::{CellConfig, CellRouterActor, CellRouterArgs, CellRouterMsg};
    use citytwin_twin::writer::LogWriter;
    use ractor::Actor;
    use ractor::rpc::CallResult;

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = citytwin_core::log::EventLog::open(
        dir.path(),
        LogConfig { durability: Durability::Never, ..LogConfig::default() },
    )
    .unwrap();
    let bus = Bus::new(log.clone(), 1 << 16);
    let writer = LogWriter::start(log.clone(), 1024, 4096, Some(bus.clone()));
    let (asset, router) = runtime.block_on(async {
        let args = AssetArgs {
            asset_id: "a1".into(),
            log: log.clone(),
            writer: writer.clone(),
            config: AssetConfig::default(),
            shard: None,
            activity: citytwin_twin::asset::actor::Activity::new(),
            inbox: citytwin_twin::asset::inbox::Inbox::default(),
        };
        let (asset, _) = Actor::spawn(None, AssetActor, args).await.unwrap();
        let rules =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/rules/congestion.toml")).unwrap();
        let config = CellConfig::new(parse_rules(&rules).unwrap());
        let (router, _) = Actor::spawn(None, CellRouterActor, CellRouterArgs { config, writer, bus }).await.unwrap();
        (asset, router)
    });
    let mut group = c.benchmark_group("twin");
    group.throughput(Throughput::Elements(1));
    group.bench_function("asset_actor_round_trip", |b| {
        b.iter(|| {
            runtime.block_on(async {
                match asset.call(AssetMsg::GetState, None).await.unwrap() {
                    CallResult::Success(state) => state.version,
                    other => panic!("{other:?}"),
                }
            })
        })
    });
    // 10,000 readings over 1,000 cells: one Route message, fanned out as one message per cell.
    let batch: Vec<Delivered> = Delivered::batch(
        (0..10_000u64)
            .map(|n| {
                let cell = n % 1000;
                let location = Location::new(40.5 + (cell / 40) as f64 * 0.012, -74.3 + (cell % 40) as f64 * 0.012);
                let mut event = reading(&format!("a{cell}"), n);
                if let Some(citytwin_core::event::Payload::MetricRecorded(m)) =
                    event.data.as_mut().and_then(|d| match d {
                        citytwin_core::event::Data::Payload(p) => Some(p),
                        _ => None,
                    })
                {
                    m.location = Some(location);
                }
                Committed { position: n, event: event.with_derived_cell(h3o::Resolution::Ten) }
            })
            .collect(),
    );
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("cell_fan_out_10k_readings_1000_cells", |b| {
        b.iter(|| {
            runtime.block_on(async {
                router.cast(CellRouterMsg::Route(batch.clone())).unwrap();
                // The router answers after it has routed the batch (mailbox order).
                match router.call(CellRouterMsg::Cells, None).await.unwrap() {
                    CallResult::Success(cells) => cells.len(),
                    other => panic!("{other:?}"),
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, logic, ingest, actors);
criterion_main!(benches);
