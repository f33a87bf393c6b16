//! Redis store (feature `redis`): many machines share one Redis (or Redis Cluster).
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use idemp::store::{Claim, ClaimOutcome, RecordKey, Store, redis::RedisStore};
//!
//! let store = RedisStore::connect("redis://127.0.0.1:6379/0?prefix=billing").await?;
//! if let ClaimOutcome::Acquired { token, .. } =
//!     store.claim(&Claim::new(RecordKey::new("charge", "order-42"))).await?
//! {
//!     // … the side effect …
//!     # let _ = token;
//! }
//! # Ok(()) }
//! ```
//!
//! URLs: `redis://[USER:PASS@]HOST[:PORT][/DB][?prefix=P]` (a [`ConnectionManager`]
//! that reconnects) and `redis+cluster://HOST:PORT,HOST:PORT[?prefix=P]` (a cluster
//! connection that follows the slot map). The prefix (default `idemp`) lets many
//! applications share one server.
//!
//! # Design
//!
//! * **One round trip per operation.** `claim`, `complete`/`fail`, `release`, `renew`,
//!   `purge` and `get` are each one Lua script (`EVALSHA`, loaded on first use: a
//!   `NOSCRIPT` reply loads it and retries once). Each is atomic on the server, so the
//!   compare-and-set on the fencing token needs no `WATCH` and no lock.
//! * **One hash per record** (fields `state`, `token`, `id` (scope and key), `fp`,
//!   `attempts`, `created`, `since` (lease start), `lease`, `ttl`, `settled`, `enc`
//!   (codec and compression), `outcome`, `n` (the owner's claim nonce), `pv` (the
//!   token taken over), `w` (waited for); see `lua/prelude.lua`) under `<prefix>:<scope digest>:{<record digest>}`. Scope
//!   and key never appear in the key name, so no byte of theirs can break the Cluster
//!   hash tag; the scripts compare the stored scope and key so a digest collision is
//!   an error, never a shared record (see `layout`).
//! * **One clock.** Every script reads the server's `TIME`, so leases and expiries do
//!   not depend on the workers' clocks (a worker whose clock is off by a minute still
//!   sees the same leases). [`RedisStore::with_clock`] replaces it by a client clock
//!   for tests.
//! * **Fencing tokens** are a hybrid logical clock in microseconds:
//!   `token = max(previous + 1, now_us)`. `release` and `purge` leave a tombstone
//!   holding the last token until the clock has passed it (plus a guard of a few
//!   seconds), and settled records are kept at least as long, so a token is never
//!   issued twice for a key even though the record itself is gone. A key would need
//!   more than one claim per microsecond to run ahead of the clock, so tokens do not
//!   depend on data a restart or a failover can lose: after one that lost every
//!   record, new tokens still exceed every token issued before and a stale owner is
//!   fenced (as long as the server's clock does not go back). Tokens therefore look
//!   like timestamps in microseconds; they only ever grow. (Versions that issued
//!   millisecond tokens let a hot key run them seconds ahead of the clock; their
//!   records are still read, and the next token of such a key jumps to the
//!   microsecond clock.)
//! * **Expiry is native** (`PEXPIRE`): a settled record lives `ttl` after settling;
//!   an in-progress record lives `lease + ttl` after its last claim or renewal, i.e.
//!   until `lease_until + ttl` as in every store. An abandoned in-progress record thus
//!   stays visible as *ambiguous* for `ttl` after its lease passes, however short the
//!   ttl is next to the lease (so a takeover, or `on_ambiguous`, can see that a
//!   previous attempt may have run, and its owner may still settle it), and is then
//!   reclaimed by Redis like a settled record nobody asks about. Scripts also compare `expires` with the clock, so a record is
//!   invisible from the exact millisecond it expires. [`StoreAdmin::sweep`] returns 0.
//! * **Notifications**: [`Store::wait`] marks the in-progress record as waited for
//!   (field `w`, in the same script that reads it); settle/release/purge of a marked
//!   record publish its digest on `<prefix>:settled` (unmarked ones skip the
//!   `PUBLISH`: most executions have no waiter). One shared subscriber connection per
//!   store fans the messages out; polling is the fallback (see `notify`).
//! * **`list` and `stats`** are administrative: they `SCAN` the prefix (every master
//!   in a cluster) and read each record, `O(records)` per call; `list` sorts what it
//!   found by (scope, key) and returns the page after `after`.
//!
//! # Failure policy
//!
//! The store fails closed: a connection error, timeout, `LOADING`, `OOM`, `MISCONF`,
//! `READONLY`, `CLUSTERDOWN`… is returned as [`StoreError::Unavailable`] with the cause,
//! and nothing is assumed about the operation. Running the operation anyway (fail
//! open) is a caller policy: the guard and the HTTP layer decide it, knowingly giving
//! up at-most-once while Redis is down. A write whose reply was lost may have been
//! applied: a retried `claim` with the same [`Claim::nonce`] finds the caller's own
//! live claim (field `n`) and gets the same acquisition back (same token, attempt and
//! takeover, the lease renewed), so the key is not blocked until the lease passes
//! (without a nonce it is: safe, never a double run), and a retried
//! `complete`/`fail` gets [`StoreError::Fenced`] with `current` equal to the caller's
//! own token (a settled record has no owner): only that token's owner can have settled
//! it, so the caller knows its settle landed.
//!
//! # Durability
//!
//! See [`DurabilityReport`]: `appendonly yes` with `appendfsync everysec|always`, and
//! `maxmemory-policy noeviction`, are checked (and warned about) on connect, and so is
//! a primary with replicas but no [`RedisOptions::wait_replicas`] (a failover may
//! lose acknowledged writes; see [`replicas`]).

