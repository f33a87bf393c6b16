//! Concurrency storms: many tasks racing on many keys, with side effects counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::{Env, StoreFactory, with_env};
use crate::store::{ClaimOutcome, Codec, Outcome, Record, RecordKey, State, StoreError, Token};

/// Per key: the token and value of the completion that won.
type Winners = Vec<Mutex<Option<(Token, Vec<u8>)>>>;

/// Per-key counters shared by the contenders of a storm.
struct Board {
    /// Side effects run (once per acquisition that ran the effect).
    effects: Vec<AtomicU32>,
    /// Successful `complete` calls.
    completions: Vec<AtomicU32>,
    /// Owners currently holding the key (must never exceed 1).
    active: Vec<AtomicU32>,
    /// Acquisitions.
    acquisitions: Vec<AtomicU32>,
    /// The first invariant violation seen by any task.
    violation: Mutex<Option<String>>,
}

impl Board {
    fn new(keys: usize) -> Self {
        let zeros = || (0..keys).map(|_| AtomicU32::new(0)).collect::<Vec<_>>();
        Self {
            effects: zeros(),
            completions: zeros(),
            active: zeros(),
            acquisitions: zeros(),
            violation: Mutex::new(None),
        }
    }
    fn violate(&self, msg: String) {
        let mut v = self.violation.lock();
        if v.is_none() {
            *v = Some(msg);
        }
    }
    fn enter(&self, k: usize, id: &RecordKey) {
        let before = self.active[k].fetch_add(1, Ordering::SeqCst);
        if before != 0 {
            self.violate(format!(
                "key {:?}: {} owners at once (at most one allowed)",
                id.key,
                before + 1
            ));
        }
    }
    fn leave(&self, k: usize) {
        self.active[k].fetch_sub(1, Ordering::SeqCst);
    }
}

fn value_of(id: &RecordKey) -> Vec<u8> {
    format!("value of {}", id.key).into_bytes()
}

/// Spreads `keys × contenders` contenders over `tasks` tasks so that the contenders of
/// one key run on different tasks at about the same time; returns what each
/// contender returned, per key.
async fn run_contenders<C, Fut>(
    env: &Arc<Env>,
    keys: usize,
    contenders: usize,
    contender: C,
) -> Vec<Vec<Vec<u8>>>
where
    C: Fn(Arc<Env>, usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Vec<u8>> + Send + 'static,
{
    let tasks = env.cfg.storm.tasks.max(1);
    let total = keys * contenders;
    let contender = Arc::new(contender);
    let results: Arc<Mutex<Vec<Vec<Vec<u8>>>>> = Arc::new(Mutex::new(vec![Vec::new(); keys]));
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let env = Arc::clone(env);
            let contender = Arc::clone(&contender);
            let results = Arc::clone(&results);
            tokio::spawn(async move {
                let mut i = t;
                while i < total {
                    let (k, c) = (i / contenders, i % contenders);
                    let v = contender(Arc::clone(&env), k, c).await;
                    results.lock()[k].push(v);
                    i += tasks;
                }
            })
        })
        .collect();
    for h in handles {
        if let Err(e) = h.await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
            panic!("testkit case '{}': storm task failed: {e}", env.case);
        }
    }
    std::mem::take(&mut *results.lock())
}

