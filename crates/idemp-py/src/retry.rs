//! `idemp.retry`: the backoff policy, provider presets, `Retry-After` parsing and the
//! retry budget of `idemp::retry`. The Python loop (`idemp.retry.with_retry`) sleeps
//! with `time.sleep` / `asyncio.sleep` between attempts.

use std::time::{Duration, SystemTime};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use idemp::retry::{self, Jitter, Provider, RetryBudget, RetryPolicy};
use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::store::secs;

fn provider(name: &str) -> PyResult<Provider> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "anthropic" => Provider::Anthropic,
        "openai" => Provider::OpenAi,
        "bedrock" => Provider::Bedrock,
        "gemini" => Provider::Gemini,
        "http" => Provider::Http,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown provider {other:?} (expected anthropic, openai, bedrock, gemini or http)"
            )));
        }
    })
}

/// Whether a response status is worth retrying for ``provider``.
#[pyfunction]
fn is_retryable_status(provider: &str, status: u16) -> PyResult<bool> {
    Ok(self::provider(provider)?.is_retryable_status(status))
}

/// Whether a provider error type (``overloaded_error``, ``ThrottlingException``…) is
/// worth retrying.
#[pyfunction]
fn is_retryable_error_type(provider: &str, kind: &str) -> PyResult<bool> {
    Ok(self::provider(provider)?.is_retryable_error_type(kind))
}

/// Seconds from a ``Retry-After`` value (delta-seconds or an HTTP-date), or ``None``.
#[pyfunction]
fn parse_retry_after(value: &str) -> Option<f64> {
    retry::parse_retry_after(value, SystemTime::now()).map(|d| d.as_secs_f64())
}

/// The backoff policy: attempts, base and cap (seconds), multiplier, jitter
/// (``"full"``, ``"equal"``, ``"none"``), the largest ``Retry-After`` obeyed, and an
/// optional shared ``RetryBudget``.
#[pyclass(frozen, module = "idemp._core", name = "RetryPolicy")]
pub struct PyRetryPolicy {
    inner: RetryPolicy,
    budget: Option<RetryBudget>,
    rng: std::sync::Mutex<SmallRng>,
}

#[pymethods]
impl PyRetryPolicy {
    #[new]
    #[pyo3(signature = (*, max_attempts = 5, base = 0.5, cap = 30.0, multiplier = 2.0, jitter = "full", retry_after_cap = 60.0, budget = None, seed = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        max_attempts: u32,
        base: f64,
        cap: f64,
        multiplier: f64,
        jitter: &str,
        retry_after_cap: f64,
        budget: Option<PyRef<'_, PyRetryBudget>>,
        seed: Option<u64>,
    ) -> PyResult<Self> {
        let jitter = match jitter {
            "full" => Jitter::Full,
            "equal" => Jitter::Equal,
            "none" => Jitter::None,
            other => {
                return Err(PyValueError::new_err(format!(
                    "jitter must be \"full\", \"equal\" or \"none\", got {other:?}"
                )));
            }
        };
        let mut b = RetryPolicy::builder()
            .max_attempts(max_attempts)
            .base(secs("base", base)?)
            .cap(secs("cap", cap)?)
            .multiplier(multiplier)
            .jitter(jitter)
            .retry_after_cap(secs("retry_after_cap", retry_after_cap)?);
        let budget = budget.map(|b| b.inner.clone());
        if let Some(budget) = &budget {
            b = b.budget(budget.clone());
        }
        if let Some(s) = seed {
            b = b.seed(s);
        }
        Ok(Self {
            inner: b.build(),
            budget,
            rng: std::sync::Mutex::new(SmallRng::seed_from_u64(seed.unwrap_or_else(rand_seed))),
        })
    }

    /// Attempts in all, the first included.
    #[getter]
    fn max_attempts(&self) -> u32 {
        self.inner.max_attempts()
    }

    /// The largest ``Retry-After`` obeyed (seconds); a longer one stops retrying.
    #[getter]
    fn retry_after_cap(&self) -> f64 {
        self.inner.retry_after_cap().as_secs_f64()
    }

    /// The backoff before retry number ``retry`` (1 = the first retry), before jitter.
    fn backoff(&self, retry: u32) -> f64 {
        self.inner.backoff(retry).as_secs_f64()
    }

    /// The jittered delay (seconds) before retry number ``retry``.
    fn delay(&self, retry: u32) -> f64 {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        self.inner.delay(retry, &mut rng).as_secs_f64()
    }

    /// Deposits a first attempt in the budget (no-op without one).
    fn deposit(&self) {
        if let Some(b) = self.budget() {
            b.deposit();
        }
    }

    /// Withdraws one retry from the budget; ``False`` when it is spent.
    fn withdraw(&self) -> bool {
        self.budget().is_none_or(|b| b.try_withdraw())
    }
}

impl PyRetryPolicy {
    fn budget(&self) -> Option<&RetryBudget> {
        self.budget.as_ref()
    }
}

fn rand_seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    (t.as_nanos() as u64) ^ (std::process::id() as u64).rotate_left(32)
}

/// A shared allowance of retries: each first attempt deposits ``ratio``, each retry
/// withdraws one, refilled at ``min_per_sec``, capped at ``burst``.
#[pyclass(frozen, module = "idemp._core", name = "RetryBudget")]
pub struct PyRetryBudget {
    inner: RetryBudget,
}

#[pymethods]
impl PyRetryBudget {
    #[new]
    #[pyo3(signature = (ratio = 0.2, min_per_sec = 1.0, burst = 10.0))]
    fn new(ratio: f64, min_per_sec: f64, burst: f64) -> Self {
        Self {
            inner: RetryBudget::new(ratio, min_per_sec, burst),
        }
    }
    /// Tokens available now.
    #[getter]
    fn available(&self) -> f64 {
        self.inner.available()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(is_retryable_status, m)?)?;
    m.add_function(wrap_pyfunction!(is_retryable_error_type, m)?)?;
    m.add_function(wrap_pyfunction!(parse_retry_after, m)?)?;
    m.add_class::<PyRetryPolicy>()?;
    m.add_class::<PyRetryBudget>()?;
    Ok(())
}
