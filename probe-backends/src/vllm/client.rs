//! [`VllmGenerator`]: a [`Generator`] over one or many OpenAI-compatible (vLLM) servers.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt, stream};
use probe_core::{
    Capabilities, Error, Generation, GenerationRequest, Generator, ModelId, Result, SamplingParams, SpecialTokens,
};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};

use super::BACKEND;
use super::config::{ApiKey, ClientConfig, VllmGeneratorBuilder};
use super::pool::{Lease, Pick, Pool};
use super::wire::{CompletionBody, error_message, parse_completions, parse_models};

/// Generates with vLLM (or any OpenAI-compatible completions server) over HTTP.
///
/// Prompts are sent `batch_size` to a request to `POST /v1/completions`, with many requests
/// in flight, each to the server with the fewest outstanding requests. Connection errors,
/// timeouts, HTTP 5xx and 429 are retried with exponential back-off and jitter, preferably on
/// another server; a server failing `failure_threshold` times in a row is taken out and probed
/// again (`GET /v1/models`) every `probe_interval`. Each server's model list is checked before
/// its first use, and every response's `model`. Results come back in prompt order.
///
/// Build it with [`VllmGenerator::builder`]. Cheap to share by reference; not `Clone`
/// (wrap it in an `Arc`).
pub struct VllmGenerator {
    http: reqwest::Client,
    pool: Pool,
    api_key: Option<ApiKey>,
    config: ClientConfig,
    stats: Counters,
}

/// Counts of what the client did, for logs, tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// Completion requests sent (every attempt).
    pub requests: u64,
    /// Attempts that failed in a retryable way and were retried.
    pub retries: u64,
    /// Health probes (`GET /v1/models`) sent.
    pub probes: u64,
    /// Times a server was taken out after failing repeatedly.
    pub servers_taken_out: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    retries: AtomicU64,
    probes: AtomicU64,
    taken_out: AtomicU64,
}

/// The outcome of one attempt.
enum Attempt {
    Done(Vec<u8>),
    Retry { message: String, retry_after: Option<Duration> },
    Fatal(Error),
}

