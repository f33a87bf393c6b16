//! Differential property test: random operation sequences give the same answers on
//! `SqliteStore` and on `MemoryStore` (the reference), on manual clocks moved together.
//!
//! Tokens are store-specific numbers (a per-file counter here, per-shard counters
//! there), so they are compared per key through the bijection built as both stores
//! hand them out: the i-th token acquired for a key on one store is used wherever the
//! other uses its i-th token for that key.

use std::sync::Arc;
use std::time::Duration;

use idemp::clock::ManualClock;
use idemp::store::sqlite::{SqliteStore, Synchronous};
use idemp::store::{
    Claim, ClaimOutcome, Codec, Fingerprint, ListQuery, MemoryStore, Outcome, Record, RecordKey,
    Store, StoreAdmin, StoreError, StoreResult,
};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Claim {
        key: u8,
        fp: Option<u8>,
        lease: u64,
        ttl: u64,
        take_over: bool,
    },
    Complete {
        key: u8,
        tok: usize,
        ttl: u64,
    },
    Fail {
        key: u8,
        tok: usize,
        ttl: u64,
    },
    Release {
        key: u8,
        tok: usize,
    },
    Renew {
        key: u8,
        tok: usize,
        lease: u64,
    },
    Purge {
        key: u8,
    },
    Get {
        key: u8,
    },
    Advance {
        secs: u64,
    },
    Sweep,
    Stats,
    List,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..3u8;
    let tok = 0..8usize;
    prop_oneof![
        4 => (key.clone(), proptest::option::of(0..2u8), 0..20u64, 1..60u64, any::<bool>())
            .prop_map(|(key, fp, lease, ttl, take_over)| Op::Claim { key, fp, lease, ttl, take_over }),
        3 => (key.clone(), tok.clone(), 1..60u64).prop_map(|(key, tok, ttl)| Op::Complete { key, tok, ttl }),
        1 => (key.clone(), tok.clone(), 1..60u64).prop_map(|(key, tok, ttl)| Op::Fail { key, tok, ttl }),
        1 => (key.clone(), tok.clone()).prop_map(|(key, tok)| Op::Release { key, tok }),
        1 => (key.clone(), tok, 0..20u64).prop_map(|(key, tok, lease)| Op::Renew { key, tok, lease }),
        1 => key.clone().prop_map(|key| Op::Purge { key }),
        2 => key.prop_map(|key| Op::Get { key }),
        3 => (0..30u64).prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::Sweep),
        1 => Just(Op::Stats),
        1 => Just(Op::List),
    ]
}

/// Tokens handed out so far for one key, in order, by each store.
#[derive(Default)]
struct Tokens {
    sqlite: Vec<u64>,
    memory: Vec<u64>,
}

impl Tokens {
    /// The pair of tokens an op refers to (index modulo the tokens so far; a token
    /// that was never issued when there are none).
    fn pick(&self, i: usize) -> (u64, u64) {
        if self.sqlite.is_empty() {
            (999_999, 999_999)
        } else {
            let i = i % self.sqlite.len();
            (self.sqlite[i], self.memory[i])
        }
    }
    /// The memory token corresponding to a SQLite token.
    fn map(&self, sqlite_token: u64) -> Option<u64> {
        self.sqlite
            .iter()
            .position(|t| *t == sqlite_token)
            .map(|i| self.memory[i])
    }
}

fn id(k: u8) -> RecordKey {
    RecordKey::new("diff", format!("k{k}"))
}

/// A record with its token mapped to the memory store's numbering.
fn mapped(r: Record, tokens: &Tokens) -> Record {
    Record {
        token: tokens.map(r.token).unwrap_or(u64::MAX),
        ..r
    }
}

