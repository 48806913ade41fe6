//! CloudEvents over MQTT, as pure mappings.
//!
//! - MQTT 5 binary mode: each context attribute is a PUBLISH user property named exactly as
//!   the attribute; `datacontenttype` is the MQTT Content Type property; the payload is the
//!   data.
//! - MQTT 3.1.1 structured mode (3.1.1 has no properties): the payload is the event as
//!   CloudEvents JSON (see [`crate::codec::json`]).
//!
//! Binding limits as for HTTP: user-extension booleans and integers come back as strings in
//! binary mode; an empty payload means "no data".

use serde_json::Value;

use super::attributes::{EventBuilder, body_content_type, decode_body, encode_body, text_attributes};
use crate::Result;
use crate::event::{Event, Violation};

/// An MQTT 5 PUBLISH in binary mode, independent of any MQTT library.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mqtt5Message {
    /// The Content Type property.
    pub content_type: Option<String>,
    /// User properties, (name, value) in order.
    pub user_properties: Vec<(String, String)>,
    /// The payload: the event's data.
    pub payload: Vec<u8>,
}

/// Maps an event to an MQTT 5 binary-mode message.
pub fn encode_v5(event: &Event) -> Mqtt5Message {
    let user_properties = text_attributes(event).into_iter().map(|(name, value)| (name.to_owned(), value)).collect();
    let content_type = body_content_type(event);
    Mqtt5Message { content_type, user_properties, payload: encode_body(event) }
}

/// Maps an MQTT 5 binary-mode message back to a validated event. User properties that are
/// not CloudEvents attributes are still read as extensions (so must be valid names).
///
/// # Errors
/// [`crate::Error::Invalid`] listing every broken rule.
pub fn decode_v5(message: &Mqtt5Message) -> Result<Event> {
    let mut builder = EventBuilder::default();
    if let Some(content_type) = &message.content_type {
        builder.attribute("datacontenttype", Value::String(content_type.clone()));
    }
    for (name, value) in &message.user_properties {
        if name == "datacontenttype" {
            builder.violations.push(Violation::new(
                "datacontenttype",
                "travels as the Content Type property in MQTT 5, not a user property",
            ));
            continue;
        }
        builder.attribute(name, Value::String(value.clone()));
    }
    let data = decode_body(&mut builder, &message.payload);
    builder.finish(data)
}

/// Encodes an MQTT 3.1.1 structured-mode payload (CloudEvents JSON).
pub fn encode_v3(event: &Event) -> Vec<u8> {
    super::json::encode(event)
}

/// Decodes an MQTT 3.1.1 structured-mode payload.
///
/// # Errors
/// As [`crate::codec::json::decode`].
pub fn decode_v3(payload: &[u8]) -> Result<Event> {
    super::json::decode(payload)
}
