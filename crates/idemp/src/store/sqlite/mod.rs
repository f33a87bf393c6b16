//! The SQLite store: one file, several processes, crash-safe, group commit.
//!
//! [`SqliteStore`] keeps records in an SQLite file in WAL mode (`sqlite://PATH`).
//!
//! * **Durable.** With [`Synchronous::Full`] (the default) a `claim` or `complete`
//!   that returned has been fsynced: it survives `kill -9` and power loss.
//!   [`Synchronous::Normal`] is faster and survives `kill -9` of the process, but
//!   may lose the last commits on power loss or an OS crash.
//! * **Group commit.** A dedicated writer thread owns the write connection. Async
//!   callers send their operation over a channel; the writer takes every pending
//!   operation, applies them in order in ONE transaction (so the result equals running
//!   them one by one) and commits once: one fsync for many operations. Reads (`get`,
//!   `list`, `stats`, `wait`) use a small pool of WAL reader connections.
//! * **Replays without the writer.** A `claim` that finds a live settled record (the
//!   retry of a completed request) is answered by one read on a reader connection, on
//!   the caller's thread: a settled record never goes back to in progress, so the
//!   snapshot's answer is the claim's answer. Every other claim (a new key, a record in
//!   progress, an expired one) is decided by the writer, atomically, as before.
//! * **Several processes.** Each process has its own writer thread; SQLite's file lock
//!   serialises them (`BEGIN IMMEDIATE`, a busy timeout, then retries). Leases and
//!   ttls are read from the [clock](SqliteStoreBuilder::clock), so processes sharing a
//!   file share the machine's clock (keep it NTP-disciplined, not stepped by hand).
//! * **Fencing tokens** come from one counter per file, so they increase strictly per
//!   key across takeovers, releases, purges and sweeps.
//! * **Exactly once with your own tables.** [`SqliteStore::complete_in_tx`] settles a
//!   record inside your transaction on the same file: the side effect and the
//!   completion commit together, or not at all.
//! * **Safe on foreign files.** A file that is not an idemp store (another
//!   application's database, or not SQLite at all) is refused with
//!   [`StoreError::Incompatible`] before anything is written to it, and so is a schema
//!   newer than this build.
//!
//! ```
//! use std::time::Duration;
//! use idemp::store::{Claim, ClaimOutcome, Codec, Outcome, RecordKey, Store};
//! use idemp::store::sqlite::SqliteStore;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let store = SqliteStore::open(dir.path().join("idemp.db"))?;
//! let id = RecordKey::new("charge", "order-42");
//! let ClaimOutcome::Acquired { token, .. } = store.claim(&Claim::new(id.clone())).await? else {
//!     unreachable!("a new key is acquired");
//! };
//! // ... do the side effect, then:
//! let outcome = Outcome::new(Codec::Json, br#"{"charged":true}"#.to_vec());
//! store.complete(&id, token, outcome, Duration::from_secs(3600)).await?;
//! // A retry finds the stored outcome instead of running again.
//! assert!(matches!(store.claim(&Claim::new(id)).await?, ClaimOutcome::Existing(_)));
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, ErrorCode};
use tokio::sync::oneshot;

use crate::clock::{Millis, SharedClock};
use crate::store::{
    Claim, ClaimOutcome, LIMITS, ListQuery, Outcome, Page, Record, RecordKey, Stats, Store,
    StoreAdmin, StoreError, StoreResult, Token,
};

mod ops;
mod schema;
mod waiters;
mod writer;

pub use rusqlite;
pub use schema::{APPLICATION_ID, SCHEMA_VERSION};

/// The longest [`batch_linger`](SqliteStoreBuilder::batch_linger) a store accepts.
pub const MAX_BATCH_LINGER: Duration = Duration::from_secs(1);

use waiters::{WaitGuard, Waiters};
use writer::{Counters, Job, Op, Reply, Writer};

