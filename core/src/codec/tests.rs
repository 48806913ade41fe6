//! Round-trip property tests for every codec, plus targeted cases.

use proptest::prelude::*;
use serde_json::json;

use super::envelope::Envelope;
use super::{amqp, binary, http, json, mqtt, msgpack};
use crate::event::{Event, ExtensionValue};
use crate::testing;

/// Binary modes carry every attribute as text: user extensions come back as strings.
fn as_text_extensions(mut event: Event) -> Event {
    for value in event.ext.rare.other.values_mut() {
        *value = ExtensionValue::String(value.to_text());
    }
    event
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn generated_events_are_valid(event in testing::event()) {
        prop_assert!(event.validate().is_ok(), "{:?}: {}", event, event.validate().unwrap_err());
    }

    #[test]
    fn json_structured_round_trips(event in testing::event()) {
        let bytes = json::encode(&event);
        let back = json::decode(&bytes).map_err(|e| TestCaseError::fail(format!("{e}\n{}", String::from_utf8_lossy(&bytes))))?;
        prop_assert_eq!(back, event);
    }

    #[test]
    fn json_batch_round_trips(events in proptest::collection::vec(testing::event(), 0..5)) {
        let bytes = json::encode_batch(&events);
        let back: Vec<Event> = json::decode_batch(&bytes).unwrap().into_iter().collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(back, events);
    }

    #[test]
    fn http_binary_round_trips(event in testing::event()) {
        let message = http::encode(&event);
        let headers = message.headers.iter().map(|(name, value)| (name.as_str(), value.as_bytes()));
        let back = http::decode(headers, &message.body).map_err(|e| TestCaseError::fail(format!("{e}\n{message:?}")))?;
        prop_assert_eq!(back, as_text_extensions(event));
        prop_assert!(message.headers.iter().filter(|(name, _)| name.starts_with("ce-")).all(|(_, value)| value.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'"')),
            "header values must be printable ASCII: {:?}", message.headers);
    }

    #[test]
    fn mqtt5_binary_round_trips(event in testing::event()) {
        let message = mqtt::encode_v5(&event);
        let back = mqtt::decode_v5(&message).map_err(|e| TestCaseError::fail(format!("{e}\n{message:?}")))?;
        prop_assert_eq!(back, as_text_extensions(event));
    }

    #[test]
    fn typed_binary_round_trips_exactly(event in testing::event()) {
        let message = binary::encode(&event);
        let attributes = message.attributes.iter().map(|(name, value)| (name.as_str(), value.clone()));
        let back = binary::decode(attributes, message.content_type.as_deref(), &message.body)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{message:?}")))?;
        prop_assert_eq!(back, event);
    }

    #[test]
    fn amqp_binary_round_trips_exactly(event in testing::event()) {
        let message = amqp::encode(&event);
        prop_assert!(message.headers.iter().all(|(name, _)| name.starts_with(amqp::PREFIX)), "{:?}", message.headers);
        let back = amqp::decode_any(&message).map_err(|e| TestCaseError::fail(format!("{e}\n{message:?}")))?;
        prop_assert_eq!(back, event);
    }

    #[test]
    fn amqp_structured_round_trips(event in testing::event()) {
        let message = amqp::AmqpMessage {
            content_type: Some(amqp::STRUCTURED_CONTENT_TYPE.to_owned()),
            headers: vec![("x-app".to_owned(), binary::AttributeValue::Text("ignored".into()))],
            body: json::encode(&event),
        };
        prop_assert_eq!(amqp::decode_any(&message).unwrap(), event);
    }

    #[test]
    fn mqtt3_structured_round_trips(event in testing::event()) {
        prop_assert_eq!(mqtt::decode_v3(&mqtt::encode_v3(&event)).unwrap(), event);
    }

    #[test]
    fn msgpack_round_trips(event in testing::event()) {
        let bytes = msgpack::encode(&event);
        prop_assert_eq!(bytes[0], msgpack::FORMAT_VERSION);
        prop_assert_eq!(msgpack::decode(&bytes).unwrap(), event);
    }

    #[test]
    fn envelope_round_trips(event in testing::event()) {
        let envelope = Envelope::from_event(&event);
        let parsed = Envelope::from_json(&envelope.to_json()).unwrap();
        prop_assert_eq!(&parsed, &envelope);
        let back = parsed.into_event().map_err(|e| TestCaseError::fail(format!("{e}\n{envelope:?}")))?;
        prop_assert_eq!(&back, &event);
        prop_assert_eq!(Envelope::from_event(&back), envelope);
    }
}

