//! What "the same request" is, and whose: exact-number fingerprints, query order,
//! media type, method override, decoded request bodies (and a compressed bomb), path
//! spellings, and tenants that authenticate with API-key headers. Side effects are
//! counted.
#![cfg(feature = "http")]

mod http_support;

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body::Body as _;
use http_body_util::Full;
use http_support::*;
use idemp::http::IdempotencyLayer;

fn layer(derive: bool) -> IdempotencyLayer {
    IdempotencyLayer::builder(memory())
        .derive_key(derive)
        .build()
}

const PAIRS: [(&str, &str); 4] = [
    (
        r#"{"to_account":9007199254740993,"amount":1}"#,
        r#"{"to_account":9007199254740992,"amount":1}"#,
    ),
    (r#"{"amount":0.1}"#, r#"{"amount":0.10000000000000000001}"#),
    (
        r#"{"n":18446744073709551616}"#,
        r#"{"n":18446744073709551615}"#,
    ),
    (r#"{"amount":1.0}"#, r#"{"amount":1}"#),
];

#[tokio::test]
async fn numbers_that_a_double_would_merge_are_different_requests() {
    // Same explicit key: the second is a mismatch, never a replay of the first.
    let h = Scripted::default();
    let s = svc(&layer(false), &h);
    for (i, (a, b)) in PAIRS.iter().enumerate() {
        let key = format!("k{i}");
        assert_eq!(
            send(&s, post("/transfers", Some(&key), a)).await.status,
            201
        );
        let got = send(&s, post("/transfers", Some(&key), b)).await;
        assert_eq!(got.status, 422, "{a} vs {b}");
        assert_eq!(
            got.problem_type(),
            "https://idemp.dev/problems/key-mismatch"
        );
    }
    assert_eq!(h.runs(), PAIRS.len());

    // Derived keys: each is its own transfer, executed.
    let h = Scripted::default();
    let s = svc(&layer(true), &h);
    for (a, b) in PAIRS {
        let first = send(&s, post("/transfers", None, a)).await;
        let second = send(&s, post("/transfers", None, b)).await;
        assert!(!first.replayed() && !second.replayed(), "{a} vs {b}");
    }
    assert_eq!(h.runs(), 2 * PAIRS.len());
    // While the same body, respelled, is the same request.
    let again = send(
        &s,
        post(
            "/transfers",
            None,
            "{ \"amount\" : 1 ,\"to_account\":9007199254740993}",
        ),
    )
    .await;
    assert!(again.replayed());
    assert_eq!(h.runs(), 2 * PAIRS.len());
}

#[tokio::test]
async fn repeated_query_parameters_keep_their_order() {
    let h = Scripted::default();
    let s = svc(&layer(false), &h);
    assert_eq!(
        send(&s, post("/pay?amount=100&amount=1", Some("k"), "{}"))
            .await
            .status,
        201
    );
    assert_eq!(
        send(&s, post("/pay?amount=1&amount=100", Some("k"), "{}"))
            .await
            .status,
        422
    );
    // Other parameters may move around them.
    assert!(
        send(&s, post("/pay?x=1&amount=100&amount=1", Some("k2"), "{}"))
            .await
            .status
            == 201
    );
    assert!(
        send(&s, post("/pay?amount=100&amount=1&x=1", Some("k2"), "{}"))
            .await
            .replayed()
    );
    assert_eq!(h.runs(), 2);
}

#[tokio::test]
async fn media_type_and_method_override_are_part_of_the_request() {
    let h = Scripted::default();
    let s = svc(&layer(false), &h);
    assert_eq!(send(&s, post("/x", Some("k"), "{}")).await.status, 201);
    let text = Request::post("/x")
        .header("content-type", "text/plain")
        .header("idempotency-key", "k")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    assert_eq!(send(&s, text).await.status, 422);
    let charset = Request::post("/x")
        .header("content-type", "application/json; charset=utf-8")
        .header("idempotency-key", "k")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    assert!(
        send(&s, charset).await.replayed(),
        "parameters are not the media type"
    );
    let overridden = Request::post("/x")
        .header("content-type", "application/json")
        .header("x-http-method-override", "DELETE")
        .header("idempotency-key", "k")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    assert_eq!(send(&s, overridden).await.status, 422);
    assert_eq!(h.runs(), 1);
}

fn encoded(coding: &str, body: &[u8]) -> Vec<u8> {
    match coding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(body).unwrap();
            e.finish().unwrap()
        }
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(body).unwrap();
            e.finish().unwrap()
        }
        "zstd" => zstd::encode_all(body, 3).unwrap(),
        "identity" => body.to_vec(),
        other => panic!("{other}"),
    }
}

