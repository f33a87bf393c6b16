//! Unit tests of `MemoryStore` specifics: sharding, lazy expiry, notified waiting, and a
//! model-based property test of the whole state machine. The store-independent contract
//! is checked by `conformance_memory.rs` through the testkit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use idemp::clock::{Clock, ManualClock, Millis};
use idemp::store::{
    Claim, ClaimOutcome, Codec, Fingerprint, ListQuery, MemoryStore, Outcome, RecordKey, State,
    Store, StoreAdmin, StoreError, Token,
};
use proptest::prelude::*;

const T0: Millis = 1_000_000;
const HOUR: Duration = Duration::from_secs(3600);

fn store_with_clock() -> (MemoryStore, ManualClock) {
    let clock = ManualClock::new(T0);
    let store = MemoryStore::builder()
        .clock(Arc::new(clock.clone()))
        .shards(4)
        .build();
    (store, clock)
}

fn id(k: &str) -> RecordKey {
    RecordKey::new("s", k)
}

async fn acquire(store: &MemoryStore, claim: &Claim) -> Token {
    match store.claim(claim).await.unwrap() {
        ClaimOutcome::Acquired { token, .. } => token,
        other => panic!("expected Acquired for {}, got {other:?}", claim.id),
    }
}

fn outcome(bytes: &[u8]) -> Outcome {
    Outcome::new(Codec::Raw, bytes.to_vec())
}

#[test]
fn shard_count_is_a_power_of_two() {
    assert_eq!(MemoryStore::builder().shards(0).build().shard_count(), 1);
    assert_eq!(MemoryStore::builder().shards(3).build().shard_count(), 4);
    assert_eq!(MemoryStore::builder().shards(64).build().shard_count(), 64);
    assert_eq!(
        MemoryStore::builder()
            .shards(usize::MAX)
            .build()
            .shard_count(),
        1 << 16
    );
    let presized = MemoryStore::builder().shards(4).capacity(10_000).build();
    assert_eq!(presized.shard_count(), 4);
    assert_eq!(presized.entry_count(), 0);
    let default = MemoryStore::new().shard_count();
    assert!(default.is_power_of_two() && default >= 4, "{default}");
}

#[tokio::test]
async fn one_shard_store_keeps_tokens_increasing_per_key() {
    // With a single shard every key shares one counter; tokens still only grow.
    let store = MemoryStore::builder().shards(1).build();
    let mut last = 0;
    for round in 0..3 {
        for k in ["a", "b", "c"] {
            let t = acquire(&store, &Claim::new(id(k))).await;
            assert!(t > last, "round {round} key {k}: {t} <= {last}");
            last = t;
            if round % 2 == 0 {
                store.release(&id(k), t).await.unwrap();
            } else {
                assert!(store.purge(&id(k)).await.unwrap());
            }
        }
    }
}

#[tokio::test]
async fn expired_settled_records_are_removed_lazily_and_by_sweep() {
    let (store, clock) = store_with_clock();
    for k in ["a", "b", "c"] {
        let t = acquire(&store, &Claim::new(id(k))).await;
        store
            .complete(&id(k), t, outcome(b"x"), Duration::from_secs(10))
            .await
            .unwrap();
    }
    assert_eq!(store.entry_count(), 3);
    clock.advance(Duration::from_secs(10));
    // Invisible at exactly expires_at, but still held until touched.
    assert_eq!(store.entry_count(), 3);
    assert_eq!(store.get(&id("a")).await.unwrap(), None);
    assert_eq!(store.entry_count(), 2, "get removes the expired record");
    assert_eq!(store.stats().await.unwrap().completed, 0);
    assert_eq!(store.sweep().await.unwrap(), 2);
    assert_eq!(store.entry_count(), 0);
    assert_eq!(store.sweep().await.unwrap(), 0);
}

