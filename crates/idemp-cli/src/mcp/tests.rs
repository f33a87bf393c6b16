//! The relay against a scripted fake server, in process: each test plays the agent
//! and the server line by line over pipes, so every protocol edge case is exact and
//! nothing depends on timing.

use std::sync::Arc;
use std::time::Duration;

use idemp::store::{DynStore, MemoryStore};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};

use super::config::{McpArgs, McpConfig};
use super::core::Core;
use super::metrics::Metrics;
use super::stdio;

/// Generous: only waits for something that must happen.
const PATIENCE: Duration = Duration::from_secs(20);

struct Side {
    reader: BufReader<ReadHalf<DuplexStream>>,
    writer: WriteHalf<DuplexStream>,
}

impl Side {
    async fn send(&mut self, line: &[u8]) {
        self.writer.write_all(line).await.unwrap();
        self.writer.flush().await.unwrap();
    }
    async fn send_json(&mut self, v: Value) {
        let mut line = serde_json::to_vec(&v).unwrap();
        line.push(b'\n');
        self.send(&line).await;
    }
    /// The next line, raw (with its newline).
    async fn line(&mut self) -> Vec<u8> {
        let mut buf = Vec::new();
        tokio::time::timeout(PATIENCE, self.reader.read_until(b'\n', &mut buf))
            .await
            .expect("a line in time")
            .unwrap();
        buf
    }
    async fn json(&mut self) -> Value {
        let line = self.line().await;
        serde_json::from_slice(&line)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&line)))
    }
    /// Nothing arrives within a short while (only used after a message that would
    /// have been written before the one we already got).
    async fn silent(&mut self) -> bool {
        let mut buf = Vec::new();
        tokio::time::timeout(
            Duration::from_millis(200),
            self.reader.read_until(b'\n', &mut buf),
        )
        .await
        .is_err()
    }
}

struct Relay {
    agent: Side,
    server: Side,
    core: Arc<Core>,
    task: tokio::task::JoinHandle<bool>,
}

fn config(extra: impl FnOnce(&mut McpArgs)) -> Arc<McpConfig> {
    let mut args = McpArgs {
        command: vec!["fake-server".into()],
        store: Some("memory:".into()),
        scope: Some("test".into()),
        ..Default::default()
    };
    extra(&mut args);
    Arc::new(McpConfig::resolve(args).unwrap())
}

fn start(store: DynStore, cfg: Arc<McpConfig>) -> Relay {
    let metrics = Arc::new(Metrics::new().unwrap());
    let core = Arc::new(Core::new(cfg, store, metrics));
    let (agent_end, proxy_client) = tokio::io::duplex(1 << 20);
    let (server_end, proxy_server) = tokio::io::duplex(1 << 20);
    let (ci, co) = tokio::io::split(proxy_client);
    let (so, si) = tokio::io::split(proxy_server);
    let task = tokio::spawn(stdio::relay(core.clone(), ci, co, si, so, 1 << 20));
    let (ar, aw) = tokio::io::split(agent_end);
    let (sr, sw) = tokio::io::split(server_end);
    Relay {
        agent: Side {
            reader: BufReader::new(ar),
            writer: aw,
        },
        server: Side {
            reader: BufReader::new(sr),
            writer: sw,
        },
        core,
        task,
    }
}

fn call(id: Value, tool: &str, args: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}})
}

fn ok(id: &Value, text: &str) -> Value {
    json!({"jsonrpc":"2.0","id":id,"result":{"content":[{"type":"text","text":text}],"isError":false}})
}

/// The agent lists tools; the server answers with these annotated tools.
async fn list_tools(r: &mut Relay) {
    r.agent
        .send_json(json!({"jsonrpc":"2.0","id":"list","method":"tools/list"}))
        .await;
    let req = r.server.json().await;
    assert_eq!(req["method"], "tools/list");
    r.server
        .send_json(json!({"jsonrpc":"2.0","id":"list","result":{"tools":[
            {"name":"read","inputSchema":{},"annotations":{"readOnlyHint":true}},
            {"name":"put","inputSchema":{},"annotations":{"idempotentHint":true}},
            {"name":"send","inputSchema":{},"annotations":{"destructiveHint":true}}
        ]}}))
        .await;
    assert_eq!(r.agent.json().await["id"], "list");
}

