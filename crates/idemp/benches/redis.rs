//! Throughput of the Redis store: settled executions per second (claim + complete of a
//! fresh key) at 1, 16 and 64 concurrent tasks, against
//!
//! * the raw two-round-trip bound on the same kind of multiplexed connection:
//!   `SET NX PX` then `SET PX`, and two `EVALSHA` of trivial scripts;
//! * the `idempotent` crate 0.3.0's `ValkeyStore` (`try_insert` + `complete`).
//!
//! A custom harness (throughput under concurrency does not fit criterion's model):
//!
//! ```text
//! cargo bench -p idemp --features redis --bench redis
//! IDEMP_BENCH_SECS=3 IDEMP_TEST_REDIS_URL=redis://127.0.0.1:6379/0 cargo bench …
//! ```
//!
//! Every key lives under a unique prefix and is deleted at the end.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use idemp::store::redis::{RedisOptions, RedisStore};
use idemp::store::{Claim, ClaimOutcome, Codec, Outcome, RecordKey, Store, StoreUrl};

const CONCURRENCY: [usize; 3] = [1, 16, 64];

fn url() -> String {
    std::env::var("IDEMP_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

fn secs() -> f64 {
    std::env::var("IDEMP_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0)
}

/// CPU seconds (user + system) used by this process so far.
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // fields after the parenthesised command name; utime and stime are 14 and 15
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

/// CPU seconds (user + system) used by the Redis server so far (`INFO cpu`; on a
/// shared server this includes other clients' work).
async fn server_cpu() -> f64 {
    let Ok(client) = redis::Client::open(url()) else {
        return 0.0;
    };
    let Ok(mut c) = client.get_multiplexed_async_connection().await else {
        return 0.0;
    };
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| *k == "used_cpu_user" || *k == "used_cpu_sys")
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

/// Throughput and CPU cost of one benchmark cell.
#[derive(Clone, Copy)]
struct Cell {
    per_sec: f64,
    client_us: f64,
    server_us: f64,
}

/// Runs `op(task, i)` from `tasks` tasks for the configured time.
async fn measure<F, Fut>(tasks: usize, op: F) -> Cell
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    // warm-up
    {
        let mut hs = Vec::new();
        for t in 0..tasks {
            let op = op.clone();
            hs.push(tokio::spawn(async move {
                for i in 0..20 {
                    op(t, u64::MAX - i).await;
                }
            }));
        }
        for h in hs {
            h.await.expect("warm-up task");
        }
    }
    let (cpu0, srv0) = (process_cpu(), server_cpu().await);
    let deadline = Instant::now() + Duration::from_secs_f64(secs());
    let start = Instant::now();
    let mut hs = Vec::new();
    for t in 0..tasks {
        let op = op.clone();
        let done = done.clone();
        hs.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                op(t, i).await;
                i += 1;
            }
            done.fetch_add(i, Ordering::Relaxed);
        }));
    }
    for h in hs {
        h.await.expect("bench task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (cpu1, srv1) = (process_cpu(), server_cpu().await);
    let n = done.load(Ordering::Relaxed).max(1) as f64;
    Cell {
        per_sec: n / elapsed,
        client_us: (cpu1 - cpu0) * 1e6 / n,
        server_us: (srv1 - srv0) * 1e6 / n,
    }
}

async fn cleanup(prefix: &str) {
    let Ok(client) = redis::Client::open(url()) else {
        return;
    };
    let Ok(mut c) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let mut cursor = 0u64;
    loop {
        let r: redis::RedisResult<(u64, Vec<Vec<u8>>)> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut c)
            .await;
        let Ok((next, keys)) = r else { return };
        if !keys.is_empty() {
            let _: redis::RedisResult<u64> =
                redis::cmd("UNLINK").arg(&keys).query_async(&mut c).await;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
}

async fn bench_idemp(prefix: &str, tasks: usize) -> Cell {
    let parsed: StoreUrl = url().parse().expect("url");
    let store = Arc::new(
        RedisStore::connect_with(
            &parsed,
            RedisOptions::default()
                .prefix(prefix)
                .check_durability(false),
        )
        .await
        .expect("redis reachable (scripts/services.sh)"),
    );
    let outcome = Outcome::new(Codec::Raw, vec![7u8; 32]);
    measure(tasks, move |t, i| {
        let store = store.clone();
        let outcome = outcome.clone();
        async move {
            let claim = Claim::new(RecordKey::new("bench", format!("{tasks}-{t}-{i}")))
                .lease(Duration::from_secs(30))
                .ttl(Duration::from_secs(120));
            match store.claim(&claim).await.expect("claim") {
                ClaimOutcome::Acquired { token, .. } => store
                    .complete(&claim.id, token, outcome, Duration::from_secs(120))
                    .await
                    .expect("complete"),
                other => panic!("fresh key not acquired: {other:?}"),
            }
        }
    })
    .await
}

async fn raw_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis reachable")
}

async fn bench_raw_set(prefix: &str, tasks: usize) -> Cell {
    let conn = raw_connection().await;
    let prefix = prefix.to_string();
    let value = vec![7u8; 32];
    measure(tasks, move |t, i| {
        let mut conn = conn.clone();
        let key = format!("{prefix}:raw:{tasks}-{t}-{i}");
        let value = value.clone();
        async move {
            let claimed: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg("p")
                .arg("NX")
                .arg("PX")
                .arg(30_000)
                .query_async(&mut conn)
                .await
                .expect("SET NX");
            assert!(claimed.is_some());
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg(value)
                .arg("PX")
                .arg(120_000)
                .query_async(&mut conn)
                .await
                .expect("SET");
        }
    })
    .await
}

async fn bench_raw_eval(prefix: &str, tasks: usize) -> Cell {
    let conn = raw_connection().await;
    let prefix = prefix.to_string();
    let script = Arc::new(redis::Script::new(
        "redis.call('SET', KEYS[1], ARGV[1], 'PX', 120000) return 1",
    ));
    measure(tasks, move |t, i| {
        let mut conn = conn.clone();
        let key = format!("{prefix}:eval:{tasks}-{t}-{i}");
        let script = script.clone();
        async move {
            for v in ["p", "c"] {
                let _: i64 = script
                    .key(&key)
                    .arg(v)
                    .invoke_async(&mut conn)
                    .await
                    .expect("EVALSHA");
            }
        }
    })
    .await
}

async fn bench_idempotent(prefix: &str, tasks: usize) -> Cell {
    use idempotent::entry::Metadata;
    use idempotent::fingerprint::{DefaultFingerprintStrategy, FingerprintStrategy};
    use idempotent::store::IdempotencyStore;
    use idempotent::store::InsertResult;
    use idempotent::store::valkey::ValkeyStore;
    use idempotent::{CachedResponse, IdempotencyEntry, IdempotencyKey};

    let client = redis::Client::open(url()).expect("url");
    let store = Arc::new(
        ValkeyStore::with_prefix(client, Some(&format!("{prefix}:peer")))
            .await
            .expect("valkey store"),
    );
    measure(tasks, move |t, i| {
        let store = store.clone();
        async move {
            let key = IdempotencyKey::new(format!("{tasks}-{t}-{i}")).expect("key");
            let fp = DefaultFingerprintStrategy.compute("bench", &[]);
            let entry = IdempotencyEntry::new(fp, Duration::from_secs(120));
            match store
                .try_insert(&key, entry.clone())
                .await
                .expect("try_insert")
            {
                InsertResult::Claimed { fencing_token } => {
                    let response = CachedResponse {
                        status_code: 200,
                        metadata: Metadata::default(),
                        body: vec![7u8; 32].into(),
                    };
                    store
                        .complete(&key, entry.complete(response), fencing_token)
                        .await
                        .expect("complete");
                }
                InsertResult::Exists(_) => panic!("fresh key exists"),
            }
        }
    })
    .await
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let prefix = format!("idemp-bench-{}", std::process::id());
        println!(
            "Redis settled executions per second ({} s per cell, {}; machine shared)",
            secs(),
            url()
        );
        println!(
            "{:>5} | {:>22} | {:>22} | {:>22} | {:>22} | {:>7} | {:>7}",
            "tasks", "idemp", "2x SET (bound)", "2x EVALSHA", "idempotent 0.3", "vs SET", "vs peer"
        );
        println!("{:>5} | {}", "", ["  per s  cli µs  srv µs"; 4].join(" | "));
        let show = |c: Cell| {
            format!(
                "{:>7.0} {:>7.1} {:>7.1}",
                c.per_sec, c.client_us, c.server_us
            )
        };
        for tasks in CONCURRENCY {
            let ours = bench_idemp(&prefix, tasks).await;
            let set = bench_raw_set(&prefix, tasks).await;
            let eval = bench_raw_eval(&prefix, tasks).await;
            let peer = bench_idempotent(&prefix, tasks).await;
            println!(
                "{tasks:>5} | {} | {} | {} | {} | {:>6.0}% | {:>6.2}x",
                show(ours),
                show(set),
                show(eval),
                show(peer),
                100.0 * ours.per_sec / set.per_sec,
                ours.per_sec / peer.per_sec
            );
            cleanup(&prefix).await;
        }
        cleanup(&prefix).await;
    });
}
