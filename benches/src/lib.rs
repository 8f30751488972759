//! Shared helpers of probe's criterion benchmarks.

/// Makes mimalloc (the global allocator) keep the memory a program frees instead of returning
/// it to the OS 10 ms later (`MIMALLOC_PURGE_DELAY=-1`), unless that variable is set. A forward
/// pass frees and reallocates buffers of the same sizes at every layer; purged, each comes back
/// as fresh pages the kernel zeroes (docs/performance.md: 27,700 page faults → 1,100 and ~20 %
/// less CPU time in `probe-generate-bench`). The peak stays what the largest batch needs.
///
/// The binaries also build mimalloc without transparent huge pages (its `no_thp` feature: it
/// does not `madvise` them, as glibc's malloc and torch do not): faulting them in cost
/// `probe-generate-bench` 2.5–4 s more system time on a VM that hands free memory back to its
/// host, for no measurable gain in the passes (docs/performance.md).
pub fn keep_freed_memory() {
    // mimalloc.h (v2 and v3): `void mi_option_set(mi_option_t, long)`, `mi_option_purge_delay`
    // = 15; linked from libmimalloc-sys, which the `mimalloc` crate builds.
    unsafe extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    const PURGE_DELAY: std::ffi::c_int = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an option's value; mimalloc reads it when it next purges.
        unsafe { mi_option_set(PURGE_DELAY, -1) }
    }
}
