//! Loads started ahead of need: the record a SYN several packets later will look up has
//! usually left every cache while its 4-tuple sat in TIME_WAIT.

/// Starts loading every cache line of `value` (a hint: nothing waits for it).
#[inline(always)]
pub fn lines_of<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let start = (value as *const T).cast::<i8>();
        let mut offset = 0;
        while offset < size_of::<T>() {
            // SAFETY: SSE is in every x86-64 CPU, and a prefetch reads nothing the program
            // sees and never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset)) };
            offset += 64;
        }
        // The last line, when `value` does not start on a line's boundary.
        // SAFETY: as above.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(size_of::<T>().saturating_sub(1)))
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
