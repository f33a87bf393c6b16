//! Property test of the guard's state machine against a simple model: random
//! sequences of runs, crashes, clock moves and resolutions never execute a key more
//! often than the model allows, and every replay returns the recorded value.

mod guard_support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use guard_support::manual;
use idemp::clock::Millis;
use idemp::guard::{Begin, Disposition, GuardError, OnAmbiguous, OnFailure, Resolution, Resolved};
use proptest::prelude::*;

const LEASE_MS: Millis = 60_000;
/// Clock steps are multiples of 7 s, so "now" never lands exactly on a lease end
/// (60 s is not a multiple of 7 s): the model needs no boundary convention.
const STEP_MS: Millis = 7_000;

#[derive(Clone, Debug)]
enum Op {
    Run { key: u8, ok: bool },
    Crash { key: u8 },
    Advance { steps: u8 },
    Resolve { key: u8, complete: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, any::<bool>()).prop_map(|(key, ok)| Op::Run { key, ok }),
        2 => (0u8..3).prop_map(|key| Op::Crash { key }),
        2 => (1u8..13).prop_map(|steps| Op::Advance { steps }),
        1 => (0u8..3, any::<bool>()).prop_map(|(key, complete)| Op::Resolve { key, complete }),
    ]
}

#[derive(Clone, Debug, PartialEq)]
enum Model {
    Absent,
    Live { lease_until: Millis },
    Completed(u64),
    Failed(String),
}

struct World {
    keys: HashMap<u8, Model>,
    executions: HashMap<u8, u32>,
    expected_executions: HashMap<u8, u32>,
    now: Millis,
}

impl World {
    fn state(&self, key: u8) -> Model {
        self.keys.get(&key).cloned().unwrap_or(Model::Absent)
    }
    fn ambiguous(&self, key: u8) -> bool {
        matches!(self.state(key), Model::Live { lease_until } if lease_until <= self.now)
    }
}

