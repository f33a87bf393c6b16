//! `idemp serve --store "memory:?max_entries=N"` stays within its bound: after 1,000
//! unique keyed POSTs through the binary, the store holds 100 records, `/metrics`
//! shows them (`idemp_store_entries`, `idemp_store_evictions_total`), the newest keys
//! still replay and an evicted one runs again (the documented trade-off of a bound).

mod serve_support;

use serve_support::*;

const KEYS: usize = 1_000;
const MAX: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_memory_store_stays_bounded_and_reports_its_size() {
    let up = Upstream::start().await;
    let store = format!("memory:?max_entries={MAX}");
    let proxy = Proxy::start(&up.url(), &["--store", &store]);
    let admin = proxy.admin.expect("admin listener");
    let c = client();
    let url = proxy.url("/charge");
    let before = Scrape::fetch(admin).await;
    assert_eq!(before.value("idemp_store_entries"), 0.0);
    assert_eq!(before.value("idemp_store_max_entries"), MAX as f64);
    assert_eq!(before.value("idemp_store_evictions_total"), 0.0);

    let mut peak = 0.0f64;
    for batch in 0..10 {
        let keys = (0..KEYS / 10).map(|i| format!("bound-{}", batch * (KEYS / 10) + i));
        let statuses = post_keys(&c, &url, keys).await;
        assert!(statuses.iter().all(|&s| s == 201), "{statuses:?}");
        peak = peak.max(Scrape::fetch(admin).await.value("idemp_store_entries"));
    }
    assert_eq!(up.state.total(), KEYS, "every unique key ran once");
    assert!(peak <= MAX as f64, "entries reached {peak}");

    let after = Scrape::fetch(admin).await;
    assert_eq!(after.value("idemp_store_entries"), MAX as f64);
    assert_eq!(
        after.value("idemp_store_evictions_total"),
        (KEYS - MAX) as f64
    );
    assert_eq!(after.value("idemp_claims_total"), KEYS as f64);

    // The newest record replays; the oldest was evicted, so its retry runs again.
    let newest = format!("bound-{}", KEYS - 1);
    let res = post_until_settled(&c, &url, &newest, "{}").await;
    assert_eq!(
        res.headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    assert_eq!(up.state.charges_of(&newest), 1);
    let res = post_until_settled(&c, &url, "bound-0", "{}").await;
    assert_eq!(res.status(), 201);
    assert_eq!(up.state.charges_of("bound-0"), 2, "evicted: executed again");
    let end = Scrape::fetch(admin).await;
    assert_eq!(end.value("idemp_store_entries"), MAX as f64);
    assert_eq!(
        end.value("idemp_store_evictions_total"),
        (KEYS - MAX + 1) as f64
    );
    proxy.terminate();
}

#[test]
fn a_bad_bound_is_refused_at_start_with_the_reason() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_idemp"))
        .args([
            "serve",
            "--upstream",
            "http://127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "memory:?max_entries=0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_entries=0") && err.contains("whole number from 1"),
        "{err}"
    );
}
