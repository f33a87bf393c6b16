//! The edge cases of the contract: durations at their maximum, abandoned records
//! whose ttl is shorter than their lease, `wait` deadlines, wake-ups after a release
//! and a re-claim, and writes whose reply was lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::{Env, StoreFactory, TimeControl, with_env};
use crate::clock::Millis;
use crate::guard::{Guard, GuardError, OnDuplicate, OnFailure};
use crate::store::{
    Claim, ClaimOutcome, Codec, DynStore, ListQuery, Outcome, Page, Record, RecordKey, State,
    Stats, Store, StoreAdmin, StoreError, StoreResult, Token,
};

fn raw(bytes: &[u8]) -> Outcome {
    Outcome::new(Codec::Raw, bytes.to_vec())
}

/// A guard on the case's store, reading the case's clock.
fn guard_on(env: &Env, on_duplicate: OnDuplicate) -> Guard {
    let mut b = Guard::builder(env.store.clone())
        .scope(env.scope.clone())
        .on_duplicate(on_duplicate)
        .lease(Duration::from_secs(600))
        .ttl(Duration::from_secs(3600));
    if let TimeControl::Manual(clock) = &env.time {
        b = b.clock(Arc::new(clock.clone()));
    }
    b.build()
}

/// `Duration::MAX` is accepted wherever the contract takes a duration, meaning "as
/// long as the store can represent" (never a panic, never an error): a claim's lease
/// and ttl, `renew`, a settle's ttl, `wait` (on a missing, a settled and an
/// in-progress record that settles later), and the guard's
/// `OnDuplicate::Wait(Duration::MAX)`.
pub async fn durations_at_their_maximum<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "durations_at_their_maximum", |env| async move {
        let s = &env.store;
        let max = Duration::MAX;

        let missing = env.id("missing");
        let got = env.ok(
            &missing,
            "wait(MAX) on a missing record",
            s.wait(&missing, max).await,
        );
        env.check_eq(&missing, "wait(MAX) on a missing record", got, None);

        let id = env.id("claim-max");
        let a = env.acquire(&env.claim(&id).lease(max).ttl(max)).await;
        let until = env.ok(&id, "renew(MAX)", s.renew(&id, a.token, max).await);
        env.check(until >= a.lease_until, &id, || {
            format!(
                "renew(MAX) moved the lease back: {until} < {}",
                a.lease_until
            )
        });
        // A waiter with no deadline, woken by the complete below.
        let waiter = {
            let store = s.clone();
            let id = id.clone();
            tokio::spawn(async move { store.wait(&id, Duration::MAX).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        env.ok(
            &id,
            "complete with ttl MAX",
            s.complete(&id, a.token, raw(b"v"), max).await,
        );
        let got = match tokio::time::timeout(env.cfg.wait_timeout, waiter).await {
            Ok(Ok(r)) => env.ok(&id, "wait(MAX)", r),
            Ok(Err(join)) => env.fail(&id, format!("wait(MAX) panicked: {join}")),
            Err(_) => env.fail(
                &id,
                format!(
                    "wait(MAX) not woken within {:?} of the complete",
                    env.cfg.wait_timeout
                ),
            ),
        };
        env.check_eq(
            &id,
            "wait(MAX) result",
            got.map(|r| r.state),
            Some(State::Completed(raw(b"v"))),
        );
        let got = env.ok(&id, "wait(MAX) on a settled record", s.wait(&id, max).await);
        env.check_eq(
            &id,
            "wait(MAX) on a settled record",
            got.map(|r| r.state),
            Some(State::Completed(raw(b"v"))),
        );
        env.check(
            matches!(
                env.claim_raw(&env.claim(&id)).await,
                ClaimOutcome::Existing(_)
            ),
            &id,
            || "a record completed with ttl MAX is not kept".into(),
        );

        // The guard: a duplicate waits without a deadline for the running execution.
        let guard = guard_on(&env, OnDuplicate::Wait(Duration::MAX));
        let id = env.id("guard-wait-max");
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let guard = guard.clone();
            let key = id.key.clone();
            tokio::spawn(async move {
                guard
                    .run(key.as_str(), || async move {
                        let _ = started_tx.send(());
                        let _ = finish_rx.await;
                        Ok::<_, std::io::Error>("first".to_string())
                    })
                    .await
            })
        };
        if started_rx.await.is_err() {
            env.fail(&id, "the first guarded call ended before running its work");
        }
        let second = {
            let guard = guard.clone();
            let key = id.key.clone();
            tokio::spawn(async move {
                guard
                    .run(key.as_str(), || async {
                        Ok::<_, std::io::Error>("second".to_string())
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = finish_tx.send(());
        for (name, task) in [("first", first), ("second", second)] {
            match tokio::time::timeout(env.cfg.wait_timeout, task).await {
                Ok(Ok(Ok(v))) => {
                    env.check_eq(&id, &format!("{name} call's value"), v.as_str(), "first")
                }
                Ok(Ok(Err(e))) => env.fail(&id, format!("{name} guarded call failed: {e}")),
                Ok(Err(join)) => env.fail(&id, format!("{name} guarded call panicked: {join}")),
                Err(_) => env.fail(
                    &id,
                    format!(
                        "{name} guarded call did not return within {:?}",
                        env.cfg.wait_timeout
                    ),
                ),
            }
        }
    })
    .await
}

/// Lets `d` pass: advances the manual clock, or sleeps.
async fn pass_for(env: &Env, d: Duration) {
    match &env.time {
        TimeControl::Manual(clock) => clock.advance(d),
        TimeControl::Real => tokio::time::sleep(d).await,
    }
}

/// An in-progress record abandoned by its owner is kept until `lease_until + ttl`,
/// also when the ttl is shorter than the lease (lease 6 s, ttl 2 s, looked at 7 s
/// after the claim): a claim without takeover sees the ambiguous record (not a fresh
/// `Acquired`, which would run the side effect twice), a claim with takeover takes it
/// over (`takeover` = the old token, attempt 2), and an owner that completes after its
/// lease, when nobody took over, is accepted (not `Fenced`).
///
/// The durations are absolute (not [`KitConfig::real_time_unit`](super::KitConfig::real_time_unit)s): stores with native
/// expiry may keep records a few seconds longer than asked, which would hide the bug.
pub async fn abandoned_record_outlives_a_short_ttl<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(
        factory,
        "abandoned_record_outlives_a_short_ttl",
        |env| async move {
            let lease = Duration::from_secs(6);
            let ttl = Duration::from_secs(2);
            let ids = [
                env.id("seen"),
                env.id("taken-over"),
                env.id("completed-late"),
            ];
            let mut owners = Vec::new();
            for id in &ids {
                owners.push(env.acquire(&env.claim(id).lease(lease).ttl(ttl)).await);
            }
            pass_for(&env, lease + Duration::from_secs(1)).await;

            let id = &ids[0];
            let rec = env
                .existing(&env.claim(id).lease(lease).ttl(ttl).take_over_expired(false))
                .await;
            env.check_eq(
                id,
                "the abandoned record's token",
                rec.token,
                owners[0].token,
            );
            env.check(rec.is_ambiguous(env.judge_now()), id, || {
                format!("the abandoned record is not ambiguous: {rec:?}")
            });

            let id = &ids[1];
            let b = env.acquire(&env.claim(id).lease(lease).ttl(ttl)).await;
            env.check_eq(
                id,
                "takeover of the abandoned record",
                b.takeover,
                Some(owners[1].token),
            );
            env.check_eq(id, "attempt after the takeover", b.attempt, 2);

            let id = &ids[2];
            let r = env
                .store
                .complete(id, owners[2].token, raw(b"late"), ttl)
                .await;
            env.ok(
                id,
                "complete 1 s after the lease passed (nobody took over)",
                r,
            );
            let rec = env.get_some(id).await;
            env.check_eq(id, "state", rec.state, State::Completed(raw(b"late")));
        },
    )
    .await
}

/// Joins a spawned `wait`, failing the case if it does not return within the kit's
/// wait timeout.
async fn join_wait(
    env: &Env,
    id: &RecordKey,
    what: &str,
    task: tokio::task::JoinHandle<StoreResult<Option<Record>>>,
) -> Option<Record> {
    match tokio::time::timeout(env.cfg.wait_timeout, task).await {
        Ok(Ok(r)) => env.ok(id, what, r),
        Ok(Err(join)) => env.fail(id, format!("{what}: the waiter panicked: {join}")),
        Err(_) => env.fail(
            id,
            format!("{what}: did not return within {:?}", env.cfg.wait_timeout),
        ),
    }
}

fn spawn_wait(
    env: &Env,
    id: &RecordKey,
    timeout: Duration,
) -> tokio::task::JoinHandle<StoreResult<Option<Record>>> {
    let store = env.store.clone();
    let id = id.clone();
    tokio::spawn(async move { store.wait(&id, timeout).await })
}

/// `wait` keeps its deadline while the owner's own transaction holds the record
/// (settled inside the transaction, not committed): waiters with a 300 ms deadline
/// return the in-progress record while the transaction is still open (they neither
/// queue behind its row lock nor starve the owner of connections), a duplicate claim
/// sees the record in progress, and the owner then commits. Stores without owner
/// transactions run the same steps with the owner settling directly.
pub async fn wait_meets_its_deadline_beside_an_open_transaction<F: StoreFactory + ?Sized>(
    factory: &F,
) {
    with_env(
        factory,
        "wait_meets_its_deadline_beside_an_open_transaction",
        |env| async move {
            let id = env.id("k");
            let a = env.acquire(&env.claim(&id)).await;
            let mut tx = match &env.transactions {
                Some(t) => {
                    let mut tx = env.ok(&id, "begin the owner's transaction", t.begin(false).await);
                    let r = tx
                        .complete(&id, a.token, raw(b"v"), Duration::from_secs(3600))
                        .await;
                    env.ok(&id, "complete inside the owner's transaction", r);
                    Some(tx)
                }
                None => None,
            };
            let waiters: Vec<_> = (0..4)
                .map(|_| spawn_wait(&env, &id, Duration::from_millis(300)))
                .collect();
            for w in waiters {
                let got = join_wait(&env, &id, "wait(300 ms) beside the open transaction", w).await;
                match got {
                    Some(rec) => {
                        env.check_eq(&id, "the waiter's record token", rec.token, a.token);
                        env.check(!rec.state.is_settled(), &id, || {
                            format!("a waiter saw an uncommitted settle: {rec:?}")
                        });
                    }
                    None => env.fail(&id, "wait returned None for a held in-progress record"),
                }
            }
            let dup = env.existing(&env.claim(&id)).await;
            env.check(!dup.state.is_settled(), &id, || {
                format!("a duplicate claim saw an uncommitted settle: {dup:?}")
            });
            match tx.take() {
                Some(tx) => env.ok(&id, "commit the owner's transaction", tx.commit().await),
                None => {
                    let r = env
                        .store
                        .complete(&id, a.token, raw(b"v"), Duration::from_secs(3600))
                        .await;
                    env.ok(&id, "complete", r)
                }
            }
            let rec = env.get_some(&id).await;
            env.check_eq(
                &id,
                "state after the commit",
                rec.state,
                State::Completed(raw(b"v")),
            );
        },
    )
    .await
}

/// A waiter and a duplicate claim leave an owner's `REPEATABLE READ` transaction
/// alone: the owner's transaction takes its snapshot, a waiter starts waiting and a
/// duplicate claims, then the owner completes inside its transaction and commits
/// without a serialization failure (no waiter wrote to the owner's record), and the
/// waiter is woken with the completed record. Stores without owner transactions run
/// the same steps with the owner completing directly.
pub async fn waiter_leaves_a_repeatable_read_owner_alone<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(
        factory,
        "waiter_leaves_a_repeatable_read_owner_alone",
        |env| async move {
            let id = env.id("k");
            let a = env.acquire(&env.claim(&id)).await;
            let tx = match &env.transactions {
                Some(t) => Some(env.ok(&id, "begin REPEATABLE READ", t.begin(true).await)),
                None => None,
            };
            let waiter = spawn_wait(&env, &id, env.cfg.wait_timeout * 3);
            // Lets the waiter register (and do whatever it does to be woken).
            tokio::time::sleep(Duration::from_millis(200)).await;
            let dup = env.existing(&env.claim(&id)).await;
            env.check_eq(&id, "the duplicate's token", dup.token, a.token);
            let outcome = raw(b"v");
            match tx {
                Some(mut tx) => {
                    let r = tx
                        .complete(&id, a.token, outcome.clone(), Duration::from_secs(3600))
                        .await;
                    env.ok(
                        &id,
                        "complete inside REPEATABLE READ after a waiter came",
                        r,
                    );
                    env.ok(&id, "commit REPEATABLE READ", tx.commit().await);
                }
                None => {
                    let r = env
                        .store
                        .complete(&id, a.token, outcome.clone(), Duration::from_secs(3600))
                        .await;
                    env.ok(&id, "complete", r);
                }
            }
            let got = join_wait(&env, &id, "wait", waiter).await;
            env.check_eq(
                &id,
                "the waiter's record",
                got.map(|r| r.state),
                Some(State::Completed(outcome)),
            );
        },
    )
    .await
}

/// A waiter is woken by the settle of a new owner after a release and a re-claim:
/// the waiter waits on owner A, A releases and B claims at once (the waiter, woken by
/// the release, may find B's record in progress), then B completes. The waiter must
/// return B's completed record (or `None` if it looked in the gap) within the kit's
/// wait timeout, far beyond any notification latency; a store that forgets the waiter
/// at the re-claim leaves it asleep until its own timeout (factories should set any
/// polling backstop longer than the wait timeout). Ten rounds.
pub async fn waiter_woken_after_release_and_reclaim<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(
        factory,
        "waiter_woken_after_release_and_reclaim",
        |env| async move {
            let s = &env.store;
            for round in 0..10 {
                let id = env.id(&format!("k{round}"));
                let a = env.acquire(&env.claim(&id)).await;
                let waiter = spawn_wait(&env, &id, env.cfg.wait_timeout * 3);
                tokio::time::sleep(Duration::from_millis(50)).await;
                env.ok(&id, "release", s.release(&id, a.token).await);
                let b = env.acquire(&env.claim(&id)).await;
                // The waiter, woken by the release, reads B's record meanwhile.
                tokio::time::sleep(Duration::from_millis(50)).await;
                env.ok(&id, "complete", s.complete(&id, b.token, raw(b"b"), Duration::from_secs(3600)).await);
                let got = join_wait(&env, &id, "wait across release and re-claim", waiter).await;
                match got {
                    None => {}
                    Some(rec) => env.check_eq(
                        &id,
                        &format!("round {round}: the waiter's record (in progress = never woken by B's settle)"),
                        rec.state,
                        State::Completed(raw(b"b")),
                    ),
                }
            }
        },
    )
    .await
}

/// A store that applies the first `lose` settles (`complete`/`fail`) and the first
/// `lose_claims` claims it is given and then reports them as
/// [`StoreError::Unavailable`], as a connection that dropped after the server
/// committed would.
#[derive(Debug)]
struct LostReplies {
    inner: DynStore,
    lose: Arc<AtomicU32>,
    lose_claims: Arc<AtomicU32>,
}

/// Turns an applied write into a lost reply while `budget` lasts.
fn lose_reply<T>(budget: &AtomicU32, r: StoreResult<T>) -> StoreResult<T> {
    if r.is_ok()
        && budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        return Err(StoreError::Unavailable(
            "testkit: the reply was lost after the write was applied".into(),
        ));
    }
    r
}

impl LostReplies {
    fn new(inner: DynStore) -> Self {
        Self {
            inner,
            lose: Arc::new(AtomicU32::new(0)),
            lose_claims: Arc::new(AtomicU32::new(0)),
        }
    }
    fn lost(&self, r: StoreResult<()>) -> StoreResult<()> {
        lose_reply(&self.lose, r)
    }
}

#[async_trait]
impl Store for LostReplies {
    async fn claim(&self, claim: &Claim) -> StoreResult<ClaimOutcome> {
        let r = self.inner.claim(claim).await;
        lose_reply(&self.lose_claims, r)
    }
    async fn complete(
        &self,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        let r = self.inner.complete(id, token, outcome, ttl).await;
        self.lost(r)
    }
    async fn fail(
        &self,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        let r = self.inner.fail(id, token, outcome, ttl).await;
        self.lost(r)
    }
    async fn release(&self, id: &RecordKey, token: Token) -> StoreResult<()> {
        self.inner.release(id, token).await
    }
    async fn renew(&self, id: &RecordKey, token: Token, lease: Duration) -> StoreResult<Millis> {
        self.inner.renew(id, token, lease).await
    }
    async fn get(&self, id: &RecordKey) -> StoreResult<Option<Record>> {
        self.inner.get(id).await
    }
    async fn wait(&self, id: &RecordKey, timeout: Duration) -> StoreResult<Option<Record>> {
        self.inner.wait(id, timeout).await
    }
}

#[async_trait]
impl StoreAdmin for LostReplies {
    async fn list(&self, query: &ListQuery) -> StoreResult<Page> {
        self.inner.list(query).await
    }
    async fn purge(&self, id: &RecordKey) -> StoreResult<bool> {
        self.inner.purge(id).await
    }
    async fn sweep(&self) -> StoreResult<u64> {
        self.inner.sweep().await
    }
    async fn stats(&self) -> StoreResult<Stats> {
        self.inner.stats().await
    }
}

/// A settle whose reply is lost after the store applied it (the store reports
/// `Unavailable`, whose outcome the contract says is unknown) is resolved by the
/// guard: the guarded call returns its value (not a store error, not `LeaseLost` on
/// its own write), the work ran once, and a later call replays the stored value. The
/// same for a sticky failure. At the store level, repeating the lost `complete` with
/// the same token either succeeds or is `Fenced` with `current` = that token.
pub async fn lost_settle_reply_is_resolved<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "lost_settle_reply_is_resolved", |env| async move {
        let lossy = LostReplies::new(env.store.clone());
        let lose = lossy.lose.clone();
        lose.store(1, Ordering::SeqCst);
        let mut b = Guard::builder(lossy)
            .scope(env.scope.clone())
            .lease(Duration::from_secs(600))
            .ttl(Duration::from_secs(3600))
            .on_failure(OnFailure::Sticky);
        if let TimeControl::Manual(clock) = &env.time {
            b = b.clock(Arc::new(clock.clone()));
        }
        let guard = b.build();
        let runs = AtomicU32::new(0);
        let id = env.id("completed");
        for call in 0..2 {
            let r = guard
                .run(id.key.as_str(), || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>("v".to_string())
                })
                .await;
            match r {
                Ok(v) => env.check_eq(&id, &format!("call {call}'s value"), v.as_str(), "v"),
                Err(e) => env.fail(&id, format!("call {call} after a lost complete reply: {e}")),
            }
        }
        env.check_eq(&id, "executions", runs.load(Ordering::SeqCst), 1);
        let rec = env.get_some(&id).await;
        env.check(matches!(rec.state, State::Completed(_)), &id, || {
            format!("not completed: {rec:?}")
        });

        // A sticky failure whose reply is lost.
        lose.store(1, Ordering::SeqCst);
        let id = env.id("failed");
        let runs = AtomicU32::new(0);
        for call in 0..2 {
            let r = guard
                .run(id.key.as_str(), || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Err::<String, _>(std::io::Error::other("declined"))
                })
                .await;
            match r {
                Err(GuardError::Store(e)) => env.fail(
                    &id,
                    format!("call {call} after a lost fail reply: store error {e}"),
                ),
                Err(GuardError::LeaseLost { .. }) => env.fail(
                    &id,
                    format!("call {call} after a lost fail reply: LeaseLost on its own write"),
                ),
                Err(_) => {}
                Ok(v) => env.fail(
                    &id,
                    format!("call {call}: a failing operation returned {v:?}"),
                ),
            }
        }
        env.check_eq(
            &id,
            "executions of the failing operation",
            runs.load(Ordering::SeqCst),
            1,
        );
        let rec = env.get_some(&id).await;
        env.check(matches!(rec.state, State::Failed(_)), &id, || {
            format!("not failed: {rec:?}")
        });

        // The store itself: the lost complete repeated with the same token.
        let id = env.id("store-level");
        let a = env.acquire(&env.claim(&id)).await;
        let s = &env.store;
        env.ok(
            &id,
            "complete",
            s.complete(&id, a.token, raw(b"v"), Duration::from_secs(3600))
                .await,
        );
        match s
            .complete(&id, a.token, raw(b"v"), Duration::from_secs(3600))
            .await
        {
            Ok(()) => {}
            Err(StoreError::Fenced { current, .. }) => env.check_eq(
                &id,
                "Fenced.current of a repeated complete",
                current,
                Some(a.token),
            ),
            Err(e) => env.fail(
                &id,
                format!("repeated complete with the settling token: {e}"),
            ),
        }
    })
    .await
}

