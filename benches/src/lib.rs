//! Shared helpers of probe's criterion benchmarks.
