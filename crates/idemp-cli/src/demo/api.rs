//! The fake API: "any upstream", a paid completion endpoint and a payment endpoint.
//!
//! * `POST /v1/messages`: an Anthropic-shaped completion; every execution bills tokens.
//! * `POST /v1/charges`: `{"order_id", "amount", "currency"}`; every execution moves
//!   money.
//!
//! It answers after a seeded delay, and some arrivals are refused **before** executing
//! with `429 rate_limit_error` or `529 overloaded_error` and a `retry-after-ms` (see
//! [`Faults::api`]). It does not honour `Idempotency-Key`: like most APIs an agent
//! calls, it executes whatever reaches it. Its [`Ledger`] counts every execution per
//! logical request, which is what the demo reports.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::faults::{ApiFault, Faults};
use super::{BoxError, logical_id, serve_http};

/// What one execution did.
#[derive(Clone, Debug)]
pub struct Execution {
    /// The id of the produced object (`msg_…`, `ch_…`).
    pub result_id: String,
    /// What it cost: cents for a charge, tokens for a completion.
    pub cost: u64,
    /// A charge (else a completion).
    pub charge: bool,
}

/// Everything the API saw and did.
#[derive(Debug, Default)]
pub struct Ledger {
    arrivals: HashMap<String, u32>,
    executions: HashMap<String, Vec<Execution>>,
    next_id: u64,
    /// Arrivals refused with 429.
    pub rate_limited: u64,
    /// Arrivals refused with 529.
    pub overloaded: u64,
}

/// The ledger's totals.
#[derive(Clone, Copy, Debug, Default)]
pub struct LedgerSummary {
    /// Executions in all.
    pub executions: u64,
    /// Logical requests executed at least once.
    pub distinct: u64,
    /// Executions beyond the first of their logical request.
    pub duplicate_executions: u64,
    /// Charges (logical) executed more than once.
    pub double_charges: u64,
    /// Money moved by duplicate charge executions, in cents.
    pub overcharged_cents: u64,
    /// Tokens billed by duplicate completion executions.
    pub duplicate_tokens: u64,
    /// Arrivals refused with 429 or 529 (nothing executed).
    pub refused: u64,
}

impl Ledger {
    /// The executions of logical request `id`.
    pub fn executions_of(&self, id: &str) -> &[Execution] {
        self.executions.get(id).map_or(&[], Vec::as_slice)
    }

    /// The totals.
    pub fn summary(&self) -> LedgerSummary {
        let mut s = LedgerSummary {
            refused: self.rate_limited + self.overloaded,
            ..LedgerSummary::default()
        };
        for runs in self.executions.values() {
            let n = runs.len() as u64;
            s.executions += n;
            s.distinct += u64::from(n > 0);
            s.duplicate_executions += n.saturating_sub(1);
            let extra = runs.iter().skip(1);
            if runs.first().is_some_and(|e| e.charge) {
                s.double_charges += u64::from(n > 1);
                s.overcharged_cents += extra.map(|e| e.cost).sum::<u64>();
            } else {
                s.duplicate_tokens += extra.map(|e| e.cost).sum::<u64>();
            }
        }
        s
    }
}

/// A running fake API.
#[derive(Debug)]
pub struct FakeApi {
    /// Where it listens.
    pub addr: SocketAddr,
    ledger: Arc<Mutex<Ledger>>,
    task: JoinHandle<()>,
}

impl FakeApi {
    /// Starts the API on a free loopback port.
    pub async fn start(faults: Faults) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let state = ledger.clone();
        let task = tokio::spawn(serve_http(listener, move |req| {
            handle(faults, state.clone(), req)
        }));
        Ok(Self { addr, ledger, task })
    }

    /// The ledger (lock it briefly).
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        lock(&self.ledger)
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(l: &Mutex<Ledger>) -> MutexGuard<'_, Ledger> {
    l.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn handle(
    faults: Faults,
    ledger: Arc<Mutex<Ledger>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, BoxError> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let path = parts.uri.path();
    let charge = match path {
        "/v1/charges" => true,
        "/v1/messages" => false,
        _ => {
            return Ok(error(
                StatusCode::NOT_FOUND,
                "not_found_error",
                "no such route",
            ));
        }
    };
    if parts.method != Method::POST {
        return Ok(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "use POST",
        ));
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "the body is not JSON",
        ));
    };
    let id = logical_id(path, &body);
    let arrival = {
        let mut l = lock(&ledger);
        let n = l.arrivals.entry(id.clone()).or_default();
        *n += 1;
        *n
    };
    tokio::time::sleep(faults.latency(&id, arrival)).await;
    match faults.api(&id, arrival) {
        ApiFault::RateLimited { retry_after } => {
            lock(&ledger).rate_limited += 1;
            return Ok(refused(
                429,
                "rate_limit_error",
                "rate limited",
                retry_after,
            ));
        }
        ApiFault::Overloaded { retry_after } => {
            lock(&ledger).overloaded += 1;
            return Ok(refused(529, "overloaded_error", "Overloaded", retry_after));
        }
        ApiFault::None => {}
    }
    if charge {
        let (Some(order), Some(amount)) =
            (request["order_id"].as_str(), request["amount"].as_u64())
        else {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "order_id (string) and amount (cents) are required",
            ));
        };
        let result_id = execute(&ledger, &id, "ch", amount, true);
        Ok(ok(json!({
            "id": result_id,
            "object": "charge",
            "order_id": order,
            "amount": amount,
            "currency": request["currency"],
            "status": "succeeded",
        })))
    } else {
        let input_tokens = body.len() as u64 / 4;
        let output_tokens = 40 + arrival as u64 * 7 % 60;
        let result_id = execute(&ledger, &id, "msg", input_tokens + output_tokens, false);
        Ok(ok(json!({
            "id": result_id,
            "type": "message",
            "role": "assistant",
            "model": request["model"],
            "content": [{"type": "text", "text": "Done: the next step is planned."}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        })))
    }
}

/// Runs the side effect: records one execution of `id`, returns the new object's id.
fn execute(ledger: &Mutex<Ledger>, id: &str, prefix: &str, cost: u64, charge: bool) -> String {
    let mut l = lock(ledger);
    l.next_id += 1;
    let result_id = format!("{prefix}_{:06}", l.next_id);
    l.executions
        .entry(id.to_owned())
        .or_default()
        .push(Execution {
            result_id: result_id.clone(),
            cost,
            charge,
        });
    result_id
}

fn ok(body: Value) -> Response<Full<Bytes>> {
    json_response(StatusCode::OK, &body)
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
}

fn refused(
    status: u16,
    kind: &str,
    message: &str,
    retry_after: std::time::Duration,
) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut res = error(status, kind, message);
    if let Ok(v) = http::HeaderValue::from_str(&retry_after.as_millis().to_string()) {
        res.headers_mut().insert("retry-after-ms", v);
    }
    res
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    res
}
