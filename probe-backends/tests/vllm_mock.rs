//! The vLLM client against small misbehaving HTTP servers written here (500s, 429s, slow
//! answers, dropped connections, a server dying mid-run, malformed answers). The real-server
//! tests are in `vllm_server.rs`; these cover what a real server will not do on demand.
#![cfg(feature = "vllm")]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use probe_backends::vllm::{VllmGenerator, VllmGeneratorBuilder};
use probe_core::testing::generator_conformance;
use probe_core::{Error, GenerationRequest, Generator, SamplingParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MODEL: &str = "mock-model";

/// A request as the mock server saw it.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: Value,
}

/// What the mock answers.
enum Reply {
    Json(u16, Value),
    Raw(u16, String, Vec<(String, String)>),
    /// Close the connection without answering.
    Drop,
    /// Answer after a delay.
    Slow(Duration, Box<Reply>),
}

type Handler = Arc<dyn Fn(&Request, usize) -> Reply + Send + Sync>;

/// A server on 127.0.0.1 answering with `handler(request, n)` where n counts its requests.
struct Mock {
    url: String,
    seen: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mock {
    async fn start(handler: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let count = Arc::new(AtomicUsize::new(0));
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else { return };
                let (h, s, c) = (handler.clone(), seen2.clone(), count.clone());
                tokio::spawn(async move {
                    let _ = serve_one(sock, h, s, c).await;
                });
            }
        });
        Self { url, seen, task }
    }
    fn requests(&self, path: &str) -> Vec<Request> {
        self.seen.lock().unwrap().iter().filter(|r| r.path == path).cloned().collect()
    }
}

async fn serve_one(
    mut sock: TcpStream,
    handler: Handler,
    seen: Arc<Mutex<Vec<Request>>>,
    count: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("").to_owned();
    let path = first.next().unwrap_or("").to_owned();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..]).unwrap_or(Value::Null);
    let req = Request { method, path, headers, body };
    seen.lock().unwrap().push(req.clone());
    let n = count.fetch_add(1, Ordering::SeqCst);
    let mut reply = handler(&req, n);
    loop {
        match reply {
            Reply::Slow(d, inner) => {
                tokio::time::sleep(d).await;
                reply = *inner;
            }
            Reply::Drop => return Ok(()),
            Reply::Json(status, v) => {
                reply = Reply::Raw(status, v.to_string(), vec![]);
            }
            Reply::Raw(status, text, extra) => {
                let mut out = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                    text.len()
                );
                for (k, v) in extra {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                out.push_str(&text);
                sock.write_all(out.as_bytes()).await?;
                sock.shutdown().await?;
                return Ok(());
            }
        }
    }
}

/// The completion a well-behaved mock gives `prompt`, sample `k`.
fn echo(prompt: &str, k: u64, seed: u64, temperature: f64) -> String {
    if temperature == 0.0 { format!(" <{prompt}>") } else { format!(" <{prompt}|{k}|{seed}>") }
}

/// A correct vLLM-like answer to `req`.
fn good(req: &Request) -> Reply {
    match req.path.as_str() {
        "/v1/models" => Reply::Json(200, json!({"object": "list", "data": [{"id": MODEL, "object": "model"}]})),
        "/v1/completions" => {
            let b = &req.body;
            let n = b["n"].as_u64().unwrap();
            let seed = b["seed"].as_u64().unwrap();
            let t = b["temperature"].as_f64().unwrap();
            let max = b["max_tokens"].as_u64().unwrap() as usize;
            let mut choices = Vec::new();
            for (i, p) in b["prompt"].as_array().unwrap().iter().enumerate() {
                for k in 0..n {
                    let p = p.as_str().unwrap();
                    let ids: Vec<u64> = (0..max as u64).map(|j| p.len() as u64 + j).collect();
                    choices.push(json!({
                        "index": i as u64 * n + k,
                        "text": echo(p, k, seed, t),
                        "finish_reason": "length",
                        "token_ids": ids,
                    }));
                }
            }
            // Answer the choices in reverse order: the client sorts by index.
            choices.reverse();
            Reply::Json(
                200,
                json!({"id": "cmpl-1", "object": "text_completion", "model": b["model"], "choices": choices}),
            )
        }
        _ => Reply::Json(404, json!({"detail": "Not Found"})),
    }
}

