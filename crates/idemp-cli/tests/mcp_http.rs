//! `idemp mcp --upstream` with raw HTTP requests in the 2026 revision's stateless
//! form, against the official Python SDK's server: tenants never share a result,
//! `Mcp-Name` that contradicts the body is refused, and what is not a tool call
//! passes through. And against an `https://` server (a scripted Streamable HTTP
//! server over TLS, with a certificate from a CA made in the test): trusted with
//! `--upstream-ca`, guarded calls answered in JSON or SSE run once and replay; not
//! trusted, the call is refused before it is sent, naming the reason, and released.

mod mcp_support;
mod tls_support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use mcp_support::*;
use serde_json::{Value, json};
use tls_support::{Conn, TestCa};

struct Setup {
    _dir: tempfile::TempDir,
    effects: Effects,
    _server: Proc,
    _proxy: Proc,
    up: u16,
    listen: u16,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let effects = Effects::new(dir.path());
    let up = free_port();
    let server = Proc(
        Command::new(venv_python())
            .arg(support("server.py"))
            .arg("--http")
            .arg(up.to_string())
            .env("EFFECTS", &effects.path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let listen = free_port();
    let store = format!("sqlite://{}", dir.path().join("idemp.db").display());
    let proxy = Proc(
        Command::new(idemp())
            .args(["mcp", "--store", &store, "--scope", "http-test"])
            .args(["--upstream", &format!("http://127.0.0.1:{up}/mcp")])
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(up);
    wait_port(listen);
    Setup {
        _dir: dir,
        effects,
        _server: server,
        _proxy: proxy,
        up,
        listen,
    }
}

/// POSTs a `tools/call` as a 2026 client does; returns the HTTP status and the
/// JSON-RPC message of the answer (from JSON or from the SSE stream).
async fn post_call(
    port: u16,
    id: i64,
    tool: &str,
    header_name: &str,
    auth: Option<&str>,
    args: Value,
) -> (u16, Value) {
    let body = sdk_call(id, tool, args);
    let mut req = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", header_name)
        .body(body.to_string());
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let sse = res
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
    let text = res.text().await.unwrap();
    let json_text = if sse {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim)
            .find(|d| d.contains("\"id\""))
            .unwrap_or("null")
            .to_owned()
    } else {
        text
    };
    (
        status,
        serde_json::from_str(&json_text).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_never_share_a_result() {
    let s = setup();
    let args = json!({"customer": "t", "cents": 3});
    let (st, a1) = post_call(
        s.listen,
        1,
        "charge",
        "charge",
        Some("Bearer alice"),
        args.clone(),
    )
    .await;
    assert_eq!(st, 200);
    let (_, a2) = post_call(
        s.listen,
        2,
        "charge",
        "charge",
        Some("Bearer alice"),
        args.clone(),
    )
    .await;
    let (_, b1) = post_call(
        s.listen,
        3,
        "charge",
        "charge",
        Some("Bearer bob"),
        args.clone(),
    )
    .await;
    let (_, anon) = post_call(s.listen, 4, "charge", "charge", None, args.clone()).await;
    assert_eq!(a2["id"], 2);
    assert_eq!(text_of(&a1), text_of(&a2), "alice's retry is replayed");
    assert_ne!(text_of(&a1), text_of(&b1), "bob never gets alice's result");
    assert_ne!(text_of(&a1), text_of(&anon));
    assert_eq!(s.effects.count("charge"), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_name_must_match_the_body() {
    let s = setup();
    let (st, v) = post_call(
        s.listen,
        1,
        "charge",
        "lookup",
        None,
        json!({"customer": "m", "cents": 1}),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(v["error"]["code"], -32020);
    assert_eq!(s.effects.count("charge"), 0);
    // The same call with honest headers runs.
    let (st, v) = post_call(
        s.listen,
        2,
        "charge",
        "charge",
        None,
        json!({"customer": "m", "cents": 1}),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["result"]["isError"], false, "{v}");
    assert_eq!(s.effects.count("charge"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn other_requests_pass_through() {
    let s = setup();
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for port in [s.up, s.listen] {
        let res = client
            .get(format!("http://127.0.0.1:{port}/mcp"))
            .send()
            .await
            .unwrap();
        statuses.push((
            res.status().as_u16(),
            res.headers().get("content-type").cloned(),
        ));
    }
    assert_eq!(
        statuses[0], statuses[1],
        "the proxy answers a GET as the server does"
    );
    // A tools/list passes through (and teaches the proxy the tools).
    let res = client
        .post(format!("http://127.0.0.1:{}/mcp", s.listen))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/list")
        .body(json!({"jsonrpc":"2.0","id":9,"method":"tools/list","params":{"_meta":{
            "io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("\"charge\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_server_releases_the_claim() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("idemp.db").display());
    let closed = free_port();
    let listen = free_port();
    let _proxy = Proc(
        Command::new(idemp())
            .args(["mcp", "--store", &store])
            .args(["--upstream", &format!("http://127.0.0.1:{closed}/mcp")])
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(listen);
    for id in [1, 2] {
        let (status, v) = post_call(
            listen,
            id,
            "charge",
            "charge",
            None,
            json!({"customer": "u", "cents": 1}),
        )
        .await;
        assert_eq!(status, 502);
        assert_eq!(v["id"], id, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("not sent"),
            "{v}"
        );
    }
    // Nothing was claimed for good: the retry above was not refused as in progress,
    // and the store holds no record.
    let out = Command::new(idemp())
        .args(["records", "stats", "--store", &store, "--json"])
        .output()
        .unwrap();
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["in_progress"], 0, "{stats}");
    assert_eq!(stats["completed"], 0, "{stats}");
    assert_eq!(stats["ambiguous"], 0, "{stats}");
}

/// A scripted Streamable HTTP MCP server over TLS: `tools/list` names `charge` and
/// `refund` (no annotations: both guarded), a `tools/call` counts one execution of
/// its tool and answers a text saying how many; `charge` answers as an SSE stream (a
/// progress notification, then the response), `refund` as JSON.
struct TlsMcpServer {
    port: u16,
    ca: TestCa,
    state: Arc<ScriptedState>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct ScriptedState {
    /// Executions per tool.
    calls: Mutex<HashMap<String, usize>>,
    /// What each request's connection negotiated.
    conns: Mutex<Vec<Conn>>,
}

impl ScriptedState {
    fn calls(&self, tool: &str) -> usize {
        self.calls.lock().unwrap().get(tool).copied().unwrap_or(0)
    }
}

impl Drop for TlsMcpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsMcpServer {
    async fn start() -> Self {
        let ca = TestCa::new("idemp mcp test CA");
        let acceptor = tls_support::acceptor(ca.leaf(&["localhost"]), &[b"h2", b"http/1.1"]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ScriptedState::default());
        let st = state.clone();
        let task = tls_support::spawn_https(listener, acceptor, move |conn, req| {
            scripted(st.clone(), conn, req)
        });
        Self {
            port,
            ca,
            state,
            task,
        }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}/mcp", self.port)
    }
}

async fn scripted(
    st: Arc<ScriptedState>,
    conn: Conn,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    st.conns.lock().unwrap().push(conn);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let msg: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = msg["id"].clone();
    let reply = |content_type: &str, body: String| {
        Ok(Response::builder()
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap())
    };
    match msg["method"].as_str() {
        Some("tools/list") => reply(
            "application/json",
            json!({"jsonrpc": "2.0", "id": id, "result": {"tools": [
                {"name": "charge", "inputSchema": {"type": "object"}},
                {"name": "refund", "inputSchema": {"type": "object"}},
            ]}})
            .to_string(),
        ),
        Some("tools/call") => {
            let tool = msg["params"]["name"].as_str().unwrap_or("").to_owned();
            let n = {
                let mut calls = st.calls.lock().unwrap();
                let n = calls.entry(tool.clone()).or_default();
                *n += 1;
                *n
            };
            let response = json!({"jsonrpc": "2.0", "id": id, "result": {
                "content": [{"type": "text", "text": format!("{tool} executed {n} time(s)")}],
                "isError": false,
            }});
            if tool == "charge" {
                let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                    "params": {"progressToken": 1, "progress": 0.5}});
                reply(
                    "text/event-stream",
                    format!(
                        "event: message\ndata: {progress}\n\nevent: message\ndata: {response}\n\n"
                    ),
                )
            } else {
                reply("application/json", response.to_string())
            }
        }
        _ => Ok(Response::builder()
            .status(202)
            .body(Full::new(Bytes::new()))
            .unwrap()),
    }
}

/// `idemp mcp --upstream URL --listen 127.0.0.1:PORT FLAGS…`, and the port.
fn http_proxy(store: &str, upstream: &str, flags: &[&str]) -> (Proc, u16) {
    let listen = free_port();
    let proxy = Proc(
        Command::new(idemp())
            .args(["mcp", "--store", store, "--scope", "https-test"])
            .args(["--upstream", upstream])
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .args(flags)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(listen);
    (proxy, listen)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_server_trusted_with_upstream_ca_runs_each_call_once() {
    let server = TlsMcpServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("idemp.db").display());
    let ca = server.ca.pem_path.to_str().unwrap().to_owned();
    let (_proxy, listen) = http_proxy(&store, &server.url(), &["--upstream-ca", &ca]);

    // An SSE answer (progress, then the result), then its retry with a new id.
    let args = json!({"customer": "tls", "cents": 5});
    let (st, first) = post_call(listen, 1, "charge", "charge", None, args.clone()).await;
    assert_eq!(st, 200);
    assert_eq!(first["id"], 1, "{first}");
    assert_eq!(text_of(&first), "charge executed 1 time(s)");
    let (st, again) = post_call(listen, 2, "charge", "charge", None, args.clone()).await;
    assert_eq!(st, 200);
    assert_eq!(again["id"], 2, "the replay carries the new id: {again}");
    assert_eq!(text_of(&again), text_of(&first));
    assert_eq!(server.state.calls("charge"), 1, "one execution over TLS");

    // A JSON answer, the same way.
    let (_, r1) = post_call(listen, 3, "refund", "refund", None, args.clone()).await;
    let (_, r2) = post_call(listen, 4, "refund", "refund", None, args).await;
    assert_eq!(text_of(&r1), "refund executed 1 time(s)");
    assert_eq!(text_of(&r2), text_of(&r1));
    assert_eq!(r2["id"], 4);
    assert_eq!(server.state.calls("refund"), 1);

    let conns = server.state.conns.lock().unwrap().clone();
    assert_eq!(conns.len(), 2, "only the two executions reached the server");
    for c in &conns {
        assert_eq!(c.sni.as_deref(), Some("localhost"), "SNI from the URL");
        assert_eq!(c.alpn.as_deref(), Some(&b"h2"[..]), "HTTP/2 by ALPN");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_https_server_is_refused_before_the_call_is_sent_and_released() {
    let server = TlsMcpServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("idemp.db").display());
    let args = json!({"customer": "untrusted", "cents": 7});
    {
        // Default roots: the test's CA is unknown.
        let (_proxy, listen) = http_proxy(&store, &server.url(), &[]);
        let (st, v) = post_call(listen, 1, "charge", "charge", None, args.clone()).await;
        assert_eq!(st, 502);
        assert_eq!(v["id"], 1, "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("TLS handshake")
                && message.contains("UnknownIssuer")
                && message.contains("--upstream-ca")
                && message.contains("not sent"),
            "{message}"
        );
        assert_eq!(server.state.calls("charge"), 0);
    }
    // The key was released: a proxy that trusts the CA, on the same store, runs it.
    let ca = server.ca.pem_path.to_str().unwrap().to_owned();
    let (_proxy, listen) = http_proxy(&store, &server.url(), &["--upstream-ca", &ca]);
    let (st, v) = post_call(listen, 2, "charge", "charge", None, args).await;
    assert_eq!(st, 200);
    assert_eq!(text_of(&v), "charge executed 1 time(s)");
    assert_eq!(server.state.calls("charge"), 1);
}
