//! Configuration of the middleware, and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};

use super::observe::{NoopObserver, ObservedStore, Observer};
use super::replay::ReplayHeaders;
use super::scope::{
    CredentialHeaders, DEFAULT_SCOPE_SECRET, PrincipalExtractor, RequestPath, RouteExtractor,
    Scoper,
};
use crate::clock::SharedClock;
use crate::guard::{Guard, OnAmbiguous, OnDuplicate, OnInterrupt};
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

/// Settings that may differ per route (by path prefix), set with
/// [`Builder::route_settings`]. Whatever is left unset is the builder's.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use idemp::guard::OnAmbiguous;
/// use idemp::http::{IdempotencyLayer, RouteSettings};
/// let store = idemp::store::open("memory:").await.unwrap();
/// let layer = IdempotencyLayer::builder(store)
///     // Completions: keys derived from the body, retaken when the outcome is lost.
///     .route_settings("/v1/messages", RouteSettings::new().derive_key(true).on_ambiguous(OnAmbiguous::Retake))
///     // Payments: a key is required, and a lost outcome is surfaced for a day.
///     .route_settings("/v1/charges", RouteSettings::new().require_key(true).ttl(Duration::from_secs(86_400)))
///     .build();
/// # let _ = layer; }
/// ```
#[derive(Clone, Debug, Default)]
pub struct RouteSettings {
    methods: Option<Vec<Method>>,
    require_key: Option<bool>,
    derive_key: Option<bool>,
    ttl: Option<Duration>,
    on_ambiguous: Option<OnAmbiguous>,
    ambiguous_hold: Option<Duration>,
    max_stored_response: Option<usize>,
}

impl RouteSettings {
    /// Nothing overridden.
    pub fn new() -> Self {
        Self::default()
    }
    /// The guarded methods on this route.
    pub fn methods<I: IntoIterator<Item = Method>>(mut self, methods: I) -> Self {
        self.methods = Some(methods.into_iter().collect());
        self
    }
    /// Whether a key is required on this route.
    pub fn require_key(mut self, yes: bool) -> Self {
        self.require_key = Some(yes);
        self
    }
    /// Whether keys are derived on this route.
    pub fn derive_key(mut self, yes: bool) -> Self {
        self.derive_key = Some(yes);
        self
    }
    /// Retention of stored responses on this route.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
    /// The ambiguity policy on this route.
    pub fn on_ambiguous(mut self, policy: OnAmbiguous) -> Self {
        self.on_ambiguous = Some(policy);
        self
    }
    /// How long an ambiguous record is surfaced on this route.
    pub fn ambiguous_hold(mut self, hold: Duration) -> Self {
        self.ambiguous_hold = Some(hold);
        self
    }
    /// The stored-response limit on this route.
    pub fn max_stored_response(mut self, bytes: usize) -> Self {
        self.max_stored_response = Some(bytes);
        self
    }
}

/// The settings that apply to one request (the builder's, or a route's), with the
/// guards that carry them out.
#[derive(Debug)]
pub(crate) struct Policy {
    pub(crate) methods: Vec<Method>,
    pub(crate) require_key: bool,
    pub(crate) derive_key: bool,
    pub(crate) ttl: Duration,
    pub(crate) on_ambiguous: OnAmbiguous,
    pub(crate) ambiguous_hold: Duration,
    pub(crate) max_stored_response: usize,
    /// Claims under `on_ambiguous`, waiting up to `wait` for a running duplicate.
    pub(crate) guard: Guard,
    /// The same with `Retake`: an ambiguous record whose hold has passed runs again.
    pub(crate) retake: Guard,
}

impl Policy {
    /// Whether a lost outcome is retaken at once (released) rather than kept.
    pub(crate) fn retakes(&self) -> bool {
        matches!(self.on_ambiguous, OnAmbiguous::Retake)
    }
}

