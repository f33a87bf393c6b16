//! Fault tests of the Redis store, each against a private `redis-server` it spawns on
//! a free port (never the shared server): restarts and killed connections in the
//! middle of a storm, `kill -9` with AOF, lost notification subscriptions, and the
//! durability check.
#![cfg(feature = "redis")]

mod redis_support;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use idemp::store::redis::{RedisOptions, RedisStore};
use idemp::store::{
    Claim, ClaimOutcome, Codec, Outcome, RecordKey, State, Store, StoreError, StoreUrl,
};
use parking_lot::Mutex;
use redis_support::*;

async fn private_store(server: &PrivateRedis, prefix: &str) -> RedisStore {
    let url: StoreUrl = server.url().parse().unwrap();
    RedisStore::connect_with(
        &url,
        RedisOptions::default()
            .prefix(prefix)
            .response_timeout(Duration::from_secs(2))
            .connection_timeout(Duration::from_millis(500)),
    )
    .await
    .expect("private server reachable")
}

#[derive(Default)]
struct Storm {
    effects: Vec<AtomicU32>,
    completed: AtomicU64,
    unavailable: AtomicU64,
    other_errors: Mutex<Vec<String>>,
}

fn rid(i: usize) -> RecordKey {
    RecordKey::new("storm", format!("k{i:04}"))
}

/// `tasks` workers each try to run every one of `keys` operations (in a rotated order)
/// while `fault` runs; every acquired claim counts one effect, then is completed
/// (retried while the store is unavailable).
async fn storm<F, Fut>(store: Arc<RedisStore>, keys: usize, tasks: usize, fault: F) -> Arc<Storm>
where
    F: FnOnce(Arc<Storm>) -> Fut,
    Fut: Future<Output = ()>,
{
    let state = Arc::new(Storm {
        effects: (0..keys).map(|_| AtomicU32::new(0)).collect(),
        ..Storm::default()
    });
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = store.clone();
        let state = state.clone();
        handles.push(tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
            for n in 0..keys {
                let k = (n + t * 7) % keys;
                let claim = Claim::new(rid(k)).lease(Duration::from_secs(120));
                loop {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "storm did not finish"
                    );
                    match store.claim(&claim).await {
                        Ok(ClaimOutcome::Acquired { token, .. }) => {
                            state.effects[k].fetch_add(1, Ordering::SeqCst);
                            let out = Outcome::new(Codec::Raw, k.to_le_bytes().to_vec());
                            loop {
                                assert!(
                                    tokio::time::Instant::now() < deadline,
                                    "complete never succeeded"
                                );
                                match store
                                    .complete(
                                        &claim.id,
                                        token,
                                        out.clone(),
                                        Duration::from_secs(600),
                                    )
                                    .await
                                {
                                    Ok(()) => {
                                        state.completed.fetch_add(1, Ordering::SeqCst);
                                        break;
                                    }
                                    // our settle landed but its reply was lost
                                    Err(StoreError::Fenced {
                                        current: Some(c), ..
                                    }) if c == token => {
                                        state.completed.fetch_add(1, Ordering::SeqCst);
                                        break;
                                    }
                                    Err(e) if e.is_transient() => {
                                        state.unavailable.fetch_add(1, Ordering::SeqCst);
                                        tokio::time::sleep(Duration::from_millis(10)).await;
                                    }
                                    Err(e) => {
                                        state.other_errors.lock().push(e.to_string());
                                        break;
                                    }
                                }
                            }
                            break;
                        }
                        Ok(ClaimOutcome::Existing(_)) => break,
                        Ok(ClaimOutcome::Mismatch(r)) => {
                            state.other_errors.lock().push(format!("mismatch {r:?}"));
                            break;
                        }
                        Err(e) if e.is_transient() => {
                            assert!(e.to_string().contains("redis"), "{e}");
                            state.unavailable.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err(e) => {
                            state.other_errors.lock().push(e.to_string());
                            break;
                        }
                    }
                }
            }
        }));
    }
    fault(state.clone()).await;
    for h in handles {
        h.await.expect("storm task");
    }
    state
}

/// Nothing ran twice; every effect is recorded as completed; the only keys without an
/// effect are claims whose reply was lost (left in progress, never run): at most one
/// per task and fault.
async fn check_storm(store: &RedisStore, s: &Storm, keys: usize, max_lost: usize) {
    let errors = s.other_errors.lock().clone();
    assert!(
        errors.is_empty(),
        "only Unavailable errors expected: {errors:?}"
    );
    assert!(
        s.unavailable.load(Ordering::SeqCst) > 0,
        "the fault must have hit the storm"
    );
    let mut lost_claims = 0;
    for k in 0..keys {
        let n = s.effects[k].load(Ordering::SeqCst);
        assert!(n <= 1, "key {k} ran {n} times");
        let rec = store
            .get(&rid(k))
            .await
            .unwrap()
            .expect("every key was claimed");
        match (n, &rec.state) {
            (1, State::Completed(o)) => assert_eq!(o.bytes, k.to_le_bytes().to_vec()),
            (0, State::InProgress { .. }) => lost_claims += 1,
            other => panic!("key {k}: {other:?}"),
        }
    }
    assert!(
        lost_claims <= max_lost,
        "{lost_claims} claims lost their reply"
    );
}

