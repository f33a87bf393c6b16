//! Runs every example of `examples/` and checks what it claims.

#[allow(dead_code)]
#[path = "../examples/tool_layer.rs"]
mod tool_layer;

#[allow(dead_code)]
#[path = "../examples/queue_worker.rs"]
mod queue_worker;

#[cfg(all(feature = "client", feature = "http"))]
#[allow(dead_code)]
#[path = "../examples/agent_loop.rs"]
mod agent_loop;

#[cfg(feature = "http")]
#[allow(dead_code)]
#[path = "../examples/axum_server.rs"]
mod axum_server;

#[cfg(feature = "postgres")]
#[allow(dead_code)]
#[path = "../examples/pg_debit_exactly_once.rs"]
mod pg_debit_exactly_once;

#[tokio::test]
async fn tool_layer_caches_reads_and_guards_writes() {
    let c = tool_layer::run().await.unwrap();
    assert_eq!(c.lookups, 1, "three identical reads, one execution");
    assert_eq!(c.charges, 1, "a duplicate charge call replays");
    assert_eq!(c.deletions, 1, "a destructive call runs once per key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_worker_sends_each_email_once() {
    let r = queue_worker::run().await.unwrap();
    assert_eq!(r.deliveries, 40);
    assert_eq!(r.emails_sent as usize, r.distinct_jobs);
}

#[cfg(all(feature = "client", feature = "http"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_loop_bills_each_turn_once() {
    let r = agent_loop::run().await.unwrap();
    assert_eq!(r.turns, 3);
    assert_eq!(
        r.attempts, 9,
        "529, lost response, replay: three attempts a turn"
    );
    assert_eq!(
        r.billed, 3,
        "one billed completion a turn despite the lost responses"
    );
    assert_eq!(r.replays, 3);
}

#[cfg(feature = "http")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_service_charges_once_per_key() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let app = axum_server::app(std::sync::Arc::new(idemp::store::MemoryStore::new()));
    let post = |key: Option<&str>| {
        let mut b = Request::post("/payments").header("content-type", "application/json");
        if let Some(k) = key {
            b = b.header("idempotency-key", k);
        }
        b.body(Body::from(r#"{"amount": 1000}"#)).unwrap()
    };
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let app = app.clone();
        let req = post(Some("order-42"));
        tasks.push(tokio::spawn(async move { app.oneshot(req).await.unwrap() }));
    }
    let mut bodies = Vec::new();
    let mut replayed = 0;
    for t in tasks {
        let resp = t.await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        replayed += usize::from(resp.headers().contains_key("idempotent-replayed"));
        bodies.push(resp.into_body().collect().await.unwrap().to_bytes());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    assert_eq!(replayed, 7, "one execution, seven replays");
    let charges = app
        .clone()
        .oneshot(Request::get("/charges").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let body = charges.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"charges":1}"#);
    // The layer requires a key on this service.
    let missing = app.oneshot(post(None)).await.unwrap();
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_debit_moves_each_balance_exactly_once() {
    assert!(
        pg_debit_exactly_once::example().await.unwrap(),
        "a key was debited other than once"
    );
}
