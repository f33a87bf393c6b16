//! The guard's error type and the stored form of a sticky failure.

use std::convert::Infallible;
use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::key::KeyError;
use crate::retry::Retryable;
use crate::store::{Fingerprint, RecordKey, StoreError, Token};

use super::codec::CodecError;

/// Everything a guarded call can return instead of its value.
///
/// `E` is the operation's own error type (`Infallible` for the calls that run no
/// operation, such as [`Guard::begin`](super::Guard::begin)). Match on the variants to
/// decide what to tell your caller:
///
/// | variant | meaning | typical HTTP answer |
/// |---|---|---|
/// | `Operation(e)` | this call ran the operation and it failed | the error |
/// | `InProgress` | another execution holds the key | 409 + `Retry-After` |
/// | `Rejected` | a duplicate under `OnDuplicate::Reject` | 409 |
/// | `Mismatch` | same key, different payload | 422 |
/// | `Failed` | an earlier execution failed and failures are sticky | the stored error |
/// | `Ambiguous` | an earlier owner's lease passed mid-run (`OnAmbiguous::Surface`) | 409, then [`Guard::resolve`](super::Guard::resolve) |
/// | `LeaseLost` | this call ran, but lost its lease; its result was **not** stored | 500 / retry |
/// | `InvalidKey` | the key is empty, too long or not visible ASCII | 400 |
/// | `Store`, `Codec`, `Reconcile` | infrastructure errors | 503 / 500 |
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError<E = Infallible> {
    /// The operation ran in this call and returned an error (under
    /// `OnFailure::Sticky` it was also stored, and later calls get [`GuardError::Failed`]).
    #[error("operation failed: {0}")]
    Operation(E),
    /// Another execution holds the key and is alive (its lease has not passed).
    #[error("{id} is in progress in another execution; retry after {retry_after:?}")]
    InProgress {
        /// The record.
        id: RecordKey,
        /// When the current lease passes (a hint; the owner may renew it).
        retry_after: Duration,
    },
    /// The key was used before with a different payload fingerprint. Never replayed.
    #[error("{id} was used with a different payload")]
    Mismatch {
        /// The record.
        id: RecordKey,
        /// The fingerprint stored with the record.
        stored: Option<Fingerprint>,
        /// The fingerprint of this call.
        given: Option<Fingerprint>,
    },
    /// An earlier execution failed and failures are sticky: its stored error, replayed.
    #[error("an earlier execution failed: {0}")]
    Failed(StoredFailure),
    /// An earlier owner's lease passed before it settled the key: its side effect may
    /// or may not have happened. Returned under `OnAmbiguous::Surface`; settle it with
    /// [`Guard::resolve`](super::Guard::resolve).
    #[error(
        "{id} is ambiguous: attempt {attempts} (token {token}) stopped renewing its lease at {lease_until} ms"
    )]
    Ambiguous {
        /// The record.
        id: RecordKey,
        /// The token of the vanished owner.
        token: Token,
        /// How many executions acquired the key so far.
        attempts: u32,
        /// When the vanished owner's lease passed (ms since the epoch).
        lease_until: Millis,
    },
    /// This execution lost its lease (another worker took the key over, or it was
    /// purged): the store refused to record its result.
    #[error("{id}: lease of token {token} was lost; the result was not recorded")]
    LeaseLost {
        /// The record.
        id: RecordKey,
        /// This execution's token.
        token: Token,
    },
    /// A duplicate call under `OnDuplicate::Reject`.
    #[error("{id} is a duplicate (record is {state})")]
    Rejected {
        /// The record.
        id: RecordKey,
        /// The existing record's state: `in_progress`, `completed` or `failed`.
        state: &'static str,
    },
    /// The `OnAmbiguous::Verify` reconcile function failed; the key stays ambiguous
    /// and will be verified again by the next call after the lease passes.
    #[error("{id}: reconcile failed: {message}")]
    Reconcile {
        /// The record.
        id: RecordKey,
        /// The reconcile function's error, as text.
        message: String,
    },
    /// The key is not a valid idempotency key (1–255 bytes of visible ASCII).
    #[error(transparent)]
    InvalidKey(#[from] KeyError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A value could not be encoded or a stored outcome decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

impl<E> GuardError<E> {
    /// Whether a later retry of the same call may succeed without any change:
    /// `InProgress` (another execution holds the key), or a `Store` error that is
    /// retryable. The operation's own error (`Operation`) is not judged here: ask it.
    /// The [`Retryable`] answer (see there for the notion every idemp error shares).
    pub fn is_retryable(&self) -> bool {
        match self {
            GuardError::InProgress { .. } => true,
            GuardError::Store(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// The operation's own error, if that is what this is.
    pub fn into_operation(self) -> Option<E> {
        match self {
            GuardError::Operation(e) => Some(e),
            _ => None,
        }
    }
}

impl<E> Retryable for GuardError<E> {
    fn is_retryable(&self) -> bool {
        GuardError::is_retryable(self)
    }
}

impl GuardError<Infallible> {
    /// Converts an error of a call that ran no operation into any `GuardError<E>`.
    pub fn widen<E>(self) -> GuardError<E> {
        match self {
            GuardError::Operation(never) => match never {},
            GuardError::InProgress { id, retry_after } => {
                GuardError::InProgress { id, retry_after }
            }
            GuardError::Mismatch { id, stored, given } => {
                GuardError::Mismatch { id, stored, given }
            }
            GuardError::Failed(f) => GuardError::Failed(f),
            GuardError::Ambiguous {
                id,
                token,
                attempts,
                lease_until,
            } => GuardError::Ambiguous {
                id,
                token,
                attempts,
                lease_until,
            },
            GuardError::LeaseLost { id, token } => GuardError::LeaseLost { id, token },
            GuardError::Rejected { id, state } => GuardError::Rejected { id, state },
            GuardError::Reconcile { id, message } => GuardError::Reconcile { id, message },
            GuardError::InvalidKey(e) => GuardError::InvalidKey(e),
            GuardError::Store(e) => GuardError::Store(e),
            GuardError::Codec(e) => GuardError::Codec(e),
        }
    }
}

/// A failure stored as data (JSON), replayed as [`GuardError::Failed`] under
/// `OnFailure::Sticky`. Never executable: no pickles, no trait objects.
///
/// When the operation's error type is `StoredFailure` itself, it is stored as is
/// (with its `data`); any other error type `E: Display` is stored as its type name
/// and message.
///
/// ```
/// use idemp::guard::StoredFailure;
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct Declined { code: String }
/// let f = StoredFailure::with_data("card declined", &Declined { code: "insufficient_funds".into() }).unwrap();
/// let back: Declined = f.data_as().unwrap();
/// assert_eq!(back.code, "insufficient_funds");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredFailure {
    /// What kind of error this was (by default the Rust type name of the error).
    #[serde(default)]
    pub kind: String,
    /// The error's message.
    pub message: String,
    /// Structured details (`null` when none).
    #[serde(default)]
    pub data: serde_json::Value,
}

impl StoredFailure {
    /// A failure with a message and no data.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            kind: String::new(),
            message: message.into(),
            data: serde_json::Value::Null,
        }
    }

    /// A failure with structured data.
    pub fn with_data<D: Serialize>(
        message: impl Into<String>,
        data: &D,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            kind: String::new(),
            message: message.into(),
            data: serde_json::to_value(data)?,
        })
    }

    /// Sets the kind.
    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = kind.into();
        self
    }

    /// The data, decoded as `D`.
    pub fn data_as<D: DeserializeOwned>(&self) -> Result<D, serde_json::Error> {
        D::deserialize(&self.data)
    }

    /// The stored form of an operation error: itself when `E` is `StoredFailure`,
    /// otherwise the type name and the `Display` text.
    pub fn from_error<E: fmt::Display + 'static>(error: &E) -> Self {
        if let Some(same) = (error as &dyn std::any::Any).downcast_ref::<StoredFailure>() {
            return same.clone();
        }
        Self {
            kind: std::any::type_name::<E>().to_owned(),
            message: error.to_string(),
            data: serde_json::Value::Null,
        }
    }
}

