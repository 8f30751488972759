//! probe benches (in progress)
