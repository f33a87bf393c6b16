//! Rust futures as asyncio futures, and a safe way for runtime threads to call into
//! Python while the interpreter may be exiting.
//!
//! `awaitable` spawns the future on the runtime and returns an `asyncio.Future` of
//! the running loop; the result is delivered with `call_soon_threadsafe`, and
//! cancelling the Python future aborts the Rust task (dropping a guarded call
//! releases its key). Every call into Python from a runtime thread goes through
//! [`attach`], which refuses once `idemp` saw the interpreter exit (`_at_exit`, an
//! `atexit` hook) and lets that hook wait until no runtime thread holds the GIL, so
//! a runtime thread never takes the GIL during finalization.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pyo3::IntoPyObjectExt;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3_async_runtimes::TaskLocals;

use crate::runtime;

static EXITING: AtomicBool = AtomicBool::new(false);
static ATTACHED: AtomicUsize = AtomicUsize::new(0);

/// `Python::attach` from a runtime thread; `None` once the interpreter is exiting.
pub fn attach<R>(f: impl FnOnce(Python<'_>) -> R) -> Option<R> {
    ATTACHED.fetch_add(1, Ordering::SeqCst);
    if EXITING.load(Ordering::SeqCst) {
        ATTACHED.fetch_sub(1, Ordering::SeqCst);
        return None;
    }
    let r = Python::attach(f);
    ATTACHED.fetch_sub(1, Ordering::SeqCst);
    Some(r)
}

/// [`attach`] for code that returns a `PyResult`.
pub fn attach_py<R>(f: impl FnOnce(Python<'_>) -> PyResult<R>) -> PyResult<R> {
    attach(f).unwrap_or_else(|| Err(PyRuntimeError::new_err("the Python interpreter is exiting")))
}

/// Called by `atexit`: from now on runtime threads do not enter Python; waits (GIL
/// released, up to 2 s) for those inside to leave.
#[pyfunction]
pub fn _at_exit(py: Python<'_>) {
    EXITING.store(true, Ordering::SeqCst);
    py.detach(|| {
        let deadline = Instant::now() + Duration::from_secs(2);
        while ATTACHED.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

/// Sets the result (or exception) of an asyncio future unless it was cancelled.
#[pyfunction]
fn _deliver(fut: &Bound<'_, PyAny>, ok: bool, value: &Bound<'_, PyAny>) -> PyResult<()> {
    if fut.call_method0("done")?.is_truthy()? {
        return Ok(());
    }
    if ok {
        fut.call_method1("set_result", (value,))?;
    } else {
        fut.call_method1("set_exception", (value,))?;
    }
    Ok(())
}

/// The done-callback that aborts the Rust task when its asyncio future is cancelled.
#[pyclass]
struct AbortOnCancel(tokio::task::AbortHandle);

#[pymethods]
impl AbortOnCancel {
    fn __call__(&self, fut: &Bound<'_, PyAny>) -> PyResult<()> {
        if fut.call_method0("cancelled")?.is_truthy()? {
            self.0.abort();
        }
        Ok(())
    }
}

/// Runs `fut` on the runtime and returns an awaitable `asyncio.Future` of its result.
/// Inside, `pyo3_async_runtimes::tokio::get_current_locals` gives the caller's loop
/// (for Python awaitables the Rust side must await).
pub fn awaitable<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let event_loop = pyo3_async_runtimes::get_running_loop(py)?;
    let py_fut = event_loop.call_method0("create_future")?;
    let locals = TaskLocals::new(event_loop.clone()).copy_context(py)?;
    let (loop_ref, fut_ref) = (event_loop.unbind(), py_fut.clone().unbind());
    let deliver = wrap_pyfunction!(_deliver, py)?.unbind();
    let task = runtime().spawn(pyo3_async_runtimes::tokio::scope(locals, async move {
        let out = fut.await;
        attach(move |py| {
            let (ok, value) = match out.and_then(|v| v.into_py_any(py)) {
                Ok(v) => (true, v),
                Err(e) => (false, e.into_value(py).into_any()),
            };
            let fut = fut_ref.bind(py);
            if let Err(e) = loop_ref
                .bind(py)
                .call_method1("call_soon_threadsafe", (deliver, fut, ok, value))
            {
                // The loop is closed: nobody is waiting any more.
                drop(e);
            }
        });
    }));
    py_fut.call_method1("add_done_callback", (AbortOnCancel(task.abort_handle()),))?;
    Ok(py_fut)
}
