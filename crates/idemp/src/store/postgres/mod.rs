//! PostgreSQL store (feature `postgres`): many machines, one round trip per operation,
//! and completion inside the caller's own transaction.
//!
//! URL: `postgres://USER@HOST[:PORT]/DB[?schema=S][&pool_size=N]` (other query
//! parameters go to the client, e.g. `application_name`, `connect_timeout`). The
//! tables live in schema `S` (default `idemp`), created and migrated on connect under
//! an advisory lock; a schema written by a newer idemp is refused with
//! [`StoreError::Incompatible`].
//!
//! # Design
//!
//! * **One statement per operation**, prepared once per pooled connection. `claim` is
//!   an `INSERT … ON CONFLICT DO UPDATE … WHERE <dead row or expired lease>` combined
//!   in CTEs with a read of the existing row, so it creates, takes over or reports in
//!   one round trip. A duplicate claim of a settled or live record is a pure read.
//! * **Fencing**: every token comes from one `nextval` of a schema-wide sequence, drawn
//!   after the row lock for takeovers; `release`/`purge` leave a tombstone row (swept
//!   later) so a re-claim also draws its token under the row lock. Tokens therefore
//!   strictly increase per key. `complete`/`fail`/`release`/`renew` are
//!   `UPDATE … WHERE token = $t AND state = in_progress`, and report the current token
//!   in the same statement when they are fenced (re-read by a second statement only
//!   when a takeover committed during the first, so a fenced owner never sees its own
//!   token as the current one).
//! * **Time** is the server's `clock_timestamp()`, so worker clock offsets don't matter
//!   ([`PostgresOptions::clock`] overrides it, for tests).
//! * **Expiry**: expired rows are invisible at once; a background sweeper deletes them,
//!   walking the table in slices of pages with TID range scans
//!   ([`PostgresOptions::sweep_interval`]). There is deliberately no index on the expiry
//!   instant: every claim and completion would insert at its right-most page (expiry
//!   instants only grow) and completions could not be HOT updates; dropping it gained
//!   10-20 % of settled executions per second in pgbench runs at 16 clients.
//! * **`wait`**: a waiter never writes the row (so it neither queues behind an owner's
//!   row lock nor breaks an owner's REPEATABLE READ / SERIALIZABLE transaction): it
//!   holds a shared advisory lock on a hash of the record's name, on the store's
//!   LISTEN connection, from before its first read until it returns. Settling,
//!   releasing or purging a row tries the exclusive lock on that hash in the same
//!   statement and sends a `NOTIFY` when a waiter holds it (whoever owns the row by
//!   then: a release and re-claim does not lose the waiter). One LISTEN connection per
//!   store fans notifications out to in-process waiters; they re-check every
//!   [`PostgresOptions::wait_recheck`], poll while the listener is down, ride out
//!   transient errors, and return by their deadline whatever the server does (the
//!   last record seen, or `Unavailable` when none could be read). (Postgres serialises
//!   the commits of notifying transactions on a database-wide lock: in a pgbench run at
//!   16 clients on 2 cores an UPDATE that also notifies ran 5-13x slower, hence the
//!   notification only when someone waits.)
//! * **Exactly once for database effects**: [`PostgresStore::complete_in`] settles the
//!   record inside the caller's transaction, so the effect and its completion commit
//!   (or roll back) together.
//! * **Failures are closed**: connection errors are [`StoreError::Unavailable`] with
//!   their cause; a write whose reply was lost is never retried blindly. A claim
//!   repeated with the same [`Claim::nonce`] (column `nonce`, schema version 3) while
//!   its claimant still owns the row gets the same acquisition back (same token,
//!   attempts and `prev_token`, lease renewed), so a claim whose reply was lost does
//!   not block its key until the lease passes; a claim without a nonce sees the
//!   record and its lease.
//!
//! ```no_run
//! # async fn demo() -> Result<(), idemp::store::StoreError> {
//! use idemp::store::{Claim, ClaimOutcome, Codec, Outcome, RecordKey, Store};
//! use idemp::store::postgres::{PostgresOptions, PostgresStore};
//!
//! let store = PostgresStore::connect_with(
//!     "postgres://postgres@127.0.0.1:5432/test",
//!     PostgresOptions::default().schema("billing").pool_size(8),
//! )
//! .await?;
//! let id = RecordKey::new("charge", "order-42");
//! if let ClaimOutcome::Acquired { token, .. } = store.claim(&Claim::new(id.clone())).await? {
//!     // … run the side effect, then:
//!     let outcome = Outcome::new(Codec::Json, br#"{"ok":true}"#.to_vec());
//!     store.complete(&id, token, outcome, std::time::Duration::from_secs(3600)).await?;
//! }
//! # Ok(()) }
//! ```