fn err_shape<T>(r: &StoreResult<T>, tokens: Option<&Tokens>) -> Option<String> {
    match r {
        Ok(_) => None,
        Err(StoreError::Fenced { token, current, .. }) => {
            let current = match tokens {
                Some(t) => current.map(|c| t.map(c).unwrap_or(u64::MAX)),
                None => *current,
            };
            let _ = token;
            Some(format!("Fenced(current {current:?})"))
        }
        Err(e) => Some(format!("{e}")),
    }
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let start = 1_700_000_000_000;
    let (c1, c2) = (ManualClock::new(start), ManualClock::new(start));
    let sqlite = SqliteStore::builder(dir.path().join("diff.db"))
        .clock(Arc::new(c1.clone()))
        // Same semantics as FULL; fewer fsyncs keep the cases fast.
        .synchronous(Synchronous::Normal)
        .open()
        .unwrap();
    let memory = MemoryStore::builder().clock(Arc::new(c2.clone())).build();
    let mut per_key: [Tokens; 3] = Default::default();
    let out = |s: &str| Outcome::new(Codec::Json, s.as_bytes().to_vec());

    for (step, op) in ops.into_iter().enumerate() {
        let ctx = format!("step {step}: {op:?}");
        let key_of = |op: &Op| match op {
            Op::Claim { key, .. }
            | Op::Complete { key, .. }
            | Op::Fail { key, .. }
            | Op::Release { key, .. }
            | Op::Renew { key, .. }
            | Op::Purge { key }
            | Op::Get { key } => Some(usize::from(*key)),
            _ => None,
        };
        let slot = key_of(&op).unwrap_or(0);
        let tokens = &mut per_key[slot];
        match op {
            Op::Claim {
                key,
                fp,
                lease,
                ttl,
                take_over,
            } => {
                let claim = Claim::new(id(key))
                    .fingerprint(fp.map(|f| Fingerprint::of(&[f])))
                    .lease(Duration::from_secs(lease))
                    .ttl(Duration::from_secs(ttl))
                    .take_over_expired(take_over);
                let a = sqlite.claim(&claim).await.unwrap();
                let b = memory.claim(&claim).await.unwrap();
                match (a, b) {
                    (
                        ClaimOutcome::Acquired {
                            token: ta,
                            lease_until: la,
                            takeover: pa,
                            attempt: aa,
                        },
                        ClaimOutcome::Acquired {
                            token: tb,
                            lease_until: lb,
                            takeover: pb,
                            attempt: ab,
                        },
                    ) => {
                        prop_assert_eq!(la, lb, "{}", ctx);
                        prop_assert_eq!(aa, ab, "{}", ctx);
                        prop_assert_eq!(pa.and_then(|p| tokens.map(p)), pb, "{}", ctx);
                        // Tokens increase on both stores in the same places.
                        if let Some(prev) = tokens.sqlite.last() {
                            prop_assert!(ta > *prev, "{}", ctx);
                        }
                        tokens.sqlite.push(ta);
                        tokens.memory.push(tb);
                    }
                    (ClaimOutcome::Existing(ra), ClaimOutcome::Existing(rb))
                    | (ClaimOutcome::Mismatch(ra), ClaimOutcome::Mismatch(rb)) => {
                        prop_assert_eq!(mapped(ra, tokens), rb, "{}", ctx);
                    }
                    (a, b) => prop_assert!(false, "{}: sqlite {:?} vs memory {:?}", ctx, a, b),
                }
            }
            Op::Complete { key, tok, ttl } | Op::Fail { key, tok, ttl } => {
                let failed = matches!(op, Op::Fail { .. });
                let (ta, tb) = tokens.pick(tok);
                let ttl = Duration::from_secs(ttl);
                let (a, b) = if failed {
                    (
                        sqlite.fail(&id(key), ta, out("\"e\""), ttl).await,
                        memory.fail(&id(key), tb, out("\"e\""), ttl).await,
                    )
                } else {
                    (
                        sqlite.complete(&id(key), ta, out("1"), ttl).await,
                        memory.complete(&id(key), tb, out("1"), ttl).await,
                    )
                };
                prop_assert_eq!(err_shape(&a, Some(tokens)), err_shape(&b, None), "{}", ctx);
            }
            Op::Release { key, tok } => {
                let (ta, tb) = tokens.pick(tok);
                let a = sqlite.release(&id(key), ta).await;
                let b = memory.release(&id(key), tb).await;
                prop_assert_eq!(err_shape(&a, Some(tokens)), err_shape(&b, None), "{}", ctx);
            }
            Op::Renew { key, tok, lease } => {
                let (ta, tb) = tokens.pick(tok);
                let lease = Duration::from_secs(lease);
                let a = sqlite.renew(&id(key), ta, lease).await;
                let b = memory.renew(&id(key), tb, lease).await;
                prop_assert_eq!(err_shape(&a, Some(tokens)), err_shape(&b, None), "{}", ctx);
                prop_assert_eq!(a.ok(), b.ok(), "{}", ctx);
            }
            Op::Purge { key } => {
                let a = sqlite.purge(&id(key)).await.unwrap();
                let b = memory.purge(&id(key)).await.unwrap();
                prop_assert_eq!(a, b, "{}", ctx);
            }
            Op::Get { key } => {
                let a = sqlite.get(&id(key)).await.unwrap();
                let b = memory.get(&id(key)).await.unwrap();
                prop_assert_eq!(a.map(|r| mapped(r, tokens)), b, "{}", ctx);
            }
            Op::Advance { secs } => {
                c1.advance(Duration::from_secs(secs));
                c2.advance(Duration::from_secs(secs));
            }
            Op::Sweep => {
                sqlite.sweep().await.unwrap();
                memory.sweep().await.unwrap();
            }
            Op::Stats => {
                let a = sqlite.stats().await.unwrap();
                let b = memory.stats().await.unwrap();
                prop_assert_eq!(
                    (a.in_progress, a.ambiguous, a.completed, a.failed),
                    (b.in_progress, b.ambiguous, b.completed, b.failed),
                    "{}",
                    ctx
                );
            }
            Op::List => {
                let q = ListQuery::default();
                let a = sqlite.list(&q).await.unwrap();
                let b = memory.list(&q).await.unwrap();
                let a: Vec<Record> = a
                    .records
                    .into_iter()
                    .map(|r| {
                        let k: usize = r.id.key[1..].parse().unwrap();
                        mapped(r, &per_key[k])
                    })
                    .collect();
                prop_assert_eq!(a, b.records, "{}", ctx);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn sqlite_store_answers_like_the_memory_store(ops in proptest::collection::vec(op(), 1..50)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops))?;
    }
}
