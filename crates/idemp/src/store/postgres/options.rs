//! [`PostgresOptions`]: the settings of a [`PostgresStore`], and the schema name rules.

use super::*;

/// Settings of a [`PostgresStore`]. Start from `Default` and use the setters.
#[derive(Clone)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// Schema of idemp's tables (default `idemp`).
    pub schema: String,
    /// Connections in the pool (default 16). The LISTEN connection, opened on the
    /// first `wait`, is one more.
    pub pool_size: usize,
    /// How often the background sweeper deletes expired rows; `None` disables it
    /// (call [`StoreAdmin::sweep`](crate::store::StoreAdmin::sweep) yourself). Default 5 min (a sweep reads the whole table).
    pub sweep_interval: Option<Duration>,
    /// Table pages (8 KiB) each sweep statement scans (default 1024, 8 MiB): a sweep
    /// walks the whole table in such slices.
    pub sweep_batch: u32,
    /// How long a released or purged key keeps its tombstone row (default 10 min).
    pub tombstone_retention: Duration,
    /// A waiter re-reads the record at least this often even without a notification
    /// (default 1 s).
    pub wait_recheck: Duration,
    /// Client clock instead of the server's (tests); `None` uses the server's time.
    pub clock: Option<SharedClock>,
    /// `application_name` of the connections, unless the URL sets one (default `idemp`).
    pub application_name: String,
    /// Connect timeout (default 5 s).
    pub connect_timeout: Duration,
    /// How long an operation waits for a free pooled connection before it fails with
    /// [`StoreError::Unavailable`] (default 5 s; a `wait` never waits past its own
    /// deadline).
    pub acquire_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            schema: "idemp".into(),
            pool_size: 16,
            sweep_interval: Some(Duration::from_secs(300)),
            sweep_batch: 1024,
            tombstone_retention: Duration::from_secs(600),
            wait_recheck: Duration::from_secs(1),
            clock: None,
            application_name: "idemp".into(),
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("sweep_interval", &self.sweep_interval)
            .field("sweep_batch", &self.sweep_batch)
            .field("tombstone_retention", &self.tombstone_retention)
            .field("wait_recheck", &self.wait_recheck)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("client_clock", &self.clock.is_some())
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl PostgresOptions {
    /// Sets the schema.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }
    /// Sets the pool size (at least 1).
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n.max(1);
        self
    }
    /// Sets the sweeper interval (`None` disables the sweeper).
    pub fn sweep_interval(mut self, every: Option<Duration>) -> Self {
        self.sweep_interval = every;
        self
    }
    /// Sets how many table pages each sweep statement scans (at least 1).
    pub fn sweep_batch(mut self, n: u32) -> Self {
        self.sweep_batch = n.max(1);
        self
    }
    /// Sets how long tombstones of released or purged keys are kept.
    pub fn tombstone_retention(mut self, d: Duration) -> Self {
        self.tombstone_retention = d;
        self
    }
    /// Sets the waiters' safety re-check interval.
    pub fn wait_recheck(mut self, d: Duration) -> Self {
        self.wait_recheck = d.max(Duration::from_millis(1));
        self
    }
    /// Uses a client clock instead of the server's time (tests).
    pub fn clock(mut self, clock: Option<SharedClock>) -> Self {
        self.clock = clock;
        self
    }
    /// Sets the connections' `application_name`.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }
    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
    /// Sets [`acquire_timeout`](Self::acquire_timeout).
    pub fn acquire_timeout(mut self, d: Duration) -> Self {
        self.acquire_timeout = d;
        self
    }
}

/// The schema identifier rules: 1-63 of `[A-Za-z0-9_]`, not starting with a digit.
pub(super) fn check_schema(schema: &str) -> StoreResult<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !schema.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "schema `{schema}` must be 1-63 characters of [A-Za-z0-9_], not starting with a digit"
        )))
    }
}
