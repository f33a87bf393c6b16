//! `kill -9` of `idemp mcp` mid-call and a restart on the same store, and a tool
//! server that dies mid-call (the official Python SDK's server; the test plays the
//! agent line by line).

mod mcp_support;

use mcp_support::*;
use serde_json::json;
use std::time::Duration;

fn server() -> Vec<String> {
    vec![venv_python().display().to_string(), support("server.py")]
}

#[test]
fn kill_9_mid_call_then_restart_on_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let effects = Effects::new(dir.path());
    let store = format!("sqlite://{}", dir.path().join("idemp.db").display());
    let env = [("EFFECTS", effects.path.display().to_string())];
    let flags = ["--store", store.as_str(), "--lease", "1s"];
    let call = sdk_call(
        1,
        "charge",
        json!({"customer": "k9", "cents": 5, "delay_ms": 30000}),
    );

    let mut p = RawProxy::start(&flags, &server(), &env);
    p.send_json(&call);
    effects.wait_for("charge", 1);
    let _ = std::process::Command::new("kill")
        .arg("-9")
        .arg(p.proc.pid().to_string())
        .status();
    p.proc.wait();
    effects.kill_servers();
    // The claim is left in progress; its lease passes.
    std::thread::sleep(Duration::from_millis(1500));

    // Restarted (default --on-ambiguous surface): the call may have run, so it is
    // not run again; the agent is told.
    let mut p = RawProxy::start(&flags, &server(), &env);
    p.send_json(&sdk_call(
        2,
        "charge",
        json!({"delay_ms": 30000, "cents": 5, "customer": "k9"}),
    ));
    let v = p.json();
    assert_eq!(v["id"], 2);
    assert_eq!(v["result"]["isError"], true);
    assert!(text_of(&v).contains("may have run"), "{v}");
    assert_eq!(effects.count("charge"), 1);
    drop(p);

    // With retake, the same call runs again (at-least-once, chosen).
    let mut flags2 = flags.to_vec();
    flags2.extend(["--on-ambiguous", "retake"]);
    let mut p = RawProxy::start(&flags2, &server(), &env);
    p.send_json(&sdk_call(
        3,
        "charge",
        json!({"customer": "k9", "cents": 5, "delay_ms": 30000}),
    ));
    effects.wait_for("charge", 2);
    // Its server is busy for 30 s: end it rather than wait.
    effects.kill_servers();
    assert!(text_of(&p.json()).contains("may have run"));
    assert!(p.closed());
    drop(p);
}

#[test]
fn a_server_that_dies_mid_call() {
    let dir = tempfile::tempdir().unwrap();
    let effects = Effects::new(dir.path());
    let store = format!("sqlite://{}", dir.path().join("idemp.db").display());
    let env = [("EFFECTS", effects.path.display().to_string())];
    let flags = ["--store", store.as_str(), "--lease", "1s"];
    let mut p = RawProxy::start(&flags, &server(), &env);
    p.send_json(&sdk_call(1, "die", json!({"customer": "d"})));
    let v = p.json();
    assert_eq!(v["id"], 1);
    assert_eq!(v["result"]["isError"], true);
    assert!(text_of(&v).contains("may have run"), "{v}");
    assert!(p.closed(), "the proxy stops with its server");
    assert_eq!(p.proc.wait().code(), Some(7), "the server's exit code");

    std::thread::sleep(Duration::from_millis(1500));
    let mut p = RawProxy::start(&flags, &server(), &env);
    p.send_json(&sdk_call(2, "die", json!({"customer": "d"})));
    assert!(text_of(&p.json()).contains("may have run"));
    assert_eq!(effects.count("die"), 1, "not run again");
}
