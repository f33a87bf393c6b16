//! The store conformance suite: checks any [`Store`] against the contract of
//! [`crate::store`], including concurrency storms and fencing.
//!
//! Implement [`StoreFactory`] (a fresh, isolated store per case, and how time is
//! controlled), then either run every case in one test:
//!
//! ```no_run
//! use idemp::clock::ManualClock;
//! use idemp::store::MemoryStore;
//! use idemp::testkit::{Fixture, StoreFactory};
//! use std::sync::Arc;
//!
//! struct MyFactory;
//!
//! #[async_trait::async_trait]
//! impl StoreFactory for MyFactory {
//!     async fn create(&self) -> Fixture {
//!         let clock = ManualClock::starting_now();
//!         let store = MemoryStore::builder().clock(Arc::new(clock.clone())).build();
//!         Fixture::manual(store, clock)
//!     }
//! }
//!
//! #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
//! async fn conformance() {
//!     idemp::testkit::run_all(&MyFactory).await
//! }
//! ```
//!
//! or get one `#[test]` per case, with the case's name, from
//! [`conformance_tests!`](crate::conformance_tests):
//!
//! ```no_run
//! mod conformance {
//!     // Any expression that evaluates to a `StoreFactory`.
//!     idemp::conformance_tests!(idemp::testkit::MemoryFactory::default());
//! }
//! ```
//!
//! Every case is also a public async function ([`fresh_claim_acquires`],
//! [`storm_exactly_once`]…) taking the factory.
//!
//! ## Time
//!
//! Stores that read the injected [`Clock`] return
//! [`TimeControl::Manual`]: the suite moves the [`ManualClock`] and never sleeps through
//! a lease. Stores that use the server's time (Redis, Postgres) return
//! [`TimeControl::Real`]: the suite then uses short leases and ttls (a few
//! [`KitConfig::real_time_unit`]s) and sleeps. With real time, timestamps are only
//! compared with each other and with the local system clock with a margin of one unit,
//! so the store's server must run on a clock close to the test machine's.
//!
//! ## Rules the suite pins down (beyond the trait docs)
//!
//! * **Fingerprints**: a claim is a [`Mismatch`](crate::store::ClaimOutcome::Mismatch)
//!   only when both the claim and the stored record carry a fingerprint and they
//!   differ; a missing fingerprint on either side matches.
//! * **Settled records have no owner**: `release` and `renew` on a settled record, and
//!   settling it in the other state, fail with [`StoreError::Fenced`] (with `current` =
//!   the record's token) and change nothing, even with the token that settled it. The
//!   same `complete` (or `fail`) repeated with the token that settled it (a retry after
//!   a lost reply) either succeeds without changing anything (Redis) or gets `Fenced`
//!   with `current` = that token (memory): both mean "settled by you".
//! * **`Fenced::current` is never stale in a way that names the caller**: a caller
//!   fenced by a takeover must see the successor's token, never its own (a store that
//!   reads `current` from the failed statement's snapshot gets this wrong under races;
//!   `storm_fencing` catches it).
//! * **An expired lease that nobody took over is still owned**: its owner may renew,
//!   complete, fail or release it.
//! * **`Fenced::current`** is the record's current token, or `None` when the record is
//!   gone (released, purged, expired).
//! * **`list` order** is by `(scope, key)` compared as UTF-8 bytes (Rust's `str`
//!   order, SQL `COLLATE "C"`), and `key_prefix` is literal (`%` and `_` are not
//!   wildcards).
//! * Scopes and keys are arbitrary NUL-free UTF-8 up to 255 bytes each; two different
//!   `(scope, key)` pairs are never the same record, whatever separators they contain.
//!
//! ## Failures
//!
//! A failing case panics with the case's name, the record key, and what was expected
//! versus what the store returned, e.g.
//! `testkit case 'release_frees_the_key', key "tk-…"/"k": expected Acquired, got Existing(…)`.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;

use crate::clock::{Clock, ManualClock, Millis, SystemClock};
use crate::store::{
    Claim, ClaimOutcome, DynStore, Record, RecordKey, Store, StoreAdmin, StoreError, StoreResult,
    Token,
};

