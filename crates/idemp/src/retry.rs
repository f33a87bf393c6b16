//! Retries that keep the idempotency key.
//!
//! A retry is only safe when the server can recognise it as the same request: every
//! attempt of one logical call must carry **the same idempotency key**. [`Retrier`]
//! runs an operation with backoff and jitter and hands each attempt an [`Attempt`]
//! that carries that one key, so the operation cannot accidentally mint a fresh key
//! per attempt (the classic way to charge a card twice).
//!
//! The pieces:
//!
//! * [`RetryPolicy`]: how many attempts, how long to wait ([`Jitter::Full`] by
//!   default, as recommended for contended retries), a cap, how far to trust a
//!   server's `Retry-After` ([`parse_retry_after`]), an optional shared
//!   [`RetryBudget`] so a fleet of agents cannot amplify an outage.
//! * [`Classify`]: which failures are worth retrying. [`Provider`] presets know the
//!   retryable statuses and error types of Anthropic (429, 500, 529 overloaded…),
//!   OpenAI, Bedrock and Gemini for any error that implements [`RetryInfo`]; a closure
//!   `Fn(&E) -> Decision` works too.
//! * Cancellation and panics are never retried: dropping the future returned by
//!   [`Retrier::run`] stops at once, a panic propagates to the caller, and an error
//!   that reports [`RetryInfo::is_cancelled`] stops the loop.
//!
//! ```
//! use std::time::Duration;
//! use idemp::retry::{Decision, Retrier, RetryPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let retrier = Retrier::new(
//!     RetryPolicy::builder()
//!         .max_attempts(4)
//!         .base(Duration::from_millis(1))
//!         .build(),
//! )
//! .classify(|e: &&str| if *e == "overloaded" { Decision::Retry } else { Decision::Stop });
//!
//! let mut calls = 0;
//! let out = retrier
//!     .run(Some("ik_0123456789abcdef0123456789abcdef"), |attempt| {
//!         calls += 1;
//!         // Every attempt sees the same key.
//!         assert_eq!(attempt.key(), Some("ik_0123456789abcdef0123456789abcdef"));
//!         let n = attempt.number();
//!         async move { if n < 3 { Err("overloaded") } else { Ok(n) } }
//!     })
//!     .await;
//! assert_eq!(out.unwrap(), 3);
//! assert_eq!(calls, 3);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

/// How the backoff delay is randomised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Uniform in `[0, backoff]`: spreads contending clients best (the default).
    #[default]
    Full,
    /// `backoff/2 + uniform[0, backoff/2]`: never retries immediately.
    Equal,
    /// Exactly `backoff`: deterministic, for tests and single clients.
    None,
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Retry after the policy's backoff.
    Retry,
    /// Retry after at least this long (a server's `Retry-After`), capped by
    /// [`RetryPolicy::retry_after_cap`].
    RetryAfter(Duration),
    /// Do not retry: the failure is permanent, or the call was cancelled.
    Stop,
}

/// Decides whether an error is worth another attempt.
pub trait Classify<E>: Send + Sync {
    /// The decision for `error`.
    fn classify(&self, error: &E) -> Decision;
}

impl<E, F> Classify<E> for F
where
    F: Fn(&E) -> Decision + Send + Sync,
{
    fn classify(&self, error: &E) -> Decision {
        self(error)
    }
}

