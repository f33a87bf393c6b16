//! The one record model the stores share: the limits every store honours, the one
//! decoder from a stored row to a [`Record`], and the small helpers (errors, duration
//! capping) the stores used to write each for themselves.
//!
//! A store reads its row with its own driver types into a [`RawRecord`] (plain
//! integers and bytes, no interpretation) and calls [`RawRecord::decode`], which
//! checks every field the same way for every store: a value out of range is a
//! [`StoreError::Corrupt`] that names the field, never a silent default.
//!
//! ```
//! use idemp::store::record::{RawRecord, STATE_COMPLETED};
//! use idemp::store::{RecordKey, State, StoreError};
//!
//! let mut raw = RawRecord::new(RecordKey::new("charge", "k1"), STATE_COMPLETED);
//! raw.token = 7;
//! raw.attempts = 1;
//! raw.expires_at = Some(5_000);
//! raw.codec = Some(0);
//! raw.compression = Some(0);
//! raw.outcome = Some(b"ok".to_vec());
//! let rec = raw.clone().decode()?;
//! assert!(matches!(rec.state, State::Completed(_)));
//!
//! raw.token = 0; // never issued
//! let err = raw.decode().unwrap_err();
//! assert!(matches!(err, StoreError::Corrupt { .. }));
//! assert!(err.to_string().contains("token"));
//! # Ok::<(), StoreError>(())
//! ```

use std::fmt;
use std::time::Duration;

use super::{
    Codec, Compression, Fingerprint, Outcome, Record, RecordKey, State, StoreError, StoreResult,
    Token,
};
use crate::clock::{Millis, duration_ms};

/// The sizes and durations every store accepts (see [`LIMITS`]).
///
/// Byte sizes are hard limits: an argument over one is refused with
/// [`StoreError::Invalid`] before the store touches its backend. Durations are caps:
/// a longer lease or ttl (up to `Duration::MAX`) is accepted and treated as
/// `max_duration`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Longest idempotency key, in bytes (UTF-8). The key must also be non-empty.
    pub max_key_bytes: usize,
    /// Longest scope, in bytes (UTF-8). The scope may be empty.
    pub max_scope_bytes: usize,
    /// Largest outcome ([`Outcome::bytes`]) that `complete` and `fail` store.
    pub max_outcome_bytes: usize,
    /// Leases, ttls and retentions are capped at this.
    pub max_duration: Duration,
}

/// The one set of limits every idemp store honours.
///
/// Scope and key at most 1 KiB each (together they fit one Postgres B-tree index
/// entry), outcomes at most 64 MiB, durations capped at 100 years (representable as
/// milliseconds in an `i64` and exactly in a Lua double, even added to today's date).
///
/// ```
/// use idemp::store::LIMITS;
/// assert_eq!(LIMITS.max_key_bytes, 1024);
/// assert_eq!(LIMITS.max_outcome_bytes, 64 << 20);
/// ```
pub const LIMITS: Limits = Limits {
    max_key_bytes: 1024,
    max_scope_bytes: 1024,
    max_outcome_bytes: 64 << 20,
    max_duration: Duration::from_secs(100 * 365 * 24 * 3600),
};

impl Limits {
    /// `max_duration` in milliseconds.
    pub const fn max_duration_ms(&self) -> Millis {
        self.max_duration.as_secs() * 1000
    }