mod cases;
mod edges;
mod limits;
mod model;
mod storm;

pub use cases::*;
pub use edges::*;
pub use limits::*;
pub use model::*;
pub use storm::*;

/// How the suite controls a store's notion of time.
#[derive(Clone, Debug)]
pub enum TimeControl {
    /// The store reads this clock; the suite advances it.
    Manual(ManualClock),
    /// The store reads real time (its server's); the suite sleeps.
    Real,
}

/// A fresh store for one case, and how its time moves.
pub struct Fixture {
    /// The store under test.
    pub store: DynStore,
    /// How time is controlled.
    pub time: TimeControl,
    /// For stores that can settle inside the caller's own database transaction
    /// (Postgres `complete_in`): opens such transactions, so the cases can check that
    /// waiters and duplicates neither block on nor break an owner's open transaction.
    pub transactions: Option<Arc<dyn OwnerTransactions>>,
}

/// Opens owner transactions on a fixture's database (see [`Fixture::transactions`]).
#[async_trait]
pub trait OwnerTransactions: Send + Sync {
    /// Begins a transaction, `REPEATABLE READ` when `repeatable_read` (else the
    /// database's default), and runs a first statement in it, so that its snapshot is
    /// taken before the case goes on.
    async fn begin(&self, repeatable_read: bool) -> StoreResult<Box<dyn OwnerTransaction>>;
}

/// An owner's open database transaction.
#[async_trait]
pub trait OwnerTransaction: Send {
    /// Completes the record inside the transaction (not committed yet).
    async fn complete(
        &mut self,
        id: &RecordKey,
        token: Token,
        outcome: crate::store::Outcome,
        ttl: Duration,
    ) -> StoreResult<()>;
    /// Commits the transaction.
    async fn commit(self: Box<Self>) -> StoreResult<()>;
}

impl Fixture {
    /// A fixture from any store.
    pub fn new(store: impl StoreAdmin, time: TimeControl) -> Self {
        Self {
            store: Arc::new(store),
            time,
            transactions: None,
        }
    }
    /// Declares that the store can settle inside owner transactions opened by `tx`.
    pub fn with_transactions(mut self, tx: Arc<dyn OwnerTransactions>) -> Self {
        self.transactions = Some(tx);
        self
    }
    /// A store that reads `clock` (the suite advances it).
    pub fn manual(store: impl StoreAdmin, clock: ManualClock) -> Self {
        Self::new(store, TimeControl::Manual(clock))
    }
    /// A store that reads real time (the suite sleeps).
    pub fn real(store: impl StoreAdmin) -> Self {
        Self::new(store, TimeControl::Real)
    }
}

impl fmt::Debug for Fixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fixture")
            .field("store", &self.store)
            .field("time", &self.time)
            .field("transactions", &self.transactions.is_some())
            .finish()
    }
}

/// Makes the stores the suite runs against.
///
/// Closures `Fn() -> impl Future<Output = Fixture>` implement it too (with the default
/// [`KitConfig`]).
#[async_trait]
pub trait StoreFactory: Send + Sync {
    /// A fresh store that sees no record written by any other case (a new instance, or
    /// a new key prefix / schema on a shared server). Panic with a helpful message
    /// when the backend cannot be reached.
    async fn create(&self) -> Fixture;

    /// Called after each case, passed or failed, with the case's store: drop the
    /// schema or keys the case created. The default does nothing.
    async fn dispose(&self, fixture: Fixture) {
        let _ = fixture;
    }

    /// Sizes and timings of the suite (scale storms down for slow stores).
    fn config(&self) -> KitConfig {
        KitConfig::default()
    }
}

#[async_trait]
impl<F, Fut> StoreFactory for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Fixture> + Send,
{
    async fn create(&self) -> Fixture {
        self().await
    }
}

