//! The seed's custom envelope, converted to and from the canonical event without losing a
//! field.
//!
//! ```json
//! { "event_id": "evt_123456", "event_type": "alert.triggered", "timestamp": "2025-01-15T10:30:00Z",
//!   "source_asset": "sensor_001", "correlation_id": "corr_abc123", "causation_id": "cause_def456",
//!   "payload": { ... }, "metadata": { "organization_id": "org_xyz", "region": "us-east" } }
//! ```
//!
//! Mapping: `event_id` ↔ `id`; `event_type` ↔ `type` (short names of known kinds such as
//! `alert.triggered` ↔ `com.smartcities.alert.triggered`; other strings as they are);
//! `timestamp` ↔ `time`; `source_asset` ↔ `subject`; `correlation_id` ↔ `correlationid`;
//! `causation_id` ↔ `causationid`; `payload` ↔ `data`; `metadata.organization_id` ↔
//! `organization`; `metadata.region` ↔ `region`. Every other attribute travels in
//! `metadata` under its own name: `source` (omitted when it is the default
//! `/assets/<source_asset>`), `datacontenttype`, `dataschema`, `data_base64` for binary data
//! and every other extension.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::attributes::{EventBuilder, data_from_json, extension_texts};
use crate::event::{Data, Event, EventKind, ExtensionValue, SPEC_VERSION, Violation};
use crate::{Error, Result};

/// The custom envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The event's id.
    pub event_id: String,
    /// Short name of a known kind (`metric.recorded`) or any type string.
    pub event_type: String,
    /// RFC 3339 time of the occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// The asset the event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_asset: Option<String>,
    /// Correlation id of the event chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Id of the causing event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// The data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// Tenant, region, and every attribute without a field of its own.
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    pub metadata: Metadata,
}

/// The envelope's `metadata`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Metadata {
    /// The owning organization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
    /// The deployment region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Every other attribute, by its CloudEvents name.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl Metadata {
    fn is_empty(&self) -> bool {
        self.organization_id.is_none() && self.region.is_none() && self.other.is_empty()
    }
}

fn default_source(source_asset: Option<&str>) -> Option<String> {
    source_asset.map(|asset| format!("/assets/{asset}"))
}

impl Envelope {
    /// Parses an envelope from JSON bytes (structure only; see [`Envelope::into_event`]).
    ///
    /// # Errors
    /// [`Error::Malformed`] when the bytes are not an envelope.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::malformed("custom envelope", e))
    }

    /// Parses an envelope from a JSON value (structure only; see [`Envelope::into_event`]).
    ///
    /// # Errors
    /// [`Error::Malformed`] when the value is not an envelope.
    pub fn from_value(value: Value) -> Result<Self> {
        serde_json::from_value(value).map_err(|e| Error::malformed("custom envelope", e))
    }

    /// The envelope as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("serialising an envelope cannot fail")
    }

    /// The canonical event, validated.
    ///
    /// # Errors
    /// [`Error::Invalid`] listing every broken rule (attribute names are the CloudEvents ones).
    pub fn into_event(self) -> Result<Event> {
        let mut builder = EventBuilder::default();
        builder.attribute("specversion", Value::String(SPEC_VERSION.to_owned()));
        builder.attribute("id", Value::String(self.event_id));
        let ty =
            EventKind::from_short_name(&self.event_type).map_or(self.event_type, |kind| kind.type_str().to_owned());
        builder.attribute("type", Value::String(ty));
        let mut other = self.metadata.other;
        let source = other.remove("source").or_else(|| default_source(self.source_asset.as_deref()).map(Value::String));
        builder.attribute("source", source.unwrap_or(Value::Null));
        builder.attribute("time", self.timestamp.map_or(Value::Null, Value::String));
        builder.attribute("subject", self.source_asset.map_or(Value::Null, Value::String));
        builder.attribute("correlationid", self.correlation_id.map_or(Value::Null, Value::String));
        builder.attribute("causationid", self.causation_id.map_or(Value::Null, Value::String));
        builder.attribute("organization", self.metadata.organization_id.map_or(Value::Null, Value::String));
        builder.attribute("region", self.metadata.region.map_or(Value::Null, Value::String));
        let data_base64 = other.remove("data_base64");
        for (name, value) in other {
            builder.attribute(&name, value);
        }
        let data = match (self.payload, data_base64) {
            (Some(_), Some(_)) => {
                builder.violations.push(Violation::new("data", "and data_base64 are both present"));
                None
            }
            (Some(payload), None) => Some(data_from_json(builder.event_type(), payload)),
            (None, Some(encoded)) => match encoded.as_str().map(|text| BASE64.decode(text)) {
                Some(Ok(bytes)) => Some(Data::Binary(bytes)),
                _ => {
                    builder.violations.push(Violation::new("data_base64", "is not base64 (RFC 4648)"));
                    None
                }
            },
            (None, None) => None,
        };
        builder.finish(data)
    }

    /// The envelope of `event`; [`Envelope::into_event`] gives the same event back.
    pub fn from_event(event: &Event) -> Self {
        let mut other = BTreeMap::new();
        if default_source(event.rare.subject.as_deref()).as_deref() != Some(event.source.as_str()) {
            other.insert("source".to_owned(), Value::String(event.source.to_string()));
        }
        for (name, value) in [("datacontenttype", &event.rare.datacontenttype), ("dataschema", &event.rare.dataschema)]
        {
            if let Some(value) = value {
                other.insert(name.to_owned(), Value::String(value.clone()));
            }
        }
        let mut texts = Vec::new();
        extension_texts(&event.ext, &mut texts);
        for (name, text) in texts {
            let value = match event.ext.rare.other.get(name) {
                Some(ExtensionValue::Bool(flag)) => Value::Bool(*flag),
                Some(ExtensionValue::Integer(int)) => Value::from(*int),
                _ => Value::String(text),
            };
            if !matches!(name, "correlationid" | "causationid" | "organization" | "region") {
                other.insert(name.to_owned(), value);
            }
        }
        let payload = match &event.data {
            None => None,
            Some(Data::Payload(payload)) => Some(serde_json::to_value(payload).expect("payloads serialise to JSON")),
            Some(Data::Json(value)) => Some(value.clone()),
            Some(Data::Binary(bytes)) => {
                other.insert("data_base64".to_owned(), Value::String(BASE64.encode(bytes)));
                None
            }
        };
        Envelope {
            event_id: event.id.to_string(),
            event_type: event.kind().map_or_else(|| event.ty.as_str().to_owned(), |kind| kind.short_name().to_owned()),
            timestamp: event.time.map(|time| time.to_rfc3339()),
            source_asset: event.rare.subject.clone(),
            correlation_id: event.ext.rare.correlationid.clone(),
            causation_id: event.ext.rare.causationid.clone(),
            payload,
            metadata: Metadata {
                organization_id: event.ext.organization.as_deref().map(str::to_owned),
                region: event.ext.rare.region.clone(),
                other,
            },
        }
    }
}