/// The middleware's configuration (built with [`Builder`]).
#[derive(Clone)]
pub struct Config {
    pub(crate) store: DynStore,
    pub(crate) wait: Duration,
    pub(crate) lease: Duration,
    pub(crate) max_body: usize,
    pub(crate) max_buffered_request_bytes: usize,
    pub(crate) stored_statuses: StatusSet,
    pub(crate) fail_open: bool,
    pub(crate) forward_key: bool,
    pub(crate) store_retry_after: Duration,
    pub(crate) conflict_retry_after: Duration,
    pub(crate) replay_headers: ReplayHeaders,
    pub(crate) fingerprint_headers: Vec<HeaderName>,
    pub(crate) scoper: Scoper,
    pub(crate) observer: Arc<dyn Observer>,
    pub(crate) clock: SharedClock,
    pub(crate) default: Arc<Policy>,
    /// Per-route policies, longest prefix first.
    pub(crate) routes: Vec<(String, Arc<Policy>)>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("store", &self.store)
            .field("wait", &self.wait)
            .field("lease", &self.lease)
            .field("max_body", &self.max_body)
            .field(
                "max_buffered_request_bytes",
                &self.max_buffered_request_bytes,
            )
            .field("stored_statuses", &self.stored_statuses)
            .field("fail_open", &self.fail_open)
            .field("forward_key", &self.forward_key)
            .field("replay_headers", &self.replay_headers)
            .field("fingerprint_headers", &self.fingerprint_headers)
            .field("default", &self.default)
            .field("routes", &self.routes)
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
    /// The retention of stored responses (outside per-route settings).
    pub fn ttl(&self) -> Duration {
        self.default.ttl
    }
    /// The request body limit in bytes.
    pub fn max_body(&self) -> usize {
        self.max_body
    }
    /// The stored-response limit in bytes (outside per-route settings).
    pub fn max_stored_response(&self) -> usize {
        self.default.max_stored_response
    }
    /// The policy for a normalised path: the longest matching route prefix (on a
    /// segment boundary), else the builder's.
    pub(crate) fn policy_for(&self, path: &str) -> &Arc<Policy> {
        self.routes
            .iter()
            .find(|(prefix, _)| prefix_matches(prefix, path))
            .map_or(&self.default, |(_, p)| p)
    }
    /// Whether `method` is guarded anywhere (the builder's methods or a route's).
    pub(crate) fn guards_anywhere(&self, method: &Method) -> bool {
        self.default.methods.contains(method)
            || self.routes.iter().any(|(_, p)| p.methods.contains(method))
    }
}

/// `/v1/charges` matches `/v1/charges` and `/v1/charges/ch_1`, not `/v1/chargesX`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Builds an [`IdempotencyLayer`](super::IdempotencyLayer).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use idemp::guard::OnAmbiguous;
/// use idemp::http::IdempotencyLayer;
/// let store = idemp::store::open("memory:").await.unwrap();
/// let layer = IdempotencyLayer::builder(store)
///     .require_key(true)
///     .wait(Duration::from_secs(5))
///     .ttl(Duration::from_secs(24 * 3600))
///     .lease(Duration::from_secs(30))
///     .max_body(1 << 20)
///     .max_stored_response(8 << 20)
///     .on_ambiguous(OnAmbiguous::Surface)
///     .forward_key(true)
///     .fail_open(false)
///     .build();
/// # let _ = layer; }
/// ```
#[must_use]
pub struct Builder {
    store: DynStore,
    methods: Vec<Method>,
    require_key: bool,
    derive_key: bool,
    wait: Duration,
    ttl: Duration,
    lease: Duration,
    max_body: usize,
    max_buffered_request_bytes: usize,
    max_stored_response: usize,
    stored_statuses: StatusSet,
    fail_open: bool,
    forward_key: bool,
    on_ambiguous: OnAmbiguous,
    ambiguous_hold: Option<Duration>,
    store_retry_after: Duration,
    conflict_retry_after: Duration,
    replay_headers: ReplayHeaders,
    fingerprint_headers: Vec<HeaderName>,
    observer: Arc<dyn Observer>,
    clock: SharedClock,
    secret: Vec<u8>,
    principal: Arc<dyn PrincipalExtractor>,
    route: Arc<dyn RouteExtractor>,
    routes: Vec<(String, RouteSettings)>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("store", &self.store)
            .field("methods", &self.methods)
            .field("require_key", &self.require_key)
            .field("derive_key", &self.derive_key)
            .field("on_ambiguous", &self.on_ambiguous)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

/// The default cap on request body bytes buffered at once, all requests together.
pub const DEFAULT_MAX_BUFFERED_REQUEST_BYTES: usize = 256 << 20;

impl Builder {
    pub(crate) fn new(store: DynStore) -> Self {
        Self {
            store,
            methods: vec![Method::POST, Method::PATCH],
            require_key: false,
            derive_key: false,
            wait: Duration::from_secs(10),
            ttl: Duration::from_secs(24 * 3600),
            lease: Duration::from_secs(60),
            max_body: 8 << 20,
            max_buffered_request_bytes: DEFAULT_MAX_BUFFERED_REQUEST_BYTES,
            max_stored_response: 8 << 20,
            stored_statuses: StatusSet::default_stored(),
            fail_open: false,
            forward_key: false,
            on_ambiguous: OnAmbiguous::Surface,
            ambiguous_hold: None,
            store_retry_after: Duration::from_secs(1),
            conflict_retry_after: Duration::from_secs(1),
            replay_headers: ReplayHeaders::AllSafe,
            fingerprint_headers: Vec::new(),
            observer: Arc::new(NoopObserver),
            clock: crate::clock::system(),
            secret: DEFAULT_SCOPE_SECRET.to_vec(),
            principal: Arc::new(CredentialHeaders::default()),
            route: Arc::new(RequestPath),
            routes: Vec::new(),
        }
    }

