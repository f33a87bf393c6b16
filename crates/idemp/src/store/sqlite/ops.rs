//! The store operations as SQL on one connection.
//!
//! Every function here runs inside a transaction the caller opened (the writer's
//! group-commit transaction, or a user's own transaction for `complete_in_tx`).
//! The outer `rusqlite::Result` is a database failure (the whole transaction must be
//! rolled back); the inner [`StoreResult`] is the operation's own answer (`Fenced`,
//! `Invalid`, `Corrupt`…), which leaves the transaction usable.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::clock::Millis;
use crate::store::record::{self, ClaimStep, Held, LIMITS, RawRecord, decide_claim, decode_token};
use crate::store::{
    Claim, ClaimOutcome, ListQuery, Outcome, Page, Record, RecordKey, State, Stats, StoreResult,
    Token,
};

/// `state` column values (the shared codes of [`record`]).
pub(crate) const IN_PROGRESS: i64 = record::STATE_IN_PROGRESS;
pub(crate) const COMPLETED: i64 = record::STATE_COMPLETED;
pub(crate) const FAILED: i64 = record::STATE_FAILED;

/// A database result wrapping the operation's own result.
pub(crate) type OpResult<T> = rusqlite::Result<StoreResult<T>>;

const COLUMNS: &str = "scope, key, fingerprint, state, token, attempts, created_at, \
                       updated_at, lease_until, purge_at, codec, compression, outcome";

/// Milliseconds as stored (SQLite integers are signed).
pub(crate) fn sql_ms(ms: Millis) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn ms_from_sql(v: i64) -> Millis {
    u64::try_from(v).unwrap_or(0)
}

fn capped_ms(d: Duration) -> Millis {
    LIMITS.capped_ms(d)
}

/// Refuses keys over the [`LIMITS`] every store shares.
pub(crate) fn validate(id: &RecordKey) -> StoreResult<()> {
    LIMITS.check_id(id)
}

/// A row as stored, before it is checked and turned into a [`Record`].
struct RawRow {
    scope: String,
    key: String,
    fingerprint: Option<Vec<u8>>,
    state: i64,
    token: i64,
    attempts: i64,
    created_at: i64,
    updated_at: i64,
    lease_until: Option<i64>,
    purge_at: i64,
    codec: Option<i64>,
    compression: Option<i64>,
    outcome: Option<Vec<u8>>,
}

impl RawRow {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            scope: row.get(0)?,
            key: row.get(1)?,
            fingerprint: row.get(2)?,
            state: row.get(3)?,
            token: row.get(4)?,
            attempts: row.get(5)?,
            created_at: row.get(6)?,
            updated_at: row.get(7)?,
            lease_until: row.get(8)?,
            purge_at: row.get(9)?,
            codec: row.get(10)?,
            compression: row.get(11)?,
            outcome: row.get(12)?,
        })
    }

    fn is_live(&self, now: Millis) -> bool {
        self.purge_at > sql_ms(now)
    }

    fn into_record(self) -> StoreResult<Record> {
        let settled = self.state != IN_PROGRESS;
        RawRecord {
            id: RecordKey::new(self.scope, self.key),
            fingerprint: self.fingerprint,
            state: self.state,
            token: self.token,
            attempts: self.attempts,
            created_at: self.created_at,
            updated_at: self.updated_at,
            lease_until: self.lease_until,
            // A settled record expires when it is purged.
            expires_at: settled.then_some(self.purge_at),
            codec: self.codec,
            compression: self.compression,
            outcome: self.outcome,
        }
        .decode()
    }
}

fn select_row(conn: &Connection, id: &RecordKey) -> rusqlite::Result<Option<RawRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM idemp_records WHERE scope = ?1 AND key = ?2"
    ))?;
    stmt.query_row(params![id.scope, id.key], RawRow::from_row)
        .optional()
}

/// The file's fencing-token counter, read once per write transaction and written
/// back before its commit (the transaction holds the write lock, so no other
/// connection can move it in between).
#[derive(Debug, Default)]
pub(crate) struct TokenSeq {
    last: Token,
    dirty: bool,
}

