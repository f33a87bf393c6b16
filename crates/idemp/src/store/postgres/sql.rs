//! The SQL of the Postgres store: one statement per operation.
//!
//! Every statement starts with the `now` CTE: `$1` is an optional client clock
//! override (milliseconds), otherwise the server's `clock_timestamp()` is used, so the
//! clocks of the workers never matter. Templates name the schema `__SCHEMA__` and the
//! notification channel `__CHANNEL__`; [`Sql::new`] fills them in once per store.

/// The `now` CTE: one instant for the whole statement.
const NOW: &str = "now AS (SELECT COALESCE($1::bigint, \
     floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) AS ms)";

/// The columns every record-returning statement yields first, in this order.
pub(super) mod col {
    pub const SCOPE: usize = 0;
    pub const KEY: usize = 1;
    pub const FINGERPRINT: usize = 2;
    pub const STATE: usize = 3;
    pub const TOKEN: usize = 4;
    pub const PREV_TOKEN: usize = 5;
    pub const ATTEMPTS: usize = 6;
    pub const CREATED_AT: usize = 7;
    pub const UPDATED_AT: usize = 8;
    pub const LEASE_UNTIL: usize = 9;
    pub const EXPIRES_AT: usize = 10;
    pub const CODEC: usize = 11;
    pub const COMPRESSION: usize = 12;
    pub const OUTCOME: usize = 13;
    /// Claim only: whether this claim acquired the key.
    pub const ACQUIRED: usize = 14;
    /// Claim only, when not acquired: the row read was stale (it looked dead,
    /// claimable or the claimant's own, yet the upsert did not take it).
    pub const RETRY: usize = 15;
}

/// State numbers as stored.
pub(super) mod state {
    pub const IN_PROGRESS: i16 = 0;
    pub const COMPLETED: i16 = 1;
    pub const FAILED: i16 = 2;

    // The shared decoder reads these codes: they must be the record model's.
    use crate::store::record as r;
    const _: () = assert!(
        IN_PROGRESS as i64 == r::STATE_IN_PROGRESS
            && COMPLETED as i64 == r::STATE_COMPLETED
            && FAILED as i64 == r::STATE_FAILED
    );
}

fn cols(a: &str) -> String {
    [
        "scope",
        "key",
        "fingerprint",
        "state",
        "token",
        "prev_token",
        "attempts",
        "created_at",
        "updated_at",
        "lease_until",
        "expires_at",
        "codec",
        "compression",
        "outcome",
    ]
    .iter()
    .map(|c| format!("{a}.{c}"))
    .collect::<Vec<_>>()
    .join(", ")
}

