//! Hooks for metrics: what the middleware decided, and how long the store took.
//!
//! The middleware calls an [`Observer`] on every decision; `idemp serve` implements
//! it with Prometheus counters. The default, [`NoopObserver`], does nothing.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use idemp::http::{Event, Observer};
//! #[derive(Default)]
//! struct Replays(AtomicU64);
//! impl Observer for Replays {
//!     fn event(&self, e: Event) {
//!         if e == Event::Replayed {
//!             self.0.fetch_add(1, Ordering::Relaxed);
//!         }
//!     }
//! }
//! ```

use std::time::Duration;

/// A decision of the middleware.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Event {
    /// A new key was claimed; the handler runs.
    Claimed,
    /// An expired lease was taken over (the earlier attempt is ambiguous); the
    /// handler runs again. Also counted as [`Event::Claimed`].
    TakenOver,
    /// A stored response was replayed.
    Replayed,
    /// A duplicate waited for the first request and it was still running: 409.
    Conflict,
    /// The key was reused with a different request: 422.
    Mismatch,
    /// The handler finished but its claim had been taken over meanwhile; its
    /// response was not stored.
    Fenced,
    /// The response was stored.
    Stored,
    /// The claim was released (the status is not stored, the request never left,
    /// the handler failed, or an ambiguous outcome under `retake`).
    Released,
    /// The request was not guarded (method, or no key and none required).
    PassedThrough,
    /// The key was invalid (400).
    InvalidKey,
    /// The key was missing and required (400).
    MissingKey,
    /// The body exceeded the limit (413).
    BodyTooLarge,
    /// The store failed; the request was refused (503, fail closed).
    StoreUnavailable,
    /// The store failed; the request went through unguarded (fail open).
    FailedOpen,
    /// An execution's outcome was lost after the request may have reached the
    /// handler's side effect (a `MaybeSent` answer, a response body that broke
    /// mid-stream, a shutdown): the record was left ambiguous (`surface`) or
    /// released (`retake`).
    Ambiguous,
    /// A retry found an ambiguous record and was answered `outcome-ambiguous`.
    AmbiguousRefused,
    /// An execution's response was larger than the stored-response limit: it was
    /// streamed whole and the record settled as "executed, response not stored".
    NotStored,
    /// A retry found an "executed, response not stored" record and was answered
    /// `response-not-stored`.
    NotStoredRefused,
    /// A duplicate joined a response still streaming in this process.
    Joined,
    /// A duplicate that joined a live stream fell too far behind it and was cut off
    /// (its response ends truncated).
    JoinerCutOff,
    /// A guarded response broke mid-stream (the client saw a truncated response).
    Truncated,
    /// The client went away before the end of its response; the handler's response
    /// was still read to its end and recorded.
    ClientGone,
    /// Too many request bytes buffered at once: 503.
    Overloaded,
    /// The path has no normal form: 400.
    InvalidPath,
}

impl Event {
    /// A lowercase snake_case name, for metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Event::Claimed => "claimed",
            Event::TakenOver => "taken_over",
            Event::Replayed => "replayed",
            Event::Conflict => "conflict",
            Event::Mismatch => "mismatch",
            Event::Fenced => "fenced",
            Event::Stored => "stored",
            Event::Released => "released",
            Event::PassedThrough => "passed_through",
            Event::InvalidKey => "invalid_key",
            Event::MissingKey => "missing_key",
            Event::BodyTooLarge => "body_too_large",
            Event::StoreUnavailable => "store_unavailable",
            Event::FailedOpen => "failed_open",
            Event::Ambiguous => "ambiguous",
            Event::AmbiguousRefused => "ambiguous_refused",
            Event::NotStored => "not_stored",
            Event::NotStoredRefused => "not_stored_refused",
            Event::Joined => "joined",
            Event::JoinerCutOff => "joiner_cut_off",
            Event::Truncated => "truncated",
            Event::ClientGone => "client_gone",
            Event::Overloaded => "overloaded",
            Event::InvalidPath => "invalid_path",
        }
    }

    /// Every event, for pre-registering metrics.
    pub const ALL: [Event; 24] = [
        Event::Claimed,
        Event::TakenOver,
        Event::Replayed,
        Event::Conflict,
        Event::Mismatch,
        Event::Fenced,
        Event::Stored,
        Event::Released,
        Event::PassedThrough,
        Event::InvalidKey,
        Event::MissingKey,
        Event::BodyTooLarge,
        Event::StoreUnavailable,
        Event::FailedOpen,
        Event::Ambiguous,
        Event::AmbiguousRefused,
        Event::NotStored,
        Event::NotStoredRefused,
        Event::Joined,
        Event::JoinerCutOff,
        Event::Truncated,
        Event::ClientGone,
        Event::Overloaded,
        Event::InvalidPath,
    ];
}

