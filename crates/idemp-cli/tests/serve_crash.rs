//! `idemp serve` under stops: graceful SIGTERM, a client that hangs up, and `kill -9`
//! mid-storm followed by a restart on the same SQLite file (under `--on-ambiguous
//! retake`, the crashed requests run again; under the default `surface`, their
//! retries are told the outcome is ambiguous and nothing runs twice).

mod serve_support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serve_support::*;

async fn until(mut cond: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not reached within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_and_settle() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("idemp.db").display());
    let proxy = Proxy::start(&up.url(), &["--store", &store]);
    let c = client();
    let url = proxy.url("/charge?delay_ms=800");
    let inflight = tokio::spawn({
        let c = c.clone();
        async move { post_until_settled(&c, &url, "term-1", "{}").await }
    });
    until(|| up.state.running.load(Ordering::SeqCst) == 1).await;

    let status = proxy.terminate();
    assert!(status.success(), "idemp serve exited with {status}");
    let res = inflight.await.unwrap();
    assert_eq!(res.status(), 201, "the in-flight request finished");
    let body = res.text().await.unwrap();

    // Its record was settled before exit: a new proxy on the same file replays it.
    let proxy = Proxy::start(&up.url(), &["--store", &store]);
    let again = post_until_settled(&c, &proxy.url("/charge?delay_ms=800"), "term-1", "{}").await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.text().await.unwrap(), body);
    assert_eq!(up.state.charges_of("term-1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_does_not_cancel_the_request() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url(), &["--store", "memory:"]);
    // A raw client sends the whole request, waits until the upstream is running it,
    // then hangs up.
    let mut sock = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let body = "{}";
    sock.write_all(
        format!(
            "POST /charge?delay_ms=600 HTTP/1.1\r\nhost: x\r\nidempotency-key: hangup\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    until(|| up.state.running.load(Ordering::SeqCst) == 1).await;
    drop(sock);
    // The retry waits for the original execution and gets its response.
    let res = post_until_settled(
        &client(),
        &proxy.url("/charge?delay_ms=600"),
        "hangup",
        "{}",
    )
    .await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    assert_eq!(up.state.charges_of("hangup"), 1);
}

/// Sends `copies` concurrent duplicates of key `crash-{i}`; returns the body of the
/// first 201 any of them got, if any.
fn spawn_storm(
    c: &reqwest::Client,
    url: String,
    i: usize,
    copies: usize,
) -> tokio::task::JoinHandle<Option<String>> {
    let c = c.clone();
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..copies {
            let (c, url) = (c.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let res = c
                    .post(url)
                    .header("idempotency-key", format!("crash-{i}"))
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"i":{i}}}"#))
                    .send()
                    .await
                    .ok()?;
                if res.status() == 201 {
                    res.text().await.ok()
                } else {
                    None
                }
            }));
        }
        let mut first = None;
        for t in tasks {
            if let Ok(Some(body)) = t.await {
                first.get_or_insert(body);
            }
        }
        first
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_storm_loses_no_completed_response_and_reruns_only_ambiguous_keys() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("idemp.db").display());
    let args = [
        "--store",
        store.as_str(),
        "--lease",
        "2s",
        "--wait",
        "30s",
        "--on-ambiguous",
        "retake",
    ];
    let proxy = Proxy::start(&up.url(), &args);
    let c = client();
    let (done, running, unsent) = (0..8, 8..16, 16..24);
    let copies = 4;
    let fast = |p: &Proxy| p.url("/charge?delay_ms=50");
    let slow = |p: &Proxy| p.url("/charge?delay_ms=1500");

    // Phase 1: storms on the first keys, answered before the kill.
    let mut answered: HashMap<String, String> = HashMap::new();
    let storms: Vec<_> = done
        .clone()
        .map(|i| (i, spawn_storm(&c, fast(&proxy), i, copies)))
        .collect();
    for (i, s) in storms {
        let body = s.await.unwrap().expect("phase 1 storms complete");
        answered.insert(format!("crash-{i}"), body);
    }
    // Phase 2: storms on the next keys, running upstream when the proxy dies.
    let cut: Vec<_> = running
        .clone()
        .map(|i| spawn_storm(&c, slow(&proxy), i, copies))
        .collect();
    until(|| up.state.running.load(Ordering::SeqCst) == running.len()).await;
    drop(proxy); // kill -9, then reaped
    for s in cut {
        assert!(
            s.await.unwrap().is_none(),
            "no phase 2 request can have been answered"
        );
    }
    let ambiguous: HashSet<String> = running.clone().map(|i| format!("crash-{i}")).collect();
    for k in &ambiguous {
        assert_eq!(up.state.charges_of(k), 1);
    }

    // Restart on the same file; every agent retries its key (phase 3 keys for the
    // first time), as a storm again.
    let proxy = Proxy::start(&up.url(), &args);
    let mut retries = Vec::new();
    for i in done.clone().chain(unsent.clone()) {
        retries.push((i, fast(&proxy)));
    }
    for i in running.clone() {
        retries.push((i, slow(&proxy)));
    }
    let mut tasks = Vec::new();
    for (i, url) in retries {
        for _ in 0..copies {
            let (c, url) = (c.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let key = format!("crash-{i}");
                let res = post_until_settled(&c, &url, &key, &format!(r#"{{"i":{i}}}"#)).await;
                let replayed = res.headers().contains_key("idempotent-replayed");
                let status = res.status().as_u16();
                (key, status, replayed, res.text().await.unwrap())
            }));
        }
    }
    for t in tasks {
        let (key, status, replayed, body) = t.await.unwrap();
        assert_eq!(status, 201, "{key}: {body}");
        if let Some(first) = answered.get(&key) {
            assert!(
                replayed,
                "{key} completed before the kill: it must be replayed"
            );
            assert_eq!(&body, first, "{key}: the stored response survived the kill");
        }
    }
    for i in done.chain(unsent) {
        let key = format!("crash-{i}");
        assert_eq!(up.state.charges_of(&key), 1, "{key} must run exactly once");
    }
    for k in &ambiguous {
        // Its first run may have charged: the retry after the lease is at-least-once.
        assert_eq!(
            up.state.charges_of(k),
            2,
            "{k}: ambiguous, retaken once after its lease"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_request_is_surfaced_as_ambiguous_by_default() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("idemp.db").display());
    let args = ["--store", store.as_str(), "--lease", "1s", "--wait", "30s"];
    let proxy = Proxy::start(&up.url(), &args);
    let c = client();
    let url = proxy.url("/charge?delay_ms=1500");
    let cut = tokio::spawn({
        let c = c.clone();
        async move {
            c.post(url)
                .header("idempotency-key", "crash-surface")
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .is_ok()
        }
    });
    until(|| up.state.running.load(Ordering::SeqCst) == 1).await;
    drop(proxy); // kill -9
    assert!(!cut.await.unwrap(), "the client never got an answer");

    // The restarted proxy waits for the dead owner's lease, then surfaces it.
    let proxy = Proxy::start(&up.url(), &args);
    let res = c
        .post(proxy.url("/charge?delay_ms=1500"))
        .header("idempotency-key", "crash-surface")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    assert_eq!(res.headers()["x-should-retry"], "false");
    let problem: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "https://idemp.dev/problems/outcome-ambiguous"
    );
    assert_eq!(up.state.charges_of("crash-surface"), 1, "never run twice");
}
