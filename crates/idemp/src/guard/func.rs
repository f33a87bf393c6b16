//! A guarded function: the Rust form of the Python `@idempotent` decorator.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Guard, GuardError, RunInfo};

type KeyFn<A> = Arc<dyn Fn(&A) -> Result<String, super::CodecError> + Send + Sync>;

/// An operation bound to a guard and a way to key its arguments (see
/// [`Guard::func`] and [`Guard::func_args`]). Cheap to clone.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use idemp::Guard;
/// #[derive(Clone)]
/// struct Invoice { user: u64, amount_cents: u64 }
///
/// let guard = Guard::builder(idemp::store::MemoryStore::new()).scope("create_invoice").build();
/// // One invoice per user, whatever the amount (the Python README's custom key).
/// let create_invoice = guard.func(
///     |inv: &Invoice| format!("invoice:{}", inv.user),
///     |inv: Invoice| async move { Ok::<_, std::io::Error>(inv.amount_cents) },
/// );
/// assert_eq!(create_invoice.call(Invoice { user: 1, amount_cents: 100 }).await?, 100);
/// assert_eq!(create_invoice.call(Invoice { user: 1, amount_cents: 999 }).await?, 100);
/// # Ok(()) }
/// ```
pub struct GuardedFn<A, F> {
    guard: Guard,
    key: KeyFn<A>,
    op: F,
}

impl<A, F: Clone> Clone for GuardedFn<A, F> {
    fn clone(&self) -> Self {
        Self {
            guard: self.guard.clone(),
            key: self.key.clone(),
            op: self.op.clone(),
        }
    }
}

impl<A, F> fmt::Debug for GuardedFn<A, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedFn")
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// Binds `op` to this guard with a key computed from its arguments by `key`.
    pub fn func<A, K, F>(&self, key: K, op: F) -> GuardedFn<A, F>
    where
        K: Fn(&A) -> String + Send + Sync + 'static,
    {
        GuardedFn {
            guard: self.clone(),
            key: Arc::new(move |a: &A| Ok(key(a))),
            op,
        }
    }

    /// Binds `op` to this guard, keyed by its serialized arguments
    /// ([`Guard::key_for_args`]): argument values, not their order in a map.
    pub fn func_args<A, F>(&self, op: F) -> GuardedFn<A, F>
    where
        A: Serialize,
    {
        GuardedFn {
            guard: self.clone(),
            key: Arc::new(|a: &A| Guard::key_for_args(a)),
            op,
        }
    }
}

impl<A, F> GuardedFn<A, F> {
    /// The key these arguments run under (within the guard's scope).
    pub fn key(&self, args: &A) -> Result<String, super::CodecError> {
        (self.key)(args)
    }

    /// Calls the operation at most once per key.
    pub async fn call<T, E, Fut>(&self, args: A) -> Result<T, GuardError<E>>
    where
        F: Fn(A) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        T: Serialize + DeserializeOwned,
        E: fmt::Display + 'static,
    {
        self.call_detailed(args).await.map(|(v, _)| v)
    }

    /// [`call`](Self::call), returning how the result came about.
    pub async fn call_detailed<T, E, Fut>(&self, args: A) -> Result<(T, RunInfo), GuardError<E>>
    where
        F: Fn(A) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        T: Serialize + DeserializeOwned,
        E: fmt::Display + 'static,
    {
        let key = (self.key)(&args)?;
        let op = &self.op;
        self.guard.run_detailed(key, move || op(args)).await
    }
}
