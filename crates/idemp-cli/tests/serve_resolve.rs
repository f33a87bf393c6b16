//! `idemp records resolve KEY --executed|--not-executed` on records left ambiguous by
//! a proxy killed mid-request: the real binary, a SQLite file, a restart.

mod serve_support;

use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use idemp::store::sqlite::SqliteStore;
use idemp::store::{Claim, ClaimOutcome, RecordKey, Store};
use serde_json::Value;
use serve_support::*;

fn records(store: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idemp"))
        .arg("records")
        .args(args)
        .args(["--store", store])
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn err(out: Output) -> String {
    assert!(!out.status.success(), "unexpected success");
    String::from_utf8(out.stderr).unwrap()
}

/// The record of `key` as `records ls --json` prints it.
fn listed(store: &str, key: &str) -> Value {
    let doc: Value = serde_json::from_str(&ok(records(store, &["ls", "--json"]))).unwrap();
    doc["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == key)
        .cloned()
        .unwrap_or_else(|| panic!("no record {key} in {doc}"))
}

async fn post(c: &reqwest::Client, url: &str, key: &str) -> reqwest::Response {
    c.post(url)
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(r#"{"amount":5}"#)
        .send()
        .await
        .unwrap()
}

/// Two requests whose proxy is killed while the upstream runs them: both records are
/// ambiguous. One is resolved as executed (its retry is told so and never runs), the
/// other as not executed (its retry runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_settles_ambiguous_records() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("idemp.db").display());
    let proxy = Proxy::start(&up.url(), &["--store", &store, "--lease", "1s"]);
    let c = client();
    let slow = proxy.url("/charge?delay_ms=60000");
    for key in ["amb-done", "amb-not"] {
        let (c, url) = (c.clone(), slow.clone());
        tokio::spawn(async move {
            c.post(url)
                .header("idempotency-key", key)
                .header("content-type", "application/json")
                .body(r#"{"amount":5}"#)
                .send()
                .await
        });
    }
    let start = Instant::now();
    while up.state.running.load(Ordering::SeqCst) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the requests never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut proxy = proxy;
    proxy.child.kill().unwrap(); // kill -9: nothing is settled
    proxy.child.wait().unwrap();
    // Let the 1 s lease pass: the records are ambiguous.
    let start = Instant::now();
    loop {
        if listed(&store, "amb-done")["state"] == "ambiguous"
            && listed(&store, "amb-not")["state"] == "ambiguous"
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "never ambiguous");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let scope = listed(&store, "amb-done")["scope"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!scope.is_empty());

    let out = ok(records(
        &store,
        &[
            "resolve",
            "amb-done",
            "--scope",
            &scope,
            "--executed",
            "--json",
        ],
    ));
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["resolved"], "executed");
    assert_eq!(listed(&store, "amb-done")["state"], "completed");
    let out = ok(records(
        &store,
        &["resolve", "amb-not", "--scope", &scope, "--not-executed"],
    ));
    assert!(out.contains("not executed"), "{out}");
    assert!(
        ok(records(&store, &["ls", "--json"]))
            .find("amb-not")
            .is_none(),
        "a not-executed record is gone"
    );
    // Resolving again changes nothing and says why.
    let e = err(records(
        &store,
        &["resolve", "amb-done", "--scope", &scope, "--not-executed"],
    ));
    assert!(
        e.contains("not ambiguous") && e.contains("completed"),
        "{e}"
    );
    assert_eq!(e.trim_end().lines().count(), 1);

    // A new proxy on the same file: the executed one is answered, never run again;
    // the other one runs.
    let before = up.state.charges_of("amb-done");
    assert_eq!(before, 1);
    let proxy = Proxy::start(&up.url(), &["--store", &store]);
    let res = post(&c, &proxy.url("/charge?delay_ms=60000"), "amb-done").await;
    assert_eq!(res.status(), 409);
    assert_eq!(res.headers()["x-should-retry"], "false");
    assert_eq!(res.headers()["idemp-resolved"], "executed");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let p: Value = res.json().await.unwrap();
    assert_eq!(p["type"], "https://idemp.dev/problems/response-not-stored");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("idemp records resolve --executed"),
        "{p}"
    );
    assert_eq!(
        up.state.charges_of("amb-done"),
        1,
        "never run a second time"
    );

    let res = post(&c, &proxy.url("/charge"), "amb-not").await;
    assert_eq!(res.status(), 201);
    assert_eq!(
        up.state.charges_of("amb-not"),
        2,
        "the operator said it had not run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_ambiguous_records_are_changed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idemp.db");
    let store_url = format!("sqlite://{}", path.display());
    let store = SqliteStore::open(&path).unwrap();
    let claim = |key: &str, lease: Duration| Claim {
        id: RecordKey::new("", key),
        fingerprint: None,
        lease,
        ttl: Duration::from_secs(3600),
        take_over_expired: false,
        nonce: None,
    };
    // Empty scope, ambiguous (its 50 ms lease passes), and one still running.
    assert!(matches!(
        store
            .claim(&claim("crashed", Duration::from_millis(50)))
            .await
            .unwrap(),
        ClaimOutcome::Acquired { .. }
    ));
    assert!(matches!(
        store
            .claim(&claim("running", Duration::from_secs(3600)))
            .await
            .unwrap(),
        ClaimOutcome::Acquired { .. }
    ));
    drop(store);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = store_url.as_str();

    // As `ls` prints it, the empty scope is `-`.
    let table = ok(records(s, &["ls"]));
    let line = table.lines().find(|l| l.contains("crashed")).unwrap();
    assert!(line.starts_with("- "), "{table}");
    let e = err(records(
        s,
        &["resolve", "running", "--scope", "-", "--executed"],
    ));
    assert!(e.contains("in progress") && e.contains("lease"), "{e}");
    let e = err(records(
        s,
        &["resolve", "nothing", "--scope", "-", "--executed"],
    ));
    assert!(e.contains("no record"), "{e}");
    let out = ok(records(
        s,
        &["resolve", "crashed", "--scope", "-", "--executed"],
    ));
    assert!(out.contains("executed"), "{out}");
    let shown = ok(records(s, &["show", "crashed", "--scope", "-", "--json"]));
    let rec: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(rec["state"], "completed");

    // Exactly one of --executed / --not-executed.
    let e = err(records(s, &["resolve", "crashed"]));
    assert!(
        e.contains("--executed") || e.contains("--not-executed"),
        "{e}"
    );
    let e = err(records(
        s,
        &["resolve", "crashed", "--executed", "--not-executed"],
    ));
    assert!(e.contains("cannot be used with"), "{e}");
}
