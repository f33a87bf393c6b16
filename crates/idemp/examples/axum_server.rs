//! An axum payment API made idempotent with one layer.
//!
//! ```text
//! cargo run -p idemp --features http --example axum_server
//! curl -si -X POST localhost:3000/payments -H 'Idempotency-Key: order-42' \
//!      -H 'content-type: application/json' -d '{"amount": 1000}'
//! # run it again: same response, `idempotent-replayed: true`, and the charge
//! # counter (GET /charges) does not move.
//! ```
//!
//! Environment: `IDEMP_STORE` (default `memory:`; e.g. `sqlite://payments.db`),
//! `LISTEN` (default `127.0.0.1:3000`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use idemp::http::IdempotencyLayer;
use serde_json::{Value, json};

#[derive(Clone, Default)]
struct Bank {
    charges: Arc<AtomicU64>,
}

/// The side effect we must not repeat.
async fn pay(State(bank): State<Bank>, Json(req): Json<Value>) -> (StatusCode, Json<Value>) {
    let n = bank.charges.fetch_add(1, Ordering::SeqCst) + 1;
    // Pretend the payment provider is slow.
    tokio::time::sleep(Duration::from_millis(200)).await;
    (
        StatusCode::CREATED,
        Json(json!({ "charge": n, "amount": req["amount"] })),
    )
}

async fn charges(State(bank): State<Bank>) -> Json<Value> {
    Json(json!({ "charges": bank.charges.load(Ordering::SeqCst) }))
}

/// The payment API with the idempotency layer in front of it.
pub fn app(store: idemp::store::DynStore) -> Router {
    let idempotency = IdempotencyLayer::builder(store)
        .require_key(true)
        .wait(Duration::from_secs(5))
        .ttl(Duration::from_secs(24 * 3600))
        .build();

    Router::new()
        .route("/payments", post(pay))
        .route("/charges", get(charges))
        .layer(idempotency)
        .with_state(Bank::default())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store_url = std::env::var("IDEMP_STORE").unwrap_or_else(|_| "memory:".into());
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let store = idemp::store::open(&store_url).await?;

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!(
        "listening on http://{} (store {store_url})",
        listener.local_addr()?
    );
    axum::serve(listener, app(store)).await?;
    Ok(())
}