async fn wait_for_completions(s: &Storm, n: u64) {
    while s.completed.load(Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_mid_storm_runs_nothing_twice_and_recovers() {
    let private = PrivateRedis::start(&[]);
    let store = Arc::new(private_store(&private, &unique_prefix("restart")).await);
    let server = Arc::new(Mutex::new(private));
    let keys = 400;
    let srv = server.clone();
    let s = storm(store.clone(), keys, 64, |s| async move {
        // once the storm is under way: kill -9 the server, start it again
        wait_for_completions(&s, 50).await;
        tokio::task::spawn_blocking(move || {
            let mut server = srv.lock();
            server.kill9();
            std::thread::sleep(Duration::from_millis(300));
            server.start_again();
        })
        .await
        .unwrap();
    })
    .await;
    check_storm(&store, &s, keys, 64).await;
    // the same store object works again
    let fresh = Claim::new(RecordKey::new("after", "restart"));
    let ClaimOutcome::Acquired { token, .. } = store.claim(&fresh).await.unwrap() else {
        panic!("fresh key")
    };
    store
        .complete(
            &fresh.id,
            token,
            Outcome::new(Codec::Raw, vec![]),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_mid_storm_run_nothing_twice() {
    let server = PrivateRedis::start(&[]);
    let store = Arc::new(private_store(&server, &unique_prefix("kill")).await);
    let keys = 400;
    let url = server.url();
    let s = storm(store.clone(), keys, 64, |s| async move {
        let mut admin = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let mut total = 0;
        for round in 1..=5u64 {
            wait_for_completions(&s, round * 40).await;
            // The store may be between a kill and its reconnection: try for a while.
            for _ in 0..50 {
                let killed: u64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("normal")
                    .arg("SKIPME")
                    .arg("yes")
                    .query_async(&mut admin)
                    .await
                    .unwrap();
                total += killed;
                if killed >= 1 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        assert!(total >= 1, "the store's connections were killed mid-storm");
    })
    .await;
    check_storm(&store, &s, keys, 5 * 64).await;
    assert!(store.get(&rid(0)).await.is_ok(), "recovered");
}

#[tokio::test]
async fn completed_records_survive_kill9_with_appendfsync_always() {
    let mut server = PrivateRedis::start(&[]);
    let prefix = unique_prefix("aof");
    let store = private_store(&server, &prefix).await;
    let report = store.durability().await.unwrap();
    assert!(report.is_durable(), "{report}");
    let done = RecordKey::new("aof", "done");
    let running = RecordKey::new("aof", "running");
    let ClaimOutcome::Acquired { token: t1, .. } =
        store.claim(&Claim::new(done.clone())).await.unwrap()
    else {
        panic!()
    };
    let outcome = Outcome::new(Codec::Json, br#"{"charged":42}"#.to_vec());
    store
        .complete(&done, t1, outcome.clone(), Duration::from_secs(3600))
        .await
        .unwrap();
    let ClaimOutcome::Acquired { token: t2, .. } =
        store.claim(&Claim::new(running.clone())).await.unwrap()
    else {
        panic!()
    };

    server.kill9();
    assert!(
        store.get(&done).await.unwrap_err().is_transient(),
        "server is down"
    );
    server.start_again();

    let reopened = private_store(&server, &prefix).await;
    let rec = reopened.get(&done).await.unwrap().expect("survived");
    assert_eq!(
        (rec.token, rec.state),
        (t1, State::Completed(outcome.clone()))
    );
    let rec = reopened
        .get(&running)
        .await
        .unwrap()
        .expect("claim survived");
    assert_eq!(rec.token, t2);
    assert!(matches!(rec.state, State::InProgress { .. }));
    // a retry replays instead of running again; the old owner can still settle
    assert!(matches!(
        reopened.claim(&Claim::new(done.clone())).await.unwrap(),
        ClaimOutcome::Existing(_)
    ));
    reopened
        .complete(&running, t2, outcome.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    // the first store reconnected by itself
    assert!(store.get(&done).await.unwrap().is_some());
}

#[tokio::test]
async fn wait_survives_the_loss_of_its_subscription() {
    let server = PrivateRedis::start(&[]);
    let store = Arc::new(private_store(&server, &unique_prefix("sub")).await);
    let mut admin = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for round in 0..3 {
        let id = RecordKey::new("sub", format!("k{round}"));
        let ClaimOutcome::Acquired { token, .. } =
            store.claim(&Claim::new(id.clone())).await.unwrap()
        else {
            panic!()
        };
        let waiter = {
            let (store, id) = (store.clone(), id.clone());
            tokio::spawn(async move { store.wait(&id, Duration::from_secs(60)).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _: u64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut admin)
            .await
            .unwrap();
        store
            .complete(
                &id,
                token,
                Outcome::new(Codec::Raw, vec![round]),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        let rec = tokio::time::timeout(Duration::from_secs(20), waiter)
            .await
            .expect("the waiter re-subscribes or polls")
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(matches!(rec.state, State::Completed(_)));
    }
}

#[tokio::test]
async fn durability_check_warns_about_each_missing_prerequisite() {
    let lax = PrivateRedis::start(&["--appendonly", "no", "--maxmemory-policy", "allkeys-lru"]);
    let store = private_store(&lax, &unique_prefix("lax")).await;
    let r = store.durability().await.unwrap();
    assert_eq!(r.appendonly.as_deref(), Some("no"));
    assert_eq!(r.maxmemory_policy.as_deref(), Some("allkeys-lru"));
    assert_eq!(r.warnings.len(), 2, "{r}");
    assert!(!r.is_durable());

    let everysec = PrivateRedis::start(&["--appendfsync", "everysec"]);
    let r = private_store(&everysec, &unique_prefix("es"))
        .await
        .durability()
        .await
        .unwrap();
    assert!(r.is_durable(), "{r}");

    let nofsync =
        PrivateRedis::start(&["--appendfsync", "no", "--maxmemory-policy", "volatile-ttl"]);
    let r = private_store(&nofsync, &unique_prefix("nf"))
        .await
        .durability()
        .await
        .unwrap();
    assert_eq!(r.warnings.len(), 2, "{r}");
    assert!(r.warnings.iter().any(|w| w.contains("appendfsync")), "{r}");

    // CONFIG disabled (managed services): connecting still works, the check is skipped
    let locked = PrivateRedis::start(&["--rename-command", "CONFIG", ""]);
    let store = private_store(&locked, &unique_prefix("locked")).await;
    let r = store.durability().await.unwrap();
    assert!(r.unreadable.is_some(), "{r:?}");
    assert!(!r.is_durable());
    let ClaimOutcome::Acquired { .. } = store
        .claim(&Claim::new(RecordKey::new("s", "k")))
        .await
        .unwrap()
    else {
        panic!()
    };
}

/// Tokens do not depend on data a restart can lose: a hot key is taken over (claims
/// with a zero lease) by 8 tasks as fast as the server answers for 1.5 s, many claims
/// per millisecond, which ran millisecond tokens seconds ahead of the clock; the last
/// owner keeps its claim. The private
/// server (`--save "" --appendonly no`) is then killed and started empty. The next
/// claim's token must exceed every token issued before, and the stale owner's
/// `complete` must be `Fenced` (never settle the new owner's record).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_stay_ahead_across_a_data_losing_restart() {
    let mut server = PrivateRedis::start(&["--appendonly", "no", "--save", ""]);
    let store = Arc::new(private_store(&server, "hot").await);
    let hot = RecordKey::new("s", "hot");
    let claim = Claim::new(hot.clone()).lease(Duration::from_secs(60));
    let stop_at = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let churn = claim.clone().lease(Duration::ZERO);
        tasks.push(tokio::spawn(async move {
            let mut tokens = Vec::new();
            while tokio::time::Instant::now() < stop_at {
                if let ClaimOutcome::Acquired { token, .. } = store.claim(&churn).await.unwrap() {
                    tokens.push(token);
                }
            }
            tokens
        }));
    }
    let mut issued = Vec::new();
    for t in tasks {
        issued.extend(t.await.unwrap());
    }
    let stale = match store.claim(&claim).await.unwrap() {
        ClaimOutcome::Acquired { token, .. } => token,
        other => panic!("{other:?}"),
    };
    issued.push(stale);
    let highest = issued.iter().copied().max().unwrap();
    assert!(issued.len() > 100, "only {} claims", issued.len());

    server.kill9();
    server.start_again();
    // A fresh connection to the restarted, empty server.
    let store = private_store(&server, "hot").await;
    assert_eq!(
        store.get(&hot).await.unwrap(),
        None,
        "the restart lost the data"
    );
    let fresh = match store.claim(&claim).await.unwrap() {
        ClaimOutcome::Acquired { token, .. } => token,
        other => panic!("{other:?}"),
    };
    assert!(
        fresh > highest,
        "after the restart token {fresh} <= {highest}, the highest of {} tokens issued before",
        issued.len()
    );
    let r = store
        .complete(
            &hot,
            stale,
            Outcome::new(Codec::Raw, b"stale".to_vec()),
            Duration::from_secs(60),
        )
        .await;
    match r {
        Err(StoreError::Fenced { current, .. }) => assert_eq!(current, Some(fresh)),
        other => panic!("the stale owner's complete: expected Fenced, got {other:?}"),
    }
    store
        .complete(
            &hot,
            fresh,
            Outcome::new(Codec::Raw, b"new".to_vec()),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
}
