//! The low-level API: [`Guard::begin`](super::Guard::begin) → [`Begin`], and the
//! owned [`Lease`] ticket, for callers that cannot wrap their work in a closure (an
//! HTTP layer, a queue consumer, a port of `IdempotencyStore`-style APIs:
//! `is_processed` / `mark_in_progress` / `mark_complete` / `mark_failed` /
//! `get_result`).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::clock::Millis;
use crate::store::{Codec, Outcome, Record, RecordKey, State, StoreError, Token};

use super::codec::{self, CodecError};
use super::error::{GuardError, StoredFailure};
use super::heartbeat::{self, LeaseSignal};
use super::options::OnInterrupt;
use super::{Inner, RunInfo};

/// What [`Guard::begin`](super::Guard::begin) found.
#[derive(Debug)]
#[must_use]
pub enum Begin {
    /// This caller owns the key: do the work, then settle the lease.
    Owner(Lease),
    /// The key completed earlier (or was completed by the reconcile function, or
    /// while this call waited): replay it.
    Completed(Replay),
    /// The key failed earlier and failures are sticky.
    Failed(StoredFailure),
    /// Another execution holds the key (under `Replay`, or when `Wait` timed out).
    InProgress {
        /// When the current lease passes (a hint).
        retry_after: Duration,
        /// The record.
        record: Record,
    },
    /// The previous owner's lease passed mid-run (under `OnAmbiguous::Surface`).
    Ambiguous(Record),
}

/// A stored result to replay.
#[derive(Clone, Debug)]
pub struct Replay {
    pub(crate) outcome: Outcome,
    pub(crate) max_outcome_bytes: usize,
    pub(crate) info: RunInfo,
}

impl Replay {
    /// The stored outcome as the store holds it (possibly compressed).
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// The uncompressed bytes (for `Raw` outcomes: exactly what was completed).
    pub fn bytes(&self) -> Result<Vec<u8>, CodecError> {
        codec::plain_bytes(&self.outcome, self.max_outcome_bytes).map(|b| b.into_owned())
    }

    /// Decodes the value with the codec it was stored with.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, CodecError> {
        codec::decode(&self.outcome, self.max_outcome_bytes)
    }

    /// How this replay came about (replayed, reconciled, after waiting…).
    pub fn info(&self) -> &RunInfo {
        &self.info
    }
}

/// Ownership of a key, without the heartbeat: the part shared by the closure API and
/// [`Lease`]. Settles the key on drop when still armed (cancellation).
#[derive(Debug)]
pub(crate) struct LeaseCore {
    pub(crate) inner: Arc<Inner>,
    pub(crate) id: RecordKey,
    pub(crate) token: Token,
    pub(crate) attempt: u32,
    pub(crate) takeover: Option<Token>,
    pub(crate) lease_until: Millis,
    /// What to do if dropped while armed.
    pub(crate) on_drop: OnInterrupt,
    /// Where to spawn the release on drop (captured for leases that may be dropped
    /// outside the runtime); `None` → the current runtime, if any.
    pub(crate) handle: Option<Handle>,
    pub(crate) armed: bool,
}

impl LeaseCore {
    /// Completes the key with `outcome`. `Fenced` becomes [`GuardError::LeaseLost`].
    pub(crate) async fn complete(&mut self, outcome: Outcome) -> Result<(), GuardError> {
        // Disarm first: once the work succeeded, the key must never be released,
        // even if this future is dropped mid-complete (it then expires as ambiguous).
        self.armed = false;
        let res = self.settle_once(&outcome, true).await;
        let res = self.resolve_settle(res, &outcome, true).await;
        self.map_fenced(res)
    }

    /// Stores a sticky failure.
    pub(crate) async fn fail(&mut self, outcome: Outcome) -> Result<(), GuardError> {
        self.armed = false;
        let res = self.settle_once(&outcome, false).await;
        let res = self.resolve_settle(res, &outcome, false).await;
        self.map_fenced(res)
    }

    async fn settle_once(&self, outcome: &Outcome, completed: bool) -> Result<(), StoreError> {
        let store = self.inner.backend();
        let ttl = self.inner.opts.ttl;
        if completed {
            store
                .complete(&self.id, self.token, outcome.clone(), ttl)
                .await
        } else {
            store.fail(&self.id, self.token, outcome.clone(), ttl).await
        }
    }

