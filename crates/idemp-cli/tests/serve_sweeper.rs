//! `idemp serve` sweeps expired records: with `--ttl 2s` and thousands of keys, the
//! memory store and the SQLite file return to their steady state (no records) instead
//! of keeping every expired record forever (20,000 expired keys used to keep 265 MB in
//! the memory store and their rows in SQLite).

mod serve_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use idemp::store::MemoryStore;
use idemp_cli::serve::{self, ServeConfig};
use serve_support::*;

const KEYS: usize = 2000;

/// Sends `KEYS` keyed POSTs (16 at a time) and checks each executed.
async fn fill(c: &reqwest::Client, url: &str, run: &str) {
    let statuses = post_keys(c, url, (0..KEYS).map(|i| format!("sweep-{run}-{i}"))).await;
    assert!(statuses.iter().all(|&s| s == 201), "{statuses:?}");
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what}: not reached within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_returns_to_its_steady_state() {
    let up = Upstream::start().await;
    let store = Arc::new(MemoryStore::new());
    let mut config = ServeConfig::new(&up.url()).unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin = Some("127.0.0.1:0".parse().unwrap());
    config.store_instance = Some(store.clone());
    config.ttl = Duration::from_secs(2);
    config.sweep_interval = Duration::from_millis(500);
    let proxy = serve::start(config).await.unwrap();
    let c = client();
    fill(&c, &format!("http://{}/charge", proxy.listen_addr), "mem").await;
    // (Filling takes longer than the ttl: the sweeper is already at work.)
    assert!(
        store.entry_count() > 0,
        "the latest records are still alive"
    );

    wait_for("the sweeper empties the memory store", || {
        store.entry_count() == 0
    })
    .await;
    let swept = Scrape::fetch(proxy.admin_addr.unwrap())
        .await
        .value("idemp_swept_records_total");
    assert_eq!(swept, KEYS as f64);
    proxy.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_file_returns_to_its_steady_state() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idemp.db");
    let store = format!("sqlite://{}", path.display());
    let proxy = Proxy::start(
        &up.url(),
        &["--store", &store, "--ttl", "2s", "--sweep-interval", "1s"],
    );
    let c = client();
    fill(&c, &proxy.url("/charge"), "sqlite").await;

    let rows = || -> i64 {
        let db = idemp::store::sqlite::rusqlite::Connection::open_with_flags(
            &path,
            idemp::store::sqlite::rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        db.query_row("SELECT count(*) FROM idemp_records", [], |r| r.get(0))
            .unwrap()
    };
    assert!(rows() > 0, "the latest records are still alive");
    wait_for("the sweeper empties the SQLite table", || rows() == 0).await;
    assert_eq!(up.state.total(), KEYS);
}
