//! The single-record cases: every state transition of the store contract.

use std::sync::Arc;
use std::time::Duration;

use super::{Env, StoreFactory, with_env};
use crate::store::{
    ClaimOutcome, Codec, Compression, Fingerprint, ListQuery, Outcome, RecordKey, State, Store,
};

fn raw(bytes: &[u8]) -> Outcome {
    Outcome::new(Codec::Raw, bytes.to_vec())
}

fn long_ttl() -> Duration {
    Duration::from_secs(3600)
}

fn fp(tag: u8) -> Option<Fingerprint> {
    Some(Fingerprint::of(&[tag]))
}

/// A fresh key is acquired: attempt 1, no takeover, a non-zero token, and `get` shows
/// the in-progress record with the claim's fingerprint and lease.
pub async fn fresh_claim_acquires<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "fresh_claim_acquires", |env| async move {
        let id = env.id("k");
        let claim = env.claim(&id).fingerprint(fp(1));
        let before = env.manual_now();
        let a = env.acquire(&claim).await;
        env.check_eq(&id, "takeover", a.takeover, None);
        env.check_eq(&id, "attempt", a.attempt, 1);
        if let Some(now) = before {
            env.check_eq(
                &id,
                "lease_until (now + lease)",
                a.lease_until,
                now + 600_000,
            );
        }
        let rec = env.get_some(&id).await;
        env.check_eq(
            &id,
            "state",
            &rec.state,
            &State::InProgress {
                lease_until: a.lease_until,
            },
        );
        env.check_eq(&id, "token", rec.token, a.token);
        env.check_eq(&id, "attempts", rec.attempts, 1);
        env.check_eq(&id, "fingerprint", rec.fingerprint, fp(1));
        env.check_eq(&id, "expires_at while in progress", rec.expires_at, None);
        env.check(rec.created_at <= rec.updated_at, &id, || {
            format!(
                "created_at {} > updated_at {}",
                rec.created_at, rec.updated_at
            )
        });
        if let Some(now) = before {
            env.check_eq(&id, "created_at", rec.created_at, now);
        }
        env.check(!rec.is_ambiguous(env.judge_now()), &id, || {
            "a fresh claim is ambiguous".into()
        });
    })
    .await
}

/// A second claim while the first owner's lease is live returns the in-progress
/// record (with or without `take_over_expired`).
pub async fn duplicate_claim_sees_in_progress<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(
        factory,
        "duplicate_claim_sees_in_progress",
        |env| async move {
            let id = env.id("k");
            let a = env.acquire(&env.claim(&id)).await;
            for take_over in [true, false] {
                let rec = env
                    .existing(&env.claim(&id).take_over_expired(take_over))
                    .await;
                env.check_eq(&id, "token of the live record", rec.token, a.token);
                env.check_eq(
                    &id,
                    "state",
                    &rec.state,
                    &State::InProgress {
                        lease_until: a.lease_until,
                    },
                );
                env.check_eq(&id, "attempts", rec.attempts, 1);
            }
        },
    )
    .await
}

/// `complete` settles the record; later claims and `get` replay the same outcome
/// (bytes, codec and compression), for every codec × compression.
pub async fn complete_replays_outcome<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "complete_replays_outcome", |env| async move {
        let codecs = [Codec::Raw, Codec::Json, Codec::Postcard];
        let compressions = [Compression::None, Compression::Lz4, Compression::Zstd];
        for codec in codecs {
            for compression in compressions {
                let id = env.id(&format!("k-{codec:?}-{compression:?}"));
                let a = env.acquire(&env.claim(&id).fingerprint(fp(7))).await;
                let outcome = Outcome {
                    codec,
                    compression,
                    bytes: format!("{{\"v\":\"{codec:?}/{compression:?}\"}}\0\u{ff}").into_bytes(),
                };
                let now = env.manual_now();
                let r = env
                    .store
                    .complete(&id, a.token, outcome.clone(), Duration::from_secs(120))
                    .await;
                env.ok(&id, "complete", r);
                let want = State::Completed(outcome.clone());
                let rec = env.existing(&env.claim(&id).fingerprint(fp(7))).await;
                env.check_eq(&id, "replayed state", &rec.state, &want);
                env.check_eq(&id, "token", rec.token, a.token);
                env.check_eq(&id, "attempts", rec.attempts, 1);
                match (now, rec.expires_at) {
                    (Some(now), got) => {
                        env.check_eq(&id, "expires_at (now + ttl)", got, Some(now + 120_000))
                    }
                    (None, Some(at)) => env.check(at > rec.created_at, &id, || {
                        format!("expires_at {at} not after created_at {}", rec.created_at)
                    }),
                    (None, None) => env.fail(&id, "a completed record has no expires_at"),
                }
                let got = env.get_some(&id).await;
                env.check_eq(&id, "state from get", &got.state, &want);
                // Replays do not depend on the claimant's settings.
                let rec = env.existing(&env.claim(&id).take_over_expired(false)).await;
                env.check_eq(&id, "state replayed without fingerprint", &rec.state, &want);
            }
        }
    })
    .await
}

/// `fail` stores a sticky failure: later claims return it, even after the lease would
/// have passed.
pub async fn fail_is_sticky<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "fail_is_sticky", |env| async move {
        let id = env.id("k");
        let a = env.acquire(&env.claim(&id).lease(env.units(2))).await;
        let err = Outcome::new(Codec::Json, br#"{"error":"card declined"}"#.to_vec());
        let r = env.store.fail(&id, a.token, err.clone(), long_ttl()).await;
        env.ok(&id, "fail", r);
        env.pass(3).await;
        let rec = env.existing(&env.claim(&id)).await;
        env.check_eq(&id, "state", &rec.state, &State::Failed(err.clone()));
        env.check_eq(&id, "token", rec.token, a.token);
        env.check(rec.expires_at.is_some(), &id, || {
            "failed record has no expires_at".into()
        });
        let rec = env.get_some(&id).await;
        env.check_eq(&id, "state from get", &rec.state, &State::Failed(err));
    })
    .await
}

