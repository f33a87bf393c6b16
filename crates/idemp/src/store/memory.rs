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
//!   [`sweep`](StoreAdmin::sweep). An in-progress record whose lease passed more than its
//!   `ttl` ago is treated as abandoned and expires the same way.
//! * **Waiting** ([`Store::wait`]) is notified, not polled: the first waiter on a key
//!   attaches a [`tokio::sync::Notify`] to the record, and settling, releasing, purging
//!   or expiring the record wakes every waiter. Claims and completions with nobody
//!   waiting allocate nothing for it. A lease passing is not an event: waiters on an
//!   abandoned record wait until their timeout (pass the remaining lease as the
//!   timeout to react to it). `wait` measures its timeout with `tokio::time`, so it
//!   needs a runtime with the time driver enabled.
//! * **Bounded** ([`MemoryStoreBuilder::max_entries`], URL `memory:?max_entries=N`):
//!   a claim that needs room in a full store evicts one *settled* record (completed
//!   or failed), the one that expires first, and never a record in progress. Each
//!   shard holds an equal share of the bound and keeps its settled records in a
//!   min-heap by expiry, so an eviction costs `O(log n)` and no operation scans the
//!   shard (an abandoned in-progress record past its ttl is collected by a scan at
//!   most once a second, and only while the shard is full of in-progress records).
//!   When every record of the shard is in progress the claim fails with
//!   [`StoreError::Capacity`], which is transient: retry once something settles.
//!   Evicting trades at-most-once for memory: a retry that arrives after its record
//!   was evicted runs again. [`MemoryStore::evictions`] counts them (`idemp serve`
//!   shows it as `idemp_store_evictions_total`), so size the bound above the number
//!   of records alive within one ttl. A store built without the option is unbounded;
//!   one opened from a URL is bounded to [`DEFAULT_URL_MAX_ENTRIES`] unless the URL
//!   says otherwise.
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
//!
//! A bounded store:
//!
//! ```
//! use idemp::store::{Claim, ClaimOutcome, Codec, MemoryStore, Outcome, RecordKey, Store, StoreError};
//! use std::time::Duration;
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), StoreError> {
//! let store = MemoryStore::builder().max_entries(2).build();
//! let hour = Duration::from_secs(3600);
//! let ClaimOutcome::Acquired { token, .. } = store.claim(&Claim::new(RecordKey::new("s", "a"))).await? else {
//!     unreachable!()
//! };
//! store.complete(&RecordKey::new("s", "a"), token, Outcome::new(Codec::Raw, vec![]), hour).await?;
//! store.claim(&Claim::new(RecordKey::new("s", "b"))).await?; // in progress
//! // The store is full: "c" takes the place of the settled "a", never of "b".
//! store.claim(&Claim::new(RecordKey::new("s", "c"))).await?;
//! assert_eq!((store.entry_count(), store.evictions()), (2, 1));
//! // Now both records are in progress: a new key is refused, not stored.
//! let err = store.claim(&Claim::new(RecordKey::new("s", "d"))).await.unwrap_err();
//! assert!(matches!(err, StoreError::Capacity { .. }) && err.is_transient());
//! # Ok(()) }
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hashbrown::hash_table::Entry as TableEntry;
use hashbrown::{DefaultHashBuilder, HashTable};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::record::{ClaimStep, Held, decide_claim, fenced};
use super::{
    Claim, ClaimOutcome, Fingerprint, LIMITS, ListQuery, Outcome, Page, Record, RecordKey, State,
    Stats, Store, StoreAdmin, StoreError, StoreResult, Token,
};
use crate::clock::{self, Millis, SharedClock};

/// The most shards a store may have.
const MAX_SHARDS: usize = 1 << 16;

/// The bound of a memory store opened from a URL (`memory:`) that names none: a
/// long-running `idemp serve --store memory:` stays within it (roughly 0.5–1 KiB
/// per record plus its stored response).
pub const DEFAULT_URL_MAX_ENTRIES: usize = 1_000_000;

/// With a bound and the default shard count, shards are merged until each holds at
/// least this many records, so that an unlucky spread of keys rarely fills one
/// shard with in-progress records while others have room.
const MIN_BOUND_PER_SHARD: usize = 1024;

/// How often a full shard without settled records may scan for abandoned records.
const FULL_SCAN_INTERVAL_MS: Millis = 1_000;

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
    /// The bound, if any (the sum of the shards' caps).
    max_entries: Option<usize>,
}