/// Timings and sizes of the suite.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct KitConfig {
    /// With [`TimeControl::Real`], the unit of the short leases and ttls the time cases
    /// use (they last 2 to 3 units and sleep 3 to 5). Default 150 ms.
    pub real_time_unit: Duration,
    /// How long a `wait` that must be woken may take before the case fails, and the
    /// timeout passed to `wait` in storms. Generous on purpose (default 10 s): cases
    /// assert behaviour, not speed.
    pub wait_timeout: Duration,
    /// Sizes of the concurrency storms.
    pub storm: StormConfig,
    /// Random sequences run by [`random_operations_match_the_model`] (default 40).
    pub model_runs: usize,
    /// Operations per sequence (default 60).
    pub model_steps: usize,
}

impl Default for KitConfig {
    fn default() -> Self {
        Self {
            real_time_unit: Duration::from_millis(150),
            wait_timeout: Duration::from_secs(10),
            storm: StormConfig::default(),
            model_runs: 40,
            model_steps: 60,
        }
    }
}

impl KitConfig {
    /// Sets [`real_time_unit`](Self::real_time_unit).
    pub fn real_time_unit(mut self, unit: Duration) -> Self {
        self.real_time_unit = unit;
        self
    }
    /// Sets [`wait_timeout`](Self::wait_timeout).
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout;
        self
    }
    /// Sets the storm sizes.
    pub fn storm(mut self, storm: StormConfig) -> Self {
        self.storm = storm;
        self
    }
    /// Sets [`model_runs`](Self::model_runs) and [`model_steps`](Self::model_steps).
    pub fn model(mut self, runs: usize, steps: usize) -> Self {
        self.model_runs = runs;
        self.model_steps = steps;
        self
    }
}

/// Sizes of the concurrency storms. The defaults are the issue's numbers (64 tasks,
/// 1,000 keys, 8 contenders per key); slow stores may scale down.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StormConfig {
    /// Distinct keys per storm.
    pub keys: usize,
    /// Contenders per key (each claims, and either runs or waits for the result).
    pub contenders: usize,
    /// Concurrent tasks the contenders are spread over.
    pub tasks: usize,
    /// Keys of the fencing storm (each: one paused owner, `contenders` successors).
    pub fencing_keys: usize,
}

impl Default for StormConfig {
    fn default() -> Self {
        Self {
            keys: 1000,
            contenders: 8,
            tasks: 64,
            fencing_keys: 1000,
        }
    }
}

impl StormConfig {
    /// Sets [`keys`](Self::keys).
    pub fn keys(mut self, n: usize) -> Self {
        self.keys = n;
        self
    }
    /// Sets [`contenders`](Self::contenders).
    pub fn contenders(mut self, n: usize) -> Self {
        self.contenders = n;
        self
    }
    /// Sets [`tasks`](Self::tasks).
    pub fn tasks(mut self, n: usize) -> Self {
        self.tasks = n;
        self
    }
    /// Sets [`fencing_keys`](Self::fencing_keys).
    pub fn fencing_keys(mut self, n: usize) -> Self {
        self.fencing_keys = n;
        self
    }
}

/// A factory of [`MemoryStore`](crate::store::MemoryStore)s on a [`ManualClock`]: the
/// reference the suite is developed against, and handy for tests of code built on a
/// store.
#[derive(Clone, Debug, Default)]
pub struct MemoryFactory {
    /// The configuration returned by [`StoreFactory::config`].
    pub config: KitConfig,
}

#[async_trait]
impl StoreFactory for MemoryFactory {
    async fn create(&self) -> Fixture {
        let clock = ManualClock::starting_now();
        let store = crate::store::MemoryStore::builder()
            .clock(Arc::new(clock.clone()))
            .build();
        Fixture::manual(store, clock)
    }
    fn config(&self) -> KitConfig {
        self.config.clone()
    }
}