/// `release` deletes the in-progress record: the key can be claimed again, afresh
/// (attempt 1, no takeover) and with a larger token.
pub async fn release_frees_the_key<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "release_frees_the_key", |env| async move {
        let id = env.id("k");
        let a = env.acquire(&env.claim(&id)).await;
        let r = env.store.release(&id, a.token).await;
        env.ok(&id, "release", r);
        if let Some(rec) = env.get(&id).await {
            env.fail(
                &id,
                format!("get after release: expected None, got {rec:?}"),
            );
        }
        let b = env.acquire(&env.claim(&id)).await;
        env.check(b.token > a.token, &id, || {
            format!(
                "token after release {} is not larger than {}",
                b.token, a.token
            )
        });
        env.check_eq(&id, "attempt after release", b.attempt, 1);
        env.check_eq(&id, "takeover after release", b.takeover, None);
    })
    .await
}

/// `renew` moves `lease_until` to now + lease; a renewed owner is not taken over when
/// its original lease passes.
pub async fn renew_extends_the_lease<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "renew_extends_the_lease", |env| async move {
        let id = env.id("k");
        let a = env.acquire(&env.claim(&id).lease(env.units(3))).await;
        env.pass(2).await;
        let now = env.manual_now();
        let r = env.store.renew(&id, a.token, env.units(12)).await;
        let until = env.ok(&id, "renew", r);
        env.check(until > a.lease_until, &id, || {
            format!(
                "renewed lease_until {until} is not after the original {}",
                a.lease_until
            )
        });
        if let Some(now) = now {
            env.check_eq(
                &id,
                "renewed lease_until (now + lease)",
                until,
                now + 12_000,
            );
        }
        let rec = env.get_some(&id).await;
        env.check_eq(
            &id,
            "state after renew",
            &rec.state,
            &State::InProgress { lease_until: until },
        );
        env.check_eq(&id, "token after renew", rec.token, a.token);
        // Past the original lease, well within the renewed one.
        env.pass(3).await;
        let rec = env.existing(&env.claim(&id)).await;
        env.check_eq(
            &id,
            "token (no takeover of a renewed lease)",
            rec.token,
            a.token,
        );
        let r = env
            .store
            .complete(&id, a.token, raw(b"done"), long_ttl())
            .await;
        env.ok(&id, "complete after renew", r);
    })
    .await
}

/// Same fingerprint → the existing record; different → `Mismatch` (in progress and
/// settled); a missing fingerprint on either side matches.
pub async fn fingerprint_rules<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "fingerprint_rules", |env| async move {
        let id = env.id("with-fp");
        let a = env.acquire(&env.claim(&id).fingerprint(fp(1))).await;
        let expect_mismatch = |got: ClaimOutcome, what: &str| match got {
            ClaimOutcome::Mismatch(rec) => {
                env.check_eq(
                    &id,
                    &format!("{what}: Mismatch record token"),
                    rec.token,
                    a.token,
                );
                env.check_eq(
                    &id,
                    &format!("{what}: Mismatch record fingerprint"),
                    rec.fingerprint,
                    fp(1),
                );
                rec
            }
            other => env.fail(&id, format!("{what}: expected Mismatch, got {other:?}")),
        };
        let got = env.claim_raw(&env.claim(&id).fingerprint(fp(2))).await;
        expect_mismatch(got, "in progress, other fingerprint");
        let rec = env.existing(&env.claim(&id).fingerprint(fp(1))).await;
        env.check_eq(&id, "same fingerprint: token", rec.token, a.token);
        let rec = env.existing(&env.claim(&id)).await;
        env.check_eq(&id, "claim without fingerprint: token", rec.token, a.token);
        let r = env
            .store
            .complete(&id, a.token, raw(b"v"), long_ttl())
            .await;
        env.ok(&id, "complete", r);
        let got = env.claim_raw(&env.claim(&id).fingerprint(fp(2))).await;
        let rec = expect_mismatch(got, "completed, other fingerprint");
        env.check_eq(
            &id,
            "Mismatch record state",
            &rec.state,
            &State::Completed(raw(b"v")),
        );
        let rec = env.existing(&env.claim(&id).fingerprint(fp(1))).await;
        env.check_eq(
            &id,
            "completed, same fingerprint",
            &rec.state,
            &State::Completed(raw(b"v")),
        );

        let id = env.id("without-fp");
        let b = env.acquire(&env.claim(&id)).await;
        let rec = env.existing(&env.claim(&id).fingerprint(fp(3))).await;
        env.check_eq(&id, "stored without fingerprint: token", rec.token, b.token);
        env.check_eq(&id, "stored fingerprint stays None", rec.fingerprint, None);
    })
    .await
}

