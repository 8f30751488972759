//! Converting `object_store` errors into probe's one [`Error`] at the crate boundary.

use std::error::Error as StdError;

use probe_core::Error;

/// The backend name used in converted errors.
pub(crate) const BACKEND: &str = "object_store";

/// Converts an `object_store` error: network failures, timeouts, 5xx and 429 become
/// [`Error::Temporary`] (retryable), a missing object [`Error::NotFound`], anything else
/// [`Error::Backend`].
pub(crate) fn convert(e: object_store::Error) -> Error {
    match &e {
        object_store::Error::NotFound { path, .. } => Error::NotFound(path.clone()),
        _ if is_temporary(&e) => Error::Temporary { backend: BACKEND.into(), message: e.to_string() },
        _ => Error::backend(BACKEND, e),
    }
}

/// True when `e` (or an error in its source chain) is a transport failure, a timeout, an
/// HTTP 5xx or a 429: something that a later attempt may not hit.
pub(crate) fn is_temporary(e: &(dyn StdError + 'static)) -> bool {
    let mut current: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = current {
        #[cfg(feature = "s3")]
        if let Some(http) = err.downcast_ref::<object_store::client::HttpError>() {
            use object_store::client::HttpErrorKind as K;
            if matches!(http.kind(), K::Connect | K::Request | K::Timeout | K::Interrupted) {
                return true;
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            if matches!(
                io.kind(),
                K::TimedOut | K::Interrupted | K::ConnectionReset | K::ConnectionAborted | K::ConnectionRefused
            ) {
                return true;
            }
        }
        if status_is_temporary(&err.to_string()) {
            return true;
        }
        current = err.source();
    }
    false
}

/// Reads an HTTP status out of object_store's "… status code: 503 …" messages (its status
/// type is not public): 5xx and 429 are temporary.
fn status_is_temporary(message: &str) -> bool {
    message.match_indices("status code: ").any(|(i, m)| {
        let code: String = message[i + m.len()..].chars().take_while(char::is_ascii_digit).collect();
        matches!(code.parse::<u16>(), Ok(500..=599 | 429))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(source: impl StdError + Send + Sync + 'static) -> object_store::Error {
        object_store::Error::Generic { store: "S3", source: Box::new(source) }
    }

    #[test]
    fn classifies_errors() {
        let nf = object_store::Error::NotFound { path: "a/b".into(), source: "gone".into() };
        assert!(matches!(convert(nf), Error::NotFound(p) if p == "a/b"));
        let timeout = generic(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow"));
        assert!(convert(timeout).is_retryable());
        let refused = generic(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "no"));
        assert!(convert(refused).is_retryable());
        let s503 = generic(std::io::Error::other("Server returned non-2xx status code: 503 Service Unavailable: x"));
        assert!(convert(s503).is_retryable());
        let s429 = generic(std::io::Error::other("Server returned non-2xx status code: 429 Too Many Requests"));
        assert!(convert(s429).is_retryable());
        let s400 = generic(std::io::Error::other("Server returned non-2xx status code: 400 Bad Request"));
        let e = convert(s400);
        assert!(!e.is_retryable() && matches!(e, Error::Backend { .. }), "{e}");
        let denied = object_store::Error::PermissionDenied { path: "p".into(), source: "no".into() };
        assert!(!convert(denied).is_retryable());
    }

    #[cfg(feature = "s3")]
    #[test]
    fn http_transport_errors_are_temporary() {
        use object_store::client::{HttpError, HttpErrorKind};
        let e = generic(HttpError::new(HttpErrorKind::Connect, std::io::Error::other("refused")));
        assert!(convert(e).is_retryable());
        let e = generic(HttpError::new(HttpErrorKind::Decode, std::io::Error::other("bad body")));
        assert!(!convert(e).is_retryable());
    }
}
