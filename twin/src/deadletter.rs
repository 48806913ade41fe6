//! The dead-letter queue: an event stream (`dead-letters`) in the log holding every event the
//! twin could not process, with the reason, for inspection and reprocessing.

use citytwin_core::codec::json;
use citytwin_core::event::{Data, Event};
use citytwin_core::log::{EventLog, Expected};
use serde_json::json;
use std::future::Future;
use std::time::Duration;

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
    /// The sender may not write it (another organization's asset).
    Unauthorized(String),
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
            DeadLetterReason::Unauthorized(m) => ("unauthorized", m),
        }
    }
}

/// Appends a dead-letter entry for `event`: the original as CloudEvents JSON plus the reason.
///
/// # Errors
/// When the log refuses the append.
pub fn dead_letter(log: &EventLog, event: &Event, reason: &DeadLetterReason) -> citytwin_core::Result<()> {
    log.append(DEAD_LETTER_STREAM, Expected::Any, &dead_letter_entry(event, reason))?;
    Ok(())
}

/// The dead-letter entry for `event` (to append to [`DEAD_LETTER_STREAM`]).
pub fn dead_letter_entry(event: &Event, reason: &DeadLetterReason) -> Event {
    let (kind, message) = reason.parts();
    let data = json!({ "reason": kind, "message": message, "original": json::to_value(event) });
    let mut entry = Event::untyped(format!("dead-letter:{}", event.id), "/twin/dead-letters", DEAD_LETTER_TYPE);
    entry.time = event.time;
    entry.rare.subject = event.asset_id().map(str::to_owned);
    entry.ext.organization.clone_from(&event.ext.organization);
    entry.ext.rare.causationid = Some(event.id.to_string());
    entry.data = Some(Data::Json(data));
    entry
}

/// The dead-letter entry for input that is not an event at all (undecodable bytes from a
/// gateway): the raw bytes (as text when they are UTF-8, base64 otherwise), where they came
/// from and why they were refused. `id` names the input (the event id when one was readable).
pub fn raw_dead_letter_entry(
    id: &str,
    origin: &str,
    raw: &[u8],
    organization: Option<&str>,
    reason: &DeadLetterReason,
) -> Event {
    use base64::Engine as _;
    let (kind, message) = reason.parts();
    let raw = match std::str::from_utf8(raw) {
        Ok(text) => json!({ "text": text }),
        Err(_) => json!({ "base64": base64::prelude::BASE64_STANDARD.encode(raw) }),
    };
    let data = json!({ "reason": kind, "message": message, "origin": origin, "raw": raw });
    let mut entry = Event::untyped(format!("dead-letter:{id}"), "/twin/dead-letters", DEAD_LETTER_TYPE);
    entry.ext.organization = organization.map(Into::into);
    entry.data = Some(Data::Json(data));
    entry
}

/// The type of the record saying a dead letter was reprocessed successfully.
pub const RESOLVED_TYPE: &str = "com.smartcities.twin.dead_letter_resolved";
/// The type of the record saying reprocessing a dead letter gave up.
pub const EXHAUSTED_TYPE: &str = "com.smartcities.twin.dead_letter_exhausted";

/// Where a dead letter stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterStatus {
    /// Not reprocessed yet.
    Pending,
    /// Reprocessed successfully.
    Resolved,
    /// Reprocessing gave up after the retry policy's attempts.
    Exhausted,
}

/// A dead letter read back.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Where it stands.
    pub status: DeadLetterStatus,
    /// Its position in the log.
    pub position: u64,
    /// `panicked`, `invalid_format`, ...
    pub reason: String,
    /// The reason's text.
    pub message: String,
    /// The original event, when it was a valid one.
    pub original: Option<Event>,
    /// The organization it came from, when known.
    pub organization: Option<String>,
    /// The raw input, for input that was not an event (see [`raw_dead_letter_entry`]).
    pub raw: Option<serde_json::Value>,
}

