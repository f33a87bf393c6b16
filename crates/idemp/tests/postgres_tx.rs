//! `complete_in`: the completion commits or rolls back with the caller's own writes.
#![cfg(feature = "postgres")]

mod postgres_support;

use std::sync::Arc;
use std::time::Duration;

use idemp::clock::ManualClock;
use idemp::store::postgres::PostgresStore;
use idemp::store::{
    Claim, ClaimOutcome, Codec, Outcome, RecordKey, State, Store, StoreAdmin, StoreError,
};
use postgres_support::*;

const TTL: Duration = Duration::from_secs(3600);

async fn with_account(store: &PostgresStore) {
    let c = store.pool().get().await.unwrap();
    c.batch_execute(&format!(
        "CREATE TABLE \"{s}\".accounts (id text PRIMARY KEY, balance bigint NOT NULL);
         INSERT INTO \"{s}\".accounts VALUES ('alice', 100);",
        s = store.schema()
    ))
    .await
    .unwrap();
}

async fn balance(store: &PostgresStore) -> i64 {
    let c = store.pool().get().await.unwrap();
    c.query_one(
        &format!(
            "SELECT balance FROM \"{}\".accounts WHERE id = 'alice'",
            store.schema()
        ),
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

fn debit_sql(store: &PostgresStore) -> String {
    format!(
        "UPDATE \"{}\".accounts SET balance = balance - 10 WHERE id = 'alice'",
        store.schema()
    )
}

async fn claim(store: &PostgresStore, id: &RecordKey) -> u64 {
    match store.claim(&Claim::new(id.clone())).await.unwrap() {
        ClaimOutcome::Acquired { token, .. } => token,
        other => panic!("{other:?}"),
    }
}

fn receipt() -> Outcome {
    Outcome::new(Codec::Json, br#"{"debited":10}"#.to_vec())
}

#[tokio::test]
async fn commit_applies_effect_and_completion_together() {
    let (store, _g) = fresh().await;
    with_account(&store).await;
    let id = RecordKey::new("debit", "k1");
    let token = claim(&store, &id).await;
    let mut conn = store.pool().get().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    tx.execute(&debit_sql(&store), &[]).await.unwrap();
    store
        .complete_in(&tx, &id, token, receipt(), TTL)
        .await
        .unwrap();
    // Not visible outside the transaction before it commits.
    assert!(matches!(
        store.get(&id).await.unwrap().unwrap().state,
        State::InProgress { .. }
    ));
    assert_eq!(balance(&store).await, 100);
    tx.commit().await.unwrap();
    assert_eq!(
        store.get(&id).await.unwrap().unwrap().state,
        State::Completed(receipt())
    );
    assert_eq!(balance(&store).await, 90);
}

#[tokio::test]
async fn rollback_undoes_both_and_the_owner_can_retry() {
    let (store, _g) = fresh().await;
    with_account(&store).await;
    let id = RecordKey::new("debit", "k2");
    let token = claim(&store, &id).await;
    {
        let mut conn = store.pool().get().await.unwrap();
        let tx = conn.transaction().await.unwrap();
        tx.execute(&debit_sql(&store), &[]).await.unwrap();
        store
            .complete_in(&tx, &id, token, receipt(), TTL)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
    }
    let rec = store.get(&id).await.unwrap().unwrap();
    assert!(matches!(rec.state, State::InProgress { .. }));
    assert_eq!(rec.token, token);
    assert_eq!(balance(&store).await, 100);
    // A crash (transaction dropped without commit) is the same as a rollback.
    {
        let mut conn = store.pool().get().await.unwrap();
        let tx = conn.transaction().await.unwrap();
        tx.execute(&debit_sql(&store), &[]).await.unwrap();
        store
            .fail_in(&tx, &id, token, receipt(), TTL)
            .await
            .unwrap();
        drop(tx);
    }
    assert_eq!(balance(&store).await, 100);
    let mut conn = store.pool().get().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    tx.execute(&debit_sql(&store), &[]).await.unwrap();
    store
        .complete_in(&tx, &id, token, receipt(), TTL)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(balance(&store).await, 90);
}

#[tokio::test]
async fn a_fenced_owner_rolls_back() {
    let (store, _g) = fresh().await;
    with_account(&store).await;
    let id = RecordKey::new("debit", "k3");
    let token = claim(&store, &id).await;
    assert!(store.purge(&id).await.unwrap());
    let mut conn = store.pool().get().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    tx.execute(&debit_sql(&store), &[]).await.unwrap();
    let err = store
        .complete_in(&tx, &id, token, receipt(), TTL)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Fenced { current: None, .. }),
        "{err}"
    );
    tx.rollback().await.unwrap();
    assert_eq!(balance(&store).await, 100);

    // release_in commits with the transaction too.
    let t2 = claim(&store, &id).await;
    let tx = conn.transaction().await.unwrap();
    store.release_in(&tx, &id, t2).await.unwrap();
    assert!(store.get(&id).await.unwrap().is_some());
    tx.commit().await.unwrap();
    assert_eq!(store.get(&id).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_cannot_slip_in_before_the_commit() {
    let schema = unique_schema();
    let _g = SchemaGuard(schema.clone());
    let clock = ManualClock::new(1_700_000_000_000);
    let store = connect(options(&schema).clock(Some(Arc::new(clock.clone())))).await;
    with_account(&store).await;
    let id = RecordKey::new("debit", "slow");
    let token = match store
        .claim(&Claim::new(id.clone()).lease(Duration::from_secs(1)))
        .await
        .unwrap()
    {
        ClaimOutcome::Acquired { token, .. } => token,
        other => panic!("{other:?}"),
    };
    clock.advance(Duration::from_secs(5)); // the lease has passed: takeover allowed
    let mut conn = store.pool().get().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    tx.execute(&debit_sql(&store), &[]).await.unwrap();
    store
        .complete_in(&tx, &id, token, receipt(), TTL)
        .await
        .unwrap();
    // A retry claims now: it must wait for our commit, then see the completion.
    let other = store.clone();
    let cid = id.clone();
    let retry = tokio::spawn(async move { other.claim(&Claim::new(cid)).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.commit().await.unwrap();
    match retry.await.unwrap() {
        ClaimOutcome::Existing(r) => assert_eq!(r.state, State::Completed(receipt())),
        other => panic!("the retry must replay, got {other:?}"),
    }
    assert_eq!(balance(&store).await, 90);
}

#[tokio::test]
async fn serialization_failures_are_transient() {
    let (store, _g) = fresh().await;
    let id = RecordKey::new("debit", "rr");
    let token = claim(&store, &id).await;
    let mut conn = store.pool().get().await.unwrap();
    let tx = conn
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .unwrap();
    tx.query_one("SELECT 1", &[]).await.unwrap(); // takes the snapshot
    // The owner's heartbeat renews the lease on another connection meanwhile.
    store
        .renew(&id, token, Duration::from_secs(60))
        .await
        .unwrap();
    let err = store
        .complete_in(&tx, &id, token, receipt(), TTL)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("retry the transaction"), "{err}");
    assert!(err.is_transient());
}
