//! The streaming tee: a guarded response reaches its client frame by frame while the
//! layer records it; duplicates join the live stream; a client that goes away does
//! not stop the recording; a response over the stored-response limit streams whole
//! and settles as "executed, response not stored"; a broken body truncates the
//! client and leaves the outcome ambiguous. Every test counts executions; ordering
//! is asserted by the test feeding the handler's body itself, never by timing.
#![cfg(feature = "http")]

mod http_support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_support::*;
use idemp::guard::OnAmbiguous;
use idemp::http::{Disposition, IdempotencyLayer};
use idemp::store::{ListQuery, State};

const SSE: &str = "text/event-stream";

#[tokio::test]
async fn first_bytes_reach_the_client_before_the_handler_has_finished() {
    let h = Scripted::default();
    let tx = h.stream(200, SSE);
    let store = memory();
    let s = svc(&IdempotencyLayer::new(store.clone()), &h);
    let mut res = call(&s, post("/v1/messages", Some("k"), "{}")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], SSE);
    tx.send(data("event: start\n\n")).await.unwrap();
    // The handler is still running (the test has not sent the rest): the first event
    // is already at the client.
    assert_eq!(
        next_data(&mut res).await.unwrap().unwrap(),
        "event: start\n\n"
    );
    let record = store.list(&ListQuery::default()).await.unwrap().records;
    assert!(matches!(record[0].state, State::InProgress { .. }));
    tx.send(data("event: delta\n\n")).await.unwrap();
    assert_eq!(
        next_data(&mut res).await.unwrap().unwrap(),
        "event: delta\n\n"
    );
    tx.send(data("event: stop\n\n")).await.unwrap();
    drop(tx);
    assert_eq!(
        next_data(&mut res).await.unwrap().unwrap(),
        "event: stop\n\n"
    );
    assert!(next_data(&mut res).await.is_none(), "a clean end");

    let replay = send(&s, post("/v1/messages", Some("k"), "{}")).await;
    assert!(replay.replayed());
    assert_eq!(replay.status, 200);
    assert_eq!(replay.headers["content-type"], SSE);
    assert_eq!(
        replay.body,
        "event: start\n\nevent: delta\n\nevent: stop\n\n"
    );
    assert_eq!(h.runs(), 1);
}

#[tokio::test]
async fn a_duplicate_mid_stream_gets_what_was_sent_then_the_rest_live() {
    let h = Scripted::default();
    let tx = h.stream(200, SSE);
    let observer = Arc::new(Counter::default());
    let s = svc(
        &IdempotencyLayer::builder(memory())
            .observer(observer.clone())
            .build(),
        &h,
    );
    let mut first = call(&s, post("/v1/messages", Some("k"), "{}")).await;
    tx.send(data("one ")).await.unwrap();
    assert_eq!(next_data(&mut first).await.unwrap().unwrap(), "one ");

    let mut dup = call(&s, post("/v1/messages", Some("k"), "{}")).await;
    assert_eq!(
        dup.extensions().get::<Disposition>(),
        Some(&Disposition::Joined)
    );
    assert_eq!(dup.headers()["idempotent-replayed"], "true");
    assert_eq!(dup.status(), 200);
    // What was sent so far, at once.
    assert_eq!(next_data(&mut dup).await.unwrap().unwrap(), "one ");
    // Then the rest, live, to both.
    tx.send(data("two")).await.unwrap();
    assert_eq!(next_data(&mut first).await.unwrap().unwrap(), "two");
    assert_eq!(next_data(&mut dup).await.unwrap().unwrap(), "two");
    drop(tx);
    assert!(next_data(&mut first).await.is_none());
    assert!(next_data(&mut dup).await.is_none());

    // A different request under the same key, mid-stream or after, is 422.
    assert_eq!(h.runs(), 1);
    assert_eq!(observer.get("joined"), 1);
    let later = send(&s, post("/v1/messages", Some("k"), "{}")).await;
    assert!(later.replayed());
    assert_eq!(later.body, "one two");
    assert_eq!(h.runs(), 1);
}