/// Every dead letter, oldest first, with its status.
///
/// # Errors
/// When the log cannot be read.
pub fn dead_letters(log: &EventLog) -> citytwin_core::Result<Vec<DeadLetter>> {
    let mut letters: Vec<DeadLetter> = Vec::new();
    // The stream's back-pointers: no scan of the rest of the log.
    for record in log.read_stream(DEAD_LETTER_STREAM, 1)? {
        let event = record.event()?;
        let organization = event.ext.organization.as_deref().map(str::to_owned);
        let data = match event.data {
            Some(Data::Json(value)) => value,
            _ => serde_json::Value::Null,
        };
        let status = match event.ty.as_str() {
            RESOLVED_TYPE => DeadLetterStatus::Resolved,
            EXHAUSTED_TYPE => DeadLetterStatus::Exhausted,
            _ => {
                letters.push(DeadLetter {
                    status: DeadLetterStatus::Pending,
                    position: record.position,
                    reason: data["reason"].as_str().unwrap_or_default().to_owned(),
                    message: data["message"].as_str().unwrap_or_default().to_owned(),
                    original: json::from_value(data["original"].clone()).ok(),
                    organization,
                    raw: data.get("raw").cloned(),
                });
                continue;
            }
        };
        let target = data["dead_letter"].as_u64();
        if let Some(letter) = letters.iter_mut().find(|l| Some(l.position) == target) {
            letter.status = status;
        }
    }
    Ok(letters)
}

/// Retries with exponential backoff: `base_delay`, doubling up to `max_delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per dead letter (at least 1).
    pub max_attempts: u32,
    /// Wait before the second attempt.
    pub base_delay: Duration,
    /// Longest wait.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 5, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(30) }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt` (0-based; 0 waits nothing).
    pub fn delay(&self, attempt: u32) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        let factor = 2u32.saturating_pow(attempt - 1);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// What a reprocessing run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReprocessReport {
    /// Dead letters that went through.
    pub resolved: usize,
    /// Dead letters given up on.
    pub exhausted: usize,
    /// Dead letters without a readable original (nothing to retry).
    pub skipped: usize,
    /// Attempts made.
    pub attempts: u32,
}

fn mark(log: &EventLog, letter: &DeadLetter, ty: &str, detail: &str) -> citytwin_core::Result<()> {
    let mut record = Event::untyped(format!("{ty}:{}", letter.position), "/twin/dead-letters", ty);
    record.time = letter.original.as_ref().and_then(|e| e.time);
    record.data = Some(Data::Json(json!({ "dead_letter": letter.position, "detail": detail })));
    log.append(DEAD_LETTER_STREAM, Expected::Any, &record)?;
    Ok(())
}

/// Retries every pending dead letter with `ingest`, waiting per `policy` between attempts,
/// and records each outcome, so a dead letter is reprocessed at most once to completion.
///
/// # Errors
/// When the log cannot be read or written.
pub async fn reprocess<F, Fut>(
    log: &EventLog,
    policy: RetryPolicy,
    mut ingest: F,
) -> citytwin_core::Result<ReprocessReport>
where
    F: FnMut(Event) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut report = ReprocessReport::default();
    for letter in dead_letters(log)?.into_iter().filter(|l| l.status == DeadLetterStatus::Pending) {
        let Some(original) = letter.original.clone() else {
            report.skipped += 1;
            continue;
        };
        let mut last_error = String::new();
        let mut resolved = false;
        for attempt in 0..policy.max_attempts.max(1) {
            // NOTE: production pacing between retries, not test synchronisation.
            tokio::time::sleep(policy.delay(attempt)).await;
            report.attempts += 1;
            match ingest(original.clone()).await {
                Ok(()) => {
                    resolved = true;
                    break;
                }
                Err(error) => last_error = error,
            }
        }
        if resolved {
            mark(log, &letter, RESOLVED_TYPE, "reprocessed")?;
            report.resolved += 1;
        } else {
            tracing::warn!(position = letter.position, error = %last_error, "dead letter retries exhausted");
            mark(log, &letter, EXHAUSTED_TYPE, &last_error)?;
            report.exhausted += 1;
        }
    }
    Ok(report)
}
