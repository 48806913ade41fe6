//! CEP engine throughput on one core, in events per second.
//!
//! - `tumbling_avg_1000_keys`: 1M in-order events, 1,000 assets, 1-minute tumbling average per asset.
//! - `sequence_1000_keys`: "A then B within 5 min" per asset (A and B are each 5% of events).
//! - `sequence_1000_keys_every_event_relevant`: the same with every event an A or a B.
//! - `negation_1000_keys`: "A then no C within 1 min" per asset (A and C each 5%).
//! - `congestion_10k_cells`: the shipped congestion rule (sum, avg, negation) over 10,000 cells.
//! - `sensor_offline_10k_assets`: the shipped heartbeat rule (a step and an absence) per asset.
//!
//! Run with `cargo bench --bench cep`.

use std::hint::black_box;
use std::time::Duration;

use citytwin_core::cep::{Engine, EngineConfig, parse_rules};
use citytwin_core::event::{Event, Location, MetricRecorded, Timestamp, Unit};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use h3o::Resolution;

const N_EVENTS: usize = 1_000_000;
const START: i64 = 1_736_899_200;

/// SplitMix64's finaliser: values independent of the key (a plain multiplicative hash
/// would give every key one constant value).
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `n` in-order metric events, 1 ms apart, round-robin over `keys` assets, with values from
/// a cheap deterministic sequence.
fn metric_events(
    n: usize,
    keys: usize,
    metric: impl Fn(usize) -> &'static str,
    locations: Option<&[Location]>,
) -> Vec<Event> {
    let assets: Vec<String> = (0..keys).map(|k| format!("asset_{k:05}")).collect();
    (0..n)
        .map(|i| {
            let key = (i * 7919) % keys;
            let value = (mix(i as u64) % 1000) as f64 / 10.0;
            let mut event = Event::new(
                format!("e{i}"),
                "/bench",
                MetricRecorded {
                    asset_id: assets[key].as_str().into(),
                    metric_type: metric(i).into(),
                    value,
                    unit: Unit::from("1"),
                    location: locations.map(|l| l[key]),
                },
            )
            .with_time(Timestamp::from_millis(START * 1000 + i as i64));
            if locations.is_some() {
                event = event.with_derived_cell(Resolution::Ten);
            }
            event
        })
        .collect()
}

fn run(c: &mut Criterion, name: &str, rules: &str, events: &[Event]) {
    let rules = parse_rules(rules).unwrap();
    let mut group = c.benchmark_group("cep");
    group.sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function(name, |b| {
        b.iter_batched(
            || (Engine::new(rules.clone(), EngineConfig::default()), Vec::with_capacity(1 << 16)),
            |(mut engine, mut out)| {
                for event in events {
                    engine.process(event, &mut out);
                    if out.len() > 60_000 {
                        out.clear();
                    }
                }
                black_box((engine.state_size(), out.len()))
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn cep(c: &mut Criterion) {
    let events = metric_events(N_EVENTS, 1000, |_| "pm25", None);
    run(
        c,
        "tumbling_avg_1000_keys",
        r#"[[rules]]
id = "avg"
group_by = ["asset"]
window = { kind = "tumbling", size = "1m" }
aggregates = [{ metric = "pm25", functions = ["avg"] }]"#,
        &events,
    );
    run(
        c,
        "sequence_1000_keys",
        r#"[[rules]]
id = "seq"
group_by = ["asset"]
pattern = { sequence = [{ metric = "pm25", op = ">", value = 95 }, { metric = "pm25", op = "<", value = 5 }], within = "5m" }"#,
        &events,
    );
    // Worst case: every event is relevant (half start runs, half complete them).
    run(
        c,
        "sequence_1000_keys_every_event_relevant",
        r#"[[rules]]
id = "seq"
group_by = ["asset"]
pattern = { sequence = [{ metric = "pm25", op = ">=", value = 50 }, { metric = "pm25", op = "<", value = 50 }], within = "5m" }"#,
        &events,
    );
    run(
        c,
        "negation_1000_keys",
        r#"[[rules]]
id = "neg"
group_by = ["asset"]
pattern = { sequence = [{ metric = "pm25", op = ">", value = 95 }], absent = { metric = "pm25", op = "<", value = 5, within = "1m" } }"#,
        &events,
    );
    // 10,000 distinct resolution-8 cells: spread points over about 1° × 1.3° and keep the
    // first point of each new cell.
    let mut cells = std::collections::HashSet::new();
    let mut locations = Vec::new();
    let mut i = 0u64;
    while locations.len() < 10_000 {
        let lat = 40.2 + ((i * 7_919) % 10_007) as f64 / 10_007.0;
        let lng = -74.6 + ((i * 104_729) % 10_009) as f64 / 10_009.0 * 1.3;
        let location = Location::new(lat, lng);
        if cells.insert(location.cell(Resolution::Eight)) {
            locations.push(location);
        }
        i += 1;
    }
    let congestion =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/rules/congestion.toml")).unwrap();
    let events = metric_events(
        N_EVENTS,
        10_000,
        |i| {
            if i % 2 == 0 { "vehicle_count" } else { "avg_speed" }
        },
        Some(&locations),
    );
    run(c, "congestion_10k_cells", &congestion, &events);
    // The shipped heartbeat rule: every asset event starts a run that waits out 15 minutes of
    // silence and cancels the previous one (10,000 assets).
    let offline =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/rules/sensor-offline.toml")).unwrap();
    let events = metric_events(N_EVENTS, 10_000, |_| "pm25", None);
    run(c, "sensor_offline_10k_assets", &offline, &events);
}

criterion_group!(benches, cep);
criterion_main!(benches);
