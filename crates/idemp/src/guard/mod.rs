//! The guard: at most one execution per key.
//!
//! A [`Guard`] wraps an operation with a side effect (charge a card, send an email,
//! submit a paid batch) so that every attempt with the same key runs it **at most
//! once**: the first caller claims the key in a shared [`Store`], runs the work while a
//! heartbeat renews its lease, and stores the result; every later caller gets the
//! stored result back (or waits for the running execution, or is told it is in
//! progress), and a different payload under the same key is a
//! [`GuardError::Mismatch`], never a silent replay.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use idemp::guard::{Guard, OnDuplicate};
//! use idemp::store::MemoryStore;
//!
//! let charges = AtomicU32::new(0);
//! let guard = Guard::builder(MemoryStore::new())
//!     .scope("charge")
//!     .on_duplicate(OnDuplicate::Wait(std::time::Duration::from_secs(5)))
//!     .build();
//! for _ in 0..3 {
//!     let receipt: String = guard
//!         .run("order-17", || async {
//!             charges.fetch_add(1, Ordering::SeqCst); // the side effect
//!             Ok::<_, std::io::Error>("rcpt_1".to_string())
//!         })
//!         .await?;
//!     assert_eq!(receipt, "rcpt_1");
//! }
//! assert_eq!(charges.load(Ordering::SeqCst), 1);
//! # Ok(()) }
//! ```
//!
//! ## Policies
//!
//! | option | choices |
//! |---|---|
//! | [`on_duplicate`](GuardBuilder::on_duplicate) | [`OnDuplicate::Replay`] (default), `Reject`, `Wait(timeout)` |
//! | [`on_failure`](GuardBuilder::on_failure) | [`OnFailure::Release`] (default), `Sticky` (stored as data) |
//! | [`on_ambiguous`](GuardBuilder::on_ambiguous) | [`OnAmbiguous::Retake`] (default), `Verify(reconcile)`, `Surface` + [`Guard::resolve`] |
//! | [`on_panic`](GuardBuilder::on_panic) / [`on_cancel`](GuardBuilder::on_cancel) | [`OnInterrupt::Release`] (default), `Keep` |
//!
//! Panics and dropped futures are never recorded as success.
//!
//! ## Results go through the codec on the first call too
//!
//! The first caller gets the value decoded from the bytes that were stored, exactly
//! as a replay does: same type, same value (see [`codec`](ValueCodec)).
//!
//! ## Three ways in
//!
//! * the closure API: [`Guard::run`], [`run_with`](Guard::run_with) (the work gets a
//!   [`LeaseSignal`]), [`run_detailed`](Guard::run_detailed) (returns [`RunInfo`]),
//!   [`run_args`](Guard::run_args) (key derived from serializable arguments), and
//!   [`Guard::func`] / [`Guard::func_args`], a guarded function (the decorator);
//! * the manual API: [`Guard::begin`] → [`Begin::Owner`]`(`[`Lease`]`)`, for work that
//!   does not fit a closure (HTTP layers, queue consumers);
//! * the blocking API: [`Guard::blocking`] → [`BlockingGuard`], for sync code.

mod blocking;
mod codec;
mod compress;
mod error;
mod func;
mod heartbeat;
mod manual;
mod options;

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Either;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::{
    Claim, ClaimOutcome, Codec, DynStore, Fingerprint, Outcome, Record, RecordKey, State, Store,
    StoreAdmin, StoreError, Token,
};

pub use blocking::BlockingGuard;
pub use codec::{CodecError, ValueCodec};
pub use error::{GuardError, StoredFailure};
pub use func::GuardedFn;
pub use heartbeat::LeaseSignal;
pub use manual::{Begin, Lease, Replay, Resolution, Resolved};
pub use options::{GuardBuilder, OnAmbiguous, OnDuplicate, OnFailure, OnInterrupt, Reconciler};

use manual::LeaseCore;
use options::Options;

/// Runs operations at most once per key (see the [module docs](self)).
///
/// Cheap to clone (an `Arc`); share one per operation scope.
#[derive(Clone)]
pub struct Guard {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) store: DynStore,
    pub(crate) scope: String,
    pub(crate) opts: Options,
}

