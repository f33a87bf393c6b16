//! Behaviour of the guard on the memory store: every option, counting side effects.

mod guard_support;

use std::convert::Infallible;
use std::time::Duration;

use guard_support::{Effects, manual, record, tokio_time, until_record};
use idemp::guard::{
    Begin, Disposition, GuardError, OnAmbiguous, OnDuplicate, OnFailure, OnInterrupt, Request,
    Resolution, Resolved, StoredFailure, ValueCodec,
};
#[cfg(feature = "compression")]
use idemp::store::Compression;
use idemp::store::{Codec, Fingerprint, State};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

type Res<T> = Result<T, std::io::Error>;

fn io_err(msg: &str) -> std::io::Error {
    std::io::Error::other(msg.to_string())
}

#[tokio::test]
async fn replay_returns_the_stored_result_and_runs_once() {
    let (b, _) = manual("charge");
    let guard = b.build();
    let fx = Effects::default();
    let (first, info) = guard
        .run_detailed("k1", || async {
            fx.hit();
            Res::Ok(vec![1u32, 2, 3])
        })
        .await
        .unwrap();
    assert_eq!(info.disposition, Disposition::Executed);
    assert_eq!(info.attempt, 1);
    assert!(!info.replayed());
    for _ in 0..3 {
        let (again, info) = guard
            .run_detailed("k1", || async {
                fx.hit();
                Res::Ok(vec![9u32])
            })
            .await
            .unwrap();
        assert_eq!(again, first);
        assert_eq!(info.disposition, Disposition::Replayed);
        assert!(info.replayed());
    }
    assert_eq!(fx.count(), 1);
    let rec = record(&guard, "k1").await.unwrap();
    assert!(matches!(rec.state, State::Completed(ref o) if o.codec == Codec::Json));
}

#[tokio::test]
async fn scopes_never_share_a_record() {
    let (b, _) = manual("charge");
    let charge = b.build();
    let refund = idemp::Guard::builder(charge.store().clone())
        .scope("refund")
        .build();
    let fx = Effects::default();
    let a: u32 = charge
        .run("same", || async { Res::Ok(fx.hit()) })
        .await
        .unwrap();
    let b: u32 = refund
        .run("same", || async { Res::Ok(fx.hit()) })
        .await
        .unwrap();
    assert_eq!((a, b), (1, 2));
    assert_eq!(fx.count(), 2);
}

#[tokio::test]
async fn reject_refuses_completed_and_in_progress_duplicates() {
    let (b, _) = manual("s");
    let guard = b.on_duplicate(OnDuplicate::Reject).build();
    let fx = Effects::default();
    let _: u32 = guard
        .run("done", || async { Res::Ok(fx.hit()) })
        .await
        .unwrap();
    let err = guard
        .run("done", || async { Res::Ok(fx.hit()) })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            GuardError::Rejected {
                state: "completed",
                ..
            }
        ),
        "{err:?}"
    );

    let Begin::Owner(lease) = guard.begin("live", None).await.unwrap() else {
        panic!("expected ownership")
    };
    let err = guard
        .run("live", || async { Res::Ok(fx.hit()) })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            GuardError::Rejected {
                state: "in_progress",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(fx.count(), 1);
    lease.release().await.unwrap();
}

