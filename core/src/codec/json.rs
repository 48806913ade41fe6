//! CloudEvents JSON structured mode: one event (`application/cloudevents+json`) or a batch
//! (`application/cloudevents-batch+json`, a JSON array of events).
//!
//! Binary data travels as `data_base64`; an event with both `data` and `data_base64` is
//! rejected. Extension attributes keep their JSON types (string, boolean, integer);
//! `sequence` is written as a decimal string, as the CloudEvents sequence extension defines.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use super::attributes::{EventBuilder, data_from_json};
use crate::event::{Data, Event, ExtensionValue, SPEC_VERSION, Violation};
use crate::{Error, Result};

/// Media type of one structured-mode event.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";
/// Media type of a batch.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

const FORMAT: &str = "CloudEvents JSON";

/// Serialises an event in structured mode (members in spec order, extensions after).
#[derive(Debug, Clone, Copy)]
pub struct Structured<'a>(pub &'a Event);

impl Serialize for Structured<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let event = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("specversion", SPEC_VERSION)?;
        map.serialize_entry("id", &event.id)?;
        map.serialize_entry("source", &event.source)?;
        map.serialize_entry("type", event.ty.as_str())?;
        if let Some(time) = &event.time {
            map.serialize_entry("time", time)?;
        }
        if let Some(subject) = &event.rare.subject {
            map.serialize_entry("subject", subject)?;
        }
        if let Some(content_type) = &event.rare.datacontenttype {
            map.serialize_entry("datacontenttype", content_type)?;
        }
        if let Some(schema) = &event.rare.dataschema {
            map.serialize_entry("dataschema", schema)?;
        }
        let ext = &event.ext;
        let texts = [
            ("correlationid", ext.rare.correlationid.as_deref()),
            ("causationid", ext.rare.causationid.as_deref()),
            ("organization", ext.organization.as_deref()),
            ("region", ext.rare.region.as_deref()),
        ];
        for (name, value) in texts {
            if let Some(value) = value {
                map.serialize_entry(name, value)?;
            }
        }
        if let Some(cell) = ext.h3cell {
            map.serialize_entry("h3cell", &cell.to_string())?;
        }
        if let Some(sequence) = ext.sequence {
            map.serialize_entry("sequence", &sequence.to_string())?;
        }
        if let Some(provenance) = ext.provenance {
            map.serialize_entry("provenance", provenance.as_str())?;
        }
        for (name, value) in &ext.rare.other {
            match value {
                ExtensionValue::Bool(flag) => map.serialize_entry(name, flag)?,
                ExtensionValue::Integer(int) => map.serialize_entry(name, int)?,
                ExtensionValue::String(text) => map.serialize_entry(name, text)?,
            }
        }
        match &event.data {
            None => {}
            Some(Data::Payload(payload)) => map.serialize_entry("data", payload)?,
            Some(Data::Json(value)) => map.serialize_entry("data", value)?,
            Some(Data::Binary(bytes)) => map.serialize_entry("data_base64", &BASE64.encode(bytes))?,
        }
        map.end()
    }
}

/// Encodes one event as structured-mode JSON bytes.
pub fn encode(event: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    encode_into(event, &mut out);
    out
}

/// Appends one event as structured-mode JSON to `out`.
pub fn encode_into(event: &Event, out: &mut Vec<u8>) {
    // NOTE: writing to a Vec cannot fail, and every value is serialisable JSON (the payloads
    // hold no non-string map keys); non-finite floats become `null`, which validation rejects
    // on the way in.
    serde_json::to_writer(out, &Structured(event)).expect("serialising an event to JSON cannot fail");
}

/// Encodes one event as a `serde_json::Value` object.
pub fn to_value(event: &Event) -> Value {
    serde_json::to_value(Structured(event)).expect("serialising an event to JSON cannot fail")
}

/// Encodes a batch as a JSON array.
pub fn encode_batch(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 * events.len() + 2);
    out.push(b'[');
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        encode_into(event, &mut out);
    }
    out.push(b']');
    out
}

/// Decodes and validates one structured-mode event.
///
/// # Errors
/// [`Error::Malformed`] when the bytes are not a JSON object; [`Error::Invalid`] listing
/// every broken rule otherwise.
pub fn decode(bytes: &[u8]) -> Result<Event> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| Error::malformed(FORMAT, e))?;
    from_value(value)
}

/// Decodes and validates one structured-mode event from a parsed JSON value.
///
/// # Errors
/// As [`decode`].
pub fn from_value(value: Value) -> Result<Event> {
    let Value::Object(members) = value else {
        return Err(Error::malformed(FORMAT, "a CloudEvent must be a JSON object"));
    };
    let mut builder = EventBuilder::default();
    let mut data = None;
    let mut data_base64 = None;
    for (name, value) in members {
        match name.as_str() {
            "data" => data = Some(value),
            "data_base64" => data_base64 = Some(value),
            _ => builder.attribute(&name, value),
        }
    }
    let data = match (data, data_base64) {
        (Some(_), Some(_)) => {
            builder.violations.push(Violation::new("data", "and data_base64 are both present"));
            None
        }
        (Some(Value::Null), None) | (None, None) | (None, Some(Value::Null)) => None,
        (Some(value), None) => Some(data_from_json(builder.event_type(), value)),
        (None, Some(Value::String(text))) => match BASE64.decode(text.as_bytes()) {
            Ok(bytes) => Some(Data::Binary(bytes)),
            Err(_) => {
                builder.violations.push(Violation::new("data_base64", "is not base64 (RFC 4648)"));
                None
            }
        },
        (None, Some(_)) => {
            builder.violations.push(Violation::new("data_base64", "must be a base64 string"));
            None
        }
    };
    builder.finish(data)
}

/// Decodes a batch: the outer error is for a body that is not a JSON array; each element is
/// decoded and validated on its own, so one bad event does not reject its neighbours.
///
/// # Errors
/// [`Error::Malformed`] when the bytes are not a JSON array.
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<Result<Event>>> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| Error::malformed(FORMAT, e))?;
    let Value::Array(items) = value else {
        return Err(Error::malformed(FORMAT, "a batch must be a JSON array of CloudEvents"));
    };
    Ok(items.into_iter().map(from_value).collect())
}
