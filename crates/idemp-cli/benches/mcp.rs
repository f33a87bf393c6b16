//! Added latency of `idemp mcp` over stdio: a passed-through call, a replayed call
//! and a first guarded call, against the direct connection to the same server.
//!
//! The agent (this process) sends one `tools/call` at a time and times each round
//! trip; the server is this same binary run with `IDEMP_MCP_BENCH_SERVER=1`, a
//! minimal MCP server in Rust that answers at once. Output: one JSON object per
//! scenario on stdout (read by `bench/areas/mcp.py`).
//!
//!     cargo bench -p idemp-cli --bench mcp            # MCP_BENCH_CALLS=N (default 5000)

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use serde_json::{Value, json};

fn serve() {
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in stdin.lock().lines() {
        let Ok(line) = line else { return };
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let (Some(id), Some(method)) = (msg.get("id"), msg["method"].as_str()) else {
            continue;
        };
        let result = match method {
            "tools/list" => json!({"tools": [
                {"name": "read", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}},
                {"name": "write", "inputSchema": {"type": "object"}}
            ]}),
            _ => {
                json!({"content": [{"type": "text", "text": "ok: a result of a typical small size"}], "isError": false})
            }
        };
        let _ = writeln!(
            out,
            "{}",
            json!({"jsonrpc": "2.0", "id": id, "result": result})
        );
        let _ = out.flush();
    }
}

struct Conn {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
}

impl Conn {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .env("IDEMP_MCP_BENCH_SERVER", "1")
            .env("IDEMP_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
            next_id: 0,
        }
    }

    /// One request, one answer: the round trip.
    fn call(&mut self, method: &str, params: Value) -> (std::time::Duration, Value) {
        self.next_id += 1;
        let line = format!(
            "{}\n",
            json!({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        );
        let start = Instant::now();
        self.stdin.write_all(line.as_bytes()).unwrap();
        self.stdin.flush().unwrap();
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).unwrap();
        let elapsed = start.elapsed();
        (elapsed, serde_json::from_str(&answer).expect("an answer"))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn measure(
    conn: &mut Conn,
    n: usize,
    args: impl Fn(usize) -> (String, Value),
) -> (f64, f64, usize) {
    let mut us = Vec::with_capacity(n);
    for i in 0..n {
        let (tool, a) = args(i);
        let (d, v) = conn.call("tools/call", json!({"name": tool, "arguments": a}));
        assert!(v.get("result").is_some(), "{v}");
        us.push(d.as_secs_f64() * 1e6);
    }
    us.sort_by(|a, b| a.total_cmp(b));
    (percentile(&us, 0.5), percentile(&us, 0.99), n)
}

fn main() {
    if std::env::var_os("IDEMP_MCP_BENCH_SERVER").is_some() {
        return serve();
    }
    // `cargo bench` passes --bench; `cargo test --benches` runs us once, quickly.
    let testing = !std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("MCP_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if testing { 50 } else { 5000 });
    let warmup = (n / 10).max(10);
    let me = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let proxy = |store: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_idemp"));
        c.args(["mcp", "--store", store, "--scope", "bench", "--"])
            .arg(&me);
        c
    };
    let sqlite = format!("sqlite://{}", dir.path().join("bench.db").display());
    let report = |scenario: &str, (p50, p99, calls): (f64, f64, usize), note: &str| {
        println!(
            "{}",
            json!({"scenario": scenario, "p50_us": p50, "p99_us": p99, "calls": calls, "note": note})
        );
    };

    // Direct: the agent talks to the server itself.
    let mut direct = Conn::spawn(Command::new(&me));
    direct.call("tools/list", json!({}));
    measure(&mut direct, warmup, |i| ("read".into(), json!({"q": i})));
    report(
        "direct",
        measure(&mut direct, n, |i| ("read".into(), json!({"q": i}))),
        "no proxy",
    );
    drop(direct);

    // Through idemp mcp on its default store (SQLite, synchronous=FULL).
    let mut via = Conn::spawn(proxy(&sqlite));
    via.call("tools/list", json!({}));
    measure(&mut via, warmup, |i| ("read".into(), json!({"q": i})));
    report(
        "pass",
        measure(&mut via, n, |i| ("read".into(), json!({"q": i}))),
        "read-only tool: relayed untouched, no store access",
    );
    // One guarded call, then its replays.
    via.call(
        "tools/call",
        json!({"name": "write", "arguments": {"to": "bob", "n": 1}}),
    );
    measure(&mut via, warmup, |_| {
        ("write".into(), json!({"n": 1, "to": "bob"}))
    });
    report(
        "replay",
        measure(&mut via, n, |_| {
            ("write".into(), json!({"n": 1, "to": "bob"}))
        }),
        "guarded tool, same arguments: answered from the store",
    );
    let first_n = n.min(1000);
    report(
        "first_sqlite",
        measure(&mut via, first_n, |i| {
            ("write".into(), json!({"n": i + 10, "to": "bob"}))
        }),
        "guarded tool, new arguments: claim + forward + complete, bound by SQLite's commit (synchronous=FULL, an fsync)",
    );
    drop(via);
    // The same first calls on the memory store: the proxy's own share.
    let mut mem = Conn::spawn(proxy("memory:"));
    mem.call("tools/list", json!({}));
    measure(&mut mem, warmup, |i| ("write".into(), json!({"warmup": i})));
    report(
        "first_memory",
        measure(&mut mem, first_n, |i| ("write".into(), json!({"n": i}))),
        "guarded tool, new arguments, memory store: no commit to wait for",
    );
}
