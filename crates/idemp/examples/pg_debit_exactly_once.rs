//! Exactly-once database effects with the Postgres store.
//!
//! A retry storm: `KEYS` debits of $10, each requested by `RETRIES` concurrent callers
//! with the same idempotency key. Workers crash at random between the debit and the
//! commit (the transaction is dropped, as when a process dies), and some stall past
//! their lease before debiting (zombies: the key is taken over meanwhile). The debit and the
//! completion commit in one transaction (`complete_in`), and expired leases are taken
//! over, so every key moves the balance exactly once.
//!
//! ```text
//! IDEMP_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run -p idemp --features postgres --example pg_debit_exactly_once
//! ```
//! Exits non-zero if any key was debited other than once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use idemp::store::postgres::{PostgresOptions, PostgresStore};
use idemp::store::{Claim, ClaimOutcome, Codec, Outcome, RecordKey, State, Store, StoreError};

const KEYS: usize = 40;
const RETRIES: usize = 16;
const START_BALANCE: i64 = 100_000;
const DEBIT: i64 = 10;
const LEASE: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Counters {
    crashes: AtomicU64,
    zombies_fenced: AtomicU64,
    takeovers: AtomicU64,
    replays: AtomicU64,
    committed: AtomicU64,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// One caller: retries until it gets the debit's receipt (run by itself or replayed).
async fn request(
    store: PostgresStore,
    schema: String,
    id: RecordKey,
    c: Arc<Counters>,
) -> Result<Outcome, Error> {
    loop {
        let claim = Claim::new(id.clone()).lease(LEASE);
        match store.claim(&claim).await? {
            ClaimOutcome::Acquired {
                token, takeover, ..
            } => {
                if takeover.is_some() {
                    c.takeovers.fetch_add(1, Ordering::Relaxed);
                }
                let roll: u32 = rand::random_range(0..100);
                if roll < 10 {
                    // A stall past the lease (GC pause, slow network): the key may be
                    // taken over meanwhile, and this owner becomes a zombie.
                    tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
                }
                let mut conn = store.pool().get().await?;
                let tx = conn.transaction().await?;
                let balance: i64 = tx
                    .query_one(
                        &format!(
                            "UPDATE \"{schema}\".accounts SET balance = balance - $1 \
                             WHERE id = 'alice' RETURNING balance"
                        ),
                        &[&DEBIT],
                    )
                    .await?
                    .get(0);
                tx.execute(
                    &format!("INSERT INTO \"{schema}\".ledger (key, amount) VALUES ($1, $2)"),
                    &[&id.key, &DEBIT],
                )
                .await?;
                if roll >= 75 {
                    // Crash between the debit and the commit: nothing is committed, the
                    // record stays in progress until its lease passes.
                    c.crashes.fetch_add(1, Ordering::Relaxed);
                    drop(tx);
                    continue;
                }
                let receipt = Outcome::new(
                    Codec::Json,
                    format!(r#"{{"debited":{DEBIT},"balance":{balance}}}"#).into_bytes(),
                );
                match store
                    .complete_in(&tx, &id, token, receipt.clone(), Duration::from_secs(600))
                    .await
                {
                    Ok(()) => {
                        tx.commit().await?;
                        c.committed.fetch_add(1, Ordering::Relaxed);
                        return Ok(receipt);
                    }
                    Err(StoreError::Fenced { .. }) => {
                        // A zombie: its debit must not count.
                        c.zombies_fenced.fetch_add(1, Ordering::Relaxed);
                        tx.rollback().await?;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            ClaimOutcome::Existing(rec) => match rec.state {
                State::Completed(out) => {
                    c.replays.fetch_add(1, Ordering::Relaxed);
                    return Ok(out);
                }
                State::Failed(_) => return Err("unexpected sticky failure".into()),
                State::InProgress { .. } => {
                    // Someone runs it (or crashed): wait for it to settle, then look again.
                    store.wait(&id, LEASE).await?;
                }
            },
            ClaimOutcome::Mismatch(_) => return Err("unexpected fingerprint mismatch".into()),
        }
    }
}

/// Runs the storm in a schema of its own and drops it; `Ok(true)` when every key moved
/// the balance exactly once.
pub async fn example() -> Result<bool, Error> {
    let url = std::env::var("IDEMP_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!(
        "idemp_example_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    let store = PostgresStore::connect_with(
        &url,
        PostgresOptions::default().schema(&schema).pool_size(16),
    )
    .await
    .map_err(|e| format!("{e} (start Postgres with scripts/services.sh)"))?;
    let result = run(&store, &schema).await;
    let admin = store.pool().get().await?;
    // The store's background work (a heartbeat or a release finishing after the last
    // call returned) may still hold a row lock that the DROP queues behind; Postgres
    // then breaks the deadlock by aborting one side, and the DROP is simply retried.
    let drop = format!("DROP SCHEMA \"{schema}\" CASCADE");
    let mut attempt = 0;
    loop {
        attempt += 1;
        match admin.batch_execute(&drop).await {
            Ok(()) => break,
            Err(e)
                if attempt < 5
                    && e.code()
                        == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    result
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    if !example().await? {
        std::process::exit(1);
    }
    Ok(())
}

async fn run(store: &PostgresStore, schema: &str) -> Result<bool, Error> {
    store
        .pool()
        .get()
        .await?
        .batch_execute(&format!(
            "CREATE TABLE \"{schema}\".accounts (id text PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO \"{schema}\".accounts VALUES ('alice', {START_BALANCE});
             CREATE TABLE \"{schema}\".ledger (key text NOT NULL, amount bigint NOT NULL);"
        ))
        .await?;
    let counters = Arc::new(Counters::default());
    let mut tasks = Vec::new();
    for k in 0..KEYS {
        for _ in 0..RETRIES {
            tasks.push(tokio::spawn(request(
                store.clone(),
                schema.to_string(),
                RecordKey::new("debit", format!("order-{k}")),
                counters.clone(),
            )));
        }
    }
    let mut receipts = std::collections::HashMap::<String, Vec<Outcome>>::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let out = t.await??;
        receipts
            .entry(format!("order-{}", i / RETRIES))
            .or_default()
            .push(out);
    }
    let conn = store.pool().get().await?;
    let balance: i64 = conn
        .query_one(
            &format!("SELECT balance FROM \"{schema}\".accounts WHERE id = 'alice'"),
            &[],
        )
        .await?
        .get(0);
    let per_key = conn
        .query(
            &format!("SELECT key, count(*) FROM \"{schema}\".ledger GROUP BY key"),
            &[],
        )
        .await?;
    let twice: Vec<String> = per_key
        .iter()
        .filter(|r| r.get::<_, i64>(1) != 1)
        .map(|r| r.get(0))
        .collect();
    let same_receipt = receipts.values().all(|v| v.iter().all(|o| o == &v[0]));
    let expected = START_BALANCE - DEBIT * KEYS as i64;
    let c = &counters;
    println!("requests:            {}", KEYS * RETRIES);
    println!("keys:                {KEYS}");
    println!(
        "committed debits:    {}",
        c.committed.load(Ordering::Relaxed)
    );
    println!(
        "crashes before commit: {}",
        c.crashes.load(Ordering::Relaxed)
    );
    println!(
        "takeovers:           {}",
        c.takeovers.load(Ordering::Relaxed)
    );
    println!(
        "zombies fenced:      {}",
        c.zombies_fenced.load(Ordering::Relaxed)
    );
    println!("replays:             {}", c.replays.load(Ordering::Relaxed));
    println!(
        "ledger keys:         {} (debited other than once: {twice:?})",
        per_key.len()
    );
    println!("balance:             {balance} (expected {expected})");
    println!("same receipt for every caller of a key: {same_receipt}");
    let ok = balance == expected && per_key.len() == KEYS && twice.is_empty() && same_receipt;
    println!("{}", if ok { "OK: exactly once" } else { "WRONG" });
    Ok(ok)
}
