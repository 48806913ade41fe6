//! The scenario simulator (`citytwin-simulator`).
//!
//! A scenario file (city area, asset populations, metric distributions with diurnal and
//! weekly profiles, fault and incident processes, what-if interventions; see
//! `docs/scenarios.md`) is parsed and validated ([`scenario`]), planned (every asset placed,
//! every incident scheduled: [`generate::Plan`]) and generated window by window as compact
//! samples ([`generate::Generator`]) that become CloudEvents on demand. The same scenario and
//! seed give the byte-identical stream whatever the thread count; [`StreamDigest`] fingerprints
//! it.
//!
//! The simulator knows nothing of actors or networks: a driver (the `citytwin run` command)
//! takes the events and feeds a twin through its narrow ingest interface.

pub mod generate;
pub mod geometry;
pub mod profile;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod svg;

use citytwin_core::event::Event;

/// A fingerprint of an event stream: XXH3-64 over each event's MessagePack encoding, in
/// order. Equal digests mean (with overwhelming probability) byte-identical streams.
pub struct StreamDigest {
    hasher: xxhash_rust::xxh3::Xxh3,
    buffer: Vec<u8>,
    events: u64,
}

impl std::fmt::Debug for StreamDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDigest").field("events", &self.events).field("digest", &self.hex()).finish()
    }
}

impl Default for StreamDigest {
    fn default() -> Self {
        StreamDigest { hasher: xxhash_rust::xxh3::Xxh3::new(), buffer: Vec::with_capacity(512), events: 0 }
    }
}

impl StreamDigest {
    /// Adds one event.
    pub fn add(&mut self, event: &Event) {
        self.buffer.clear();
        citytwin_core::codec::msgpack::encode_into(event, &mut self.buffer);
        self.hasher.update(&(self.buffer.len() as u64).to_le_bytes());
        self.hasher.update(&self.buffer);
        self.events += 1;
    }

    /// Events added.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The digest as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.hasher.digest())
    }
}
