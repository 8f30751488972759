//! The candle backend (in progress).
