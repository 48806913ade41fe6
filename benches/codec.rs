//! Encode and decode throughput of the event codecs, in events per second, for a typical
//! `metric.recorded` event (the seed's example, with organization, cell and sequence set).
//!
//! Run with `cargo bench --bench codec`.

use std::hint::black_box;

use citytwin_core::codec::{json, msgpack};
use citytwin_core::event::{Event, Location, MetricRecorded, Provenance, Timestamp, Unit};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use h3o::Resolution;

const BATCH: usize = 1_000;

fn typical_events() -> Vec<Event> {
    (0..BATCH)
        .map(|i| {
            let asset_id = format!("sensor_{:06}", i % 997);
            Event::new(
                format!("a1b2c3d4-e5f6-7890-abcd-{i:012}"),
                format!("/sensors/air_quality/{asset_id}"),
                MetricRecorded {
                    asset_id: asset_id.as_str().into(),
                    metric_type: "pm25".into(),
                    value: 35.5 + i as f64 * 0.01,
                    unit: Unit::from("μg/m³"),
                    location: Some(Location::new(40.7128 + i as f64 * 1e-5, -74.006)),
                },
            )
            .with_time(Timestamp::from_secs(1_736_937_000 + i as i64))
            .with_subject(asset_id)
            .with_organization("org_xyz")
            .with_provenance(Provenance::Live)
            .with_derived_cell(Resolution::Ten)
        })
        .collect()
}

/// `events` as one ingest request of typed readings (`IngestRequest.items`).
fn as_readings(events: &[Event]) -> citytwin_proto::v1::IngestRequest {
    let items = events
        .iter()
        .map(|event| citytwin_proto::v1::IngestItem {
            item: Some(citytwin_proto::v1::ingest_item::Item::Reading(
                citytwin_proto::convert::reading_from_event(event).expect("a plain reading"),
            )),
        })
        .collect();
    citytwin_proto::v1::IngestRequest { events: Vec::new(), items }
}

fn codec(c: &mut Criterion) {
    let events = typical_events();
    let stored: Vec<Vec<u8>> = events.iter().map(msgpack::encode).collect();
    let as_json: Vec<Vec<u8>> = events.iter().map(json::encode).collect();
    eprintln!(
        "typical metric.recorded: {} bytes as MessagePack, {} bytes as CloudEvents JSON",
        stored[0].len(),
        as_json[0].len()
    );

    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut buf = Vec::with_capacity(256);
    group.bench_function("msgpack_encode", |b| {
        b.iter(|| {
            for event in &events {
                buf.clear();
                msgpack::encode_into(black_box(event), &mut buf);
                black_box(&buf);
            }
        })
    });
    group.bench_function("msgpack_decode", |b| {
        b.iter(|| {
            for bytes in &stored {
                black_box(msgpack::decode(black_box(bytes)).unwrap());
            }
        })
    });
    group.bench_function("msgpack_encode_decode", |b| {
        b.iter(|| {
            for event in &events {
                buf.clear();
                msgpack::encode_into(black_box(event), &mut buf);
                black_box(msgpack::decode(&buf).unwrap());
            }
        })
    });
    group.bench_function("json_encode", |b| {
        b.iter(|| {
            for event in &events {
                buf.clear();
                json::encode_into(black_box(event), &mut buf);
                black_box(&buf);
            }
        })
    });
    group.bench_function("json_decode_validate", |b| {
        b.iter(|| {
            for bytes in &as_json {
                black_box(json::decode(black_box(bytes)).unwrap());
            }
        })
    });
    // The gRPC ingest path: one request of the batch as protobuf, decoded and each event
    // converted and validated (what `Ingest` does before the twin sees anything).
    let request = citytwin_proto::v1::IngestRequest {
        events: events.iter().map(citytwin_proto::convert::event_to_proto).collect(),
        items: Vec::new(),
    };
    let wire = prost::Message::encode_to_vec(&request);
    eprintln!("the batch as one IngestRequest: {} bytes ({} per event)", wire.len(), wire.len() / BATCH);
    group.bench_function("protobuf_decode_validate", |b| {
        b.iter(|| {
            let request: citytwin_proto::v1::IngestRequest =
                prost::Message::decode(black_box(wire.as_slice())).unwrap();
            for event in &request.events {
                black_box(citytwin_proto::convert::event_from_proto(event).unwrap());
            }
        })
    });
    // The same batch as typed readings (`IngestRequest.items`), decoded and converted; the
    // twin validates them when it ingests them, so validation is counted as for CloudEvents.
    let readings_wire = prost::Message::encode_to_vec(&as_readings(&events));
    eprintln!("the batch as typed readings: {} bytes ({} per event)", readings_wire.len(), readings_wire.len() / BATCH);
    group.bench_function("protobuf_readings_decode_validate", |b| {
        b.iter(|| {
            let request: citytwin_proto::v1::IngestRequest =
                prost::Message::decode(black_box(readings_wire.as_slice())).unwrap();
            for item in &request.items {
                let Some(citytwin_proto::v1::ingest_item::Item::Reading(reading)) = &item.item else { unreachable!() };
                let event = citytwin_proto::convert::event_from_reading(reading).unwrap();
                event.validate().unwrap();
                black_box(event);
            }
        })
    });
    group.bench_function("protobuf_readings_encode", |b| {
        b.iter(|| {
            black_box(prost::Message::encode_to_vec(&as_readings(black_box(&events))));
        })
    });
    group.bench_function("protobuf_encode", |b| {
        b.iter(|| {
            let request = citytwin_proto::v1::IngestRequest {
                events: black_box(&events).iter().map(citytwin_proto::convert::event_to_proto).collect(),
                items: Vec::new(),
            };
            black_box(prost::Message::encode_to_vec(&request));
        })
    });
    group.bench_function("protobuf_decode_only", |b| {
        b.iter(|| {
            let request: citytwin_proto::v1::IngestRequest =
                prost::Message::decode(black_box(wire.as_slice())).unwrap();
            black_box(request);
        })
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
