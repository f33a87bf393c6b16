//! SqliteStore on files it does not own: refused, and never modified.

use std::time::Duration;

use idemp::store::sqlite::{APPLICATION_ID, SCHEMA_VERSION, SqliteStore, rusqlite};
use idemp::store::{Claim, ClaimOutcome, Codec, Outcome, RecordKey, Store, StoreError};

fn incompatible(r: Result<SqliteStore, StoreError>) -> String {
    match r {
        Err(StoreError::Incompatible(msg)) => msg,
        other => panic!("expected Incompatible, got {other:?}"),
    }
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    let content = b"these are my notes, not a database\n".repeat(200);
    std::fs::write(&path, &content).unwrap();
    let msg = incompatible(SqliteStore::open(&path));
    assert!(msg.contains("not an SQLite database"), "{msg}");
    assert_eq!(std::fs::read(&path).unwrap(), content);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "no -wal/-shm left behind: {names:?}");
}

#[test]
fn another_applications_database_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);
             INSERT INTO users (name) VALUES ('ada');",
        )
        .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let msg = incompatible(SqliteStore::open(&path));
    assert!(
        msg.contains("another application") && msg.contains("users"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file was modified"
    );

    // Another application's id is refused even when adopting.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "application_id", 0x1234_5678)
            .unwrap();
    }
    let msg = incompatible(SqliteStore::builder(&path).adopt_existing(true).open());
    assert!(msg.contains("0x12345678"), "{msg}");
}

#[tokio::test]
async fn adopt_existing_adds_idemp_tables_next_to_the_apps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY); PRAGMA user_version = 7;")
            .unwrap();
    }
    let store = SqliteStore::builder(&path)
        .adopt_existing(true)
        .open()
        .unwrap();
    let id = RecordKey::new("s", "k");
    assert!(matches!(
        store.claim(&Claim::new(id)).await.unwrap(),
        ClaimOutcome::Acquired { .. }
    ));
    let conn = store.connection().unwrap();
    let uv: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(uv, 7, "the application's user_version is left alone");
    drop(store);
    // Once adopted, it opens without the flag.
    SqliteStore::open(&path).unwrap();
}

#[tokio::test]
async fn a_new_file_is_marked_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    let store = SqliteStore::open(&path).unwrap();
    let id = RecordKey::new("s", "k");
    let ClaimOutcome::Acquired { token, .. } = store.claim(&Claim::new(id.clone())).await.unwrap()
    else {
        panic!("not acquired")
    };
    store
        .complete(
            &id,
            token,
            Outcome::new(Codec::Raw, vec![1, 2, 3]),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let app: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .unwrap();
    assert_eq!(app, APPLICATION_ID);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    drop(conn);
    let store = SqliteStore::open(&path).unwrap();
    let rec = store.get(&id).await.unwrap().unwrap();
    assert_eq!(rec.token, token);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.db");
    drop(SqliteStore::open(&path).unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "UPDATE idemp_meta SET value = ?1 WHERE name = 'schema_version'",
            [SCHEMA_VERSION + 1],
        )
        .unwrap();
    }
    let msg = incompatible(SqliteStore::open(&path));
    assert!(msg.contains("newer"), "{msg}");
}

#[test]
fn create_if_missing_false_never_creates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.db");
    match SqliteStore::builder(&path).create_if_missing(false).open() {
        Err(StoreError::Unavailable(msg)) => assert!(msg.contains("no such store"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert!(!path.exists());

    // An empty file is not an idemp store either, and stays empty.
    std::fs::write(&path, b"").unwrap();
    let msg = incompatible(SqliteStore::builder(&path).create_if_missing(false).open());
    assert!(msg.contains("empty"), "{msg}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);

    // An existing store opens.
    drop(SqliteStore::open(dir.path().join("ok.db")).unwrap());
    SqliteStore::builder(dir.path().join("ok.db"))
        .create_if_missing(false)
        .open()
        .unwrap();
}

#[tokio::test]
async fn complete_in_tx_refuses_a_connection_to_another_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("a.db")).unwrap();
    let other = SqliteStore::open(dir.path().join("b.db")).unwrap();
    let id = RecordKey::new("s", "k");
    let ClaimOutcome::Acquired { token, .. } = store.claim(&Claim::new(id.clone())).await.unwrap()
    else {
        panic!()
    };
    let mut conn = other.connection().unwrap();
    let tx = conn.transaction().unwrap();
    match store.complete_in_tx(
        &tx,
        &id,
        token,
        Outcome::new(Codec::Raw, vec![]),
        Duration::from_secs(1),
    ) {
        Err(StoreError::Invalid(msg)) => assert!(msg.contains("not on the store's file"), "{msg}"),
        other => panic!("{other:?}"),
    }
}
