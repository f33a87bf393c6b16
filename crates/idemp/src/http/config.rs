//! Configuration of the middleware, and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};

use super::observe::{NoopObserver, Observer};
use super::replay::ReplayHeaders;
use super::scope::{
    AuthorizationHeader, DEFAULT_SCOPE_SECRET, PrincipalExtractor, RequestPath, RouteExtractor,
    Scoper,
};
use crate::clock::SharedClock;
use crate::store::DynStore;

/// A set of HTTP status codes (100–999).
///
/// ```
/// use idemp::http::StatusSet;
/// use http::StatusCode;
/// let s = StatusSet::default_stored();
/// assert!(s.contains(StatusCode::CREATED));
/// assert!(s.contains(StatusCode::BAD_REQUEST));
/// assert!(!s.contains(StatusCode::TOO_MANY_REQUESTS));
/// assert!(!s.contains(StatusCode::BAD_GATEWAY));
/// let only: StatusSet = [200u16, 201].into_iter().collect();
/// assert!(!only.contains(StatusCode::ACCEPTED));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct StatusSet {
    bits: [u64; 16],
}

impl StatusSet {
    /// No status.
    pub fn empty() -> Self {
        Self { bits: [0; 16] }
    }
    /// Every status.
    pub fn all() -> Self {
        let mut s = Self::empty();
        for c in 100..=999 {
            s.insert_code(c);
        }
        s
    }
    /// The default set of stored statuses: every status except 408, 409, 425, 429 and
    /// 5xx, whose requests are worth retrying (the claim is released instead).
    pub fn default_stored() -> Self {
        let mut s = Self::empty();
        for c in 100..=499 {
            if !matches!(c, 408 | 409 | 425 | 429) {
                s.insert_code(c);
            }
        }
        s
    }
    /// Adds a status.
    pub fn insert(&mut self, status: StatusCode) -> &mut Self {
        self.insert_code(status.as_u16());
        self
    }
    /// Removes a status.
    pub fn remove(&mut self, status: StatusCode) -> &mut Self {
        let c = status.as_u16() as usize;
        self.bits[c / 64] &= !(1 << (c % 64));
        self
    }
    /// Whether `status` is in the set.
    pub fn contains(&self, status: StatusCode) -> bool {
        let c = status.as_u16() as usize;
        c < 1000 && self.bits[c / 64] & (1 << (c % 64)) != 0
    }
    fn insert_code(&mut self, c: u16) {
        let c = c as usize;
        if (100..1000).contains(&c) {
            self.bits[c / 64] |= 1 << (c % 64);
        }
    }
}

impl Default for StatusSet {
    fn default() -> Self {
        Self::default_stored()
    }
}

impl FromIterator<u16> for StatusSet {
    fn from_iter<I: IntoIterator<Item = u16>>(iter: I) -> Self {
        let mut s = Self::empty();
        for c in iter {
            s.insert_code(c);
        }
        s
    }
}

impl FromIterator<StatusCode> for StatusSet {
    fn from_iter<I: IntoIterator<Item = StatusCode>>(iter: I) -> Self {
        iter.into_iter().map(|s| s.as_u16()).collect()
    }
}

impl fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let codes: Vec<usize> = (100..1000)
            .filter(|c| self.bits[c / 64] & (1 << (c % 64)) != 0)
            .collect();
        f.debug_set().entries(codes).finish()
    }
}

/// The middleware's configuration (built with [`Builder`]).
#[derive(Clone)]
pub struct Config {
    pub(crate) store: DynStore,
    pub(crate) methods: Vec<Method>,
    pub(crate) require_key: bool,
    pub(crate) derive_key: bool,
    pub(crate) wait: Duration,
    pub(crate) ttl: Duration,
    pub(crate) lease: Duration,
    pub(crate) max_body: usize,
    pub(crate) max_stored_response: usize,
    pub(crate) stored_statuses: StatusSet,
    pub(crate) fail_open: bool,
    pub(crate) store_retry_after: Duration,
    pub(crate) conflict_retry_after: Duration,
    pub(crate) replay_headers: ReplayHeaders,
    pub(crate) fingerprint_headers: Vec<HeaderName>,
    pub(crate) scoper: Scoper,
    pub(crate) observer: Arc<dyn Observer>,
    pub(crate) clock: SharedClock,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("store", &self.store)
            .field("methods", &self.methods)
            .field("require_key", &self.require_key)
            .field("derive_key", &self.derive_key)
            .field("wait", &self.wait)
            .field("ttl", &self.ttl)
            .field("lease", &self.lease)
            .field("max_body", &self.max_body)
            .field("max_stored_response", &self.max_stored_response)
            .field("stored_statuses", &self.stored_statuses)
            .field("fail_open", &self.fail_open)
            .field("replay_headers", &self.replay_headers)
            .field("fingerprint_headers", &self.fingerprint_headers)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The store.
    pub fn store(&self) -> &DynStore {
        &self.store
    }
    /// The lease of a claim.
    pub fn lease(&self) -> Duration {
        self.lease
    }
    /// The retention of stored responses.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
    /// The request body limit in bytes.
    pub fn max_body(&self) -> usize {
        self.max_body
    }
}

