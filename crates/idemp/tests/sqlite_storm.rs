//! Storms on one SQLite file: 64 tasks, 1,000 keys, 8 contenders per key, split over
//! two stores (two writer threads competing for the file lock, as two processes do).
//! Side effects are counted, not responses.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use idemp::store::sqlite::SqliteStore;
use idemp::store::{Claim, ClaimOutcome, Codec, Outcome, RecordKey, State, Store, StoreAdmin};
use rand::seq::SliceRandom;

const KEYS: usize = 1000;
const CONTENDERS: usize = 8;
const TASKS: usize = 64;

/// Runs one contender for `key`; returns the value it ends up with.
async fn contend(store: &SqliteStore, key: usize, effects: &[AtomicU32]) -> Vec<u8> {
    let id = RecordKey::new("storm", format!("k{key}"));
    let claim = Claim::new(id.clone()).ttl(Duration::from_secs(3600));
    loop {
        match store.claim(&claim).await.expect("claim") {
            ClaimOutcome::Acquired { token, .. } => {
                let n = effects[key].fetch_add(1, Ordering::SeqCst) + 1;
                let value = format!("{key}:{token}:{n}").into_bytes();
                store
                    .complete(
                        &id,
                        token,
                        Outcome::new(Codec::Raw, value.clone()),
                        Duration::from_secs(3600),
                    )
                    .await
                    .expect("complete");
                return value;
            }
            ClaimOutcome::Existing(rec) => {
                let rec = match rec.state {
                    State::InProgress { .. } => {
                        match store
                            .wait(&id, Duration::from_secs(30))
                            .await
                            .expect("wait")
                        {
                            Some(r) => r,
                            None => continue,
                        }
                    }
                    _ => rec,
                };
                match rec.state {
                    State::Completed(o) => return o.bytes,
                    State::InProgress { .. } => panic!("wait timed out on {id}"),
                    State::Failed(_) => panic!("unexpected failure on {id}"),
                }
            }
            ClaimOutcome::Mismatch(r) => panic!("mismatch without fingerprints: {r:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storm_each_effect_once_every_caller_same_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("storm.db");
    let stores = [
        SqliteStore::open(&path).unwrap(),
        SqliteStore::open(&path).unwrap(),
    ];
    let effects: Arc<Vec<AtomicU32>> = Arc::new((0..KEYS).map(|_| AtomicU32::new(0)).collect());

    // Every (key, contender) slot, shuffled, dealt to the tasks.
    let mut slots: Vec<usize> = (0..KEYS)
        .flat_map(|k| std::iter::repeat_n(k, CONTENDERS))
        .collect();
    slots.shuffle(&mut rand::rng());
    let per_task = slots.len().div_ceil(TASKS);
    let mut handles = Vec::new();
    for (i, chunk) in slots.chunks(per_task).enumerate() {
        let store = stores[i % 2].clone();
        let effects = effects.clone();
        let chunk = chunk.to_vec();
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for key in chunk {
                got.push((key, contend(&store, key, &effects).await));
            }
            got
        }));
    }
    let mut values: HashMap<usize, Vec<Vec<u8>>> = HashMap::new();
    for h in handles {
        for (k, v) in h.await.unwrap() {
            values.entry(k).or_default().push(v);
        }
    }
    for (k, count) in effects.iter().enumerate() {
        assert_eq!(
            count.load(Ordering::SeqCst),
            1,
            "key {k} ran more or less than once"
        );
    }
    assert_eq!(values.len(), KEYS);
    for (k, vs) in &values {
        assert_eq!(vs.len(), CONTENDERS);
        assert!(
            vs.iter().all(|v| v == &vs[0]),
            "key {k}: different values {vs:?}"
        );
    }
    // Every acquisition and every completion went through a writer's transactions;
    // a claim that found its key already completed (a replay) was answered by a
    // reader, without the writer.
    let gc: Vec<_> = stores.iter().map(|s| s.group_commit_stats()).collect();
    let ops: u64 = gc.iter().map(|g| g.operations).sum();
    assert!(
        ((2 * KEYS) as u64..=(KEYS * CONTENDERS + KEYS) as u64).contains(&ops),
        "{ops} operations reached the writers"
    );
    assert!(
        gc.iter()
            .all(|g| g.commits <= g.operations && g.commits > 0)
    );
    eprintln!(
        "operations per commit: {:.1} and {:.1}",
        gc[0].ops_per_commit(),
        gc[1].ops_per_commit()
    );
    let stats = stores[0].stats().await.unwrap();
    assert_eq!(stats.completed, KEYS as u64);
    assert_eq!(stats.in_progress + stats.ambiguous, 0);
}
