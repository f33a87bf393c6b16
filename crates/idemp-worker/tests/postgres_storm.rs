//! Several OS processes on one Postgres schema, and `kill -9` at each point of an
//! execution, through the real `idemp-worker` binary. Needs the Postgres at
//! `IDEMP_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`); every
//! test uses a schema of its own and drops it.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use idemp::store::postgres::{PostgresOptions, PostgresStore};
use idemp::store::{
    Claim, ClaimOutcome, Codec, Outcome, RecordKey, State, Store, StoreAdmin, StoreError,
};

mod support;
use support::{StormReport, WORKER, effect_lines, run_and_kill, until_ambiguous};

fn server() -> String {
    std::env::var("IDEMP_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A schema of this test run, dropped (with everything in it) on drop.
struct Schema(String);

impl Schema {
    fn new() -> Self {
        Self(format!(
            "idemp_w_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ))
    }
    /// The store URL the workers open: this schema, a small pool per process.
    fn url(&self) -> String {
        let base = server();
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}schema={}&pool_size=6", self.0)
    }
    async fn store(&self) -> PostgresStore {
        PostgresStore::connect_with(
            &server(),
            PostgresOptions::default()
                .schema(&self.0)
                .pool_size(4)
                .sweep_interval(None),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach the test Postgres at {} ({e}); start it with scripts/services.sh",
                server()
            )
        })
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let schema = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(store) = PostgresStore::connect_with(
                    &server(),
                    PostgresOptions::default()
                        .schema(&schema)
                        .pool_size(1)
                        .sweep_interval(None),
                )
                .await
                    && let Ok(c) = store.pool().get().await
                {
                    let _ = c
                        .batch_execute(&format!(
                            "SET lock_timeout = '20s'; DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                        ))
                        .await;
                }
            });
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_storming_one_schema_run_each_effect_once() {
    const KEYS: usize = 300;
    const PROCESSES: usize = 4;
    let schema = Schema::new();
    drop(schema.store().await); // create the schema once, before the race
    let dir = tempfile::tempdir().unwrap();
    let effects = dir.path().join("effects.log");
    let url = schema.url();
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(WORKER)
                .args(["storm", "--store", &url, "--keys", &KEYS.to_string()])
                .args(["--contenders", "4", "--tasks", "32", "--effects-file"])
                .arg(&effects)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn idemp-worker")
        })
        .collect();
    let mut report = StormReport::default();
    for child in children {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        report.add(&out);
    }
    let StormReport { values, executed } = report;
    // Side effects, counted in the fsynced log: exactly one per key.
    let lines = effect_lines(&effects);
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for l in &lines {
        *per_key.entry(l.split(' ').nth(1).unwrap()).or_default() += 1;
    }
    assert_eq!(per_key.len(), KEYS);
    assert!(per_key.values().all(|n| *n == 1), "a key ran twice");
    assert_eq!(lines.len(), KEYS);
    assert_eq!(executed, KEYS);
    // Every process saw the executing owner's value for every key.
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
    // The store agrees.
    let store = schema.store().await;
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.completed, stats.in_progress), (KEYS as u64, 0));
}

async fn check_ambiguous_then_takeover(point: &str, effects_expected: usize) {
    let schema = Schema::new();
    let store = schema.store().await;
    let dir = tempfile::tempdir().unwrap();
    let effects = dir.path().join("effects.log");
    let url = schema.url();
    let killed = tokio::task::spawn_blocking({
        let effects = effects.clone();
        let point = point.to_string();
        move || run_and_kill(&point, &url, "job", &effects, 300)
    })
    .await
    .unwrap();
    assert_eq!(effect_lines(&effects).len(), effects_expected);

    let id = RecordKey::new("crash", "job");
    until_ambiguous(&store, &id, 50).await;
    let claim = Claim::new(id.clone()).take_over_expired(false);
    match store.claim(&claim).await.unwrap() {
        ClaimOutcome::Existing(r) => {
            assert_eq!(r.token, killed);
            assert!(matches!(r.state, State::InProgress { .. }));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.stats().await.unwrap().ambiguous, 1);
    let token = match store.claim(&claim.take_over_expired(true)).await.unwrap() {
        ClaimOutcome::Acquired {
            token,
            takeover,
            attempt,
            ..
        } => {
            assert_eq!(takeover, Some(killed));
            assert_eq!(attempt, 2);
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
        Err(StoreError::Fenced { current: Some(t), .. }) if t == token
    ));
    store
        .complete(&id, token, out(), Duration::from_secs(60))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_after_claim_is_ambiguous_after_the_lease() {
    check_ambiguous_then_takeover("claimed", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_after_the_effect_is_ambiguous_after_the_lease() {
    check_ambiguous_then_takeover("effect-done", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_after_complete_loses_nothing() {
    let schema = Schema::new();
    let store = schema.store().await;
    let dir = tempfile::tempdir().unwrap();
    let effects = dir.path().join("effects.log");
    let url = schema.url();
    let token = tokio::task::spawn_blocking({
        let effects = effects.clone();
        move || run_and_kill("completed", &url, "job", &effects, 300)
    })
    .await
    .unwrap();
    let lines = effect_lines(&effects);
    assert_eq!(lines.len(), 1);
    let pid = lines[0].split(' ').nth(3).unwrap().to_string();
    let id = RecordKey::new("crash", "job");
    let rec = store
        .get(&id)
        .await
        .unwrap()
        .expect("completed record survives the kill");
    assert_eq!(rec.token, token);
    let expected = Outcome::new(Codec::Raw, format!("{pid}:{token}").into_bytes());
    assert_eq!(rec.state, State::Completed(expected.clone()));
    // A retry long after the lease replays it.
    tokio::time::sleep(Duration::from_millis(350)).await;
    match store.claim(&Claim::new(id)).await.unwrap() {
        ClaimOutcome::Existing(r) => assert_eq!(r.state, State::Completed(expected)),
        other => panic!("{other:?}"),
    }
}
