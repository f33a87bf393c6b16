//! The agent-side client against a real flaky server on loopback: every attempt of
//! one call carries the same key, retryable statuses and dropped connections are
//! retried, permanent errors are not.
#![cfg(feature = "client")]

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use idemp::client::IdempotentClient;
use idemp::retry::{Provider, RetryPolicy};
use parking_lot::Mutex;

#[derive(Clone, Copy, Debug)]
enum Reply {
    Status(u16),
    StatusAfterMs(u16, u64),
    Ok,
}

#[derive(Default)]
struct Server {
    script: Mutex<VecDeque<Reply>>,
    seen_keys: Mutex<Vec<Option<String>>>,
}

async fn handler(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
) -> (StatusCode, HeaderMap, String) {
    s.seen_keys.lock().push(
        headers
            .get("idempotency-key")
            .map(|v| v.to_str().unwrap_or_default().to_string()),
    );
    let reply = s.script.lock().pop_front().unwrap_or(Reply::Ok);
    let mut h = HeaderMap::new();
    match reply {
        Reply::Ok => (StatusCode::OK, h, "done".into()),
        Reply::Status(code) => (StatusCode::from_u16(code).unwrap(), h, "fail".into()),
        Reply::StatusAfterMs(code, ms) => {
            h.insert("retry-after-ms", ms.to_string().parse().unwrap());
            (StatusCode::from_u16(code).unwrap(), h, "slow down".into())
        }
    }
}

async fn start(script: &[Reply]) -> (Arc<Server>, String) {
    let server = Arc::new(Server::default());
    server.script.lock().extend(script.iter().copied());
    let app = Router::new()
        .route("/v1/charge", post(handler).get(handler))
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (server, format!("http://{addr}/v1/charge"))
}

fn client(provider: Provider, attempts: u32) -> IdempotentClient {
    IdempotentClient::builder(reqwest::Client::new())
        .provider(provider)
        .policy(
            RetryPolicy::builder()
                .max_attempts(attempts)
                .base(Duration::from_millis(2))
                .cap(Duration::from_millis(20))
                .build(),
        )
        .scope("run-1")
        .build()
}

#[tokio::test]
async fn retries_overloaded_with_one_key() {
    let (server, url) = start(&[Reply::Status(529), Reply::StatusAfterMs(429, 5), Reply::Ok]).await;
    let c = client(Provider::Anthropic, 5);
    let req = c
        .inner()
        .post(&url)
        .json(&serde_json::json!({"amount": 10, "to": "acct_1"}))
        .build()
        .unwrap();
    let expected = c.key_for(&req).unwrap();
    let resp = c.send(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let keys = server.seen_keys.lock().clone();
    assert_eq!(keys.len(), 3, "two retries then success");
    assert!(
        keys.iter().all(|k| k.as_deref() == Some(expected.as_str())),
        "{keys:?}"
    );
}

#[tokio::test]
async fn same_content_gives_same_key_across_calls() {
    let (server, url) = start(&[]).await;
    let c = client(Provider::Anthropic, 3);
    for body in [r#"{"a":1,"b":2}"#, r#"{ "b": 2, "a": 1 }"#] {
        let req = c
            .inner()
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .build()
            .unwrap();
        assert_eq!(c.send(req).await.unwrap().status(), 200);
    }
    let keys = server.seen_keys.lock().clone();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], keys[1]);
    assert!(keys[0].as_deref().is_some_and(|k| k.starts_with("ik_")));
}

#[tokio::test]
async fn permanent_errors_are_not_retried() {
    let (server, url) = start(&[Reply::Status(400), Reply::Ok]).await;
    let c = client(Provider::Anthropic, 5);
    let req = c.inner().post(&url).body("x").build().unwrap();
    let resp = c.send(req).await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(server.seen_keys.lock().len(), 1);
}

#[tokio::test]
async fn gives_back_the_last_response_when_attempts_run_out() {
    let (server, url) = start(&[Reply::Status(503); 10]).await;
    let c = client(Provider::OpenAi, 3);
    let req = c.inner().post(&url).body("x").build().unwrap();
    assert_eq!(c.send(req).await.unwrap().status(), 503);
    assert_eq!(server.seen_keys.lock().len(), 3);
}

#[tokio::test]
async fn given_key_is_used_and_validated() {
    let (server, url) = start(&[Reply::Status(500), Reply::Ok]).await;
    let c = client(Provider::Anthropic, 3);
    let req = c.inner().post(&url).body("x").build().unwrap();
    c.send_with_key(req, "order-42").await.unwrap();
    assert_eq!(
        server.seen_keys.lock().clone(),
        vec![Some("order-42".to_string()); 2]
    );
    let req = c.inner().post(&url).body("x").build().unwrap();
    let err = c.send_with_key(req, "bad key").await.unwrap_err();
    assert!(err.to_string().contains("space"), "{err}");
}

#[tokio::test]
async fn unguarded_methods_are_sent_once_without_key() {
    let (server, url) = start(&[Reply::Status(503)]).await;
    let c = client(Provider::Anthropic, 5);
    let req = c.inner().get(&url).build().unwrap();
    assert_eq!(c.send(req).await.unwrap().status(), 503);
    assert_eq!(server.seen_keys.lock().clone(), vec![None]);
}

#[tokio::test]
async fn connection_failures_are_retried_then_reported_with_the_key() {
    // Bind then drop a listener: the port refuses connections.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let c = client(Provider::Anthropic, 3);
    let req = c
        .inner()
        .post(format!("http://{addr}/x"))
        .body("x")
        .build()
        .unwrap();
    let err = c.send(req).await.unwrap_err();
    match err {
        idemp::client::ClientError::Transport { attempts, key, .. } => {
            assert_eq!(attempts, 3);
            assert!(key.starts_with("ik_"));
        }
        other => panic!("expected a transport error, got {other}"),
    }
}
