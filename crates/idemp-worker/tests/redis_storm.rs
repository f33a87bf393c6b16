//! Several OS processes on one Redis (the shared test server,
//! IDEMP_TEST_REDIS_URL, default redis://127.0.0.1:6379/0, under a unique key prefix
//! deleted afterwards), and `kill -9` of a worker at each point of an execution,
//! through the real `idemp-worker` binary.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idemp::clock::{Clock, SystemClock};
use idemp::store::redis::RedisStore;
use idemp::store::{
    Claim, ClaimOutcome, Codec, Outcome, RecordKey, State, Store, StoreAdmin, StoreError,
};

mod support;
use support::{StormReport, WORKER, effect_lines, run_and_kill, until_ambiguous};

fn base_url() -> String {
    std::env::var("IDEMP_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// A store URL with a prefix no other run uses, and the store (to inspect and clean).
async fn fresh(tag: &str) -> (String, RedisStore) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let prefix = format!("idemp-test-worker-{tag}-{}-{nanos:x}", std::process::id());
    let base = base_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}prefix={prefix}");
    let store = RedisStore::connect(&url).await.unwrap_or_else(|e| {
        panic!("cannot reach Redis at {base} ({e}); start it with `scripts/services.sh` or set IDEMP_TEST_REDIS_URL")
    });
    (url, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_storming_one_redis_run_each_effect_once() {
    const KEYS: usize = 300;
    const PROCESSES: usize = 4;
    let (url, store) = fresh("storm").await;
    let dir = tempfile::tempdir().unwrap();
    let effects = dir.path().join("effects.log");
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(WORKER)
                .args(["storm", "--store", &url, "--keys", &KEYS.to_string()])
                .args(["--contenders", "4", "--tasks", "64", "--effects-file"])
                .arg(&effects)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn idemp-worker")
        })
        .collect();
    let outputs = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let mut report = StormReport::default();
    for out in &outputs {
        report.add(out);
    }
    let StormReport { values, executed } = report;
    // Side effects, counted in the fsynced log: exactly one per key.
    let lines = effect_lines(&effects);
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for l in &lines {
        *per_key.entry(l.split(' ').nth(1).unwrap()).or_default() += 1;
    }
    assert_eq!(per_key.len(), KEYS, "every key ran");
    assert!(
        per_key.values().all(|n| *n == 1),
        "a key ran twice: {per_key:?}"
    );
    assert_eq!(lines.len(), KEYS);
    assert_eq!(executed, KEYS);
    // Every process saw the same value for every key: the executing owner's.
    assert_eq!(values.len(), KEYS);
    for l in &lines {
        let f: Vec<&str> = l.split(' ').collect();
        let (key, token, pid) = (f[1], f[2], f[3]);
        let vs = &values[key];
        assert_eq!(vs.len(), PROCESSES);
        assert!(
            vs.iter().all(|v| *v == format!("{pid}:{token}")),
            "{key}: {vs:?}"
        );
    }
    assert_eq!(store.stats().await.unwrap().completed, KEYS as u64);
    store.clear().await.unwrap();
}

async fn check_ambiguous_then_takeover(point: &str, effects_expected: usize) {
    let (url, store) = fresh(point).await;
    let dir = tempfile::tempdir().unwrap();
    let effects = dir.path().join("effects.log");
    let killed = run_and_kill(point, &url, "job", &effects, 300);
    assert_eq!(effect_lines(&effects).len(), effects_expected);

    let id = RecordKey::new("crash", "job");
    until_ambiguous(&store, &id, 0).await;
    // Without takeover: the record is reported, ambiguous.
    let claim = Claim::new(id.clone()).take_over_expired(false);
    match store.claim(&claim).await.unwrap() {
        ClaimOutcome::Existing(r) => {
            assert_eq!(r.token, killed);
            assert!(r.is_ambiguous(SystemClock.now_ms()));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.stats().await.unwrap().ambiguous, 1);
    // A takeover gets a larger token; the killed owner is fenced.
    let token = match store.claim(&claim.take_over_expired(true)).await.unwrap() {
        ClaimOutcome::Acquired {
            token,
            takeover,
            attempt,
            ..
        } => {
            assert_eq!((takeover, attempt), (Some(killed), 2));
            token
        }
        other => panic!("{other:?}"),
    };
    assert!(token > killed);
    let out = || Outcome::new(Codec::Raw, b"late".to_vec());
    assert!(matches!(
        store
            .complete(&id, killed, out(), Duration::from_secs(60))
            .await,
        Err(StoreError::Fenced { .. })
    ));
    store
        .complete(&id, token, out(), Duration::from_secs(60))
        .await
        .unwrap();
    store.clear().await.unwrap();
}

#[tokio::test]
async fn kill_after_claim_is_ambiguous_after_the_lease() {
    check_ambiguous_then_takeover("claimed", 0).await;
}

#[tokio::test]
async fn kill_after_the_effect_is_ambiguous_after_the_lease() {
    check_ambiguous_then_takeover("effect-done", 1).await;
}

#[tokio::test]
async fn kill_after_complete_loses_nothing() {
    let (url, store) = fresh("completed").await;
    let dir = tempfile::tempdir().unwrap();
    let effects = dir.path().join("effects.log");
    let token = run_and_kill("completed", &url, "job", &effects, 300);
    let lines = effect_lines(&effects);
    assert_eq!(lines.len(), 1);
    let pid = lines[0].split(' ').nth(3).unwrap().to_string();

    let id = RecordKey::new("crash", "job");
    let rec = store
        .get(&id)
        .await
        .unwrap()
        .expect("completed record survives");
    assert_eq!(rec.token, token);
    let expected = format!("{pid}:{token}").into_bytes();
    assert_eq!(
        rec.state,
        State::Completed(Outcome::new(Codec::Raw, expected.clone()))
    );
    // A retry replays it, long after the lease.
    tokio::time::sleep(Duration::from_millis(350)).await;
    match store.claim(&Claim::new(id)).await.unwrap() {
        ClaimOutcome::Existing(r) => {
            assert_eq!(
                r.state,
                State::Completed(Outcome::new(Codec::Raw, expected))
            )
        }
        other => panic!("{other:?}"),
    }
    store.clear().await.unwrap();
}
