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
    /// The event log found damage while opening; see [`crate::log::RecoveryError`].
    #[error(transparent)]
    Recovery(crate::log::RecoveryError),
    /// The log directory is open in another process, or elsewhere in this one: a log has one
    /// owner at a time (opening it repairs it, which would cut off a live writer's tail).
    #[error(
        "the event log at {} is in use by {} (one process at a time: stop it first, or ask the running server through its API)",
        dir.display(),
        holder.map_or_else(|| "another process".to_owned(), |pid| format!("process {pid}"))
    )]
    InUse {
        /// The log directory.
        dir: std::path::PathBuf,
        /// The holder's process id, as its lock file says (it may be this process).
        holder: Option<u32>,
    },
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done (`appending to the event log`).
        context: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// An earlier write or sync failed; the log refuses writes until it is reopened (which
    /// verifies and repairs the tail).
    #[error("the event log is poisoned by an earlier I/O failure and refuses writes; reopen it to recover")]
    Poisoned,
    /// Optimistic concurrency: the stream was not at the expected sequence; nothing was written.
    #[error("stream {stream:?} is at sequence {actual}, expected {expected}")]
    WrongExpectedSequence {
        /// The stream.
        stream: String,
        /// The sequence the caller expected.
        expected: u64,
        /// The stream's actual last sequence.
        actual: u64,
    },
    /// The request cannot be carried out as given (a stream id too long to store...).
    #[error("rejected: {0}")]
    Rejected(String),
    /// A stored event was written by a newer (or unknown) storage format.
    #[error("unsupported storage format version {found} (this build reads up to {supported})")]
    UnsupportedFormat {
        /// The version byte found.
        found: u8,
        /// The newest version this build reads.
        supported: u8,
    },
}

impl From<crate::log::RecoveryError> for Error {
    fn from(error: crate::log::RecoveryError) -> Self {
        Error::Recovery(error)
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn malformed(format: &'static str, reason: impl ToString) -> Self {
        Error::Malformed { format, reason: reason.to_string() }
    }
}
