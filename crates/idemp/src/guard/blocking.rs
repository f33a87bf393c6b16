//! The blocking API: the closure runs on the caller's thread; store calls and the
//! heartbeat run on a tokio runtime (an internal one-worker runtime, or yours).

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::runtime::{Handle, Runtime};

use super::heartbeat::{self, LeaseSignal};
use super::manual::{Resolution, Resolved};
use super::{Guard, GuardError, Request, RunInfo};

/// A [`Guard`] for synchronous code (see [`Guard::blocking`]).
///
/// Do not call it from inside an async task (it blocks the thread on store calls,
/// which tokio forbids there); use the async [`Guard`] instead.
///
/// ```
/// use idemp::guard::Guard;
/// # let store = idemp::store::MemoryStore::new();
/// let guard = Guard::builder(store).scope("report").build().blocking().unwrap();
/// let url: String = guard
///     .run("2026-11-22", || Ok::<_, std::io::Error>("s3://reports/2026-11-22.pdf".to_string()))
///     .unwrap();
/// assert!(url.ends_with(".pdf"));
/// ```
#[derive(Clone)]
pub struct BlockingGuard {
    guard: Guard,
    handle: Handle,
    /// Keeps the internal runtime alive (None when the caller gave a handle).
    _runtime: Option<Arc<Runtime>>,
}

impl fmt::Debug for BlockingGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingGuard")
            .field("guard", &self.guard)
            .field("own_runtime", &self._runtime.is_some())
            .finish()
    }
}

impl BlockingGuard {
    pub(crate) fn new(guard: Guard) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("idemp-guard")
            .enable_all()
            .build()?;
        Ok(Self {
            guard,
            handle: runtime.handle().clone(),
            _runtime: Some(Arc::new(runtime)),
        })
    }

    pub(crate) fn with_handle(guard: Guard, handle: Handle) -> Self {
        Self {
            guard,
            handle,
            _runtime: None,
        }
    }

    /// The async guard underneath.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// Runs `op` at most once for `request`, on this thread (see [`Guard::run`]).
    pub fn run<T, E, F>(&self, request: impl Into<Request>, op: F) -> Result<T, GuardError<E>>
    where
        T: Serialize + DeserializeOwned,
        E: fmt::Display + 'static,
        F: FnOnce() -> Result<T, E>,
    {
        self.run_detailed(request, op).map(|(v, _)| v)
    }

    /// [`run`](Self::run), returning how the result came about.
    pub fn run_detailed<T, E, F>(
        &self,
        request: impl Into<Request>,
        op: F,
    ) -> Result<(T, RunInfo), GuardError<E>>
    where
        T: Serialize + DeserializeOwned,
        E: fmt::Display + 'static,
        F: FnOnce() -> Result<T, E>,
    {
        let request = request.into();
        let _context = self.handle.enter();
        let acquired = self
            .handle
            .block_on(self.guard.acquire(
                self.guard.inner.scope.clone(),
                request.key,
                request.fingerprint,
            ))
            .map_err(GuardError::widen)?;
        let (mut core, info) = match self.guard.owner_or_result(acquired)? {
            Ok(owner) => owner,
            Err(done) => return Ok(done),
        };
        core.handle = Some(self.handle.clone());

        // The closure cannot observe a signal; the store refuses a fenced completion.
        let signal = LeaseSignal::inert();
        let beat = {
            let store = self.guard.inner.store.clone();
            let id = core.id.clone();
            let token = core.token;
            let lease = self.guard.inner.opts.lease;
            let signal = signal.clone();
            self.handle.spawn(async move {
                let _ = heartbeat::run(&*store, &id, token, lease, &signal).await;
            })
        };
        let result = std::panic::catch_unwind(AssertUnwindSafe(op));
        beat.abort();
        match result {
            Ok(result) => self.handle.block_on(self.guard.settle(core, result, info)),
            Err(panic) => {
                tracing::warn!(id = %core.id, token = core.token, "operation panicked: not recorded");
                let policy = self.guard.inner.opts.on_panic;
                self.handle.block_on(core.interrupt(policy));
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// Settles an ambiguous key (see [`Guard::resolve`]).
    pub fn resolve<T: Serialize>(
        &self,
        key: impl AsRef<str>,
        resolution: Resolution<T>,
    ) -> Result<Resolved, GuardError> {
        self.handle.block_on(self.guard.resolve(key, resolution))
    }
}