fn fast(urls: Vec<String>) -> VllmGeneratorBuilder {
    VllmGenerator::builder()
        .urls(urls)
        .model(MODEL)
        .backoff(Duration::from_millis(1), Duration::from_millis(20))
        .probe_interval(Duration::from_millis(50))
        .request_timeout(Duration::from_secs(30))
}

fn prompts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("prompt number {i}")).collect()
}

fn check_echo(gens: &[probe_core::Generation], prompts: &[String]) {
    assert_eq!(gens.len(), prompts.len());
    for (i, g) in gens.iter().enumerate() {
        assert_eq!(g.prompt_index, i, "prompt order");
        assert_eq!(g.prompt, prompts[i]);
        assert_eq!(g.completion, echo(&prompts[i], 0, 0, 0.0), "completion {i} belongs to its prompt");
    }
}

fn greedy(p: &[String]) -> GenerationRequest {
    GenerationRequest::new(MODEL, p.to_vec()).with_sampling(SamplingParams::greedy(3))
}

#[tokio::test]
async fn conformance_on_a_well_behaved_mock() {
    let m = Mock::start(|r, _| good(r)).await;
    let g = fast(vec![m.url.clone()]).batch_size(1).build().unwrap();
    generator_conformance(&g, MODEL, &["one", "two", "three"]).await;
}

#[tokio::test]
async fn every_sampling_field_is_sent_and_the_key_as_bearer() {
    let m = Mock::start(|r, _| good(r)).await;
    let g = fast(vec![m.url.clone()]).api_key("sk-secret-42").build().unwrap();
    let s = SamplingParams::greedy(7)
        .with_temperature(0.5)
        .with_top_p(0.9)
        .with_top_k(20)
        .with_seed(11)
        .with_stop(vec!["\n".into()]);
    let p = prompts(2);
    g.generate(GenerationRequest::new(MODEL, p.clone()).with_sampling(s)).await.unwrap();
    let reqs = m.requests("/v1/completions");
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "POST");
    let b = &reqs[0].body;
    assert_eq!(b["model"], MODEL);
    assert_eq!(b["prompt"], json!(p));
    assert_eq!(b["max_tokens"], 7);
    assert_eq!(b["temperature"], 0.5);
    assert!((b["top_p"].as_f64().unwrap() - 0.9).abs() < 1e-6);
    assert_eq!(b["top_k"], 20);
    assert_eq!(b["seed"], 11);
    assert_eq!(b["n"], 1);
    assert_eq!(b["stop"], json!(["\n"]));
    assert_eq!(b["return_token_ids"], true);
    for f in ["min_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "min_tokens", "ignore_eos"] {
        assert!(!b[f].is_null(), "{f} is sent");
    }
    for r in m.seen.lock().unwrap().iter() {
        assert_eq!(r.headers.get("authorization").map(String::as_str), Some("Bearer sk-secret-42"), "{}", r.path);
    }
    let shown = format!("{g:?}");
    assert!(!shown.contains("sk-secret-42") && shown.contains("******"), "{shown}");
}

#[tokio::test]
async fn many_prompts_over_three_servers_come_back_in_order() {
    // Answers arrive out of order: the delay depends on the batch's first prompt.
    let slow = |r: &Request, _| {
        let first = r.body["prompt"][0].as_str().map(|p| p.len() % 7).unwrap_or(0);
        Reply::Slow(Duration::from_millis(5 * (7 - first as u64)), Box::new(good(r)))
    };
    let (a, b, c) = (Mock::start(slow).await, Mock::start(slow).await, Mock::start(slow).await);
    let g = fast(vec![a.url.clone(), b.url.clone(), c.url.clone()]).batch_size(3).build().unwrap();
    let p = prompts(101);
    let out = g.generate(greedy(&p)).await.unwrap();
    check_echo(&out, &p);
    let per: Vec<usize> = [&a, &b, &c].iter().map(|m| m.requests("/v1/completions").len()).collect();
    assert_eq!(per.iter().sum::<usize>(), 34, "101 prompts in batches of 3");
    assert!(per.iter().all(|&k| k >= 5), "work is spread over the servers: {per:?}");
    assert_eq!(g.stats().retries, 0);
}