#[tokio::test]
async fn a_different_request_under_a_streaming_key_is_422() {
    let h = Scripted::default();
    let tx = h.stream(200, SSE);
    let s = svc(&IdempotencyLayer::new(memory()), &h);
    let mut first = call(&s, post("/v1/messages", Some("k"), r#"{"n":1}"#)).await;
    tx.send(data("x")).await.unwrap();
    assert_eq!(next_data(&mut first).await.unwrap().unwrap(), "x");
    let other = send(&s, post("/v1/messages", Some("k"), r#"{"n":2}"#)).await;
    assert_eq!(other.status, 422);
    assert_eq!(other.headers["x-should-retry"], "false");
    drop(tx);
    assert!(next_data(&mut first).await.is_none());
    assert_eq!(h.runs(), 1);
}

#[tokio::test]
async fn a_client_that_goes_away_mid_stream_does_not_stop_the_recording() {
    let h = Scripted::default();
    let tx = h.stream(201, "application/json");
    let observer = Arc::new(Counter::default());
    let layer = IdempotencyLayer::builder(memory())
        .observer(observer.clone())
        .build();
    let s = svc(&layer, &h);
    let mut first = call(&s, post("/charges", Some("k"), "{}")).await;
    tx.send(data(r#"{"charge":"#)).await.unwrap();
    assert_eq!(
        next_data(&mut first).await.unwrap().unwrap(),
        r#"{"charge":"#
    );
    drop(first); // the client hangs up
    // The handler goes on; its body is read to its end and recorded.
    for _ in 0..40 {
        tx.send(data("\"ch_1\"      ")).await.unwrap();
    }
    tx.send(data("}")).await.unwrap();
    drop(tx);
    tokio::time::timeout(Duration::from_secs(20), layer.in_flight().drained())
        .await
        .unwrap();
    assert_eq!(observer.get("client_gone"), 1);
    assert_eq!(observer.get("stored"), 1);
    let retry = send(&s, post("/charges", Some("k"), "{}")).await;
    assert!(retry.replayed());
    assert_eq!(retry.status, 201);
    assert!(retry.body.starts_with(br#"{"charge":"ch_1""#));
    assert!(retry.body.ends_with(b"}"));
    assert_eq!(h.runs(), 1);
}

#[tokio::test]
async fn a_response_over_the_limit_streams_whole_and_is_never_run_again() {
    let h = Scripted::default();
    let tx = h.stream(200, "application/octet-stream");
    let observer = Arc::new(Counter::default());
    let s = svc(
        &IdempotencyLayer::builder(memory())
            .max_stored_response(4096)
            .observer(observer.clone())
            .build(),
        &h,
    );
    let first = tokio::spawn({
        let s = s.clone();
        async move { send(&s, post("/export", Some("k"), "{}")).await }
    });
    let chunk = "x".repeat(1024);
    for _ in 0..64 {
        tx.send(data(&chunk)).await.unwrap();
    }
    drop(tx);
    let first = first.await.unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.body.len(), 64 * 1024, "streamed whole");
    assert!(first.error.is_none());
    assert_eq!(observer.get("not_stored"), 1);

    for _ in 0..2 {
        let retry = send(&s, post("/export", Some("k"), "{}")).await;
        assert_eq!(retry.status, 409);
        assert_eq!(
            retry.problem_type(),
            "https://idemp.dev/problems/response-not-stored"
        );
        assert_eq!(retry.headers["x-should-retry"], "false");
        let detail = retry.json()["detail"].as_str().unwrap().to_owned();
        assert!(
            detail.contains("65536 bytes") && detail.contains("4096"),
            "{detail}"
        );
        assert_eq!(retry.json()["executed_status"], 200);
    }
    assert_eq!(h.runs(), 1, "never a second execution");
    assert_eq!(observer.get("not_stored_refused"), 2);
}

#[tokio::test]
async fn the_tee_reads_no_faster_than_a_slow_client() {
    // Memory per request is bounded whatever the response size: with a client that
    // does not read, the layer pulls only a few frames ahead of it.
    let h = Scripted::default();
    let tx = h.stream(200, "application/octet-stream");
    let s = svc(
        &IdempotencyLayer::builder(memory())
            .max_stored_response(1024)
            .build(),
        &h,
    );
    let mut res = call(&s, post("/export", Some("k"), "{}")).await;
    let mut sent = 0;
    // The handler's body channel holds 1024 frames; the tee must stop pulling long
    // before: count how many the handler can push before it would block.
    loop {
        match tokio::time::timeout(Duration::from_millis(300), tx.send(data(&"y".repeat(1024))))
            .await
        {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
        if sent > 200 {
            break;
        }
        // Let the tee pull what it will.
        tokio::task::yield_now().await;
        if tx.capacity() < tx.max_capacity() {
            // Frames are waiting in the handler's own channel: the tee stopped.
            let waiting = tx.max_capacity() - tx.capacity();
            if waiting >= 4 {
                break;
            }
        }
    }
    let pulled = sent - (tx.max_capacity() - tx.capacity());
    assert!(
        pulled <= 16,
        "the tee pulled {pulled} frames ahead of a client that reads none"
    );
    // Now the client reads everything.
    drop(tx);
    let mut total = 0;
    while let Some(d) = next_data(&mut res).await {
        total += d.unwrap().len();
    }
    assert_eq!(total, sent * 1024);
}

async fn broken_stream(policy: OnAmbiguous) -> (Got, Got, usize) {
    let h = Scripted::default();
    let tx = h.stream(201, "application/json");
    let observer = Arc::new(Counter::default());
    let s = svc(
        &IdempotencyLayer::builder(memory())
            .on_ambiguous(policy)
            .observer(observer.clone())
            .build(),
        &h,
    );
    let first = tokio::spawn({
        let s = s.clone();
        async move { send(&s, post("/charges", Some("k"), "{}")).await }
    });
    tx.send(data(r#"{"charge":"#)).await.unwrap();
    tx.send(Err(std::io::Error::other(
        "connection reset by the upstream",
    )))
    .await
    .unwrap();
    let first = first.await.unwrap();
    assert_eq!(observer.get("truncated"), 1);
    assert_eq!(observer.get("ambiguous"), 1);
    let retry = send(&s, post("/charges", Some("k"), "{}")).await;
    (first, retry, h.runs())
}

#[tokio::test]
async fn a_body_that_breaks_truncates_the_client_and_is_surfaced_as_ambiguous() {
    let (first, retry, runs) = broken_stream(OnAmbiguous::Surface).await;
    assert_eq!(first.status, 201);
    assert_eq!(first.body, r#"{"charge":"#);
    let err = first
        .error
        .expect("the client sees a truncated response, not a clean end");
    assert!(err.contains("reset"), "{err}");
    assert_eq!(retry.status, 409);
    assert_eq!(
        retry.problem_type(),
        "https://idemp.dev/problems/outcome-ambiguous"
    );
    assert_eq!(retry.headers["x-should-retry"], "false");
    assert_eq!(runs, 1);
}

#[tokio::test]
async fn a_body_that_breaks_is_run_again_under_retake() {
    let (first, retry, runs) = broken_stream(OnAmbiguous::Retake).await;
    assert!(first.error.is_some());
    assert_eq!(retry.status, 201);
    assert!(!retry.replayed());
    assert_eq!(runs, 2, "retake: at least once");
}

#[tokio::test]
async fn a_joiner_that_falls_far_behind_is_cut_off() {
    let h = Scripted::default();
    let tx = h.stream(200, "application/octet-stream");
    let observer = Arc::new(Counter::default());
    let s = svc(
        &IdempotencyLayer::builder(memory())
            .max_stored_response(1000)
            .observer(observer.clone())
            .build(),
        &h,
    );
    let mut first = call(&s, post("/export", Some("k"), "{}")).await;
    tx.send(data("head")).await.unwrap();
    assert_eq!(next_data(&mut first).await.unwrap().unwrap(), "head");
    // The joiner joins, then reads nothing while 3 MiB go by.
    let mut joiner = call(&s, post("/export", Some("k"), "{}")).await;
    assert_eq!(
        joiner.extensions().get::<Disposition>(),
        Some(&Disposition::Joined)
    );
    let chunk = "z".repeat(64 << 10);
    let reader = tokio::spawn(async move {
        let mut n = 4;
        while let Some(d) = next_data(&mut first).await {
            n += d.unwrap().len();
        }
        n
    });
    for _ in 0..48 {
        tx.send(data(&chunk)).await.unwrap();
    }
    drop(tx);
    assert_eq!(
        reader.await.unwrap(),
        4 + 48 * (64 << 10),
        "the first client gets it all"
    );
    let got = read_all_from(&mut joiner).await;
    assert!(got.1.is_some(), "the laggard ends truncated, never cleanly");
    assert!(got.0 < 4 + 48 * (64 << 10));
    assert_eq!(observer.get("joiner_cut_off"), 1);
    assert_eq!(h.runs(), 1);
}

async fn read_all_from(res: &mut Res) -> (usize, Option<String>) {
    let mut n = 0;
    while let Some(d) = next_data(res).await {
        match d {
            Ok(d) => n += d.len(),
            Err(e) => return (n, Some(e)),
        }
    }
    (n, None)
}

#[tokio::test]
async fn responses_that_are_released_stream_through_untouched() {
    // An unstored status releases the key at once and streams the handler's body
    // as is; the retry runs.
    let h = Scripted::default();
    let tx = h.stream(503, "text/plain");
    let s = svc(&IdempotencyLayer::new(memory()), &h);
    let mut first = call(&s, post("/charges", Some("k"), "{}")).await;
    assert_eq!(first.status(), 503);
    assert_eq!(
        first.extensions().get::<Disposition>(),
        Some(&Disposition::Executed {
            stored: false,
            takeover: false
        })
    );
    tx.send(data("overloaded")).await.unwrap();
    drop(tx);
    assert_eq!(
        next_data(&mut first).await.unwrap().unwrap(),
        Bytes::from("overloaded")
    );
    let retry = send(&s, post("/charges", Some("k"), "{}")).await;
    assert_eq!(retry.status, 201);
    assert_eq!(h.runs(), 2);
}

/// A memory store whose `complete` waits for the test.
#[derive(Debug)]
struct SlowComplete {
    inner: idemp::store::DynStore,
    entered: tokio::sync::Notify,
    gate: tokio::sync::Semaphore,
}

#[async_trait::async_trait]
impl idemp::store::Store for SlowComplete {
    async fn claim(
        &self,
        c: &idemp::store::Claim,
    ) -> idemp::store::StoreResult<idemp::store::ClaimOutcome> {
        self.inner.claim(c).await
    }
    async fn complete(
        &self,
        id: &idemp::store::RecordKey,
        t: idemp::store::Token,
        o: idemp::store::Outcome,
        ttl: Duration,
    ) -> idemp::store::StoreResult<()> {
        self.entered.notify_one();
        self.gate.acquire().await.unwrap().forget();
        self.inner.complete(id, t, o, ttl).await
    }
    async fn fail(
        &self,
        id: &idemp::store::RecordKey,
        t: idemp::store::Token,
        o: idemp::store::Outcome,
        ttl: Duration,
    ) -> idemp::store::StoreResult<()> {
        self.inner.fail(id, t, o, ttl).await
    }
    async fn release(
        &self,
        id: &idemp::store::RecordKey,
        t: idemp::store::Token,
    ) -> idemp::store::StoreResult<()> {
        self.inner.release(id, t).await
    }
    async fn renew(
        &self,
        id: &idemp::store::RecordKey,
        t: idemp::store::Token,
        lease: Duration,
    ) -> idemp::store::StoreResult<u64> {
        self.inner.renew(id, t, lease).await
    }
    async fn get(
        &self,
        id: &idemp::store::RecordKey,
    ) -> idemp::store::StoreResult<Option<idemp::store::Record>> {
        self.inner.get(id).await
    }
    async fn wait(
        &self,
        id: &idemp::store::RecordKey,
        timeout: Duration,
    ) -> idemp::store::StoreResult<Option<idemp::store::Record>> {
        self.inner.wait(id, timeout).await
    }
}

#[async_trait::async_trait]
impl idemp::store::StoreAdmin for SlowComplete {
    async fn list(&self, q: &ListQuery) -> idemp::store::StoreResult<idemp::store::Page> {
        self.inner.list(q).await
    }
    async fn purge(&self, id: &idemp::store::RecordKey) -> idemp::store::StoreResult<bool> {
        self.inner.purge(id).await
    }
    async fn sweep(&self) -> idemp::store::StoreResult<u64> {
        self.inner.sweep().await
    }
    async fn stats(&self) -> idemp::store::StoreResult<idemp::store::Stats> {
        self.inner.stats().await
    }
}

#[tokio::test]
async fn the_lease_is_renewed_while_the_response_streams() {
    // The request's task polls the lease's heartbeat beside the stream: a response
    // that streams for several leases keeps its record in progress under a lease that
    // has not passed (without renewal it would pass, and a duplicate elsewhere could
    // take the key over and run it again).
    let h = Scripted::default();
    let tx = h.stream(200, SSE);
    let store = memory();
    let layer = IdempotencyLayer::builder(store.clone())
        .lease(Duration::from_millis(600))
        .build();
    let s = svc(&layer, &h);
    let mut res = call(&s, post("/v1/messages", Some("k"), "{}")).await;
    tx.send(data("event: start\n\n")).await.unwrap();
    assert!(next_data(&mut res).await.unwrap().is_ok());
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let record = store.list(&ListQuery::default()).await.unwrap().records;
    match record[0].state {
        State::InProgress { lease_until } => assert!(
            lease_until > now_ms,
            "the lease passed while the response streamed: {lease_until} <= {now_ms}"
        ),
        ref other => panic!("expected in progress, got {other:?}"),
    }
    drop(tx);
    assert!(next_data(&mut res).await.is_none());
    let replay = send(&s, post("/v1/messages", Some("k"), "{}")).await;
    assert!(replay.replayed());
    assert_eq!(h.runs(), 1);
}

#[tokio::test]
async fn a_duplicate_arriving_while_the_record_is_written_gets_the_replay() {
    // Regression: a duplicate that found the stream ending (its copy handed to the
    // store) was answered `response-not-stored`; it must wait for the record.
    let store = Arc::new(SlowComplete {
        inner: memory(),
        entered: tokio::sync::Notify::new(),
        gate: tokio::sync::Semaphore::new(0),
    });
    let h = Scripted::default();
    let s = svc(&IdempotencyLayer::new(store.clone()), &h);
    let first = tokio::spawn({
        let s = s.clone();
        async move { send(&s, post("/charges", Some("k"), "{}")).await }
    });
    // The first response ended; its record is being written.
    store.entered.notified().await;
    let dup = tokio::spawn({
        let s = s.clone();
        async move { send(&s, post("/charges", Some("k"), "{}")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.gate.add_permits(1);
    let (first, dup) = (first.await.unwrap(), dup.await.unwrap());
    assert_eq!(first.status, 201);
    assert_eq!(dup.status, 201, "{dup:?}");
    assert!(dup.replayed());
    assert_eq!(dup.body, first.body);
    assert_eq!(h.runs(), 1);
}