    /// Resolves a settle whose outcome is unknown ([`StoreError::outcome_unknown`]:
    /// the store may have applied it before the reply was lost) by reading the record:
    /// settled by this token with this outcome is success (a retry must not report
    /// `Fenced` on the caller's own write), still in progress under this token means
    /// it was not applied and the settle is tried again. Up to 4 rounds with backoff;
    /// then the last error is returned (the outcome stays unknown).
    async fn resolve_settle(
        &self,
        res: Result<(), StoreError>,
        outcome: &Outcome,
        completed: bool,
    ) -> Result<(), StoreError> {
        let mut last = match res {
            Err(e) if e.outcome_unknown() => e,
            other => return other,
        };
        let store = self.inner.backend();
        let mut delay = Duration::from_millis(20);
        for _ in 0..4 {
            tracing::debug!(id = %self.id, token = self.token, error = %last, "settle outcome unknown: reading the record");
            match store.get(&self.id).await {
                Ok(Some(rec)) if rec.token == self.token => match &rec.state {
                    State::Completed(o) if completed && o == outcome => return Ok(()),
                    State::Failed(o) if !completed && o == outcome => return Ok(()),
                    State::InProgress { .. } => match self.settle_once(outcome, completed).await {
                        Ok(()) => return Ok(()),
                        // Settled by this token meanwhile (the first attempt landed
                        // late): the next read tells with which outcome.
                        Err(StoreError::Fenced { current, .. }) if current == Some(self.token) => {}
                        Err(e) if e.outcome_unknown() => last = e,
                        Err(e) => return Err(e),
                    },
                    // Settled by this token the other way: not this settle's doing.
                    _ => {
                        return Err(StoreError::Fenced {
                            id: self.id.clone(),
                            token: self.token,
                            current: Some(rec.token),
                        });
                    }
                },
                // Gone or owned by another token: this settle did not land.
                Ok(rec) => {
                    return Err(StoreError::Fenced {
                        id: self.id.clone(),
                        token: self.token,
                        current: rec.map(|r| r.token),
                    });
                }
                Err(e) if e.outcome_unknown() => last = e,
                Err(e) => return Err(e),
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        Err(last)
    }

    /// Deletes the in-progress record so the key may run again.
    pub(crate) async fn release(&mut self) -> Result<(), GuardError> {
        self.armed = false;
        let res = self.inner.backend().release(&self.id, self.token).await;
        self.map_fenced(res)
    }

    /// Leaves the record in progress until its lease passes.
    pub(crate) fn abandon(&mut self) {
        self.armed = false;
    }

    /// Applies an interrupt policy (panic).
    pub(crate) async fn interrupt(&mut self, policy: OnInterrupt) {
        match policy {
            OnInterrupt::Release => {
                if let Err(e) = self.release().await {
                    tracing::warn!(id = %self.id, token = self.token, error = %e, "release after interruption failed");
                }
            }
            OnInterrupt::Keep => self.abandon(),
        }
    }

    fn map_fenced(&self, res: Result<(), StoreError>) -> Result<(), GuardError> {
        match res {
            Ok(()) => Ok(()),
            Err(StoreError::Fenced { current, .. }) => {
                tracing::warn!(id = %self.id, token = self.token, ?current, "fenced: result refused by the store");
                Err(GuardError::LeaseLost {
                    id: self.id.clone(),
                    token: self.token,
                })
            }
            Err(e) => Err(GuardError::Store(e)),
        }
    }
}

impl Drop for LeaseCore {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        match self.on_drop {
            OnInterrupt::Keep => {
                tracing::debug!(id = %self.id, token = self.token, "dropped mid-run: lease kept until it passes");
            }
            OnInterrupt::Release => {
                let handle = self.handle.clone().or_else(|| Handle::try_current().ok());
                let Some(handle) = handle else {
                    tracing::warn!(id = %self.id, token = self.token, "dropped outside a tokio runtime: the lease will expire instead of being released");
                    return;
                };
                tracing::debug!(id = %self.id, token = self.token, "dropped mid-run: releasing");
                let store = self.inner.store.clone();
                let id = std::mem::replace(&mut self.id, RecordKey::new("", ""));
                let token = self.token;
                handle.spawn(async move {
                    if let Err(e) = (*store).release(&id, token).await {
                        tracing::debug!(%id, token, error = %e, "release after cancellation failed");
                    }
                });
            }
        }
    }
}

/// An owned claim on a key: holds the fencing token and keeps the lease alive with a
/// background heartbeat until it is settled.
///
/// Settle it with [`complete`](Self::complete) (typed, through the guard's codec),
/// [`complete_raw`](Self::complete_raw) (opaque bytes, e.g. an HTTP response),
/// [`fail`](Self::fail), [`release`](Self::release) or [`abandon`](Self::abandon).
/// Dropping it unsettled applies the guard's `on_cancel` policy (release by default).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use idemp::guard::{Begin, Guard};
/// # let store = idemp::store::MemoryStore::new();
/// let guard = Guard::builder(store).scope("email").build();
/// match guard.begin("welcome-42", None).await? {
///     Begin::Owner(lease) => {
///         // send the email…
///         lease.complete(&"sent").await?;
///     }
///     Begin::Completed(replay) => println!("already done: {}", replay.decode::<String>()?),
///     other => println!("not now: {other:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Lease {
    pub(crate) core: LeaseCore,
    signal: LeaseSignal,
    heartbeat: Option<JoinHandle<()>>,
}

