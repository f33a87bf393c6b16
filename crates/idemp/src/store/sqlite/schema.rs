//! Opening a database file: recognising it, creating or migrating idemp's tables.
//!
//! A file is an idemp store when it has the `idemp_meta` table. A new file gets the
//! SQLite `application_id` [`APPLICATION_ID`] ("idmp") as well, so tools such as
//! `file(1)` can tell what it is. Nothing is written to a file until it is known to be
//! an idemp store, an empty database we may initialise, or (only when asked with
//! `adopt_existing`) an application database that idemp's tables may join.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};

use super::{SqliteOptions, Synchronous, map_err};
use crate::store::{StoreError, StoreResult};

/// The SQLite `application_id` of idemp stores: the bytes `idmp`.
pub const APPLICATION_ID: i32 = 0x6964_6d70;

/// The schema version this build writes and reads.
///
/// Version 2 added the `nonce` and `takeover` columns ([`Claim::nonce`]); a file
/// of version 1 is migrated when a store opens it (a build that only knows
/// version 1 then refuses the file as newer than it supports).
///
/// [`Claim::nonce`]: crate::store::Claim::nonce
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Scripts that move a schema from version `i` to `i + 1` (index 0 creates version 1).
const MIGRATIONS: &[&str] = &[include_str!("schema_v1.sql"), include_str!("schema_v2.sql")];