/// A store operation, for latency metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreOp {
    /// `claim`
    Claim,
    /// `complete`
    Complete,
    /// `release`
    Release,
    /// `renew` (heartbeat)
    Renew,
    /// `wait`
    Wait,
}

impl StoreOp {
    /// A lowercase name, for metric labels.
    pub fn name(self) -> &'static str {
        match self {
            StoreOp::Claim => "claim",
            StoreOp::Complete => "complete",
            StoreOp::Release => "release",
            StoreOp::Renew => "renew",
            StoreOp::Wait => "wait",
        }
    }
}

/// Receives the middleware's decisions. Methods must be cheap and must not block.
pub trait Observer: Send + Sync + 'static {
    /// A decision was made.
    fn event(&self, event: Event) {
        let _ = event;
    }
    /// A store operation finished (successfully or not) after `elapsed`.
    fn store_latency(&self, op: StoreOp, elapsed: Duration, ok: bool) {
        let _ = (op, elapsed, ok);
    }
}

/// An observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl Observer for NoopObserver {}

/// A store that reports the latency of the calls the guard makes to the observer
/// (the layer runs on the guard, which talks to the store directly).
#[derive(Clone)]
pub(crate) struct ObservedStore {
    pub(crate) inner: crate::store::DynStore,
    pub(crate) observer: std::sync::Arc<dyn Observer>,
}

impl std::fmt::Debug for ObservedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl ObservedStore {
    async fn timed<T>(
        &self,
        op: StoreOp,
        fut: impl std::future::Future<Output = crate::store::StoreResult<T>>,
    ) -> crate::store::StoreResult<T> {
        let t0 = std::time::Instant::now();
        let res = fut.await;
        self.observer.store_latency(op, t0.elapsed(), res.is_ok());
        res
    }
}

#[async_trait::async_trait]
impl crate::store::Store for ObservedStore {
    async fn claim(
        &self,
        claim: &crate::store::Claim,
    ) -> crate::store::StoreResult<crate::store::ClaimOutcome> {
        self.timed(StoreOp::Claim, self.inner.claim(claim)).await
    }
    async fn complete(
        &self,
        id: &crate::store::RecordKey,
        token: crate::store::Token,
        outcome: crate::store::Outcome,
        ttl: Duration,
    ) -> crate::store::StoreResult<()> {
        self.timed(
            StoreOp::Complete,
            self.inner.complete(id, token, outcome, ttl),
        )
        .await
    }
    async fn fail(
        &self,
        id: &crate::store::RecordKey,
        token: crate::store::Token,
        outcome: crate::store::Outcome,
        ttl: Duration,
    ) -> crate::store::StoreResult<()> {
        self.timed(StoreOp::Complete, self.inner.fail(id, token, outcome, ttl))
            .await
    }
    async fn release(
        &self,
        id: &crate::store::RecordKey,
        token: crate::store::Token,
    ) -> crate::store::StoreResult<()> {
        self.timed(StoreOp::Release, self.inner.release(id, token))
            .await
    }
    async fn renew(
        &self,
        id: &crate::store::RecordKey,
        token: crate::store::Token,
        lease: Duration,
    ) -> crate::store::StoreResult<crate::clock::Millis> {
        self.timed(StoreOp::Renew, self.inner.renew(id, token, lease))
            .await
    }
    async fn get(
        &self,
        id: &crate::store::RecordKey,
    ) -> crate::store::StoreResult<Option<crate::store::Record>> {
        self.inner.get(id).await
    }
    async fn wait(
        &self,
        id: &crate::store::RecordKey,
        timeout: Duration,
    ) -> crate::store::StoreResult<Option<crate::store::Record>> {
        self.timed(StoreOp::Wait, self.inner.wait(id, timeout))
            .await
    }
}

#[async_trait::async_trait]
impl crate::store::StoreAdmin for ObservedStore {
    async fn list(
        &self,
        query: &crate::store::ListQuery,
    ) -> crate::store::StoreResult<crate::store::Page> {
        self.inner.list(query).await
    }
    async fn purge(&self, id: &crate::store::RecordKey) -> crate::store::StoreResult<bool> {
        self.inner.purge(id).await
    }
    async fn sweep(&self) -> crate::store::StoreResult<u64> {
        self.inner.sweep().await
    }
    async fn stats(&self) -> crate::store::StoreResult<crate::store::Stats> {
        self.inner.stats().await
    }
}