mod connect;
mod decode;
mod errors;
mod listen;
mod migrations;
mod options;
mod sql;
mod sweep;

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio::task::JoinHandle;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{NoTls, Row};

use super::record::{LIMITS, RawRecord, corrupt, decode_attempts, decode_ms, decode_token, fenced};
use super::{
    Claim, ClaimOutcome, ListQuery, Outcome, Page, Record, RecordKey, Stats, Store, StoreAdmin,
    StoreError, StoreResult, StoreUrl, Token,
};
use crate::clock::{Millis, SharedClock};
use decode::*;
use errors::*;
use listen::Waiters;
use migrations::*;
pub use options::PostgresOptions;
use options::check_schema;
use sql::{Sql, col, state};

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i32 = sql::MIGRATIONS.len() as i32;

/// Longest `scope` + `key` accepted, in bytes: the shared [`LIMITS`] (a B-tree index
/// entry must fit in a page).
pub const MAX_KEY_BYTES: usize = LIMITS.max_scope_bytes + LIMITS.max_key_bytes;

/// How often `claim` re-runs after losing a race to a concurrent commit it could not
/// see yet (rare; each retry takes a fresh snapshot).
const CLAIM_ROUNDS: usize = 16;

/// A [`Store`] in PostgreSQL. Cheap to clone (clones share the pool and background
/// tasks, which stop when the last clone is dropped).
#[derive(Clone)]
pub struct PostgresStore {
    core: Arc<Core>,
    tasks: Arc<Tasks>,
}

struct Core {
    pool: Pool,
    sql: Sql,
    schema: String,
    channel: String,
    pg_config: tokio_postgres::Config,
    opts: PostgresOptions,
    waiters: Arc<Waiters>,
}

/// Background tasks, aborted when the last store clone goes.
#[derive(Default)]
struct Tasks {
    sweeper: Option<JoinHandle<()>>,
    listener: OnceLock<JoinHandle<()>>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        if let Some(t) = &self.sweeper {
            t.abort();
        }
        if let Some(t) = self.listener.get() {
            t.abort();
        }
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.core.pool.status();
        f.debug_struct("PostgresStore")
            .field("schema", &self.core.schema)
            .field("pool_size", &status.size)
            .field("pool_max", &status.max_size)
            .field("listening", &self.core.waiters.is_up())
            .finish()
    }
}

impl PostgresStore {
    /// The connection pool (for your own transactions, e.g. with
    /// [`complete_in`](Self::complete_in)).
    pub fn pool(&self) -> &Pool {
        &self.core.pool
    }

    /// The schema holding idemp's tables.
    pub fn schema(&self) -> &str {
        &self.core.schema
    }

    /// The NOTIFY channel of this store's schema.
    pub fn channel(&self) -> &str {
        &self.core.channel
    }

    /// Whether the LISTEN connection (opened by the first `wait`) is subscribed.
    pub fn is_listening(&self) -> bool {
        self.core.waiters.is_up()
    }

    /// Notifications received by the LISTEN connection so far.
    pub fn notifications_received(&self) -> u64 {
        self.core.waiters.notifications()
    }

    /// Settles the record as completed **inside the caller's transaction**: the
    /// completion commits or rolls back with the caller's own writes, so a database side
    /// effect happens exactly once. On [`StoreError::Fenced`] roll the transaction back.
    ///
    /// The transaction may come from any connection to the same database (for example
    /// `store.pool().get().await?.transaction().await?`, which derefs to
    /// `tokio_postgres::Transaction`). One round trip (an unnamed, typed statement).
    ///
    /// Waiters and duplicate claims never write the record, so they cannot make a
    /// `REPEATABLE READ` or `SERIALIZABLE` transaction fail. The owner's own lease
    /// renewals (the guard's heartbeat, every lease / 3) do write it: one committed
    /// after such a transaction took its snapshot makes this call fail with a
    /// serialization error ([`StoreError::Unavailable`], retry the transaction). Start
    /// the transaction after the work and keep it shorter than the renewal period, or
    /// use `READ COMMITTED` (the default), where renewals are harmless.
    pub async fn complete_in(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.settle_in(tx, id, token, state::COMPLETED, outcome, ttl)
            .await
    }

