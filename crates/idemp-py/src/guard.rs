//! The guard: `Guard.begin` → `Begin` → `Lease`, sync and asyncio, over
//! `idemp::guard`. The Python package runs the work between `begin` and the lease's
//! settle (`idemp.Guard.run`, `@idempotent`); the claim, the policies (duplicates,
//! waiting, ambiguity, verify), the heartbeat and fencing are the Rust guard's.

use std::sync::Mutex;
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde_json::value::RawValue;

use idemp::guard::{
    self as g, Begin, Guard, OnAmbiguous, OnDuplicate, OnInterrupt, Resolution, StoredFailure,
};
use idemp::store::{Codec, Compression, Record, RecordKey};

use crate::store::{PyRecord, PyStore, fingerprint, secs};
use crate::{block_on, errors, json};

/// A failure as stored: kind, message and JSON data.
pub fn stored_failure(
    py: Python<'_>,
    kind: &str,
    message: &str,
    data: Option<&Bound<'_, PyAny>>,
) -> PyResult<StoredFailure> {
    let data = match data {
        Some(d) if !d.is_none() => {
            let text =
                json::to_json(d, json::STRICT, "data").map_err(|e| errors::not_json(py, e))?;
            serde_json::from_slice(&text)
                .map_err(|e| errors::make(py, "NotJSONError", format!("data: {e}"), &[]))?
        }
        _ => serde_json::Value::Null,
    };
    Ok(StoredFailure::new(message).kind(kind).with_data_value(data))
}

trait WithData {
    fn with_data_value(self, data: serde_json::Value) -> Self;
}
impl WithData for StoredFailure {
    fn with_data_value(mut self, data: serde_json::Value) -> Self {
        self.data = data;
        self
    }
}

/// Runs operations at most once per key: the Rust guard bound to a store, a scope
/// and policies. See ``idemp.Guard`` for the Python API around it.
#[pyclass(frozen, module = "idemp._core", name = "Guard")]
pub struct PyGuard {
    inner: Guard,
    store: Py<PyStore>,
    on_failure: String,
    on_cancel: String,
}

fn verify_fn(py: Python<'_>, f: Py<PyAny>) -> OnAmbiguous {
    let _ = py;
    OnAmbiguous::verify(move |id: RecordKey| {
        let f = crate::bridge::attach(|py| f.clone_ref(py));
        async move {
            let f = f.ok_or_else(|| "the Python interpreter is exiting".to_owned())?;
            // Call it; an awaitable answer is awaited on the caller's event loop.
            let called = crate::bridge::attach_py(|py| -> PyResult<Result<Py<PyAny>, _>> {
                let out = f.bind(py).call1((id.key.clone(),))?;
                if out.hasattr("__await__")? {
                    let locals = pyo3_async_runtimes::tokio::get_current_locals(py).map_err(|_| {
                        PyRuntimeError::new_err("verify= returned an awaitable outside the async API (use await guard.arun / async def functions)")
                    })?;
                    Ok(Err(pyo3_async_runtimes::into_future_with_locals(&locals, out)?))
                } else {
                    Ok(Ok(out.unbind()))
                }
            })
            .map_err(|e| e.to_string())?;
            let answer = match called {
                Ok(v) => v,
                Err(fut) => fut.await.map_err(|e| e.to_string())?,
            };
            crate::bridge::attach_py(|py| -> PyResult<Option<Box<RawValue>>> {
                let a = answer.bind(py);
                if a.is_none() {
                    return Ok(None);
                }
                Ok(Some(
                    json::to_raw(a, "verify() answer").map_err(|e| errors::not_json(py, e))?,
                ))
            })
            .map_err(|e| e.to_string())
        }
    })
}

