//! SqliteStore: the store contract on one file, with a manual clock.

use std::sync::Arc;
use std::time::Duration;

use idemp::clock::{ManualClock, SharedClock};
use idemp::store::sqlite::{SqliteStore, Synchronous};
use idemp::store::{
    Claim, ClaimOutcome, Codec, Fingerprint, ListQuery, Outcome, RecordKey, State, Store,
    StoreAdmin, StoreError,
};

const START: u64 = 1_700_000_000_000;

fn store_with_clock(dir: &tempfile::TempDir) -> (SqliteStore, ManualClock) {
    let clock = ManualClock::new(START);
    let shared: SharedClock = Arc::new(clock.clone());
    let store = SqliteStore::builder(dir.path().join("idemp.db"))
        .clock(shared)
        .open()
        .expect("open");
    (store, clock)
}

fn id(k: &str) -> RecordKey {
    RecordKey::new("scope", k)
}

fn json(v: &str) -> Outcome {
    Outcome::new(Codec::Json, v.as_bytes().to_vec())
}

async fn acquire(store: &SqliteStore, claim: &Claim) -> u64 {
    match store.claim(claim).await.expect("claim") {
        ClaimOutcome::Acquired { token, .. } => token,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

#[tokio::test]
async fn claim_complete_replay_and_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let (store, clock) = store_with_clock(&dir);
    let claim = Claim::new(id("a"))
        .lease(Duration::from_secs(10))
        .ttl(Duration::from_secs(60));
    let token = acquire(&store, &claim).await;
    assert!(token > 0);

    // A second claimant sees the live in-progress record.
    match store.claim(&claim).await.unwrap() {
        ClaimOutcome::Existing(r) => {
            assert_eq!(r.token, token);
            assert_eq!(
                r.state,
                State::InProgress {
                    lease_until: START + 10_000
                }
            );
            assert_eq!(r.expires_at, None);
        }
        other => panic!("{other:?}"),
    }

    clock.advance(Duration::from_secs(1));
    store
        .complete(&id("a"), token, json("42"), Duration::from_secs(60))
        .await
        .unwrap();
    let rec = store.get(&id("a")).await.unwrap().expect("record");
    assert_eq!(rec.state, State::Completed(json("42")));
    assert_eq!(rec.expires_at, Some(START + 61_000));
    assert_eq!(rec.created_at, START);
    assert_eq!(rec.updated_at, START + 1_000);
    assert_eq!(rec.attempts, 1);

    match store.claim(&claim).await.unwrap() {
        ClaimOutcome::Existing(r) => assert_eq!(r.state, State::Completed(json("42"))),
        other => panic!("{other:?}"),
    }

    // Expired: invisible before any sweep, then claimable with a larger token.
    clock.advance(Duration::from_secs(60));
    assert!(store.get(&id("a")).await.unwrap().is_none());
    let t2 = acquire(&store, &claim).await;
    assert!(t2 > token);
}

#[tokio::test]
async fn fencing_on_takeover_release_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let (store, clock) = store_with_clock(&dir);
    let claim = Claim::new(id("k")).lease(Duration::from_secs(5));
    let t1 = acquire(&store, &claim).await;

    // The lease passes: without takeover it is reported (ambiguous)...
    clock.advance(Duration::from_secs(5));
    let no_take = claim.clone().take_over_expired(false);
    match store.claim(&no_take).await.unwrap() {
        ClaimOutcome::Existing(r) => {
            assert!(r.is_ambiguous(START + 5_000));
            assert_eq!(r.token, t1);
        }
        other => panic!("{other:?}"),
    }
    // ...renewing an expired lease nobody took over still works...
    let until = store
        .renew(&id("k"), t1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(until, START + 10_000);
    clock.advance(Duration::from_secs(6));
    // ...and with takeover it gets a new, larger token.
    let t2 = match store.claim(&claim).await.unwrap() {
        ClaimOutcome::Acquired {
            token,
            takeover,
            attempt,
            ..
        } => {
            assert_eq!(takeover, Some(t1));
            assert_eq!(attempt, 2);
            token
        }
        other => panic!("{other:?}"),
    };
    assert!(t2 > t1);

    // The old owner is fenced on every write and changes nothing.
    for r in [
        store
            .complete(&id("k"), t1, json("1"), Duration::from_secs(9))
            .await,
        store
            .fail(&id("k"), t1, json("1"), Duration::from_secs(9))
            .await,
        store.release(&id("k"), t1).await,
        store
            .renew(&id("k"), t1, Duration::from_secs(1))
            .await
            .map(drop),
    ] {
        match r {
            Err(StoreError::Fenced { token, current, .. }) => {
                assert_eq!(token, t1);
                assert_eq!(current, Some(t2));
            }
            other => panic!("expected Fenced, got {other:?}"),
        }
    }
    assert_eq!(store.get(&id("k")).await.unwrap().unwrap().token, t2);

    // Release: the key can run again, with a larger token; the released owner is fenced.
    store.release(&id("k"), t2).await.unwrap();
    assert!(store.get(&id("k")).await.unwrap().is_none());
    let t3 = acquire(&store, &claim).await;
    assert!(t3 > t2);
    assert!(matches!(
        store.release(&id("k"), t2).await,
        Err(StoreError::Fenced { .. })
    ));

    // Purge: same.
    assert!(store.purge(&id("k")).await.unwrap());
    assert!(!store.purge(&id("k")).await.unwrap());
    assert!(matches!(
        store
            .complete(&id("k"), t3, json("x"), Duration::from_secs(1))
            .await,
        Err(StoreError::Fenced { current: None, .. })
    ));
    let t4 = acquire(&store, &claim).await;
    assert!(t4 > t3);
}

#[tokio::test]
async fn tokens_survive_reopen_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idemp.db");
    let mut last = 0;
    for _ in 0..3 {
        let store = SqliteStore::open(&path).unwrap();
        let t = acquire(&store, &Claim::new(id("same"))).await;
        assert!(t > last, "{t} > {last}");
        last = t;
        assert!(store.purge(&id("same")).await.unwrap());
    }
}

