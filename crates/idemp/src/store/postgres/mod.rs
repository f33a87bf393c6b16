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
//!   their cause; a write whose reply was lost is never retried blindly (a later claim
//!   sees the record and its lease).
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

mod listen;
mod sql;

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
    Claim, ClaimOutcome, ListQuery, Outcome, Page, Record, RecordKey, State, Stats, Store,
    StoreError, StoreResult, StoreUrl, Token,
};
use crate::clock::{Millis, SharedClock};
use listen::Waiters;
use sql::{Sql, col, state};

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i32 = sql::MIGRATIONS.len() as i32;

/// Longest `scope` + `key` accepted, in bytes: the shared [`LIMITS`] (a B-tree index
/// entry must fit in a page).
pub const MAX_KEY_BYTES: usize = LIMITS.max_scope_bytes + LIMITS.max_key_bytes;

/// How often `claim` re-runs after losing a race to a concurrent commit it could not
/// see yet (rare; each retry takes a fresh snapshot).
const CLAIM_ROUNDS: usize = 16;

/// Settings of a [`PostgresStore`]. Start from `Default` and use the setters.
#[derive(Clone)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// Schema of idemp's tables (default `idemp`).
    pub schema: String,
    /// Connections in the pool (default 16). The LISTEN connection, opened on the
    /// first `wait`, is one more.
    pub pool_size: usize,
    /// How often the background sweeper deletes expired rows; `None` disables it
    /// (call [`Store::sweep`] yourself). Default 5 min (a sweep reads the whole table).
    pub sweep_interval: Option<Duration>,
    /// Table pages (8 KiB) each sweep statement scans (default 1024, 8 MiB): a sweep
    /// walks the whole table in such slices.
    pub sweep_batch: u32,
    /// How long a released or purged key keeps its tombstone row (default 10 min).
    pub tombstone_retention: Duration,
    /// A waiter re-reads the record at least this often even without a notification
    /// (default 1 s).
    pub wait_recheck: Duration,
    /// Client clock instead of the server's (tests); `None` uses the server's time.
    pub clock: Option<SharedClock>,
    /// `application_name` of the connections, unless the URL sets one (default `idemp`).
    pub application_name: String,
    /// Connect timeout (default 5 s).
    pub connect_timeout: Duration,
    /// How long an operation waits for a free pooled connection before it fails with
    /// [`StoreError::Unavailable`] (default 5 s; a `wait` never waits past its own
    /// deadline).
    pub acquire_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            schema: "idemp".into(),
            pool_size: 16,
            sweep_interval: Some(Duration::from_secs(300)),
            sweep_batch: 1024,
            tombstone_retention: Duration::from_secs(600),
            wait_recheck: Duration::from_secs(1),
            clock: None,
            application_name: "idemp".into(),
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("sweep_interval", &self.sweep_interval)
            .field("sweep_batch", &self.sweep_batch)
            .field("tombstone_retention", &self.tombstone_retention)
            .field("wait_recheck", &self.wait_recheck)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("client_clock", &self.clock.is_some())
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl PostgresOptions {
    /// Sets the schema.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }
    /// Sets the pool size (at least 1).
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n.max(1);
        self
    }
    /// Sets the sweeper interval (`None` disables the sweeper).
    pub fn sweep_interval(mut self, every: Option<Duration>) -> Self {
        self.sweep_interval = every;
        self
    }
    /// Sets how many table pages each sweep statement scans (at least 1).
    pub fn sweep_batch(mut self, n: u32) -> Self {
        self.sweep_batch = n.max(1);
        self
    }
    /// Sets how long tombstones of released or purged keys are kept.
    pub fn tombstone_retention(mut self, d: Duration) -> Self {
        self.tombstone_retention = d;
        self
    }
    /// Sets the waiters' safety re-check interval.
    pub fn wait_recheck(mut self, d: Duration) -> Self {
        self.wait_recheck = d.max(Duration::from_millis(1));
        self
    }
    /// Uses a client clock instead of the server's time (tests).
    pub fn clock(mut self, clock: Option<SharedClock>) -> Self {
        self.clock = clock;
        self
    }
    /// Sets the connections' `application_name`.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }
    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
    /// Sets [`acquire_timeout`](Self::acquire_timeout).
    pub fn acquire_timeout(mut self, d: Duration) -> Self {
        self.acquire_timeout = d;
        self
    }
}

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