mod connect;
mod decode;
mod durability;
mod errors;
mod layout;
mod notify;
mod options;
pub mod replicas;
mod scripts;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use ::redis::{Cmd, ErrorKind, RedisError, Script, ServerErrorKind, Value};

use super::record::{self, RawRecord, corrupt, decode_attempts};
use super::*;
use crate::clock::{Millis, SharedClock};

use connect::*;
use decode::*;
pub use durability::DurabilityReport;
use errors::*;
pub use layout::DEFAULT_PREFIX;
use layout::Layout;
#[cfg(test)]
use layout::{digest_of_key, record_digest};
use notify::Notifier;
pub use options::RedisOptions;
use options::check_prefix;
pub use replicas::{ReplicationInfo, WaitReplicas};
use scripts::*;

/// Tokens stay unique while the server clock steps back by less than this (real clock).
const GUARD_MS: u64 = 5_000;
/// With a client clock (tests), which need not follow real time, keep the token
/// counter of gone records much longer.
const CLIENT_CLOCK_GUARD_MS: u64 = 3_600_000;
/// Poll interval of `wait` while notifications flow (a safety net only).
const NOTIFIED_POLL: Duration = Duration::from_millis(500);
/// `SCAN … COUNT`: `list` and `stats` walk the whole database (every prefix), so large
/// steps save round trips.
const SCAN_COUNT: usize = 5_000;
/// Keys fetched per batch by `list` and `stats`.
const BATCH: usize = 256;

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The Redis store. See the [module docs](self).
pub struct RedisStore {
    conn: Conn,
    layout: Layout,
    clock: Option<SharedClock>,
    notifier: Arc<Notifier>,
    /// Clients for the notification subscriber (the seed nodes in a cluster).
    pubsub_clients: Vec<::redis::Client>,
    /// The server, for messages (password masked).
    server: String,
    /// `WAIT` for replicas after each write, if set.
    wait_replicas: Option<WaitReplicas>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("server", &self.server)
            .field("prefix", &self.layout.prefix())
            .field("cluster", &matches!(self.conn, Conn::Cluster(_)))
            .field("client_clock", &self.clock.is_some())
            .field("wait_replicas", &self.wait_replicas)
            .finish()
    }
}