/// Claim: `$1` now, `$2` scope, `$3` key, `$4` fingerprint, `$5` lease ms, `$6` ttl ms,
/// `$7` take over expired leases, `$8` the claimant's nonce (or NULL).
///
/// `cur` reads the row as of the statement's snapshot. When it shows a live record the
/// claim cannot take (settled, live lease, fingerprint mismatch), the INSERT produces no
/// row at all: a duplicate is a pure read (no row lock, no WAL flush). Otherwise the
/// upsert runs; its `DO UPDATE … WHERE` re-checks the *latest* version of the row under
/// its lock (a dead row is replaced, an expired lease taken over with a token drawn
/// after the lock, so larger than the row's, and the claimant's own in-progress row,
/// same nonce, is acquired again: same token, attempts and `prev_token`, lease
/// renewed). When the upsert yields nothing, the snapshot row is returned instead,
/// with `retry` set if that row is stale (it looked claimable or the claimant's own, or
/// there was none): the caller then re-runs the statement with a fresh snapshot.
const CLAIM: &str = r#"
WITH __NOW__,
cur AS (
  SELECT r.*,
         (r.state = 3 OR r.expires_at <= now.ms) AS dead,
         (r.state = 0 AND r.expires_at > now.ms
          AND (r.fingerprint IS NULL OR $4::bytea IS NULL OR r.fingerprint = $4::bytea)
          AND ((r.lease_until <= now.ms AND $7::boolean) OR (r.nonce = $8::bigint) IS TRUE))
           AS claimable
  FROM __SCHEMA__.records r, now
  WHERE r.scope = $2::text AND r.key = $3::text
),
ins AS (
  INSERT INTO __SCHEMA__.records AS r
    (scope, key, fingerprint, state, token, prev_token, attempts, created_at, updated_at,
     lease_until, ttl_ms, expires_at, watched, nonce)
  SELECT $2::text, $3::text, $4::bytea, 0, nextval('__SCHEMA__.tokens'), NULL, 1, now.ms, now.ms,
         now.ms + $5::bigint, $6::bigint, now.ms + $5::bigint + $6::bigint, false, $8::bigint
  FROM now
  WHERE NOT EXISTS (SELECT 1 FROM cur WHERE NOT cur.dead AND NOT cur.claimable)
  ON CONFLICT (scope, key) DO UPDATE SET
    fingerprint = CASE WHEN __DEAD__ THEN excluded.fingerprint
                       ELSE COALESCE(excluded.fingerprint, r.fingerprint) END,
    state       = 0,
    token       = CASE WHEN __MINE__ THEN r.token ELSE nextval('__SCHEMA__.tokens') END,
    prev_token  = CASE WHEN __MINE__ THEN r.prev_token WHEN __DEAD__ THEN NULL
                       ELSE r.token END,
    attempts    = CASE WHEN __MINE__ THEN r.attempts WHEN __DEAD__ THEN 1
                       ELSE r.attempts + 1 END,
    created_at  = CASE WHEN __DEAD__ THEN excluded.created_at ELSE r.created_at END,
    updated_at  = excluded.updated_at,
    lease_until = excluded.lease_until,
    ttl_ms      = excluded.ttl_ms,
    expires_at  = excluded.expires_at,
    watched     = CASE WHEN __DEAD__ THEN false ELSE r.watched END,
    nonce       = excluded.nonce,
    codec = NULL, compression = NULL, outcome = NULL
  WHERE __DEAD__
     OR ((r.lease_until <= excluded.created_at AND $7::boolean) OR __MINE__)
        AND r.state = 0
        AND (r.fingerprint IS NULL OR excluded.fingerprint IS NULL
             OR r.fingerprint = excluded.fingerprint)
  RETURNING r.*
)
SELECT __INS_COLS__, true, false FROM ins
UNION ALL
SELECT __CUR_COLS__, false, COALESCE(cur.dead OR cur.claimable, false)
FROM cur WHERE NOT EXISTS (SELECT 1 FROM ins)
"#;

/// In the claim's `DO UPDATE`: the row is gone (a tombstone or expired).
const DEAD: &str = "(r.state = 3 OR r.expires_at <= excluded.created_at)";
/// In the claim's `DO UPDATE`: the row is the claimant's own live acquisition (same
/// nonce; a NULL nonce matches nothing).
const MINE: &str = "(r.state = 0 AND r.expires_at > excluded.created_at \
     AND (r.nonce = excluded.nonce) IS TRUE)";

/// Settle: `$1` now, `$2` scope, `$3` key, `$4` token, `$5` state (1 completed, 2
/// failed), `$6` codec, `$7` compression, `$8` bytes, `$9` ttl ms.
/// Yields (changed, notified, current token of the live row when unchanged).
const SETTLE: &str = r#"
WITH __NOW__,
upd AS (
  UPDATE __SCHEMA__.records r
  SET state = $5::smallint, codec = $6::smallint, compression = $7::smallint, outcome = $8::bytea,
      updated_at = now.ms, expires_at = now.ms + $9::bigint, lease_until = NULL, prev_token = NULL
  FROM now
  WHERE r.scope = $2::text AND r.key = $3::text AND r.token = $4::bigint AND r.state = 0
    AND r.expires_at > now.ms
  RETURNING r.watched
),
__NOTE__
SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM note),
       CASE WHEN NOT EXISTS (SELECT 1 FROM upd) THEN
         (SELECT c.token FROM __SCHEMA__.records c WHERE c.scope = $2::text AND c.key = $3::text
            AND c.state < 3 AND c.expires_at > (SELECT ms FROM now)) END
"#;