impl Lease {
    /// Wraps an acquired core and starts its heartbeat on the current tokio runtime
    /// (without one, the lease is not renewed and simply passes).
    pub(crate) fn start(mut core: LeaseCore) -> Self {
        let signal = LeaseSignal::new();
        let Ok(handle) = Handle::try_current() else {
            tracing::warn!(id = %core.id, "no tokio runtime: the lease will not be renewed");
            return Self {
                core,
                signal,
                heartbeat: None,
            };
        };
        let store = core.inner.store.clone();
        let id = core.id.clone();
        let token = core.token;
        let lease = core.inner.opts.lease;
        let sig = signal.clone();
        let heartbeat = handle.spawn(async move {
            let _ = heartbeat::run(&*store, &id, token, lease, &sig).await;
        });
        core.handle = Some(handle);
        Self {
            core,
            signal,
            heartbeat: Some(heartbeat),
        }
    }

    /// Wraps an acquired core whose heartbeat the caller drives: no task is spawned;
    /// the caller polls [`heartbeat`](Self::heartbeat) next to its work until it
    /// settles the lease (a spawned heartbeat cost a task, its scheduling and its
    /// abort on every claim).
    pub(crate) fn driven(mut core: LeaseCore) -> Self {
        core.handle = Handle::try_current().ok();
        Self {
            core,
            signal: LeaseSignal::new(),
            heartbeat: None,
        }
    }