/// What group commit did so far in this store (this process): how many write
/// transactions were committed and how many operations they carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Committed write transactions (one fsync each with [`Synchronous::Full`]).
    pub commits: u64,
    /// Write operations (`claim`, `complete`, `fail`, `release`, `renew`, `purge`,
    /// `sweep`) committed by them.
    pub operations: u64,
}

impl GroupCommitStats {
    /// Average operations per commit (0 before the first commit).
    pub fn ops_per_commit(&self) -> f64 {
        if self.commits == 0 {
            0.0
        } else {
            self.operations as f64 / self.commits as f64
        }
    }
}

/// How hard SQLite pushes each commit to the disk (`PRAGMA synchronous`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// fsync on every commit: a completed record survives `kill -9` and power loss.
    #[default]
    Full,
    /// No fsync on commit (only at checkpoints): survives `kill -9` of the process;
    /// the last commits may be lost on power loss or an OS crash. Much faster without
    /// group commit, a little faster with it.
    Normal,
}

/// Options of a [`SqliteStore`]; see [`SqliteStoreBuilder`].
#[derive(Clone, Debug)]
pub(crate) struct SqliteOptions {
    synchronous: Synchronous,
    busy_timeout: Duration,
    clock: SharedClock,
    max_batch: usize,
    batch_linger: Duration,
    create_if_missing: bool,
    adopt_existing: bool,
    wait_poll_interval: Duration,
    sweep_interval: Option<Duration>,
    read_connections: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
            clock: crate::clock::system(),
            max_batch: 1024,
            batch_linger: Duration::ZERO,
            create_if_missing: true,
            adopt_existing: false,
            wait_poll_interval: Duration::from_millis(25),
            sweep_interval: None,
            read_connections: 4,
        }
    }
}

/// Builds a [`SqliteStore`] with options.
///
/// ```
/// use std::time::Duration;
/// use idemp::store::sqlite::{SqliteStore, Synchronous};
/// # let dir = tempfile::tempdir().unwrap();
/// let store = SqliteStore::builder(dir.path().join("idemp.db"))
///     .synchronous(Synchronous::Full)
///     .busy_timeout(Duration::from_secs(10))
///     .sweep_interval(Some(Duration::from_secs(60)))
///     .open()?;
/// # Ok::<(), idemp::StoreError>(())
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct SqliteStoreBuilder {
    path: PathBuf,
    opts: SqliteOptions,
}

impl SqliteStoreBuilder {
    /// `PRAGMA synchronous`: [`Synchronous::Full`] (default, durable) or
    /// [`Synchronous::Normal`].
    pub fn synchronous(mut self, s: Synchronous) -> Self {
        self.opts.synchronous = s;
        self
    }
    /// How long a connection waits for another process's write lock before a retry
    /// (default 5 s; the writer retries 3 times, then answers
    /// [`StoreError::Unavailable`]).
    pub fn busy_timeout(mut self, d: Duration) -> Self {
        self.opts.busy_timeout = d;
        self
    }
    /// The clock for leases and ttls (default: the system clock). Processes that
    /// share a file must read the same clock, in practice the machine's.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.opts.clock = clock;
        self
    }
    /// Most operations committed in one transaction (default 1024).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.opts.max_batch = n.max(1);
        self
    }
    /// How long the writer waits for more operations before committing a batch
    /// (default 0: commit what is there; the fsync itself lets the next batch grow).
    /// At most [`MAX_BATCH_LINGER`] (1 s): [`open`](Self::open) refuses a longer one
    /// with [`StoreError::Invalid`].
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use idemp::store::sqlite::SqliteStore;
    /// let dir = tempfile::tempdir()?;
    /// let too_long = SqliteStore::builder(dir.path().join("a.db")).batch_linger(Duration::MAX).open();
    /// assert!(matches!(too_long, Err(idemp::store::StoreError::Invalid(_))));
    /// # Ok(()) }
    /// ```
    pub fn batch_linger(mut self, d: Duration) -> Self {
        self.opts.batch_linger = d;
        self
    }
    /// Create the file and idemp's tables when missing (default `true`). With
    /// `false`, a missing file, an empty database or a foreign database is refused
    /// and never written to (what `idemp records` uses).
    pub fn create_if_missing(mut self, yes: bool) -> Self {
        self.opts.create_if_missing = yes;
        self
    }
    /// Add idemp's tables (all named `idemp_*`) to an existing application database
    /// instead of refusing it (default `false`). Useful with
    /// [`SqliteStore::complete_in_tx`] to keep records next to the application's
    /// tables in one file.
    pub fn adopt_existing(mut self, yes: bool) -> Self {
        self.opts.adopt_existing = yes;
        self
    }
    /// How often [`Store::wait`] polls for settles made by other processes (default
    /// 25 ms). Settles made through this store wake waiters at once.
    pub fn wait_poll_interval(mut self, d: Duration) -> Self {
        self.opts.wait_poll_interval = d.max(Duration::from_millis(1));
        self
    }
    /// Runs [`StoreAdmin::sweep`] in a background thread at this interval (default: never;
    /// expired records are invisible anyway and [`StoreAdmin::sweep`] can be called).
    pub fn sweep_interval(mut self, every: Option<Duration>) -> Self {
        self.opts.sweep_interval = every;
        self
    }
    /// Idle reader connections kept for `get`/`list`/`stats`, and as many for the
    /// replay path of `claim` (default 4 each).
    pub fn read_connections(mut self, n: usize) -> Self {
        self.opts.read_connections = n;
        self
    }

    /// Opens the store: checks (and, if allowed, creates or migrates) the file and
    /// starts the writer thread.
    pub fn open(self) -> StoreResult<SqliteStore> {
        SqliteStore::open_with(self.path, self.opts)
    }
}

