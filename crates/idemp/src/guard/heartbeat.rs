//! Keeping a lease alive while the work runs, and telling the work when it is lost.
//!
//! Every `lease / 3` the heartbeat renews the lease (`Store::renew`, compare-and-set
//! on the token). When the store answers `Fenced` (the key was taken over or purged),
//! or no renewal succeeded for a whole lease, the [`LeaseSignal`] fires: the work can
//! stop early, and its completion will be refused by the store anyway.
//!
//! The closure API drives the heartbeat inline (polled next to the work, no task is
//! spawned and no timer is armed when the work finishes on its first poll); the manual
//! [`Lease`](super::Lease) and the blocking API spawn it on the runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::store::{RecordKey, Store, StoreError, Token};

/// Fires when the running execution has lost its lease (like a cancellation token).
///
/// Cheap to clone. Cooperative work checks [`is_lost`](Self::is_lost) or selects on
/// [`lost`](Self::lost) and stops: its result would not be recorded anyway.
#[derive(Clone, Debug)]
pub struct LeaseSignal(Option<Arc<SignalInner>>);

#[derive(Debug, Default)]
struct SignalInner {
    lost: AtomicBool,
    notify: Notify,
}

impl Default for LeaseSignal {
    fn default() -> Self {
        Self::new()
    }
}

impl LeaseSignal {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self(Some(Arc::default()))
    }

    /// A signal nobody listens to (for calls whose work does not take one): firing
    /// it does nothing, and it costs no allocation.
    pub(crate) fn inert() -> Self {
        Self(None)
    }

    /// Whether the lease is known to be lost.
    pub fn is_lost(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|s| s.lost.load(Ordering::Acquire))
    }

    /// Resolves once the lease is lost (never, if it is kept until the work ends).
    pub async fn lost(&self) {
        let Some(inner) = &self.0 else {
            return std::future::pending().await;
        };
        loop {
            let notified = inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if inner.lost.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Fires the signal.
    pub(crate) fn fire(&self) {
        if let Some(inner) = &self.0 {
            inner.lost.store(true, Ordering::Release);
            inner.notify.notify_waiters();
        }
    }
}

/// The renewal period for a lease: a third of it, at least 1 ms.
pub(crate) fn period(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(1))
}

/// Renews `token`'s lease every `lease / 3` until fenced; never returns.
///
/// Fires `signal` when the store answers `Fenced`, or when no renewal succeeded for a
/// whole lease (transient store errors: by then another worker may have taken over).
pub(crate) async fn run<S: Store + ?Sized>(
    store: &S,
    id: &RecordKey,
    token: Token,
    lease: Duration,
    signal: &LeaseSignal,
) -> std::convert::Infallible {
    let every = period(lease);
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        match store.renew(id, token, lease).await {
            Ok(_) => {
                last_ok = tokio::time::Instant::now();
                tracing::trace!(%id, token, "lease renewed");
            }
            Err(StoreError::Fenced { current, .. }) => {
                tracing::warn!(%id, token, ?current, "lease lost: fenced by the store");
                signal.fire();
                return std::future::pending().await;
            }
            Err(e) => {
                tracing::warn!(%id, token, error = %e, "lease renewal failed");
                if last_ok.elapsed() >= lease && !signal.is_lost() {
                    tracing::warn!(%id, token, "no renewal for a whole lease: treating it as lost");
                    signal.fire();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn signal_wakes_waiters_registered_before_and_after() {
        let s = LeaseSignal::new();
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.lost().await });
        tokio::task::yield_now().await;
        assert!(!s.is_lost());
        s.fire();
        waiter.await.unwrap();
        s.lost().await; // already fired: returns at once
        assert!(s.is_lost());
    }

    #[test]
    fn period_is_a_third_with_a_floor() {
        assert_eq!(period(Duration::from_secs(3)), Duration::from_secs(1));
        assert_eq!(period(Duration::ZERO), Duration::from_millis(1));
    }
}