impl RedisStore {
    /// Uses `clock` instead of the server's `TIME` (for tests that move time by hand).
    ///
    /// Every worker sharing the records must then use the same clock. Native expiry
    /// still runs on real time, so records stay physically for at least an hour after
    /// their last change (they are invisible once logically expired).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        self.layout.prefix()
    }

    /// The Redis key of a record (for inspection with `redis-cli`).
    pub fn record_key(&self, id: &RecordKey) -> String {
        self.layout.record_key(id)
    }

    /// The pub/sub channel on which settled, released and purged records are announced.
    pub fn channel(&self) -> &str {
        self.layout.channel()
    }

    /// Reads the server's durability settings (`CONFIG GET`); see [`DurabilityReport`].
    /// A server that refuses `CONFIG` yields a report with `unreadable` set.
    pub async fn durability(&self) -> StoreResult<DurabilityReport> {
        let mut values = Vec::new();
        for name in ["appendonly", "appendfsync", "maxmemory-policy"] {
            let mut cmd = ::redis::cmd("CONFIG");
            cmd.arg("GET").arg(name);
            match self.query_any::<HashMap<String, String>>(cmd).await {
                Ok(mut m) => values.push(m.remove(name)),
                Err(e) if is_unavailable(&e) => return Err(unavailable(&self.server, &e)),
                Err(e) => return Ok(DurabilityReport::unreadable(e.to_string())),
            }
        }
        let mut it = values.into_iter();
        Ok(DurabilityReport::from_config(
            it.next().flatten(),
            it.next().flatten(),
            it.next().flatten(),
        )
        .with_replication(self.replication_info().await, self.wait_replicas))
    }

    /// Deletes every record and tombstone under this store's prefix (for tests and
    /// decommissioning). Returns how many keys were removed. Owners of deleted
    /// in-progress records are fenced; tokens keep growing with the clock.
    pub async fn clear(&self) -> StoreResult<u64> {
        let keys = self.scan(&self.layout.match_pattern(None)).await?;
        let mut removed = 0u64;
        for chunk in keys.chunks(BATCH) {
            let futs = chunk.iter().map(|k| {
                let mut cmd = ::redis::cmd("UNLINK");
                cmd.arg(k);
                self.query::<u64>(cmd)
            });
            for n in futures_util::future::try_join_all(futs).await? {
                removed += n;
            }
        }
        Ok(removed)
    }

    fn now_arg(&self) -> String {
        match &self.clock {
            Some(c) => c.now_ms().to_string(),
            None => String::new(),
        }
    }

    fn guard(&self) -> u64 {
        if self.clock.is_some() {
            CLIENT_CLOCK_GUARD_MS
        } else {
            GUARD_MS
        }
    }

    /// Runs `EVALSHA` of `script` on one key with `args`; loads the script and retries
    /// once when the server does not know it (`NOSCRIPT`: first use, restart, flush).
    async fn eval(&self, script: &Script, cmd: &Cmd, id: &RecordKey) -> StoreResult<Value> {
        let mut result = self.send(cmd).await;
        if matches!(&result, Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)) {
            let loaded = match &self.conn {
                Conn::Single(c) => script.load_async(&mut c.clone()).await,
                Conn::Cluster(c) => script.load_async(&mut c.clone()).await,
            };
            result = match loaded {
                Ok(_) => self.send(cmd).await,
                Err(e) => Err(e),
            };
        }
        result.map_err(|e| self.map_err(e, Some(id)))
    }

    async fn send(&self, cmd: &Cmd) -> Result<Value, RedisError> {
        match &self.conn {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }

    /// A keyed command (routed by its key in a cluster).
    async fn query<T: ::redis::FromRedisValue>(&self, cmd: Cmd) -> StoreResult<T> {
        let result = match &self.conn {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        };
        result.map_err(|e| self.map_err(e, None))
    }

    /// A keyless command, sent to any one node.
    async fn query_any<T: ::redis::FromRedisValue>(&self, cmd: Cmd) -> Result<T, RedisError> {
        match &self.conn {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => {
                let v = c
                    .clone()
                    .route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random))
                    .await?;
                ::redis::from_redis_value(v).map_err(RedisError::from)
            }
        }
    }

    fn map_err(&self, e: RedisError, id: Option<&RecordKey>) -> StoreError {
        if e.code() == Some("IDEMP_COLLISION") {
            return match id {
                Some(id) => StoreError::Corrupt {
                    id: id.clone(),
                    reason: e.to_string(),
                },
                None => StoreError::backend(e),
            };
        }
        if e.kind() == ErrorKind::Server(ServerErrorKind::ResponseError)
            && e.to_string().contains("WRONGTYPE")
            || e.code() == Some("WRONGTYPE")
        {
            return StoreError::Incompatible(format!(
                "a key under prefix `{}` is not an idemp record: {e}",
                self.layout.prefix()
            ));
        }
        if is_unavailable(&e) {
            return unavailable(&self.server, &e);
        }
        StoreError::backend(e)
    }

    /// The current time of the store's clock.
    async fn now(&self) -> StoreResult<Millis> {
        if let Some(c) = &self.clock {
            return Ok(c.now_ms());
        }
        let (secs, micros): (u64, u64) = self
            .query_any(::redis::cmd("TIME"))
            .await
            .map_err(|e| self.map_err(e, None))?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// Every key matching `pattern` (deduplicated; `SCAN` may repeat keys).
    async fn scan(&self, pattern: &str) -> StoreResult<Vec<Vec<u8>>> {
        let mut keys = Vec::new();
        match &self.conn {
            Conn::Single(c) => {
                let mut c = c.clone();
                let mut cursor = 0u64;
                loop {
                    let (next, batch): (u64, Vec<Vec<u8>>) = ::redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(SCAN_COUNT)
                        .query_async(&mut c)
                        .await
                        .map_err(|e| self.map_err(e, None))?;
                    keys.extend(batch);
                    cursor = next;
                    if cursor == 0 {
                        break;
                    }
                }
            }
            Conn::Cluster(c) => {
                let mut c = c.clone();
                for (host, port) in self.cluster_masters().await? {
                    let mut cursor = 0u64;
                    loop {
                        let mut cmd = ::redis::cmd("SCAN");
                        cmd.arg(cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(SCAN_COUNT);
                        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port,
                        });
                        let v = c
                            .route_command(cmd, routing)
                            .await
                            .map_err(|e| self.map_err(e, None))?;
                        let (next, batch): (u64, Vec<Vec<u8>>) = ::redis::from_redis_value(v)
                            .map_err(|e| self.map_err(RedisError::from(e), None))?;
                        keys.extend(batch);
                        cursor = next;
                        if cursor == 0 {
                            break;
                        }
                    }
                }
            }
        }
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }

    /// The (host, port) of every master of the cluster, from `CLUSTER NODES`.
    async fn cluster_masters(&self) -> StoreResult<Vec<(String, u16)>> {
        let mut cmd = ::redis::cmd("CLUSTER");
        cmd.arg("NODES");
        let text: String = self
            .query_any(cmd)
            .await
            .map_err(|e| self.map_err(e, None))?;
        Ok(parse_cluster_masters(&text))
    }

    /// Reads records' keys: returns, for each live one, its id and Redis key.
    async fn live_ids(
        &self,
        keys: &[Vec<u8>],
        now: Millis,
    ) -> StoreResult<Vec<(RecordKey, Vec<u8>)>> {
        let mut out = Vec::new();
        for chunk in keys.chunks(BATCH) {
            let futs = chunk.iter().map(|k| {
                let mut cmd = ::redis::cmd("HMGET");
                cmd.arg(k).arg("id").arg("state").arg("settled").arg("ttl");
                self.query::<(Option<String>, Option<String>, Option<u64>, Option<u64>)>(cmd)
            });
            let rows = futures_util::future::try_join_all(futs).await?;
            for (k, (id, state, settled, ttl)) in chunk.iter().zip(rows) {
                let Some(id) = id.as_deref().and_then(decode_id) else {
                    continue;
                };
                if is_live(state.as_deref(), settled, ttl, now) {
                    out.push((id, k.clone()));
                }
            }
        }
        Ok(out)
    }

    /// Reads a record; with `watch`, an in-progress record is marked as waited for, so
    /// that its settle, release or purge publishes a notification (they skip the
    /// `PUBLISH` when nobody waits).
    async fn get_by_key(
        &self,
        rkey: &[u8],
        id: &RecordKey,
        watch: bool,
    ) -> StoreResult<Option<Record>> {
        let v = self
            .eval(
                &SCRIPTS.get,
                evalsha(&SCRIPTS.get, rkey)
                    .arg(self.now_arg())
                    .arg(if watch { "1" } else { "0" }),
                id,
            )
            .await?;
        let items = array(v, id)?;
        if int_at(&items, 0, id)? == 0 {
            return Ok(None);
        }
        // {2, now, fields..., id}
        let stored = items.get(13).and_then(as_string);
        if stored.as_deref().and_then(decode_id).as_ref() != Some(id) {
            return Err(StoreError::Corrupt {
                id: id.clone(),
                reason: format!(
                    "key {} holds another record ({stored:?})",
                    String::from_utf8_lossy(rkey)
                ),
            });
        }
        parse_record(id, &items[2..13]).map(Some)
    }

    fn fenced(&self, id: &RecordKey, token: Token, items: &[Value]) -> StoreError {
        record::fenced(id, token, items.get(1).and_then(as_u64))
    }

    async fn settle(
        &self,
        id: &RecordKey,
        token: Token,
        state: &str,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        LIMITS.check_id(id)?;
        LIMITS.check_outcome(&outcome)?;
        let key = self.layout.record_key(id);
        let v = self
            .eval_replicated(
                &SCRIPTS.settle,
                evalsha(&SCRIPTS.settle, key.as_bytes())
                    .arg(token)
                    .arg(state)
                    .arg(&outcome.bytes)
                    .arg(format!(
                        "{}:{}",
                        outcome.codec.as_u8(),
                        outcome.compression.as_u8()
                    ))
                    .arg(ms(ttl))
                    .arg(self.now_arg())
                    .arg(ms(ttl).max(self.guard()))
                    .arg(self.guard()),
                id,
            )
            .await?;
        self.settled(v, id, token)
    }

    /// The reply of `settle` and `release`: 1, or `{0[, current]}` when fenced.
    fn settled(&self, v: Value, id: &RecordKey, token: Token) -> StoreResult<()> {
        if as_u64(&v) == Some(1) {
            return Ok(());
        }
        let items = array(v, id)?;
        Err(self.fenced(id, token, &items))
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn claim(&self, claim: &Claim) -> StoreResult<ClaimOutcome> {
        let id = &claim.id;
        LIMITS.check_id(id)?;
        let key = self.layout.record_key(id);
        let fp: &[u8] = match &claim.fingerprint {
            Some(f) => &f.0,
            None => &[],
        };
        let v = self
            .eval_replicated(
                &SCRIPTS.claim,
                evalsha(&SCRIPTS.claim, key.as_bytes())
                    .arg(encode_id(id))
                    .arg(fp)
                    .arg(ms(claim.lease))
                    .arg(ms(claim.ttl))
                    .arg(if claim.take_over_expired { "1" } else { "0" })
                    .arg(self.now_arg())
                    .arg(
                        ms(claim.lease)
                            .saturating_add(ms(claim.ttl))
                            .max(self.guard()),
                    )
                    .arg(self.guard())
                    .arg(claim.nonce.map(|n| n.to_string()).unwrap_or_default()),
                id,
            )
            .await?;
        if let Some(token) = as_u64(&v) {
            // a fresh claim: the token is the server's clock
            return Ok(ClaimOutcome::Acquired {
                token,
                // A fresh claim's token is the clock in microseconds.
                lease_until: (token / 1000).saturating_add(ms(claim.lease)),
                takeover: None,
                attempt: 1,
            });
        }
        let items = array(v, id)?;
        match int_at(&items, 0, id)? {
            1 => {
                let prev = int_at(&items, 3, id)?;
                Ok(ClaimOutcome::Acquired {
                    token: int_at(&items, 1, id)?,
                    lease_until: int_at(&items, 2, id)?,
                    takeover: (prev != 0).then_some(prev),
                    attempt: decode_attempts(items.get(4).and_then(as_i64).unwrap_or(-1))
                        .map_err(|w| corrupt(id, format!("field `attempts`: {w}")))?,
                })
            }
            2 => Ok(ClaimOutcome::Existing(parse_record(id, &items[2..])?)),
            3 => Ok(ClaimOutcome::Mismatch(parse_record(id, &items[2..])?)),
            other => Err(corrupt(id, format!("unknown claim reply {other}"))),
        }
    }

    async fn complete(
        &self,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.settle(id, token, "c", outcome, ttl).await
    }

    async fn fail(
        &self,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.settle(id, token, "f", outcome, ttl).await
    }

    async fn release(&self, id: &RecordKey, token: Token) -> StoreResult<()> {
        LIMITS.check_id(id)?;
        let key = self.layout.record_key(id);
        let v = self
            .eval_replicated(
                &SCRIPTS.release,
                evalsha(&SCRIPTS.release, key.as_bytes())
                    .arg(token)
                    .arg(self.now_arg())
                    .arg(self.guard()),
                id,
            )
            .await?;
        self.settled(v, id, token)
    }

    async fn renew(&self, id: &RecordKey, token: Token, lease: Duration) -> StoreResult<Millis> {
        LIMITS.check_id(id)?;
        let key = self.layout.record_key(id);
        let v = self
            .eval_replicated(
                &SCRIPTS.renew,
                evalsha(&SCRIPTS.renew, key.as_bytes())
                    .arg(token)
                    .arg(ms(lease))
                    .arg(self.now_arg())
                    .arg(self.guard()),
                id,
            )
            .await?;
        let items = array(v, id)?;
        match int_at(&items, 0, id)? {
            1 => int_at(&items, 1, id),
            _ => Err(self.fenced(id, token, &items)),
        }
    }

    async fn get(&self, id: &RecordKey) -> StoreResult<Option<Record>> {
        let key = self.layout.record_key(id);
        self.get_by_key(key.as_bytes(), id, false).await
    }

    async fn wait(&self, id: &RecordKey, timeout: Duration) -> StoreResult<Option<Record>> {
        let deadline = crate::store::deadline_after(timeout);
        let (key, digest) = self.layout.locate(id);
        let registration = self.notifier.register(&digest);
        self.notifier
            .ensure_started(self.pubsub_clients.clone(), self.layout.channel());
        let mut fast = Duration::from_millis(2);
        loop {
            // Enabled before the read: a notification between the read and the sleep
            // is not lost.
            let notified = registration.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let rec = self.get_by_key(key.as_bytes(), id, true).await?;
            if !matches!(&rec, Some(r) if !r.state.is_settled()) {
                return Ok(rec);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(rec);
            }
            let poll = if self.notifier.is_healthy() {
                NOTIFIED_POLL
            } else {
                let d = fast;
                fast = (fast * 2).min(Duration::from_millis(100));
                d
            };
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(poll.min(deadline - now)) => {}
            }
        }
    }
}

