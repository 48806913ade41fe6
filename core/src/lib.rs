//! `citytwin-core`: the pure heart of citytwin.
//!
//! - [`event`]: the canonical CloudEvents 1.0 [`event::Event`], typed payloads for every event
//!   type the platform knows, validation that reports every problem at once.
//! - [`codec`]: the encodings of an event: CloudEvents JSON (structured, batch), HTTP and
//!   MQTT binary modes as pure mappings, MessagePack for storage, and the custom envelope.
//!
//! - [`log`]: the durable, segmented, checksummed event log with group commit, per-stream
//!   sequences and snapshots, filtered replay, retention and crash recovery.
//! - [`cep`]: complex event processing: tumbling, sliding and session windows, aggregates,
//!   grouping, sequences and negation over event time with watermarks, rules from TOML.
//! - [`prefetch`]: a cache hint for the hot loops that walk large tables.
//!
//! A key design decision: this crate knows nothing of actors, async runtimes, networks or
//! rendering. Time and randomness are inputs. That keeps every piece testable as plain
//! functions and lets the twin, the simulator and the server share it.
//!
//! It is not: a server or a runtime; `citytwin-twin` builds the live twin on top of it.

pub mod cep;
pub mod codec;
pub mod duration;
mod error;
pub mod event;
pub mod log;
pub mod prefetch;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use error::{Error, Result};
