//! Stores: where claims, leases and outcomes live.
//!
//! A [`Store`] is the shared memory of every worker that may run the same operation.
//! It keeps one [`Record`] per [`RecordKey`] and moves it through these states:
//!
//! ```text
//!            claim (new key, or takeover of an expired lease)
//!   (none) ───────────────────────────────────────────────▶ InProgress{token, lease_until}
//!                                                               │ renew(token) extends the lease
//!          ◀──────────── release(token) ────────────────────────┤
//!                                                               ├── complete(token) ─▶ Completed{outcome}
//!                                                               └── fail(token) ─────▶ Failed{outcome}
//! ```
//!
//! An `InProgress` record whose lease has passed is **ambiguous**: its owner may have
//! crashed before or after the side effect. [`Claim::take_over_expired`] decides whether
//! `claim` takes it over (with a new, larger fencing token) or reports it.
//!
//! ## The contract every store keeps
//!
//! * `claim` is one atomic step: it creates the record, takes over an expired lease,
//!   or returns the existing record, or [`ClaimOutcome::Mismatch`] when the stored
//!   payload fingerprint differs from the claimant's.
//! * A claim repeated with the same [`Claim::nonce`] while its claimant still owns the
//!   record gets `Acquired` again with the same token: a claim whose reply was lost
//!   (an error whose outcome is unknown) is resolved by repeating it, and the key is
//!   not left blocked until the lease passes.
//! * Fencing tokens are strictly increasing per key, across takeovers, releases and
//!   purges (a store may derive them from a clock-independent counter).
//! * `complete`, `fail`, `release` and `renew` are compare-and-set on the token: an
//!   owner whose token is not the record's current one gets [`StoreError::Fenced`] and
//!   changes nothing.
//! * Settled records (`Completed` / `Failed`) expire `ttl` after settling; expired records
//!   are invisible to `get`/`claim`/`list` even before `sweep` removes them.
//! * `wait` returns once the record is settled or gone, or when the timeout passes
//!   (`Duration::MAX` means no deadline; every duration the contract takes accepts
//!   `Duration::MAX`, capped at what the store can represent).
//! * An in-progress record abandoned by its owner stays (ambiguous) until
//!   `lease_until + ttl`, however short the ttl is next to the lease; its owner may
//!   settle it until someone takes it over.
//! * Every store honours the same [`LIMITS`]: a key or scope longer than its limit, an
//!   empty key, a NUL character or an outcome over `max_outcome_bytes` is refused with
//!   [`StoreError::Invalid`] before the backend is touched; durations are capped at
//!   `max_duration`.
//! * A write that fails with [`StoreError::Unavailable`] or [`StoreError::Backend`] may
//!   have been applied ([`StoreError::outcome_unknown`]); every other error means it
//!   changed nothing.
//!
//! The `testkit` module (feature `testkit`) checks all of this against any store.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock::Millis;

pub mod memory;
pub mod record;
pub mod sweeper;
pub mod url;

#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "redis")]
pub mod redis;

#[cfg(feature = "postgres")]
pub mod postgres;

pub use memory::MemoryStore;
pub use record::{LIMITS, Limits};
pub use sweeper::{SweepTotals, Sweeper, SweeperBuilder};
pub use url::{StoreUrl, StoreUrlError};

/// A fencing token. Strictly increasing per key; `0` is never issued.
pub type Token = u64;

/// The identity of a record: an operation scope and a key within it.
///
/// The scope keeps two operations from ever sharing a key by accident (a `charge`
/// and a `refund` with the same arguments are different records).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecordKey {
    /// The operation's scope (function name, route, tenant…). May be empty.
    pub scope: String,
    /// The idempotency key within the scope.
    pub key: String,
}

impl RecordKey {
    /// A record key from a scope and a key.
    pub fn new(scope: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            scope: scope.into(),
            key: key.into(),
        }
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scope.is_empty() {
            f.write_str(&self.key)
        } else {
            write!(f, "{}/{}", self.scope, self.key)
        }
    }
}

/// SHA-256 of the request payload, stored with the claim so that a different payload
/// under the same key is detected ([`ClaimOutcome::Mismatch`]) instead of replayed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        Self(sha2::Sha256::digest(bytes).into())
    }
    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