/// After the lease passes, a claim takes over: a larger token, `takeover` = the old
/// token, attempt 2.
pub async fn lease_expiry_allows_takeover<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "lease_expiry_allows_takeover", |env| async move {
        let id = env.id("k");
        let a = env.acquire(&env.claim(&id).lease(env.units(2))).await;
        env.pass(3).await;
        let rec = env.get_some(&id).await;
        env.check(rec.is_ambiguous(env.judge_now()), &id, || {
            format!("record past its lease is not ambiguous: {rec:?}")
        });
        let now = env.manual_now();
        let b = env.acquire(&env.claim(&id)).await;
        env.check_eq(&id, "takeover", b.takeover, Some(a.token));
        env.check_eq(&id, "attempt", b.attempt, 2);
        env.check(b.token > a.token, &id, || {
            format!("takeover token {} is not larger than {}", b.token, a.token)
        });
        if let Some(now) = now {
            env.check_eq(
                &id,
                "lease_until of the takeover",
                b.lease_until,
                now + 600_000,
            );
        }
        let rec = env.get_some(&id).await;
        env.check_eq(&id, "token after takeover", rec.token, b.token);
        env.check_eq(&id, "attempts after takeover", rec.attempts, 2);
        env.check_eq(
            &id,
            "state after takeover",
            &rec.state,
            &State::InProgress {
                lease_until: b.lease_until,
            },
        );
    })
    .await
}

/// With `take_over_expired: false` an expired lease is reported as the existing,
/// ambiguous record, and nothing changes.
pub async fn no_takeover_reports_ambiguous<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "no_takeover_reports_ambiguous", |env| async move {
        let id = env.id("k");
        let a = env.acquire(&env.claim(&id).lease(env.units(2))).await;
        env.pass(3).await;
        for _ in 0..2 {
            let rec = env.existing(&env.claim(&id).take_over_expired(false)).await;
            env.check_eq(&id, "token", rec.token, a.token);
            env.check_eq(&id, "attempts", rec.attempts, 1);
            env.check(rec.is_ambiguous(env.judge_now()), &id, || {
                format!("expected an ambiguous record, got {rec:?}")
            });
        }
    })
    .await
}

/// An owner whose lease passed but whom nobody took over still owns the key: it can
/// renew, then complete.
pub async fn expired_owner_may_settle_until_taken_over<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(
        factory,
        "expired_owner_may_settle_until_taken_over",
        |env| async move {
            let id = env.id("renewed");
            let a = env.acquire(&env.claim(&id).lease(env.units(2))).await;
            env.pass(3).await;
            let r = env.store.renew(&id, a.token, env.units(20)).await;
            let until = env.ok(&id, "renew of an expired lease", r);
            env.check(until > a.lease_until, &id, || {
                "renew did not move the lease".into()
            });
            let rec = env.existing(&env.claim(&id)).await;
            env.check_eq(&id, "no takeover after renew", rec.token, a.token);
            let r = env
                .store
                .complete(&id, a.token, raw(b"late"), long_ttl())
                .await;
            env.ok(&id, "complete after renew", r);

            let id = env.id("completed-late");
            let a = env.acquire(&env.claim(&id).lease(env.units(2))).await;
            env.pass(3).await;
            let r = env
                .store
                .complete(&id, a.token, raw(b"late"), long_ttl())
                .await;
            env.ok(&id, "complete of an expired lease", r);
            let rec = env.existing(&env.claim(&id)).await;
            env.check_eq(&id, "state", &rec.state, &State::Completed(raw(b"late")));

            let id = env.id("released-late");
            let a = env.acquire(&env.claim(&id).lease(env.units(2))).await;
            env.pass(3).await;
            let r = env.store.release(&id, a.token).await;
            env.ok(&id, "release of an expired lease", r);
            let b = env.acquire(&env.claim(&id)).await;
            env.check_eq(&id, "claim after release: takeover", b.takeover, None);
        },
    )
    .await
}

/// After a takeover the old owner's complete/fail/release/renew get `Fenced` and change
/// nothing, before and after the new owner completes.
pub async fn fenced_after_takeover<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "fenced_after_takeover", |env| async move {
        let id = env.id("k");
        let a = env.acquire(&env.claim(&id).lease(env.units(2))).await;
        env.pass(3).await;
        let b = env.acquire(&env.claim(&id)).await;
        env.check_eq(&id, "takeover", b.takeover, Some(a.token));
        let before = env.get_some(&id).await;
        let cur = Some(b.token);
        let s = &env.store;
        env.expect_fenced(
            &id,
            "complete",
            a.token,
            cur,
            s.complete(&id, a.token, raw(b"old"), long_ttl()).await,
        );
        env.expect_fenced(
            &id,
            "fail",
            a.token,
            cur,
            s.fail(&id, a.token, raw(b"old"), long_ttl()).await,
        );
        env.expect_fenced(&id, "release", a.token, cur, s.release(&id, a.token).await);
        env.expect_fenced(
            &id,
            "renew",
            a.token,
            cur,
            s.renew(&id, a.token, env.units(100)).await,
        );
        let after = env.get_some(&id).await;
        env.check_eq(&id, "record after fenced calls", &after, &before);

        let r = s.complete(&id, b.token, raw(b"new"), long_ttl()).await;
        env.ok(&id, "complete by the new owner", r);
        env.expect_fenced(
            &id,
            "complete after the new owner's",
            a.token,
            cur,
            s.complete(&id, a.token, raw(b"old"), long_ttl()).await,
        );
        env.expect_fenced(
            &id,
            "fail after the new owner's",
            a.token,
            cur,
            s.fail(&id, a.token, raw(b"old"), long_ttl()).await,
        );
        env.expect_fenced(
            &id,
            "release after the new owner's",
            a.token,
            cur,
            s.release(&id, a.token).await,
        );
        let rec = env.get_some(&id).await;
        env.check_eq(&id, "state", &rec.state, &State::Completed(raw(b"new")));
        env.check_eq(&id, "token", rec.token, b.token);
    })
    .await
}

