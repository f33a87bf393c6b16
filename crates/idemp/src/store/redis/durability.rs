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
//! * **Replication**: replicas are updated asynchronously. Without
//!   [`wait_replicas`](super::RedisOptions::wait_replicas), a failover to a replica
//!   loses the writes the primary acknowledged but had not yet sent (under load, the
//!   last few milliseconds of claims and completions): a lost completion makes its
//!   retry run the side effect again, a lost claim lets a second worker start while
//!   the first runs, a lost release or renewal only delays the key. Persistence does
//!   not help here (the promoted replica never had the writes). With
//!   `wait_replicas=N` each write returns only once `N` replicas have it, so a
//!   failover to one of them loses nothing acknowledged (see
//!   [`replicas`](super::replicas)).
//!
//! [`RedisStore`](super::RedisStore) checks the first two with `CONFIG GET` and the
//! third with `INFO replication` when it connects, and logs a `tracing` warning for
//! each unmet one. Managed services often disable `CONFIG`; the check is then skipped
//! (logged at debug level).

use std::fmt;

use super::replicas::{ReplicationInfo, WaitReplicas};

/// The durability-relevant settings of a Redis server, as read by `CONFIG GET`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurabilityReport {
    /// `appendonly` (`yes`/`no`), if readable.
    pub appendonly: Option<String>,
    /// `appendfsync` (`always`/`everysec`/`no`), if readable.
    pub appendfsync: Option<String>,
    /// `maxmemory-policy`, if readable.
    pub maxmemory_policy: Option<String>,
    /// The server's role and replicas (`INFO replication`), if readable.
    pub replication: Option<ReplicationInfo>,
    /// The store's `wait_replicas`, if set.
    pub wait_replicas: Option<WaitReplicas>,
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
            ..Self::default()
        }
    }

    /// Adds what a failover can lose, from `INFO replication` and the store's
    /// `wait_replicas`.
    pub(crate) fn with_replication(
        mut self,
        info: Option<ReplicationInfo>,
        wait: Option<WaitReplicas>,
    ) -> Self {
        let replicas = info
            .as_ref()
            .and_then(|i| i.connected_replicas)
            .unwrap_or(0);
        let role = info.as_ref().and_then(|i| i.role.as_deref());
        if role == Some("slave") {
            self.warnings.push(
                "the server is a replica: writes fail (READONLY) until it is promoted; connect to the primary".into(),
            );
        }
        match wait {
            None if replicas > 0 => self.warnings.push(format!(
                "{replicas} replica(s) are updated asynchronously: a failover to one loses the claims and completions acknowledged just before it (their retries run again); set wait_replicas (URL `?wait_replicas=1`) to wait for replicas on each write"
            )),
            Some(w) if info.is_some() && role != Some("slave") && replicas < w.replicas => {
                self.warnings.push(format!(
                    "wait_replicas is {} but {replicas} replica(s) are connected: writes will fail as not replicated (outcome unknown) until enough replicas connect",
                    w.replicas
                ))
            }
            _ => {}
        }
        self.replication = info;
        self.wait_replicas = wait;
        self
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

    #[test]
    fn says_what_a_failover_can_lose() {
        let durable = || DurabilityReport::from_config(s("yes"), s("always"), s("noeviction"));
        let primary = |n| {
            Some(ReplicationInfo {
                role: s("master"),
                connected_replicas: Some(n),
            })
        };
        // No replica: nothing to fail over to.
        assert!(durable().with_replication(primary(0), None).is_durable());
        let r = durable().with_replication(primary(1), None);
        assert!(!r.is_durable());
        assert!(
            r.warnings[0].contains("failover") && r.warnings[0].contains("wait_replicas"),
            "{r}"
        );
        let one = WaitReplicas::new(1, std::time::Duration::from_millis(100));
        assert!(
            durable()
                .with_replication(primary(1), Some(one))
                .is_durable()
        );
        let two = WaitReplicas::new(2, std::time::Duration::from_millis(100));
        let r = durable().with_replication(primary(1), Some(two));
        assert!(r.to_string().contains("wait_replicas is 2"), "{r}");
        let replica = Some(ReplicationInfo {
            role: s("slave"),
            connected_replicas: Some(0),
        });
        assert!(
            durable()
                .with_replication(replica, None)
                .to_string()
                .contains("replica")
        );
        // INFO unreadable: no claim either way.
        assert!(durable().with_replication(None, None).is_durable());
    }
}
