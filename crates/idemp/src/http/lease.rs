//! The lease heartbeat of a running request.
//!
//! While the handler runs, the claim's lease is renewed every `lease / 3`, so a slow
//! handler keeps its key however long the lease, and a crashed process loses it
//! within one lease. This is deliberately small and self-contained: it can be
//! replaced by the guard's `Lease` ticket without touching the layer's logic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::observe::{Observer, StoreOp};
use crate::store::{DynStore, RecordKey, StoreError, Token};

/// Renews a lease in the background until dropped or stopped.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    task: JoinHandle<()>,
    lost: Arc<AtomicBool>,
}

impl Heartbeat {
    /// Starts renewing `id` (owned with `token`) every `lease / 3`.
    pub(crate) fn start(
        store: DynStore,
        id: RecordKey,
        token: Token,
        lease: Duration,
        observer: Arc<dyn Observer>,
    ) -> Self {
        let lost = Arc::new(AtomicBool::new(false));
        let flag = lost.clone();
        let period = (lease / 3).max(Duration::from_millis(10));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let t0 = Instant::now();
                let res = store.renew(&id, token, lease).await;
                observer.store_latency(StoreOp::Renew, t0.elapsed(), res.is_ok());
                match res {
                    Ok(_) => {}
                    Err(StoreError::Fenced { .. }) => {
                        tracing::warn!(record = %id, token, "lease lost: the key was taken over");
                        flag.store(true, Ordering::Release);
                        return;
                    }
                    // Transient: try again at the next tick; the lease may still hold.
                    Err(e) => tracing::warn!(record = %id, error = %e, "lease renewal failed"),
                }
            }
        });
        Self { task, lost }
    }

    /// Whether a renewal found the claim taken over.
    pub(crate) fn lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}