    /// Like [`complete_in`](Self::complete_in), settling as failed (sticky failure).
    pub async fn fail_in(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.settle_in(tx, id, token, state::FAILED, outcome, ttl)
            .await
    }

    /// Releases the key inside the caller's transaction (it may run again once the
    /// transaction commits).
    pub async fn release_in(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        id: &RecordKey,
        token: Token,
    ) -> StoreResult<()> {
        check_id(id)?;
        let now = self.core.now_param();
        let tok = token_param(token);
        let retention = ms(self.core.opts.tombstone_retention);
        let rows = tx
            .query_typed(
                &self.core.sql.release,
                &[
                    (&now, Type::INT8),
                    (&id.scope, Type::TEXT),
                    (&id.key, Type::TEXT),
                    (&tok, Type::INT8),
                    (&retention, Type::INT8),
                ],
            )
            .await
            .map_err(|e| pg_error("release", e))?;
        let cas = read_cas(id, rows.first())?;
        self.cas_result_in(tx, id, token, cas).await
    }

    async fn settle_in(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        id: &RecordKey,
        token: Token,
        st: i16,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        check_id(id)?;
        LIMITS.check_outcome(&outcome)?;
        let now = self.core.now_param();
        let tok = token_param(token);
        let codec = i16::from(outcome.codec.as_u8());
        let compression = i16::from(outcome.compression.as_u8());
        let ttl = ms(ttl);
        let rows = tx
            .query_typed(
                &self.core.sql.settle,
                &[
                    (&now, Type::INT8),
                    (&id.scope, Type::TEXT),
                    (&id.key, Type::TEXT),
                    (&tok, Type::INT8),
                    (&st, Type::INT2),
                    (&codec, Type::INT2),
                    (&compression, Type::INT2),
                    (&outcome.bytes, Type::BYTEA),
                    (&ttl, Type::INT8),
                ],
            )
            .await
            .map_err(|e| pg_error("complete", e))?;
        let cas = read_cas(id, rows.first())?;
        self.cas_result_in(tx, id, token, cas).await
    }

    async fn settle(
        &self,
        id: &RecordKey,
        token: Token,
        st: i16,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        check_id(id)?;
        LIMITS.check_outcome(&outcome)?;
        let now = self.core.now_param();
        let tok = token_param(token);
        let codec = i16::from(outcome.codec.as_u8());
        let compression = i16::from(outcome.compression.as_u8());
        let ttl = ms(ttl);
        let op = if st == state::COMPLETED {
            "complete"
        } else {
            "fail"
        };
        let rows = self
            .core
            .query(
                op,
                &self.core.sql.settle,
                &[
                    &now,
                    &id.scope,
                    &id.key,
                    &tok,
                    &st,
                    &codec,
                    &compression,
                    &outcome.bytes,
                    &ttl,
                ],
                false,
            )
            .await?;
        let cas = read_cas(id, rows.first())?;
        self.cas_result(id, token, cas).await
    }

    /// Turns a compare-and-set result into `Ok` or `Fenced`. When the statement's
    /// snapshot named the caller's own token, a takeover (or the caller's own earlier
    /// settle) committed during the statement: read the current token afresh so a
    /// fenced owner sees its successor, never itself.
    async fn cas_result(
        &self,
        id: &RecordKey,
        token: Token,
        cas: Option<Option<u64>>,
    ) -> StoreResult<()> {
        match cas {
            None => Ok(()),
            Some(current) if current == Some(token) => {
                Err(fenced(id, token, self.current_token(id).await?))
            }
            Some(current) => Err(fenced(id, token, current)),
        }
    }

    async fn current_token(&self, id: &RecordKey) -> StoreResult<Option<u64>> {
        let now = self.core.now_param();
        let rows = self
            .core
            .query(
                "read token",
                &self.core.sql.current,
                &[&now, &id.scope, &id.key],
                true,
            )
            .await?;
        rows.first()
            .map(|r| r.try_get::<_, i64>(0).map(unsigned))
            .transpose()
            .map_err(|e| corrupt(id, e))
    }