#[tokio::test]
async fn abandoned_in_progress_expires_ttl_after_its_lease() {
    let (store, clock) = store_with_clock();
    let claim = Claim::new(id("a"))
        .lease(Duration::from_secs(5))
        .ttl(Duration::from_secs(100));
    acquire(&store, &claim).await;
    clock.advance(Duration::from_secs(50));
    let rec = store
        .get(&id("a"))
        .await
        .unwrap()
        .expect("ambiguous record");
    assert!(rec.is_ambiguous(clock.now_ms()));
    assert_eq!(store.stats().await.unwrap().ambiguous, 1);
    assert_eq!(store.sweep().await.unwrap(), 0);
    clock.advance(Duration::from_secs(55));
    assert_eq!(store.get(&id("a")).await.unwrap(), None);
    // A new claim starts afresh (attempt 1, no takeover) with a larger token.
    match store.claim(&claim).await.unwrap() {
        ClaimOutcome::Acquired {
            takeover, attempt, ..
        } => {
            assert_eq!((takeover, attempt), (None, 1));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn claim_reuses_an_expired_slot_with_a_larger_token() {
    let (store, clock) = store_with_clock();
    let claim = Claim::new(id("a")).ttl(Duration::from_secs(1));
    let t1 = acquire(&store, &claim).await;
    store
        .complete(&id("a"), t1, outcome(b"1"), claim.ttl)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(1));
    let t2 = acquire(&store, &claim).await;
    assert!(t2 > t1);
    assert_eq!(store.entry_count(), 1);
    // The old owner stays fenced.
    assert!(matches!(
        store.complete(&id("a"), t1, outcome(b"old"), HOUR).await,
        Err(StoreError::Fenced { current: Some(c), .. }) if c == t2
    ));
}

/// With paused time a lost wake-up would make `wait` run into its (virtual) timeout
/// and return the in-progress record: the assertions below would catch it.
#[tokio::test(start_paused = true)]
async fn wait_is_woken_by_complete_release_and_purge() {
    let store = Arc::new(MemoryStore::new());
    for action in ["complete", "fail", "release", "purge"] {
        let key = id(action);
        let token = acquire(&store, &Claim::new(key.clone())).await;
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let store = store.clone();
                let key = key.clone();
                tokio::spawn(async move { store.wait(&key, HOUR).await.unwrap() })
            })
            .collect();
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        match action {
            "complete" => store
                .complete(&key, token, outcome(b"v"), HOUR)
                .await
                .unwrap(),
            "fail" => store.fail(&key, token, outcome(b"e"), HOUR).await.unwrap(),
            "release" => store.release(&key, token).await.unwrap(),
            _ => assert!(store.purge(&key).await.unwrap()),
        }
        for w in waiters {
            let got = w.await.unwrap();
            match action {
                "complete" => assert_eq!(got.unwrap().state, State::Completed(outcome(b"v"))),
                "fail" => assert_eq!(got.unwrap().state, State::Failed(outcome(b"e"))),
                _ => assert_eq!(got, None, "{action}"),
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{action}: waiters ran into their timeout instead of being notified"
        );
    }
}

/// Waiters racing with settles on other threads: a lost wake-up would leave a waiter
/// to run into its 60 s timeout and return the in-progress record, which fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_lost_wakeups_under_concurrency() {
    let store = Arc::new(MemoryStore::builder().shards(4).build());
    let keys = 2000usize;
    let expected = |k: usize| match k % 4 {
        3 => None,
        0 | 2 => Some(State::Completed(outcome(b"even"))),
        _ => Some(State::Completed(outcome(b"odd"))),
    };
    let mut waiters = Vec::new();
    let mut settlers = Vec::new();
    for k in 0..keys {
        let key = id(&format!("w{k}"));
        let token = acquire(&store, &Claim::new(key.clone())).await;
        for _ in 0..3 {
            let (store, key) = (store.clone(), key.clone());
            waiters.push(tokio::spawn(async move {
                let rec = store.wait(&key, Duration::from_secs(60)).await.unwrap();
                (k, rec.map(|r| r.state))
            }));
        }
        let store = store.clone();
        settlers.push(tokio::spawn(async move {
            for _ in 0..(k % 3) {
                tokio::task::yield_now().await;
            }
            match expected(k) {
                None => store.release(&key, token).await.unwrap(),
                Some(State::Completed(out)) => {
                    store.complete(&key, token, out, HOUR).await.unwrap()
                }
                Some(other) => unreachable!("{other:?}"),
            }
        }));
    }
    for s in settlers {
        s.await.unwrap();
    }
    for w in waiters {
        let (k, state) = w.await.unwrap();
        assert_eq!(
            state,
            expected(k),
            "key w{k}: waiter returned the wrong state"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn wait_accepts_an_unrepresentable_timeout() {
    let store = Arc::new(MemoryStore::new());
    let token = acquire(&store, &Claim::new(id("a"))).await;
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move { store.wait(&id("a"), Duration::MAX).await.unwrap() })
    };
    tokio::task::yield_now().await;
    store
        .complete(&id("a"), token, outcome(b"v"), HOUR)
        .await
        .unwrap();
    let rec = waiter.await.unwrap().expect("record");
    assert_eq!(rec.state, State::Completed(outcome(b"v")));
}

#[tokio::test(start_paused = true)]
async fn wait_times_out_with_the_in_progress_record() {
    let store = MemoryStore::new();
    let token = acquire(&store, &Claim::new(id("a"))).await;
    let rec = store
        .wait(&id("a"), Duration::from_secs(2))
        .await
        .unwrap()
        .expect("record");
    assert_eq!(rec.token, token);
    assert!(!rec.state.is_settled());
    assert_eq!(store.wait(&id("none"), HOUR).await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn wait_follows_a_record_replaced_after_expiry() {
    let clock = ManualClock::new(T0);
    let store = Arc::new(
        MemoryStore::builder()
            .clock(Arc::new(clock.clone()))
            .build(),
    );
    let claim = Claim::new(id("a"))
        .lease(Duration::from_secs(1))
        .ttl(Duration::from_secs(1));
    acquire(&store, &claim).await;
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move { store.wait(&id("a"), HOUR).await.unwrap() })
    };
    tokio::task::yield_now().await;
    // The abandoned record expires and a new claim replaces it: the waiter must now
    // wait for the new owner, and be woken by its completion.
    clock.advance(Duration::from_secs(3));
    let t2 = acquire(&store, &claim).await;
    tokio::task::yield_now().await;
    assert!(
        !waiter.is_finished(),
        "waiter returned before the new owner settled"
    );
    store
        .complete(&id("a"), t2, outcome(b"2"), HOUR)
        .await
        .unwrap();
    let rec = waiter.await.unwrap().expect("completed record");
    assert_eq!(rec.token, t2);
    assert_eq!(rec.state, State::Completed(outcome(b"2")));
}

#[tokio::test]
async fn list_skips_expired_and_pages_in_order() {
    let (store, clock) = store_with_clock();
    for (i, k) in ["d", "a", "c", "b", "e"].iter().enumerate() {
        let ttl = Duration::from_secs(if *k == "c" { 1 } else { 100 });
        let t = acquire(&store, &Claim::new(id(k))).await;
        store
            .complete(&id(k), t, outcome(&[i as u8]), ttl)
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(1));
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(&ListQuery {
                after,
                limit: 2,
                ..ListQuery::default()
            })
            .await
            .unwrap();
        seen.extend(page.records.into_iter().map(|r| r.id.key));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, ["a", "b", "d", "e"]);
}

