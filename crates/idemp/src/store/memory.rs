//! The in-memory store: sharded, lock-light, and notifying waiters.
//!
//! [`MemoryStore`] keeps every record in one of `N` shards (a power of two, by default
//! the next power of two ≥ 4 × the number of cores). Each shard is a
//! [`parking_lot::Mutex`] around a [`hashbrown::HashTable`]; a record key is hashed once
//! and the hash both picks the shard and probes the table, so the hot path (claim,
//! complete, replay) takes one short uncontended lock and never a global one.
//!
//! * **Fencing tokens** come from a per-shard counter bumped under the shard's lock. A
//!   key always lives in the same shard, so its tokens are strictly increasing across
//!   takeovers, releases and purges, without a globally contended atomic. (Tokens are
//!   unique per key, not across keys.)
//! * **Expiry** reads the injected [`Clock`](crate::clock::Clock): a settled record is
//!   invisible once `expires_at` has passed, removed lazily when touched and eagerly by
//!   [`sweep`](Store::sweep). An in-progress record whose lease passed more than its
//!   `ttl` ago is treated as abandoned and expires the same way.
//! * **Waiting** ([`Store::wait`]) is notified, not polled: the first waiter on a key
//!   attaches a [`tokio::sync::Notify`] to the record, and settling, releasing, purging
//!   or expiring the record wakes every waiter. Claims and completions with nobody
//!   waiting allocate nothing for it. A lease passing is not an event: waiters on an
//!   abandoned record wait until their timeout (pass the remaining lease as the
//!   timeout to react to it). `wait` measures its timeout with `tokio::time`, so it
//!   needs a runtime with the time driver enabled.
//!
//! ```
//! use idemp::store::{Claim, ClaimOutcome, Codec, MemoryStore, Outcome, RecordKey, State, Store};
//! use std::time::Duration;
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), idemp::StoreError> {
//! let store = MemoryStore::new();
//! let id = RecordKey::new("charge", "order-42");
//! let ClaimOutcome::Acquired { token, .. } = store.claim(&Claim::new(id.clone())).await? else {
//!     unreachable!("a fresh key is acquired");
//! };
//! let outcome = Outcome::new(Codec::Json, br#"{"ok":true}"#.to_vec());
//! store.complete(&id, token, outcome.clone(), Duration::from_secs(3600)).await?;
//! // A retry replays the stored outcome instead of running again.
//! match store.claim(&Claim::new(id.clone())).await? {
//!     ClaimOutcome::Existing(rec) => assert_eq!(rec.state, State::Completed(outcome)),
//!     other => panic!("unexpected {other:?}"),
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hashbrown::hash_table::Entry as TableEntry;
use hashbrown::{DefaultHashBuilder, HashTable};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{
    Claim, ClaimOutcome, Fingerprint, ListQuery, Outcome, Page, Record, RecordKey, State, Stats,
    Store, StoreError, StoreResult, Token,
};
use crate::clock::{self, Millis, SharedClock, duration_ms};

/// The most shards a store may have.
const MAX_SHARDS: usize = 1 << 16;

/// An in-memory [`Store`]: for tests and single-process use.
///
/// Cheap to share: wrap it in an [`Arc`] (the [`Store`] trait is implemented for
/// `Arc<S>`). See the [module docs](self) for the design.
pub struct MemoryStore {
    shards: Box<[Shard]>,
    /// `shards.len() - 1`.
    mask: usize,
    hasher: DefaultHashBuilder,
    clock: SharedClock,
}

/// One shard, on its own cache lines so two cores locking neighbours do not contend.
#[repr(align(128))]
struct Shard(Mutex<ShardMap>);

struct ShardMap {
    table: HashTable<Entry>,
    /// The last fencing token issued in this shard.
    last_token: Token,
}

/// A stored record plus what the store needs to run it.
struct Entry {
    /// The hash of `id` (kept so resizing never rehashes strings).
    hash: u64,
    id: RecordKey,
    fingerprint: Option<Fingerprint>,
    state: State,
    token: Token,
    attempts: u32,
    created_at: Millis,
    updated_at: Millis,
    expires_at: Option<Millis>,
    /// The claim's ttl: an in-progress record abandoned longer than this expires.
    ttl_ms: Millis,
    /// Set by the first waiter; woken when the record settles or goes away.
    waiters: Option<Arc<Notify>>,
}

impl Entry {
    /// Whether the record is gone for readers at `now`.
    fn is_expired(&self, now: Millis) -> bool {
        match self.state {
            State::InProgress { lease_until } => lease_until.saturating_add(self.ttl_ms) <= now,
            State::Completed(_) | State::Failed(_) => self.expires_at.is_some_and(|at| at <= now),
        }
    }

    fn to_record(&self) -> Record {
        Record {
            id: self.id.clone(),
            fingerprint: self.fingerprint,
            state: self.state.clone(),
            token: self.token,
            attempts: self.attempts,
            created_at: self.created_at,
            updated_at: self.updated_at,
            expires_at: self.expires_at,
        }
    }

    /// Whether `token` currently owns this in-progress record.
    fn owned_by(&self, token: Token) -> bool {
        self.token == token && !self.state.is_settled()
    }

    fn outcome_len(&self) -> u64 {
        match &self.state {
            State::InProgress { .. } => 0,
            State::Completed(o) | State::Failed(o) => o.bytes.len() as u64,
        }
    }
}

/// Wakes the waiters of a record that settled or went away (outside the shard lock).
fn wake(waiters: Option<Arc<Notify>>) {
    if let Some(n) = waiters {
        n.notify_waiters();
    }
}

fn fenced(id: &RecordKey, token: Token, current: Option<Token>) -> StoreError {
    StoreError::Fenced {
        id: id.clone(),
        token,
        current,
    }
}

/// What `wait` found under the lock.
enum Probe {
    /// Settled, gone or expired: return this.
    Done(Option<Record>),
    /// Still in progress: wait on this.
    Pending(Arc<Notify>),
}

impl MemoryStore {
    /// A new empty store on the system clock with the default number of shards.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder to choose the clock and the number of shards.
    ///
    /// ```
    /// use idemp::clock::ManualClock;
    /// use idemp::store::MemoryStore;
    /// use std::sync::Arc;
    /// let clock = ManualClock::new(1_000);
    /// let store = MemoryStore::builder().clock(Arc::new(clock.clone())).shards(8).build();
    /// assert_eq!(store.shard_count(), 8);
    /// ```
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder::default()
    }

    /// How many shards the store has.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// How many records the store holds, including expired ones that neither a read
    /// nor [`sweep`](Store::sweep) has removed yet.
    pub fn entry_count(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().table.len()).sum()
    }

    #[inline]
    fn hash(&self, id: &RecordKey) -> u64 {
        self.hasher.hash_one(id)
    }

    /// The shard of a hash. Uses bits 32.. so that neither the table's bucket index
    /// (low bits) nor its control tag (top 7 bits) is correlated with the shard.
    #[inline]
    fn shard(&self, hash: u64) -> &Mutex<ShardMap> {
        &self.shards[(hash >> 32) as usize & self.mask].0
    }

    fn claim_sync(&self, claim: &Claim) -> ClaimOutcome {
        let hash = self.hash(&claim.id);
        let now = self.clock.now_ms();
        let lease_until = now.saturating_add(duration_ms(claim.lease));
        let ttl_ms = duration_ms(claim.ttl);
        let mut stale_waiters = None;
        let outcome = {
            let mut guard = self.shard(hash).lock();
            let ShardMap { table, last_token } = &mut *guard;
            match table.entry(hash, |e| e.id == claim.id, |e| e.hash) {
                TableEntry::Occupied(mut occ) => {
                    let e = occ.get_mut();
                    if e.is_expired(now) {
                        // Reuse the slot (and the key's allocation) for a fresh record.
                        *last_token += 1;
                        stale_waiters = e.waiters.take();
                        e.fingerprint = claim.fingerprint;
                        e.state = State::InProgress { lease_until };
                        e.token = *last_token;
                        e.attempts = 1;
                        e.created_at = now;
                        e.updated_at = now;
                        e.expires_at = None;
                        e.ttl_ms = ttl_ms;
                        ClaimOutcome::Acquired {
                            token: e.token,
                            lease_until,
                            takeover: None,
                            attempt: 1,
                        }
                    } else if let (Some(mine), Some(theirs)) = (claim.fingerprint, e.fingerprint)
                        && mine != theirs
                    {
                        ClaimOutcome::Mismatch(e.to_record())
                    } else {
                        match e.state {
                            State::InProgress {
                                lease_until: current,
                            } if current <= now && claim.take_over_expired => {
                                *last_token += 1;
                                let previous = e.token;
                                e.token = *last_token;
                                e.attempts = e.attempts.saturating_add(1);
                                e.state = State::InProgress { lease_until };
                                e.updated_at = now;
                                e.ttl_ms = ttl_ms;
                                e.fingerprint = claim.fingerprint.or(e.fingerprint);
                                ClaimOutcome::Acquired {
                                    token: e.token,
                                    lease_until,
                                    takeover: Some(previous),
                                    attempt: e.attempts,
                                }
                            }
                            _ => ClaimOutcome::Existing(e.to_record()),
                        }
                    }
                }
                TableEntry::Vacant(vacant) => {
                    *last_token += 1;
                    let token = *last_token;
                    vacant.insert(Entry {
                        hash,
                        id: claim.id.clone(),
                        fingerprint: claim.fingerprint,
                        state: State::InProgress { lease_until },
                        token,
                        attempts: 1,
                        created_at: now,
                        updated_at: now,
                        expires_at: None,
                        ttl_ms,
                        waiters: None,
                    });
                    ClaimOutcome::Acquired {
                        token,
                        lease_until,
                        takeover: None,
                        attempt: 1,
                    }
                }
            }
        };
        wake(stale_waiters);
        outcome
    }

    /// Runs `f` on the live entry owned by `token`, or fails with `Fenced`.
    /// `f` returns whether to remove the entry, and a value.
    fn with_owned<T>(
        &self,
        id: &RecordKey,
        token: Token,
        f: impl FnOnce(&mut Entry, Millis) -> (bool, T),
    ) -> StoreResult<T> {
        let hash = self.hash(id);
        let now = self.clock.now_ms();
        let (result, waiters) = {
            let mut guard = self.shard(hash).lock();
            match guard.table.find_entry(hash, |e| e.id == *id) {
                Err(_) => (Err(fenced(id, token, None)), None),
                Ok(mut occ) => {
                    let e = occ.get_mut();
                    if e.is_expired(now) {
                        let (gone, _) = occ.remove();
                        (Err(fenced(id, token, None)), gone.waiters)
                    } else if !e.owned_by(token) {
                        (Err(fenced(id, token, Some(e.token))), None)
                    } else {
                        let (remove, value) = f(e, now);
                        if remove {
                            let (gone, _) = occ.remove();
                            (Ok(value), gone.waiters)
                        } else {
                            (Ok(value), None)
                        }
                    }
                }
            }
        };
        wake(waiters);
        result
    }

    fn settle(&self, id: &RecordKey, token: Token, state: State, ttl: Duration) -> StoreResult<()> {
        let waiters = self.with_owned(id, token, |e, now| {
            e.state = state;
            e.updated_at = now;
            e.expires_at = Some(now.saturating_add(duration_ms(ttl)));
            (false, e.waiters.take())
        })?;
        wake(waiters);
        Ok(())
    }

    fn get_sync(&self, id: &RecordKey) -> Option<Record> {
        let hash = self.hash(id);
        let now = self.clock.now_ms();
        let (record, waiters) = {
            let mut guard = self.shard(hash).lock();
            match guard.table.find_entry(hash, |e| e.id == *id) {
                Err(_) => (None, None),
                Ok(occ) if occ.get().is_expired(now) => (None, occ.remove().0.waiters),
                Ok(occ) => (Some(occ.get().to_record()), None),
            }
        };
        wake(waiters);
        record
    }

    /// Under the lock: the record if settled or gone, otherwise a `Notify` to wait on.
    fn probe(&self, id: &RecordKey) -> Probe {
        let hash = self.hash(id);
        let now = self.clock.now_ms();
        let (probe, waiters) = {
            let mut guard = self.shard(hash).lock();
            match guard.table.find_entry(hash, |e| e.id == *id) {
                Err(_) => (Probe::Done(None), None),
                Ok(occ) if occ.get().is_expired(now) => (Probe::Done(None), occ.remove().0.waiters),
                Ok(mut occ) => {
                    let e = occ.get_mut();
                    if e.state.is_settled() {
                        (Probe::Done(Some(e.to_record())), None)
                    } else {
                        let notify = e.waiters.get_or_insert_with(|| Arc::new(Notify::new()));
                        (Probe::Pending(Arc::clone(notify)), None)
                    }
                }
            }
        };
        wake(waiters);
        probe
    }

    fn purge_sync(&self, id: &RecordKey) -> bool {
        let hash = self.hash(id);
        let now = self.clock.now_ms();
        let (existed, waiters) = {
            let mut guard = self.shard(hash).lock();
            match guard.table.find_entry(hash, |e| e.id == *id) {
                Err(_) => (false, None),
                Ok(occ) => {
                    let (gone, _) = occ.remove();
                    (!gone.is_expired(now), gone.waiters)
                }
            }
        };
        wake(waiters);
        existed
    }

    fn sweep_sync(&self) -> u64 {
        let now = self.clock.now_ms();
        let mut removed = 0u64;
        let mut to_wake = Vec::new();
        for shard in self.shards.iter() {
            let mut guard = shard.0.lock();
            guard.table.retain(|e| {
                if e.is_expired(now) {
                    removed += 1;
                    to_wake.extend(e.waiters.take());
                    false
                } else {
                    true
                }
            });
            drop(guard);
            to_wake.drain(..).for_each(|n| n.notify_waiters());
        }
        removed
    }

    fn list_sync(&self, query: &ListQuery) -> Page {
        let now = self.clock.now_ms();
        let limit = query.effective_limit();
        let matches = |id: &RecordKey| {
            query.scope.as_ref().is_none_or(|s| id.scope == *s)
                && query
                    .key_prefix
                    .as_ref()
                    .is_none_or(|p| id.key.starts_with(p.as_str()))
                && query.after.as_ref().is_none_or(|a| id > a)
        };
        // Collect matching keys only (not outcomes), then fetch the first page.
        let mut keys: Vec<RecordKey> = Vec::new();
        for shard in self.shards.iter() {
            let guard = shard.0.lock();
            keys.extend(
                guard
                    .table
                    .iter()
                    .filter(|e| !e.is_expired(now) && matches(&e.id))
                    .map(|e| e.id.clone()),
            );
        }
        keys.sort_unstable();
        let more = keys.len() > limit;
        keys.truncate(limit);
        let records: Vec<Record> = keys.iter().filter_map(|id| self.get_sync(id)).collect();
        let next = if more { keys.pop() } else { None };
        Page { records, next }
    }

    fn stats_sync(&self) -> Stats {
        let now = self.clock.now_ms();
        let mut stats = Stats {
            outcome_bytes: Some(0),
            ..Stats::default()
        };
        let mut bytes = 0u64;
        for shard in self.shards.iter() {
            let guard = shard.0.lock();
            for e in guard.table.iter().filter(|e| !e.is_expired(now)) {
                match e.state {
                    State::InProgress { lease_until } if lease_until <= now => stats.ambiguous += 1,
                    State::InProgress { .. } => stats.in_progress += 1,
                    State::Completed(_) => stats.completed += 1,
                    State::Failed(_) => stats.failed += 1,
                }
                bytes += e.outcome_len();
            }
        }
        stats.outcome_bytes = Some(bytes);
        stats
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.shards.len())
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// Builds a [`MemoryStore`]; see [`MemoryStore::builder`].
#[derive(Debug, Default, Clone)]
pub struct MemoryStoreBuilder {
    clock: Option<SharedClock>,
    shards: Option<usize>,
    capacity: usize,
}

