//! MessagePack storage encoding of an event: compact, positional and versioned.
//!
//! Layout: one format-version byte ([`FORMAT_VERSION`]) followed by a MessagePack array of
//! the attributes in a fixed order (see `Stored` below). Known types are stored as their
//! one-byte storage index instead of the type string; typed payloads as
//! `[1, kind index, schema version, payload fields...]`, untyped JSON as `[2, value]`, bytes
//! as `[3, bin]`. The version byte and per-kind schema versions let a later build upcast old
//! logs.
//!
//! A key design decision: decoding does not validate. Only events that citytwin validated
//! are stored, and the log checksums every frame; decoding is on the replay hot path.

use std::collections::BTreeMap;
use std::fmt;

use h3o::CellIndex;
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::event::{
    Data, EcoString, Event, EventKind, EventType, ExtensionValue, Extensions, Payload, Provenance, Rare,
    RareAttributes, RareExtensions, Timestamp,
};
use crate::{Error, Result};

/// The storage format this build writes and the newest it reads.
pub const FORMAT_VERSION: u8 = 1;

const FORMAT: &str = "MessagePack event";

/// Encodes an event for storage.
pub fn encode(event: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    encode_into(event, &mut out);
    out
}

/// Appends an event's storage encoding to `out` (the log writes frames this way).
pub fn encode_into(event: &Event, out: &mut Vec<u8>) {
    out.push(FORMAT_VERSION);
    let ext = &event.ext;
    let stored = StoredRef(
        &event.id,
        &event.source,
        TypeRef(&event.ty),
        event.time.map(Timestamp::as_nanos),
        event.rare.subject.as_deref(),
        event.rare.datacontenttype.as_deref(),
        event.rare.dataschema.as_deref(),
        ext.rare.correlationid.as_deref(),
        ext.rare.causationid.as_deref(),
        ext.organization.as_deref(),
        ext.rare.region.as_deref(),
        ext.h3cell.map(u64::from),
        ext.sequence,
        ext.provenance.map(Provenance::code),
        &ext.rare.other,
        event.data.as_ref().map(DataRef),
    );
    // NOTE: writing to a Vec cannot fail and every field is MessagePack-representable.
    stored.serialize(&mut rmp_serde::Serializer::new(out)).expect("encoding an event as MessagePack cannot fail");
}

/// Decodes a stored event.
///
/// # Errors
/// [`Error::UnsupportedFormat`] for an unknown version byte, [`Error::Malformed`] for bytes
/// that are not a stored event.
pub fn decode(bytes: &[u8]) -> Result<Event> {
    let (&version, rest) = bytes.split_first().ok_or_else(|| Error::malformed(FORMAT, "empty input"))?;
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedFormat { found: version, supported: FORMAT_VERSION });
    }
    let StoredOwned(
        id,
        source,
        TypeOwned(ty),
        time,
        subject,
        datacontenttype,
        dataschema,
        correlationid,
        causationid,
        organization,
        region,
        h3cell,
        sequence,
        provenance,
        other,
        data,
    ) = rmp_serde::from_slice(rest).map_err(|e| Error::malformed(FORMAT, e))?;
    let h3cell = h3cell
        .map(|raw| {
            CellIndex::try_from(raw).map_err(|_| Error::malformed(FORMAT, format!("{raw:#x} is not an H3 cell")))
        })
        .transpose()?;
    let provenance = provenance
        .map(|code| {
            Provenance::from_code(code).ok_or_else(|| Error::malformed(FORMAT, format!("unknown provenance {code}")))
        })
        .transpose()?;
    Ok(Event {
        id,
        source,
        ty,
        time: time.map(Timestamp::from_nanos),
        rare: Rare::new(RareAttributes { subject, datacontenttype, dataschema }),
        ext: Extensions {
            organization,
            h3cell,
            sequence,
            provenance,
            rare: Rare::new(RareExtensions { correlationid, causationid, region, other }),
        },
        data: data.map(|DataOwned(data)| data),
    })
}

/// The stored attribute order. Never reorder; append new fields at the end and bump
/// [`FORMAT_VERSION`].
#[derive(Serialize)]
struct StoredRef<'a>(
    &'a str,
    &'a str,
    TypeRef<'a>,
    Option<i64>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<u64>,
    Option<u64>,
    Option<u8>,
    &'a BTreeMap<String, ExtensionValue>,
    Option<DataRef<'a>>,
);