#[test]
fn seed_envelope_converts_without_losing_a_field() {
    let text = json!({
        "event_id": "evt_123456",
        "event_type": "alert.triggered",
        "timestamp": "2025-01-15T10:30:00Z",
        "source_asset": "sensor_001",
        "correlation_id": "corr_abc123",
        "causation_id": "cause_def456",
        "payload": {"alert_id": "alert_temp_high", "rule_id": "threshold:temperature", "severity": "critical", "threshold": 75.0, "actual_value": 85.5},
        "metadata": {"organization_id": "org_xyz", "region": "us-east"}
    });
    let envelope = Envelope::from_json(text.to_string().as_bytes()).unwrap();
    let event = envelope.clone().into_event().unwrap();
    assert_eq!(event.ty.as_str(), "com.smartcities.alert.triggered");
    assert_eq!(event.source, "/assets/sensor_001");
    assert_eq!(event.rare.subject.as_deref(), Some("sensor_001"));
    assert_eq!(event.ext.rare.correlationid.as_deref(), Some("corr_abc123"));
    assert_eq!(event.ext.rare.causationid.as_deref(), Some("cause_def456"));
    assert_eq!(event.ext.organization.as_deref(), Some("org_xyz"));
    assert_eq!(event.ext.rare.region.as_deref(), Some("us-east"));
    assert_eq!(event.time.unwrap().to_rfc3339(), "2025-01-15T10:30:00Z");
    let Some(crate::event::Payload::AlertTriggered(alert)) = event.payload() else { panic!("typed alert expected") };
    assert_eq!((alert.threshold, alert.actual_value), (Some(75.0), Some(85.5)));
    assert_eq!(Envelope::from_event(&event).payload.unwrap()["alert_id"], "alert_temp_high");
}

#[test]
fn http_headers_are_percent_encoded_and_case_insensitive() {
    let event = Event::untyped("id 1", "/s", "com.example.t").with_subject("café \"x\" 100%");
    let message = http::encode(&event);
    let subject = &message.headers.iter().find(|(name, _)| name == "ce-subject").unwrap().1;
    assert_eq!(subject, "caf%C3%A9%20%22x%22%20100%25");
    let headers = [
        ("CE-SpecVersion", "1.0"),
        ("Ce-Id", "id%201"),
        ("ce-source", "/s"),
        ("ce-type", "com.example.t"),
        ("ce-subject", subject.as_str()),
        ("X-Other", "ignored"),
    ];
    let back = http::decode(headers.iter().map(|(n, v)| (*n, v.as_bytes())), b"").unwrap();
    assert_eq!(back, event);
}

#[test]
fn http_binary_rejects_bad_input_with_every_reason() {
    let headers = [
        ("ce-specversion", "1.0"),
        ("ce-type", "com.example.t"),
        ("ce-time", "noon"),
        ("content-type", "application/json"),
    ];
    let error = http::decode(headers.iter().map(|(n, v)| (*n, v.as_bytes())), b"{not json").unwrap_err();
    let text = error.to_string();
    for part in ["time is not RFC 3339", "data is not valid JSON", "id is required", "source is required"] {
        assert!(text.contains(part), "{text:?} should contain {part:?}");
    }
}