impl Inner {
    /// The store as a trait object: calling through `&dyn Store` directly avoids the
    /// extra boxed future of the `Arc<S>` forwarding impl.
    #[inline]
    pub(crate) fn backend(&self) -> &dyn Store {
        &*self.store
    }
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("scope", &self.inner.scope)
            .field("store", &self.inner.store)
            .field("ttl", &self.inner.opts.ttl)
            .field("lease", &self.inner.opts.lease)
            .field("on_duplicate", &self.inner.opts.on_duplicate)
            .field("on_failure", &self.inner.opts.on_failure)
            .field("on_ambiguous", &self.inner.opts.on_ambiguous)
            .finish_non_exhaustive()
    }
}

/// The key-builder scope of [`Guard::key_for_args`].
const ARGS_KEY_DOMAIN: &str = "idemp.guard.args.v1";

/// One call's identity: the key and, optionally, the payload fingerprint.
///
/// `&str` and `String` convert into a request without a fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The idempotency key (within the guard's scope).
    pub key: String,
    /// SHA-256 of the payload: a later call with the same key and another fingerprint
    /// gets [`GuardError::Mismatch`].
    pub fingerprint: Option<Fingerprint>,
}

impl Request {
    /// A request without a fingerprint.
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            fingerprint: None,
        }
    }
    /// Sets the fingerprint.
    pub fn fingerprint(mut self, fingerprint: Fingerprint) -> Self {
        self.fingerprint = Some(fingerprint);
        self
    }
    /// Sets the fingerprint to the SHA-256 of `payload`.
    pub fn payload(self, payload: &[u8]) -> Self {
        self.fingerprint(Fingerprint::of(payload))
    }
}

impl From<&str> for Request {
    fn from(key: &str) -> Self {
        Self::new(key)
    }
}
impl From<String> for Request {
    fn from(key: String) -> Self {
        Self::new(key)
    }
}
impl From<crate::Key> for Request {
    fn from(key: crate::Key) -> Self {
        Self::new(key.into_string())
    }
}
impl From<&crate::Key> for Request {
    fn from(key: &crate::Key) -> Self {
        Self::new(key.as_str())
    }
}
impl From<&String> for Request {
    fn from(key: &String) -> Self {
        Self::new(key.as_str())
    }
}

/// How a call's result came about (for metrics and logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Disposition {
    /// This call ran the operation.
    Executed,
    /// The stored result of an earlier execution was replayed.
    Replayed,
    /// An ambiguous key was completed by the `Verify` reconcile function.
    Reconciled,
}

/// Details of a successful call: see [`Guard::run_detailed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunInfo {
    /// Ran, replayed or reconciled.
    pub disposition: Disposition,
    /// The record's attempt count (1 + takeovers).
    pub attempt: u32,
    /// The fencing token of the execution that produced the result (for replays, the
    /// record's current token).
    pub token: Token,
    /// The previous owner's token, when this call took over an expired lease.
    pub takeover: Option<Token>,
    /// Whether this call waited for another execution (`OnDuplicate::Wait`).
    pub waited: bool,
}

impl RunInfo {
    /// Whether the result was replayed (not produced by this call).
    pub fn replayed(&self) -> bool {
        self.disposition != Disposition::Executed
    }
}

/// The rare, boxed continuations of `Guard::acquire`.
type SlowPath<'a> = Pin<Box<dyn Future<Output = Result<Acquired, GuardError>> + Send + 'a>>;

/// The next step after one claim (see `Guard::classify`).
enum Step {
    Done(Acquired),
    Reconcile(LeaseCore),
    Wait(Duration),
}

/// What [`Guard::acquire`] found, before it is turned into a typed result or a
/// [`Begin`].
pub(crate) enum Acquired {
    Owner(LeaseCore, bool),
    Completed(Outcome, RunInfo),
    Failed(StoredFailure),
    InProgress(Duration, Record),
    Ambiguous(Record),
}

impl Guard {
    /// Starts building a guard over `store` (any [`Store`], or a shared
    /// [`DynStore`]).
    ///
    /// To share one store between guards, pass a `DynStore` (`Arc<dyn Store>`, e.g.
    /// `guard.store().clone()`): it is used as is. An `Arc<MyStore>` also works, but
    /// every call then goes through one more forwarding layer; coerce it first
    /// (`let shared: DynStore = arc;`).
    pub fn builder<S: StoreAdmin>(store: S) -> GuardBuilder {
        GuardBuilder::new(options::into_dyn_store(store))
    }

    /// The scope of this guard's keys.
    pub fn scope(&self) -> &str {
        &self.inner.scope
    }

    /// The store (for inspection: `get`, `list`, `purge`…).
    pub fn store(&self) -> &DynStore {
        &self.inner.store
    }

