//! Rust errors to the Python exceptions of `idemp.errors`.

use pyo3::IntoPyObjectExt;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

use idemp::guard::{GuardError, StoredFailure};
use idemp::store::{OpenError, RecordKey, StoreError};

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// An exception class of `idemp.errors`.
pub fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    let m = ERRORS.get_or_try_init(py, || -> PyResult<Py<PyModule>> {
        Ok(py.import("idemp.errors")?.unbind())
    })?;
    Ok(m.bind(py).getattr(name)?.cast_into::<PyType>()?)
}

/// Builds `idemp.errors.<name>(message, **details)`.
pub fn make(py: Python<'_>, name: &str, message: String, details: &[(&str, Py<PyAny>)]) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let cls = class(py, name)?;
        let kw = PyDict::new(py);
        for (k, v) in details {
            kw.set_item(k, v)?;
        }
        let exc = cls.call((message.clone(),), Some(&kw))?;
        Ok(PyErr::from_value(exc))
    };
    build().unwrap_or_else(|e| e)
}

fn id_details(py: Python<'_>, id: &RecordKey) -> Vec<(&'static str, Py<PyAny>)> {
    vec![
        ("key", obj(py, id.key.clone())),
        ("scope", obj(py, id.scope.clone())),
    ]
}

fn obj<'py, T: IntoPyObjectExt<'py>>(py: Python<'py>, v: T) -> Py<PyAny> {
    v.into_py_any(py).unwrap_or_else(|_| py.None())
}

pub fn store_error(py: Python<'_>, e: StoreError) -> PyErr {
    let name = if e.is_transient() {
        "StoreUnavailableError"
    } else {
        "StoreError"
    };
    let transient = e.is_transient();
    make(
        py,
        name,
        e.to_string(),
        &[("is_transient", obj(py, transient))],
    )
}

pub fn open_error(py: Python<'_>, e: OpenError) -> PyErr {
    match e {
        OpenError::Url(u) => make(
            py,
            "StoreUrlError",
            u.to_string(),
            &[("url", obj(py, u.url))],
        ),
        OpenError::Store(s) => store_error(py, s),
        other => make(py, "StoreUrlError", other.to_string(), &[]),
    }
}

/// The exception of a stored sticky failure.
pub fn failed(py: Python<'_>, id: Option<&RecordKey>, f: &StoredFailure) -> PyErr {
    let data = crate::json::from_json(
        py,
        serde_json::to_string(&f.data)
            .unwrap_or_default()
            .as_bytes(),
    )
    .map(|d| d.unbind())
    .unwrap_or_else(|_| py.None());
    let mut details = id.map(|id| id_details(py, id)).unwrap_or_default();
    details.push(("kind", obj(py, f.kind.clone())));
    details.push(("error_message", obj(py, f.message.clone())));
    details.push(("data", data));
    make(
        py,
        "FailedError",
        format!("an earlier execution failed: {f}"),
        &details,
    )
}

pub fn guard_error(py: Python<'_>, e: GuardError) -> PyErr {
    let msg = e.to_string();
    match e {
        GuardError::InProgress { id, retry_after } => {
            let mut d = id_details(py, &id);
            d.push(("retry_after", obj(py, retry_after.as_secs_f64())));
            make(py, "InProgressError", msg, &d)
        }
        GuardError::Mismatch { id, stored, given } => {
            let mut d = id_details(py, &id);
            d.push(("stored_fingerprint", obj(py, stored.map(|f| f.to_hex()))));
            d.push(("given_fingerprint", obj(py, given.map(|f| f.to_hex()))));
            make(py, "MismatchError", msg, &d)
        }
        GuardError::Failed(f) => failed(py, None, &f),
        GuardError::Ambiguous {
            id,
            token,
            attempts,
            lease_until,
        } => {
            let mut d = id_details(py, &id);
            d.push(("token", obj(py, token)));
            d.push(("attempts", obj(py, attempts)));
            d.push(("lease_until", obj(py, lease_until as f64 / 1000.0)));
            make(py, "AmbiguousError", msg, &d)
        }
        GuardError::LeaseLost { id, token } => {
            let mut d = id_details(py, &id);
            d.push(("token", obj(py, token)));
            make(py, "LeaseLostError", msg, &d)
        }
        GuardError::Rejected { id, state } => {
            let mut d = id_details(py, &id);
            d.push(("state", obj(py, state)));
            make(py, "DuplicateError", msg, &d)
        }
        GuardError::Reconcile { id, message } => {
            let mut d = id_details(py, &id);
            d.push(("reason", obj(py, message)));
            make(py, "ReconcileError", msg, &d)
        }
        GuardError::InvalidKey(k) => make(py, "InvalidKeyError", k.to_string(), &[]),
        GuardError::Store(s) => store_error(py, s),
        GuardError::Codec(c) => make(py, "CodecError", c.to_string(), &[]),
        other => make(py, "IdempError", other.to_string(), &[]),
    }
}

pub fn key_error(py: Python<'_>, key: &str, e: idemp::key::KeyError) -> PyErr {
    make(
        py,
        "InvalidKeyError",
        format!("{e} (key {key:?})"),
        &[("key", obj(py, key.to_owned()))],
    )
}

pub fn canon_error(py: Python<'_>, e: idemp::canon::CanonError) -> PyErr {
    let pos = e.position().map(|p| (p.line, p.column, p.offset));
    make(
        py,
        "CanonError",
        e.to_string(),
        &[("position", obj(py, pos))],
    )
}

/// A `TypeError` / `ValueError` of the JSON writer as `NotJSONError`; other errors
/// (a failing `__repr__`, …) pass through.
pub fn not_json(py: Python<'_>, e: PyErr) -> PyErr {
    if e.is_instance_of::<pyo3::exceptions::PyTypeError>(py)
        || e.is_instance_of::<pyo3::exceptions::PyValueError>(py)
    {
        let msg = e.value(py).to_string();
        make(py, "NotJSONError", msg, &[])
    } else {
        e
    }
}
