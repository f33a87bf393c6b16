//! The middleware's request handling (what `idemp serve` runs for every request):
//! arbitrary methods, paths, queries, headers and bodies, sent twice. It never
//! panics, answers with a status from its contract, the handler runs at most once per
//! accepted key, and the fingerprint is deterministic.
#![no_main]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arbitrary::Arbitrary;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use idemp::http::IdempotencyLayer;
use idemp::http::fingerprint::request_fingerprint;
use idemp::store::MemoryStore;
use libfuzzer_sys::fuzz_target;
use tower::{Layer, ServiceExt};

#[derive(Arbitrary, Debug)]
struct Input {
    method: u8,
    path: String,
    key: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    json: bool,
    body: Vec<u8>,
    second_body: Option<Vec<u8>>,
}

fn build(input: &Input, body: &[u8]) -> Option<Request<Full<Bytes>>> {
    let method = match input.method % 5 {
        0 => Method::POST,
        1 => Method::PATCH,
        2 => Method::GET,
        3 => Method::PUT,
        _ => Method::DELETE,
    };
    let uri: Uri = format!("/{}", input.path.trim_start_matches('/')).parse().ok()?;
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(k) = &input.key {
        b = b.header("idempotency-key", HeaderValue::from_bytes(k).ok()?);
    }
    if input.json {
        b = b.header("content-type", "application/json");
    }
    for (n, v) in input.headers.iter().take(8) {
        let (Ok(n), Ok(v)) = (HeaderName::try_from(n.as_str()), HeaderValue::from_bytes(v)) else {
            continue;
        };
        b = b.header(n, v);
    }
    b.body(Full::new(Bytes::copy_from_slice(body))).ok()
}

fuzz_target!(|input: Input| {
    let Some(first) = build(&input, &input.body) else {
        return;
    };
    let fp = |r: &Request<Full<Bytes>>, body: &[u8]| {
        request_fingerprint(r.method(), r.uri(), r.headers(), &[], body)
    };
    assert_eq!(fp(&first, &input.body), fp(&first, &input.body));

    let second_body = input.second_body.clone().unwrap_or_else(|| input.body.clone());
    let Some(second) = build(&input, &second_body) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let inner = tower::service_fn(move |_req: Request<_>| {
        r.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
    });
    let layer = IdempotencyLayer::builder(Arc::new(MemoryStore::new()))
        .max_body(1024)
        .wait(std::time::Duration::from_millis(1))
        .build();
    let svc = layer.layer(inner);
    let guarded = matches!(*first.method(), Method::POST | Method::PATCH);
    let statuses = rt.block_on(async {
        let a = svc.clone().oneshot(first).await.expect("infallible").status();
        let b = svc.oneshot(second).await.expect("infallible").status();
        [a, b]
    });
    for s in statuses {
        assert!(
            matches!(
                s,
                StatusCode::OK
                    | StatusCode::BAD_REQUEST
                    | StatusCode::CONFLICT
                    | StatusCode::PAYLOAD_TOO_LARGE
                    | StatusCode::UNPROCESSABLE_ENTITY
            ),
            "unexpected status {s}"
        );
    }
    if guarded && input.key.is_some() && statuses == [StatusCode::OK, StatusCode::OK] {
        assert_eq!(runs.load(Ordering::SeqCst), 1, "a keyed duplicate ran twice");
    }
});