#[tokio::test]
async fn replay_policy_reports_a_live_execution_as_in_progress() {
    let (b, clock) = manual("s");
    let guard = b.build();
    let Begin::Owner(lease) = guard.begin("k", None).await.unwrap() else {
        panic!("expected ownership")
    };
    clock.advance(Duration::from_secs(20));
    let err = guard.run("k", || async { Res::Ok(1u8) }).await.unwrap_err();
    match err {
        GuardError::InProgress { retry_after, id } => {
            assert_eq!(retry_after, Duration::from_secs(40));
            assert_eq!(id, guard.record_key("k"));
            assert!(GuardError::<Infallible>::InProgress { id, retry_after }.is_retryable());
        }
        other => panic!("unexpected {other:?}"),
    }
    lease.complete(&1u8).await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn wait_coalesces_onto_the_running_execution() {
    let (b, _) = manual("s");
    let guard = b
        .on_duplicate(OnDuplicate::Wait(Duration::from_secs(30)))
        .build();
    let fx = Effects::default();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let owner = {
        let guard = guard.clone();
        let fx = fx.clone();
        tokio::spawn(async move {
            guard
                .run_detailed("k", || async move {
                    fx.hit();
                    let _ = started_tx.send(());
                    let _ = release_rx.await;
                    Res::Ok("done".to_string())
                })
                .await
        })
    };
    started_rx.await.unwrap();
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            let guard = guard.clone();
            let fx = fx.clone();
            tokio::spawn(async move {
                guard
                    .run_detailed("k", || async move {
                        fx.hit();
                        Res::Ok("not me".to_string())
                    })
                    .await
            })
        })
        .collect();
    for _ in 0..5 {
        tokio::task::yield_now().await;
    }
    release_tx.send(()).unwrap();
    let (v, info) = owner.await.unwrap().unwrap();
    assert_eq!(
        (v.as_str(), info.disposition),
        ("done", Disposition::Executed)
    );
    for w in waiters {
        let (v, info) = w.await.unwrap().unwrap();
        assert_eq!(v, "done");
        assert_eq!(info.disposition, Disposition::Replayed);
        assert!(info.waited, "the waiter should have waited for the owner");
    }
    assert_eq!(fx.count(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn wait_times_out_with_in_progress_and_retry_after() {
    let (b, clock) = manual("s");
    let guard = b
        .on_duplicate(OnDuplicate::Wait(Duration::from_millis(250)))
        .build();
    let Begin::Owner(lease) = guard.begin("k", None).await.unwrap() else {
        panic!("expected ownership")
    };
    clock.advance(Duration::from_secs(15));
    let fx = Effects::default();
    let err = guard
        .run("k", || async { Res::Ok(fx.hit()) })
        .await
        .unwrap_err();
    match err {
        GuardError::InProgress { retry_after, .. } => {
            assert_eq!(retry_after, Duration::from_secs(45))
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(fx.count(), 0);
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_waiter_runs_when_the_owner_fails_and_releases() {
    let (b, _) = manual("s");
    let guard = b
        .on_duplicate(OnDuplicate::Wait(Duration::from_secs(30)))
        .build();
    let fx = Effects::default();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let owner = {
        let guard = guard.clone();
        let fx = fx.clone();
        tokio::spawn(async move {
            guard
                .run("k", || async move {
                    fx.hit();
                    let _ = started_tx.send(());
                    let _ = release_rx.await;
                    Res::<String>::Err(io_err("provider down"))
                })
                .await
        })
    };
    started_rx.await.unwrap();
    let waiter = {
        let guard = guard.clone();
        let fx = fx.clone();
        tokio::spawn(async move {
            guard
                .run_detailed("k", || async move {
                    fx.hit();
                    Res::Ok("second try".to_string())
                })
                .await
        })
    };
    for _ in 0..5 {
        tokio::task::yield_now().await;
    }
    release_tx.send(()).unwrap();
    assert!(matches!(
        owner.await.unwrap(),
        Err(GuardError::Operation(_))
    ));
    let (v, info) = waiter.await.unwrap().unwrap();
    assert_eq!(v, "second try");
    assert_eq!(info.disposition, Disposition::Executed);
    assert!(info.waited);
    assert_eq!(fx.count(), 2);
}

#[tokio::test]
async fn release_on_failure_lets_the_next_call_run() {
    let (b, _) = manual("s");
    let guard = b.build();
    let fx = Effects::default();
    let err = guard
        .run("k", || async {
            fx.hit();
            Res::<u32>::Err(io_err("timeout"))
        })
        .await
        .unwrap_err();
    assert_eq!(err.into_operation().unwrap().to_string(), "timeout");
    assert!(
        record(&guard, "k").await.is_none(),
        "failure must release the key"
    );
    let v: u32 = guard
        .run("k", || async { Res::Ok(fx.hit()) })
        .await
        .unwrap();
    assert_eq!((v, fx.count()), (2, 2));
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Declined {
    code: String,
    retry: bool,
}

#[tokio::test]
async fn sticky_failures_replay_the_same_error_as_data() {
    let (b, _) = manual("s");
    let guard = b.on_failure(OnFailure::Sticky).build();
    let fx = Effects::default();
    // An operation whose error type is StoredFailure keeps its structured data.
    let first = guard
        .run("card", || async {
            fx.hit();
            Err::<u32, _>(
                StoredFailure::with_data(
                    "card declined",
                    &Declined {
                        code: "insufficient_funds".into(),
                        retry: false,
                    },
                )
                .unwrap()
                .kind("payment"),
            )
        })
        .await
        .unwrap_err();
    let GuardError::Operation(original) = first else {
        panic!("first call returns the operation's own error")
    };
    for _ in 0..2 {
        let err = guard
            .run("card", || async {
                fx.hit();
                Ok::<u32, StoredFailure>(1)
            })
            .await
            .unwrap_err();
        let GuardError::Failed(replayed) = err else {
            panic!("expected a sticky failure, got {err:?}")
        };
        assert_eq!(replayed, original);
        let data: Declined = replayed.data_as().unwrap();
        assert_eq!(data.code, "insufficient_funds");
    }
    // Any Display error is stored as its type name and message.
    let _ = guard
        .run("io", || async {
            fx.hit();
            Res::<u32>::Err(io_err("disk full"))
        })
        .await
        .unwrap_err();
    let err = guard
        .run("io", || async { Res::Ok(fx.hit()) })
        .await
        .unwrap_err();
    match err {
        GuardError::Failed(f) => {
            assert_eq!(f.message, "disk full");
            assert!(f.kind.contains("io::error::Error"), "{}", f.kind);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(fx.count(), 2);
    let rec = record(&guard, "io").await.unwrap();
    assert!(matches!(rec.state, State::Failed(ref o) if o.codec == Codec::Json));
}

#[tokio::test]
async fn a_panic_is_not_success_releases_and_propagates() {
    let (b, _) = manual("s");
    let guard = b.build();
    let fx = Effects::default();
    let joined = {
        let guard = guard.clone();
        let fx = fx.clone();
        tokio::spawn(async move {
            guard
                .run("k", || async move {
                    fx.hit();
                    if fx.count() > 0 {
                        panic!("boom");
                    }
                    Res::Ok(0u32)
                })
                .await
        })
        .await
    };
    assert!(joined.unwrap_err().is_panic());
    assert!(
        record(&guard, "k").await.is_none(),
        "a panic releases by default"
    );
    let v: u32 = guard
        .run("k", || async { Res::Ok(fx.hit()) })
        .await
        .unwrap();
    assert_eq!((v, fx.count()), (2, 2));
}

#[tokio::test]
async fn a_panic_can_keep_the_lease_until_it_passes() {
    let (b, clock) = manual("s");
    let guard = b.on_panic(OnInterrupt::Keep).build();
    let fx = Effects::default();
    let joined = {
        let guard = guard.clone();
        let fx = fx.clone();
        tokio::spawn(async move {
            guard
                .run("k", || async move {
                    fx.hit();
                    if fx.count() > 0 {
                        panic!("boom");
                    }
                    Res::Ok(0u32)
                })
                .await
        })
        .await
    };
    assert!(joined.unwrap_err().is_panic());
    let rec = record(&guard, "k").await.unwrap();
    assert!(matches!(rec.state, State::InProgress { .. }));
    assert!(matches!(
        guard.run("k", || async { Res::Ok(fx.hit()) }).await,
        Err(GuardError::InProgress { .. })
    ));
    clock.advance(Duration::from_secs(61));
    let (v, info) = guard
        .run_detailed("k", || async { Res::Ok(fx.hit()) })
        .await
        .unwrap();
    assert_eq!(v, 2);
    assert_eq!(info.takeover, Some(rec.token));
    assert_eq!(info.attempt, 2);
}

#[tokio::test]
async fn cancellation_is_not_success_and_releases() {
    let (b, _) = manual("s");
    let guard = b.build();
    let fx = Effects::default();
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let task = {
        let guard = guard.clone();
        let fx = fx.clone();
        tokio::spawn(async move {
            guard
                .run("k", || async move {
                    fx.hit();
                    let _ = started_tx.send(());
                    std::future::pending::<()>().await;
                    Res::Ok(0u32)
                })
                .await
        })
    };
    started_rx.await.unwrap();
    assert!(record(&guard, "k").await.is_some());
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    until_record(&guard, "k", |r| r.is_none()).await;
    let v: u32 = guard
        .run("k", || async { Res::Ok(fx.hit()) })
        .await
        .unwrap();
    assert_eq!((v, fx.count()), (2, 2));
}

#[tokio::test]
async fn cancellation_can_keep_the_lease() {
    let (b, _) = manual("s");
    let guard = b.on_cancel(OnInterrupt::Keep).build();
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let fut = {
        let guard = guard.clone();
        async move {
            guard
                .run("k", || async move {
                    let _ = started_tx.send(());
                    std::future::pending::<()>().await;
                    Res::Ok(0u32)
                })
                .await
        }
    };
    let task = tokio::spawn(fut);
    started_rx.await.unwrap();
    task.abort();
    let _ = task.await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let rec = record(&guard, "k").await.unwrap();
    assert!(matches!(rec.state, State::InProgress { .. }));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_heartbeat_keeps_a_long_run_alive() {
    let lease = Duration::from_secs(3);
    let guard = tokio_time("s").lease(lease).build();
    let fx = Effects::default();
    let owner = {
        let guard = guard.clone();
        let fx = fx.clone();
        tokio::spawn(async move {
            guard
                .run_detailed("k", || async move {
                    fx.hit();
                    tokio::time::sleep(lease * 3).await;
                    Res::Ok("long".to_string())
                })
                .await
        })
    };
    tokio::task::yield_now().await;
    // Contenders arrive well after the original lease would have passed.
    // t = 4 s, 6 s, 8 s: past the original lease (3 s), before the work ends (9 s).
    for pause in [4u64, 2, 2] {
        tokio::time::sleep(Duration::from_secs(pause)).await;
        let res = guard
            .run("k", || async {
                fx.hit();
                Res::Ok("contender".to_string())
            })
            .await;
        assert!(
            matches!(res, Err(GuardError::InProgress { .. })),
            "no takeover while the owner renews: {res:?}"
        );
    }
    let (v, info) = owner.await.unwrap().unwrap();
    assert_eq!(v, "long");
    assert_eq!(info.takeover, None);
    assert_eq!(fx.count(), 1);
    let rec = record(&guard, "k").await.unwrap();
    assert_eq!(rec.attempts, 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_paused_owner_is_fenced_signalled_and_a_retake_runs() {
    let (b, clock) = manual("s");
    let guard = b.lease(Duration::from_secs(30)).build();
    let fx = Effects::default();
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let owner = {
        let guard = guard.clone();
        let fx = fx.clone();
        tokio::spawn(async move {
            guard
                .run_with("k", |signal| async move {
                    fx.hit();
                    let _ = started_tx.send(());
                    // The owner stalls; it only wakes up when told its lease is lost.
                    signal.lost().await;
                    Res::Ok("stale".to_string())
                })
                .await
        })
    };
    started_rx.await.unwrap();
    // The owner's process is paused: its lease passes without renewal.
    clock.advance(Duration::from_secs(31));
    let (v, info) = guard
        .run_detailed("k", || async {
            fx.hit();
            Res::Ok("retaken".to_string())
        })
        .await
        .unwrap();
    assert_eq!(v, "retaken");
    assert!(info.takeover.is_some());
    assert_eq!(info.attempt, 2);
    // The owner's next heartbeat is fenced: it is told, and its result refused.
    let err = owner.await.unwrap().unwrap_err();
    assert!(matches!(err, GuardError::LeaseLost { .. }), "{err:?}");
    let replay: String = guard
        .run("k", || async { Res::Ok("x".to_string()) })
        .await
        .unwrap();
    assert_eq!(replay, "retaken");
    assert_eq!(fx.count(), 2);
}

/// Leaves `key` ambiguous: claimed, abandoned, lease passed.
async fn make_ambiguous(guard: &idemp::Guard, clock: &idemp::clock::ManualClock, key: &str) {
    let Begin::Owner(lease) = guard.begin(key, None).await.unwrap() else {
        panic!("expected ownership")
    };
    lease.abandon();
    clock.advance(Duration::from_secs(61));
}

#[tokio::test]
async fn verify_completes_with_the_reconciled_value_when_the_effect_happened() {
    let (b, clock) = manual("s");
    let checked = Effects::default();
    let c2 = checked.clone();
    let guard = b
        .on_ambiguous(OnAmbiguous::verify(move |id| {
            let c2 = c2.clone();
            async move {
                c2.hit();
                Ok::<_, std::io::Error>(if id.key == "paid" {
                    Some("rcpt_from_provider".to_string())
                } else {
                    None
                })
            }
        }))
        .build();
    let fx = Effects::default();
    make_ambiguous(&guard, &clock, "paid").await;
    let (v, info) = guard
        .run_detailed("paid", || async {
            fx.hit();
            Res::Ok("rcpt_new".to_string())
        })
        .await
        .unwrap();
    assert_eq!(v, "rcpt_from_provider");
    assert_eq!(info.disposition, Disposition::Reconciled);
    assert_eq!(fx.count(), 0);
    let again: String = guard
        .run("paid", || async { Res::Ok("x".into()) })
        .await
        .unwrap();
    assert_eq!(again, "rcpt_from_provider");

    make_ambiguous(&guard, &clock, "unpaid").await;
    let (v, info) = guard
        .run_detailed("unpaid", || async {
            fx.hit();
            Res::Ok("rcpt_new".to_string())
        })
        .await
        .unwrap();
    assert_eq!(v, "rcpt_new");
    assert_eq!(info.disposition, Disposition::Executed);
    assert!(info.takeover.is_some());
    assert_eq!(fx.count(), 1);
    assert_eq!(checked.count(), 2);
}

#[tokio::test]
async fn a_failing_reconcile_leaves_the_key_ambiguous() {
    let (b, clock) = manual("s");
    let guard = b
        .on_ambiguous(OnAmbiguous::verify(|_id| async {
            Err::<Option<u32>, _>(io_err("provider unreachable"))
        }))
        .build();
    make_ambiguous(&guard, &clock, "k").await;
    let fx = Effects::default();
    let err = guard
        .run("k", || async { Res::Ok(fx.hit()) })
        .await
        .unwrap_err();
    assert!(
        matches!(err, GuardError::Reconcile { ref message, .. } if message == "provider unreachable")
    );
    assert_eq!(fx.count(), 0);
    let rec = record(&guard, "k").await.unwrap();
    assert!(matches!(rec.state, State::InProgress { .. }));
}

#[tokio::test]
async fn surface_returns_ambiguous_and_resolve_settles_it() {
    let (b, clock) = manual("s");
    let guard = b.on_ambiguous(OnAmbiguous::Surface).build();
    let fx = Effects::default();

    make_ambiguous(&guard, &clock, "a").await;
    let err = guard
        .run("a", || async { Res::Ok(fx.hit()) })
        .await
        .unwrap_err();
    let GuardError::Ambiguous { attempts, .. } = err else {
        panic!("expected ambiguous, got {err:?}")
    };
    assert_eq!(attempts, 1);
    assert!(matches!(
        guard.begin("a", None).await.unwrap(),
        Begin::Ambiguous(_)
    ));
    assert_eq!(
        guard
            .resolve("a", Resolution::Completed(41u32))
            .await
            .unwrap(),
        Resolved::Applied
    );
    let v: u32 = guard
        .run("a", || async { Res::Ok(fx.hit()) })
        .await
        .unwrap();
    assert_eq!(v, 41);
    assert_eq!(
        guard.resolve("a", Resolution::<u32>::Retake).await.unwrap(),
        Resolved::NotAmbiguous("completed")
    );

    make_ambiguous(&guard, &clock, "b").await;
    assert_eq!(
        guard.resolve("b", Resolution::<u32>::Retake).await.unwrap(),
        Resolved::Applied
    );
    let v: u32 = guard
        .run("b", || async { Res::Ok(fx.hit()) })
        .await
        .unwrap();
    assert_eq!((v, fx.count()), (1, 1));

    make_ambiguous(&guard, &clock, "c").await;
    guard
        .resolve(
            "c",
            Resolution::<u32>::Failed(StoredFailure::new("refunded by hand")),
        )
        .await
        .unwrap();
    assert!(matches!(
        guard.run("c", || async { Res::Ok(fx.hit()) }).await,
        Err(GuardError::Failed(f)) if f.message == "refunded by hand"
    ));
    assert_eq!(
        guard
            .resolve("nothing", Resolution::<u32>::Retake)
            .await
            .unwrap(),
        Resolved::NotAmbiguous("absent")
    );
    assert!(record(&guard, "nothing").await.is_none());
    assert_eq!(fx.count(), 1);
}

#[tokio::test]
async fn a_different_payload_is_a_mismatch_never_a_replay() {
    let (b, _) = manual("s");
    let guard = b.build();
    let fx = Effects::default();
    let a = Fingerprint::of(b"{\"amount\":5}");
    let b2 = Fingerprint::of(b"{\"amount\":500}");
    let v: u32 = guard
        .run_with_fingerprint("k", a, || async { Res::Ok(fx.hit()) })
        .await
        .unwrap();
    let same: u32 = guard
        .run(Request::new("k").payload(b"{\"amount\":5}"), || async {
            Res::Ok(fx.hit())
        })
        .await
        .unwrap();
    assert_eq!(v, same);
    let err = guard
        .run_with_fingerprint("k", b2, || async { Res::Ok(fx.hit()) })
        .await
        .unwrap_err();
    match err {
        GuardError::Mismatch { stored, given, .. } => {
            assert_eq!(stored, Some(a));
            assert_eq!(given, Some(b2));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(fx.count(), 1);
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Receipt {
    id: String,
    amount_cents: u64,
    /// Not stored: the first caller must not see it either.
    #[serde(skip)]
    local_only: u32,
    blob: String,
}

#[tokio::test]
async fn the_first_call_returns_what_a_replay_returns() {
    for codec in [ValueCodec::Json, ValueCodec::Postcard] {
        let (b, _) = manual("s");
        let guard = b.codec(codec).build();
        let make = || Receipt {
            id: "r1".into(),
            amount_cents: 500,
            local_only: 99,
            blob: "x".repeat(10),
        };
        let first: Receipt = guard.run("k", || async { Res::Ok(make()) }).await.unwrap();
        assert_eq!(
            first.local_only, 0,
            "{codec:?}: first call must go through the codec"
        );
        let replay: Receipt = guard.run("k", || async { Res::Ok(make()) }).await.unwrap();
        assert_eq!(first, replay);
        let rec = record(&guard, "k").await.unwrap();
        assert!(matches!(rec.state, State::Completed(ref o) if o.codec == codec.store_codec()));
    }
}

#[cfg(feature = "compression")]
#[tokio::test]
async fn large_results_are_compressed_and_still_equal() {
    let (b, _) = manual("s");
    let guard = b.compress_above(1024).build();
    let big = Receipt {
        id: "big".into(),
        amount_cents: 1,
        local_only: 0,
        blob: "lorem ipsum dolor sit amet ".repeat(2500),
    };
    let first: Receipt = guard
        .run("big", || async { Res::Ok(big.clone()) })
        .await
        .unwrap();
    let replay: Receipt = guard
        .run("big", || async { Res::Ok(big.clone()) })
        .await
        .unwrap();
    assert_eq!(first, big);
    assert_eq!(replay, big);
    let State::Completed(out) = record(&guard, "big").await.unwrap().state else {
        panic!("completed expected")
    };
    assert_eq!(out.compression, Compression::Lz4);
    assert!(out.bytes.len() < 10_000);
    // Small results stay uncompressed.
    let _: u32 = guard.run("small", || async { Res::Ok(7) }).await.unwrap();
    let State::Completed(out) = record(&guard, "small").await.unwrap().state else {
        panic!("completed expected")
    };
    assert_eq!(out.compression, Compression::None);
}

struct Unencodable;
impl Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("cannot encode this"))
    }
}
impl<'de> Deserialize<'de> for Unencodable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Ok(Unencodable)
    }
}

#[tokio::test]
async fn an_unencodable_result_is_recorded_so_the_effect_never_reruns() {
    let (b, _) = manual("s");
    let guard = b.build();
    let fx = Effects::default();
    let err = guard
        .run("k", || async {
            fx.hit();
            Res::Ok(Unencodable)
        })
        .await
        .err()
        .unwrap();
    assert!(matches!(err, GuardError::Codec(_)));
    let err = guard
        .run("k", || async {
            fx.hit();
            Res::Ok(Unencodable)
        })
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, GuardError::Failed(ref f) if f.kind == "idemp::codec"),
        "{err:?}"
    );
    assert_eq!(fx.count(), 1);
}

#[tokio::test]
async fn the_manual_api_settles_raw_bytes_and_replays_them() {
    let (b, _) = manual("http");
    let guard = b.build();
    let body = b"HTTP/1.1 201 Created\r\n\r\n{\"id\":1}".to_vec();
    let Begin::Owner(lease) = guard.begin("req-1", None).await.unwrap() else {
        panic!("expected ownership")
    };
    assert_eq!(lease.attempt(), 1);
    assert!(lease.takeover().is_none());
    assert!(!lease.is_lost());
    lease.complete_raw(body.clone()).await.unwrap();
    match guard.begin("req-1", None).await.unwrap() {
        Begin::Completed(replay) => {
            assert_eq!(replay.outcome().codec, Codec::Raw);
            assert_eq!(replay.bytes().unwrap(), body);
            assert!(replay.decode::<String>().is_err());
            assert_eq!(replay.info().disposition, Disposition::Replayed);
        }
        other => panic!("unexpected {other:?}"),
    }

    // A dropped lease is released (default on_cancel), a failed one is sticky.
    let Begin::Owner(lease) = guard.begin("req-2", None).await.unwrap() else {
        panic!("expected ownership")
    };
    drop(lease);
    until_record(&guard, "req-2", |r| r.is_none()).await;
    let Begin::Owner(lease) = guard.begin("req-2", None).await.unwrap() else {
        panic!("expected ownership after release")
    };
    lease
        .fail(&StoredFailure::new("upstream 500"))
        .await
        .unwrap();
    assert!(matches!(
        guard.begin("req-2", None).await.unwrap(),
        Begin::Failed(f) if f.message == "upstream 500"
    ));
    // Typed completion through the guard's codec.
    let Begin::Owner(lease) = guard.begin("req-3", None).await.unwrap() else {
        panic!("expected ownership")
    };
    lease.complete(&vec!["a", "b"]).await.unwrap();
    let Begin::Completed(replay) = guard.begin("req-3", None).await.unwrap() else {
        panic!("expected a replay")
    };
    assert_eq!(replay.decode::<Vec<String>>().unwrap(), vec!["a", "b"]);
}

#[tokio::test]
async fn a_stale_lease_cannot_complete() {
    let (b, clock) = manual("s");
    let guard = b.build();
    let Begin::Owner(stale) = guard.begin("k", None).await.unwrap() else {
        panic!("expected ownership")
    };
    clock.advance(Duration::from_secs(61));
    let Begin::Owner(fresh) = guard.begin("k", None).await.unwrap() else {
        panic!("expected a takeover")
    };
    assert_eq!(fresh.takeover(), Some(stale.token()));
    let err = stale.complete(&"stale").await.unwrap_err();
    assert!(matches!(err, GuardError::LeaseLost { .. }));
    fresh.complete(&"fresh").await.unwrap();
    let v: String = guard
        .run("k", || async { Res::Ok("x".to_string()) })
        .await
        .unwrap();
    assert_eq!(v, "fresh");
}

#[derive(Serialize, Clone)]
struct SendEmail {
    to: String,
    template: String,
    vars: serde_json::Value,
}

#[tokio::test]
async fn keys_derived_from_arguments_ignore_object_key_order() {
    let (b, _) = manual("email");
    let guard = b.build();
    let fx = Effects::default();
    let a = SendEmail {
        to: "bob@example.com".into(),
        template: "welcome".into(),
        vars: serde_json::json!({"name": "Bob", "plan": "pro"}),
    };
    let mut b2 = a.clone();
    b2.vars = serde_json::json!({"plan": "pro", "name": "Bob"});
    let fx_ref = &fx;
    let first: u32 = guard
        .run_args(a.clone(), |args| async move {
            assert_eq!(args.to, "bob@example.com");
            Res::Ok(fx_ref.hit())
        })
        .await
        .unwrap();
    let second: u32 = guard
        .run_args(b2, |_| async { Res::Ok(fx.hit()) })
        .await
        .unwrap();
    assert_eq!((first, second, fx.count()), (1, 1, 1));
    let mut c = a.clone();
    c.to = "alice@example.com".into();
    let third: u32 = guard
        .run_args(c, |_| async { Res::Ok(fx.hit()) })
        .await
        .unwrap();
    assert_eq!(third, 2);
    assert_eq!(
        idemp::Guard::key_for_args(&a).unwrap().len(),
        35,
        "ik_ + 32 hex"
    );
}

#[test]
fn the_blocking_api_runs_once_and_releases_on_panic() {
    let (b, _) = manual("sync");
    let guard = b.build().blocking().unwrap();
    let fx = Effects::default();
    let v: u32 = guard.run("k", || Res::Ok(fx.hit())).unwrap();
    let (again, info) = guard.run_detailed("k", || Res::Ok(fx.hit())).unwrap();
    assert_eq!((v, again, fx.count()), (1, 1, 1));
    assert_eq!(info.disposition, Disposition::Replayed);

    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = guard.run("p", || -> Res<u32> {
            fx.hit();
            panic!("boom")
        });
    }));
    assert!(panicked.is_err());
    let v: u32 = guard.run("p", || Res::Ok(fx.hit())).unwrap();
    assert_eq!(v, 3);
    let err = guard
        .run("e", || Res::<u32>::Err(io_err("nope")))
        .unwrap_err();
    assert!(matches!(err, GuardError::Operation(_)));
}

#[derive(Clone, Serialize)]
struct Invoice {
    user: u64,
    amount_cents: u64,
}

#[tokio::test]
async fn guarded_functions_key_by_a_custom_function_or_by_arguments() {
    let (b, _) = manual("create_invoice");
    let guard = b.build();
    let fx = Effects::default();
    let per_user = guard.func(
        |inv: &Invoice| format!("invoice:{}", inv.user),
        |inv: Invoice| {
            let fx = fx.clone();
            async move {
                fx.hit();
                Res::Ok(inv.amount_cents)
            }
        },
    );
    let a = per_user
        .call(Invoice {
            user: 1,
            amount_cents: 100,
        })
        .await
        .unwrap();
    let b2 = per_user
        .call(Invoice {
            user: 1,
            amount_cents: 999,
        })
        .await
        .unwrap();
    let c = per_user
        .call(Invoice {
            user: 2,
            amount_cents: 5,
        })
        .await
        .unwrap();
    assert_eq!((a, b2, c, fx.count()), (100, 100, 5, 2));
    assert_eq!(
        per_user
            .key(&Invoice {
                user: 7,
                amount_cents: 0
            })
            .unwrap(),
        "invoice:7"
    );

    let by_args = guard.func_args(|inv: Invoice| {
        let fx = fx.clone();
        async move {
            fx.hit();
            Res::Ok(inv.amount_cents * 2)
        }
    });
    let (x, info) = by_args
        .call_detailed(Invoice {
            user: 1,
            amount_cents: 100,
        })
        .await
        .unwrap();
    assert_eq!((x, info.disposition), (200, Disposition::Executed));
    let (y, info) = by_args
        .call_detailed(Invoice {
            user: 1,
            amount_cents: 100,
        })
        .await
        .unwrap();
    assert_eq!((y, info.disposition), (200, Disposition::Replayed));
    let z = by_args
        .call(Invoice {
            user: 1,
            amount_cents: 101,
        })
        .await
        .unwrap();
    assert_eq!((z, fx.count()), (202, 4));
}

#[tokio::test]
async fn invalid_keys_are_refused_before_any_store_call() {
    let (b, _) = manual("s");
    let guard = b.build();
    let fx = Effects::default();
    for bad in ["", "has space", "caf\u{e9}", &"x".repeat(256)] {
        let err = guard
            .run(bad, || async { Res::Ok(fx.hit()) })
            .await
            .unwrap_err();
        assert!(matches!(err, GuardError::InvalidKey(_)), "{bad:?}: {err:?}");
        assert!(matches!(
            guard.begin(bad, None).await,
            Err(GuardError::InvalidKey(_))
        ));
    }
    assert_eq!(fx.count(), 0);
    // A Key converts into a request.
    let key = idemp::Key::builder("orders").part_u64(17).build();
    let v: u32 = guard
        .run(&key, || async { Res::Ok(fx.hit()) })
        .await
        .unwrap();
    let again: u32 = guard
        .run(key, || async { Res::Ok(fx.hit()) })
        .await
        .unwrap();
    assert_eq!((v, again, fx.count()), (1, 1, 1));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_waiter_takes_over_when_the_owner_vanishes() {
    let lease = Duration::from_secs(3);
    let guard = tokio_time("s")
        .lease(lease)
        .on_duplicate(OnDuplicate::Wait(Duration::from_secs(60)))
        .build();
    // The owner crashes: claimed, never renewed, never settled.
    let Begin::Owner(owner) = guard.begin("k", None).await.unwrap() else {
        panic!("expected ownership")
    };
    owner.abandon();
    let fx = Effects::default();
    let start = tokio::time::Instant::now();
    let (v, info) = guard
        .run_detailed("k", || async { Res::Ok(fx.hit()) })
        .await
        .unwrap();
    // It waited for the lease to pass (not the whole 60 s), then took the key over.
    assert!(start.elapsed() >= lease && start.elapsed() < Duration::from_secs(60));
    assert_eq!(
        (v, info.disposition, info.attempt),
        (1, Disposition::Executed, 2)
    );
    assert!(info.waited && info.takeover.is_some());
}

/// A store whose `renew` always fails as unreachable (everything else works).
#[derive(Debug)]
struct RenewFails(idemp::store::DynStore);

#[async_trait::async_trait]
impl idemp::store::Store for RenewFails {
    async fn claim(
        &self,
        c: &idemp::store::Claim,
    ) -> idemp::store::StoreResult<idemp::store::ClaimOutcome> {
        self.0.claim(c).await
    }
    async fn complete(
        &self,
        id: &idemp::store::RecordKey,
        t: u64,
        o: idemp::store::Outcome,
        ttl: Duration,
    ) -> idemp::store::StoreResult<()> {
        self.0.complete(id, t, o, ttl).await
    }
    async fn fail(
        &self,
        id: &idemp::store::RecordKey,
        t: u64,
        o: idemp::store::Outcome,
        ttl: Duration,
    ) -> idemp::store::StoreResult<()> {
        self.0.fail(id, t, o, ttl).await
    }
    async fn release(&self, id: &idemp::store::RecordKey, t: u64) -> idemp::store::StoreResult<()> {
        self.0.release(id, t).await
    }
    async fn renew(
        &self,
        _: &idemp::store::RecordKey,
        _: u64,
        _: Duration,
    ) -> idemp::store::StoreResult<u64> {
        Err(idemp::StoreError::Unavailable("injected".into()))
    }
    async fn get(
        &self,
        id: &idemp::store::RecordKey,
    ) -> idemp::store::StoreResult<Option<idemp::store::Record>> {
        self.0.get(id).await
    }
}

#[async_trait::async_trait]
impl idemp::store::StoreAdmin for RenewFails {
    async fn list(
        &self,
        q: &idemp::store::ListQuery,
    ) -> idemp::store::StoreResult<idemp::store::Page> {
        self.0.list(q).await
    }
    async fn purge(&self, id: &idemp::store::RecordKey) -> idemp::store::StoreResult<bool> {
        self.0.purge(id).await
    }
    async fn sweep(&self) -> idemp::store::StoreResult<u64> {
        self.0.sweep().await
    }
    async fn stats(&self) -> idemp::store::StoreResult<idemp::store::Stats> {
        self.0.stats().await
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn failing_renewals_for_a_whole_lease_signal_the_work() {
    let lease = Duration::from_secs(3);
    let inner = tokio_time("s").build();
    let guard = idemp::Guard::builder(RenewFails(inner.store().clone()))
        .scope("s")
        .lease(lease)
        .build();
    let start = tokio::time::Instant::now();
    let (v, _) = guard
        .run_with("k", |signal| async move {
            signal.lost().await;
            Res::Ok(start.elapsed())
        })
        .await
        .unwrap();
    // Told once renewals had failed for a whole lease; nobody took the key over, so
    // the store still accepted the completion.
    assert!(v >= lease, "{v:?}");
    assert!(matches!(
        record(&guard, "k").await.unwrap().state,
        State::Completed(_)
    ));
}
