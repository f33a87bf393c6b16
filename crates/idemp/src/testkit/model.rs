//! Random operation sequences checked step by step against a reference model of the
//! contract.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::{Env, StoreFactory, TimeControl, with_env};
use crate::clock::Millis;
use crate::store::{
    ClaimOutcome, Codec, Fingerprint, Outcome, RecordKey, State, StoreError, Token,
};

/// Keys per sequence: few, so operations collide.
const KEYS: usize = 3;

/// A deterministic xorshift generator (the suite must not depend on proptest).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Claim {
        key: usize,
        fp: u8,
        take_over: bool,
        /// The claimant's [`Claim::nonce`](crate::store::Claim::nonce): none, or one
        /// of two, so that claims often repeat the owner's.
        nonce: Option<u64>,
    },
    Complete {
        key: usize,
        stale: bool,
    },
    Fail {
        key: usize,
        stale: bool,
    },
    Release {
        key: usize,
        stale: bool,
    },
    Renew {
        key: usize,
        stale: bool,
    },
    Purge {
        key: usize,
    },
    /// Seconds to advance a manual clock (not generated with real time).
    Advance(u64),
    Sweep,
}

fn gen_op(rng: &mut Rng, manual: bool) -> Op {
    let key = rng.below(KEYS as u64) as usize;
    let stale = rng.below(3) == 0;
    loop {
        return match rng.below(12) {
            0..=2 => Op::Claim {
                key,
                fp: rng.below(2) as u8,
                take_over: rng.below(4) != 0,
                nonce: match rng.below(3) {
                    0 => None,
                    n => Some(0x5eed_0000 + n),
                },
            },
            3 | 4 => Op::Complete { key, stale },
            5 => Op::Fail { key, stale },
            6 => Op::Release { key, stale },
            7 => Op::Renew { key, stale },
            8 => Op::Purge { key },
            9 | 10 if manual => Op::Advance(rng.below(40)),
            11 => Op::Sweep,
            _ => continue,
        };
    }
}

#[derive(Clone, Debug)]
struct ModelRecord {
    fp: u8,
    token: Token,
    attempts: u32,
    /// `Some` while in progress.
    lease_until: Option<Millis>,
    /// `Some((completed, expires_at))` once settled.
    settled: Option<(bool, Millis)>,
    /// The nonce of the claim that acquired it.
    nonce: Option<u64>,
    /// The token it took over, if it was acquired by a takeover.
    takeover: Option<Token>,
}

impl ModelRecord {
    /// Settled and past its retention. (Claims use a ttl far beyond any sequence, so
    /// no in-progress record is ever abandoned long enough to expire.)
    fn expired(&self, now: Millis) -> bool {
        self.settled.is_some_and(|(_, at)| at <= now)
    }
}

/// Random sequences of claim (with no nonce or one of two, so claims often repeat the
/// owner's: `Acquired` again with its token, takeover and attempt) / complete / fail /
/// release / renew (with the current or a stale token) / purge / sweep, and clock
/// moves on a manual clock, on a few keys:
/// after every step, every key's record (`get`) and `stats` must equal a reference
/// model's. Sequences are reproducible: a failure names the run, the step and the
/// operations so far. With real time no time passes in the model (leases are long).
pub async fn random_operations_match_the_model<F: StoreFactory + ?Sized>(factory: &F) {
    with_env(
        factory,
        "random_operations_match_the_model",
        |env| async move {
            let runs = env.cfg.model_runs;
            let steps = env.cfg.model_steps;
            for run in 0..runs {
                run_sequence(&env, run, steps).await;
            }
        },
    )
    .await
}

