//! The process's allocator: mimalloc, with a longer purge delay than its default.
//!
//! The twin allocates and frees many small objects from many threads (events, messages,
//! replies); glibc malloc spent a third of the ingest path in arena locks and consolidation.
//!
//! mimalloc gives memory that has been free for a second (its default purge delay) back to
//! the kernel. The twin's working set turns over in cycles of a few seconds (an ingest call of
//! 1M readings is allocated, then freed as it is committed and published), so memory went
//! back to the kernel and was faulted in again, zeroed, every cycle: on the 30-minute slice of
//! `day-100k.toml`, 11 % of all samples were the kernel zeroing huge pages for fresh
//! allocations. With the delay at ten seconds, memory still goes back once it has been idle
//! that long (a server that had a burst shrinks again).

/// The global allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's option enum (`mimalloc.h`); `libmimalloc-sys`
/// names no constant for it. The test below checks the number by the option's default.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// What [`tune`] sets the purge delay to, in milliseconds.
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

/// The environment variable with which mimalloc lets a user set the delay; it wins.
const PURGE_DELAY_VAR: &str = "MIMALLOC_PURGE_DELAY";

/// Sets mimalloc's purge delay to [`PURGE_DELAY_MS`], unless the user set
/// `MIMALLOC_PURGE_DELAY`. Call it first thing in `main`, before any thread starts.
pub(crate) fn tune() {
    if std::env::var_os(PURGE_DELAY_VAR).is_none() {
        set_option(PURGE_DELAY, PURGE_DELAY_MS);
    }
}

#[allow(unsafe_code)]
fn set_option(option: libmimalloc_sys::mi_option_t, value: std::ffi::c_long) {
    // SAFETY: `mi_option_set` stores `value` in mimalloc's option table (it ignores an
    // option out of range); it has no preconditions on its arguments. The store is not
    // atomic, so it runs before any other thread exists (see `tune`).
    unsafe { libmimalloc_sys::mi_option_set(option, value) }
}

#[allow(unsafe_code)]
#[cfg(test)]
fn get_option(option: libmimalloc_sys::mi_option_t) -> std::ffi::c_long {
    // SAFETY: `mi_option_get` reads mimalloc's option table (0 for an option out of range).
    unsafe { libmimalloc_sys::mi_option_get(option) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_tuned_is_the_purge_delay() {
        // Untouched in tests (no `tune`), the option holds mimalloc v3's default purge delay,
        // 1000 ms, or what the environment set: a renumbered enum would show another
        // option's value. The neighbours have other defaults (eager commit delay: 1, NUMA
        // nodes: 0), so an off-by-one fails too.
        let expected = std::env::var(PURGE_DELAY_VAR).ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
        assert_eq!(get_option(PURGE_DELAY), expected);
    }
}
