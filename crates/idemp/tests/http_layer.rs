//! The tower layer, path by path: every status it can answer, what it stores and
//! replays, principal isolation, store failures, disconnects and duplicate storms.
//! Side effects are counted: a test passes only if the handler ran as often as the
//! contract says.
#![cfg(feature = "http")]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use idemp::http::{
    Disposition, Event, IdempotencyLayer, Observer, RequestBody, ResponseBody, StatusSet,
};
use idemp::store::{
    Claim, ClaimOutcome, DynStore, ListQuery, MemoryStore, Outcome, Page, Record, RecordKey, State,
    Stats, Store, StoreAdmin, StoreError, StoreResult, Token,
};
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};

// ---------------------------------------------------------------------------------
// Test fixtures

fn memory() -> DynStore {
    Arc::new(MemoryStore::new())
}

/// A handler that counts its executions per key header and answers 201 with a body
/// naming the execution, plus headers that must never be replayed. Its status and
/// a gate (to hold it running) are configurable.
#[derive(Clone, Default)]
struct Handler {
    started: Arc<AtomicUsize>,
    runs: Arc<AtomicUsize>,
    per_key: Arc<Mutex<HashMap<String, usize>>>,
    statuses: Arc<Mutex<Vec<u16>>>,
    gate: Option<Arc<Semaphore>>,
    delay: Duration,
}

impl Handler {
    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
    /// Waits until the handler has been entered (the claim is held).
    async fn until_started(&self) {
        while self.started.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    }
    fn with_statuses(self, s: &[u16]) -> Self {
        *self.statuses.lock() = s.to_vec();
        self
    }
    fn gated(mut self) -> (Self, Arc<Semaphore>) {
        let sem = Arc::new(Semaphore::new(0));
        self.gate = Some(sem.clone());
        (self, sem)
    }
    fn delayed(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

type Req = Request<RequestBody<Full<Bytes>>>;

impl Service<Req> for Handler {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = futures_util::future::BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            this.started.fetch_add(1, Ordering::SeqCst);
            let key = req
                .headers()
                .get("idempotency-key")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            let auth = req
                .headers()
                .get("authorization")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            if let Some(g) = &this.gate {
                g.acquire().await.unwrap().forget();
            }
            if !this.delay.is_zero() {
                tokio::time::sleep(this.delay).await;
            }
            let n = this.runs.fetch_add(1, Ordering::SeqCst) + 1;
            *this.per_key.lock().entry(key).or_default() += 1;
            let status = {
                let mut s = this.statuses.lock();
                if s.is_empty() { 201 } else { s.remove(0) }
            };
            let res = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .header("x-run", n.to_string())
                .header("set-cookie", "session=secret")
                .header("authorization", "Bearer leaked")
                .header("connection", "x-hop")
                .header("x-hop", "1")
                .body(Full::new(Bytes::from(format!(
                    r#"{{"run":{n},"auth":"{auth}","len":{}}}"#,
                    body.len()
                ))))
                .unwrap();
            Ok(res)
        })
    }
}

type Svc = idemp::http::Idempotency<Handler>;

fn svc(layer: &IdempotencyLayer, h: &Handler) -> Svc {
    layer.layer(h.clone())
}

fn post(key: Option<&str>, body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::post("/payments?b=2&a=1").header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

#[derive(Debug)]
struct Got {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
    disposition: Option<Disposition>,
}

impl Got {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn problem_type(&self) -> String {
        assert_eq!(self.headers["content-type"], "application/problem+json");
        self.json()["type"].as_str().unwrap().to_owned()
    }
    fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }
}

async fn send(s: &Svc, req: Request<Full<Bytes>>) -> Got {
    let res: Response<ResponseBody<Full<Bytes>>> = s.clone().oneshot(req).await.unwrap();
    let disposition = res.extensions().get::<Disposition>().copied();
    let (parts, body) = res.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
        disposition,
    }
}

