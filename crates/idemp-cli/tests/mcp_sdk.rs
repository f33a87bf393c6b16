//! `idemp mcp` between the official Python SDK's agent and tool server (`mcp` 2.x),
//! over stdio and over Streamable HTTP, counting the tools' side effects.

mod mcp_support;

use mcp_support::*;
use serde_json::json;

fn sqlite(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("idemp.db").display())
}

#[test]
fn stdio_policies_replays_and_keys_through_the_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let effects = Effects::new(dir.path());
    let store = sqlite(&dir);
    let target = stdio_target(&["--store", &store, "--scope", "run-1"]);
    let env = [("EFFECTS", effects.path.display().to_string())];
    let calls = json!([
        ["charge", {"customer": "c1", "cents": 100}],
        ["charge", {"cents": 100, "customer": "c1"}],
        ["charge", {"customer": "c1", "cents": 100}],
        ["charge", {"customer": "c1", "cents": 200}],
        ["lookup", {"customer": "c1"}],
        ["lookup", {"customer": "c1"}],
        ["set_flag", {"name": "x"}],
        ["set_flag", {"name": "x"}],
        ["refund", {"customer": "c1", "cents": 5000}],
        ["refund", {"customer": "c1", "cents": 5000}],
        ["charge", {"customer": "c2", "cents": 1}, "order-9"],
        ["charge", {"customer": "c2", "cents": 2}, "order-9"]
    ]);
    let r = run_agent(&target, &calls, &env);
    assert_eq!(r.len(), 12);
    // Guarded: three identical calls ran once; all three got the first result.
    assert_eq!(r[0]["text"], r[1]["text"]);
    assert_eq!(r[0]["text"], r[2]["text"]);
    assert_ne!(r[0]["text"], r[3]["text"]);
    // Read-only and idempotent tools pass through every time.
    assert_ne!(r[4]["text"], r[5]["text"]);
    // A tool error is an outcome: stored and replayed.
    assert_eq!(r[8]["is_error"], true);
    assert_eq!(r[9], r[8]);
    // The agent's own key: same key, other arguments → refused, not replayed.
    assert_eq!(r[10]["is_error"], false);
    assert_eq!(r[11]["is_error"], true);
    assert!(
        r[11]["text"]
            .as_str()
            .unwrap()
            .contains("different arguments"),
        "{}",
        r[11]
    );
    assert_eq!(effects.count("charge"), 3, "{:?}", effects.all());
    assert_eq!(effects.count("lookup"), 2);
    assert_eq!(effects.count("set_flag"), 2);
    assert_eq!(effects.count("refund"), 1);

    // A new agent session, same scope and store: the repeat is caught across
    // processes and restarts.
    let again = run_agent(
        &target,
        &json!([["charge", {"customer": "c1", "cents": 100}]]),
        &env,
    );
    assert_eq!(again[0]["text"], r[0]["text"]);
    assert_eq!(effects.count("charge"), 3);
    // Another scope (another agent run) is another call.
    let other = stdio_target(&["--store", &store, "--scope", "run-2"]);
    run_agent(
        &other,
        &json!([["charge", {"customer": "c1", "cents": 100}]]),
        &env,
    );
    assert_eq!(effects.count("charge"), 4);
}

#[test]
fn the_example_server_runs_once_behind_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("charges.log");
    let target = vec![
        idemp().to_string(),
        "mcp".into(),
        "--store".into(),
        sqlite(&dir),
        "--".into(),
        venv_python().display().to_string(),
        repo()
            .join("examples/mcp/annotated_server.py")
            .display()
            .to_string(),
    ];
    let calls = json!([
        ["charge", {"customer": "ada", "cents": 500}],
        ["charge", {"customer": "ada", "cents": 500}],
        ["get_balance", {"customer": "ada"}]
    ]);
    let r = run_agent(
        &target,
        &calls,
        &[("CHARGES_LOG", log.display().to_string())],
    );
    assert_eq!(r[0], r[1]);
    assert_eq!(r[2]["text"], "500");
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(lines.lines().count(), 1, "{lines}");
}