/// The one answer idemp's errors give to "may I try this again?".
///
/// An error is **retryable** when the same call, repeated later *unchanged* (same
/// idempotency key, same arguments), may succeed: the cause lies outside the request
/// (a store or server unreachable, busy, full or lagging; another execution holding
/// the key), and the key makes the repeat safe, so it cannot run an effect twice.
/// Anything else (an invalid argument, a different payload under the same key, a
/// fenced owner, a sticky failure, a corrupt record) fails the same way every time,
/// and retrying it only adds load.
///
/// | error | retryable when |
/// |---|---|
/// | [`StoreError`](crate::store::StoreError) | `Unavailable`, `Capacity`, `NotReplicated` ([`is_transient`](crate::store::StoreError::is_transient)) |
/// | [`GuardError`](crate::guard::GuardError) | `InProgress`, or `Store(e)` with `e` retryable ([`is_retryable`](crate::guard::GuardError::is_retryable)) |
/// | [`ToolFailure`](crate::tool::ToolFailure) | its `retryable` flag ([`ToolFailure::transient`](crate::tool::ToolFailure::transient)) |
/// | `ClientError` (feature `client`) | `Transport` with a connection failure or timeout |
/// | any [`RetryInfo`] | a transport failure, or a status or error type its [`Provider`] retries ([`Provider::is_retryable`]) |
///
/// The inherent methods named in the table give the same answer as this trait; the
/// trait lets [`when_retryable`] drive a [`Retrier`] over any of them.
///
/// ```
/// use idemp::retry::Retryable;
/// use idemp::store::StoreError;
/// use idemp::tool::ToolFailure;
/// assert!(StoreError::Unavailable("reset".into()).is_retryable());
/// assert!(!StoreError::Invalid("empty key".into()).is_retryable());
/// assert!(ToolFailure::transient("503").is_retryable());
/// assert!(!ToolFailure::permanent("card declined").is_retryable());
/// ```
pub trait Retryable {
    /// Whether the same call, repeated later unchanged, may succeed.
    fn is_retryable(&self) -> bool;
}

impl<T: Retryable + ?Sized> Retryable for &T {
    fn is_retryable(&self) -> bool {
        (**self).is_retryable()
    }
}

/// A [`Classify`] function for any [`Retryable`] error: retry it when it is
/// retryable, stop otherwise.
///
/// ```
/// use idemp::retry::{Decision, when_retryable};
/// use idemp::tool::ToolFailure;
/// assert_eq!(when_retryable(&ToolFailure::transient("503")), Decision::Retry);
/// assert_eq!(when_retryable(&ToolFailure::permanent("no")), Decision::Stop);
/// ```
pub fn when_retryable<E: Retryable + ?Sized>(error: &E) -> Decision {
    if error.is_retryable() {
        Decision::Retry
    } else {
        Decision::Stop
    }
}

/// What an error can tell a classifier. Implement it for your error type to use the
/// [`Provider`] presets, which turn it into the same yes/no as [`Retryable`]
/// ([`Provider::is_retryable`]).
pub trait RetryInfo {
    /// The HTTP status of the failed response, if there was one.
    fn status(&self) -> Option<u16> {
        None
    }
    /// The delay the server asked for (`Retry-After`, `retry-after-ms`), if any.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
    /// The provider's error type (`overloaded_error`, `ThrottlingException`,
    /// `RESOURCE_EXHAUSTED`…), if known.
    fn error_type(&self) -> Option<&str> {
        None
    }
    /// A connection failure or timeout before a response arrived: retryable, since
    /// the same key makes the retry safe.
    fn is_transport(&self) -> bool {
        false
    }
    /// The call was cancelled by the caller: never retried.
    fn is_cancelled(&self) -> bool {
        false
    }
}

/// Retry presets for LLM providers' HTTP APIs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Provider {
    /// Anthropic: 408, 409 (lock timeouts), 429, 500, 502, 503, 504, 529 (overloaded);
    /// `rate_limit_error`, `overloaded_error`, `api_error`, `timeout_error`.
    Anthropic,
    /// OpenAI: 408, 409, 429, 500, 502, 503, 504; `rate_limit_exceeded`,
    /// `server_error`, `timeout`.
    OpenAi,
    /// AWS Bedrock: 408, 429, 500, 502, 503, 504; `ThrottlingException`,
    /// `ServiceUnavailableException`, `InternalServerException`,
    /// `ModelNotReadyException`, `ModelTimeoutException`.
    Bedrock,
    /// Google Gemini: 408, 429, 500, 502, 503, 504; `RESOURCE_EXHAUSTED`,
    /// `UNAVAILABLE`, `INTERNAL`, `DEADLINE_EXCEEDED`.
    Gemini,
    /// Any HTTP API: 408, 425, 429, 500, 502, 503, 504.
    Http,
}

impl Provider {
    /// Whether a response with this status is worth retrying.
    pub fn is_retryable_status(self, status: u16) -> bool {
        match self {
            Provider::Anthropic => {
                matches!(status, 408 | 409 | 429 | 500 | 502 | 503 | 504 | 529)
            }
            Provider::OpenAi => matches!(status, 408 | 409 | 429 | 500 | 502 | 503 | 504),
            Provider::Bedrock | Provider::Gemini => {
                matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
            }
            Provider::Http => matches!(status, 408 | 425 | 429 | 500 | 502 | 503 | 504),
        }
    }

