//! Faults under load: backends killed mid-operation (only this test's own backends, by
//! `application_name`), and a server restart in the middle of a storm (on a private
//! cluster in a temp dir, never the shared server). Errors must be clear and transient,
//! no effect may run twice, and the store must recover.
#![cfg(feature = "postgres")]

mod postgres_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use idemp::store::postgres::PostgresStore;
use idemp::store::{Claim, ClaimOutcome, Codec, Outcome, RecordKey, State, Store, StoreError};
use parking_lot::Mutex;
use postgres_support::*;

const TTL: Duration = Duration::from_secs(3600);

/// What a storm observed.
#[derive(Default)]
struct Tally {
    /// Side effects run per key (in process memory: the "outside world").
    effects: Mutex<HashMap<RecordKey, u32>>,
    /// Token whose owner ran the effect, per key.
    effect_token: Mutex<HashMap<RecordKey, u64>>,
    unavailable: AtomicU64,
    other_errors: Mutex<Vec<String>>,
}

impl Tally {
    fn error(&self, e: &StoreError) {
        if e.is_transient() {
            self.unavailable.fetch_add(1, Ordering::Relaxed);
        } else {
            self.other_errors.lock().push(e.to_string());
        }
    }
}

/// One caller of `id`: claims without takeover (so nothing may ever run twice), runs
/// the effect once if it owns the key, and retries store errors until `deadline`.
async fn call(store: &PostgresStore, id: &RecordKey, tally: &Tally, stop: &AtomicBool) {
    let claim = Claim::new(id.clone())
        .lease(Duration::from_secs(600))
        .take_over_expired(false);
    while !stop.load(Ordering::Relaxed) {
        match store.claim(&claim).await {
            Ok(ClaimOutcome::Acquired { token, .. }) => {
                *tally.effects.lock().entry(id.clone()).or_default() += 1;
                tally.effect_token.lock().insert(id.clone(), token);
                let out = Outcome::new(Codec::Raw, token.to_be_bytes().to_vec());
                // Settle; on a lost reply, look at the record to learn what happened.
                loop {
                    match store.complete(id, token, out.clone(), TTL).await {
                        Ok(()) => return,
                        Err(StoreError::Fenced { current, .. }) => {
                            // Only possible if our earlier attempt committed.
                            assert_eq!(current, Some(token), "{id}: fenced by another token");
                            return;
                        }
                        Err(e) => {
                            tally.error(&e);
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }
            // Settled or someone else's (possibly one whose claim reply was lost).
            Ok(ClaimOutcome::Existing(_)) => return,
            Ok(ClaimOutcome::Mismatch(r)) => panic!("mismatch {r:?}"),
            Err(e) => {
                tally.error(&e);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Runs `tasks` workers over `keys` (every key requested by `per_key` callers).
async fn storm(
    store: &PostgresStore,
    keys: &[RecordKey],
    per_key: usize,
    tasks: usize,
    tally: &Arc<Tally>,
    stop: &Arc<AtomicBool>,
) {
    let queue: Arc<Mutex<Vec<RecordKey>>> = Arc::new(Mutex::new(
        keys.iter()
            .flat_map(|k| std::iter::repeat_n(k.clone(), per_key))
            .collect(),
    ));
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (store, queue, tally, stop) =
            (store.clone(), queue.clone(), tally.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().pop();
                let Some(id) = next else { return };
                call(&store, &id, &tally, &stop).await;
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
}

/// Every key ran at most once; completed keys ran exactly once, with the owner's token.
async fn check_invariants(
    store: &PostgresStore,
    keys: &[RecordKey],
    tally: &Tally,
) -> (usize, usize) {
    let effects = tally.effects.lock().clone();
    let tokens = tally.effect_token.lock().clone();
    let (mut completed, mut ambiguous) = (0, 0);
    for id in keys {
        let ran = effects.get(id).copied().unwrap_or(0);
        assert!(ran <= 1, "{id} ran {ran} times");
        let rec = loop {
            match store.get(id).await {
                Ok(r) => break r,
                Err(e) => {
                    assert!(e.is_transient(), "{e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        match rec.map(|r| (r.state, r.token)) {
            Some((State::Completed(out), token)) => {
                assert_eq!(ran, 1, "{id} completed without its effect");
                assert_eq!(Some(&token), tokens.get(id));
                assert_eq!(out.bytes, token.to_be_bytes());
                completed += 1;
            }
            // Claimed but its reply or its completion was lost: ambiguous, never re-run.
            Some((State::InProgress { .. }, _)) => ambiguous += 1,
            other => panic!("{id}: unexpected {other:?}"),
        }
    }
    assert!(
        tally.other_errors.lock().is_empty(),
        "{:?}",
        tally.other_errors.lock()
    );
    (completed, ambiguous)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_backends_fail_closed_and_nothing_runs_twice() {
    let schema = unique_schema();
    let _g = SchemaGuard(schema.clone());
    let app = format!("idemp_fault_{schema}");
    let store = connect(options(&schema).application_name(&app).pool_size(8)).await;
    let keys: Vec<RecordKey> = (0..300)
        .map(|i| RecordKey::new("fault", format!("k{i}")))
        .collect();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));

    let admin = client().await;
    let killer = tokio::spawn(async move {
        let mut killed = 0i64;
        for _ in 0..15 {
            tokio::time::sleep(Duration::from_millis(15)).await;
            // Only this test's backends: filtered on its unique application_name.
            killed += admin
                .query_one(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = $1 AND pid <> pg_backend_pid()) t",
                    &[&app],
                )
                .await
                .unwrap()
                .get::<_, i64>(0);
        }
        killed
    });
    tokio::time::timeout(
        Duration::from_secs(120),
        storm(&store, &keys, 3, 64, &tally, &stop),
    )
    .await
    .expect("the storm hung");
    let killed = killer.await.unwrap();
    assert!(killed > 0, "no backend was killed");

    let (completed, ambiguous) = check_invariants(&store, &keys, &tally).await;
    assert_eq!(completed + ambiguous, keys.len());
    assert!(completed > 0);
    // Recovered: a fresh key is claimed and settled normally.
    let fresh_id = RecordKey::new("fault", "after");
    let token = loop {
        match store.claim(&Claim::new(fresh_id.clone())).await {
            Ok(ClaimOutcome::Acquired { token, .. }) => break token,
            Ok(other) => panic!("{other:?}"),
            Err(e) => assert!(e.is_transient(), "{e}"),
        }
    };
    store
        .complete(&fresh_id, token, Outcome::new(Codec::Raw, vec![]), TTL)
        .await
        .unwrap();
    eprintln!(
        "killed {killed} backends; {} unavailable errors; {completed} completed, {ambiguous} ambiguous",
        tally.unavailable.load(Ordering::Relaxed)
    );
}

/// A private Postgres cluster in a temp dir, owned by the `postgres` OS user, stopped
/// and removed on drop.
struct PrivateCluster {
    dir: PathBuf,
    port: u16,
}

fn pg_bin(name: &str) -> PathBuf {
    let base = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<_> = std::fs::read_dir(base)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: PostgreSQL server binaries are needed",
                base.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    versions.sort();
    versions
        .last()
        .unwrap_or_else(|| panic!("no PostgreSQL under {}", base.display()))
        .join("bin")
        .join(name)
}

fn as_postgres(args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .output()
        .expect("runuser (this test runs the private cluster as the postgres user)")
}

impl PrivateCluster {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "idemp_pg_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("chown")
            .args(["postgres", dir.to_str().unwrap()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown postgres {}", dir.display());
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let data = dir.join("data");
        let out = as_postgres(&[
            pg_bin("initdb").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ]);
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { dir, port };
        cluster.pg_ctl("start");
        cluster
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, action: &str) {
        let data = self.dir.join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log");
        let mut args = vec![
            pg_bin("pg_ctl").to_str().unwrap().to_string(),
            "-D".into(),
            data.to_str().unwrap().into(),
            "-w".into(),
            "-m".into(),
            "fast".into(),
        ];
        if action != "stop" {
            args.extend(["-o".into(), opts, "-l".into(), log.to_str().unwrap().into()]);
        }
        args.push(action.into());
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let out = as_postgres(&refs);
        assert!(
            out.status.success(),
            "pg_ctl {action}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = as_postgres(&[
            pg_bin("pg_ctl").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_restart_mid_storm_fails_closed_and_recovers() {
    let cluster = PrivateCluster::start();
    let store = PostgresStore::connect_with(
        &cluster.url(),
        options("idemp_restart")
            .pool_size(8)
            .connect_timeout(Duration::from_secs(2)),
    )
    .await
    .expect("the private cluster is up");
    let keys: Vec<RecordKey> = (0..400)
        .map(|i| RecordKey::new("restart", format!("k{i}")))
        .collect();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    // A waiter rides through the restart too.
    let waited = RecordKey::new("restart", "waited");
    let waited_token = match store.claim(&Claim::new(waited.clone())).await.unwrap() {
        ClaimOutcome::Acquired { token, .. } => token,
        other => panic!("{other:?}"),
    };
    let waiter = {
        let store = store.clone();
        let id = waited.clone();
        tokio::spawn(async move {
            loop {
                match store.wait(&id, Duration::from_secs(60)).await {
                    Ok(r) => return r,
                    Err(e) => {
                        assert!(e.is_transient(), "{e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        })
    };

    let storm_task = {
        let (store, keys, tally, stop) = (store.clone(), keys.clone(), tally.clone(), stop.clone());
        tokio::spawn(async move { storm(&store, &keys, 2, 32, &tally, &stop).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let restarter = {
        let dir = cluster.dir.clone();
        let port = cluster.port;
        tokio::task::spawn_blocking(move || {
            let c = PrivateCluster { dir, port };
            c.pg_ctl("stop");
            std::thread::sleep(Duration::from_millis(300));
            c.pg_ctl("start");
            std::mem::forget(c); // the outer guard owns cleanup
        })
    };
    restarter.await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), storm_task)
        .await
        .expect("the storm hung after the restart")
        .unwrap();

    let (completed, ambiguous) = check_invariants(&store, &keys, &tally).await;
    assert_eq!(completed + ambiguous, keys.len());
    assert!(
        tally.unavailable.load(Ordering::Relaxed) > 0 || completed == keys.len(),
        "the restart went unnoticed yet not every key completed"
    );
    // The store works again, and the waiter sees the completion.
    let out = Outcome::new(Codec::Raw, b"after restart".to_vec());
    loop {
        match store
            .complete(&waited, waited_token, out.clone(), TTL)
            .await
        {
            Ok(()) => break,
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let rec = tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("the waiter never returned")
        .unwrap()
        .unwrap();
    assert_eq!(rec.state, State::Completed(out));
    eprintln!(
        "restart: {} unavailable errors; {completed} completed, {ambiguous} ambiguous",
        tally.unavailable.load(Ordering::Relaxed)
    );
    drop(store);
    drop(cluster);
}