// ---------------------------------------------------------------------------------
// Model-based property test: random operation sequences on a few keys, checked step by
// step against a straightforward reference model of the contract.

#[derive(Clone, Debug)]
enum Op {
    Claim {
        key: usize,
        fp: Option<u8>,
        take_over: bool,
    },
    Complete {
        key: usize,
        stale: bool,
    },
    Fail {
        key: usize,
        stale: bool,
    },
    Release {
        key: usize,
        stale: bool,
    },
    Renew {
        key: usize,
        stale: bool,
    },
    Purge {
        key: usize,
    },
    Advance(u64),
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..3usize;
    prop_oneof![
        3 => (key.clone(), proptest::option::of(0..2u8), any::<bool>())
            .prop_map(|(key, fp, take_over)| Op::Claim { key, fp, take_over }),
        2 => (key.clone(), any::<bool>()).prop_map(|(key, stale)| Op::Complete { key, stale }),
        1 => (key.clone(), any::<bool>()).prop_map(|(key, stale)| Op::Fail { key, stale }),
        1 => (key.clone(), any::<bool>()).prop_map(|(key, stale)| Op::Release { key, stale }),
        1 => (key.clone(), any::<bool>()).prop_map(|(key, stale)| Op::Renew { key, stale }),
        1 => key.prop_map(|key| Op::Purge { key }),
        2 => (0..40u64).prop_map(Op::Advance),
        1 => Just(Op::Sweep),
    ]
}

