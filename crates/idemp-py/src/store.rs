//! `idemp.open_store(url)` and the `Store` / `Record` classes, over `idemp::store`.

use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use idemp::store::{
    self, Claim, ClaimOutcome, Codec, Compression, DynStore, Fingerprint, ListQuery, Outcome,
    Record, RecordKey, State, StoreUrl,
};

use crate::{block_on, errors, json};

/// Seconds (a float) as a `Duration`; negative or NaN is an error.
pub fn secs(name: &str, v: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(v).map_err(|_| {
        PyValueError::new_err(format!("{name} must be a number of seconds >= 0, got {v}"))
    })
}

/// A payload fingerprint: 32 bytes, or 64 hex digits.
pub fn fingerprint(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Fingerprint>> {
    let Some(obj) = obj else { return Ok(None) };
    if obj.is_none() {
        return Ok(None);
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        let arr: [u8; 32] = b
            .as_bytes()
            .try_into()
            .map_err(|_| PyValueError::new_err("fingerprint bytes must be 32 bytes (a SHA-256)"))?;
        return Ok(Some(Fingerprint(arr)));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Fingerprint::from_hex(s.to_str()?)
            .map(Some)
            .ok_or_else(|| PyValueError::new_err("fingerprint must be 64 hex digits (a SHA-256)"));
    }
    Err(pyo3::exceptions::PyTypeError::new_err(
        "fingerprint must be bytes (32) or a hex str (64), e.g. idemp.canon.hash_request(payload)",
    ))
}

/// Where records live: memory, SQLite, Redis (Cluster) or Postgres. Made by
/// ``idemp.open_store(url)``; share one per process and pass it to every ``Guard``.
#[pyclass(frozen, module = "idemp._core", name = "Store")]
pub struct PyStore {
    pub inner: DynStore,
    pub url: String,
}

/// A stored record (a snapshot: the store may have changed since).
#[pyclass(frozen, module = "idemp._core", name = "Record")]
pub struct PyRecord {
    pub inner: Record,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn outcome_value<'py>(py: Python<'py>, o: &Outcome) -> PyResult<Bound<'py, PyAny>> {
    if o.compression != Compression::None {
        return Err(errors::make(
            py,
            "CodecError",
            format!(
                "the stored outcome is {:?}-compressed; read it with the guard",
                o.compression
            ),
            &[],
        ));
    }
    match o.codec {
        Codec::Json => json::from_json(py, &o.bytes),
        Codec::Raw => Ok(PyBytes::new(py, &o.bytes).into_any()),
        other => Err(errors::make(
            py,
            "CodecError",
            format!("the stored outcome is {other:?}, not JSON"),
            &[],
        )),
    }
}

