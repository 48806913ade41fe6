//! Encodings of an [`Event`](crate::event::Event).
//!
//! - [`json`]: CloudEvents JSON structured mode, single and batch.
//! - [`http`]: HTTP binary mode (`ce-*` headers, body = data), as a pure header mapping.
//! - [`binary`]: typed attributes plus a body (the protobuf format's shape).
//! - [`mqtt`]: MQTT 5 binary mode (user properties) and MQTT 3.1.1 structured mode.
//! - [`amqp`]: AMQP binary mode (`cloudEvents:` headers, typed) and structured mode.
//! - [`msgpack`]: compact, versioned MessagePack for the event log.
//! - [`envelope`]: the seed's custom envelope (`event_id`, `event_type`, `payload`, ...).
//!
//! Every decoder but MessagePack validates what it decodes and reports all problems at
//! once; MessagePack reads only what citytwin itself validated and stored.

pub mod amqp;
pub(crate) mod attributes;
pub mod binary;
pub mod envelope;
pub mod http;
pub mod json;
pub mod mqtt;
pub mod msgpack;

#[cfg(test)]
mod tests;
