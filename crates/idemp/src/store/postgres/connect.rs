//! Connecting: URLs, the pool, migrations, the listener and the sweeper.

use super::*;

impl PostgresStore {
    /// Connects using a parsed store URL (`StoreUrl::Postgres`).
    pub async fn connect_url(url: &StoreUrl) -> StoreResult<Self> {
        let StoreUrl::Postgres { url, schema } = url else {
            return Err(StoreError::Invalid(format!(
                "{url} is not a postgres:// store URL"
            )));
        };
        let mut opts = PostgresOptions::default();
        if let Some(s) = schema {
            opts.schema = s.clone();
        }
        let (client_url, pool_size) = take_pool_size(url)?;
        if let Some(n) = pool_size {
            opts = opts.pool_size(n);
        }
        Self::connect_with(&client_url, opts).await
    }

    /// Connects with a store URL string (`postgres://…[?schema=S][&pool_size=N]`).
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let parsed: StoreUrl = url
            .parse()
            .map_err(|e: crate::store::StoreUrlError| StoreError::Invalid(e.to_string()))?;
        Self::connect_url(&parsed).await
    }

    /// Connects with a client URL or `key=value` connection string (as understood by
    /// `tokio_postgres::Config`, without idemp's own parameters) and options.
    pub async fn connect_with(conn: &str, opts: PostgresOptions) -> StoreResult<Self> {
        let config = tokio_postgres::Config::from_str(conn).map_err(|e| {
            StoreError::Invalid(format!(
                "postgres connection string `{}`: {e}",
                crate::store::url::mask_password(conn)
            ))
        })?;
        Self::connect_config(config, opts).await
    }

    /// Connects with a ready `tokio_postgres::Config`.
    pub async fn connect_config(
        mut config: tokio_postgres::Config,
        opts: PostgresOptions,
    ) -> StoreResult<Self> {
        check_schema(&opts.schema)?;
        if config.get_application_name().is_none() {
            config.application_name(&opts.application_name);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(opts.connect_timeout);
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(opts.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(opts.connect_timeout))
            .wait_timeout(Some(opts.acquire_timeout))
            .recycle_timeout(Some(opts.connect_timeout))
            .build()
            .map_err(|e| StoreError::Invalid(format!("postgres pool: {e}")))?;
        let quoted = format!("\"{}\"", opts.schema);
        let mut channel = format!("idemp_{}", opts.schema);
        channel.truncate(63);
        migrate(&pool, &opts.schema, &quoted).await?;
        let core = Arc::new(Core {
            sql: Sql::new(&quoted, &channel),
            pool,
            schema: opts.schema.clone(),
            channel,
            pg_config: config,
            waiters: Arc::new(Waiters::default()),
            opts,
        });
        let sweeper = core.opts.sweep_interval.map(|every| {
            let core = core.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    match core.sweep().await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(removed = n, "idemp postgres sweep"),
                        Err(e) => tracing::warn!(error = %e, "idemp postgres sweep failed"),
                    }
                }
            })
        });
        Ok(Self {
            core,
            tasks: Arc::new(Tasks {
                sweeper,
                listener: OnceLock::new(),
            }),
        })
    }
}

/// Takes `pool_size=N` out of a client URL.
pub(super) fn take_pool_size(url: &str) -> StoreResult<(String, Option<usize>)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), None));
    };
    let mut kept = Vec::new();
    let mut size = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("pool_size", v)) => {
                let n: usize = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    StoreError::Invalid(format!("pool_size `{v}` is not a positive number"))
                })?;
                size = Some(n);
            }
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, size))
}
