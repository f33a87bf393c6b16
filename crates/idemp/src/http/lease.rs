//! The lease heartbeat of a running request.
//!
//! While the handler runs, the claim's lease is renewed every `lease / 3`, so a slow
//! handler keeps its key however long it runs, and a crashed process loses it within
//! one lease. The heartbeat is a future polled next to the handler (no task is
//! spawned; its timer is armed only if the handler is still running when first
//! polled). This is deliberately small and self-contained: it can be replaced by the
//! guard's `Lease` ticket without touching the layer's logic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::observe::{Observer, StoreOp};
use crate::store::{DynStore, RecordKey, StoreError, Token};

/// Set once a renewal finds the claim taken over (or purged).
#[derive(Debug, Default, Clone)]
pub(crate) struct LeaseLost(Arc<AtomicBool>);

impl LeaseLost {
    pub(crate) fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Renews `id` (owned with `token`) every `lease / 3`; never completes. Stops
/// renewing (and sets `lost`) when the store says the token is fenced.
pub(crate) async fn heartbeat(
    store: DynStore,
    id: RecordKey,
    token: Token,
    lease: Duration,
    observer: Arc<dyn Observer>,
    lost: LeaseLost,
) -> std::convert::Infallible {
    let period = (lease / 3).max(Duration::from_millis(10));
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
                lost.0.store(true, Ordering::Release);
                return std::future::pending::<std::convert::Infallible>().await;
            }
            // Transient: try again at the next tick; the lease may still hold.
            Err(e) => tracing::warn!(record = %id, error = %e, "lease renewal failed"),
        }
    }
}
