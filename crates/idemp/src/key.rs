//! Keys (being written).

/// A validated idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(String);
