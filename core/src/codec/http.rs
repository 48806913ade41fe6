//! CloudEvents HTTP binary mode, as a pure mapping between an event and (headers, body).
//!
//! Each context attribute travels in a `ce-<name>` header, percent-encoded as the HTTP
//! binding requires (space, `"`, `%` and everything outside printable ASCII);
//! `datacontenttype` travels as `Content-Type`; the body is the data. The gateway plugs this
//! into its HTTP server; nothing here does I/O.
//!
//! Binding limits: header values are text, so a user extension's boolean or integer comes
//! back as a string; an empty body means "no data".

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde_json::Value;

use super::attributes::{EventBuilder, body_content_type, decode_body, encode_body, text_attributes};
use crate::event::{Event, Violation};
use crate::{Error, Result};

/// Characters that must be percent-encoded in a `ce-*` header value: controls, space, `"`,
/// `%`, and (implicitly, by the encoder) every non-ASCII byte.
const HEADER_ESCAPES: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// An HTTP message in binary mode, independent of any HTTP library.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpMessage {
    /// Header (name, value) pairs; names are lowercase.
    pub headers: Vec<(String, String)>,
    /// The body: the event's data.
    pub body: Vec<u8>,
}

/// Maps an event to binary-mode headers and body.
pub fn encode(event: &Event) -> HttpMessage {
    let mut headers: Vec<(String, String)> = text_attributes(event)
        .into_iter()
        .map(|(name, value)| (format!("ce-{name}"), utf8_percent_encode(&value, HEADER_ESCAPES).to_string()))
        .collect();
    let body = encode_body(event);
    let content_type = body_content_type(event);
    if let Some(content_type) = content_type {
        headers.push(("content-type".to_owned(), content_type));
    }
    HttpMessage { headers, body }
}

/// Maps binary-mode headers and body back to a validated event. Header names are
/// case-insensitive; headers other than `ce-*` and `Content-Type` are ignored.
///
/// # Errors
/// [`Error::Malformed`] when a `ce-*` value is not valid percent-encoded UTF-8 text;
/// [`Error::Invalid`] listing every broken rule otherwise.
pub fn decode<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>, body: &[u8]) -> Result<Event> {
    let mut builder = EventBuilder::default();
    for (name, raw) in headers {
        let name = name.to_ascii_lowercase();
        if name == "content-type" {
            let text = std::str::from_utf8(raw)
                .map_err(|_| Error::malformed("HTTP binary event", "Content-Type is not UTF-8"))?;
            builder.attribute("datacontenttype", Value::String(text.trim().to_owned()));
        } else if let Some(attribute) = name.strip_prefix("ce-") {
            let text =
                std::str::from_utf8(raw).ok().and_then(|text| percent_decode_str(text).decode_utf8().ok()).ok_or_else(
                    || Error::malformed("HTTP binary event", format!("header {name} is not percent-encoded UTF-8")),
                )?;
            if attribute == "datacontenttype" {
                builder.violations.push(Violation::new(
                    "datacontenttype",
                    "travels as Content-Type in binary mode, not ce-datacontenttype",
                ));
                continue;
            }
            builder.attribute(attribute, Value::String(text.into_owned()));
        }
    }
    let data = decode_body(&mut builder, body);
    builder.finish(data)
}