#[tokio::test]
async fn fingerprint_mismatch_and_sticky_failure() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _clock) = store_with_clock(&dir);
    let fp_a = Fingerprint::of(b"a");
    let fp_b = Fingerprint::of(b"b");
    let claim = Claim::new(id("f")).fingerprint(Some(fp_a));
    let t = acquire(&store, &claim).await;
    match store
        .claim(&claim.clone().fingerprint(Some(fp_b)))
        .await
        .unwrap()
    {
        ClaimOutcome::Mismatch(r) => assert_eq!(r.fingerprint, Some(fp_a)),
        other => panic!("{other:?}"),
    }
    // No fingerprint on either side: no mismatch.
    assert!(matches!(
        store.claim(&claim.clone().fingerprint(None)).await.unwrap(),
        ClaimOutcome::Existing(_)
    ));
    store
        .fail(&id("f"), t, json("\"boom\""), Duration::from_secs(60))
        .await
        .unwrap();
    match store.claim(&claim).await.unwrap() {
        ClaimOutcome::Existing(r) => assert_eq!(r.state, State::Failed(json("\"boom\""))),
        other => panic!("{other:?}"),
    }
    let s = store.stats().await.unwrap();
    assert_eq!((s.failed, s.completed, s.in_progress), (1, 0, 0));
    assert_eq!(s.outcome_bytes, Some(6));
}

#[tokio::test]
async fn invalid_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _clock) = store_with_clock(&dir);
    // An empty key, a NUL and a key over the shared `LIMITS` are refused.
    for k in [
        String::new(),
        "a\0b".into(),
        "k".repeat(idemp::store::LIMITS.max_key_bytes + 1),
    ] {
        assert!(matches!(
            store.claim(&Claim::new(RecordKey::new("s", k))).await,
            Err(StoreError::Invalid(_))
        ));
    }
    // Awkward but valid keys round-trip.
    for k in ["ü/ä", "'; DROP TABLE idemp_records; --", "%_"] {
        let t = acquire(&store, &Claim::new(id(k))).await;
        store
            .complete(&id(k), t, json("1"), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(store.get(&id(k)).await.unwrap().unwrap().id, id(k));
    }
}

#[tokio::test]
async fn list_pages_by_scope_and_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (store, clock) = store_with_clock(&dir);
    for scope in ["a", "b"] {
        for i in 0..25 {
            let rid = RecordKey::new(scope, format!("key-{i:02}"));
            let t = acquire(&store, &Claim::new(rid.clone())).await;
            if i % 2 == 0 {
                store
                    .complete(&rid, t, json("1"), Duration::from_secs(100))
                    .await
                    .unwrap();
            }
        }
    }
    for scope in ["a", "b"] {
        let rid = RecordKey::new(scope, "other");
        acquire(&store, &Claim::new(rid)).await;
    }
    // All records, pages of 7, in (scope, key) order.
    let mut seen = Vec::new();
    let mut q = ListQuery {
        limit: 7,
        ..Default::default()
    };
    loop {
        let page = store.list(&q).await.unwrap();
        assert!(page.records.len() <= 7);
        seen.extend(page.records.iter().map(|r| r.id.clone()));
        match page.next {
            Some(n) => q.after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen.len(), 52);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted);

    let q = ListQuery {
        scope: Some("b".into()),
        key_prefix: Some("key-1".into()),
        ..Default::default()
    };
    let page = store.list(&q).await.unwrap();
    let keys: Vec<_> = page.records.iter().map(|r| r.id.key.as_str()).collect();
    assert_eq!(keys.len(), 10);
    assert!(keys.iter().all(|k| k.starts_with("key-1")));
    assert!(page.records.iter().all(|r| r.id.scope == "b"));
    assert!(page.next.is_none());

    // Completed records expire after 100 s; in-progress ones (24 h ttl) stay listed.
    clock.advance(Duration::from_secs(101));
    let all = store
        .list(&ListQuery {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.records.len(), 2 * 12 + 2);
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.ambiguous, 26, "leases of 60 s have passed");
    assert_eq!(store.sweep().await.unwrap(), 26);
}

