//! The crate's error type.

use crate::event::ValidationError;

/// Everything that can go wrong in `citytwin-core`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is not in the expected format at all (not JSON, not an object, a header
    /// that is not UTF-8...), so no attribute could be checked.
    #[error("malformed {format}: {reason}")]
    Malformed {
        /// The format being decoded (`CloudEvents JSON`, `MessagePack event`...).
        format: &'static str,
        /// What is wrong, for a person.
        reason: String,
    },
    /// The input decoded but breaks CloudEvents or citytwin rules; every problem is listed.
    #[error("invalid event: {0}")]
    Invalid(#[from] ValidationError),
    /// A stored event was written by a newer (or unknown) storage format.
    #[error("unsupported storage format version {found} (this build reads up to {supported})")]
    UnsupportedFormat {
        /// The version byte found.
        found: u8,
        /// The newest version this build reads.
        supported: u8,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn malformed(format: &'static str, reason: impl ToString) -> Self {
        Error::Malformed {
            format,
            reason: reason.to_string(),
        }
    }
}