#[pymethods]
impl PyGuard {
    #[new]
    #[pyo3(signature = (store, *, scope = "", ttl = 86400.0, lease = 60.0, on_duplicate = "replay", wait_timeout = 30.0, on_failure = "release", on_ambiguous = "retake", verify = None, on_cancel = "release"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        store: Py<PyStore>,
        scope: &str,
        ttl: f64,
        lease: f64,
        on_duplicate: &str,
        wait_timeout: f64,
        on_failure: &str,
        on_ambiguous: &str,
        verify: Option<Py<PyAny>>,
        on_cancel: &str,
    ) -> PyResult<Self> {
        let dup = match on_duplicate {
            "replay" | "return" => OnDuplicate::Replay,
            "reject" | "raise" => OnDuplicate::Reject,
            "wait" => OnDuplicate::Wait(secs("wait_timeout", wait_timeout)?),
            other => {
                return Err(PyValueError::new_err(format!(
                    "on_duplicate must be \"replay\", \"reject\" or \"wait\", got {other:?}"
                )));
            }
        };
        if !matches!(on_failure, "release" | "sticky") {
            return Err(PyValueError::new_err(format!(
                "on_failure must be \"release\" or \"sticky\", got {on_failure:?}"
            )));
        }
        let cancel = match on_cancel {
            "release" => OnInterrupt::Release,
            "keep" => OnInterrupt::Keep,
            other => {
                return Err(PyValueError::new_err(format!(
                    "on_cancel must be \"release\" or \"keep\", got {other:?}"
                )));
            }
        };
        let amb = match (on_ambiguous, verify) {
            ("retake", None) => OnAmbiguous::Retake,
            ("surface", None) => OnAmbiguous::Surface,
            ("verify", Some(f)) | ("retake", Some(f)) => verify_fn(py, f),
            ("verify", None) => {
                return Err(PyValueError::new_err(
                    "on_ambiguous=\"verify\" needs verify=fn(key) -> result or None",
                ));
            }
            ("surface", Some(_)) => {
                return Err(PyValueError::new_err(
                    "verify= applies to on_ambiguous=\"verify\", not \"surface\"",
                ));
            }
            (other, _) => {
                return Err(PyValueError::new_err(format!(
                    "on_ambiguous must be \"retake\", \"verify\" or \"surface\", got {other:?}"
                )));
            }
        };
        let dyn_store = store.get().inner.clone();
        let lease = secs("lease", lease)?;
        if lease < Duration::from_millis(10) {
            return Err(PyValueError::new_err("lease must be at least 0.01 s"));
        }
        let inner = Guard::builder(dyn_store)
            .scope(scope)
            .ttl(secs("ttl", ttl)?)
            .lease(lease)
            .on_duplicate(dup)
            .on_ambiguous(amb)
            .on_cancel(cancel)
            .on_panic(cancel)
            .build();
        Ok(Self {
            inner,
            store,
            on_failure: on_failure.to_owned(),
            on_cancel: on_cancel.to_owned(),
        })
    }

    #[getter]
    fn scope(&self) -> &str {
        self.inner.scope()
    }
    #[getter]
    fn store(&self, py: Python<'_>) -> Py<PyStore> {
        self.store.clone_ref(py)
    }
    /// ``"release"`` or ``"sticky"``: what the caller does with a lease whose work raised.
    #[getter]
    fn on_failure(&self) -> &str {
        &self.on_failure
    }
    /// ``"release"`` or ``"keep"``: what the caller does with a lease whose work was
    /// interrupted (``KeyboardInterrupt``, task cancellation).
    #[getter]
    fn on_cancel(&self) -> &str {
        &self.on_cancel
    }

    /// Claims ``key`` (one atomic store step, with the duplicate / wait / ambiguity
    /// policies applied) and says what was found. The GIL is released while waiting.
    #[pyo3(signature = (key, fingerprint = None))]
    fn begin(
        &self,
        py: Python<'_>,
        key: &str,
        fingerprint: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyBegin> {
        let fp = self::fingerprint(fingerprint)?;
        let (guard, key) = (self.inner.clone(), key.to_owned());
        let b = block_on(py, async move { guard.begin(key, fp).await });
        PyBegin::from(py, b)
    }

    /// ``begin`` for asyncio: an awaitable of ``Begin``.
    #[pyo3(signature = (key, fingerprint = None))]
    fn abegin<'py>(
        &self,
        py: Python<'py>,
        key: &str,
        fingerprint: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let fp = self::fingerprint(fingerprint)?;
        let (guard, key) = (self.inner.clone(), key.to_owned());
        crate::bridge::awaitable(py, async move {
            let b = guard.begin(key, fp).await;
            crate::bridge::attach_py(|py| PyBegin::from(py, b))
        })
    }

    /// Settles an ambiguous key: ``value`` completes it with that result, ``retake``
    /// deletes it so the next call runs, ``failure`` (message) stores a sticky
    /// failure. Returns ``"applied"`` or the state found when it was not ambiguous
    /// (``"completed"``, ``"in_progress"``, ``"absent"``…).
    #[pyo3(signature = (key, *, value = None, retake = false, failure = None))]
    fn resolve(
        &self,
        py: Python<'_>,
        key: &str,
        value: Option<&Bound<'_, PyAny>>,
        retake: bool,
        failure: Option<&str>,
    ) -> PyResult<String> {
        let resolution: Resolution<Box<RawValue>> = match (value, retake, failure) {
            (Some(v), false, None) => Resolution::Completed(
                json::to_raw(v, "value").map_err(|e| errors::not_json(py, e))?,
            ),
            (None, true, None) => Resolution::Retake,
            (None, false, Some(m)) => Resolution::Failed(StoredFailure::new(m)),
            _ => {
                return Err(PyValueError::new_err(
                    "resolve takes exactly one of value=, retake=True, failure=",
                ));
            }
        };
        let (guard, key) = (self.inner.clone(), key.to_owned());
        let r = block_on(py, async move { guard.resolve(key, resolution).await })
            .map_err(|e| errors::guard_error(py, e))?;
        Ok(match r {
            g::Resolved::Applied => "applied".to_owned(),
            g::Resolved::NotAmbiguous(s) => s.to_owned(),
        })
    }

    fn __repr__(&self) -> String {
        format!("Guard(scope={:?})", self.inner.scope())
    }
}

