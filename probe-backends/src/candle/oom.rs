//! candle's errors as probe's: a device allocation failure (CUDA's `CUDA_ERROR_OUT_OF_MEMORY`,
//! cudarc's "out of memory", wrapped in any context or backtrace) becomes
//! [`Error::OutOfMemory`], so the sweep's back-off ([`probe_core::plan::OomBackoff`]) can
//! retry it with a smaller batch; every other error is a backend error.

use candle_core::Device;
use probe_core::Error;

/// Whether `e` (or an error it wraps) is a device allocation failure.
pub(crate) fn is_out_of_memory(e: &candle_core::Error) -> bool {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } | E::Context { inner, .. } => is_out_of_memory(inner),
        other => {
            let text = format!("{other} {other:?}");
            text.contains("OUT_OF_MEMORY") || text.to_ascii_lowercase().contains("out of memory")
        }
    }
}

/// `"cuda:N"`, `"cpu"` or `"metal:N"`.
pub(crate) fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_owned(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// A candle error as probe's, the out-of-memory ones as [`Error::OutOfMemory`] on `device`.
pub(crate) fn error_on(e: candle_core::Error, device: &str) -> Error {
    if is_out_of_memory(&e) {
        tracing::debug!("candle: out of memory on {device}: {e}");
        Error::OutOfMemory { device: format!("{device} (candle)"), requested_bytes: None }
    } else {
        Error::backend("candle", e)
    }
}

/// [`error_on`] where the device is not at hand: allocation failures come from the GPU
/// (the CPU's abort the process), so the device is named `cuda`.
pub(crate) fn error(e: candle_core::Error) -> Error {
    error_on(e, "cuda")
}

/// Between out-of-memory retries: waits for the device's queued work, so that the buffers
/// of the failed batch (dropped with its tensors) are back in the allocator before the
/// smaller batch allocates. Nothing to do on the CPU.
pub(crate) fn release(device: &Device) {
    if !device.is_cpu()
        && let Err(e) = device.synchronize()
    {
        tracing::warn!("candle: synchronising {} after an out-of-memory error failed: {e}", device_name(device));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Driver(&'static str);
    impl std::fmt::Display for Driver {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Driver {}

    #[test]
    fn cuda_allocation_failures_become_out_of_memory_through_any_wrapping() {
        let cuda =
            || candle_core::Error::Cuda(Box::new(Driver("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")")));
        assert!(matches!(error(cuda()), Error::OutOfMemory { .. }));
        let traced = cuda().bt();
        assert!(is_out_of_memory(&traced));
        let ctx = candle_core::Error::Context { inner: Box::new(cuda()), context: Box::new("loading a batch") };
        match error_on(ctx, "cuda:1") {
            Error::OutOfMemory { device, .. } => assert_eq!(device, "cuda:1 (candle)"),
            other => panic!("{other}"),
        }
        let msg = candle_core::Error::Msg("CUDA error: out of memory".into());
        assert!(is_out_of_memory(&msg));
    }

    #[test]
    fn other_errors_stay_backend_errors() {
        let shape = candle_core::Error::Msg("shape mismatch in matmul, lhs: [2, 3], rhs: [4, 5]".into());
        assert!(!is_out_of_memory(&shape));
        assert!(matches!(error(shape), Error::Backend { .. }));
        assert_eq!(device_name(&Device::Cpu), "cpu");
    }
}
