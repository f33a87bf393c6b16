//! The middleware's request handling (what `idemp serve` runs for every request):
//! arbitrary methods, paths, queries, headers (content codings and credentials
//! included) and bodies, sent twice, to a handler that may answer any status, mark
//! its answer `Delivery::MaybeSent`/`NotSent`, or break its body mid-stream, under
//! either ambiguity policy. It never panics, answers with a status from its
//! contract, a keyed duplicate runs the handler at most once unless the first run
//! released the key (an unstored status, `NotSent`, or a lost outcome under
//! `retake`), and the fingerprint is deterministic.
#![no_main]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arbitrary::Arbitrary;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, StreamBody};
use idemp::guard::OnAmbiguous;
use idemp::http::fingerprint::request_fingerprint;
use idemp::http::{Delivery, IdempotencyLayer};
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
    /// What the handler answers the first time: status, delivery mark, broken body.
    status: u16,
    delivery: u8,
    breaks: bool,
    retake: bool,
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
    let status = StatusCode::from_u16(100 + input.status % 500).unwrap_or(StatusCode::OK);
    let status = if status.is_informational() { StatusCode::OK } else { status };

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
    let (delivery, breaks) = (input.delivery, input.breaks);
    let inner = tower::service_fn(move |_req: Request<_>| {
        let n = r.fetch_add(1, Ordering::SeqCst);
        // Only the first execution misbehaves; a rerun answers 200.
        let chunks: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = if n == 0 && breaks {
            vec![
                Ok(http_body::Frame::data(Bytes::from_static(b"par"))),
                Err(std::io::Error::other("reset")),
            ]
        } else {
            vec![Ok(http_body::Frame::data(Bytes::from_static(b"ok")))]
        };
        let mut res = Response::new(StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync());
        if n == 0 {
            *res.status_mut() = status;
            match delivery % 3 {
                1 => drop(res.extensions_mut().insert(Delivery::NotSent)),
                2 => drop(res.extensions_mut().insert(Delivery::MaybeSent)),
                _ => {}
            }
        }
        async { Ok::<_, std::convert::Infallible>(res) }
    });
    let policy = if input.retake { OnAmbiguous::Retake } else { OnAmbiguous::Surface };
    let layer = IdempotencyLayer::builder(Arc::new(MemoryStore::new()))
        .max_body(1024)
        .wait(std::time::Duration::from_millis(1))
        .on_ambiguous(policy)
        .build();
    let svc = layer.layer(inner);
    let guarded = matches!(*first.method(), Method::POST | Method::PATCH);
    let (statuses, first_truncated) = rt.block_on(async {
        let a = svc.clone().oneshot(first).await.expect("infallible");
        let a_status = a.status();
        // Read the first response to its end (a broken body ends in an error).
        let truncated = a.into_body().collect().await.is_err();
        let b = svc.oneshot(second).await.expect("infallible").status();
        ([a_status, b], truncated)
    });
    assert!(!first_truncated || breaks, "a response that did not break was truncated");
    let runs = runs.load(Ordering::SeqCst);
    assert!(runs <= 2);
    if runs == 2 && guarded && input.key.is_some() && input.second_body.is_none() {
        // A keyed duplicate may only run again when the first run released the key.
        let released = status.as_u16() >= 500
            || matches!(status.as_u16(), 408 | 409 | 425 | 429)
            || delivery % 3 == 1
            || ((delivery % 3 == 2 || breaks) && input.retake);
        assert!(released, "a keyed duplicate ran twice ({status}, delivery {delivery}, breaks {breaks})");
    }
    for s in &statuses[1..] {
        assert!(
            *s == StatusCode::OK
                || *s == status
                || matches!(
                    *s,
                    StatusCode::BAD_REQUEST
                        | StatusCode::CONFLICT
                        | StatusCode::PAYLOAD_TOO_LARGE
                        | StatusCode::UNPROCESSABLE_ENTITY
                ),
            "unexpected status {s}"
        );
    }
});
