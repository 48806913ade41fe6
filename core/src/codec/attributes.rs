//! Attribute handling shared by every text-based codec: decoding context attributes from
//! JSON values (structured mode) or strings (binary modes), and encoding them as strings.

use serde_json::Value;

use crate::event::{
    CITYTWIN_EXTENSIONS, Data, Event, EventType, ExtensionValue, Extensions, Payload, Provenance, Rare, RareAttributes,
    SPEC_VERSION, Timestamp, ValidationError, Violation, is_valid_extension_name, parse_cell,
};
use crate::{Error, Result};

/// Collects attributes one by one, recording every problem, then builds and validates the
/// event in [`EventBuilder::finish`].
#[derive(Debug, Default)]
pub(crate) struct EventBuilder {
    specversion: bool,
    id: Option<String>,
    source: Option<String>,
    ty: Option<String>,
    time: Option<Timestamp>,
    subject: Option<String>,
    datacontenttype: Option<String>,
    dataschema: Option<String>,
    ext: Extensions,
    pub(crate) violations: Vec<Violation>,
}

impl EventBuilder {
    /// The declared `datacontenttype`, once seen.
    pub(crate) fn datacontenttype(&self) -> Option<&str> {
        self.datacontenttype.as_deref()
    }

    /// The declared `type`, once seen.
    pub(crate) fn event_type(&self) -> Option<&str> {
        self.ty.as_deref()
    }

    /// Records `time` given as an instant (the binary modes' typed attribute): the same as the
    /// RFC 3339 text of it, without writing and parsing that text.
    pub(crate) fn time(&mut self, time: Timestamp) {
        self.time = Some(time);
    }

    fn string(&mut self, name: &str, value: Value) -> Option<String> {
        match value {
            Value::String(text) => Some(text),
            _ => {
                self.violations.push(Violation::new(name, "must be a string"));
                None
            }
        }
    }

    /// Records one attribute. A `null` value means the attribute is absent.
    pub(crate) fn attribute(&mut self, name: &str, value: Value) {
        if value.is_null() {
            return;
        }
        match name {
            "specversion" => {
                self.specversion = true;
                if value.as_str() != Some(SPEC_VERSION) {
                    self.violations.push(Violation::new("specversion", "must be \"1.0\""));
                }
            }
            "id" => self.id = self.string(name, value),
            "source" => self.source = self.string(name, value),
            "type" => self.ty = self.string(name, value),
            "subject" => self.subject = self.string(name, value),
            "datacontenttype" => self.datacontenttype = self.string(name, value),
            "dataschema" => self.dataschema = self.string(name, value),
            "time" => {
                if let Some(text) = self.string(name, value) {
                    match Timestamp::parse_rfc3339(&text) {
                        Ok(time) => self.time = Some(time),
                        Err(_) => self.violations.push(Violation::new("time", "is not RFC 3339")),
                    }
                }
            }
            "correlationid" => self.ext.rare.correlationid = self.string(name, value),
            "causationid" => self.ext.rare.causationid = self.string(name, value),
            "organization" => self.ext.organization = self.string(name, value).map(Into::into),
            "region" => self.ext.rare.region = self.string(name, value),
            "h3cell" => {
                if let Some(text) = self.string(name, value) {
                    match parse_cell(&text) {
                        Ok(cell) => self.ext.h3cell = Some(cell),
                        Err(_) => self.violations.push(Violation::new("h3cell", "is not an H3 cell index")),
                    }
                }
            }
            "sequence" => {
                let parsed = match &value {
                    Value::String(text) if !text.starts_with('+') => text.parse::<u64>().ok(),
                    Value::Number(number) => number.as_u64(),
                    _ => None,
                };
                match parsed {
                    Some(sequence) => self.ext.sequence = Some(sequence),
                    None => self.violations.push(Violation::new("sequence", "must be a decimal unsigned integer")),
                }
            }
            "provenance" => match value.as_str().and_then(Provenance::parse) {
                Some(provenance) => self.ext.provenance = Some(provenance),
                None => self.violations.push(Violation::new("provenance", "must be one of live, simulated, replayed")),
            },
            _ => {
                if !is_valid_extension_name(name) {
                    self.violations.push(Violation::new(
                        name,
                        "is not a valid extension attribute name (1 to 20 characters of a-z and 0-9)",
                    ));
                    return;
                }
                let ext_value = match value {
                    Value::String(text) => Some(ExtensionValue::String(text)),
                    Value::Bool(flag) => Some(ExtensionValue::Bool(flag)),
                    Value::Number(number) => {
                        number.as_i64().and_then(|i| i32::try_from(i).ok()).map(ExtensionValue::Integer)
                    }
                    _ => None,
                };
                match ext_value {
                    Some(ext_value) => {
                        self.ext.rare.other.insert(name.to_owned(), ext_value);
                    }
                    None => self.violations.push(Violation::new(
                        name,
                        "must be a string, a boolean or an integer within the 32-bit signed range",
                    )),
                }
            }
        }
    }

