//! The store conformance suite (`idemp::testkit`) against the Postgres store, on the
//! server's clock (real time: the kit sleeps through short leases) and on a client
//! clock the kit moves by hand. Every case runs in a schema of its own, dropped after.
#![cfg(all(feature = "postgres", feature = "testkit"))]

mod postgres_support;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use idemp::clock::ManualClock;
use idemp::testkit::{Fixture, KitConfig, StoreFactory, StormConfig};
use parking_lot::Mutex;
use postgres_support::*;

/// A fresh schema per case.
#[derive(Default)]
struct PostgresFactory {
    /// Drive time with a client clock instead of the server's.
    manual: bool,
    /// Schema of each live fixture, by store address.
    schemas: Mutex<HashMap<usize, String>>,
}

fn address(f: &Fixture) -> usize {
    Arc::as_ptr(&f.store) as *const () as usize
}

#[async_trait]
impl StoreFactory for PostgresFactory {
    async fn create(&self) -> Fixture {
        let schema = unique_schema();
        let opts = options(&schema).pool_size(12);
        let fixture = if self.manual {
            let clock = ManualClock::starting_now();
            let store = connect(opts.clock(Some(Arc::new(clock.clone())))).await;
            Fixture::manual(store, clock)
        } else {
            Fixture::real(connect(opts).await)
        };
        self.schemas.lock().insert(address(&fixture), schema);
        fixture
    }

    async fn dispose(&self, fixture: Fixture) {
        let schema = self.schemas.lock().remove(&address(&fixture));
        drop(fixture);
        if let Some(schema) = schema {
            // Drops the schema (on a thread of its own).
            drop(SchemaGuard(schema));
        }
    }

    fn config(&self) -> KitConfig {
        if self.manual {
            // The full-size storms run on server time; on the client clock the same
            // storms run smaller (still 64 tasks) to keep the binary quick.
            KitConfig::default().storm(StormConfig::default().keys(250).fencing_keys(250))
        } else {
            KitConfig::default()
        }
    }
}

/// Server time: leases and ttls pass for real.
mod server_time {
    idemp::conformance_tests!(super::PostgresFactory::default());
}

/// Client clock (`PostgresOptions::clock`): the kit moves time by hand.
mod client_clock {
    idemp::conformance_tests!(super::PostgresFactory {
        manual: true,
        ..Default::default()
    });
}
