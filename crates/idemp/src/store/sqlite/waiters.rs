//! In-process wake-ups for `wait`: one [`Notify`] per watched record.
//!
//! The writer thread wakes the waiters of every record it settled, released or
//! purged, right after the commit. Settles made by other processes (or through
//! `complete_in_tx` on a user's connection) are not seen here: `wait` also polls.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::store::RecordKey;

/// The watched records and their wake-up handles.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    map: Mutex<HashMap<RecordKey, Weak<Notify>>>,
}

impl Waiters {
    /// Whether nobody waits (the writer then skips the lookup).
    pub(crate) fn is_empty(&self) -> bool {
        self.map.lock().is_empty()
    }

    /// The wake-up handle of `id`, shared by all its waiters.
    pub(crate) fn register(&self, id: &RecordKey) -> Arc<Notify> {
        let mut map = self.map.lock();
        if let Some(n) = map.get(id).and_then(Weak::upgrade) {
            return n;
        }
        let n = Arc::new(Notify::new());
        map.insert(id.clone(), Arc::downgrade(&n));
        n
    }

    /// Drops a waiter's handle, forgetting the record when it was the last one.
    pub(crate) fn unregister(&self, id: &RecordKey, handle: Arc<Notify>) {
        let mut map = self.map.lock();
        drop(handle);
        if map.get(id).is_some_and(|w| w.strong_count() == 0) {
            map.remove(id);
        }
    }

    /// Wakes the waiters of these records.
    pub(crate) fn notify(&self, ids: &[RecordKey]) {
        let map = self.map.lock();
        for id in ids {
            if let Some(n) = map.get(id).and_then(Weak::upgrade) {
                n.notify_waiters();
            }
        }
    }

    /// Wakes every waiter (after a sweep removed records).
    pub(crate) fn notify_all(&self) {
        let map = self.map.lock();
        for n in map.values().filter_map(Weak::upgrade) {
            n.notify_waiters();
        }
    }
}

/// Unregisters a waiter when `wait` returns or is cancelled.
pub(crate) struct WaitGuard<'a> {
    pub(crate) waiters: &'a Waiters,
    pub(crate) id: &'a RecordKey,
    pub(crate) handle: Option<Arc<Notify>>,
}

impl WaitGuard<'_> {
    /// The record's wake-up handle.
    pub(crate) fn notify(&self) -> &Notify {
        match &self.handle {
            Some(h) => h,
            None => unreachable!("the handle is only taken on drop"),
        }
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            self.waiters.unregister(self.id, h);
        }
    }
}
