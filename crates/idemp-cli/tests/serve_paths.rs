//! Request paths through the real binary: one spelling per resource before the layer
//! keys it and the forwarder sends it, and never out of the upstream's base path.

mod faulty_upstream;
mod serve_support;

use faulty_upstream::*;
use serve_support::Proxy;

fn post(path: &str, key: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\nhost: proxy\nidempotency-key: {key}\ncontent-type: application/json"
    )
}

/// `//v1/charges`, `/v1/charges/`, `/v1/%63harges` and `/v1/./charges` used to make
/// four records (four executions under one key); they are one resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spellings_of_one_path_are_one_record() {
    let up = FaultyUpstream::start(vec![send(response(201, r#"{"id":"ch_1"}"#))]).await;
    let proxy = Proxy::start(&format!("{}/public", up.url()), &["--store", "memory:"]);
    let mut replays = 0;
    for path in [
        "/v1/charges",
        "//v1/charges",
        "/v1/charges/",
        "/v1/%63harges",
        "/v1/./charges",
        "/v1/x/../charges",
    ] {
        let res = raw_request(proxy.addr, &post(path, "one-resource"), b"{}")
            .await
            .unwrap();
        assert_eq!(res.status, 201, "{path}: {res:?}");
        assert_eq!(res.body, br#"{"id":"ch_1"}"#);
        if res.header("idempotent-replayed") == Some("true") {
            replays += 1;
        }
    }
    assert_eq!(up.executions(), 1, "{:?}", up.request_lines());
    assert_eq!(replays, 5);
    assert_eq!(
        up.request_lines(),
        vec!["POST /public/v1/charges HTTP/1.1".to_owned()],
        "the upstream gets the normal form under its base path"
    );
}

/// `/../admin` under `--upstream http://H/public` was forwarded as `/public/../admin`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_climbs_out_of_the_base_path_is_400_and_never_forwarded() {
    let up = FaultyUpstream::start(vec![send(response(200, "{}"))]).await;
    let proxy = Proxy::start(&format!("{}/public", up.url()), &["--store", "memory:"]);
    for (method, path) in [
        ("POST", "/../admin"),
        ("GET", "/../admin"),
        ("GET", "/v1/../../admin"),
        ("GET", "/%2e%2e/admin"),
        ("GET", "/%2E%2e/%2e%2e/etc/passwd"),
        ("DELETE", "/a/b/../../../x"),
    ] {
        let head = format!("{method} {path} HTTP/1.1\nhost: proxy");
        let res = raw_request(proxy.addr, &head, b"").await.unwrap();
        assert_eq!(res.status, 400, "{method} {path}");
        assert_eq!(res.header("content-type"), Some("application/problem+json"));
        let p: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
        assert_eq!(p["type"], "https://idemp.dev/problems/invalid-path");
        assert!(p["detail"].as_str().unwrap().contains("base path"), "{p}");
    }
    // A malformed escape is refused too.
    let res = raw_request(proxy.addr, "GET /a%zz HTTP/1.1\nhost: proxy", b"")
        .await
        .unwrap();
    assert_eq!(res.status, 400);
    assert_eq!(up.executions(), 0, "{:?}", up.request_lines());

    // `..` that stays inside is fine, and the query is kept as sent.
    let res = raw_request(
        proxy.addr,
        "GET /a/../b?x=%2e%2e&x=1 HTTP/1.1\nhost: proxy",
        b"",
    )
    .await
    .unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(
        up.request_lines(),
        vec!["GET /public/b?x=%2e%2e&x=1 HTTP/1.1".to_owned()]
    );
}
