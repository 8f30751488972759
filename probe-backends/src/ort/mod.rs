//! The ort backend (in progress).
