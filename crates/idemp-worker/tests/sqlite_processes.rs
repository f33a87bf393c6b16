//! Several OS processes on one SQLite file, and `kill -9` at each point of an
//! execution, through the real `idemp-worker` binary.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use idemp::clock::{Clock, SystemClock};
use idemp::store::sqlite::SqliteStore;
use idemp::store::{
    Claim, ClaimOutcome, Codec, Outcome, RecordKey, State, Store, StoreAdmin, StoreError,
};

mod support;
use support::{StormReport, WORKER, effect_lines, run_and_kill, until_ambiguous};

#[test]
fn four_processes_storming_one_file_run_each_effect_once() {
    const KEYS: usize = 200;
    const PROCESSES: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("storm.db").display());
    let effects = dir.path().join("effects.log");
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
        let out = child.wait_with_output().unwrap();
        report.add(&out);
    }
    let StormReport { values, executed } = report;
    // Side effects, counted in the fsynced log: exactly one per key.
    let lines = effect_lines(&effects);
    assert_eq!(lines.len(), KEYS, "one effect per key");
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for l in &lines {
        *per_key.entry(l.split(' ').nth(1).unwrap()).or_default() += 1;
    }
    assert_eq!(per_key.len(), KEYS);
    assert!(per_key.values().all(|n| *n == 1));
    assert_eq!(executed, KEYS);
    // Every process saw the same value for every key, the executing owner's.
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
}

async fn check_ambiguous_then_takeover(point: &str, effects_expected: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let url = format!("sqlite://{}", path.display());
    let effects = dir.path().join("effects.log");
    let killed = run_and_kill(point, &url, "job", &effects, 300);
    assert_eq!(effect_lines(&effects).len(), effects_expected);

    let store = SqliteStore::open(&path).unwrap();
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
        Err(StoreError::Fenced { .. })
    ));
    store
        .complete(&id, token, out(), Duration::from_secs(60))
        .await
        .unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let url = format!("sqlite://{}", path.display());
    let effects = dir.path().join("effects.log");
    let token = run_and_kill("completed", &url, "job", &effects, 300);
    let lines = effect_lines(&effects);
    assert_eq!(lines.len(), 1);
    let pid = lines[0].split(' ').nth(3).unwrap().to_string();

    let store = SqliteStore::open(&path).unwrap();
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
}

#[test]
fn inspect_prints_the_record_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("i.db").display());
    let effects = dir.path().join("effects.log");
    let token = run_and_kill("completed", &url, "job", &effects, 300);
    let out = Command::new(WORKER)
        .args([
            "inspect", "--store", &url, "--scope", "crash", "--key", "job",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "completed");
    assert_eq!(v["token"], token);
    let out = Command::new(WORKER)
        .args(["inspect", "--store", &url, "--key", "nope"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "null");
    let out = Command::new(WORKER)
        .args(["inspect", "--store", "ftp://x", "--key", "k"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scheme"));
}

/// Processes debit 100 accounts in the store's file with `complete_in_tx`, aborting
/// (as `kill -9` would) at random points; aborted workers are restarted until four
/// runs finish. Every balance changes exactly once.
#[test]
fn debit_storm_with_aborting_processes_debits_each_account_once() {
    const ACCOUNTS: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.db");
    let url = format!("sqlite://{}", path.display());
    let spawn = || {
        Command::new(WORKER)
            .args([
                "debit",
                "--store",
                &url,
                "--accounts",
                &ACCOUNTS.to_string(),
            ])
            .args(["--crash-permille", "20", "--lease-ms", "150"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn idemp-worker")
    };
    // Create the file once, so the four first workers race on a ready schema.
    drop(SqliteStore::open(&path).unwrap());
    let mut slots: Vec<_> = (0..4).map(|_| Some(spawn())).collect();
    let mut aborted = 0;
    let deadline = Instant::now() + Duration::from_secs(50);
    while slots.iter().any(Option::is_some) {
        assert!(Instant::now() < deadline, "debit storm did not finish");
        for slot in slots.iter_mut() {
            let Some(child) = slot.as_mut() else { continue };
            let Some(status) = child.try_wait().unwrap() else {
                continue;
            };
            if status.success() {
                *slot = None;
            } else {
                let out = slot.take().unwrap().wait_with_output().unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(
                    stderr.trim().is_empty(),
                    "a worker failed rather than aborted: {stderr}"
                );
                aborted += 1;
                *slot = Some(spawn());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(aborted > 0, "no worker aborted: the test proved nothing");

    let store = SqliteStore::open(&path).unwrap();
    let conn = store.connection().unwrap();
    let rows: Vec<(String, i64, i64, Option<i64>)> = conn
        .prepare(
            "SELECT a.id, a.balance, count(d.id), max(d.token) FROM accounts a \
             LEFT JOIN debits d ON d.id = a.id GROUP BY a.id",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), ACCOUNTS);
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (acct, balance, debits, token) in rows {
        assert_eq!(balance, 999, "{acct} debited {} times", 1000 - balance);
        assert_eq!(debits, 1, "{acct}");
        let rec = rt
            .block_on(store.get(&RecordKey::new("debit", acct.clone())))
            .unwrap()
            .expect("record");
        assert!(matches!(rec.state, State::Completed(_)), "{acct}");
        assert_eq!(Some(rec.token as i64), token, "{acct}");
    }
    eprintln!("aborted workers: {aborted}");
}