/// Release: `$1` now, `$2` scope, `$3` key, `$4` token, `$5` tombstone retention ms.
/// Yields (changed, notified, current token of the live row when unchanged).
const RELEASE: &str = r#"
WITH __NOW__,
upd AS (
  UPDATE __SCHEMA__.records r
  SET state = 3, fingerprint = NULL, codec = NULL, compression = NULL, outcome = NULL,
      lease_until = NULL, prev_token = NULL, updated_at = now.ms, expires_at = now.ms + $5::bigint
  FROM now
  WHERE r.scope = $2::text AND r.key = $3::text AND r.token = $4::bigint AND r.state = 0
    AND r.expires_at > now.ms
  RETURNING r.watched
),
__NOTE__
SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM note),
       CASE WHEN NOT EXISTS (SELECT 1 FROM upd) THEN
         (SELECT c.token FROM __SCHEMA__.records c WHERE c.scope = $2::text AND c.key = $3::text
            AND c.state < 3 AND c.expires_at > (SELECT ms FROM now)) END
"#;

/// Renew: `$1` now, `$2` scope, `$3` key, `$4` token, `$5` lease ms.
/// Yields (new lease_until or NULL, current token of the live row).
const RENEW: &str = r#"
WITH __NOW__,
upd AS (
  UPDATE __SCHEMA__.records r
  SET lease_until = now.ms + $5::bigint, expires_at = now.ms + $5::bigint + r.ttl_ms, updated_at = now.ms
  FROM now
  WHERE r.scope = $2::text AND r.key = $3::text AND r.token = $4::bigint AND r.state = 0
    AND r.expires_at > now.ms
  RETURNING r.lease_until
)
SELECT (SELECT lease_until FROM upd),
       CASE WHEN NOT EXISTS (SELECT 1 FROM upd) THEN
         (SELECT c.token FROM __SCHEMA__.records c WHERE c.scope = $2::text AND c.key = $3::text
            AND c.state < 3 AND c.expires_at > (SELECT ms FROM now)) END
"#;

/// Purge: `$1` now, `$2` scope, `$3` key, `$4` tombstone retention ms.
/// Yields (changed, was live). A tombstone's `lease_until` is unused, so the update
/// records there whether the purged row was live (1) or already expired (0).
const PURGE: &str = r#"
WITH __NOW__,
upd AS (
  UPDATE __SCHEMA__.records r
  SET state = 3, fingerprint = NULL, codec = NULL, compression = NULL, outcome = NULL,
      prev_token = NULL, updated_at = now.ms, expires_at = now.ms + $4::bigint,
      lease_until = CASE WHEN r.expires_at > now.ms THEN 1 ELSE 0 END
  FROM now
  WHERE r.scope = $2::text AND r.key = $3::text AND r.state < 3
  RETURNING r.watched, r.lease_until
),
__NOTE__
SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM note),
       COALESCE((SELECT lease_until = 1 FROM upd), false)
"#;

/// The notification of a settled, released or purged row that someone may wait for.
/// The payload is `<chars in scope>:<scope><key>`, or `*` (wake every waiter) when too
/// long for a NOTIFY payload.
///
/// Waiters never write the row (that would break an owner's REPEATABLE READ or
/// SERIALIZABLE transaction, and queue behind its row lock): each holds a shared
/// advisory lock on the hash of its presence name (`listen::presence_name`) from
/// before its first read until it returns. After changing the row, this statement
/// tries the exclusive lock on that hash: it fails while a waiter is present, and the
/// statement notifies. When it succeeds, no waiter was present at that moment and the
/// lock (held until commit) makes a waiter that comes before the commit poll; a waiter
/// that comes after the commit reads the settled row. Advisory locks ignore snapshots,
/// so this holds inside the owner's own transaction too. (`watched` is still honoured
/// for waiters of earlier versions.)
const NOTE: &str = r#"note AS (
  SELECT pg_notify('__CHANNEL__',
           CASE WHEN octet_length($2::text) + octet_length($3::text) < 7900
                THEN length($2::text)::text || ':' || $2::text || $3::text
                ELSE '*' END)
  FROM upd
  WHERE upd.watched
     OR NOT pg_try_advisory_xact_lock(hashtextextended(
              '__CHANNEL__/' || octet_length($2::text)::text || ':' || $2::text || $3::text, 0))
)"#;

/// Get: `$1` now, `$2` scope, `$3` key.
const GET: &str = r#"
WITH __NOW__
SELECT __R_COLS__ FROM __SCHEMA__.records r, now
WHERE r.scope = $2::text AND r.key = $3::text AND r.state < 3 AND r.expires_at > now.ms
"#;