/// The SQLite store. See the [module docs](self).
///
/// Cloning is cheap and shares the writer thread. Dropping the last clone closes the
/// channel and waits for the writer to finish its current batch and close the file.
///
/// Cancellation: a `claim` whose future is dropped before the writer reaches it is
/// skipped; one dropped later may have acquired the key, which then nobody settles
/// and becomes ambiguous when its lease passes, as after a crash. Other operations
/// run once sent, even if their future is dropped.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    canonical: PathBuf,
    opts: SqliteOptions,
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    readers: Mutex<Vec<Connection>>,
    /// Reader connections of `claim`'s replay path, used on the caller's thread (see
    /// [`Inner::claim_settled`]).
    replay_readers: Mutex<Vec<Connection>>,
    waiters: Arc<Waiters>,
    counters: Arc<Counters>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel stops the writer after its current batch; joining it
        // closes the write connection (and checkpoints the WAL) before we return.
        self.jobs.take();
        if let Some(h) = self.writer.take()
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("synchronous", &self.inner.opts.synchronous)
            .finish_non_exhaustive()
    }
}

/// Maps a SQLite error onto the store's errors.
pub(crate) fn map_err(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::unavailable("SQLite database is locked", e)
        }
        Some(ErrorCode::NotADatabase) => {
            StoreError::Incompatible(format!("not an SQLite database: {e}"))
        }
        _ => StoreError::backend(e),
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the SQLite store's writer thread has stopped".into())
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` with the default options:
    /// `synchronous = FULL`, 5 s busy timeout, system clock.
    pub fn open(path: impl AsRef<Path>) -> StoreResult<Self> {
        Self::builder(path).open()
    }

    /// A builder for a store at `path`.
    pub fn builder(path: impl AsRef<Path>) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            path: path.as_ref().to_path_buf(),
            opts: SqliteOptions::default(),
        }
    }

    fn open_with(path: PathBuf, opts: SqliteOptions) -> StoreResult<Self> {
        if opts.batch_linger > MAX_BATCH_LINGER {
            return Err(StoreError::Invalid(format!(
                "batch_linger {:?} is longer than the maximum {MAX_BATCH_LINGER:?} (every write would wait that long)",
                opts.batch_linger
            )));
        }
        if !opts.create_if_missing && !path.exists() {
            return Err(StoreError::Unavailable(
                format!("no such store: {} does not exist", path.display()).into(),
            ));
        }
        let conn = schema::open(&path, &opts)?;
        let canonical = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());

        let (tx, rx) = mpsc::channel();
        let waiters = Arc::new(Waiters::default());
        let counters = Arc::new(Counters::default());
        let writer = Writer::new(conn, rx, &opts, waiters.clone(), counters.clone());
        let handle = std::thread::Builder::new()
            .name("idemp-sqlite-writer".into())
            .spawn(move || writer.run())
            .map_err(StoreError::backend)?;
        let inner = Arc::new(Inner {
            path,
            canonical,
            opts,
            jobs: Some(tx),
            writer: Some(handle),
            readers: Mutex::new(Vec::new()),
            replay_readers: Mutex::new(Vec::new()),
            waiters,
            counters,
        });
        if let Some(every) = inner.opts.sweep_interval {
            spawn_sweeper(Arc::downgrade(&inner), every)?;
        }
        Ok(Self { inner })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Counts of the writer thread's commits and the operations they carried.
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        use std::sync::atomic::Ordering::Relaxed;
        GroupCommitStats {
            commits: self.inner.counters.commits.load(Relaxed),
            operations: self.inner.counters.operations.load(Relaxed),
        }
    }

    /// A new connection to the same file, configured like the store's own
    /// (busy timeout, `synchronous`), for transactions that join a completion
    /// ([`complete_in_tx`](Self::complete_in_tx)).
    pub fn connection(&self) -> StoreResult<Connection> {
        let conn = schema::connect(&self.inner.path, &self.inner.opts, false)?;
        schema::configure(&conn, &self.inner.opts)?;
        Ok(conn)
    }

    /// Settles `id` as completed inside the caller's transaction, so that the
    /// caller's own writes (the side effect) and the completion commit together.
    ///
    /// `tx` must be a transaction on a connection to this store's file (see
    /// [`connection`](Self::connection)); open it with
    /// `TransactionBehavior::Immediate` so that it does not fail with
    /// `SQLITE_BUSY` when it starts writing. Returns [`StoreError::Fenced`] when
    /// `token` no longer owns the record: the caller must then roll back (drop `tx`)
    /// so that its side effect does not happen either.
    ///
    /// In-process waiters of this store are not woken by this call (the commit is
    /// yours); they see the settle at their next poll
    /// ([`wait_poll_interval`](SqliteStoreBuilder::wait_poll_interval)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemp::store::{Claim, ClaimOutcome, Codec, Outcome, RecordKey, Store};
    /// use idemp::store::sqlite::{SqliteStore, rusqlite::TransactionBehavior};
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// let store = SqliteStore::open(dir.path().join("app.db"))?;
    /// let mut conn = store.connection()?;
    /// conn.execute_batch("CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, balance INTEGER);
    ///                     INSERT INTO accounts VALUES ('alice', 100);")?;
    ///
    /// let id = RecordKey::new("debit", "req-1");
    /// if let ClaimOutcome::Acquired { token, .. } = store.claim(&Claim::new(id.clone())).await? {
    ///     let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    ///     tx.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 'alice'", [])?;
    ///     let outcome = Outcome::new(Codec::Json, b"90".to_vec());
    ///     store.complete_in_tx(&tx, &id, token, outcome, Duration::from_secs(3600))?;
    ///     tx.commit()?; // the debit and the completion, together
    /// }
    /// # Ok(()) }
    /// ```
    pub fn complete_in_tx(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.check_same_file(tx)?;
        let now = self.inner.opts.clock.now_ms();
        ops::settle(tx, id, token, &outcome, ttl, false, now).map_err(map_err)?
    }

    /// Like [`complete_in_tx`](Self::complete_in_tx), storing a sticky failure.
    pub fn fail_in_tx(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.check_same_file(tx)?;
        let now = self.inner.opts.clock.now_ms();
        ops::settle(tx, id, token, &outcome, ttl, true, now).map_err(map_err)?
    }

    /// Like [`complete_in_tx`](Self::complete_in_tx), releasing the key (deleting the
    /// in-progress record) inside the caller's transaction.
    pub fn release_in_tx(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: &RecordKey,
        token: Token,
    ) -> StoreResult<()> {
        self.check_same_file(tx)?;
        let now = self.inner.opts.clock.now_ms();
        ops::release(tx, id, token, now).map_err(map_err)?
    }

    fn check_same_file(&self, conn: &Connection) -> StoreResult<()> {
        let Some(p) = conn.path().filter(|p| !p.is_empty()) else {
            return Err(StoreError::Invalid(
                "the transaction's connection is not on a database file".into(),
            ));
        };
        let p = Path::new(p);
        if p == self.inner.canonical
            || std::fs::canonicalize(p).is_ok_and(|c| c == self.inner.canonical)
        {
            Ok(())
        } else {
            Err(StoreError::Invalid(format!(
                "the transaction is on {}, not on the store's file {}",
                p.display(),
                self.inner.canonical.display()
            )))
        }
    }

    async fn submit(&self, op: Op) -> StoreResult<Reply> {
        let (reply, rx) = oneshot::channel();
        let jobs = self.inner.jobs.as_ref().ok_or_else(stopped)?;
        jobs.send(Job { op, reply }).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Runs `f` on a reader connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Fn(&Connection, Millis) -> ops::OpResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.read_blocking(f))
            .await
            .map_err(|e| StoreError::Backend(format!("reader task failed: {e}").into()))?
    }
}