    /// The record key of `key` in this guard's scope.
    pub fn record_key(&self, key: &str) -> RecordKey {
        RecordKey::new(self.inner.scope.as_str(), key)
    }

    /// The key derived from serializable arguments: the injective
    /// [`Key::builder`](crate::Key::builder) over the scope `"idemp.guard.args.v1"`
    /// and one part, the RFC 8785 canonical JSON of `args` (object key order never
    /// matters): `ik_` + 32 hex. Used by [`run_args`](Self::run_args) and
    /// [`func_args`](Self::func_args).
    ///
    /// ```
    /// use idemp::Guard;
    /// let a = Guard::key_for_args(&serde_json::json!({"to": "bob", "amount": 5})).unwrap();
    /// let b = Guard::key_for_args(&serde_json::json!({"amount": 5, "to": "bob"})).unwrap();
    /// assert_eq!(a, b);
    /// assert!(a.starts_with("ik_") && a.len() == 35);
    /// ```
    pub fn key_for_args<A: Serialize + ?Sized>(args: &A) -> Result<String, CodecError> {
        let value = serde_json::to_value(args).map_err(|e| CodecError::Encode {
            codec: Codec::Json,
            message: e.to_string(),
        })?;
        // RFC 8785 canonical JSON: object key order never matters.
        let mut canonical = Vec::with_capacity(128);
        crate::canon::write_jcs_value(&value, &mut canonical);
        Ok(crate::Key::builder(ARGS_KEY_DOMAIN)
            .part(&canonical)
            .build()
            .into_string())
    }