impl TokenSeq {
    /// Reads the counter inside the current write transaction.
    pub(crate) fn load(conn: &Connection) -> rusqlite::Result<Self> {
        let mut stmt =
            conn.prepare_cached("SELECT value FROM idemp_meta WHERE name = 'token_seq'")?;
        let v: i64 = stmt.query_row([], |r| r.get(0))?;
        Ok(Self {
            last: ms_from_sql(v),
            dirty: false,
        })
    }

    /// The token the next acquisition gets (not yet taken).
    fn peek(&self) -> Token {
        self.last + 1
    }

    /// Takes the next token.
    fn take(&mut self) -> Token {
        self.last += 1;
        self.dirty = true;
        self.last
    }

    /// Writes the counter back, if tokens were taken.
    pub(crate) fn store(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        if self.dirty {
            let mut stmt =
                conn.prepare_cached("UPDATE idemp_meta SET value = ?1 WHERE name = 'token_seq'")?;
            stmt.execute([sql_ms(self.last)])?;
            self.dirty = false;
        }
        Ok(())
    }
}

/// A claim's nonce as stored: the signed integer with the same 64 bits.
fn sql_nonce(nonce: Option<u64>) -> Option<i64> {
    nonce.map(|n| i64::from_ne_bytes(n.to_ne_bytes()))
}

/// The owner-side columns only the claim decision reads: the nonce of the claim
/// that acquired the record, and the token it took over.
struct Owner {
    nonce: Option<u64>,
    takeover: Option<Token>,
}

/// The row a claim found, with its [`Owner`] columns.
fn select_for_claim(
    conn: &Connection,
    id: &RecordKey,
) -> rusqlite::Result<Option<(RawRow, Owner)>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS}, nonce, takeover FROM idemp_records WHERE scope = ?1 AND key = ?2"
    ))?;
    stmt.query_row(params![id.scope, id.key], |row| {
        let raw = RawRow::from_row(row)?;
        let nonce: Option<i64> = row.get(13)?;
        let takeover: Option<i64> = row.get(14)?;
        let owner = Owner {
            nonce: nonce.map(|n| u64::from_ne_bytes(n.to_ne_bytes())),
            // Written only from a token; anything else reports no takeover.
            takeover: takeover.and_then(|t| decode_token(t).ok()),
        };
        Ok((raw, owner))
    })
    .optional()
}