impl Inner {
    /// `claim`'s answer when the record is live and settled (a replay), read on the
    /// caller's thread from a reader connection: no write transaction, no fsync, no
    /// trip through the writer thread (see [`ops::claim_settled`] for why the answer
    /// is the one the writer would give).
    ///
    /// It never waits: the connections have no busy timeout, so a read that would
    /// block (a WAL being recovered by another process) fails at once. `None` in that
    /// case, on any error, and whenever the record is not settled: the claim then goes
    /// to the writer, which decides as before.
    fn claim_settled(&self, claim: &Claim) -> Option<ClaimOutcome> {
        let pooled = self.replay_readers.lock().pop();
        let conn = match pooled {
            Some(c) => c,
            None => self.replay_reader().ok()?,
        };
        let found = ops::claim_settled(&conn, claim, self.opts.clock.now_ms());
        let mut pool = self.replay_readers.lock();
        if pool.len() < self.opts.read_connections {
            pool.push(conn);
        }
        drop(pool);
        found.ok().flatten()
    }

    fn replay_reader(&self) -> StoreResult<Connection> {
        let c = schema::connect(&self.path, &self.opts, false)?;
        c.busy_timeout(Duration::ZERO).map_err(map_err)?;
        c.pragma_update(None, "query_only", "ON").map_err(map_err)?;
        Ok(c)
    }

