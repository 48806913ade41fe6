//! Validation against a table of valid and invalid events written from the CloudEvents 1.0
//! spec text (attribute requirements, type system, JSON format) and citytwin's own rules.

use serde_json::json;

use crate::codec::json;
use crate::event::{Data, EventKind, Payload};

/// Decodes `event` as structured JSON and checks the violations, in order. An expected entry
/// ending in `…` matches any violation that starts with the text before it.
#[track_caller]
fn check(event: serde_json::Value, expected: &[&str]) {
    let result = json::from_value(event.clone());
    let found: Vec<String> = match &result {
        Ok(_) => Vec::new(),
        Err(crate::Error::Invalid(error)) => error.violations().iter().map(ToString::to_string).collect(),
        Err(other) => panic!("{event}: expected a validation result, got {other}"),
    };
    let matches = found.len() == expected.len()
        && found.iter().zip(expected).all(|(found, expected)| match expected.strip_suffix('…') {
            Some(prefix) => found.starts_with(prefix),
            None => found == expected,
        });
    assert!(matches, "{event}\n expected: {expected:#?}\n found:    {found:#?}");
}

fn minimal() -> serde_json::Value {
    json!({"specversion": "1.0", "id": "A234-1234-1234", "source": "https://github.com/cloudevents/spec/pull", "type": "com.github.pull_request.opened"})
}

fn with(mut base: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
    base[key] = value;
    base
}

fn without(mut base: serde_json::Value, key: &str) -> serde_json::Value {
    base.as_object_mut().unwrap().remove(key);
    base
}

fn metric() -> serde_json::Value {
    json!({
        "specversion": "1.0",
        "type": "com.smartcities.asset.metric_recorded",
        "source": "/sensors/air_quality/sensor_001",
        "id": "a1b2c3d4-e5f6-7890-abcd-ef1234567890",
        "time": "2025-01-15T10:30:00Z",
        "datacontenttype": "application/json",
        "data": {"asset_id": "sensor_001", "metric_type": "pm25", "value": 35.5, "unit": "μg/m³", "location": {"lat": 40.7128, "lng": -74.0060}}
    })
}

#[test]
fn valid_events_from_the_spec() {
    check(minimal(), &[]);
    // The spec's JSON format example, with a text/xml string as data.
    check(
        json!({
            "specversion": "1.0", "type": "com.example.someevent", "source": "/mycontext",
            "subject": "larger-context", "id": "C234-1234-1234", "time": "2018-04-05T17:31:00Z",
            "comexampleextension1": "value", "comexampleothervalue": 5,
            "datacontenttype": "application/xml", "data": "<much wow=\"xml\"/>"
        }),
        &[],
    );
    // Binary data as data_base64.
    check(
        json!({
            "specversion": "1.0", "type": "com.example.someevent", "source": "/mycontext", "id": "A234-1234-1234",
            "datacontenttype": "application/vnd.apache.thrift.binary", "data_base64": "AAECAwQFBgcICQ=="
        }),
        &[],
    );
    // Source examples from the spec.
    for source in [
        "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
        "/cloudevents/spec/pull/123",
        "mailto:cncf-wg-serverless@lists.cncf.io",
        "1-555-123-4567",
    ] {
        check(with(minimal(), "source", json!(source)), &[]);
    }
    // Time with an offset and fractional seconds; an optional attribute set to null is absent.
    check(with(minimal(), "time", json!("1985-04-12T23:20:50.52+01:00")), &[]);
    check(with(minimal(), "subject", json!(null)), &[]);
    check(with(minimal(), "dataschema", json!("https://schemas.city.example/metric/v1")), &[]);
    check(with(minimal(), "boolext", json!(true)), &[]);
    check(metric(), &[]);
}

#[test]
fn known_types_decode_to_typed_payloads() {
    let event = json::from_value(metric()).unwrap();
    assert_eq!(event.kind(), Some(EventKind::MetricRecorded));
    let Some(Payload::MetricRecorded(m)) = event.payload() else { panic!("expected a typed payload: {event:?}") };
    assert_eq!((m.metric_type.as_str(), m.value, m.unit.canonical()), ("pm25", 35.5, Some("ug/m3")));
    // Unknown types are carried through untyped.
    let unknown = json::from_value(with(minimal(), "data", json!({"anything": [1, 2]}))).unwrap();
    assert_eq!(unknown.data, Some(Data::Json(json!({"anything": [1, 2]}))));
}

#[test]
fn required_attributes() {
    check(without(minimal(), "specversion"), &["specversion is required"]);
    check(without(minimal(), "id"), &["id is required"]);
    check(without(minimal(), "source"), &["source is required"]);
    check(without(minimal(), "type"), &["type is required"]);
    check(with(minimal(), "id", json!("")), &["id must be a non-empty string"]);
    check(with(minimal(), "source", json!("")), &["source must be a non-empty URI-reference"]);
    check(with(minimal(), "type", json!("")), &["type must be a non-empty string"]);
    check(with(minimal(), "type", json!(5)), &["type must be a string", "type is required"]);
}

#[test]
fn attribute_rules() {
    check(with(minimal(), "specversion", json!("0.3")), &["specversion must be \"1.0\""]);
    check(with(minimal(), "specversion", json!(1.0)), &["specversion must be \"1.0\""]);
    check(with(minimal(), "source", json!("not a uri")), &["source is not a URI-reference"]);
    check(with(minimal(), "source", json!("bad%zzescape")), &["source is not a URI-reference"]);
    check(with(minimal(), "time", json!("2025-01-15 10:30")), &["time is not RFC 3339"]);
    check(with(minimal(), "time", json!(1736937000)), &["time must be a string"]);
    check(with(minimal(), "subject", json!("")), &["subject must be a non-empty string"]);
    check(with(minimal(), "id", json!("bell\u{7}")), &["id contains the forbidden character U+0007"]);
    check(
        with(minimal(), "datacontenttype", json!("json")),
        &["datacontenttype is not an RFC 2046 media type like \"application/json\""],
    );
    check(with(minimal(), "dataschema", json!("/relative/schema")), &["dataschema is not an absolute URI"]);
}

