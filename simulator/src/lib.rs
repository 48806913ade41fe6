//! The scenario simulator (`citytwin-simulator`).
//!
//! A scenario file (city area, asset populations, metric distributions with diurnal and
//! weekly profiles, fault and incident processes, what-if interventions; see
//! `docs/scenarios.md`) is parsed and validated ([`scenario`]), planned (every asset placed,
//! every incident scheduled: [`generate::Plan`]) and generated window by window as compact
//! samples ([`generate::Generator`]) that become CloudEvents on demand. The same scenario and
//! seed give the byte-identical stream whatever the thread count; [`StreamDigest`] fingerprints
//! it.
//!
//! The simulator knows nothing of actors or networks: a driver (the `citytwin run` command)
//! takes the events and feeds a twin through its narrow ingest interface.

pub mod generate;
pub mod geometry;
pub mod profile;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod svg;

use citytwin_core::event::{Data, Event, EventKind, Payload};

/// A fingerprint of an event stream: XXH3-64 over each event's bytes, in order. Equal digests
/// mean (with overwhelming probability) byte-identical streams.
///
/// An event's bytes are its MessagePack encoding, except for the plain reading that makes up
/// nearly all of a scenario's stream (a `metric.recorded` with no attribute beyond those the
/// generator sets): its fields are written as they are, length-prefixed, which costs a
/// fraction of the encoding. A leading tag byte tells the two apart.
pub struct StreamDigest {
    hasher: xxhash_rust::xxh3::Xxh3,
    buffer: Vec<u8>,
    events: u64,
}

impl std::fmt::Debug for StreamDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDigest").field("events", &self.events).field("digest", &self.hex()).finish()
    }
}

impl Default for StreamDigest {
    fn default() -> Self {
        StreamDigest { hasher: xxhash_rust::xxh3::Xxh3::new(), buffer: Vec::with_capacity(512), events: 0 }
    }
}

impl StreamDigest {
    /// Adds one event.
    pub fn add(&mut self, event: &Event) {
        self.buffer.clear();
        if !plain_reading(event, &mut self.buffer) {
            self.buffer.clear();
            self.buffer.push(ENCODED);
            citytwin_core::codec::msgpack::encode_into(event, &mut self.buffer);
        }
        self.hasher.update(&(self.buffer.len() as u64).to_le_bytes());
        self.hasher.update(&self.buffer);
        self.events += 1;
    }

    /// Events added.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The digest as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.hasher.digest())
    }
}

/// The tag of an event digested by its MessagePack encoding.
const ENCODED: u8 = 0;
/// The tag of a plain reading digested field by field.
const READING: u8 = 1;

