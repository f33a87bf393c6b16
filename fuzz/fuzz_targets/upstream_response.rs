//! The proxy's upstream hop (what `idemp serve` runs: the idempotency layer in front
//! of the forwarder) against arbitrary upstream answers: status line, headers, body
//! framing and how the connection ends, from a fake upstream on loopback.
//!
//! Invariant: a request that reached the upstream is never executed twice by the
//! proxy's own doing. The same keyed request is sent twice; the second may reach the
//! upstream only if the first got a parsable response head with a status that is not
//! stored (408, 409, 425, 429, 5xx): that status is the upstream's own answer, and
//! what becomes of the body after it (an error text, cut short or not) says nothing
//! more about whether the request ran, so the layer releases the key at the head.
//! After anything else (a stored status, an unparsable head, no head, a stall, a
//! reset before the head) the key is settled or ambiguous, never released. And the
//! forwarder itself never sends one request twice.
//!
//! Input: byte 0 says how the upstream ends the connection after writing (close,
//! hang, reset); the rest is written as its answer, verbatim. The seed corpus
//! (`fuzz/corpus/upstream_response/`) holds one answer of each kind.
#![no_main]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use idemp::http::IdempotencyLayer;
use idemp::store::MemoryStore;
use idemp_cli::serve::{Forward, ForwardOptions};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{Layer, ServiceExt};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Close,
    Hang,
    Reset,
}

struct Case {
    answer: Vec<u8>,
    end: End,
}

struct Harness {
    rt: tokio::runtime::Runtime,
    forward: Forward,
    executions: Arc<AtomicUsize>,
    case: Arc<Mutex<Arc<Case>>>,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let executions = Arc::new(AtomicUsize::new(0));
        let case = Arc::new(Mutex::new(Arc::new(Case {
            answer: Vec::new(),
            end: End::Close,
        })));
        let addr = rt.block_on(start_upstream(executions.clone(), case.clone()));
        let mut options = ForwardOptions::new(format!("http://{addr}").parse().expect("uri"));
        options.timeout = Duration::from_millis(200);
        options.idle_timeout = Duration::from_millis(50);
        let forward = {
            let _guard = rt.enter();
            Forward::new(&options).expect("forwarder")
        };
        Harness {
            rt,
            forward,
            executions,
            case,
        }
    })
}

/// The fake upstream: reads one request (head and `Content-Length` body), counts it,
/// writes the case's answer, then ends the connection as the case says.
async fn start_upstream(executions: Arc<AtomicUsize>, case: Arc<Mutex<Arc<Case>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (executions, case) = (executions.clone(), case.clone());
            tokio::spawn(serve(stream, executions, case));
        }
    });
    addr
}

async fn serve(mut s: TcpStream, executions: Arc<AtomicUsize>, case: Arc<Mutex<Arc<Case>>>) {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    executions.fetch_add(1, Ordering::SeqCst);
    let case = case.lock().expect("case").clone();
    let _ = s.write_all(&case.answer).await;
    let _ = s.flush().await;
    match case.end {
        End::Close => {}
        End::Reset => {
            let _ = s.set_zero_linger();
        }
        End::Hang => {
            let mut sink = [0u8; 1024];
            while let Ok(n) = s.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        }
    }
}

/// Whether `answer` starts with a whole, parsable HTTP/1.1 response head whose status
/// the layer does not store, judged leniently (when in doubt: yes, so that only a
/// real double execution is reported).
fn unstored_head(answer: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 600];
    let mut res = httparse::Response::new(&mut headers);
    if !matches!(res.parse(answer), Ok(httparse::Status::Complete(_))) {
        return false;
    }
    match res.code {
        // Interim responses: hyper reads on for the final one; not judged here.
        Some(code) if (100..200).contains(&code) => true,
        Some(code) => matches!(code, 408 | 409 | 425 | 429) || code >= 500,
        None => false,
    }
}

fn request() -> Request<Full<Bytes>> {
    Request::post("/v1/charges")
        .header("idempotency-key", "fuzz-key")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"amount":100}"#)))
        .expect("request")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, answer)) = data.split_first() else {
        return;
    };
    let end = match mode % 3 {
        0 => End::Close,
        1 => End::Hang,
        _ => End::Reset,
    };
    let h = harness();
    *h.case.lock().expect("case") = Arc::new(Case {
        answer: answer.to_vec(),
        end,
    });
    h.executions.store(0, Ordering::SeqCst);
    let service = {
        let _guard = h.rt.enter();
        IdempotencyLayer::builder(Arc::new(MemoryStore::new()))
            .wait(Duration::from_millis(500))
            .build()
            .layer(h.forward.clone())
    };
    let (first, second) = h.rt.block_on(async {
        let mut counts = [0usize; 2];
        for count in &mut counts {
            let res = service.clone().oneshot(request()).await.expect("infallible");
            // Read the answer to its end (or its error).
            let _ = tokio::time::timeout(Duration::from_secs(5), res.into_body().collect()).await;
            *count = h.executions.load(Ordering::SeqCst);
        }
        (counts[0], counts[1])
    });
    assert!(first <= 1, "one request was sent {first} times by the forwarder");
    if second > first {
        assert!(
            unstored_head(answer),
            "executed again after an answer without an unstored status ({end:?}): {:?}",
            String::from_utf8_lossy(answer)
        );
    }
});
