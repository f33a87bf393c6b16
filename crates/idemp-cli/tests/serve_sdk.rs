//! The official `anthropic`, `openai` and `stripe` Python SDKs through the real
//! `idemp serve --derive-key` binary, in front of a fake upstream that knows nothing
//! of idempotency keys. Client timeouts are shorter than the upstream, so the SDKs'
//! own retry loops fire: every logical call must execute upstream exactly once and
//! every caller must be answered. Also: the Anthropic SDK's `messages.stream`
//! through the proxy (its first event arrives while the upstream is still held
//! mid-stream by the test) and on replay, two tenants on `x-api-key`, and a 64 MiB
//! response streamed whole, never run twice, with the proxy's memory bounded.
//!
//! The same fake API also runs over TLS (a CA and a certificate for `localhost` made
//! in the test, HTTP/2 or HTTP/1.1 by ALPN), behind `idemp serve --upstream
//! https://localhost:PORT --upstream-ca CA.pem`: the SDKs' retries and a stream
//! through an https upstream.
//!
//! Needs the `sdk` virtual environment: `scripts/pyenv.sh sdk`.

mod serve_support;
mod tls_support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use serve_support::{Proxy, Scrape, client, spawn_server};
use std::sync::Mutex;
use tls_support::TestCa;
use tokio::net::TcpListener;
use tokio::sync::Notify;

type Body = BoxBody<Bytes, Infallible>;

/// How the fake API is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Http,
    /// TLS with a certificate for `localhost` from a CA made in the test; ALPN
    /// offers h2 and http/1.1.
    Https,
}

/// What the fake upstream executed.
#[derive(Default)]
struct Seen {
    /// Executions per (path, credential, body).
    runs: Mutex<HashMap<String, usize>>,
    total: AtomicUsize,
    /// Set while a gated stream waits for the test, cleared when it sent its end.
    gate_waiting: AtomicBool,
    stream_ended: AtomicBool,
    gate: Notify,
}

impl Seen {
    fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
    fn max_runs(&self) -> usize {
        self.runs
            .lock()
            .unwrap()
            .values()
            .copied()
            .max()
            .unwrap_or(0)
    }
}

struct FakeApi {
    addr: SocketAddr,
    seen: Arc<Seen>,
    /// The CA that signed its certificate (HTTPS only).
    ca: Option<TestCa>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApi {
    async fn start(scheme: Scheme) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        let (ca, tls) = match scheme {
            Scheme::Http => (None, None),
            Scheme::Https => {
                let ca = TestCa::new("idemp sdk test CA");
                let acceptor =
                    tls_support::acceptor(ca.leaf(&["localhost"]), &[b"h2", b"http/1.1"]);
                (Some(ca), Some(acceptor))
            }
        };
        let task = spawn_server(listener, tls, move |req| route(s.clone(), req));
        Self {
            addr,
            seen,
            ca,
            task,
        }
    }

    /// `idemp serve --derive-key` in front of it (`--upstream-ca` for HTTPS).
    fn proxy(&self, extra: &[&str]) -> Proxy {
        let mut args = vec!["--store", "memory:", "--derive-key"];
        let upstream = match &self.ca {
            None => format!("http://{}", self.addr),
            Some(ca) => {
                args.extend(["--upstream-ca", ca.pem_path.to_str().unwrap()]);
                format!("https://localhost:{}", self.addr.port())
            }
        };
        args.extend_from_slice(extra);
        Proxy::start(&upstream, &args)
    }
}

fn json(status: u16, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("request-id", "req_fake")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap()
}

fn sse(event: &str, data: &str) -> Result<Frame<Bytes>, Infallible> {
    Ok(Frame::data(Bytes::from(format!(
        "event: {event}\ndata: {data}\n\n"
    ))))
}