    /// Whether a provider error type (from the response body) is worth retrying.
    pub fn is_retryable_error_type(self, kind: &str) -> bool {
        match self {
            Provider::Anthropic => matches!(
                kind,
                "rate_limit_error" | "overloaded_error" | "api_error" | "timeout_error"
            ),
            Provider::OpenAi => matches!(
                kind,
                "rate_limit_exceeded" | "server_error" | "timeout" | "engine_overloaded"
            ),
            Provider::Bedrock => matches!(
                kind,
                "ThrottlingException"
                    | "ServiceUnavailableException"
                    | "InternalServerException"
                    | "ModelNotReadyException"
                    | "ModelTimeoutException"
            ),
            Provider::Gemini => matches!(
                kind,
                "RESOURCE_EXHAUSTED" | "UNAVAILABLE" | "INTERNAL" | "DEADLINE_EXCEEDED"
            ),
            Provider::Http => false,
        }
    }
}

impl Provider {
    /// Whether this provider retries `error` (the [`Retryable`] answer for an HTTP
    /// failure): never when cancelled; otherwise a transport failure, a retryable
    /// status, or a retryable error type.
    ///
    /// ```
    /// use idemp::retry::{Provider, RetryInfo};
    /// struct Status(u16);
    /// impl RetryInfo for Status {
    ///     fn status(&self) -> Option<u16> { Some(self.0) }
    /// }
    /// assert!(Provider::Anthropic.is_retryable(&Status(529)));
    /// assert!(!Provider::Http.is_retryable(&Status(529)));
    /// assert!(!Provider::Http.is_retryable(&Status(400)));
    /// ```
    pub fn is_retryable<E: RetryInfo + ?Sized>(self, error: &E) -> bool {
        !error.is_cancelled()
            && (error.is_transport()
                || error.status().is_some_and(|s| self.is_retryable_status(s))
                || error
                    .error_type()
                    .is_some_and(|t| self.is_retryable_error_type(t)))
    }
}

impl<E: RetryInfo> Classify<E> for Provider {
    fn classify(&self, error: &E) -> Decision {
        match (self.is_retryable(error), error.retry_after()) {
            (false, _) => Decision::Stop,
            (true, Some(after)) => Decision::RetryAfter(after),
            (true, None) => Decision::Retry,
        }
    }
}

/// Parses a `Retry-After` header value: delta-seconds (`"120"`, also `"1.5"` as some
/// providers send) or an HTTP-date (`"Wed, 21 Oct 2015 07:28:00 GMT"`), relative to
/// `now`. A date in the past gives zero. Returns `None` for anything else.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use idemp::retry::parse_retry_after;
/// assert_eq!(parse_retry_after("7", SystemTime::now()), Some(Duration::from_secs(7)));
/// assert_eq!(parse_retry_after("soon", SystemTime::now()), None);
/// ```
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse::<u64>().ok().map(Duration::from_secs);
    }
    if v.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return v
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
            .map(Duration::from_secs_f64);
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A shared allowance of retries, so that many callers cannot multiply load on a
/// failing dependency.
///
/// Every first attempt deposits `ratio` tokens, every retry withdraws one; tokens also
/// refill at `min_per_sec` so a quiet client can always retry a little. The balance is
/// capped at `burst`. Share one budget (it is cheap to clone) across all the callers of
/// one dependency.
#[derive(Clone, Debug)]
pub struct RetryBudget {
    inner: Arc<Mutex<BudgetState>>,
    ratio: f64,
    min_per_sec: f64,
    burst: f64,
}

#[derive(Debug)]
struct BudgetState {
    tokens: f64,
    last_refill: tokio::time::Instant,
}

impl RetryBudget {
    /// A budget allowing retries for `ratio` of requests (e.g. 0.2 = 20%), plus
    /// `min_per_sec` retries per second, with at most `burst` saved up.
    pub fn new(ratio: f64, min_per_sec: f64, burst: f64) -> Self {
        let burst = burst.max(1.0);
        Self {
            inner: Arc::new(Mutex::new(BudgetState {
                tokens: burst,
                last_refill: tokio::time::Instant::now(),
            })),
            ratio: ratio.max(0.0),
            min_per_sec: min_per_sec.max(0.0),
            burst,
        }
    }

