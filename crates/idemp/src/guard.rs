//! The guard (being written).

/// The guard.
#[derive(Debug)]
pub struct Guard;

/// Guard errors.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// Placeholder.
    #[error("todo")]
    Todo,
}