/// The name of every case, in the order [`run_all`] runs them.
pub const CASES: &[&str] = &[
    "fresh_claim_acquires",
    "duplicate_claim_sees_in_progress",
    "complete_replays_outcome",
    "fail_is_sticky",
    "release_frees_the_key",
    "renew_extends_the_lease",
    "fingerprint_rules",
    "lease_expiry_allows_takeover",
    "no_takeover_reports_ambiguous",
    "expired_owner_may_settle_until_taken_over",
    "fenced_after_takeover",
    "fenced_after_release_and_purge",
    "settled_record_has_no_owner",
    "ttl_expiry_hides_settled_records",
    "list_pages_by_scope_and_prefix",
    "purge_removes_any_state",
    "stats_count_states",
    "wait_returns_when_settled_or_gone",
    "wait_times_out_on_in_progress",
    "tokens_increase_per_key",
    "large_outcomes_round_trip",
    "odd_keys_round_trip",
    "distinct_ids_never_collide",
    "hot_key_has_one_owner",
    "random_operations_match_the_model",
    "storm_exactly_once",
    "storm_with_release",
    "storm_fencing",
    "durations_at_their_maximum",
    "abandoned_record_outlives_a_short_ttl",
    "wait_meets_its_deadline_beside_an_open_transaction",
    "waiter_leaves_a_repeatable_read_owner_alone",
    "waiter_woken_after_release_and_reclaim",
    "lost_settle_reply_is_resolved",
    "lost_claim_reply_is_resolved",
    "limits_are_honoured",
];

/// Runs every case against stores from `factory`, one after the other, panicking at
/// the first failure (with the case's name). Use a multi-threaded runtime.
pub async fn run_all<F: StoreFactory + ?Sized>(factory: &F) {
    fresh_claim_acquires(factory).await;
    duplicate_claim_sees_in_progress(factory).await;
    complete_replays_outcome(factory).await;
    fail_is_sticky(factory).await;
    release_frees_the_key(factory).await;
    renew_extends_the_lease(factory).await;
    fingerprint_rules(factory).await;
    lease_expiry_allows_takeover(factory).await;
    no_takeover_reports_ambiguous(factory).await;
    expired_owner_may_settle_until_taken_over(factory).await;
    fenced_after_takeover(factory).await;
    fenced_after_release_and_purge(factory).await;
    settled_record_has_no_owner(factory).await;
    ttl_expiry_hides_settled_records(factory).await;
    list_pages_by_scope_and_prefix(factory).await;
    purge_removes_any_state(factory).await;
    stats_count_states(factory).await;
    wait_returns_when_settled_or_gone(factory).await;
    wait_times_out_on_in_progress(factory).await;
    tokens_increase_per_key(factory).await;
    large_outcomes_round_trip(factory).await;
    odd_keys_round_trip(factory).await;
    distinct_ids_never_collide(factory).await;
    hot_key_has_one_owner(factory).await;
    random_operations_match_the_model(factory).await;
    storm_exactly_once(factory).await;
    storm_with_release(factory).await;
    storm_fencing(factory).await;
    durations_at_their_maximum(factory).await;
    abandoned_record_outlives_a_short_ttl(factory).await;
    wait_meets_its_deadline_beside_an_open_transaction(factory).await;
    waiter_leaves_a_repeatable_read_owner_alone(factory).await;
    waiter_woken_after_release_and_reclaim(factory).await;
    lost_settle_reply_is_resolved(factory).await;
    lost_claim_reply_is_resolved(factory).await;
    limits_are_honoured(factory).await;
}

/// Runs a future on a fresh multi-threaded runtime (4 workers): what
/// [`conformance_tests!`](crate::conformance_tests) uses for each case.
pub fn block_on<T>(fut: impl Future<Output = T>) -> T {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(fut),
        Err(e) => panic!("testkit: cannot start a tokio runtime: {e}"),
    }
}