/// Once released or purged, the old token is fenced (`current: None` while the key is
/// empty, the new token once reclaimed).
pub async fn fenced_after_release_and_purge<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(
        factory,
        "fenced_after_release_and_purge",
        |env| async move {
            let s = &env.store;
            for how in ["release", "purge"] {
                let id = env.id(how);
                let a = env.acquire(&env.claim(&id)).await;
                if how == "release" {
                    let r = s.release(&id, a.token).await;
                    env.ok(&id, "release", r);
                } else {
                    let r = s.purge(&id).await;
                    env.check_eq(
                        &id,
                        "purge of an existing record",
                        env.ok(&id, "purge", r),
                        true,
                    );
                }
                env.expect_fenced(
                    &id,
                    "complete",
                    a.token,
                    None,
                    s.complete(&id, a.token, raw(b"x"), long_ttl()).await,
                );
                env.expect_fenced(
                    &id,
                    "fail",
                    a.token,
                    None,
                    s.fail(&id, a.token, raw(b"x"), long_ttl()).await,
                );
                env.expect_fenced(&id, "release", a.token, None, s.release(&id, a.token).await);
                env.expect_fenced(
                    &id,
                    "renew",
                    a.token,
                    None,
                    s.renew(&id, a.token, env.units(10)).await,
                );
                if let Some(rec) = env.get(&id).await {
                    env.fail(&id, format!("a fenced call recreated the record: {rec:?}"));
                }
                let b = env.acquire(&env.claim(&id)).await;
                env.check(b.token > a.token, &id, || {
                    format!("token {} after {how} not larger than {}", b.token, a.token)
                });
                env.expect_fenced(
                    &id,
                    "complete after reclaim",
                    a.token,
                    Some(b.token),
                    s.complete(&id, a.token, raw(b"x"), long_ttl()).await,
                );
                let rec = env.get_some(&id).await;
                env.check_eq(
                    &id,
                    "state after fenced complete",
                    &rec.state,
                    &State::InProgress {
                        lease_until: b.lease_until,
                    },
                );
            }
            let id = env.id("never-claimed");
            env.expect_fenced(
                &id,
                "complete of a missing record",
                1,
                None,
                s.complete(&id, 1, raw(b"x"), long_ttl()).await,
            );
            if let Some(rec) = env.get(&id).await {
                env.fail(
                    &id,
                    format!("complete of a missing record created it: {rec:?}"),
                );
            }
        },
    )
    .await
}

/// A settled record has no owner: release and renew with the token that settled it,
/// and settling it in the other state, get `Fenced` and change nothing. Repeating the
/// same settle with the same token (a retry after a lost reply) either succeeds without
/// changing anything or gets `Fenced` with `current` = that token.
pub async fn settled_record_has_no_owner<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "settled_record_has_no_owner", |env| async move {
        let s = &env.store;
        for settle in ["complete", "fail"] {
            let id = env.id(settle);
            let a = env.acquire(&env.claim(&id)).await;
            let settle_with = |completed: bool, bytes: &'static [u8]| {
                let (s, id) = (Arc::clone(&env.store), id.clone());
                async move {
                    if completed {
                        s.complete(&id, a.token, raw(bytes), long_ttl()).await
                    } else {
                        s.fail(&id, a.token, raw(bytes), long_ttl()).await
                    }
                }
            };
            let completed = settle == "complete";
            let r = settle_with(completed, b"first").await;
            env.ok(&id, settle, r);
            let before = env.get_some(&id).await;
            let cur = Some(a.token);
            // The same settle again: an idempotent retry.
            match settle_with(completed, b"second").await {
                Ok(()) => {}
                r => env.expect_fenced(&id, &format!("repeated {settle}"), a.token, cur, r),
            }
            let after = env.get_some(&id).await;
            env.check_eq(
                &id,
                &format!("record after a repeated {settle}"),
                &after,
                &before,
            );
            // The other settle, release and renew: fenced.
            let other = if completed { "fail" } else { "complete" };
            let r = settle_with(!completed, b"second").await;
            env.expect_fenced(&id, &format!("{other} after {settle}"), a.token, cur, r);
            env.expect_fenced(
                &id,
                &format!("release after {settle}"),
                a.token,
                cur,
                s.release(&id, a.token).await,
            );
            env.expect_fenced(
                &id,
                &format!("renew after {settle}"),
                a.token,
                cur,
                s.renew(&id, a.token, env.units(10)).await,
            );
            let after = env.get_some(&id).await;
            env.check_eq(&id, "record after fenced calls", &after, &before);
        }
    })
    .await
}