impl fmt::Display for StoredFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.kind, self.message)
        }
    }
}

impl std::error::Error for StoredFailure {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_errors_source_is_reachable_through_the_guard_error() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let e: GuardError = GuardError::Store(StoreError::unavailable("redis 10.0.0.1:6379", io));
        assert!(e.is_retryable());
        assert!(e.to_string().contains("reset by peer"), "{e}");
        let source = std::error::Error::source(&e).expect("a source");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("the io::Error");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn retryable_is_one_notion() {
        let id = || RecordKey::new("s", "k");
        let store_errors = || {
            vec![
                StoreError::Unavailable("x".into()),
                StoreError::Capacity { max_entries: 1 },
                StoreError::NotReplicated {
                    id: id(),
                    wanted: 1,
                    acked: 0,
                    timeout: Duration::from_millis(1),
                },
                StoreError::Fenced {
                    id: id(),
                    token: 1,
                    current: None,
                },
                StoreError::Invalid("x".into()),
                StoreError::Incompatible("x".into()),
                StoreError::Corrupt {
                    id: id(),
                    reason: "x".into(),
                },
                StoreError::Backend("x".into()),
            ]
        };
        let transient: Vec<bool> = store_errors().iter().map(|e| e.is_transient()).collect();
        assert_eq!(
            transient,
            [true, true, true, false, false, false, false, false]
        );
        for (e, t) in store_errors().into_iter().zip(transient) {
            assert_eq!(Retryable::is_retryable(&e), t, "{e}");
            let g: GuardError<std::io::Error> = GuardError::Store(e);
            assert_eq!(g.is_retryable(), t, "{g}");
            assert_eq!(Retryable::is_retryable(&g), t, "{g}");
        }
        let busy: GuardError = GuardError::InProgress {
            id: id(),
            retry_after: Duration::from_secs(1),
        };
        assert!(Retryable::is_retryable(&busy));
        let op: GuardError<std::io::Error> =
            GuardError::Operation(std::io::Error::other("timed out"));
        assert!(
            !op.is_retryable(),
            "the operation's own error is not judged"
        );
        let lost: GuardError = GuardError::LeaseLost { id: id(), token: 1 };
        assert!(!lost.is_retryable());
    }
}
