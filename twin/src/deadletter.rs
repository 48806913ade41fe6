//! The dead-letter queue: an event stream (`dead-letters`) in the log holding every event the
//! twin could not process, with the reason, for inspection and reprocessing.

use citytwin_core::codec::json;
use citytwin_core::event::{Data, Event};
use citytwin_core::log::{EventLog, Expected, ReplayFilter};
use serde_json::json;

/// The log stream of dead letters.
pub const DEAD_LETTER_STREAM: &str = "dead-letters";
/// The type of a dead-letter entry.
pub const DEAD_LETTER_TYPE: &str = "com.smartcities.twin.dead_lettered";

/// Why an event was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// Processing it made an actor panic.
    Panicked(String),
    /// It was not a valid event.
    InvalidFormat(String),
    /// A business rule refused it.
    Rejected(String),
    /// Retries ran out.
    RetryExhausted(String),
    /// Shed under overload.
    Shed(String),
}

impl DeadLetterReason {
    /// (kind, message).
    pub fn parts(&self) -> (&'static str, &str) {
        match self {
            DeadLetterReason::Panicked(m) => ("panicked", m),
            DeadLetterReason::InvalidFormat(m) => ("invalid_format", m),
            DeadLetterReason::Rejected(m) => ("rejected", m),
            DeadLetterReason::RetryExhausted(m) => ("retry_exhausted", m),
            DeadLetterReason::Shed(m) => ("shed", m),
        }
    }
}

/// Appends a dead-letter entry for `event`: the original as CloudEvents JSON plus the reason.
///
/// # Errors
/// When the log refuses the append.
pub fn dead_letter(log: &EventLog, event: &Event, reason: &DeadLetterReason) -> citytwin_core::Result<()> {
    let (kind, message) = reason.parts();
    let data = json!({ "reason": kind, "message": message, "original": json::to_value(event) });
    let mut entry = Event::untyped(format!("dead-letter:{}", event.id), "/twin/dead-letters", DEAD_LETTER_TYPE);
    entry.time = event.time;
    entry.subject = event.asset_id().map(str::to_owned);
    entry.ext.organization.clone_from(&event.ext.organization);
    entry.ext.causationid = Some(event.id.clone());
    entry.data = Some(Data::Json(data));
    log.append(DEAD_LETTER_STREAM, Expected::Any, &entry)?;
    Ok(())
}

/// A dead letter read back.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Its position in the log.
    pub position: u64,
    /// `panicked`, `invalid_format`, ...
    pub reason: String,
    /// The reason's text.
    pub message: String,
    /// The original event, when it was a valid one.
    pub original: Option<Event>,
}

/// Every dead letter, oldest first.
///
/// # Errors
/// When the log cannot be read.
pub fn dead_letters(log: &EventLog) -> citytwin_core::Result<Vec<DeadLetter>> {
    let filter = ReplayFilter { streams: vec![DEAD_LETTER_STREAM.to_owned()], ..ReplayFilter::default() };
    log.replay(filter)
        .map(|record| {
            let record = record?;
            let event = record.event()?;
            let data = match event.data {
                Some(Data::Json(value)) => value,
                _ => serde_json::Value::Null,
            };
            Ok(DeadLetter {
                position: record.position,
                reason: data["reason"].as_str().unwrap_or_default().to_owned(),
                message: data["message"].as_str().unwrap_or_default().to_owned(),
                original: json::from_value(data["original"].clone()).ok(),
            })
        })
        .collect()
}