#[tokio::test]
async fn server_errors_and_429_are_retried() {
    let m = Mock::start(|r, n| match (r.path.as_str(), n) {
        ("/v1/completions", 1) => Reply::Json(500, json!({"error": {"message": "engine hiccup"}})),
        ("/v1/completions", 2) => Reply::Json(503, json!({"detail": "overloaded"})),
        ("/v1/completions", 3) => {
            Reply::Raw(429, r#"{"error":{"message":"slow down"}}"#.into(), vec![("retry-after".into(), "0".into())])
        }
        _ => good(r),
    })
    .await;
    let g = fast(vec![m.url.clone()]).failure_threshold(10).build().unwrap();
    let p = prompts(4);
    let out = g.generate(greedy(&p)).await.unwrap();
    check_echo(&out, &p);
    assert_eq!(g.stats().retries, 3, "500, 503 and 429 each retried once");
    assert_eq!(m.requests("/v1/completions").len(), 4);
}

#[tokio::test]
async fn dropped_connections_are_retried() {
    let m = Mock::start(|r, n| if r.path == "/v1/completions" && n % 2 == 1 { Reply::Drop } else { good(r) }).await;
    let g = fast(vec![m.url.clone()]).batch_size(2).max_in_flight_per_server(1).failure_threshold(100).build().unwrap();
    let p = prompts(9);
    let out = g.generate(greedy(&p)).await.unwrap();
    check_echo(&out, &p);
    assert!(g.stats().retries >= 1, "{:?}", g.stats());
}

#[tokio::test]
async fn a_slow_server_times_out_and_the_batch_moves_on() {
    let slow = Mock::start(|r, _| {
        if r.path == "/v1/completions" { Reply::Slow(Duration::from_secs(30), Box::new(good(r))) } else { good(r) }
    })
    .await;
    let ok = Mock::start(|r, _| good(r)).await;
    let g = fast(vec![slow.url.clone(), ok.url.clone()])
        .request_timeout(Duration::from_millis(300))
        .batch_size(2)
        .build()
        .unwrap();
    let p = prompts(10);
    let out = g.generate(greedy(&p)).await.unwrap();
    check_echo(&out, &p);
    assert!(g.stats().retries >= 1, "the timed-out batches were retried: {:?}", g.stats());
}

#[tokio::test]
async fn one_of_three_servers_dying_mid_run() {
    let dying = Mock::start(|r, n| if n >= 3 { Reply::Drop } else { good(r) }).await;
    let (a, b) = (Mock::start(|r, _| good(r)).await, Mock::start(|r, _| good(r)).await);
    let g = fast(vec![dying.url.clone(), a.url.clone(), b.url.clone()])
        .batch_size(1)
        .max_in_flight_per_server(2)
        .failure_threshold(1)
        .build()
        .unwrap();
    let p = prompts(60);
    let out = g.generate(greedy(&p)).await.unwrap();
    check_echo(&out, &p);
    let s = g.stats();
    assert!(s.retries >= 1 && s.servers_taken_out >= 1, "the dead server was taken out: {s:?}");
    assert_eq!(a.requests("/v1/completions").len() + b.requests("/v1/completions").len(), 60 - 2, "{s:?}");
}

#[tokio::test]
async fn a_dead_url_in_the_list_is_taken_out() {
    // A port nothing listens on: bind one, then drop it.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let ok = Mock::start(|r, _| good(r)).await;
    let g = fast(vec![dead, ok.url.clone()]).batch_size(2).build().unwrap();
    let p = prompts(20);
    check_echo(&g.generate(greedy(&p)).await.unwrap(), &p);
    assert_eq!(ok.requests("/v1/completions").len(), 10, "every batch went to the live server");
}

#[tokio::test]
async fn no_server_at_all_is_a_temporary_error() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let g = fast(vec![dead.clone()]).max_retries(3).build().unwrap();
    let e = g.generate(greedy(&prompts(2))).await.unwrap_err();
    assert!(matches!(e, Error::Temporary { .. }) && e.is_retryable(), "{e}");
    assert!(e.to_string().contains(&dead), "the error names the server: {e}");
}

