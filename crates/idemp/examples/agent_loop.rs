//! An agent loop that calls a paid model through a flaky network, retrying with one
//! stable key per call.
//!
//! ```text
//! cargo run -p idemp --features client --example agent_loop
//! ```
//!
//! The "provider" is a local fake of a paid completion API that honours
//! `Idempotency-Key` (here with idemp's own tower layer, as a real provider or
//! `idemp serve` would). Between the agent and the provider sits a flaky network: for
//! each call the first attempt is refused with `529 overloaded`, and the second runs
//! on the provider (and is billed) but its response is lost on the way back. The agent
//! uses [`IdempotentClient`]: every attempt of one turn carries the same key, derived
//! from the conversation so far, so the third attempt gets the stored completion back
//! (`idempotent-replayed: true`) instead of paying for a second one.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Response, StatusCode};
use axum::middleware::{self, Next};
use axum::routing::post;
use idemp::client::IdempotentClient;
use idemp::http::IdempotencyLayer;
use idemp::retry::{Provider, RetryPolicy};
use idemp::store::MemoryStore;
use parking_lot::Mutex;
use serde_json::{Value, json};

#[derive(Default)]
struct Provider_ {
    billed: AtomicU32,
}

async fn complete(State(p): State<Arc<Provider_>>, body: String) -> Response<Body> {
    let n = p.billed.fetch_add(1, Ordering::SeqCst) + 1;
    let req: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let turns = req["messages"].as_array().map_or(0, Vec::len);
    let answer = json!({
        "id": format!("msg_{n}"),
        "content": [{"type": "text", "text": format!("answer to turn {}", turns / 2 + 1)}],
        "usage": {"input_tokens": 100 * turns, "output_tokens": 20}
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from(answer.to_string()))
        .unwrap_or_default()
}

/// Attempts seen per key by the flaky network.
#[derive(Default)]
struct Network {
    attempts: Mutex<HashMap<String, u32>>,
}

async fn flaky(State(net): State<Arc<Network>>, req: Request, next: Next) -> Response<Body> {
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let attempt = {
        let mut seen = net.attempts.lock();
        let n = seen.entry(key).or_default();
        *n += 1;
        *n
    };
    match attempt {
        1 => Response::builder()
            .status(529)
            .header("retry-after-ms", "5")
            .body(Body::from(
                r#"{"type":"error","error":{"type":"overloaded_error"}}"#,
            ))
            .unwrap_or_default(),
        2 => {
            // The provider runs (and bills) the request; the response is lost.
            let _lost = next.run(req).await;
            Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .body(Body::from("upstream connection reset"))
                .unwrap_or_default()
        }
        _ => next.run(req).await,
    }
}

#[derive(Debug)]
pub struct Report {
    pub turns: u32,
    pub attempts: u32,
    pub billed: u32,
    pub replays: u32,
}

pub async fn run() -> Result<Report, Box<dyn std::error::Error + Send + Sync>> {
    let provider = Arc::new(Provider_::default());
    let network = Arc::new(Network::default());
    let app = Router::new()
        .route("/v1/messages", post(complete))
        .with_state(provider.clone())
        .layer(IdempotencyLayer::builder(std::sync::Arc::new(MemoryStore::new())).build())
        .layer(middleware::from_fn_with_state(network.clone(), flaky));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/messages", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let client = IdempotentClient::builder(reqwest::Client::new())
        .provider(Provider::Anthropic)
        .policy(
            RetryPolicy::builder()
                .max_attempts(5)
                .base(Duration::from_millis(5))
                .cap(Duration::from_millis(50))
                .build(),
        )
        .scope("agent-run-2026-11-22-001")
        .build();

    let mut messages = vec![json!({"role": "user", "content": "Plan a trip to Lisbon."})];
    let mut replays = 0;
    let turns = 3;
    for turn in 1..=turns {
        let req = client
            .inner()
            .post(&url)
            .json(&json!({"model": "claude-x", "max_tokens": 256, "messages": messages}))
            .build()?;
        let key = client.key_for(&req)?;
        let resp = client.send(req).await?;
        let replayed = resp.headers().contains_key("idempotent-replayed");
        replays += u32::from(replayed);
        let status = resp.status();
        let body: Value = resp.json().await?;
        let text = body["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        println!("turn {turn}: {status} key={key} replayed={replayed} -> {text}");
        messages.push(json!({"role": "assistant", "content": text}));
        messages.push(json!({"role": "user", "content": "Go on."}));
    }
    server.abort();

    let attempts = network.attempts.lock().values().sum();
    let report = Report {
        turns,
        attempts,
        billed: provider.billed.load(Ordering::SeqCst),
        replays,
    };
    println!(
        "{} turns, {} attempts over the network, {} billed completions, {} served from the provider's idempotency record",
        report.turns, report.attempts, report.billed, report.replays
    );
    Ok(report)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    run().await.map(|_| ())
}