#[test]
fn extension_rules() {
    check(with(minimal(), "Upper_Case", json!("x")), &["Upper_Case is not a valid extension attribute name…"]);
    check(
        with(minimal(), "abcdefghijklmnopqrstu", json!("x")),
        &["abcdefghijklmnopqrstu is not a valid extension attribute name…"],
    );
    check(
        with(minimal(), "nested", json!({"a": 1})),
        &["nested must be a string, a boolean or an integer within the 32-bit signed range"],
    );
    check(
        with(minimal(), "big", json!(3_000_000_000i64)),
        &["big must be a string, a boolean or an integer within the 32-bit signed range"],
    );
    check(
        with(minimal(), "ratio", json!(0.5)),
        &["ratio must be a string, a boolean or an integer within the 32-bit signed range"],
    );
    check(with(minimal(), "sequence", json!("-4")), &["sequence must be a decimal unsigned integer"]);
    check(with(minimal(), "provenance", json!("guessed")), &["provenance must be one of live, simulated, replayed"]);
    check(with(minimal(), "h3cell", json!("zzz")), &["h3cell is not an H3 cell index"]);
}

#[test]
fn data_rules() {
    check(
        with(with(minimal(), "data", json!({})), "data_base64", json!("AAAA")),
        &["data and data_base64 are both present"],
    );
    check(with(minimal(), "data_base64", json!("not base64!")), &["data_base64 is not base64 (RFC 4648)"]);
    let mut bad_value = metric();
    bad_value["data"]["value"] = json!("high");
    check(bad_value, &["data does not match the schema of com.smartcities.asset.metric_recorded: invalid type…"]);
    let mut extra_field = metric();
    extra_field["data"]["colour"] = json!("grey");
    check(
        extra_field,
        &["data does not match the schema of com.smartcities.asset.metric_recorded: unknown field `colour`…"],
    );
    let mut bad_location = metric();
    bad_location["data"]["location"]["lat"] = json!(95.0);
    check(bad_location, &["data.location.lat must be a number within -90..=90"]);
    let mut text_typed = metric();
    text_typed["datacontenttype"] = json!("text/plain");
    check(text_typed, &["datacontenttype must be JSON for com.smartcities.asset.metric_recorded"]);
    let battery = json!({"specversion": "1.0", "id": "b1", "source": "/s", "type": "com.smartcities.asset.battery_low",
        "data": {"asset_id": "s1", "battery_pct": 150.0, "threshold_pct": 20.0}});
    check(battery, &["data.battery_pct must be within 0..=100"]);
}

#[test]
fn h3cell_must_match_the_location() {
    let mut event = metric();
    // The cell of (40.7128, -74.0060) at resolution 8 is derived, never trusted.
    let right = crate::event::Location::new(40.7128, -74.006).cell(h3o::Resolution::Eight).unwrap();
    event["h3cell"] = json!(right.to_string());
    check(event.clone(), &[]);
    let elsewhere = crate::event::Location::new(51.5, -0.12).cell(h3o::Resolution::Eight).unwrap();
    event["h3cell"] = json!(elsewhere.to_string());
    check(
        event,
        &[&format!(
            "h3cell {elsewhere} does not contain the event's location (40.7128, -74.006); at resolution 8 that is {right}"
        )],
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let event = json!({"specversion": "0.3", "id": "", "type": "t", "time": "yesterday", "data": 1, "data_base64": "AA==", "Bad": 1});
    check(
        event,
        &[
            // Members are read in sorted order, so the report is stable.
            "Bad is not a valid extension attribute name…",
            "specversion must be \"1.0\"",
            "time is not RFC 3339",
            "data and data_base64 are both present",
            "source is required",
            "id must be a non-empty string",
        ],
    );
}

#[test]
fn non_objects_are_malformed() {
    for text in ["[1]", "\"event\"", "{", ""] {
        let error = json::decode(text.as_bytes()).unwrap_err();
        assert!(matches!(error, crate::Error::Malformed { .. }), "{text}: {error}");
    }
}

#[test]
fn docs_list_every_known_type() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/events.md")).unwrap();
    for kind in EventKind::ALL {
        let row = format!("| `{}` | `{}` |", kind.short_name(), kind.type_str());
        assert!(docs.contains(&row), "docs/events.md lacks the row for {kind}: {row}");
    }
}

#[test]
fn an_event_stays_as_small_as_a_reading_allows() {
    // Every event is as large as the largest inline payload, and readings are moved through
    // every stage; larger payloads are boxed (see `Payload`).
    let reading = std::mem::size_of::<crate::event::MetricRecorded>();
    let payload = std::mem::size_of::<Payload>();
    eprintln!(
        "Event {} B, Payload {payload} B, MetricRecorded {reading} B",
        std::mem::size_of::<crate::event::Event>()
    );
    assert!(payload <= reading + 8, "Payload is {payload} B against a reading's {reading} B");
    // The attributes a reading lacks are behind one pointer each (`Rare`): a reading's fields
    // inline, and two pointers.
    let event = std::mem::size_of::<crate::event::Event>();
    assert!(event <= payload + 128 + 16, "Event is {event} B against its Payload's {payload} B");
}