/// What ``Guard.begin`` found. ``state`` is ``"acquired"`` (you own the key: do the
/// work and settle ``lease``), ``"completed"`` (``value()`` is the stored result),
/// ``"failed"`` (a sticky failure), ``"in_progress"`` (another execution holds it)
/// or ``"ambiguous"`` (its owner's lease passed mid-run; ``on_ambiguous="surface"``).
#[pyclass(module = "idemp._core", name = "Begin")]
pub struct PyBegin {
    state: &'static str,
    lease: Option<Py<PyLease>>,
    replay: Option<(Codec, Vec<u8>)>,
    replayed_token: Option<u64>,
    failure: Option<StoredFailure>,
    record: Option<Record>,
    retry_after: Option<Duration>,
    waited: bool,
}

impl PyBegin {
    fn from(py: Python<'_>, b: Result<Begin, g::GuardError>) -> PyResult<Self> {
        let b = b.map_err(|e| errors::guard_error(py, e))?;
        let mut out = PyBegin {
            state: "acquired",
            lease: None,
            replay: None,
            replayed_token: None,
            failure: None,
            record: None,
            retry_after: None,
            waited: false,
        };
        match b {
            Begin::Owner(lease) => {
                out.lease = Some(Py::new(
                    py,
                    PyLease {
                        inner: Mutex::new(Some(lease)),
                    },
                )?);
            }
            Begin::Completed(replay) => {
                out.state = "completed";
                let codec = replay.outcome().codec;
                let bytes = if replay.outcome().compression == Compression::None {
                    replay.outcome().bytes.clone()
                } else {
                    replay
                        .bytes()
                        .map_err(|e| errors::make(py, "CodecError", e.to_string(), &[]))?
                };
                out.replay = Some((codec, bytes));
                out.replayed_token = Some(replay.info().token);
                out.waited = replay.info().waited;
            }
            Begin::Failed(f) => {
                out.state = "failed";
                out.failure = Some(f);
            }
            Begin::InProgress {
                retry_after,
                record,
            } => {
                out.state = "in_progress";
                out.retry_after = Some(retry_after);
                out.record = Some(record);
            }
            Begin::Ambiguous(record) => {
                out.state = "ambiguous";
                out.record = Some(record);
            }
        }
        Ok(out)
    }
}

