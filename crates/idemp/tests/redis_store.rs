//! Redis store tests against the shared server (IDEMP_TEST_REDIS_URL, default
//! redis://127.0.0.1:6379/0), each under its own prefix, cleaned up afterwards.
#![cfg(feature = "redis")]

mod redis_support;

use std::sync::Arc;
use std::time::Duration;

use idemp::clock::ManualClock;
use idemp::store::redis::RedisStore;
use idemp::store::{
    Claim, ClaimOutcome, Codec, Compression, Fingerprint, ListQuery, Outcome, RecordKey, State,
    Store, StoreAdmin, StoreError, Token,
};
use redis_support::*;

fn id(scope: &str, key: &str) -> RecordKey {
    RecordKey::new(scope, key)
}

async fn acquire(store: &impl Store, claim: &Claim) -> Token {
    match store.claim(claim).await.expect("claim") {
        ClaimOutcome::Acquired { token, .. } => token,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

#[tokio::test]
async fn claim_complete_replay_round_trips_every_field() {
    let (store, _c) = shared_store("roundtrip").await;
    let rid = id("charge", "order-1");
    let fp = Fingerprint::of(b"payload");
    let claim = Claim::new(rid.clone()).fingerprint(Some(fp));
    let ClaimOutcome::Acquired {
        token,
        lease_until,
        takeover,
        attempt,
    } = store.claim(&claim).await.unwrap()
    else {
        panic!("not acquired")
    };
    assert!(token > 0);
    assert_eq!((takeover, attempt), (None, 1));
    let rec = store.get(&rid).await.unwrap().expect("in progress");
    assert_eq!(rec.state, State::InProgress { lease_until });
    assert_eq!(rec.expires_at, None);
    assert_eq!(rec.fingerprint, Some(fp));

    // binary bytes, NUL and invalid UTF-8 included
    let bytes: Vec<u8> = (0..=255u8).chain([0, 0xff, 0xfe]).collect();
    let outcome = Outcome {
        codec: Codec::Postcard,
        compression: Compression::Lz4,
        bytes: bytes.clone(),
    };
    store
        .complete(&rid, token, outcome.clone(), Duration::from_secs(600))
        .await
        .unwrap();

    match store.claim(&claim).await.unwrap() {
        ClaimOutcome::Existing(r) => {
            assert_eq!(r.state, State::Completed(outcome.clone()));
            assert_eq!(r.token, token);
            assert_eq!(r.attempts, 1);
            assert_eq!(r.id, rid);
            let exp = r.expires_at.expect("settled records expire");
            assert!(exp >= r.updated_at + 600_000 && exp <= r.updated_at + 600_001);
            assert!(r.created_at <= r.updated_at);
        }
        other => panic!("expected replay, got {other:?}"),
    }
    // another payload under the same key is a mismatch, not a replay
    let other = Claim::new(rid.clone()).fingerprint(Some(Fingerprint::of(b"other")));
    assert!(
        matches!(store.claim(&other).await.unwrap(), ClaimOutcome::Mismatch(r) if r.token == token)
    );
    // no fingerprint on either side: replay
    let none = Claim::new(rid.clone());
    assert!(matches!(
        store.claim(&none).await.unwrap(),
        ClaimOutcome::Existing(_)
    ));
}

#[tokio::test]
async fn compare_and_set_fences_stale_tokens() {
    let (store, _c) = shared_store("fence").await;
    let rid = id("s", "k");
    let claim = Claim::new(rid.clone());
    let t1 = acquire(&store, &claim).await;
    let out = Outcome::new(Codec::Raw, b"x".to_vec());
    let ttl = Duration::from_secs(60);

    // a wrong token changes nothing
    for r in [
        store.complete(&rid, t1 + 1, out.clone(), ttl).await,
        store.fail(&rid, t1 - 1, out.clone(), ttl).await,
        store.release(&rid, t1 + 7).await,
        store.renew(&rid, t1 + 1, ttl).await.map(|_| ()),
    ] {
        match r {
            Err(StoreError::Fenced { current, .. }) => assert_eq!(current, Some(t1)),
            other => panic!("expected Fenced, got {other:?}"),
        }
    }
    assert!(matches!(
        store.get(&rid).await.unwrap().unwrap().state,
        State::InProgress { .. }
    ));

    // release, then the key runs again with a larger token; the old one is fenced
    store.release(&rid, t1).await.unwrap();
    assert_eq!(store.get(&rid).await.unwrap(), None);
    let t2 = acquire(&store, &claim).await;
    assert!(t2 > t1, "{t2} > {t1}");
    match store.complete(&rid, t1, out.clone(), ttl).await {
        Err(StoreError::Fenced { token, current, .. }) => {
            assert_eq!((token, current), (t1, Some(t2)))
        }
        other => panic!("{other:?}"),
    }
    // purge fences the owner too, and reports a missing record as current None
    assert!(store.purge(&rid).await.unwrap());
    assert!(!store.purge(&rid).await.unwrap());
    match store.complete(&rid, t2, out.clone(), ttl).await {
        Err(StoreError::Fenced { current: None, .. }) => {}
        other => panic!("{other:?}"),
    }
    let t3 = acquire(&store, &claim).await;
    assert!(t3 > t2);
    store.complete(&rid, t3, out.clone(), ttl).await.unwrap();
    // a settled record is not released or renewed
    assert!(matches!(
        store.release(&rid, t3).await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(matches!(
        store.renew(&rid, t3, ttl).await,
        Err(StoreError::Fenced { .. })
    ));
    // a settled record has no owner, not even the token that settled it (a retry after
    // a lost reply learns that its settle landed: current is its own token)
    for r in [
        store
            .complete(&rid, t3, Outcome::new(Codec::Raw, b"second".to_vec()), ttl)
            .await,
        store.fail(&rid, t3, out.clone(), ttl).await,
    ] {
        assert!(
            matches!(r, Err(StoreError::Fenced { current: Some(t), .. }) if t == t3),
            "{r:?}"
        );
    }
    let rec = store.get(&rid).await.unwrap().unwrap();
    assert_eq!(rec.state, State::Completed(out));
}

#[tokio::test]
async fn tokens_strictly_increase_across_releases_and_purges() {
    let (store, _c) = shared_store("tokens").await;
    let rid = id("s", "hot");
    let claim = Claim::new(rid.clone());
    let mut last = 0;
    for i in 0..300 {
        let t = acquire(&store, &claim).await;
        assert!(t > last, "iteration {i}: {t} after {last}");
        last = t;
        if i % 2 == 0 {
            store.release(&rid, t).await.unwrap();
        } else {
            assert!(store.purge(&rid).await.unwrap());
        }
    }
}

#[tokio::test]
async fn expired_leases_are_taken_over_or_reported() {
    let (store, _c) = shared_store("takeover").await;
    let clock = ManualClock::starting_now();
    let store = store.with_clock(Arc::new(clock.clone()));
    let rid = id("s", "k");
    let lease = Duration::from_secs(10);
    let claim = Claim::new(rid.clone()).lease(lease);
    let t1 = acquire(&store, &claim).await;
    // live lease: existing
    assert!(matches!(
        store.claim(&claim).await.unwrap(),
        ClaimOutcome::Existing(_)
    ));
    clock.advance(Duration::from_secs(11));
    let rec = store.get(&rid).await.unwrap().unwrap();
    assert!(rec.is_ambiguous(clock_now(&clock)));
    // renewing an expired lease nobody took over works
    let until = store.renew(&rid, t1, lease).await.unwrap();
    assert_eq!(until, clock_now(&clock) + 10_000);
    clock.advance(Duration::from_secs(11));
    // without takeover: reported as existing (ambiguous)
    let no = claim.clone().take_over_expired(false);
    match store.claim(&no).await.unwrap() {
        ClaimOutcome::Existing(r) => assert!(r.is_ambiguous(clock_now(&clock))),
        other => panic!("{other:?}"),
    }
    // with takeover: a new token that says what it replaced
    match store.claim(&claim).await.unwrap() {
        ClaimOutcome::Acquired {
            token,
            takeover,
            attempt,
            ..
        } => {
            assert!(token > t1);
            assert_eq!(takeover, Some(t1));
            assert_eq!(attempt, 2);
            let rec = store.get(&rid).await.unwrap().unwrap();
            assert_eq!(rec.attempts, 2);
            assert_eq!(rec.token, token);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store
            .complete(&rid, t1, Outcome::new(Codec::Raw, vec![]), lease)
            .await,
        Err(StoreError::Fenced { .. })
    ));
}

fn clock_now(c: &ManualClock) -> u64 {
    use idemp::clock::Clock;
    c.now_ms()
}

#[tokio::test]
async fn settled_records_expire_after_ttl() {
    let (store, _c) = shared_store("ttl").await;
    let clock = ManualClock::starting_now();
    let store = store.with_clock(Arc::new(clock.clone()));
    let rid = id("s", "k");
    let claim = Claim::new(rid.clone());
    let t1 = acquire(&store, &claim).await;
    store
        .complete(
            &rid,
            t1,
            Outcome::new(Codec::Json, b"1".to_vec()),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    clock.advance(Duration::from_millis(4_999));
    assert!(store.get(&rid).await.unwrap().is_some());
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        store.get(&rid).await.unwrap(),
        None,
        "invisible from the exact ms"
    );
    assert_eq!(
        store
            .list(&ListQuery::default())
            .await
            .unwrap()
            .records
            .len(),
        0
    );
    assert_eq!(store.stats().await.unwrap().completed, 0);
    assert!(!store.purge(&rid).await.unwrap());
    let t2 = acquire(&store, &claim).await;
    assert!(t2 > t1);
    assert_eq!(store.sweep().await.unwrap(), 0);
}

#[tokio::test]
async fn native_expiry_follows_ttl_and_lease() {
    let (store, c) = shared_store("pttl").await;
    let mut raw = raw(&c.url).await;
    let rid = id("s", "k");
    let key = store.record_key(&rid);
    let claim = Claim::new(rid.clone())
        .lease(Duration::from_secs(30))
        .ttl(Duration::from_secs(600));
    let t = acquire(&store, &claim).await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        (620_000..=630_000).contains(&pttl),
        "in progress keeps lease + ttl: {pttl}"
    );
    // a lease longer than the ttl: still kept until lease_until + ttl
    let long = Claim::new(id("s", "long"))
        .lease(Duration::from_secs(900))
        .ttl(Duration::from_secs(60));
    acquire(&store, &long).await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(store.record_key(&long.id))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!((950_000..=960_000).contains(&pttl), "{pttl}");
    store
        .complete(
            &rid,
            t,
            Outcome::new(Codec::Raw, vec![1]),
            Duration::from_secs(120),
        )
        .await
        .unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        (110_000..=120_000).contains(&pttl),
        "settled keeps ttl: {pttl}"
    );
    // a released record leaves a small tombstone that expires within seconds
    let tomb = Claim::new(id("s", "tomb"));
    let t = acquire(&store, &tomb).await;
    store.release(&tomb.id, t).await.unwrap();
    let tk = store.record_key(&tomb.id);
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&tk)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!((1..=10_000).contains(&pttl), "tombstone: {pttl}");
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(&tk)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        fields.len(),
        2,
        "tombstone keeps only state and token: {fields:?}"
    );
}