impl MemoryStoreBuilder {
    /// The clock that decides lease and ttl expiry (default: the system clock).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The number of shards, rounded up to a power of two and capped at 65,536
    /// (default: the next power of two ≥ 4 × the number of cores).
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// Room for this many records before any shard's table grows (default 0: tables
    /// grow on demand). Pre-sizing avoids rehashing pauses when the working set is known.
    pub fn capacity(mut self, records: usize) -> Self {
        self.capacity = records;
        self
    }

    /// Builds the store.
    pub fn build(self) -> MemoryStore {
        let wanted = self.shards.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            cores.saturating_mul(4)
        });
        let count = wanted.clamp(1, MAX_SHARDS).next_power_of_two();
        // Keys spread evenly; leave some slack for the unlucky shards.
        let per_shard = match self.capacity {
            0 => 0,
            n => n / count + n / count / 8 + 1,
        };
        let shards = (0..count)
            .map(|_| {
                Shard(Mutex::new(ShardMap {
                    table: HashTable::with_capacity(per_shard),
                    last_token: 0,
                }))
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        MemoryStore {
            shards,
            mask: count - 1,
            hasher: DefaultHashBuilder::default(),
            clock: self.clock.unwrap_or_else(clock::system),
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn claim(&self, claim: &Claim) -> StoreResult<ClaimOutcome> {
        Ok(self.claim_sync(claim))
    }

    async fn complete(
        &self,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.settle(id, token, State::Completed(outcome), ttl)
    }

    async fn fail(
        &self,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.settle(id, token, State::Failed(outcome), ttl)
    }

    async fn release(&self, id: &RecordKey, token: Token) -> StoreResult<()> {
        self.with_owned(id, token, |_, _| (true, ()))
    }

    async fn renew(&self, id: &RecordKey, token: Token, lease: Duration) -> StoreResult<Millis> {
        self.with_owned(id, token, |e, now| {
            let lease_until = now.saturating_add(duration_ms(lease));
            e.state = State::InProgress { lease_until };
            e.updated_at = now;
            (false, lease_until)
        })
    }

    async fn get(&self, id: &RecordKey) -> StoreResult<Option<Record>> {
        Ok(self.get_sync(id))
    }

    async fn list(&self, query: &ListQuery) -> StoreResult<Page> {
        Ok(self.list_sync(query))
    }

    async fn purge(&self, id: &RecordKey) -> StoreResult<bool> {
        Ok(self.purge_sync(id))
    }

    async fn sweep(&self) -> StoreResult<u64> {
        Ok(self.sweep_sync())
    }

    async fn stats(&self) -> StoreResult<Stats> {
        Ok(self.stats_sync())
    }

    async fn wait(&self, id: &RecordKey, timeout: Duration) -> StoreResult<Option<Record>> {
        let now = tokio::time::Instant::now();
        // A timeout too large to represent waits "forever" (a century).
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        let mut notify = match self.probe(id) {
            Probe::Done(record) => return Ok(record),
            Probe::Pending(notify) => notify,
        };
        loop {
            // Register before re-checking: a `Notified` receives `notify_waiters` calls
            // made after its creation even before it is polled, so a settle between
            // the probe and the await is never lost.
            let next = {
                let notified = notify.notified();
                match self.probe(id) {
                    Probe::Done(record) => return Ok(record),
                    // The record was replaced meanwhile: wait on the new one's notifier.
                    Probe::Pending(other) if !Arc::ptr_eq(&other, &notify) => other,
                    Probe::Pending(_) => {
                        if tokio::time::timeout_at(deadline, notified).await.is_err() {
                            return Ok(self.get_sync(id));
                        }
                        match self.probe(id) {
                            Probe::Done(record) => return Ok(record),
                            Probe::Pending(other) => other,
                        }
                    }
                }
            };
            notify = next;
        }
    }
}
