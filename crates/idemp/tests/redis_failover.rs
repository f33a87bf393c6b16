//! Failover of a replicated Redis in the middle of a storm of completions, on a private
//! primary and replica (`--save "" --appendonly no`) that the test spawns on free
//! loopback ports: the primary is killed with SIGKILL, the replica promoted
//! (`REPLICAOF NO ONE`), and a new store pointed at it retries every completion the
//! old one acknowledged.
//!
//! * With `wait_replicas=1` no acknowledged completion may be lost: every retry
//!   replays.
//! * Without it, replication is asynchronous and the completions acknowledged just
//!   before the kill may be gone; their retries would run again. The test counts and
//!   prints them (it may be 0 by luck, so it asserts nothing about the count).
//!
//! In both rounds the replica lags for a second (`DEBUG SLEEP 1`) and the primary is
//! killed 400 ms into the lag, the case asynchronous replication cannot cover.
#![cfg(feature = "redis")]

mod redis_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use idemp::store::redis::{RedisOptions, RedisStore};
use idemp::store::{Claim, ClaimOutcome, Codec, Outcome, RecordKey, State, Store, StoreUrl};
use parking_lot::Mutex;
use redis_support::*;

const TASKS: usize = 16;
/// Acknowledged completions before the primary is killed.
const ACKED_BEFORE_KILL: usize = 3_000;

/// A primary and its replica, both private and killed on drop.
struct Pair {
    primary: PrivateRedis,
    replica: PrivateRedis,
}

fn info(server: &PrivateRedis) -> String {
    redis::cmd("INFO")
        .arg("replication")
        .query(&mut server.admin())
        .unwrap_or_default()
}