/// Expands to one `#[test]` per conformance case, each named after the case and
/// running it against stores from the factory expression (evaluated in each test) on
/// its own multi-threaded runtime. Needs the `testkit` feature.
///
/// ```no_run
/// mod memory_conformance {
///     idemp::conformance_tests!(idemp::testkit::MemoryFactory::default());
/// }
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@cases ($factory)
            fresh_claim_acquires,
            duplicate_claim_sees_in_progress,
            complete_replays_outcome,
            fail_is_sticky,
            release_frees_the_key,
            renew_extends_the_lease,
            fingerprint_rules,
            lease_expiry_allows_takeover,
            no_takeover_reports_ambiguous,
            expired_owner_may_settle_until_taken_over,
            fenced_after_takeover,
            fenced_after_release_and_purge,
            settled_record_has_no_owner,
            ttl_expiry_hides_settled_records,
            list_pages_by_scope_and_prefix,
            purge_removes_any_state,
            stats_count_states,
            wait_returns_when_settled_or_gone,
            wait_times_out_on_in_progress,
            tokens_increase_per_key,
            large_outcomes_round_trip,
            odd_keys_round_trip,
            distinct_ids_never_collide,
            hot_key_has_one_owner,
            random_operations_match_the_model,
            storm_exactly_once,
            storm_with_release,
            storm_fencing,
            durations_at_their_maximum,
            abandoned_record_outlives_a_short_ttl,
            wait_meets_its_deadline_beside_an_open_transaction,
            waiter_leaves_a_repeatable_read_owner_alone,
            waiter_woken_after_release_and_reclaim,
            lost_settle_reply_is_resolved,
            lost_claim_reply_is_resolved,
            limits_are_honoured,
        );
    };
    (@cases ($factory:expr) $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::testkit::block_on(async {
                    let factory = $factory;
                    $crate::testkit::$case(&factory).await
                })
            }
        )*
    };
}

// ------------------------------------------------------------------------------------
// The per-case environment shared by the cases.

/// One case's store, clock and unique scope, with helpers that fail precisely.
pub(crate) struct Env {
    pub(crate) case: &'static str,
    pub(crate) store: DynStore,
    pub(crate) time: TimeControl,
    pub(crate) cfg: KitConfig,
    /// A scope unique to this case run: `tk-<case>-<random>`.
    pub(crate) scope: String,
    /// The fixture's owner transactions, if the store has them.
    pub(crate) transactions: Option<Arc<dyn OwnerTransactions>>,
}

