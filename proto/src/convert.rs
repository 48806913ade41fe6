//! Conversions between the wire types and `citytwin-core`'s domain types.
//!
//! - [`event_to_proto`] / [`event_from_proto`]: [`Event`] ⇄ [`CloudEvent`] through the typed
//!   binary mapping of `citytwin_core::codec::binary` (user extensions keep their types,
//!   `time` is a protobuf timestamp, JSON and text data travel as `text_data`).
//! - [`reading_from_event`] / [`event_from_reading`]: a `metric.recorded` [`Event`] ⇄ the typed
//!   [`Reading`], for high-volume telemetry (no JSON on either side).
//! - [`timestamp_to_proto`] / [`timestamp_from_proto`].

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use citytwin_core::codec::binary::{self, AttributeValue, BinaryEvent};
use citytwin_core::event::{
    Data as EventData, Event, EventKind, Location, MetricRecorded, Payload, Provenance, SPEC_VERSION, Timestamp, Unit,
    ValidationError, Violation,
};
use h3o::CellIndex;

use crate::v1::cloud_event::Data;
use crate::v1::cloud_event_attribute_value::Attr;
use crate::v1::{self as wire, CloudEvent, CloudEventAttributeValue, LatLng, Reading};

/// Nanoseconds per second.
const NANOS: i64 = 1_000_000_000;

/// A domain timestamp as a protobuf one.
pub fn timestamp_to_proto(time: Timestamp) -> prost_types::Timestamp {
    let nanos = time.as_nanos();
    prost_types::Timestamp { seconds: nanos.div_euclid(NANOS), nanos: nanos.rem_euclid(NANOS) as i32 }
}

