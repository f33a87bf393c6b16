//! Shared helpers of the guard tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use idemp::clock::{Clock, ManualClock, Millis};
use idemp::guard::{Guard, GuardBuilder};
use idemp::store::{MemoryStore, Record, Store};

/// A memory store on a manual clock, and a guard builder sharing that clock.
pub fn manual(scope: &str) -> (GuardBuilder, ManualClock) {
    let clock = ManualClock::new(1_700_000_000_000);
    let store = MemoryStore::builder()
        .clock(Arc::new(clock.clone()))
        .build();
    let builder = Guard::builder(store)
        .scope(scope)
        .clock(Arc::new(clock.clone()))
        .lease(Duration::from_secs(60));
    (builder, clock)
}

/// A clock that follows tokio's (pausable) time, so leases, heartbeats and the work's
/// sleeps all move together under `start_paused`.
#[derive(Debug, Clone)]
pub struct TokioClock {
    base: Millis,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        Self {
            base: 1_700_000_000_000,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> Millis {
        self.base + self.start.elapsed().as_millis() as u64
    }
}

/// A memory store and guard builder on tokio's clock.
pub fn tokio_time(scope: &str) -> GuardBuilder {
    let clock = Arc::new(TokioClock::new());
    let store = MemoryStore::builder().clock(clock.clone()).build();
    Guard::builder(store).scope(scope).clock(clock)
}

/// Counts side effects.
#[derive(Debug, Default, Clone)]
pub struct Effects(Arc<AtomicU32>);

impl Effects {
    pub fn hit(&self) -> u32 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    pub fn count(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The record of `key` in the guard's scope.
pub async fn record(guard: &Guard, key: &str) -> Option<Record> {
    guard.store().get(&guard.record_key(key)).await.unwrap()
}

/// Yields until `cond` holds on the record (bounded: panics after many rounds).
pub async fn until_record(guard: &Guard, key: &str, cond: impl Fn(&Option<Record>) -> bool) {
    for _ in 0..10_000 {
        if cond(&record(guard, key).await) {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("record {key} never reached the expected state");
}
