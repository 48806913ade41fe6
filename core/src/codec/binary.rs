//! CloudEvents with typed attributes and the data as a separate body: the shape of the
//! protobuf event format (and of any binding whose attributes are not plain text), as a
//! pure mapping independent of any protobuf library.
//!
//! Unlike the HTTP and MQTT binary modes, user extensions keep their type (boolean,
//! integer) and `time` travels as a timestamp; `datacontenttype` travels beside the body.

use serde_json::Value;

use super::attributes::{EventBuilder, body_content_type, decode_body, encode_body, text_attributes};
use crate::Result;
use crate::event::{Event, ExtensionValue, Timestamp, Violation};

/// One typed attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    /// Text (strings, URIs, references, decimal sequences).
    Text(String),
    /// A boolean (user extensions).
    Bool(bool),
    /// A 32-bit integer (user extensions).
    Integer(i32),
    /// An instant (`time`).
    Time(Timestamp),
}

/// An event as typed attributes plus a body.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BinaryEvent {
    /// Every context attribute but `datacontenttype`, `specversion` included, in a stable order.
    pub attributes: Vec<(String, AttributeValue)>,
    /// `datacontenttype` (`application/octet-stream` for bytes that declare none).
    pub content_type: Option<String>,
    /// The data in its content type; empty means no data.
    pub body: Vec<u8>,
}

impl BinaryEvent {
    /// Whether the body is text (JSON, `text/*`, XML) rather than bytes, as its content type
    /// says (no content type means JSON).
    pub fn body_is_text(&self) -> bool {
        let content_type = self.content_type.as_deref();
        crate::event::is_json_content_type_pub(content_type)
            || content_type.is_some_and(crate::event::is_text_content_type_pub)
    }
}

/// Maps an event to typed attributes and a body.
pub fn encode(event: &Event) -> BinaryEvent {
    let attributes = text_attributes(event)
        .into_iter()
        .map(|(name, text)| {
            let value = match (name, event.ext.rare.other.get(name)) {
                ("time", _) => event.time.map_or(AttributeValue::Text(text), AttributeValue::Time),
                (_, Some(ExtensionValue::Bool(flag))) => AttributeValue::Bool(*flag),
                (_, Some(ExtensionValue::Integer(number))) => AttributeValue::Integer(*number),
                _ => AttributeValue::Text(text),
            };
            (name.to_owned(), value)
        })
        .collect();
    BinaryEvent { attributes, content_type: body_content_type(event), body: encode_body(event) }
}

/// Maps typed attributes and a body back to a validated event.
///
/// # Errors
/// [`crate::Error::Invalid`] listing every broken rule.
pub fn decode<'a>(
    attributes: impl IntoIterator<Item = (&'a str, AttributeValue)>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Event> {
    let mut builder = EventBuilder::default();
    if let Some(content_type) = content_type {
        builder.attribute("datacontenttype", Value::String(content_type.to_owned()));
    }
    for (name, value) in attributes {
        if name == "datacontenttype" {
            builder.violations.push(Violation::new("datacontenttype", "travels beside the data, not as an attribute"));
            continue;
        }
        let value = match value {
            AttributeValue::Text(text) => Value::String(text),
            AttributeValue::Bool(flag) => Value::Bool(flag),
            AttributeValue::Integer(number) => Value::from(number),
            AttributeValue::Time(time) if name == "time" => {
                builder.time(time);
                continue;
            }
            AttributeValue::Time(time) => Value::String(time.to_rfc3339()),
        };
        builder.attribute(name, value);
    }
    let data = decode_body(&mut builder, body);
    builder.finish(data)
}
