//! The store conformance suite (`idemp::testkit`) against the Postgres store, on the
//! server's clock (real time: the kit sleeps through short leases) and on a client
//! clock the kit moves by hand. Every case runs in a schema of its own, dropped after.
#![cfg(all(feature = "postgres", feature = "testkit"))]

mod postgres_support;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use std::time::Duration;

use idemp::clock::ManualClock;
use idemp::store::postgres::PostgresStore;
use idemp::store::{Outcome, RecordKey, StoreError, StoreResult, Token};
use idemp::testkit::{
    Fixture, KitConfig, OwnerTransaction, OwnerTransactions, StoreFactory, StormConfig,
};
use parking_lot::Mutex;
use postgres_support::*;
use tokio::sync::{mpsc, oneshot};

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
        // No polling backstop within a case: a waiter that is not notified is caught.
        let opts = options(&schema)
            .pool_size(12)
            .wait_recheck(Duration::from_secs(120));
        let fixture = if self.manual {
            let clock = ManualClock::starting_now();
            let store = connect(opts.clock(Some(Arc::new(clock.clone())))).await;
            Fixture::manual(store.clone(), clock).with_transactions(Arc::new(Transactions(store)))
        } else {
            let store = connect(opts).await;
            Fixture::real(store.clone()).with_transactions(Arc::new(Transactions(store)))
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

/// Owner transactions on a connection of their own (outside the store's pool), driven
/// by a task that owns the connection: `complete` runs `complete_in`.
struct Transactions(PostgresStore);

enum TxCommand {
    Complete(
        RecordKey,
        Token,
        Outcome,
        Duration,
        oneshot::Sender<StoreResult<()>>,
    ),
    Commit(oneshot::Sender<StoreResult<()>>),
}

struct Tx(mpsc::Sender<TxCommand>);

fn pg(e: tokio_postgres::Error) -> StoreError {
    StoreError::backend(e)
}

#[async_trait]
impl OwnerTransactions for Transactions {
    async fn begin(&self, repeatable_read: bool) -> StoreResult<Box<dyn OwnerTransaction>> {
        let (mut client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
            .await
            .map_err(pg)?;
        tokio::spawn(conn);
        let (cmd_tx, mut cmd_rx) = mpsc::channel::<TxCommand>(4);
        let (ready_tx, ready_rx) = oneshot::channel::<StoreResult<()>>();
        let store = self.0.clone();
        tokio::spawn(async move {
            let mut builder = client.build_transaction();
            if repeatable_read {
                builder = builder.isolation_level(tokio_postgres::IsolationLevel::RepeatableRead);
            }
            let tx = match builder.start().await {
                Ok(tx) => tx,
                Err(e) => {
                    let _ = ready_tx.send(Err(pg(e)));
                    return;
                }
            };
            // The snapshot is taken by the first statement.
            if let Err(e) = tx.simple_query("SELECT 1").await {
                let _ = ready_tx.send(Err(pg(e)));
                return;
            }
            let _ = ready_tx.send(Ok(()));
            while let Some(cmd) = cmd_rx.recv().await {
                match cmd {
                    TxCommand::Complete(id, token, outcome, ttl, reply) => {
                        let _ = reply.send(store.complete_in(&tx, &id, token, outcome, ttl).await);
                    }
                    TxCommand::Commit(reply) => {
                        let _ = reply.send(tx.commit().await.map_err(pg));
                        return;
                    }
                }
            }
        });
        match ready_rx.await {
            Ok(Ok(())) => Ok(Box::new(Tx(cmd_tx))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Unavailable("the transaction task ended".into())),
        }
    }
}

impl Tx {
    async fn ask(
        &self,
        cmd: impl FnOnce(oneshot::Sender<StoreResult<()>>) -> TxCommand,
    ) -> StoreResult<()> {
        let (reply, rx) = oneshot::channel();
        let gone = || StoreError::Unavailable("the transaction task ended".into());
        self.0.send(cmd(reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

#[async_trait]
impl OwnerTransaction for Tx {
    async fn complete(
        &mut self,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        let id = id.clone();
        self.ask(move |r| TxCommand::Complete(id, token, outcome, ttl, r))
            .await
    }
    async fn commit(self: Box<Self>) -> StoreResult<()> {
        self.ask(TxCommand::Commit).await
    }
}

/// Server time: leases and ttls pass for real.
mod server_time {
    idemp::conformance_tests!(super::PostgresFactory::default());
    // The shared `LIMITS` (not yet in the default list: the memory store does not
    // check them yet).
    idemp::conformance_tests!(@cases (super::PostgresFactory::default()) limits_are_honoured);
}

/// Client clock (`PostgresOptions::clock`): the kit moves time by hand.
mod client_clock {
    idemp::conformance_tests!(super::PostgresFactory {
        manual: true,
        ..Default::default()
    });
}