    /// Refuses an id the stores cannot hold: an empty key, a key or scope over its
    /// limit, or a NUL character (Postgres text cannot hold one).
    ///
    /// ```
    /// use idemp::store::{LIMITS, RecordKey};
    /// assert!(LIMITS.check_id(&RecordKey::new("s", "k")).is_ok());
    /// assert!(LIMITS.check_id(&RecordKey::new("s", "")).is_err());
    /// assert!(LIMITS.check_id(&RecordKey::new("s", "k".repeat(1025))).is_err());
    /// ```
    pub fn check_id(&self, id: &RecordKey) -> StoreResult<()> {
        if id.key.is_empty() {
            return Err(StoreError::Invalid("empty idempotency key".into()));
        }
        if id.key.len() > self.max_key_bytes {
            return Err(StoreError::Invalid(format!(
                "key is {} bytes; stores accept at most {}",
                id.key.len(),
                self.max_key_bytes
            )));
        }
        if id.scope.len() > self.max_scope_bytes {
            return Err(StoreError::Invalid(format!(
                "scope is {} bytes; stores accept at most {}",
                id.scope.len(),
                self.max_scope_bytes
            )));
        }
        if id.scope.contains('\0') || id.key.contains('\0') {
            return Err(StoreError::Invalid(format!(
                "{id:?}: scope and key cannot hold NUL characters"
            )));
        }
        Ok(())
    }

    /// Refuses an outcome over `max_outcome_bytes`.
    pub fn check_outcome(&self, outcome: &Outcome) -> StoreResult<()> {
        if outcome.bytes.len() > self.max_outcome_bytes {
            return Err(StoreError::Invalid(format!(
                "outcome is {} bytes; stores accept at most {}",
                outcome.bytes.len(),
                self.max_outcome_bytes
            )));
        }
        Ok(())
    }

    /// A duration in milliseconds, capped at `max_duration`.
    pub fn capped_ms(&self, d: Duration) -> Millis {
        duration_ms(d).min(self.max_duration_ms())
    }
}

/// `state` code of an in-progress record.
pub const STATE_IN_PROGRESS: i64 = 0;
/// `state` code of a completed record.
pub const STATE_COMPLETED: i64 = 1;
/// `state` code of a failed record.
pub const STATE_FAILED: i64 = 2;

/// A record as a store read it, before any check: each store fills one from its own
/// driver types (SQLite and Postgres columns, Redis hash fields) and calls
/// [`decode`](Self::decode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    /// Scope and key (read as text by the driver).
    pub id: RecordKey,
    /// The fingerprint bytes, `None` when the record has none.
    pub fingerprint: Option<Vec<u8>>,
    /// [`STATE_IN_PROGRESS`], [`STATE_COMPLETED`] or [`STATE_FAILED`].
    pub state: i64,
    /// The fencing token; must be > 0.
    pub token: i64,
    /// Acquisitions of the key; must be in `1..=u32::MAX`.
    pub attempts: i64,
    /// ms since the epoch; must be ≥ 0.
    pub created_at: i64,
    /// ms since the epoch; must be ≥ 0.
    pub updated_at: i64,
    /// Required (≥ 0) for an in-progress record, ignored otherwise.
    pub lease_until: Option<i64>,
    /// Required (≥ 0) for a settled record, ignored otherwise.
    pub expires_at: Option<i64>,
    /// [`Codec`] byte; required for a settled record.
    pub codec: Option<i64>,
    /// [`Compression`] byte; required for a settled record.
    pub compression: Option<i64>,
    /// Outcome bytes; required for a settled record.
    pub outcome: Option<Vec<u8>>,
}

impl RawRecord {
    /// A raw record of `id` in `state` with every other field zero or absent (fill
    /// them in).
    pub fn new(id: RecordKey, state: i64) -> Self {
        Self {
            id,
            fingerprint: None,
            state,
            token: 0,
            attempts: 0,
            created_at: 0,
            updated_at: 0,
            lease_until: None,
            expires_at: None,
            codec: None,
            compression: None,
            outcome: None,
        }
    }