#[pymethods]
impl PyRecord {
    #[getter]
    fn key(&self) -> &str {
        &self.inner.id.key
    }
    #[getter]
    fn scope(&self) -> &str {
        &self.inner.id.scope
    }
    /// ``in_progress``, ``completed`` or ``failed``.
    #[getter]
    fn state(&self) -> &'static str {
        self.inner.state.name()
    }
    /// The current fencing token.
    #[getter]
    fn token(&self) -> u64 {
        self.inner.token
    }
    /// How many executions acquired the key (1 + takeovers).
    #[getter]
    fn attempts(&self) -> u32 {
        self.inner.attempts
    }
    /// Seconds since the epoch.
    #[getter]
    fn created_at(&self) -> f64 {
        self.inner.created_at as f64 / 1000.0
    }
    #[getter]
    fn updated_at(&self) -> f64 {
        self.inner.updated_at as f64 / 1000.0
    }
    /// When a settled record expires (seconds since the epoch); ``None`` in progress.
    #[getter]
    fn expires_at(&self) -> Option<f64> {
        self.inner.expires_at.map(|m| m as f64 / 1000.0)
    }
    /// When the owner's lease passes (in progress only).
    #[getter]
    fn lease_until(&self) -> Option<f64> {
        match self.inner.state {
            State::InProgress { lease_until } => Some(lease_until as f64 / 1000.0),
            _ => None,
        }
    }
    /// The payload fingerprint (64 hex), if the claim gave one.
    #[getter]
    fn fingerprint(&self) -> Option<String> {
        self.inner.fingerprint.map(|f| f.to_hex())
    }
    /// In progress and its lease has passed: the side effect may or may not have happened.
    #[getter]
    fn is_ambiguous(&self) -> bool {
        self.inner.is_ambiguous(now_ms())
    }
    /// The stored result of a completed record (decoded JSON; ``bytes`` for raw
    /// outcomes such as stored HTTP responses), else ``None``.
    #[getter]
    fn value<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match &self.inner.state {
            State::Completed(o) => outcome_value(py, o).map(Some),
            _ => Ok(None),
        }
    }
    /// The stored failure of a failed record: ``{"kind", "message", "data"}``.
    #[getter]
    fn failure<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match &self.inner.state {
            State::Failed(o) => outcome_value(py, o).map(Some),
            _ => Ok(None),
        }
    }
    fn __repr__(&self) -> String {
        format!(
            "Record(scope={:?}, key={:?}, state={:?}, token={}, attempts={})",
            self.inner.id.scope,
            self.inner.id.key,
            self.inner.state.name(),
            self.inner.token,
            self.inner.attempts
        )
    }
}

fn rk(scope: &str, key: &str) -> RecordKey {
    RecordKey::new(scope, key)
}

fn json_outcome(py: Python<'_>, value: &Bound<'_, PyAny>, what: &str) -> PyResult<Outcome> {
    let text = json::to_json(value, json::STRICT, what).map_err(|e| errors::not_json(py, e))?;
    Ok(Outcome::new(Codec::Json, text))
}

#[pymethods]
impl PyStore {
    /// The URL the store was opened with (passwords masked).
    #[getter]
    fn url(&self) -> String {
        store::url::mask_password(&self.url)
    }

    fn __repr__(&self) -> String {
        format!("Store({:?})", store::url::mask_password(&self.url))
    }

    /// The live record of ``key`` in ``scope``, or ``None``.
    #[pyo3(signature = (key, scope = ""))]
    fn get(&self, py: Python<'_>, key: &str, scope: &str) -> PyResult<Option<PyRecord>> {
        let s = self.inner.clone();
        let id = rk(scope, key);
        let r = block_on(py, async move { s.get(&id).await });
        r.map(|o| o.map(|inner| PyRecord { inner }))
            .map_err(|e| errors::store_error(py, e))
    }

    /// Deletes the record whatever its state (its owner, if any, is fenced from then
    /// on). Returns whether it existed.
    #[pyo3(signature = (key, scope = ""))]
    fn purge(&self, py: Python<'_>, key: &str, scope: &str) -> PyResult<bool> {
        let s = self.inner.clone();
        let id = rk(scope, key);
        block_on(py, async move { s.purge(&id).await }).map_err(|e| errors::store_error(py, e))
    }

    /// Live records ordered by (scope, key), at most ``limit``.
    #[pyo3(signature = (scope = None, prefix = None, limit = 1000))]
    fn list(
        &self,
        py: Python<'_>,
        scope: Option<String>,
        prefix: Option<String>,
        limit: usize,
    ) -> PyResult<Vec<PyRecord>> {
        let s = self.inner.clone();
        let res = block_on(py, async move {
            let mut out = Vec::new();
            let mut after = None;
            loop {
                let q = ListQuery {
                    scope: scope.clone(),
                    key_prefix: prefix.clone(),
                    after: after.take(),
                    limit: (limit - out.len()).min(500),
                };
                let page = s.list(&q).await?;
                out.extend(page.records);
                match page.next {
                    Some(n) if out.len() < limit => after = Some(n),
                    _ => break,
                }
            }
            out.truncate(limit);
            Ok::<_, store::StoreError>(out)
        });
        res.map(|v| v.into_iter().map(|inner| PyRecord { inner }).collect())
            .map_err(|e| errors::store_error(py, e))
    }