    /// [`cas_result`](Self::cas_result) inside the caller's transaction.
    async fn cas_result_in(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        id: &RecordKey,
        token: Token,
        cas: Option<Option<u64>>,
    ) -> StoreResult<()> {
        match cas {
            None => Ok(()),
            Some(current) if current == Some(token) => {
                let now = self.core.now_param();
                let rows = tx
                    .query_typed(
                        &self.core.sql.current,
                        &[
                            (&now, Type::INT8),
                            (&id.scope, Type::TEXT),
                            (&id.key, Type::TEXT),
                        ],
                    )
                    .await
                    .map_err(|e| pg_error("read token", e))?;
                let current = rows
                    .first()
                    .map(|r| r.try_get::<_, i64>(0).map(unsigned))
                    .transpose()
                    .map_err(|e| corrupt(id, e))?;
                Err(fenced(id, token, current))
            }
            Some(current) => Err(fenced(id, token, current)),
        }
    }

    fn ensure_listener(&self) {
        self.tasks.listener.get_or_init(|| {
            tokio::spawn(listen::run(
                self.core.pg_config.clone(),
                self.core.channel.clone(),
                self.core.waiters.clone(),
            ))
        });
    }
}

impl Core {
    fn now_param(&self) -> Option<i64> {
        self.opts
            .clock
            .as_ref()
            .map(|c| i64::try_from(c.now_ms()).unwrap_or(i64::MAX))
    }

