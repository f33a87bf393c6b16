//! `idemp.cache`: the LRU + TTL tool-result cache with singleflight, over
//! `idemp::cache::ToolCache`. Values are kept as JSON text, so every caller gets its
//! own copy and a shared Redis level can hold them.

use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use idemp::cache::ToolCache;

use crate::store::secs;
use crate::{block_on, errors, json};

/// A cached value: JSON text, shared.
#[derive(Clone)]
struct Json(Arc<RawValue>);

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let b: Box<RawValue> = Box::deserialize(d)?;
        Ok(Json(Arc::from(b)))
    }
}

fn to_value(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Json> {
    let raw = json::to_raw(obj, "result").map_err(|e| errors::not_json(py, e))?;
    Ok(Json(Arc::from(raw)))
}

/// An LRU + TTL cache of tool results with singleflight: concurrent identical calls
/// run the tool once and share its result. Errors are never cached.
#[pyclass(frozen, module = "idemp._core", name = "ToolCache")]
pub struct PyToolCache {
    inner: ToolCache<Json>,
}

#[pymethods]
impl PyToolCache {
    /// ``redis_url`` adds a level shared by processes (same TTL); Redis errors never
    /// fail a call, the cache then works from memory.
    #[new]
    #[pyo3(signature = (*, max_entries = 10_000, ttl = 300.0, redis_url = None, prefix = "idemp:cache"))]
    fn new(
        py: Python<'_>,
        max_entries: u64,
        ttl: f64,
        redis_url: Option<String>,
        prefix: &str,
    ) -> PyResult<Self> {
        let mut b = ToolCache::<Json>::builder()
            .max_entries(max_entries)
            .ttl(secs("ttl", ttl)?);
        if let Some(url) = redis_url {
            let client = redis::Client::open(url.as_str())
                .map_err(|e| PyValueError::new_err(format!("redis URL {url}: {e}")))?;
            let conn = block_on(py, async move { client.get_connection_manager().await }).map_err(
                |e| {
                    errors::make(
                        py,
                        "StoreUnavailableError",
                        format!("redis {url}: {e}"),
                        &[],
                    )
                },
            )?;
            b = b.redis(conn, prefix);
        }
        Ok(Self { inner: b.build() })
    }

    /// The cache key of a tool call: ``idemp.keys.for_args(scope, tool, args)``.
    #[staticmethod]
    fn key_for(
        py: Python<'_>,
        scope: &str,
        tool: &str,
        args: &Bound<'_, PyAny>,
    ) -> PyResult<String> {
        crate::keys::for_args(py, scope, tool, args)
    }

    /// The cached value of ``key``, or calls ``fn()`` once (concurrent callers of the
    /// same key wait for that call, with the GIL released) and caches its result.
    fn get_or_call<'py>(
        &self,
        py: Python<'py>,
        key: String,
        fn_: Py<PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cache = self.inner.clone();
        let out = block_on(py, async move {
            cache
                .get_or_call_key(key, || async move {
                    Python::attach(|py| {
                        let v = fn_.bind(py).call0()?;
                        to_value(py, &v)
                    })
                })
                .await
        });
        match out {
            Ok(v) => json::from_json(py, v.0.get().as_bytes()),
            Err(e) => Err(e.clone_ref(py)),
        }
    }

    /// ``get_or_call`` for asyncio: ``fn()`` returns an awaitable.
    fn aget_or_call<'py>(
        &self,
        py: Python<'py>,
        key: String,
        fn_: Py<PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cache = self.inner.clone();
        crate::bridge::awaitable(py, async move {
            let out = cache
                .get_or_call_key(key, || async move {
                    let fut = crate::bridge::attach_py(|py| {
                        let awaitable = fn_.bind(py).call0()?;
                        let locals = pyo3_async_runtimes::tokio::get_current_locals(py)?;
                        pyo3_async_runtimes::into_future_with_locals(&locals, awaitable)
                    })?;
                    let obj = fut.await?;
                    crate::bridge::attach_py(|py| to_value(py, obj.bind(py)))
                })
                .await;
            crate::bridge::attach_py(|py| match out {
                Ok(v) => json::from_json(py, v.0.get().as_bytes()).map(Bound::unbind),
                Err(e) => Err(e.clone_ref(py)),
            })
        })
    }

    /// The cached value, or ``None``.
    fn get<'py>(&self, py: Python<'py>, key: String) -> PyResult<Option<Bound<'py, PyAny>>> {
        let cache = self.inner.clone();
        match block_on(py, async move { cache.get(&key).await }) {
            Some(v) => json::from_json(py, v.0.get().as_bytes()).map(Some),
            None => Ok(None),
        }
    }

    /// Stores a value.
    fn insert(&self, py: Python<'_>, key: String, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let v = to_value(py, value)?;
        let cache = self.inner.clone();
        block_on(py, async move { cache.insert(key, v).await });
        Ok(())
    }

    /// Drops one entry.
    fn invalidate(&self, py: Python<'_>, key: String) {
        let cache = self.inner.clone();
        block_on(py, async move { cache.invalidate(&key).await });
    }

    /// Drops every entry.
    fn invalidate_all(&self) {
        self.inner.invalidate_all();
    }

    /// ``{"hits", "misses", "errors", "entries", "shared_hits"}``.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let cache = self.inner.clone();
        block_on(py, async move { cache.flush().await });
        let s = self.inner.stats();
        let d = PyDict::new(py);
        d.set_item("hits", s.hits)?;
        d.set_item("misses", s.misses)?;
        d.set_item("errors", s.errors)?;
        d.set_item("entries", s.entries)?;
        d.set_item("shared_hits", s.shared_hits)?;
        Ok(d)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyToolCache>()?;
    Ok(())
}