    /// Checks every field and builds the [`Record`]. Any field out of range, missing
    /// where the state needs it, or of an unknown code is [`StoreError::Corrupt`]
    /// naming the field.
    pub fn decode(self) -> StoreResult<Record> {
        let id = self.id;
        let bad = |field: &str, why: String| corrupt(&id, format!("field `{field}`: {why}"));
        let fingerprint = match self.fingerprint {
            None => None,
            Some(b) => Some(Fingerprint(b.as_slice().try_into().map_err(|_| {
                bad("fingerprint", format!("{} bytes, expected 32", b.len()))
            })?)),
        };
        let token = decode_token(self.token).map_err(|why| bad("token", why))?;
        let attempts = decode_attempts(self.attempts).map_err(|why| bad("attempts", why))?;
        let created_at = decode_ms(self.created_at).map_err(|why| bad("created_at", why))?;
        let updated_at = decode_ms(self.updated_at).map_err(|why| bad("updated_at", why))?;
        let outcome = |codec: Option<i64>, compression: Option<i64>, bytes: Option<Vec<u8>>| {
            let codec = codec.ok_or_else(|| bad("codec", "missing in a settled record".into()))?;
            let codec = u8::try_from(codec)
                .ok()
                .and_then(Codec::from_u8)
                .ok_or_else(|| bad("codec", format!("unknown codec {codec}")))?;
            let compression = compression
                .ok_or_else(|| bad("compression", "missing in a settled record".into()))?;
            let compression = u8::try_from(compression)
                .ok()
                .and_then(Compression::from_u8)
                .ok_or_else(|| bad("compression", format!("unknown compression {compression}")))?;
            let bytes =
                bytes.ok_or_else(|| bad("outcome", "missing in a settled record".into()))?;
            Ok::<_, StoreError>(Outcome {
                codec,
                compression,
                bytes,
            })
        };
        let expires = |v: Option<i64>| -> StoreResult<Millis> {
            let v = v.ok_or_else(|| bad("expires_at", "missing in a settled record".into()))?;
            decode_ms(v).map_err(|why| bad("expires_at", why))
        };
        let (state, expires_at) = match self.state {
            STATE_IN_PROGRESS => {
                let lease_until = self
                    .lease_until
                    .ok_or_else(|| bad("lease_until", "missing in an in-progress record".into()))?;
                let lease_until = decode_ms(lease_until).map_err(|why| bad("lease_until", why))?;
                (State::InProgress { lease_until }, None)
            }
            STATE_COMPLETED => (
                State::Completed(outcome(self.codec, self.compression, self.outcome)?),
                Some(expires(self.expires_at)?),
            ),
            STATE_FAILED => (
                State::Failed(outcome(self.codec, self.compression, self.outcome)?),
                Some(expires(self.expires_at)?),
            ),
            other => return Err(bad("state", format!("unknown state {other}"))),
        };
        Ok(Record {
            id,
            fingerprint,
            state,
            token,
            attempts,
            created_at,
            updated_at,
            expires_at,
        })
    }
}

/// A stored token: must be > 0 (`0` is never issued, negatives are not tokens).
pub fn decode_token(v: i64) -> Result<Token, String> {
    u64::try_from(v)
        .ok()
        .filter(|t| *t > 0)
        .ok_or_else(|| format!("{v} is not a token (tokens are > 0)"))
}

/// A stored attempt count: must be in `1..=u32::MAX`.
pub fn decode_attempts(v: i64) -> Result<u32, String> {
    u32::try_from(v)
        .ok()
        .filter(|a| *a > 0)
        .ok_or_else(|| format!("{v} is out of range 1..={}", u32::MAX))
}

/// A stored time in ms since the epoch: must be ≥ 0.
pub fn decode_ms(v: i64) -> Result<Millis, String> {
    u64::try_from(v).map_err(|_| format!("{v} is a negative time"))
}

/// The [`StoreError::Corrupt`] for `id`.
pub fn corrupt(id: &RecordKey, reason: impl fmt::Display) -> StoreError {
    StoreError::Corrupt {
        id: id.clone(),
        reason: reason.to_string(),
    }
}

/// The [`StoreError::Fenced`] of `token` on `id`, whose current live token is
/// `current` (`None` when the record is gone).
pub fn fenced(id: &RecordKey, token: Token, current: Option<Token>) -> StoreError {
    StoreError::Fenced {
        id: id.clone(),
        token,
        current,
    }
}

