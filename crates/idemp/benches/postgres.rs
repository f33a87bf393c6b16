//! Postgres store throughput: settled executions per second (claim + complete on fresh
//! keys) at 1, 16 and 64 concurrent tasks, next to the raw bound of the same pool: a
//! bare `INSERT … ON CONFLICT … RETURNING` + `UPDATE` per execution, prepared and cached
//! the same way. Also duplicate claims of a completed key (the replay path).
//!
//! ```text
//! cargo bench -p idemp --features postgres --bench postgres
//! IDEMP_BENCH_SECS=3 IDEMP_BENCH_POOL=16 IDEMP_TEST_POSTGRES_URL=postgres://… cargo bench …
//! ```
//! Prints a table; the ratio column is idemp / raw measured in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use idemp::store::postgres::{PostgresOptions, PostgresStore};
use idemp::store::{Claim, ClaimOutcome, Codec, Outcome, RecordKey, Store};

const TTL: Duration = Duration::from_secs(3600);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `tasks` copies of `op(task, i)` for `secs`, returns operations per second.
async fn measure<F, Fut>(tasks: usize, secs: f64, op: F) -> f64
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (op, stop, count) = (op.clone(), stop.clone(), count.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    op(t, i).await;
                    i += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let done = count.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    for h in handles {
        h.await.expect("bench task panicked");
    }
    done as f64 / elapsed
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let url = std::env::var("IDEMP_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let secs: f64 = env_or("IDEMP_BENCH_SECS", 3.0);
    let pool: usize = env_or("IDEMP_BENCH_POOL", 16);
    let schema = format!("idemp_bench_{}", std::process::id());
    let store = match PostgresStore::connect_with(
        &url,
        PostgresOptions::default()
            .schema(&schema)
            .pool_size(pool)
            .sweep_interval(None),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot reach Postgres at {url}: {e} (start it with scripts/services.sh)");
            std::process::exit(1);
        }
    };
    store
        .pool()
        .get()
        .await
        .expect("connection")
        .batch_execute(&format!(
            "CREATE TABLE \"{schema}\".raw (scope text COLLATE \"C\" NOT NULL, key text COLLATE \"C\" NOT NULL,
               token bigint NOT NULL, state smallint NOT NULL, outcome bytea,
               PRIMARY KEY (scope, key))"
        ))
        .await
        .expect("raw table");
    let insert = format!(
        "INSERT INTO \"{schema}\".raw AS r (scope, key, token, state) VALUES ($1, $2, 1, 0)
         ON CONFLICT (scope, key) DO UPDATE SET token = r.token + 1 RETURNING token"
    );
    let update = format!(
        "UPDATE \"{schema}\".raw SET state = 1, outcome = $4 WHERE scope = $1 AND key = $2 AND token = $3"
    );
    let outcome = br#"{"status":200,"body":"ok"}"#.to_vec();

    println!(
        "postgres store, pool {pool}, {secs} s per cell (machine shared with other builds: single readings)"
    );
    println!(
        "{:>6} | {:>16} | {:>16} | {:>6} | {:>16}",
        "tasks", "idemp settled/s", "raw ins+upd/s", "ratio", "idemp replays/s"
    );
    for tasks in [1usize, 16, 64] {
        let run = format!("t{tasks}");
        let idemp = settled(&store, tasks, secs, &run, &outcome).await;

        let s = store.clone();
        let (ins, upd) = (insert.clone(), update.clone());
        let out = outcome.clone();
        let r2 = run.clone();
        let raw = measure(tasks, secs, move |t, i| {
            let s = s.clone();
            let (ins, upd, out) = (ins.clone(), upd.clone(), out.clone());
            let key = format!("{r2}-{t}-{i}");
            async move {
                let c = s.pool().get().await.expect("pool");
                let ins = c.prepare_cached(&ins).await.expect("prepare");
                let token: i64 = c
                    .query_one(&ins, &[&"bench", &key])
                    .await
                    .expect("insert")
                    .get(0);
                drop(c);
                let c = s.pool().get().await.expect("pool");
                let upd = c.prepare_cached(&upd).await.expect("prepare");
                c.execute(&upd, &[&"bench", &key, &token, &out])
                    .await
                    .expect("update");
            }
        })
        .await;

        let s = store.clone();
        let done = RecordKey::new("bench", format!("{run}-0-0"));
        let replay = measure(tasks, secs, move |_, _| {
            let s = s.clone();
            let id = done.clone();
            async move {
                match s.claim(&Claim::new(id)).await.expect("claim") {
                    ClaimOutcome::Existing(_) => {}
                    other => panic!("{other:?}"),
                }
            }
        })
        .await;
        println!(
            "{tasks:>6} | {idemp:>16.0} | {raw:>16.0} | {:>6.2} | {replay:>16.0}",
            idemp / raw
        );
    }
    store
        .pool()
        .get()
        .await
        .expect("connection")
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .expect("drop schema");
}

/// Settled executions per second: claim + complete on fresh keys.
async fn settled(store: &PostgresStore, tasks: usize, secs: f64, run: &str, outcome: &[u8]) -> f64 {
    let s = store.clone();
    let out = outcome.to_vec();
    let run = run.to_string();
    measure(tasks, secs, move |t, i| {
        let s = s.clone();
        let out = out.clone();
        let id = RecordKey::new("bench", format!("{run}-{t}-{i}"));
        async move {
            match s.claim(&Claim::new(id.clone())).await.expect("claim") {
                ClaimOutcome::Acquired { token, .. } => s
                    .complete(&id, token, Outcome::new(Codec::Json, out), TTL)
                    .await
                    .expect("complete"),
                other => panic!("{other:?}"),
            }
        }
    })
    .await
}
