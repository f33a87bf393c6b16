//! The edge cases of the contract: durations at their maximum, abandoned records
//! whose ttl is shorter than their lease, `wait` deadlines, wake-ups after a release
//! and a re-claim, and writes whose reply was lost.

use std::sync::Arc;
use std::time::Duration;

use super::{Env, StoreFactory, TimeControl, with_env};
use crate::guard::{Guard, OnDuplicate};
use crate::store::{ClaimOutcome, Codec, Outcome, State, Store};

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
/// The durations are absolute (not [`KitConfig::real_time_unit`]s): stores with native
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