/// How the bytes of an [`Outcome`] were encoded by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum Codec {
    /// Opaque bytes (an HTTP response, a caller's own format).
    Raw = 0,
    /// JSON (serde_json).
    Json = 1,
    /// postcard (compact binary serde).
    Postcard = 2,
}

impl Codec {
    /// The byte stored for this codec.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
    /// The codec stored as `b`, if known.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Raw),
            1 => Some(Self::Json),
            2 => Some(Self::Postcard),
            _ => None,
        }
    }
}

/// Compression applied to the bytes of an [`Outcome`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum Compression {
    /// Stored as is.
    None = 0,
    /// LZ4 block with the uncompressed size prepended (`lz4_flex::compress_prepend_size`).
    Lz4 = 1,
    /// zstd frame.
    Zstd = 2,
}

impl Compression {
    /// The byte stored for this compression.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
    /// The compression stored as `b`, if known.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::None),
            1 => Some(Self::Lz4),
            2 => Some(Self::Zstd),
            _ => None,
        }
    }
}

/// A stored result: bytes plus how to read them. Always data, never code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// How the caller encoded the value.
    pub codec: Codec,
    /// Compression applied after encoding.
    pub compression: Compression,
    /// The (possibly compressed) bytes.
    pub bytes: Vec<u8>,
}

impl Outcome {
    /// Uncompressed bytes with the given codec.
    pub fn new(codec: Codec, bytes: Vec<u8>) -> Self {
        Self {
            codec,
            compression: Compression::None,
            bytes,
        }
    }
}

/// The state of a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// An owner holds the key until `lease_until` (unless it renews).
    InProgress {
        /// When the lease passes, in ms since the epoch.
        lease_until: Millis,
    },
    /// The operation succeeded; `outcome` is replayed to later attempts.
    Completed(Outcome),
    /// The operation failed and failures are sticky; `outcome` is the stored error.
    Failed(Outcome),
}

impl State {
    /// A short lowercase name: `in_progress`, `completed`, `failed`.
    pub fn name(&self) -> &'static str {
        match self {
            State::InProgress { .. } => "in_progress",
            State::Completed(_) => "completed",
            State::Failed(_) => "failed",
        }
    }
    /// Completed or failed.
    pub fn is_settled(&self) -> bool {
        !matches!(self, State::InProgress { .. })
    }
}

/// One record, as a store returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Scope and key.
    pub id: RecordKey,
    /// The fingerprint given by the claim that created (or took over) the record.
    pub fingerprint: Option<Fingerprint>,
    /// Current state.
    pub state: State,
    /// The current fencing token.
    pub token: Token,
    /// How many claims acquired this key (1 + takeovers).
    pub attempts: u32,
    /// When the record was first created (ms since epoch).
    pub created_at: Millis,
    /// Last change (ms since epoch).
    pub updated_at: Millis,
    /// When a settled record expires; `None` while in progress (the lease governs).
    pub expires_at: Option<Millis>,
}

impl Record {
    /// In progress and its lease has passed at `now`: the side effect may or may not
    /// have happened.
    pub fn is_ambiguous(&self, now: Millis) -> bool {
        matches!(self.state, State::InProgress { lease_until } if lease_until <= now)
    }
}

/// The arguments of [`Store::claim`].
#[derive(Clone, Debug)]
pub struct Claim {
    /// The record to claim.
    pub id: RecordKey,
    /// Payload fingerprint; compared with the stored one when both are present.
    pub fingerprint: Option<Fingerprint>,
    /// How long the claimant owns the key unless it renews.
    pub lease: Duration,
    /// Retention of the record once settled (passed again to `complete`/`fail`; also
    /// an upper bound on how long an abandoned in-progress record is kept).
    pub ttl: Duration,
    /// Take over an in-progress record whose lease has passed (at-least-once).
    /// When `false`, such a record is returned as [`ClaimOutcome::Existing`] and the
    /// caller sees it as ambiguous.
    pub take_over_expired: bool,
    /// Identifies this claimant, so that the claim can be repeated when its reply was
    /// lost. A claim that finds an in-progress record acquired by a claim with the
    /// same nonce (still its owner: not taken over, released or purged since) gets
    /// [`ClaimOutcome::Acquired`] again, with the record's token, its attempt count and
    /// takeover, and a lease renewed to `now + lease`. `None` (the default) never
    /// matches. Never share a nonce between claimants: each would believe it owns the
    /// key. The guard sets a random one on every claim.
    pub nonce: Option<u64>,
}