/// The schema identifier rules: 1-63 of `[A-Za-z0-9_]`, not starting with a digit.
fn check_schema(schema: &str) -> StoreResult<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !schema.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "schema `{schema}` must be 1-63 characters of [A-Za-z0-9_], not starting with a digit"
        )))
    }
}

/// Refuses ids over the shared [`LIMITS`] (which also exclude NUL characters, which
/// Postgres text cannot hold).
fn check_id(id: &RecordKey) -> StoreResult<()> {
    LIMITS.check_id(id)
}

/// A duration in ms, capped at [`LIMITS`]`.max_duration`.
fn ms(d: Duration) -> i64 {
    i64::try_from(LIMITS.capped_ms(d)).unwrap_or(i64::MAX)
}

/// A token as stored; tokens above `i64::MAX` are never issued, so they match nothing.
fn token_param(token: Token) -> i64 {
    i64::try_from(token).unwrap_or(-1)
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Maps a client error: connection trouble is `Unavailable` (with the cause), schema
/// trouble `Incompatible`, bad values `Invalid`.
fn pg_error(op: &str, e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let what = format!("postgres {op}: {} (SQLSTATE {code})", db.message());
        return match code {
            // connection exceptions, shutdown, too many connections, out of resources
            c if c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") => {
                StoreError::Unavailable(what)
            }
            // statement timeout / cancel request, lock timeout: the server gave up on
            // this statement; trying again later may succeed
            "57014" | "55P03" => StoreError::Unavailable(format!("{what}: cancelled or timed out")),
            // serialization failure / deadlock: the caller's transaction must be retried
            "40001" | "40P01" => StoreError::Unavailable(format!(
                "{what}: a concurrent transaction touched the record; retry the transaction"
            )),
            // undefined schema / table / column / function: dropped or altered
            "3F000" | "42P01" | "42703" | "42883" => {
                StoreError::Incompatible(format!("{what}: idemp's tables are missing or altered"))
            }
            // bad encoding, value too long for an index entry
            "22021" | "54000" => StoreError::Invalid(what),
            _ => StoreError::Backend(Box::new(e)),
        };
    }
    if e.is_closed() || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>()) {
        return StoreError::Unavailable(format!("postgres {op}: {e}"));
    }
    // Other client-side errors (protocol, timeouts, unexpected messages) while talking
    // to the server: the outcome is unknown, the connection is suspect.
    StoreError::Unavailable(format!("postgres {op}: {e}"))
}

fn pool_error(op: &str, e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => pg_error(op, e),
        other => StoreError::Unavailable(format!("postgres {op}: connection pool: {other}")),
    }
}

/// Reads a record from the standard columns through the shared decoder.
fn decode(row: &Row) -> StoreResult<Record> {
    let scope: String = row
        .try_get(col::SCOPE)
        .map_err(|e| StoreError::Incompatible(format!("unexpected row shape: {e}")))?;
    let key: String = row
        .try_get(col::KEY)
        .map_err(|e| StoreError::Incompatible(format!("unexpected row shape: {e}")))?;
    let id = RecordKey::new(scope, key);
    let bad = |e: tokio_postgres::Error| corrupt(&id, e);
    let st: i16 = row.try_get(col::STATE).map_err(bad)?;
    let attempts: i32 = row.try_get(col::ATTEMPTS).map_err(bad)?;
    let codec: Option<i16> = row.try_get(col::CODEC).map_err(bad)?;
    let compression: Option<i16> = row.try_get(col::COMPRESSION).map_err(bad)?;
    let expires_at: i64 = row.try_get(col::EXPIRES_AT).map_err(bad)?;
    let raw = RawRecord {
        fingerprint: row.try_get(col::FINGERPRINT).map_err(bad)?,
        state: i64::from(st),
        token: row.try_get(col::TOKEN).map_err(bad)?,
        attempts: i64::from(attempts),
        created_at: row.try_get(col::CREATED_AT).map_err(bad)?,
        updated_at: row.try_get(col::UPDATED_AT).map_err(bad)?,
        lease_until: row.try_get(col::LEASE_UNTIL).map_err(bad)?,
        expires_at: Some(expires_at),
        codec: codec.map(i64::from),
        compression: compression.map(i64::from),
        outcome: row.try_get(col::OUTCOME).map_err(bad)?,
        ..RawRecord::new(id.clone(), 0)
    };
    raw.decode()
}

