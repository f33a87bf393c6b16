//! The tower [`Layer`] and [`Service`]: the request flow of SPEC section 4.
//!
//! ```text
//! method not guarded ───────────────────────────────────────────▶ inner (streamed)
//! Idempotency-Key invalid / repeated ───────────────────────────▶ 400 invalid-key
//! no key ── derive_key ─▶ key from the fingerprint
//!        ── require_key ─▶ 400 missing-key, else ─────────────────▶ inner (streamed)
//! body > max_body ──────────────────────────────────────────────▶ 413
//! claim(scope, key, fingerprint)
//!   ├─ store error ── fail_open ─▶ inner, else ───────────────────▶ 503 + Retry-After
//!   ├─ Mismatch ─────────────────────────────────────────────────▶ 422 key-mismatch
//!   ├─ Completed ────────────────────────────────────────────────▶ replay + Idempotent-Replayed
//!   ├─ InProgress ─▶ wait ─┬─ settled ─▶ replay; released ─▶ claim again
//!   │                      └─ still running at the deadline ─────▶ 409 + Retry-After
//!   └─ Acquired ─▶ spawn { heartbeat; inner; buffer response;
//!                          stored status ? complete : release }  ─▶ the response
//! ```
//!
//! The handler runs in a spawned task, so a client that disconnects (dropping the
//! response future) does not cancel it: it runs to completion and its record is
//! settled. [`IdempotencyLayer::in_flight`] lets a server wait for those tasks on
//! shutdown.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{Request, Response, header};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use tokio::sync::{Notify, oneshot};
use tower_layer::Layer;
use tower_service::Service;

use super::config::{Builder, Config};
use super::fingerprint::request_fingerprint;
use super::header::IdempotencyKey;
use super::lease::{LeaseLost, heartbeat};
use super::observe::{Event, StoreOp};
use super::problem::{Problem, ProblemKind};
use super::replay::StoredResponse;
use crate::store::{Claim, ClaimOutcome, DynStore, Outcome, RecordKey, State, StoreError};

/// A type-erased error, as tower and hyper use.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body the inner service receives: the buffered body of a guarded
/// request (`Left`), or the original body, untouched, of a request that is passed
/// through (`Right`).
pub type RequestBody<B> = Either<Full<Bytes>, B>;

/// The response body the middleware returns: a buffered body (stored responses,
/// replays, problems: `Left`) or the inner service's own body, streamed (`Right`).
pub type ResponseBody<B> = Either<Full<Bytes>, B>;

/// What the middleware did with a request; inserted into every response's
/// extensions (for logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disposition {
    /// Not guarded: passed through untouched.
    PassedThrough,
    /// Claimed and executed by the handler (`stored`: its response was stored).
    Executed {
        /// Whether the response was stored for replay.
        stored: bool,
        /// Whether an expired lease was taken over.
        takeover: bool,
    },
    /// A stored response was replayed.
    Replayed,
    /// Refused by the middleware with a problem response.
    Refused(ProblemKind),
    /// The store failed and the request went through unguarded (fail open).
    FailedOpen,
}

/// Counts the spawned handler tasks still running, so a server can wait for them to
/// settle their records before it exits.
#[derive(Clone, Debug, Default)]
pub struct InFlight(Arc<InFlightInner>);

#[derive(Debug, Default)]
struct InFlightInner {
    count: AtomicUsize,
    idle: Notify,
}

struct InFlightGuard(InFlight);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if (self.0).0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            (self.0).0.idle.notify_waiters();
        }
    }
}