/// What a claim needs to know of the live record it found: the [`Record`] fields the
/// decision reads, plus the two that only stores keep (the owning claim's nonce and,
/// after a takeover, the previous owner's token). `Copy`, so a store builds one from
/// its row or entry without cloning the key or the outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// The stored payload fingerprint.
    pub fingerprint: Option<Fingerprint>,
    /// `Some(lease_until)` while in progress, `None` once settled.
    pub lease_until: Option<Millis>,
    /// The record's current token.
    pub token: Token,
    /// The record's attempt count.
    pub attempts: u32,
    /// The [`Claim::nonce`](super::Claim::nonce) of the claim that acquired the record.
    pub nonce: Option<u64>,
    /// The previous owner's token, when the record was acquired by a takeover.
    pub takeover: Option<Token>,
}

/// The answer of [`decide_claim`]: what the store must do, in its own storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimStep {
    /// No live record: create one with a new token, attempt 1, the claim's nonce and
    /// no takeover.
    Fresh,
    /// Take over the expired lease: a new token, `attempt`, the claim's nonce,
    /// `previous` as the takeover, and the claim's fingerprint (or the stored one when
    /// the claim has none).
    Takeover {
        /// The token being fenced off.
        previous: Token,
        /// The held attempt count plus one.
        attempt: u32,
    },
    /// The same claimant repeats its claim (same nonce, still the owner): keep the
    /// token, attempt and takeover, move the lease to `now + lease` (and the retention
    /// with it), answer `Acquired` again.
    Repeat {
        /// The held token.
        token: Token,
        /// The held attempt count.
        attempt: u32,
        /// The held takeover.
        takeover: Option<Token>,
    },
    /// Someone else's record (settled, live, or expired without `take_over_expired`):
    /// answer [`ClaimOutcome::Existing`](super::ClaimOutcome::Existing).
    Existing,
    /// The stored fingerprint differs from the claim's: answer
    /// [`ClaimOutcome::Mismatch`](super::ClaimOutcome::Mismatch).
    Mismatch,
}