/// One contender: claim; the owner runs the effect and completes (or, when `fail_first`
/// says so, releases and tries again); the others wait for the result, retrying the
/// claim when the key was released.
async fn contend(env: Arc<Env>, board: Arc<Board>, k: usize, fail_first: bool) -> Vec<u8> {
    let id = env.id(&format!("storm-{k:05}"));
    let claim = env.claim(&id);
    for _round in 0..10_000 {
        match env.claim_raw(&claim).await {
            ClaimOutcome::Acquired {
                token, takeover, ..
            } => {
                if takeover.is_some() {
                    board.violate(format!("key {:?}: takeover of a live 600 s lease", id.key));
                }
                board.enter(k, &id);
                let run = board.acquisitions[k].fetch_add(1, Ordering::SeqCst);
                board.effects[k].fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                if fail_first && run == 0 {
                    board.leave(k);
                    let r = env.store.release(&id, token).await;
                    env.ok(&id, "release", r);
                    continue;
                }
                let value = value_of(&id);
                // Leave before completing: the next owner can only exist after the
                // completion, so this never hides an overlap.
                board.leave(k);
                let r = env
                    .store
                    .complete(
                        &id,
                        token,
                        Outcome::new(Codec::Raw, value.clone()),
                        Duration::from_secs(3600),
                    )
                    .await;
                env.ok(&id, "complete", r);
                board.completions[k].fetch_add(1, Ordering::SeqCst);
                return value;
            }
            ClaimOutcome::Existing(rec) => match rec.state {
                State::Completed(out) => return out.bytes,
                State::Failed(out) => env.fail(&id, format!("unexpected Failed record: {out:?}")),
                State::InProgress { .. } => {
                    let r = env.store.wait(&id, env.cfg.wait_timeout).await;
                    match env.ok(&id, "wait", r) {
                        Some(Record {
                            state: State::Completed(out),
                            ..
                        }) => return out.bytes,
                        Some(Record {
                            state: State::Failed(out),
                            ..
                        }) => env.fail(
                            &id,
                            format!("wait returned an unexpected Failed record: {out:?}"),
                        ),
                        // Released (gone) or still running after the timeout: claim again.
                        _ => continue,
                    }
                }
            },
            ClaimOutcome::Mismatch(rec) => env.fail(&id, format!("unexpected Mismatch: {rec:?}")),
        }
    }
    env.fail(&id, "contender gave up after 10,000 rounds")
}

fn check_board(
    env: &Env,
    board: &Board,
    keys: usize,
    results: &[Vec<Vec<u8>>],
    runs_of: impl Fn(usize) -> u32,
) {
    if let Some(v) = board.violation.lock().take() {
        panic!("testkit case '{}': {v}", env.case);
    }
    for (k, results) in results.iter().enumerate().take(keys) {
        let id = env.id(&format!("storm-{k:05}"));
        env.check_eq(
            &id,
            "side effects run",
            board.effects[k].load(Ordering::SeqCst),
            runs_of(k),
        );
        env.check_eq(
            &id,
            "successful completions",
            board.completions[k].load(Ordering::SeqCst),
            1,
        );
        let want = value_of(&id);
        env.check_eq(
            &id,
            "contenders that returned",
            results.len(),
            env.cfg.storm.contenders.max(1),
        );
        if let Some(bad) = results.iter().find(|v| **v != want) {
            env.fail(
                &id,
                format!(
                    "a contender got {:?}, expected {:?}",
                    String::from_utf8_lossy(bad),
                    String::from_utf8_lossy(&want)
                ),
            );
        }
    }
}

/// The storm of the issue: `tasks` tasks (≥ 64 by default) on `keys` keys (1,000) with
/// `contenders` contenders per key (8). Each key's side effect runs exactly once and
/// every contender gets the same value.
pub async fn storm_exactly_once<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "storm_exactly_once", |env| async move {
        let cfg = env.cfg.storm.clone();
        let (keys, contenders) = (cfg.keys, cfg.contenders.max(1));
        let board = Arc::new(Board::new(keys));
        let b = Arc::clone(&board);
        let results = run_contenders(&env, keys, contenders, move |env, k, _| {
            contend(env, Arc::clone(&b), k, false)
        })
        .await;
        check_board(&env, &board, keys, &results, |_| 1);
        // The stored records agree.
        for k in (0..keys).step_by((keys / 50).max(1)) {
            let id = env.id(&format!("storm-{k:05}"));
            let rec = env.get_some(&id).await;
            env.check_eq(
                &id,
                "stored state",
                &rec.state,
                &State::Completed(Outcome::new(Codec::Raw, value_of(&id))),
            );
            env.check_eq(&id, "attempts", rec.attempts, 1);
        }
    })
    .await
}

