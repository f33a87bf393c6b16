//! Group commit: one writer thread owns the write connection.
//!
//! Async callers send a [`Job`] over a channel and await a oneshot reply. The writer
//! takes every job waiting in the channel (up to `max_batch`), applies them in
//! arrival order inside ONE `BEGIN IMMEDIATE` transaction (each job sees the effects
//! of the jobs before it, so the result equals running them one by one), commits
//! once (one WAL fsync for the whole batch) and only then replies. While it commits,
//! the next batch piles up in the channel, so the batch size grows with the load.
//!
//! When a job fails with a database error (not a store answer such as `Fenced`), the
//! batch is rolled back and its jobs are replayed one transaction each, so a single
//! failing job cannot take the others down with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::ops::{self, TokenSeq};
use super::waiters::Waiters;
use super::{SqliteOptions, map_err};
use crate::clock::{Millis, SharedClock};
use crate::store::{Claim, ClaimOutcome, Outcome, RecordKey, StoreError, StoreResult, Token};

/// A write operation.
#[derive(Debug)]
pub(crate) enum Op {
    Claim(Claim),
    Settle {
        id: RecordKey,
        token: Token,
        outcome: Outcome,
        ttl: Duration,
        failed: bool,
    },
    Release {
        id: RecordKey,
        token: Token,
    },
    Renew {
        id: RecordKey,
        token: Token,
        lease: Duration,
    },
    Purge(RecordKey),
    Sweep,
}

/// The answer to an [`Op`].
#[derive(Debug)]
pub(crate) enum Reply {
    Claim(ClaimOutcome),
    Done,
    Renewed(Millis),
    Purged(bool),
    Swept(u64),
}

/// An operation and where to send its answer.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) op: Op,
    pub(crate) reply: oneshot::Sender<StoreResult<Reply>>,
}

/// Counters of the writer, shared with the store.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) commits: AtomicU64,
    pub(crate) operations: AtomicU64,
}

/// How many times the writer yields to let more jobs join a batch (see `fill`).
const YIELD_ROUNDS: usize = 4;

/// How many times `BEGIN IMMEDIATE` is retried after the busy timeout ran out.
const BUSY_RETRIES: u32 = 3;

/// The writer thread's state.
pub(crate) struct Writer {
    conn: Connection,
    jobs: Receiver<Job>,
    clock: SharedClock,
    waiters: Arc<Waiters>,
    counters: Arc<Counters>,
    max_batch: usize,
    linger: Duration,
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        jobs: Receiver<Job>,
        opts: &SqliteOptions,
        waiters: Arc<Waiters>,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            conn,
            jobs,
            clock: opts.clock.clone(),
            waiters,
            counters,
            max_batch: opts.max_batch.max(1),
            linger: opts.batch_linger,
        }
    }

    /// Runs until every sender is gone.
    pub(crate) fn run(mut self) {
        let mut batch: Vec<Job> = Vec::with_capacity(self.max_batch.min(4096));
        while let Ok(first) = self.jobs.recv() {
            batch.push(first);
            self.fill(&mut batch);
            self.execute(&mut batch);
        }
    }

    /// Takes the jobs already waiting; with a linger, waits up to that long for more.
    ///
    /// Under concurrency (more than one job waiting), the writer also yields its CPU a
    /// few times while new jobs keep arriving: the callers just answered by the
    /// previous commit are then able to send their next operation into this batch
    /// rather than the next one (on two cores this doubles the operations per fsync).
    /// A lone caller never waits.
    fn fill(&self, batch: &mut Vec<Job>) {
        if !self.drain(batch) {
            return;
        }
        if batch.len() > 1 {
            for _ in 0..YIELD_ROUNDS {
                let before = batch.len();
                std::thread::yield_now();
                if !self.drain(batch) || batch.len() == before {
                    break;
                }
            }
        }
        // `open` caps the linger; a linger that still cannot be added commits now.
        let Some(deadline) = Instant::now().checked_add(self.linger) else {
            return;
        };
        while batch.len() < self.max_batch {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            match self.jobs.recv_timeout(deadline - now) {
                Ok(job) => batch.push(job),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
            }
            if !self.drain(batch) {
                return;
            }
        }
    }

    /// Moves every waiting job into the batch (up to `max_batch`); `false` when the
    /// batch is full or the channel is closed.
    fn drain(&self, batch: &mut Vec<Job>) -> bool {
        while batch.len() < self.max_batch {
            match self.jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
        false
    }

    fn execute(&mut self, batch: &mut Vec<Job>) {
        match self.run_batch(batch) {
            Ok(results) => self.finish(batch.drain(..).zip(results)),
            Err(BatchError::Lock(e)) | Err(BatchError::Commit(e)) => {
                let msg = e.to_string();
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(clone_error(&e, &msg)));
                }
            }
            Err(BatchError::Op(e)) if batch.len() == 1 => {
                if let Some(job) = batch.pop() {
                    let _ = job.reply.send(Err(e));
                }
            }
            Err(BatchError::Op(_)) => {
                // Isolate the failing job: one transaction per job.
                for job in std::mem::take(batch) {
                    let mut one = vec![job];
                    self.execute(&mut one);
                }
            }
        }
    }

    /// Replies and wakes the in-process waiters of the records that settled or went.
    fn finish(&self, done: impl Iterator<Item = (Job, StoreResult<Reply>)>) {
        let mut woken: Vec<RecordKey> = Vec::new();
        let mut wake_all = false;
        let watched = !self.waiters.is_empty();
        for (job, result) in done {
            if watched {
                match (&job.op, &result) {
                    (Op::Settle { id, .. } | Op::Release { id, .. }, Ok(_))
                    | (Op::Purge(id), Ok(Reply::Purged(true))) => woken.push(id.clone()),
                    (Op::Sweep, Ok(Reply::Swept(n))) if *n > 0 => wake_all = true,
                    _ => {}
                }
            }
            let _ = job.reply.send(result);
        }
        if wake_all {
            self.waiters.notify_all();
        } else if !woken.is_empty() {
            self.waiters.notify(&woken);
        }
    }

    fn run_batch(&mut self, jobs: &[Job]) -> Result<Vec<StoreResult<Reply>>, BatchError> {
        begin_immediate(&self.conn).map_err(BatchError::Lock)?;
        let mut seq: Option<TokenSeq> = None;
        let mut out = Vec::with_capacity(jobs.len());
        let mut applied = 0u64;
        for job in jobs {
            // A claim whose caller is gone (its future was dropped) would create a
            // record nobody settles: skip it. Other operations run regardless.
            if matches!(job.op, Op::Claim(_)) && job.reply.is_closed() {
                out.push(Err(StoreError::Unavailable("claim cancelled".into())));
                continue;
            }
            let now = self.clock.now_ms();
            match apply(&self.conn, &job.op, now, &mut seq) {
                Ok(r) => {
                    applied += 1;
                    out.push(r);
                }
                Err(e) => {
                    rollback(&self.conn);
                    return Err(BatchError::Op(map_err(e)));
                }
            }
        }
        if let Some(seq) = seq.as_mut()
            && let Err(e) = seq.store(&self.conn)
        {
            rollback(&self.conn);
            return Err(BatchError::Op(map_err(e)));
        }
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            rollback(&self.conn);
            return Err(BatchError::Commit(map_err(e)));
        }
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        self.counters
            .operations
            .fetch_add(applied, Ordering::Relaxed);
        Ok(out)
    }
}

