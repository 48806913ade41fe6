//! Keeping only the log's newest bytes in the operating system's page cache.
//!
//! The log is written once and read back rarely: recovery, replay, time travel, a
//! subscriber that fell behind the bus. Left alone, every byte written stays in the page
//! cache until memory pressure evicts it, so a log that grows by gigabytes (a simulated day
//! of 100k assets writes about 29 GB) crowds out everything else, and each `write()` is
//! handed a page the kernel has to find and, on a fresh virtual machine, fault in from the
//! host. On the three-hour slice of `day-100k.toml` the kernel's copy into the page cache
//! was 13 % of all samples.
//!
//! Once bytes are synced (clean) the log tells the kernel it will not need them soon
//! (`POSIX_FADV_DONTNEED`), keeping the newest [`CACHED_TAIL`] bytes of the active segment
//! for readers that follow the head; a sealed segment is dropped whole. Freed pages go
//! back to the kernel's free lists and are reused by the next writes. Nothing changes for
//! readers but speed: a dropped page is read from disk again when asked for.

use std::fs::File;

/// Bytes at the end of the active segment that stay cached.
pub(crate) const CACHED_TAIL: u64 = 16 << 20;

/// Dropping waits until at least this much more can go (one call per step, not per sync).
const STEP: u64 = 8 << 20;

/// How far the active segment's cached pages have been dropped.
#[derive(Debug, Default)]
pub(crate) struct Uncached {
    /// The active segment's base position (a roll starts over).
    segment: u64,
    /// Bytes below this offset of it have been dropped.
    upto: u64,
}

impl Uncached {
    /// After `file` (the active segment at `segment`) was synced up to `synced` bytes: drops
    /// what lies more than [`CACHED_TAIL`] behind, once a [`STEP`] has gathered.
    pub(crate) fn synced(&mut self, file: &File, segment: u64, synced: u64) {
        if self.segment != segment {
            *self = Uncached { segment, upto: 0 };
        }
        let upto = synced.saturating_sub(CACHED_TAIL) & !(STEP - 1);
        if upto >= self.upto + STEP {
            drop_cached(file, self.upto, upto - self.upto);
            self.upto = upto;
        }
    }
}

/// Drops a sealed (synced) segment's pages.
pub(crate) fn sealed(file: &File) {
    drop_cached(file, 0, 0);
}

/// Advises the kernel that `len` bytes of `file` from `offset` (0: to the end) are not needed
/// soon. Only advice: a failure costs memory, never data, so it is logged and ignored.
fn drop_cached(file: &File, offset: u64, len: u64) {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    {
        let len = std::num::NonZeroU64::new(len);
        if let Err(error) = rustix::fs::fadvise(file, offset, len, rustix::fs::Advice::DontNeed) {
            tracing::debug!(%error, "dropping synced log pages from the page cache failed");
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    let _ = (file, offset, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_in_steps_behind_the_cached_tail_and_starts_over_on_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("seg")).unwrap();
        let mut uncached = Uncached::default();
        uncached.synced(&file, 0, CACHED_TAIL + STEP - 1);
        assert_eq!(uncached.upto, 0, "less than a step behind the tail: nothing yet");
        uncached.synced(&file, 0, CACHED_TAIL + 2 * STEP + 5);
        assert_eq!(uncached.upto, 2 * STEP);
        uncached.synced(&file, 0, CACHED_TAIL + 2 * STEP + STEP / 2);
        assert_eq!(uncached.upto, 2 * STEP, "never backwards, never less than a step");
        uncached.synced(&file, 1000, CACHED_TAIL);
        assert_eq!((uncached.segment, uncached.upto), (1000, 0), "a new segment starts from its first byte");
    }
}
