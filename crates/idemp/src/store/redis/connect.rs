//! Connecting: single server or cluster, the prefix, the notifier, the durability
//! check; and reading `CLUSTER NODES`.

use super::*;

impl RedisStore {
    /// Connects to `redis://…` or `redis+cluster://…` (see [`StoreUrl`]).
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let parsed: StoreUrl = url
            .parse()
            .map_err(|e: StoreUrlError| StoreError::Invalid(e.to_string()))?;
        Self::connect_url(&parsed).await
    }

    /// Connects using a parsed store URL, with default options.
    pub async fn connect_url(url: &StoreUrl) -> StoreResult<Self> {
        Self::connect_with(url, RedisOptions::default()).await
    }

    /// Connects using a parsed store URL and options.
    pub async fn connect_with(url: &StoreUrl, options: RedisOptions) -> StoreResult<Self> {
        let wait_replicas = replicas::configured(url, &options)?;
        let (conn, url_prefix, pubsub_clients) = match url {
            StoreUrl::Redis { url: u, prefix, .. } => {
                let client = ::redis::Client::open(u.as_str())
                    .map_err(|e| StoreError::Invalid(format!("redis URL {url}: {e}")))?;
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(options.response_timeout))
                    .set_connection_timeout(Some(options.connection_timeout))
                    .set_number_of_retries(options.reconnect_retries)
                    .set_max_delay(Duration::from_secs(1));
                let manager = client
                    .get_connection_manager_with_config(config)
                    .await
                    .map_err(|e| unavailable(url, &e))?;
                (Conn::Single(manager), prefix.clone(), vec![client])
            }
            StoreUrl::RedisCluster { nodes, prefix } => {
                let client = ::redis::cluster::ClusterClient::builder(nodes.clone())
                    .connection_timeout(options.connection_timeout)
                    .response_timeout(options.response_timeout)
                    .retries(options.reconnect_retries as u32)
                    .build()
                    .map_err(|e| StoreError::Invalid(format!("redis cluster URL {url}: {e}")))?;
                let conn = client
                    .get_async_connection()
                    .await
                    .map_err(|e| unavailable(url, &e))?;
                let mut clients = Vec::new();
                for n in nodes {
                    clients.push(
                        ::redis::Client::open(n.as_str())
                            .map_err(|e| StoreError::Invalid(format!("redis node {n}: {e}")))?,
                    );
                }
                (Conn::Cluster(conn), prefix.clone(), clients)
            }
            other => {
                return Err(StoreError::Invalid(format!(
                    "not a redis URL: {other} (expected redis:// or redis+cluster://)"
                )));
            }
        };
        let prefix = options
            .prefix
            .or(url_prefix)
            .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
        check_prefix(&prefix)?;
        let store = Self {
            conn,
            layout: Layout::new(&prefix),
            clock: None,
            notifier: Arc::new(Notifier::default()),
            pubsub_clients,
            server: url.to_string(),
            wait_replicas,
        };
        if options.check_durability {
            store.durability().await?.log(&store.server);
        }
        Ok(store)
    }
}

pub(super) fn parse_cluster_masters(text: &str) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else {
            continue;
        };
        if !flags.split(',').any(|f| f == "master")
            || flags.split(',').any(|f| f == "fail" || f == "noaddr")
        {
            continue;
        }
        let hostport = addr.split(['@', ',']).next().unwrap_or_default();
        if let Some((host, port)) = hostport.rsplit_once(':')
            && let (false, Ok(port)) = (host.is_empty(), port.parse::<u16>())
        {
            out.push((host.to_string(), port));
        }
    }
    out
}