fn post_encoded(key: Option<&str>, coding: &str, body: &[u8]) -> Request<Full<Bytes>> {
    let mut b = Request::post("/v1/messages")
        .header("content-type", "application/json")
        .header("content-encoding", coding);
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    b.body(Full::new(Bytes::from(encoded(coding, body))))
        .unwrap()
}

#[tokio::test]
async fn compressed_bodies_are_fingerprinted_decoded() {
    let body = br#"{"model":"m","messages":[{"role":"user","content":"hello"}]}"#;
    for derive in [false, true] {
        let h = Scripted::default();
        let s = svc(&layer(derive), &h);
        let key = (!derive).then_some("k");
        let first = send(&s, post_encoded(key, "identity", body)).await;
        assert_eq!(first.status, 201);
        for coding in ["gzip", "zstd", "deflate"] {
            let again = send(&s, post_encoded(key, coding, body)).await;
            assert!(again.replayed(), "{coding} (derive {derive}): {again:?}");
        }
        // The handler got the body as sent (still compressed), not the decoded copy.
        assert_eq!(h.runs(), 1);
        let different = send(&s, post_encoded(key, "gzip", br#"{"model":"other"}"#)).await;
        assert_eq!(different.status, if derive { 201 } else { 422 });
    }
}

#[tokio::test]
async fn a_small_compressed_bomb_is_413_and_never_runs() {
    let h = Scripted::default();
    let s = svc(
        &IdempotencyLayer::builder(memory())
            .max_body(1 << 20)
            .build(),
        &h,
    );
    // 16 KiB on the wire, 16 MiB once decoded.
    let bomb = Request::post("/v1/messages")
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .header("idempotency-key", "k")
        .body(Full::new(Bytes::from(encoded(
            "gzip",
            &vec![b' '; 16 << 20],
        ))))
        .unwrap();
    assert!(bomb.body().size_hint().exact().unwrap() < 64 << 10);
    let got = send(&s, bomb).await;
    assert_eq!(got.status, 413);
    assert_eq!(
        got.problem_type(),
        "https://idemp.dev/problems/body-too-large"
    );
    assert!(got.json()["detail"].as_str().unwrap().contains("decoded"));
    assert_eq!(got.headers["x-should-retry"], "false");
    let corrupt = Request::post("/v1/messages")
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .header("idempotency-key", "k2")
        .body(Full::new(Bytes::from_static(b"not gzip at all")))
        .unwrap();
    let got = send(&s, corrupt).await;
    assert_eq!(got.status, 400);
    assert!(got.json()["detail"].as_str().unwrap().contains("gzip"));
    assert_eq!(h.runs(), 0);
}

#[tokio::test]
async fn path_spellings_of_one_resource_are_one_record() {
    let h = Scripted::default();
    let s = svc(&layer(false), &h);
    assert_eq!(
        send(&s, post("/v1/charges", Some("k"), "{}")).await.status,
        201
    );
    for spelling in [
        "//v1/charges",
        "/v1/charges/",
        "/v1/%63harges",
        "/v1/./charges",
        "/v1/x/../charges",
    ] {
        let got = send(&s, post(spelling, Some("k"), "{}")).await;
        assert!(got.replayed(), "{spelling}");
    }
    let above = send(&s, post("/../admin", Some("k"), "{}")).await;
    assert_eq!(above.status, 400);
    assert_eq!(
        above.problem_type(),
        "https://idemp.dev/problems/invalid-path"
    );
    assert_eq!(h.runs(), 1);
}

fn as_tenant(header: &str, secret: &str, key: Option<&str>, body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::post("/v1/messages")
        .header("content-type", "application/json")
        .header(header, secret);
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

#[tokio::test]
async fn tenants_on_api_key_headers_never_share_a_record() {
    for header in [
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "proxy-authorization",
    ] {
        for derive in [false, true] {
            let h = Scripted::default();
            let s = svc(&layer(derive), &h);
            let key = (!derive).then_some("same-key");
            let body = r#"{"messages":[{"role":"user","content":"same"}]}"#;
            let a = send(&s, as_tenant(header, "sk-tenant-a", key, body)).await;
            let b = send(&s, as_tenant(header, "sk-tenant-b", key, body)).await;
            assert!(
                !b.replayed(),
                "{header} derive={derive}: tenant b got tenant a's answer"
            );
            assert_ne!(a.body, b.body);
            assert_eq!(
                h.runs(),
                2,
                "{header} derive={derive}: one execution per tenant"
            );
            // Each tenant's retry gets its own answer.
            let a2 = send(&s, as_tenant(header, "sk-tenant-a", key, body)).await;
            let b2 = send(&s, as_tenant(header, "sk-tenant-b", key, body)).await;
            assert!(a2.replayed() && b2.replayed());
            assert_eq!((a2.body, b2.body), (a.body.clone(), b.body.clone()));
            assert_eq!(h.runs(), 2);
        }
    }
}

#[tokio::test]
async fn the_auth_scheme_is_case_insensitive() {
    let h = Scripted::default();
    let s = svc(&layer(false), &h);
    assert_eq!(
        send(
            &s,
            as_tenant("authorization", "Bearer tok", Some("k"), "{}")
        )
        .await
        .status,
        201
    );
    assert!(
        send(
            &s,
            as_tenant("authorization", "bearer tok", Some("k"), "{}")
        )
        .await
        .replayed()
    );
    assert!(
        !send(
            &s,
            as_tenant("authorization", "Bearer TOK", Some("k"), "{}")
        )
        .await
        .replayed()
    );
    assert_eq!(h.runs(), 2);
}

#[tokio::test]
async fn principal_headers_can_be_set() {
    let h = Scripted::default();
    let s = svc(
        &IdempotencyLayer::builder(memory())
            .principal_headers([http::HeaderName::from_static("x-tenant")])
            .build(),
        &h,
    );
    send(&s, as_tenant("x-tenant", "1", Some("k"), "{}")).await;
    assert!(
        !send(&s, as_tenant("x-tenant", "2", Some("k"), "{}"))
            .await
            .replayed()
    );
    // x-api-key is no longer a credential here.
    send(&s, as_tenant("x-api-key", "a", Some("k2"), "{}")).await;
    assert!(
        send(&s, as_tenant("x-api-key", "b", Some("k2"), "{}"))
            .await
            .replayed()
    );
    assert_eq!(h.runs(), 3);
}

#[tokio::test]
async fn key_errors_name_the_real_cause() {
    let h = Scripted::default();
    let s = svc(&layer(false), &h);
    let long = "k".repeat(10_000);
    let got = send(&s, post("/x", Some(&long), "{}")).await;
    assert_eq!(got.status, 400);
    assert_eq!(got.headers["x-should-retry"], "false");
    let detail = got.json()["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("10000 bytes"), "{detail}");
    let quoted_space = send(&s, post("/x", Some("\"a b\""), "{}")).await;
    assert_eq!(quoted_space.status, 400);
    assert!(
        quoted_space.json()["detail"]
            .as_str()
            .unwrap()
            .contains("space")
    );
    assert_eq!(h.runs(), 0);
}

#[tokio::test]
async fn request_bytes_buffered_at_once_are_capped() {
    let h = Scripted::default();
    let observer = Arc::new(Counter::default());
    let s = svc(
        &IdempotencyLayer::builder(memory())
            .max_buffered_request_bytes(64 << 10)
            .observer(observer.clone())
            .build(),
        &h,
    );
    // A body that announces more than the whole budget is refused at once.
    let big = "x".repeat(100 << 10);
    let got = send(&s, post("/x", Some("k"), &format!(r#""{big}""#))).await;
    assert_eq!(got.status, 503);
    assert_eq!(got.problem_type(), "https://idemp.dev/problems/overloaded");
    assert!(got.headers.contains_key("retry-after"));
    assert!(got.headers.contains_key("retry-after-ms"));
    assert_eq!(observer.get("overloaded"), 1);
    // Within the budget, and once the first is done, the budget is back.
    for i in 0..4 {
        let body = format!(r#""{}""#, "y".repeat(40 << 10));
        assert_eq!(
            send(&s, post("/x", Some(&format!("k{i}")), &body))
                .await
                .status,
            201
        );
    }
    assert_eq!(h.runs(), 4);
}