impl fmt::Debug for VllmGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VllmGenerator")
            .field("urls", &self.pool.urls())
            .field("model", &self.config.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "******"))
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl VllmGenerator {
    /// A builder; see [`VllmGeneratorBuilder`].
    pub fn builder() -> VllmGeneratorBuilder {
        VllmGeneratorBuilder::new()
    }

    pub(crate) fn from_parts(urls: Vec<String>, api_key: Option<ApiKey>, config: ClientConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .pool_max_idle_per_host(config.max_in_flight_per_server.max(1))
            .build()
            .map_err(|e| Error::backend(BACKEND, format!("cannot build the HTTP client: {e}")))?;
        let pool = Pool::new(urls, config.failure_threshold, config.probe_interval);
        Ok(Self { http, pool, api_key, config, stats: Counters::default() })
    }

    /// The servers' base URLs, normalised.
    pub fn urls(&self) -> &[String] {
        self.pool.urls()
    }

    /// The served model name every request names.
    pub fn served_model(&self) -> &str {
        &self.config.model
    }

    /// Requests in flight at most: per server times the number of servers.
    pub fn max_in_flight(&self) -> usize {
        self.config.max_in_flight_per_server.max(1) * self.pool.urls().len()
    }

    /// What the client has done so far.
    pub fn stats(&self) -> ClientStats {
        ClientStats {
            requests: self.stats.requests.load(Ordering::Relaxed),
            retries: self.stats.retries.load(Ordering::Relaxed),
            probes: self.stats.probes.load(Ordering::Relaxed),
            servers_taken_out: self.stats.taken_out.load(Ordering::Relaxed),
        }
    }

    /// Probes every server now (`GET /v1/models`) and returns how many answered and serve
    /// the model. Servers that do not answer are out until their next probe.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when a server serves other models only, a backend error when
    /// it refuses the API key, and [`Error::Temporary`] when no server answered.
    pub async fn check_servers(&self) -> Result<usize> {
        let now = Instant::now();
        let results = futures::future::join_all((0..self.pool.urls().len()).map(|i| self.probe(i))).await;
        let mut up = 0;
        let mut last = String::new();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(()) => {
                    self.pool.probe_done(i, true, now);
                    up += 1;
                }
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry { message, .. }) => {
                    self.pool.probe_done(i, false, now);
                    last = message;
                }
                Err(Attempt::Done(_)) => unreachable!("a probe never returns a body"),
            }
        }
        if up == 0 {
            return Err(Error::Temporary { backend: BACKEND.into(), message: format!("no server answered: {last}") });
        }
        Ok(up)
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(k) => rb.bearer_auth(k.expose()),
            None => rb,
        }
    }

    /// `GET /v1/models` on server `i`: `Ok` when it lists the model.
    async fn probe(&self, i: usize) -> std::result::Result<(), Attempt> {
        self.stats.probes.fetch_add(1, Ordering::Relaxed);
        let url = format!("{}/v1/models", self.pool.urls()[i]);
        let resp = self
            .auth(self.http.get(&url).timeout(self.config.probe_timeout))
            .send()
            .await
            .map_err(|e| Attempt::Retry { message: describe(&url, &e), retry_after: None })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| Attempt::Retry { message: describe(&url, &e), retry_after: None })?;
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(Attempt::Fatal(refused_key(&url, status, &body)));
        }
        if !status.is_success() {
            let message = format!("{url} answered {status}: {}", error_message(&String::from_utf8_lossy(&body)));
            return Err(Attempt::Retry { message, retry_after: None });
        }
        let ids =
            parse_models(&url, &body).map_err(|e| Attempt::Retry { message: e.to_string(), retry_after: None })?;
        if !ids.contains(&self.config.model) {
            return Err(Attempt::Fatal(Error::invalid(
                "model",
                format!("{url} serves {ids:?}, not {:?}", self.config.model),
            )));
        }
        Ok(())
    }

    /// One `POST /v1/completions` to server `i`.
    async fn send(&self, i: usize, body: &[u8]) -> Attempt {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let url = format!("{}/v1/completions", self.pool.urls()[i]);
        let rb = self
            .http
            .post(&url)
            .timeout(self.config.request_timeout)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        let resp = match self.auth(rb).send().await {
            Ok(r) => r,
            Err(e) => return Attempt::Retry { message: describe(&url, &e), retry_after: None },
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(60.0)));
        let bytes = match resp.bytes().await {
            Ok(b) => b.to_vec(),
            Err(e) => return Attempt::Retry { message: describe(&url, &e), retry_after: None },
        };
        if status.is_success() {
            return Attempt::Done(bytes);
        }
        let msg = error_message(&String::from_utf8_lossy(&bytes));
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Attempt::Retry { message: format!("{url} answered {status}: {msg}"), retry_after };
        }
        Attempt::Fatal(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => refused_key(&url, status, &bytes),
            StatusCode::BAD_REQUEST
            | StatusCode::NOT_FOUND
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::UNPROCESSABLE_ENTITY => {
                Error::invalid("vllm request", format!("{url} refused the request ({status}): {msg}"))
            }
            _ => Error::backend(BACKEND, format!("{url} answered {status}: {msg}")),
        })
    }

    /// Generates one batch (prompts `first..first + prompts.len()`), retrying as configured.
    async fn run_batch(
        &self,
        first: usize,
        prompts: &[String],
        s: &SamplingParams,
        special: SpecialTokens,
    ) -> Result<(usize, Vec<Generation>)> {
        let body =
            CompletionBody::new(&self.config.model, prompts, s, self.config.return_token_ids)?.special_tokens(special);
        let body = serde_json::to_vec(&body).map_err(|e| Error::backend(BACKEND, e))?;
        let span = format!("prompts {first}..{}", first + prompts.len());
        let parse = |url: String, bytes: Vec<u8>| {
            std::future::ready(parse_completions(&url, &bytes, &self.config.model, prompts, first, s.n))
        };
        self.complete(&span, &body, parse).await.map(|g| (first, g))
    }

    /// Sends the completion request `body` (`span` names it in logs and errors) to the pool's
    /// best server, retrying as configured, and turns a successful answer into a value with
    /// `parse(server_url, body)`, still holding the server's lease (an answer that needs more
    /// from the server, such as a file it writes, counts against that server). A `parse`
    /// error of kind [`Error::Temporary`] is retried like a failed request; any other is final.
    pub(crate) async fn complete<T, F, Fut>(&self, span: &str, body: &[u8], parse: F) -> Result<T>
    where
        F: Fn(String, Vec<u8>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let retry = self.config.retry;
        let mut failures = 0u32;
        let mut last = String::from("no server was reachable");
        loop {
            let mut wait = None;
            match self.pool.pick(Instant::now()) {
                Pick::Wait { until, probing } => {
                    if !probing {
                        failures += 1;
                        last = format!("every server is out ({last})");
                    }
                    wait = Some(until.saturating_duration_since(Instant::now()));
                }
                Pick::Probe(i) => match self.probe(i).await {
                    Ok(()) => {
                        self.pool.probe_done(i, true, Instant::now());
                        tracing::info!(server = %self.pool.urls()[i], "vllm: server is up and serves the model");
                    }
                    Err(Attempt::Fatal(e)) => {
                        self.pool.probe_done(i, false, Instant::now());
                        return Err(e);
                    }
                    Err(Attempt::Retry { message, .. }) => {
                        self.pool.probe_done(i, false, Instant::now());
                        tracing::warn!("vllm: probe failed, server stays out: {message}");
                        failures += 1;
                        last = message;
                    }
                    Err(Attempt::Done(_)) => unreachable!("a probe never returns a body"),
                },
                Pick::Use(i) => {
                    let lease = Lease::new(&self.pool, i);
                    let attempt = match self.send(i, body).await {
                        Attempt::Done(bytes) => match parse(self.pool.urls()[i].clone(), bytes).await {
                            Ok(v) => {
                                self.pool.success(i);
                                return Ok(v);
                            }
                            Err(Error::Temporary { message, .. }) => Attempt::Retry { message, retry_after: None },
                            Err(e) => return Err(e),
                        },
                        other => other,
                    };
                    match attempt {
                        Attempt::Done(_) => unreachable!("an answer was parsed above"),
                        Attempt::Fatal(e) => return Err(e),
                        Attempt::Retry { message, retry_after } => {
                            drop(lease);
                            failures += 1;
                            if self.pool.failure(i, Instant::now()) {
                                self.stats.taken_out.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(
                                    "vllm: taking {} out after {} failures in a row; probing it again in {:?}",
                                    self.pool.urls()[i],
                                    self.config.failure_threshold,
                                    self.config.probe_interval
                                );
                            }
                            let d = retry.delay(failures).max(retry_after.unwrap_or_default());
                            if failures <= retry.max_retries {
                                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(
                                    "vllm: {message}; retrying {span} in {d:.2?} (retry {failures}/{})",
                                    retry.max_retries
                                );
                            }
                            last = message;
                            wait = Some(d);
                        }
                    }
                }
            }
            if failures > retry.max_retries {
                return Err(Error::Temporary {
                    backend: BACKEND.into(),
                    message: format!("{span} failed after {failures} attempts; last error: {last}"),
                });
            }
            if let Some(d) = wait {
                tokio::time::sleep(d).await;
            }
        }
    }
}