    fn read_blocking<T>(
        &self,
        f: impl Fn(&Connection, Millis) -> ops::OpResult<T>,
    ) -> StoreResult<T> {
        let pooled = self.readers.lock().pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = schema::connect(&self.path, &self.opts, false)?;
                c.pragma_update(None, "query_only", "ON").map_err(map_err)?;
                c
            }
        };
        let mut attempt = 0;
        let result = loop {
            match f(&conn, self.opts.clock.now_ms()) {
                Err(e) if writer::is_busy(&e) && attempt < 3 => attempt += 1,
                other => break other,
            }
        };
        let mut pool = self.readers.lock();
        if pool.len() < self.opts.read_connections {
            pool.push(conn);
        }
        drop(pool);
        result.map_err(map_err)?
    }
}

fn spawn_sweeper(inner: Weak<Inner>, every: Duration) -> StoreResult<()> {
    std::thread::Builder::new()
        .name("idemp-sqlite-sweeper".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                let Some(inner) = inner.upgrade() else { return };
                let Some(jobs) = inner.jobs.clone() else {
                    return;
                };
                let (reply, rx) = oneshot::channel();
                if jobs
                    .send(Job {
                        op: Op::Sweep,
                        reply,
                    })
                    .is_err()
                {
                    return;
                }
                drop(jobs);
                drop(inner);
                match rx.blocking_recv() {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "idemp sqlite sweep failed"),
                    Err(_) => return,
                }
            }
        })
        .map(|_| ())
        .map_err(StoreError::backend)
}