impl Pair {
    fn start() -> Self {
        let no_persistence = [
            "--save",
            "",
            "--appendonly",
            "no",
            "--enable-debug-command",
            "yes",
        ];
        let primary = PrivateRedis::start(&no_persistence);
        let port = primary.port.to_string();
        let mut replica_args = no_persistence.to_vec();
        replica_args.extend(["--replicaof", "127.0.0.1", &port]);
        let replica = PrivateRedis::start(&replica_args);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(info(&replica).contains("master_link_status:up")
            && info(&primary).contains("connected_slaves:1"))
        {
            assert!(
                Instant::now() < deadline,
                "the replica did not sync: {}",
                info(&replica)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { primary, replica }
    }
}

async fn connect(url: &str, prefix: &str, wait: Option<Duration>) -> RedisStore {
    let url: StoreUrl = url.parse().unwrap();
    let mut options = RedisOptions::default()
        .prefix(prefix)
        .check_durability(false)
        .response_timeout(Duration::from_secs(2))
        .connection_timeout(Duration::from_millis(300))
        .reconnect_retries(0);
    if let Some(timeout) = wait {
        options = options.wait_replicas(1, timeout);
    }
    RedisStore::connect_with(&url, options)
        .await
        .expect("private server reachable")
}

fn outcome(key: &str) -> Outcome {
    Outcome::new(Codec::Raw, key.as_bytes().to_vec())
}

/// What a failover round found.
#[derive(Debug)]
struct Round {
    /// Completions the old primary acknowledged.
    acked: usize,
    /// Acknowledged completions whose retry on the promoted replica would run again.
    duplicates: usize,
    /// Acknowledged completions whose retry finds the claim but not the completion
    /// (in progress: blocked until the lease passes, then ambiguous).
    completion_lost: usize,
    /// Acknowledged completions per second before the kill.
    ops_per_sec: f64,
    /// Errors before the kill (e.g. `NotReplicated`), as text.
    early_errors: Vec<String>,
}

async fn failover_round(tag: &str, wait: Option<Duration>) -> Round {
    let pair = Pair::start();
    let mut pair = pair;
    let prefix = unique_prefix(tag);
    let store = Arc::new(connect(&pair.primary.url(), &prefix, wait).await);
    // The durability check says what a failover may lose, unless we wait for replicas.
    let report = store.durability().await.unwrap();
    let warns_failover = report.warnings.iter().any(|w| w.contains("failover"));
    assert_eq!(warns_failover, wait.is_none(), "{report}");

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let killed = Arc::new(AtomicBool::new(false));
    let early = Arc::new(Mutex::new(Vec::<String>::new()));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (store, acked, killed, early, count) = (
            store.clone(),
            acked.clone(),
            killed.clone(),
            early.clone(),
            count.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let key = format!("{t}-{i}");
                let id = RecordKey::new("failover", &key);
                let result = match store.claim(&Claim::new(id.clone())).await {
                    Ok(ClaimOutcome::Acquired { token, .. }) => {
                        store
                            .complete(&id, token, outcome(&key), Duration::from_secs(3600))
                            .await
                    }
                    Ok(other) => panic!("{key}: a unique key found {other:?}"),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => {
                        acked.lock().push(key);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) if killed.load(Ordering::SeqCst) => return,
                    Err(e) => {
                        early.lock().push(e.to_string());
                        if early.lock().len() > 100 {
                            return;
                        }
                    }
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while count.load(Ordering::Relaxed) < ACKED_BEFORE_KILL as u64 {
        assert!(
            Instant::now() < deadline,
            "storm too slow: {count:?}; errors: {:?}",
            early.lock()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    let before_kill = count.load(Ordering::Relaxed);
    // A lagging replica: it stops reading for a second (`DEBUG SLEEP`), as one does
    // under load or across a slow link, and the primary dies during the lag with 16
    // tasks' writes in flight.
    let mut lagging = pair.replica.admin();
    let lag = std::thread::spawn(move || {
        let _: redis::RedisResult<String> =
            redis::cmd("DEBUG").arg("SLEEP").arg(1).query(&mut lagging);
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    killed.store(true, Ordering::SeqCst);
    pair.primary.kill9();
    lag.join().unwrap();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("storm tasks stop after the kill")
            .unwrap();
    }
    let _: String = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut pair.replica.admin())
        .unwrap();

    let promoted = connect(&pair.replica.url(), &prefix, None).await;
    let acked = acked.lock().clone();
    let (mut duplicates, mut completion_lost) = (0, 0);
    for key in &acked {
        let id = RecordKey::new("failover", key);
        // The caller's retry after the failover.
        match promoted.claim(&Claim::new(id)).await.unwrap() {
            ClaimOutcome::Existing(rec) if rec.state == State::Completed(outcome(key)) => {}
            ClaimOutcome::Existing(rec) if !rec.state.is_settled() => completion_lost += 1,
            ClaimOutcome::Acquired { .. } => duplicates += 1,
            other => panic!("{key}: {other:?}"),
        }
    }
    let early_errors = early.lock().clone();
    Round {
        acked: acked.len(),
        duplicates,
        completion_lost,
        ops_per_sec: before_kill as f64 / elapsed.as_secs_f64(),
        early_errors,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_wait_replicas_no_acknowledged_completion_is_lost() {
    let round = failover_round("failover-wait", Some(Duration::from_secs(5))).await;
    eprintln!(
        "with wait_replicas=1: {} completions acknowledged ({:.0}/s before the kill, {TASKS} tasks), {} would run again, {} lost their completion",
        round.acked, round.ops_per_sec, round.duplicates, round.completion_lost
    );
    assert!(round.acked >= ACKED_BEFORE_KILL, "{round:?}");
    assert!(round.early_errors.is_empty(), "{:?}", round.early_errors);
    assert_eq!(
        (round.duplicates, round.completion_lost),
        (0, 0),
        "an acknowledged completion was lost by the failover: {round:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_wait_replicas_a_failover_may_lose_completions() {
    let round = failover_round("failover-async", None).await;
    eprintln!(
        "without wait_replicas: {} completions acknowledged ({:.0}/s before the kill, {TASKS} tasks), {} would run again after the failover, {} lost their completion (in progress)",
        round.acked, round.ops_per_sec, round.duplicates, round.completion_lost
    );
    assert!(round.acked >= ACKED_BEFORE_KILL, "{round:?}");
    assert!(round.early_errors.is_empty(), "{:?}", round.early_errors);
    // Each acknowledged completion is either on the replica or counted above.
    assert!(round.duplicates + round.completion_lost <= round.acked);
}

/// Once the only replica is gone, each write fails as `NotReplicated`: applied on the
/// primary, outcome unknown, transient; a retried `complete` reports the caller's own
/// settle through `Fenced { current: own token }`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_replicas_fail_writes_as_not_replicated() {
    let mut pair = Pair::start();
    let prefix = unique_prefix("failover-noack");
    let store = connect(
        &pair.primary.url(),
        &prefix,
        Some(Duration::from_millis(200)),
    )
    .await;
    let id = RecordKey::new("failover", "k");
    let ClaimOutcome::Acquired { token, .. } = store.claim(&Claim::new(id.clone())).await.unwrap()
    else {
        panic!("a fresh key is acquired");
    };
    pair.replica.kill9();
    let err = store
        .complete(&id, token, outcome("k"), Duration::from_secs(3600))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            idemp::StoreError::NotReplicated {
                wanted: 1,
                acked: 0,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.is_transient() && err.to_string().contains("outcome unknown"),
        "{err}"
    );
    // Applied on the primary all the same.
    let plain = connect(&pair.primary.url(), &prefix, None).await;
    assert_eq!(
        plain.get(&id).await.unwrap().map(|r| r.state),
        Some(State::Completed(outcome("k")))
    );
    // The durability check says the bound cannot be met (once the primary has
    // noticed the replica is gone).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = store.durability().await.unwrap();
        if report
            .warnings
            .iter()
            .any(|w| w.contains("wait_replicas is 1"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "{report}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A retry finds its own settle (Fenced on its own token), still unconfirmed.
    let retry = plain
        .complete(&id, token, outcome("k"), Duration::from_secs(3600))
        .await
        .unwrap_err();
    assert!(
        matches!(retry, idemp::StoreError::Fenced { current: Some(c), .. } if c == token),
        "{retry}"
    );
}
