//! The one public error type of probe.

use std::fmt;

/// A boxed error from a backend, kept as the `source` of [`Error::Backend`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used across probe.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error probe returns. Variants are things a caller can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad input from a user: the message names the bad value.
    #[error("invalid {what}: {message}")]
    InvalidInput {
        /// What was bad (`"temperature"`, `"layer"`, `"prompt file line 3"` …).
        what: String,
        /// Why, naming the value.
        message: String,
    },
    /// The backend cannot do this operation.
    #[error("{operation} is not supported by the {backend} backend")]
    NotSupported {
        /// The operation asked for.
        operation: String,
        /// The backend that lacks it.
        backend: String,
    },
    /// The device ran out of memory; retrying with a smaller batch may work.
    #[error("out of memory on {device}{}", .requested_bytes.map(|b| format!(" (requested {b} bytes)")).unwrap_or_default())]
    OutOfMemory {
        /// The device (`"cuda:0"`, `"cpu"`).
        device: String,
        /// Bytes the failed allocation asked for, when known.
        requested_bytes: Option<u64>,
    },
    /// The requested device does not exist or cannot be opened.
    #[error("device unavailable: {0}")]
    DeviceUnavailable(String),
    /// The operation needs a cargo feature this build lacks.
    #[error("this build of probe lacks the cargo feature `{feature}`; rebuild with `--features {feature}`")]
    FeatureDisabled {
        /// The missing feature.
        feature: String,
    },
    /// Nothing stored under this key.
    #[error("not found: {0}")]
    NotFound(String),
    /// A stored entry failed its checksum or could not be parsed.
    #[error("corrupt cache entry {key}: {message}")]
    Corrupt {
        /// The entry's path.
        key: String,
        /// What was wrong.
        message: String,
    },
    /// A temporary failure (network, 5xx, 429, timeout): retrying may work.
    #[error("temporary failure in {backend}: {message}")]
    Temporary {
        /// The backend or store.
        backend: String,
        /// What happened.
        message: String,
    },
    /// An I/O error.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or object involved.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An error inside a backend, converted at its boundary.
    #[error("{backend} backend error: {source}")]
    Backend {
        /// The backend (`"candle"`, `"vllm"`, `"s3"` …).
        backend: String,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Bad input: `what` names the field, `message` says why and names the value.
    pub fn invalid(what: impl Into<String>, message: impl fmt::Display) -> Self {
        Error::InvalidInput { what: what.into(), message: message.to_string() }
    }

    /// An operation a backend does not support.
    pub fn not_supported(operation: impl Into<String>, backend: impl Into<String>) -> Self {
        Error::NotSupported { operation: operation.into(), backend: backend.into() }
    }

    /// Wraps a backend's own error.
    pub fn backend(backend: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Backend { backend: backend.into(), source: source.into() }
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl fmt::Display, source: std::io::Error) -> Self {
        Error::Io { path: path.to_string(), source }
    }

    /// True when the same call may succeed if repeated (after a back-off, or with a
    /// smaller batch for [`Error::OutOfMemory`]).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Temporary { .. } | Error::OutOfMemory { .. } => true,
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }

    /// True for [`Error::OutOfMemory`].
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Error::OutOfMemory { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classification() {
        assert!(Error::OutOfMemory { device: "cuda:0".into(), requested_bytes: Some(1) }.is_retryable());
        assert!(Error::Temporary { backend: "s3".into(), message: "503".into() }.is_retryable());
        assert!(!Error::invalid("temperature", "-1 is negative").is_retryable());
        assert!(!Error::FeatureDisabled { feature: "cuda".into() }.is_retryable());
    }

    #[test]
    fn messages_name_the_value() {
        let e = Error::invalid("temperature", "NaN is not a number");
        assert_eq!(e.to_string(), "invalid temperature: NaN is not a number");
        let e = Error::OutOfMemory { device: "cuda:1".into(), requested_bytes: Some(2048) };
        assert_eq!(e.to_string(), "out of memory on cuda:1 (requested 2048 bytes)");
    }
}