#[tokio::test]
async fn abandoned_claims_expire_ttl_after_their_lease() {
    let dir = tempfile::tempdir().unwrap();
    let (store, clock) = store_with_clock(&dir);
    let claim = Claim::new(id("gone"))
        .lease(Duration::from_secs(10))
        .ttl(Duration::from_secs(100));
    let t = acquire(&store, &claim).await;
    clock.advance(Duration::from_secs(50));
    // Renewing moves the retention too.
    store
        .renew(&id("gone"), t, Duration::from_secs(10))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(100));
    assert!(store.get(&id("gone")).await.unwrap().is_some());
    assert_eq!(store.sweep().await.unwrap(), 0);
    clock.advance(Duration::from_secs(11));
    assert!(store.get(&id("gone")).await.unwrap().is_none());
    assert_eq!(store.sweep().await.unwrap(), 1);
}

#[tokio::test]
async fn wait_is_woken_by_settle_and_release() {
    let dir = tempfile::tempdir().unwrap();
    // A poll interval longer than the wait: only the notification can wake the waiter.
    let store = SqliteStore::builder(dir.path().join("idemp.db"))
        .wait_poll_interval(Duration::from_secs(600))
        .open()
        .unwrap();
    let t = acquire(&store, &Claim::new(id("w"))).await;
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move { store.wait(&id("w"), Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    store
        .complete(&id("w"), t, json("7"), Duration::from_secs(60))
        .await
        .unwrap();
    let rec = waiter.await.unwrap().unwrap().expect("settled record");
    assert_eq!(rec.state, State::Completed(json("7")));

    let t = acquire(&store, &Claim::new(id("r"))).await;
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move { store.wait(&id("r"), Duration::from_secs(30)).await })
    };
    store.release(&id("r"), t).await.unwrap();
    assert!(waiter.await.unwrap().unwrap().is_none());

    // Timeout: returns the in-progress record.
    acquire(&store, &Claim::new(id("slow"))).await;
    let rec = store
        .wait(&id("slow"), Duration::from_millis(30))
        .await
        .unwrap();
    assert!(matches!(rec.unwrap().state, State::InProgress { .. }));
}

#[tokio::test]
async fn wait_sees_settles_of_another_store_by_polling() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idemp.db");
    let a = SqliteStore::builder(&path)
        .wait_poll_interval(Duration::from_millis(5))
        .open()
        .unwrap();
    let b = SqliteStore::open(&path).unwrap();
    let t = acquire(&a, &Claim::new(id("x"))).await;
    let waiter = tokio::spawn(async move { a.wait(&id("x"), Duration::from_secs(30)).await });
    b.complete(&id("x"), t, json("1"), Duration::from_secs(60))
        .await
        .unwrap();
    let rec = waiter.await.unwrap().unwrap().unwrap();
    assert!(rec.state.is_settled());
}