/// `claim`: see [`crate::store::Store::claim`]; the decision is the shared
/// [`decide_claim`]. Tokens come from `seq`, which the caller stores before
/// committing.
pub(crate) fn claim(
    conn: &Connection,
    c: &Claim,
    now: Millis,
    seq: &mut TokenSeq,
) -> OpResult<ClaimOutcome> {
    if let Err(e) = validate(&c.id) {
        return Ok(Err(e));
    }
    let lease_until = now.saturating_add(capped_ms(c.lease));
    let ttl_ms = capped_ms(c.ttl);
    let purge_at = lease_until.saturating_add(ttl_ms);

    // Fast path, one statement: the decision for no live record (`Fresh`) is to
    // insert a new record, or replace one that is no longer live (expired, not yet
    // swept).
    let token = seq.peek();
    let mut stmt = conn.prepare_cached(
        "INSERT INTO idemp_records (scope, key, fingerprint, state, token, attempts, \
         created_at, updated_at, lease_until, ttl_ms, purge_at, codec, compression, outcome, \
         nonce, takeover) \
         VALUES (?1, ?2, ?3, 0, ?4, 1, ?5, ?5, ?6, ?7, ?8, NULL, NULL, NULL, ?9, NULL) \
         ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint, \
         state = 0, token = excluded.token, attempts = 1, created_at = excluded.created_at, \
         updated_at = excluded.updated_at, lease_until = excluded.lease_until, \
         ttl_ms = excluded.ttl_ms, purge_at = excluded.purge_at, codec = NULL, \
         compression = NULL, outcome = NULL, nonce = excluded.nonce, takeover = NULL \
         WHERE idemp_records.purge_at <= excluded.created_at",
    )?;
    let inserted = stmt.execute(params![
        c.id.scope,
        c.id.key,
        c.fingerprint.map(|f| f.0.to_vec()),
        sql_ms(token),
        sql_ms(now),
        sql_ms(lease_until),
        sql_ms(ttl_ms),
        sql_ms(purge_at),
        sql_nonce(c.nonce),
    ])?;
    if inserted == 1 {
        seq.take();
        return Ok(Ok(ClaimOutcome::Acquired {
            token,
            lease_until,
            takeover: None,
            attempt: 1,
        }));
    }

    // A live record exists (the insert changed nothing, so the row is live).
    let Some((raw, owner)) = select_for_claim(conn, &c.id)? else {
        return Err(rusqlite::Error::QueryReturnedNoRows);
    };
    let rec = match raw.into_record() {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    let held = Held {
        fingerprint: rec.fingerprint,
        lease_until: match rec.state {
            State::InProgress { lease_until } => Some(lease_until),
            State::Completed(_) | State::Failed(_) => None,
        },
        token: rec.token,
        attempts: rec.attempts,
        nonce: owner.nonce,
        takeover: owner.takeover,
    };
    match decide_claim(Some(&held), c, now) {
        ClaimStep::Takeover { previous, attempt } => {
            // A taker without a fingerprint keeps the stored one.
            let fp = c.fingerprint.or(rec.fingerprint).map(|f| f.0.to_vec());
            let token = seq.take();
            let mut stmt = conn.prepare_cached(
                "UPDATE idemp_records SET fingerprint = ?3, state = 0, token = ?4, \
                 attempts = ?5, updated_at = ?6, lease_until = ?7, ttl_ms = ?8, \
                 purge_at = ?9, codec = NULL, compression = NULL, outcome = NULL, \
                 nonce = ?10, takeover = ?11 \
                 WHERE scope = ?1 AND key = ?2",
            )?;
            stmt.execute(params![
                c.id.scope,
                c.id.key,
                fp,
                sql_ms(token),
                i64::from(attempt),
                sql_ms(now),
                sql_ms(lease_until),
                sql_ms(ttl_ms),
                sql_ms(purge_at),
                sql_nonce(c.nonce),
                sql_ms(previous),
            ])?;
            Ok(Ok(ClaimOutcome::Acquired {
                token,
                lease_until,
                takeover: Some(previous),
                attempt,
            }))
        }
        ClaimStep::Repeat {
            token,
            attempt,
            takeover,
        } => {
            let mut stmt = conn.prepare_cached(
                "UPDATE idemp_records SET updated_at = ?3, lease_until = ?4, ttl_ms = ?5, \
                 purge_at = ?6 WHERE scope = ?1 AND key = ?2",
            )?;
            stmt.execute(params![
                c.id.scope,
                c.id.key,
                sql_ms(now),
                sql_ms(lease_until),
                sql_ms(ttl_ms),
                sql_ms(purge_at),
            ])?;
            Ok(Ok(ClaimOutcome::Acquired {
                token,
                lease_until,
                takeover,
                attempt,
            }))
        }
        ClaimStep::Mismatch => Ok(Ok(ClaimOutcome::Mismatch(rec))),
        // `Fresh` cannot come from a live record; answering with it is the safe side.
        ClaimStep::Existing | ClaimStep::Fresh => Ok(Ok(ClaimOutcome::Existing(rec))),
    }
}

/// The answer of [`claim`] when `c.id` has a live settled record, read without the
/// write lock; `None` when [`claim`] must decide in the writer (no live record, a record
/// in progress, or one that does not decode).
///
/// A settled record never changes back: it only stops being live (expires, is purged
/// or swept). So a claim that finds it settled in a consistent snapshot (one read
/// statement) gets the answer the writer would have given at that instant, and
/// linearises there: `Mismatch` when both fingerprints are present and differ,
/// `Existing` otherwise. Replays need no write transaction, no fsync and no trip
/// through the writer thread.
pub(crate) fn claim_settled(
    conn: &Connection,
    c: &Claim,
    now: Millis,
) -> rusqlite::Result<Option<ClaimOutcome>> {
    if validate(&c.id).is_err() {
        return Ok(None);
    }
    let Some(raw) = select_row(conn, &c.id)? else {
        return Ok(None);
    };
    if !raw.is_live(now) || raw.state == IN_PROGRESS {
        return Ok(None);
    }
    let Ok(rec) = raw.into_record() else {
        return Ok(None);
    };
    if let (Some(stored), Some(given)) = (&rec.fingerprint, &c.fingerprint)
        && stored != given
    {
        return Ok(Some(ClaimOutcome::Mismatch(rec)));
    }
    Ok(Some(ClaimOutcome::Existing(rec)))
}

/// The `Fenced` error for `token` on `id`, naming the current live token if any.
fn fenced(conn: &Connection, id: &RecordKey, token: Token, now: Millis) -> OpResult<()> {
    let current = select_row(conn, id)?
        .filter(|r| r.is_live(now))
        .and_then(|r| decode_token(r.token).ok());
    Ok(Err(record::fenced(id, token, current)))
}

/// `complete` (when `failed` is false) or `fail`.
pub(crate) fn settle(
    conn: &Connection,
    id: &RecordKey,
    token: Token,
    outcome: &Outcome,
    ttl: Duration,
    failed: bool,
    now: Millis,
) -> OpResult<()> {
    if let Err(e) = validate(id).and_then(|()| LIMITS.check_outcome(outcome)) {
        return Ok(Err(e));
    }
    let purge_at = now.saturating_add(capped_ms(ttl));
    let mut stmt = conn.prepare_cached(
        "UPDATE idemp_records SET state = ?4, updated_at = ?5, lease_until = NULL, \
         purge_at = ?6, codec = ?7, compression = ?8, outcome = ?9 \
         WHERE scope = ?1 AND key = ?2 AND token = ?3 AND state = 0 AND purge_at > ?5",
    )?;
    let changed = stmt.execute(params![
        id.scope,
        id.key,
        sql_ms(token),
        if failed { FAILED } else { COMPLETED },
        sql_ms(now),
        sql_ms(purge_at),
        i64::from(outcome.codec.as_u8()),
        i64::from(outcome.compression.as_u8()),
        outcome.bytes,
    ])?;
    if changed == 1 {
        Ok(Ok(()))
    } else {
        fenced(conn, id, token, now)
    }
}

/// `release`: deletes the in-progress record owned by `token`.
pub(crate) fn release(
    conn: &Connection,
    id: &RecordKey,
    token: Token,
    now: Millis,
) -> OpResult<()> {
    if let Err(e) = validate(id) {
        return Ok(Err(e));
    }
    let mut stmt = conn.prepare_cached(
        "DELETE FROM idemp_records \
         WHERE scope = ?1 AND key = ?2 AND token = ?3 AND state = 0 AND purge_at > ?4",
    )?;
    if stmt.execute(params![id.scope, id.key, sql_ms(token), sql_ms(now)])? == 1 {
        Ok(Ok(()))
    } else {
        fenced(conn, id, token, now)
    }
}

/// `renew`: moves the lease of the in-progress record owned by `token`.
pub(crate) fn renew(
    conn: &Connection,
    id: &RecordKey,
    token: Token,
    lease: Duration,
    now: Millis,
) -> OpResult<Millis> {
    if let Err(e) = validate(id) {
        return Ok(Err(e));
    }
    let lease_until = now.saturating_add(capped_ms(lease));
    let mut stmt = conn.prepare_cached(
        "UPDATE idemp_records SET lease_until = ?4, purge_at = ?4 + ttl_ms, updated_at = ?5 \
         WHERE scope = ?1 AND key = ?2 AND token = ?3 AND state = 0 AND purge_at > ?5",
    )?;
    let changed = stmt.execute(params![
        id.scope,
        id.key,
        sql_ms(token),
        sql_ms(lease_until),
        sql_ms(now)
    ])?;
    if changed == 1 {
        Ok(Ok(lease_until))
    } else {
        Ok(fenced(conn, id, token, now)?.map(|()| lease_until))
    }
}

/// `purge`: deletes the record; whether a live one existed.
pub(crate) fn purge(conn: &Connection, id: &RecordKey, now: Millis) -> OpResult<bool> {
    let mut stmt = conn.prepare_cached(
        "DELETE FROM idemp_records WHERE scope = ?1 AND key = ?2 RETURNING purge_at",
    )?;
    let purge_at: Option<i64> = stmt
        .query_row(params![id.scope, id.key], |r| r.get(0))
        .optional()?;
    Ok(Ok(purge_at.is_some_and(|p| p > sql_ms(now))))
}

/// `sweep`: deletes every row that is no longer live.
pub(crate) fn sweep(conn: &Connection, now: Millis) -> OpResult<u64> {
    let mut stmt = conn.prepare_cached("DELETE FROM idemp_records WHERE purge_at <= ?1")?;
    let n = stmt.execute(params![sql_ms(now)])?;
    Ok(Ok(n as u64))
}

/// `get`: the live record.
pub(crate) fn get(conn: &Connection, id: &RecordKey, now: Millis) -> OpResult<Option<Record>> {
    match select_row(conn, id)? {
        Some(raw) if raw.is_live(now) => Ok(raw.into_record().map(Some)),
        _ => Ok(Ok(None)),
    }
}

/// The smallest string greater than every string that starts with `prefix`, in
/// SQLite's BINARY (UTF-8 byte) order, or `None` when there is none.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = u32::from(last) + 1;
        if (0xD800..=0xDFFF).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// `list`: a page of live records ordered by (scope, key).
pub(crate) fn list(conn: &Connection, q: &ListQuery, now: Millis) -> OpResult<Page> {
    let limit = q.effective_limit();
    let mut sql = format!("SELECT {COLUMNS} FROM idemp_records WHERE purge_at > ?1");
    let mut args: Vec<rusqlite::types::Value> = vec![sql_ms(now).into()];
    let mut arg = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(scope) = &q.scope {
        arg(&mut sql, " AND scope = ?", scope.clone().into());
    }
    if let Some(prefix) = q.key_prefix.as_ref().filter(|p| !p.is_empty()) {
        arg(&mut sql, " AND key >= ?", prefix.clone().into());
        if let Some(upper) = prefix_upper_bound(prefix) {
            arg(&mut sql, " AND key < ?", upper.into());
        }
    }
    if let Some(after) = &q.after {
        arg(
            &mut sql,
            " AND (scope, key) > (?",
            after.scope.clone().into(),
        );
        arg(&mut sql, ", ?)", after.key.clone().into());
    }
    arg(
        &mut sql,
        " ORDER BY scope, key LIMIT ?",
        i64::try_from(limit.saturating_add(1))
            .unwrap_or(i64::MAX)
            .into(),
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), RawRow::from_row)?;
    let mut records = Vec::with_capacity(limit.min(1024));
    let mut more = false;
    for row in rows {
        let raw = row?;
        if records.len() == limit {
            more = true;
            break;
        }
        match raw.into_record() {
            Ok(r) => records.push(r),
            Err(e) => return Ok(Err(e)),
        }
    }
    let next = if more {
        records.last().map(|r| r.id.clone())
    } else {
        None
    };
    Ok(Ok(Page { records, next }))
}

/// `stats`: counts of live records by state.
pub(crate) fn stats(conn: &Connection, now: Millis) -> OpResult<Stats> {
    let mut stmt = conn.prepare_cached(
        "SELECT coalesce(sum(state = 0 AND lease_until > ?1), 0), \
                coalesce(sum(state = 0 AND lease_until <= ?1), 0), \
                coalesce(sum(state = 1), 0), coalesce(sum(state = 2), 0), \
                coalesce(sum(length(outcome)), 0) \
         FROM idemp_records WHERE purge_at > ?1",
    )?;
    let s = stmt.query_row(params![sql_ms(now)], |r| {
        Ok(Stats {
            in_progress: ms_from_sql(r.get(0)?),
            ambiguous: ms_from_sql(r.get(1)?),
            completed: ms_from_sql(r.get(2)?),
            failed: ms_from_sql(r.get(3)?),
            outcome_bytes: Some(ms_from_sql(r.get(4)?)),
        })
    })?;
    Ok(Ok(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_bounds() {
        assert_eq!(prefix_upper_bound("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(
            prefix_upper_bound("a\u{10FFFF}").as_deref(),
            Some("b"),
            "a maximal last char carries into the previous one"
        );
        assert_eq!(prefix_upper_bound("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
    }
}