/// Connects to `path` and [`prepare`]s it, retrying for up to the busy timeout while
/// another process holds a lock that SQLite reports at once instead of waiting for it
/// with the busy handler (a process switching a new file to WAL, or recovering the
/// WAL index, as happens when several processes open one new file together).
pub(crate) fn open(path: &Path, opts: &SqliteOptions) -> StoreResult<Connection> {
    let deadline = std::time::Instant::now().checked_add(opts.busy_timeout);
    let mut pause = Duration::from_millis(2);
    loop {
        let attempt = connect(path, opts, opts.create_if_missing).and_then(|mut conn| {
            prepare(&mut conn, path, opts)?;
            Ok(conn)
        });
        match attempt {
            Err(e)
                if is_busy(&e)
                    && deadline.is_none_or(|d| std::time::Instant::now() + pause < d) =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Whether `e` is SQLite's "database is busy/locked".
fn is_busy(e: &StoreError) -> bool {
    let StoreError::Unavailable(cause) = e else {
        return false;
    };
    std::error::Error::source(cause)
        .and_then(|s| s.downcast_ref::<rusqlite::Error>())
        .and_then(rusqlite::Error::sqlite_error_code)
        .is_some_and(|c| matches!(c, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
}

/// Opens a connection to `path` with the options, without touching the file's content.
pub(crate) fn connect(path: &Path, opts: &SqliteOptions, create: bool) -> StoreResult<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn =
        Connection::open_with_flags(path, flags).map_err(|e| match e.sqlite_error_code() {
            Some(ErrorCode::CannotOpen) => {
                StoreError::unavailable(format!("cannot open SQLite store {}", path.display()), e)
            }
            _ => map_err(e),
        })?;
    conn.busy_timeout(opts.busy_timeout).map_err(map_err)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Sets the per-connection pragmas of a connection to a recognised idemp store.
pub(crate) fn configure(conn: &Connection, opts: &SqliteOptions) -> StoreResult<()> {
    let sync = match opts.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)
        .map_err(map_err)
}

/// What a file holds, as far as idemp is concerned.
#[derive(Debug, PartialEq, Eq)]
enum Content {
    /// An idemp store at this schema version.
    Idemp(i64),
    /// A database without any table (a new or zero-length file).
    Empty,
    /// A database with other tables and no idemp tables.
    Foreign(Vec<String>),
}

fn not_sqlite(path: &Path, e: &rusqlite::Error) -> StoreError {
    StoreError::Incompatible(format!(
        "{} is not an SQLite database ({e}); refusing to use it as an idemp store",
        path.display()
    ))
}

fn inspect(conn: &Connection, path: &Path) -> StoreResult<Content> {
    let app_id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(|e| match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => not_sqlite(path, &e),
            _ => map_err(e),
        })?;
    if app_id != 0 && app_id != APPLICATION_ID {
        return Err(StoreError::Incompatible(format!(
            "{} belongs to another application (SQLite application_id {app_id:#010x}); \
             refusing to use it as an idemp store",
            path.display()
        )));
    }
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .map_err(|e| match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => not_sqlite(path, &e),
            _ => map_err(e),
        })?;
    let tables: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(map_err)?;
    if tables.iter().any(|t| t == "idemp_meta") {
        let version: Option<i64> = conn
            .query_row(
                "SELECT value FROM idemp_meta WHERE name = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(map_err)?;
        return match version {
            Some(v) if v >= 1 => Ok(Content::Idemp(v)),
            _ => Err(StoreError::Incompatible(format!(
                "{} has an idemp_meta table without a valid schema_version; \
                 refusing to touch it",
                path.display()
            ))),
        };
    }
    if app_id == APPLICATION_ID {
        return Err(StoreError::Incompatible(format!(
            "{} is marked as an idemp store but its tables are missing (damaged?)",
            path.display()
        )));
    }
    let foreign: Vec<String> = tables
        .into_iter()
        .filter(|t| !t.starts_with("sqlite_"))
        .collect();
    if foreign.is_empty() {
        Ok(Content::Empty)
    } else {
        Ok(Content::Foreign(foreign))
    }
}

/// Checks that `conn`'s file can be used, then creates or migrates idemp's tables.
pub(crate) fn prepare(conn: &mut Connection, path: &Path, opts: &SqliteOptions) -> StoreResult<()> {
    // 1. Read-only inspection: nothing is written before the file is recognised.
    check(&inspect(conn, path)?, path, opts)?;

    // 2. WAL (persistent, a no-op when already set) and this connection's pragmas.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(map_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Incompatible(format!(
            "{} cannot use write-ahead logging (journal_mode stays {mode}); \
             is it on a network file system?",
            path.display()
        )));
    }
    configure(conn, opts)?;

    // 3. Create or migrate under the write lock; another process may have done it
    //    since the inspection, so look again inside the transaction.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_err)?;
    let content = inspect(&tx, path)?;
    check(&content, path, opts)?;
    let (from, fresh) = match content {
        Content::Idemp(v) => (v, false),
        Content::Empty => (0, true),
        Content::Foreign(_) => (0, false),
    };
    for (i, script) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        tx.execute_batch(script).map_err(map_err)?;
        tx.execute(
            "UPDATE idemp_meta SET value = ?1 WHERE name = 'schema_version'",
            [i as i64 + 1],
        )
        .map_err(map_err)?;
    }
    if fresh {
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(map_err)?;
    }
    tx.commit().map_err(map_err)
}

/// Whether `content` may be used (and written to) with these options.
fn check(content: &Content, path: &Path, opts: &SqliteOptions) -> StoreResult<()> {
    match content {
        Content::Idemp(v) if *v > SCHEMA_VERSION => Err(StoreError::Incompatible(format!(
            "{} has idemp schema version {v}, newer than this build supports \
             ({SCHEMA_VERSION}); upgrade idemp",
            path.display()
        ))),
        Content::Idemp(_) => Ok(()),
        Content::Empty if opts.create_if_missing => Ok(()),
        Content::Empty => Err(StoreError::Incompatible(format!(
            "{} is an empty database, not an idemp store",
            path.display()
        ))),
        Content::Foreign(_) if opts.adopt_existing && opts.create_if_missing => Ok(()),
        Content::Foreign(tables) => Err(StoreError::Incompatible(format!(
            "{} is an SQLite database of another application (tables: {}), not an idemp \
             store; refusing to modify it (SqliteStoreBuilder::adopt_existing(true) adds \
             idemp's tables to an application database)",
            path.display(),
            tables.join(", ")
        ))),
    }
}