/// The server side of one forwarded call: reads it, answers `text`.
async fn serve_one(r: &mut Relay, text: &str) -> Value {
    let req = r.server.json().await;
    assert_eq!(req["method"], "tools/call");
    r.server.send_json(ok(&req["id"], text)).await;
    req
}

#[tokio::test]
async fn everything_else_passes_through_byte_for_byte() {
    let mut r = start(Arc::new(MemoryStore::new()), config(|_| {}));
    let from_agent: [&[u8]; 7] = [
        b"not json at all\n",
        b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\r\n",
        b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"send\"}}]\n",
        b"\n",
        b"{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"tools/call\",\"params\":{\"name\":\n",
        b"{ \"jsonrpc\" : \"2.0\", \"id\" : \"p\", \"method\" : \"ping\" }\n",
        "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"resources/read\",\"params\":{\"uri\":\"file:///é\"}}\n".as_bytes(),
    ];
    for line in from_agent {
        r.agent.send(line).await;
        assert_eq!(r.server.line().await, line);
    }
    // Server-to-client requests (sampling) and their answers, and garbage from the
    // server.
    let from_server: [&[u8]; 4] = [
        b"{\"jsonrpc\":\"2.0\",\"id\":\"s1\",\"method\":\"sampling/createMessage\",\"params\":{}}\n",
        b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n",
        b"server log line on stdout by mistake\n",
        b"{\"jsonrpc\":\"2.0\",\"id\":404,\"result\":{}}\n",
    ];
    for line in from_server {
        r.server.send(line).await;
        assert_eq!(r.agent.line().await, line);
    }
    let answer = b"{\"jsonrpc\":\"2.0\",\"id\":\"s1\",\"result\":{\"role\":\"assistant\"}}\n";
    r.agent.send(answer).await;
    assert_eq!(r.server.line().await, answer);
    // Nothing was guarded.
    assert_eq!(r.core.store().stats().await.unwrap().completed, 0);
    // The agent leaves: the server's input is closed, the server exits.
    drop(r.agent);
    assert!(
        r.server.line().await.is_empty(),
        "EOF on the server's stdin"
    );
    drop(r.server);
    assert!(
        tokio::time::timeout(PATIENCE, r.task)
            .await
            .unwrap()
            .unwrap(),
        "the agent ended first"
    );
}

#[tokio::test]
async fn a_guarded_call_runs_once_and_replays_with_the_new_id() {
    let store: DynStore = Arc::new(MemoryStore::new());
    let mut r = start(store.clone(), config(|_| {}));
    list_tools(&mut r).await;
    r.agent
        .send_json(call(json!(1), "send", json!({"to":"bob","n":1})))
        .await;
    let req = r.server.line().await;
    let sent: Value = serde_json::from_slice(&req).unwrap();
    assert_eq!(sent["id"], 1);
    let answer = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"sent #1\"}], \"isError\":false}}\n";
    r.server.send(answer).await;
    assert_eq!(
        r.agent.line().await,
        answer,
        "the first answer is relayed untouched"
    );

    // A retry: new id, other key order, other _meta: the stored result, new id.
    r.agent
        .send_json(
            json!({"jsonrpc":"2.0","id":"retry-2","method":"tools/call","params":{
            "name":"send","arguments":{"n":1,"to":"bob"},"_meta":{"progressToken":"t"}}}),
        )
        .await;
    let replay = r.agent.json().await;
    assert_eq!(replay["id"], "retry-2");
    assert_eq!(replay["result"]["content"][0]["text"], "sent #1");
    assert!(r.server.silent().await, "the server never saw the retry");

    // Other arguments are another call.
    r.agent
        .send_json(call(json!(3), "send", json!({"to":"bob","n":2})))
        .await;
    serve_one(&mut r, "sent #2").await;
    assert_eq!(
        r.agent.json().await["result"]["content"][0]["text"],
        "sent #2"
    );

    // The agent's own key wins over the arguments.
    for (id, n) in [(4, 10), (5, 11)] {
        r.agent
            .send_json(
                json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{
                "name":"send","arguments":{"n":n},"_meta":{"dev.idemp/key":"order-77"}}}),
            )
            .await;
        if id == 4 {
            serve_one(&mut r, "order-77 done").await;
            assert_eq!(r.agent.json().await["id"], 4);
        } else {
            // Same key, other arguments: refused, never the other's result.
            let v = r.agent.json().await;
            assert_eq!(v["id"], 5);
            assert_eq!(v["result"]["isError"], true);
            assert!(
                v["result"]["content"][0]["text"]
                    .as_str()
                    .unwrap()
                    .contains("different arguments")
            );
        }
    }
    assert!(r.server.silent().await);
    assert_eq!(store.stats().await.unwrap().completed, 3);
}

