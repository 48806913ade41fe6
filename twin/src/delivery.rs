//! Delivery classes: how hard the twin tries to deliver each kind of event.
//!
//! - At-most-once (high-volume telemetry, `com.smartcities.asset.metric_*` by default): under
//!   overload the event is shed, never silently: it is counted, dead-lettered with reason
//!   `shed`, and the producer hears `Overloaded` with a retry hint.
//! - At-least-once (alerts, lifecycle, everything else): the producer waits for capacity
//!   (backpressure), and consumers read through [`crate::consumer::DurableConsumer`], which
//!   redelivers what they did not acknowledge.
//! - Exactly-once for external effects: the transactional outbox
//!   ([`crate::outbox::OutboxRelay`]).
//!
//! Load is bounded by a fixed number of commands in flight through the actors: mailboxes
//! never hold more than that, whatever the offered load.

use std::sync::atomic::{AtomicU64, Ordering};

use citytwin_core::event::TypePattern;

/// A delivery class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryClass {
    /// May be shed under overload (counted, dead-lettered).
    AtMostOnce,
    /// Never shed: producers wait; consumers acknowledge.
    AtLeastOnce,
}

/// Delivery class per event-type pattern; the first matching pattern wins.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryClasses {
    /// (pattern, class), in order.
    pub rules: Vec<(TypePattern, DeliveryClass)>,
    /// For types no pattern matches.
    pub default: DeliveryClass,
}

impl Default for DeliveryClasses {
    fn default() -> Self {
        DeliveryClasses {
            rules: vec![(TypePattern::new("com.smartcities.asset.metric_*"), DeliveryClass::AtMostOnce)],
            default: DeliveryClass::AtLeastOnce,
        }
    }
}

impl DeliveryClasses {
    /// The class of an event type.
    pub fn class_of(&self, ty: &str) -> DeliveryClass {
        self.rules.iter().find(|(pattern, _)| pattern.matches(ty)).map_or(self.default, |(_, class)| *class)
    }
}

/// Counters of the ingest path, for metrics and reports.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Events accepted (committed).
    pub accepted: AtomicU64,
    /// Events shed under overload (at-most-once only).
    pub shed: AtomicU64,
    /// Events refused as invalid.
    pub invalid: AtomicU64,
    /// Events refused by business rules.
    pub rejected: AtomicU64,
}

/// A copy of [`IngestStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestCounts {
    /// See [`IngestStats::accepted`].
    pub accepted: u64,
    /// See [`IngestStats::shed`].
    pub shed: u64,
    /// See [`IngestStats::invalid`].
    pub invalid: u64,
    /// See [`IngestStats::rejected`].
    pub rejected: u64,
}

impl IngestStats {
    /// Current values.
    pub fn counts(&self) -> IngestCounts {
        IngestCounts {
            accepted: self.accepted.load(Ordering::Relaxed),
            shed: self.shed.load(Ordering::Relaxed),
            invalid: self.invalid.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` at once (a batch's count: one atomic operation, not one per event).
    pub(crate) fn add_n(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