/// Settled records vanish `ttl` after settling: invisible to get, claim, list and
/// stats, and claimable afresh with a larger token; `sweep` never removes live ones.
pub async fn ttl_expiry_hides_settled_records<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(
        factory,
        "ttl_expiry_hides_settled_records",
        |env| async move {
            let s = &env.store;
            let short = env.units(2);
            let (ida, idb, idc) = (env.id("a-completed"), env.id("b-failed"), env.id("c-kept"));
            let a = env.acquire(&env.claim(&ida)).await;
            env.ok(
                &ida,
                "complete",
                s.complete(&ida, a.token, raw(b"a"), short).await,
            );
            let b = env.acquire(&env.claim(&idb)).await;
            env.ok(&idb, "fail", s.fail(&idb, b.token, raw(b"b"), short).await);
            let c = env.acquire(&env.claim(&idc)).await;
            env.ok(
                &idc,
                "complete",
                s.complete(&idc, c.token, raw(b"c"), long_ttl()).await,
            );
            env.pass(3).await;
            for id in [&ida, &idb] {
                if let Some(rec) = env.get(id).await {
                    env.fail(id, format!("get after ttl: expected None, got {rec:?}"));
                }
            }
            let page = env.ok(
                &idc,
                "list",
                s.list(&ListQuery {
                    scope: Some(env.scope.clone()),
                    ..ListQuery::default()
                })
                .await,
            );
            let keys: Vec<_> = page.records.iter().map(|r| r.id.key.as_str()).collect();
            env.check_eq(&idc, "keys listed after ttl", keys, vec!["c-kept"]);
            let stats = env.ok(&idc, "stats", s.stats().await);
            env.check_eq(
                &idc,
                "stats after ttl (completed, failed)",
                (stats.completed, stats.failed),
                (1, 0),
            );
            let swept = env.ok(&idc, "sweep", s.sweep().await);
            env.check(swept <= 2, &idc, || {
                format!("sweep removed {swept} records, only 2 had expired")
            });
            env.get_some(&idc).await;
            for (id, old) in [(&ida, a.token), (&idb, b.token)] {
                let n = env.acquire(&env.claim(id)).await;
                env.check_eq(id, "attempt of a claim after ttl", n.attempt, 1);
                env.check_eq(id, "takeover of a claim after ttl", n.takeover, None);
                env.check(n.token > old, id, || {
                    format!("token {} after ttl not larger than {old}", n.token)
                });
            }
            let rec = env.get_some(&idc).await;
            env.check_eq(
                &idc,
                "kept record",
                &rec.state,
                &State::Completed(raw(b"c")),
            );
        },
    )
    .await
}

/// `list` pages by scope and literal key prefix, ordered by (scope, key) as bytes,
/// and `after` continuation returns every record exactly once.
pub async fn list_pages_by_scope_and_prefix<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(
        factory,
        "list_pages_by_scope_and_prefix",
        |env| async move {
            let s = &env.store;
            let scope1 = env.scope.clone();
            let scope2 = format!("{}~2", env.scope);
            let mut keys1: Vec<String> = (0..37).map(|i| format!("k{i:03}")).collect();
            keys1.extend(
                [
                    "A", "B", "_", "a", "b", "z", "~", "é", "日本", "50%_a", "50%_b", "50x_c",
                    "50%xd",
                ]
                .map(String::from),
            );
            let keys2: Vec<String> = ["k001", "k100", "x"].map(String::from).to_vec();
            let mut all = Vec::new();
            for (scope, keys) in [(&scope1, &keys1), (&scope2, &keys2)] {
                for (i, key) in keys.iter().enumerate() {
                    let id = RecordKey::new(scope.clone(), key.clone());
                    let a = env.acquire(&env.claim(&id)).await;
                    match i % 3 {
                        0 => env.ok(
                            &id,
                            "complete",
                            s.complete(&id, a.token, raw(key.as_bytes()), long_ttl())
                                .await,
                        ),
                        1 => env.ok(
                            &id,
                            "fail",
                            s.fail(&id, a.token, raw(key.as_bytes()), long_ttl()).await,
                        ),
                        _ => {}
                    }
                    all.push(id);
                }
            }
            all.sort();
            let probe = env.id("list");

            let walk = |query: ListQuery| {
                let env = Arc::clone(&env);
                async move {
                    let mut out = Vec::new();
                    let mut query = query;
                    for _ in 0..1000 {
                        let page = env.ok(&probe_of(&env), "list", env.store.list(&query).await);
                        env.check(
                            page.records.len() <= query.effective_limit(),
                            &probe_of(&env),
                            || {
                                format!(
                                    "page of {} records exceeds the limit {}",
                                    page.records.len(),
                                    query.effective_limit()
                                )
                            },
                        );
                        out.extend(page.records.into_iter().map(|r| r.id));
                        match page.next {
                            Some(next) => query.after = Some(next),
                            None => return out,
                        }
                    }
                    env.fail(&probe_of(&env), "list never ended (1000 pages)")
                }
            };

            // Scope 1, pages of 5.
            let got = walk(ListQuery {
                scope: Some(scope1.clone()),
                limit: 5,
                ..ListQuery::default()
            })
            .await;
            let want: Vec<RecordKey> = all
                .iter()
                .filter(|id| id.scope == scope1)
                .cloned()
                .collect();
            env.check_eq(
                &probe,
                "scope walk (pages of 5), in (scope, key) byte order",
                &got,
                &want,
            );

            // Scope 1, literal prefix with SQL wildcard characters.
            let got = walk(ListQuery {
                scope: Some(scope1.clone()),
                key_prefix: Some("50%_".into()),
                limit: 1,
                ..ListQuery::default()
            })
            .await;
            let keys: Vec<_> = got.iter().map(|id| id.key.as_str()).collect();
            env.check_eq(
                &probe,
                "prefix \"50%_\" (literal, not a LIKE pattern)",
                keys,
                vec!["50%_a", "50%_b"],
            );
            let got = walk(ListQuery {
                scope: Some(scope1.clone()),
                key_prefix: Some("k01".into()),
                limit: 3,
                ..ListQuery::default()
            })
            .await;
            let keys: Vec<_> = got.iter().map(|id| id.key.clone()).collect();
            let want: Vec<_> = (10..20).map(|i| format!("k{i:03}")).collect();
            env.check_eq(&probe, "prefix \"k01\"", keys, want);

            // Scope 2 with the default limit: one page.
            let page = env.ok(
                &probe,
                "list",
                s.list(&ListQuery {
                    scope: Some(scope2.clone()),
                    ..ListQuery::default()
                })
                .await,
            );
            let keys: Vec<_> = page.records.iter().map(|r| r.id.key.as_str()).collect();
            env.check_eq(&probe, "scope 2 keys", keys, vec!["k001", "k100", "x"]);
            env.check(page.next.is_none(), &probe, || {
                format!("a complete page has next = {:?}", page.next)
            });
            for rec in &page.records {
                let want = env.get_some(&rec.id).await;
                env.check_eq(&rec.id, "listed record equals get", rec, &want);
            }

            // No filter: the whole store, in order; ours appear exactly once.
            let got = walk(ListQuery {
                limit: 7,
                ..ListQuery::default()
            })
            .await;
            env.check(got.windows(2).all(|w| w[0] < w[1]), &probe, || {
                "unfiltered list is not strictly ordered by (scope, key)".into()
            });
            let ours: Vec<RecordKey> = got
                .into_iter()
                .filter(|id| id.scope == scope1 || id.scope == scope2)
                .collect();
            env.check_eq(&probe, "unfiltered walk (pages of 7)", &ours, &all);

            // A prefix matching nothing, a scope matching nothing.
            let page = env.ok(
                &probe,
                "list",
                s.list(&ListQuery {
                    scope: Some(scope1.clone()),
                    key_prefix: Some("nothing".into()),
                    ..ListQuery::default()
                })
                .await,
            );
            env.check(
                page.records.is_empty() && page.next.is_none(),
                &probe,
                || format!("empty query returned {page:?}"),
            );
        },
    )
    .await
}