    /// Counts by state: ``{"in_progress", "ambiguous", "completed", "failed", "outcome_bytes"}``.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.clone();
        let st =
            block_on(py, async move { s.stats().await }).map_err(|e| errors::store_error(py, e))?;
        let d = PyDict::new(py);
        d.set_item("in_progress", st.in_progress)?;
        d.set_item("ambiguous", st.ambiguous)?;
        d.set_item("completed", st.completed)?;
        d.set_item("failed", st.failed)?;
        d.set_item("outcome_bytes", st.outcome_bytes)?;
        Ok(d)
    }

    /// Removes expired records; returns how many (0 for stores with native expiry).
    fn sweep(&self, py: Python<'_>) -> PyResult<u64> {
        let s = self.inner.clone();
        block_on(py, async move { s.sweep().await }).map_err(|e| errors::store_error(py, e))
    }

    /// The store contract's atomic claim. Returns ``("acquired", token, None)``,
    /// ``("existing", None, record)`` or ``("mismatch", None, record)``. Most code
    /// wants ``Guard`` instead.
    #[pyo3(signature = (key, scope = "", *, lease = 60.0, ttl = 86400.0, fingerprint = None, take_over_expired = true))]
    #[allow(clippy::too_many_arguments)]
    fn claim(
        &self,
        py: Python<'_>,
        key: &str,
        scope: &str,
        lease: f64,
        ttl: f64,
        fingerprint: Option<&Bound<'_, PyAny>>,
        take_over_expired: bool,
    ) -> PyResult<(&'static str, Option<u64>, Option<PyRecord>)> {
        idemp::key::validate(key).map_err(|e| errors::key_error(py, key, e))?;
        let claim = Claim::new(rk(scope, key))
            .lease(secs("lease", lease)?)
            .ttl(secs("ttl", ttl)?)
            .fingerprint(self::fingerprint(fingerprint)?)
            .take_over_expired(take_over_expired);
        let s = self.inner.clone();
        let out = block_on(py, async move { s.claim(&claim).await })
            .map_err(|e| errors::store_error(py, e))?;
        Ok(match out {
            ClaimOutcome::Acquired { token, .. } => ("acquired", Some(token), None),
            ClaimOutcome::Existing(inner) => ("existing", None, Some(PyRecord { inner })),
            ClaimOutcome::Mismatch(inner) => ("mismatch", None, Some(PyRecord { inner })),
        })
    }

    /// Settles a claimed record as completed with ``value`` (stored as JSON), if
    /// ``token`` still owns it.
    #[pyo3(signature = (key, token, value, scope = "", *, ttl = 86400.0))]
    fn complete(
        &self,
        py: Python<'_>,
        key: &str,
        token: u64,
        value: &Bound<'_, PyAny>,
        scope: &str,
        ttl: f64,
    ) -> PyResult<()> {
        let outcome = json_outcome(py, value, "value")?;
        let (s, id, ttl) = (self.inner.clone(), rk(scope, key), secs("ttl", ttl)?);
        block_on(
            py,
            async move { s.complete(&id, token, outcome, ttl).await },
        )
        .map_err(|e| errors::store_error(py, e))
    }

    /// Settles a claimed record as failed (sticky), if ``token`` still owns it.
    #[pyo3(signature = (key, token, message, scope = "", *, ttl = 86400.0, kind = "", data = None))]
    #[allow(clippy::too_many_arguments)]
    fn fail(
        &self,
        py: Python<'_>,
        key: &str,
        token: u64,
        message: &str,
        scope: &str,
        ttl: f64,
        kind: &str,
        data: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let failure = crate::guard::stored_failure(py, kind, message, data)?;
        let bytes =
            serde_json::to_vec(&failure).map_err(|e| PyValueError::new_err(e.to_string()))?;
        let outcome = Outcome::new(Codec::Json, bytes);
        let (s, id, ttl) = (self.inner.clone(), rk(scope, key), secs("ttl", ttl)?);
        block_on(py, async move { s.fail(&id, token, outcome, ttl).await })
            .map_err(|e| errors::store_error(py, e))
    }

    /// Deletes a claimed in-progress record so the key may run again, if ``token``
    /// still owns it.
    #[pyo3(signature = (key, token, scope = ""))]
    fn release(&self, py: Python<'_>, key: &str, token: u64, scope: &str) -> PyResult<()> {
        let (s, id) = (self.inner.clone(), rk(scope, key));
        block_on(py, async move { s.release(&id, token).await })
            .map_err(|e| errors::store_error(py, e))
    }

    /// Extends the lease to now + ``lease`` seconds; returns the new deadline
    /// (seconds since the epoch).
    #[pyo3(signature = (key, token, lease, scope = ""))]
    fn renew(
        &self,
        py: Python<'_>,
        key: &str,
        token: u64,
        lease: f64,
        scope: &str,
    ) -> PyResult<f64> {
        let (s, id, lease) = (self.inner.clone(), rk(scope, key), secs("lease", lease)?);
        block_on(py, async move { s.renew(&id, token, lease).await })
            .map(|m| m as f64 / 1000.0)
            .map_err(|e| errors::store_error(py, e))
    }

    /// Waits (notified, not busy-polling where the store can) until the record is
    /// settled or gone, or ``timeout`` seconds pass; returns it as last seen.
    #[pyo3(signature = (key, timeout, scope = ""))]
    fn wait(
        &self,
        py: Python<'_>,
        key: &str,
        timeout: f64,
        scope: &str,
    ) -> PyResult<Option<PyRecord>> {
        let (s, id, t) = (
            self.inner.clone(),
            rk(scope, key),
            secs("timeout", timeout)?,
        );
        block_on(py, async move { s.wait(&id, t).await })
            .map(|o| o.map(|inner| PyRecord { inner }))
            .map_err(|e| errors::store_error(py, e))
    }
}

