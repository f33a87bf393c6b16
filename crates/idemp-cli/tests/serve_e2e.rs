//! `idemp serve` end to end: the real binary in front of a real loopback upstream that
//! counts its executions.

mod serve_support;

use std::collections::HashMap;
use std::time::Duration;

use serve_support::*;

// ---------------------------------------------------------------------------------
// Storms of concurrent duplicates, per store

/// `keys` keys × `copies` concurrent duplicates through the proxy: the upstream runs
/// each key exactly once and every caller of a key gets the same body.
async fn storm(store_url: &str) {
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url(), &["--store", store_url, "--wait", "30s"]);
    let c = client();
    let keys = 16;
    let copies = 12;
    let run = unique();
    let mut tasks = Vec::new();
    for copy in 0..copies {
        for k in 0..keys {
            let c = c.clone();
            let url = proxy.url("/charge?delay_ms=20");
            let key = format!("storm-{run}-{k}");
            tasks.push(tokio::spawn(async move {
                let res = post_until_settled(&c, &url, &key, &format!(r#"{{"k":{k}}}"#)).await;
                let status = res.status().as_u16();
                let replayed = res.headers().contains_key("idempotent-replayed");
                let cookie = res.headers().contains_key("set-cookie");
                let body = res.bytes().await.unwrap();
                (key, copy, status, replayed, cookie, body)
            }));
        }
    }
    let mut bodies: HashMap<String, bytes::Bytes> = HashMap::new();
    let mut replays = 0;
    for t in tasks {
        let (key, _, status, replayed, cookie, body) = t.await.unwrap();
        assert_eq!(status, 201, "{key}: {}", String::from_utf8_lossy(&body));
        if replayed {
            replays += 1;
            assert!(!cookie, "Set-Cookie must never be replayed");
        }
        let first = bodies.entry(key.clone()).or_insert_with(|| body.clone());
        assert_eq!(*first, body, "{key}: every caller gets the same response");
    }
    for k in 0..keys {
        let key = format!("storm-{run}-{k}");
        assert_eq!(
            up.state.charges_of(&key),
            1,
            "{key} executed {} times",
            up.state.charges_of(&key)
        );
    }
    assert_eq!(up.state.total(), keys);
    assert_eq!(replays, keys * (copies - 1));
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storm_memory_store_executes_each_key_once() {
    storm("memory:").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storm_sqlite_store_executes_each_key_once() {
    let dir = tempfile::tempdir().unwrap();
    storm(&format!(
        "sqlite://{}",
        dir.path().join("idemp.db").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storm_redis_store_executes_each_key_once() {
    let prefix = format!("idemp_http_{}", unique());
    let url = format!("{}?prefix={prefix}", redis_url());
    let store = idemp::store::redis::RedisStore::connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot reach Redis at {url}: {e}; start it with scripts/services.sh")
        });
    storm(&url).await;
    // Remove this run's records and tombstones (only under its own prefix).
    store.clear().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storm_postgres_store_executes_each_key_once() {
    let schema = format!("idemp_http_{}", unique());
    let base = postgres_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}schema={schema}");
    let store = idemp::store::postgres::PostgresStore::connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot reach PostgreSQL at {base}: {e}; start it with scripts/services.sh")
        });
    storm(&url).await;
    // Drop this run's schema.
    let client = store.pool().get().await.unwrap();
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------
// Keys, replay, headers

#[tokio::test]
async fn replays_carry_the_header_and_never_set_cookie() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url(), &["--store", "memory:"]);
    let c = client();
    let first = post_until_settled(&c, &proxy.url("/charge"), "k1", "{}").await;
    assert_eq!(first.status(), 201);
    assert!(
        first.headers().contains_key("set-cookie"),
        "the first response is the upstream's"
    );
    assert!(!first.headers().contains_key("idempotent-replayed"));
    let first_body = first.text().await.unwrap();
    let again = post_until_settled(&c, &proxy.url("/charge"), "\"k1\"", "{}").await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert!(!again.headers().contains_key("set-cookie"));
    assert_eq!(again.text().await.unwrap(), first_body);
    // Same key, another body: 422 problem.
    let mismatch = post_until_settled(&c, &proxy.url("/charge"), "k1", r#"{"x":1}"#).await;
    assert_eq!(mismatch.status(), 422);
    assert_eq!(
        mismatch.headers()["content-type"],
        "application/problem+json"
    );
    let p: serde_json::Value = mismatch.json().await.unwrap();
    assert_eq!(p["type"], "https://idemp.dev/problems/key-mismatch");
    assert_eq!(up.state.charges_of("k1"), 1);
}

#[tokio::test]
async fn forwarded_requests_have_host_rewritten_and_no_hop_by_hop_headers() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url(), &["--store", "memory:"]);
    let res = client()
        .post(proxy.url("/headers"))
        .header("x-forwarded-for", "10.0.0.1")
        .header("connection", "keep-alive, x-drop-me")
        .header("x-drop-me", "1")
        .header("x-keep-me", "2")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen: HashMap<String, String> = res.json().await.unwrap();
    assert_eq!(seen["host"], up.addr.to_string());
    assert_eq!(seen["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    assert_eq!(seen["x-forwarded-host"], proxy.addr.to_string());
    assert_eq!(seen["x-keep-me"], "2");
    assert!(!seen.contains_key("x-drop-me"), "{seen:?}");
}

#[tokio::test]
async fn derive_key_deduplicates_keyless_retries() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url(), &["--store", "memory:", "--derive-key"]);
    let c = client();
    let send = |body: &'static str| {
        let c = c.clone();
        let url = proxy.url("/charge");
        async move {
            c.post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let a = send(r#"{"to":"bob","amount":5}"#).await;
    assert_eq!(a.status(), 201);
    let a_body = a.text().await.unwrap();
    // The same request, keys reordered: an agent's retry.
    let b = send(r#"{ "amount": 5, "to": "bob" }"#).await;
    assert_eq!(b.headers()["idempotent-replayed"], "true");
    assert_eq!(b.text().await.unwrap(), a_body);
    // A different request runs.
    let c2 = send(r#"{"to":"bob","amount":6}"#).await;
    assert!(!c2.headers().contains_key("idempotent-replayed"));
    assert_eq!(up.state.total(), 2);
}

#[tokio::test]
async fn require_key_refuses_keyless_posts_and_env_and_file_follow_precedence() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("idemp.toml");
    std::fs::write(&file, "require_key = true\nstore = \"memory:\"\n").unwrap();
    let file = file.to_str().unwrap();
    let c = client();
    let keyless = |proxy: &Proxy| c.post(proxy.url("/charge")).body("{}").send();

    // File says require: 400 missing-key.
    let proxy = Proxy::start(&up.url(), &["--config", file]);
    let res = keyless(&proxy).await.unwrap();
    assert_eq!(res.status(), 400);
    let p: serde_json::Value = res.json().await.unwrap();
    assert_eq!(p["type"], "https://idemp.dev/problems/missing-key");
    drop(proxy);

    // The environment beats the file.
    let proxy = Proxy::start_with_env(
        &up.url(),
        &["--config", file],
        &[("IDEMP_REQUIRE_KEY", "false")],
    );
    assert_eq!(keyless(&proxy).await.unwrap().status(), 201);
    drop(proxy);

    // A flag beats the environment.
    let proxy = Proxy::start_with_env(
        &up.url(),
        &["--config", file, "--require-key"],
        &[("IDEMP_REQUIRE_KEY", "false")],
    );
    assert_eq!(keyless(&proxy).await.unwrap().status(), 400);
    assert_eq!(up.state.total(), 1);
}

#[test]
fn bad_flags_fail_with_a_clear_one_line_error() {
    for (args, needle) in [
        (vec!["--max-body", "8 parsecs"], "--max-body"),
        (vec!["--ttl", "soon"], "--ttl"),
        (vec!["--store", "ftp://x"], "unknown scheme"),
        (vec!["--listen", "nowhere"], "--listen"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_idemp"))
            .args([
                "serve",
                "--upstream",
                "http://127.0.0.1:9",
                "--admin",
                "off",
            ])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_idemp"))
        .args(["serve"])
        .env_remove("IDEMP_UPSTREAM")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--upstream"));
}

// ---------------------------------------------------------------------------------
// Unguarded traffic streams

#[tokio::test]
async fn unguarded_requests_stream_through_in_both_directions() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url(), &["--store", "memory:", "--max-body", "1MiB"]);
    let c = client();

    // The response streams: the first chunk arrives while the upstream still holds
    // the second back.
    let mut res = c.get(proxy.url("/stream")).send().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(20), res.chunk())
        .await
        .expect("the first chunk must arrive before the upstream finishes: the proxy buffered")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"first\n");
    up.state.stream_gate.notify_one();
    let rest = res.bytes().await.unwrap();
    assert_eq!(&rest[..], b"second\n");

    // A request body above --max-body goes through untouched on unguarded methods.
    let big = vec![b'x'; 3 << 20];
    let res = c.put(proxy.url("/upload")).body(big).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["received"], 3 << 20);

    // …while on a guarded request it is 413.
    let res = c
        .post(proxy.url("/charge"))
        .header("idempotency-key", "big")
        .body(vec![b'x'; 2 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(up.state.charges_of("big"), 0);
}

// ---------------------------------------------------------------------------------
// Upstream failures release the claim

#[tokio::test]
async fn dead_upstream_is_502_and_the_retry_runs_once_it_is_back() {
    // A port with nobody on it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let proxy = Proxy::start(&format!("http://{port}"), &["--store", "memory:"]);
    let c = client();
    let res = post_until_settled(&c, &proxy.url("/charge"), "k", "{}").await;
    assert_eq!(res.status(), 502);
    assert!(res.headers().contains_key("retry-after"));
    let p: serde_json::Value = res.json().await.unwrap();
    assert_eq!(p["type"], "https://idemp.dev/problems/upstream-unreachable");

    // The upstream comes up on that port: the same key now runs (the 502 released it).
    let up = Upstream::start_on(port).await;
    let res = post_until_settled(&c, &proxy.url("/charge"), "k", "{}").await;
    assert_eq!(res.status(), 201);
    assert!(!res.headers().contains_key("idempotent-replayed"));
    assert_eq!(up.state.charges_of("k"), 1);
}

#[tokio::test]
async fn retryable_upstream_statuses_are_not_stored() {
    let up = Upstream::start().await;
    *up.state.flaky.lock().unwrap() = vec![503, 429];
    let proxy = Proxy::start(&up.url(), &["--store", "memory:"]);
    let c = client();
    for expected in [503, 429, 201] {
        let res = post_until_settled(&c, &proxy.url("/flaky"), "f", "{}").await;
        assert_eq!(res.status(), expected);
        assert!(!res.headers().contains_key("idempotent-replayed"));
    }
    let res = post_until_settled(&c, &proxy.url("/flaky"), "f", "{}").await;
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    assert_eq!(up.state.total(), 3);
}

#[tokio::test]
async fn upstream_timeout_is_504_and_surfaced_as_ambiguous() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(
        &up.url(),
        &["--store", "memory:", "--upstream-timeout", "700ms"],
    );
    let c = client();
    let res = post_until_settled(&c, &proxy.url("/charge?delay_ms=5000"), "slow", "{}").await;
    assert_eq!(res.status(), 504);
    let p: serde_json::Value = res.json().await.unwrap();
    assert_eq!(p["type"], "https://idemp.dev/problems/upstream-timeout");
    // The request reached the upstream, which may have done the work: under the
    // default `--on-ambiguous surface` the retry (the same request) is told so and
    // never runs it again.
    let res = c
        .post(proxy.url("/charge?delay_ms=5000"))
        .header("idempotency-key", "slow")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    assert_eq!(res.headers()["x-should-retry"], "false");
    let p: serde_json::Value = res.json().await.unwrap();
    assert_eq!(p["type"], "https://idemp.dev/problems/outcome-ambiguous");
    // The upstream counts an execution when the request arrives.
    assert_eq!(up.state.charges_of("slow"), 1);
}

#[tokio::test]
async fn upstream_timeout_under_retake_runs_again() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(
        &up.url(),
        &[
            "--store",
            "memory:",
            "--upstream-timeout",
            "700ms",
            "--on-ambiguous",
            "retake",
        ],
    );
    let c = client();
    let res = post_until_settled(&c, &proxy.url("/charge?delay_ms=5000"), "slow", "{}").await;
    assert_eq!(res.status(), 504);
    // `retake` is at-least-once: the key is released and the retry runs.
    let res = post_until_settled(&c, &proxy.url("/charge"), "slow", "{}").await;
    assert_eq!(res.status(), 201);
    assert_eq!(up.state.charges_of("slow"), 2);
}

// ---------------------------------------------------------------------------------
// Admin

#[tokio::test]
async fn healthz_and_metrics() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url(), &["--store", "memory:"]);
    let c = client();
    for _ in 0..3 {
        post_until_settled(&c, &proxy.url("/charge"), "m", "{}").await;
    }
    let admin = proxy.admin.expect("admin listener");
    let health = c
        .get(format!("http://{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let m = Scrape::fetch(admin).await;
    assert_eq!(m.value("idemp_claims_total"), 1.0);
    assert_eq!(m.value("idemp_replays_total"), 2.0);
    assert_eq!(m.value("idemp_mismatches_total"), 0.0);
    assert!(
        m.0.contains("idemp_store_latency_seconds_bucket"),
        "{}",
        m.0
    );
}