impl Claim {
    /// A claim with a 60 s lease, a 24 h ttl, no fingerprint, and takeover enabled.
    pub fn new(id: RecordKey) -> Self {
        Self {
            id,
            fingerprint: None,
            lease: Duration::from_secs(60),
            ttl: Duration::from_secs(24 * 3600),
            take_over_expired: true,
            nonce: None,
        }
    }
    /// Sets the fingerprint.
    pub fn fingerprint(mut self, fp: Option<Fingerprint>) -> Self {
        self.fingerprint = fp;
        self
    }
    /// Sets the lease.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }
    /// Sets the ttl.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
    /// Sets whether expired leases are taken over.
    pub fn take_over_expired(mut self, yes: bool) -> Self {
        self.take_over_expired = yes;
        self
    }
    /// Sets the claimant's nonce (see [`nonce`](Self::nonce)).
    pub fn nonce(mut self, nonce: u64) -> Self {
        self.nonce = Some(nonce);
        self
    }
}

/// What [`Store::claim`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The caller now owns the key and must settle it with `token`.
    Acquired {
        /// The fencing token of this ownership.
        token: Token,
        /// When the lease passes unless renewed.
        lease_until: Millis,
        /// `Some(previous_token)` when an expired lease was taken over: the previous
        /// owner's effect may have happened (ambiguous).
        takeover: Option<Token>,
        /// 1 for a fresh claim, more after takeovers.
        attempt: u32,
    },
    /// Someone else's record: completed, failed (sticky), or in progress (live, or
    /// expired when `take_over_expired` was false).
    Existing(Record),
    /// The key exists with a different payload fingerprint.
    Mismatch(Record),
}

/// A page request for [`StoreAdmin::list`].
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Only records of this scope.
    pub scope: Option<String>,
    /// Only keys starting with this prefix.
    pub key_prefix: Option<String>,
    /// Resume after this record (the `next` of the previous page).
    pub after: Option<RecordKey>,
    /// Page size; 0 means the store's default (100).
    pub limit: usize,
}

impl ListQuery {
    /// The effective page size.
    pub fn effective_limit(&self) -> usize {
        if self.limit == 0 { 100 } else { self.limit }
    }
}

/// A page of records, ordered by (scope, key).
#[derive(Clone, Debug, Default)]
pub struct Page {
    /// The records.
    pub records: Vec<Record>,
    /// Pass as `after` to get the next page; `None` at the end.
    pub next: Option<RecordKey>,
}

/// Counts for `idemp records stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Live in-progress records.
    pub in_progress: u64,
    /// In-progress records whose lease has passed.
    pub ambiguous: u64,
    /// Completed records.
    pub completed: u64,
    /// Failed (sticky) records.
    pub failed: u64,
    /// Bytes of stored outcomes, when the store can tell cheaply.
    pub outcome_bytes: Option<u64>,
}

/// What kind of [`StoreError`] this is: [`StoreError::kind`], to match on without
/// the payloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// [`StoreError::Fenced`]: nothing was changed.
    Fenced,
    /// [`StoreError::Unavailable`]: transient; a write's outcome is unknown.
    Unavailable,
    /// [`StoreError::Corrupt`]: nothing was changed.
    Corrupt,
    /// [`StoreError::Incompatible`]: nothing was changed.
    Incompatible,
    /// [`StoreError::Invalid`]: nothing was changed.
    Invalid,
    /// [`StoreError::Capacity`]: transient; nothing was changed.
    Capacity,
    /// [`StoreError::NotReplicated`]: transient; the write was applied on the primary
    /// but too few replicas acknowledged it.
    NotReplicated,
    /// [`StoreError::Backend`]: a write's outcome is unknown.
    Backend,
}

