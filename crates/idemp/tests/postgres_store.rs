//! The Postgres store against a real server: the claim statement's edge cases, fencing,
//! expiry, listing, sweeping. Each test runs in a schema of its own.
#![cfg(feature = "postgres")]

mod postgres_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use idemp::clock::{Clock, ManualClock};
use idemp::store::postgres::PostgresStore;
use idemp::store::{
    Claim, ClaimOutcome, Codec, Fingerprint, ListQuery, Outcome, RecordKey, State, Store,
    StoreAdmin, StoreError,
};
use postgres_support::*;

const TTL: Duration = Duration::from_secs(3600);

/// A store whose time is a manual clock, so leases and ttls pass without sleeping.
async fn manual() -> (PostgresStore, ManualClock, SchemaGuard) {
    let schema = unique_schema();
    let guard = SchemaGuard(schema.clone());
    let clock = ManualClock::new(1_700_000_000_000);
    let store = connect(options(&schema).clock(Some(Arc::new(clock.clone())))).await;
    (store, clock, guard)
}

fn id(k: &str) -> RecordKey {
    RecordKey::new("charge", k)
}

fn json(s: &str) -> Outcome {
    Outcome::new(Codec::Json, s.as_bytes().to_vec())
}

fn acquired(o: ClaimOutcome) -> (u64, Option<u64>, u32) {
    match o {
        ClaimOutcome::Acquired {
            token,
            takeover,
            attempt,
            ..
        } => (token, takeover, attempt),
        other => panic!("expected Acquired, got {other:?}"),
    }
}

#[tokio::test]
async fn claim_then_duplicate_then_complete_then_replay() {
    let (store, _g) = fresh().await;
    let k = id("a");
    let (t1, takeover, attempt) = acquired(store.claim(&Claim::new(k.clone())).await.unwrap());
    assert!(t1 > 0);
    assert_eq!((takeover, attempt), (None, 1));

    match store.claim(&Claim::new(k.clone())).await.unwrap() {
        ClaimOutcome::Existing(r) => {
            assert_eq!(r.token, t1);
            assert!(matches!(r.state, State::InProgress { .. }));
            assert_eq!(r.expires_at, None);
        }
        other => panic!("{other:?}"),
    }

    store.complete(&k, t1, json("42"), TTL).await.unwrap();
    let again = store.complete(&k, t1, json("43"), TTL).await.unwrap_err();
    assert!(
        matches!(again, StoreError::Fenced { current: Some(t), .. } if t == t1),
        "{again}"
    );

    match store.claim(&Claim::new(k.clone())).await.unwrap() {
        ClaimOutcome::Existing(r) => {
            assert_eq!(r.state, State::Completed(json("42")));
            assert!(r.expires_at.is_some());
            assert_eq!(r.attempts, 1);
        }
        other => panic!("{other:?}"),
    }
    let got = store.get(&k).await.unwrap().unwrap();
    assert_eq!(got.state, State::Completed(json("42")));
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.completed, stats.in_progress), (1, 0));
    assert_eq!(stats.outcome_bytes, Some(2));
}

#[tokio::test]
async fn failures_are_stored_as_data() {
    let (store, _g) = fresh().await;
    let k = id("f");
    let (t, ..) = acquired(store.claim(&Claim::new(k.clone())).await.unwrap());
    let err = Outcome::new(Codec::Raw, vec![0, 159, 146, 150, 255]);
    store.fail(&k, t, err.clone(), TTL).await.unwrap();
    match store.claim(&Claim::new(k.clone())).await.unwrap() {
        ClaimOutcome::Existing(r) => assert_eq!(r.state, State::Failed(err)),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.stats().await.unwrap().failed, 1);
}

#[tokio::test]
async fn fingerprints_are_compared() {
    let (store, clock, _g) = manual().await;
    let k = id("fp");
    let a = Some(Fingerprint::of(b"a"));
    let b = Some(Fingerprint::of(b"b"));
    let claim = |fp| {
        Claim::new(k.clone())
            .fingerprint(fp)
            .lease(Duration::from_secs(5))
    };
    let (t, ..) = acquired(store.claim(&claim(a)).await.unwrap());
    assert!(
        matches!(store.claim(&claim(b)).await.unwrap(), ClaimOutcome::Mismatch(r) if r.fingerprint == a)
    );
    assert!(matches!(
        store.claim(&claim(None)).await.unwrap(),
        ClaimOutcome::Existing(_)
    ));
    assert!(matches!(
        store.claim(&claim(a)).await.unwrap(),
        ClaimOutcome::Existing(_)
    ));

    // An expired lease is not taken over by a different payload.
    clock.advance(Duration::from_secs(10));
    assert!(matches!(
        store.claim(&claim(b)).await.unwrap(),
        ClaimOutcome::Mismatch(_)
    ));
    // The same payload (or none) takes it over, keeping the stored fingerprint.
    let (t2, takeover, attempt) = acquired(store.claim(&claim(None)).await.unwrap());
    assert_eq!((takeover, attempt), (Some(t), 2));
    assert!(t2 > t);
    assert_eq!(store.get(&k).await.unwrap().unwrap().fingerprint, a);

    // Settled: a different payload is still a mismatch.
    store.complete(&k, t2, json("1"), TTL).await.unwrap();
    assert!(matches!(
        store.claim(&claim(b)).await.unwrap(),
        ClaimOutcome::Mismatch(_)
    ));
}