/// Counts events.
#[derive(Default)]
struct Counter(Mutex<HashMap<&'static str, usize>>);
impl Observer for Counter {
    fn event(&self, e: Event) {
        *self.0.lock().entry(e.name()).or_default() += 1;
    }
}
impl Counter {
    fn get(&self, name: &str) -> usize {
        self.0.lock().get(name).copied().unwrap_or(0)
    }
}

/// A store that fails every operation as unreachable (or, when `refuse`, refuses
/// every claim as an invalid argument).
#[derive(Debug, Default)]
struct DownStore {
    refuse: bool,
}

#[async_trait]
impl Store for DownStore {
    async fn claim(&self, _: &Claim) -> StoreResult<ClaimOutcome> {
        if self.refuse {
            return Err(StoreError::Invalid("key too long for this store".into()));
        }
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn complete(&self, _: &RecordKey, _: Token, _: Outcome, _: Duration) -> StoreResult<()> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn fail(&self, _: &RecordKey, _: Token, _: Outcome, _: Duration) -> StoreResult<()> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn release(&self, _: &RecordKey, _: Token) -> StoreResult<()> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn renew(&self, _: &RecordKey, _: Token, _: Duration) -> StoreResult<u64> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn get(&self, _: &RecordKey) -> StoreResult<Option<Record>> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
}

#[async_trait]
impl StoreAdmin for DownStore {
    async fn list(&self, _: &ListQuery) -> StoreResult<Page> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn purge(&self, _: &RecordKey) -> StoreResult<bool> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn sweep(&self) -> StoreResult<u64> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn stats(&self) -> StoreResult<Stats> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
}

async fn only_record(store: &DynStore) -> Record {
    let page = store.list(&ListQuery::default()).await.unwrap();
    assert_eq!(page.records.len(), 1, "{:?}", page.records);
    page.records.into_iter().next().unwrap()
}

// ---------------------------------------------------------------------------------
// Keys

#[tokio::test]
async fn invalid_keys_are_400_and_never_reach_the_handler() {
    let h = Handler::default();
    let s = svc(&IdempotencyLayer::new(memory()), &h);
    for bad in ["", "has space", "\"unterminated", "a,b", &"x".repeat(256)] {
        let got = send(&s, post(Some(bad), "{}")).await;
        assert_eq!(got.status, 400, "{bad:?}");
        assert_eq!(got.problem_type(), "https://idemp.dev/problems/invalid-key");
        assert!(got.json()["detail"].as_str().is_some());
    }
    let mut twice = post(Some("a"), "{}");
    twice
        .headers_mut()
        .append("idempotency-key", "b".parse().unwrap());
    let got = send(&s, twice).await;
    assert_eq!(got.status, 400);
    assert!(
        got.json()["detail"]
            .as_str()
            .unwrap()
            .contains("more than one")
    );
    assert_eq!(h.runs(), 0);
}

#[tokio::test]
async fn missing_key_passes_through_or_is_400_when_required() {
    let h = Handler::default();
    let s = svc(&IdempotencyLayer::new(memory()), &h);
    assert_eq!(send(&s, post(None, "{}")).await.status, 201);
    assert_eq!(send(&s, post(None, "{}")).await.status, 201);
    assert_eq!(h.runs(), 2, "without a key nothing is deduplicated");

    let required = svc(
        &IdempotencyLayer::builder(memory())
            .require_key(true)
            .build(),
        &h,
    );
    let got = send(&required, post(None, "{}")).await;
    assert_eq!(got.status, 400);
    assert_eq!(got.problem_type(), "https://idemp.dev/problems/missing-key");
    assert_eq!(h.runs(), 2);
    // Unguarded methods never need a key.
    let get = Request::get("/payments")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&required, get).await.status, 201);
    assert_eq!(h.runs(), 3);
}

#[tokio::test]
async fn quoted_and_bare_forms_name_the_same_key() {
    let h = Handler::default();
    let s = svc(&IdempotencyLayer::new(memory()), &h);
    let first = send(&s, post(Some("order-1"), "{}")).await;
    let again = send(&s, post(Some("\"order-1\""), "{}")).await;
    assert!(again.replayed());
    assert_eq!(first.body, again.body);
    assert_eq!(h.runs(), 1);
}

// ---------------------------------------------------------------------------------
// Replay, mismatch, statuses

