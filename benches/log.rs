//! Event log throughput: batched appends under each durability policy, full replay, and
//! reading one stream's history out of a large log.
//!
//! Run with `cargo bench --bench log`. `CITYTWIN_BENCH_LOG_EVENTS` sets the size of the log
//! for the read benches (default 10,000,000; about 2.7 GB of disk in a temp dir).

use std::hint::black_box;
use std::time::{Duration, Instant};

use citytwin_core::event::{Event, Location, MetricRecorded, Timestamp, Unit};
use citytwin_core::log::{Append, Durability, EventLog, Expected, LogConfig, ReplayFilter};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use h3o::Resolution;

/// A `metric.recorded` event of about 200 bytes in storage.
fn event(i: u64) -> Event {
    let asset_id = format!("sensor_{:06}", i % 100_000);
    Event::new(
        format!("evt-{i:016}"),
        format!("/sensors/air_quality/{asset_id}"),
        MetricRecorded {
            asset_id: asset_id.as_str().into(),
            metric_type: "pm25".into(),
            value: (i % 500) as f64 * 0.1,
            unit: Unit::from("ug/m3"),
            location: Some(Location::new(40.7 + (i % 100) as f64 * 1e-3, -74.0)),
        },
    )
    .with_time(Timestamp::from_secs(1_736_900_000 + (i / 1000) as i64))
    .with_subject(asset_id)
    .with_organization("org_xyz")
    .with_derived_cell(Resolution::Ten)
}

fn open(dir: &std::path::Path, durability: Durability) -> EventLog {
    EventLog::open(dir, LogConfig { durability, ..LogConfig::default() }).unwrap()
}

fn appends(c: &mut Criterion) {
    let events: Vec<Event> = (0..1024).map(event).collect();
    let streams: Vec<String> = events.iter().map(|e| e.rare.subject.clone().unwrap()).collect();
    let frame = citytwin_core::codec::msgpack::encode(&events[0]).len();
    eprintln!("event size in storage: {frame} bytes of MessagePack (+ frame header)");
    let mut group = c.benchmark_group("log_append");
    group.sample_size(10).measurement_time(Duration::from_secs(8)).warm_up_time(Duration::from_secs(1));
    let cases: [(&str, Durability, usize); 5] = [
        ("interval_5ms_batch_1024", Durability::Interval(Duration::from_millis(5)), 1024),
        ("never_batch_1024", Durability::Never, 1024),
        ("always_batch_1", Durability::Always, 1),
        ("always_batch_64", Durability::Always, 64),
        ("always_batch_1024", Durability::Always, 1024),
    ];
    for (name, durability, batch_size) in cases {
        group.throughput(Throughput::Elements(batch_size as u64));
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), durability);
        let batch: Vec<Append<'_>> = events[..batch_size]
            .iter()
            .zip(&streams)
            .map(|(event, stream)| Append { stream, expected: Expected::Any, event })
            .collect();
        group.bench_function(name, |b| b.iter(|| black_box(log.append_batch(&batch).unwrap())));
    }
    group.finish();
}

fn reads(c: &mut Criterion) {
    let n_events: u64 =
        std::env::var("CITYTWIN_BENCH_LOG_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000);
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), Durability::Never);
    // One stream ("needle") gets exactly 1,000 events spread evenly over the log.
    let needle_every = (n_events / 1000).max(1);
    let started = Instant::now();
    let mut events = Vec::with_capacity(4096);
    let mut streams = Vec::with_capacity(4096);
    let mut i = 0;
    while i < n_events {
        events.clear();
        streams.clear();
        for j in i..(i + 4096).min(n_events) {
            let needle = j % needle_every == needle_every / 2;
            streams.push(if needle { "needle".to_owned() } else { format!("sensor_{:06}", j % 100_000) });
            events.push(event(j));
        }
        let batch: Vec<Append<'_>> = events
            .iter()
            .zip(&streams)
            .map(|(event, stream)| Append { stream, expected: Expected::Any, event })
            .collect();
        log.append_batch(&batch).unwrap();
        i += batch.len() as u64;
    }
    log.flush().unwrap();
    eprintln!(
        "built a {n_events}-event log ({:.2} GB) in {:.1?}; needle stream has {} events",
        log.size_bytes() as f64 / 1e9,
        started.elapsed(),
        log.stream_seq("needle")
    );
    drop(log);
    let started = Instant::now();
    let log = open(dir.path(), Durability::Never);
    eprintln!("reopen (verify every frame, rebuild indexes): {:.2?}", started.elapsed());

    let mut group = c.benchmark_group("log_read");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(n_events));
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("full_replay_headers", |b| {
        b.iter(|| {
            let mut count = 0u64;
            for record in log.replay(ReplayFilter::default()) {
                black_box(record.unwrap());
                count += 1;
            }
            assert_eq!(count, n_events);
        })
    });
    group.throughput(Throughput::Elements(1000));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("one_stream_1000_of_log", |b| {
        b.iter_batched(
            || (),
            |()| {
                let records = log.read_stream("needle", 1).unwrap();
                assert_eq!(records.len(), 1000);
                records
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("one_stream_1000_of_log_decoded", |b| {
        b.iter(|| {
            let records = log.read_stream("needle", 1).unwrap();
            let events: Vec<Event> = records.iter().map(|r| r.event().unwrap()).collect();
            assert_eq!(events.len(), 1000);
            events
        })
    });
    group.finish();
}

criterion_group!(benches, appends, reads);
criterion_main!(benches);