    fn refill(&self, st: &mut BudgetState) {
        let now = tokio::time::Instant::now();
        let secs = now.duration_since(st.last_refill).as_secs_f64();
        st.tokens = (st.tokens + secs * self.min_per_sec).min(self.burst);
        st.last_refill = now;
    }

    /// Records a first attempt.
    pub fn deposit(&self) {
        let mut st = self.inner.lock();
        self.refill(&mut st);
        st.tokens = (st.tokens + self.ratio).min(self.burst);
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn try_withdraw(&self) -> bool {
        let mut st = self.inner.lock();
        self.refill(&mut st);
        if st.tokens >= 1.0 {
            st.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The tokens currently available.
    pub fn available(&self) -> f64 {
        let mut st = self.inner.lock();
        self.refill(&mut st);
        st.tokens
    }
}

/// How many attempts, and how long between them.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    max_attempts: u32,
    base: Duration,
    cap: Duration,
    multiplier: f64,
    jitter: Jitter,
    retry_after_cap: Duration,
    budget: Option<RetryBudget>,
    seed: Option<u64>,
}

impl Default for RetryPolicy {
    /// 5 attempts, 500 ms base doubling up to 30 s, full jitter, `Retry-After`
    /// honoured up to 60 s, no budget.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: Jitter::Full,
            retry_after_cap: Duration::from_secs(60),
            budget: None,
            seed: None,
        }
    }
}

impl RetryPolicy {
    /// A builder starting from [`RetryPolicy::default`].
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder(Self::default())
    }
    /// Attempts in all, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }
    /// The largest `Retry-After` that is obeyed; longer requests give up.
    pub fn retry_after_cap(&self) -> Duration {
        self.retry_after_cap
    }
    /// The exponential backoff before retry number `retry` (1 = the first retry),
    /// before jitter: `min(cap, base × multiplier^(retry-1))`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .multiplier
            .powi(retry.saturating_sub(1).min(1_000) as i32);
        let secs = (self.base.as_secs_f64() * exp).min(self.cap.as_secs_f64());
        if secs.is_finite() && secs >= 0.0 {
            Duration::from_secs_f64(secs)
        } else {
            self.cap
        }
    }
    /// The backoff with jitter applied, drawing from `rng`.
    pub fn delay(&self, retry: u32, rng: &mut SmallRng) -> Duration {
        let b = self.backoff(retry);
        let nanos = u64::try_from(b.as_nanos()).unwrap_or(u64::MAX);
        match self.jitter {
            Jitter::None => b,
            Jitter::Full => Duration::from_nanos(rng.random_range(0..=nanos)),
            Jitter::Equal => {
                let half = nanos / 2;
                Duration::from_nanos(half + rng.random_range(0..=(nanos - half)))
            }
        }
    }
    fn rng(&self) -> SmallRng {
        match self.seed {
            Some(s) => SmallRng::seed_from_u64(s),
            None => SmallRng::seed_from_u64(rand::random()),
        }
    }
}

/// Builds a [`RetryPolicy`].
#[derive(Clone, Debug)]
pub struct RetryPolicyBuilder(RetryPolicy);

impl RetryPolicyBuilder {
    /// Attempts in all, the first included (minimum 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.0.max_attempts = n.max(1);
        self
    }
    /// The first backoff.
    pub fn base(mut self, d: Duration) -> Self {
        self.0.base = d;
        self
    }
    /// The largest backoff.
    pub fn cap(mut self, d: Duration) -> Self {
        self.0.cap = d;
        self
    }
    /// Growth per retry (default 2).
    pub fn multiplier(mut self, m: f64) -> Self {
        self.0.multiplier = if m.is_finite() && m >= 1.0 { m } else { 1.0 };
        self
    }
    /// The jitter mode.
    pub fn jitter(mut self, j: Jitter) -> Self {
        self.0.jitter = j;
        self
    }
    /// The largest server-requested delay that is obeyed; a longer `Retry-After`
    /// ends the retries (waiting minutes inside an agent step is rarely wanted).
    pub fn retry_after_cap(mut self, d: Duration) -> Self {
        self.0.retry_after_cap = d;
        self
    }
    /// A shared retry budget.
    pub fn budget(mut self, b: RetryBudget) -> Self {
        self.0.budget = Some(b);
        self
    }
    /// Seeds the jitter, for reproducible runs and tests.
    pub fn seed(mut self, s: u64) -> Self {
        self.0.seed = Some(s);
        self
    }
    /// The policy.
    pub fn build(self) -> RetryPolicy {
        self.0
    }
}

