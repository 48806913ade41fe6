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
//!
//! Transparent huge pages are off for the process (unless `MIMALLOC_ALLOW_THP` says
//! otherwise). With them, memory that mimalloc purged and touches again comes back as a whole
//! 2 MiB page that the kernel zeroes, however little of it is used; with the event log's
//! written pages leaving the page cache there is free memory for huge pages everywhere, and
//! on the three-hour slice of `day-100k.toml` system time was 11.5–15 s with them against
//! 5.5–9 s without, wall time 36–38 s against 32–35 s (four alternating pairs); user time
//! rose by under 1 %.

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

/// `mi_option_allow_thp` in mimalloc v3's option enum.
const ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// The environment variable with which mimalloc lets a user allow or forbid huge pages.
const ALLOW_THP_VAR: &str = "MIMALLOC_ALLOW_THP";

/// Sets mimalloc's purge delay to [`PURGE_DELAY_MS`] and turns transparent huge pages off,
/// each unless the user set mimalloc's variable for it. Call it first thing in `main`, before
/// any thread starts.
pub(crate) fn tune() {
    if std::env::var_os(PURGE_DELAY_VAR).is_none() {
        set_option(PURGE_DELAY, PURGE_DELAY_MS);
    }
    if std::env::var_os(ALLOW_THP_VAR).is_none() {
        // mimalloc reads the option when the process starts, before `main`, and then asks the
        // kernel itself; set both, so they agree.
        set_option(ALLOW_THP, 0);
        disable_huge_pages();
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn disable_huge_pages() {
    // Only a speed setting, and logging is not set up yet this early: a kernel that refuses
    // it (before 3.15) leaves the system's policy in force.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn disable_huge_pages() {}

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

    #[test]
    fn the_option_turned_off_is_allow_thp() {
        // Its default is 1 (0 only on Android); its neighbours default to 0 (minimal purge
        // size: 0 = automatic) and 32 (page cross-thread max reclaim), so a renumbered enum
        // shows.
        let expected = std::env::var(ALLOW_THP_VAR).ok().and_then(|v| v.parse().ok()).unwrap_or(1);
        assert_eq!(get_option(ALLOW_THP), expected);
        assert_eq!(get_option(ALLOW_THP + 1), 0);
        assert_eq!(get_option(ALLOW_THP - 1), 32);
    }
}
