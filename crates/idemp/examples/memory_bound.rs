//! What bounding the memory store costs: one task claims and completes 1,000,000 unique
//! keys in an unbounded store (which grows to 1,000,000 records), in one bounded to
//! 10,000,000 (never full: the cost of keeping the eviction heap) and in one bounded to
//! 100,000 (which evicts on 900,000 of the claims), twice, and prints claims per second.
//!
//! ```text
//! cargo run --release -p idemp --example memory_bound
//! ```

use std::time::{Duration, Instant};

use idemp::store::{Claim, ClaimOutcome, Codec, MemoryStore, Outcome, RecordKey, Store};

async fn run(store: MemoryStore, n: usize) -> Result<f64, idemp::StoreError> {
    let start = Instant::now();
    for i in 0..n {
        let id = RecordKey::new("s", format!("k{i}"));
        if let ClaimOutcome::Acquired { token, .. } = store.claim(&Claim::new(id.clone())).await? {
            let out = Outcome::new(Codec::Raw, vec![1; 16]);
            store
                .complete(&id, token, out, Duration::from_secs(3600))
                .await?;
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), idemp::StoreError> {
    let n = 1_000_000;
    println!("claim + complete of {n} unique keys, one task, 8 shards");
    for _ in 0..2 {
        let unbounded = MemoryStore::builder().shards(8).build();
        let u = run(unbounded, n).await?;
        let roomy = MemoryStore::builder().shards(8).max_entries(n * 10).build();
        let r = run(roomy, n).await?;
        let bounded = MemoryStore::builder().shards(8).max_entries(n / 10).build();
        let b = run(bounded, n).await?;
        println!(
            "unbounded {u:>8.0}/s   never full {r:>8.0}/s ({:.2}×)   evicting {b:>8.0}/s ({:.2}×)",
            r / u,
            b / u
        );
    }
    Ok(())
}
