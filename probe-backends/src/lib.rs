//! probe-backends (in progress)
