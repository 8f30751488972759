//! Parsing cache URLs (`file://`, plain paths, `memory://`, `s3://bucket/prefix`) and
//! redacting anything secret from them before they reach a message.

use std::path::PathBuf;

use probe_core::{Error, Result};
use url::Url;

/// Where a cache lives, as parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A fresh in-memory store.
    Memory,
    /// A folder on local disk (absolute).
    Local(PathBuf),
    /// An S3 bucket and a key prefix (no leading or trailing `/`; may be empty).
    S3 { bucket: String, prefix: String },
}

/// `url` with any user info (`user:password@`) and any query replaced by `***`, so it can be
/// shown in messages. Works on strings that are not valid URLs too.
pub(crate) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let (head, rest) = url.split_at(scheme_end + 3);
    // User info ends at the last `@` of the authority; a secret may hold `/`, `?`, `#` or `@`
    // unencoded, so look from the first `@` anywhere to the next `/`, `?` or `#` after it, and
    // redact up to the last `@` before that (over-redacting a path with an `@` at worst).
    let rest = match rest.find('@') {
        Some(first) => {
            let end = rest[first..].find(['/', '?', '#']).map_or(rest.len(), |i| first + i);
            let last = rest[..end].rfind('@').unwrap_or(first);
            format!("***{}", &rest[last..])
        }
        None => rest.to_owned(),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let tail = match tail.find('?') {
        Some(q) => format!("{}?***", &tail[..q]),
        None => tail.to_owned(),
    };
    format!("{head}{authority}{tail}")
}

fn invalid(url: &str, why: impl std::fmt::Display) -> Error {
    Error::invalid("cache URL", format!("{}: {why}", redact(url)))
}

/// Parses a cache URL. A string without `://` is a local path (relative paths are resolved
/// against the current folder).
///
/// # Errors
/// [`Error::InvalidInput`] naming the (redacted) URL for an unknown scheme or a malformed
/// URL; [`Error::FeatureDisabled`] for `s3://` in a build without the `s3` feature.
pub(crate) fn parse(url: &str) -> Result<Target> {
    let trimmed = url.trim();
    if trimmed.is_empty() {
        return Err(invalid(url, "empty; use file:///path, a path, memory:// or s3://bucket/prefix"));
    }
    if !trimmed.contains("://") {
        let path = PathBuf::from(trimmed);
        let path =
            if path.is_absolute() { path } else { std::env::current_dir().map_err(|e| Error::io(".", e))?.join(path) };
        return Ok(Target::Local(path));
    }
    // The URL parser resolves `.` and `..` segments (`s3://b/x/../y` becomes `s3://b/y`):
    // refuse them in the text as given, before it can.
    if let Some(seg) = raw_path(trimmed).split('/').find(|s| is_dot_segment(s)) {
        return Err(invalid(url, format!("the path has a `.` or `..` segment ({seg:?})")));
    }
    let parsed = Url::parse(trimmed).map_err(|e| invalid(url, e))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            url,
            "credentials in the URL are not accepted; use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY \
             or the builder's with_credentials",
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid(url, "a cache URL takes no query or fragment"));
    }
    match parsed.scheme() {
        "memory" => {
            if parsed.host_str().is_some_and(|h| !h.is_empty()) || !matches!(parsed.path(), "" | "/") {
                return Err(invalid(url, "memory:// takes no host or path"));
            }
            Ok(Target::Memory)
        }
        "file" => {
            if parsed.host_str().is_some_and(|h| !h.is_empty() && h != "localhost") {
                return Err(invalid(url, "file:// URLs name a local path: file:///absolute/path"));
            }
            let path = parsed.to_file_path().map_err(|()| invalid(url, "not an absolute local path"))?;
            Ok(Target::Local(path))
        }
        "s3" => {
            let bucket = parsed.host_str().unwrap_or_default().to_owned();
            if bucket.is_empty() {
                return Err(invalid(url, "s3:// URLs name a bucket: s3://bucket/prefix"));
            }
            let prefix = parsed.path().trim_matches('/');
            for segment in prefix.split('/').filter(|_| !prefix.is_empty()) {
                if segment.is_empty() || segment == "." || segment == ".." {
                    return Err(invalid(url, format!("the prefix has an empty, `.` or `..` segment ({segment:?})")));
                }
            }
            if !cfg!(feature = "s3") {
                return Err(Error::FeatureDisabled { feature: "s3".into() });
            }
            Ok(Target::S3 { bucket, prefix: prefix.to_owned() })
        }
        other => Err(invalid(url, format!("unsupported scheme `{other}`; use file://, memory:// or s3://"))),
    }
}

/// The path part of `url` (after `scheme://authority`, before `?` or `#`), as written.
fn raw_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let rest = &rest[..end];
    rest.find('/').map_or("", |i| &rest[i..])
}

/// `.` or `..`, also percent-encoded (`%2e`, `.%2E` …).
fn is_dot_segment(segment: &str) -> bool {
    let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
    decoded == "." || decoded == ".."
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_user_info_and_query() {
        assert_eq!(redact("s3://AKIA:SECRET@bucket/p"), "s3://***@bucket/p");
        assert_eq!(redact("s3://bucket/p?secret=x"), "s3://bucket/p?***");
        assert_eq!(redact("http://u:p@h:1/a@b"), "http://***@h:1/a@b");
        assert_eq!(redact("/plain/path"), "/plain/path");
        assert_eq!(redact("weird://a:b@"), "weird://***@");
        assert_eq!(redact("http://ID:se/cr?e#t@host:9/p"), "http://***@host:9/p");
        assert_eq!(redact("http://u:p@ss@host/x@y"), "http://***@host/x@y");
    }

    #[test]
    fn parses_the_schemes() {
        assert_eq!(parse("memory://").unwrap(), Target::Memory);
        assert_eq!(parse("file:///tmp/x").unwrap(), Target::Local("/tmp/x".into()));
        assert_eq!(parse("/tmp/y").unwrap(), Target::Local("/tmp/y".into()));
        assert!(matches!(parse("rel/dir").unwrap(), Target::Local(p) if p.is_absolute() && p.ends_with("rel/dir")));
        #[cfg(feature = "s3")]
        {
            assert_eq!(parse("s3://b/p/q/").unwrap(), Target::S3 { bucket: "b".into(), prefix: "p/q".into() });
            assert_eq!(parse("s3://b").unwrap(), Target::S3 { bucket: "b".into(), prefix: String::new() });
        }
        #[cfg(not(feature = "s3"))]
        assert!(matches!(parse("s3://b/p"), Err(Error::FeatureDisabled { feature }) if feature == "s3"));
    }

    #[test]
    fn rejects_bad_urls_without_leaking_secrets() {
        for bad in [
            "gs://bucket/x",
            "s3://KEYID:TOPSECRET@bucket/p",
            "memory://host",
            "file://otherhost/x",
            "s3:///nobucket",
            "s3://b/a//c",
            "s3://b/p?token=TOPSECRET",
            "s3://b/x/../y",
            "s3://b/../../etc",
            "s3://b/x/%2e%2E/y",
            "s3://b/./x",
            "file:///tmp/a/../b",
            "",
            "ht!tp://x",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(matches!(err, Error::InvalidInput { .. }), "{bad}: {err}");
            let msg = err.to_string();
            assert!(!msg.contains("TOPSECRET"), "{msg}");
            assert!(msg.contains("cache URL"), "{msg}");
        }
        assert!(parse("gs://bucket/x").unwrap_err().to_string().contains("gs://bucket/x"));
    }
}
