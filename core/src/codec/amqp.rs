//! CloudEvents over AMQP, as pure mappings (the CloudEvents AMQP protocol binding, applied to
//! AMQP 0-9-1 messages as RabbitMQ carries them).
//!
//! - Binary mode: each context attribute is a message header (0-9-1's application
//!   properties) named `cloudEvents:<attribute>`; `cloudEvents_<attribute>` (the binding's
//!   alternative for brokers and clients that refuse `:` in names) is read too. Headers keep
//!   their AMQP type: `time` may be an AMQP timestamp, user extensions booleans or integers.
//!   `datacontenttype` is the message's `content-type` property; the body is the data.
//! - Structured mode: `content-type: application/cloudevents+json` and the event as
//!   CloudEvents JSON in the body (see [`crate::codec::json`]).
//!
//! Nothing here does I/O: a gateway maps its client library's header table to and from
//! [`AmqpMessage`].

use super::binary::{self, AttributeValue};
use crate::Result;
use crate::event::Event;

/// The binding's header prefix.
pub const PREFIX: &str = "cloudEvents:";
/// The binding's alternative prefix (JMS-style names).
pub const ALT_PREFIX: &str = "cloudEvents_";
/// The structured-mode content type.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// An AMQP message in binary mode, independent of any AMQP library.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AmqpMessage {
    /// The `content-type` property.
    pub content_type: Option<String>,
    /// Headers (application properties), (name, typed value) in order.
    pub headers: Vec<(String, AttributeValue)>,
    /// The body: the event's data.
    pub body: Vec<u8>,
}

/// The attribute a header carries, when it is a CloudEvents header.
pub fn attribute_name(header: &str) -> Option<&str> {
    header.strip_prefix(PREFIX).or_else(|| header.strip_prefix(ALT_PREFIX))
}

/// Whether a message is in structured mode: its content type says so, or it carries no
/// CloudEvents header at all.
pub fn is_structured(content_type: Option<&str>, header_names: impl IntoIterator<Item = impl AsRef<str>>) -> bool {
    content_type.is_some_and(|c| c.starts_with(STRUCTURED_CONTENT_TYPE))
        || !header_names.into_iter().any(|name| attribute_name(name.as_ref()).is_some())
}

/// Maps an event to a binary-mode message (typed headers with the `cloudEvents:` prefix).
pub fn encode(event: &Event) -> AmqpMessage {
    let binary = binary::encode(event);
    let headers = binary.attributes.into_iter().map(|(name, value)| (format!("{PREFIX}{name}"), value)).collect();
    AmqpMessage { content_type: binary.content_type, headers, body: binary.body }
}

/// Maps a binary-mode message back to a validated event. Headers without a CloudEvents
/// prefix are the application's own and are ignored.
///
/// # Errors
/// [`crate::Error::Invalid`] listing every broken rule.
pub fn decode(message: &AmqpMessage) -> Result<Event> {
    let attributes = message.headers.iter().filter_map(|(name, value)| Some((attribute_name(name)?, value.clone())));
    binary::decode(attributes, message.content_type.as_deref(), &message.body)
}

/// Decodes either mode, as [`is_structured`] tells.
///
/// # Errors
/// As [`decode`] or [`crate::codec::json::decode`].
pub fn decode_any(message: &AmqpMessage) -> Result<Event> {
    if is_structured(message.content_type.as_deref(), message.headers.iter().map(|(name, _)| name)) {
        super::json::decode(&message.body)
    } else {
        decode(message)
    }
}
