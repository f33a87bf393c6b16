//! A cache for read-only tool results.
//!
//! Reads are safe to repeat, but repeating them costs time and tokens: an agent that
//! looks up the same customer three times in one run should call the tool once.
//! [`ToolCache`] is an LRU + TTL cache (size-bounded) keyed by the tool's scope, name
//! and canonical arguments, with **singleflight**: concurrent identical reads call the
//! tool once and share its result. Errors are never cached.
//!
//! With the `redis` feature, [`ToolCacheBuilder::redis`] adds a shared second level:
//! results are also written to Redis (with the same TTL), and a miss in memory is looked
//! up there before the tool is called, so several agent processes share reads. Redis
//! errors never fail a call: the cache degrades to memory only (and logs a warning).
//!
//! It is built on [moka](https://docs.rs/moka) (TinyLFU admission, LRU eviction,
//! per-cache TTL, coalesced loading). A faster map (quick_cache, DashMap) reads in a
//! fraction of moka's ~1.6 µs, but a tool call takes milliseconds to seconds: TTL,
//! size bounds and singleflight matter here, nanoseconds do not.
//!
//! ```
//! use std::time::Duration;
//! use idemp::cache::ToolCache;
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let cache: ToolCache<serde_json::Value> = ToolCache::builder()
//!     .max_entries(10_000)
//!     .ttl(Duration::from_secs(300))
//!     .build();
//!
//! let args = json!({"customer_id": "c_42"});
//! for _ in 0..3 {
//!     let v = cache
//!         .get_or_call("session-1", "lookup_customer", &args, || async {
//!             Ok::<_, std::io::Error>(json!({"name": "Ada"}))
//!         })
//!         .await
//!         .unwrap();
//!     assert_eq!(v["name"], "Ada");
//! }
//! assert_eq!(cache.stats().misses, 1);
//! assert_eq!(cache.stats().hits, 2);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Hit and miss counts of a [`ToolCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache (including callers that joined an in-flight
    /// load of the same key).
    pub hits: u64,
    /// Lookups that called the tool.
    pub misses: u64,
    /// Calls whose tool returned an error (not cached).
    pub errors: u64,
    /// Entries currently held (approximate: moka applies writes in batches).
    pub entries: u64,
    /// Misses in memory answered by the shared (Redis) level, without calling the tool.
    pub shared_hits: u64,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    shared_hits: AtomicU64,
}

/// A second cache level shared between processes (see [`ToolCacheBuilder::redis`]).
trait SharedTier<V>: Send + Sync {
    fn get<'a>(&'a self, key: &'a str) -> futures_util::future::BoxFuture<'a, Option<V>>;
    fn put<'a>(&'a self, key: &'a str, value: &'a V) -> futures_util::future::BoxFuture<'a, ()>;
}

/// An LRU + TTL cache of tool results with singleflight. Cheap to clone: clones share
/// the same entries and counters.
#[derive(Clone)]
pub struct ToolCache<V> {
    inner: moka::future::Cache<String, V>,
    counters: Arc<Counters>,
    shared: Option<Arc<dyn SharedTier<V>>>,
}

impl<V> fmt::Debug for ToolCache<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolCache")
            .field("entries", &self.inner.entry_count())
            .field("counters", &self.counters)
            .finish()
    }
}

type Weigher<V> = Box<dyn Fn(&V) -> u32 + Send + Sync>;

/// Builds a [`ToolCache`].
pub struct ToolCacheBuilder<V> {
    max_entries: u64,
    ttl: Option<Duration>,
    tti: Option<Duration>,
    weigher: Option<Weigher<V>>,
    shared: Option<Arc<dyn SharedTier<V>>>,
}

impl<V> fmt::Debug for ToolCacheBuilder<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolCacheBuilder")
            .field("max_entries", &self.max_entries)
            .field("ttl", &self.ttl)
            .field("tti", &self.tti)
            .field("weigher", &self.weigher.is_some())
            .field("shared", &self.shared.is_some())
            .finish()
    }
}