    /// Runs a cached prepared statement on a pooled connection. A failure before the
    /// statement is sent (no connection, or a dead one found while preparing) is tried
    /// once more on another connection; a failure after it is sent is returned, and
    /// only `read_only` statements are then retried (a write whose reply was lost must
    /// not run twice).
    async fn query(
        &self,
        op: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        read_only: bool,
    ) -> StoreResult<Vec<Row>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let client = match self.pool.get().await {
                Ok(c) => c,
                Err(e) if attempt < 2 => {
                    tracing::debug!(error = %e, "idemp postgres: retrying pool get");
                    continue;
                }
                Err(e) => return Err(pool_error(op, e)),
            };
            let stmt = match client.prepare_cached(sql).await {
                Ok(s) => s,
                Err(e) if attempt < 2 && is_connection_error(&e) => continue,
                Err(e) => return Err(pg_error(op, e)),
            };
            match client.query(&stmt, params).await {
                Ok(rows) => return Ok(rows),
                Err(e) if read_only && attempt < 2 && is_connection_error(&e) => continue,
                Err(e) => return Err(pg_error(op, e)),
            }
        }
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn claim(&self, claim: &Claim) -> StoreResult<ClaimOutcome> {
        let id = &claim.id;
        check_id(id)?;
        let fp: Option<&[u8]> = claim.fingerprint.as_ref().map(|f| &f.0[..]);
        let lease = ms(claim.lease);
        let ttl = ms(claim.ttl);
        let take = claim.take_over_expired;
        // Stored as the same 64 bits (only ever compared for equality).
        let nonce: Option<i64> = claim.nonce.map(|n| i64::from_ne_bytes(n.to_ne_bytes()));
        for _ in 0..CLAIM_ROUNDS {
            let now = self.core.now_param();
            let rows = self
                .core
                .query(
                    "claim",
                    &self.core.sql.claim,
                    &[&now, &id.scope, &id.key, &fp, &lease, &ttl, &take, &nonce],
                    false,
                )
                .await?;
            // No row: the key was committed by someone after our snapshot; look again.
            let Some(row) = rows.first() else { continue };
            let bad = |e: tokio_postgres::Error| corrupt(id, e);
            let acquired: bool = row.try_get(col::ACQUIRED).map_err(bad)?;
            if acquired {
                let token: i64 = row.try_get(col::TOKEN).map_err(bad)?;
                let prev: Option<i64> = row.try_get(col::PREV_TOKEN).map_err(bad)?;
                let lease_until: Option<i64> = row.try_get(col::LEASE_UNTIL).map_err(bad)?;
                let attempts: i32 = row.try_get(col::ATTEMPTS).map_err(bad)?;
                let field = |f: &str, why: String| corrupt(id, format!("field `{f}`: {why}"));
                return Ok(ClaimOutcome::Acquired {
                    token: decode_token(token).map_err(|w| field("token", w))?,
                    lease_until: decode_ms(lease_until.unwrap_or_default())
                        .map_err(|w| field("lease_until", w))?,
                    takeover: prev
                        .map(decode_token)
                        .transpose()
                        .map_err(|w| field("prev_token", w))?,
                    attempt: decode_attempts(i64::from(attempts))
                        .map_err(|w| field("attempts", w))?,
                });
            }
            // The row as of our snapshot. If it looks dead, claimable or our own, the
            // upsert saw a newer version than the snapshot: run again with a fresh one.
            let retry: bool = row.try_get(col::RETRY).map_err(bad)?;
            if retry {
                continue;
            }
            let record = decode(row)?;
            let mismatch = matches!(
                (&record.fingerprint, &claim.fingerprint),
                (Some(a), Some(b)) if a != b
            );
            return Ok(if mismatch {
                ClaimOutcome::Mismatch(record)
            } else {
                ClaimOutcome::Existing(record)
            });
        }
        Err(StoreError::backend(std::io::Error::other(format!(
            "claim of {id} lost {CLAIM_ROUNDS} races in a row"
        ))))
    }

    async fn complete(
        &self,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.settle(id, token, state::COMPLETED, outcome, ttl).await
    }

    async fn fail(
        &self,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.settle(id, token, state::FAILED, outcome, ttl).await
    }

    async fn release(&self, id: &RecordKey, token: Token) -> StoreResult<()> {
        check_id(id)?;
        let now = self.core.now_param();
        let tok = token_param(token);
        let retention = ms(self.core.opts.tombstone_retention);
        let rows = self
            .core
            .query(
                "release",
                &self.core.sql.release,
                &[&now, &id.scope, &id.key, &tok, &retention],
                false,
            )
            .await?;
        let cas = read_cas(id, rows.first())?;
        self.cas_result(id, token, cas).await
    }

    async fn renew(&self, id: &RecordKey, token: Token, lease: Duration) -> StoreResult<Millis> {
        check_id(id)?;
        let now = self.core.now_param();
        let tok = token_param(token);
        let lease = ms(lease);
        let rows = self
            .core
            .query(
                "renew",
                &self.core.sql.renew,
                &[&now, &id.scope, &id.key, &tok, &lease],
                false,
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::Incompatible("no result row".into()))?;
        let until: Option<i64> = row.try_get(0).map_err(|e| corrupt(id, e))?;
        match until {
            Some(t) => Ok(unsigned(t)),
            None => {
                let current: Option<i64> = row.try_get(1).map_err(|e| corrupt(id, e))?;
                self.cas_result(id, token, Some(current.map(unsigned)))
                    .await
                    .map(|()| 0)
            }
        }
    }

    async fn get(&self, id: &RecordKey) -> StoreResult<Option<Record>> {
        check_id(id)?;
        let now = self.core.now_param();
        let rows = self
            .core
            .query("get", &self.core.sql.get, &[&now, &id.scope, &id.key], true)
            .await?;
        rows.first().map(decode).transpose()
    }

    async fn wait(&self, id: &RecordKey, timeout: Duration) -> StoreResult<Option<Record>> {
        check_id(id)?;
        self.ensure_listener();
        // A timeout too large to represent (e.g. `Duration::MAX`) means "no deadline".
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        let registration = self.core.waiters.register(id);
        let name = listen::presence_name(&self.core.channel, id);
        let mut presence: Option<listen::Presence> = None;
        let mut poll_delay = Duration::from_millis(2);
        let mut last: Option<Record> = None;
        loop {
            // Enabled before reading, so a notification sent after the read wakes us.
            let notified = registration.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // One look at the record, bounded by the deadline: announce the waiter
            // (once per listener session; never a write to the row, so neither an
            // owner's row lock nor its transaction is in the way), then a plain read.
            // A transient error (a killed connection, a restarting server) is retried
            // until the deadline, then returned.
            let look = async {
                if !presence
                    .as_ref()
                    .is_some_and(|p| p.is_held(&self.core.waiters))
                {
                    presence = None;
                    if self.core.waiters.is_up() {
                        presence = Some(self.core.waiters.hold(name.clone()).await);
                    }
                }
                self.get(id).await
            };
            let left = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
            let looked = match left {
                Some(left) => match tokio::time::timeout(left, look).await {
                    Ok(r) => r,
                    Err(_) => {
                        return match last {
                            Some(r) => Ok(Some(r)),
                            None => Err(StoreError::Unavailable(
                                format!("postgres wait: no answer within the {timeout:?} timeout")
                                    .into(),
                            )),
                        };
                    }
                },
                None => look.await,
            };
            let failure = match looked {
                Ok(record) => match record {
                    Some(r) if !r.state.is_settled() => {
                        last = Some(r.clone());
                        Ok(Some(r))
                    }
                    other => return Ok(other),
                },
                Err(e) if e.is_transient() => Err(e),
                Err(e) => return Err(e),
            };
            let now = tokio::time::Instant::now();
            let left = match deadline {
                Some(d) if now >= d => return failure,
                Some(d) => d - now,
                None => Duration::MAX,
            };
            let held = presence
                .as_ref()
                .is_some_and(|p| p.is_held(&self.core.waiters));
            let slice = if held && failure.is_ok() {
                self.core.opts.wait_recheck
            } else {
                let d = poll_delay;
                poll_delay = (poll_delay * 2).min(Duration::from_millis(100));
                d
            };
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(slice.min(left)) => {}
            }
        }
    }
}