const LEASE: u64 = 10;
const TTL: u64 = 25;

#[derive(Clone, Debug)]
struct ModelRecord {
    fp: Option<u8>,
    token: Token,
    attempts: u32,
    /// `None` when settled.
    lease_until: Option<Millis>,
    settled: Option<(bool, Millis)>, // (completed, expires_at)
}

impl ModelRecord {
    fn expired(&self, now: Millis) -> bool {
        match (self.lease_until, self.settled) {
            (_, Some((_, exp))) => exp <= now,
            (Some(l), None) => l + TTL <= now,
            (None, None) => unreachable!(),
        }
    }
}

fn fp_of(b: Option<u8>) -> Option<Fingerprint> {
    b.map(|b| Fingerprint([b; 32]))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn memory_store_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let clock = ManualClock::new(T0);
            let store = MemoryStore::builder().clock(Arc::new(clock.clone())).shards(2).build();
            let mut model: HashMap<usize, ModelRecord> = HashMap::new();
            // Every token ever issued per key, to check monotonicity and for stale ops.
            let mut issued: HashMap<usize, Vec<Token>> = HashMap::new();
            for (step, op) in ops.iter().enumerate() {
                let now = clock.now_ms();
                model.retain(|_, r| !r.expired(now));
                let ctx = format!("step {step}: {op:?}");
                match *op {
                    Op::Claim { key, fp, take_over } => {
                        let claim = Claim::new(RecordKey::new("m", key.to_string()))
                            .fingerprint(fp_of(fp))
                            .lease(Duration::from_millis(LEASE))
                            .ttl(Duration::from_millis(TTL))
                            .take_over_expired(take_over);
                        let got = store.claim(&claim).await.unwrap();
                        let expected_acquire = match model.get(&key) {
                            None => Some((None, 1)),
                            Some(r) if matches!((r.fp, fp), (Some(a), Some(b)) if a != b) => {
                                prop_assert!(matches!(got, ClaimOutcome::Mismatch(_)), "{ctx}: {got:?}");
                                None
                            }
                            Some(r) if r.lease_until.is_some_and(|l| l <= now) && take_over => {
                                Some((Some(r.token), r.attempts + 1))
                            }
                            Some(r) => {
                                match &got {
                                    ClaimOutcome::Existing(rec) => prop_assert_eq!(rec.token, r.token, "{}", ctx),
                                    other => prop_assert!(false, "{ctx}: expected Existing, got {other:?}"),
                                }
                                None
                            }
                        };
                        if let Some((takeover_exp, attempt_exp)) = expected_acquire {
                            match got {
                                ClaimOutcome::Acquired { token, lease_until, takeover, attempt } => {
                                    prop_assert_eq!(takeover, takeover_exp, "{}", ctx);
                                    prop_assert_eq!(attempt, attempt_exp, "{}", ctx);
                                    prop_assert_eq!(lease_until, now + LEASE, "{}", ctx);
                                    let toks = issued.entry(key).or_default();
                                    prop_assert!(toks.last().is_none_or(|&l| token > l), "{ctx}: token {token} not increasing {toks:?}");
                                    toks.push(token);
                                    let old_fp = model.get(&key).and_then(|r| r.fp);
                                    model.insert(key, ModelRecord {
                                        fp: fp.or(if takeover_exp.is_some() { old_fp } else { None }),
                                        token, attempts: attempt,
                                        lease_until: Some(lease_until), settled: None,
                                    });
                                }
                                other => prop_assert!(false, "{ctx}: expected Acquired, got {other:?}"),
                            }
                        }
                    }
                    Op::Complete { key, stale } | Op::Fail { key, stale } | Op::Release { key, stale } | Op::Renew { key, stale } => {
                        let toks = issued.get(&key).cloned().unwrap_or_default();
                        let token = if stale { toks.len().checked_sub(2).map(|i| toks[i]) } else { toks.last().copied() };
                        let Some(token) = token else { continue };
                        let rid = RecordKey::new("m", key.to_string());
                        let owns = model.get(&key).is_some_and(|r| r.token == token && r.settled.is_none());
                        let res = match op {
                            Op::Complete { .. } => store.complete(&rid, token, outcome(b"ok"), Duration::from_millis(TTL)).await.map(|_| ()),
                            Op::Fail { .. } => store.fail(&rid, token, outcome(b"err"), Duration::from_millis(TTL)).await.map(|_| ()),
                            Op::Release { .. } => store.release(&rid, token).await,
                            _ => match store.renew(&rid, token, Duration::from_millis(LEASE)).await {
                                Ok(l) => {
                                    prop_assert_eq!(l, now + LEASE, "{}", ctx);
                                    Ok(())
                                }
                                Err(e) => Err(e),
                            },
                        };
                        if owns {
                            prop_assert!(res.is_ok(), "{ctx}: {res:?}");
                            match op {
                                Op::Complete { .. } | Op::Fail { .. } => {
                                    let r = model.get_mut(&key).unwrap();
                                    r.lease_until = None;
                                    r.settled = Some((matches!(op, Op::Complete { .. }), now + TTL));
                                }
                                Op::Release { .. } => { model.remove(&key); }
                                _ => model.get_mut(&key).unwrap().lease_until = Some(now + LEASE),
                            }
                        } else {
                            let current = model.get(&key).map(|r| r.token);
                            prop_assert!(
                                matches!(res, Err(StoreError::Fenced { current: c, token: t, .. }) if c == current && t == token),
                                "{ctx}: expected Fenced(current {current:?}), got {res:?}"
                            );
                        }
                    }
                    Op::Purge { key } => {
                        let existed = store.purge(&RecordKey::new("m", key.to_string())).await.unwrap();
                        prop_assert_eq!(existed, model.remove(&key).is_some(), "{}", ctx);
                    }
                    Op::Advance(ms) => clock.advance(Duration::from_millis(ms)),
                    Op::Sweep => {
                        store.sweep().await.unwrap();
                        prop_assert_eq!(store.entry_count(), model.len(), "{}", ctx);
                    }
                }
                // After every step the visible state equals the model.
                let now = clock.now_ms();
                for key in 0..3usize {
                    let got = store.get(&RecordKey::new("m", key.to_string())).await.unwrap();
                    let want = model.get(&key).filter(|r| !r.expired(now));
                    match (got, want) {
                        (None, None) => {}
                        (Some(rec), Some(m)) => {
                            prop_assert_eq!(rec.token, m.token, "{} key {}", ctx, key);
                            prop_assert_eq!(rec.attempts, m.attempts, "{} key {}", ctx, key);
                            prop_assert_eq!(rec.fingerprint, fp_of(m.fp), "{} key {}", ctx, key);
                            match (&rec.state, m.settled, m.lease_until) {
                                (State::InProgress { lease_until }, None, Some(l)) => prop_assert_eq!(*lease_until, l, "{}", ctx),
                                (State::Completed(_), Some((true, exp)), _) | (State::Failed(_), Some((false, exp)), _) => {
                                    prop_assert_eq!(rec.expires_at, Some(exp), "{}", ctx)
                                }
                                (s, settled, lease) => prop_assert!(false, "{ctx} key {key}: state {s:?} vs model {settled:?}/{lease:?}"),
                            }
                        }
                        (got, want) => prop_assert!(false, "{ctx} key {key}: store {got:?} vs model {want:?}"),
                    }
                }
                let stats = store.stats().await.unwrap();
                let live: Vec<_> = model.values().filter(|r| !r.expired(now)).collect();
                prop_assert_eq!(stats.completed, live.iter().filter(|r| matches!(r.settled, Some((true, _)))).count() as u64, "{}", ctx);
                prop_assert_eq!(stats.failed, live.iter().filter(|r| matches!(r.settled, Some((false, _)))).count() as u64, "{}", ctx);
                prop_assert_eq!(stats.ambiguous, live.iter().filter(|r| r.lease_until.is_some_and(|l| l <= now)).count() as u64, "{}", ctx);
                prop_assert_eq!(stats.in_progress, live.iter().filter(|r| r.lease_until.is_some_and(|l| l > now)).count() as u64, "{}", ctx);
            }
            Ok(())
        })?;
    }
}

