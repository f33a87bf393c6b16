//! Migrations of the Postgres store: concurrent first starts, versions, foreign schemas.
#![cfg(feature = "postgres")]

mod postgres_support;

use idemp::store::postgres::{PostgresStore, SCHEMA_VERSION};
use idemp::store::{Claim, ClaimOutcome, RecordKey, Store, StoreError};
use postgres_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_stores_migrate_the_same_schema_at_once() {
    let schema = unique_schema();
    let _g = SchemaGuard(schema.clone());
    let mut starts = Vec::new();
    for _ in 0..8 {
        let opts = options(&schema).pool_size(1);
        starts.push(tokio::spawn(async move {
            PostgresStore::connect_with(&url(), opts).await
        }));
    }
    let mut stores = Vec::new();
    for s in starts {
        stores.push(s.await.unwrap().expect("every concurrent start succeeds"));
    }
    let c = client().await;
    let version: i32 = c
        .query_one(
            &format!("SELECT version FROM \"{schema}\".schema_version"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, SCHEMA_VERSION);
    let rows: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM \"{schema}\".schema_version"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
    // They all share one table: one claim wins across them.
    let id = RecordKey::new("m", "shared");
    let mut acquired = 0;
    for s in &stores {
        if let ClaimOutcome::Acquired { .. } = s.claim(&Claim::new(id.clone())).await.unwrap() {
            acquired += 1;
        }
    }
    assert_eq!(acquired, 1);
}

#[tokio::test]
async fn restart_keeps_data() {
    let schema = unique_schema();
    let _g = SchemaGuard(schema.clone());
    let id = RecordKey::new("m", "kept");
    let token = {
        let store = connect(options(&schema)).await;
        match store.claim(&Claim::new(id.clone())).await.unwrap() {
            ClaimOutcome::Acquired { token, .. } => token,
            other => panic!("{other:?}"),
        }
    };
    let store = connect(options(&schema)).await;
    assert_eq!(store.get(&id).await.unwrap().unwrap().token, token);
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let schema = unique_schema();
    let _g = SchemaGuard(schema.clone());
    drop(connect(options(&schema)).await);
    let c = client().await;
    c.batch_execute(&format!(
        "UPDATE \"{schema}\".schema_version SET version = {}",
        SCHEMA_VERSION + 1
    ))
    .await
    .unwrap();
    let err = PostgresStore::connect_with(&url(), options(&schema))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Incompatible(_)), "{err}");
    assert!(err.to_string().contains("newer"), "{err}");
}

#[tokio::test]
async fn a_foreign_table_is_not_taken_over() {
    let schema = unique_schema();
    let _g = SchemaGuard(schema.clone());
    let c = client().await;
    c.batch_execute(&format!(
        "CREATE SCHEMA \"{schema}\"; CREATE TABLE \"{schema}\".records (id int)"
    ))
    .await
    .unwrap();
    let err = PostgresStore::connect_with(&url(), options(&schema))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Incompatible(_)), "{err}");
    assert!(err.to_string().contains("not an idemp store"), "{err}");
}

#[tokio::test]
async fn a_dropped_table_is_reported_as_incompatible() {
    let schema = unique_schema();
    let _g = SchemaGuard(schema.clone());
    let store = connect(options(&schema)).await;
    client()
        .await
        .batch_execute(&format!("DROP TABLE \"{schema}\".records"))
        .await
        .unwrap();
    let err = store
        .claim(&Claim::new(RecordKey::new("m", "k")))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Incompatible(_)), "{err}");
}

#[tokio::test]
async fn unreachable_servers_and_bad_settings_are_clear_errors() {
    // Nothing listens on port 1.
    let err = PostgresStore::connect_with(
        "postgres://postgres@127.0.0.1:1/test",
        options("idemp_unreachable"),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(err.is_transient());

    let err = PostgresStore::connect_with(&url(), options("1bad"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    let err = PostgresStore::connect("postgres://u@h/db?pool_size=x")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    let err = PostgresStore::connect("redis://127.0.0.1/0")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
}

#[tokio::test]
async fn version_1_is_upgraded_and_loses_the_expiry_index() {
    let schema = unique_schema();
    let _g = SchemaGuard(schema.clone());
    drop(connect(options(&schema)).await);
    let c = client().await;
    // Put the schema back the way version 1 left it.
    c.batch_execute(&format!(
        "CREATE INDEX records_expires_at ON \"{schema}\".records (expires_at);
         UPDATE \"{schema}\".schema_version SET version = 1"
    ))
    .await
    .unwrap();
    let store = connect(options(&schema)).await;
    let version: i32 = c
        .query_one(
            &format!("SELECT version FROM \"{schema}\".schema_version"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, SCHEMA_VERSION);
    let index: bool = c
        .query_one(
            "SELECT to_regclass($1::text) IS NOT NULL",
            &[&format!("\"{schema}\".records_expires_at")],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!index);
    let id = RecordKey::new("m", "after-upgrade");
    assert!(matches!(
        store.claim(&Claim::new(id)).await.unwrap(),
        ClaimOutcome::Acquired { .. }
    ));
}

#[tokio::test]
async fn version_2_rows_stay_readable_and_match_no_nonce() {
    let schema = unique_schema();
    let _g = SchemaGuard(schema.clone());
    let id = RecordKey::new("m", "from-version-2");
    let claim = Claim::new(id.clone()).nonce(7);
    let token = {
        let store = connect(options(&schema)).await;
        match store.claim(&claim).await.unwrap() {
            ClaimOutcome::Acquired { token, .. } => token,
            other => panic!("{other:?}"),
        }
    };
    let c = client().await;
    // Put the schema back the way version 2 left it (its rows have no nonce).
    c.batch_execute(&format!(
        "ALTER TABLE \"{schema}\".records DROP COLUMN nonce;
         UPDATE \"{schema}\".schema_version SET version = 2"
    ))
    .await
    .unwrap();
    let store = connect(options(&schema)).await;
    let version: i32 = c
        .query_one(
            &format!("SELECT version FROM \"{schema}\".schema_version"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, SCHEMA_VERSION);
    let rec = store.get(&id).await.unwrap().expect("the old row is read");
    assert_eq!(rec.token, token);
    // The old row was acquired by a claim whose nonce was not stored: no claim matches.
    match store.claim(&claim).await.unwrap() {
        ClaimOutcome::Existing(r) => assert_eq!(r.token, token),
        other => panic!("an old row matched a nonce: {other:?}"),
    }
    // New rows do.
    let fresh = Claim::new(RecordKey::new("m", "after-upgrade")).nonce(7);
    let first = store.claim(&fresh).await.unwrap();
    let again = store.claim(&fresh).await.unwrap();
    match (first, again) {
        (ClaimOutcome::Acquired { token: a, .. }, ClaimOutcome::Acquired { token: b, .. }) => {
            assert_eq!(a, b)
        }
        other => panic!("{other:?}"),
    }
}