impl InFlight {
    fn enter(&self) -> InFlightGuard {
        self.0.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }
    /// How many handler tasks are running.
    pub fn count(&self) -> usize {
        self.0.count.load(Ordering::Acquire)
    }
    /// Returns once no handler task is running.
    pub async fn drained(&self) {
        loop {
            let notified = self.0.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// The idempotency middleware as a tower [`Layer`].
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use idemp::http::IdempotencyLayer;
/// let store = idemp::store::open("sqlite://idemp.db").await?;
/// let layer = IdempotencyLayer::builder(store).require_key(true).build();
/// // axum: Router::new().route("/payments", post(pay)).layer(layer)
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct IdempotencyLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: Config,
    in_flight: InFlight,
}

impl IdempotencyLayer {
    /// A builder over `store` with the defaults of SPEC section 4.
    pub fn builder(store: DynStore) -> Builder {
        Builder::new(store)
    }
    /// A layer with the default configuration.
    pub fn new(store: DynStore) -> Self {
        Builder::new(store).build()
    }
    /// A layer from a built configuration.
    pub fn from_config(config: Config) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                in_flight: InFlight::default(),
            }),
        }
    }
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }
    /// The tracker of running handler tasks (shared by every service of this layer).
    pub fn in_flight(&self) -> InFlight {
        self.shared.in_flight.clone()
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Idempotency {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The idempotency middleware as a tower [`Service`] (made by [`IdempotencyLayer`]).
#[derive(Clone, Debug)]
pub struct Idempotency<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B, ResB> Service<Request<B>> for Idempotency<S>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone that was polled ready is the one we use (tower's usual dance).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(handle(shared, inner, req))
    }
}

fn problem<T>(p: Problem) -> Response<ResponseBody<T>> {
    let kind = p.kind();
    let mut res = p.to_response().map(|b| Either::Left(Full::new(b)));
    res.extensions_mut().insert(Disposition::Refused(kind));
    res
}

fn with_disposition<T>(mut res: Response<T>, d: Disposition) -> Response<T> {
    res.extensions_mut().insert(d);
    res
}

async fn pass_through<S, B, ResB>(
    mut inner: S,
    req: Request<RequestBody<B>>,
    d: Disposition,
) -> Result<Response<ResponseBody<ResB>>, S::Error>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>>,
{
    let res = inner.call(req).await?;
    Ok(with_disposition(res.map(Either::Right), d))
}

fn replay<T>(config: &Config, outcome: &Outcome) -> Response<ResponseBody<T>> {
    match StoredResponse::from_outcome(outcome) {
        Ok(stored) => {
            config.observer.event(Event::Replayed);
            with_disposition(
                stored.to_response().map(|b| Either::Left(Full::new(b))),
                Disposition::Replayed,
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "stored response unreadable");
            problem(Problem::new(ProblemKind::StoredResponseUnreadable).detail(e.to_string()))
        }
    }
}

fn store_failed<T>(config: &Config, e: &StoreError) -> Response<ResponseBody<T>> {
    tracing::warn!(error = %e, "idempotency store failed; refusing the request (fail closed)");
    config.observer.event(Event::StoreUnavailable);
    problem(
        Problem::new(ProblemKind::StoreUnavailable)
            .detail("the idempotency store did not answer; retry later")
            .retry_after(config.store_retry_after),
    )
}

fn conflict<T>(config: &Config) -> Response<ResponseBody<T>> {
    config.observer.event(Event::Conflict);
    problem(
        Problem::new(ProblemKind::RequestInProgress)
            .detail("a request with this Idempotency-Key is still being processed; retry later")
            .retry_after(config.conflict_retry_after),
    )
}

/// The key derived for a request without one: `ik_` + 32 hex of the fingerprint
/// (which covers method, path, query, chosen headers and canonical body; the scope
/// is part of the record key).
fn derived_key(fp: &crate::store::Fingerprint) -> String {
    format!("ik_{}", hex::encode(&fp.0[..16]))
}

async fn handle<S, B, ResB>(
    shared: Arc<Shared>,
    inner: S,
    req: Request<B>,
) -> Result<Response<ResponseBody<ResB>>, S::Error>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let config = &shared.config;
    let observer = &config.observer;

    if !config.methods.contains(req.method()) {
        observer.event(Event::PassedThrough);
        return pass_through(inner, req.map(Either::Right), Disposition::PassedThrough).await;
    }
    let key = match IdempotencyKey::from_headers(req.headers()) {
        Ok(k) => k,
        Err(e) => {
            observer.event(Event::InvalidKey);
            return Ok(problem(
                Problem::new(ProblemKind::InvalidKey).detail(e.to_string()),
            ));
        }
    };
    if key.is_none() && !config.derive_key {
        if config.require_key {
            observer.event(Event::MissingKey);
            return Ok(problem(Problem::new(ProblemKind::MissingKey).detail(
                format!(
                    "{} requests to this endpoint need an Idempotency-Key header",
                    req.method()
                ),
            )));
        }
        observer.event(Event::PassedThrough);
        return pass_through(inner, req.map(Either::Right), Disposition::PassedThrough).await;
    }

    // Buffer the body, up to the limit.
    let (parts, body) = req.into_parts();
    let too_large = || {
        observer.event(Event::BodyTooLarge);
        problem(Problem::new(ProblemKind::BodyTooLarge).detail(format!(
            "guarded request bodies are limited to {} bytes",
            config.max_body
        )))
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > config.max_body as u64) {
        return Ok(too_large());
    }
    let bytes = match Limited::new(body, config.max_body).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Ok(too_large()),
        Err(e) => {
            return Ok(problem(
                Problem::new(ProblemKind::BodyUnreadable).detail(e.to_string()),
            ));
        }
    };

    let fp = request_fingerprint(
        &parts.method,
        &parts.uri,
        &parts.headers,
        &config.fingerprint_headers,
        &bytes,
    );
    let key = match key {
        Some(k) => k.as_str().to_owned(),
        None => derived_key(&fp),
    };
    let id = RecordKey::new(config.scoper.scope(&parts), key);
    let claim = Claim::new(id.clone())
        .fingerprint(Some(fp))
        .lease(config.lease)
        .ttl(config.ttl)
        .take_over_expired(true);

    // From the claim on, the work runs in its own task: a client that disconnects
    // (dropping this future) cancels neither a claim in flight nor the handler, and
    // the record is always settled.
    let (tx, rx) = oneshot::channel();
    let guard = shared.in_flight.enter();
    let task_shared = shared.clone();
    tokio::spawn(async move {
        let _guard = guard;
        let result = claim_and_run(task_shared, inner, parts, bytes, id, claim).await;
        // The client may be gone; the record is settled either way.
        let _ = tx.send(result);
    });
    match rx.await {
        Ok(r) => r,
        Err(_) => Ok(problem(
            Problem::new(ProblemKind::HandlerFailed).detail("the request task was cancelled"),
        )),
    }
}