    /// Runs `op` at most once for `request` (a key, or a [`Request`] with a
    /// fingerprint) and returns its result, or the stored one.
    ///
    /// `T` is stored with the guard's codec and decoded back, on this call too.
    pub async fn run<T, E, F, Fut>(
        &self,
        request: impl Into<Request>,
        op: F,
    ) -> Result<T, GuardError<E>>
    where
        T: Serialize + DeserializeOwned,
        E: fmt::Display + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.execute(request.into(), false, |_| op())
            .await
            .map(|(v, _)| v)
    }

    /// [`run`](Self::run) with a payload fingerprint: a later call with the same key
    /// and another fingerprint gets [`GuardError::Mismatch`].
    pub async fn run_with_fingerprint<T, E, F, Fut>(
        &self,
        key: impl Into<String>,
        fingerprint: Fingerprint,
        op: F,
    ) -> Result<T, GuardError<E>>
    where
        T: Serialize + DeserializeOwned,
        E: fmt::Display + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run(Request::new(key).fingerprint(fingerprint), op)
            .await
    }

    /// [`run`](Self::run), returning how the result came about ([`RunInfo`]).
    pub async fn run_detailed<T, E, F, Fut>(
        &self,
        request: impl Into<Request>,
        op: F,
    ) -> Result<(T, RunInfo), GuardError<E>>
    where
        T: Serialize + DeserializeOwned,
        E: fmt::Display + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.execute(request.into(), false, |_| op()).await
    }

    /// [`run_detailed`](Self::run_detailed) where the work gets a [`LeaseSignal`] that
    /// fires if the lease is lost mid-run (the key was taken over): cooperative work
    /// stops early, since its result would be refused anyway.
    pub async fn run_with<T, E, F, Fut>(
        &self,
        request: impl Into<Request>,
        op: F,
    ) -> Result<(T, RunInfo), GuardError<E>>
    where
        T: Serialize + DeserializeOwned,
        E: fmt::Display + 'static,
        F: FnOnce(LeaseSignal) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.execute(request.into(), true, op).await
    }

    /// Runs `op(args)` at most once per value of `args`: the key is
    /// [`key_for_args`](Self::key_for_args)`(&args)` in this guard's scope.
    pub async fn run_args<A, T, E, F, Fut>(&self, args: A, op: F) -> Result<T, GuardError<E>>
    where
        A: Serialize,
        T: Serialize + DeserializeOwned,
        E: fmt::Display + 'static,
        F: FnOnce(A) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let key = Self::key_for_args(&args)?;
        self.run(key, move || op(args)).await
    }

    /// The low-level API: claims `key` and says what was found. The owner gets a
    /// [`Lease`] whose heartbeat runs on the current tokio runtime.
    ///
    /// The guard's `on_duplicate` (`Reject` → error, `Wait` → waits) and
    /// `on_ambiguous` policies apply as in [`run`](Self::run).
    ///
    /// For ports of check-then-mark APIs (agentidemp's `IdempotencyStore`): `begin`
    /// is `is_processed` + `get_result` + `mark_in_progress` in one atomic step
    /// ([`Begin::Completed`] is "processed, here is the result"; [`Begin::Owner`] is
    /// "now marked in progress by you"), and [`Lease::complete`] /
    /// [`Lease::fail`] / [`Lease::release`] are `mark_complete` / `mark_failed`
    /// (sticky) / "failed, may retry". There is deliberately no separate
    /// check-then-mark: the gap between the two is where duplicates slip in.
    pub async fn begin(
        &self,
        key: impl AsRef<str>,
        fingerprint: Option<Fingerprint>,
    ) -> Result<Begin, GuardError> {
        self.begin_in(
            self.inner.scope.clone(),
            key.as_ref().to_owned(),
            fingerprint,
            false,
        )
        .await
    }

    /// [`begin`](Self::begin) in another scope than the guard's own, for callers that
    /// compute a scope per call: the HTTP layer scopes every request by its caller
    /// (a keyed hash of the credentials) and its route, with one guard per policy.
    /// The guard's policies (`on_duplicate`, `on_ambiguous`, ttl, lease) apply as in
    /// `begin`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use idemp::guard::{Begin, Guard};
    /// let guard = Guard::builder(idemp::store::MemoryStore::new()).build();
    /// let Begin::Owner(alice) = guard.begin_scoped("tenant-alice", "order-1", None).await? else { panic!() };
    /// // The same key in another scope is another record.
    /// let Begin::Owner(bob) = guard.begin_scoped("tenant-bob", "order-1", None).await? else { panic!() };
    /// assert_eq!(alice.id().scope, "tenant-alice");
    /// alice.complete(&1).await?;
    /// bob.complete(&2).await?;
    /// # Ok(()) }
    /// ```
    pub async fn begin_scoped(
        &self,
        scope: impl Into<String>,
        key: impl AsRef<str>,
        fingerprint: Option<Fingerprint>,
    ) -> Result<Begin, GuardError> {
        self.begin_in(scope.into(), key.as_ref().to_owned(), fingerprint, false)
            .await
    }

    /// [`begin_scoped`](Self::begin_scoped) for a caller that drives the heartbeat
    /// itself: the owner's [`Lease`] spawns no task, and the caller polls
    /// [`Lease::heartbeat`] next to its work until it settles the lease (the HTTP
    /// layer does, in the task that runs the request).
    #[cfg(feature = "http")]
    pub(crate) async fn begin_driven(
        &self,
        scope: String,
        key: String,
        fingerprint: Option<Fingerprint>,
    ) -> Result<Begin, GuardError> {
        self.begin_in(scope, key, fingerprint, true).await
    }

    async fn begin_in(
        &self,
        scope: String,
        key: String,
        fingerprint: Option<Fingerprint>,
        driven: bool,
    ) -> Result<Begin, GuardError> {
        let acquired = self.acquire(scope, key, fingerprint).await?;
        Ok(match acquired {
            Acquired::Owner(core, _) if driven => Begin::Owner(Lease::driven(core)),
            Acquired::Owner(core, _) => Begin::Owner(Lease::start(core)),
            Acquired::Completed(outcome, info) => Begin::Completed(Replay {
                outcome,
                max_outcome_bytes: self.inner.opts.encode.max_outcome_bytes,
                info,
            }),
            Acquired::Failed(f) => Begin::Failed(f),
            Acquired::InProgress(retry_after, record) => Begin::InProgress {
                retry_after,
                record,
            },
            Acquired::Ambiguous(record) => Begin::Ambiguous(record),
        })
    }

    /// Settles an ambiguous key (after [`GuardError::Ambiguous`] /
    /// [`Begin::Ambiguous`]): `Completed(v)` stores `v` as its result, `Retake`
    /// deletes the record so the next call runs, `Failed(f)` stores a sticky failure.
    ///
    /// Only a record that is still ambiguous is changed (the takeover is atomic);
    /// otherwise nothing happens and [`Resolved::NotAmbiguous`] says what is there.
    pub async fn resolve<T: Serialize>(
        &self,
        key: impl AsRef<str>,
        resolution: Resolution<T>,
    ) -> Result<Resolved, GuardError> {
        crate::key::validate(key.as_ref())?;
        let opts = &self.inner.opts;
        let claim = Claim {
            id: self.record_key(key.as_ref()),
            fingerprint: None,
            lease: opts.lease,
            ttl: opts.ttl,
            take_over_expired: true,
            nonce: Some(rand::random()),
        };
        match self.claim_resolved(&claim).await? {
            ClaimOutcome::Acquired {
                token,
                lease_until,
                takeover,
                attempt,
            } => {
                let fresh = takeover.is_none();
                let mut core = LeaseCore {
                    inner: self.inner.clone(),
                    id: claim.id,
                    token,
                    attempt,
                    takeover,
                    lease_until,
                    // Any error below leaves the key ambiguous, as it was.
                    on_drop: OnInterrupt::Keep,
                    handle: None,
                    armed: true,
                };
                if fresh {
                    // Nothing was there: undo our own claim.
                    core.release().await?;
                    return Ok(Resolved::NotAmbiguous("absent"));
                }
                tracing::info!(id = %core.id, token, previous = ?takeover, "resolving ambiguous key");
                match resolution {
                    Resolution::Completed(value) => {
                        let outcome = opts.encode.encode(&value)?;
                        core.complete(outcome).await?;
                    }
                    Resolution::Retake => core.release().await?,
                    Resolution::Failed(failure) => core.fail(failure_outcome(&failure)?).await?,
                }
                Ok(Resolved::Applied)
            }
            ClaimOutcome::Existing(record) | ClaimOutcome::Mismatch(record) => {
                Ok(Resolved::NotAmbiguous(record.state.name()))
            }
        }
    }

    /// The blocking API over this guard, with its own one-thread runtime for store
    /// calls and heartbeats.
    pub fn blocking(&self) -> std::io::Result<BlockingGuard> {
        BlockingGuard::new(self.clone())
    }

    /// The blocking API, driving store calls on a runtime you provide (a
    /// multi-thread runtime, so heartbeats run while your closure does).
    pub fn blocking_on(&self, handle: tokio::runtime::Handle) -> BlockingGuard {
        BlockingGuard::with_handle(self.clone(), handle)
    }

    /// Claims the key, applying the duplicate and ambiguity policies.
    ///
    /// The common cases (fresh claim, replay, sticky failure, mismatch, in progress
    /// under `Replay`/`Reject`) take one store call; waiting and reconciling live in
    /// boxed futures so that this one stays small (it is moved on every call).
    pub(crate) async fn acquire(
        &self,
        scope: String,
        key: String,
        fingerprint: Option<Fingerprint>,
    ) -> Result<Acquired, GuardError> {
        crate::key::validate(&key)?;
        let inner = &self.inner;
        let opts = &inner.opts;
        let mut claim = Claim {
            id: RecordKey { scope, key },
            fingerprint,
            lease: opts.lease,
            ttl: opts.ttl,
            take_over_expired: !matches!(opts.on_ambiguous, OnAmbiguous::Surface),
            nonce: Some(rand::random()),
        };
        let deadline = match opts.on_duplicate {
            OnDuplicate::Wait(timeout) => Some(crate::store::deadline_after(timeout)),
            _ => None,
        };
        let found = self.claim_resolved(&claim).await?;
        // Only the boxed future is kept across the await below (a match on the
        // classification would keep it, 200 bytes, in this future's state).
        let slow: SlowPath<'_> = match self.classify(&mut claim, found, false, deadline)? {
            Step::Done(acquired) => return Ok(acquired),
            Step::Reconcile(core) => Box::pin(self.reconcile(core, false)),
            Step::Wait(wait_for) => Box::pin(self.wait_and_claim(claim, deadline, wait_for)),
        };
        slow.await
    }

    /// One claim, resolved when its reply was lost: a claim that fails with an error
    /// whose outcome is unknown ([`StoreError::outcome_unknown`]) may have created the
    /// record, so it is repeated with the same nonce, which the store answers with
    /// `Acquired` (same token) if the first one landed. Up to 4 repeats with backoff;
    /// then the last error is returned (and the key, if the claim landed, stays in
    /// progress until its lease passes).
    async fn claim_resolved(&self, claim: &Claim) -> Result<ClaimOutcome, StoreError> {
        let store = self.inner.backend();
        let mut delay = Duration::from_millis(20);
        let mut repeats = 0;
        loop {
            match store.claim(claim).await {
                Err(e) if e.outcome_unknown() && claim.nonce.is_some() && repeats < 4 => {
                    tracing::debug!(id = %claim.id, error = %e, "claim outcome unknown: repeating it with the same nonce");
                    repeats += 1;
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                other => return other,
            }
        }
    }

    /// `OnDuplicate::Wait`: waits for the running execution (woken by the store),
    /// then claims again, until settled, acquired, or the deadline.
    async fn wait_and_claim(
        &self,
        mut claim: Claim,
        deadline: Option<tokio::time::Instant>,
        mut wait_for: Duration,
    ) -> Result<Acquired, GuardError> {
        loop {
            tracing::debug!(id = %claim.id, ?wait_for, "waiting for the running execution");
            self.inner.backend().wait(&claim.id, wait_for).await?;
            let found = self.claim_resolved(&claim).await?;
            match self.classify(&mut claim, found, true, deadline)? {
                Step::Done(acquired) => return Ok(acquired),
                Step::Reconcile(core) => return self.reconcile(core, true).await,
                Step::Wait(next) => wait_for = next,
            }
        }
    }

    /// Decides what a claim's answer means under the guard's policies.
    fn classify(
        &self,
        claim: &mut Claim,
        found: ClaimOutcome,
        waited: bool,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Step, GuardError> {
        let inner = &self.inner;
        let opts = &inner.opts;
        let reject = opts.on_duplicate == OnDuplicate::Reject;
        match found {
            ClaimOutcome::Acquired {
                token,
                lease_until,
                takeover,
                attempt,
            } => {
                let core = LeaseCore {
                    inner: inner.clone(),
                    id: std::mem::replace(&mut claim.id, RecordKey::new("", "")),
                    token,
                    attempt,
                    takeover,
                    lease_until,
                    on_drop: opts.on_cancel,
                    handle: None,
                    armed: true,
                };
                let Some(previous) = takeover else {
                    tracing::debug!(id = %core.id, token, "claimed");
                    return Ok(Step::Done(Acquired::Owner(core, waited)));
                };
                tracing::info!(id = %core.id, token, previous, attempt, "took over an expired lease");
                if let OnAmbiguous::Verify(_) = &opts.on_ambiguous {
                    return Ok(Step::Reconcile(core));
                }
                Ok(Step::Done(Acquired::Owner(core, waited)))
            }
            ClaimOutcome::Mismatch(record) => {
                tracing::debug!(id = %record.id, "fingerprint mismatch");
                Err(GuardError::Mismatch {
                    id: record.id,
                    stored: record.fingerprint,
                    given: claim.fingerprint,
                })
            }
            ClaimOutcome::Existing(record) => {
                let lease_until = match record.state {
                    State::InProgress { lease_until } => lease_until,
                    _ if reject => {
                        return Err(GuardError::Rejected {
                            state: record.state.name(),
                            id: record.id,
                        });
                    }
                    State::Completed(outcome) => {
                        tracing::debug!(id = %record.id, token = record.token, "replay");
                        let info = RunInfo {
                            disposition: Disposition::Replayed,
                            attempt: record.attempts,
                            token: record.token,
                            takeover: None,
                            waited,
                        };
                        return Ok(Step::Done(Acquired::Completed(outcome, info)));
                    }
                    State::Failed(outcome) => {
                        tracing::debug!(id = %record.id, token = record.token, "replay of a sticky failure");
                        let failure = read_failure(&outcome, opts.encode.max_outcome_bytes);
                        return Ok(Step::Done(Acquired::Failed(failure)));
                    }
                };
                let now = opts.clock.now_ms();
                if lease_until <= now && matches!(opts.on_ambiguous, OnAmbiguous::Surface) {
                    tracing::info!(id = %record.id, token = record.token, "ambiguous: surfaced to the caller");
                    return Ok(Step::Done(Acquired::Ambiguous(record)));
                }
                if reject {
                    return Err(GuardError::Rejected {
                        state: record.state.name(),
                        id: record.id,
                    });
                }
                let retry_after = Duration::from_millis(lease_until.saturating_sub(now));
                let Some(deadline) = deadline else {
                    return Ok(Step::Done(Acquired::InProgress(retry_after, record)));
                };
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Ok(Step::Done(Acquired::InProgress(retry_after, record)));
                }
                // Wake when it settles, or when its lease passes (to take it over).
                Ok(Step::Wait(
                    left.min(retry_after.max(Duration::from_millis(1))),
                ))
            }
        }
    }

    /// `OnAmbiguous::Verify`: asks the reconcile function while holding the key.
    async fn reconcile(&self, mut core: LeaseCore, waited: bool) -> Result<Acquired, GuardError> {
        let OnAmbiguous::Verify(reconciler) = &self.inner.opts.on_ambiguous else {
            return Ok(Acquired::Owner(core, waited));
        };
        // If this call is dropped or the reconcile fails, the key must stay ambiguous.
        core.on_drop = OnInterrupt::Keep;
        let answer = (reconciler.0)(core.id.clone(), self.inner.opts.encode).await;
        match answer {
            Ok(Some(outcome)) => {
                tracing::info!(id = %core.id, token = core.token, "reconciled: the effect had happened");
                core.complete(outcome.clone()).await?;
                let info = RunInfo {
                    disposition: Disposition::Reconciled,
                    attempt: core.attempt,
                    token: core.token,
                    takeover: core.takeover,
                    waited,
                };
                Ok(Acquired::Completed(outcome, info))
            }
            Ok(None) => {
                tracing::info!(id = %core.id, token = core.token, "reconciled: the effect had not happened, running");
                core.on_drop = self.inner.opts.on_cancel;
                Ok(Acquired::Owner(core, waited))
            }
            Err(message) => {
                core.abandon();
                Err(GuardError::Reconcile {
                    id: core.id.clone(),
                    message,
                })
            }
        }
    }

    /// The closure API's body. (No span wraps it: every event carries the record
    /// id, and a wrapper would add a layer to a future moved on every call.)
    async fn execute<T, E, F, Fut>(
        &self,
        request: Request,
        with_signal: bool,
        op: F,
    ) -> Result<(T, RunInfo), GuardError<E>>
    where
        T: Serialize + DeserializeOwned,
        E: fmt::Display + 'static,
        F: FnOnce(LeaseSignal) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let opts = &self.inner.opts;
        let acquired = self
            .acquire(self.inner.scope.clone(), request.key, request.fingerprint)
            .await
            .map_err(GuardError::widen)?;
        let (mut core, info) = match self.owner_or_result(acquired)? {
            Ok(owner) => owner,
            Err(done) => return Ok(done),
        };

        // Run the work with the heartbeat polled next to it: no task is spawned, and
        // the heartbeat (its timer and its box) only exists once the work has returned
        // `Pending` on its first poll.
        let signal = if with_signal {
            LeaseSignal::new()
        } else {
            LeaseSignal::inert()
        };
        let result = {
            let mut work = std::pin::pin!(AssertUnwindSafe(op(signal.clone())).catch_unwind());
            let mut beat: Option<Pin<Box<dyn Future<Output = Infallible> + Send + '_>>> = None;
            let (store, id, token, lease) = (&*self.inner.store, &core.id, core.token, opts.lease);
            let signal = &signal;
            std::future::poll_fn(move |cx| {
                if let Poll::Ready(r) = work.as_mut().poll(cx) {
                    return Poll::Ready(r);
                }
                let beat = beat.get_or_insert_with(|| {
                    Box::pin(heartbeat::run(store, id, token, lease, signal))
                });
                match beat.as_mut().poll(cx) {
                    Poll::Ready(never) => match never {},
                    Poll::Pending => Poll::Pending,
                }
            })
            .await
        };
        match result {
            Ok(result) => self.settle(core, result, info).await,
            Err(panic) => {
                tracing::warn!(id = %core.id, token = core.token, "operation panicked: not recorded");
                core.interrupt(opts.on_panic).await;
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// Turns what `acquire` found into either ownership (with the run's info) or the
    /// call's final answer.
    #[allow(clippy::type_complexity)]
    pub(crate) fn owner_or_result<T: DeserializeOwned, E>(
        &self,
        acquired: Acquired,
    ) -> Result<Result<(LeaseCore, RunInfo), (T, RunInfo)>, GuardError<E>> {
        match acquired {
            Acquired::Owner(core, waited) => {
                let info = RunInfo {
                    disposition: Disposition::Executed,
                    attempt: core.attempt,
                    token: core.token,
                    takeover: core.takeover,
                    waited,
                };
                Ok(Ok((core, info)))
            }
            Acquired::Completed(outcome, info) => {
                let value = codec::decode(&outcome, self.inner.opts.encode.max_outcome_bytes)?;
                Ok(Err((value, info)))
            }
            Acquired::Failed(failure) => Err(GuardError::Failed(failure)),
            Acquired::InProgress(retry_after, record) => Err(GuardError::InProgress {
                id: record.id,
                retry_after,
            }),
            Acquired::Ambiguous(record) => Err(ambiguous_error(record)),
        }
    }

    /// Records the work's result: completes (returning the value decoded from the
    /// stored bytes), or releases / stores the failure. The failure path is boxed so
    /// that the success path's future stays small.
    pub(crate) fn settle<'a, T, E>(
        &'a self,
        core: LeaseCore,
        result: Result<T, E>,
        info: RunInfo,
    ) -> impl Future<Output = Result<(T, RunInfo), GuardError<E>>> + 'a
    where
        T: Serialize + DeserializeOwned + 'a,
        E: fmt::Display + 'static,
    {
        match result {
            Ok(value) => Either::Left(self.complete_value(core, value, info)),
            Err(error) => Either::Right(Box::pin(self.settle_failure(core, error))),
        }
    }

    /// Encodes, decodes back (the first caller gets what replays get), completes.
    async fn complete_value<T, E>(
        &self,
        mut core: LeaseCore,
        value: T,
        info: RunInfo,
    ) -> Result<(T, RunInfo), GuardError<E>>
    where
        T: Serialize + DeserializeOwned,
    {
        let opts = &self.inner.opts;
        let encoded = opts.encode.encode(&value);
        drop(value);
        let outcome = match encoded {
            Ok(outcome) => outcome,
            Err(e) => {
                let record = Box::pin(Self::record_unencodable(core, e));
                return Err(record.await);
            }
        };
        let decoded = codec::decode::<T>(&outcome, opts.encode.max_outcome_bytes);
        core.complete(outcome).await.map_err(GuardError::widen)?;
        tracing::debug!(id = %core.id, token = core.token, "completed");
        Ok((decoded?, info))
    }

    /// The effect happened but its result cannot be encoded: record that as a
    /// failure so the key never runs again.
    async fn record_unencodable<E>(mut core: LeaseCore, e: CodecError) -> GuardError<E> {
        tracing::error!(id = %core.id, error = %e, "result cannot be encoded");
        let failure = StoredFailure::new(e.to_string()).kind("idemp::codec");
        match failure_outcome(&failure) {
            Ok(o) => {
                let _ = core.fail(o).await;
            }
            Err(_) => core.abandon(),
        }
        GuardError::Codec(e)
    }

    /// The operation failed: release the key, or store the failure (sticky).
    async fn settle_failure<T, E>(
        &self,
        mut core: LeaseCore,
        error: E,
    ) -> Result<(T, RunInfo), GuardError<E>>
    where
        E: fmt::Display + 'static,
    {
        let settled = match self.inner.opts.on_failure {
            OnFailure::Release => core.release().await,
            OnFailure::Sticky => {
                let failure = StoredFailure::from_error(&error);
                match failure_outcome(&failure) {
                    Ok(o) => core.fail(o).await,
                    Err(e) => {
                        core.abandon();
                        Err(GuardError::Codec(e))
                    }
                }
            }
        };
        if let Err(e) = settled {
            tracing::warn!(id = %core.id, token = core.token, error = %e, "could not settle the failed execution");
        }
        Err(GuardError::Operation(error))
    }
}

/// The error for an ambiguous record.
pub(crate) fn ambiguous_error<E>(record: Record) -> GuardError<E> {
    let lease_until = match record.state {
        State::InProgress { lease_until } => lease_until,
        _ => 0,
    };
    GuardError::Ambiguous {
        id: record.id,
        token: record.token,
        attempts: record.attempts,
        lease_until,
    }
}

/// The stored form of a sticky failure (JSON).
pub(crate) fn failure_outcome(failure: &StoredFailure) -> Result<Outcome, CodecError> {
    serde_json::to_vec(failure)
        .map(|bytes| Outcome::new(Codec::Json, bytes))
        .map_err(|e| CodecError::Encode {
            codec: Codec::Json,
            message: e.to_string(),
        })
}

/// Reads a stored failure; a failure stored by another writer in another form is
/// kept as text rather than lost.
pub(crate) fn read_failure(outcome: &Outcome, max: usize) -> StoredFailure {
    match codec::plain_bytes(outcome, max) {
        Ok(bytes) => match serde_json::from_slice::<StoredFailure>(&bytes) {
            Ok(f) => f,
            Err(_) => StoredFailure::new(String::from_utf8_lossy(&bytes).into_owned())
                .kind("idemp::opaque"),
        },
        Err(e) => StoredFailure::new(e.to_string()).kind("idemp::codec"),
    }
}