impl<V: Clone + Send + Sync + 'static> ToolCacheBuilder<V> {
    /// The size bound: entries, or total weight when a [`weigher`](Self::weigher) is
    /// set (default 10,000).
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = n;
        self
    }
    /// How long an entry lives after it was stored (default 5 minutes).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
    /// Also expire entries not read for this long.
    pub fn time_to_idle(mut self, tti: Duration) -> Self {
        self.tti = Some(tti);
        self
    }
    /// Weighs entries (e.g. by bytes) so the bound is on total weight, not count.
    pub fn weigher(mut self, f: impl Fn(&V) -> u32 + Send + Sync + 'static) -> Self {
        self.weigher = Some(Box::new(f));
        self
    }
    /// The cache.
    pub fn build(self) -> ToolCache<V> {
        let mut b = moka::future::Cache::builder()
            .max_capacity(self.max_entries)
            .time_to_live(self.ttl.unwrap_or(Duration::from_secs(300)));
        if let Some(tti) = self.tti {
            b = b.time_to_idle(tti);
        }
        if let Some(w) = self.weigher {
            b = b.weigher(move |_k: &String, v: &V| w(v));
        }
        ToolCache {
            inner: b.build(),
            counters: Arc::default(),
            shared: self.shared,
        }
    }
}

#[cfg(feature = "redis")]
mod redis_tier {
    use super::SharedTier;
    use futures_util::future::BoxFuture;
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use std::marker::PhantomData;
    use std::time::Duration;

    pub(super) struct RedisTier<V> {
        pub(super) conn: redis::aio::ConnectionManager,
        pub(super) prefix: String,
        pub(super) ttl: Duration,
        pub(super) _v: PhantomData<fn() -> V>,
    }

    impl<V> RedisTier<V> {
        fn key(&self, key: &str) -> String {
            format!("{}:toolcache:{key}", self.prefix)
        }
    }

    impl<V: Serialize + DeserializeOwned + Send + Sync + 'static> SharedTier<V> for RedisTier<V> {
        fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<V>> {
            Box::pin(async move {
                let mut conn = self.conn.clone();
                let got: Result<Option<Vec<u8>>, _> = redis::cmd("GET")
                    .arg(self.key(key))
                    .query_async(&mut conn)
                    .await;
                match got {
                    Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                        .inspect_err(|e| tracing::warn!(%e, key, "undecodable shared cache entry"))
                        .ok(),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::warn!(%e, "shared tool cache unavailable; using memory only");
                        None
                    }
                }
            })
        }
        fn put<'a>(&'a self, key: &'a str, value: &'a V) -> BoxFuture<'a, ()> {
            Box::pin(async move {
                let Ok(bytes) = serde_json::to_vec(value) else {
                    return;
                };
                let ms = u64::try_from(self.ttl.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1);
                let mut conn = self.conn.clone();
                let set: Result<(), _> = redis::cmd("SET")
                    .arg(self.key(key))
                    .arg(bytes)
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = set {
                    tracing::warn!(%e, "shared tool cache write failed");
                }
            })
        }
    }
}

#[cfg(feature = "redis")]
impl<V> ToolCacheBuilder<V>
where
    V: Clone + serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    /// Shares results through Redis (feature `redis`): values are stored as JSON under
    /// `<prefix>:toolcache:<key>` with the cache's TTL. Set the TTL before calling this.
    pub fn redis(mut self, conn: redis::aio::ConnectionManager, prefix: impl Into<String>) -> Self {
        self.shared = Some(Arc::new(redis_tier::RedisTier {
            conn,
            prefix: prefix.into(),
            ttl: self.ttl.unwrap_or(Duration::from_secs(300)),
            _v: std::marker::PhantomData,
        }));
        self
    }
}