    /// The heartbeat of a [`driven`](Self::driven) lease: renews it every `lease / 3`
    /// and fires its [`signal`](Self::signal) when it is lost, as the spawned one
    /// does. It never completes; drop it when the lease is settled. Nothing is
    /// renewed until it has been polled for a third of the lease, and its first poll
    /// arms one timer.
    #[cfg(feature = "http")]
    pub(crate) fn heartbeat(
        &self,
    ) -> impl std::future::Future<Output = std::convert::Infallible> + Send + 'static {
        let store = self.core.inner.store.clone();
        let id = self.core.id.clone();
        let token = self.core.token;
        let lease = self.core.inner.opts.lease;
        let signal = self.signal.clone();
        async move { heartbeat::run(&*store, &id, token, lease, &signal).await }
    }

    /// The record this lease owns.
    pub fn id(&self) -> &RecordKey {
        &self.core.id
    }

    /// The fencing token.
    pub fn token(&self) -> Token {
        self.core.token
    }

    /// 1 for a fresh claim, more after takeovers.
    pub fn attempt(&self) -> u32 {
        self.core.attempt
    }

    /// The token of the previous owner when this lease took an expired one over.
    pub fn takeover(&self) -> Option<Token> {
        self.core.takeover
    }

    /// When the lease passed at acquisition (the heartbeat extends it).
    pub fn lease_until(&self) -> Millis {
        self.core.lease_until
    }

    /// A signal that fires if the lease is lost while the work runs.
    pub fn signal(&self) -> LeaseSignal {
        self.signal.clone()
    }

    /// Whether the lease is known to be lost.
    pub fn is_lost(&self) -> bool {
        self.signal.is_lost()
    }

    fn stop_heartbeat(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }

    /// Completes the key with `value`, encoded with the guard's codec (and compressed
    /// above its threshold).
    pub async fn complete<T: Serialize + ?Sized>(mut self, value: &T) -> Result<(), GuardError> {
        self.stop_heartbeat();
        let outcome = match self.core.inner.opts.encode.encode(value) {
            Ok(o) => o,
            Err(e) => {
                // The effect happened but cannot be stored as asked: do not release.
                self.core.abandon();
                return Err(e.into());
            }
        };
        self.core.complete(outcome).await
    }

    /// Completes the key with opaque bytes (`Codec::Raw`), compressed above the
    /// guard's threshold. Replays get them back with [`Replay::bytes`].
    pub async fn complete_raw(mut self, bytes: Vec<u8>) -> Result<(), GuardError> {
        self.stop_heartbeat();
        let outcome = match self.core.inner.opts.encode.wrap(Codec::Raw, bytes) {
            Ok(o) => o,
            Err(e) => {
                self.core.abandon();
                return Err(e.into());
            }
        };
        self.core.complete(outcome).await
    }

    /// Completes the key with a ready outcome.
    pub async fn complete_outcome(mut self, outcome: Outcome) -> Result<(), GuardError> {
        self.stop_heartbeat();
        self.core.complete(outcome).await
    }

    /// Stores a sticky failure, replayed as [`GuardError::Failed`] /
    /// [`Begin::Failed`] (whatever the guard's `on_failure` policy: calling `fail`
    /// is the manual API's way of choosing "sticky"; call [`release`](Self::release)
    /// to let the key run again instead).
    pub async fn fail(mut self, failure: &StoredFailure) -> Result<(), GuardError> {
        self.stop_heartbeat();
        let outcome = match serde_json::to_vec(failure) {
            Ok(bytes) => Outcome::new(Codec::Json, bytes),
            Err(e) => {
                self.core.abandon();
                return Err(GuardError::Codec(CodecError::Encode {
                    codec: Codec::Json,
                    message: e.to_string(),
                }));
            }
        };
        self.core.fail(outcome).await
    }

    /// Deletes the record so the key may run again.
    pub async fn release(mut self) -> Result<(), GuardError> {
        self.stop_heartbeat();
        self.core.release().await
    }

    /// Stops renewing and leaves the record in progress: it becomes ambiguous when
    /// the lease passes (use when the effect may have half-happened).
    pub fn abandon(mut self) {
        self.stop_heartbeat();
        self.core.abandon();
    }

    /// Makes the record **ambiguous now**: stops renewing and moves the lease to the
    /// present (`Store::renew` with a zero lease), so the next call sees what it would
    /// see after a crash, without waiting for the lease to pass: the guard's
    /// [`OnAmbiguous`](super::OnAmbiguous) policy applies (`Surface` answers
    /// [`Begin::Ambiguous`] / [`GuardError::Ambiguous`], `Retake` runs again,
    /// `Verify` asks the reconcile function) and [`Guard::resolve`](super::Guard::resolve)
    /// settles it. Use it when the effect may have happened but its result is lost
    /// (a timeout or a reset after the request was sent).
    ///
    /// The key is never released: if the store cannot be reached, the error is
    /// returned and the record becomes ambiguous when its current lease passes.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use idemp::guard::{Begin, Guard, OnAmbiguous};
    /// let guard = Guard::builder(idemp::store::MemoryStore::new())
    ///     .on_ambiguous(OnAmbiguous::Surface)
    ///     .build();
    /// let Begin::Owner(lease) = guard.begin("transfer-9", None).await? else { panic!() };
    /// // The request was sent; the answer never came back.
    /// lease.mark_ambiguous().await?;
    /// assert!(matches!(guard.begin("transfer-9", None).await?, Begin::Ambiguous(_)));
    /// # Ok(()) }
    /// ```
    pub async fn mark_ambiguous(mut self) -> Result<(), GuardError> {
        self.stop_heartbeat();
        // Disarmed first: from here on the key is never released, whatever happens.
        self.core.abandon();
        let res = self
            .core
            .inner
            .backend()
            .renew(&self.core.id, self.core.token, Duration::ZERO)
            .await
            .map(|_| ());
        self.core.map_fenced(res)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop_heartbeat();
        // `core` applies the on_cancel policy in its own Drop.
    }
}

/// How [`Guard::resolve`](super::Guard::resolve) settles an ambiguous key.
#[derive(Clone, Debug)]
pub enum Resolution<T> {
    /// The effect happened, with this result: complete the key with it.
    Completed(T),
    /// The effect did not happen (or may be repeated): delete the record so the
    /// next call runs.
    Retake,
    /// Store this failure (sticky).
    Failed(StoredFailure),
}

/// What [`Guard::resolve`](super::Guard::resolve) did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// The ambiguous record was settled as asked.
    Applied,
    /// The record was not ambiguous (any more): someone settled it, it is live, or
    /// it is gone. Carries its state name (`"absent"` when gone).
    NotAmbiguous(&'static str),
}