/// Like [`storm_exactly_once`], but the first owner of every third key fails and
/// releases: that key runs again (twice in all), never with two owners at once, and
/// completes exactly once.
pub async fn storm_with_release<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "storm_with_release", |env| async move {
        let cfg = env.cfg.storm.clone();
        let (keys, contenders) = (cfg.keys, cfg.contenders.max(1));
        let board = Arc::new(Board::new(keys));
        let b = Arc::clone(&board);
        let results = run_contenders(&env, keys, contenders, move |env, k, _| {
            contend(env, Arc::clone(&b), k, k % 3 == 0)
        })
        .await;
        check_board(
            &env,
            &board,
            keys,
            &results,
            |k| if k % 3 == 0 { 2 } else { 1 },
        );
    })
    .await
}

/// Leases expire while their owners are paused. For even keys the paused owner resumes
/// after a successor took over and completed: its complete/fail/release/renew are all
/// `Fenced` and the successor's value stays. For odd keys it resumes while successors
/// race to take over: whichever completes first wins, the other side is fenced, and
/// the stored value is the winner's. Every key ends with exactly one completion and
/// every contender sees the stored value.
pub async fn storm_fencing<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "storm_fencing", |env| async move {
        let cfg = env.cfg.storm.clone();
        let keys = cfg.fencing_keys;
        let contenders = cfg.contenders.max(1);
        let tasks = cfg.tasks.max(1);
        let id_of = |env: &Env, k: usize| env.id(&format!("fence-{k:05}"));

        // Phase 1: every key gets a first owner with a short lease.
        let first: Arc<Vec<AtomicU64>> = Arc::new((0..keys).map(|_| AtomicU64::new(0)).collect());
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let env = Arc::clone(&env);
                let first = Arc::clone(&first);
                tokio::spawn(async move {
                    for k in (t..keys).step_by(tasks) {
                        let id = id_of(&env, k);
                        let a = env.acquire(&env.claim(&id).lease(env.units(2))).await;
                        first[k].store(a.token, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        join_all(&env, handles).await;

        // Phase 2: the first owners pause past their leases.
        env.pass(3).await;

        // Phase 3: successors race to take over; odd keys' first owners resume now.
        let completions: Arc<Vec<AtomicU32>> = Arc::new((0..keys).map(|_| AtomicU32::new(0)).collect());
        let takeovers: Arc<Vec<AtomicU32>> = Arc::new((0..keys).map(|_| AtomicU32::new(0)).collect());
        let winner: Arc<Winners> = Arc::new((0..keys).map(|_| Mutex::new(None)).collect());
        let seen: Arc<Mutex<Vec<Vec<Vec<u8>>>>> = Arc::new(Mutex::new(vec![Vec::new(); keys]));
        let total = keys * (contenders + 1);
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let env = Arc::clone(&env);
                let first = Arc::clone(&first);
                let (completions, takeovers, winner, seen) =
                    (Arc::clone(&completions), Arc::clone(&takeovers), Arc::clone(&winner), Arc::clone(&seen));
                tokio::spawn(async move {
                    for i in (t..total).step_by(tasks) {
                        let (k, c) = (i / (contenders + 1), i % (contenders + 1));
                        let id = id_of(&env, k);
                        let old = first[k].load(Ordering::SeqCst);
                        if c == contenders {
                            // The first owner of an odd key resumes during the race.
                            if k % 2 == 1 {
                                let value = format!("first owner of {}", id.key).into_bytes();
                                let r = env.store.complete(&id, old, Outcome::new(Codec::Raw, value.clone()), Duration::from_secs(3600)).await;
                                match r {
                                    Ok(()) => {
                                        completions[k].fetch_add(1, Ordering::SeqCst);
                                        *winner[k].lock() = Some((old, value));
                                    }
                                    Err(StoreError::Fenced { current: Some(cur), .. }) if cur > old => {}
                                    Err(StoreError::Fenced { current: Some(cur), .. }) if cur == old => env.fail(&id, format!(
                                        "paused owner's complete was fenced, but Fenced.current names its own token {old}: \
                                         `current` must be the successor's token (read it after the failed \
                                         compare-and-set, not from the statement's snapshot)"
                                    )),
                                    other => env.fail(&id, format!("paused owner's complete: expected Ok or Fenced by a larger token, got {other:?}")),
                                }
                            }
                            continue;
                        }
                        let claim = env.claim(&id);
                        let got = loop {
                            match env.claim_raw(&claim).await {
                                ClaimOutcome::Acquired { token, takeover, attempt, .. } => {
                                    env.check_eq(&id, "takeover of the paused owner", takeover, Some(old));
                                    env.check_eq(&id, "attempt of the takeover", attempt, 2);
                                    takeovers[k].fetch_add(1, Ordering::SeqCst);
                                    tokio::task::yield_now().await;
                                    let value = format!("successor {token} of {}", id.key).into_bytes();
                                    let r = env.store.complete(&id, token, Outcome::new(Codec::Raw, value.clone()), Duration::from_secs(3600)).await;
                                    env.ok(&id, "successor's complete", r);
                                    completions[k].fetch_add(1, Ordering::SeqCst);
                                    *winner[k].lock() = Some((token, value.clone()));
                                    break value;
                                }
                                ClaimOutcome::Existing(rec) => match rec.state {
                                    State::Completed(out) => break out.bytes,
                                    State::InProgress { .. } => {
                                        let r = env.store.wait(&id, env.cfg.wait_timeout).await;
                                        if let Some(Record { state: State::Completed(out), .. }) = env.ok(&id, "wait", r) {
                                            break out.bytes;
                                        }
                                    }
                                    State::Failed(out) => env.fail(&id, format!("unexpected Failed: {out:?}")),
                                },
                                other => env.fail(&id, format!("unexpected {other:?}")),
                            }
                        };
                        seen.lock()[k].push(got);
                    }
                })
            })
            .collect();
        join_all(&env, handles).await;

        // Phase 4: even keys' first owners resume after everything settled.
        let s = &env.store;
        for k in (0..keys).step_by(2) {
            let id = id_of(&env, k);
            let old = first[k].load(Ordering::SeqCst);
            let before = env.get_some(&id).await;
            let cur = Some(before.token);
            let out = || Outcome::new(Codec::Raw, b"stale".to_vec());
            env.expect_fenced(&id, "paused owner's complete", old, cur, s.complete(&id, old, out(), Duration::from_secs(3600)).await);
            env.expect_fenced(&id, "paused owner's fail", old, cur, s.fail(&id, old, out(), Duration::from_secs(3600)).await);
            env.expect_fenced(&id, "paused owner's release", old, cur, s.release(&id, old).await);
            env.expect_fenced(&id, "paused owner's renew", old, cur, s.renew(&id, old, Duration::from_secs(60)).await);
            let after = env.get_some(&id).await;
            env.check_eq(&id, "record after the paused owner's calls", &after, &before);
        }

        // Every key: one completion, the stored value is the winner's, all saw it.
        let seen = std::mem::take(&mut *seen.lock());
        for k in 0..keys {
            let id = id_of(&env, k);
            env.check_eq(&id, "successful completions", completions[k].load(Ordering::SeqCst), 1);
            let Some((token, value)) = winner[k].lock().clone() else {
                env.fail(&id, "no winner recorded");
            };
            let rec = env.get_some(&id).await;
            env.check_eq(&id, "stored token (the winner's)", rec.token, token);
            env.check_eq(&id, "stored value (the winner's)", &rec.state, &State::Completed(Outcome::new(Codec::Raw, value.clone())));
            let first_won = token == first[k].load(Ordering::SeqCst);
            env.check_eq(&id, "takeovers (1 unless the paused owner won)", takeovers[k].load(Ordering::SeqCst), u32::from(!first_won));
            if k % 2 == 0 {
                env.check(!first_won, &id, || "an even key's paused owner completed".into());
            }
            env.check_eq(&id, "contenders that returned", seen[k].len(), contenders);
            if let Some(bad) = seen[k].iter().find(|v| **v != value) {
                env.fail(&id, format!("a contender saw {:?}, the stored value is {:?}", String::from_utf8_lossy(bad), String::from_utf8_lossy(&value)));
            }
        }
    })
    .await
}

async fn join_all(env: &Env, handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        if let Err(e) = h.await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
            panic!("testkit case '{}': storm task failed: {e}", env.case);
        }
    }
}