/// Opens a store from a URL: ``memory:``, ``sqlite://PATH``, ``redis://HOST:PORT/DB``
/// (``?prefix=P``), ``redis+cluster://HOST:PORT,HOST:PORT``, ``postgres://USER@HOST:PORT/DB``
/// (``?schema=S``). ``synchronous`` (SQLite only): ``"full"`` (default: a completed
/// record survives power loss) or ``"normal"`` (survives a crash of the process).
#[pyfunction]
#[pyo3(signature = (url, *, synchronous = None))]
pub fn open_store(py: Python<'_>, url: &str, synchronous: Option<&str>) -> PyResult<PyStore> {
    let parsed: StoreUrl = url
        .parse()
        .map_err(|e: store::StoreUrlError| errors::open_error(py, e.into()))?;
    let inner = match (&parsed, synchronous) {
        (StoreUrl::Sqlite { path }, Some(sync)) => {
            let mode = match sync {
                "full" => store::sqlite::Synchronous::Full,
                "normal" => store::sqlite::Synchronous::Normal,
                other => {
                    return Err(PyValueError::new_err(format!(
                        "synchronous must be \"full\" or \"normal\", got {other:?}"
                    )));
                }
            };
            let path = path.clone();
            let s = py
                .detach(|| {
                    store::sqlite::SqliteStore::builder(path)
                        .synchronous(mode)
                        .open()
                })
                .map_err(|e| errors::store_error(py, e))?;
            std::sync::Arc::new(s) as DynStore
        }
        (_, Some(_)) => {
            return Err(PyValueError::new_err(
                "synchronous= applies to sqlite:// stores only",
            ));
        }
        (_, None) => block_on(py, async move { store::open_parsed(&parsed).await })
            .map_err(|e| errors::open_error(py, e))?,
    };
    Ok(PyStore {
        inner,
        url: url.to_owned(),
    })
}
