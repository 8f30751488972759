//! Overhead of the vLLM client (`VllmGenerator`): requests per second against a local
//! OpenAI-compatible server that answers at once, and the client's CPU time per request.
//!
//! The server runs in this process on its own thread (a single-threaded tokio runtime, HTTP/1.1
//! keep-alive, a fixed answer: one choice with 16 tokens of text and token ids), so what is
//! measured is the client: building and sending the JSON body, the connection pool, the
//! least-outstanding-requests scheduling over servers, parsing and checking the answer,
//! putting results back in prompt order. 256 prompts, one per request (`batch_size(1)`), 32
//! requests in flight.
//!
//! After criterion's figure, a measured run prints requests/s and CPU per request: the
//! process's CPU time (`getrusage(RUSAGE_SELF)`) minus the server thread's own
//! (`getrusage(RUSAGE_THREAD)` on that thread), divided by the requests.
//!
//! `cargo bench -p probe-benches --features vllm --bench vllm_client`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use probe_backends::vllm::VllmGenerator;
use probe_core::{GenerationRequest, Generator, SamplingParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MODEL: &str = "bench-model";
const PROMPTS: usize = 256;
const IN_FLIGHT: usize = 32;

/// CPU time (user + system) in microseconds of `who` (`RUSAGE_SELF` or `RUSAGE_THREAD`).
fn cpu_us(who: libc::c_int) -> u64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `struct rusage` into the pointer it is given, which points to
    // zeroed memory of that type.
    let rc = unsafe { libc::getrusage(who, u.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage failed");
    // SAFETY: getrusage returned 0, so it filled the struct (it was zeroed before anyway).
    let u = unsafe { u.assume_init() };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(u.ru_utime) + us(u.ru_stime)
}

/// The local server: its URL and its thread's CPU time so far (µs, updated per answer).
struct Server {
    url: String,
    cpu_us: Arc<AtomicU64>,
}

fn start_server() -> Server {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let cpu = Arc::new(AtomicU64::new(0));
    let cpu2 = cpu.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("server runtime");
        rt.block_on(async move {
            let listener = TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let Ok((sock, _)) = listener.accept().await else { continue };
                let cpu = cpu2.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, cpu).await;
                });
            }
        });
    });
    Server { url, cpu_us: cpu }
}

fn response(body: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len())
        .into_bytes()
}

/// Answers requests on one keep-alive connection until the client closes it.
async fn serve(mut sock: TcpStream, cpu: Arc<AtomicU64>) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let models = response(&format!(r#"{{"object":"list","data":[{{"id":"{MODEL}","object":"model"}}]}}"#));
    let ids: Vec<String> = (0..16).map(|i| (1000 + i).to_string()).collect();
    let completion = response(&format!(
        r#"{{"id":"cmpl-1","object":"text_completion","model":"{MODEL}","choices":[{{"index":0,"text":" {}","finish_reason":"length","token_ids":[{}]}}]}}"#,
        ["word"; 16].join(" "),
        ids.join(",")
    ));
    let mut buf = Vec::with_capacity(8192);
    loop {
        // Headers.
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 8192];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < end + len {
            let mut chunk = [0u8; 8192];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let answer = if head.starts_with("get") { &models } else { &completion };
        buf.drain(..end + len);
        sock.write_all(answer).await?;
        cpu.store(cpu_us(libc::RUSAGE_THREAD), Ordering::Relaxed);
    }
}

fn generator(url: &str) -> VllmGenerator {
    VllmGenerator::builder()
        .url(url)
        .model(MODEL)
        .batch_size(1)
        .max_in_flight_per_server(IN_FLIGHT)
        .request_timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

fn request() -> GenerationRequest {
    let prompts = (0..PROMPTS).map(|i| format!("Prompt number {i}: the quick brown fox jumps over")).collect();
    GenerationRequest::new(MODEL, prompts).with_sampling(SamplingParams::greedy(16))
}

fn bench_client(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let server = start_server();
    let g = generator(&server.url);
    let req = request();
    // Warm up: the model check and the connections.
    let first = rt.block_on(g.generate(req.clone())).expect("generate");
    assert_eq!(first.len(), PROMPTS);

    let mut group = c.benchmark_group("vllm_client");
    group.throughput(Throughput::Elements(PROMPTS as u64)).sample_size(20);
    group.bench_function(format!("{PROMPTS} single-prompt requests, {IN_FLIGHT} in flight"), |b| {
        b.to_async(&rt).iter(|| async { g.generate(req.clone()).await.expect("generate") })
    });
    group.finish();

    // CPU per request.
    let rounds = 20;
    let (self0, server0, t0) = (cpu_us(libc::RUSAGE_SELF), server.cpu_us.load(Ordering::Relaxed), Instant::now());
    for _ in 0..rounds {
        let out = rt.block_on(g.generate(req.clone())).expect("generate");
        assert_eq!(out.len(), PROMPTS);
    }
    let wall = t0.elapsed().as_secs_f64();
    let (self1, server1) = (cpu_us(libc::RUSAGE_SELF), server.cpu_us.load(Ordering::Relaxed));
    let n = (rounds * PROMPTS) as f64;
    let server = (server1 - server0) as f64;
    let client = (self1 - self0) as f64 - server;
    println!(
        "vllm_client: {n} requests in {wall:.3} s = {:.0} requests/s; client CPU {:.1} µs/request, local server \
         CPU {:.1} µs/request (getrusage)",
        n / wall,
        client / n,
        server / n
    );
}

criterion_group!(benches, bench_client);
criterion_main!(benches);