impl PostgresStore {
    /// Connects using a parsed store URL (`StoreUrl::Postgres`).
    pub async fn connect_url(url: &StoreUrl) -> StoreResult<Self> {
        let StoreUrl::Postgres { url, schema } = url else {
            return Err(StoreError::Invalid(format!(
                "{url} is not a postgres:// store URL"
            )));
        };
        let mut opts = PostgresOptions::default();
        if let Some(s) = schema {
            opts.schema = s.clone();
        }
        let (client_url, pool_size) = take_pool_size(url)?;
        if let Some(n) = pool_size {
            opts = opts.pool_size(n);
        }
        Self::connect_with(&client_url, opts).await
    }

    /// Connects with a store URL string (`postgres://…[?schema=S][&pool_size=N]`).
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let parsed: StoreUrl = url
            .parse()
            .map_err(|e: super::StoreUrlError| StoreError::Invalid(e.to_string()))?;
        Self::connect_url(&parsed).await
    }

    /// Connects with a client URL or `key=value` connection string (as understood by
    /// `tokio_postgres::Config`, without idemp's own parameters) and options.
    pub async fn connect_with(conn: &str, opts: PostgresOptions) -> StoreResult<Self> {
        let config = tokio_postgres::Config::from_str(conn).map_err(|e| {
            StoreError::Invalid(format!(
                "postgres connection string `{}`: {e}",
                super::url::mask_password(conn)
            ))
        })?;
        Self::connect_config(config, opts).await
    }

    /// Connects with a ready `tokio_postgres::Config`.
    pub async fn connect_config(
        mut config: tokio_postgres::Config,
        opts: PostgresOptions,
    ) -> StoreResult<Self> {
        check_schema(&opts.schema)?;
        if config.get_application_name().is_none() {
            config.application_name(&opts.application_name);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(opts.connect_timeout);
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(opts.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(opts.connect_timeout))
            .wait_timeout(Some(opts.acquire_timeout))
            .recycle_timeout(Some(opts.connect_timeout))
            .build()
            .map_err(|e| StoreError::Invalid(format!("postgres pool: {e}")))?;
        let quoted = format!("\"{}\"", opts.schema);
        let mut channel = format!("idemp_{}", opts.schema);
        channel.truncate(63);
        migrate(&pool, &opts.schema, &quoted).await?;
        let core = Arc::new(Core {
            sql: Sql::new(&quoted, &channel),
            pool,
            schema: opts.schema.clone(),
            channel,
            pg_config: config,
            waiters: Arc::new(Waiters::default()),
            opts,
        });
        let sweeper = core.opts.sweep_interval.map(|every| {
            let core = core.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    match core.sweep().await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(removed = n, "idemp postgres sweep"),
                        Err(e) => tracing::warn!(error = %e, "idemp postgres sweep failed"),
                    }
                }
            })
        });
        Ok(Self {
            core,
            tasks: Arc::new(Tasks {
                sweeper,
                listener: OnceLock::new(),
            }),
        })
    }

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

/// Reads the (changed, notified, current) row of a compare-and-set statement:
/// `Ok(None)` when it changed the record, `Ok(Some(current))` when fenced.
fn read_cas(id: &RecordKey, row: Option<&Row>) -> StoreResult<Option<Option<u64>>> {
    let row = row.ok_or_else(|| StoreError::Incompatible("no result row".into()))?;
    let changed: i64 = row.try_get(0).map_err(|e| corrupt(id, e))?;
    if changed == 1 {
        return Ok(None);
    }
    let current: Option<i64> = row.try_get(2).map_err(|e| corrupt(id, e))?;
    Ok(Some(current.map(unsigned)))
}

/// Takes `pool_size=N` out of a client URL.
fn take_pool_size(url: &str) -> StoreResult<(String, Option<usize>)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), None));
    };
    let mut kept = Vec::new();
    let mut size = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("pool_size", v)) => {
                let n: usize = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    StoreError::Invalid(format!("pool_size `{v}` is not a positive number"))
                })?;
                size = Some(n);
            }
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, size))
}

