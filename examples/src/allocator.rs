//! The binaries' allocator settings: `probe` (this crate) and the bench binaries of
//! `probe-benches`, which include this file (`#[path]`), so both run with the same ones.

/// Makes mimalloc (the global allocator) keep the memory a program frees instead of returning
/// it to the OS 10 ms later (`MIMALLOC_PURGE_DELAY=-1`), unless that variable is set. A forward
/// pass frees and reallocates buffers of the same sizes at every layer; purged, each comes back
/// as fresh pages the kernel zeroes (docs/performance.md: `probe-generate-bench` faulted 1.2 M
/// pages in, 332 k with this, task clock 15.9 → 14.7 s). The peak stays what the largest batch
/// needs.
///
/// The binaries also build mimalloc without transparent huge pages (its `no_thp` feature: it
/// does not `madvise` them, as glibc's malloc and torch do not): faulting them in cost
/// `probe-generate-bench` 2.5–4 s more system time on a VM that hands free memory back to its
/// host, for no measurable gain in the passes (docs/performance.md).
pub(crate) fn keep_freed_memory() {
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