#[tokio::test]
async fn lua_edge_cases() {
    let (store, _c) = shared_store("edges").await;
    // huge durations are clamped, zero durations work
    let huge = Claim::new(id("s", "huge"))
        .lease(Duration::MAX)
        .ttl(Duration::MAX);
    let t = acquire(&store, &huge).await;
    let until = store.renew(&huge.id, t, Duration::MAX).await.unwrap();
    // tokens are the clock in microseconds
    assert!(until > t / 1000 + 50 * 365 * 24 * 3600 * 1000);
    store
        .complete(&huge.id, t, Outcome::new(Codec::Raw, vec![]), Duration::MAX)
        .await
        .unwrap();
    let rec = store.get(&huge.id).await.unwrap().unwrap();
    assert_eq!(
        rec.state,
        State::Completed(Outcome::new(Codec::Raw, vec![]))
    );
    assert!(rec.expires_at.unwrap() > rec.updated_at + 50 * 365 * 24 * 3600 * 1000);

    // zero lease: immediately ambiguous, and taken over by the next claim
    let zero = Claim::new(id("s", "zero")).lease(Duration::ZERO);
    let t = acquire(&store, &zero).await;
    match store.claim(&zero).await.unwrap() {
        ClaimOutcome::Acquired { takeover, .. } => assert_eq!(takeover, Some(t)),
        other => panic!("{other:?}"),
    }

    // a 1 MiB outcome round-trips
    let big = Claim::new(id("s", "big"));
    let t = acquire(&store, &big).await;
    let bytes: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    store
        .complete(
            &big.id,
            t,
            Outcome::new(Codec::Raw, bytes.clone()),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    match store.get(&big.id).await.unwrap().unwrap().state {
        State::Completed(o) => assert_eq!(o.bytes, bytes),
        other => panic!("{other:?}"),
    }

    // an empty key and a NUL are refused (the shared `LIMITS`), before Redis is asked
    for (s, k) in [("", ""), ("s", ""), ("s", "a\0b")] {
        assert!(matches!(
            store.claim(&Claim::new(id(s, k))).await,
            Err(StoreError::Invalid(_))
        ));
    }
    // scopes and keys with tag characters, separators, unicode, an empty scope
    let weird = [
        ("", "k"),
        ("{", "}"),
        ("a}", "{b"),
        ("x\u{1f}y", "z"),
        ("x", "\u{1f}yz"),
        ("ünï", "кл🔑"),
        ("s", "{}{}{}"),
    ];
    let mut tokens = Vec::new();
    for (s, k) in weird {
        let c = Claim::new(id(s, k));
        let key = store.record_key(&c.id);
        assert_eq!(key.matches('{').count(), 1, "{key}");
        tokens.push((c.id.clone(), acquire(&store, &c).await));
    }
    for (rid, t) in &tokens {
        store
            .complete(
                rid,
                *t,
                Outcome::new(Codec::Json, rid.key.clone().into_bytes()),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        let rec = store.get(rid).await.unwrap().unwrap();
        assert_eq!(&rec.id, rid);
        assert_eq!(
            rec.state,
            State::Completed(Outcome::new(Codec::Json, rid.key.clone().into_bytes()))
        );
    }
}

#[tokio::test]
async fn foreign_keys_under_the_prefix_are_refused() {
    let (store, c) = shared_store("foreign").await;
    let mut raw = raw(&c.url).await;
    let rid = id("s", "k");
    let _: () = redis::cmd("SET")
        .arg(store.record_key(&rid))
        .arg("not a hash")
        .query_async(&mut raw)
        .await
        .unwrap();
    match store.claim(&Claim::new(rid.clone())).await {
        Err(StoreError::Incompatible(m)) => assert!(m.contains("not an idemp record"), "{m}"),
        other => panic!("{other:?}"),
    }
    // a record whose stored id differs (a digest collision) is an error, not a replay
    let other = id("s", "other");
    let _: () = redis::cmd("DEL")
        .arg(store.record_key(&rid))
        .query_async(&mut raw)
        .await
        .unwrap();
    let t = acquire(&store, &Claim::new(other.clone())).await;
    let _: () = redis::cmd("RENAME")
        .arg(store.record_key(&other))
        .arg(store.record_key(&rid))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(t > 0);
    assert!(matches!(
        store.claim(&Claim::new(rid.clone())).await,
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        store.get(&rid).await,
        Err(StoreError::Corrupt { .. })
    ));
}

#[tokio::test]
async fn prefixes_isolate_applications() {
    let (a, _ca) = shared_store("iso-a").await;
    let (b, _cb) = shared_store("iso-b").await;
    let rid = id("s", "same");
    let ta = acquire(&a, &Claim::new(rid.clone())).await;
    let tb = acquire(&b, &Claim::new(rid.clone())).await;
    a.complete(
        &rid,
        ta,
        Outcome::new(Codec::Raw, b"a".to_vec()),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert!(matches!(
        b.get(&rid).await.unwrap().unwrap().state,
        State::InProgress { .. }
    ));
    assert_eq!(a.stats().await.unwrap().completed, 1);
    assert_eq!(a.stats().await.unwrap().in_progress, 0);
    assert_eq!(b.stats().await.unwrap().in_progress, 1);
    assert_eq!(
        a.list(&ListQuery::default()).await.unwrap().records.len(),
        1
    );
    assert_eq!(a.clear().await.unwrap(), 1);
    assert_eq!(a.get(&rid).await.unwrap(), None);
    b.release(&rid, tb).await.unwrap();
    assert_ne!(a.record_key(&rid), b.record_key(&rid));
}

#[tokio::test]
async fn list_pages_in_scope_key_order_and_stats_count_states() {
    let (store, _c) = shared_store("list").await;
    let clock = ManualClock::starting_now();
    let store = store.with_clock(Arc::new(clock.clone()));
    let ttl = Duration::from_secs(600);
    let mut expected = Vec::new();
    for scope in ["b", "a", "c"] {
        for i in (0..25).rev() {
            let rid = id(scope, &format!("k{i:02}"));
            let lease = if i % 5 == 0 {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(60)
            };
            let t = acquire(&store, &Claim::new(rid.clone()).lease(lease)).await;
            match i % 3 {
                0 => store
                    .complete(&rid, t, Outcome::new(Codec::Raw, vec![0; 10]), ttl)
                    .await
                    .unwrap(),
                1 => store
                    .fail(&rid, t, Outcome::new(Codec::Raw, vec![0; 3]), ttl)
                    .await
                    .unwrap(),
                _ => {}
            }
            expected.push(rid);
        }
    }
    expected.sort();
    let mut seen = Vec::new();
    let mut q = ListQuery {
        limit: 7,
        ..ListQuery::default()
    };
    loop {
        let page = store.list(&q).await.unwrap();
        assert!(page.records.len() <= 7);
        seen.extend(page.records.iter().map(|r| r.id.clone()));
        match page.next {
            Some(n) => q.after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, expected);

    let page = store
        .list(&ListQuery {
            scope: Some("a".into()),
            key_prefix: Some("k1".into()),
            ..ListQuery::default()
        })
        .await
        .unwrap();
    let keys: Vec<_> = page.records.iter().map(|r| r.id.key.as_str()).collect();
    assert_eq!(keys, (10..20).map(|i| format!("k{i}")).collect::<Vec<_>>());
    assert!(page.next.is_none());

    clock.advance(Duration::from_secs(2));
    let stats = store.stats().await.unwrap();
    // per scope: i%3==0 → 9 completed, i%3==1 → 8 failed, 8 in progress of which
    // i%5==0 (i = 5, 20) have a 1 s lease and are now ambiguous
    assert_eq!(stats.completed, 27);
    assert_eq!(stats.failed, 24);
    assert_eq!(stats.ambiguous, 6);
    assert_eq!(stats.in_progress, 18);
    assert_eq!(stats.outcome_bytes, Some(27 * 10 + 24 * 3));
}

#[tokio::test]
async fn wait_is_woken_by_settle_release_and_purge() {
    let (store, _c) = shared_store("wait").await;
    let store = Arc::new(store);
    let ttl = Duration::from_secs(60);
    for how in ["complete", "release", "purge"] {
        let rid = id("w", how);
        let t = acquire(&*store, &Claim::new(rid.clone())).await;
        let waiter = {
            let store = store.clone();
            let rid = rid.clone();
            tokio::spawn(async move { store.wait(&rid, Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        match how {
            "complete" => store
                .complete(&rid, t, Outcome::new(Codec::Raw, b"done".to_vec()), ttl)
                .await
                .unwrap(),
            "release" => store.release(&rid, t).await.unwrap(),
            _ => assert!(store.purge(&rid).await.unwrap()),
        }
        let seen = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken well before its 30 s timeout")
            .unwrap()
            .unwrap();
        match how {
            "complete" => assert!(matches!(seen.unwrap().state, State::Completed(_))),
            _ => assert_eq!(seen, None),
        }
    }
    // a record that stays in progress: returned as is when the timeout passes
    let rid = id("w", "stays");
    acquire(&*store, &Claim::new(rid.clone())).await;
    let seen = store.wait(&rid, Duration::from_millis(100)).await.unwrap();
    assert!(matches!(seen.unwrap().state, State::InProgress { .. }));
    // a missing record: returned at once
    assert_eq!(
        store
            .wait(&id("w", "none"), Duration::from_secs(30))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn many_waiters_of_many_records_are_all_woken() {
    let (store, _c) = shared_store("waiters").await;
    let store = Arc::new(store);
    let mut tokens = Vec::new();
    let mut waiters = Vec::new();
    for i in 0..20 {
        let rid = id("w", &format!("k{i}"));
        tokens.push((
            rid.clone(),
            acquire(&*store, &Claim::new(rid.clone())).await,
        ));
        for _ in 0..5 {
            let store = store.clone();
            let rid = rid.clone();
            waiters.push(tokio::spawn(async move {
                store.wait(&rid, Duration::from_secs(30)).await
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for (rid, t) in &tokens {
        store
            .complete(
                rid,
                *t,
                Outcome::new(Codec::Raw, rid.key.clone().into_bytes()),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
    }
    for w in waiters {
        let rec = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("woken")
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            rec.state,
            State::Completed(Outcome::new(Codec::Raw, rec.id.key.clone().into_bytes()))
        );
    }
}

#[tokio::test]
async fn concurrent_claims_have_one_winner() {
    let (store, _c) = shared_store("race").await;
    let store = Arc::new(store);
    for round in 0..20 {
        let rid = id("race", &format!("k{round}"));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let store = store.clone();
            let rid = rid.clone();
            tasks.push(tokio::spawn(
                async move { store.claim(&Claim::new(rid)).await },
            ));
        }
        let mut winners = 0;
        for t in tasks {
            if let ClaimOutcome::Acquired { .. } = t.await.unwrap().unwrap() {
                winners += 1;
            }
        }
        assert_eq!(winners, 1, "round {round}");
    }
}

#[tokio::test]
async fn unreachable_server_is_unavailable_with_instructions() {
    let port = free_port();
    let err = RedisStore::connect(&format!("redis://127.0.0.1:{port}/0"))
        .await
        .expect_err("nothing listens there");
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("services.sh"), "{err}");
}

#[tokio::test]
async fn open_by_url_gives_a_working_store() {
    let prefix = unique_prefix("open");
    let _c = Cleanup {
        url: shared_url(),
        prefix: prefix.clone(),
    };
    let url = format!("{}?prefix={prefix}", shared_url());
    let store = idemp::store::open(&url).await.expect("open");
    let rid = id("s", "k");
    let t = acquire(&store, &Claim::new(rid.clone())).await;
    store
        .complete(
            &rid,
            t,
            Outcome::new(Codec::Raw, vec![]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(store.stats().await.unwrap().completed, 1);
}
