//! Settled executions per second on the SQLite store: claim + complete on fresh keys,
//! from 1, 16 and 64 concurrent tasks, with `synchronous` FULL (durable) and NORMAL;
//! and replays per second: claims of a key that is already completed (the retry of a
//! request that was answered), which never write.
//!
//! `cargo bench -p idemp --all-features --bench sqlite -- --warm-up-time 1 --measurement-time 3`
//!
//! Criterion's "thrpt" is settled executions (or replays) per second; the group-commit
//! line after each cell is the writer's operations per commit. The Python peer
//! (`idempotency` FileStore) is measured by bench/python/idempotency_filestore_bench.py.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use idemp::store::sqlite::{SqliteStore, Synchronous};
use idemp::store::{Claim, ClaimOutcome, Codec, Outcome, RecordKey, Store};

/// One execution: claim a fresh key, then complete it with a small JSON outcome.
async fn execute(store: &SqliteStore, key: u64) {
    let id = RecordKey::new("bench", format!("k{key}"));
    let ClaimOutcome::Acquired { token, .. } =
        store.claim(&Claim::new(id.clone())).await.expect("claim")
    else {
        panic!("fresh key not acquired");
    };
    let outcome = Outcome::new(Codec::Json, br#"{"ok":true,"n":42}"#.to_vec());
    store
        .complete(&id, token, outcome, Duration::from_secs(3600))
        .await
        .expect("complete");
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut group = c.benchmark_group("sqlite_settled_executions");
    group.throughput(Throughput::Elements(1));
    for (name, sync) in [("full", Synchronous::Full), ("normal", Synchronous::Normal)] {
        let store = SqliteStore::builder(dir.path().join(format!("{name}.db")))
            .synchronous(sync)
            .open()
            .expect("open");
        let next_key = Arc::new(AtomicU64::new(0));
        for tasks in [1u64, 16, 64] {
            let before = store.group_commit_stats();
            group.bench_with_input(BenchmarkId::new(name, tasks), &tasks, |b, &tasks| {
                b.to_async(&rt).iter_custom(|iters| {
                    let store = store.clone();
                    let next_key = next_key.clone();
                    async move {
                        let start = Instant::now();
                        let mut handles = Vec::new();
                        for t in 0..tasks {
                            let store = store.clone();
                            let next_key = next_key.clone();
                            // Spread `iters` executions over the tasks.
                            let n = iters / tasks + u64::from(t < iters % tasks);
                            handles.push(tokio::spawn(async move {
                                for _ in 0..n {
                                    execute(&store, next_key.fetch_add(1, Ordering::Relaxed)).await;
                                }
                            }));
                        }
                        for h in handles {
                            h.await.expect("task");
                        }
                        start.elapsed()
                    }
                });
            });
            let after = store.group_commit_stats();
            let (commits, ops) = (
                after.commits - before.commits,
                after.operations - before.operations,
            );
            if commits == 0 {
                continue; // filtered out
            }
            eprintln!(
                "group commit, {name}/{tasks}: {:.1} operations per commit ({ops} in {commits})",
                ops as f64 / commits.max(1) as f64
            );
        }
    }
    group.finish();

    // Replays: every claim finds the same completed record.
    let mut group = c.benchmark_group("sqlite_replays");
    group.throughput(Throughput::Elements(1));
    let store = SqliteStore::builder(dir.path().join("replay.db"))
        .open()
        .expect("open");
    let id = RecordKey::new("bench", "replayed");
    rt.block_on(async {
        let ClaimOutcome::Acquired { token, .. } =
            store.claim(&Claim::new(id.clone())).await.expect("claim")
        else {
            panic!("fresh key not acquired");
        };
        let outcome = Outcome::new(Codec::Json, br#"{"ok":true,"n":42}"#.to_vec());
        store
            .complete(&id, token, outcome, Duration::from_secs(3600))
            .await
            .expect("complete");
    });
    for tasks in [1u64, 16, 64] {
        let before = store.group_commit_stats();
        group.bench_with_input(BenchmarkId::new("full", tasks), &tasks, |b, &tasks| {
            b.to_async(&rt).iter_custom(|iters| {
                let store = store.clone();
                let id = id.clone();
                async move {
                    let start = Instant::now();
                    let mut handles = Vec::new();
                    for t in 0..tasks {
                        let store = store.clone();
                        let claim = Claim::new(id.clone());
                        let n = iters / tasks + u64::from(t < iters % tasks);
                        handles.push(tokio::spawn(async move {
                            for _ in 0..n {
                                let found = store.claim(&claim).await.expect("claim");
                                assert!(matches!(found, ClaimOutcome::Existing(_)));
                            }
                        }));
                    }
                    for h in handles {
                        h.await.expect("task");
                    }
                    start.elapsed()
                }
            });
        });
        let after = store.group_commit_stats();
        eprintln!(
            "replays, full/{tasks}: {} went through the writer",
            after.operations - before.operations
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
