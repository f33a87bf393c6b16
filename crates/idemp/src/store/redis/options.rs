//! [`RedisOptions`]: the connection options of a [`RedisStore`], and the prefix rules.

use super::*;

/// Connection options of [`RedisStore::connect_with`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RedisOptions {
    /// Key prefix; overrides the URL's `?prefix=`. Default: the URL's, else `idemp`.
    pub prefix: Option<String>,
    /// How long to wait for a reply before the operation fails as `Unavailable`
    /// (default 5 s).
    pub response_timeout: Duration,
    /// How long to wait for a connection (default 2 s).
    pub connection_timeout: Duration,
    /// Reconnection attempts per failed connection before giving up until the next
    /// operation (default 2).
    pub reconnect_retries: usize,
    /// Check the durability settings on connect and warn (default true).
    pub check_durability: bool,
    /// Wait for replicas after each write (default: no); see [`replicas`](super::replicas).
    pub wait_replicas: Option<super::WaitReplicas>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            prefix: None,
            response_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(2),
            reconnect_retries: 2,
            check_durability: true,
            wait_replicas: None,
        }
    }
}

impl RedisOptions {
    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }
    /// Sets the response timeout.
    pub fn response_timeout(mut self, d: Duration) -> Self {
        self.response_timeout = d;
        self
    }
    /// Sets the connection timeout.
    pub fn connection_timeout(mut self, d: Duration) -> Self {
        self.connection_timeout = d;
        self
    }
    /// Sets the reconnection attempts.
    pub fn reconnect_retries(mut self, n: usize) -> Self {
        self.reconnect_retries = n;
        self
    }
    /// Enables or disables the durability check on connect.
    pub fn check_durability(mut self, yes: bool) -> Self {
        self.check_durability = yes;
        self
    }
}

pub(super) fn check_prefix(p: &str) -> StoreResult<()> {
    if p.is_empty() || p.len() > 200 || p.contains(['{', '}']) || p.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!(
            "redis key prefix `{p}` must be 1-200 characters without braces or control characters"
        )));
    }
    Ok(())
}
