//! The tch backend (in progress).