fn unexpected(reply: Reply) -> StoreError {
    StoreError::Backend(format!("internal: unexpected writer reply {reply:?}").into())
}

#[async_trait]
impl Store for SqliteStore {
    async fn claim(&self, claim: &Claim) -> StoreResult<ClaimOutcome> {
        // Refused before the writer sees it (the writer checks again for `*_in_tx`).
        ops::validate(&claim.id)?;
        // A replay (a live settled record) is answered without the writer.
        if let Some(found) = self.inner.claim_settled(claim) {
            return Ok(found);
        }
        match self.submit(Op::Claim(claim.clone())).await? {
            Reply::Claim(c) => Ok(c),
            other => Err(unexpected(other)),
        }
    }

    async fn complete(
        &self,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        ops::validate(id)?;
        LIMITS.check_outcome(&outcome)?;
        let op = Op::Settle {
            id: id.clone(),
            token,
            outcome,
            ttl,
            failed: false,
        };
        self.submit(op).await.map(drop)
    }

    async fn fail(
        &self,
        id: &RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
    ) -> StoreResult<()> {
        ops::validate(id)?;
        LIMITS.check_outcome(&outcome)?;
        let op = Op::Settle {
            id: id.clone(),
            token,
            outcome,
            ttl,
            failed: true,
        };
        self.submit(op).await.map(drop)
    }

    async fn release(&self, id: &RecordKey, token: Token) -> StoreResult<()> {
        ops::validate(id)?;
        let op = Op::Release {
            id: id.clone(),
            token,
        };
        self.submit(op).await.map(drop)
    }

    async fn renew(&self, id: &RecordKey, token: Token, lease: Duration) -> StoreResult<Millis> {
        ops::validate(id)?;
        let op = Op::Renew {
            id: id.clone(),
            token,
            lease,
        };
        match self.submit(op).await? {
            Reply::Renewed(until) => Ok(until),
            other => Err(unexpected(other)),
        }
    }

    async fn get(&self, id: &RecordKey) -> StoreResult<Option<Record>> {
        let id = id.clone();
        self.read(move |conn, now| ops::get(conn, &id, now)).await
    }

    /// Waits for the record to settle or go. Settles made through this store (any
    /// clone, same process) wake the waiter at once; settles made by other processes
    /// or through [`SqliteStore::complete_in_tx`] are seen by polling every
    /// [`wait_poll_interval`](SqliteStoreBuilder::wait_poll_interval) (25 ms by
    /// default).
    async fn wait(&self, id: &RecordKey, timeout: Duration) -> StoreResult<Option<Record>> {
        let deadline = crate::store::deadline_after(timeout);
        let guard = WaitGuard {
            waiters: &self.inner.waiters,
            id,
            handle: Some(self.inner.waiters.register(id)),
        };
        loop {
            let notified = guard.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let rec = self.get(id).await?;
            if !matches!(&rec, Some(r) if !r.state.is_settled()) {
                return Ok(rec);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(rec);
            }
            let nap = self.inner.opts.wait_poll_interval.min(deadline - now);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }
}

#[async_trait]
impl StoreAdmin for SqliteStore {
    async fn list(&self, query: &ListQuery) -> StoreResult<Page> {
        let query = query.clone();
        self.read(move |conn, now| ops::list(conn, &query, now))
            .await
    }
    async fn purge(&self, id: &RecordKey) -> StoreResult<bool> {
        match self.submit(Op::Purge(id.clone())).await? {
            Reply::Purged(existed) => Ok(existed),
            other => Err(unexpected(other)),
        }
    }
    async fn sweep(&self) -> StoreResult<u64> {
        match self.submit(Op::Sweep).await? {
            Reply::Swept(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }
    async fn stats(&self) -> StoreResult<Stats> {
        self.read(ops::stats).await
    }
}