fn probe_of(env: &Env) -> RecordKey {
    env.id("list")
}

/// `purge` deletes a record in any state and reports whether it existed.
pub async fn purge_removes_any_state<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "purge_removes_any_state", |env| async move {
        let s = &env.store;
        let amb = env.id("ambiguous");
        env.acquire(&env.claim(&amb).lease(env.units(2))).await;
        env.pass(3).await;
        let live = env.id("in-progress");
        env.acquire(&env.claim(&live)).await;
        let done = env.id("completed");
        let a = env.acquire(&env.claim(&done)).await;
        env.ok(
            &done,
            "complete",
            s.complete(&done, a.token, raw(b"v"), long_ttl()).await,
        );
        let failed = env.id("failed");
        let a = env.acquire(&env.claim(&failed)).await;
        env.ok(
            &failed,
            "fail",
            s.fail(&failed, a.token, raw(b"e"), long_ttl()).await,
        );
        for id in [&amb, &live, &done, &failed] {
            env.check_eq(
                id,
                "purge of an existing record",
                env.ok(id, "purge", s.purge(id).await),
                true,
            );
            if let Some(rec) = env.get(id).await {
                env.fail(id, format!("get after purge: expected None, got {rec:?}"));
            }
            env.check_eq(
                id,
                "second purge",
                env.ok(id, "purge", s.purge(id).await),
                false,
            );
            let n = env.acquire(&env.claim(id)).await;
            env.check_eq(id, "attempt after purge", n.attempt, 1);
            env.check_eq(id, "takeover after purge", n.takeover, None);
        }
        let missing = env.id("missing");
        env.check_eq(
            &missing,
            "purge of a missing record",
            env.ok(&missing, "purge", s.purge(&missing).await),
            false,
        );
    })
    .await
}

/// `stats` counts live in-progress, ambiguous, completed and failed records.
pub async fn stats_count_states<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "stats_count_states", |env| async move {
        let s = &env.store;
        let probe = env.id("stats");
        let empty = env.ok(&probe, "stats", s.stats().await);
        env.check_eq(
            &probe,
            "stats of a fresh store (in_progress, ambiguous, completed, failed)",
            (
                empty.in_progress,
                empty.ambiguous,
                empty.completed,
                empty.failed,
            ),
            (0, 0, 0, 0),
        );
        let amb = env.id("ambiguous");
        env.acquire(&env.claim(&amb).lease(env.units(2))).await;
        env.pass(3).await;
        let mut bytes = 0u64;
        for i in 0..2 {
            env.acquire(&env.claim(&env.id(&format!("live-{i}")))).await;
        }
        for i in 0..3 {
            let id = env.id(&format!("done-{i}"));
            let a = env.acquire(&env.claim(&id)).await;
            let out = raw(&vec![b'x'; 10 * (i + 1)]);
            bytes += out.bytes.len() as u64;
            env.ok(
                &id,
                "complete",
                s.complete(&id, a.token, out, long_ttl()).await,
            );
        }
        let id = env.id("failed");
        let a = env.acquire(&env.claim(&id)).await;
        env.ok(
            &id,
            "fail",
            s.fail(&id, a.token, raw(b"err"), long_ttl()).await,
        );
        bytes += 3;
        let stats = env.ok(&probe, "stats", s.stats().await);
        env.check_eq(
            &probe,
            "stats (in_progress, ambiguous, completed, failed)",
            (
                stats.in_progress,
                stats.ambiguous,
                stats.completed,
                stats.failed,
            ),
            (2, 1, 3, 1),
        );
        if let Some(b) = stats.outcome_bytes {
            env.check(b >= bytes, &probe, || {
                format!("outcome_bytes {b} < the {bytes} bytes stored")
            });
        }
    })
    .await
}

