//! Guard policies and the builder.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::clock::{self, SharedClock};
use crate::store::{DynStore, Outcome, RecordKey, StoreAdmin};

use super::codec::{CodecError, EncodeSettings, ValueCodec};
use super::{Guard, Inner};

/// What a call does when the key already has a record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnDuplicate {
    /// Return the stored result (default). A duplicate of a live in-progress
    /// execution gets [`GuardError::InProgress`](super::GuardError::InProgress).
    #[default]
    Replay,
    /// Return [`GuardError::Rejected`](super::GuardError::Rejected) for any duplicate.
    Reject,
    /// Coalesce: wait (woken by the store, not busy-polling in-process) up to the
    /// given time for the running execution to settle, then replay it; or time out
    /// with [`GuardError::InProgress`](super::GuardError::InProgress). If the running
    /// execution fails and releases the key, the waiter claims it and runs.
    Wait(Duration),
}

/// What happens to the key when the operation returns an error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnFailure {
    /// Delete the record so the key may run again (default).
    #[default]
    Release,
    /// Store the failure as data ([`StoredFailure`](super::StoredFailure), JSON) and
    /// replay it to later calls as [`GuardError::Failed`](super::GuardError::Failed).
    Sticky,
}

/// What happens to the lease when the work panics or its future is dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnInterrupt {
    /// Release the key at once so it may run again (default).
    #[default]
    Release,
    /// Leave the record in progress until its lease passes; it is then ambiguous and
    /// handled by [`OnAmbiguous`]. Choose this when a half-done effect must not be
    /// retried blindly.
    Keep,
}

/// The reconcile function of [`OnAmbiguous::Verify`], type-erased: it gets the key and
/// the guard's encoding, and answers with the encoded outcome when the effect happened.
pub(crate) type ReconcileFn = Arc<
    dyn Fn(RecordKey, EncodeSettings) -> BoxFuture<'static, Result<Option<Outcome>, String>>
        + Send
        + Sync,
>;

/// What a call does with an ambiguous record: in progress, but its owner's lease
/// passed (it crashed or stalled, before or after its side effect).
#[derive(Clone, Default)]
pub enum OnAmbiguous {
    /// Take the key over and run again (at-least-once for that key). Default.
    #[default]
    Retake,
    /// Take the key over, then ask the reconcile function whether the effect
    /// happened: `Some(value)` completes the key with it (nothing runs), `None`
    /// runs the operation. Build with [`OnAmbiguous::verify`].
    Verify(Reconciler),
    /// Return [`GuardError::Ambiguous`](super::GuardError::Ambiguous) and let the
    /// caller settle it with [`Guard::resolve`](super::Guard::resolve).
    Surface,
}

/// A reconcile function (see [`OnAmbiguous::verify`]).
#[derive(Clone)]
pub struct Reconciler(pub(crate) ReconcileFn);

impl fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reconciler(..)")
    }
}

impl fmt::Debug for OnAmbiguous {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OnAmbiguous::Retake => f.write_str("Retake"),
            OnAmbiguous::Verify(_) => f.write_str("Verify(..)"),
            OnAmbiguous::Surface => f.write_str("Surface"),
        }
    }
}

impl OnAmbiguous {
    /// `Verify` with an async function asked "did the effect happen for this key?".
    ///
    /// It runs while this call holds the key (after a takeover), so two reconciles of
    /// the same key never run at once. `Ok(Some(v))` completes the key with `v`;
    /// `Ok(None)` runs the operation; `Err(e)` leaves the key ambiguous and returns
    /// [`GuardError::Reconcile`](super::GuardError::Reconcile).
    ///
    /// ```
    /// use idemp::guard::OnAmbiguous;
    /// let policy = OnAmbiguous::verify(|key| async move {
    ///     // ask the payment provider whether a charge with this key exists
    ///     let found: Option<u64> = if key.key == "order-1" { Some(42) } else { None };
    ///     Ok::<_, std::io::Error>(found)
    /// });
    /// # let _ = policy;
    /// ```
    pub fn verify<F, Fut, T, E>(reconcile: F) -> Self
    where
        F: Fn(RecordKey) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
        T: Serialize + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let f: ReconcileFn = Arc::new(move |key: RecordKey, enc: EncodeSettings| {
            let fut = reconcile(key);
            Box::pin(async move {
                match fut.await {
                    Ok(Some(value)) => enc
                        .encode(&value)
                        .map(Some)
                        .map_err(|e: CodecError| e.to_string()),
                    Ok(None) => Ok(None),
                    Err(e) => Err(e.to_string()),
                }
            })
        });
        OnAmbiguous::Verify(Reconciler(f))
    }
}

