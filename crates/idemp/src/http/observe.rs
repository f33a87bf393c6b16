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
    /// The response's status is not stored; the claim was released.
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
        }
    }

    /// Every event, for pre-registering metrics.
    pub const ALL: [Event; 14] = [
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
