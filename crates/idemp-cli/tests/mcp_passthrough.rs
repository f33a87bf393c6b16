//! The real binary relays what it does not guard byte for byte, both ways, and
//! never crashes on malformed lines (a scripted standard-library fake server).

mod mcp_support;

use mcp_support::*;

fn python3() -> String {
    "python3".into()
}

#[test]
fn malformed_lines_pass_through_untouched_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("idemp.db").display());
    let mut p = RawProxy::start(
        &["--store", &store],
        &[python3(), support("echo_server.py")],
        &[],
    );
    // The server's own garbage first.
    assert_eq!(p.line(), "a server that writes garbage on stdout\n");
    let lines = [
        "not json\n",
        "{\"unterminated\": \n",
        "[1,2,3]\n",
        "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"answer\":\"to a server request\"}}\n",
        "{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"tools/call\",\"params\":{\"name\":\"x\"}}\n",
        "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":\"not an object\"}\n",
        "\u{0}\u{1}\u{7f} binary-ish \u{e9}\n",
    ];
    for l in lines {
        p.send(l);
        // Requests with an id get an answer from the echo server; the rest come back
        // verbatim: either way nothing was rewritten on the way there.
        let back = p.line();
        if l.contains("\"id\":2") {
            assert!(back.contains("not an object"), "{back}");
        } else {
            assert_eq!(back, l);
        }
    }
    // A real call still works after all that.
    p.send_json(&sdk_call(5, "echo", serde_json::json!({"a": 1})));
    let v = p.json();
    assert_eq!(v["id"], 5);
    assert_eq!(v["result"]["echo"]["arguments"]["a"], 1);
    // The agent leaves: the server gets EOF, exits 0, and so does the proxy.
    drop(p.stdin.take());
    assert!(p.closed());
    assert!(p.proc.wait().success());
}

#[test]
fn bad_flags_are_one_line_errors() {
    for args in [
        vec!["mcp"],
        vec!["mcp", "--upstream", "http://127.0.0.1:1/mcp", "--", "x"],
        vec!["mcp", "--ttl", "soon", "--", "x"],
        vec!["mcp", "--store", "ftp://x", "--", "x"],
        // TLS trust is for https:// servers, and a CA file must be readable at start.
        vec!["mcp", "--upstream-ca", "ca.pem", "--", "x"],
        vec![
            "mcp",
            "--upstream",
            "http://127.0.0.1:1/mcp",
            "--upstream-roots",
            "native",
        ],
        vec![
            "mcp",
            "--upstream",
            "https://localhost:1/mcp",
            "--upstream-ca",
            "/nonexistent/ca.pem",
        ],
    ] {
        let out = std::process::Command::new(idemp())
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("idemp: "), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
    let out = std::process::Command::new(idemp())
        .args(["mcp", "--store", "memory:", "--", "/nonexistent/server"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot start the MCP server"));
}
