//! Time sources.
//!
//! Stores read "now" through a [`Clock`] so tests can move time by hand
//! ([`ManualClock`]) instead of sleeping through leases and TTLs. Times are
//! milliseconds since the UNIX epoch ([`Millis`]), the unit every store persists.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the UNIX epoch.
pub type Millis = u64;

/// A source of wall-clock time in milliseconds.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Milliseconds since the UNIX epoch.
    fn now_ms(&self) -> Millis;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to; clones share the same time.
///
/// ```
/// use idemp::clock::{Clock, ManualClock};
/// use std::time::Duration;
/// let clock = ManualClock::new(1_000);
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(clock.now_ms(), 3_000);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock that reads `start_ms`.
    pub fn new(start_ms: Millis) -> Self {
        Self(Arc::new(AtomicU64::new(start_ms)))
    }
    /// A clock that starts at the current system time.
    pub fn starting_now() -> Self {
        Self::new(SystemClock.now_ms())
    }
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
    /// Sets the clock.
    pub fn set(&self, ms: Millis) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

/// A shared, dynamically chosen clock.
pub type SharedClock = Arc<dyn Clock>;

/// The default clock: [`SystemClock`].
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// Converts a duration to whole milliseconds, saturating.
pub fn duration_ms(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
