//! Values to and from their column types: ids and durations as parameters, rows as
//! [`Record`]s (through the shared decoder of [`record`](crate::store::record)).

use super::*;

/// Refuses ids over the shared [`LIMITS`] (which also exclude NUL characters, which
/// Postgres text cannot hold).
pub(super) fn check_id(id: &RecordKey) -> StoreResult<()> {
    LIMITS.check_id(id)
}

/// A duration in ms, capped at [`LIMITS`]`.max_duration`.
pub(super) fn ms(d: Duration) -> i64 {
    i64::try_from(LIMITS.capped_ms(d)).unwrap_or(i64::MAX)
}

/// A token as stored; tokens above `i64::MAX` are never issued, so they match nothing.
pub(super) fn token_param(token: Token) -> i64 {
    i64::try_from(token).unwrap_or(-1)
}

pub(super) fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Reads a record from the standard columns through the shared decoder.
pub(super) fn decode(row: &Row) -> StoreResult<Record> {
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

/// Reads the (changed, notified, current) row of a compare-and-set statement:
/// `Ok(None)` when it changed the record, `Ok(Some(current))` when fenced.
pub(super) fn read_cas(id: &RecordKey, row: Option<&Row>) -> StoreResult<Option<Option<u64>>> {
    let row = row.ok_or_else(|| StoreError::Incompatible("no result row".into()))?;
    let changed: i64 = row.try_get(0).map_err(|e| corrupt(id, e))?;
    if changed == 1 {
        return Ok(None);
    }
    let current: Option<i64> = row.try_get(2).map_err(|e| corrupt(id, e))?;
    Ok(Some(current.map(unsigned)))
}