/// One attempt of a retried call.
#[derive(Clone, Copy, Debug)]
pub struct Attempt<'k> {
    number: u32,
    key: Option<&'k str>,
}

impl<'k> Attempt<'k> {
    /// 1 for the first attempt.
    pub fn number(&self) -> u32 {
        self.number
    }
    /// Whether this is a retry.
    pub fn is_retry(&self) -> bool {
        self.number > 1
    }
    /// The idempotency key, the same on every attempt.
    pub fn key(&self) -> Option<&'k str> {
        self.key
    }
}

/// Why the retries stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUp {
    /// The classifier said the error is not retryable (or the call was cancelled).
    NotRetryable,
    /// `max_attempts` were made.
    Exhausted,
    /// The shared [`RetryBudget`] is spent.
    Budget,
    /// The server asked to wait longer than `retry_after_cap`.
    RetryAfterTooLong(Duration),
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GiveUp::NotRetryable => f.write_str("not retryable"),
            GiveUp::Exhausted => f.write_str("attempts exhausted"),
            GiveUp::Budget => f.write_str("retry budget spent"),
            GiveUp::RetryAfterTooLong(d) => {
                write!(f, "server asked to retry after {d:?}, beyond the cap")
            }
        }
    }
}

/// The last error of a call that was not retried further.
#[derive(Debug, thiserror::Error)]
#[error("gave up after {attempts} attempt(s) ({reason}): {source}")]
pub struct RetryError<E: std::error::Error + 'static> {
    /// The last attempt's error.
    #[source]
    pub source: E,
    /// Attempts made.
    pub attempts: u32,
    /// Why it stopped.
    pub reason: GiveUp,
}

/// The error of [`Retrier::run`] for error types that are not `std::error::Error`.
#[derive(Debug)]
pub struct GaveUp<E> {
    /// The last attempt's error.
    pub error: E,
    /// Attempts made.
    pub attempts: u32,
    /// Why it stopped.
    pub reason: GiveUp,
}

impl<E> GaveUp<E> {
    /// The last error.
    pub fn into_inner(self) -> E {
        self.error
    }
}

impl<E: std::error::Error + 'static> From<GaveUp<E>> for RetryError<E> {
    fn from(g: GaveUp<E>) -> Self {
        RetryError {
            source: g.error,
            attempts: g.attempts,
            reason: g.reason,
        }
    }
}

impl<E: fmt::Display> fmt::Display for GaveUp<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gave up after {} attempt(s) ({}): {}",
            self.attempts, self.reason, self.error
        )
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for GaveUp<E> {}

/// What a retry hook sees before each retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryEvent<'a> {
    /// The attempt that failed (1-based).
    pub failed_attempt: u32,
    /// How long the retrier sleeps before the next attempt.
    pub delay: Duration,
    /// The classifier's decision.
    pub decision: Decision,
    /// The idempotency key of the call.
    pub key: Option<&'a str>,
}

type Hook = Arc<dyn Fn(&RetryEvent<'_>) + Send + Sync>;

/// Runs operations under a [`RetryPolicy`] and a classifier.
pub struct Retrier<C = AlwaysRetry> {
    policy: RetryPolicy,
    classify: C,
    hooks: Vec<Hook>,
}

impl<C: fmt::Debug> fmt::Debug for Retrier<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retrier")
            .field("policy", &self.policy)
            .field("classify", &self.classify)
            .field("hooks", &self.hooks.len())
            .finish()
    }
}

/// The default classifier: retries every error.
#[derive(Clone, Copy, Debug, Default)]
pub struct AlwaysRetry;

impl<E> Classify<E> for AlwaysRetry {
    fn classify(&self, _: &E) -> Decision {
        Decision::Retry
    }
}

impl Retrier<AlwaysRetry> {
    /// A retrier that retries every error (set a classifier with
    /// [`classify`](Retrier::classify)).
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            policy,
            classify: AlwaysRetry,
            hooks: Vec::new(),
        }
    }
}

