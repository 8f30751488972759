//! probe examples (in progress)
