//! `complete_in_tx`: a database side effect and its completion commit together, so a
//! debit happens exactly once per key through crashes, lost responses and takeovers.

use std::sync::Arc;
use std::time::Duration;

use idemp::clock::ManualClock;
use idemp::store::sqlite::SqliteStore;
use idemp::store::sqlite::rusqlite::{self, TransactionBehavior};
use idemp::store::{Claim, ClaimOutcome, Codec, Outcome, RecordKey, State, Store, StoreError};
use rand::RngExt;
use rand::seq::SliceRandom;

const START: u64 = 1_700_000_000_000;
const LEASE: Duration = Duration::from_secs(10);

fn setup(dir: &tempfile::TempDir, keys: usize) -> (SqliteStore, ManualClock) {
    let clock = ManualClock::new(START);
    let store = SqliteStore::builder(dir.path().join("bank.db"))
        .clock(Arc::new(clock.clone()))
        .open()
        .unwrap();
    let mut conn = store.connection().unwrap();
    let tx = conn.transaction().unwrap();
    tx.execute_batch(
        "CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL);
         CREATE TABLE debits (id TEXT NOT NULL, token INTEGER NOT NULL);",
    )
    .unwrap();
    for k in 0..keys {
        tx.execute(
            "INSERT INTO accounts (id, balance) VALUES (?1, 1000)",
            [format!("acct{k}")],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    (store, clock)
}

fn rid(k: usize) -> RecordKey {
    RecordKey::new("debit", format!("acct{k}"))
}

/// The side effect and the completion in one transaction. `crash` drops the
/// transaction before the commit (the process died).
fn debit(
    store: &SqliteStore,
    conn: &mut rusqlite::Connection,
    k: usize,
    token: u64,
    crash: bool,
) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .unwrap();
    let acct = format!("acct{k}");
    tx.execute(
        "UPDATE accounts SET balance = balance - 1 WHERE id = ?1",
        [&acct],
    )
    .unwrap();
    tx.execute(
        "INSERT INTO debits (id, token) VALUES (?1, ?2)",
        rusqlite::params![acct, token as i64],
    )
    .unwrap();
    let out = Outcome::new(Codec::Json, b"999".to_vec());
    store.complete_in_tx(&tx, &rid(k), token, out, Duration::from_secs(3600))?;
    if crash {
        return Ok(()); // dropped: rolled back, as after kill -9
    }
    tx.commit().unwrap();
    Ok(())
}

#[tokio::test]
async fn a_stale_owner_is_fenced_and_its_debit_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let (store, clock) = setup(&dir, 1);
    let ClaimOutcome::Acquired { token: t1, .. } =
        store.claim(&Claim::new(rid(0)).lease(LEASE)).await.unwrap()
    else {
        panic!()
    };
    // The owner stalls past its lease; someone takes over.
    clock.advance(LEASE);
    let ClaimOutcome::Acquired { token: t2, .. } =
        store.claim(&Claim::new(rid(0)).lease(LEASE)).await.unwrap()
    else {
        panic!()
    };
    let mut conn = store.connection().unwrap();
    match debit(&store, &mut conn, 0, t1, false) {
        Err(StoreError::Fenced { token, current, .. }) => {
            assert_eq!((token, current), (t1, Some(t2)));
        }
        other => panic!("expected Fenced, got {other:?}"),
    }
    debit(&store, &mut conn, 0, t2, false).unwrap();
    let balance: i64 = conn
        .query_row("SELECT balance FROM accounts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(balance, 999);
    let rec = store.get(&rid(0)).await.unwrap().unwrap();
    assert_eq!(rec.token, t2);
    assert!(matches!(rec.state, State::Completed(_)));
}

/// 24 workers on 100 accounts, 4 contenders each, with crashes before the commit,
/// lost responses after it, and clock jumps that make live owners lose their lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn debit_storm_with_crashes_changes_each_balance_exactly_once() {
    const KEYS: usize = 100;
    const CONTENDERS: usize = 4;
    const WORKERS: usize = 24;
    let dir = tempfile::tempdir().unwrap();
    let (store, clock) = setup(&dir, KEYS);

    let mut slots: Vec<usize> = (0..KEYS)
        .flat_map(|k| std::iter::repeat_n(k, CONTENDERS))
        .collect();
    slots.shuffle(&mut rand::rng());
    let mut handles = Vec::new();
    for chunk in slots.chunks(slots.len().div_ceil(WORKERS)) {
        let chunk = chunk.to_vec();
        let store = store.clone();
        let clock = clock.clone();
        handles.push(tokio::spawn(async move {
            let mut conn = store.connection().unwrap();
            let mut stats = [0u32; 3]; // crashes, lost responses, fenced
            for k in chunk {
                let claim = Claim::new(rid(k)).lease(LEASE);
                loop {
                    match store.claim(&claim).await.unwrap() {
                        ClaimOutcome::Acquired { token, .. } => {
                            let dice = rand::rng().random_range(0..10);
                            if dice == 0 {
                                // Stall past the lease: others may take over meanwhile.
                                clock.advance(LEASE);
                                tokio::task::yield_now().await;
                            }
                            let crash = dice == 1;
                            let r = tokio::task::block_in_place(|| {
                                debit(&store, &mut conn, k, token, crash)
                            });
                            match r {
                                Ok(()) if crash => {
                                    stats[0] += 1;
                                    // The crashed owner's lease must pass before a retake.
                                    clock.advance(LEASE);
                                }
                                Ok(()) if dice == 2 => stats[1] += 1, // response lost: retry
                                Ok(()) => break,
                                Err(StoreError::Fenced { .. }) => stats[2] += 1,
                                Err(e) => panic!("{e}"),
                            }
                        }
                        ClaimOutcome::Existing(rec) => match rec.state {
                            State::Completed(_) => break,
                            State::InProgress { .. } => {
                                store.wait(&rid(k), Duration::from_millis(5)).await.unwrap();
                                // Sometimes the owner's lease passes while we wait.
                                if rand::rng().random_range(0..4) == 0 {
                                    clock.advance(LEASE);
                                }
                            }
                            State::Failed(_) => panic!("no failures here"),
                        },
                        ClaimOutcome::Mismatch(_) => panic!("no fingerprints here"),
                    }
                }
            }
            stats
        }));
    }
    let mut totals = [0u32; 3];
    for h in handles {
        let s = h.await.unwrap();
        for i in 0..3 {
            totals[i] += s[i];
        }
    }
    eprintln!("crashes, lost responses, fenced: {totals:?}");
    assert!(
        totals[0] > 0 && totals[2] > 0,
        "no crash or no fencing: {totals:?}"
    );

    let conn = store.connection().unwrap();
    let mut stmt = conn
        .prepare("SELECT id, balance, (SELECT count(*) FROM debits d WHERE d.id = a.id), (SELECT token FROM debits d WHERE d.id = a.id) FROM accounts a")
        .unwrap();
    let rows: Vec<(String, i64, i64, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), KEYS);
    for (k, (acct, balance, n, token)) in rows.into_iter().enumerate() {
        assert_eq!(balance, 999, "{acct}: debited {} times", 1000 - balance);
        assert_eq!(n, 1, "{acct}");
        let rec = store.get(&rid(k)).await.unwrap().unwrap();
        assert!(matches!(rec.state, State::Completed(_)), "{acct}");
        assert_eq!(
            rec.token as i64, token,
            "{acct}: completed by the debiting owner"
        );
    }
}