    /// Builds the event with `data`, validates it, and returns it or every problem found.
    pub(crate) fn finish(mut self, data: Option<Data>) -> Result<Event> {
        if !self.specversion {
            self.violations.push(Violation::new("specversion", "is required"));
        }
        for (name, value) in [("id", &self.id), ("source", &self.source), ("type", &self.ty)] {
            if value.is_none() {
                self.violations.push(Violation::new(name, "is required"));
            }
        }
        // NOTE: a missing required attribute is already reported above; a placeholder lets
        // the semantic checks still run, so the client hears about every other problem too.
        let event = Event {
            id: self.id.map_or_else(|| "-".into(), Into::into),
            source: self.source.map_or_else(|| "-".into(), Into::into),
            ty: EventType::new(self.ty.as_deref().unwrap_or("-")),
            time: self.time,
            rare: Rare::new(RareAttributes {
                subject: self.subject,
                datacontenttype: self.datacontenttype,
                dataschema: self.dataschema,
            }),
            ext: self.ext,
            data,
        };
        if let Err(semantic) = event.validate() {
            self.violations.extend_from_slice(semantic.violations());
        }
        if self.violations.is_empty() { Ok(event) } else { Err(Error::Invalid(ValidationError::new(self.violations))) }
    }
}

/// Turns JSON data into a typed payload when the type is known and the data fits its schema;
/// otherwise keeps the JSON as it is (validation then says why it does not fit).
pub(crate) fn data_from_json(ty: Option<&str>, value: Value) -> Data {
    if let Some(kind) = ty.and_then(crate::event::EventKind::from_type)
        && let Ok(payload) = Payload::deserialize_as(kind, &value)
    {
        return Data::Payload(payload);
    }
    Data::Json(value)
}

/// The context attributes of `event` as (name, text) pairs, in a stable order: the required
/// ones, the optional ones, then extensions. `datacontenttype` is not included: the binary
/// modes carry it in their own content-type field.
pub(crate) fn text_attributes(event: &Event) -> Vec<(&str, String)> {
    let mut out: Vec<(&str, String)> = vec![
        ("specversion", SPEC_VERSION.to_owned()),
        ("id", event.id.to_string()),
        ("source", event.source.to_string()),
        ("type", event.ty.as_str().to_owned()),
    ];
    if let Some(time) = event.time {
        out.push(("time", time.to_rfc3339()));
    }
    let optional = [("subject", &event.rare.subject), ("dataschema", &event.rare.dataschema)];
    out.extend(optional.into_iter().filter_map(|(name, value)| value.clone().map(|v| (name, v))));
    extension_texts(&event.ext, &mut out);
    out
}