/// Errors of a store. Callers can match on them (or on [`kind`](Self::kind)).
///
/// ## Which errors leave a write's outcome unknown
///
/// A write (`claim`, `complete`, `fail`, `release`, `renew`, `purge`) that fails with
/// [`Fenced`](Self::Fenced), [`Invalid`](Self::Invalid),
/// [`Incompatible`](Self::Incompatible), [`Corrupt`](Self::Corrupt) or
/// [`Capacity`](Self::Capacity) **changed nothing**; one that fails with
/// [`NotReplicated`](Self::NotReplicated) **was applied** on the Redis primary, but
/// too few replicas confirmed it for it to be sure to survive a failover. One that fails with [`Unavailable`](Self::Unavailable) or
/// [`Backend`](Self::Backend) **may or may not have been applied**: the server may
/// have committed it before the connection dropped or the reply was lost
/// ([`outcome_unknown`](Self::outcome_unknown) is `true`). Read the record to find out:
/// a `complete`/`fail` that was applied shows the caller's token settled with its
/// outcome (and repeating it gets `Ok` or `Fenced` with `current` = that token); a
/// `claim` that was applied shows a record in progress that the caller cannot tell
/// from someone else's, so the key stays blocked until its lease passes (never run
/// twice). The [guard](crate::guard) resolves a settle whose outcome is unknown this
/// way before it reports an error.
///
/// ```
/// use idemp::store::{ErrorKind, StoreError};
/// let e = StoreError::Unavailable("connection reset".into());
/// assert_eq!(e.kind(), ErrorKind::Unavailable);
/// assert!(e.is_transient() && e.outcome_unknown());
/// let e = StoreError::Invalid("empty key".into());
/// assert!(!e.is_transient() && !e.outcome_unknown());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The caller's token is not the record's current one (its lease was lost and the
    /// key taken over, released or purged). Nothing was changed.
    #[error("fenced: token {token} no longer owns {id} (current: {current:?})")]
    Fenced {
        /// The record.
        id: RecordKey,
        /// The caller's token.
        token: Token,
        /// The record's current token, if the record still exists.
        current: Option<Token>,
    },
    /// The store cannot be reached or gave up (connection refused, reset, timed out,
    /// statement cancelled, busy). Retrying later may succeed. The outcome of the
    /// attempted write is **unknown**: it may have been applied before the reply was
    /// lost (see [`outcome_unknown`](Self::outcome_unknown)). The [`Cause`] derefs to
    /// its message and keeps the driver's error, when there is one, as this error's
    /// [`source`](std::error::Error::source).
    #[error(transparent)]
    Unavailable(Cause),
    /// A stored record could not be read (corrupt, written by a newer version…).
    #[error("corrupt record {id}: {reason}")]
    Corrupt {
        /// The record.
        id: RecordKey,
        /// What is wrong.
        reason: String,
    },
    /// The store is not an idemp store, or has a schema this version cannot use.
    #[error("incompatible store: {0}")]
    Incompatible(String),
    /// An argument the store cannot accept (key too long, empty key…).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A bounded store is full of records in progress, so a claim of a new key was
    /// refused (nothing was stored). Transient: retry once some of them settle. Only
    /// a [`MemoryStore`] built with
    /// [`max_entries`](memory::MemoryStoreBuilder::max_entries) returns it.
    #[error(
        "store full: every record of its share of the {max_entries}-record bound is in progress; retry when one settles, or raise max_entries"
    )]
    Capacity {
        /// The store's bound.
        max_entries: usize,
    },
    /// A write was applied on the Redis primary, but fewer replicas than required
    /// acknowledged it in time (`wait_replicas`). The write **was applied** (a read
    /// sees it now, so [`outcome_unknown`](Self::outcome_unknown) is `false`), but
    /// whether it survives a failover is unknown: the guard does not turn it into
    /// success by reading the record back, it reports it. Transient; see
    /// `store::redis::replicas` for what a retry finds.
    #[error(
        "write to {id} not confirmed by replicas: {acked} of {wanted} acknowledged within {timeout:?}; it is applied on the primary but may not survive a failover (outcome unknown)"
    )]
    NotReplicated {
        /// The record.
        id: RecordKey,
        /// How many replicas had to acknowledge.
        wanted: u32,
        /// How many did.
        acked: u32,
        /// How long the store waited.
        timeout: Duration,
    },
    /// Any other backend error. The outcome of the attempted write is unknown.
    #[error("store error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// Wraps a backend error.
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(e))
    }
    /// [`Unavailable`](Self::Unavailable) with a message and the driver's error as
    /// its source (kept typed, not flattened into the message).
    ///
    /// ```
    /// use idemp::store::StoreError;
    /// let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
    /// let e = StoreError::unavailable("redis 127.0.0.1:6379", io);
    /// assert_eq!(e.to_string(), "store unavailable: redis 127.0.0.1:6379: reset by peer");
    /// let source = std::error::Error::source(&e).unwrap();
    /// assert!(source.downcast_ref::<std::io::Error>().is_some());
    /// ```
    pub fn unavailable(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable(Cause::with_source(message, source))
    }
    /// Whether retrying the same operation later may succeed: `Unavailable`,
    /// `Capacity`, `NotReplicated`. The same answer as
    /// [`Retryable::is_retryable`](crate::retry::Retryable), which the guard, tool and
    /// client errors share.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_)
                | StoreError::Capacity { .. }
                | StoreError::NotReplicated { .. }
        )
    }
    /// The kind of error, without its payload.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Fenced { .. } => ErrorKind::Fenced,
            StoreError::Unavailable(_) => ErrorKind::Unavailable,
            StoreError::Corrupt { .. } => ErrorKind::Corrupt,
            StoreError::Incompatible(_) => ErrorKind::Incompatible,
            StoreError::Invalid(_) => ErrorKind::Invalid,
            StoreError::Capacity { .. } => ErrorKind::Capacity,
            StoreError::NotReplicated { .. } => ErrorKind::NotReplicated,
            StoreError::Backend(_) => ErrorKind::Backend,
        }
    }
    /// Whether a write that failed with this error may nonetheless have been applied
    /// (`Unavailable`, `Backend`); `false` means it changed nothing.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Backend(_))
    }
}

