//! `idemp serve` under stops: graceful SIGTERM, a client that hangs up, and `kill -9`
//! mid-storm followed by a restart on the same SQLite file.

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
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url(), &["--store", "memory:"]);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    let err = impatient
        .post(proxy.url("/charge?delay_ms=600"))
        .header("idempotency-key", "hangup")
        .body("{}")
        .send()
        .await
        .expect_err("the client gives up before the upstream answers");
    assert!(err.is_timeout(), "{err}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_storm_loses_no_completed_response_and_reruns_only_ambiguous_keys() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("idemp.db").display());
    let args = ["--store", store.as_str(), "--lease", "1s", "--wait", "30s"];
    let proxy = Proxy::start(&up.url(), &args);
    let c = client();
    let keys = 40;

    // Agent i sends at 25·i ms and the upstream takes 300 ms: at the kill, the first
    // keys are answered, the next ones are running upstream, the last not yet sent.
    let mut tasks = Vec::new();
    for i in 0..keys {
        let c = c.clone();
        let url = proxy.url("/charge?delay_ms=300");
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(25 * i as u64)).await;
            let key = format!("crash-{i}");
            let res = c
                .post(url)
                .header("idempotency-key", &key)
                .header("content-type", "application/json")
                .body(format!(r#"{{"i":{i}}}"#))
                .send()
                .await;
            match res {
                Ok(r) if r.status() == 201 => Some((key, r.text().await.ok()?)),
                _ => None,
            }
        }));
    }
    until(|| up.state.total() >= keys / 2).await;
    drop(proxy); // SIGKILL, then reaped
    // Requests the dead proxy had already written may still reach the upstream.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let executed_at_kill: HashMap<String, usize> = up.state.charges.lock().unwrap().clone();
    let mut answered: HashMap<String, String> = HashMap::new();
    for t in tasks {
        if let Some((key, body)) = t.await.unwrap() {
            answered.insert(key, body);
        }
    }
    assert!(
        !answered.is_empty(),
        "some requests completed before the kill"
    );
    assert!(answered.len() < keys, "some requests were cut by the kill");
    assert!(
        executed_at_kill.len() < keys,
        "some requests never reached the upstream"
    );
    // Upstream executions that never got their response to the client: ambiguous.
    let ambiguous: HashSet<String> = executed_at_kill
        .keys()
        .filter(|k| !answered.contains_key(*k))
        .cloned()
        .collect();

    // Restart on the same file; every agent retries its key.
    let proxy = Proxy::start(&up.url(), &args);
    let mut retries = Vec::new();
    for i in 0..keys {
        let c = c.clone();
        let url = proxy.url("/charge?delay_ms=300");
        retries.push(tokio::spawn(async move {
            let key = format!("crash-{i}");
            let res = post_until_settled(&c, &url, &key, &format!(r#"{{"i":{i}}}"#)).await;
            let replayed = res.headers().contains_key("idempotent-replayed");
            let status = res.status().as_u16();
            (key, status, replayed, res.text().await.unwrap())
        }));
    }
    for r in retries {
        let (key, status, replayed, body) = r.await.unwrap();
        assert_eq!(status, 201, "{key}: {body}");
        let runs = up.state.charges_of(&key);
        if let Some(first) = answered.get(&key) {
            assert!(
                replayed,
                "{key} completed before the kill: it must be replayed"
            );
            assert_eq!(&body, first, "{key}: the stored response survived the kill");
            assert_eq!(runs, 1, "{key} completed before the kill and ran again");
        } else if ambiguous.contains(&key) {
            assert!(runs <= 2, "{key} (ambiguous) ran {runs} times");
        } else {
            assert_eq!(
                runs, 1,
                "{key} never ran before the kill: exactly once after"
            );
        }
    }
}
