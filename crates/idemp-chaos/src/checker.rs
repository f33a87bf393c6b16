//! The history checker: decides whether one scenario's history, effects log and final
//! store state are allowed under its ambiguity policy.
//!
//! Rules (a violation of any is reported, with the key):
//! 1. **No duplicate effect**: a key's effect appears at most once in the effects log,
//!    except that under `Retake` a later effect is allowed when its execution was a
//!    takeover of an ambiguous record (at-least-once is that policy's promise).
//! 2. **No lost completion**: every key for which some caller got a result (an
//!    acknowledged completion, a replay or a reconcile) is `Completed` in the store at
//!    the end, with that value.
//! 3. **One result per key**: every caller that got a result for a key got the same one.
//! 4. **Fenced owners change nothing**: a token that was fenced is never the token of
//!    the key's final completed record.
//! 5. **No phantom result**: every result names an effect that is in the effects log.
//! 6. **A completion is final**: once token `t`'s completion of a key was
//!    acknowledged, no claim of that key acquires a token above `t` (a stalled owner
//!    whose key was taken over must have been fenced, not acknowledged).
//! 7. **Only owners run effects**: every effect was run by a worker that had claimed
//!    the key with that token.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use crate::history::{Effect, Event, FinalState, Finals, Token};

/// The `OnAmbiguous` policy a scenario ran with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// `OnAmbiguous::Verify` reading the effects log: exactly once.
    Verify,
    /// `OnAmbiguous::Retake`: at-least-once after an ambiguous record.
    Retake,
}

impl Policy {
    /// The name used on the command line and in summaries.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Verify => "verify",
            Policy::Retake => "retake",
        }
    }
}

/// One broken rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Violation {
    /// Rule 1: the effect of `key` ran again (by `token`) without being allowed to.
    DuplicateEffect {
        /// The key.
        key: String,
        /// The token of the first effect.
        first: Token,
        /// The token of the later effect.
        token: Token,
    },
    /// Rule 2: a key some caller got a result for is not completed with it.
    LostCompletion {
        /// The key.
        key: String,
        /// The value callers got.
        value: String,
        /// What the store holds.
        found: String,
    },
    /// Rule 3: two callers got different results for one key.
    DivergentResults {
        /// The key.
        key: String,
        /// One value.
        a: String,
        /// Another value.
        b: String,
    },
    /// Rule 4: a fenced token is the final record's completing token.
    FencedOwnerWon {
        /// The key.
        key: String,
        /// The fenced token.
        token: Token,
    },
    /// Rule 6: `token` acquired the key after `completed`'s completion was
    /// acknowledged.
    ClaimAfterCompletion {
        /// The key.
        key: String,
        /// The acknowledged completing token.
        completed: Token,
        /// The later claim's token.
        token: Token,
    },
    /// Rule 7: an effect by a worker that never acquired the key with its token.
    EffectWithoutClaim {
        /// The key.
        key: String,
        /// The effect's token.
        token: Token,
        /// The worker.
        worker: String,
    },
    /// Rule 5: a result names no logged effect.
    PhantomResult {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::DuplicateEffect { key, first, token } => write!(
                f,
                "{key}: effect ran twice (token {first}, then token {token}) without an allowed takeover"
            ),
            Violation::LostCompletion { key, value, found } => write!(
                f,
                "{key}: callers got {value:?} but the store holds {found}"
            ),
            Violation::DivergentResults { key, a, b } => {
                write!(f, "{key}: callers got different results {a:?} and {b:?}")
            }
            Violation::FencedOwnerWon { key, token } => write!(
                f,
                "{key}: fenced token {token} is the final record's completing token"
            ),
            Violation::ClaimAfterCompletion {
                key,
                completed,
                token,
            } => write!(
                f,
                "{key}: token {token} acquired the key after token {completed}'s completion was acknowledged"
            ),
            Violation::EffectWithoutClaim { key, token, worker } => write!(
                f,
                "{key}: {worker} ran the effect with token {token} without having claimed it"
            ),
            Violation::PhantomResult { key, value } => {
                write!(f, "{key}: result {value:?} names no logged effect")
            }
        }
    }
}

