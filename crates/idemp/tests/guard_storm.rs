//! Storms of concurrent duplicates: every effect runs exactly once and every caller
//! gets the same result.

mod guard_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use guard_support::manual;
use idemp::guard::{GuardError, OnDuplicate};

const KEYS: usize = 200;
const CONTENDERS: usize = 8;
const TASKS: usize = 64;

async fn storm(policy: OnDuplicate) {
    let (b, _) = manual("storm");
    let guard = b.on_duplicate(policy).build();
    let effects: Arc<Vec<AtomicU32>> = Arc::new((0..KEYS).map(|_| AtomicU32::new(0)).collect());
    let executions = Arc::new(AtomicU64::new(0));
    let in_progress_answers = Arc::new(AtomicU64::new(0));

    // Call i is contender i / KEYS of key i % KEYS, run by task i % TASKS: the eight
    // contenders of a key always sit on eight different tasks.
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let guard = guard.clone();
        let effects = effects.clone();
        let executions = executions.clone();
        let in_progress_answers = in_progress_answers.clone();
        handles.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for call in (task..KEYS * CONTENDERS).step_by(TASKS) {
                let key = call % KEYS;
                let name = format!("key-{key}");
                loop {
                    let res = guard
                        .run(name.as_str(), || async {
                            effects[key].fetch_add(1, Ordering::SeqCst);
                            let id = executions.fetch_add(1, Ordering::SeqCst);
                            // Give duplicates a chance to arrive mid-run.
                            tokio::task::yield_now().await;
                            Ok::<_, std::io::Error>(format!("{key}:{id}"))
                        })
                        .await;
                    match res {
                        Ok(v) => {
                            seen.push((key, v));
                            break;
                        }
                        // Under Replay a live duplicate is told to retry later.
                        Err(GuardError::InProgress { .. }) => {
                            in_progress_answers.fetch_add(1, Ordering::Relaxed);
                            tokio::task::yield_now().await;
                        }
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
            }
            seen
        }));
    }
    let mut results: Vec<Vec<String>> = vec![Vec::new(); KEYS];
    for h in handles {
        for (key, v) in h.await.unwrap() {
            results[key].push(v);
        }
    }
    for (key, vals) in results.iter().enumerate() {
        assert_eq!(
            effects[key].load(Ordering::SeqCst),
            1,
            "key {key} ran more than once"
        );
        assert_eq!(vals.len(), CONTENDERS);
        assert!(
            vals.iter().all(|v| v == &vals[0]),
            "key {key}: callers got different results: {vals:?}"
        );
        assert!(vals[0].starts_with(&format!("{key}:")));
    }
    assert_eq!(executions.load(Ordering::SeqCst), KEYS as u64);
    if let OnDuplicate::Wait(_) = policy {
        assert_eq!(in_progress_answers.load(Ordering::Relaxed), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storm_under_replay_runs_each_effect_once() {
    storm(OnDuplicate::Replay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storm_under_wait_coalesces_every_duplicate() {
    storm(OnDuplicate::Wait(Duration::from_secs(60))).await;
}
