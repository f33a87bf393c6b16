//! The store conformance suite (`idemp::testkit`) against `SqliteStore`, on a manual
//! clock: one store per case on a fresh file, and two stores (two writer threads,
//! as two processes would have) sharing one file.
#![cfg(all(feature = "testkit", feature = "sqlite"))]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use idemp::clock::{ManualClock, Millis};
use idemp::store::sqlite::SqliteStore;
use idemp::store::{
    Claim, ClaimOutcome, ListQuery, Outcome, Page, Record, RecordKey, Stats, Store, StoreAdmin,
    StoreResult, Token,
};
use idemp::testkit::{Fixture, StoreFactory};

/// A fresh SQLite file per case, in a temporary directory that lives as long as the
/// factory (one factory per test).
struct SqliteFactory {
    dir: tempfile::TempDir,
    two_writers: bool,
}

impl SqliteFactory {
    fn new(two_writers: bool) -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            two_writers,
        }
    }
}

#[async_trait]
impl StoreFactory for SqliteFactory {
    async fn create(&self) -> Fixture {
        let clock = ManualClock::starting_now();
        let path = self.dir.path().join("conformance.db");
        let open = || {
            SqliteStore::builder(&path)
                .clock(Arc::new(clock.clone()))
                .wait_poll_interval(Duration::from_millis(10))
                .open()
                .expect("open the SQLite store")
        };
        if self.two_writers {
            let store = TwoWriters {
                stores: [open(), open()],
                next: AtomicUsize::new(0),
            };
            Fixture::manual(store, clock)
        } else {
            Fixture::manual(open(), clock)
        }
    }
}

/// Two stores on one file, used in turn: operations on one key go through both
/// writer threads, which compete for SQLite's write lock.
#[derive(Debug)]
struct TwoWriters {
    stores: [SqliteStore; 2],
    next: AtomicUsize,
}

impl TwoWriters {
    fn pick(&self) -> &SqliteStore {
        &self.stores[self.next.fetch_add(1, Ordering::Relaxed) % 2]
    }
}

#[async_trait]
impl Store for TwoWriters {
    async fn claim(&self, claim: &Claim) -> StoreResult<ClaimOutcome> {
        self.pick().claim(claim).await
    }
    async fn complete(
        &self,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.pick().complete(id, token, outcome, ttl).await
    }
    async fn fail(
        &self,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.pick().fail(id, token, outcome, ttl).await
    }
    async fn release(&self, id: &RecordKey, token: Token) -> StoreResult<()> {
        self.pick().release(id, token).await
    }
    async fn renew(&self, id: &RecordKey, token: Token, lease: Duration) -> StoreResult<Millis> {
        self.pick().renew(id, token, lease).await
    }
    async fn get(&self, id: &RecordKey) -> StoreResult<Option<Record>> {
        self.pick().get(id).await
    }
    async fn wait(&self, id: &RecordKey, timeout: Duration) -> StoreResult<Option<Record>> {
        self.pick().wait(id, timeout).await
    }
}

#[async_trait]
impl StoreAdmin for TwoWriters {
    async fn list(&self, query: &ListQuery) -> StoreResult<Page> {
        self.pick().list(query).await
    }
    async fn purge(&self, id: &RecordKey) -> StoreResult<bool> {
        self.pick().purge(id).await
    }
    async fn sweep(&self) -> StoreResult<u64> {
        self.pick().sweep().await
    }
    async fn stats(&self) -> StoreResult<Stats> {
        self.pick().stats().await
    }
}

mod one_store {
    idemp::conformance_tests!(super::SqliteFactory::new(false));
}

mod two_writers_one_file {
    idemp::conformance_tests!(super::SqliteFactory::new(true));
}
