//! `wait()` on the Postgres store: LISTEN/NOTIFY wake-ups and the polling fallback.
#![cfg(feature = "postgres")]

mod postgres_support;

use std::sync::Arc;
use std::time::Duration;

use idemp::store::postgres::PostgresStore;
use idemp::store::{Claim, ClaimOutcome, Codec, Outcome, RecordKey, State, Store, StoreAdmin};
use postgres_support::*;

/// Waiters never re-check on their own within a test's lifetime: returning before the
/// timeout proves a notification woke them.
async fn notified_only() -> (PostgresStore, SchemaGuard) {
    let schema = unique_schema();
    let guard = SchemaGuard(schema.clone());
    let store = connect(options(&schema).wait_recheck(Duration::from_secs(3600))).await;
    (store, guard)
}

async fn claim(store: &PostgresStore, id: &RecordKey) -> u64 {
    match store.claim(&Claim::new(id.clone())).await.unwrap() {
        ClaimOutcome::Acquired { token, .. } => token,
        other => panic!("{other:?}"),
    }
}

/// Starts `n` waiters on `id` and returns once they are all subscribed and present.
async fn waiters(
    store: &PostgresStore,
    id: &RecordKey,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Option<idemp::store::Record>>> {
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let store = store.clone();
            let id = id.clone();
            tokio::spawn(async move { store.wait(&id, Duration::from_secs(3000)).await.unwrap() })
        })
        .collect();
    // Wait until the waiters hold their presence lock (their first step once
    // listening): a shared advisory lock on the hash of the record's presence name.
    let c = client().await;
    let name = format!(
        "{}/{}:{}{}",
        store.channel(),
        id.scope.len(),
        id.scope,
        id.key
    );
    let q = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ShareLock' \
             AND granted AND ((classid::bigint << 32) | objid::bigint) = hashtextextended($1::text, 0)";
    for _ in 0..1000 {
        let held: i64 = c.query_one(q, &[&name]).await.unwrap().get(0);
        if held >= 1 && store.is_listening() {
            // One session holds every waiter's lock (a single pg_locks row): give the
            // other waiters, started at the same time, a moment to take theirs.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return handles;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the waiters never subscribed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_wakes_every_waiter() {
    let (store, _g) = notified_only().await;
    let id = RecordKey::new("w", "complete");
    let token = claim(&store, &id).await;
    let hs = waiters(&store, &id, 5).await;
    let out = Outcome::new(Codec::Json, b"7".to_vec());
    store
        .complete(&id, token, out.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    for h in hs {
        let rec = tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .expect("a waiter was not woken")
            .unwrap()
            .unwrap();
        assert_eq!(rec.state, State::Completed(out.clone()));
    }
    assert!(store.notifications_received() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_and_purge_wake_waiters() {
    let (store, _g) = notified_only().await;
    let a = RecordKey::new("w", "released");
    let ta = claim(&store, &a).await;
    let ha = waiters(&store, &a, 2).await;
    store.release(&a, ta).await.unwrap();
    for h in ha {
        let rec = tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .expect("not woken by release")
            .unwrap();
        assert_eq!(rec, None);
    }
    let b = RecordKey::new("w", "purged");
    claim(&store, &b).await;
    let hb = waiters(&store, &b, 2).await;
    assert!(store.purge(&b).await.unwrap());
    for h in hb {
        let rec = tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .expect("not woken by purge")
            .unwrap();
        assert_eq!(rec, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_in_another_store_instance_is_woken() {
    // Two stores on one schema stand for two processes.
    let (owner, _g) = notified_only().await;
    let watcher = connect(options(owner.schema()).wait_recheck(Duration::from_secs(3600))).await;
    let id = RecordKey::new("w", "cross");
    let token = claim(&owner, &id).await;
    let hs = waiters(&watcher, &id, 3).await;
    owner
        .fail(
            &id,
            token,
            Outcome::new(Codec::Raw, b"boom".to_vec()),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    for h in hs {
        let rec = tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .expect("not woken across instances")
            .unwrap()
            .unwrap();
        assert!(matches!(rec.state, State::Failed(_)));
    }
}

#[tokio::test]
async fn settled_or_missing_records_return_at_once_and_timeouts_return_the_record() {
    let (store, _g) = notified_only().await;
    let missing = RecordKey::new("w", "missing");
    assert_eq!(
        store
            .wait(&missing, Duration::from_secs(3000))
            .await
            .unwrap(),
        None
    );
    let id = RecordKey::new("w", "slow");
    let token = claim(&store, &id).await;
    let rec = store
        .wait(&id, Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(rec.state, State::InProgress { .. }));
    assert_eq!(rec.token, token);
    store
        .complete(
            &id,
            token,
            Outcome::new(Codec::Raw, vec![]),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let rec = store
        .wait(&id, Duration::from_secs(3000))
        .await
        .unwrap()
        .unwrap();
    assert!(rec.state.is_settled());
    // An unrepresentable timeout means "no deadline", not a panic.
    let rec = store.wait(&id, Duration::MAX).await.unwrap().unwrap();
    assert!(rec.state.is_settled());
    assert_eq!(store.wait(&missing, Duration::MAX).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_without_deadline_is_woken() {
    let (store, _g) = notified_only().await;
    let id = RecordKey::new("w", "forever");
    let token = claim(&store, &id).await;
    let waiter = {
        let store = store.clone();
        let id = id.clone();
        tokio::spawn(async move { store.wait(&id, Duration::MAX).await.unwrap() })
    };
    // Subscribed and watched (by this waiter or the helper's).
    let _others = waiters(&store, &id, 1).await;
    store
        .complete(
            &id,
            token,
            Outcome::new(Codec::Raw, vec![9]),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let rec = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("not woken")
        .unwrap()
        .unwrap();
    assert!(rec.state.is_settled());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects_after_its_backend_is_killed() {
    let (store, _g) = notified_only().await;
    let id = RecordKey::new("w", "relisten");
    let token = claim(&store, &id).await;
    let hs = waiters(&store, &id, 2).await;
    // Kill only this test's backends (its application_name), never anyone else's.
    let admin = client().await;
    let app = format!("idemp_test_{}", store.schema());
    let killed: i64 = admin
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND pid <> pg_backend_pid()) t",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1);
    // The listener comes back (waiters poll meanwhile), then a completion wakes them.
    for _ in 0..1000 {
        if store.is_listening() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut done = false;
    for _ in 0..50 {
        // The pooled connections were killed too: the first use may report it.
        match store
            .complete(
                &id,
                token,
                Outcome::new(Codec::Raw, vec![1]),
                Duration::from_secs(60),
            )
            .await
        {
            Ok(()) => {
                done = true;
                break;
            }
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert!(done);
    for h in hs {
        let rec = tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .expect("waiters stuck after a listener reconnect")
            .unwrap()
            .unwrap();
        assert!(rec.state.is_settled());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_waiters_on_many_keys() {
    let (store, _g) = notified_only().await;
    let store = Arc::new(store);
    let keys: Vec<RecordKey> = (0..10)
        .map(|i| RecordKey::new("w", format!("k{i}")))
        .collect();
    let mut tokens = Vec::new();
    let mut all = Vec::new();
    for k in &keys {
        tokens.push(claim(&store, k).await);
        all.push(waiters(&store, k, 3).await);
    }
    for (k, t) in keys.iter().zip(&tokens) {
        store
            .complete(
                k,
                *t,
                Outcome::new(Codec::Raw, k.key.as_bytes().to_vec()),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
    }
    for (k, hs) in keys.iter().zip(all) {
        for h in hs {
            let rec = tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .expect("waiter not woken")
                .unwrap()
                .unwrap();
            assert_eq!(
                rec.state,
                State::Completed(Outcome::new(Codec::Raw, k.key.as_bytes().to_vec()))
            );
        }
    }
}

/// With the owner's transaction holding the row (settled inside it, not committed) and
/// a pool of 2: waiters with a 500 ms deadline all return the in-progress record while
/// the transaction stays open (none queues behind the row lock or holds a pooled
/// connection past its deadline), the owner's next operation gets a connection, and a
/// statement cancelled by `statement_timeout` (SQLSTATE 57014) is transient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_keep_their_deadline_beside_a_locked_row_and_cancellations_are_transient() {
    let schema = unique_schema();
    let _guard = SchemaGuard(schema.clone());
    let store = connect(
        options(&schema)
            .pool_size(2)
            .acquire_timeout(Duration::from_secs(2)),
    )
    .await;
    let id = RecordKey::new("s", "locked");
    let token = claim(&store, &id).await;
    let (mut owner, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let tx = owner.transaction().await.unwrap();
    store
        .complete_in(
            &tx,
            &id,
            token,
            Outcome::new(Codec::Raw, b"v".to_vec()),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let waiters: Vec<_> = (0..6)
        .map(|_| {
            let store = store.clone();
            let id = id.clone();
            tokio::spawn(async move { store.wait(&id, Duration::from_millis(500)).await })
        })
        .collect();
    for w in waiters {
        let got = tokio::time::timeout(Duration::from_secs(20), w)
            .await
            .expect("a wait(500 ms) was still blocked 20 s later beside the open transaction")
            .unwrap()
            .unwrap()
            .expect("the in-progress record");
        assert_eq!(got.token, token);
        assert!(!got.state.is_settled(), "{got:?}");
    }
    // The owner's next operation (outside its transaction) is not starved.
    let seen = tokio::time::timeout(Duration::from_secs(20), store.get(&id))
        .await
        .expect("get blocked")
        .unwrap()
        .unwrap();
    assert!(!seen.state.is_settled());

    // A store whose statements time out while the row is locked: 57014 is transient.
    let mut config: tokio_postgres::Config = url().parse().unwrap();
    config.options("-c statement_timeout=300");
    let impatient = PostgresStore::connect_config(config, options(&schema).pool_size(1))
        .await
        .unwrap();
    let err = impatient
        .complete(
            &id,
            token,
            Outcome::new(Codec::Raw, b"w".to_vec()),
            Duration::from_secs(60),
        )
        .await
        .expect_err("the row is locked by the owner's transaction");
    assert!(err.is_transient(), "57014 must be transient: {err:?}");
    // The server's error is the source, typed (not flattened into the message).
    let db = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<tokio_postgres::Error>())
        .and_then(|e| e.as_db_error())
        .expect("the tokio_postgres error as the source");
    assert_eq!(db.code().code(), "57014", "{err}");
    tx.commit().await.unwrap();
    let done = store.get(&id).await.unwrap().unwrap();
    assert_eq!(
        done.state,
        State::Completed(Outcome::new(Codec::Raw, b"v".to_vec()))
    );
}
