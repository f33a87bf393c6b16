//! `wait()` support: one LISTEN connection per store, fanned out to in-process waiters.
//!
//! Waiters register a [`Notify`] under their record key. The listener task keeps one
//! dedicated connection (outside the pool) subscribed to the store's channel and wakes
//! the waiters named by each notification. When the connection drops it reconnects
//! with backoff; while it is down `is_up()` is false and waiters poll instead, and every
//! (re)connection wakes all waiters so none misses a notification sent in the gap.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::store::RecordKey;

/// Registered waiters and the listener's health, shared with the listener task.
#[derive(Default)]
pub(super) struct Waiters {
    map: Mutex<HashMap<RecordKey, (Arc<Notify>, usize)>>,
    up: AtomicBool,
    notifications: AtomicU64,
    /// The listener's connection while it is subscribed, with its generation (bumped
    /// at every connection): waiters hold their presence locks on it.
    session: Mutex<Option<(Arc<Client>, u64)>>,
    generation: AtomicU64,
}

impl std::fmt::Debug for Waiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiters")
            .field("up", &self.is_up())
            .field("notifications", &self.notifications())
            .finish_non_exhaustive()
    }
}

/// The statement that announces a waiter: a shared advisory lock, held by the
/// listener's session, on a 64-bit hash of the waiter's lock name (see
/// [`presence_name`]). A settle, release or purge tries the exclusive lock on the same
/// hash after changing the row, and notifies when it cannot take it. Non-blocking: it
/// fails while a settle holds the exclusive lock (the waiter then polls).
const HOLD: &str = "SELECT pg_try_advisory_lock_shared(hashtextextended($1::text, 0))";
const UNHOLD: &str = "SELECT pg_advisory_unlock_shared(hashtextextended($1::text, 0))";

/// The name whose hash is the presence lock of a record's waiters: the channel, the
/// scope's byte length, the scope and the key (the SQL side builds the same string).
pub(super) fn presence_name(channel: &str, id: &RecordKey) -> String {
    format!("{channel}/{}:{}{}", id.scope.len(), id.scope, id.key)
}

/// A waiter's presence lock on the listener's session; released when dropped.
pub(super) struct Presence {
    session: Option<(Arc<Client>, u64)>,
    name: String,
}

impl Presence {
    /// Whether the lock is held on the listener's current session.
    pub fn is_held(&self, waiters: &Waiters) -> bool {
        matches!(&self.session, Some((_, g)) if *g == waiters.generation.load(Ordering::Acquire) && waiters.is_up())
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        let Some((client, _)) = self.session.take() else {
            return;
        };
        let name = std::mem::take(&mut self.name);
        // A closed session has released its locks already.
        if client.is_closed() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = client.query(UNHOLD, &[&name]).await;
            });
        }
    }
}

/// Keeps a waiter registered until dropped.
pub(super) struct Registration<'a> {
    waiters: &'a Waiters,
    id: RecordKey,
    pub notify: Arc<Notify>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut map = self.waiters.map.lock();
        if let Some((_, count)) = map.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.id);
            }
        }
    }
}

impl Waiters {
    /// Registers interest in `id`.
    pub fn register(&self, id: &RecordKey) -> Registration<'_> {
        let mut map = self.map.lock();
        let entry = map
            .entry(id.clone())
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        Registration {
            waiters: self,
            id: id.clone(),
            notify: entry.0.clone(),
        }
    }

    /// Announces a waiter on `name` (see [`presence_name`]) on the listener's
    /// session. The returned presence may not be held (no session, or a settle of the
    /// record is committing right now): check [`Presence::is_held`].
    pub async fn hold(&self, name: String) -> Presence {
        let session = self.session.lock().clone();
        let Some((client, generation)) = session else {
            return Presence {
                session: None,
                name,
            };
        };
        match client.query_one(HOLD, &[&name]).await {
            Ok(row) if row.try_get::<_, bool>(0).unwrap_or(false) => Presence {
                session: Some((client, generation)),
                name,
            },
            _ => Presence {
                session: None,
                name,
            },
        }
    }

    /// Whether the listener connection is subscribed right now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Notifications received so far (diagnostics and tests).
    pub fn notifications(&self) -> u64 {
        self.notifications.load(Ordering::Relaxed)
    }

    fn wake_all(&self) {
        for (notify, _) in self.map.lock().values() {
            notify.notify_waiters();
        }
    }

    fn on_payload(&self, payload: &str) {
        self.notifications.fetch_add(1, Ordering::Relaxed);
        match parse_payload(payload) {
            Some(id) => {
                if let Some((notify, _)) = self.map.lock().get(&id) {
                    notify.notify_waiters();
                }
            }
            None => self.wake_all(),
        }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        // Either way every waiter re-checks: after a reconnect because notifications
        // may have been lost, after a disconnect to switch to polling.
        self.wake_all();
    }
}

/// Parses `<chars in scope>:<scope><key>`.
fn parse_payload(payload: &str) -> Option<RecordKey> {
    let (n, rest) = payload.split_once(':')?;
    let n: usize = n.parse().ok()?;
    let split = match rest.char_indices().nth(n) {
        Some((i, _)) => i,
        None if rest.chars().count() == n => rest.len(),
        None => return None,
    };
    Some(RecordKey::new(&rest[..split], &rest[split..]))
}

/// Runs the listener until the task is aborted.
pub(super) async fn run(config: tokio_postgres::Config, channel: String, waiters: Arc<Waiters>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let w = waiters.clone();
                // Drives the connection and forwards notifications until it closes.
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(msg) = messages.next().await {
                        match msg {
                            Ok(AsyncMessage::Notification(n)) => w.on_payload(n.payload()),
                            Ok(_) => {}
                            Err(e) => {
                                tracing::debug!(error = %e, "idemp postgres listener connection closed");
                                break;
                            }
                        }
                    }
                });
                let client = Arc::new(client);
                match client.batch_execute(&format!("LISTEN \"{channel}\"")).await {
                    Ok(()) => {
                        backoff = Duration::from_millis(50);
                        let generation = waiters.generation.fetch_add(1, Ordering::AcqRel) + 1;
                        *waiters.session.lock() = Some((client.clone(), generation));
                        waiters.set_up(true);
                        let _ = driver.await;
                        *waiters.session.lock() = None;
                        waiters.set_up(false);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "idemp postgres listener: LISTEN failed");
                        driver.abort();
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "idemp postgres listener cannot connect");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        let cases = [
            ("", "k"),
            ("scope", "key"),
            ("é:ü", ":x"),
            ("s", ""),
            ("日本", "語"),
        ];
        for (scope, key) in cases {
            let payload = format!("{}:{scope}{key}", scope.chars().count());
            assert_eq!(
                parse_payload(&payload),
                Some(RecordKey::new(scope, key)),
                "{payload}"
            );
        }
        assert_eq!(parse_payload("*"), None);
        assert_eq!(parse_payload("9:ab"), None);
    }

    #[tokio::test]
    async fn registrations_are_counted() {
        let w = Waiters::default();
        let id = RecordKey::new("s", "k");
        let a = w.register(&id);
        let b = w.register(&id);
        assert!(Arc::ptr_eq(&a.notify, &b.notify));
        drop(a);
        assert_eq!(w.map.lock().get(&id).map(|e| e.1), Some(1));
        drop(b);
        assert!(w.map.lock().is_empty());
    }
}
