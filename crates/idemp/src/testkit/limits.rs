//! The limits of the contract ([`LIMITS`]): every store accepts a key, a scope and an
//! outcome of exactly the limit, refuses one byte more with `Invalid` without changing
//! anything, and caps durations at `max_duration`.

use std::time::Duration;

use super::{Env, StoreFactory, with_env};
use crate::clock::Millis;
use crate::store::{
    Codec, ErrorKind, LIMITS, ListQuery, Outcome, RecordKey, State, StoreResult, Token,
};

/// Fails the case unless `r` is an `Invalid` error.
fn expect_invalid<T: std::fmt::Debug>(env: &Env, id: &RecordKey, op: &str, r: StoreResult<T>) {
    match r {
        Err(e) if e.kind() == ErrorKind::Invalid => {}
        Err(e) => env.fail(id, format!("{op}: expected Invalid, got {e:?}")),
        Ok(v) => env.fail(id, format!("{op}: expected Invalid, got Ok({v:?})")),
    }
}

/// A record still in progress under `token`: the refused write changed nothing.
async fn still_in_progress(env: &Env, id: &RecordKey, token: Token, after: &str) {
    let rec = env.get_some(id).await;
    env.check(
        rec.token == token && matches!(rec.state, State::InProgress { .. }),
        id,
        || format!("after a refused {after}, the record changed: {rec:?}"),
    );
}

/// `scope` padded with `s` to exactly `len` bytes (the case's unique scope first).
fn scope_of(base: &str, len: usize) -> String {
    let mut s = base.to_string();
    s.truncate(len);
    while s.len() < len {
        s.push('s');
    }
    s
}

/// [`LIMITS`] hold on the store:
///
/// * a key of exactly `max_key_bytes` and a scope of exactly `max_scope_bytes` are
///   claimed, settled and read back; an outcome of exactly `max_outcome_bytes` is
///   stored and replayed byte for byte;
/// * one byte more (key, scope, outcome), an empty key or a NUL character is refused
///   with `Invalid` by `claim`, `complete`, `fail`, `release` and `renew`, and the
///   refused write changed nothing (the record is still in progress under its token,
///   no record appears in the scope);
/// * a lease or ttl longer than `max_duration` is accepted and capped at it.
pub async fn limits_are_honoured<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(factory, "limits_are_honoured", |env| async move {
        let s = &env.store;
        let max = LIMITS;
        let at_key = env.id(&"k".repeat(max.max_key_bytes));

        // A key at the limit, and an outcome at the limit (after one byte more is
        // refused without touching the record).
        let a = env.acquire(&env.claim(&at_key)).await;
        let over_outcome = Outcome::new(Codec::Raw, vec![7; max.max_outcome_bytes + 1]);
        expect_invalid(
            &env,
            &at_key,
            "complete with an outcome one byte over the limit",
            s.complete(&at_key, a.token, over_outcome.clone(), env.units(100))
                .await,
        );
        still_in_progress(&env, &at_key, a.token, "complete").await;
        expect_invalid(
            &env,
            &at_key,
            "fail with an outcome one byte over the limit",
            s.fail(&at_key, a.token, over_outcome, env.units(100)).await,
        );
        still_in_progress(&env, &at_key, a.token, "fail").await;
        let mut big: Vec<u8> = (0..max.max_outcome_bytes)
            .map(|i| (i % 251) as u8)
            .collect();
        big[0] = 1;
        let at_outcome = Outcome::new(Codec::Raw, big);
        env.ok(
            &at_key,
            "complete with an outcome at the limit",
            s.complete(&at_key, a.token, at_outcome.clone(), env.units(100))
                .await,
        );
        let rec = env.get_some(&at_key).await;
        match &rec.state {
            State::Completed(o) => env.check(o == &at_outcome, &at_key, || {
                format!(
                    "the outcome at the limit came back changed ({} bytes, expected {})",
                    o.bytes.len(),
                    at_outcome.bytes.len()
                )
            }),
            other => env.fail(&at_key, format!("expected Completed, got {}", other.name())),
        }
        env.check_eq(&at_key, "key at the limit read back", &rec.id, &at_key);
        drop(rec);
        drop(at_outcome);

        // A scope at the limit.
        let at_scope = RecordKey::new(scope_of(&env.scope, max.max_scope_bytes), "k");
        let b = env.acquire(&env.claim(&at_scope)).await;
        env.ok(
            &at_scope,
            "complete in a scope at the limit",
            s.complete(
                &at_scope,
                b.token,
                Outcome::new(Codec::Raw, b"v".to_vec()),
                env.units(100),
            )
            .await,
        );
        let rec = env.get_some(&at_scope).await;
        env.check_eq(
            &at_scope,
            "scope at the limit read back",
            &rec.id,
            &at_scope,
        );

        // One byte over, empty, NUL: refused by every write, changing nothing.
        let over_key = env.id(&"k".repeat(max.max_key_bytes + 1));
        let over_scope = RecordKey::new(scope_of(&env.scope, max.max_scope_bytes + 1), "k");
        let empty = env.id("");
        let nul = env.id("a\0b");
        for bad in [&over_key, &over_scope, &empty, &nul] {
            expect_invalid(&env, bad, "claim", s.claim(&env.claim(bad)).await);
            let raw = || Outcome::new(Codec::Raw, b"v".to_vec());
            let ttl = env.units(100);
            expect_invalid(
                &env,
                bad,
                "complete",
                s.complete(bad, a.token, raw(), ttl).await,
            );
            expect_invalid(&env, bad, "fail", s.fail(bad, a.token, raw(), ttl).await);
            expect_invalid(&env, bad, "release", s.release(bad, a.token).await);
            expect_invalid(
                &env,
                bad,
                "renew",
                s.renew(bad, a.token, env.units(10)).await,
            );
        }
        let page = env.ok(
            &at_key,
            "list",
            s.list(&ListQuery {
                scope: Some(env.scope.clone()),
                ..ListQuery::default()
            })
            .await,
        );
        let keys: Vec<usize> = page.records.iter().map(|r| r.id.key.len()).collect();
        env.check_eq(
            &at_key,
            "key lengths of the records in the scope after the refused claims",
            keys,
            vec![max.max_key_bytes],
        );

        // Durations over the limit are capped at it.
        let slack: Millis = 3_600_000;
        let cap = max.max_duration_ms();
        let long = env.id("long");
        let before = env.judge_now();
        let c = env
            .acquire(
                &env.claim(&long)
                    .lease(max.max_duration * 2)
                    .ttl(Duration::MAX),
            )
            .await;
        let after = env.judge_now();
        env.check(
            c.lease_until <= after.saturating_add(cap).saturating_add(slack)
                && c.lease_until >= before.saturating_add(cap).saturating_sub(slack),
            &long,
            || {
                format!(
                    "a lease of twice max_duration ends at {}, expected about now ({before}) \
                     + {cap} ms",
                    c.lease_until
                )
            },
        );
        env.ok(
            &long,
            "complete with a ttl of twice max_duration",
            s.complete(
                &long,
                c.token,
                Outcome::new(Codec::Raw, b"v".to_vec()),
                max.max_duration * 2,
            )
            .await,
        );
        let after = env.judge_now();
        let rec = env.get_some(&long).await;
        let expires = rec.expires_at.unwrap_or(0);
        env.check(
            expires <= after.saturating_add(cap).saturating_add(slack)
                && expires >= before.saturating_add(cap).saturating_sub(slack),
            &long,
            || {
                format!(
                    "a ttl of twice max_duration expires at {expires}, expected about now \
                     ({before}) + {cap} ms"
                )
            },
        );
    })
    .await;
}