/// The settings of a guard.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub ttl: Duration,
    pub lease: Duration,
    pub on_duplicate: OnDuplicate,
    pub on_failure: OnFailure,
    pub on_ambiguous: OnAmbiguous,
    pub on_panic: OnInterrupt,
    pub on_cancel: OnInterrupt,
    pub encode: EncodeSettings,
    pub clock: SharedClock,
}

/// Builds a [`Guard`] (see [`Guard::builder`]).
#[derive(Debug)]
#[must_use = "call .build() to get the guard"]
pub struct GuardBuilder {
    store: DynStore,
    scope: String,
    opts: Options,
}

impl GuardBuilder {
    pub(crate) fn new(store: DynStore) -> Self {
        Self {
            store,
            scope: String::new(),
            opts: Options {
                ttl: Duration::from_secs(24 * 3600),
                lease: Duration::from_secs(60),
                on_duplicate: OnDuplicate::default(),
                on_failure: OnFailure::default(),
                on_ambiguous: OnAmbiguous::default(),
                on_panic: OnInterrupt::default(),
                on_cancel: OnInterrupt::default(),
                encode: EncodeSettings {
                    codec: ValueCodec::default(),
                    compress_above: None,
                    max_outcome_bytes: 64 << 20,
                },
                clock: clock::system(),
            },
        }
    }

    /// The operation's scope (function name, route…): keys of different scopes are
    /// different records. Default: empty.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = scope.into();
        self
    }

    /// Retention of settled records (default 24 h).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.opts.ttl = ttl;
        self
    }

    /// The in-progress window (default 60 s), renewed every `lease / 3` while the work
    /// runs. After it passes without renewal the record is ambiguous.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.opts.lease = lease;
        self
    }

    /// Duplicate policy (default [`OnDuplicate::Replay`]).
    pub fn on_duplicate(mut self, policy: OnDuplicate) -> Self {
        self.opts.on_duplicate = policy;
        self
    }

    /// Failure policy (default [`OnFailure::Release`]).
    pub fn on_failure(mut self, policy: OnFailure) -> Self {
        self.opts.on_failure = policy;
        self
    }

    /// Ambiguity policy (default [`OnAmbiguous::Retake`]).
    pub fn on_ambiguous(mut self, policy: OnAmbiguous) -> Self {
        self.opts.on_ambiguous = policy;
        self
    }

    /// What a panic in the work does to the lease (default release). The panic is
    /// always propagated and never recorded as success.
    pub fn on_panic(mut self, policy: OnInterrupt) -> Self {
        self.opts.on_panic = policy;
        self
    }

    /// What dropping the call's future mid-run does to the lease (default release,
    /// spawned on the current tokio runtime). Never recorded as success.
    pub fn on_cancel(mut self, policy: OnInterrupt) -> Self {
        self.opts.on_cancel = policy;
        self
    }

    /// The serde format of stored results (default JSON).
    pub fn codec(mut self, codec: ValueCodec) -> Self {
        self.opts.encode.codec = codec;
        self
    }

    /// Compress encoded results longer than `bytes` with LZ4.
    #[cfg(feature = "compression")]
    pub fn compress_above(mut self, bytes: usize) -> Self {
        self.opts.encode.compress_above = Some(bytes);
        self
    }

    /// Refuse to store or read outcomes larger than `bytes` (default 64 MiB).
    pub fn max_outcome_bytes(mut self, bytes: usize) -> Self {
        self.opts.encode.max_outcome_bytes = bytes;
        self
    }

    /// The clock used to judge whether an in-progress record's lease has passed.
    /// Give the store's clock in tests (`ManualClock`). Default: the system clock.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.opts.clock = clock;
        self
    }

    /// Builds the guard.
    pub fn build(self) -> Guard {
        Guard {
            inner: Arc::new(Inner {
                store: self.store,
                scope: self.scope,
                opts: self.opts,
            }),
        }
    }
}

/// Turns any store (or an already shared `Arc<dyn Store>`) into a [`DynStore`]
/// without wrapping a shared one twice.
pub(crate) fn into_dyn_store<S: StoreAdmin>(store: S) -> DynStore {
    let boxed: Box<dyn std::any::Any> = Box::new(store);
    match boxed.downcast::<DynStore>() {
        Ok(shared) => *shared,
        Err(other) => match other.downcast::<S>() {
            Ok(s) => Arc::new(*s),
            Err(_) => unreachable!("a Box<S> downcasts to S"),
        },
    }
}