impl<C> Retrier<C> {
    /// Replaces the classifier: a [`Provider`] preset, or `|e: &E| -> Decision`.
    pub fn classify<C2>(self, classify: C2) -> Retrier<C2> {
        Retrier {
            policy: self.policy,
            classify,
            hooks: self.hooks,
        }
    }

    /// Adds a hook called before every retry (for logs and metrics).
    pub fn on_retry(mut self, hook: impl Fn(&RetryEvent<'_>) + Send + Sync + 'static) -> Self {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// After a failed attempt: `Ok(delay)` to retry, `Err(reason)` to stop.
    fn next_delay<E>(
        &self,
        error: &E,
        attempt: u32,
        rng: &mut SmallRng,
        key: Option<&str>,
    ) -> Result<Duration, GiveUp>
    where
        C: Classify<E>,
    {
        let decision = self.classify.classify(error);
        let delay = match decision {
            Decision::Stop => return Err(GiveUp::NotRetryable),
            _ if attempt >= self.policy.max_attempts => return Err(GiveUp::Exhausted),
            Decision::Retry => self.policy.delay(attempt, rng),
            Decision::RetryAfter(after) => {
                if after > self.policy.retry_after_cap {
                    return Err(GiveUp::RetryAfterTooLong(after));
                }
                // Honour the server's floor; keep jitter above it so a herd told
                // "retry after 1 s" does not come back in the same millisecond.
                after
                    + self
                        .policy
                        .delay(attempt, rng)
                        .min(after / 4 + Duration::from_millis(1))
            }
        };
        if let Some(budget) = &self.policy.budget
            && !budget.try_withdraw()
        {
            return Err(GiveUp::Budget);
        }
        let event = RetryEvent {
            failed_attempt: attempt,
            delay,
            decision,
            key,
        };
        for h in &self.hooks {
            h(&event);
        }
        Ok(delay)
    }

    /// Runs `op` until it succeeds, the classifier stops it, or the policy gives up.
    /// Every [`Attempt`] carries `key`. Dropping the returned future cancels the
    /// call: nothing more is attempted. A panic in `op` propagates and is not retried.
    pub async fn run<'k, T, E, F, Fut>(
        &self,
        key: Option<&'k str>,
        mut op: F,
    ) -> Result<T, GaveUp<E>>
    where
        C: Classify<E>,
        F: FnMut(Attempt<'k>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut rng = self.policy.rng();
        if let Some(b) = &self.policy.budget {
            b.deposit();
        }
        let mut number = 1;
        loop {
            match op(Attempt { number, key }).await {
                Ok(v) => return Ok(v),
                Err(error) => match self.next_delay(&error, number, &mut rng, key) {
                    Ok(delay) => {
                        tokio::time::sleep(delay).await;
                        number += 1;
                    }
                    Err(reason) => {
                        return Err(GaveUp {
                            error,
                            attempts: number,
                            reason,
                        });
                    }
                },
            }
        }
    }

    /// The blocking form of [`run`](Retrier::run) for sync code: sleeps the calling
    /// thread between attempts. A panic in `op` propagates and is not retried.
    pub fn run_blocking<'k, T, E, F>(&self, key: Option<&'k str>, mut op: F) -> Result<T, GaveUp<E>>
    where
        C: Classify<E>,
        F: FnMut(Attempt<'k>) -> Result<T, E>,
    {
        let mut rng = self.policy.rng();
        if let Some(b) = &self.policy.budget {
            b.deposit();
        }
        let mut number = 1;
        loop {
            match op(Attempt { number, key }) {
                Ok(v) => return Ok(v),
                Err(error) => match self.next_delay(&error, number, &mut rng, key) {
                    Ok(delay) => {
                        std::thread::sleep(delay);
                        number += 1;
                    }
                    Err(reason) => {
                        return Err(GaveUp {
                            error,
                            attempts: number,
                            reason,
                        });
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug, Clone)]
    struct HttpErr {
        status: Option<u16>,
        after: Option<Duration>,
        kind: Option<&'static str>,
        cancelled: bool,
    }

    impl HttpErr {
        fn status(s: u16) -> Self {
            Self {
                status: Some(s),
                after: None,
                kind: None,
                cancelled: false,
            }
        }
    }

    impl RetryInfo for HttpErr {
        fn status(&self) -> Option<u16> {
            self.status
        }
        fn retry_after(&self) -> Option<Duration> {
            self.after
        }
        fn error_type(&self) -> Option<&str> {
            self.kind
        }
        fn is_cancelled(&self) -> bool {
            self.cancelled
        }
    }

    fn policy(n: u32) -> RetryPolicy {
        RetryPolicy::builder()
            .max_attempts(n)
            .base(Duration::from_millis(100))
            .cap(Duration::from_secs(2))
            .seed(7)
            .build()
    }

    #[test]
    fn backoff_grows_and_caps() {
        let p = policy(10);
        let got: Vec<u128> = (1..=7).map(|r| p.backoff(r).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn jitter_stays_in_bounds_and_is_seeded() {
        for jitter in [Jitter::Full, Jitter::Equal, Jitter::None] {
            let p = RetryPolicy::builder()
                .base(Duration::from_millis(100))
                .jitter(jitter)
                .seed(42)
                .build();
            let mut a = p.rng();
            let mut b = p.rng();
            for retry in 1..8 {
                let d = p.delay(retry, &mut a);
                assert_eq!(d, p.delay(retry, &mut b), "same seed, same delays");
                let full = p.backoff(retry);
                match jitter {
                    Jitter::Full => assert!(d <= full),
                    Jitter::Equal => assert!(d >= full / 2 && d <= full),
                    Jitter::None => assert_eq!(d, full),
                }
            }
        }
    }

    #[test]
    fn full_jitter_spreads_delays() {
        let p = RetryPolicy::builder()
            .base(Duration::from_secs(1))
            .seed(1)
            .build();
        let mut rng = p.rng();
        let delays: std::collections::HashSet<_> = (0..50).map(|_| p.delay(1, &mut rng)).collect();
        assert!(delays.len() > 40, "full jitter should rarely repeat");
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            parse_retry_after(" 30 ", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        // Wed, 21 Oct 2015 07:28:00 GMT == 1445412480
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in ["", "-1", "soon", "1e9999", "1.2.3"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad}");
        }
    }

    #[test]
    fn provider_presets() {
        let a = Provider::Anthropic;
        for s in [429, 500, 529, 503] {
            assert_eq!(a.classify(&HttpErr::status(s)), Decision::Retry, "{s}");
        }
        for s in [400, 401, 403, 404, 413, 422] {
            assert_eq!(a.classify(&HttpErr::status(s)), Decision::Stop, "{s}");
        }
        assert_eq!(
            Provider::OpenAi.classify(&HttpErr::status(529)),
            Decision::Stop
        );
        let throttled = HttpErr {
            status: Some(400),
            after: None,
            kind: Some("ThrottlingException"),
            cancelled: false,
        };
        assert_eq!(Provider::Bedrock.classify(&throttled), Decision::Retry);
        let gem = HttpErr {
            status: None,
            after: Some(Duration::from_secs(3)),
            kind: Some("RESOURCE_EXHAUSTED"),
            cancelled: false,
        };
        assert_eq!(
            Provider::Gemini.classify(&gem),
            Decision::RetryAfter(Duration::from_secs(3))
        );
        let cancelled = HttpErr {
            cancelled: true,
            ..HttpErr::status(529)
        };
        assert_eq!(a.classify(&cancelled), Decision::Stop);
    }

    #[tokio::test(start_paused = true)]
    async fn same_key_every_attempt_and_exhaustion() {
        let keys = Arc::new(Mutex::new(Vec::new()));
        let seen = keys.clone();
        let r = Retrier::new(policy(4)).classify(Provider::Anthropic);
        let out: Result<(), _> = r
            .run(Some("ik_k"), |a| {
                seen.lock().push((a.number(), a.key().map(str::to_owned)));
                async { Err(HttpErr::status(529)) }
            })
            .await;
        let err = out.unwrap_err();
        assert_eq!(err.attempts, 4);
        assert_eq!(err.reason, GiveUp::Exhausted);
        let keys = keys.lock().clone();
        assert_eq!(keys.len(), 4);
        assert!(keys.iter().all(|(_, k)| k.as_deref() == Some("ik_k")));
        assert_eq!(
            keys.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after_and_hooks_see_delays() {
        let delays = Arc::new(Mutex::new(Vec::new()));
        let d2 = delays.clone();
        let r = Retrier::new(policy(3))
            .classify(Provider::Anthropic)
            .on_retry(move |e| d2.lock().push(e.delay));
        let start = tokio::time::Instant::now();
        let calls = AtomicU32::new(0);
        let out = r
            .run(None, |a| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if a.number() == 1 {
                        Err(HttpErr {
                            after: Some(Duration::from_secs(5)),
                            ..HttpErr::status(429)
                        })
                    } else {
                        Ok("done")
                    }
                }
            })
            .await;
        assert_eq!(out.unwrap(), "done");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let d = delays.lock()[0];
        assert!(
            d >= Duration::from_secs(5) && d <= Duration::from_millis(6_251),
            "{d:?}"
        );
        assert!(start.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_retry_after_beyond_cap() {
        let r = Retrier::new(
            RetryPolicy::builder()
                .retry_after_cap(Duration::from_secs(10))
                .build(),
        )
        .classify(Provider::Anthropic);
        let out: Result<(), _> = r
            .run(None, |_| async {
                Err(HttpErr {
                    after: Some(Duration::from_secs(3600)),
                    ..HttpErr::status(429)
                })
            })
            .await;
        let e = out.unwrap_err();
        assert_eq!(e.attempts, 1);
        assert_eq!(
            e.reason,
            GiveUp::RetryAfterTooLong(Duration::from_secs(3600))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_and_cancelled_errors_stop_at_once() {
        let r = Retrier::new(policy(5)).classify(Provider::Anthropic);
        let calls = AtomicU32::new(0);
        let out: Result<(), _> = r
            .run(None, |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    Err(HttpErr {
                        cancelled: true,
                        ..HttpErr::status(503)
                    })
                }
            })
            .await;
        assert_eq!(out.unwrap_err().reason, GiveUp::NotRetryable);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_future_stops_retrying() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let task = tokio::spawn(async move {
            let r = Retrier::new(policy(100)).classify(Provider::Http);
            let _: Result<(), _> = r
                .run(None, |_| {
                    c.fetch_add(1, Ordering::SeqCst);
                    async { Err(HttpErr::status(503)) }
                })
                .await;
        });
        tokio::time::sleep(Duration::from_millis(350)).await;
        task.abort();
        let _ = task.await;
        let at_abort = calls.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(calls.load(Ordering::SeqCst), at_abort);
        assert!((1..100).contains(&at_abort));
    }

    #[tokio::test(start_paused = true)]
    async fn panics_propagate_and_are_not_retried() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let res = tokio::spawn(async move {
            let r = Retrier::new(policy(5));
            let _: Result<(), GaveUp<()>> = r
                .run(None, |_| {
                    c.fetch_add(1, Ordering::SeqCst);
                    async { panic!("boom") }
                })
                .await;
        })
        .await;
        assert!(res.unwrap_err().is_panic());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn budget_limits_retries_across_calls() {
        let budget = RetryBudget::new(0.0, 0.0, 3.0);
        let r = Retrier::new(
            RetryPolicy::builder()
                .max_attempts(10)
                .base(Duration::from_millis(1))
                .budget(budget.clone())
                .build(),
        );
        let mut total = 0;
        for _ in 0..3 {
            let out: Result<(), _> = r
                .run(None, |_| {
                    total += 1;
                    async { Err::<(), _>("down") }
                })
                .await;
            let _ = out.unwrap_err();
        }
        // 3 first attempts + 3 retries from the budget, then nothing.
        assert_eq!(total, 6);
        assert!(budget.available() < 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn budget_refills_over_time() {
        let budget = RetryBudget::new(0.0, 2.0, 2.0);
        assert!(budget.try_withdraw() && budget.try_withdraw());
        assert!(!budget.try_withdraw());
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(budget.try_withdraw());
    }

    #[test]
    fn blocking_runner_keeps_key() {
        let r = Retrier::new(
            RetryPolicy::builder()
                .max_attempts(3)
                .base(Duration::from_millis(1))
                .build(),
        );
        let mut keys = Vec::new();
        let out = r.run_blocking(Some("ik_same"), |a| {
            keys.push(a.key().map(str::to_owned));
            if a.number() < 3 {
                Err("again")
            } else {
                Ok(a.number())
            }
        });
        assert_eq!(out.unwrap(), 3);
        assert_eq!(keys, vec![Some("ik_same".to_owned()); 3]);
    }
}