fn check(ops: Vec<Op>, sticky: bool, surface: bool) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (b, clock) = manual("prop");
        let guard = b
            .lease(Duration::from_millis(LEASE_MS))
            .ttl(Duration::from_secs(30 * 24 * 3600))
            .on_failure(if sticky {
                OnFailure::Sticky
            } else {
                OnFailure::Release
            })
            .on_ambiguous(if surface {
                OnAmbiguous::Surface
            } else {
                OnAmbiguous::Retake
            })
            .build();
        let start = 1_700_000_000_000;
        let mut w = World {
            keys: HashMap::new(),
            executions: HashMap::new(),
            expected_executions: HashMap::new(),
            now: start,
        };
        let next_value = AtomicU64::new(1);
        for op in ops {
            match op {
                Op::Advance { steps } => {
                    clock.advance(Duration::from_millis(STEP_MS * steps as u64));
                    w.now += STEP_MS * steps as u64;
                }
                Op::Run { key, ok } => {
                    let before = w.state(key);
                    let runs = (before == Model::Absent) || (w.ambiguous(key) && !surface);
                    let mut ran = None;
                    let ran_slot = &mut ran;
                    let executions = &mut w.executions;
                    let values = &next_value;
                    let res = guard
                        .run_detailed(format!("k{key}"), || async move {
                            let v = values.fetch_add(1, Ordering::SeqCst);
                            *executions.entry(key).or_default() += 1;
                            *ran_slot = Some(v);
                            if ok {
                                Ok(v)
                            } else {
                                Err(format!("failure {v}"))
                            }
                        })
                        .await;
                    if runs {
                        *w.expected_executions.entry(key).or_default() += 1;
                        let v = ran.expect("the model says this call runs");
                        match res {
                            Ok((got, info)) => {
                                prop_assert!(ok);
                                prop_assert_eq!(got, v);
                                prop_assert_eq!(info.disposition, Disposition::Executed);
                                prop_assert_eq!(info.takeover.is_some(), before != Model::Absent);
                                w.keys.insert(key, Model::Completed(v));
                            }
                            Err(GuardError::Operation(msg)) => {
                                prop_assert!(!ok);
                                let m = if sticky {
                                    Model::Failed(msg)
                                } else {
                                    Model::Absent
                                };
                                w.keys.insert(key, m);
                            }
                            Err(e) => prop_assert!(false, "unexpected {e:?}"),
                        }
                    } else {
                        prop_assert!(
                            ran.is_none(),
                            "ran although the model forbids it: {before:?}"
                        );
                        match (before, res) {
                            (Model::Completed(v), Ok((got, info))) => {
                                prop_assert_eq!(got, v);
                                prop_assert_eq!(info.disposition, Disposition::Replayed);
                            }
                            (Model::Failed(m), Err(GuardError::Failed(f))) => {
                                prop_assert_eq!(f.message, m)
                            }
                            (Model::Live { .. }, Err(GuardError::InProgress { .. }))
                                if !w.ambiguous(key) => {}
                            (Model::Live { .. }, Err(GuardError::Ambiguous { .. })) if surface => {}
                            (m, r) => prop_assert!(false, "model {m:?} but got {r:?}"),
                        }
                    }
                }
                Op::Crash { key } => {
                    let before = w.state(key);
                    let acquires = (before == Model::Absent) || (w.ambiguous(key) && !surface);
                    let begin = guard.begin(format!("k{key}"), None).await;
                    match (acquires, before, begin) {
                        (true, _, Ok(Begin::Owner(lease))) => {
                            lease.abandon();
                            w.keys.insert(
                                key,
                                Model::Live {
                                    lease_until: w.now + LEASE_MS,
                                },
                            );
                        }
                        (false, Model::Completed(v), Ok(Begin::Completed(r))) => {
                            prop_assert_eq!(r.decode::<u64>().unwrap(), v)
                        }
                        (false, Model::Failed(m), Ok(Begin::Failed(f))) => {
                            prop_assert_eq!(f.message, m)
                        }
                        (false, Model::Live { .. }, Ok(Begin::InProgress { .. }))
                            if !w.ambiguous(key) => {}
                        (false, Model::Live { .. }, Ok(Begin::Ambiguous(_))) if surface => {}
                        (a, m, r) => prop_assert!(false, "acquires={a} model {m:?} but got {r:?}"),
                    }
                }
                Op::Resolve { key, complete } => {
                    let before = w.state(key);
                    let resolution = if complete {
                        Resolution::Completed(next_value.fetch_add(1, Ordering::SeqCst))
                    } else {
                        Resolution::Retake
                    };
                    let value = match &resolution {
                        Resolution::Completed(v) => Some(*v),
                        _ => None,
                    };
                    let res = guard.resolve(format!("k{key}"), resolution).await;
                    if w.ambiguous(key) {
                        prop_assert_eq!(res.unwrap(), Resolved::Applied);
                        w.keys
                            .insert(key, value.map_or(Model::Absent, Model::Completed));
                    } else {
                        let expected = match before {
                            Model::Absent => "absent",
                            Model::Live { .. } => "in_progress",
                            Model::Completed(_) => "completed",
                            Model::Failed(_) => "failed",
                        };
                        prop_assert_eq!(res.unwrap(), Resolved::NotAmbiguous(expected));
                    }
                }
            }
            for key in 0..3u8 {
                prop_assert_eq!(
                    w.executions.get(&key).copied().unwrap_or(0),
                    w.expected_executions.get(&key).copied().unwrap_or(0),
                    "executions of k{}",
                    key
                );
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]
    #[test]
    fn guard_matches_the_model(
        ops in proptest::collection::vec(op(), 1..40),
        sticky in any::<bool>(),
        surface in any::<bool>(),
    ) {
        check(ops, sticky, surface)?;
    }
}