#[async_trait]
impl StoreAdmin for RedisStore {
    async fn list(&self, query: &ListQuery) -> StoreResult<Page> {
        let limit = query.effective_limit();
        let keys = self
            .scan(&self.layout.match_pattern(query.scope.as_deref()))
            .await?;
        let now = self.now().await?;
        let mut found: Vec<(RecordKey, Vec<u8>)> = self
            .live_ids(&keys, now)
            .await?
            .into_iter()
            .filter(|(id, _)| {
                query.scope.as_ref().is_none_or(|s| &id.scope == s)
                    && query
                        .key_prefix
                        .as_ref()
                        .is_none_or(|p| id.key.starts_with(p.as_str()))
                    && query.after.as_ref().is_none_or(|a| id > a)
            })
            .collect();
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let more = found.len() > limit;
        found.truncate(limit);
        let next = if more {
            found.last().map(|(id, _)| id.clone())
        } else {
            None
        };
        let futs = found.iter().map(|(id, k)| self.get_by_key(k, id, false));
        let records = futures_util::future::try_join_all(futs)
            .await?
            .into_iter()
            .flatten()
            .collect();
        Ok(Page { records, next })
    }
    async fn purge(&self, id: &RecordKey) -> StoreResult<bool> {
        let key = self.layout.record_key(id);
        let v = self
            .eval(
                &SCRIPTS.purge,
                evalsha(&SCRIPTS.purge, key.as_bytes())
                    .arg(self.now_arg())
                    .arg(self.guard()),
                id,
            )
            .await?;
        Ok(as_u64(&v) == Some(1))
    }
    /// Redis expires records natively: always 0.
    async fn sweep(&self) -> StoreResult<u64> {
        Ok(0)
    }
    async fn stats(&self) -> StoreResult<Stats> {
        let keys = self.scan(&self.layout.match_pattern(None)).await?;
        let now = self.now().await?;
        let mut stats = Stats {
            outcome_bytes: Some(0),
            ..Stats::default()
        };
        let mut bytes = 0u64;
        for chunk in keys.chunks(BATCH) {
            let futs = chunk.iter().map(|k| async move {
                let mut cmd = ::redis::cmd("HMGET");
                cmd.arg(k)
                    .arg("state")
                    .arg("settled")
                    .arg("ttl")
                    .arg("token")
                    .arg("created")
                    .arg("since")
                    .arg("lease");
                let fields: Fields7 = self.query(cmd).await?;
                let mut len = ::redis::cmd("HSTRLEN");
                len.arg(k).arg("outcome");
                let len: u64 = self.query(len).await?;
                Ok::<_, StoreError>((fields, len))
            });
            for ((state, settled, ttl, token, created, since, lease), len) in
                futures_util::future::try_join_all(futs).await?
            {
                if !is_live(state.as_deref(), settled, ttl, now) {
                    continue;
                }
                let lease_until = since
                    .or(created)
                    .or(token)
                    .unwrap_or(0)
                    .saturating_add(lease.unwrap_or(0));
                match state.as_deref() {
                    Some("p") if lease_until <= now => stats.ambiguous += 1,
                    Some("p") => stats.in_progress += 1,
                    Some("c") => stats.completed += 1,
                    Some("f") => stats.failed += 1,
                    _ => {}
                }
                bytes += len;
            }
        }
        stats.outcome_bytes = Some(bytes);
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_nodes() {
        let text = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002,host2 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383
e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
dead 127.0.0.1:30009@31009 master,fail - 0 0 1 disconnected
";
        let mut m = parse_cluster_masters(text);
        m.sort();
        assert_eq!(
            m,
            vec![
                ("127.0.0.1".to_string(), 30001),
                ("127.0.0.1".to_string(), 30002),
                ("127.0.0.1".to_string(), 30003)
            ]
        );
    }

    #[test]
    fn scripts_carry_the_prelude() {
        for s in [&SCRIPTS.claim, &SCRIPTS.settle, &SCRIPTS.get] {
            assert_eq!(s.get_hash().len(), 40);
        }
        assert_ne!(SCRIPTS.claim.get_hash(), SCRIPTS.get.get_hash());
    }

    #[test]
    fn digest_is_the_tag() {
        let l = Layout::new("p");
        let id = RecordKey::new("s", "k");
        let k = l.record_key(&id);
        assert_eq!(
            digest_of_key(k.as_bytes()),
            Some(record_digest(&id).as_str())
        );
    }
}