#[async_trait]
impl StoreAdmin for PostgresStore {
    async fn list(&self, query: &ListQuery) -> StoreResult<Page> {
        let limit = query.effective_limit();
        let now = self.core.now_param();
        let after_scope = query.after.as_ref().map(|a| a.scope.as_str());
        let after_key = query.after.as_ref().map(|a| a.key.as_str());
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        let rows = self
            .core
            .query(
                "list",
                &self.core.sql.list,
                &[
                    &now,
                    &query.scope,
                    &query.key_prefix,
                    &after_scope,
                    &after_key,
                    &fetch,
                ],
                true,
            )
            .await?;
        let mut records = rows.iter().map(decode).collect::<StoreResult<Vec<_>>>()?;
        let next = if records.len() > limit {
            records.truncate(limit);
            records.last().map(|r| r.id.clone())
        } else {
            None
        };
        Ok(Page { records, next })
    }
    async fn purge(&self, id: &RecordKey) -> StoreResult<bool> {
        check_id(id)?;
        let now = self.core.now_param();
        let retention = ms(self.core.opts.tombstone_retention);
        let rows = self
            .core
            .query(
                "purge",
                &self.core.sql.purge,
                &[&now, &id.scope, &id.key, &retention],
                false,
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::Incompatible("no result row".into()))?;
        row.try_get::<_, bool>(2).map_err(|e| corrupt(id, e))
    }
    async fn sweep(&self) -> StoreResult<u64> {
        self.core.sweep().await
    }
    async fn stats(&self) -> StoreResult<Stats> {
        let now = self.core.now_param();
        let rows = self
            .core
            .query("stats", &self.core.sql.stats, &[&now], true)
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::Incompatible("no result row".into()))?;
        let get = |i: usize| -> StoreResult<u64> {
            row.try_get::<_, i64>(i)
                .map(unsigned)
                .map_err(|e| StoreError::Incompatible(format!("stats: {e}")))
        };
        Ok(Stats {
            in_progress: get(0)?,
            ambiguous: get(1)?,
            completed: get(2)?,
            failed: get(3)?,
            outcome_bytes: Some(get(4)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::connect::take_pool_size;
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        for ok in ["idemp", "idemp_t_1", "A_b"] {
            assert!(check_schema(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1x", "a-b", "a\"b", "x y", &"s".repeat(64)] {
            assert!(check_schema(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id(&RecordKey::new("s", "k")).is_ok());
        assert!(matches!(
            check_id(&RecordKey::new("s", "a\0b")),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            check_id(&RecordKey::new("s", "k".repeat(MAX_KEY_BYTES))),
            Err(StoreError::Invalid(_))
        ));
    }

    #[test]
    fn pool_size_is_taken_from_the_url() {
        let (u, n) = take_pool_size("postgres://u@h/db?pool_size=4&sslmode=disable").unwrap();
        assert_eq!(u, "postgres://u@h/db?sslmode=disable");
        assert_eq!(n, Some(4));
        let (u, n) = take_pool_size("postgres://u@h/db").unwrap();
        assert_eq!((u.as_str(), n), ("postgres://u@h/db", None));
        assert!(take_pool_size("postgres://u@h/db?pool_size=0").is_err());
    }

    #[test]
    fn durations_are_clamped() {
        assert_eq!(ms(Duration::from_millis(5)), 5);
        assert_eq!(ms(Duration::MAX), LIMITS.max_duration_ms() as i64);
        assert_eq!(token_param(u64::MAX), -1);
    }
}
