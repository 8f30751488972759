//! The `ort` backend: hidden states through ONNX Runtime, from an ONNX export made by
//! `scripts/python/export_onnx.py`.
//!
//! ```text
//! python scripts/python/export_onnx.py MODEL_DIR EXPORT_DIR
//! ```
//!
//! writes `EXPORT_DIR/model.onnx` with one output per hidden state (`hidden_state_0` ..
//! `hidden_state_L`, dynamic batch and sequence axes) and copies the tokenizer next to it.
//! [`OrtExtractor::load`] opens that folder.
//!
//! ONNX Runtime is loaded at run time (`load-dynamic`) from the `libonnxruntime.so.<version>`
//! shipped in PyPI's `onnxruntime` wheel (`<site-packages>/onnxruntime/capi/`): give its path
//! with [`OrtOptions::with_library`] or the `ORT_DYLIB_PATH` environment variable. The CUDA
//! execution provider is used when probe is built with the `cuda` feature, the library has it
//! (the `onnxruntime-gpu` wheel) and a GPU is present; the CPU provider otherwise.
//! [`OrtExtractor::provider`] says which.

mod extractor;
mod runtime;

pub use extractor::{OrtExtractor, OrtOptions};