#[tokio::test]
async fn exact_numbers_that_collide_as_doubles_are_not_replayed() {
    let mut r = start(Arc::new(MemoryStore::new()), config(|_| {}));
    r.agent
        .send(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"pay\",\"arguments\":{\"cents\":12345678901234567890}}}\n")
        .await;
    serve_one(&mut r, "paid").await;
    r.agent.json().await;
    r.agent
        .send(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{\"name\":\"pay\",\"arguments\":{\"cents\":12345678901234567891}}}\n")
        .await;
    let v = r.agent.json().await;
    assert_eq!(v["result"]["isError"], true, "{v}");
    assert!(r.server.silent().await);
}

#[tokio::test]
async fn policies_follow_the_annotations() {
    let mut r = start(
        Arc::new(MemoryStore::new()),
        config(|a| a.cache_reads = Some("1h".into())),
    );
    // Before tools/list every tool is guarded, even a read.
    r.agent.send_json(call(json!(1), "read", json!({}))).await;
    serve_one(&mut r, "r1").await;
    r.agent.json().await;
    list_tools(&mut r).await;
    // read-only with --cache-reads: cached (by its own key space).
    for id in 2..5 {
        r.agent
            .send_json(call(json!(id), "read", json!({"q":1})))
            .await;
        if id == 2 {
            serve_one(&mut r, "fresh").await;
        }
        let v = r.agent.json().await;
        assert_eq!(v["id"], id);
        assert_eq!(v["result"]["content"][0]["text"], "fresh");
    }
    // Identical reads at once reach the server once (the cache's singleflight).
    r.agent
        .send_json(call(json!(20), "read", json!({"q": 2})))
        .await;
    r.agent
        .send_json(call(json!(21), "read", json!({"q": 2})))
        .await;
    let req = r.server.json().await;
    assert!(r.server.silent().await, "the second read joined the first");
    r.server.send_json(ok(&req["id"], "joined")).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let v = r.agent.json().await;
        assert_eq!(v["result"]["content"][0]["text"], "joined");
        ids.push(v["id"].as_i64().unwrap());
    }
    ids.sort();
    assert_eq!(ids, vec![20, 21]);
    // A failed read is not cached and the next one goes to the server.
    r.agent
        .send_json(call(json!(22), "read", json!({"q": 3})))
        .await;
    let req = r.server.json().await;
    r.server
        .send_json(json!({"jsonrpc":"2.0","id":req["id"],"error":{"code":-1,"message":"down"}}))
        .await;
    assert_eq!(r.agent.json().await["error"]["message"], "down");
    r.agent
        .send_json(call(json!(23), "read", json!({"q": 3})))
        .await;
    serve_one(&mut r, "up").await;
    assert_eq!(r.agent.json().await["result"]["content"][0]["text"], "up");
    // idempotent: every call passes through.
    for id in 5..7 {
        r.agent
            .send_json(call(json!(id), "put", json!({"v":1})))
            .await;
        serve_one(&mut r, "put").await;
        assert_eq!(r.agent.json().await["id"], id);
    }
    let m = r.core.metrics().render();
    assert!(m.contains("idemp_mcp_cache_hits_total 3"), "{m}");
}

#[tokio::test]
async fn errors_and_interim_results_are_never_stored() {
    let mut r = start(Arc::new(MemoryStore::new()), config(|_| {}));
    // A JSON-RPC error: released, the retry runs.
    r.agent.send_json(call(json!(1), "send", json!({}))).await;
    let req = r.server.json().await;
    r.server
        .send_json(json!({"jsonrpc":"2.0","id":req["id"],"error":{"code":-32603,"message":"boom"}}))
        .await;
    assert_eq!(r.agent.json().await["error"]["message"], "boom");
    // An interim input_required result: released too.
    r.agent.send_json(call(json!(2), "send", json!({}))).await;
    let req = r.server.json().await;
    r.server
        .send_json(json!({"jsonrpc":"2.0","id":req["id"],"result":{"resultType":"input_required","requestState":"s"}}))
        .await;
    assert_eq!(
        r.agent.json().await["result"]["resultType"],
        "input_required"
    );
    // The retry with the input runs and its final result is stored.
    r.agent.send_json(call(json!(3), "send", json!({}))).await;
    serve_one(&mut r, "done").await;
    r.agent.json().await;
    r.agent.send_json(call(json!(4), "send", json!({}))).await;
    assert_eq!(r.agent.json().await["result"]["content"][0]["text"], "done");
    assert!(r.server.silent().await);
}