#[test]
fn msgpack_is_compact_and_versioned() {
    let event = json::from_value(json!({
        "specversion": "1.0", "type": "com.smartcities.asset.metric_recorded", "source": "/sensors/air_quality/sensor_001",
        "id": "a1b2c3d4-e5f6-7890-abcd-ef1234567890", "time": "2025-01-15T10:30:00Z",
        "data": {"asset_id": "sensor_001", "metric_type": "pm25", "value": 35.5, "unit": "μg/m³", "location": {"lat": 40.7128, "lng": -74.0060}}
    }))
    .unwrap();
    let stored = msgpack::encode(&event);
    let as_json = json::encode(&event);
    assert!(stored.len() * 2 < as_json.len(), "MessagePack {} bytes vs JSON {} bytes", stored.len(), as_json.len());
    let mut future = stored.clone();
    future[0] = msgpack::FORMAT_VERSION + 1;
    assert!(matches!(msgpack::decode(&future), Err(crate::Error::UnsupportedFormat { .. })));
    assert!(matches!(msgpack::decode(&stored[..stored.len() / 2]), Err(crate::Error::Malformed { .. })));
    assert!(matches!(msgpack::decode(&[]), Err(crate::Error::Malformed { .. })));
}

#[test]
fn amqp_reads_the_alternative_prefix_and_names_every_problem() {
    use binary::AttributeValue::Text;
    let message = amqp::AmqpMessage {
        content_type: Some("application/json".into()),
        headers: vec![
            ("cloudEvents_specversion".into(), Text("1.0".into())),
            ("cloudEvents_id".into(), Text("a-1".into())),
            ("cloudEvents_source".into(), Text("/amqp".into())),
            ("cloudEvents_type".into(), Text("com.example.t".into())),
            ("x-trace".into(), Text("not an attribute".into())),
        ],
        body: br#"{"k":1}"#.to_vec(),
    };
    let event = amqp::decode_any(&message).unwrap();
    assert_eq!((event.id.as_str(), event.source.as_str()), ("a-1", "/amqp"));
    assert!(event.ext.rare.other.is_empty(), "{:?}", event.ext.rare.other);

    let broken = amqp::AmqpMessage {
        content_type: None,
        headers: vec![
            ("cloudEvents:specversion".into(), Text("0.3".into())),
            ("cloudEvents:id".into(), Text(String::new())),
        ],
        body: Vec::new(),
    };
    let error = amqp::decode_any(&broken).unwrap_err().to_string();
    for expected in ["specversion", "id", "source", "type"] {
        assert!(error.contains(expected), "{expected} missing from {error}");
    }
}

#[test]
fn typed_binary_data_is_read_as_its_payload_straight_from_the_bytes_with_the_same_outcomes() {
    use binary::AttributeValue::{Text, Time};
    let decode = |body: &[u8]| {
        let attributes = vec![
            ("specversion", Text("1.0".into())),
            ("id", Text("r-1".into())),
            ("source", Text("/sensors/a1".into())),
            ("type", Text("com.smartcities.asset.metric_recorded".into())),
            ("time", Time(crate::event::Timestamp::from_secs(1_736_899_200))),
        ];
        binary::decode(attributes, Some("application/json"), body)
    };
    let value_of = |event: &Event| match event.payload() {
        Some(crate::event::Payload::MetricRecorded(m)) => Some(m.value),
        _ => None,
    };
    let typed = decode(br#"{"asset_id":"a1","metric_type":"pm25","value":12.5,"unit":"ug/m3"}"#).unwrap();
    assert_eq!(value_of(&typed), Some(12.5));
    assert_eq!(typed.time, Some(crate::event::Timestamp::from_secs(1_736_899_200)));
    // A repeated key: the last one counts, as it did when every body went through a JSON value.
    let repeated = decode(br#"{"asset_id":"a1","metric_type":"pm25","value":1.0,"unit":"ug/m3","value":2.0}"#).unwrap();
    assert_eq!(value_of(&repeated), Some(2.0));
    // Data that is not the type's payload is refused with the schema's reason, as before.
    let error = decode(br#"{"asset_id":"a1","level":"high"}"#).unwrap_err().to_string();
    assert!(error.contains("does not match the schema") && error.contains("unknown field `level`"), "{error}");
}
