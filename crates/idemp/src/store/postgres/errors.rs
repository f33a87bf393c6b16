//! Postgres and pool errors as [`StoreError`]s.

use super::*;

/// Maps a client error: connection trouble is `Unavailable` (with the cause), schema
/// trouble `Incompatible`, bad values `Invalid`.
pub(super) fn pg_error(op: &str, e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code().to_owned();
        let what = format!("postgres {op}: {} (SQLSTATE {code})", db.message());
        return match code.as_str() {
            // connection exceptions, shutdown, too many connections, out of resources
            c if c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") => {
                StoreError::unavailable(format!("postgres {op} (SQLSTATE {code})"), e)
            }
            // statement timeout / cancel request, lock timeout: the server gave up on
            // this statement; trying again later may succeed
            "57014" | "55P03" => StoreError::unavailable(
                format!("postgres {op} (SQLSTATE {code}): cancelled or timed out"),
                e,
            ),
            // serialization failure / deadlock: the caller's transaction must be retried
            "40001" | "40P01" => StoreError::unavailable(
                format!(
                    "postgres {op} (SQLSTATE {code}): a concurrent transaction touched the record; retry the transaction"
                ),
                e,
            ),
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
        return StoreError::unavailable(format!("postgres {op}"), e);
    }
    // Other client-side errors (protocol, timeouts, unexpected messages) while talking
    // to the server: the outcome is unknown, the connection is suspect.
    StoreError::unavailable(format!("postgres {op}"), e)
}

pub(super) fn pool_error(op: &str, e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => pg_error(op, e),
        other => StoreError::unavailable(format!("postgres {op}: connection pool"), other),
    }
}

/// Whether `e` means the connection is broken (the classification of [`pg_error`]).
pub(super) fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        Some(db) => {
            let c = db.code().code();
            c.starts_with("08") || c.starts_with("57P") || c.starts_with("53")
        }
        None => true,
    }
}