/// Claims the key and replays, waits, refuses or runs the handler.
async fn claim_and_run<S, B, ResB>(
    shared: Arc<Shared>,
    mut inner: S,
    parts: http::request::Parts,
    bytes: Bytes,
    id: RecordKey,
    claim: Claim,
) -> Result<Response<ResponseBody<ResB>>, S::Error>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let config = &shared.config;
    let observer = &config.observer;
    let deadline = Instant::now() + config.wait;

    loop {
        let t0 = Instant::now();
        let claimed = config.store.claim(&claim).await;
        observer.store_latency(StoreOp::Claim, t0.elapsed(), claimed.is_ok());
        match claimed {
            // The store refuses this key (too long for it, a character it cannot
            // hold): the client's problem, not an outage.
            Err(StoreError::Invalid(reason)) => {
                observer.event(Event::InvalidKey);
                return Ok(problem(
                    Problem::new(ProblemKind::InvalidKey)
                        .detail(format!("the store refused this key: {reason}")),
                ));
            }
            Err(e) => {
                if config.fail_open {
                    tracing::warn!(error = %e, "idempotency store failed; passing through (fail open)");
                    observer.event(Event::FailedOpen);
                    let req = Request::from_parts(parts, Either::Left(Full::new(bytes)));
                    return pass_through(inner, req, Disposition::FailedOpen).await;
                }
                return Ok(store_failed(config, &e));
            }
            Ok(ClaimOutcome::Mismatch(_)) => {
                observer.event(Event::Mismatch);
                return Ok(problem(Problem::new(ProblemKind::KeyMismatch).detail(
                    "this Idempotency-Key was used with a different request (method, path, query or body)",
                )));
            }
            Ok(ClaimOutcome::Existing(rec)) => match &rec.state {
                State::Completed(o) | State::Failed(o) => return Ok(replay(config, o)),
                State::InProgress { lease_until } => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(conflict(config));
                    }
                    // Wake up when the lease passes too: if its owner died, the next
                    // claim takes the key over instead of waiting for a settlement
                    // that never comes.
                    let until_lease = Duration::from_millis(
                        lease_until.saturating_sub(config.clock.now_ms()) + 5,
                    );
                    let t0 = Instant::now();
                    let waited = config.store.wait(&id, left.min(until_lease)).await;
                    observer.store_latency(StoreOp::Wait, t0.elapsed(), waited.is_ok());
                    match waited {
                        Ok(Some(rec)) => match &rec.state {
                            State::Completed(o) | State::Failed(o) => {
                                return Ok(replay(config, o));
                            }
                            State::InProgress { .. } => {
                                if Instant::now() >= deadline {
                                    return Ok(conflict(config));
                                }
                                // The lease passed (or a spurious wake-up): claim
                                // again, which takes over an expired lease.
                            }
                        },
                        // Released (the first attempt's status was not stored): our turn.
                        Ok(None) => {}
                        Err(e) => return Ok(store_failed(config, &e)),
                    }
                }
            },
            Ok(ClaimOutcome::Acquired {
                token, takeover, ..
            }) => {
                observer.event(Event::Claimed);
                if let Some(prev) = takeover {
                    tracing::warn!(record = %id, previous_token = prev, "took over an expired lease: the earlier attempt is ambiguous");
                    observer.event(Event::TakenOver);
                }
                let req = Request::from_parts(parts, Either::Left(Full::new(bytes)));
                let run = Owned {
                    shared: shared.clone(),
                    id,
                    token,
                    takeover: takeover.is_some(),
                };
                return run.run(inner.call(req)).await;
            }
        }
    }
}