#[tokio::test]
async fn tool_errors_are_outcomes_unless_released() {
    for (mode, replayed) in [("store", true), ("release", false)] {
        let mut r = start(
            Arc::new(MemoryStore::new()),
            config(|a| {
                a.tool_errors = Some(if mode == "store" {
                    super::config::ToolErrors::Store
                } else {
                    super::config::ToolErrors::Release
                })
            }),
        );
        r.agent.send_json(call(json!(1), "send", json!({}))).await;
        let req = r.server.json().await;
        r.server
            .send_json(
                json!({"jsonrpc":"2.0","id":req["id"],"result":{"content":[],"isError":true}}),
            )
            .await;
        r.agent.json().await;
        r.agent.send_json(call(json!(2), "send", json!({}))).await;
        if replayed {
            assert_eq!(r.agent.json().await["result"]["isError"], true);
            assert!(r.server.silent().await, "{mode}");
        } else {
            serve_one(&mut r, "ok now").await;
            assert_eq!(r.agent.json().await["result"]["isError"], false);
        }
    }
}

#[tokio::test]
async fn a_duplicate_waits_for_the_running_call() {
    let mut r = start(Arc::new(MemoryStore::new()), config(|_| {}));
    r.agent
        .send_json(call(json!(1), "send", json!({"x":1})))
        .await;
    let first = r.server.json().await;
    // The duplicate arrives while the first runs: it must not reach the server.
    r.agent
        .send_json(call(json!(2), "send", json!({"x":1})))
        .await;
    assert!(r.server.silent().await);
    r.server.send_json(ok(&first["id"], "once")).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let v = r.agent.json().await;
        assert_eq!(v["result"]["content"][0]["text"], "once");
        ids.push(v["id"].clone());
    }
    ids.sort_by_key(|v| v.as_i64());
    assert_eq!(ids, vec![json!(1), json!(2)]);
    let m = r.core.metrics().render();
    assert!(m.contains("idemp_mcp_waits_total 1"), "{m}");
}