async fn run_sequence(env: &Env, run: usize, steps: usize) {
    let manual = matches!(env.time, TimeControl::Manual(_));
    // Manual: 10 s leases, settled records kept 25 s, advances of up to 40 s.
    // Real: nothing expires.
    let (lease_ms, ttl_ms): (Millis, Millis) = if manual {
        (10_000, 25_000)
    } else {
        (600_000, 3_600_000)
    };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (run as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let ids: Vec<RecordKey> = (0..KEYS).map(|k| env.id(&format!("m{run}-{k}"))).collect();
    let fps = [Fingerprint::of(b"model-a"), Fingerprint::of(b"model-b")];
    let mut model: HashMap<usize, ModelRecord> = HashMap::new();
    let mut issued: Vec<Vec<Token>> = vec![Vec::new(); KEYS];
    let mut log = String::new();
    let s = &env.store;
    for step in 0..steps {
        let op = gen_op(&mut rng, manual);
        let _ = write!(log, "\n  {step}: {op:?}");
        let now = env.manual_now().unwrap_or(0);
        model.retain(|_, r| !r.expired(now));
        let ctx =
            |what: String| format!("run {run}, step {step} ({what}); operations so far:{log}");
        match op {
            Op::Claim {
                key,
                fp,
                take_over,
                nonce,
            } => {
                let id = &ids[key];
                let mut claim = env
                    .claim(id)
                    .fingerprint(Some(fps[fp as usize]))
                    .lease(Duration::from_millis(lease_ms))
                    .ttl(Duration::from_secs(7 * 24 * 3600))
                    .take_over_expired(take_over);
                claim.nonce = nonce;
                let got = env.claim_raw(&claim).await;
                // A repeat by the owner's nonce: the same acquisition again.
                let repeat = model
                    .get(&key)
                    .filter(|r| r.fp == fp && r.settled.is_none())
                    .filter(|r| nonce.is_some() && r.nonce == nonce)
                    .map(|r| (r.token, r.takeover, r.attempts));
                let expect_acquire = match model.get(&key) {
                    _ if repeat.is_some() => None,
                    None => Some((None, 1)),
                    Some(r) if r.fp != fp => {
                        if !matches!(got, ClaimOutcome::Mismatch(_)) {
                            env.fail(id, ctx(format!("expected Mismatch, got {got:?}")));
                        }
                        None
                    }
                    Some(r) if manual && take_over && r.lease_until.is_some_and(|l| l <= now) => {
                        Some((Some(r.token), r.attempts + 1))
                    }
                    Some(r) => {
                        match &got {
                            ClaimOutcome::Existing(rec) if rec.token == r.token => {}
                            other => env.fail(
                                id,
                                ctx(format!(
                                    "expected Existing with token {}, got {other:?}",
                                    r.token
                                )),
                            ),
                        }
                        None
                    }
                };
                if let Some((want_token, want_takeover, want_attempt)) = repeat {
                    match got {
                        ClaimOutcome::Acquired {
                            token,
                            lease_until,
                            takeover,
                            attempt,
                        } if (token, takeover, attempt)
                            == (want_token, want_takeover, want_attempt) =>
                        {
                            if manual && lease_until != now + lease_ms {
                                env.fail(
                                    id,
                                    ctx(format!(
                                        "repeated claim: lease_until {lease_until}, expected now + lease = {}",
                                        now + lease_ms
                                    )),
                                );
                            }
                            if let Some(r) = model.get_mut(&key) {
                                r.lease_until = Some(lease_until);
                            }
                        }
                        other => env.fail(
                            id,
                            ctx(format!(
                                "a claim with the owner's nonce: expected Acquired again with token {want_token}, takeover {want_takeover:?}, attempt {want_attempt}, got {other:?}"
                            )),
                        ),
                    }
                }
                if let Some((want_takeover, want_attempt)) = expect_acquire {
                    let ClaimOutcome::Acquired {
                        token,
                        lease_until,
                        takeover,
                        attempt,
                    } = got
                    else {
                        env.fail(
                            id,
                            ctx(format!(
                                "expected Acquired (takeover {want_takeover:?}), got {got:?}"
                            )),
                        );
                    };
                    if (takeover, attempt) != (want_takeover, want_attempt) {
                        env.fail(id, ctx(format!("expected takeover {want_takeover:?} attempt {want_attempt}, got takeover {takeover:?} attempt {attempt}")));
                    }
                    if manual && lease_until != now + lease_ms {
                        env.fail(
                            id,
                            ctx(format!(
                                "lease_until {lease_until}, expected now + lease = {}",
                                now + lease_ms
                            )),
                        );
                    }
                    if let Some(last) = issued[key].last()
                        && token <= *last
                    {
                        env.fail(
                            id,
                            ctx(format!("token {token} not larger than the previous {last}")),
                        );
                    }
                    issued[key].push(token);
                    model.insert(
                        key,
                        ModelRecord {
                            fp,
                            token,
                            attempts: attempt,
                            lease_until: Some(lease_until),
                            settled: None,
                            nonce,
                            takeover,
                        },
                    );
                }
            }
            Op::Complete { key, stale }
            | Op::Fail { key, stale }
            | Op::Release { key, stale }
            | Op::Renew { key, stale } => {
                let id = &ids[key];
                let toks = &issued[key];
                let token = if stale {
                    toks.len().checked_sub(2).map(|i| toks[i])
                } else {
                    toks.last().copied()
                };
                let Some(token) = token else { continue };
                let owns = model
                    .get(&key)
                    .is_some_and(|r| r.token == token && r.settled.is_none());
                let ttl = Duration::from_millis(ttl_ms);
                let res: Result<Option<Millis>, StoreError> = match op {
                    Op::Complete { .. } => s
                        .complete(id, token, Outcome::new(Codec::Raw, b"ok".to_vec()), ttl)
                        .await
                        .map(|_| None),
                    Op::Fail { .. } => s
                        .fail(id, token, Outcome::new(Codec::Raw, b"err".to_vec()), ttl)
                        .await
                        .map(|_| None),
                    Op::Release { .. } => s.release(id, token).await.map(|_| None),
                    _ => s
                        .renew(id, token, Duration::from_millis(lease_ms))
                        .await
                        .map(Some),
                };
                if owns {
                    let renewed = match res {
                        Ok(v) => v,
                        Err(e) => env.fail(id, ctx(format!("the owner's call failed: {e}"))),
                    };
                    match op {
                        Op::Complete { .. } | Op::Fail { .. } => {
                            if let Some(r) = model.get_mut(&key) {
                                r.lease_until = None;
                                r.settled = Some((matches!(op, Op::Complete { .. }), now + ttl_ms));
                            }
                        }
                        Op::Release { .. } => {
                            model.remove(&key);
                        }
                        _ => {
                            if manual && renewed != Some(now + lease_ms) {
                                env.fail(
                                    id,
                                    ctx(format!(
                                        "renew returned {renewed:?}, expected now + lease = {}",
                                        now + lease_ms
                                    )),
                                );
                            }
                            if let (Some(r), Some(until)) = (model.get_mut(&key), renewed) {
                                r.lease_until = Some(until);
                            }
                        }
                    }
                } else {
                    let current = model.get(&key).map(|r| r.token);
                    // The token that settled the record repeating the same settle: a
                    // retry after a lost reply may succeed (changing nothing).
                    let same_settle = model.get(&key).is_some_and(|r| {
                        r.token == token
                            && match (op, r.settled) {
                                (Op::Complete { .. }, Some((completed, _))) => completed,
                                (Op::Fail { .. }, Some((completed, _))) => !completed,
                                _ => false,
                            }
                    });
                    match res {
                        Ok(None) if same_settle => {}
                        Err(StoreError::Fenced { token: t, current: c, .. }) if t == token && c == current => {}
                        other => env.fail(id, ctx(format!("token {token} does not own the record: expected Fenced (current {current:?}), got {other:?}"))),
                    }
                }
            }
            Op::Purge { key } => {
                let id = &ids[key];
                let existed = env.ok(id, "purge", s.purge(id).await);
                let want = model.remove(&key).is_some();
                if existed != want {
                    env.fail(
                        id,
                        ctx(format!("purge returned {existed}, expected {want}")),
                    );
                }
            }
            Op::Advance(secs) => {
                if let TimeControl::Manual(clock) = &env.time {
                    clock.advance(Duration::from_secs(secs));
                }
            }
            Op::Sweep => {
                env.ok(&ids[0], "sweep", s.sweep().await);
            }
        }

        // The store's view equals the model's.
        let now = env.manual_now().unwrap_or(0);
        model.retain(|_, r| !r.expired(now));
        for (key, id) in ids.iter().enumerate() {
            let got = env.get(id).await;
            match (got, model.get(&key)) {
                (None, None) => {}
                (Some(rec), Some(m)) => {
                    let state_ok = match (&rec.state, m.settled, m.lease_until) {
                        (State::InProgress { lease_until }, None, Some(l)) => *lease_until == l,
                        (State::Completed(_), Some((true, at)), _)
                        | (State::Failed(_), Some((false, at)), _) => {
                            !manual || rec.expires_at == Some(at)
                        }
                        _ => false,
                    };
                    if !state_ok
                        || rec.token != m.token
                        || rec.attempts != m.attempts
                        || rec.fingerprint != Some(fps[m.fp as usize])
                    {
                        env.fail(id, ctx(format!("store has {rec:?}, model has {m:?}")));
                    }
                }
                (got, want) => env.fail(id, ctx(format!("store has {got:?}, model has {want:?}"))),
            }
        }
        let stats = env.ok(&ids[0], "stats", s.stats().await);
        let count =
            |f: &dyn Fn(&ModelRecord) -> bool| model.values().filter(|r| f(r)).count() as u64;
        let want = (
            count(&|r| r.lease_until.is_some_and(|l| !manual || l > now)),
            count(&|r| manual && r.lease_until.is_some_and(|l| l <= now)),
            count(&|r| matches!(r.settled, Some((true, _)))),
            count(&|r| matches!(r.settled, Some((false, _)))),
        );
        let got = (
            stats.in_progress,
            stats.ambiguous,
            stats.completed,
            stats.failed,
        );
        if got != want {
            env.fail(
                &ids[0],
                ctx(format!(
                    "stats (in_progress, ambiguous, completed, failed) = {got:?}, model {want:?}"
                )),
            );
        }
    }
    // Leave nothing behind for the next sequence's stats.
    for id in &ids {
        env.ok(id, "purge", s.purge(id).await);
    }
}
