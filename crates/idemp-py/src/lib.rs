//! `idemp._core`: the native module of the Python package `idemp`.
//!
//! Thin bindings of the `idemp` crate: keys, canonical JSON, stores, the guard (its
//! manual `begin` / `Lease` API, which the Python package drives for `Guard.run` and
//! `@idempotent`), the tool cache, retry policies and batch ids. Nothing here
//! re-implements the library: each function converts Python values, releases the
//! GIL around store waits and large hashing, and maps errors to `idemp.errors`.

use std::future::Future;

use pyo3::prelude::*;

mod batch;
mod bridge;
mod cache;
mod canon;
mod errors;
mod guard;
mod json;
mod keys;
mod retry;
mod store;

/// The tokio runtime every store call, heartbeat and async bridge runs on.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

/// Runs `fut` to completion with the GIL released.
pub(crate) fn block_on<F>(py: Python<'_>, fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    py.detach(|| match tokio::runtime::Handle::try_current() {
        // Called from a runtime thread (a Python callback run by the runtime).
        Ok(h) => tokio::task::block_in_place(|| h.block_on(fut)),
        Err(_) => runtime().block_on(fut),
    })
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(bridge::_at_exit, m)?)?;
    // keys
    m.add_function(wrap_pyfunction!(keys::sha256_hex, m)?)?;
    m.add_function(wrap_pyfunction!(keys::scoped_sha256_hex, m)?)?;
    m.add_function(wrap_pyfunction!(keys::scoped_key, m)?)?;
    m.add_function(wrap_pyfunction!(keys::uuid5_key, m)?)?;
    m.add_function(wrap_pyfunction!(keys::random_key, m)?)?;
    m.add_function(wrap_pyfunction!(keys::validate_key, m)?)?;
    m.add_function(wrap_pyfunction!(keys::for_args, m)?)?;
    m.add_function(wrap_pyfunction!(keys::key_for_args, m)?)?;
    m.add_class::<keys::PyKeyBuilder>()?;
    for (name, ns) in keys::NAMESPACES {
        m.add(name, ns.to_string())?;
    }
    m.add("MAX_KEY_LEN", idemp::key::MAX_LEN)?;
    // canon
    m.add_function(wrap_pyfunction!(canon::canonical_json, m)?)?;
    m.add_function(wrap_pyfunction!(canon::hash_request, m)?)?;
    m.add_function(wrap_pyfunction!(canon::preset_keys, m)?)?;
    m.add_class::<canon::PyCanonicalizer>()?;
    // stores and the guard
    m.add_function(wrap_pyfunction!(store::open_store, m)?)?;
    m.add_class::<store::PyStore>()?;
    m.add_class::<store::PyRecord>()?;
    m.add_class::<guard::PyGuard>()?;
    m.add_class::<guard::PyBegin>()?;
    m.add_class::<guard::PyLease>()?;
    // agent helpers
    cache::register(m)?;
    retry::register(m)?;
    batch::register(m)?;
    Ok(())
}