#[tokio::test]
async fn a_server_that_dies_mid_call_leaves_it_ambiguous() {
    let store: DynStore = Arc::new(MemoryStore::new());
    let cfg = config(|a| a.lease = Some("100ms".into()));
    let mut r = start(store.clone(), cfg.clone());
    r.agent
        .send_json(call(json!(1), "send", json!({"x":1})))
        .await;
    r.server.json().await;
    // The server exits: its output closes without an answer.
    drop(r.server);
    let v = r.agent.json().await;
    assert_eq!(v["id"], 1);
    assert_eq!(v["result"]["isError"], true);
    assert!(
        v["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("may have run")
    );
    assert!(
        !tokio::time::timeout(PATIENCE, r.task)
            .await
            .unwrap()
            .unwrap(),
        "the server ended first"
    );

    // A new proxy on the same store, after the lease: surfaced, not run again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut r2 = start(store.clone(), cfg);
    r2.agent
        .send_json(call(json!(7), "send", json!({"x":1})))
        .await;
    let v = r2.agent.json().await;
    assert_eq!(v["id"], 7);
    assert!(
        v["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("may have run"),
        "{v}"
    );
    assert!(r2.server.silent().await);

    // With --on-ambiguous retake it runs again.
    let mut r3 = start(
        store,
        config(|a| {
            a.lease = Some("100ms".into());
            a.on_ambiguous = Some(super::config::AmbiguousPolicy::Retake);
        }),
    );
    r3.agent
        .send_json(call(json!(8), "send", json!({"x":1})))
        .await;
    serve_one(&mut r3, "retaken").await;
    assert_eq!(
        r3.agent.json().await["result"]["content"][0]["text"],
        "retaken"
    );
}

#[tokio::test]
async fn the_budget_refuses_calls_beyond_n_across_proxies() {
    let store: DynStore = Arc::new(MemoryStore::new());
    let cfg = config(|a| a.max_calls_per_tool = Some(2));
    let mut a = start(store.clone(), cfg.clone());
    let mut b = start(store.clone(), cfg);
    list_tools(&mut a).await;
    // Pass-through tool: counted too.
    a.agent
        .send_json(call(json!(1), "put", json!({"v":1})))
        .await;
    serve_one(&mut a, "1").await;
    a.agent.json().await;
    b.agent
        .send_json(call(json!(1), "put", json!({"v":2})))
        .await;
    serve_one(&mut b, "2").await;
    b.agent.json().await;
    for r in [&mut a, &mut b] {
        r.agent
            .send_json(call(json!(9), "put", json!({"v":3})))
            .await;
        let v = r.agent.json().await;
        assert_eq!(v["result"]["isError"], true);
        assert!(
            v["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("at most 2 times")
        );
        assert!(r.server.silent().await);
    }
    // A replay is not a call to the server: it costs nothing.
    let mut c = start(store, config(|x| x.max_calls_per_tool = Some(1)));
    c.agent.send_json(call(json!(1), "send", json!({}))).await;
    serve_one(&mut c, "s").await;
    c.agent.json().await;
    c.agent.send_json(call(json!(2), "send", json!({}))).await;
    assert_eq!(c.agent.json().await["result"]["content"][0]["text"], "s");
    let m = c.core.metrics().render();
    assert!(m.contains("idemp_mcp_budget_refusals_total 0"), "{m}");
}

#[tokio::test]
async fn invalid_keys_are_protocol_errors() {
    let mut r = start(Arc::new(MemoryStore::new()), config(|_| {}));
    for meta in [
        json!({"dev.idemp/key": 5}),
        json!({"dev.idemp/key": "has space"}),
    ] {
        r.agent
            .send_json(json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send","_meta":meta}}))
            .await;
        let v = r.agent.json().await;
        assert_eq!(v["error"]["code"], -32602, "{v}");
    }
    // Arguments with no RFC 8785 form (a duplicate key) and no key of the agent's.
    r.agent
        .send(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{\"name\":\"send\",\"arguments\":{\"a\":1,\"a\":2}}}\n")
        .await;
    assert_eq!(r.agent.json().await["error"]["code"], -32602);
    assert!(r.server.silent().await);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_is_settled_by_a_late_answer_or_left_ambiguous() {
    let store: DynStore = Arc::new(MemoryStore::new());
    let mut r = start(store.clone(), config(|_| {}));
    let cancel = |id: i64| json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":id}});

    // Cancelled, but the server answers within the grace period: settled as usual.
    r.agent
        .send_json(call(json!(1), "send", json!({"k": 1})))
        .await;
    let req = r.server.json().await;
    r.agent.send_json(cancel(1)).await;
    assert_eq!(
        r.server.json().await["method"],
        "notifications/cancelled",
        "relayed"
    );
    r.server.send_json(ok(&req["id"], "done anyway")).await;
    assert_eq!(r.agent.json().await["id"], 1);
    r.agent
        .send_json(call(json!(2), "send", json!({"k": 1})))
        .await;
    assert_eq!(
        r.agent.json().await["result"]["content"][0]["text"],
        "done anyway"
    );

    // Cancelled and the server stays silent: after the grace period the call is
    // left to become ambiguous (the agent asked for no answer and gets none).
    r.agent
        .send_json(call(json!(3), "send", json!({"k": 2})))
        .await;
    r.server.json().await;
    r.agent.send_json(cancel(3)).await;
    r.server.json().await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(r.agent.silent().await);
    let m = r.core.metrics().render();
    assert!(m.contains("idemp_mcp_ambiguous_total 1"), "{m}");
    assert_eq!(
        store.stats().await.unwrap().in_progress + store.stats().await.unwrap().ambiguous,
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_server_that_ignores_the_end_of_its_input_is_not_waited_for_forever() {
    let mut r = start(Arc::new(MemoryStore::new()), config(|_| {}));
    r.agent.send_json(call(json!(1), "send", json!({}))).await;
    r.server.json().await;
    // The agent leaves; the server neither answers nor exits.
    drop(r.agent);
    assert!(
        r.server.line().await.is_empty(),
        "EOF on the server's stdin"
    );
    let ended = tokio::time::timeout(Duration::from_secs(30), r.task).await;
    assert!(
        ended.expect("the relay gave up waiting").unwrap(),
        "the agent ended first"
    );
}