#[tokio::test]
async fn malformed_answers_are_clear_errors() {
    type Bad = fn(&Request) -> Reply;
    let cases: Vec<(Bad, &str)> = vec![
        (|_| Reply::Raw(200, "{not json".into(), vec![]), "not a completion response"),
        (|_| Reply::Json(200, json!({"model": MODEL, "choices": []})), "0 choices for 2 prompts"),
        (
            |r| {
                let Reply::Json(_, mut v) = good(r) else { unreachable!() };
                v["model"] = json!("other-model");
                Reply::Json(200, v)
            },
            "answered with model \"other-model\"",
        ),
        (
            |r| {
                let Reply::Json(_, mut v) = good(r) else { unreachable!() };
                v["choices"][1]["index"] = v["choices"][0]["index"].clone();
                Reply::Json(200, v)
            },
            "appears twice",
        ),
    ];
    for (bad, want) in cases {
        let m = Mock::start(move |r, _| if r.path == "/v1/completions" { bad(r) } else { good(r) }).await;
        let g = fast(vec![m.url.clone()]).build().unwrap();
        let e = g.generate(greedy(&prompts(2))).await.unwrap_err();
        assert!(matches!(e, Error::Backend { .. }), "{e}");
        assert!(e.to_string().contains(want), "{e} should say {want:?}");
        assert!(!e.is_retryable());
        assert_eq!(m.requests("/v1/completions").len(), 1, "not retried");
    }
}

#[tokio::test]
async fn a_server_serving_another_model_is_refused() {
    let m = Mock::start(|r, _| {
        if r.path == "/v1/models" { Reply::Json(200, json!({"data": [{"id": "someone-else"}]})) } else { good(r) }
    })
    .await;
    let g = fast(vec![m.url.clone()]).build().unwrap();
    let e = g.generate(greedy(&prompts(2))).await.unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
    assert!(e.to_string().contains("someone-else"), "{e}");
    assert!(m.requests("/v1/completions").is_empty(), "nothing generated on the wrong model");
}

#[tokio::test]
async fn a_4xx_shows_the_servers_message() {
    let m = Mock::start(|r, _| {
        if r.path == "/v1/completions" {
            Reply::Json(
                400,
                json!({"error": {"message": "This model's maximum context length is 512 tokens", "code": 400}}),
            )
        } else {
            good(r)
        }
    })
    .await;
    let g = fast(vec![m.url.clone()]).build().unwrap();
    let e = g.generate(greedy(&prompts(2))).await.unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
    assert!(e.to_string().contains("maximum context length is 512"), "{e}");
    assert_eq!(m.requests("/v1/completions").len(), 1, "a 4xx is not retried");
}

#[tokio::test]
async fn a_refused_key_is_reported_without_the_key() {
    let m = Mock::start(|_, _| Reply::Json(401, json!({"error": {"message": "Unauthorized"}}))).await;
    let g = fast(vec![m.url.clone()]).api_key("sk-do-not-print").build().unwrap();
    let e = g.generate(greedy(&prompts(2))).await.unwrap_err();
    let shown = format!("{e} {e:?}");
    assert!(shown.contains("Unauthorized") && shown.contains("API key"), "{shown}");
    assert!(!shown.contains("sk-do-not-print"), "{shown}");
}

#[tokio::test]
async fn a_mismatched_request_model_is_refused_before_sending() {
    let m = Mock::start(|r, _| good(r)).await;
    let g = fast(vec![m.url.clone()]).build().unwrap();
    let e = g.generate(GenerationRequest::new("other", prompts(1))).await.unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
    assert!(m.seen.lock().unwrap().is_empty());
    assert_eq!(m.requests("/v1/models").len(), 0);
}