/// Writes a plain reading's fields (see [`StreamDigest`]) to `out`; `false`, with `out` left
/// partly written, for any other event.
fn plain_reading(event: &Event, out: &mut Vec<u8>) -> bool {
    let Some(Data::Payload(Payload::MetricRecorded(reading))) = &event.data else { return false };
    let ext = &event.ext;
    let plain = event.rare.is_empty()
        && ext.rare.is_empty()
        && ext.sequence.is_none()
        && event.ty.kind() == Some(EventKind::MetricRecorded);
    if !plain {
        return false;
    }
    let text = |out: &mut Vec<u8>, text: &str| {
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    };
    out.push(READING);
    text(out, &event.id);
    text(out, &event.source);
    match event.time {
        Some(time) => {
            out.push(1);
            out.extend_from_slice(&time.as_nanos().to_le_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(&ext.h3cell.map_or(0, u64::from).to_le_bytes());
    // 0 for none, else the stored code plus one.
    out.push(ext.provenance.map_or(0, |provenance| provenance.code() + 1));
    match &ext.organization {
        Some(organization) => {
            out.push(1);
            text(out, organization);
        }
        None => out.push(0),
    }
    text(out, &reading.asset_id);
    text(out, &reading.metric_type);
    out.extend_from_slice(&reading.value.to_bits().to_le_bytes());
    text(out, &reading.unit.0);
    match reading.location {
        Some(location) => {
            out.push(1);
            out.extend_from_slice(&location.lat.to_bits().to_le_bytes());
            out.extend_from_slice(&location.lng.to_bits().to_le_bytes());
        }
        None => out.push(0),
    }
    true
}

#[cfg(test)]
mod tests {
    use citytwin_core::event::{Location, MetricRecorded, Provenance, Timestamp, Unit};
    use h3o::Resolution;

    use super::*;

    fn digest(event: &Event) -> String {
        let mut digest = StreamDigest::default();
        digest.add(event);
        digest.hex()
    }

    fn reading() -> Event {
        let location = Location::new(40.7306, -73.9352);
        let mut event = Event::new(
            "aq-7-12",
            "/sensors/air_quality/aq-7",
            MetricRecorded {
                asset_id: "aq-7".into(),
                metric_type: "pm25".into(),
                value: 12.5,
                unit: Unit("ug/m3".into()),
                location: Some(location),
            },
        );
        event.time = Some(Timestamp::from_nanos(1_736_917_200_000_000_000));
        event.ext.h3cell = location.cell(Resolution::Eight);
        event.ext.provenance = Some(Provenance::Simulated);
        event.ext.organization = Some("city".into());
        event
    }

    #[test]
    fn a_change_to_any_field_of_a_reading_changes_its_digest() {
        let base = reading();
        assert_eq!(digest(&base), digest(&base.clone()));
        let mut buffer = Vec::new();
        assert!(plain_reading(&base, &mut buffer), "the generator's reading takes the field-wise path");
        let with_reading = |change: fn(&mut MetricRecorded)| {
            let mut event = base.clone();
            let Some(Data::Payload(Payload::MetricRecorded(reading))) = &mut event.data else { unreachable!() };
            change(reading);
            event
        };
        let variants: Vec<(&str, Event)> = vec![
            ("id", Event { id: "aq-7-13".into(), ..base.clone() }),
            ("source", Event { source: "/sensors/air_quality/aq-8".into(), ..base.clone() }),
            ("time", Event { time: Some(Timestamp::from_nanos(1)), ..base.clone() }),
            ("no time", Event { time: None, ..base.clone() }),
            ("subject", {
                let mut event = base.clone();
                event.rare.subject = Some("aq-7".into());
                event
            }),
            ("cell", {
                let mut event = base.clone();
                event.ext.h3cell = Location::new(51.5, -0.12).cell(Resolution::Eight);
                event
            }),
            ("provenance", {
                let mut event = base.clone();
                event.ext.provenance = Some(Provenance::Live);
                event
            }),
            ("organization", {
                let mut event = base.clone();
                event.ext.organization = None;
                event
            }),
            ("correlation id", {
                let mut event = base.clone();
                event.ext.rare.correlationid = Some("c-1".into());
                event
            }),
            ("asset", with_reading(|r| r.asset_id = "aq-8".into())),
            ("metric", with_reading(|r| r.metric_type = "pm10".into())),
            ("value", with_reading(|r| r.value = 12.6)),
            ("unit", with_reading(|r| r.unit = Unit("mg/m3".into()))),
            ("location", with_reading(|r| r.location = Some(Location::new(40.7306, -73.9353)))),
            ("no location", with_reading(|r| r.location = None)),
        ];
        let mut seen = std::collections::HashMap::from([(digest(&base), "base")]);
        for (name, event) in &variants {
            if let Some(other) = seen.insert(digest(event), name) {
                panic!("changing the {name} gives the digest of {other}");
            }
        }
    }

    #[test]
    fn events_move_the_digest_in_order() {
        let (a, b) = (reading(), Event { id: "aq-7-13".into(), ..reading() });
        let mut ab = StreamDigest::default();
        ab.add(&a);
        ab.add(&b);
        let mut ba = StreamDigest::default();
        ba.add(&b);
        ba.add(&a);
        assert_ne!(ab.hex(), ba.hex());
        assert_eq!(ab.events(), 2);
    }
}