/// A claim whose reply is lost after the store applied it is resolved by repeating it
/// with the same [`Claim::nonce`]: the store answers `Acquired` with the same token
/// (the key is not blocked until the lease passes), a claim with another nonce or
/// none still sees the record in progress, and a nonce whose ownership ended (settled,
/// taken over) no longer matches. Through the guard, a call whose claim reply is lost
/// runs once and returns its value at once.
pub async fn lost_claim_reply_is_resolved<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "lost_claim_reply_is_resolved", |env| async move {
        let s = &env.store;
        let id = env.id("repeat");
        let mine = env.claim(&id).nonce(0x5eed_0001);
        let a = env.acquire(&mine).await;
        let again = env.acquire(&mine).await;
        env.check_eq(&id, "token of the repeated claim", again.token, a.token);
        env.check_eq(
            &id,
            "attempt of the repeated claim",
            again.attempt,
            a.attempt,
        );
        env.check_eq(&id, "takeover of the repeated claim", again.takeover, None);
        env.check(again.lease_until >= a.lease_until, &id, || {
            format!(
                "the repeated claim moved the lease back: {} < {}",
                again.lease_until, a.lease_until
            )
        });
        let rec = env.existing(&env.claim(&id).nonce(0x5eed_0002)).await;
        env.check_eq(&id, "token seen by another nonce", rec.token, a.token);
        let rec = env.existing(&env.claim(&id)).await;
        env.check(!rec.state.is_settled(), &id, || {
            format!("a claim without a nonce did not see it in progress: {rec:?}")
        });
        env.ok(
            &id,
            "complete",
            s.complete(&id, a.token, raw(b"v"), Duration::from_secs(3600))
                .await,
        );
        let rec = env.existing(&mine).await;
        env.check_eq(
            &id,
            "state seen by the nonce after its settle",
            rec.state,
            State::Completed(raw(b"v")),
        );

        // Ownership moved by a takeover: the old nonce is someone else's record now,
        // the new owner's repeat keeps its takeover.
        let id = env.id("taken-over");
        let first = env.claim(&id).lease(env.units(2)).nonce(0x5eed_0003);
        let a = env.acquire(&first).await;
        env.pass(3).await;
        let second = env.claim(&id).nonce(0x5eed_0004);
        let b = env.acquire(&second).await;
        env.check_eq(&id, "takeover", b.takeover, Some(a.token));
        let rec = env.existing(&first).await;
        env.check_eq(
            &id,
            "token seen by the old owner's nonce",
            rec.token,
            b.token,
        );
        let again = env.acquire(&second).await;
        env.check_eq(&id, "token of the repeated takeover", again.token, b.token);
        env.check_eq(
            &id,
            "takeover of the repeated takeover",
            again.takeover,
            Some(a.token),
        );
        env.check_eq(
            &id,
            "attempt of the repeated takeover",
            again.attempt,
            b.attempt,
        );

        // Through the guard: the claim lands, its reply is lost.
        let lossy = LostReplies::new(env.store.clone());
        lossy.lose_claims.store(1, Ordering::SeqCst);
        let lose_claims = lossy.lose_claims.clone();
        let mut builder = Guard::builder(lossy)
            .scope(env.scope.clone())
            .lease(Duration::from_secs(600))
            .ttl(Duration::from_secs(3600));
        if let TimeControl::Manual(clock) = &env.time {
            builder = builder.clock(Arc::new(clock.clone()));
        }
        let guard = builder.build();
        let id = env.id("guarded");
        let runs = AtomicU32::new(0);
        let call = guard.run(id.key.as_str(), || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>("v".to_string())
        });
        match tokio::time::timeout(env.cfg.wait_timeout, call).await {
            Ok(Ok(v)) => env.check_eq(&id, "value", v.as_str(), "v"),
            Ok(Err(e)) => env.fail(&id, format!("a call whose claim reply was lost: {e}")),
            Err(_) => env.fail(
                &id,
                "a call whose claim reply was lost did not return (blocked by its own claim?)",
            ),
        }
        env.check_eq(
            &id,
            "lost claim replies left",
            lose_claims.load(Ordering::SeqCst),
            0,
        );
        env.check_eq(&id, "executions", runs.load(Ordering::SeqCst), 1);
        let rec = env.get_some(&id).await;
        env.check(matches!(rec.state, State::Completed(_)), &id, || {
            format!("not completed: {rec:?}")
        });
    })
    .await
}
