//! SqliteStore: a claim that finds a live settled record (a replay) is answered from a
//! reader connection, without the writer thread; every other claim still goes to the
//! writer. The writer's counters tell which path a claim took.

use std::sync::Arc;
use std::time::Duration;

use idemp::clock::{ManualClock, SharedClock};
use idemp::store::sqlite::rusqlite::TransactionBehavior;
use idemp::store::sqlite::{GroupCommitStats, SqliteStore};
use idemp::store::{
    Claim, ClaimOutcome, Codec, Fingerprint, Outcome, RecordKey, State, Store, StoreAdmin,
    StoreError,
};

const START: u64 = 1_700_000_000_000;

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

/// Operations the writer thread ran since `before`.
fn writer_ops(store: &SqliteStore, before: GroupCommitStats) -> u64 {
    store.group_commit_stats().operations - before.operations
}

#[tokio::test]
async fn replays_do_not_go_through_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let shared: SharedClock = Arc::new(clock.clone());
    let store = SqliteStore::builder(dir.path().join("idemp.db"))
        .clock(shared)
        .open()
        .unwrap();
    let fp_a = Fingerprint::of(b"a");
    let fp_b = Fingerprint::of(b"b");
    let claim = Claim::new(id("done"))
        .fingerprint(Some(fp_a))
        .lease(Duration::from_secs(10))
        .ttl(Duration::from_secs(60));

    // In progress: the writer decides (the record may be taken over or re-acquired).
    let token = acquire(&store, &claim).await;
    let before = store.group_commit_stats();
    assert!(matches!(
        store.claim(&claim).await.unwrap(),
        ClaimOutcome::Existing(_)
    ));
    assert_eq!(
        writer_ops(&store, before),
        1,
        "an in-progress record is decided by the writer"
    );

    store
        .complete(&id("done"), token, json("42"), Duration::from_secs(60))
        .await
        .unwrap();

    // Settled: replays, a mismatch and a claim without fingerprint are all answered
    // without the writer, with the same answers as before.
    let before = store.group_commit_stats();
    for _ in 0..3 {
        match store.claim(&claim).await.unwrap() {
            ClaimOutcome::Existing(r) => {
                assert_eq!(r.state, State::Completed(json("42")));
                assert_eq!(r.token, token);
                assert_eq!(r.expires_at, Some(START + 60_000));
            }
            other => panic!("{other:?}"),
        }
    }
    match store
        .claim(&claim.clone().fingerprint(Some(fp_b)))
        .await
        .unwrap()
    {
        ClaimOutcome::Mismatch(r) => assert_eq!(r.fingerprint, Some(fp_a)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.claim(&claim.clone().fingerprint(None)).await.unwrap(),
        ClaimOutcome::Existing(_)
    ));
    assert_eq!(
        writer_ops(&store, before),
        0,
        "replays went through the writer"
    );

    // A sticky failure is a settled record too.
    let t = acquire(&store, &Claim::new(id("failed"))).await;
    store
        .fail(&id("failed"), t, json("\"boom\""), Duration::from_secs(60))
        .await
        .unwrap();
    let before = store.group_commit_stats();
    match store.claim(&Claim::new(id("failed"))).await.unwrap() {
        ClaimOutcome::Existing(r) => assert_eq!(r.state, State::Failed(json("\"boom\""))),
        other => panic!("{other:?}"),
    }
    assert_eq!(writer_ops(&store, before), 0);

    // Expired (not yet swept): the writer replaces it, with a larger token.
    clock.advance(Duration::from_secs(61));
    let before = store.group_commit_stats();
    let t2 = acquire(&store, &claim).await;
    assert!(t2 > token);
    assert_eq!(writer_ops(&store, before), 1);

    // Purged: gone for the replay path at once.
    store
        .complete(&id("done"), t2, json("43"), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(store.purge(&id("done")).await.unwrap());
    let t3 = acquire(&store, &claim).await;
    assert!(t3 > t2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_are_answered_while_another_process_holds_the_write_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.db");
    let store = SqliteStore::builder(&path)
        .busy_timeout(Duration::from_millis(20))
        .open()
        .unwrap();
    let token = acquire(&store, &Claim::new(id("r"))).await;
    store
        .complete(&id("r"), token, json("1"), Duration::from_secs(60))
        .await
        .unwrap();

    // Another connection (as another process would) holds the write lock.
    let mut conn = store.connection().unwrap();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .unwrap();
    // The replay needs no lock...
    match store.claim(&Claim::new(id("r"))).await.unwrap() {
        ClaimOutcome::Existing(r) => assert_eq!(r.state, State::Completed(json("1"))),
        other => panic!("{other:?}"),
    }
    // ...while a new key still waits for the writer, which gives up after its busy
    // timeout.
    match store.claim(&Claim::new(id("new"))).await {
        Err(e @ StoreError::Unavailable(_)) => assert!(e.is_transient()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    tx.rollback().unwrap();
    acquire(&store, &Claim::new(id("new"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_sees_every_completion_that_returned() {
    // Many tasks complete keys and immediately claim them again: the reader must see
    // each commit the writer acknowledged (never a stale snapshot of a pooled
    // connection), and never acquire a settled key.
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("rw.db")).unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let key = id(&format!("t{t}-{i}"));
                let token = acquire(&store, &Claim::new(key.clone())).await;
                let out = json(&format!("{i}"));
                store
                    .complete(&key, token, out.clone(), Duration::from_secs(60))
                    .await
                    .unwrap();
                match store.claim(&Claim::new(key.clone())).await.unwrap() {
                    ClaimOutcome::Existing(r) => assert_eq!(r.state, State::Completed(out)),
                    other => panic!("{key:?}: {other:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.stats().await.unwrap().completed, 400);
}