/// A reqwest error with its causes, naming the URL (which never holds the key).
fn describe(url: &str, e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "reading the answer failed"
    } else {
        "request failed"
    };
    match std::error::Error::source(e) {
        Some(cause) => format!("{url}: {kind}: {}", crate::with_causes(cause)),
        None => format!("{url}: {kind}"),
    }
}

fn refused_key(url: &str, status: StatusCode, body: &[u8]) -> Error {
    Error::backend(
        BACKEND,
        format!(
            "{url} refused the request ({status}): {} (check the API key setting)",
            error_message(&String::from_utf8_lossy(body))
        ),
    )
}

impl VllmGenerator {
    /// The checks of a generation request before anything is sent: valid, for the served
    /// model, a seed the server takes.
    fn check(&self, request: &GenerationRequest) -> Result<()> {
        request.validate()?;
        if !request.sampling.steering.is_empty() {
            return Err(Error::not_supported(
                "steering (--steer-*): the candle backend steers in process; vLLM has no steering plugin yet",
                BACKEND,
            ));
        }
        if request.model != self.config.model {
            return Err(Error::invalid(
                "model",
                format!("{:?} is not served here (serving {:?})", request.model, self.config.model),
            ));
        }
        CompletionBody::new(&self.config.model, &[], &request.sampling, false).map(drop)
    }