impl crate::retry::Retryable for StoreError {
    fn is_retryable(&self) -> bool {
        self.is_transient()
    }
}

/// Why a store is [unavailable](StoreError::Unavailable): a message, and the
/// driver's error when there is one.
///
/// It derefs to the message (`cause.contains("locked")`), displays as
/// `store unavailable: MESSAGE[: SOURCE]`, and its
/// [`source`](std::error::Error::source) is the driver's error (an `io::Error`,
/// a `rusqlite::Error`, a `tokio_postgres::Error`…), for callers that downcast.
/// Cloning shares the source.
///
/// ```
/// use idemp::store::{Cause, StoreError};
/// let e = StoreError::Unavailable("connection refused".into());
/// let StoreError::Unavailable(cause) = &e else { unreachable!() };
/// assert!(cause.contains("refused"));
/// assert_eq!(e.to_string(), "store unavailable: connection refused");
/// assert!(std::error::Error::source(&e).is_none());
/// ```
#[derive(Clone, Debug)]
pub struct Cause {
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Cause {
    /// A cause with a message only.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }
    /// A cause with a message and the error behind it.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }
    /// The message (without the source's text).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::ops::Deref for Cause {
    type Target = str;
    fn deref(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store unavailable: {}", self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<String> for Cause {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for Cause {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

/// Shorthand for store results.
pub type StoreResult<T> = Result<T, StoreError>;

/// The store contract (see the [module docs](self)).
///
/// Implement it to bring your own backend, then run the `testkit` conformance suite
/// against it.
///
/// ## Limits
///
/// Every store accepts exactly the sizes of [`LIMITS`] (see [`Limits`]): scope and key
/// up to `max_scope_bytes` / `max_key_bytes` (a non-empty key, no NUL character), an
/// outcome up to `max_outcome_bytes`. An argument over a limit is refused with
/// [`StoreError::Invalid`] (kind [`ErrorKind::Invalid`]) before the backend is touched,
/// so nothing changed. Leases, ttls and timeouts longer than `max_duration` (up to
/// `Duration::MAX`) are accepted and capped. A store of your own should check
/// [`Limits::check_id`] and [`Limits::check_outcome`] first, decode its rows with
/// [`record::RawRecord::decode`], and, if it decides claims in Rust, apply
/// [`record::decide_claim`] (the memory and SQLite stores do).
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Atomically claims `claim.id`.
    async fn claim(&self, claim: &Claim) -> StoreResult<ClaimOutcome>;

    /// Settles the record as completed, if `token` still owns it. The record then
    /// expires `ttl` from now.
    async fn complete(
        &self,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()>;

    /// Settles the record as failed (sticky failure), if `token` still owns it.
    async fn fail(
        &self,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()>;

    /// Deletes the in-progress record so the key may run again, if `token` owns it.
    async fn release(&self, id: &RecordKey, token: Token) -> StoreResult<()>;

    /// Extends the lease of an in-progress record to `now + lease`, if `token` owns
    /// it. Returns the new `lease_until`. Renewing an expired lease that nobody took
    /// over succeeds.
    async fn renew(&self, id: &RecordKey, token: Token, lease: Duration) -> StoreResult<Millis>;

    /// The live record, if any (expired settled records are not returned).
    async fn get(&self, id: &RecordKey) -> StoreResult<Option<Record>>;

    /// Waits until the record is settled or gone, or `timeout` passes; returns the
    /// record as last seen (`None` when gone).
    ///
    /// The default polls [`get`](Store::get) with backoff from 2 ms to 100 ms; stores
    /// with notifications (memory, Redis pub/sub, Postgres LISTEN) override it.
    async fn wait(&self, id: &RecordKey, timeout: Duration) -> StoreResult<Option<Record>> {
        poll_until_settled(self, id, timeout).await
    }
}

/// Administration of a store: listing, purging, sweeping and counting records.
///
/// Kept apart from the hot contract [`Store`] (what the guard and the HTTP layer
/// call on every request) because none of it is on a request's path: `idemp records`,
/// the [`Sweeper`] and operators use it. Every idemp store implements both, and
/// [`DynStore`] (what guards, the HTTP layer and the tool runner hold, so that
/// `guard.store()` can be listed and swept) is a store with its administration; a
/// wrapper store forwards the four methods to the store it wraps.
///
/// Call them with the trait in scope (`use idemp::store::StoreAdmin;`); on a
/// [`DynStore`] they need no import.
#[async_trait]
pub trait StoreAdmin: Store {
    /// A page of live records ordered by (scope, key).
    async fn list(&self, query: &ListQuery) -> StoreResult<Page>;

    /// Deletes the record whatever its state. Returns whether it existed.
    /// Its owner, if any, is fenced from then on.
    async fn purge(&self, id: &RecordKey) -> StoreResult<bool>;

    /// Removes expired settled records (and in-progress records abandoned for longer
    /// than their ttl). Returns how many were removed. Stores with native expiry may
    /// return 0.
    async fn sweep(&self) -> StoreResult<u64>;

    /// Counts records by state.
    async fn stats(&self) -> StoreResult<Stats>;
}

/// The instant `timeout` from now; a timeout too large to represent (such as
/// `Duration::MAX`) gives an instant a century away, i.e. "no deadline".
pub(crate) fn deadline_after(timeout: Duration) -> tokio::time::Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let now = tokio::time::Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

/// The polling fallback of [`Store::wait`], usable by stores that override `wait` but
/// still need to poll sometimes.
pub async fn poll_until_settled<S: Store + ?Sized>(
    store: &S,
    id: &RecordKey,
    timeout: Duration,
) -> StoreResult<Option<Record>> {
    // A timeout too large to represent (e.g. `Duration::MAX`) means "no deadline".
    let deadline = tokio::time::Instant::now().checked_add(timeout);
    let mut delay = Duration::from_millis(2);
    loop {
        let rec = store.get(id).await?;
        match &rec {
            Some(r) if !r.state.is_settled() => {}
            _ => return Ok(rec),
        }
        let now = tokio::time::Instant::now();
        let left = match deadline {
            Some(d) if now >= d => return Ok(rec),
            Some(d) => d - now,
            None => delay,
        };
        tokio::time::sleep(delay.min(left)).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

#[async_trait]
impl<S: Store + ?Sized> Store for Arc<S> {
    async fn claim(&self, claim: &Claim) -> StoreResult<ClaimOutcome> {
        (**self).claim(claim).await
    }
    async fn complete(
        &self,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        (**self).complete(id, token, outcome, ttl).await
    }
    async fn fail(
        &self,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        (**self).fail(id, token, outcome, ttl).await
    }
    async fn release(&self, id: &RecordKey, token: Token) -> StoreResult<()> {
        (**self).release(id, token).await
    }
    async fn renew(&self, id: &RecordKey, token: Token, lease: Duration) -> StoreResult<Millis> {
        (**self).renew(id, token, lease).await
    }
    async fn get(&self, id: &RecordKey) -> StoreResult<Option<Record>> {
        (**self).get(id).await
    }
    async fn wait(&self, id: &RecordKey, timeout: Duration) -> StoreResult<Option<Record>> {
        (**self).wait(id, timeout).await
    }
}

#[async_trait]
impl<S: StoreAdmin + ?Sized> StoreAdmin for Arc<S> {
    async fn list(&self, query: &ListQuery) -> StoreResult<Page> {
        (**self).list(query).await
    }
    async fn purge(&self, id: &RecordKey) -> StoreResult<bool> {
        (**self).purge(id).await
    }
    async fn sweep(&self) -> StoreResult<u64> {
        (**self).sweep().await
    }
    async fn stats(&self) -> StoreResult<Stats> {
        (**self).stats().await
    }
}

/// A store chosen at run time (from a URL), with its administration.
pub type DynStore = Arc<dyn StoreAdmin>;

/// Errors of [`open`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The URL is malformed or names an unknown scheme.
    #[error(transparent)]
    Url(#[from] StoreUrlError),
    /// The URL names a store whose feature is not compiled in.
    #[error("store `{scheme}` is not available: build idemp with the `{feature}` feature")]
    NotCompiled {
        /// The URL scheme.
        scheme: &'static str,
        /// The cargo feature that provides it.
        feature: &'static str,
    },
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Opens a store from a URL: `memory:` (bounded to
/// [`DEFAULT_URL_MAX_ENTRIES`](memory::DEFAULT_URL_MAX_ENTRIES) records unless
/// `?max_entries=N` says otherwise), `sqlite://PATH`, `redis://HOST:PORT/DB`,
/// `redis+cluster://HOST:PORT,HOST:PORT`, `postgres://USER@HOST:PORT/DB`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = idemp::store::open("memory:").await?;
/// assert!(store.stats().await?.completed == 0);
/// # Ok(()) }
/// ```
pub async fn open(url: &str) -> Result<DynStore, OpenError> {
    let parsed: StoreUrl = url.parse()?;
    open_parsed(&parsed).await
}

/// Opens a parsed store URL.
pub async fn open_parsed(url: &StoreUrl) -> Result<DynStore, OpenError> {
    match url {
        StoreUrl::Memory { max_entries } => Ok(Arc::new(
            MemoryStore::builder()
                .max_entries(max_entries.unwrap_or(memory::DEFAULT_URL_MAX_ENTRIES))
                .build(),
        )),
        #[cfg(feature = "sqlite")]
        StoreUrl::Sqlite { path } => Ok(Arc::new(sqlite::SqliteStore::open(path)?)),
        #[cfg(not(feature = "sqlite"))]
        StoreUrl::Sqlite { .. } => Err(OpenError::NotCompiled {
            scheme: "sqlite",
            feature: "sqlite",
        }),
        #[cfg(feature = "redis")]
        StoreUrl::Redis { .. } | StoreUrl::RedisCluster { .. } => {
            Ok(Arc::new(redis::RedisStore::connect_url(url).await?))
        }
        #[cfg(not(feature = "redis"))]
        StoreUrl::Redis { .. } | StoreUrl::RedisCluster { .. } => Err(OpenError::NotCompiled {
            scheme: "redis",
            feature: "redis",
        }),
        #[cfg(feature = "postgres")]
        StoreUrl::Postgres { .. } => Ok(Arc::new(postgres::PostgresStore::connect_url(url).await?)),
        #[cfg(not(feature = "postgres"))]
        StoreUrl::Postgres { .. } => Err(OpenError::NotCompiled {
            scheme: "postgres",
            feature: "postgres",
        }),
    }
}
