//! Device inventory: declared devices, or NVML/CUDA when built with `cuda` (in progress).
