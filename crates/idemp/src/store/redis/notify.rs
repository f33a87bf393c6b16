//! Wake-ups for [`Store::wait`](crate::store::Store::wait): one pub/sub subscriber per
//! store fans notifications out to the in-process waiters of each record.
//!
//! Every script that settles, releases or purges a record publishes the record's
//! digest on `<prefix>:settled`. The subscriber task (started by the first `wait`)
//! holds one connection, subscribed to that channel, and wakes the waiters registered
//! under the digest. Notifications are hints, never the truth: a waiter always re-reads
//! the record, re-checks after registering (so a settle between its read and its
//! registration is not lost), and polls as a fallback (slowly while the subscription is
//! up, quickly while it is down). When the subscription (re)starts every waiter is woken
//! to re-check, since messages published while it was down are lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Waiters by record digest, plus the subscriber task.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    waiters: Mutex<HashMap<String, (Arc<Notify>, usize)>>,
    /// Whether the subscription is currently established.
    healthy: AtomicBool,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A waiter's registration; unregisters on drop.
pub(crate) struct Registration<'a> {
    notifier: &'a Notifier,
    digest: String,
    pub(crate) notify: Arc<Notify>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut map = self.notifier.waiters.lock();
        if let Some((_, count)) = map.get_mut(&self.digest) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.digest);
            }
        }
    }
}

impl Notifier {
    /// Registers interest in a record.
    pub(crate) fn register(&self, digest: &str) -> Registration<'_> {
        let mut map = self.waiters.lock();
        let entry = map
            .entry(digest.to_string())
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        Registration {
            notifier: self,
            digest: digest.to_string(),
            notify: entry.0.clone(),
        }
    }

    /// Whether notifications are flowing (polling can be slow).
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    fn wake(&self, digest: &str) {
        if let Some((n, _)) = self.waiters.lock().get(digest) {
            n.notify_waiters();
        }
    }

    fn wake_all(&self) {
        for (n, _) in self.waiters.lock().values() {
            n.notify_waiters();
        }
    }

    fn set_healthy(&self, yes: bool) {
        self.healthy.store(yes, Ordering::Release);
        // Messages may have been missed while the subscription was down (or before it
        // existed): every waiter re-checks.
        self.wake_all();
    }

    /// Starts the subscriber task unless it runs already.
    pub(crate) fn ensure_started(self: &Arc<Self>, clients: Vec<redis::Client>, channel: &str) {
        let mut task = self.task.lock();
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(self);
        let channel = channel.to_string();
        *task = Some(handle.spawn(subscriber(weak, clients, channel)));
    }

    /// Stops the subscriber task.
    pub(crate) fn stop(&self) {
        if let Some(t) = self.task.lock().take() {
            t.abort();
        }
    }
}

async fn subscriber(
    notifier: std::sync::Weak<Notifier>,
    clients: Vec<redis::Client>,
    channel: String,
) {
    let mut attempt: usize = 0;
    loop {
        let client = &clients[attempt % clients.len().max(1)];
        attempt += 1;
        let connected = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        }
        .await;
        match connected {
            Ok(mut pubsub) => {
                attempt = 0;
                match notifier.upgrade() {
                    Some(n) => n.set_healthy(true),
                    None => return,
                }
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    let Some(n) = notifier.upgrade() else { return };
                    if let Ok(digest) = std::str::from_utf8(msg.get_payload_bytes()) {
                        n.wake(digest);
                    }
                }
                tracing::debug!(channel, "idemp redis: notification subscription lost");
            }
            Err(e) => tracing::debug!(channel, error = %e, "idemp redis: cannot subscribe"),
        }
        match notifier.upgrade() {
            Some(n) => n.set_healthy(false),
            None => return,
        }
        let backoff = Duration::from_millis(50 * (1 << attempt.min(5)) as u64);
        tokio::time::sleep(backoff).await;
    }
}
