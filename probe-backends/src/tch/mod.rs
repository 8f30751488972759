//! The `tch` backend: hidden states through libtorch, from a TorchScript module made by
//! `scripts/python/export_torchscript.py`.
//!
//! ```text
//! python scripts/python/export_torchscript.py MODEL_DIR EXPORT_DIR
//! ```
//!
//! traces the Hugging Face model (transformers' own code, eager attention) into
//! `EXPORT_DIR/model.pt`, which returns every hidden state stacked `[L + 1, batch, seq, hidden]`,
//! and copies the tokenizer next to it. [`TchExtractor::load`] opens that folder.
//!
//! libtorch comes from PyPI's `torch==2.13.0` wheel (the version tch 0.26 needs): build with
//! `LIBTORCH_USE_PYTORCH=1` and that environment's `python` first on `PATH` (or
//! `LIBTORCH=<site-packages>/torch`), run with `LD_LIBRARY_PATH=<site-packages>/torch/lib`.

mod extractor;

pub use extractor::{TchDevice, TchExtractor, TchOptions};
