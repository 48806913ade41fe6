//! Conversions between the wire types and `citytwin-core`'s domain types.
//!
//! - [`event_to_proto`] / [`event_from_proto`]: [`Event`] ⇄ [`CloudEvent`] through the typed
//!   binary mapping of `citytwin_core::codec::binary` (user extensions keep their types,
//!   `time` is a protobuf timestamp, JSON and text data travel as `text_data`).
//! - [`timestamp_to_proto`] / [`timestamp_from_proto`].

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use citytwin_core::codec::binary::{self, AttributeValue, BinaryEvent};
use citytwin_core::event::{Event, SPEC_VERSION, Timestamp};

use crate::v1::cloud_event::Data;
use crate::v1::cloud_event_attribute_value::Attr;
use crate::v1::{CloudEvent, CloudEventAttributeValue};

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

#[cfg(test)]
mod tests {
    use citytwin_core::testing;
    use proptest::prelude::*;

    use super::*;

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
        fn timestamps_round_trip(nanos in any::<i64>()) {
            let time = Timestamp::from_nanos(nanos);
            prop_assert_eq!(timestamp_from_proto(&timestamp_to_proto(time)), time);
        }
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
