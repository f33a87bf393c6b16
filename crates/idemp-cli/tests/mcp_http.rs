//! `idemp mcp --upstream` with raw HTTP requests in the 2026 revision's stateless
//! form, against the official Python SDK's server: tenants never share a result,
//! `Mcp-Name` that contradicts the body is refused, and what is not a tool call
//! passes through.

mod mcp_support;

use std::process::{Command, Stdio};

use mcp_support::*;
use serde_json::{Value, json};

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