async fn route(seen: Arc<Seen>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    };
    let credential = [header("x-api-key"), header("authorization")].concat();
    let delay: u64 = header("x-test-delay-ms").parse().unwrap_or(0);
    let gated = header("x-test-gate") == "1";
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let id = format!("{path}|{credential}|{}", String::from_utf8_lossy(&body));
    let n = {
        let mut runs = seen.runs.lock().unwrap();
        let e = runs.entry(id).or_default();
        *e += 1;
        *e
    };
    let total = seen.total.fetch_add(1, Ordering::SeqCst) + 1;
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let tenant = credential.chars().rev().take(8).collect::<String>();
    let reply = format!("execution {total} for {tenant} (run {n})");
    let streaming = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .is_some_and(|v| v["stream"] == true);
    Ok(match path.as_str() {
        "/v1/messages" if streaming => {
            let start = r#"{"type":"message_start","message":{"id":"msg_stream","type":"message","role":"assistant","model":"claude-test","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":1}}}"#;
            let s2 = seen.clone();
            let frames = futures_util::stream::unfold(0u8, move |step| {
                let seen = s2.clone();
                async move {
                    let frame = match step {
                        0 => sse("message_start", start),
                        1 => sse(
                            "content_block_start",
                            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
                        ),
                        2 => sse(
                            "content_block_delta",
                            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
                        ),
                        3 => {
                            if gated {
                                seen.gate_waiting.store(true, Ordering::SeqCst);
                                seen.gate.notified().await;
                                seen.gate_waiting.store(false, Ordering::SeqCst);
                            }
                            sse(
                                "content_block_delta",
                                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" world"}}"#,
                            )
                        }
                        4 => sse("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
                        5 => sse(
                            "message_delta",
                            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":2}}"#,
                        ),
                        6 => {
                            seen.stream_ended.store(true, Ordering::SeqCst);
                            sse("message_stop", r#"{"type":"message_stop"}"#)
                        }
                        _ => return None,
                    };
                    Some((frame, step + 1))
                }
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(StreamBody::new(frames).boxed())
                .unwrap()
        }
        "/v1/messages" => json(
            200,
            serde_json::json!({
                "id": format!("msg_{total}"), "type": "message", "role": "assistant",
                "model": "claude-test", "content": [{"type": "text", "text": reply}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 1, "output_tokens": 2}
            })
            .to_string(),
        ),
        "/v1/chat/completions" => json(
            200,
            serde_json::json!({
                "id": format!("chatcmpl-{total}"), "object": "chat.completion", "created": 1,
                "model": "gpt-test",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
            })
            .to_string(),
        ),
        "/v1/charges" => {
            let form = String::from_utf8_lossy(&body).into_owned();
            let amount: u64 = form
                .split('&')
                .find_map(|p| p.strip_prefix("amount="))
                .and_then(|a| a.parse().ok())
                .unwrap_or(0);
            json(
                200,
                serde_json::json!({"id": format!("ch_{total}"), "object": "charge", "amount": amount, "currency": "usd"})
                    .to_string(),
            )
        }
        "/v1/export" => {
            // 64 MiB, streamed in 64 KiB frames.
            let chunk = Bytes::from(vec![b'e'; 64 << 10]);
            let frames = futures_util::stream::iter(
                (0..1024).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
            );
            Response::builder()
                .header("content-type", "application/octet-stream")
                .body(StreamBody::new(frames).boxed())
                .unwrap()
        }
        _ => json(404, "{}".into()),
    })
}

fn python() -> PathBuf {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let py = repo.join(".venvs/sdk/bin/python");
    assert!(
        py.exists(),
        "the SDK environment is missing: run scripts/pyenv.sh sdk (it creates .venvs/sdk)"
    );
    py
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/clients.py")
}

/// Runs a scenario to its end; returns its JSON lines.
async fn run_scenario(scenario: &str, base: &str) -> Vec<serde_json::Value> {
    let out = tokio::process::Command::new(python())
        .arg(script())
        .args([scenario, base])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{scenario} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn retries_execute_once(scenario: &str, scheme: Scheme) {
    let api = FakeApi::start(scheme).await;
    let p = api.proxy(&[]);
    let lines = run_scenario(scenario, &format!("http://{}", p.addr)).await;
    assert_eq!(lines.len(), 2, "every caller answered: {lines:?}");
    assert_eq!(
        api.seen.total(),
        2,
        "{scenario} ({scheme:?} upstream): one upstream execution per logical call"
    );
    assert_eq!(api.seen.max_runs(), 1);
    assert_ne!(lines[0]["id"], lines[1]["id"]);
    // The SDK's own retries fired and met the record (joined the running call, were
    // told it is in progress, or got its replay) instead of executing.
    let m = Scrape::fetch(p.admin.expect("the proxy has an admin listener")).await;
    let at = |e: &str| m.value(&format!("idemp_events_total{{event=\"{e}\"}}"));
    assert_eq!(at("claimed"), 2.0, "{}", m.0);
    assert!(
        at("joined") + at("conflict") + at("replayed") >= 2.0,
        "every logical call was retried by the SDK:\n{}",
        m.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_retries_execute_once() {
    retries_execute_once("anthropic-retry", Scheme::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_retries_execute_once() {
    retries_execute_once("openai-retry", Scheme::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_sdk_retries_execute_once() {
    retries_execute_once("stripe-retry", Scheme::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_retries_execute_once_over_an_https_upstream() {
    retries_execute_once("anthropic-retry", Scheme::Https).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_sdk_retries_execute_once_over_an_https_upstream() {
    retries_execute_once("stripe-retry", Scheme::Https).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_stream_arrives_live_and_replays() {
    stream_arrives_live_and_replays(Scheme::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_stream_over_an_https_upstream_arrives_live_and_replays() {
    stream_arrives_live_and_replays(Scheme::Https).await;
}

async fn stream_arrives_live_and_replays(scheme: Scheme) {
    let api = FakeApi::start(scheme).await;
    let p = api.proxy(&[]);
    let mut child = Command::new(python())
        .arg(script())
        .args(["anthropic-stream", &format!("http://{}", p.addr)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let seen = api.seen.clone();
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        let mut firsts = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if line == "FIRST_EVENT" {
                firsts += 1;
                if firsts == 1 {
                    // The SDK has its first event while the upstream is held
                    // mid-stream: nothing after "Hello" has been sent yet.
                    assert!(
                        seen.gate_waiting.load(Ordering::SeqCst),
                        "upstream not held"
                    );
                    assert!(
                        !seen.stream_ended.load(Ordering::SeqCst),
                        "the stream already ended"
                    );
                    seen.gate.notify_one();
                }
                continue;
            }
            lines.push(line);
        }
        (lines, firsts)
    })
    .await
    .unwrap();
    assert!(child.wait().unwrap().success());
    let (lines, firsts) = lines;
    assert_eq!(firsts, 2);
    let texts: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(texts.len(), 2);
    assert_eq!(texts[0]["text"], "Hello world");
    assert_eq!(
        texts[1]["text"], "Hello world",
        "the replay is the same stream"
    );
    assert_eq!(api.seen.total(), 1, "streamed once, replayed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_on_x_api_key_each_get_their_own_answer() {
    let api = FakeApi::start(Scheme::Http).await;
    let p = api.proxy(&[]);
    let lines = run_scenario("tenants", &format!("http://{}", p.addr)).await;
    assert_eq!(lines.len(), 4);
    assert_eq!(api.seen.total(), 2, "one execution per tenant");
    assert_ne!(lines[0]["text"], lines[1]["text"]);
    assert!(
        lines[0]["text"]
            .as_str()
            .unwrap()
            .contains(&"sk-ant-tenant-a".chars().rev().take(8).collect::<String>())
    );
    assert_eq!(
        lines[2]["text"], lines[0]["text"],
        "tenant a's retry: tenant a's answer"
    );
    assert_eq!(
        lines[3]["text"], lines[1]["text"],
        "tenant b's retry: tenant b's answer"
    );
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_response_streams_whole_runs_once_and_stays_out_of_memory() {
    let api = FakeApi::start(Scheme::Http).await;
    let p = api.proxy(&["--max-stored-response", "8MiB"]);
    let c = client();
    let res = c
        .post(format!("http://{}/v1/export", p.addr))
        .header("idempotency-key", "export-1")
        .header("x-api-key", "sk-tenant")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut res = res;
    let mut total = 0usize;
    while let Some(chunk) = res.chunk().await.unwrap() {
        total += chunk.len();
    }
    assert_eq!(total, 64 << 20, "streamed whole");
    let retry = c
        .post(format!("http://{}/v1/export", p.addr))
        .header("idempotency-key", "export-1")
        .header("x-api-key", "sk-tenant")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 409);
    assert_eq!(retry.headers()["x-should-retry"], "false");
    let problem: serde_json::Value = retry.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "https://idemp.dev/problems/response-not-stored"
    );
    assert_eq!(api.seen.total(), 1, "never a second execution");
    // The proxy never held the response: its peak resident memory stays far below
    // 64 MiB plus its own baseline.
    let peak = peak_rss_kib(p.pid());
    assert!(peak > 0 && peak < 96 * 1024, "peak RSS {peak} KiB");
}