/// Runs a case body with a fresh store, disposing of it afterwards even on failure.
pub(crate) async fn with_env<F, B, Fut>(factory: &F, case: &'static str, body: B)
where
    F: StoreFactory + ?Sized,
    B: FnOnce(Arc<Env>) -> Fut,
    Fut: Future<Output = ()>,
{
    let fixture = factory.create().await;
    let env = Arc::new(Env {
        case,
        store: fixture.store.clone(),
        time: fixture.time.clone(),
        transactions: fixture.transactions.clone(),
        cfg: factory.config(),
        scope: format!(
            "tk-{case}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
    });
    let result = AssertUnwindSafe(body(env)).catch_unwind().await;
    factory.dispose(fixture).await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// A successful claim.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Acquired {
    pub(crate) token: Token,
    pub(crate) lease_until: Millis,
    pub(crate) takeover: Option<Token>,
    pub(crate) attempt: u32,
}

impl Env {
    pub(crate) fn id(&self, key: &str) -> RecordKey {
        RecordKey::new(self.scope.clone(), key)
    }

    /// Fails the case.
    #[track_caller]
    pub(crate) fn fail(&self, id: &RecordKey, msg: impl fmt::Display) -> ! {
        panic!(
            "testkit case '{}', key {:?}/{:?}: {}",
            self.case, id.scope, id.key, msg
        )
    }

    /// Fails the case unless `cond`.
    #[track_caller]
    pub(crate) fn check(&self, cond: bool, id: &RecordKey, msg: impl FnOnce() -> String) {
        if !cond {
            self.fail(id, msg())
        }
    }

    /// Fails the case unless `got == want`.
    #[track_caller]
    pub(crate) fn check_eq<T: PartialEq + fmt::Debug>(
        &self,
        id: &RecordKey,
        what: &str,
        got: T,
        want: T,
    ) {
        if got != want {
            self.fail(id, format!("{what}: expected {want:?}, got {got:?}"))
        }
    }

    /// The store call's value, or the case fails.
    #[track_caller]
    pub(crate) fn ok<T>(&self, id: &RecordKey, op: &str, r: StoreResult<T>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => self.fail(id, format!("{op} failed: {e} ({e:?})")),
        }
    }

    /// One unit of time: 1 s on a manual clock, [`KitConfig::real_time_unit`] else.
    pub(crate) fn unit(&self) -> Duration {
        match self.time {
            TimeControl::Manual(_) => Duration::from_secs(1),
            TimeControl::Real => self.cfg.real_time_unit,
        }
    }

    pub(crate) fn units(&self, n: u32) -> Duration {
        self.unit() * n
    }

    /// Lets `n` units of time pass (advancing the manual clock, or sleeping).
    pub(crate) async fn pass(&self, n: u32) {
        match &self.time {
            TimeControl::Manual(clock) => clock.advance(self.units(n)),
            TimeControl::Real => tokio::time::sleep(self.units(n)).await,
        }
    }

    /// The store's "now" when the suite controls it.
    pub(crate) fn manual_now(&self) -> Option<Millis> {
        match &self.time {
            TimeControl::Manual(clock) => Some(clock.now_ms()),
            TimeControl::Real => None,
        }
    }

    /// "Now" to judge whether a lease has passed: the manual clock, or the system clock
    /// minus nothing (real-time cases sleep a unit beyond every lease).
    pub(crate) fn judge_now(&self) -> Millis {
        self.manual_now().unwrap_or_else(|| SystemClock.now_ms())
    }

    /// A claim with a long lease and ttl (nothing expires during a case).
    pub(crate) fn claim(&self, id: &RecordKey) -> Claim {
        Claim::new(id.clone())
            .lease(Duration::from_secs(600))
            .ttl(Duration::from_secs(3600))
    }

    pub(crate) async fn claim_raw(&self, claim: &Claim) -> ClaimOutcome {
        let r = self.store.claim(claim).await;
        self.ok(&claim.id, "claim", r)
    }

    /// Claims and expects to acquire.
    #[track_caller]
    pub(crate) fn expect_acquired(&self, id: &RecordKey, got: ClaimOutcome) -> Acquired {
        match got {
            ClaimOutcome::Acquired {
                token,
                lease_until,
                takeover,
                attempt,
            } => {
                self.check(token > 0, id, || "token 0 was issued".into());
                Acquired {
                    token,
                    lease_until,
                    takeover,
                    attempt,
                }
            }
            other => self.fail(id, format!("claim: expected Acquired, got {other:?}")),
        }
    }

    pub(crate) async fn acquire(&self, claim: &Claim) -> Acquired {
        let got = self.claim_raw(claim).await;
        self.expect_acquired(&claim.id, got)
    }

    /// Claims and expects an existing record.
    pub(crate) async fn existing(&self, claim: &Claim) -> Record {
        match self.claim_raw(claim).await {
            ClaimOutcome::Existing(rec) => {
                self.check_eq(&claim.id, "existing record's id", &rec.id, &claim.id);
                rec
            }
            other => self.fail(
                &claim.id,
                format!("claim: expected Existing, got {other:?}"),
            ),
        }
    }

    pub(crate) async fn get(&self, id: &RecordKey) -> Option<Record> {
        let r = self.store.get(id).await;
        let rec = self.ok(id, "get", r);
        if let Some(rec) = &rec {
            self.check_eq(id, "record id returned by get", &rec.id, id);
        }
        rec
    }

    pub(crate) async fn get_some(&self, id: &RecordKey) -> Record {
        match self.get(id).await {
            Some(rec) => rec,
            None => self.fail(id, "get: expected a record, got None"),
        }
    }

    /// Expects `r` to be `Fenced` for `token` with the given current token.
    #[track_caller]
    pub(crate) fn expect_fenced<T: fmt::Debug>(
        &self,
        id: &RecordKey,
        op: &str,
        token: Token,
        current: Option<Token>,
        r: StoreResult<T>,
    ) {
        match r {
            Err(StoreError::Fenced {
                id: fid,
                token: ftoken,
                current: fcurrent,
            }) => {
                self.check_eq(id, &format!("{op}: Fenced.id"), &fid, id);
                self.check_eq(id, &format!("{op}: Fenced.token"), ftoken, token);
                self.check_eq(id, &format!("{op}: Fenced.current"), fcurrent, current);
            }
            other => self.fail(
                id,
                format!(
                    "{op} with stale token {token}: expected Err(Fenced {{ current: {current:?} }}), got {other:?}"
                ),
            ),
        }
    }
}
