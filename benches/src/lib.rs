//! Shared helpers of probe's criterion benchmarks.

#[path = "../../examples/src/allocator.rs"]
mod allocator;

/// Makes mimalloc keep the memory a program frees (what `probe` does; see
/// `examples/src/allocator.rs`): the bench binaries and criterion benches call it first.
pub fn keep_freed_memory() {
    allocator::keep_freed_memory();
}
