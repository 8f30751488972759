//! Configuration of the vLLM client: the builder, the redacted API key and the retry policy.

use std::fmt;
use std::time::Duration;

use probe_core::{Error, Result};

use super::client::VllmGenerator;

/// An API key. It is sent as a bearer token and never printed: `Debug` and `Display` show
/// `******`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }
    /// The key itself, for the `Authorization` header only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(******)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("******")
    }
}

/// How failed requests are retried: connection errors, timeouts, HTTP 5xx and 429.
///
/// The delay before retry `k` (1-based) is `base × 2^(k-1)`, capped at `max_delay`, times a
/// random factor in [0.5, 1] (jitter), and at least the server's `Retry-After` for a 429.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Retries after the first attempt (so `max_retries + 1` attempts in all).
    pub max_retries: u32,
    /// Delay before the first retry.
    pub base_delay: Duration,
    /// Largest delay between two attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_retries: 6, base_delay: Duration::from_millis(250), max_delay: Duration::from_secs(10) }
    }
}

impl RetryPolicy {
    /// The delay before retry `retry` (1-based), with jitter.
    pub(crate) fn delay(&self, retry: u32) -> Duration {
        let exp = self.base_delay.saturating_mul(1u32 << retry.saturating_sub(1).min(20));
        let capped = exp.min(self.max_delay);
        capped.mul_f64(rand::random_range(0.5..=1.0))
    }
}

/// Everything the client needs besides the server list and the key.
#[derive(Debug, Clone)]
pub(crate) struct ClientConfig {
    pub(crate) model: String,
    pub(crate) revision: String,
    pub(crate) batch_size: usize,
    pub(crate) max_in_flight_per_server: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) probe_timeout: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) failure_threshold: u32,
    pub(crate) probe_interval: Duration,
    pub(crate) return_token_ids: bool,
}

/// Builds a [`VllmGenerator`].
///
/// ```no_run
/// # fn main() -> probe_core::Result<()> {
/// use probe_backends::vllm::VllmGenerator;
/// let generator = VllmGenerator::builder()
///     .urls(["http://10.0.0.1:8000", "http://10.0.0.2:8000"])
///     .model("meta-llama/Llama-3.1-8B-Instruct")
///     .api_key_from_env("VLLM_API_KEY")
///     .batch_size(32)
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct VllmGeneratorBuilder {
    urls: Vec<String>,
    api_key: Option<ApiKey>,
    config: ClientConfig,
}

impl fmt::Debug for VllmGeneratorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VllmGeneratorBuilder")
            .field("urls", &self.urls)
            .field("api_key", &self.api_key.as_ref().map(|_| "******"))
            .field("config", &self.config)
            .finish()
    }
}

impl Default for VllmGeneratorBuilder {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            api_key: None,
            config: ClientConfig {
                model: String::new(),
                revision: String::new(),
                batch_size: probe_core::DEFAULT_BATCH_SIZE,
                max_in_flight_per_server: 4,
                request_timeout: Duration::from_secs(600),
                connect_timeout: Duration::from_secs(10),
                probe_timeout: Duration::from_secs(10),
                retry: RetryPolicy::default(),
                failure_threshold: 3,
                probe_interval: Duration::from_secs(5),
                return_token_ids: true,
            },
        }
    }
}

impl VllmGeneratorBuilder {
    /// A builder with the defaults: 16 prompts per request, 4 requests in flight per server,
    /// a 600 s request timeout, [`RetryPolicy::default`], a server taken out after 3
    /// failures in a row and probed again every 5 s, token ids requested.
    pub fn new() -> Self {
        Self::default()
    }
    /// The servers' base URLs (`http://host:port`, with or without a trailing `/` or `/v1`).
    pub fn urls<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.urls = urls.into_iter().map(Into::into).collect();
        self
    }
    /// Adds one server URL.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.urls.push(url.into());
        self
    }
    /// The served model name every request names and every response must carry.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.config.model = model.into();
        self
    }
    /// The revision reported by `model_id()` for cache keys (vLLM reports none; empty by
    /// default). Set it to something that changes when the served weights change.
    pub fn revision(mut self, revision: impl Into<String>) -> Self {
        self.config.revision = revision.into();
        self
    }
    /// The API key sent as a bearer token.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(ApiKey::new(key));
        self
    }
    /// The API key from the environment variable `var` (`OPENAI_API_KEY`, `VLLM_API_KEY`);
    /// no key when it is unset or empty.
    pub fn api_key_from_env(mut self, var: &str) -> Self {
        if let Ok(k) = std::env::var(var)
            && !k.is_empty()
        {
            self.api_key = Some(ApiKey::new(k));
        }
        self
    }
    /// Prompts per request (≥ 1).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.config.batch_size = n;
        self
    }
    /// Requests in flight per server (≥ 1); the total is this times the number of servers.
    pub fn max_in_flight_per_server(mut self, n: usize) -> Self {
        self.config.max_in_flight_per_server = n;
        self
    }
    /// Time limit of one request, from sending to the end of the answer.
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.config.request_timeout = t;
        self
    }
    /// Time limit for opening a connection.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.config.connect_timeout = t;
        self
    }
    /// Time limit of a health probe (`GET /v1/models`).
    pub fn probe_timeout(mut self, t: Duration) -> Self {
        self.config.probe_timeout = t;
        self
    }
    /// The retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.config.retry = retry;
        self
    }
    /// Retries after the first attempt.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.config.retry.max_retries = n;
        self
    }
    /// Delay before the first retry, and the cap of the exponential back-off.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.config.retry.base_delay = base;
        self.config.retry.max_delay = max;
        self
    }
    /// Failures in a row after which a server is taken out (≥ 1).
    pub fn failure_threshold(mut self, n: u32) -> Self {
        self.config.failure_threshold = n;
        self
    }
    /// How long a server stays out before it is probed again.
    pub fn probe_interval(mut self, t: Duration) -> Self {
        self.config.probe_interval = t;
        self
    }
    /// Whether to ask for completion token ids (`return_token_ids`, vLLM ≥ 0.10). Turn it
    /// off for servers that refuse the field.
    pub fn return_token_ids(mut self, on: bool) -> Self {
        self.config.return_token_ids = on;
        self
    }

    /// Checks the settings and builds the client. Nothing is contacted yet: each server's
    /// model list is checked before its first use.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for no URL, a URL that is not `http(s)://host[:port]`, an
    /// empty model name, or a zero batch size, concurrency or failure threshold.
    pub fn build(self) -> Result<VllmGenerator> {
        if self.urls.is_empty() {
            return Err(Error::invalid("vllm urls", "no server URL given"));
        }
        let urls = self.urls.iter().map(|u| normalize_url(u)).collect::<Result<Vec<_>>>()?;
        if self.config.model.is_empty() {
            return Err(Error::invalid("model", "empty model name (the served model name is required)"));
        }
        for (what, v) in [
            ("batch_size", self.config.batch_size),
            ("max_in_flight_per_server", self.config.max_in_flight_per_server),
            ("failure_threshold", self.config.failure_threshold as usize),
        ] {
            if v == 0 {
                return Err(Error::invalid(what, "0 (must be ≥ 1)"));
            }
        }
        VllmGenerator::from_parts(urls, self.api_key, self.config)
    }
}