/// Counts and violations of one checked history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Checked {
    /// Keys seen.
    pub keys: usize,
    /// Side effects in the effects log.
    pub executions: u64,
    /// Acknowledged completions.
    pub completions: u64,
    /// Replays (including reconciles).
    pub replays: u64,
    /// Ambiguous records reconciled by `Verify`.
    pub reconciled: u64,
    /// Takeovers of ambiguous records (claims that ran again, and reconciles).
    pub takeovers: u64,
    /// Fenced completions or renewals.
    pub fenced: u64,
    /// Effects refused because the lease was lost or too old.
    pub refused: u64,
    /// Duplicate effects that the `Retake` policy allowed.
    pub allowed_duplicates: u64,
    /// Other errors seen by workers (store down, backend killed…).
    pub errors: u64,
    /// Broken rules.
    pub violations: Vec<Violation>,
}

/// Checks one scenario (see the [module docs](self) for the rules).
pub fn check(policy: Policy, events: &[Event], effects: &[Effect], finals: &Finals) -> Checked {
    let mut out = Checked::default();
    let mut takeover_claims: BTreeSet<(&str, Token)> = BTreeSet::new();
    let mut fenced: BTreeMap<&str, BTreeSet<Token>> = BTreeMap::new();
    let mut results: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut keys: BTreeSet<&str> = BTreeSet::new();
    for ev in events {
        match ev {
            Event::Claim {
                key,
                token,
                takeover,
                ..
            } => {
                keys.insert(key);
                if takeover.is_some() {
                    out.takeovers += 1;
                    takeover_claims.insert((key, *token));
                }
            }
            Event::Ok { key, value, .. } => {
                out.completions += 1;
                results.entry(key).or_default().push(value);
            }
            Event::Replay {
                key,
                value,
                reconciled,
                ..
            } => {
                out.replays += 1;
                if *reconciled {
                    // A reconcile always follows a takeover of an ambiguous record.
                    out.reconciled += 1;
                    out.takeovers += 1;
                }
                results.entry(key).or_default().push(value);
            }
            Event::Fenced { key, token, .. } => {
                out.fenced += 1;
                fenced.entry(key).or_default().insert(*token);
            }
            Event::Refused { .. } => out.refused += 1,
            Event::Error { .. } => out.errors += 1,
        }
    }

    // Rule 1.
    let mut first_effect: BTreeMap<&str, Token> = BTreeMap::new();
    let mut effect_values: BTreeSet<(&str, String)> = BTreeSet::new();
    for e in effects {
        out.executions += 1;
        keys.insert(&e.key);
        effect_values.insert((&e.key, e.value()));
        match first_effect.get(e.key.as_str()) {
            None => {
                first_effect.insert(&e.key, e.token);
            }
            Some(&first) => {
                let allowed = policy == Policy::Retake
                    && takeover_claims.contains(&(e.key.as_str(), e.token));
                if allowed {
                    out.allowed_duplicates += 1;
                } else {
                    out.violations.push(Violation::DuplicateEffect {
                        key: e.key.clone(),
                        first,
                        token: e.token,
                    });
                }
            }
        }
    }

    // Rules 2, 3, 5.
    for (key, values) in &results {
        let first = values[0];
        for v in &values[1..] {
            if *v != first {
                out.violations.push(Violation::DivergentResults {
                    key: (*key).to_owned(),
                    a: first.to_owned(),
                    b: (*v).to_owned(),
                });
                break;
            }
        }
        let mut named: BTreeSet<&str> = BTreeSet::new();
        for v in values {
            if named.insert(v) && !effect_values.contains(&(*key, (*v).to_owned())) {
                out.violations.push(Violation::PhantomResult {
                    key: (*key).to_owned(),
                    value: (*v).to_owned(),
                });
            }
        }
        match finals.get(*key) {
            Some(FinalState::Completed { value, .. }) if value == first => {}
            other => out.violations.push(Violation::LostCompletion {
                key: (*key).to_owned(),
                value: first.to_owned(),
                found: format!("{:?}", other.unwrap_or(&FinalState::Absent)),
            }),
        }
    }

    // Rule 4.
    for (key, tokens) in &fenced {
        if let Some(FinalState::Completed { token, .. }) = finals.get(*key)
            && tokens.contains(token)
        {
            out.violations.push(Violation::FencedOwnerWon {
                key: (*key).to_owned(),
                token: *token,
            });
        }
    }
    // Rule 7.
    let claimed: BTreeSet<(&str, Token, &str)> = events
        .iter()
        .filter_map(|ev| match ev {
            Event::Claim {
                worker, key, token, ..
            } => Some((key.as_str(), *token, worker.as_str())),
            _ => None,
        })
        .collect();
    for e in effects {
        if !claimed.contains(&(e.key.as_str(), e.token, e.worker.as_str())) {
            out.violations.push(Violation::EffectWithoutClaim {
                key: e.key.clone(),
                token: e.token,
                worker: e.worker.clone(),
            });
        }
    }

    // Rule 6.
    let mut acked: BTreeMap<&str, Token> = BTreeMap::new();
    for ev in events {
        if let Event::Ok { key, token, .. } = ev {
            let t = acked.entry(key).or_insert(*token);
            *t = (*t).min(*token);
        }
    }
    for ev in events {
        if let Event::Claim { key, token, .. } = ev
            && let Some(&completed) = acked.get(key.as_str())
            && *token > completed
        {
            out.violations.push(Violation::ClaimAfterCompletion {
                key: key.clone(),
                completed,
                token: *token,
            });
        }
    }
    out.keys = keys.len();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(w: &str, key: &str, token: Token, takeover: Option<Token>) -> Event {
        Event::Claim {
            worker: w.into(),
            key: key.into(),
            token,
            takeover,
        }
    }
    fn ok(w: &str, key: &str, token: Token) -> Event {
        Event::Ok {
            worker: w.into(),
            key: key.into(),
            token,
            value: format!("{w}:{token}"),
        }
    }
    fn replay(w: &str, key: &str, token: Token, value: &str, reconciled: bool) -> Event {
        Event::Replay {
            worker: w.into(),
            key: key.into(),
            token,
            value: value.into(),
            reconciled,
        }
    }
    fn fenced(w: &str, key: &str, token: Token) -> Event {
        Event::Fenced {
            worker: w.into(),
            key: key.into(),
            token,
        }
    }
    fn effect(w: &str, key: &str, token: Token) -> Effect {
        Effect {
            key: key.into(),
            token,
            worker: w.into(),
        }
    }
    fn completed(w: &str, token: Token) -> FinalState {
        FinalState::Completed {
            token,
            value: format!("{w}:{token}"),
        }
    }
    fn finals(list: &[(&str, FinalState)]) -> Finals {
        list.iter()
            .map(|(k, s)| ((*k).to_owned(), s.clone()))
            .collect()
    }

    #[test]
    fn a_clean_history_passes_under_both_policies() {
        let events = vec![
            claim("w1", "k", 1, None),
            ok("w1", "k", 1),
            replay("w2", "k", 1, "w1:1", false),
            replay("w3", "k", 1, "w1:1", false),
        ];
        let effects = vec![effect("w1", "k", 1)];
        let f = finals(&[("k", completed("w1", 1))]);
        for p in [Policy::Verify, Policy::Retake] {
            let c = check(p, &events, &effects, &f);
            assert_eq!(c.violations, vec![], "{p:?}");
            assert_eq!((c.executions, c.completions, c.replays), (1, 1, 2));
        }
    }

    #[test]
    fn a_crash_after_the_effect_reconciled_by_verify_passes() {
        // w1 ran the effect and died; w2 took over, found the effect, completed with
        // w1's value; w1 never got a result.
        let events = vec![
            claim("w1", "k", 1, None),
            replay("w2", "k", 2, "w1:1", true),
            replay("w3", "k", 2, "w1:1", false),
        ];
        let effects = vec![effect("w1", "k", 1)];
        let f = finals(&[(
            "k",
            FinalState::Completed {
                token: 2,
                value: "w1:1".into(),
            },
        )]);
        let c = check(Policy::Verify, &events, &effects, &f);
        assert_eq!(c.violations, vec![]);
        assert_eq!((c.takeovers, c.reconciled), (1, 1));
    }

    #[test]
    fn a_retake_duplicate_after_a_takeover_passes_under_retake_only() {
        let events = vec![
            claim("w1", "k", 1, None),
            claim("w2", "k", 2, Some(1)),
            ok("w2", "k", 2),
            fenced("w1", "k", 1),
        ];
        let effects = vec![effect("w1", "k", 1), effect("w2", "k", 2)];
        let f = finals(&[("k", completed("w2", 2))]);
        let c = check(Policy::Retake, &events, &effects, &f);
        assert_eq!(c.violations, vec![]);
        assert_eq!(c.allowed_duplicates, 1);
        let c = check(Policy::Verify, &events, &effects, &f);
        assert_eq!(
            c.violations,
            vec![Violation::DuplicateEffect {
                key: "k".into(),
                first: 1,
                token: 2
            }]
        );
    }

    #[test]
    fn a_duplicate_without_a_takeover_fails_even_under_retake() {
        let events = vec![
            claim("w1", "k", 1, None),
            ok("w1", "k", 1),
            claim("w2", "k", 2, None),
        ];
        let effects = vec![effect("w1", "k", 1), effect("w2", "k", 2)];
        let f = finals(&[("k", completed("w1", 1))]);
        let c = check(Policy::Retake, &events, &effects, &f);
        assert!(
            c.violations
                .iter()
                .any(|v| matches!(v, Violation::DuplicateEffect { token: 2, .. })),
            "{:?}",
            c.violations
        );
        // The claim itself was illegal too: the key was completed.
        assert!(
            c.violations
                .iter()
                .any(|v| matches!(v, Violation::ClaimAfterCompletion { token: 2, .. }))
        );
    }

    #[test]
    fn a_lost_completion_fails() {
        let events = vec![claim("w1", "k", 1, None), ok("w1", "k", 1)];
        let effects = vec![effect("w1", "k", 1)];
        for f in [
            finals(&[]),
            finals(&[("k", FinalState::InProgress { token: 1 })]),
            finals(&[(
                "k",
                FinalState::Completed {
                    token: 1,
                    value: "other".into(),
                },
            )]),
        ] {
            let c = check(Policy::Verify, &events, &effects, &f);
            assert!(
                matches!(c.violations.as_slice(), [Violation::LostCompletion { .. }]),
                "{f:?}: {:?}",
                c.violations
            );
        }
    }

    #[test]
    fn divergent_results_fail() {
        let events = vec![
            claim("w1", "k", 1, None),
            ok("w1", "k", 1),
            replay("w2", "k", 2, "w2:2", false),
        ];
        let effects = vec![effect("w1", "k", 1), effect("w2", "k", 2)];
        let f = finals(&[("k", completed("w1", 1))]);
        let c = check(Policy::Retake, &events, &effects, &f);
        assert!(
            c.violations
                .iter()
                .any(|v| matches!(v, Violation::DivergentResults { .. })),
            "{:?}",
            c.violations
        );
    }

    #[test]
    fn a_fenced_owner_whose_completion_stuck_fails() {
        let events = vec![
            claim("w1", "k", 1, None),
            claim("w2", "k", 2, Some(1)),
            fenced("w1", "k", 1),
        ];
        let effects = vec![effect("w1", "k", 1)];
        let f = finals(&[("k", completed("w1", 1))]);
        let c = check(Policy::Verify, &events, &effects, &f);
        assert_eq!(
            c.violations,
            vec![Violation::FencedOwnerWon {
                key: "k".into(),
                token: 1
            }]
        );
    }

    #[test]
    fn an_acknowledged_stalled_owner_fails() {
        // w1 stalled past its lease, w2 took over and ran; w1's late completion must
        // have been fenced, yet it was acknowledged.
        let events = vec![
            claim("w1", "k", 1, None),
            claim("w2", "k", 2, Some(1)),
            ok("w2", "k", 2),
            ok("w1", "k", 1),
        ];
        let effects = vec![effect("w1", "k", 1), effect("w2", "k", 2)];
        let f = finals(&[("k", completed("w2", 2))]);
        let c = check(Policy::Retake, &events, &effects, &f);
        assert!(
            c.violations.contains(&Violation::ClaimAfterCompletion {
                key: "k".into(),
                completed: 1,
                token: 2
            }),
            "{:?}",
            c.violations
        );
    }

    #[test]
    fn an_effect_by_a_non_owner_fails() {
        let events = vec![claim("w1", "k", 1, None), ok("w1", "k", 1)];
        let effects = vec![effect("w1", "k", 1), effect("w2", "k", 1)];
        let f = finals(&[("k", completed("w1", 1))]);
        let c = check(Policy::Retake, &events, &effects, &f);
        assert!(
            c.violations.contains(&Violation::EffectWithoutClaim {
                key: "k".into(),
                token: 1,
                worker: "w2".into()
            }),
            "{:?}",
            c.violations
        );
    }

    #[test]
    fn a_result_without_an_effect_fails() {
        let events = vec![claim("w1", "k", 1, None), ok("w1", "k", 1)];
        let f = finals(&[("k", completed("w1", 1))]);
        let c = check(Policy::Verify, &events, &[], &f);
        assert!(matches!(
            c.violations.as_slice(),
            [Violation::PhantomResult { .. }]
        ));
    }

    #[test]
    fn unacknowledged_crashes_are_not_violations() {
        // w1 died after its effect, before completing, and nobody came back.
        let events = vec![claim("w1", "k", 1, None)];
        let effects = vec![effect("w1", "k", 1)];
        let f = finals(&[("k", FinalState::InProgress { token: 1 })]);
        let c = check(Policy::Verify, &events, &effects, &f);
        assert_eq!(c.violations, vec![]);
    }
}
