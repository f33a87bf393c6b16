//! Which Redis errors mean "unavailable", and how they are reported.

use super::*;

/// Whether a Redis error means "the store cannot be reached / cannot serve now".
pub(super) fn is_unavailable(e: &RedisError) -> bool {
    if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
    {
        return true;
    }
    if matches!(
        e.kind(),
        ErrorKind::ClusterConnectionNotFound
            | ErrorKind::Server(ServerErrorKind::BusyLoading)
            | ErrorKind::Server(ServerErrorKind::MasterDown)
            | ErrorKind::Server(ServerErrorKind::ReadOnly)
    ) {
        return true;
    }
    matches!(
        e.code(),
        Some("OOM" | "MISCONF" | "BUSY" | "NOREPLICAS" | "LOADING" | "READONLY" | "MASTERDOWN")
    )
}

pub(super) fn unavailable(server: &impl fmt::Display, e: &RedisError) -> StoreError {
    StoreError::unavailable(
        format!("redis {server} (is the server running? `scripts/services.sh` starts a local one)"),
        e.clone(),
    )
}