impl<V: Clone + Send + Sync + 'static> ToolCache<V> {
    /// A builder: 10,000 entries, 5 minute TTL.
    pub fn builder() -> ToolCacheBuilder<V> {
        ToolCacheBuilder {
            max_entries: 10_000,
            ttl: None,
            tti: None,
            weigher: None,
            shared: None,
        }
    }

    /// The cache key of a tool call: [`crate::key::for_args`] of the scope, the tool
    /// name and the arguments, so argument order never matters.
    pub fn key_for(scope: &str, tool: &str, args: &serde_json::Value) -> String {
        crate::key::for_args(scope, tool, args).to_string()
    }

    /// Returns the cached result of `tool(args)` in `scope`, or calls `call` once
    /// (concurrent identical lookups wait for that one call) and caches its `Ok`.
    /// An `Err` is returned to every caller that joined the call and is not cached.
    pub async fn get_or_call<F, Fut, E>(
        &self,
        scope: &str,
        tool: &str,
        args: &serde_json::Value,
        call: F,
    ) -> Result<V, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        self.get_or_call_key(Self::key_for(scope, tool, args), call)
            .await
    }

    /// [`get_or_call`](Self::get_or_call) with a key of your own.
    pub async fn get_or_call_key<F, Fut, E>(&self, key: String, call: F) -> Result<V, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        let ran = AtomicBool::new(false);
        let from_shared = AtomicBool::new(false);
        let shared = self.shared.as_deref();
        let out = self
            .inner
            .try_get_with(key.clone(), async {
                if let Some(tier) = shared
                    && let Some(v) = tier.get(&key).await
                {
                    from_shared.store(true, Ordering::Relaxed);
                    return Ok(v);
                }
                ran.store(true, Ordering::Relaxed);
                let v = call().await?;
                if let Some(tier) = shared {
                    tier.put(&key, &v).await;
                }
                Ok(v)
            })
            .await;
        let counter = match (&out, ran.load(Ordering::Relaxed)) {
            (Err(_), true) => &self.counters.errors,
            (_, true) => &self.counters.misses,
            _ if from_shared.load(Ordering::Relaxed) => &self.counters.shared_hits,
            (_, false) => &self.counters.hits,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        out
    }

    /// The cached value, if present and fresh.
    pub async fn get(&self, key: &str) -> Option<V> {
        let v = self.inner.get(key).await;
        let c = if v.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        c.fetch_add(1, Ordering::Relaxed);
        v
    }

    /// Stores a value.
    pub async fn insert(&self, key: String, value: V) {
        self.inner.insert(key, value).await;
    }

    /// Drops one entry (e.g. after a write tool changed what a read returns).
    pub async fn invalidate(&self, key: &str) {
        self.inner.invalidate(key).await;
    }

    /// Drops every entry.
    pub fn invalidate_all(&self) {
        self.inner.invalidate_all();
    }

    /// Counts so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
            errors: self.counters.errors.load(Ordering::Relaxed),
            entries: self.inner.entry_count(),
            shared_hits: self.counters.shared_hits.load(Ordering::Relaxed),
        }
    }

    /// Applies pending writes and evictions now (moka batches them); useful before
    /// reading [`stats`](Self::stats)`.entries`.
    pub async fn flush(&self) {
        self.inner.run_pending_tasks().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::AtomicU32;

    fn cache(ttl: Duration) -> ToolCache<serde_json::Value> {
        ToolCache::builder().max_entries(100).ttl(ttl).build()
    }

    #[tokio::test]
    async fn argument_order_does_not_matter() {
        let c = cache(Duration::from_secs(60));
        let calls = AtomicU32::new(0);
        for args in [json!({"a": 1, "b": [1, 2]}), json!({"b": [1, 2], "a": 1})] {
            c.get_or_call("s", "t", &args, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(json!(1))
            })
            .await
            .unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // A different scope or tool is a different entry.
        c.get_or_call("s2", "t", &json!({"a": 1, "b": [1, 2]}), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(json!(2))
        })
        .await
        .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_identical_reads_call_once() {
        let c = cache(Duration::from_secs(60));
        let calls = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let c = c.clone();
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                c.get_or_call_key("k".to_string(), || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, String>(json!("v"))
                })
                .await
                .unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), json!("v"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let s = c.stats();
        assert_eq!((s.misses, s.hits), (1, 31));
    }

    #[tokio::test]
    async fn errors_are_not_cached() {
        let c = cache(Duration::from_secs(60));
        let e = c
            .get_or_call_key("k".into(), || async { Err::<serde_json::Value, _>("down") })
            .await
            .unwrap_err();
        assert_eq!(*e, "down");
        let v = c
            .get_or_call_key("k".into(), || async { Ok::<_, &str>(json!(1)) })
            .await
            .unwrap();
        assert_eq!(v, json!(1));
        assert_eq!(c.stats().errors, 1);
        assert_eq!(c.stats().misses, 1);
    }

    #[tokio::test]
    async fn entries_expire_after_ttl() {
        let c = cache(Duration::from_millis(30));
        c.insert("k".into(), json!(1)).await;
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(c.get("k").await, None);
    }

    #[tokio::test]
    async fn size_bound_evicts() {
        let c: ToolCache<u64> = ToolCache::builder().max_entries(50).build();
        for i in 0..1_000u64 {
            c.insert(format!("k{i}"), i).await;
        }
        c.flush().await;
        assert!(c.stats().entries <= 50, "{:?}", c.stats());
    }

    #[tokio::test]
    async fn invalidate_forces_a_new_call() {
        let c = cache(Duration::from_secs(60));
        let key = ToolCache::<serde_json::Value>::key_for("s", "t", &json!({}));
        c.insert(key.clone(), json!("old")).await;
        c.invalidate(&key).await;
        let v = c
            .get_or_call("s", "t", &json!({}), || async {
                Ok::<_, String>(json!("new"))
            })
            .await
            .unwrap();
        assert_eq!(v, json!("new"));
    }
}