#[tokio::test]
async fn synchronous_normal_and_background_sweeper() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let store = SqliteStore::builder(dir.path().join("n.db"))
        .synchronous(Synchronous::Normal)
        .clock(Arc::new(clock.clone()))
        .sweep_interval(Some(Duration::from_millis(5)))
        .open()
        .unwrap();
    let t = acquire(&store, &Claim::new(id("s"))).await;
    store
        .complete(&id("s"), t, json("1"), Duration::from_secs(1))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(2));
    // The sweeper removes the expired row without anyone calling sweep().
    let conn = store.connection().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = conn
            .query_row("SELECT count(*) FROM idemp_records", [], |r| r.get(0))
            .unwrap();
        if n == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "sweeper never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_write_lock_delays_then_reports_unavailable() {
    use idemp::store::sqlite::rusqlite::TransactionBehavior;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.db");
    let patient = SqliteStore::open(&path).unwrap();
    let impatient = SqliteStore::builder(&path)
        .busy_timeout(Duration::from_millis(20))
        .open()
        .unwrap();
    // Another connection (as another process would) holds the write lock.
    let mut conn = patient.connection().unwrap();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .unwrap();
    // The impatient store gives up after its busy timeout and retries: a transient error.
    match impatient.claim(&Claim::new(id("x"))).await {
        Err(e @ StoreError::Unavailable(_)) => {
            assert!(e.is_transient());
            // The driver's error is kept as the source, typed, not flattened.
            let source = std::error::Error::source(&e).expect("a source");
            let sqlite = source
                .downcast_ref::<idemp::store::sqlite::rusqlite::Error>()
                .expect("the rusqlite error");
            assert_eq!(
                sqlite.sqlite_error_code(),
                Some(idemp::store::sqlite::rusqlite::ErrorCode::DatabaseBusy),
                "{e}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // The patient store waits for the lock and succeeds once it is released.
    let waiting = {
        let patient = patient.clone();
        tokio::spawn(async move { patient.claim(&Claim::new(id("x"))).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiting.is_finished(),
        "the claim did not wait for the lock"
    );
    tx.rollback().unwrap();
    assert!(matches!(
        waiting.await.unwrap().unwrap(),
        ClaimOutcome::Acquired { .. }
    ));
    // Reads are never blocked by a writer (WAL).
    assert!(impatient.get(&id("x")).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_operation_does_not_fail_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("poison.db")).unwrap();
    // A trigger makes every write of one key fail with a database error.
    store
        .connection()
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER poison BEFORE INSERT ON idemp_records WHEN NEW.key = 'poison'
             BEGIN SELECT RAISE(ABORT, 'poisoned key'); END;",
        )
        .unwrap();
    // Many concurrent claims share batches with the poisoned one.
    let handles: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            let key = if i == 17 {
                "poison".to_string()
            } else {
                format!("k{i}")
            };
            tokio::spawn(async move { (key.clone(), store.claim(&Claim::new(id(&key))).await) })
        })
        .collect();
    for h in handles {
        let (key, result) = h.await.unwrap();
        match (key.as_str(), result) {
            ("poison", Err(StoreError::Backend(e))) => {
                assert!(e.to_string().contains("poisoned key"), "{e}")
            }
            ("poison", other) => panic!("poison: {other:?}"),
            (_, Ok(ClaimOutcome::Acquired { .. })) => {}
            (k, other) => panic!("{k}: {other:?}"),
        }
    }
    assert_eq!(store.stats().await.unwrap().in_progress, 63);
    let gc = store.group_commit_stats();
    assert_eq!(gc.operations, 63, "only the committed operations count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_cancelled_before_it_runs_is_skipped() {
    use idemp::store::sqlite::rusqlite::TransactionBehavior;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("cancel.db")).unwrap();
    // Hold the write lock so that the writer cannot run anything yet.
    let mut conn = store.connection().unwrap();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .unwrap();
    let first = {
        let store = store.clone();
        tokio::spawn(async move { store.claim(&Claim::new(id("first"))).await })
    };
    // Sent, then abandoned by its caller while the writer waits for the lock.
    let cancelled = tokio::time::timeout(
        Duration::from_millis(50),
        store.claim(&Claim::new(id("cancelled"))),
    )
    .await;
    assert!(cancelled.is_err(), "the claim cannot have run yet");
    tx.rollback().unwrap();
    assert!(matches!(
        first.await.unwrap().unwrap(),
        ClaimOutcome::Acquired { .. }
    ));
    // Nobody owns a record for the cancelled claim.
    assert!(store.get(&id("cancelled")).await.unwrap().is_none());
    assert!(matches!(
        store.claim(&Claim::new(id("cancelled"))).await.unwrap(),
        ClaimOutcome::Acquired { attempt: 1, .. }
    ));
}

/// `batch_linger` beyond `MAX_BATCH_LINGER` (up to `Duration::MAX`) is refused at
/// `open` with `Invalid`, instead of starting a writer thread that dies on its first
/// batch; the maximum itself works (writes go through and the store stays usable).
#[tokio::test]
async fn batch_linger_is_bounded_at_open() {
    use idemp::store::sqlite::MAX_BATCH_LINGER;
    let dir = tempfile::tempdir().expect("tempdir");
    for linger in [Duration::MAX, MAX_BATCH_LINGER + Duration::from_millis(1)] {
        match SqliteStore::builder(dir.path().join("linger.db"))
            .batch_linger(linger)
            .open()
        {
            Err(StoreError::Invalid(msg)) => assert!(msg.contains("batch_linger"), "{msg}"),
            other => panic!("batch_linger({linger:?}): expected Invalid, got {other:?}"),
        }
    }
    let store = SqliteStore::builder(dir.path().join("linger.db"))
        .batch_linger(MAX_BATCH_LINGER)
        .open()
        .expect("open with the maximum linger");
    for k in ["a", "b"] {
        let token = acquire(&store, &Claim::new(id(k))).await;
        store
            .complete(&id(k), token, json("1"), Duration::from_secs(60))
            .await
            .expect("complete");
    }
    assert!(matches!(
        store.get(&id("a")).await.expect("get").map(|r| r.state),
        Some(State::Completed(_))
    ));
}
