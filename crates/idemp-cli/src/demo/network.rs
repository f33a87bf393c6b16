//! The flaky network between the agents and the API (or the proxy in front of it).
//!
//! An HTTP hop that forwards every request to its target, waits for the whole
//! response, and then, as [`Faults::net`] decides, loses it: the connection is closed
//! without an answer (the client sees a reset) or a gateway answers 502/503 instead.
//! The request **did** reach the target and its side effect happened: this is the
//! failure that makes naive retries execute twice. It also counts the attempts that
//! cross it and the replayed answers (`Idempotent-Replayed: true`) it carries back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::faults::{Faults, NetFault};
use super::{BoxError, logical_id, serve_http};

/// What crossed the network.
#[derive(Debug, Default)]
pub struct NetCounters {
    /// Requests (attempts) that crossed it.
    pub attempts: AtomicU64,
    /// Answers it lost after the target executed (resets, 502s and 503s).
    pub lost: AtomicU64,
    /// Answers it carried back that the proxy replayed from its store.
    pub replayed: AtomicU64,
}

struct State {
    target: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    faults: Faults,
    attempts: Mutex<HashMap<String, u32>>,
    counters: Arc<NetCounters>,
}

/// A running flaky hop.
#[derive(Debug)]
pub struct FlakyNetwork {
    /// Where agents connect.
    pub addr: SocketAddr,
    /// What crossed it.
    pub counters: Arc<NetCounters>,
    task: JoinHandle<()>,
}

impl FlakyNetwork {
    /// Starts a hop on a free loopback port that forwards to `target`.
    pub async fn start(target: SocketAddr, faults: Faults) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let counters = Arc::new(NetCounters::default());
        let state = Arc::new(State {
            target,
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(256)
                .build(connector),
            faults,
            attempts: Mutex::new(HashMap::new()),
            counters: counters.clone(),
        });
        let task = tokio::spawn(serve_http(listener, move |req| forward(state.clone(), req)));
        Ok(Self {
            addr,
            counters,
            task,
        })
    }
}

impl Drop for FlakyNetwork {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, BoxError> {
    let (mut parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let path = parts.uri.path().to_owned();
    let id = logical_id(&path, &body);
    let attempt = {
        let mut seen = state
            .attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = seen.entry(id.clone()).or_default();
        *n += 1;
        *n
    };
    state.counters.attempts.fetch_add(1, Ordering::Relaxed);

    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    parts.uri = format!("http://{}{pq}", state.target).parse()?;
    parts.headers.remove(header::HOST);
    parts.headers.remove(header::CONNECTION);
    let answer = state
        .client
        .request(Request::from_parts(parts, Full::new(body)))
        .await;
    let (res_parts, res_body) = match answer {
        Ok(res) => res.into_parts(),
        Err(e) => {
            // The target itself is unreachable: a real failure, not a demo fault.
            return Ok(text(StatusCode::BAD_GATEWAY, &format!("demo network: {e}")));
        }
    };
    let res_body = res_body.collect().await?.to_bytes();

    match state.faults.net(&id, attempt) {
        NetFault::None => {
            if res_parts.headers.contains_key("idempotent-replayed") {
                state.counters.replayed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Response::from_parts(res_parts, Full::new(res_body)))
        }
        fault => {
            state.counters.lost.fetch_add(1, Ordering::Relaxed);
            match fault {
                NetFault::BadGateway => Ok(text(
                    StatusCode::BAD_GATEWAY,
                    "upstream connect error or disconnect/reset before headers",
                )),
                NetFault::Unavailable => {
                    Ok(text(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"))
                }
                // An error from the service makes hyper drop the connection unanswered.
                _ => Err("connection reset by the demo network".into()),
            }
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body.to_owned())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    res
}
