//! A background task that removes expired records.
//!
//! Expired records are invisible to `get`, `claim` and `list` as soon as they expire,
//! but a store without native expiry (memory, SQLite, Postgres) keeps their bytes
//! until [`StoreAdmin::sweep`](super::StoreAdmin::sweep) removes them. A long-running process
//! (a server, a worker, `idemp serve`) starts one [`Sweeper`] per store, and its memory
//! or disk returns to the steady state of the records still alive. On stores with
//! native expiry (Redis), `sweep` is cheap and returns 0.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use idemp::store::{MemoryStore, Sweeper};
//!
//! let store = Arc::new(MemoryStore::new());
//! let sweeper = Sweeper::builder(store)
//!     .interval(Duration::from_secs(60))
//!     .on_sweep(|removed| {
//!         if removed > 0 {
//!             println!("swept {removed} expired records");
//!         }
//!     })
//!     .spawn();
//! // … the process runs …
//! let totals = sweeper.stop().await;
//! assert_eq!(totals.errors, 0);
//! # }
//! ```
//!
//! A sweep that fails (the store is down) is logged at `warn` and counted; the next
//! one runs at the next interval. [`Sweeper::stop`] lets a sweep in progress finish,
//! then returns the totals; dropping the handle stops the task the same way without
//! waiting for it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::DynStore;

type OnSweep = Arc<dyn Fn(u64) + Send + Sync>;

/// Builds a [`Sweeper`]: see the [module docs](self).
pub struct SweeperBuilder {
    store: DynStore,
    interval: Duration,
    on_sweep: Option<OnSweep>,
}

impl fmt::Debug for SweeperBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SweeperBuilder")
            .field("store", &self.store)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl SweeperBuilder {
    /// How often to sweep (default: 60 s; at least 1 ms). The first sweep runs one
    /// interval after [`spawn`](Self::spawn).
    pub fn interval(mut self, every: Duration) -> Self {
        self.interval = every.max(Duration::from_millis(1));
        self
    }

    /// Called after each successful sweep with the number of records it removed
    /// (for a metric).
    pub fn on_sweep(mut self, f: impl Fn(u64) + Send + Sync + 'static) -> Self {
        self.on_sweep = Some(Arc::new(f));
        self
    }

    /// Starts sweeping on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (as `tokio::spawn` does).
    pub fn spawn(self) -> Sweeper {
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(
            self.store,
            self.interval,
            self.on_sweep,
            counters.clone(),
            stopped,
        ));
        Sweeper {
            counters,
            stop,
            task: Some(task),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    removed: AtomicU64,
    runs: AtomicU64,
    errors: AtomicU64,
}

/// What a [`Sweeper`] did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SweepTotals {
    /// Records removed.
    pub removed: u64,
    /// Sweeps that completed.
    pub runs: u64,
    /// Sweeps that failed.
    pub errors: u64,
}

/// A running sweeper (see the [module docs](self)). Dropping it stops the task.
#[derive(Debug)]
pub struct Sweeper {
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Sweeper {
    /// Starts building a sweeper of `store`.
    pub fn builder(store: DynStore) -> SweeperBuilder {
        SweeperBuilder {
            store,
            interval: Duration::from_secs(60),
            on_sweep: None,
        }
    }

    /// What it did so far.
    pub fn totals(&self) -> SweepTotals {
        SweepTotals {
            removed: self.counters.removed.load(Ordering::Acquire),
            runs: self.counters.runs.load(Ordering::Acquire),
            errors: self.counters.errors.load(Ordering::Acquire),
        }
    }

    /// Stops sweeping: a sweep in progress finishes first. Returns the totals.
    pub async fn stop(mut self) -> SweepTotals {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
            && e.is_panic()
        {
            tracing::error!("the sweeper task panicked");
        }
        self.totals()
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn run(
    store: DynStore,
    every: Duration,
    on_sweep: Option<OnSweep>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval_at(crate::store::deadline_after(every), every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        // A sweep is not interrupted by a stop: it finishes, then the loop ends.
        match store.sweep().await {
            Ok(removed) => {
                counters.removed.fetch_add(removed, Ordering::AcqRel);
                counters.runs.fetch_add(1, Ordering::AcqRel);
                if removed > 0 {
                    tracing::debug!(removed, "swept expired records");
                }
                if let Some(f) = &on_sweep {
                    f(removed);
                }
            }
            Err(e) => {
                counters.errors.fetch_add(1, Ordering::AcqRel);
                tracing::warn!(error = %e, "sweeping expired records failed; retrying at the next interval");
            }
        }
        if *stop.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Claim, MemoryStore, Outcome, RecordKey, Store};
    use std::sync::atomic::AtomicUsize;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn sweeps_every_interval_and_stops() {
        let store = Arc::new(MemoryStore::new());
        for i in 0..10 {
            let claim = Claim {
                id: RecordKey::new("s", format!("k{i}")),
                fingerprint: None,
                lease: Duration::from_secs(60),
                ttl: Duration::from_millis(1),
                take_over_expired: true,
                nonce: None,
            };
            let crate::store::ClaimOutcome::Acquired { token, .. } =
                store.claim(&claim).await.unwrap()
            else {
                panic!("claimed");
            };
            store
                .complete(
                    &claim.id,
                    token,
                    Outcome::new(crate::store::Codec::Raw, vec![1]),
                    claim.ttl,
                )
                .await
                .unwrap();
        }
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let sweeper = Sweeper::builder(store.clone())
            .interval(Duration::from_secs(5))
            .on_sweep(move |_| {
                seen.fetch_add(1, Ordering::SeqCst);
            })
            .spawn();
        // The memory store's clock is the system's: let the records expire for real.
        std::thread::sleep(Duration::from_millis(5));
        tokio::time::sleep(Duration::from_secs(11)).await;
        let totals = sweeper.totals();
        assert_eq!(totals.runs, 2);
        assert_eq!(totals.removed, 10);
        assert_eq!(store.entry_count(), 0);
        let totals = sweeper.stop().await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(totals.errors, 0);
    }
}