#[test]
fn streamable_http_through_the_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let effects = Effects::new(dir.path());
    let up = free_port();
    let _server = Proc(
        std::process::Command::new(venv_python())
            .arg(support("server.py"))
            .arg("--http")
            .arg(up.to_string())
            .env("EFFECTS", &effects.path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let listen = free_port();
    let admin = free_port();
    let _proxy = Proc(
        std::process::Command::new(idemp())
            .args(["mcp", "--store", &sqlite(&dir), "--cache-reads", "1h"])
            .args(["--upstream", &format!("http://127.0.0.1:{up}/mcp")])
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(up);
    wait_port(listen);
    let url = vec![format!("http://127.0.0.1:{listen}/mcp")];
    let calls = json!([
        ["charge", {"customer": "h1", "cents": 7}],
        ["charge", {"customer": "h1", "cents": 7}],
        ["lookup", {"customer": "h1"}],
        ["lookup", {"customer": "h1"}],
        ["lookup", {"customer": "h1"}],
        ["set_flag", {"name": "y"}],
        ["set_flag", {"name": "y"}]
    ]);
    let r = run_agent(&url, &calls, &[]);
    assert_eq!(r[0], r[1]);
    assert_eq!(r[2], r[3], "cached read");
    assert_eq!(r[3], r[4]);
    assert_eq!(effects.count("charge"), 1);
    assert_eq!(effects.count("lookup"), 1);
    assert_eq!(effects.count("set_flag"), 2);
    // Duplicates at once: one execution, the other waits for it (SSE or JSON).
    let par = json!(["parallel",
        ["charge", {"customer": "h2", "cents": 1, "delay_ms": 800}],
        ["charge", {"customer": "h2", "cents": 1, "delay_ms": 800}],
        ["charge", {"customer": "h2", "cents": 1, "delay_ms": 800}]
    ]);
    let r = run_agent(&url, &par, &[]);
    assert!(r.iter().all(|x| x == &r[0]), "{r:?}");
    assert_eq!(effects.count("charge"), 2);

    let metrics = http_get(admin, "/metrics");
    assert!(metrics.contains("idemp_mcp_replays_total"), "{metrics}");
    assert!(
        metrics.contains("idemp_mcp_cache_hits_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("idemp_store_latency_seconds_bucket"),
        "{metrics}"
    );
    assert!(http_get(admin, "/healthz").contains("ok"));
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn two_agents_at_once_on_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let effects = Effects::new(dir.path());
    let store = sqlite(&dir);
    let env = [("EFFECTS", effects.path.display().to_string())];
    let calls = json!([["charge", {"customer": "twin", "cents": 42, "delay_ms": 1000}]]);
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let target = stdio_target(&["--store", &store, "--scope", "shared-task"]);
            let env = env.clone();
            let calls = calls.clone();
            std::thread::spawn(move || run_agent(&target, &calls, &env))
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        results[0], results[1],
        "both agents got the one execution's result"
    );
    assert_eq!(results[0][0]["is_error"], false);
    assert_eq!(effects.count("charge"), 1, "{:?}", effects.all());
}

#[test]
fn the_call_budget_holds_across_two_processes() {
    let dir = tempfile::tempdir().unwrap();
    let effects = Effects::new(dir.path());
    let store = sqlite(&dir);
    let env = [("EFFECTS", effects.path.display().to_string())];
    let handles: Vec<_> = (0..2)
        .map(|agent| {
            let target = stdio_target(&[
                "--store",
                &store,
                "--scope",
                "loop",
                "--max-calls-per-tool",
                "4",
            ]);
            let env = env.clone();
            let calls = json!(
                (0..3)
                    .map(|i| json!(["charge", {"customer": format!("a{agent}"), "cents": i + 1}]))
                    .collect::<Vec<_>>()
            );
            std::thread::spawn(move || run_agent(&target, &calls, &env))
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let refused: Vec<_> = results.iter().filter(|r| r["is_error"] == true).collect();
    assert_eq!(refused.len(), 2, "{results:?}");
    assert!(
        refused
            .iter()
            .all(|r| r["text"].as_str().unwrap().contains("at most 4 times"))
    );
    assert_eq!(effects.count("charge"), 4, "{:?}", effects.all());
}

/// The Rust example server (the `rmcp` SDK), built next to the `idemp` binary.
fn rust_example() -> std::path::PathBuf {
    let bin = std::path::Path::new(idemp());
    let example = bin.parent().unwrap().join("examples/mcp_annotated_server");
    if !example.exists() {
        // `cargo nextest run --examples` builds examples as test harnesses under
        // hashed names, so the plain binary is built here, with the features of the
        // test command's build (the whole workspace, all features) so that only the
        // example itself is compiled, not the crates under it a second time.
        let status = std::process::Command::new(env!("CARGO"))
            .args([
                "build",
                "--workspace",
                "--all-features",
                "--example",
                "mcp_annotated_server",
            ])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cannot build the example: cargo build --workspace --all-features --example mcp_annotated_server"
        );
    }
    assert!(example.exists(), "missing {}", example.display());
    example
}

#[test]
fn the_rust_example_server_runs_once_behind_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("charges.log");
    let target = vec![
        idemp().to_string(),
        "mcp".into(),
        "--store".into(),
        sqlite(&dir),
        "--".into(),
        rust_example().display().to_string(),
    ];
    let calls = json!([
        ["charge", {"customer": "rs", "cents": 3}],
        ["charge", {"cents": 3, "customer": "rs"}],
        ["get_balance", {"customer": "rs"}],
        ["set_email", {"customer": "rs", "email": "a@b"}],
        ["set_email", {"customer": "rs", "email": "a@b"}]
    ]);
    let r = run_agent(
        &target,
        &calls,
        &[("CHARGES_LOG", log.display().to_string())],
    );
    assert_eq!(r[0], r[1]);
    assert_eq!(r[2]["text"], "3");
    assert_eq!(r[4]["text"], "a@b");
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(lines.lines().count(), 1, "{lines}");
}
