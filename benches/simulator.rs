//! Scenario generator throughput on one core.
//!
//! - `generate_samples_1_thread`: 100,000 assets (two metrics each, 1-minute readings, a
//!   traffic profile, noise, faults) for 10 simulated minutes per iteration: about 2M samples,
//!   sorted into time order. The generator's own speed (goal: ≥ 10M events/s on one core).
//! - `samples_to_cloudevents`: turning samples into `Event`s (ids, payloads), the cost a
//!   driver pays per event on top.
//!
//! Run with `cargo bench --bench simulator`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use citytwin_core::event::Timestamp;
use citytwin_simulator::generate::{Generator, Plan};
use citytwin_simulator::scenario::parse;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const SCENARIO: &str = r#"
[city]
name = "Bench city"
seed = 42
start = "2025-01-15T07:00:00Z"
duration = "1d"
area = { center = [40.75, -73.98], radius_km = 8 }

[[populations]]
type = "traffic_counter"
count = 100000
interval = "1m"
jitter = "5s"
faults = { offline_per_day = 0.1, stuck_per_day = 0.05, out_of_range_per_day = 0.05 }

[[populations.metrics]]
name = "vehicle_count"
unit = "{count}"
distribution = { kind = "poisson", lambda = 8 }
profile = "traffic"
decimals = 0

[[populations.metrics]]
name = "avg_speed"
unit = "km/h"
distribution = { kind = "normal", mean = 40, sd = 5 }
profile = "traffic_speed"
noise = 0.05
decimals = 1
"#;

fn bench(c: &mut Criterion) {
    let scenario = Arc::new(parse(Path::new("bench.toml"), SCENARIO).expect("the bench scenario is valid"));
    let plan = Arc::new(Plan::new(Arc::clone(&scenario)));
    let start = scenario.start.as_nanos();
    let ten_minutes = 600_000_000_000i64;
    // Warm up past the creation events, then measure steady-state windows.
    let mut warm = Generator::new(Arc::clone(&plan), 1);
    let mut samples = Vec::new();
    warm.window(Timestamp::from_nanos(start + ten_minutes), &mut samples);
    let per_window = {
        let mut probe = Vec::new();
        let mut g = Generator::new(Arc::clone(&plan), 1);
        g.window(Timestamp::from_nanos(start + ten_minutes), &mut probe);
        probe.clear();
        g.window(Timestamp::from_nanos(start + 2 * ten_minutes), &mut probe);
        probe.len() as u64
    };
    let mut group = c.benchmark_group("simulator");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(per_window));
    group.bench_function("generate_samples_1_thread", |b| {
        b.iter_batched_ref(
            || {
                let mut g = Generator::new(Arc::clone(&plan), 1);
                let mut first = Vec::new();
                g.window(Timestamp::from_nanos(start + ten_minutes), &mut first);
                (g, Vec::with_capacity(per_window as usize))
            },
            |(g, out)| {
                g.window(Timestamp::from_nanos(start + 2 * ten_minutes), out);
                black_box(out.len())
            },
            BatchSize::LargeInput,
        );
    });
    let window: Vec<_> = {
        let mut g = Generator::new(Arc::clone(&plan), 1);
        let mut first = Vec::new();
        g.window(Timestamp::from_nanos(start + ten_minutes), &mut first);
        let mut out = Vec::new();
        g.window(Timestamp::from_nanos(start + 2 * ten_minutes), &mut out);
        out.truncate(200_000);
        out
    };
    group.throughput(Throughput::Elements(window.len() as u64));
    group.bench_function("samples_to_cloudevents", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            for sample in &window {
                bytes += plan.event(sample).id.len();
            }
            black_box(bytes)
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