/// The one claim decision of the stores that decide in Rust (memory, SQLite): given
/// the live record (`None` when there is none, or it expired), the claim and the
/// time, what `claim` does. The order is the contract's: a different fingerprint is
/// a mismatch whoever asks; a claim with the owner's nonce repeats the acquisition
/// (even after its lease passed, as long as nobody took it over, like `renew`); an
/// expired lease is taken over when the claim allows it; anything else is existing.
///
/// ```
/// use idemp::store::record::{ClaimStep, Held, decide_claim};
/// use idemp::store::{Claim, RecordKey};
///
/// let claim = Claim::new(RecordKey::new("s", "k")).nonce(7);
/// assert_eq!(decide_claim(None, &claim, 1_000), ClaimStep::Fresh);
/// let held = Held {
///     fingerprint: None,
///     lease_until: Some(61_000),
///     token: 3,
///     attempts: 1,
///     nonce: Some(7),
///     takeover: None,
/// };
/// let repeat = ClaimStep::Repeat { token: 3, attempt: 1, takeover: None };
/// assert_eq!(decide_claim(Some(&held), &claim, 2_000), repeat);
/// let other = Claim::new(RecordKey::new("s", "k")).nonce(8);
/// assert_eq!(decide_claim(Some(&held), &other, 2_000), ClaimStep::Existing);
/// let takeover = ClaimStep::Takeover { previous: 3, attempt: 2 };
/// assert_eq!(decide_claim(Some(&held), &other, 61_000), takeover);
/// ```
pub fn decide_claim(held: Option<&Held>, claim: &super::Claim, now: Millis) -> ClaimStep {
    let Some(held) = held else {
        return ClaimStep::Fresh;
    };
    if let (Some(stored), Some(given)) = (held.fingerprint, claim.fingerprint)
        && stored != given
    {
        return ClaimStep::Mismatch;
    }
    let Some(lease_until) = held.lease_until else {
        return ClaimStep::Existing;
    };
    if claim.nonce.is_some() && claim.nonce == held.nonce {
        return ClaimStep::Repeat {
            token: held.token,
            attempt: held.attempts,
            takeover: held.takeover,
        };
    }
    if lease_until <= now && claim.take_over_expired {
        return ClaimStep::Takeover {
            previous: held.token,
            attempt: held.attempts.saturating_add(1),
        };
    }
    ClaimStep::Existing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> RecordKey {
        RecordKey::new("s", "k")
    }

    fn settled() -> RawRecord {
        RawRecord {
            fingerprint: Some(vec![7; 32]),
            token: 5,
            attempts: 2,
            created_at: 10,
            updated_at: 20,
            expires_at: Some(30),
            codec: Some(1),
            compression: Some(2),
            outcome: Some(b"{}".to_vec()),
            ..RawRecord::new(id(), STATE_COMPLETED)
        }
    }

    fn in_progress() -> RawRecord {
        RawRecord {
            token: 5,
            attempts: 1,
            created_at: 10,
            updated_at: 10,
            lease_until: Some(99),
            ..RawRecord::new(id(), STATE_IN_PROGRESS)
        }
    }

    /// The error is `Corrupt`, for the record, naming `field`.
    fn corrupt_field(raw: RawRecord, field: &str) {
        match raw.decode() {
            Err(StoreError::Corrupt { id: got, reason }) => {
                assert_eq!(got, id());
                assert!(
                    reason.contains(&format!("`{field}`")),
                    "reason {reason:?} does not name `{field}`"
                );
            }
            other => panic!("expected Corrupt naming `{field}`, got {other:?}"),
        }
    }

    #[test]
    fn decodes_every_state() {
        let rec = settled().decode().unwrap();
        assert_eq!(rec.token, 5);
        assert_eq!(rec.attempts, 2);
        assert_eq!(rec.fingerprint, Some(Fingerprint([7; 32])));
        assert_eq!((rec.created_at, rec.updated_at), (10, 20));
        assert_eq!(rec.expires_at, Some(30));
        assert_eq!(
            rec.state,
            State::Completed(Outcome {
                codec: Codec::Json,
                compression: Compression::Zstd,
                bytes: b"{}".to_vec()
            })
        );
        let failed = RawRecord {
            state: STATE_FAILED,
            ..settled()
        };
        assert!(matches!(failed.decode().unwrap().state, State::Failed(_)));
        let rec = in_progress().decode().unwrap();
        assert_eq!(rec.state, State::InProgress { lease_until: 99 });
        assert_eq!(rec.expires_at, None);
        assert_eq!(rec.fingerprint, None);
    }

    #[test]
    fn extreme_values_in_range_are_kept() {
        let raw = RawRecord {
            token: i64::MAX,
            attempts: i64::from(u32::MAX),
            created_at: 0,
            updated_at: i64::MAX,
            lease_until: Some(i64::MAX),
            ..in_progress()
        };
        let rec = raw.decode().unwrap();
        assert_eq!(rec.token, i64::MAX as u64);
        assert_eq!(rec.attempts, u32::MAX);
        assert_eq!(rec.updated_at, i64::MAX as u64);
        let empty = RawRecord {
            outcome: Some(Vec::new()),
            ..settled()
        };
        assert!(empty.decode().is_ok(), "an empty outcome is an outcome");
        // Fields a state does not use are not checked.
        let raw = RawRecord {
            lease_until: Some(-1),
            ..settled()
        };
        assert!(raw.decode().is_ok());
    }

    #[test]
    fn tokens_of_zero_or_less_are_corrupt() {
        for t in [0, -1, i64::MIN] {
            corrupt_field(
                RawRecord {
                    token: t,
                    ..settled()
                },
                "token",
            );
        }
    }

    #[test]
    fn attempts_out_of_range_are_corrupt() {
        for a in [0, -1, i64::from(u32::MAX) + 1, i64::MAX] {
            corrupt_field(
                RawRecord {
                    attempts: a,
                    ..in_progress()
                },
                "attempts",
            );
        }
    }

    #[test]
    fn negative_times_are_corrupt() {
        corrupt_field(
            RawRecord {
                created_at: -1,
                ..settled()
            },
            "created_at",
        );
        corrupt_field(
            RawRecord {
                updated_at: -5,
                ..settled()
            },
            "updated_at",
        );
        corrupt_field(
            RawRecord {
                expires_at: Some(-1),
                ..settled()
            },
            "expires_at",
        );
        corrupt_field(
            RawRecord {
                lease_until: Some(i64::MIN),
                ..in_progress()
            },
            "lease_until",
        );
    }

    #[test]
    fn missing_fields_are_corrupt() {
        corrupt_field(
            RawRecord {
                lease_until: None,
                ..in_progress()
            },
            "lease_until",
        );
        corrupt_field(
            RawRecord {
                expires_at: None,
                ..settled()
            },
            "expires_at",
        );
        corrupt_field(
            RawRecord {
                codec: None,
                ..settled()
            },
            "codec",
        );
        corrupt_field(
            RawRecord {
                compression: None,
                ..settled()
            },
            "compression",
        );
        corrupt_field(
            RawRecord {
                outcome: None,
                ..settled()
            },
            "outcome",
        );
    }

    #[test]
    fn unknown_codes_are_corrupt() {
        corrupt_field(
            RawRecord {
                state: 3,
                ..settled()
            },
            "state",
        );
        corrupt_field(
            RawRecord {
                state: -1,
                ..settled()
            },
            "state",
        );
        corrupt_field(
            RawRecord {
                codec: Some(3),
                ..settled()
            },
            "codec",
        );
        corrupt_field(
            RawRecord {
                codec: Some(256),
                ..settled()
            },
            "codec",
        );
        corrupt_field(
            RawRecord {
                compression: Some(-1),
                ..settled()
            },
            "compression",
        );
        for len in [0, 31, 33] {
            corrupt_field(
                RawRecord {
                    fingerprint: Some(vec![0; len]),
                    ..settled()
                },
                "fingerprint",
            );
        }
    }

    fn held(lease_until: Option<Millis>, nonce: Option<u64>) -> Held {
        Held {
            fingerprint: Some(Fingerprint([1; 32])),
            lease_until,
            token: 9,
            attempts: 3,
            nonce,
            takeover: Some(4),
        }
    }

    fn claim(nonce: Option<u64>) -> super::super::Claim {
        let mut c = super::super::Claim::new(id()).fingerprint(Some(Fingerprint([1; 32])));
        c.nonce = nonce;
        c
    }

    #[test]
    fn claim_decision_fresh_existing_takeover() {
        assert_eq!(decide_claim(None, &claim(Some(1)), 0), ClaimStep::Fresh);
        let live = held(Some(100), Some(1));
        assert_eq!(
            decide_claim(Some(&live), &claim(Some(2)), 50),
            ClaimStep::Existing
        );
        assert_eq!(
            decide_claim(Some(&live), &claim(None), 50),
            ClaimStep::Existing
        );
        let takeover = ClaimStep::Takeover {
            previous: 9,
            attempt: 4,
        };
        // The lease passes at `lease_until` itself.
        assert_eq!(decide_claim(Some(&live), &claim(Some(2)), 100), takeover);
        assert_eq!(decide_claim(Some(&live), &claim(None), 500), takeover);
        let no_takeover = claim(Some(2)).take_over_expired(false);
        assert_eq!(
            decide_claim(Some(&live), &no_takeover, 500),
            ClaimStep::Existing
        );
        let settled = held(None, Some(2));
        assert_eq!(
            decide_claim(Some(&settled), &claim(Some(3)), 500),
            ClaimStep::Existing
        );
        let full = Held {
            attempts: u32::MAX,
            ..live
        };
        assert_eq!(
            decide_claim(Some(&full), &claim(None), 500),
            ClaimStep::Takeover {
                previous: 9,
                attempt: u32::MAX
            },
            "the attempt count saturates"
        );
    }

    #[test]
    fn claim_decision_repeats_the_owners_nonce_only() {
        let repeat = ClaimStep::Repeat {
            token: 9,
            attempt: 3,
            takeover: Some(4),
        };
        let live = held(Some(100), Some(7));
        assert_eq!(decide_claim(Some(&live), &claim(Some(7)), 50), repeat);
        // Still the owner after its lease passed (nobody took over), whether or not
        // the claim would take over.
        assert_eq!(decide_claim(Some(&live), &claim(Some(7)), 500), repeat);
        let no_takeover = claim(Some(7)).take_over_expired(false);
        assert_eq!(decide_claim(Some(&live), &no_takeover, 500), repeat);
        // No nonce never matches, not even a stored "none".
        let anonymous = held(Some(100), None);
        assert_eq!(
            decide_claim(Some(&anonymous), &claim(None), 50),
            ClaimStep::Existing
        );
        // Once settled, the nonce is nobody's: the outcome is existing.
        let settled = held(None, Some(7));
        assert_eq!(
            decide_claim(Some(&settled), &claim(Some(7)), 50),
            ClaimStep::Existing
        );
    }

    #[test]
    fn claim_decision_mismatch_comes_first() {
        let other = claim(Some(7)).fingerprint(Some(Fingerprint([2; 32])));
        for h in [
            held(Some(100), Some(7)),
            held(Some(100), Some(1)),
            held(None, Some(7)),
        ] {
            for now in [50, 500] {
                assert_eq!(decide_claim(Some(&h), &other, now), ClaimStep::Mismatch);
            }
        }
        // A claim or a record without a fingerprint matches any.
        let anyone = claim(Some(7)).fingerprint(None);
        let repeat = ClaimStep::Repeat {
            token: 9,
            attempt: 3,
            takeover: Some(4),
        };
        assert_eq!(
            decide_claim(Some(&held(Some(100), Some(7))), &anyone, 50),
            repeat
        );
        let unprinted = Held {
            fingerprint: None,
            ..held(Some(100), Some(7))
        };
        assert_eq!(decide_claim(Some(&unprinted), &other, 50), repeat);
    }

    #[test]
    fn limits_refuse_one_over_and_accept_the_limit() {
        let l = LIMITS;
        let at = RecordKey::new("s".repeat(l.max_scope_bytes), "k".repeat(l.max_key_bytes));
        assert!(l.check_id(&at).is_ok());
        let over_key = RecordKey::new("s", "k".repeat(l.max_key_bytes + 1));
        let over_scope = RecordKey::new("s".repeat(l.max_scope_bytes + 1), "k");
        for bad in [
            over_key,
            over_scope,
            RecordKey::new("s", ""),
            RecordKey::new("s", "a\0b"),
        ] {
            assert!(
                matches!(l.check_id(&bad), Err(StoreError::Invalid(_))),
                "{bad:?} accepted"
            );
        }
        // A multi-byte character counts its bytes.
        let e = RecordKey::new("", "é".repeat(l.max_key_bytes / 2 + 1));
        assert!(l.check_id(&e).is_err());
        let at = Outcome::new(Codec::Raw, vec![0; l.max_outcome_bytes]);
        assert!(l.check_outcome(&at).is_ok());
        let over = Outcome::new(Codec::Raw, vec![0; l.max_outcome_bytes + 1]);
        assert!(matches!(
            l.check_outcome(&over),
            Err(StoreError::Invalid(_))
        ));
        assert_eq!(l.capped_ms(Duration::MAX), l.max_duration_ms());
        assert_eq!(l.capped_ms(Duration::from_millis(5)), 5);
        assert!(i64::try_from(l.max_duration_ms() * 3).is_ok());
    }
}
