//! The tool cache's shared Redis level, against the real Redis: a second process (here a
//! second cache) gets a result without calling the tool, entries expire with the TTL,
//! and errors are never shared.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use idemp::cache::ToolCache;
use serde_json::{Value, json};

fn redis_url() -> String {
    std::env::var("IDEMP_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

async fn conn() -> redis::aio::ConnectionManager {
    let client = redis::Client::open(redis_url()).expect("valid IDEMP_TEST_REDIS_URL");
    tokio::time::timeout(
        Duration::from_secs(5),
        redis::aio::ConnectionManager::new(client),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or_else(|| {
        panic!(
            "cannot reach Redis at {}: start it with scripts/services.sh",
            redis_url()
        )
    })
}

fn prefix() -> String {
    format!(
        "idemp-test-cache-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

async fn cleanup(prefix: &str) {
    let mut c = conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut c)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_second_process_reads_through_redis() {
    let p = prefix();
    let calls = Arc::new(AtomicU32::new(0));
    let make = |c: redis::aio::ConnectionManager| {
        ToolCache::<Value>::builder()
            .ttl(Duration::from_secs(30))
            .redis(c, p.clone())
            .build()
    };
    let a = make(conn().await);
    let b = make(conn().await);
    let args = json!({"customer": "c_1"});
    for cache in [&a, &b, &b] {
        let calls = calls.clone();
        let v = cache
            .get_or_call("s", "lookup", &args, || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(json!({"name": "Ada"}))
            })
            .await
            .unwrap();
        assert_eq!(v["name"], "Ada");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the tool ran once for both processes"
    );
    assert_eq!(b.stats().shared_hits, 1);
    assert_eq!(b.stats().hits, 1);
    cleanup(&p).await;
}

#[tokio::test]
async fn shared_entries_expire_with_the_ttl() {
    let p = prefix();
    let cache = |c| {
        ToolCache::<Value>::builder()
            .ttl(Duration::from_millis(150))
            .redis(c, p.clone())
            .build()
    };
    let first = cache(conn().await);
    first
        .get_or_call_key("k".into(), || async { Ok::<_, String>(json!(1)) })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = cache(conn().await);
    let v = later
        .get_or_call_key("k".into(), || async { Ok::<_, String>(json!(2)) })
        .await
        .unwrap();
    assert_eq!(
        v,
        json!(2),
        "the shared entry expired, so the tool ran again"
    );
    cleanup(&p).await;
}

#[tokio::test]
async fn errors_are_not_shared() {
    let p = prefix();
    let a = ToolCache::<Value>::builder()
        .redis(conn().await, p.clone())
        .build();
    let b = ToolCache::<Value>::builder()
        .redis(conn().await, p.clone())
        .build();
    let e = a
        .get_or_call_key("k".into(), || async { Err::<Value, _>("down") })
        .await
        .unwrap_err();
    assert_eq!(*e, "down");
    let v = b
        .get_or_call_key("k".into(), || async { Ok::<_, &str>(json!("up")) })
        .await
        .unwrap();
    assert_eq!(v, json!("up"));
    cleanup(&p).await;
}
