//! Streamed responses through `idemp serve` (the real binary, memory store):
//!
//! * **time to first byte** of a guarded server-sent-events response, direct and
//!   through the proxy (each request a fresh key, so every one claims, streams and
//!   records): p50 and p99, interleaved so that load from elsewhere falls on both;
//! * **peak proxy RSS** (VmHWM) with 16 concurrent guarded 64 MiB responses, each
//!   read to its end by its client, with the default 8 MiB stored-response limit.
//!
//! ```text
//! cargo bench -p idemp-cli --bench proxy_stream              # 500 requests per target
//! STREAM_BENCH_REQUESTS=2000 cargo bench -p idemp-cli --bench proxy_stream
//! ```
//!
//! Output lines (read by bench/areas/proxy_stream.py):
//! `ttfb TARGET n=N p50_us=X p99_us=Y` and
//! `rss responses=16 size_mib=64 baseline_kib=B peak_kib=P bytes_read=R`.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::proxy;
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, Infallible>;

const EVENT: &[u8] = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n";

/// `/sse`: the first event at once, then 9 more 1 ms apart (a model streaming);
/// `/big`: 64 MiB in 64 KiB frames.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let path = req.uri().path().to_owned();
                        let _ = req.into_body().collect().await;
                        let body: Body = if path == "/big" {
                            let chunk = Bytes::from(vec![b'b'; 64 << 10]);
                            StreamBody::new(futures_util::stream::iter(
                                (0..1024).map(move |_| Ok(Frame::data(chunk.clone()))),
                            ))
                            .boxed()
                        } else {
                            let events = futures_util::stream::unfold(0u32, |i| async move {
                                if i >= 10 {
                                    return None;
                                }
                                if i > 0 {
                                    tokio::time::sleep(Duration::from_millis(1)).await;
                                }
                                Some((Ok(Frame::data(Bytes::from_static(EVENT))), i + 1))
                            });
                            StreamBody::new(events).boxed()
                        };
                        let ct = if path == "/big" {
                            "application/octet-stream"
                        } else {
                            "text/event-stream"
                        };
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", ct)
                                .body(body)
                                .unwrap(),
                        )
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(c)
}

/// Sends one guarded POST; returns the time to the first body byte, then reads the
/// rest. Returns the bytes read too.
async fn one(c: &HttpClient, addr: SocketAddr, path: &str, key: &str) -> (Duration, usize) {
    let req = Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from_static(
            br#"{"model":"m","stream":true}"#,
        )))
        .unwrap();
    let t0 = Instant::now();
    let res = c.request(req).await.expect("request");
    let mut body = res.into_body();
    let mut first = None;
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.expect("body").into_data() {
            if !d.is_empty() && first.is_none() {
                first = Some(t0.elapsed());
            }
            n += d.len();
        }
    }
    (first.unwrap_or_else(|| t0.elapsed()), n)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us too: be quick then.
    let quick =
        std::env::args().any(|a| a == "--test") || !std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("STREAM_BENCH_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 20 } else { 500 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let up = upstream().await;
        let p = proxy(up, "memory:");
        let c = client();
        println!("proxy stream bench: {n} guarded SSE requests per target, interleaved, unique keys, 2 shared cores");
        // Warm the connection pools.
        for i in 0..5 {
            one(&c, up, "/sse", &format!("warm-d-{i}")).await;
            one(&c, p.addr, "/sse", &format!("warm-p-{i}")).await;
        }
        let (mut direct, mut proxied) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            direct.push(one(&c, up, "/sse", &format!("d-{i}")).await.0);
            proxied.push(one(&c, p.addr, "/sse", &format!("p-{i}")).await.0);
        }
        direct.sort();
        proxied.sort();
        for (name, v) in [("direct", &direct), ("proxy", &proxied)] {
            println!(
                "ttfb {name} n={} p50_us={:.1} p99_us={:.1}",
                v.len(),
                pct(v, 0.5),
                pct(v, 0.99)
            );
        }
        drop(p);

        // Peak RSS: a fresh proxy, 16 concurrent 64 MiB guarded responses.
        let p = proxy(up, "memory:");
        let pid = p.child.id();
        let baseline = status_kib(pid, "VmRSS:");
        let responses = if quick { 4 } else { 16 };
        let mut tasks = Vec::new();
        for i in 0..responses {
            let c = c.clone();
            let addr = p.addr;
            tasks.push(tokio::spawn(async move {
                one(&c, addr, "/big", &format!("big-{i}")).await.1
            }));
        }
        let mut read = 0;
        for t in tasks {
            read += t.await.unwrap();
        }
        let peak = status_kib(pid, "VmHWM:");
        println!(
            "rss responses={responses} size_mib=64 baseline_kib={baseline} peak_kib={peak} bytes_read={read}"
        );
    });
}
