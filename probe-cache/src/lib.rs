//! probe-cache (in progress)