#[derive(Deserialize)]
struct StoredOwned(
    EcoString,
    EcoString,
    TypeOwned,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<EcoString>,
    Option<String>,
    Option<u64>,
    Option<u64>,
    Option<u8>,
    BTreeMap<String, ExtensionValue>,
    Option<DataOwned>,
);

/// A known type as its storage index, any other as its string.
struct TypeRef<'a>(&'a EventType);

impl Serialize for TypeRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.kind() {
            Some(kind) => serializer.serialize_u8(kind.storage_index()),
            None => serializer.serialize_str(self.0.as_str()),
        }
    }
}

struct TypeOwned(EventType);

impl<'de> Deserialize<'de> for TypeOwned {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TypeVisitor;
        impl Visitor<'_> for TypeVisitor {
            type Value = TypeOwned;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event kind index or a type string")
            }
            fn visit_u64<E: de::Error>(self, index: u64) -> Result<TypeOwned, E> {
                u8::try_from(index)
                    .ok()
                    .and_then(EventKind::from_storage_index)
                    .map(|kind| TypeOwned(kind.into()))
                    .ok_or_else(|| E::custom(format!("unknown event kind index {index}")))
            }
            fn visit_str<E: de::Error>(self, ty: &str) -> Result<TypeOwned, E> {
                Ok(TypeOwned(EventType::new(ty)))
            }
        }
        deserializer.deserialize_any(TypeVisitor)
    }
}

const TAG_PAYLOAD: u8 = 1;
const TAG_JSON: u8 = 2;
const TAG_BINARY: u8 = 3;

struct DataRef<'a>(&'a Data);

struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

impl Serialize for DataRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Data::Payload(payload) => {
                let kind = payload.kind();
                let mut tuple = serializer.serialize_tuple(4)?;
                tuple.serialize_element(&TAG_PAYLOAD)?;
                tuple.serialize_element(&kind.storage_index())?;
                tuple.serialize_element(&kind.schema_version())?;
                tuple.serialize_element(payload)?;
                tuple.end()
            }
            Data::Json(value) => {
                let mut tuple = serializer.serialize_tuple(2)?;
                tuple.serialize_element(&TAG_JSON)?;
                tuple.serialize_element(value)?;
                tuple.end()
            }
            Data::Binary(bytes) => {
                let mut tuple = serializer.serialize_tuple(2)?;
                tuple.serialize_element(&TAG_BINARY)?;
                tuple.serialize_element(&Bytes(bytes))?;
                tuple.end()
            }
        }
    }
}

struct DataOwned(Data);

struct PayloadSeed(EventKind);

impl<'de> DeserializeSeed<'de> for PayloadSeed {
    type Value = Payload;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Payload, D::Error> {
        Payload::deserialize_as(self.0, deserializer)
    }
}

struct ByteBuf(Vec<u8>);

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl Visitor<'_> for BytesVisitor {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(bytes.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(bytes))
            }
        }
        deserializer.deserialize_byte_buf(BytesVisitor)
    }
}

impl<'de> Deserialize<'de> for DataOwned {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DataVisitor;
        impl<'de> Visitor<'de> for DataVisitor {
            type Value = DataOwned;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("stored event data")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<DataOwned, A::Error> {
                let missing = || de::Error::custom("truncated event data");
                let tag: u8 = seq.next_element()?.ok_or_else(missing)?;
                let data = match tag {
                    TAG_PAYLOAD => {
                        let index: u8 = seq.next_element()?.ok_or_else(missing)?;
                        let version: u8 = seq.next_element()?.ok_or_else(missing)?;
                        let kind = EventKind::from_storage_index(index)
                            .ok_or_else(|| de::Error::custom(format!("unknown event kind index {index}")))?;
                        if version != kind.schema_version() {
                            // NOTE: the place for upcasters once a payload changes shape.
                            return Err(de::Error::custom(format!(
                                "{kind} payload schema v{version} has no upcaster to v{}",
                                kind.schema_version()
                            )));
                        }
                        Data::Payload(seq.next_element_seed(PayloadSeed(kind))?.ok_or_else(missing)?)
                    }
                    TAG_JSON => Data::Json(seq.next_element()?.ok_or_else(missing)?),
                    TAG_BINARY => Data::Binary(seq.next_element::<ByteBuf>()?.ok_or_else(missing)?.0),
                    other => return Err(de::Error::custom(format!("unknown data tag {other}"))),
                };
                Ok(DataOwned(data))
            }
        }
        deserializer.deserialize_seq(DataVisitor)
    }
}