#[tokio::test]
async fn expired_leases_are_taken_over_or_reported() {
    let (store, clock, _g) = manual().await;
    let k = id("lease");
    let lease = Duration::from_secs(30);
    let (t1, ..) = acquired(
        store
            .claim(&Claim::new(k.clone()).lease(lease))
            .await
            .unwrap(),
    );
    clock.advance(Duration::from_secs(31));

    // Without takeover the record is reported, and it is ambiguous.
    let no_take = Claim::new(k.clone()).lease(lease).take_over_expired(false);
    match store.claim(&no_take).await.unwrap() {
        ClaimOutcome::Existing(r) => {
            assert_eq!(r.token, t1);
            assert!(r.is_ambiguous(clock.now_ms()));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.stats().await.unwrap().ambiguous, 1);

    let (t2, takeover, attempt) = acquired(
        store
            .claim(&Claim::new(k.clone()).lease(lease))
            .await
            .unwrap(),
    );
    assert!(t2 > t1);
    assert_eq!((takeover, attempt), (Some(t1), 2));

    // The old owner is fenced everywhere and changes nothing.
    for res in [
        store.complete(&k, t1, json("old"), TTL).await,
        store.fail(&k, t1, json("old"), TTL).await,
        store.release(&k, t1).await,
        store.renew(&k, t1, lease).await.map(|_| ()),
    ] {
        assert!(
            matches!(res, Err(StoreError::Fenced { current: Some(c), token, .. }) if c == t2 && token == t1),
            "{res:?}"
        );
    }
    store.complete(&k, t2, json("new"), TTL).await.unwrap();
    assert_eq!(
        store.get(&k).await.unwrap().unwrap().state,
        State::Completed(json("new"))
    );
}

#[tokio::test]
async fn renew_extends_and_works_after_expiry_when_nobody_took_over() {
    let (store, clock, _g) = manual().await;
    let k = id("renew");
    let (t, ..) = acquired(
        store
            .claim(&Claim::new(k.clone()).lease(Duration::from_secs(10)))
            .await
            .unwrap(),
    );
    clock.advance(Duration::from_secs(8));
    let until = store.renew(&k, t, Duration::from_secs(10)).await.unwrap();
    assert_eq!(until, clock.now_ms() + 10_000);
    clock.advance(Duration::from_secs(8));
    // Still live thanks to the renewal: a claim sees it in progress.
    assert!(matches!(
        store.claim(&Claim::new(k.clone())).await.unwrap(),
        ClaimOutcome::Existing(_)
    ));
    clock.advance(Duration::from_secs(60));
    let until = store.renew(&k, t, Duration::from_secs(10)).await.unwrap();
    assert_eq!(until, clock.now_ms() + 10_000);
    store.complete(&k, t, json("ok"), TTL).await.unwrap();
    assert!(matches!(
        store.renew(&k, t, Duration::from_secs(1)).await,
        Err(StoreError::Fenced { .. })
    ));
}

#[tokio::test]
async fn tokens_increase_across_release_and_purge() {
    let (store, _g) = fresh().await;
    let k = id("tokens");
    let mut last = 0;
    for round in 0..6 {
        let (t, takeover, attempt) = acquired(store.claim(&Claim::new(k.clone())).await.unwrap());
        assert!(t > last, "round {round}: {t} after {last}");
        assert_eq!((takeover, attempt), (None, 1));
        if round % 2 == 0 {
            store.release(&k, t).await.unwrap();
            assert_eq!(store.get(&k).await.unwrap(), None);
            assert!(matches!(
                store.release(&k, t).await,
                Err(StoreError::Fenced { current: None, .. })
            ));
        } else {
            assert!(store.purge(&k).await.unwrap());
            assert!(!store.purge(&k).await.unwrap());
            assert!(matches!(
                store.complete(&k, t, json("late"), TTL).await,
                Err(StoreError::Fenced { current: None, .. })
            ));
        }
        last = t;
    }
}

#[tokio::test]
async fn expired_records_are_invisible_then_swept() {
    let (store, clock, _g) = manual().await;
    let done = id("done");
    let (t, ..) = acquired(store.claim(&Claim::new(done.clone())).await.unwrap());
    store
        .complete(&done, t, json("x"), Duration::from_secs(5))
        .await
        .unwrap();
    let abandoned = id("abandoned");
    store
        .claim(
            &Claim::new(abandoned.clone())
                .lease(Duration::from_secs(5))
                .ttl(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    let released = id("released");
    let (tr, ..) = acquired(store.claim(&Claim::new(released.clone())).await.unwrap());
    store.release(&released, tr).await.unwrap();
    let live = id("live");
    store.claim(&Claim::new(live.clone())).await.unwrap();

    assert_eq!(store.sweep().await.unwrap(), 0);
    clock.advance(Duration::from_secs(6));
    // Settled and past its ttl: gone from get/list/stats before any sweep.
    assert_eq!(store.get(&done).await.unwrap(), None);
    // Abandoned in progress: ambiguous until lease + ttl.
    assert!(
        store
            .get(&abandoned)
            .await
            .unwrap()
            .unwrap()
            .is_ambiguous(clock.now_ms())
    );
    clock.advance(Duration::from_secs(5));
    assert_eq!(store.get(&abandoned).await.unwrap(), None);
    let page = store.list(&ListQuery::default()).await.unwrap();
    assert_eq!(
        page.records
            .iter()
            .map(|r| r.id.clone())
            .collect::<Vec<_>>(),
        vec![live.clone()]
    );
    // A claim on an expired record starts afresh.
    let (t2, takeover, attempt) = acquired(store.claim(&Claim::new(done.clone())).await.unwrap());
    assert!(t2 > t);
    assert_eq!((takeover, attempt), (None, 1));
    store.purge(&done).await.unwrap();

    // The sweeper removes the expired rows; tombstones stay for their retention.
    assert_eq!(store.sweep().await.unwrap(), 1, "the abandoned record");
    clock.advance(Duration::from_secs(3600));
    // The tombstones of `released` and `done` go; `live` (ttl 24 h) stays, ambiguous.
    let swept = store.sweep().await.unwrap();
    assert_eq!(swept, 2, "the two tombstones");
    assert_eq!(store.get(&live).await.unwrap().map(|r| r.id), Some(live));
}

#[tokio::test]
async fn sweep_works_in_batches() {
    let schema = unique_schema();
    let _g = SchemaGuard(schema.clone());
    let clock = ManualClock::new(1_700_000_000_000);
    let store = connect(
        options(&schema)
            .clock(Some(Arc::new(clock.clone())))
            .sweep_batch(1),
    )
    .await;
    // Enough rows to fill several pages: the sweep walks them one page per statement.
    for i in 0..300 {
        let k = id(&format!("k{i:03}"));
        let (t, ..) = acquired(store.claim(&Claim::new(k.clone())).await.unwrap());
        store
            .complete(&k, t, json("1"), Duration::from_secs(1))
            .await
            .unwrap();
    }
    let c = client().await;
    let pages: i64 = c
        .query_one(
            &format!("SELECT pg_relation_size('\"{schema}\".records') / 8192"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(pages > 1, "{pages} page(s)");
    clock.advance(Duration::from_secs(2));
    assert_eq!(store.sweep().await.unwrap(), 300);
    assert_eq!(store.sweep().await.unwrap(), 0);
}

#[tokio::test]
async fn background_sweeper_runs() {
    let schema = unique_schema();
    let _g = SchemaGuard(schema.clone());
    let store = connect(options(&schema).sweep_interval(Some(Duration::from_millis(20)))).await;
    let k = id("short");
    let (t, ..) = acquired(store.claim(&Claim::new(k.clone())).await.unwrap());
    store
        .complete(&k, t, json("1"), Duration::from_millis(1))
        .await
        .unwrap();
    let c = client().await;
    let count = format!("SELECT count(*) FROM \"{schema}\".records");
    let mut left = 1;
    for _ in 0..500 {
        left = c.query_one(&count, &[]).await.unwrap().get::<_, i64>(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(left, 0, "the sweeper never deleted the expired row");
}

#[tokio::test]
async fn list_pages_in_byte_order() {
    let (store, _g) = fresh().await;
    // Byte order (Rust's `Ord` on strings), not the database collation.
    let mut keys: Vec<RecordKey> = ["B", "a", "b", "é", "Z", "a-1", "a_2", "日本", "a0"]
        .iter()
        .flat_map(|k| [RecordKey::new("s1", *k), RecordKey::new("s2", *k)])
        .collect();
    keys.push(RecordKey::new("", "root"));
    for k in &keys {
        store.claim(&Claim::new(k.clone())).await.unwrap();
    }
    keys.sort();
    let mut seen = Vec::new();
    let mut q = ListQuery {
        limit: 4,
        ..ListQuery::default()
    };
    loop {
        let page = store.list(&q).await.unwrap();
        assert!(page.records.len() <= 4);
        seen.extend(page.records.into_iter().map(|r| r.id));
        match page.next {
            Some(n) => q.after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, keys);

    let only = store
        .list(&ListQuery {
            scope: Some("s2".into()),
            key_prefix: Some("a".into()),
            ..ListQuery::default()
        })
        .await
        .unwrap();
    let got: Vec<&str> = only.records.iter().map(|r| r.id.key.as_str()).collect();
    assert_eq!(got, ["a", "a-1", "a0", "a_2"]);
    assert!(only.next.is_none());
}

#[tokio::test]
async fn bad_keys_are_refused_clearly() {
    let (store, _g) = fresh().await;
    for bad in [
        RecordKey::new("s", "nul\0key"),
        RecordKey::new("s", "x".repeat(5000)),
    ] {
        let e = store.claim(&Claim::new(bad.clone())).await.unwrap_err();
        assert!(matches!(e, StoreError::Invalid(_)), "{e}");
        assert!(matches!(store.get(&bad).await, Err(StoreError::Invalid(_))));
    }
    // Unicode, empty scope, quotes and percent signs are plain data.
    for odd in [
        RecordKey::new("", "k"),
        RecordKey::new("s'; DROP TABLE x; --", "%_\\"),
        RecordKey::new("ü", "🦀"),
    ] {
        let (t, ..) = acquired(store.claim(&Claim::new(odd.clone())).await.unwrap());
        store.complete(&odd, t, json("1"), TTL).await.unwrap();
        assert_eq!(store.get(&odd).await.unwrap().unwrap().id, odd);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storm_one_winner_per_key() {
    let (store, _g) = fresh().await;
    let store = Arc::new(store);
    let keys: Vec<RecordKey> = (0..8).map(|i| id(&format!("storm{i}"))).collect();
    let mut tasks = Vec::new();
    for n in 0..64 {
        let store = store.clone();
        let k = keys[n % keys.len()].clone();
        tasks.push(tokio::spawn(async move {
            match store.claim(&Claim::new(k.clone())).await.unwrap() {
                ClaimOutcome::Acquired { token, .. } => {
                    store
                        .complete(&k, token, json(&format!("\"{token}\"")), TTL)
                        .await
                        .unwrap();
                    Some((k, token))
                }
                ClaimOutcome::Existing(_) => None,
                ClaimOutcome::Mismatch(r) => panic!("mismatch {r:?}"),
            }
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        if let Some(w) = t.await.unwrap() {
            winners.push(w);
        }
    }
    let won: HashSet<_> = winners.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(winners.len(), keys.len(), "exactly one winner per key");
    assert_eq!(won.len(), keys.len());
    for (k, token) in winners {
        let r = store.get(&k).await.unwrap().unwrap();
        assert_eq!(r.state, State::Completed(json(&format!("\"{token}\""))));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storm_of_takeovers_has_one_winner() {
    let (store, clock, _g) = manual().await;
    let store = Arc::new(store);
    let k = id("takeover-storm");
    let (t0, ..) = acquired(
        store
            .claim(&Claim::new(k.clone()).lease(Duration::from_secs(1)))
            .await
            .unwrap(),
    );
    clock.advance(Duration::from_secs(2));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let store = store.clone();
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            store
                .claim(&Claim::new(k).lease(Duration::from_secs(60)))
                .await
                .unwrap()
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        if let ClaimOutcome::Acquired {
            token, takeover, ..
        } = t.await.unwrap()
        {
            winners.push((token, takeover));
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(winners[0].1, Some(t0));
    assert!(winners[0].0 > t0);
}

#[tokio::test]
async fn open_by_url_uses_the_schema_parameter() {
    let schema = unique_schema();
    let _g = SchemaGuard(schema.clone());
    let url = format!("{}?schema={schema}&pool_size=2", url());
    let store = match idemp::store::open(&url).await {
        Ok(s) => s,
        Err(e) => panic!("cannot open {url} ({e}); start Postgres with scripts/services.sh"),
    };
    let k = id("via-url");
    store.claim(&Claim::new(k.clone())).await.unwrap();
    let c = client().await;
    let n: i64 = c
        .query_one(&format!("SELECT count(*) FROM \"{schema}\".records"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}
