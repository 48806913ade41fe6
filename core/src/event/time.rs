//! Event time: [`Timestamp`], nanoseconds since the Unix epoch in UTC.
//!
//! A key design decision: time is a plain `i64` of nanoseconds so that the log, the time
//! index and the CEP engine compare and store it without parsing. RFC 3339 text exists only
//! at the edges (JSON, HTTP headers, MQTT properties). Offsets in input are normalised to UTC,
//! as RFC 3339 defines them as the same instant.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An instant in UTC, as nanoseconds since 1970-01-01T00:00:00Z.
///
/// Representable range: 1677-09-21 to 2262-04-11.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

/// The text was not an RFC 3339 timestamp, or lies outside the representable range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an RFC 3339 timestamp within 1677..2262")]
pub struct TimestampParseError(pub String);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);
    /// The earliest representable instant.
    pub const MIN: Timestamp = Timestamp(i64::MIN);
    /// The latest representable instant.
    pub const MAX: Timestamp = Timestamp(i64::MAX);

    /// From nanoseconds since the epoch.
    pub const fn from_nanos(nanos: i64) -> Self {
        Timestamp(nanos)
    }

    /// From milliseconds since the epoch (saturating).
    pub const fn from_millis(millis: i64) -> Self {
        Timestamp(millis.saturating_mul(1_000_000))
    }

    /// From whole seconds since the epoch (saturating).
    pub const fn from_secs(secs: i64) -> Self {
        Timestamp(secs.saturating_mul(1_000_000_000))
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> i64 {
        self.0
    }

    /// Milliseconds since the epoch, rounded towards negative infinity.
    pub const fn as_millis(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }

    /// Whole seconds since the epoch, rounded towards negative infinity.
    pub const fn as_secs(self) -> i64 {
        self.0.div_euclid(1_000_000_000)
    }

    /// This instant plus `duration`, saturating at [`Timestamp::MAX`].
    pub fn saturating_add(self, duration: Duration) -> Self {
        let nanos = i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(nanos))
    }

    /// This instant minus `duration`, saturating at [`Timestamp::MIN`].
    pub fn saturating_sub(self, duration: Duration) -> Self {
        let nanos = i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_sub(nanos))
    }

    /// Parses an RFC 3339 timestamp (`2025-01-15T10:30:00Z`, `2025-01-15T12:30:00.5+02:00`).
    ///
    /// # Errors
    /// When the text is not RFC 3339 or lies outside the representable range.
    pub fn parse_rfc3339(text: &str) -> Result<Self, TimestampParseError> {
        let error = || TimestampParseError(text.to_owned());
        let parsed = DateTime::parse_from_rfc3339(text).map_err(|_| error())?;
        parsed.timestamp_nanos_opt().map(Timestamp).ok_or_else(error)
    }

    /// Formats as RFC 3339 in UTC with `Z`, with as many fractional digits (0, 3, 6 or 9) as
    /// needed to be exact, so that parsing the text gives back the same value.
    pub fn to_rfc3339(self) -> String {
        DateTime::<Utc>::from_timestamp_nanos(self.0).to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.to_rfc3339())
    }
}

impl std::str::FromStr for Timestamp {
    type Err = TimestampParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Timestamp::parse_rfc3339(text)
    }
}

/// RFC 3339 text in human-readable formats (JSON), an `i64` of nanoseconds in binary ones
/// (MessagePack).
impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&self.to_rfc3339())
        } else {
            serializer.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
            Timestamp::parse_rfc3339(&text).map_err(serde::de::Error::custom)
        } else {
            i64::deserialize(deserializer).map(Timestamp)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_rfc3339() {
        let t = Timestamp::parse_rfc3339("2025-01-15T10:30:00Z").unwrap();
        assert_eq!(t.as_secs(), 1_736_937_000);
        assert_eq!(t.to_rfc3339(), "2025-01-15T10:30:00Z");
        let offset = Timestamp::parse_rfc3339("2025-01-15T12:30:00.5+02:00").unwrap();
        assert_eq!(offset.to_rfc3339(), "2025-01-15T10:30:00.500Z");
        let nanos = Timestamp::from_nanos(1_736_937_000_123_456_789);
        assert_eq!(Timestamp::parse_rfc3339(&nanos.to_rfc3339()).unwrap(), nanos);
    }

    #[test]
    fn rejects_non_rfc3339() {
        for bad in
            ["2025-01-15", "2025-01-15 10:30:00", "10:30:00Z", "2025-13-01T00:00:00Z", "", "9999-01-01T00:00:00Z"]
        {
            assert!(Timestamp::parse_rfc3339(bad).is_err(), "{bad} should be rejected");
        }
    }
}
