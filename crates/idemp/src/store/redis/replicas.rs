//! Durability across failover: wait for replicas after each write (`WAIT`).
//!
//! Redis replicates asynchronously: the primary acknowledges a write before any
//! replica has it. If the primary dies and a replica is promoted, the writes
//! acknowledged in the last moments before the crash are gone: a completion the
//! caller saw succeed disappears, and the retry of that operation claims the key
//! afresh and runs the side effect a second time; a lost claim lets a second worker
//! run the operation while the first still does.
//!
//! With [`RedisOptions::wait_replicas`](super::RedisOptions::wait_replicas) (URL
//! `?wait_replicas=N&wait_timeout_ms=T`), every write of the hot path (`claim`,
//! `complete`, `fail`, `release`, `renew`) is sent as a pipeline `EVALSHA …; WAIT N T`
//! on the same connection, so the `WAIT` covers that write (and every earlier one of
//! the connection). The operation succeeds only if at least `N` replicas acknowledged
//! it; a failover to one of those replicas then keeps it. One round trip still, but
//! each write now waits for a replica's acknowledgement (see the figures in
//! docs/ARCHITECTURE.md).
//!
//! When fewer than `N` replicas acknowledge within `T`, the operation fails with
//! [`StoreError::NotReplicated`]. The write *is* applied on the primary (it would be
//! visible to the next read, so [`StoreError::outcome_unknown`] is `false` and the
//! guard does not read it back as a success), but it may or may not survive a
//! failover. It is transient:
//!
//! * a failed `complete`/`fail` retried later gets [`StoreError::Fenced`] with
//!   `current` equal to the caller's own token (the record is settled) once its
//!   `WAIT` succeeds, which confirms the first write is now replicated;
//! * a claim that failed this way leaves a live in-progress record: repeated with the
//!   same [`Claim::nonce`](crate::store::Claim::nonce) (the guard does so), it gets the
//!   same acquisition back; otherwise nobody owns it, and the key stays blocked until
//!   the lease passes, then is ambiguous (`on_ambiguous` decides), never run twice by
//!   accident.
//!
//! `WAIT` does not make Redis strongly consistent: a promoted replica that had not
//! acknowledged may still be chosen by a careless failover (Sentinel and Cluster
//! prefer the most up-to-date replica), and without persistence a replica restart
//! loses everything. Not available on Redis Cluster connections yet (refused at
//! connect).
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use idemp::store::redis::{RedisOptions, RedisStore};
//! use std::time::Duration;
//! // Every claim and settle is on at least one replica before it returns.
//! let store = RedisStore::connect("redis://10.0.0.5:6379/0?wait_replicas=1&wait_timeout_ms=500").await?;
//! // Or with options:
//! let url = "redis://10.0.0.5:6379/0".parse()?;
//! let options = RedisOptions::default().wait_replicas(1, Duration::from_millis(500));
//! let store = RedisStore::connect_with(&url, options).await?;
//! # let _ = store; Ok(()) }
//! ```

use ::redis::{Cmd, ErrorKind, RedisError, Script, ServerErrorKind, Value};

use super::{Conn, RedisOptions, RedisStore};
use crate::store::{RecordKey, StoreError, StoreResult, StoreUrl};

pub use crate::store::url::WaitReplicas;

impl RedisOptions {
    /// After each claim, settle, release and renewal, waits until `replicas` replicas
    /// have it (`WAIT replicas timeout` on the same connection), for up to `timeout`;
    /// fewer acknowledgements fail the operation with [`StoreError::NotReplicated`]
    /// (outcome unknown). Overrides the URL's `?wait_replicas=`. See the
    /// [module docs](self).
    pub fn wait_replicas(mut self, replicas: u32, timeout: std::time::Duration) -> Self {
        self.wait_replicas = Some(WaitReplicas::new(replicas, timeout));
        self
    }
}

/// What `INFO replication` says about a server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicationInfo {
    /// `master` or `slave`.
    pub role: Option<String>,
    /// How many replicas are connected (of a primary).
    pub connected_replicas: Option<u32>,
}