#[pymethods]
impl PyBegin {
    #[getter]
    fn state(&self) -> &'static str {
        self.state
    }
    /// The lease when ``state == "acquired"`` (else ``None``).
    #[getter]
    fn lease(&self, py: Python<'_>) -> Option<Py<PyLease>> {
        self.lease.as_ref().map(|l| l.clone_ref(py))
    }
    /// The existing record (``in_progress`` / ``ambiguous``).
    #[getter]
    fn record(&self) -> Option<PyRecord> {
        self.record.clone().map(|inner| PyRecord { inner })
    }
    /// Seconds until the running owner's lease passes (``in_progress``).
    #[getter]
    fn retry_after(&self) -> Option<f64> {
        self.retry_after.map(|d| d.as_secs_f64())
    }
    /// Whether this call waited for another execution (``on_duplicate="wait"``).
    #[getter]
    fn waited(&self) -> bool {
        self.waited
    }
    /// The fencing token of the execution whose result is replayed.
    #[getter]
    fn token(&self) -> Option<u64> {
        self.replayed_token
    }

    /// The outcome as a Python value: the stored result when completed (decoded
    /// JSON; ``bytes`` for raw outcomes); raises the typed error for ``failed``
    /// (``FailedError``), ``in_progress`` (``InProgressError``) and ``ambiguous``
    /// (``AmbiguousError``); ``None`` when acquired.
    fn result<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.state {
            "completed" => match &self.replay {
                Some((Codec::Json, bytes)) => json::from_json(py, bytes),
                Some((Codec::Raw, bytes)) => Ok(PyBytes::new(py, bytes).into_any()),
                Some((other, _)) => Err(errors::make(
                    py,
                    "CodecError",
                    format!("the stored outcome is {other:?}, not JSON"),
                    &[],
                )),
                None => Ok(py.None().into_bound(py)),
            },
            "failed" => {
                let f = self
                    .failure
                    .clone()
                    .unwrap_or_else(|| StoredFailure::new(""));
                let id = self.record.as_ref().map(|r| &r.id);
                Err(errors::failed(py, id, &f))
            }
            "in_progress" | "ambiguous" => {
                let Some(record) = self.record.clone() else {
                    return Err(PyRuntimeError::new_err("no record"));
                };
                let err = if self.state == "in_progress" {
                    g::GuardError::InProgress {
                        id: record.id.clone(),
                        retry_after: self.retry_after.unwrap_or_default(),
                    }
                } else {
                    let lease_until = match record.state {
                        idemp::store::State::InProgress { lease_until } => lease_until,
                        _ => 0,
                    };
                    g::GuardError::Ambiguous {
                        id: record.id.clone(),
                        token: record.token,
                        attempts: record.attempts,
                        lease_until,
                    }
                };
                let e = errors::guard_error(py, err);
                let _ = e.value(py).setattr("record", PyRecord { inner: record });
                Err(e)
            }
            _ => Ok(py.None().into_bound(py)),
        }
    }

    /// The stored failure as ``(kind, message, data)`` (``failed`` only).
    #[getter]
    fn failure<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Option<(String, String, Bound<'py, PyAny>)>> {
        match &self.failure {
            None => Ok(None),
            Some(f) => {
                let data = json::from_json(
                    py,
                    serde_json::to_string(&f.data)
                        .unwrap_or_default()
                        .as_bytes(),
                )?;
                Ok(Some((f.kind.clone(), f.message.clone(), data)))
            }
        }
    }

    fn __repr__(&self) -> String {
        format!("Begin(state={:?})", self.state)
    }
}

/// Ownership of a key while the work runs: a background heartbeat renews it every
/// ``lease / 3``. Settle it exactly once: ``complete(result)``, ``fail(...)``,
/// ``release()`` or ``abandon()``. Dropped unsettled, it is released (or kept until
/// its lease passes, under ``on_cancel="keep"``).
#[pyclass(frozen, module = "idemp._core", name = "Lease")]
pub struct PyLease {
    inner: Mutex<Option<g::Lease>>,
}

impl PyLease {
    fn take(&self) -> PyResult<g::Lease> {
        self.inner
            .lock()
            .map_err(|_| PyRuntimeError::new_err("lease lock poisoned"))?
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("this lease was already settled"))
    }

    fn with<T>(&self, f: impl FnOnce(&g::Lease) -> T) -> PyResult<T> {
        let guard = self
            .inner
            .lock()
            .map_err(|_| PyRuntimeError::new_err("lease lock poisoned"))?;
        guard
            .as_ref()
            .map(f)
            .ok_or_else(|| PyRuntimeError::new_err("this lease was already settled"))
    }
}

