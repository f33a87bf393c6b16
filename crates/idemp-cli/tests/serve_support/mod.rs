//! Shared fixtures of the `idemp serve` end-to-end tests: a real upstream on loopback
//! that counts its executions, and the real `idemp` binary run as a child process.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Mutex;
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub type UpBody = BoxBody<Bytes, Infallible>;

/// What the upstream saw.
#[derive(Default)]
pub struct UpstreamState {
    /// Executions of POST /charge per Idempotency-Key header (or body when none).
    pub charges: Mutex<HashMap<String, usize>>,
    pub total: AtomicUsize,
    /// Released by the test to let `/stream` send its second chunk.
    pub stream_gate: Notify,
    /// Requests still inside the upstream handler.
    pub running: AtomicUsize,
    /// Statuses `/flaky` answers with, in order (then 201).
    pub flaky: Mutex<Vec<u16>>,
}

impl UpstreamState {
    pub fn charges_of(&self, key: &str) -> usize {
        self.charges.lock().unwrap().get(key).copied().unwrap_or(0)
    }
    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

/// A loopback upstream:
/// * `POST /charge?delay_ms=N`: counts one execution for its key, waits N ms, 201 JSON;
/// * `POST /flaky`: the next status of `flaky`, then 201;
/// * `GET /stream`: sends `first\n`, waits for `stream_gate`, sends `second\n`;
/// * `PUT /upload`: reads the body and answers its length;
/// * `POST /headers`: answers the request headers as JSON.
pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<UpstreamState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(UpstreamState::default());
        let st = state.clone();
        let task = spawn_server(listener, None, move |req| route(st.clone(), req));
        Self { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Serves every connection accepted on `listener` with `handler` (HTTP/1.1 or HTTP/2),
/// over TLS when `tls` is given (see `tls_support::acceptor`), until the returned
/// task is aborted.
pub fn spawn_server<H, F>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handler: H,
) -> tokio::task::JoinHandle<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<UpBody>, Infallible>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(handler);
                let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                    }
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                }
            });
        }
    })
}

fn full(status: u16, body: impl Into<Bytes>) -> Response<UpBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body.into()).map_err(|e| match e {}).boxed())
        .unwrap()
}

async fn route(
    st: Arc<UpstreamState>,
    req: Request<Incoming>,
) -> Result<Response<UpBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    match (req.method().as_str(), path.as_str()) {
        ("POST", "/charge") => {
            st.running.fetch_add(1, Ordering::SeqCst);
            let key = req
                .headers()
                .get("idempotency-key")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let body = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let key = key.unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            let n = st.total.fetch_add(1, Ordering::SeqCst) + 1;
            *st.charges.lock().unwrap().entry(key.clone()).or_default() += 1;
            let delay = query
                .split('&')
                .find_map(|p| p.strip_prefix("delay_ms="))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            st.running.fetch_sub(1, Ordering::SeqCst);
            let mut res = full(201, format!(r#"{{"charge":{n},"key":{key:?}}}"#));
            res.headers_mut()
                .insert("set-cookie", "session=abc".parse().unwrap());
            Ok(res)
        }
        ("POST", "/flaky") => {
            let _ = req.into_body().collect().await;
            st.total.fetch_add(1, Ordering::SeqCst);
            let status = {
                let mut f = st.flaky.lock().unwrap();
                if f.is_empty() { 201 } else { f.remove(0) }
            };
            Ok(full(status, format!(r#"{{"status":{status}}}"#)))
        }
        ("GET", "/stream") => {
            let st2 = st.clone();
            let stream = futures_util::stream::unfold(0u8, move |step| {
                let st = st2.clone();
                async move {
                    match step {
                        0 => Some((Ok(Frame::data(Bytes::from_static(b"first\n"))), 1)),
                        1 => {
                            st.stream_gate.notified().await;
                            Some((Ok(Frame::data(Bytes::from_static(b"second\n"))), 2))
                        }
                        _ => None,
                    }
                }
            });
            Ok(Response::new(StreamBody::new(stream).boxed()))
        }
        ("PUT", "/upload") => {
            let mut body = req.into_body();
            let mut n = 0usize;
            while let Some(frame) = body.frame().await {
                if let Ok(d) = frame.map(|f| f.into_data()) {
                    n += d.map(|d| d.len()).unwrap_or(0);
                }
            }
            st.total.fetch_add(1, Ordering::SeqCst);
            Ok(full(200, format!(r#"{{"received":{n}}}"#)))
        }
        ("POST", "/headers") => {
            let map: HashMap<String, String> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            Ok(full(200, serde_json::to_vec(&map).unwrap()))
        }
        _ => Ok(full(404, "{}")),
    }
}

/// The `idemp serve` binary, killed on drop.
pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// Starts `idemp serve --upstream U --listen 127.0.0.1:0 --admin 127.0.0.1:0 ARGS…`
    /// and waits for its "listening" line.
    pub fn start(upstream: &str, args: &[&str]) -> Self {
        Self::start_with_env(upstream, args, &[])
    }

    pub fn start_with_env(upstream: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_idemp"));
        cmd.args([
            "serve",
            "--upstream",
            upstream,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .args(args)
        .env("IDEMP_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn idemp serve");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        // "idemp serve listening on http://ADDR admin http://ADDR"
        let mut words = line.split_whitespace();
        let addr = words
            .find_map(|w| w.strip_prefix("http://"))
            .unwrap_or_else(|| panic!("idemp serve did not start: {line:?}"))
            .parse()
            .unwrap();
        let admin = words
            .find_map(|w| w.strip_prefix("http://"))
            .map(|a| a.parse().unwrap());
        Self { child, addr, admin }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM failed");
        self.child.wait().unwrap()
    }
}

/// What an admin listener's `/metrics` said (Prometheus text).
pub struct Scrape(pub String);

impl Scrape {
    /// Fetches `http://ADMIN/metrics`.
    pub async fn fetch(admin: SocketAddr) -> Self {
        let text = client()
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        Self(text)
    }

    /// The value of one series, named as rendered: `name` or `name{label="v"}`.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// The value of one series, which must be there.
    pub fn value(&self, series: &str) -> f64 {
        self.get(series)
            .unwrap_or_else(|| panic!("{series} missing in\n{}", self.0))
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A unique suffix for this test run (store prefixes, schema names, file names).
pub fn unique() -> String {
    format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000
    )
}

pub fn redis_url() -> String {
    std::env::var("IDEMP_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

pub fn postgres_url() -> String {
    std::env::var("IDEMP_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Sends a keyed POST, retrying on 409 (the first is still running) like an agent.
pub async fn post_until_settled(
    c: &reqwest::Client,
    url: &str,
    key: &str,
    body: &str,
) -> reqwest::Response {
    for _ in 0..200 {
        let res = c
            .post(url)
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await;
        match res {
            Ok(r) if r.status() == 409 => tokio::time::sleep(Duration::from_millis(50)).await,
            Ok(r) => return r,
            Err(e) => panic!("request failed: {e}"),
        }
    }
    panic!("still 409 after 200 attempts");
}

/// POSTs `{}` under each of `keys`, 16 at a time, each until it settles (see
/// [`post_until_settled`]); the final statuses, in completion order.
pub async fn post_keys(
    c: &reqwest::Client,
    url: &str,
    keys: impl IntoIterator<Item = String>,
) -> Vec<u16> {
    use futures_util::StreamExt;
    futures_util::stream::iter(keys)
        .map(|key| {
            let (c, url) = (c.clone(), url.to_owned());
            async move {
                post_until_settled(&c, &url, &key, "{}")
                    .await
                    .status()
                    .as_u16()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await
}