/// Extension attributes as (name, text) pairs.
pub(crate) fn extension_texts<'a>(ext: &'a Extensions, out: &mut Vec<(&'a str, String)>) {
    let texts = [
        ("correlationid", ext.rare.correlationid.as_deref()),
        ("causationid", ext.rare.causationid.as_deref()),
        ("organization", ext.organization.as_deref()),
        ("region", ext.rare.region.as_deref()),
    ];
    out.extend(texts.into_iter().filter_map(|(name, value)| value.map(|v| (name, v.to_owned()))));
    if let Some(cell) = ext.h3cell {
        out.push(("h3cell", cell.to_string()));
    }
    if let Some(sequence) = ext.sequence {
        out.push(("sequence", sequence.to_string()));
    }
    if let Some(provenance) = ext.provenance {
        out.push(("provenance", provenance.as_str().to_owned()));
    }
    debug_assert!(ext.rare.other.keys().all(|name| !CITYTWIN_EXTENSIONS.contains(&name.as_str())));
    out.extend(ext.rare.other.iter().map(|(name, value)| (name.as_str(), value.to_text())));
}

/// The body of a binary-mode message (HTTP, MQTT 5): the data alone, in its content type.
///
/// JSON content types (or none) carry JSON; a string under a textual content type is
/// written as its raw text; bytes are written as they are. No data means an empty body.
pub(crate) fn encode_body(event: &Event) -> Vec<u8> {
    let json = crate::event::is_json_content_type_pub(event.rare.datacontenttype.as_deref());
    match &event.data {
        None => Vec::new(),
        Some(Data::Binary(bytes)) => bytes.clone(),
        Some(Data::Json(Value::String(text))) if !json => text.clone().into_bytes(),
        Some(Data::Json(value)) => serde_json::to_vec(value).expect("serialising JSON data cannot fail"),
        Some(Data::Payload(payload)) => serde_json::to_vec(payload).expect("serialising a payload cannot fail"),
    }
}

/// The data of a binary-mode message from its body and content type (see [`encode_body`]).
///
/// An empty body means no data. A JSON (or absent) content type must hold valid JSON; a
/// textual one (`text/*`, XML) valid UTF-8 becomes a string; anything else stays bytes.
pub(crate) fn decode_body(builder: &mut EventBuilder, body: &[u8]) -> Option<Data> {
    if body.is_empty() {
        return None;
    }
    let content_type = builder.datacontenttype();
    if crate::event::is_json_content_type_pub(content_type) {
        // The usual case first: a known type whose data is its payload, read straight from the
        // bytes. Anything else (other JSON, a payload that does not fit) takes the general
        // path below, which gives the same result the slow way.
        if let Some(kind) = builder.event_type().and_then(crate::event::EventKind::from_type) {
            let mut json = serde_json::Deserializer::from_slice(body);
            if let Ok(payload) = Payload::deserialize_as(kind, &mut json)
                && json.end().is_ok()
            {
                return Some(Data::Payload(payload));
            }
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(value) => Some(data_from_json(builder.event_type(), value)),
            Err(error) => {
                builder.violations.push(Violation::new("data", format!("is not valid JSON: {error}")));
                None
            }
        }
    } else if content_type.is_some_and(crate::event::is_text_content_type_pub) {
        match std::str::from_utf8(body) {
            Ok(text) => Some(Data::Json(Value::String(text.to_owned()))),
            Err(_) => Some(Data::Binary(body.to_vec())),
        }
    } else {
        Some(Data::Binary(body.to_vec()))
    }
}

/// The content type a binary-mode message declares: `datacontenttype`, or
/// `application/octet-stream` for bytes that declare none.
pub(crate) fn body_content_type(event: &Event) -> Option<String> {
    match (&event.rare.datacontenttype, &event.data) {
        (Some(content_type), _) => Some(content_type.clone()),
        (None, Some(Data::Binary(_))) => Some("application/octet-stream".to_owned()),
        (None, _) => None,
    }
}