    /// Generates one completion per prompt, one prompt per request (a server with the
    /// hidden-states connector names one file per request), asking the server to keep the
    /// completion's hidden states too; `keep(server, answer, generation)` takes each answer
    /// before its generation (with token ids) is returned, in prompt order.
    ///
    /// # Errors
    /// As [`Generator::generate`], and `keep`'s; [`Error::InvalidInput`] for `n ≠ 1`.
    pub(crate) async fn generate_each<F, Fut>(&self, request: &GenerationRequest, keep: F) -> Result<Vec<Generation>>
    where
        F: Fn(String, Vec<u8>, &Generation) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        self.check(request)?;
        let s = &request.sampling;
        if s.n != 1 {
            return Err(Error::invalid(
                "n",
                format!("{} (servers that write hidden states generate one sample per prompt)", s.n),
            ));
        }
        let one = |i: usize| {
            let keep = &keep;
            async move {
                let prompt = std::slice::from_ref(&request.prompts[i]);
                let mut body =
                    CompletionBody::new(&self.config.model, prompt, s, true)?.special_tokens(request.special_tokens);
                body.kv_transfer_params = Some(serde_json::json!({"include_output_tokens": true}));
                let body = serde_json::to_vec(&body).map_err(|e| Error::backend(BACKEND, e))?;
                let parse = |url: String, bytes: Vec<u8>| async move {
                    let g = parse_completions(&url, &bytes, &self.config.model, prompt, i, 1)?.remove(0);
                    keep(url, bytes, &g).await.map(|()| g)
                };
                self.complete(&format!("prompt {i}"), &body, parse).await
            }
        };
        stream::iter((0..request.prompts.len()).map(one)).buffered(self.max_in_flight()).try_collect().await
    }
}

#[async_trait]
impl Generator for VllmGenerator {
    async fn generate(&self, request: GenerationRequest) -> Result<Vec<Generation>> {
        self.check(&request)?;
        let bs = self.config.batch_size;
        let in_flight = self.config.max_in_flight_per_server * self.pool.urls().len();
        let (sampling, special) = (&request.sampling, request.special_tokens);
        let work: Vec<_> = request
            .prompts
            .chunks(bs)
            .enumerate()
            .map(|(c, chunk)| self.run_batch(c * bs, chunk, sampling, special))
            .collect();
        let mut batches: Vec<(usize, Vec<Generation>)> =
            stream::iter(work).buffer_unordered(in_flight).try_collect().await?;
        batches.sort_unstable_by_key(|(first, _)| *first);
        Ok(batches.into_iter().flat_map(|(_, g)| g).collect())
    }

    fn model_id(&self) -> ModelId {
        ModelId::new(self.config.model.clone(), self.config.revision.clone())
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::none();
        c.sampling = true;
        c.seeded_sampling = true;
        c.stop_strings = true;
        c.token_ids = self.config.return_token_ids;
        c.multiple_samples = true;
        c
    }
}