/// One shard, on its own cache lines so two cores locking neighbours do not contend.
#[repr(align(128))]
struct Shard(Mutex<ShardMap>);

struct ShardMap {
    table: HashTable<Entry>,
    /// The last fencing token issued in this shard.
    last_token: Token,
    /// The shard's share of `max_entries` and its eviction order, when bounded.
    bound: Option<Bound>,
}

/// The bookkeeping of a bounded shard.
struct Bound {
    /// The most records the shard holds.
    cap: usize,
    /// Settled records by expiry: `(expires_at, seq, hash)`. An item is stale once
    /// no settled entry with that `seq` is in the table (it expired, was purged or
    /// re-claimed); stale items are skipped when popped and dropped by `compact`.
    heap: BinaryHeap<Reverse<(Millis, u64, u64)>>,
    /// The last `seq` given to a settled entry.
    last_seq: u64,
    /// Live records evicted to make room.
    evicted: u64,
    /// When a full shard without settled records may next scan for expired ones.
    next_scan_at: Millis,
}

impl Bound {
    /// Puts a just-settled entry in the eviction order.
    fn index(&mut self, e: &mut Entry) {
        self.last_seq += 1;
        e.seq = self.last_seq;
        self.heap.push(Reverse((
            e.expires_at.unwrap_or(Millis::MAX),
            e.seq,
            e.hash,
        )));
    }

    /// Whether the heap holds enough stale items to be worth a compaction.
    fn needs_compaction(&self) -> bool {
        self.heap.len() > self.cap.saturating_mul(2).saturating_add(64)
    }
}

/// Whether `e` is the settled entry a heap item `(seq)` refers to.
fn indexed(e: &Entry, seq: u64) -> bool {
    e.seq == seq && e.state.is_settled()
}

/// Drops the stale items of a bounded shard's heap: `O(n)`, run after at least
/// `cap` settles, so `O(1)` amortised.
fn compact(table: &HashTable<Entry>, bound: &mut Bound) {
    bound
        .heap
        .retain(|Reverse((_, seq, hash))| table.find(*hash, |e| indexed(e, *seq)).is_some());
}