/// Why a batch did not commit.
enum BatchError {
    /// The write lock could not be taken: nothing ran.
    Lock(StoreError),
    /// A job hit a database error: the batch was rolled back.
    Op(StoreError),
    /// The commit failed: the batch was rolled back.
    Commit(StoreError),
}

/// The same error for every job of a failed batch (`StoreError` is not `Clone`).
fn clone_error(e: &StoreError, msg: &str) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Incompatible(m) => StoreError::Incompatible(m.clone()),
        _ => StoreError::Backend(msg.to_string().into()),
    }
}

/// `BEGIN IMMEDIATE`, retried when another process holds the write lock for longer
/// than the busy timeout.
fn begin_immediate(conn: &Connection) -> Result<(), StoreError> {
    let mut attempt = 0;
    loop {
        match conn.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => return Ok(()),
            Err(e) if is_busy(&e) && attempt < BUSY_RETRIES => attempt += 1,
            Err(e) => return Err(map_err(e)),
        }
    }
}

/// Rolls back the open transaction, if any.
fn rollback(conn: &Connection) {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
}

pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Applies one operation inside the current transaction; `seq` is the token counter,
/// loaded by the first claim of the transaction.
fn apply(
    conn: &Connection,
    op: &Op,
    now: Millis,
    seq: &mut Option<TokenSeq>,
) -> rusqlite::Result<StoreResult<Reply>> {
    Ok(match op {
        Op::Claim(c) => {
            let seq = match seq {
                Some(s) => s,
                None => seq.insert(TokenSeq::load(conn)?),
            };
            ops::claim(conn, c, now, seq)?.map(Reply::Claim)
        }
        Op::Settle {
            id,
            token,
            outcome,
            ttl,
            failed,
        } => ops::settle(conn, id, *token, outcome, *ttl, *failed, now)?.map(|()| Reply::Done),
        Op::Release { id, token } => ops::release(conn, id, *token, now)?.map(|()| Reply::Done),
        Op::Renew { id, token, lease } => {
            ops::renew(conn, id, *token, *lease, now)?.map(Reply::Renewed)
        }
        Op::Purge(id) => ops::purge(conn, id, now)?.map(Reply::Purged),
        Op::Sweep => ops::sweep(conn, now)?.map(Reply::Swept),
    })
}