#[pymethods]
impl PyLease {
    #[getter]
    fn key(&self) -> PyResult<String> {
        self.with(|l| l.id().key.clone())
    }
    #[getter]
    fn scope(&self) -> PyResult<String> {
        self.with(|l| l.id().scope.clone())
    }
    /// The fencing token of this ownership.
    #[getter]
    fn token(&self) -> PyResult<u64> {
        self.with(|l| l.token())
    }
    /// 1 for a fresh claim, more after takeovers of crashed runs.
    #[getter]
    fn attempt(&self) -> PyResult<u32> {
        self.with(|l| l.attempt())
    }
    /// The previous owner's token when this lease took an expired one over: its
    /// effect may have happened.
    #[getter]
    fn takeover(&self) -> PyResult<Option<u64>> {
        self.with(|l| l.takeover())
    }
    /// Whether the lease is known to be lost (taken over or purged): a result would
    /// be refused.
    #[getter]
    fn is_lost(&self) -> PyResult<bool> {
        self.with(|l| l.is_lost())
    }
    /// Whether the lease is settled already.
    #[getter]
    fn settled(&self) -> bool {
        self.inner.lock().map(|g| g.is_none()).unwrap_or(true)
    }

    /// Completes the key with ``value`` (stored as JSON) and returns the value as
    /// every replay will see it (decoded from the stored JSON: tuples become lists).
    /// A value JSON cannot hold raises ``NotJSONError`` (a ``TypeError``) and leaves
    /// the lease unsettled.
    fn complete<'py>(
        &self,
        py: Python<'py>,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let raw = json::to_raw(value, "result").map_err(|e| errors::not_json(py, e))?;
        let lease = self.take()?;
        let r = block_on(py, async { lease.complete(&*raw).await });
        r.map_err(|e| errors::guard_error(py, e))?;
        json::from_json(py, raw.get().as_bytes())
    }

    /// ``complete`` for asyncio.
    fn acomplete<'py>(
        &self,
        py: Python<'py>,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let raw = json::to_raw(value, "result").map_err(|e| errors::not_json(py, e))?;
        let lease = self.take()?;
        crate::bridge::awaitable(py, async move {
            let r = lease.complete(&*raw).await;
            crate::bridge::attach_py(|py| {
                r.map_err(|e| errors::guard_error(py, e))?;
                json::from_json(py, raw.get().as_bytes()).map(Bound::unbind)
            })
        })
    }

    /// Stores a sticky failure (replayed as ``FailedError``): data, never code.
    #[pyo3(signature = (message, *, kind = "", data = None))]
    fn fail(
        &self,
        py: Python<'_>,
        message: &str,
        kind: &str,
        data: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let f = stored_failure(py, kind, message, data)?;
        let lease = self.take()?;
        block_on(py, async move { lease.fail(&f).await }).map_err(|e| errors::guard_error(py, e))
    }

    /// ``fail`` for asyncio.
    #[pyo3(signature = (message, *, kind = "", data = None))]
    fn afail<'py>(
        &self,
        py: Python<'py>,
        message: &str,
        kind: &str,
        data: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let f = stored_failure(py, kind, message, data)?;
        let lease = self.take()?;
        crate::bridge::awaitable(py, async move {
            let r = lease.fail(&f).await;
            crate::bridge::attach_py(|py| r.map_err(|e| errors::guard_error(py, e)))
        })
    }

    /// Deletes the record so the key may run again.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        let lease = self.take()?;
        block_on(py, async move { lease.release().await }).map_err(|e| errors::guard_error(py, e))
    }

    /// ``release`` for asyncio.
    fn arelease<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let lease = self.take()?;
        crate::bridge::awaitable(py, async move {
            let r = lease.release().await;
            crate::bridge::attach_py(|py| r.map_err(|e| errors::guard_error(py, e)))
        })
    }

    /// Stops renewing and leaves the record in progress: it becomes ambiguous when
    /// the lease passes (for work that may have half-happened).
    fn abandon(&self) -> PyResult<()> {
        let lease = self.take()?;
        let _enter = crate::runtime().enter();
        lease.abandon();
        Ok(())
    }

    fn __repr__(&self) -> String {
        match self.with(|l| (l.id().to_string(), l.token())) {
            Ok((id, token)) => format!("Lease({id}, token={token})"),
            Err(_) => "Lease(settled)".to_owned(),
        }
    }
}

impl Drop for PyLease {
    fn drop(&mut self) {
        // Dropping an unsettled lease applies on_cancel; it spawns on the runtime.
        if let Ok(mut g) = self.inner.lock()
            && let Some(lease) = g.take()
        {
            let _enter = crate::runtime().enter();
            drop(lease);
        }
    }
}