/// `http(s)://host[:port][/prefix]` without a trailing `/` or `/v1`.
pub(crate) fn normalize_url(raw: &str) -> Result<String> {
    // A URL that does not parse may still hold user info (`http://user:se/cret@host`): never echo it.
    let shown = if raw.contains('@') { "(a URL with user info, not shown)".to_owned() } else { format!("{raw:?}") };
    let parsed = reqwest::Url::parse(raw.trim()).map_err(|e| Error::invalid("vllm url", format!("{shown}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(Error::invalid("vllm url", format!("{shown} (expected http://host:port)")));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::invalid("vllm url", "credentials in a URL are not accepted; use the API key setting"));
    }
    let mut s = parsed.as_str().trim_end_matches('/').to_owned();
    if let Some(stripped) = s.strip_suffix("/v1") {
        s = stripped.to_owned();
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalised() {
        assert_eq!(normalize_url("http://127.0.0.1:8000/").unwrap(), "http://127.0.0.1:8000");
        assert_eq!(normalize_url("http://h:1/v1").unwrap(), "http://h:1");
        assert_eq!(normalize_url(" https://h/prefix/v1/ ").unwrap(), "https://h/prefix");
        for bad in ["127.0.0.1:8000", "ftp://h", "http://user:pw@h:1", ""] {
            assert!(matches!(normalize_url(bad), Err(Error::InvalidInput { .. })), "{bad} refused");
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let r =
            RetryPolicy { max_retries: 9, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1) };
        for k in 1..=9 {
            let d = r.delay(k);
            let full = Duration::from_millis(100 * (1 << (k - 1))).min(Duration::from_secs(1));
            assert!(d <= full && d >= full / 2, "retry {k}: {d:?} within [{:?}, {full:?}]", full / 2);
        }
        assert!(r.delay(40) <= Duration::from_secs(1), "huge retry counts do not overflow");
    }

    #[test]
    fn builder_refuses_bad_settings() {
        let ok = || VllmGeneratorBuilder::new().url("http://127.0.0.1:1").model("m");
        assert!(ok().build().is_ok());
        assert!(VllmGeneratorBuilder::new().model("m").build().is_err(), "no url");
        assert!(VllmGeneratorBuilder::new().url("http://h:1").build().is_err(), "no model");
        assert!(ok().batch_size(0).build().is_err());
        assert!(ok().max_in_flight_per_server(0).build().is_err());
        assert!(ok().failure_threshold(0).build().is_err());
    }

    #[test]
    fn api_key_is_redacted_in_debug() {
        let secret = "sk-very-secret-123";
        let b = VllmGeneratorBuilder::new().url("http://127.0.0.1:1").model("m").api_key(secret);
        let shown = format!("{b:?} {:?} {}", ApiKey::new(secret), ApiKey::new(secret));
        assert!(!shown.contains(secret), "the key leaked: {shown}");
        assert!(shown.contains("******"));
        let g = b.build().unwrap();
        let shown = format!("{g:?} {g:#?}");
        assert!(!shown.contains(secret), "the key leaked: {shown}");
        assert!(shown.contains("******"), "{shown}");
    }

    #[test]
    fn urls_with_user_info_are_refused_without_being_echoed() {
        for url in
            ["http://u:sk-very-secret@127.0.0.1:1", "http://u:sk-very-secret/x@127.0.0.1:1", "ftp://u:sk-very-secret@h"]
        {
            let e = normalize_url(url).unwrap_err().to_string();
            assert!(!e.contains("very-secret"), "{e}");
        }
    }
}
