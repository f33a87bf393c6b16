//! The store conformance suite (`idemp::testkit`) against `MemoryStore`: on a manual
//! clock and on real time, one test per case; plus checks that the suite catches
//! deliberately broken stores.
#![cfg(feature = "testkit")]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use idemp::clock::{ManualClock, Millis};
use idemp::store::{
    Claim, ClaimOutcome, ListQuery, MemoryStore, Outcome, Page, Record, RecordKey, Stats, Store,
    StoreAdmin, StoreError, StoreResult, Token,
};
use idemp::testkit::{Fixture, KitConfig, StoreFactory};

/// The suite with a manual clock (time cases advance it).
mod manual_clock {
    idemp::conformance_tests!(idemp::testkit::MemoryFactory::default());
}

/// A memory store on the system clock, run as a "server time" store: checks the
/// suite's real-time mode (short leases and sleeps) that Redis and Postgres use.
struct RealTimeMemory;

#[async_trait]
impl StoreFactory for RealTimeMemory {
    async fn create(&self) -> Fixture {
        Fixture::real(MemoryStore::new())
    }
    fn config(&self) -> KitConfig {
        KitConfig::default().real_time_unit(Duration::from_millis(100))
    }
}

mod real_time {
    idemp::conformance_tests!(super::RealTimeMemory);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_accepts_a_closure_factory() {
    let factory = || async {
        let clock = ManualClock::starting_now();
        let store = MemoryStore::builder()
            .clock(Arc::new(clock.clone()))
            .shards(2)
            .build();
        Fixture::manual(store, clock)
    };
    idemp::testkit::run_all(&factory).await;
}

// ---------------------------------------------------------------------------------
// Broken stores: each breaks one rule; the named case must fail and say which.

#[derive(Debug, Clone, Copy, PartialEq)]
enum Breakage {
    /// `complete` swallows `Fenced` (a stale owner "succeeds").
    IgnoresFencing,
    /// `list` ignores `after` (paging never advances).
    ListIgnoresAfter,
    /// `wait` returns at once instead of waiting.
    WaitDoesNotWait,
    /// `fail` releases instead of storing a sticky failure.
    FailReleases,
    /// Claims forget the fingerprint.
    DropsFingerprint,
    /// Fresh claims report token 1 whatever the store issued.
    WrongToken,
}

#[derive(Debug)]
struct Broken {
    inner: MemoryStore,
    how: Breakage,
}

#[async_trait]
impl Store for Broken {
    async fn claim(&self, claim: &Claim) -> StoreResult<ClaimOutcome> {
        if self.how == Breakage::DropsFingerprint {
            return self.inner.claim(&claim.clone().fingerprint(None)).await;
        }
        let got = self.inner.claim(claim).await?;
        if self.how == Breakage::WrongToken
            && let ClaimOutcome::Acquired {
                token,
                lease_until,
                takeover: None,
                attempt,
            } = got
        {
            let _ = token;
            return Ok(ClaimOutcome::Acquired {
                token: 1,
                lease_until,
                takeover: None,
                attempt,
            });
        }
        Ok(got)
    }
    async fn complete(
        &self,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        match self.inner.complete(id, token, outcome, ttl).await {
            Err(StoreError::Fenced { .. }) if self.how == Breakage::IgnoresFencing => Ok(()),
            other => other,
        }
    }
    async fn fail(
        &self,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        if self.how == Breakage::FailReleases {
            return self.inner.release(id, token).await;
        }
        self.inner.fail(id, token, outcome, ttl).await
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
        if self.how == Breakage::WaitDoesNotWait {
            return self.inner.get(id).await;
        }
        self.inner.wait(id, timeout).await
    }
}

#[async_trait]
impl StoreAdmin for Broken {
    async fn list(&self, query: &ListQuery) -> StoreResult<Page> {
        if self.how == Breakage::ListIgnoresAfter {
            let mut q = query.clone();
            q.after = None;
            return self.inner.list(&q).await;
        }
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

struct BrokenFactory(Breakage);

#[async_trait]
impl StoreFactory for BrokenFactory {
    async fn create(&self) -> Fixture {
        let clock = ManualClock::starting_now();
        let inner = MemoryStore::builder()
            .clock(Arc::new(clock.clone()))
            .build();
        Fixture::manual(Broken { inner, how: self.0 }, clock)
    }
    fn config(&self) -> KitConfig {
        KitConfig::default().wait_timeout(Duration::from_secs(2))
    }
}

/// Runs one case against a broken store and returns its panic message.
fn failure_of<Fut>(case: impl FnOnce(BrokenFactory) -> Fut, how: Breakage) -> String
where
    Fut: std::future::Future<Output = ()>,
{
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        idemp::testkit::block_on(case(BrokenFactory(how)))
    }));
    match result {
        Ok(()) => panic!("the suite accepted a store with breakage {how:?}"),
        Err(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    }
}

fn assert_caught(msg: &str, case: &str, detail: &str) {
    assert!(
        msg.contains(&format!("testkit case '{case}'")) && msg.contains(detail),
        "expected case '{case}' to report {detail:?}, got: {msg}"
    );
}

#[test]
fn suite_catches_a_store_that_ignores_fencing() {
    let msg = failure_of(
        |f| async move { idemp::testkit::fenced_after_takeover(&f).await },
        Breakage::IgnoresFencing,
    );
    assert_caught(&msg, "fenced_after_takeover", "complete with stale token");
}

#[test]
fn suite_catches_a_storm_overwritten_by_a_fenced_owner() {
    let msg = failure_of(
        |f| async move { idemp::testkit::storm_fencing(&f).await },
        Breakage::IgnoresFencing,
    );
    assert_caught(&msg, "storm_fencing", "paused owner's complete");
}

#[test]
fn suite_catches_a_list_that_ignores_after() {
    let msg = failure_of(
        |f| async move { idemp::testkit::list_pages_by_scope_and_prefix(&f).await },
        Breakage::ListIgnoresAfter,
    );
    assert_caught(&msg, "list_pages_by_scope_and_prefix", "list never ended");
}

#[test]
fn suite_catches_a_wait_that_does_not_wait() {
    let msg = failure_of(
        |f| async move { idemp::testkit::wait_returns_when_settled_or_gone(&f).await },
        Breakage::WaitDoesNotWait,
    );
    assert_caught(
        &msg,
        "wait_returns_when_settled_or_gone",
        "wait after complete",
    );
}

#[test]
fn suite_catches_a_failure_that_is_not_sticky() {
    let msg = failure_of(
        |f| async move { idemp::testkit::fail_is_sticky(&f).await },
        Breakage::FailReleases,
    );
    assert_caught(&msg, "fail_is_sticky", "expected Existing");
}

#[test]
fn suite_catches_a_store_that_drops_fingerprints() {
    let msg = failure_of(
        |f| async move { idemp::testkit::fingerprint_rules(&f).await },
        Breakage::DropsFingerprint,
    );
    assert_caught(&msg, "fingerprint_rules", "expected Mismatch");
}

#[test]
fn suite_catches_a_wrong_token() {
    let msg = failure_of(
        |f| async move { idemp::testkit::release_frees_the_key(&f).await },
        Breakage::WrongToken,
    );
    assert_caught(&msg, "release_frees_the_key", "release");
}

#[test]
fn model_case_catches_broken_stores() {
    for how in [
        Breakage::IgnoresFencing,
        Breakage::FailReleases,
        Breakage::DropsFingerprint,
        Breakage::WrongToken,
    ] {
        let msg = failure_of(
            |f| async move { idemp::testkit::random_operations_match_the_model(&f).await },
            how,
        );
        assert_caught(
            &msg,
            "random_operations_match_the_model",
            "operations so far",
        );
    }
}
