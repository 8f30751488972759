//! The vllm backend (in progress).