/// `wait` returns the settled record (completed, failed) or `None` (released,
/// purged, missing) promptly after the change, to every waiter.
pub async fn wait_returns_when_settled_or_gone<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(
        factory,
        "wait_returns_when_settled_or_gone",
        |env| async move {
            let missing = env.id("missing");
            let got = env.ok(
                &missing,
                "wait",
                env.store.wait(&missing, env.cfg.wait_timeout).await,
            );
            env.check_eq(&missing, "wait on a missing record", got, None);

            for how in ["complete", "fail", "release", "purge"] {
                let id = env.id(how);
                let a = env.acquire(&env.claim(&id)).await;
                let waiters: Vec<_> = (0..3)
                    .map(|_| {
                        let store = env.store.clone();
                        let id = id.clone();
                        // The waiter's own timeout is far beyond the bound checked below,
                        // so a waiter that is never woken is caught.
                        let timeout = env.cfg.wait_timeout * 3;
                        tokio::spawn(async move { store.wait(&id, timeout).await })
                    })
                    .collect();
                tokio::time::sleep(Duration::from_millis(20)).await;
                let s = &env.store;
                let want = match how {
                    "complete" => {
                        env.ok(
                            &id,
                            how,
                            s.complete(&id, a.token, raw(b"done"), long_ttl()).await,
                        );
                        Some(State::Completed(raw(b"done")))
                    }
                    "fail" => {
                        env.ok(
                            &id,
                            how,
                            s.fail(&id, a.token, raw(b"err"), long_ttl()).await,
                        );
                        Some(State::Failed(raw(b"err")))
                    }
                    "release" => {
                        env.ok(&id, how, s.release(&id, a.token).await);
                        None
                    }
                    _ => {
                        env.ok(&id, how, s.purge(&id).await);
                        None
                    }
                };
                for w in waiters {
                    let got = match tokio::time::timeout(env.cfg.wait_timeout, w).await {
                        Ok(Ok(r)) => env.ok(&id, "wait", r),
                        Ok(Err(join)) => env.fail(&id, format!("waiter task failed: {join}")),
                        Err(_) => env.fail(
                            &id,
                            format!(
                                "wait did not return within {:?} after {how}",
                                env.cfg.wait_timeout
                            ),
                        ),
                    };
                    let got_state = got.map(|r| r.state);
                    env.check_eq(&id, &format!("wait after {how}"), got_state, want.clone());
                }
                // Waiting on a settled record returns at once.
                if want.is_some() {
                    let got = env.ok(&id, "wait", env.store.wait(&id, env.cfg.wait_timeout).await);
                    env.check_eq(&id, "wait on a settled record", got.map(|r| r.state), want);
                }
            }
        },
    )
    .await
}

/// `wait` on a record nobody settles returns the in-progress record after its timeout.
pub async fn wait_times_out_on_in_progress<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "wait_times_out_on_in_progress", |env| async move {
        let id = env.id("k");
        let a = env.acquire(&env.claim(&id)).await;
        let got = env.ok(
            &id,
            "wait",
            env.store.wait(&id, Duration::from_millis(200)).await,
        );
        match got {
            Some(rec) => {
                env.check_eq(&id, "token", rec.token, a.token);
                env.check_eq(
                    &id,
                    "state",
                    rec.state,
                    State::InProgress {
                        lease_until: a.lease_until,
                    },
                );
            }
            None => env.fail(
                &id,
                "wait timed out but returned None for an in-progress record",
            ),
        }
    })
    .await
}

/// Tokens strictly increase per key across claim, release, purge, takeover and ttl
/// expiry.
pub async fn tokens_increase_per_key<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "tokens_increase_per_key", |env| async move {
        let s = &env.store;
        let id = env.id("k");
        let mut tokens = Vec::new();
        let a = env.acquire(&env.claim(&id)).await;
        tokens.push(a.token);
        env.ok(&id, "release", s.release(&id, a.token).await);
        let a = env.acquire(&env.claim(&id)).await;
        tokens.push(a.token);
        env.ok(&id, "purge", s.purge(&id).await);
        let a = env.acquire(&env.claim(&id).lease(env.units(2))).await;
        tokens.push(a.token);
        env.pass(3).await;
        let a = env.acquire(&env.claim(&id)).await;
        tokens.push(a.token);
        env.ok(&id, "complete", s.complete(&id, a.token, raw(b"v"), env.units(2)).await);
        env.pass(3).await;
        let a = env.acquire(&env.claim(&id)).await;
        tokens.push(a.token);
        env.ok(&id, "complete", s.complete(&id, a.token, raw(b"v"), long_ttl()).await);
        env.ok(&id, "purge", s.purge(&id).await);
        let a = env.acquire(&env.claim(&id)).await;
        tokens.push(a.token);
        env.check(tokens.windows(2).all(|w| w[0] < w[1]), &id, || {
            format!("tokens across claim/release/claim/purge/claim/takeover/ttl/claim/purge/claim are not strictly increasing: {tokens:?}")
        });
    })
    .await
}

/// Deterministic pseudo-random bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A 1 MiB outcome (every byte value) and an empty outcome round-trip byte-exact.
pub async fn large_outcomes_round_trip<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "large_outcomes_round_trip", |env| async move {
        for (name, bytes) in [("large", noise(1 << 20, 42)), ("empty", Vec::new())] {
            let id = env.id(name);
            let a = env.acquire(&env.claim(&id)).await;
            let out = Outcome { codec: Codec::Postcard, compression: Compression::None, bytes };
            env.ok(&id, "complete", env.store.complete(&id, a.token, out.clone(), long_ttl()).await);
            let rec = env.get_some(&id).await;
            match &rec.state {
                State::Completed(got) if *got == out => {}
                State::Completed(got) => env.fail(&id, format!(
                    "outcome changed: {} bytes stored, {} bytes read back (first difference at {:?})",
                    out.bytes.len(), got.bytes.len(),
                    out.bytes.iter().zip(&got.bytes).position(|(a, b)| a != b)
                )),
                other => env.fail(&id, format!("expected Completed, got {}", other.name())),
            }
            let rec = env.existing(&env.claim(&id)).await;
            env.check(rec.state == State::Completed(out.clone()), &id, || "replayed outcome differs".into());
        }
    })
    .await
}