/// Creates or upgrades the schema, serialised across processes by an advisory lock.
async fn migrate(pool: &Pool, schema: &str, quoted: &str) -> StoreResult<()> {
    let mut client = pool.get().await.map_err(|e| pool_error("connect", e))?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| pg_error("migrate", e))?;
    match migrate_in(&tx, schema, quoted).await {
        Ok(()) => tx.commit().await.map_err(|e| pg_error("migrate", e)),
        Err(e) => {
            // Release the lock and the snapshot now, not when the connection closes.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

async fn migrate_in(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    quoted: &str,
) -> StoreResult<()> {
    let err = |e| pg_error("migrate", e);
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))",
        &[&format!("idemp.migrate.{schema}")],
    )
    .await
    .map_err(err)?;
    let exists = |table: &'static str| {
        let name = format!("{quoted}.{table}");
        async move {
            tx.query_one("SELECT to_regclass($1::text) IS NOT NULL", &[&name])
                .await
                .and_then(|r| r.try_get::<_, bool>(0))
                .map_err(err)
        }
    };
    if !exists("schema_version").await? {
        if exists("records").await? {
            return Err(StoreError::Incompatible(format!(
                "schema `{schema}` has a `records` table but no idemp schema_version: not an idemp store"
            )));
        }
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {quoted};
             CREATE TABLE {quoted}.schema_version (
                 singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
                 version integer NOT NULL,
                 migrated_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO {quoted}.schema_version (version) VALUES (0);"
        ))
        .await
        .map_err(err)?;
    }
    let version: i32 = tx
        .query_one(&format!("SELECT version FROM {quoted}.schema_version"), &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(err)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Incompatible(format!(
            "schema `{schema}` is at version {version}, newer than this idemp understands ({SCHEMA_VERSION}): upgrade idemp"
        )));
    }
    if version < SCHEMA_VERSION {
        let start = usize::try_from(version).unwrap_or(0);
        for migration in &sql::MIGRATIONS[start..] {
            tx.batch_execute(&migration.replace("__SCHEMA__", quoted))
                .await
                .map_err(err)?;
        }
        tx.execute(
            &format!(
                "UPDATE {quoted}.schema_version SET version = $1::integer, migrated_at = now()"
            ),
            &[&SCHEMA_VERSION],
        )
        .await
        .map_err(err)?;
    }
    Ok(())
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

    async fn sweep(&self) -> StoreResult<u64> {
        let chunk = i64::from(self.opts.sweep_batch.max(1));
        let client = self.pool.get().await.map_err(|e| pool_error("sweep", e))?;
        let err = |e| pg_error("sweep", e);
        let pages_stmt = client.prepare_cached(&self.sql.pages).await.map_err(err)?;
        let pages: i64 = client
            .query_one(&pages_stmt, &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(err)?;
        let sweep = client.prepare_cached(&self.sql.sweep).await.map_err(err)?;
        let mut total = 0u64;
        let mut first = 0i64;
        // Pages added while sweeping hold fresh rows; the next pass gets them.
        while first <= pages {
            let now = self.now_param();
            let after = first.saturating_add(chunk);
            total += client
                .execute(&sweep, &[&now, &first, &after])
                .await
                .map_err(err)?;
            first = after;
        }
        Ok(total)
    }
}

/// Whether `e` means the connection is broken (the classification of [`pg_error`]).
fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        Some(db) => {
            let c = db.code().code();
            c.starts_with("08") || c.starts_with("57P") || c.starts_with("53")
        }
        None => true,
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
        for _ in 0..CLAIM_ROUNDS {
            let now = self.core.now_param();
            let rows = self
                .core
                .query(
                    "claim",
                    &self.core.sql.claim,
                    &[&now, &id.scope, &id.key, &fp, &lease, &ttl, &take],
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
            // The row as of our snapshot. If it looks dead or claimable, the upsert saw a
            // newer version than the snapshot: run again with a fresh snapshot.
            let now_ms: i64 = row.try_get(col::NOW_MS).map_err(bad)?;
            let st: i16 = row.try_get(col::STATE).map_err(bad)?;
            let expires_at: i64 = row.try_get(col::EXPIRES_AT).map_err(bad)?;
            if st > state::FAILED || expires_at <= now_ms {
                continue;
            }
            let record = decode(row)?;
            let mismatch = matches!(
                (&record.fingerprint, &claim.fingerprint),
                (Some(a), Some(b)) if a != b
            );
            let claimable = take
                && !mismatch
                && matches!(record.state, State::InProgress { lease_until } if lease_until <= unsigned(now_ms));
            if claimable {
                continue;
            }
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
                            None => Err(StoreError::Unavailable(format!(
                                "postgres wait: no answer within the {timeout:?} timeout"
                            ))),
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

#[cfg(test)]
mod tests {
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