/// Builds an [`IdempotencyLayer`](super::IdempotencyLayer).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use idemp::http::IdempotencyLayer;
/// let store = idemp::store::open("memory:").await.unwrap();
/// let layer = IdempotencyLayer::builder(store)
///     .require_key(true)
///     .wait(Duration::from_secs(5))
///     .ttl(Duration::from_secs(24 * 3600))
///     .lease(Duration::from_secs(30))
///     .max_body(1 << 20)
///     .fail_open(false)
///     .build();
/// # let _ = layer; }
/// ```
#[must_use]
pub struct Builder {
    config: Config,
    secret: Vec<u8>,
    principal: Arc<dyn PrincipalExtractor>,
    route: Arc<dyn RouteExtractor>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Builder {
    pub(crate) fn new(store: DynStore) -> Self {
        let principal: Arc<dyn PrincipalExtractor> = Arc::new(AuthorizationHeader);
        let route: Arc<dyn RouteExtractor> = Arc::new(RequestPath);
        Self {
            config: Config {
                store,
                methods: vec![Method::POST, Method::PATCH],
                require_key: false,
                derive_key: false,
                wait: Duration::from_secs(10),
                ttl: Duration::from_secs(24 * 3600),
                lease: Duration::from_secs(60),
                max_body: 8 << 20,
                max_stored_response: 16 << 20,
                stored_statuses: StatusSet::default_stored(),
                fail_open: false,
                store_retry_after: Duration::from_secs(1),
                conflict_retry_after: Duration::from_secs(1),
                replay_headers: ReplayHeaders::AllSafe,
                fingerprint_headers: Vec::new(),
                scoper: Scoper::new(DEFAULT_SCOPE_SECRET, principal.clone(), route.clone()),
                observer: Arc::new(NoopObserver),
                clock: crate::clock::system(),
            },
            secret: DEFAULT_SCOPE_SECRET.to_vec(),
            principal,
            route,
        }
    }

    /// The guarded methods (default POST and PATCH). Others pass through untouched.
    pub fn methods<I: IntoIterator<Item = Method>>(mut self, methods: I) -> Self {
        self.config.methods = methods.into_iter().collect();
        self
    }
    /// Refuse guarded requests without a key with 400 (default: pass them through).
    pub fn require_key(mut self, yes: bool) -> Self {
        self.config.require_key = yes;
        self
    }
    /// Give guarded requests without a key one derived from their scope, method,
    /// path, query, chosen headers and canonical body, so identical retries are
    /// deduplicated (default off). Takes precedence over `require_key`.
    pub fn derive_key(mut self, yes: bool) -> Self {
        self.config.derive_key = yes;
        self
    }
    /// How long a duplicate waits for the first request before 409 (default 10 s).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.config.wait = wait;
        self
    }
    /// Retention of stored responses (default 24 h).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.ttl = ttl;
        self
    }
    /// The lease of a claim, renewed every `lease / 3` while the handler runs
    /// (default 60 s).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }
    /// The largest request body accepted on guarded requests, in bytes (default
    /// 8 MiB); larger → 413.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.config.max_body = bytes;
        self
    }
    /// The largest response stored (default 16 MiB); a larger response is returned
    /// but not stored (the claim is released).
    pub fn max_stored_response(mut self, bytes: usize) -> Self {
        self.config.max_stored_response = bytes;
        self
    }
    /// Which response statuses are stored and replayed (default
    /// [`StatusSet::default_stored`]). Others release the claim so a retry runs.
    pub fn stored_statuses(mut self, statuses: StatusSet) -> Self {
        self.config.stored_statuses = statuses;
        self
    }
    /// When the store fails: pass the request through unguarded (`true`) or refuse it
    /// with 503 (`false`, the default: fail closed).
    pub fn fail_open(mut self, yes: bool) -> Self {
        self.config.fail_open = yes;
        self
    }
    /// `Retry-After` of 503 store-unavailable responses (default 1 s).
    pub fn store_retry_after(mut self, after: Duration) -> Self {
        self.config.store_retry_after = after;
        self
    }
    /// `Retry-After` of 409 in-progress responses (default 1 s).
    pub fn conflict_retry_after(mut self, after: Duration) -> Self {
        self.config.conflict_retry_after = after;
        self
    }
    /// Which response headers are stored and replayed (default
    /// [`ReplayHeaders::AllSafe`]; credentials and hop-by-hop headers never are).
    pub fn replay_headers(mut self, policy: ReplayHeaders) -> Self {
        self.config.replay_headers = policy;
        self
    }
    /// Request headers that take part in the fingerprint (default none).
    pub fn fingerprint_headers<I: IntoIterator<Item = HeaderName>>(mut self, names: I) -> Self {
        self.config.fingerprint_headers = names.into_iter().collect();
        self
    }
    /// The secret of the principal scope hash (see [`scope`](super::scope)). Must be
    /// the same on every instance sharing a store.
    pub fn scope_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.secret = secret.as_ref().to_vec();
        self
    }
    /// How to identify the caller (default: the `Authorization` header).
    pub fn principal(mut self, extractor: impl PrincipalExtractor) -> Self {
        self.principal = Arc::new(extractor);
        self
    }
    /// How to name the route (default: the path).
    pub fn route(mut self, extractor: impl RouteExtractor) -> Self {
        self.route = Arc::new(extractor);
        self
    }
    /// Receives counters and store latencies.
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.config.observer = observer;
        self
    }
    /// The clock the store uses (default: the system clock), to tell how long a
    /// running request's lease has left.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.config.clock = clock;
        self
    }
    /// The configuration.
    pub fn into_config(mut self) -> Config {
        self.config.scoper = Scoper::new(&self.secret, self.principal, self.route);
        self.config
    }
    /// The layer.
    pub fn build(self) -> super::IdempotencyLayer {
        super::IdempotencyLayer::from_config(self.into_config())
    }
}
