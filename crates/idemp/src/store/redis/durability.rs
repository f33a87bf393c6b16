//! What a Redis server must be configured with to keep idemp's promises, and a check.
//!
//! idemp's at-most-once guarantee is only as good as the server's memory of claims:
//!
//! * **Persistence**: with `appendonly no` a restart forgets every claim and completed
//!   outcome, so a retry after a restart runs the operation again. Use
//!   `appendonly yes` with `appendfsync everysec` (a crash may lose up to ~1 s of
//!   acknowledged claims) or `appendfsync always` (nothing acknowledged is lost, at
//!   the cost of an fsync per write). RDB snapshots alone lose minutes.
//! * **No eviction**: every idemp record has an expiry, so any `volatile-*` or
//!   `allkeys-*` `maxmemory-policy` may evict live claims under memory pressure. Use
//!   `maxmemory-policy noeviction`: a full server then refuses writes (the store reports
//!   [`StoreError::Unavailable`](crate::store::StoreError::Unavailable)) instead of
//!   silently forgetting.
//! * **Replication**: replicas are updated asynchronously; a failover may lose the
//!   last acknowledged writes (the same window as `appendfsync everysec`).
//!
//! [`RedisStore`](super::RedisStore) checks the first two with `CONFIG GET` when it
//! connects and logs a `tracing` warning for each unmet one. Managed services often
//! disable `CONFIG`; the check is then skipped (logged at debug level).

use std::fmt;

/// The durability-relevant settings of a Redis server, as read by `CONFIG GET`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurabilityReport {
    /// `appendonly` (`yes`/`no`), if readable.
    pub appendonly: Option<String>,
    /// `appendfsync` (`always`/`everysec`/`no`), if readable.
    pub appendfsync: Option<String>,
    /// `maxmemory-policy`, if readable.
    pub maxmemory_policy: Option<String>,
    /// Human-readable problems; empty when every prerequisite is met.
    pub warnings: Vec<String>,
    /// Why the settings could not be read (`CONFIG` disabled, ACL…), if so.
    pub unreadable: Option<String>,
}

impl DurabilityReport {
    /// Whether every prerequisite was verified to hold.
    pub fn is_durable(&self) -> bool {
        self.unreadable.is_none() && self.warnings.is_empty()
    }

    /// Builds a report from the values of `CONFIG GET`.
    pub(crate) fn from_config(
        appendonly: Option<String>,
        appendfsync: Option<String>,
        maxmemory_policy: Option<String>,
    ) -> Self {
        let mut warnings = Vec::new();
        match appendonly.as_deref() {
            Some("yes") => match appendfsync.as_deref() {
                Some("always") | Some("everysec") => {}
                other => warnings.push(format!(
                    "appendfsync is {}: an OS crash may lose acknowledged claims; use `appendfsync everysec` or `always`",
                    other.unwrap_or("unknown")
                )),
            },
            other => warnings.push(format!(
                "appendonly is {}: a restart forgets claims and outcomes, so retries may run twice; use `appendonly yes`",
                other.unwrap_or("unknown")
            )),
        }
        match maxmemory_policy.as_deref() {
            Some("noeviction") => {}
            other => warnings.push(format!(
                "maxmemory-policy is {}: live claims may be evicted under memory pressure; use `maxmemory-policy noeviction`",
                other.unwrap_or("unknown")
            )),
        }
        Self {
            appendonly,
            appendfsync,
            maxmemory_policy,
            warnings,
            unreadable: None,
        }
    }

    /// A report for a server whose configuration cannot be read.
    pub(crate) fn unreadable(reason: String) -> Self {
        Self {
            unreadable: Some(reason),
            ..Self::default()
        }
    }

    /// Logs the warnings (or that the check was skipped).
    pub(crate) fn log(&self, server: &str) {
        if let Some(why) = &self.unreadable {
            tracing::debug!(server, reason = %why, "idemp redis: cannot read the durability settings (CONFIG GET); not checked");
        }
        for w in &self.warnings {
            tracing::warn!(server, "idemp redis store is not durable: {w}");
        }
    }
}

impl fmt::Display for DurabilityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(why) = &self.unreadable {
            return write!(f, "durability not checked: {why}");
        }
        if self.warnings.is_empty() {
            return f.write_str("durable");
        }
        f.write_str(&self.warnings.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn flags_each_missing_prerequisite() {
        let ok = DurabilityReport::from_config(s("yes"), s("everysec"), s("noeviction"));
        assert!(ok.is_durable(), "{ok}");
        let r = DurabilityReport::from_config(s("no"), s("everysec"), s("noeviction"));
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains("appendonly"));
        let r = DurabilityReport::from_config(s("yes"), s("no"), s("volatile-lru"));
        assert_eq!(r.warnings.len(), 2, "{r}");
        assert!(!DurabilityReport::unreadable("disabled".into()).is_durable());
    }
}