/// A claimed request: runs the handler (with the lease heartbeat) and settles the record.
struct Owned {
    shared: Arc<Shared>,
    id: RecordKey,
    token: crate::store::Token,
    takeover: bool,
}

impl Owned {
    async fn run<F, ResB, E>(self, fut: F) -> Result<Response<ResponseBody<ResB>>, E>
    where
        F: Future<Output = Result<Response<ResB>, E>> + Send,
        ResB: Body<Data = Bytes> + Send,
        ResB::Error: Into<BoxError>,
    {
        let config = &self.shared.config;
        let lost = LeaseLost::default();
        let heartbeat = heartbeat(
            config.store.clone(),
            self.id.clone(),
            self.token,
            config.lease,
            config.observer.clone(),
            lost.clone(),
        );
        let work = async {
            let res = fut.await?;
            let (parts, body) = res.into_parts();
            let collected = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .map_err(Into::<BoxError>::into);
            Ok::<_, E>((parts, collected))
        };
        let result = tokio::select! {
            biased;
            r = AssertUnwindSafe(work).catch_unwind() => r,
            never = heartbeat => match never {},
        };
        let lost = lost.get();
        match result {
            Err(_panic) => {
                self.release().await;
                Ok(problem(
                    Problem::new(ProblemKind::HandlerFailed).detail("the handler panicked"),
                ))
            }
            Ok(Err(e)) => {
                self.release().await;
                Err(e)
            }
            Ok(Ok((_, Err(e)))) => {
                tracing::warn!(record = %self.id, error = %e, "response body failed");
                self.release().await;
                Ok(problem(
                    Problem::new(ProblemKind::HandlerFailed)
                        .detail("the response body could not be read"),
                ))
            }
            Ok(Ok((parts, Ok(body)))) => {
                let store_it = config.stored_statuses.contains(parts.status)
                    && body.len() <= config.max_stored_response;
                let stored = if !store_it {
                    self.release().await;
                    false
                } else if lost {
                    config.observer.event(Event::Fenced);
                    false
                } else {
                    self.complete(&parts, &body).await
                };
                let res = Response::from_parts(parts, Either::Left(Full::new(body)));
                Ok(with_disposition(
                    res,
                    Disposition::Executed {
                        stored,
                        takeover: self.takeover,
                    },
                ))
            }
        }
    }

    async fn complete(&self, parts: &http::response::Parts, body: &Bytes) -> bool {
        let config = &self.shared.config;
        let outcome =
            StoredResponse::capture(parts.status, &parts.headers, body, &config.replay_headers)
                .to_outcome();
        let t0 = Instant::now();
        let res = config
            .store
            .complete(&self.id, self.token, outcome, config.ttl)
            .await;
        config
            .observer
            .store_latency(StoreOp::Complete, t0.elapsed(), res.is_ok());
        match res {
            Ok(()) => {
                config.observer.event(Event::Stored);
                true
            }
            Err(StoreError::Fenced { .. }) => {
                tracing::warn!(record = %self.id, token = self.token, "completion fenced: the key was taken over while the handler ran");
                config.observer.event(Event::Fenced);
                false
            }
            Err(e) => {
                tracing::error!(record = %self.id, error = %e, "could not store the response; the record stays in progress until its lease passes");
                false
            }
        }
    }

    async fn release(&self) {
        let config = &self.shared.config;
        let t0 = Instant::now();
        let res = config.store.release(&self.id, self.token).await;
        config
            .observer
            .store_latency(StoreOp::Release, t0.elapsed(), res.is_ok());
        match res {
            Ok(()) => config.observer.event(Event::Released),
            Err(StoreError::Fenced { .. }) => config.observer.event(Event::Fenced),
            Err(e) => {
                tracing::warn!(record = %self.id, error = %e, "could not release the claim; it expires with its lease")
            }
        }
    }
}
