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

/// A file written by a build of schema version 1 (no `nonce`/`takeover` columns) is
/// migrated when opened: its records are kept, its token sequence continues, and
/// claims on it can be repeated with their nonce from then on.
#[tokio::test]
async fn a_version_1_file_is_migrated_and_its_records_kept() {
    use std::sync::Arc;

    use idemp::clock::ManualClock;
    use idemp::store::State;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    let now: u64 = 1_700_000_000_000;
    let lease_until = now + 60_000;
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(include_str!("../src/store/sqlite/schema_v1.sql"))
            .unwrap();
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        conn.execute(
            "INSERT INTO idemp_records (scope, key, fingerprint, state, token, attempts, \
             created_at, updated_at, lease_until, ttl_ms, purge_at) \
             VALUES ('s', 'live', NULL, 0, 5, 1, ?1, ?1, ?2, 3600000, ?3)",
            rusqlite::params![
                now as i64,
                lease_until as i64,
                (lease_until + 3_600_000) as i64
            ],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO idemp_records (scope, key, fingerprint, state, token, attempts, \
             created_at, updated_at, lease_until, ttl_ms, purge_at, codec, compression, outcome) \
             VALUES ('s', 'done', NULL, 1, 6, 1, ?1, ?1, NULL, 3600000, ?2, 0, 0, x'6f6b')",
            rusqlite::params![now as i64, (now + 3_600_000) as i64],
        )
        .unwrap();
        conn.execute(
            "UPDATE idemp_meta SET value = 6 WHERE name = 'token_seq'",
            [],
        )
        .unwrap();
    }
    let clock = ManualClock::new(now);
    let store = SqliteStore::builder(&path)
        .clock(Arc::new(clock.clone()))
        .open()
        .unwrap();
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT value FROM idemp_meta WHERE name = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(SCHEMA_VERSION, 2);

    let live = RecordKey::new("s", "live");
    let done = RecordKey::new("s", "done");
    let rec = store.get(&done).await.unwrap().unwrap();
    assert_eq!(
        rec.state,
        State::Completed(Outcome::new(Codec::Raw, b"ok".to_vec()))
    );
    // A record of version 1 has no nonce: no claim repeats its acquisition.
    match store
        .claim(&Claim::new(live.clone()).nonce(1))
        .await
        .unwrap()
    {
        ClaimOutcome::Existing(rec) => assert_eq!(rec.token, 5),
        other => panic!("expected the v1 record in progress, got {other:?}"),
    }
    clock.advance(Duration::from_secs(61));
    let mine = Claim::new(live.clone()).nonce(9);
    let first = store.claim(&mine).await.unwrap();
    let expected = ClaimOutcome::Acquired {
        token: 7,
        lease_until: now + 61_000 + 60_000,
        takeover: Some(5),
        attempt: 2,
    };
    assert_eq!(
        first, expected,
        "the token sequence continues after the migration"
    );
    clock.advance(Duration::from_secs(1));
    match store.claim(&mine).await.unwrap() {
        ClaimOutcome::Acquired {
            token,
            takeover,
            attempt,
            lease_until,
        } => {
            assert_eq!((token, takeover, attempt), (7, Some(5), 2));
            assert_eq!(
                lease_until,
                now + 62_000 + 60_000,
                "the repeat renews the lease"
            );
        }
        other => panic!("the repeated takeover was not acquired: {other:?}"),
    }
    drop(store);
    // Reopening a migrated file migrates nothing more.
    let store = SqliteStore::builder(&path)
        .clock(Arc::new(clock))
        .open()
        .unwrap();
    assert_eq!(store.get(&live).await.unwrap().unwrap().token, 7);
}

/// Several openers of one new file at once (threads here, processes in production:
/// each gets its own connections) all open it: the ones that find another switching
/// the file to WAL or creating the schema wait instead of failing with "database is
/// locked" (which SQLite reports for those steps without calling the busy handler).
#[test]
fn openers_racing_on_a_new_file_all_open_it() {
    for round in 0..30 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("race.db");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let openers: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    SqliteStore::open(&path).map(drop)
                })
            })
            .collect();
        for (i, opener) in openers.into_iter().enumerate() {
            if let Err(e) = opener.join().unwrap() {
                panic!("round {round}: opener {i} failed: {e}");
            }
        }
    }
}
