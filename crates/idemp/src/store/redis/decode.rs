//! Values to and from the scripts: durations as arguments, the record id field, and
//! script replies as [`Record`]s (through the shared decoder of
//! [`record`](crate::store::record)).

use super::*;

/// A duration in ms, capped at [`LIMITS`]`.max_duration` (exact in a Lua double).
pub(super) fn ms(d: Duration) -> u64 {
    LIMITS.capped_ms(d)
}

/// state, settled, ttl, token, created, since, lease.
pub(super) type Fields7 = (
    Option<String>,
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<u64>,
);

pub(super) fn is_live(
    state: Option<&str>,
    settled: Option<u64>,
    ttl: Option<u64>,
    now: Millis,
) -> bool {
    match state {
        Some("p") => true,
        Some("c") | Some("f") => settled.unwrap_or(0).saturating_add(ttl.unwrap_or(0)) > now,
        _ => false,
    }
}

pub(super) fn array(v: Value, id: &RecordKey) -> StoreResult<Vec<Value>> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(corrupt(id, format!("unexpected script reply {other:?}"))),
    }
}

pub(super) fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

pub(super) fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

pub(super) fn int_at(items: &[Value], i: usize, id: &RecordKey) -> StoreResult<u64> {
    items
        .get(i)
        .and_then(as_u64)
        .ok_or_else(|| corrupt(id, format!("script reply item {i} is not a number")))
}

/// The `id` field: `<byte length of scope>:<scope><key>`.
pub(super) fn encode_id(id: &RecordKey) -> String {
    format!("{}:{}{}", id.scope.len(), id.scope, id.key)
}

/// Parses the `id` field.
pub(super) fn decode_id(s: &str) -> Option<RecordKey> {
    let (len, rest) = s.split_once(':')?;
    let len: usize = len.parse().ok()?;
    if !rest.is_char_boundary(len) {
        return None;
    }
    let (scope, key) = rest.split_at(len);
    Some(RecordKey::new(scope, key))
}

/// A reply item as a signed integer (the shared decoder checks its range).
pub(super) fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// Parses the fields of a record reply (see `lua/prelude.lua`): state, token, fp,
/// attempts, created, since, lease, ttl, settled, enc, outcome; into a
/// [`RawRecord`] for the shared decoder.
pub(super) fn parse_record(id: &RecordKey, f: &[Value]) -> StoreResult<Record> {
    let opt = |i: usize| f.get(i).and_then(as_i64);
    let num = |i: usize, what: &str| -> StoreResult<i64> {
        opt(i).ok_or_else(|| corrupt(id, format!("field `{what}`: missing or not a number")))
    };
    let state_name = f.first().and_then(as_string).unwrap_or_default();
    let state = match state_name.as_str() {
        "p" => record::STATE_IN_PROGRESS,
        "c" => record::STATE_COMPLETED,
        "f" => record::STATE_FAILED,
        other => {
            return Err(corrupt(
                id,
                format!("field `state`: unknown state `{other}`"),
            ));
        }
    };
    let mut raw = RawRecord::new(id.clone(), state);
    raw.fingerprint = match f.get(2) {
        Some(Value::BulkString(b)) if !b.is_empty() => Some(b.clone()),
        _ => None,
    };
    raw.token = num(1, "token")?;
    // `created` is absent only in fresh claims of earlier versions, whose millisecond
    // token was the claim's clock.
    raw.created_at = opt(4).unwrap_or(raw.token);
    let since = opt(5).unwrap_or(raw.created_at);
    raw.attempts = opt(3).unwrap_or(1);
    if state == record::STATE_IN_PROGRESS {
        raw.updated_at = since;
        raw.lease_until = Some(since.saturating_add(num(6, "lease")?));
    } else {
        let at = num(8, "settled")?;
        raw.updated_at = at;
        raw.expires_at = Some(at.saturating_add(num(7, "ttl")?));
        let enc = f.get(9).and_then(as_string).unwrap_or_default();
        let (codec, compression) = enc
            .split_once(':')
            .and_then(|(c, z)| Some((c.parse::<i64>().ok()?, z.parse::<i64>().ok()?)))
            .ok_or_else(|| {
                corrupt(
                    id,
                    format!("field `enc`: `{enc}` is not `codec:compression`"),
                )
            })?;
        raw.codec = Some(codec);
        raw.compression = Some(compression);
        raw.outcome = match f.get(10) {
            Some(Value::BulkString(b)) => Some(b.clone()),
            _ => None,
        };
    }
    raw.decode()
}
