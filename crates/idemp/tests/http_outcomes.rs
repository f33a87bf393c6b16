//! How a guarded request settles, and what its retry gets: `Delivery::MaybeSent` and
//! `NotSent` answers under both ambiguity policies, the ambiguous hold, operator
//! resolution through `Guard::resolve`, a shutdown mid-request, `forward_key`,
//! `OnAmbiguous::Verify`, replay hygiene, decoding for clients, per-route settings.
//! Executions are counted in every test.
#![cfg(feature = "http")]

mod http_support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use http_support::*;
use idemp::guard::{Begin, Guard, OnAmbiguous, Resolution, Resolved};
use idemp::http::{Delivery, IdempotencyLayer, RouteSettings, StoredResponse};
use idemp::store::{DynStore, ListQuery, Record, State};

fn upstream_timeout() -> Reply {
    Reply::full(504, r#"{"type":"upstream-timeout"}"#).delivered(Delivery::MaybeSent)
}

async fn only_record(store: &DynStore) -> Record {
    let page = store.list(&ListQuery::default()).await.unwrap();
    assert_eq!(page.records.len(), 1, "{:?}", page.records);
    page.records.into_iter().next().unwrap()
}

#[tokio::test]
async fn maybe_sent_is_ambiguous_surface_answers_retries_and_never_reruns() {
    let h = Scripted::default();
    h.then(upstream_timeout());
    let store = memory();
    let observer = Arc::new(Counter::default());
    let s = svc(
        &IdempotencyLayer::builder(store.clone())
            .observer(observer.clone())
            .build(),
        &h,
    );
    let first = send(&s, post("/charges", Some("k"), "{}")).await;
    assert_eq!(
        first.status, 504,
        "the first caller gets the forwarder's answer"
    );
    assert!(only_record(&store).await.is_ambiguous(u64::MAX));
    for _ in 0..3 {
        let retry = send(&s, post("/charges", Some("k"), "{}")).await;
        assert_eq!(retry.status, 409);
        assert_eq!(
            retry.problem_type(),
            "https://idemp.dev/problems/outcome-ambiguous"
        );
        assert_eq!(retry.headers["x-should-retry"], "false");
        assert_eq!(retry.headers["stripe-should-retry"], "false");
        let detail = retry.json()["detail"].as_str().unwrap().to_owned();
        assert!(
            detail.contains("may have run") && detail.contains("GMT"),
            "{detail}"
        );
    }
    assert_eq!(h.runs(), 1);
    assert_eq!(observer.get("ambiguous"), 1);
    assert_eq!(observer.get("ambiguous_refused"), 3);
}

#[tokio::test]
async fn maybe_sent_under_retake_runs_again() {
    let h = Scripted::default();
    h.then(upstream_timeout());
    let s = svc(
        &IdempotencyLayer::builder(memory())
            .on_ambiguous(OnAmbiguous::Retake)
            .build(),
        &h,
    );
    assert_eq!(
        send(&s, post("/charges", Some("k"), "{}")).await.status,
        504
    );
    let retry = send(&s, post("/charges", Some("k"), "{}")).await;
    assert_eq!(retry.status, 201);
    assert!(send(&s, post("/charges", Some("k"), "{}")).await.replayed());
    assert_eq!(h.runs(), 2);
}

#[tokio::test]
async fn not_sent_releases_under_both_policies() {
    for policy in [OnAmbiguous::Surface, OnAmbiguous::Retake] {
        let h = Scripted::default();
        h.then(Reply::full(502, "{}").delivered(Delivery::NotSent));
        let s = svc(
            &IdempotencyLayer::builder(memory())
                .on_ambiguous(policy)
                .build(),
            &h,
        );
        assert_eq!(
            send(&s, post("/charges", Some("k"), "{}")).await.status,
            502
        );
        let retry = send(&s, post("/charges", Some("k"), "{}")).await;
        assert_eq!(retry.status, 201);
        assert_eq!(h.runs(), 2);
    }
}

#[tokio::test]
async fn the_ambiguous_hold_ends_and_the_retry_runs() {
    let h = Scripted::default();
    h.then(upstream_timeout());
    let s = svc(
        &IdempotencyLayer::builder(memory())
            .ambiguous_hold(Duration::from_millis(300))
            .build(),
        &h,
    );
    send(&s, post("/charges", Some("k"), "{}")).await;
    let held = send(&s, post("/charges", Some("k"), "{}")).await;
    assert_eq!(held.status, 409);
    assert!(
        held.json()["detail"]
            .as_str()
            .unwrap()
            .contains("A retry after")
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = send(&s, post("/charges", Some("k"), "{}")).await;
    assert_eq!(after.status, 201, "{after:?}");
    assert!(send(&s, post("/charges", Some("k"), "{}")).await.replayed());
    assert_eq!(h.runs(), 2);
}

#[tokio::test]
async fn guard_resolve_settles_an_ambiguous_http_record() {
    for (resolution, expected_runs) in [(Resolution::Retake, 2), (Resolution::Completed(true), 1)] {
        let h = Scripted::default();
        h.then(upstream_timeout());
        let store = memory();
        let s = svc(&IdempotencyLayer::new(store.clone()), &h);
        send(&s, post("/charges", Some("k"), "{}")).await;
        let record = only_record(&store).await;
        // What `idemp records resolve` does: a guard in the record's scope.
        let guard = Guard::builder(store.clone())
            .scope(record.id.scope.clone())
            .build();
        let done = guard
            .resolve(&record.id.key, resolution.clone())
            .await
            .unwrap();
        assert_eq!(done, Resolved::Applied);
        let retry = send(&s, post("/charges", Some("k"), "{}")).await;
        if expected_runs == 2 {
            assert_eq!(retry.status, 201, "--not-executed: the retry runs");
        } else {
            assert_eq!(retry.status, 409, "--executed: never again");
            assert_eq!(
                retry.problem_type(),
                "https://idemp.dev/problems/response-not-stored"
            );
        }
        assert_eq!(h.runs(), expected_runs);
    }
}

#[tokio::test]
async fn a_request_running_at_shutdown_is_ambiguous() {
    let h = Scripted::default();
    let tx = h.stream(200, "text/event-stream");
    let store = memory();
    let layer = IdempotencyLayer::new(store.clone());
    let s = svc(&layer, &h);
    let mut first = call(&s, post("/v1/messages", Some("k"), "{}")).await;
    tx.send(data("partial")).await.unwrap();
    assert_eq!(next_data(&mut first).await.unwrap().unwrap(), "partial");
    layer.in_flight().abandon();
    tokio::time::timeout(Duration::from_secs(20), layer.in_flight().drained())
        .await
        .unwrap();
    let rest = next_data(&mut first).await;
    assert!(
        matches!(rest, Some(Err(_))),
        "the client sees a truncated stream: {rest:?}"
    );
    assert!(only_record(&store).await.is_ambiguous(u64::MAX));
    let retry = send(&s, post("/v1/messages", Some("k"), "{}")).await;
    assert_eq!(retry.status, 409);
    assert_eq!(
        retry.problem_type(),
        "https://idemp.dev/problems/outcome-ambiguous"
    );
    assert_eq!(h.runs(), 1);
    drop(tx);
}

#[tokio::test]
async fn forward_key_sends_explicit_and_derived_keys_to_the_handler() {
    let h = Scripted::default();
    let s = svc(
        &IdempotencyLayer::builder(memory())
            .derive_key(true)
            .forward_key(true)
            .build(),
        &h,
    );
    send(&s, post("/charges", Some("client-key"), "{}")).await;
    send(&s, post("/charges", None, r#"{"a":1}"#)).await;
    send(&s, post("/charges", None, r#"{"a":2}"#)).await;
    let seen = h.seen.lock().clone();
    assert_eq!(seen[0].0["idempotency-key"], "client-key");
    let derived: Vec<String> = seen[1..]
        .iter()
        .map(|(h, _)| h["idempotency-key"].to_str().unwrap().to_owned())
        .collect();
    assert!(
        derived
            .iter()
            .all(|k| k.starts_with("ik_") && k.len() == 35),
        "{derived:?}"
    );
    assert_ne!(derived[0], derived[1]);
    // Without forward_key, a derived key stays with the layer.
    let h2 = Scripted::default();
    let s2 = svc(
        &IdempotencyLayer::builder(memory()).derive_key(true).build(),
        &h2,
    );
    send(&s2, post("/charges", None, "{}")).await;
    assert!(!h2.seen.lock()[0].0.contains_key("idempotency-key"));
}

#[tokio::test]
async fn verify_asks_the_reconcile_function_for_the_response() {
    let h = Scripted::default();
    h.then(upstream_timeout());
    let policy = OnAmbiguous::verify(|_key| async {
        Ok::<_, std::io::Error>(Some(StoredResponse {
            status: 201,
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            body: br#"{"charge":"found upstream"}"#.to_vec(),
        }))
    });
    let s = svc(
        &IdempotencyLayer::builder(memory())
            .on_ambiguous(policy)
            .build(),
        &h,
    );
    assert_eq!(
        send(&s, post("/charges", Some("k"), "{}")).await.status,
        504
    );
    let retry = send(&s, post("/charges", Some("k"), "{}")).await;
    assert_eq!(retry.status, 201);
    assert!(retry.replayed());
    assert_eq!(retry.body, r#"{"charge":"found upstream"}"#);
    assert_eq!(h.runs(), 1);
}

#[tokio::test]
async fn replays_carry_no_credentials_and_no_upstream_replay_marker() {
    let h = Scripted::default();
    h.then(
        Reply::full(201, "{}")
            .header("idempotent-replayed", "true")
            .header("authentication-info", "nextnonce=\"abc\"")
            .header("proxy-authentication-info", "x")
            .header("set-cookie", "s=1")
            .header("x-request-id", "r1"),
    );
    let s = svc(&IdempotencyLayer::new(memory()), &h);
    let first = send(&s, post("/x", Some("k"), "{}")).await;
    assert!(
        !first.replayed(),
        "an upstream's own Idempotent-Replayed is stripped"
    );
    assert_eq!(
        first.headers["set-cookie"], "s=1",
        "the first answer is the handler's own"
    );
    let again = send(&s, post("/x", Some("k"), "{}")).await;
    assert!(again.replayed());
    assert_eq!(again.headers["x-request-id"], "r1");
    for never in [
        "authentication-info",
        "proxy-authentication-info",
        "set-cookie",
    ] {
        assert!(!again.headers.contains_key(never), "{never}");
    }
    assert_eq!(h.runs(), 1);
}

#[tokio::test]
async fn a_stored_gzip_body_is_decoded_for_clients_that_do_not_accept_gzip() {
    use std::io::Write;
    let plain = br#"{"text":"hello hello hello hello"}"#;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(plain).unwrap();
    let gz = e.finish().unwrap();
    let h = Scripted::default();
    h.then(Reply::full(200, gz.clone()).header("content-encoding", "gzip"));
    let s = svc(&IdempotencyLayer::new(memory()), &h);
    let with = |accept: Option<&str>| {
        let mut b = Request::post("/x")
            .header("content-type", "application/json")
            .header("idempotency-key", "k");
        if let Some(a) = accept {
            b = b.header("accept-encoding", a);
        }
        b.body(Full::new(Bytes::from_static(b"{}"))).unwrap()
    };
    send(&s, with(Some("gzip"))).await;
    let gzip_ok = send(&s, with(Some("gzip, br"))).await;
    assert_eq!(gzip_ok.headers["content-encoding"], "gzip");
    assert_eq!(gzip_ok.body, gz);
    for accept in [Some("identity"), None, Some("br")] {
        let decoded = send(&s, with(accept)).await;
        assert!(decoded.replayed());
        assert!(
            !decoded.headers.contains_key("content-encoding"),
            "{accept:?}"
        );
        assert_eq!(decoded.body, &plain[..], "{accept:?}");
    }
    assert_eq!(h.runs(), 1);
}

#[tokio::test]
async fn per_route_settings_apply_by_path_prefix() {
    let h = Scripted::default();
    let s = svc(
        &IdempotencyLayer::builder(memory())
            .route_settings(
                "/v1/messages",
                RouteSettings::new()
                    .derive_key(true)
                    .on_ambiguous(OnAmbiguous::Retake),
            )
            .route_settings("/v1/charges", RouteSettings::new().require_key(true))
            .route_settings("/v1/files", RouteSettings::new().max_stored_response(8))
            .route_settings(
                "/v1/batches",
                RouteSettings::new().methods([http::Method::PUT]),
            )
            .build(),
        &h,
    );
    // Derived keys on /v1/messages only.
    send(&s, post("/v1/messages", None, "{}")).await;
    assert!(send(&s, post("/v1/messages/", None, "{}")).await.replayed());
    send(&s, post("/v1/other", None, "{}")).await;
    assert!(!send(&s, post("/v1/other", None, "{}")).await.replayed());
    assert_eq!(h.runs(), 3);
    // A key is required on /v1/charges (and below it).
    assert_eq!(
        send(&s, post("/v1/charges/ch_1/capture", None, "{}"))
            .await
            .status,
        400
    );
    // A tiny stored-response limit on /v1/files.
    send(&s, post("/v1/files", Some("f"), "{}")).await;
    let retry = send(&s, post("/v1/files", Some("f"), "{}")).await;
    assert_eq!(
        retry.problem_type(),
        "https://idemp.dev/problems/response-not-stored"
    );
    // POST is not guarded on /v1/batches.
    send(&s, post("/v1/batches", Some("b"), "{}")).await;
    assert!(
        !send(&s, post("/v1/batches", Some("b"), "{}"))
            .await
            .replayed()
    );
    assert_eq!(h.runs(), 6);
    // Retake on /v1/messages: a lost outcome runs again.
    h.then(upstream_timeout());
    send(&s, post("/v1/messages", None, r#"{"n":2}"#)).await;
    assert_eq!(
        send(&s, post("/v1/messages", None, r#"{"n":2}"#))
            .await
            .status,
        201
    );
    assert_eq!(h.runs(), 8);
}

/// `Lease::mark_ambiguous` (a zero-lease renew) on the stores the layer runs on in
/// tests: the record is ambiguous at once, `Surface` surfaces it, `Retake` takes it
/// over, and `Guard::resolve` settles it.
async fn mark_ambiguous_on(store: DynStore) {
    let scope = format!("mark-{}", rand_suffix());
    let surface = Guard::builder(store.clone())
        .scope(scope.clone())
        .on_ambiguous(OnAmbiguous::Surface)
        .build();
    let Begin::Owner(lease) = surface.begin("k", None).await.unwrap() else {
        panic!("fresh key")
    };
    lease.mark_ambiguous().await.unwrap();
    let rec = store
        .get(&surface.record_key("k"))
        .await
        .unwrap()
        .expect("kept, not released");
    assert!(matches!(rec.state, State::InProgress { .. }));
    assert!(rec.is_ambiguous(idemp::clock::system().now_ms()));
    assert!(matches!(
        surface.begin("k", None).await.unwrap(),
        Begin::Ambiguous(_)
    ));
    let retake = Guard::builder(store.clone())
        .scope(scope.clone())
        .on_ambiguous(OnAmbiguous::Retake)
        .build();
    let Begin::Owner(again) = retake.begin("k", None).await.unwrap() else {
        panic!("retake takes the ambiguous record over")
    };
    assert!(again.takeover().is_some());
    again.mark_ambiguous().await.unwrap();
    assert_eq!(
        surface
            .resolve("k", Resolution::<()>::Retake)
            .await
            .unwrap(),
        Resolved::Applied
    );
    assert!(store.get(&surface.record_key("k")).await.unwrap().is_none());
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test]
async fn mark_ambiguous_on_the_memory_store() {
    mark_ambiguous_on(memory()).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn mark_ambiguous_on_the_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    mark_ambiguous_on(idemp::store::open(&url).await.unwrap()).await;
}