/// Scopes and keys with unicode, control and punctuation characters, and of the
/// maximum length (255 bytes), work in every operation.
pub async fn odd_keys_round_trip<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "odd_keys_round_trip", |env| async move {
        let s = &env.store;
        let base = env.scope.clone();
        let mut ids = vec![
            RecordKey::new(base.clone(), "ключ-🔑-鍵"),
            RecordKey::new(base.clone(), "tab\tnew\nline\r\u{1}\u{7f}"),
            RecordKey::new(base.clone(), "quote'\"back\\slash`$(x);--"),
            RecordKey::new(base.clone(), "percent%_under*?[a]{b}:c/d|e"),
            RecordKey::new(base.clone(), " spaces  "),
            RecordKey::new(base.clone(), "\u{feff}\u{200b}\u{fffd}\u{10ffff}"),
            RecordKey::new(base.clone(), "k".repeat(255)),
            RecordKey::new(base.clone(), "🔑".repeat(63)),
            RecordKey::new(format!("{base}-ünï 🔑:{{x}}"), "k"),
            RecordKey::new(
                format!("{base}{}", "s".repeat(255 - base.len())),
                "k".repeat(255),
            ),
            RecordKey::new("", format!("{base}-empty-scope")),
        ];
        ids.dedup();
        for id in &ids {
            env.check(id.key.len() <= 255 && id.scope.len() <= 255, id, || {
                "test key too long".into()
            });
            let a = env.acquire(&env.claim(id).fingerprint(fp(9))).await;
            let rec = env.get_some(id).await;
            env.check_eq(id, "token", rec.token, a.token);
            env.ok(
                id,
                "renew",
                s.renew(id, a.token, Duration::from_secs(600)).await,
            );
            let out = raw(id.key.as_bytes());
            env.ok(
                id,
                "complete",
                s.complete(id, a.token, out.clone(), long_ttl()).await,
            );
            let rec = env.existing(&env.claim(id).fingerprint(fp(9))).await;
            env.check_eq(id, "replayed state", &rec.state, &State::Completed(out));
            let page = env.ok(
                id,
                "list",
                s.list(&ListQuery {
                    scope: Some(id.scope.clone()),
                    key_prefix: Some(id.key.clone()),
                    ..ListQuery::default()
                })
                .await,
            );
            let listed: Vec<_> = page.records.iter().map(|r| &r.id).collect();
            env.check_eq(
                id,
                "list by scope and the full key as prefix",
                listed,
                vec![id],
            );
        }
        for id in &ids {
            env.check_eq(id, "purge", env.ok(id, "purge", s.purge(id).await), true);
            if let Some(rec) = env.get(id).await {
                env.fail(id, format!("get after purge: {rec:?}"));
            }
        }
    })
    .await
}

/// `(scope, key)` pairs that would collide under naive concatenation are distinct
/// records.
pub async fn distinct_ids_never_collide<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "distinct_ids_never_collide", |env| async move {
        let b = env.scope.clone();
        let ids = [
            RecordKey::new(format!("{b}:a"), "b"),
            RecordKey::new(b.clone(), "a:b"),
            RecordKey::new(format!("{b}/a"), "b"),
            RecordKey::new(b.clone(), "a/b"),
            RecordKey::new(format!("{b}\u{1}"), "x"),
            RecordKey::new(b.clone(), "\u{1}x"),
            RecordKey::new(format!("{b}{{a}}"), "b"),
            RecordKey::new(format!("{b}{{a"), "}b"),
            RecordKey::new(format!("{b}|"), "y"),
            RecordKey::new(b.clone(), "|y"),
        ];
        let mut tokens = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let a = env.acquire(&env.claim(id)).await;
            env.ok(
                id,
                "complete",
                env.store
                    .complete(id, a.token, raw(format!("v{i}").as_bytes()), long_ttl())
                    .await,
            );
            tokens.push(a.token);
        }
        for (i, id) in ids.iter().enumerate() {
            let rec = env.get_some(id).await;
            env.check_eq(
                id,
                "value (records sharing storage?)",
                &rec.state,
                &State::Completed(raw(format!("v{i}").as_bytes())),
            );
            env.check_eq(id, "token", rec.token, tokens[i]);
        }
    })
    .await
}

/// Many tasks claiming one key at once: exactly one acquires; everyone else sees the
/// same owner's record.
pub async fn hot_key_has_one_owner<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "hot_key_has_one_owner", |env| async move {
        let id = env.id("hot");
        let n = env.cfg.storm.tasks.max(2);
        let barrier = Arc::new(tokio::sync::Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let env = Arc::clone(&env);
                let id = id.clone();
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    barrier.wait().await;
                    env.claim_raw(&env.claim(&id)).await
                })
            })
            .collect();
        let mut owners = Vec::new();
        let mut seen = Vec::new();
        for h in handles {
            match h.await {
                Ok(ClaimOutcome::Acquired { token, .. }) => owners.push(token),
                Ok(ClaimOutcome::Existing(rec)) => seen.push(rec.token),
                Ok(other) => env.fail(&id, format!("unexpected {other:?}")),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => env.fail(&id, format!("task failed: {e}")),
            }
        }
        env.check_eq(
            &id,
            "number of owners among concurrent claims",
            owners.len(),
            1,
        );
        env.check(seen.iter().all(|t| *t == owners[0]), &id, || {
            format!(
                "non-owners saw tokens {seen:?}, the owner has {}",
                owners[0]
            )
        });
    })
    .await
}