    /// The guarded methods (default POST and PATCH). Others pass through untouched.
    pub fn methods<I: IntoIterator<Item = Method>>(mut self, methods: I) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }
    /// Refuse guarded requests without a key with 400 (default: pass them through).
    pub fn require_key(mut self, yes: bool) -> Self {
        self.require_key = yes;
        self
    }
    /// Give guarded requests without a key one derived from their scope (caller and
    /// route) and [fingerprint](super::fingerprint) (method, path, query, media type,
    /// chosen headers, decoded canonical body), so identical retries are deduplicated
    /// (default off). Takes precedence over `require_key`.
    pub fn derive_key(mut self, yes: bool) -> Self {
        self.derive_key = yes;
        self
    }
    /// How long a duplicate waits for the first request before 409 (default 10 s). A
    /// duplicate of a response streaming in this process joins it instead.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }
    /// Retention of stored responses (default 24 h).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
    /// The lease of a claim, renewed every `lease / 3` while the handler runs and its
    /// response streams (default 60 s).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }
    /// The largest request body accepted on guarded requests, in bytes, before and
    /// after decoding its `Content-Encoding` (default 8 MiB); larger → 413.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }
    /// The most request body bytes buffered at once, all guarded requests together
    /// (default 256 MiB). A request that would go over is refused at once with 503
    /// and `Retry-After` (never queued: a queue of half-sent bodies is what this cap
    /// is against).
    pub fn max_buffered_request_bytes(mut self, bytes: usize) -> Self {
        self.max_buffered_request_bytes = bytes;
        self
    }
    /// The largest response kept for replay (default 8 MiB). A larger response is
    /// streamed to the client whole and its record settles as "executed, response
    /// not stored": a retry is answered `response-not-stored`, never run again.
    pub fn max_stored_response(mut self, bytes: usize) -> Self {
        self.max_stored_response = bytes;
        self
    }
    /// Which response statuses are stored and replayed (default
    /// [`StatusSet::default_stored`]). Others release the claim so a retry runs.
    pub fn stored_statuses(mut self, statuses: StatusSet) -> Self {
        self.stored_statuses = statuses;
        self
    }
    /// When the store fails: pass the request through unguarded (`true`) or refuse it
    /// with 503 (`false`, the default: fail closed).
    pub fn fail_open(mut self, yes: bool) -> Self {
        self.fail_open = yes;
        self
    }
    /// Send the key to the inner service as `Idempotency-Key` (derived keys too), so
    /// an upstream that honours keys deduplicates a retaken request itself (default
    /// off). An explicit key the client sent is passed on as it was.
    pub fn forward_key(mut self, yes: bool) -> Self {
        self.forward_key = yes;
        self
    }
    /// What a retry gets when an earlier attempt's outcome was lost after the request
    /// may have reached the side effect (see [`Delivery`](super::Delivery)), or when
    /// the process running it died: [`OnAmbiguous::Surface`] (the default) answers
    /// `outcome-ambiguous` (409, `x-should-retry: false`) until
    /// [`ambiguous_hold`](Self::ambiguous_hold) passes; [`OnAmbiguous::Retake`] runs
    /// it again (at least once); [`OnAmbiguous::Verify`] asks your reconcile function
    /// (answer with a [`StoredResponse`](super::StoredResponse) when the effect
    /// happened).
    pub fn on_ambiguous(mut self, policy: OnAmbiguous) -> Self {
        self.on_ambiguous = policy;
        self
    }
    /// How long an ambiguous record is surfaced before a retry may run it again
    /// (default: the ttl; at most the ttl, after which the store forgets the record).
    pub fn ambiguous_hold(mut self, hold: Duration) -> Self {
        self.ambiguous_hold = Some(hold);
        self
    }
    /// Settings for the routes under `prefix` (a normalised path prefix, matched on
    /// segment boundaries; the longest match wins).
    pub fn route_settings(mut self, prefix: impl Into<String>, settings: RouteSettings) -> Self {
        let prefix = prefix.into();
        let prefix = super::path::normalize(&prefix).unwrap_or(prefix);
        self.routes.retain(|(p, _)| *p != prefix);
        self.routes.push((prefix, settings));
        self
    }
    /// `Retry-After` of 503 store-unavailable responses (default 1 s).
    pub fn store_retry_after(mut self, after: Duration) -> Self {
        self.store_retry_after = after;
        self
    }
    /// `Retry-After` of 409 in-progress responses (default 1 s).
    pub fn conflict_retry_after(mut self, after: Duration) -> Self {
        self.conflict_retry_after = after;
        self
    }
    /// Which response headers are stored and replayed (default
    /// [`ReplayHeaders::AllSafe`]; credentials and hop-by-hop headers never are).
    pub fn replay_headers(mut self, policy: ReplayHeaders) -> Self {
        self.replay_headers = policy;
        self
    }
    /// Request headers that take part in the fingerprint (default none).
    pub fn fingerprint_headers<I: IntoIterator<Item = HeaderName>>(mut self, names: I) -> Self {
        self.fingerprint_headers = names.into_iter().collect();
        self
    }
    /// The secret of the principal scope hash (see [`scope`](super::scope)). Must be
    /// the same on every instance sharing a store.
    pub fn scope_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.secret = secret.as_ref().to_vec();
        self
    }
    /// The credential headers that make the principal (default
    /// [`DEFAULT_CREDENTIAL_HEADERS`](super::scope::DEFAULT_CREDENTIAL_HEADERS)).
    pub fn principal_headers<I: IntoIterator<Item = HeaderName>>(self, names: I) -> Self {
        self.principal(CredentialHeaders::new(names))
    }
    /// How to identify the caller (default: [`CredentialHeaders`]).
    pub fn principal(mut self, extractor: impl PrincipalExtractor) -> Self {
        self.principal = Arc::new(extractor);
        self
    }
    /// How to name the route (default: the normalised path).
    pub fn route(mut self, extractor: impl RouteExtractor) -> Self {
        self.route = Arc::new(extractor);
        self
    }
    /// Receives counters and store latencies.
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }
    /// The clock the store uses (default: the system clock), to tell whether a
    /// record's lease or hold has passed.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    fn policy(&self, store: &DynStore, route: &RouteSettings) -> Policy {
        let ttl = route.ttl.unwrap_or(self.ttl);
        let on_ambiguous = route
            .on_ambiguous
            .clone()
            .unwrap_or_else(|| self.on_ambiguous.clone());
        let guard = |policy: OnAmbiguous| {
            Guard::builder(store.clone())
                .ttl(ttl)
                .lease(self.lease)
                .on_duplicate(OnDuplicate::Wait(self.wait))
                .on_ambiguous(policy)
                // A task dropped mid-run (a runtime shut down) may have run the
                // handler: keep the record, it becomes ambiguous when its lease passes.
                .on_cancel(OnInterrupt::Keep)
                .clock(self.clock.clone())
                .build()
        };
        Policy {
            methods: route
                .methods
                .clone()
                .unwrap_or_else(|| self.methods.clone()),
            require_key: route.require_key.unwrap_or(self.require_key),
            derive_key: route.derive_key.unwrap_or(self.derive_key),
            ttl,
            ambiguous_hold: route
                .ambiguous_hold
                .or(self.ambiguous_hold)
                .unwrap_or(ttl)
                .min(ttl),
            max_stored_response: route
                .max_stored_response
                .unwrap_or(self.max_stored_response),
            guard: guard(on_ambiguous.clone()),
            retake: guard(OnAmbiguous::Retake),
            on_ambiguous,
        }
    }

    /// The configuration.
    pub fn into_config(self) -> Config {
        let store: DynStore = Arc::new(ObservedStore {
            inner: self.store.clone(),
            observer: self.observer.clone(),
        });
        let default = Arc::new(self.policy(&store, &RouteSettings::default()));
        let mut routes: Vec<(String, Arc<Policy>)> = self
            .routes
            .iter()
            .map(|(prefix, settings)| (prefix.clone(), Arc::new(self.policy(&store, settings))))
            .collect();
        routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Config {
            store: self.store,
            wait: self.wait,
            lease: self.lease,
            max_body: self.max_body,
            max_buffered_request_bytes: self.max_buffered_request_bytes,
            stored_statuses: self.stored_statuses,
            fail_open: self.fail_open,
            forward_key: self.forward_key,
            store_retry_after: self.store_retry_after,
            conflict_retry_after: self.conflict_retry_after,
            replay_headers: self.replay_headers,
            fingerprint_headers: self.fingerprint_headers,
            scoper: Scoper::new(&self.secret, self.principal, self.route),
            observer: self.observer,
            clock: self.clock,
            default,
            routes,
        }
    }
    /// The layer.
    pub fn build(self) -> super::IdempotencyLayer {
        super::IdempotencyLayer::from_config(self.into_config())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_prefixes_match_on_segments_longest_first() {
        assert!(prefix_matches("/v1/charges", "/v1/charges"));
        assert!(prefix_matches("/v1/charges", "/v1/charges/ch_1"));
        assert!(prefix_matches("/v1/charges/", "/v1/charges/ch_1"));
        assert!(!prefix_matches("/v1/charges", "/v1/chargesX"));
        assert!(prefix_matches("/", "/anything"));
    }
}
