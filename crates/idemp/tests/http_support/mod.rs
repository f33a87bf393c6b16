//! Fixtures of the `http_*` tests: a scripted handler that counts its executions
//! and answers, run by run, with a full response or a stream the test feeds frame by
//! frame; a client side that reads responses frame by frame.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use idemp::http::{
    Delivery, Disposition, Event, Idempotency, IdempotencyLayer, Observer, RequestBody,
    ResponseBody,
};
use idemp::store::{DynStore, MemoryStore};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tower::{Layer, Service, ServiceExt};

pub type HandlerBody = UnsyncBoxBody<Bytes, std::io::Error>;
pub type Chunk = Result<Frame<Bytes>, std::io::Error>;
pub type Svc = Idempotency<Scripted>;
pub type Res = Response<ResponseBody<HandlerBody>>;

pub fn memory() -> DynStore {
    Arc::new(MemoryStore::new())
}

/// One scripted answer.
pub enum Reply {
    Full {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Bytes,
        delivery: Option<Delivery>,
    },
    Stream {
        status: u16,
        headers: Vec<(&'static str, String)>,
        rx: mpsc::Receiver<Chunk>,
    },
}

impl Reply {
    pub fn full(status: u16, body: impl Into<Bytes>) -> Self {
        Reply::Full {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.into(),
            delivery: None,
        }
    }
    pub fn delivered(mut self, d: Delivery) -> Self {
        if let Reply::Full { delivery, .. } = &mut self {
            *delivery = Some(d);
        }
        self
    }
    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        match &mut self {
            Reply::Full { headers, .. } | Reply::Stream { headers, .. } => {
                headers.push((name, value.to_owned()))
            }
        }
        self
    }
}

/// A handler that answers each execution with the next scripted [`Reply`] (then
/// `201 {"run":N}`), counting executions and keeping every request it saw.
#[derive(Clone, Default)]
pub struct Scripted {
    pub runs: Arc<AtomicUsize>,
    pub queue: Arc<Mutex<VecDeque<Reply>>>,
    pub seen: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
}

impl Scripted {
    pub fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
    pub fn then(&self, r: Reply) -> &Self {
        self.queue.lock().push_back(r);
        self
    }
    /// Scripts a streamed answer; returns the sender that feeds its body.
    pub fn stream(&self, status: u16, content_type: &str) -> mpsc::Sender<Chunk> {
        let (tx, rx) = mpsc::channel(1024);
        self.then(Reply::Stream {
            status,
            headers: vec![("content-type", content_type.to_owned())],
            rx,
        });
        tx
    }
    /// Waits until `n` executions have started.
    pub async fn until_runs(&self, n: usize) {
        tokio::time::timeout(Duration::from_secs(20), async {
            while self.runs() < n {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("the handler did not run");
    }
}

impl Service<Request<RequestBody<Full<Bytes>>>> for Scripted {
    type Response = Response<HandlerBody>;
    type Error = Infallible;
    type Future = futures_util::future::BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RequestBody<Full<Bytes>>>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            this.seen.lock().push((parts.headers.clone(), body));
            let n = this.runs.fetch_add(1, Ordering::SeqCst) + 1;
            let reply = this
                .queue
                .lock()
                .pop_front()
                .unwrap_or_else(|| Reply::full(201, format!(r#"{{"run":{n}}}"#)));
            let mut res = match reply {
                Reply::Full {
                    status,
                    headers,
                    body,
                    delivery,
                } => {
                    let mut res =
                        Response::new(Full::new(body).map_err(|e| match e {}).boxed_unsync());
                    *res.status_mut() = StatusCode::from_u16(status).unwrap();
                    for (n, v) in headers {
                        res.headers_mut().append(n, v.parse().unwrap());
                    }
                    if let Some(d) = delivery {
                        res.extensions_mut().insert(d);
                    }
                    res
                }
                Reply::Stream {
                    status,
                    headers,
                    rx,
                } => {
                    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                        rx.recv().await.map(|c| (c, rx))
                    });
                    let mut res = Response::new(StreamBody::new(stream).boxed_unsync());
                    *res.status_mut() = StatusCode::from_u16(status).unwrap();
                    for (n, v) in headers {
                        res.headers_mut().append(n, v.parse().unwrap());
                    }
                    res
                }
            };
            res.headers_mut()
                .insert("x-run", n.to_string().parse().unwrap());
            Ok(res)
        })
    }
}

pub fn svc(layer: &IdempotencyLayer, h: &Scripted) -> Svc {
    layer.layer(h.clone())
}

pub fn post(uri: &str, key: Option<&str>, body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::post(uri).header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

pub async fn call(s: &Svc, req: Request<Full<Bytes>>) -> Res {
    s.clone().oneshot(req).await.unwrap()
}

/// The next data frame of a response: `Some(Ok)`, `Some(Err)` when it broke, `None`
/// at its end.
pub async fn next_data(res: &mut Res) -> Option<Result<Bytes, String>> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), res.body_mut().frame())
            .await
            .expect("no frame within 20 s")?;
        match frame {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    return Some(Ok(d));
                }
            }
            Err(e) => return Some(Err(e.to_string())),
        }
    }
}

/// A whole response: status, headers, disposition, body (or the error it ended with).
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub error: Option<String>,
    pub disposition: Option<Disposition>,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    pub fn problem_type(&self) -> String {
        assert_eq!(
            self.headers["content-type"], "application/problem+json",
            "{self:?}"
        );
        self.json()["type"].as_str().unwrap().to_owned()
    }
    pub fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }
}

pub async fn read_all(mut res: Res) -> Got {
    let disposition = res.extensions().get::<Disposition>().copied();
    let mut body = Vec::new();
    let mut error = None;
    while let Some(d) = next_data(&mut res).await {
        match d {
            Ok(d) => body.extend_from_slice(&d),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let (parts, _) = res.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: Bytes::from(body),
        error,
        disposition,
    }
}

pub async fn send(s: &Svc, req: Request<Full<Bytes>>) -> Got {
    read_all(call(s, req).await).await
}

/// Counts events.
#[derive(Default)]
pub struct Counter(Mutex<std::collections::HashMap<&'static str, usize>>);
impl Observer for Counter {
    fn event(&self, e: Event) {
        *self.0.lock().entry(e.name()).or_default() += 1;
    }
}
impl Counter {
    pub fn get(&self, name: &str) -> usize {
        self.0.lock().get(name).copied().unwrap_or(0)
    }
}

pub fn data(s: &str) -> Chunk {
    Ok(Frame::data(Bytes::from(s.to_owned())))
}