impl ReplicationInfo {
    /// Parses the text of `INFO replication`.
    pub(crate) fn parse(text: &str) -> Self {
        let mut info = Self::default();
        for line in text.lines() {
            let Some((k, v)) = line.trim().split_once(':') else {
                continue;
            };
            match k {
                "role" => info.role = Some(v.to_string()),
                "connected_slaves" => info.connected_replicas = v.parse().ok(),
                _ => {}
            }
        }
        info
    }
}

/// The `wait_replicas` of the options, else of the URL; refused on a cluster.
pub(super) fn configured(
    url: &StoreUrl,
    options: &RedisOptions,
) -> StoreResult<Option<WaitReplicas>> {
    let from_url = match url {
        StoreUrl::Redis { wait_replicas, .. } => *wait_replicas,
        _ => None,
    };
    let wait = options.wait_replicas.or(from_url);
    if wait.is_some() && matches!(url, StoreUrl::RedisCluster { .. }) {
        return Err(StoreError::Invalid(
            "wait_replicas is not supported on a Redis Cluster connection yet; use redis://".into(),
        ));
    }
    Ok(wait)
}

impl RedisStore {
    /// Like `eval`, followed by `WAIT` in the same pipeline when `wait_replicas` is
    /// set: the script's reply once enough replicas have the write.
    pub(super) async fn eval_replicated(
        &self,
        script: &Script,
        cmd: &Cmd,
        id: &RecordKey,
    ) -> StoreResult<Value> {
        let Some(wait) = self.wait_replicas else {
            return self.eval(script, cmd, id).await;
        };
        let Conn::Single(conn) = &self.conn else {
            // `configured` refuses a cluster with `wait_replicas`.
            return self.eval(script, cmd, id).await;
        };
        let mut pipe = ::redis::pipe();
        pipe.add_command(cmd.clone())
            .cmd("WAIT")
            .arg(wait.replicas)
            .arg(u64::try_from(wait.timeout.as_millis()).unwrap_or(u64::MAX));
        let send = || async { pipe.query_async::<(Value, i64)>(&mut conn.clone()).await };
        let mut result: Result<(Value, i64), RedisError> = send().await;
        if matches!(&result, Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)) {
            result = match script.load_async(&mut conn.clone()).await {
                Ok(_) => send().await,
                Err(e) => Err(e),
            };
        }
        let (reply, acked) = result.map_err(|e| self.map_err(e, Some(id)))?;
        let acked = u32::try_from(acked).unwrap_or(0);
        if acked < wait.replicas {
            return Err(StoreError::NotReplicated {
                id: id.clone(),
                wanted: wait.replicas,
                acked,
                timeout: wait.timeout,
            });
        }
        Ok(reply)
    }

    /// The server's replication state (`INFO replication`), if readable.
    pub(super) async fn replication_info(&self) -> Option<ReplicationInfo> {
        let mut cmd = ::redis::cmd("INFO");
        cmd.arg("replication");
        let text: String = self.query_any(cmd).await.ok()?;
        Some(ReplicationInfo::parse(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parses_info_replication() {
        let text = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\nslave0:ip=127.0.0.1,port=7001,state=online,offset=42,lag=0\r\nmaster_repl_offset:42\r\n";
        assert_eq!(
            ReplicationInfo::parse(text),
            ReplicationInfo {
                role: Some("master".into()),
                connected_replicas: Some(2)
            }
        );
        assert_eq!(
            ReplicationInfo::parse("role:slave\r\nmaster_link_status:up\r\n").role,
            Some("slave".into())
        );
    }

    #[test]
    fn options_override_the_url_and_a_cluster_is_refused() {
        let url: StoreUrl = "redis://h/0?wait_replicas=2".parse().unwrap();
        let from_url = configured(&url, &RedisOptions::default()).unwrap();
        assert_eq!(from_url.map(|w| w.replicas), Some(2));
        let opts = RedisOptions::default().wait_replicas(1, Duration::from_millis(50));
        assert_eq!(
            configured(&url, &opts).unwrap(),
            Some(WaitReplicas::new(1, Duration::from_millis(50)))
        );
        let plain: StoreUrl = "redis://h/0".parse().unwrap();
        assert_eq!(configured(&plain, &RedisOptions::default()).unwrap(), None);
        let cluster: StoreUrl = "redis+cluster://a:7000,b:7001".parse().unwrap();
        let err = configured(&cluster, &opts).unwrap_err();
        assert!(err.to_string().contains("Cluster"), "{err}");
    }
}
