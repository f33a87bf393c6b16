//! The store conformance suite (`idemp::testkit`) against the Redis store on the
//! shared server (IDEMP_TEST_REDIS_URL, default redis://127.0.0.1:6379/0), each case
//! under its own key prefix, deleted afterwards:
//!
//! * `server_time`: the store reads the server's `TIME` (its production mode); the
//!   suite sleeps through short leases and ttls;
//! * `client_clock`: the store reads a `ManualClock` the suite moves (no sleeping).
//!
//! Storms run at the suite's full size (64 tasks, 1,000 keys × 8 contenders). The
//! model case runs 10 sequences instead of 40: it calls `stats` after every step, and
//! `stats` on Redis walks the whole database with `SCAN` (other applications' keys
//! included), a few milliseconds each on the shared server.
#![cfg(all(feature = "redis", feature = "testkit"))]

mod redis_support;

use std::sync::Arc;

use async_trait::async_trait;
use idemp::clock::ManualClock;
use idemp::testkit::{Fixture, KitConfig, StoreFactory};
use parking_lot::Mutex;
use redis_support::*;

/// A fresh prefix per case; every prefix it made is deleted after each case.
#[derive(Default)]
struct RedisFactory {
    manual_clock: bool,
    prefixes: Mutex<Vec<String>>,
}

impl RedisFactory {
    fn server_time() -> Self {
        Self::default()
    }
    fn client_clock() -> Self {
        Self {
            manual_clock: true,
            ..Self::default()
        }
    }
}

#[async_trait]
impl StoreFactory for RedisFactory {
    async fn create(&self) -> Fixture {
        let prefix = unique_prefix("kit");
        self.prefixes.lock().push(prefix.clone());
        let store = connect(&shared_url(), &prefix).await;
        if self.manual_clock {
            let clock = ManualClock::starting_now();
            Fixture::manual(store.with_clock(Arc::new(clock.clone())), clock)
        } else {
            Fixture::real(store)
        }
    }

    fn config(&self) -> KitConfig {
        KitConfig::default().model(10, 60)
    }

    async fn dispose(&self, fixture: Fixture) {
        drop(fixture);
        let prefixes: Vec<String> = self.prefixes.lock().drain(..).collect();
        let url = shared_url();
        let _ = tokio::task::spawn_blocking(move || {
            for p in prefixes {
                delete_prefix(&url, &p);
            }
        })
        .await;
    }
}

mod server_time {
    idemp::conformance_tests!(super::RedisFactory::server_time());
    // The shared `LIMITS` (not yet in the default list: the memory store does not
    // check them yet).
    idemp::conformance_tests!(@cases (super::RedisFactory::server_time()) limits_are_honoured);
}

mod client_clock {
    idemp::conformance_tests!(super::RedisFactory::client_clock());
}