/// Makes room for one record in a full bounded shard: removes the settled record
/// that expires first, else (at most once a second) every expired record. Returns
/// whether there is room now, and the waiters to wake.
fn make_room(
    table: &mut HashTable<Entry>,
    bound: &mut Bound,
    now: Millis,
    to_wake: &mut Vec<Arc<Notify>>,
) -> bool {
    while let Some(Reverse((_, seq, hash))) = bound.heap.pop() {
        if let Ok(occ) = table.find_entry(hash, |e| indexed(e, seq)) {
            let (mut gone, _) = occ.remove();
            if !gone.is_expired(now) {
                bound.evicted += 1;
            }
            to_wake.extend(gone.waiters.take());
            return true;
        }
    }
    if now >= bound.next_scan_at {
        // Only in-progress records are left: collect those abandoned past their ttl.
        bound.next_scan_at = now.saturating_add(FULL_SCAN_INTERVAL_MS);
        table.retain(|e| {
            if e.is_expired(now) {
                to_wake.extend(e.waiters.take());
                false
            } else {
                true
            }
        });
    }
    table.len() < bound.cap
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
    /// The nonce of the claim that acquired the record (see [`Claim::nonce`]).
    nonce: Option<u64>,
    /// The previous owner's token, when the record was acquired by a takeover.
    takeover: Option<Token>,
    /// Set by the first waiter; woken when the record settles or goes away.
    waiters: Option<Arc<Notify>>,
    /// In a bounded shard, this settled record's place in the eviction heap (0: none).
    seq: u64,
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

    /// What the claim decision reads of this (live) entry.
    fn held(&self) -> Held {
        Held {
            fingerprint: self.fingerprint,
            lease_until: match self.state {
                State::InProgress { lease_until } => Some(lease_until),
                State::Completed(_) | State::Failed(_) => None,
            },
            token: self.token,
            attempts: self.attempts,
            nonce: self.nonce,
            takeover: self.takeover,
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
    /// nor [`sweep`](StoreAdmin::sweep) has removed yet. Never more than
    /// [`max_entries`](Self::max_entries). Locks each shard briefly: for metrics, not
    /// for a hot path.
    pub fn entry_count(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().table.len()).sum()
    }

    /// The bound on [`entry_count`](Self::entry_count), if the store is bounded.
    pub fn max_entries(&self) -> Option<usize> {
        self.max_entries
    }

    /// How many live settled records were evicted to make room for new claims since
    /// the store was built (expired records removed on the way are not counted).
    pub fn evictions(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.lock().bound.as_ref().map_or(0, |b| b.evicted))
            .sum()
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

    fn claim_sync(&self, claim: &Claim) -> StoreResult<ClaimOutcome> {
        LIMITS.check_id(&claim.id)?;
        let hash = self.hash(&claim.id);
        let now = self.clock.now_ms();
        let lease_until = now.saturating_add(LIMITS.capped_ms(claim.lease));
        let ttl_ms = LIMITS.capped_ms(claim.ttl);
        let mut stale_waiters = None;
        let mut evicted_waiters = Vec::new();
        let outcome = {
            let mut guard = self.shard(hash).lock();
            let ShardMap {
                table,
                last_token,
                bound,
            } = &mut *guard;
            if let Some(b) = bound
                && table.len() >= b.cap
                && table.find(hash, |e| e.id == claim.id).is_none()
                && !make_room(table, b, now, &mut evicted_waiters)
            {
                drop(guard);
                evicted_waiters.into_iter().for_each(|n| n.notify_waiters());
                return Err(StoreError::Capacity {
                    max_entries: self.max_entries.unwrap_or_default(),
                });
            }
            match table.entry(hash, |e| e.id == claim.id, |e| e.hash) {
                TableEntry::Occupied(mut occ) => {
                    let e = occ.get_mut();
                    let expired = e.is_expired(now);
                    let held = (!expired).then(|| e.held());
                    match decide_claim(held.as_ref(), claim, now) {
                        ClaimStep::Fresh => {
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
                            e.nonce = claim.nonce;
                            e.takeover = None;
                            ClaimOutcome::Acquired {
                                token: e.token,
                                lease_until,
                                takeover: None,
                                attempt: 1,
                            }
                        }
                        ClaimStep::Takeover { previous, attempt } => {
                            *last_token += 1;
                            e.token = *last_token;
                            e.attempts = attempt;
                            e.state = State::InProgress { lease_until };
                            e.updated_at = now;
                            e.ttl_ms = ttl_ms;
                            e.fingerprint = claim.fingerprint.or(e.fingerprint);
                            e.nonce = claim.nonce;
                            e.takeover = Some(previous);
                            ClaimOutcome::Acquired {
                                token: e.token,
                                lease_until,
                                takeover: Some(previous),
                                attempt,
                            }
                        }
                        ClaimStep::Repeat {
                            token,
                            attempt,
                            takeover,
                        } => {
                            e.state = State::InProgress { lease_until };
                            e.updated_at = now;
                            e.ttl_ms = ttl_ms;
                            ClaimOutcome::Acquired {
                                token,
                                lease_until,
                                takeover,
                                attempt,
                            }
                        }
                        ClaimStep::Existing => ClaimOutcome::Existing(e.to_record()),
                        ClaimStep::Mismatch => ClaimOutcome::Mismatch(e.to_record()),
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
                        nonce: claim.nonce,
                        takeover: None,
                        waiters: None,
                        seq: 0,
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
        evicted_waiters.into_iter().for_each(|n| n.notify_waiters());
        Ok(outcome)
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
            let ShardMap { table, bound, .. } = &mut *guard;
            let done = match table.find_entry(hash, |e| e.id == *id) {
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
                            if let Some(b) = bound.as_mut()
                                && e.state.is_settled()
                            {
                                b.index(e);
                            }
                            (Ok(value), None)
                        }
                    }
                }
            };
            if let Some(b) = bound.as_mut()
                && b.needs_compaction()
            {
                compact(table, b);
            }
            done
        };
        wake(waiters);
        result
    }

    fn settle(&self, id: &RecordKey, token: Token, state: State, ttl: Duration) -> StoreResult<()> {
        let waiters = self.with_owned(id, token, |e, now| {
            e.state = state;
            e.updated_at = now;
            e.expires_at = Some(now.saturating_add(LIMITS.capped_ms(ttl)));
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
            .field("max_entries", &self.max_entries)
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
    max_entries: Option<usize>,
}

impl MemoryStoreBuilder {
    /// The clock that decides lease and ttl expiry (default: the system clock).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The number of shards, rounded up to a power of two and capped at 65,536
    /// (default: the next power of two ≥ 4 × the number of cores). With
    /// [`max_entries`](Self::max_entries) the count is also capped so that every
    /// shard holds at least one record, and the default count is lowered until each
    /// shard holds at least 1,024.
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

    /// Bounds the store to `records` records (at least 1; default: unbounded).
    ///
    /// A claim that needs room in a full shard evicts the settled record that expires
    /// first; a shard holding only in-progress records refuses new keys with
    /// [`StoreError::Capacity`]. The bound is split evenly among the shards, so a
    /// shard may be full while the store as a whole is not. See the
    /// [module docs](self).
    ///
    /// ```
    /// use idemp::store::MemoryStore;
    /// let store = MemoryStore::builder().max_entries(100).build();
    /// assert_eq!(store.max_entries(), Some(100));
    /// assert_eq!(store.shard_count(), 1); // 100 records are too few to split
    /// ```
    pub fn max_entries(mut self, records: usize) -> Self {
        self.max_entries = Some(records.max(1));
        self
    }

    /// Builds the store.
    pub fn build(self) -> MemoryStore {
        let wanted = self.shards.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            cores.saturating_mul(4)
        });
        let mut count = wanted.clamp(1, MAX_SHARDS).next_power_of_two();
        if let Some(max) = self.max_entries {
            let per_shard = if self.shards.is_some() {
                1
            } else {
                MIN_BOUND_PER_SHARD
            };
            while count > 1 && max / count < per_shard {
                count /= 2;
            }
        }
        // Keys spread evenly; leave some slack for the unlucky shards.
        let presize = match self.max_entries {
            Some(max) => self.capacity.min(max),
            None => self.capacity,
        };
        let per_shard = match presize {
            0 => 0,
            n => n / count + n / count / 8 + 1,
        };
        let shards = (0..count)
            .map(|i| {
                let bound = self.max_entries.map(|max| Bound {
                    // The caps add up to `max` exactly.
                    cap: max / count + usize::from(i < max % count),
                    heap: BinaryHeap::new(),
                    last_seq: 0,
                    evicted: 0,
                    next_scan_at: 0,
                });
                Shard(Mutex::new(ShardMap {
                    table: HashTable::with_capacity(per_shard),
                    last_token: 0,
                    bound,
                }))
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        MemoryStore {
            shards,
            mask: count - 1,
            hasher: DefaultHashBuilder::default(),
            clock: self.clock.unwrap_or_else(clock::system),
            max_entries: self.max_entries,
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn claim(&self, claim: &Claim) -> StoreResult<ClaimOutcome> {
        self.claim_sync(claim)
    }

    async fn complete(
        &self,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        LIMITS.check_id(id)?;
        LIMITS.check_outcome(&outcome)?;
        self.settle(id, token, State::Completed(outcome), ttl)
    }

    async fn fail(
        &self,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        LIMITS.check_id(id)?;
        LIMITS.check_outcome(&outcome)?;
        self.settle(id, token, State::Failed(outcome), ttl)
    }

    async fn release(&self, id: &RecordKey, token: Token) -> StoreResult<()> {
        LIMITS.check_id(id)?;
        self.with_owned(id, token, |_, _| (true, ()))
    }

    async fn renew(&self, id: &RecordKey, token: Token, lease: Duration) -> StoreResult<Millis> {
        LIMITS.check_id(id)?;
        self.with_owned(id, token, |e, now| {
            let lease_until = now.saturating_add(LIMITS.capped_ms(lease));
            e.state = State::InProgress { lease_until };
            e.updated_at = now;
            (false, lease_until)
        })
    }

    async fn get(&self, id: &RecordKey) -> StoreResult<Option<Record>> {
        Ok(self.get_sync(id))
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

#[async_trait]
impl StoreAdmin for MemoryStore {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::Codec;

    const HOUR: Duration = Duration::from_secs(3600);

    fn bounded(max: usize, shards: usize) -> (MemoryStore, ManualClock) {
        let clock = ManualClock::new(1_000_000);
        let store = MemoryStore::builder()
            .clock(Arc::new(clock.clone()))
            .shards(shards)
            .max_entries(max)
            .build();
        (store, clock)
    }

    fn id(k: impl fmt::Display) -> RecordKey {
        RecordKey::new("s", k.to_string())
    }

    fn claim(store: &MemoryStore, k: &RecordKey, ttl: Duration) -> StoreResult<Token> {
        match store.claim_sync(&Claim::new(k.clone()).ttl(ttl))? {
            ClaimOutcome::Acquired { token, .. } => Ok(token),
            other => panic!("{k}: expected Acquired, got {other:?}"),
        }
    }

    fn done(store: &MemoryStore, k: &RecordKey, token: Token, ttl: Duration) {
        store
            .settle(
                k,
                token,
                State::Completed(Outcome::new(Codec::Raw, vec![1])),
                ttl,
            )
            .unwrap();
    }

    fn heap_len(store: &MemoryStore) -> usize {
        store
            .shards
            .iter()
            .map(|s| s.0.lock().bound.as_ref().map_or(0, |b| b.heap.len()))
            .sum()
    }

    #[test]
    fn shard_caps_add_up_to_the_bound() {
        for (max, shards) in [(1, 8), (7, 4), (100, 8), (5_000, 64), (1_000_000, 16)] {
            let (store, _) = bounded(max, shards);
            let caps: usize = store
                .shards
                .iter()
                .map(|s| s.0.lock().bound.as_ref().map_or(0, |b| b.cap))
                .sum();
            assert_eq!(caps, max, "max {max} shards {shards}");
            assert!(
                store
                    .shards
                    .iter()
                    .all(|s| s.0.lock().bound.as_ref().unwrap().cap >= 1)
            );
        }
        // The default shard count is lowered to keep ≥ 1,024 records per shard.
        assert_eq!(
            MemoryStore::builder()
                .max_entries(100)
                .build()
                .shard_count(),
            1
        );
        let big = MemoryStore::builder().max_entries(1 << 20).build();
        assert_eq!(big.shard_count(), MemoryStore::new().shard_count());
        assert_eq!(
            MemoryStore::builder().max_entries(0).build().max_entries(),
            Some(1)
        );
    }

    #[test]
    fn evicts_the_settled_record_that_expires_first() {
        let (store, clock) = bounded(3, 1);
        let (a, b, c) = (id("a"), id("b"), id("c"));
        let ta = claim(&store, &a, HOUR).unwrap();
        let tb = claim(&store, &b, HOUR).unwrap();
        let tc = claim(&store, &c, HOUR).unwrap();
        // Settled in the order a, b, c but b expires first, then c, then a.
        done(&store, &a, ta, 3 * HOUR);
        clock.advance(Duration::from_millis(10));
        done(&store, &b, tb, HOUR);
        done(&store, &c, tc, 2 * HOUR);
        claim(&store, &id("d"), HOUR).unwrap();
        assert!(store.get_sync(&b).is_none(), "b expires first: evicted");
        assert!(store.get_sync(&a).is_some() && store.get_sync(&c).is_some());
        claim(&store, &id("e"), HOUR).unwrap();
        assert!(store.get_sync(&c).is_none(), "then c");
        assert!(store.get_sync(&a).is_some());
        assert_eq!((store.entry_count(), store.evictions()), (3, 2));
    }

    #[test]
    fn never_evicts_in_progress_and_refuses_when_full_of_them() {
        let (store, _) = bounded(4, 1);
        let tokens: Vec<_> = (0..4)
            .map(|i| claim(&store, &id(i), HOUR).unwrap())
            .collect();
        let err = claim(&store, &id("new"), HOUR).unwrap_err();
        assert!(
            matches!(err, StoreError::Capacity { max_entries: 4 }),
            "{err}"
        );
        assert!(err.is_transient());
        assert_eq!((store.entry_count(), store.evictions()), (4, 0));
        // A claim of an existing key needs no room: it sees the record.
        assert!(matches!(
            store.claim_sync(&Claim::new(id(2))).unwrap(),
            ClaimOutcome::Existing(_)
        ));
        // Once one settles, a new key takes its place; the owners are untouched.
        done(&store, &id(1), tokens[1], HOUR);
        claim(&store, &id("new"), HOUR).unwrap();
        assert!(store.get_sync(&id(1)).is_none());
        for i in [0, 2, 3] {
            done(&store, &id(i), tokens[i], HOUR);
        }
        assert_eq!(store.evictions(), 1);
    }

    #[test]
    fn a_full_shard_collects_abandoned_records_past_their_ttl() {
        let (store, clock) = bounded(2, 1);
        let short = Duration::from_secs(1);
        for k in ["a", "b"] {
            store
                .claim_sync(&Claim::new(id(k)).lease(short).ttl(short))
                .unwrap();
        }
        assert!(matches!(
            claim(&store, &id("c"), HOUR),
            Err(StoreError::Capacity { .. })
        ));
        // Lease (1 s) + ttl (1 s) passed: abandoned and expired, so collectable.
        clock.advance(Duration::from_secs(3));
        claim(&store, &id("c"), HOUR).unwrap();
        assert_eq!((store.entry_count(), store.evictions()), (1, 0));
    }

    #[test]
    fn the_eviction_heap_stays_proportional_to_the_bound() {
        // Records that leave without eviction (expiry, purge) leave stale heap items;
        // compaction keeps them within 2 × cap + 64.
        let (store, clock) = bounded(50, 1);
        for round in 0..100 {
            for i in 0..40 {
                let k = id(format!("{round}-{i}"));
                let t = claim(&store, &k, Duration::from_millis(5)).unwrap();
                done(&store, &k, t, Duration::from_millis(5));
                if i % 2 == 0 {
                    store.purge_sync(&k);
                }
            }
            clock.advance(Duration::from_millis(10));
            assert!(heap_len(&store) <= 2 * 50 + 64 + 1, "{}", heap_len(&store));
        }
        assert_eq!(store.evictions(), 0, "only expired records were removed");
    }

    #[test]
    fn an_unbounded_store_keeps_no_eviction_state() {
        let store = MemoryStore::new();
        for i in 0..100 {
            let t = claim(&store, &id(i), HOUR).unwrap();
            done(&store, &id(i), t, HOUR);
        }
        assert_eq!(heap_len(&store), 0);
        assert_eq!((store.entry_count(), store.max_entries()), (100, None));
    }
}
