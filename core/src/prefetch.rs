//! A hint to the CPU to start loading memory that will be read soon.
//!
//! The hot loops of a city-scale run walk tables far larger than the caches in an order the
//! hardware cannot guess (every asset once a minute, a place after place): each step's first
//! touch of its table entry was a cache miss that the step then waited for. Asking for the
//! next step's entry while working on the current one hides that wait.

/// Asks the CPU to load the first two cache lines of `value` (the 128 bytes from its
/// address), without waiting for them. Only a hint: it changes no value and cannot fault; on
/// targets without a prefetch instruction it does nothing.
#[inline]
pub fn prefetch<T>(value: &T) {
    prefetch_at(std::ptr::from_ref(value));
}

/// [`prefetch`] at an address that need not hold a value yet: the room a list is about to be
/// written into (`list.as_ptr().wrapping_add(list.len())`, within its capacity). Safe for any
/// address: a prefetch never faults.
#[inline]
pub fn prefetch_at<T>(at: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let at = at.cast::<i8>();
        // SAFETY: SSE is part of the x86-64 baseline, and a prefetch only hints: it reads
        // nothing into the program and is dropped, never faulting, for an address that is
        // not mapped (`wrapping_add` keeps the second address's computation defined).
        #[allow(unsafe_code)]
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(at);
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(64));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefetching_changes_nothing_even_at_the_end_of_a_value() {
        let values = vec![7u8; 3];
        super::prefetch(&values[2]);
        super::prefetch(&values);
        super::prefetch_at(values.as_ptr().wrapping_add(values.capacity()));
        super::prefetch_at(std::ptr::null::<u64>());
        assert_eq!(values, [7, 7, 7]);
    }
}