#[tokio::test]
async fn completed_requests_are_replayed_without_credentials_or_hop_by_hop_headers() {
    let h = Handler::default();
    let s = svc(&IdempotencyLayer::new(memory()), &h);
    let first = send(&s, post(Some("k1"), r#"{"amount":10}"#)).await;
    assert_eq!(first.status, 201);
    assert!(!first.replayed());
    assert_eq!(
        first.disposition,
        Some(Disposition::Executed {
            stored: true,
            takeover: false
        })
    );
    // The first response itself is the handler's (cookies included: it is not stored).
    assert_eq!(first.headers["set-cookie"], "session=secret");

    for _ in 0..3 {
        let again = send(&s, post(Some("k1"), r#"{"amount":10}"#)).await;
        assert_eq!(again.status, 201);
        assert!(again.replayed());
        assert_eq!(again.disposition, Some(Disposition::Replayed));
        assert_eq!(again.body, first.body);
        assert_eq!(again.headers["x-run"], "1");
        assert_eq!(again.headers["content-type"], "application/json");
        for never in ["set-cookie", "authorization", "connection", "x-hop"] {
            assert!(again.headers.get(never).is_none(), "{never} was replayed");
        }
    }
    assert_eq!(h.runs(), 1);
}

#[tokio::test]
async fn same_key_with_a_different_request_is_422() {
    let h = Handler::default();
    let s = svc(&IdempotencyLayer::new(memory()), &h);
    assert_eq!(
        send(&s, post(Some("k"), r#"{"amount":10}"#)).await.status,
        201
    );
    let got = send(&s, post(Some("k"), r#"{"amount":11}"#)).await;
    assert_eq!(got.status, 422);
    assert_eq!(
        got.problem_type(),
        "https://idemp.dev/problems/key-mismatch"
    );
    // Another path with the same key is another route: its own record.
    let other = Request::post("/refunds")
        .header("idempotency-key", "k")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    assert_eq!(send(&s, other).await.status, 201);
    // Another method on the same path is a mismatch.
    let patch = Request::patch("/payments?b=2&a=1")
        .header("content-type", "application/json")
        .header("idempotency-key", "k")
        .body(Full::new(Bytes::from_static(br#"{"amount":10}"#)))
        .unwrap();
    assert_eq!(send(&s, patch).await.status, 422);
    assert_eq!(h.runs(), 2);
}

#[tokio::test]
async fn json_bodies_match_whatever_their_key_order_and_whitespace() {
    let h = Handler::default();
    let s = svc(&IdempotencyLayer::new(memory()), &h);
    send(&s, post(Some("k"), r#"{"a":1,"b":[1,2]}"#)).await;
    // Numbers are kept exactly as sent (`1.0` would be another request): only key
    // order and whitespace are canonicalized.
    let again = send(&s, post(Some("k"), "{ \"b\": [1, 2],\n \"a\": 1 }")).await;
    assert_eq!(again.status, 201);
    assert!(again.replayed());
    // Query parameter order does not matter either.
    let reordered = Request::post("/payments?a=1&b=2")
        .header("content-type", "application/json")
        .header("idempotency-key", "k")
        .body(Full::new(Bytes::from_static(br#"{"b":[1,2],"a":1}"#)))
        .unwrap();
    assert!(send(&s, reordered).await.replayed());
    assert_eq!(h.runs(), 1);
}

#[tokio::test]
async fn retryable_statuses_release_the_claim_so_the_retry_runs() {
    let h = Handler::default().with_statuses(&[503, 429, 408, 409, 425, 500, 201]);
    let store = memory();
    let s = svc(&IdempotencyLayer::new(store.clone()), &h);
    for expected in [503, 429, 408, 409, 425, 500] {
        let got = send(&s, post(Some("k"), "{}")).await;
        assert_eq!(got.status, expected);
        assert!(!got.replayed());
        assert!(
            store
                .list(&ListQuery::default())
                .await
                .unwrap()
                .records
                .is_empty(),
            "a {expected} must leave no record"
        );
    }
    assert_eq!(send(&s, post(Some("k"), "{}")).await.status, 201);
    let replay = send(&s, post(Some("k"), "{}")).await;
    assert!(replay.replayed());
    assert_eq!(replay.status, 201);
    assert_eq!(h.runs(), 7);
}

#[tokio::test]
async fn client_errors_are_stored_by_default_and_the_set_is_configurable() {
    let h = Handler::default().with_statuses(&[400, 400]);
    let s = svc(&IdempotencyLayer::new(memory()), &h);
    assert_eq!(send(&s, post(Some("k"), "{}")).await.status, 400);
    let again = send(&s, post(Some("k"), "{}")).await;
    assert_eq!(again.status, 400);
    assert!(again.replayed());
    assert_eq!(h.runs(), 1);

    let h = Handler::default().with_statuses(&[400, 201]);
    let only_2xx: StatusSet = (200u16..300).collect();
    let s = svc(
        &IdempotencyLayer::builder(memory())
            .stored_statuses(only_2xx)
            .build(),
        &h,
    );
    assert_eq!(send(&s, post(Some("k"), "{}")).await.status, 400);
    assert_eq!(send(&s, post(Some("k"), "{}")).await.status, 201);
    assert!(send(&s, post(Some("k"), "{}")).await.replayed());
    assert_eq!(h.runs(), 2);
}

// ---------------------------------------------------------------------------------
// Concurrency: wait, 409, storms

#[tokio::test]
async fn a_duplicate_waits_then_gets_409_with_retry_after() {
    let (h, gate) = Handler::default().gated();
    let layer = IdempotencyLayer::builder(memory())
        .wait(Duration::from_millis(50))
        .conflict_retry_after(Duration::from_secs(2))
        .build();
    let s = svc(&layer, &h);
    let first = tokio::spawn({
        let s = s.clone();
        async move { send(&s, post(Some("k"), "{}")).await }
    });
    // Wait until the first request holds the claim.
    h.until_started().await;
    let dup = send(&s, post(Some("k"), "{}")).await;
    assert_eq!(dup.status, 409);
    assert_eq!(dup.headers["retry-after"], "2");
    assert_eq!(dup.headers["retry-after-ms"], "2000");
    assert!(
        dup.headers.get("x-should-retry").is_none(),
        "409 in progress may be retried"
    );
    assert_eq!(
        dup.problem_type(),
        "https://idemp.dev/problems/request-in-progress"
    );
    gate.add_permits(1);
    let first = first.await.unwrap();
    assert_eq!(first.status, 201);
    let later = send(&s, post(Some("k"), "{}")).await;
    assert!(later.replayed());
    assert_eq!(later.body, first.body);
    assert_eq!(h.runs(), 1);
}

#[tokio::test]
async fn a_duplicate_within_the_wait_gets_the_first_response() {
    let (h, gate) = Handler::default().gated();
    let layer = IdempotencyLayer::builder(memory())
        .wait(Duration::from_secs(30))
        .build();
    let s = svc(&layer, &h);
    let first = tokio::spawn({
        let s = s.clone();
        async move { send(&s, post(Some("k"), "{}")).await }
    });
    h.until_started().await;
    let dup = tokio::spawn({
        let s = s.clone();
        async move { send(&s, post(Some("k"), "{}")).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    gate.add_permits(1);
    let (first, dup) = (first.await.unwrap(), dup.await.unwrap());
    assert_eq!(first.status, 201);
    assert!(dup.replayed());
    assert_eq!(dup.body, first.body);
    assert_eq!(h.runs(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_storms_execute_once_per_key() {
    let h = Handler::default().delayed(Duration::from_millis(5));
    let observer = Arc::new(Counter::default());
    let layer = IdempotencyLayer::builder(memory())
        .observer(observer.clone())
        .build();
    let s = svc(&layer, &h);
    let keys = 20;
    let copies = 25;
    let mut tasks = Vec::new();
    for c in 0..copies {
        for k in 0..keys {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("storm-{k}");
                let got = send(&s, post(Some(&key), &format!(r#"{{"k":{k}}}"#))).await;
                (k, c, got)
            }));
        }
    }
    let mut bodies: HashMap<usize, Bytes> = HashMap::new();
    for t in tasks {
        let (k, _, got) = t.await.unwrap();
        assert_eq!(got.status, 201);
        let b = bodies.entry(k).or_insert_with(|| got.body.clone());
        assert_eq!(
            *b, got.body,
            "every caller of key {k} gets the same response"
        );
    }
    assert_eq!(h.runs(), keys, "exactly one execution per key");
    assert!(h.per_key.lock().values().all(|&n| n == 1));
    assert_eq!(observer.get("claimed"), keys);
    // A duplicate either replays the record or, arriving while the first response
    // is still being streamed, joins it live: both serve it without running it.
    assert_eq!(
        observer.get("replayed") + observer.get("joined"),
        keys * (copies - 1)
    );
}

// ---------------------------------------------------------------------------------
// Scoping

#[tokio::test]
async fn principals_never_see_each_others_responses() {
    let h = Handler::default();
    let s = svc(
        &IdempotencyLayer::builder(memory())
            .scope_secret("s3cret")
            .build(),
        &h,
    );
    let as_user = |who: &str| {
        Request::post("/payments")
            .header("authorization", format!("Bearer {who}"))
            .header("idempotency-key", "shared-key")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    };
    let alice = send(&s, as_user("alice")).await;
    let bob = send(&s, as_user("bob")).await;
    assert!(!bob.replayed(), "bob must not get alice's stored response");
    assert!(String::from_utf8_lossy(&bob.body).contains("Bearer bob"));
    assert_eq!(h.runs(), 2);
    let alice_again = send(&s, as_user("alice")).await;
    assert!(alice_again.replayed());
    assert_eq!(alice_again.body, alice.body);
    // An anonymous caller is a third principal.
    let anon = send(&s, post(Some("shared-key"), "{}")).await;
    assert!(!anon.replayed());
    assert_eq!(h.runs(), 3);
}

// ---------------------------------------------------------------------------------
// Limits and failures

#[tokio::test]
async fn bodies_above_the_limit_are_413() {
    let h = Handler::default();
    let s = svc(
        &IdempotencyLayer::builder(memory()).max_body(16).build(),
        &h,
    );
    let got = send(&s, post(Some("k"), &"x".repeat(17))).await;
    assert_eq!(got.status, 413);
    assert_eq!(
        got.problem_type(),
        "https://idemp.dev/problems/body-too-large"
    );
    assert_eq!(
        send(&s, post(Some("k2"), &"x".repeat(16))).await.status,
        201
    );
    assert_eq!(h.runs(), 1);
}

type Chunks =
    futures_util::stream::Iter<std::vec::IntoIter<Result<http_body::Frame<Bytes>, Infallible>>>;

#[tokio::test]
async fn streamed_bodies_without_length_are_limited_too() {
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let s = IdempotencyLayer::builder(memory())
        .max_body(16)
        .build()
        .layer(tower::service_fn(
            move |_req: Request<RequestBody<StreamBody<Chunks>>>| {
                counted.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
            },
        ));
    let chunks: Vec<Result<http_body::Frame<Bytes>, Infallible>> = (0..4)
        .map(|_| Ok(http_body::Frame::data(Bytes::from_static(b"12345678"))))
        .collect();
    let req = Request::post("/x")
        .header("idempotency-key", "k")
        .body(StreamBody::new(futures_util::stream::iter(chunks)))
        .unwrap();
    let res = s.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn store_down_fails_closed_with_503_or_open_when_configured() {
    let h = Handler::default();
    let observer = Arc::new(Counter::default());
    let closed = svc(
        &IdempotencyLayer::builder(Arc::new(DownStore::default()))
            .observer(observer.clone())
            .store_retry_after(Duration::from_secs(3))
            .build(),
        &h,
    );
    let got = send(&closed, post(Some("k"), "{}")).await;
    assert_eq!(got.status, 503);
    assert_eq!(got.headers["retry-after"], "3");
    assert_eq!(
        got.problem_type(),
        "https://idemp.dev/problems/store-unavailable"
    );
    assert_eq!(h.runs(), 0);
    assert_eq!(observer.get("store_unavailable"), 1);

    let open = svc(
        &IdempotencyLayer::builder(Arc::new(DownStore::default()))
            .fail_open(true)
            .observer(observer.clone())
            .build(),
        &h,
    );
    let got = send(&open, post(Some("k"), r#"{"a":1}"#)).await;
    assert_eq!(got.status, 201);
    assert_eq!(got.disposition, Some(Disposition::FailedOpen));
    // The handler received the buffered body intact.
    assert_eq!(got.json()["len"], 7);
    assert_eq!(h.runs(), 1);
    assert_eq!(observer.get("failed_open"), 1);

    // A key the store refuses is the client's problem: 400, even when failing open.
    let refusing = svc(
        &IdempotencyLayer::builder(Arc::new(DownStore { refuse: true }))
            .fail_open(true)
            .build(),
        &h,
    );
    let got = send(&refusing, post(Some("k"), "{}")).await;
    assert_eq!(got.status, 400);
    assert_eq!(got.problem_type(), "https://idemp.dev/problems/invalid-key");
    assert_eq!(h.runs(), 1);
}

// ---------------------------------------------------------------------------------
// Disconnects and leases

#[tokio::test]
async fn a_client_that_disconnects_does_not_cancel_the_handler() {
    let (h, gate) = Handler::default().gated();
    let store = memory();
    let layer = IdempotencyLayer::new(store.clone());
    let s = svc(&layer, &h);
    let client = tokio::spawn({
        let s = s.clone();
        async move { send(&s, post(Some("k"), "{}")).await }
    });
    h.until_started().await;
    // The client goes away mid-request.
    client.abort();
    assert!(client.await.unwrap_err().is_cancelled());
    assert!(matches!(
        only_record(&store).await.state,
        State::InProgress { .. }
    ));
    // The handler goes on, finishes and settles the record.
    gate.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), layer.in_flight().drained())
        .await
        .unwrap();
    assert_eq!(h.runs(), 1);
    assert!(matches!(
        only_record(&store).await.state,
        State::Completed(_)
    ));
    let retry = send(&s, post(Some("k"), "{}")).await;
    assert!(retry.replayed());
    assert_eq!(retry.status, 201);
    assert_eq!(h.runs(), 1);
}

#[tokio::test]
async fn the_heartbeat_keeps_a_slow_handler_from_being_taken_over() {
    // The handler outlives its lease several times over; without renewal a
    // duplicate would take the key over and run it again.
    let h = Handler::default().delayed(Duration::from_millis(1500));
    let observer = Arc::new(Counter::default());
    let layer = IdempotencyLayer::builder(memory())
        .lease(Duration::from_millis(600))
        .wait(Duration::from_secs(30))
        .observer(observer.clone())
        .build();
    let s = svc(&layer, &h);
    let first = tokio::spawn({
        let s = s.clone();
        async move { send(&s, post(Some("k"), "{}")).await }
    });
    h.until_started().await;
    let dup = send(&s, post(Some("k"), "{}")).await;
    let first = first.await.unwrap();
    assert!(dup.replayed());
    assert_eq!(dup.body, first.body);
    assert_eq!(h.runs(), 1);
    assert_eq!(observer.get("taken_over"), 0);
}

#[tokio::test]
async fn derived_keys_deduplicate_identical_requests_without_a_key() {
    let h = Handler::default();
    let s = svc(
        &IdempotencyLayer::builder(memory()).derive_key(true).build(),
        &h,
    );
    let a = send(&s, post(None, r#"{"to":"x","amount":5}"#)).await;
    let b = send(&s, post(None, r#"{"amount":5,"to":"x"}"#)).await;
    assert!(b.replayed());
    assert_eq!(a.body, b.body);
    let c = send(&s, post(None, r#"{"amount":6,"to":"x"}"#)).await;
    assert!(!c.replayed());
    assert_eq!(h.runs(), 2);
}

#[tokio::test]
async fn unguarded_methods_pass_through_every_time() {
    let h = Handler::default();
    let s = svc(
        &IdempotencyLayer::builder(memory())
            .methods([Method::POST])
            .build(),
        &h,
    );
    for m in [Method::GET, Method::PUT, Method::DELETE, Method::PATCH] {
        for _ in 0..2 {
            let req = Request::builder()
                .method(m.clone())
                .uri("/x")
                .header("idempotency-key", "same")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let got = send(&s, req).await;
            assert_eq!(got.disposition, Some(Disposition::PassedThrough));
            assert!(!got.replayed());
        }
    }
    assert_eq!(h.runs(), 8);
}

/// A process claimed the key for `req`, then died: nobody renews or settles it.
async fn crashed_claim(store: &DynStore, req: &Request<Full<Bytes>>) {
    use idemp::http::fingerprint::request_fingerprint;
    use idemp::http::scope::{CredentialHeaders, DEFAULT_SCOPE_SECRET, RequestPath, Scoper};
    let scope = Scoper::new(
        DEFAULT_SCOPE_SECRET,
        Arc::new(CredentialHeaders::default()),
        Arc::new(RequestPath),
    )
    .scope_of(None, "/payments");
    let fp = request_fingerprint(req.method(), req.uri(), req.headers(), &[], b"{}").unwrap();
    let claimed = store
        .claim(
            &Claim::new(RecordKey::new(scope, "k"))
                .fingerprint(Some(fp))
                .lease(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    assert!(matches!(claimed, ClaimOutcome::Acquired { .. }));
}

#[tokio::test]
async fn a_duplicate_of_a_crashed_request_takes_over_when_the_lease_passes_under_retake() {
    let store = memory();
    let req = post(Some("k"), "{}");
    crashed_claim(&store, &req).await;

    let h = Handler::default();
    let observer = Arc::new(Counter::default());
    let s = svc(
        &IdempotencyLayer::builder(store.clone())
            .wait(Duration::from_secs(60))
            .on_ambiguous(idemp::guard::OnAmbiguous::Retake)
            .observer(observer.clone())
            .build(),
        &h,
    );
    // Within the wait, the duplicate notices the lease has passed and takes over
    // (it does not sit out the whole 60 s wait for a settlement that never comes).
    let got = tokio::time::timeout(Duration::from_secs(20), send(&s, req))
        .await
        .expect("the waiter must take over when the lease passes");
    assert_eq!(got.status, 201);
    assert_eq!(
        got.disposition,
        Some(Disposition::Executed {
            stored: true,
            takeover: true
        })
    );
    assert_eq!(observer.get("taken_over"), 1);
    assert_eq!(h.runs(), 1);
}

#[tokio::test]
async fn a_duplicate_of_a_crashed_request_is_told_it_is_ambiguous_under_surface() {
    let store = memory();
    let req = post(Some("k"), "{}");
    crashed_claim(&store, &req).await;

    let h = Handler::default();
    let observer = Arc::new(Counter::default());
    let s = svc(
        &IdempotencyLayer::builder(store.clone())
            .wait(Duration::from_secs(60))
            .observer(observer.clone())
            .build(),
        &h,
    );
    let got = tokio::time::timeout(Duration::from_secs(20), send(&s, req))
        .await
        .expect("the waiter must see the lease pass");
    assert_eq!(got.status, 409);
    assert_eq!(
        got.problem_type(),
        "https://idemp.dev/problems/outcome-ambiguous"
    );
    assert_eq!(got.headers["x-should-retry"], "false");
    assert!(got.json()["attempt_started_at_ms"].as_u64().unwrap() > 0);
    assert_eq!(observer.get("ambiguous_refused"), 1);
    assert_eq!(h.runs(), 0, "the crashed attempt may have run: never again");
}

#[tokio::test]
async fn works_as_an_axum_router_layer() {
    use axum::routing::post;
    let charges = Arc::new(AtomicUsize::new(0));
    let counted = charges.clone();
    let app = axum::Router::new()
        .route(
            "/payments",
            post(move |body: String| {
                let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                async move { (StatusCode::CREATED, format!("charge {n}: {body}")) }
            }),
        )
        .layer(
            IdempotencyLayer::builder(memory())
                .require_key(true)
                .build(),
        );
    let req = || {
        Request::post("/payments")
            .header("idempotency-key", "order-42")
            .body(axum::body::Body::from("10 EUR"))
            .unwrap()
    };
    let first = app.clone().oneshot(req()).await.unwrap();
    assert_eq!(first.status(), 201);
    let first = first.into_body().collect().await.unwrap().to_bytes();
    let again = app.clone().oneshot(req()).await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.into_body().collect().await.unwrap().to_bytes(), first);
    let keyless = Request::post("/payments")
        .body(axum::body::Body::from("10 EUR"))
        .unwrap();
    assert_eq!(app.oneshot(keyless).await.unwrap().status(), 400);
    assert_eq!(charges.load(Ordering::SeqCst), 1);
}