/// The current token of the live record: `$1` now, `$2` scope, `$3` key. Used when a
/// compare-and-set's own snapshot named the caller's token (a concurrent takeover
/// committed during the statement): a new statement sees the successor.
const CURRENT: &str = r#"
WITH __NOW__
SELECT r.token FROM __SCHEMA__.records r, now
WHERE r.scope = $2::text AND r.key = $3::text AND r.state < 3 AND r.expires_at > now.ms
"#;

/// List: `$1` now, `$2` scope, `$3` key prefix, `$4`/`$5` after (scope, key), `$6` limit.
const LIST: &str = r#"
WITH __NOW__
SELECT __R_COLS__ FROM __SCHEMA__.records r, now
WHERE r.state < 3 AND r.expires_at > now.ms
  AND ($2::text IS NULL OR r.scope = $2::text)
  AND ($3::text IS NULL OR starts_with(r.key, $3::text))
  AND ($4::text IS NULL OR (r.scope, r.key) > ($4::text, $5::text))
ORDER BY r.scope, r.key
LIMIT $6::bigint
"#;

/// Stats: `$1` now.
const STATS: &str = r#"
WITH __NOW__
SELECT count(*) FILTER (WHERE r.state = 0 AND r.lease_until > now.ms),
       count(*) FILTER (WHERE r.state = 0 AND r.lease_until <= now.ms),
       count(*) FILTER (WHERE r.state = 1),
       count(*) FILTER (WHERE r.state = 2),
       COALESCE(sum(octet_length(r.outcome)), 0)::bigint
FROM __SCHEMA__.records r, now
WHERE r.state < 3 AND r.expires_at > now.ms
"#;

/// Sweep one range of the table's pages: `$1` now, `$2` first page, `$3` page after
/// the last. A TID range scan: each statement reads a bounded slice of the table, and a
/// full pass reads it once, without an index that every write would have to maintain.
const SWEEP: &str = r#"
WITH __NOW__
DELETE FROM __SCHEMA__.records d USING now
WHERE d.ctid >= format('(%s,0)', $2::bigint)::tid
  AND d.ctid < format('(%s,0)', $3::bigint)::tid
  AND d.expires_at <= now.ms
"#;

/// The table's size in pages (`$1` unused, keeps every statement's `$1` the clock).
const PAGES: &str = r#"
SELECT pg_relation_size('__SCHEMA__.records') / current_setting('block_size')::bigint
"#;

/// The statements of one store, with its schema and channel filled in.
#[derive(Debug, Clone)]
pub(super) struct Sql {
    pub claim: String,
    pub settle: String,
    pub release: String,
    pub renew: String,
    pub purge: String,
    pub get: String,
    pub current: String,
    pub list: String,
    pub stats: String,
    pub sweep: String,
    pub pages: String,
}

impl Sql {
    /// `schema` is the quoted schema identifier; `channel` the NOTIFY channel name
    /// (identifier characters only, so it needs no escaping inside a literal).
    pub fn new(schema: &str, channel: &str) -> Self {
        let fill = |t: &str| {
            t.replace("__NOTE__", NOTE)
                .replace("__DEAD__", DEAD)
                .replace("__MINE__", MINE)
                .replace("__NOW__", NOW)
                .replace("__INS_COLS__", &cols("ins"))
                .replace("__CUR_COLS__", &cols("cur"))
                .replace("__R_COLS__", &cols("r"))
                .replace("__SCHEMA__", schema)
                .replace("__CHANNEL__", channel)
        };
        Self {
            claim: fill(CLAIM),
            settle: fill(SETTLE),
            release: fill(RELEASE),
            renew: fill(RENEW),
            purge: fill(PURGE),
            get: fill(GET),
            current: fill(CURRENT),
            list: fill(LIST),
            stats: fill(STATS),
            sweep: fill(SWEEP),
            pages: fill(PAGES),
        }
    }
}

/// The migrations, in order; migration `i` brings the schema to version `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("migrations/001_init.sql"),
    include_str!("migrations/002_sweep_without_index.sql"),
    include_str!("migrations/003_claim_nonce.sql"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled() {
        let sql = Sql::new("\"s\"", "idemp_s");
        for text in [
            &sql.claim,
            &sql.settle,
            &sql.release,
            &sql.renew,
            &sql.purge,
            &sql.get,
            &sql.current,
            &sql.list,
            &sql.stats,
            &sql.sweep,
            &sql.pages,
        ] {
            assert!(!text.contains("__"), "{text}");
        }
    }
}