/// A protobuf timestamp as a domain one (saturating outside 1677..2262).
pub fn timestamp_from_proto(time: &prost_types::Timestamp) -> Timestamp {
    let nanos = i128::from(time.seconds) * i128::from(NANOS) + i128::from(time.nanos);
    Timestamp::from_nanos(nanos.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
}

/// An event as a protobuf CloudEvent.
pub fn event_to_proto(event: &Event) -> CloudEvent {
    let message = binary::encode(event);
    let textual = message.body_is_text();
    let BinaryEvent { attributes, content_type, body } = message;
    let mut out = CloudEvent {
        id: event.id.to_string(),
        source: event.source.to_string(),
        spec_version: SPEC_VERSION.to_owned(),
        r#type: event.ty.as_str().to_owned(),
        attributes: Default::default(),
        data: None,
    };
    for (name, value) in attributes {
        if matches!(name.as_str(), "id" | "source" | "type" | "specversion") {
            continue;
        }
        let attr = match value {
            AttributeValue::Text(text) => Attr::CeString(text),
            AttributeValue::Bool(flag) => Attr::CeBoolean(flag),
            AttributeValue::Integer(number) => Attr::CeInteger(number),
            AttributeValue::Time(time) => Attr::CeTimestamp(timestamp_to_proto(time)),
        };
        out.attributes.insert(name, CloudEventAttributeValue { attr: Some(attr) });
    }
    if let Some(content_type) = content_type {
        out.attributes.insert(
            "datacontenttype".to_owned(),
            CloudEventAttributeValue { attr: Some(Attr::CeString(content_type)) },
        );
    }
    if !body.is_empty() {
        out.data = Some(match String::from_utf8(body) {
            Ok(text) if textual => Data::TextData(text),
            Ok(text) => Data::BinaryData(text.into_bytes()),
            Err(bytes) => Data::BinaryData(bytes.into_bytes()),
        });
    }
    out
}

/// A protobuf CloudEvent as a validated domain event.
///
/// # Errors
/// [`citytwin_core::Error::Invalid`] listing every broken rule (a missing `spec_version`,
/// an unknown attribute name, invalid data...).
pub fn event_from_proto(event: &CloudEvent) -> citytwin_core::Result<Event> {
    let mut content_type = None;
    let mut attributes: Vec<(&str, AttributeValue)> = Vec::with_capacity(event.attributes.len() + 4);
    for (name, value) in
        [("specversion", &event.spec_version), ("id", &event.id), ("source", &event.source), ("type", &event.r#type)]
    {
        // Empty means absent in proto3: reported as missing by the validation.
        if !value.is_empty() {
            attributes.push((name, AttributeValue::Text(value.clone())));
        }
    }
    for (name, value) in &event.attributes {
        let value = match &value.attr {
            Some(Attr::CeString(text) | Attr::CeUri(text) | Attr::CeUriRef(text)) => AttributeValue::Text(text.clone()),
            Some(Attr::CeBoolean(flag)) => AttributeValue::Bool(*flag),
            Some(Attr::CeInteger(number)) => AttributeValue::Integer(*number),
            Some(Attr::CeTimestamp(time)) => AttributeValue::Time(timestamp_from_proto(time)),
            Some(Attr::CeBytes(bytes)) => AttributeValue::Text(BASE64_STANDARD.encode(bytes)),
            None => continue,
        };
        if name == "datacontenttype" {
            if let AttributeValue::Text(text) = value {
                content_type = Some(text);
                continue;
            }
        }
        attributes.push((name.as_str(), value));
    }
    let body: &[u8] = match &event.data {
        Some(Data::TextData(text)) => text.as_bytes(),
        Some(Data::BinaryData(bytes)) => bytes,
        None => &[],
    };
    binary::decode(attributes, content_type.as_deref(), body)
}

/// An event as a typed [`Reading`], when a reading carries it exactly: a `metric.recorded`
/// event with typed data and no attribute a reading has no field for (`datacontenttype`,
/// `dataschema`, `correlationid`, `causationid`, `region`, user extensions). `None` for any
/// other event: send that one as a CloudEvent.
pub fn reading_from_event(event: &Event) -> Option<Reading> {
    let Some(EventData::Payload(Payload::MetricRecorded(data))) = &event.data else { return None };
    let representable = event.ty.kind() == Some(EventKind::MetricRecorded)
        && event.rare.datacontenttype.is_none()
        && event.rare.dataschema.is_none()
        && event.ext.rare.is_empty()
        // An empty subject or organization would come back as none.
        && event.rare.subject.as_ref().is_none_or(|subject| !subject.is_empty())
        && event.ext.organization.as_ref().is_none_or(|org| !org.is_empty());
    if !representable {
        return None;
    }
    Some(Reading {
        id: event.id.to_string(),
        source: event.source.to_string(),
        time: event.time.map(timestamp_to_proto),
        asset_id: data.asset_id.to_string(),
        metric_type: data.metric_type.to_string(),
        value: data.value,
        unit: data.unit.as_str().to_owned(),
        location: data.location.map(|l| LatLng { lat: l.lat, lng: l.lng }),
        organization: event.ext.organization.as_deref().unwrap_or_default().to_owned(),
        h3cell: event.ext.h3cell.map_or(0, u64::from),
        sequence: event.ext.sequence,
        provenance: match event.ext.provenance {
            None => wire::Provenance::Unspecified,
            Some(Provenance::Live) => wire::Provenance::Live,
            Some(Provenance::Simulated) => wire::Provenance::Simulated,
            Some(Provenance::Replayed) => wire::Provenance::Replayed,
        } as i32,
        subject: event.rare.subject.clone().unwrap_or_default(),
    })
}

/// A typed [`Reading`] as the `metric.recorded` event it stands for.
///
/// Only what the wire form itself gets wrong is checked here (an `h3cell` that is no H3
/// index, an unknown `provenance`); the event's own rules (a URI-reference source, a finite
/// value, a location within range, the cell matching the location...) are checked where every
/// event is, by the twin when it ingests it.
///
/// # Errors
/// [`citytwin_core::Error::Invalid`] naming each such attribute.
pub fn event_from_reading(reading: &Reading) -> citytwin_core::Result<Event> {
    let mut violations = Vec::new();
    let h3cell = match reading.h3cell {
        0 => None,
        index => CellIndex::try_from(index)
            .map_err(|_| violations.push(Violation::new("h3cell", format!("{index:#x} is not an H3 cell index"))))
            .ok(),
    };
    let provenance = match wire::Provenance::try_from(reading.provenance) {
        Ok(wire::Provenance::Unspecified) => None,
        Ok(wire::Provenance::Live) => Some(Provenance::Live),
        Ok(wire::Provenance::Simulated) => Some(Provenance::Simulated),
        Ok(wire::Provenance::Replayed) => Some(Provenance::Replayed),
        Err(_) => {
            violations.push(Violation::new("provenance", format!("{} is not a known provenance", reading.provenance)));
            None
        }
    };
    if !violations.is_empty() {
        return Err(ValidationError::new(violations).into());
    }
    let data = MetricRecorded {
        asset_id: reading.asset_id.as_str().into(),
        metric_type: reading.metric_type.as_str().into(),
        value: reading.value,
        unit: Unit::new(reading.unit.as_str()),
        location: reading.location.map(|l| Location::new(l.lat, l.lng)),
    };
    let mut event = Event::new(reading.id.as_str(), reading.source.as_str(), data);
    event.time = reading.time.as_ref().map(timestamp_from_proto);
    if !reading.subject.is_empty() {
        event.rare.subject = Some(reading.subject.clone());
    }
    event.ext.organization = (!reading.organization.is_empty()).then(|| reading.organization.as_str().into());
    event.ext.h3cell = h3cell;
    event.ext.sequence = reading.sequence;
    event.ext.provenance = provenance;
    Ok(event)
}

#[cfg(test)]
mod tests {
    use citytwin_core::event::{EventType, Rare};
    use citytwin_core::testing;
    use proptest::prelude::*;

    use super::*;

    /// `metric.recorded` data with every attribute `testing::event` varies; half of them
    /// without the attributes a reading has no field for, some with an empty subject or
    /// organization, some under another type.
    fn metric_events() -> impl Strategy<Value = Event> {
        let data = (
            "[a-z0-9_]{1,12}",
            "[a-z0-9_]{1,8}",
            -1e9f64..1e9,
            prop_oneof![Just("ug/m3"), Just("µg/m³"), Just("{vehicles}"), Just("")],
            proptest::option::of(testing::location()),
        );
        (testing::event(), data, any::<bool>(), 0u8..16).prop_map(
            |(mut event, (asset, metric, value, unit, location), plain, odd)| {
                let data = MetricRecorded {
                    asset_id: asset.into(),
                    metric_type: metric.into(),
                    value,
                    unit: Unit::new(unit),
                    location,
                };
                event.ty = EventKind::MetricRecorded.into();
                event.data = Some(EventData::Payload(Payload::MetricRecorded(data)));
                if plain {
                    let subject = event.rare.subject.take();
                    event.rare = Rare::default();
                    event.rare.subject = subject;
                    event.ext.rare = Rare::default();
                }
                match odd {
                    0 => event.rare.subject = Some(String::new()),
                    1 => event.ext.organization = Some("".into()),
                    2 => event.ty = EventType::new("com.example.retyped"),
                    _ => {}
                }
                event
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn events_round_trip_through_protobuf(event in testing::event()) {
            let wire = event_to_proto(&event);
            let bytes = prost::Message::encode_to_vec(&wire);
            let decoded: CloudEvent = prost::Message::decode(bytes.as_slice()).unwrap();
            let back = event_from_proto(&decoded).map_err(|e| TestCaseError::fail(format!("{e}\n{wire:?}")))?;
            prop_assert_eq!(back, event);
        }

        #[test]
        fn a_reading_carries_exactly_the_plain_metric_events_and_round_trips(event in metric_events()) {
            let plain = event.ty.kind() == Some(EventKind::MetricRecorded)
                && event.rare.datacontenttype.is_none()
                && event.rare.dataschema.is_none()
                && event.rare.subject.as_deref() != Some("")
                && event.ext.rare.is_empty()
                && event.ext.organization.as_deref() != Some("");
            let reading = reading_from_event(&event);
            prop_assert_eq!(reading.is_some(), plain, "{:?}", event);
            if let Some(reading) = reading {
                let bytes = prost::Message::encode_to_vec(&reading);
                let decoded: Reading = prost::Message::decode(bytes.as_slice()).unwrap();
                let back = event_from_reading(&decoded).map_err(|e| TestCaseError::fail(format!("{e}\n{reading:?}")))?;
                prop_assert_eq!(back, event);
            }
        }

        #[test]
        fn events_without_metric_data_are_left_to_cloudevents(event in testing::event()) {
            let metric = matches!(&event.data, Some(EventData::Payload(Payload::MetricRecorded(_))));
            prop_assert!(metric || reading_from_event(&event).is_none());
        }

        #[test]
        fn timestamps_round_trip(nanos in any::<i64>()) {
            let time = Timestamp::from_nanos(nanos);
            prop_assert_eq!(timestamp_from_proto(&timestamp_to_proto(time)), time);
        }
    }

    #[test]
    fn a_delivery_id_reads_the_id_of_either_form_from_a_whole_delivery() {
        let data = MetricRecorded {
            asset_id: "s1".into(),
            metric_type: "pm25".into(),
            value: 12.5,
            unit: Unit::new("ug/m3"),
            location: Some(Location::new(60.17, 24.94)),
        };
        let event = Event::new("r-17", "/sensors/s1", data).with_organization("acme");
        let as_event = wire::Delivery { position: 7, event: Some(event_to_proto(&event)), reading: None };
        let as_reading = wire::Delivery { position: 8, event: None, reading: reading_from_event(&event) };
        for (delivery, position) in [(as_event, 7), (as_reading, 8)] {
            let bytes = prost::Message::encode_to_vec(&delivery);
            let id: wire::DeliveryId = prost::Message::decode(bytes.as_slice()).unwrap();
            let seen = id.event.as_ref().or(id.reading.as_ref()).map(|e| e.id.as_str());
            assert_eq!((id.position, seen), (position, Some("r-17")), "{delivery:?}");
        }
    }

    #[test]
    fn a_reading_with_a_bad_cell_and_provenance_names_both() {
        let reading = Reading { id: "r1".into(), h3cell: 42, provenance: 9, ..Reading::default() };
        let message = event_from_reading(&reading).unwrap_err().to_string();
        assert!(message.contains("h3cell") && message.contains("0x2a") && message.contains("provenance"), "{message}");
    }

    #[test]
    fn a_missing_spec_version_and_a_bad_attribute_are_both_reported() {
        let wire = CloudEvent { id: "e1".into(), source: "/s".into(), r#type: "x.y".into(), ..CloudEvent::default() };
        let mut wire = wire;
        wire.attributes.insert("Bad-Name".into(), CloudEventAttributeValue { attr: Some(Attr::CeString("v".into())) });
        let message = event_from_proto(&wire).unwrap_err().to_string();
        assert!(message.contains("specversion") && message.contains("Bad-Name"), "{message}");
    }
}