// ---- bounded store (`max_entries`) ----

/// Claims and completes `per_task` unique keys in each of `tasks` tasks; returns how
/// many claims were refused with `Capacity`.
async fn unique_key_storm(
    store: &Arc<MemoryStore>,
    tag: &str,
    tasks: usize,
    per_task: usize,
) -> u64 {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = store.clone();
        let tag = tag.to_string();
        handles.push(tokio::spawn(async move {
            let mut refused = 0u64;
            for i in 0..per_task {
                let key = id(&format!("{tag}-{t}-{i}"));
                match store.claim(&Claim::new(key.clone())).await {
                    Ok(ClaimOutcome::Acquired { token, .. }) => store
                        .complete(&key, token, outcome(b"ok"), HOUR)
                        .await
                        .unwrap(),
                    Ok(other) => panic!("{key}: a unique key found {other:?}"),
                    Err(StoreError::Capacity { .. }) => refused += 1,
                    Err(e) => panic!("{key}: {e}"),
                }
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            refused
        }));
    }
    let mut refused = 0;
    for h in handles {
        refused += h.await.unwrap();
    }
    refused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bound_holds_under_a_storm_of_unique_keys() {
    let max = 1_000;
    let store = Arc::new(MemoryStore::builder().shards(4).max_entries(max).build());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Samples the count while the storm runs: it never exceeds the bound.
    let sampler = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut samples, mut peak) = (0u64, 0usize);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(store.entry_count());
                samples += 1;
                tokio::task::yield_now().await;
            }
            (samples, peak)
        })
    };
    let (tasks, per_task) = (8, 2_500);
    let refused = unique_key_storm(&store, "storm", tasks, per_task).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (samples, peak) = sampler.await.unwrap();
    assert!(samples > 0);
    assert!(peak <= max, "peak {peak} > {max}");
    assert_eq!(refused, 0, "settled records can always make room");
    let held = store.entry_count();
    assert!(held <= max && held > max / 2, "{held}");
    // Nothing expired (1 h ttl): every record that left was evicted.
    assert_eq!(store.evictions(), (tasks * per_task - held) as u64);
    assert_eq!(store.stats().await.unwrap().completed, held as u64);
    // The newest records replay.
    for i in 0..20 {
        let key = id(&format!("after-{i}"));
        let token = acquire(&store, &Claim::new(key.clone())).await;
        store
            .complete(&key, token, outcome(b"new"), HOUR)
            .await
            .unwrap();
    }
    for i in 0..20 {
        let rec = store.get(&id(&format!("after-{i}"))).await.unwrap();
        assert_eq!(
            rec.map(|r| r.state),
            Some(State::Completed(outcome(b"new")))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_progress_records_are_never_evicted() {
    let store = Arc::new(MemoryStore::builder().shards(2).max_entries(600).build());
    // 200 owners hold their claims while 16,000 unique keys pass through.
    let mut owners = Vec::new();
    for i in 0..200 {
        let key = id(&format!("held-{i}"));
        owners.push((key.clone(), acquire(&store, &Claim::new(key)).await));
    }
    let refused = unique_key_storm(&store, "pass", 8, 2_000).await;
    assert!(store.evictions() >= 16_000 - 600, "{}", store.evictions());
    // A shard holds up to 300: with ≤ 200 held it always found a settled record.
    assert_eq!(refused, 0);
    for (key, token) in &owners {
        let rec = store
            .get(key)
            .await
            .unwrap()
            .expect("a held record was evicted");
        assert_eq!(rec.token, *token);
        assert!(!rec.state.is_settled());
        store
            .complete(key, *token, outcome(b"mine"), HOUR)
            .await
            .unwrap();
    }
    // Settled now: they become evictable like any other.
    let before = store.evictions();
    unique_key_storm(&store, "again", 4, 1_000).await;
    assert_eq!(store.evictions() - before, 4_000);
    let survivors = owners.iter().filter(|(k, _)| {
        futures_util::FutureExt::now_or_never(store.get(k))
            .and_then(|r| r.unwrap())
            .is_some()
    });
    assert_eq!(survivors.count(), 0, "4,000 newer records pushed them out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_full_of_in_progress_records_refuses_new_keys_without_growing() {
    let store = Arc::new(MemoryStore::builder().shards(1).max_entries(64).build());
    let mut owners = Vec::new();
    for i in 0..64 {
        let key = id(&format!("held-{i}"));
        owners.push((key.clone(), acquire(&store, &Claim::new(key)).await));
    }
    let refused = unique_key_storm(&store, "refused", 4, 250).await;
    assert_eq!(refused, 1_000, "every new key is refused");
    assert_eq!((store.entry_count(), store.evictions()), (64, 0));
    // Existing keys are still answered, and the owners are untouched.
    match store.claim(&Claim::new(owners[0].0.clone())).await.unwrap() {
        ClaimOutcome::Existing(rec) => assert_eq!(rec.token, owners[0].1),
        other => panic!("{other:?}"),
    }
    // One release makes room for exactly one new key.
    store.release(&owners[0].0, owners[0].1).await.unwrap();
    acquire(&store, &Claim::new(id("fits"))).await;
    assert!(matches!(
        store.claim(&Claim::new(id("does-not"))).await,
        Err(StoreError::Capacity { max_entries: 64 })
    ));
}

#[tokio::test]
async fn a_memory_url_opens_a_bounded_store() {
    let store = idemp::store::open("memory:?max_entries=2").await.unwrap();
    for k in ["a", "b"] {
        assert!(matches!(
            store.claim(&Claim::new(id(k))).await.unwrap(),
            ClaimOutcome::Acquired { .. }
        ));
    }
    let err = store.claim(&Claim::new(id("c"))).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Capacity { max_entries: 2 }),
        "{err}"
    );
    assert!(err.is_transient(), "{err}");
    let bad = match idemp::store::open("memory:?max_entries=none").await {
        Err(e) => e.to_string(),
        Ok(s) => panic!("opened {s:?}"),
    };
    assert!(
        bad.contains("max_entries=none") && bad.contains("whole number"),
        "{bad}"
    );
}
