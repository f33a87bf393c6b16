//! `idemp serve` overhead: a small closed-loop load generator (hyper client) against a
//! fixed fast upstream on loopback, direct and through the real `idemp` binary with
//! the memory and SQLite stores, at concurrency 1, 16 and 64, with unique keys (every
//! request claims, runs and stores) and with replays (every request is a duplicate).
//!
//! ```text
//! cargo bench -p idemp-cli --bench proxy            # 2 s per cell
//! PROXY_BENCH_SECS=5 cargo bench -p idemp-cli --bench proxy
//! ```
//!
//! The upstream, the load generator and the proxy share the machine's cores, so the
//! ratios (proxy vs direct, measured in the same run) matter more than the absolutes.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::proxy;
use tokio::net::TcpListener;

const BODY: &[u8] = br#"{"model":"m","messages":[{"role":"user","content":"charge 10 EUR to card 4242"}],"max_tokens":64}"#;

/// An upstream that answers every request at once with a small JSON body.
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
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(201)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(
                                    br#"{"id":"ch_1","status":"succeeded"}"#,
                                )))
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

#[derive(Clone, Copy, PartialEq)]
enum Keys {
    /// A fresh key per request: claim + upstream + complete.
    Unique,
    /// One key per worker, stored once: every later request is a replay.
    Replay,
    /// No key: the proxy passes the request through (the cost of the extra hop).
    None,
}

/// Latencies and errors of one slice of load.
#[derive(Default)]
struct Cell {
    latencies: Vec<Duration>,
    seconds: f64,
    errors: u64,
}

impl Cell {
    fn add(&mut self, other: Cell) {
        self.latencies.extend(other.latencies);
        self.seconds += other.seconds;
        self.errors += other.errors;
    }
    fn rps(&self) -> f64 {
        self.latencies.len() as f64 / self.seconds
    }
    fn pct(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        let n = self.latencies.len();
        self.latencies
            .get(((n as f64 * p) as usize).min(n.saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    }
}

async fn load(target: SocketAddr, concurrency: usize, keys: Keys, secs: f64) -> Cell {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build(connector);
    let uri: http::Uri = format!("http://{target}/v1/charges").parse().unwrap();
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let errors = Arc::new(AtomicU64::new(0));
    let send = {
        let (uri, client, errors) = (uri.clone(), client.clone(), errors.clone());
        move |key: String| {
            let mut req = Request::post(uri.clone())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(BODY)))
                .unwrap();
            if let Ok(v) = http::HeaderValue::from_str(&key)
                && !key.is_empty()
            {
                req.headers_mut().insert("idempotency-key", v);
            }
            let client = client.clone();
            let errors = errors.clone();
            async move {
                match client.request(req).await {
                    Ok(res) => {
                        let status = res.status();
                        let ok = status.is_success();
                        let _ = res.into_body().collect().await;
                        if !ok {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    };
    // Warm-up: open the connections and, for replays, store each worker's key.
    for w in 0..concurrency {
        send(format!("r{run}-w{w}")).await;
    }
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let send = send.clone();
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 14);
            let mut i = 0u64;
            while Instant::now() < deadline {
                let key = match keys {
                    Keys::Unique => format!("u{run}-w{w}-{i}"),
                    Keys::Replay => format!("r{run}-w{w}"),
                    Keys::None => String::new(),
                };
                let t0 = Instant::now();
                send(key).await;
                lat.push(t0.elapsed());
                i += 1;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    Cell {
        latencies: all,
        seconds: start.elapsed().as_secs_f64(),
        errors: errors.load(Ordering::Relaxed),
    }
}

/// Interleaved slices per cell.
const ROUNDS: usize = 4;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us too: be quick then.
    let quick =
        std::env::args().any(|a| a == "--test") || !std::env::args().any(|a| a == "--bench");
    let secs: f64 = std::env::var("PROXY_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 0.2 } else { 2.0 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let up = upstream().await;
        let dir = tempfile::tempdir().unwrap();
        let sqlite = format!("sqlite://{}", dir.path().join("bench.db").display());
        let mem = proxy(up, "memory:");
        let sql = proxy(up, &sqlite);
        println!("proxy bench: {secs} s per cell in {ROUNDS} interleaved slices, 2 shared cores (upstream + load generator in one process, proxy in another)");
        println!(
            "{:<22} {:>5} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "target", "conc", "req/s", "p50 µs", "p99 µs", "+p50 µs", "% direct", "errors"
        );
        for conc in [1usize, 16, 64] {
            // The machine is shared: run every target in short interleaved slices so
            // that load from elsewhere falls on all of them alike.
            let targets = [
                ("direct", up, Keys::Unique),
                ("pass-through (no key)", mem.addr, Keys::None),
                ("memory unique keys", mem.addr, Keys::Unique),
                ("memory replays", mem.addr, Keys::Replay),
                ("sqlite unique keys", sql.addr, Keys::Unique),
                ("sqlite replays", sql.addr, Keys::Replay),
            ];
            let mut cells: Vec<Cell> = targets.iter().map(|_| Cell::default()).collect();
            for _ in 0..ROUNDS {
                for (i, (_, addr, keys)) in targets.iter().enumerate() {
                    cells[i].add(load(*addr, conc, *keys, secs / ROUNDS as f64).await);
                }
            }
            let direct_p50 = cells[0].pct(0.5);
            let direct_rps = cells[0].rps();
            for (i, (name, _, _)) in targets.iter().enumerate() {
                let c = &mut cells[i];
                let (p50, p99) = (c.pct(0.5), c.pct(0.99));
                println!(
                    "{:<22} {:>5} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>8.0}% {:>7}",
                    name,
                    conc,
                    c.rps(),
                    p50.as_secs_f64() * 1e6,
                    p99.as_secs_f64() * 1e6,
                    (p50.as_secs_f64() - direct_p50.as_secs_f64()) * 1e6,
                    c.rps() / direct_rps * 100.0,
                    c.errors
                );
            }
        }
    });
}
