//! The tower [`Layer`] and [`Service`]: the request flow of the middleware, built on
//! the [guard](crate::guard).
//!
//! ```text
//! path with no normal form (on a guarded method) ───────────────▶ 400 invalid-path
//! method not guarded on this route ─────────────────────────────▶ inner (streamed)
//! Idempotency-Key invalid / repeated ───────────────────────────▶ 400 invalid-key
//! no key ── derive_key ─▶ key from scope + fingerprint
//!        ── require_key ─▶ 400 missing-key, else ─────────────────▶ inner (streamed)
//! body > max_body (before or after Content-Encoding) ───────────▶ 413
//! request bytes buffered at once > the cap ─────────────────────▶ 503 overloaded
//! a response for this key is streaming in this process ─────────▶ join it live
//! Guard::begin_scoped(scope, key, fingerprint)   (OnDuplicate::Wait)
//!   ├─ store error ── fail_open ─▶ inner, else ───────────────────▶ 503 + Retry-After
//!   ├─ Mismatch ─────────────────────────────────────────────────▶ 422 key-mismatch
//!   ├─ Completed ────────────────────────────────────────────────▶ replay, or 409 response-not-stored
//!   ├─ InProgress (after the wait) ──────────────────────────────▶ 409 + Retry-After
//!   ├─ Ambiguous (surface) ── hold passed ─▶ retake, else ────────▶ 409 outcome-ambiguous
//!   └─ Owner(lease) ─▶ inner ─┬─ error, panic, NotSent, unstored status ─▶ release
//!                              ├─ MaybeSent ─▶ ambiguous (surface: keep; retake: release)
//!                              └─ stored status ─▶ tee: stream to the client while
//!                                   copying ≤ max_stored_response; at the end
//!                                   complete(response) or complete(not stored);
//!                                   a broken body ─▶ ambiguous, client truncated
//! ```
//!
//! From the claim on, the work runs in a spawned task: a client that disconnects
//! cancels neither a claim in flight nor the handler, and the response body is read
//! to its end and recorded even when nobody is reading it any more.
//! [`IdempotencyLayer::in_flight`] lets a server wait for those tasks on shutdown,
//! and [`InFlight::abandon`] settles those still running as ambiguous.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response, header};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full};
use tokio::sync::{Notify, mpsc, oneshot};
use tower_layer::Layer;
use tower_service::Service;

use super::body::{BoxError, ResponseBody, Truncated};
use super::budget::{Budget, Held};
use super::config::{Builder, Config, Policy};
use super::delivery::Delivery;
use super::encoding::{self, Coding};
use super::fingerprint::fingerprint_normalized;
use super::live::{Join, Live, Registry};
use super::observe::Event;
use super::problem::{Problem, ProblemKind};
use super::replay::{self, NotStored, Recorded, ReplayBody, StoredHead};
use crate::guard::{Begin, GuardError, Lease};
use crate::key::Key;
use crate::store::{Codec, Fingerprint, Outcome, Record, RecordKey, State};

/// The request body the inner service receives: the buffered body of a guarded
/// request (`Left`), or the original body, untouched, of a request that is passed
/// through (`Right`).
pub type RequestBody<B> = Either<Full<Bytes>, B>;

/// Frames buffered between the tee and a slow first client: the handler's body is
/// read no faster than the client takes it (unless the client has gone).
const TEE_FRAMES: usize = 8;

/// What the middleware did with a request; inserted into every response's
/// extensions (for logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disposition {
    /// Not guarded: passed through untouched.
    PassedThrough,
    /// Claimed and executed by the handler. `stored`: the response has a stored status
    /// and is being recorded as it streams (it still settles as "not stored" if it
    /// outgrows the limit, or ambiguous if it breaks).
    Executed {
        /// Whether the response is being recorded for replay.
        stored: bool,
        /// Whether an expired lease was taken over.
        takeover: bool,
    },
    /// A stored response was replayed.
    Replayed,
    /// A duplicate joined a response still streaming in this process.
    Joined,
    /// Refused by the middleware with a problem response.
    Refused(ProblemKind),
    /// The store failed and the request went through unguarded (fail open).
    FailedOpen,
}

/// Counts the spawned request tasks still running (claims, handlers, streams being
/// recorded), so a server can wait for them to settle their records before it
/// exits, and settle those that do not finish as ambiguous ([`InFlight::abandon`]).
#[derive(Clone, Debug, Default)]
pub struct InFlight(Arc<InFlightInner>);

#[derive(Debug, Default)]
struct InFlightInner {
    count: AtomicUsize,
    idle: Notify,
    abandoned: AtomicBool,
    abandon: Notify,
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
    /// How many request tasks are running.
    pub fn count(&self) -> usize {
        self.0.count.load(Ordering::Acquire)
    }
    /// Returns once no request task is running.
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
    /// Shutdown: every request task still running stops where it is and settles its
    /// record as **ambiguous** under its route's policy (its handler may have run):
    /// `surface` keeps the record so retries are answered `outcome-ambiguous`,
    /// `retake` releases it. Its client gets a truncated response (or a problem if
    /// no head was sent yet). Await [`drained`](Self::drained) after it.
    pub fn abandon(&self) {
        self.0.abandoned.store(true, Ordering::Release);
        self.0.abandon.notify_waiters();
    }
    async fn abandoned(&self) {
        loop {
            let notified = self.0.abandon.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.0.abandoned.load(Ordering::Acquire) {
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
    live: Registry,
    budget: Budget,
}

impl IdempotencyLayer {
    /// A builder over `store` with the defaults of the module docs.
    pub fn builder(store: crate::store::DynStore) -> Builder {
        Builder::new(store)
    }
    /// A layer with the default configuration.
    pub fn new(store: crate::store::DynStore) -> Self {
        Builder::new(store).build()
    }
    /// A layer from a built configuration.
    pub fn from_config(config: Config) -> Self {
        let budget = Budget::new(config.max_buffered_request_bytes);
        Self {
            shared: Arc::new(Shared {
                config,
                in_flight: InFlight::default(),
                live: Registry::default(),
                budget,
            }),
        }
    }
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }
    /// The tracker of running request tasks (shared by every service of this layer).
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

type Answer<T, E> = Result<Response<ResponseBody<T>>, E>;

fn problem<T>(p: Problem) -> Response<ResponseBody<T>> {
    let kind = p.kind();
    let mut res = p.to_response().map(ResponseBody::full);
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
) -> Answer<ResB, S::Error>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>>,
{
    let res = inner.call(req).await?;
    Ok(with_disposition(res.map(ResponseBody::inner), d))
}

/// An HTTP-date of ms since the epoch.
fn http_date(ms: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_millis(ms))
}

/// The key derived for a request without one: the injective key builder over the
/// record scope (caller and route) and the fingerprint, `ik_` + 32 hex. Two tenants
/// sending the same body get different keys, upstream too (`forward_key`).
fn derived_key(scope: &str, fp: &Fingerprint) -> Key {
    Key::builder("idemp.http.derived.v1")
        .part_str(scope)
        .part(fp.0)
        .build()
}

/// Reads a guarded request's body, up to `max` bytes, taking its bytes from the
/// shared budget as they arrive.
async fn read_body<B>(
    body: B,
    declared: Option<u64>,
    max: usize,
    held: &mut Held,
) -> Result<Bytes, Result<Problem, Event>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let too_large = || {
        Err(Ok(Problem::new(ProblemKind::BodyTooLarge).detail(format!(
            "guarded request bodies are limited to {max} bytes"
        ))))
    };
    if let Some(n) = declared {
        if n > max as u64 {
            return too_large();
        }
        // Announced: take its bytes at once (a body that never comes holds them only
        // until the connection's timeouts end it).
        if held.grow_to(n as usize).is_err() {
            return Err(Err(Event::Overloaded));
        }
    }
    let mut buf = BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                let e: BoxError = e.into();
                return Err(Ok(Problem::new(ProblemKind::BodyUnreadable)
                    .detail(format!("the request body could not be read: {e}"))));
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > max {
            return too_large();
        }
        if held.grow_to(buf.len() + data.len()).is_err() {
            return Err(Err(Event::Overloaded));
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

/// The body as fingerprinted: decoded from its `Content-Encoding`, bounded.
fn decoded_body<'a>(
    headers: &HeaderMap,
    body: &'a Bytes,
    max: usize,
) -> Result<std::borrow::Cow<'a, [u8]>, Problem> {
    let codings = match encoding::content_codings(headers) {
        Ok(c) => c,
        // A coding we cannot read: fingerprint the bytes as sent.
        Err(_) => return Ok(body[..].into()),
    };
    if codings.is_empty() {
        return Ok(body[..].into());
    }
    match encoding::decode_bounded(body, &codings, max) {
        Ok(d) => Ok(d.into()),
        Err(encoding::DecodeError::TooLarge { .. }) => Err(Problem::new(ProblemKind::BodyTooLarge)
            .detail(format!(
                "guarded request bodies are limited to {max} bytes once decoded from their Content-Encoding"
            ))),
        Err(e) => Err(Problem::new(ProblemKind::BodyUnreadable).detail(e.to_string())),
    }
}

async fn handle<S, B, ResB>(
    shared: Arc<Shared>,
    inner: S,
    req: Request<B>,
) -> Answer<ResB, S::Error>
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

    let path = match super::path::normalize(req.uri().path()) {
        Ok(p) => p,
        Err(e) => {
            if !config.guards_anywhere(req.method()) {
                observer.event(Event::PassedThrough);
                return pass_through(inner, req.map(Either::Right), Disposition::PassedThrough)
                    .await;
            }
            observer.event(Event::InvalidPath);
            return Ok(problem(Problem::new(ProblemKind::InvalidPath).detail(
                format!("the path {:?} has no normal form: {e}", req.uri().path()),
            )));
        }
    };
    let policy = config.policy_for(&path).clone();
    if !policy.methods.contains(req.method()) {
        observer.event(Event::PassedThrough);
        return pass_through(inner, req.map(Either::Right), Disposition::PassedThrough).await;
    }
    let key = match super::header::from_headers(req.headers()) {
        Ok(k) => k,
        Err(e) => {
            observer.event(Event::InvalidKey);
            return Ok(problem(
                Problem::new(ProblemKind::InvalidKey).detail(e.to_string()),
            ));
        }
    };
    if key.is_none() && !policy.derive_key {
        if policy.require_key {
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

    // Buffer the body, up to the limit and within the shared budget.
    let (mut parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut held = shared.budget.hold();
    let overloaded = || {
        observer.event(Event::Overloaded);
        problem(
            Problem::new(ProblemKind::Overloaded)
                .detail("too many request bytes are buffered at once; retry shortly")
                .retry_after(config.store_retry_after),
        )
    };
    let bytes = match read_body(body, declared, config.max_body, &mut held).await {
        Ok(b) => b,
        Err(Err(_)) => return Ok(overloaded()),
        Err(Ok(p)) => {
            if p.kind() == ProblemKind::BodyTooLarge {
                observer.event(Event::BodyTooLarge);
            }
            return Ok(problem(p));
        }
    };

    let fp = {
        let decoded = match decoded_body(&parts.headers, &bytes, config.max_body) {
            Ok(d) => d,
            Err(p) => {
                if p.kind() == ProblemKind::BodyTooLarge {
                    observer.event(Event::BodyTooLarge);
                }
                return Ok(problem(p));
            }
        };
        // A decoded copy is memory too, while it is hashed.
        if matches!(decoded, std::borrow::Cow::Owned(_))
            && held.grow_to(bytes.len() + decoded.len()).is_err()
        {
            return Ok(overloaded());
        }
        fingerprint_normalized(
            &parts.method,
            &path,
            parts.uri.query(),
            &parts.headers,
            &config.fingerprint_headers,
            &decoded,
        )
    };
    held.grow_to(bytes.len()).ok();
    let scope = config.scoper.scope(&parts);
    let key = match key {
        Some(k) => k,
        None => {
            let k = derived_key(&scope, &fp);
            if config.forward_key {
                parts.headers.insert(
                    super::header::IDEMPOTENCY_KEY,
                    super::header::to_header_value(&k),
                );
            }
            k
        }
    };
    let id = RecordKey::new(scope, key.into_string());

    // From here on the work runs in its own task: a client that disconnects
    // (dropping this future) cancels neither a claim in flight nor the handler, and
    // the record is always settled.
    let (tx, rx) = oneshot::channel();
    let guard = shared.in_flight.enter();
    let task = Task {
        shared: shared.clone(),
        policy,
        id,
        fp,
        held: Some(held),
        _in_flight: guard,
    };
    tokio::spawn(task.run(inner, parts, bytes, tx));
    match rx.await {
        Ok(r) => r,
        Err(_) => Ok(problem(
            Problem::new(ProblemKind::HandlerFailed)
                .detail("the request task ended without an answer"),
        )),
    }
}

/// The spawned part of a guarded request.
struct Task {
    shared: Arc<Shared>,
    policy: Arc<Policy>,
    id: RecordKey,
    fp: Fingerprint,
    held: Option<Held>,
    _in_flight: InFlightGuard,
}

type Reply<T, E> = oneshot::Sender<Answer<T, E>>;

impl Task {
    fn config(&self) -> &Config {
        &self.shared.config
    }

    async fn run<S, B, ResB>(
        mut self,
        inner: S,
        parts: http::request::Parts,
        bytes: Bytes,
        reply: Reply<ResB, S::Error>,
    ) where
        S: Service<Request<RequestBody<B>>, Response = Response<ResB>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        B: Send + 'static,
        ResB: Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        let mut retake = false;
        // Whether to watch for this key's response starting to stream in this process.
        let mut watch_live = true;
        loop {
            // A response for this key streaming in this process: follow it.
            if let Some(live) = self.shared.live.get(&self.id) {
                match self.join(&live, &parts.headers) {
                    Some(answer) => {
                        let _ = reply.send(Ok(answer));
                        return;
                    }
                    // Not joinable for this client (its coding, or it is ending): wait
                    // for the record through the guard instead.
                    None => watch_live = false,
                }
            }
            let guard = if retake {
                &self.policy.retake
            } else {
                &self.policy.guard
            };
            let begun = {
                // The lease's heartbeat is polled by this task (`execute`, `tee`).
                let begin =
                    guard.begin_driven(self.id.scope.clone(), self.id.key.clone(), Some(self.fp));
                if watch_live {
                    tokio::select! {
                        biased;
                        r = begin => r,
                        // The owner of this key started streaming in this process while
                        // we waited: stop waiting and join. (Safe to drop the claim: a
                        // live stream means the key is held, so no claim of ours can win.)
                        _ = self.shared.live.appeared(&self.id) => continue,
                    }
                } else {
                    begin.await
                }
            };
            let answer = match begun {
                Ok(Begin::Owner(lease)) => {
                    return self.execute(lease, inner, parts, bytes, reply).await;
                }
                Ok(Begin::Completed(replay)) => self.replay(replay.outcome(), &parts.headers),
                Ok(Begin::Failed(failure)) => {
                    // Only an operator settles an HTTP record as failed.
                    self.not_stored(
                        &NotStored {
                            status: 0,
                            at_ms: 0,
                            body_bytes: 0,
                            limit: 0,
                        },
                        Some(format!("it was settled as failed: {failure}")),
                    )
                }
                Ok(Begin::InProgress { .. }) => self.conflict(),
                Ok(Begin::Ambiguous(record)) => {
                    let lost_at = lease_until(&record);
                    let hold_end = lost_at.saturating_add(
                        u64::try_from(self.policy.ambiguous_hold.as_millis()).unwrap_or(u64::MAX),
                    );
                    if self.config().clock.now_ms() >= hold_end && !retake {
                        tracing::info!(record = %self.id, "ambiguous record past its hold: retaking");
                        retake = true;
                        continue;
                    }
                    self.ambiguous(&record, hold_end, None)
                }
                Err(e) => match self.guard_error(e) {
                    Ok(answer) => answer,
                    Err(FailOpen) => {
                        self.held = None;
                        let req = Request::from_parts(parts, Either::Left(Full::new(bytes)));
                        let _ = reply.send(pass_through(inner, req, Disposition::FailedOpen).await);
                        return;
                    }
                },
            };
            let _ = reply.send(Ok(answer));
            return;
        }
    }

    fn join<T>(&self, live: &Arc<Live>, headers: &HeaderMap) -> Option<Response<ResponseBody<T>>> {
        let observer = self.config().observer.clone();
        let on_cut_off = move || observer.event(Event::JoinerCutOff);
        match live.join(
            &self.fp,
            |c: Coding| encoding::accepts(headers, c),
            on_cut_off,
        ) {
            Join::Follow(stream) => {
                self.config().observer.event(Event::Joined);
                let res = Response::from_parts(live.head.to_parts(), ResponseBody::stream(stream));
                Some(with_disposition(res, Disposition::Joined))
            }
            Join::Mismatch => Some(self.mismatch()),
            Join::TooLarge => {
                let limit = self.policy.max_stored_response as u64;
                Some(self.not_stored(
                    &NotStored {
                        status: live.head.status,
                        at_ms: 0,
                        body_bytes: live.len(),
                        limit,
                    },
                    Some("it is still streaming to the first caller".into()),
                ))
            }
            // Wait for the record instead (the replay decodes it), or the record is
            // being written as the stream ends.
            Join::Unacceptable | Join::Ended => None,
        }
    }

    fn mismatch<T>(&self) -> Response<ResponseBody<T>> {
        self.config().observer.event(Event::Mismatch);
        problem(Problem::new(ProblemKind::KeyMismatch).detail(
            "this Idempotency-Key was used with a different request (method, path, query, media type or body)",
        ))
    }

    fn conflict<T>(&self) -> Response<ResponseBody<T>> {
        self.config().observer.event(Event::Conflict);
        problem(
            Problem::new(ProblemKind::RequestInProgress)
                .detail("a request with this Idempotency-Key is still being processed; retry later")
                .retry_after(self.config().conflict_retry_after),
        )
    }

    fn ambiguous<T>(
        &self,
        record: &Record,
        hold_end: u64,
        why: Option<&str>,
    ) -> Response<ResponseBody<T>> {
        self.config().observer.event(Event::AmbiguousRefused);
        let started = record.created_at;
        let lost = lease_until(record);
        let mut detail = format!(
            "an earlier attempt with this Idempotency-Key started at {} and its outcome was lost at {} (it may have run); it is not run again",
            http_date(started),
            http_date(lost),
        );
        if let Some(why) = why {
            detail.push_str(&format!(" ({why})"));
        }
        if self.policy.ambiguous_hold < self.policy.ttl {
            detail.push_str(&format!(
                ". A retry after {} runs it again; an operator can settle it now with `idemp records resolve`",
                http_date(hold_end)
            ));
        } else {
            detail.push_str(". An operator can settle it with `idemp records resolve`");
        }
        problem(
            Problem::new(ProblemKind::OutcomeAmbiguous)
                .detail(detail)
                .extension("attempt_started_at_ms", started)
                .extension("outcome_lost_at_ms", lost)
                .extension("attempts", record.attempts),
        )
    }

    fn not_stored<T>(&self, n: &NotStored, why: Option<String>) -> Response<ResponseBody<T>> {
        self.config().observer.event(Event::NotStoredRefused);
        let mut detail = String::from("this request was already executed");
        if n.at_ms > 0 {
            detail.push_str(&format!(" (it ended at {})", http_date(n.at_ms)));
        }
        if n.status > 0 {
            detail.push_str(&format!(" and answered {}", n.status));
        }
        if n.limit > 0 || n.body_bytes > 0 {
            detail.push_str(&format!(
                "; its response ({} bytes so far) is larger than the {}-byte limit of stored responses",
                n.body_bytes, n.limit
            ));
        }
        if let Some(why) = why {
            detail.push_str(&format!("; {why}"));
        }
        detail.push_str(". It cannot be replayed, and it is not run again");
        let mut p = Problem::new(ProblemKind::ResponseNotStored).detail(detail);
        if n.status > 0 {
            p = p.extension("executed_status", n.status);
        }
        if n.at_ms > 0 {
            p = p.extension("executed_at_ms", n.at_ms);
        }
        problem(p)
    }

    fn replay<T>(&self, outcome: &Outcome, request: &HeaderMap) -> Response<ResponseBody<T>> {
        match Recorded::from_outcome(outcome) {
            Ok(Recorded::Response(stored)) => {
                self.config().observer.event(Event::Replayed);
                let (parts, body) = stored.into_response_for(request).into_parts();
                let body = match body {
                    ReplayBody::Stored(b) => ResponseBody::full(b),
                    ReplayBody::Decoded(d) => ResponseBody::decoding(d),
                };
                with_disposition(Response::from_parts(parts, body), Disposition::Replayed)
            }
            Ok(Recorded::NotStored(n)) => self.not_stored(&n, None),
            Err(e) => {
                tracing::error!(record = %self.id, error = %e, "stored response unreadable");
                problem(Problem::new(ProblemKind::StoredResponseUnreadable).detail(e.to_string()))
            }
        }
    }

    /// A guard error as an answer, or the decision to fail open.
    fn guard_error<T>(&self, e: GuardError) -> Result<Response<ResponseBody<T>>, FailOpen> {
        let config = self.config();
        let observer = &config.observer;
        match e {
            GuardError::Mismatch { .. } => Ok(self.mismatch()),
            GuardError::Reconcile { id, message } => {
                tracing::warn!(record = %id, %message, "reconcile failed; the record stays ambiguous");
                let record = Record {
                    id,
                    fingerprint: Some(self.fp),
                    state: State::InProgress {
                        lease_until: config.clock.now_ms(),
                    },
                    token: 0,
                    attempts: 0,
                    created_at: config.clock.now_ms(),
                    updated_at: config.clock.now_ms(),
                    expires_at: None,
                };
                Ok(self.ambiguous(
                    &record,
                    0,
                    Some(&format!("the reconcile function failed: {message}")),
                ))
            }
            GuardError::InvalidKey(e) => {
                observer.event(Event::InvalidKey);
                Ok(problem(
                    Problem::new(ProblemKind::InvalidKey).detail(e.to_string()),
                ))
            }
            GuardError::Store(e)
                if !e.is_transient() && matches!(e, crate::store::StoreError::Invalid(_)) =>
            {
                // The store refuses this key (too long for it, a character it cannot
                // hold): the client's problem, not an outage.
                observer.event(Event::InvalidKey);
                Ok(problem(
                    Problem::new(ProblemKind::InvalidKey)
                        .detail(format!("the store refused this key: {e}")),
                ))
            }
            GuardError::Store(e) => {
                if config.fail_open {
                    tracing::warn!(error = %e, "idempotency store failed; passing through (fail open)");
                    observer.event(Event::FailedOpen);
                    return Err(FailOpen);
                }
                tracing::warn!(error = %e, "idempotency store failed; refusing the request (fail closed)");
                observer.event(Event::StoreUnavailable);
                Ok(problem(
                    Problem::new(ProblemKind::StoreUnavailable)
                        .detail(format!(
                            "the idempotency store did not answer ({e}); retry later"
                        ))
                        .retry_after(config.store_retry_after),
                ))
            }
            other => {
                tracing::error!(record = %self.id, error = %other, "unexpected guard error");
                Ok(problem(
                    Problem::new(ProblemKind::HandlerFailed).detail(other.to_string()),
                ))
            }
        }
    }

    /// Owns the key: runs the handler and settles the record from its response.
    async fn execute<S, B, ResB>(
        mut self,
        lease: Lease,
        mut inner: S,
        mut parts: http::request::Parts,
        bytes: Bytes,
        reply: Reply<ResB, S::Error>,
    ) where
        S: Service<Request<RequestBody<B>>, Response = Response<ResB>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ResB: Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        let observer = self.config().observer.clone();
        observer.event(Event::Claimed);
        let takeover = lease.takeover().is_some();
        if let Some(previous) = lease.takeover() {
            tracing::warn!(record = %self.id, previous_token = previous, "took over an expired lease: the earlier attempt is ambiguous");
            observer.event(Event::TakenOver);
        }
        if self.config().forward_key
            && !parts.headers.contains_key(super::header::IDEMPOTENCY_KEY)
            && let Ok(k) = Key::new(self.id.key.clone())
        {
            parts.headers.insert(
                super::header::IDEMPOTENCY_KEY,
                super::header::to_header_value(&k),
            );
        }
        let req = Request::from_parts(parts, Either::Left(Full::new(bytes)));
        let in_flight = self.shared.in_flight.clone();
        // The lease is renewed while the handler runs and the response streams: its
        // heartbeat is polled here, beside them, until the record is settled.
        let heartbeat = lease.heartbeat();
        let mut heartbeat = std::pin::pin!(heartbeat);
        let head = tokio::select! {
            biased;
            r = AssertUnwindSafe(inner.call(req)).catch_unwind() => r,
            never = heartbeat.as_mut() => match never {},
            () = in_flight.abandoned() => {
                self.settle_ambiguous(lease, "the server shut down while the handler ran").await;
                let _ = reply.send(Ok(problem(
                    Problem::new(ProblemKind::OutcomeAmbiguous)
                        .detail("the server shut down while this request ran; it may have run"),
                )));
                return;
            }
        };
        // The handler has the body now.
        self.held = None;
        let executed = |stored| Disposition::Executed { stored, takeover };
        let res = match head {
            Err(_panic) => {
                self.release(lease).await;
                let _ = reply.send(Ok(problem(
                    Problem::new(ProblemKind::HandlerFailed).detail("the handler panicked"),
                )));
                return;
            }
            Ok(Err(e)) => {
                self.release(lease).await;
                let _ = reply.send(Err(e));
                return;
            }
            Ok(Ok(res)) => res,
        };
        let (mut head, body) = res.into_parts();
        replay::strip_upstream_replayed(&mut head.headers);
        match head.extensions.get::<Delivery>() {
            Some(Delivery::NotSent) => {
                self.release(lease).await;
                let res = Response::from_parts(head, ResponseBody::inner(body));
                let _ = reply.send(Ok(with_disposition(res, executed(false))));
                return;
            }
            Some(Delivery::MaybeSent) => {
                self.settle_ambiguous(
                    lease,
                    "the request was sent and no definitive answer came back",
                )
                .await;
                let res = Response::from_parts(head, ResponseBody::inner(body));
                let _ = reply.send(Ok(with_disposition(res, executed(false))));
                return;
            }
            _ => {}
        }
        if !self.config().stored_statuses.contains(head.status) {
            self.release(lease).await;
            let res = Response::from_parts(head, ResponseBody::inner(body));
            let _ = reply.send(Ok(with_disposition(res, executed(false))));
            return;
        }
        self.tee(lease, head, body, reply, executed(true), heartbeat)
            .await;
    }

    /// Streams a response with a stored status to the client while recording it.
    async fn tee<ResB, E, H>(
        self,
        lease: Lease,
        head: http::response::Parts,
        body: ResB,
        reply: Reply<ResB, E>,
        disposition: Disposition,
        mut heartbeat: std::pin::Pin<&mut H>,
    ) where
        ResB: Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
        H: std::future::Future<Output = std::convert::Infallible>,
    {
        let config = self.config();
        let observer = config.observer.clone();
        let cap = self.policy.max_stored_response;
        let stored_head = StoredHead::capture(head.status, &head.headers, &config.replay_headers);
        let codings = encoding::content_codings(&head.headers).unwrap_or_default();
        let hint = body.size_hint();
        let live = Arc::new(Live::new(self.fp, stored_head, codings, cap, hint.exact()));
        self.shared.live.insert(self.id.clone(), live.clone());

        let (tx, rx) = mpsc::channel(TEE_FRAMES);
        let status = head.status;
        let res = Response::from_parts(head, ResponseBody::<ResB>::channel(rx, hint));
        let mut client = reply
            .send(Ok(with_disposition(res, disposition)))
            .is_ok()
            .then_some(tx);

        let mut body = std::pin::pin!(body);
        let in_flight = self.shared.in_flight.clone();
        let mut whole = true;
        let broke: Option<String> = loop {
            let frame = tokio::select! {
                biased;
                f = body.frame() => f.map(|r| r.map_err(|e| -> String { let e: BoxError = e.into(); e.to_string() })),
                never = heartbeat.as_mut() => match never {},
                () = in_flight.abandoned() => break Some(Truncated::Shutdown.to_string()),
            };
            match frame {
                None => break None,
                Some(Err(e)) => break Some(e),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        whole = live.push(data) && whole;
                    }
                    if let Some(tx) = &client {
                        let sent = tokio::select! {
                            biased;
                            r = tx.send(Ok(frame)) => r.is_ok(),
                            never = heartbeat.as_mut() => match never {},
                            () = in_flight.abandoned() => break Some(Truncated::Shutdown.to_string()),
                        };
                        if !sent {
                            observer.event(Event::ClientGone);
                            tracing::debug!(record = %self.id, "client gone mid-stream; reading the response to its end");
                            client = None;
                        }
                    }
                }
            }
        };
        match broke {
            None => {
                let len = live.len();
                match live.take_record() {
                    Some(record) if whole => {
                        self.complete(lease, Outcome::new(Codec::Postcard, record), Event::Stored)
                            .await;
                    }
                    _ => {
                        tracing::info!(record = %self.id, bytes = len, limit = cap, "response larger than the stored-response limit: recorded as executed, not stored");
                        let n = NotStored {
                            status: status.as_u16(),
                            at_ms: config.clock.now_ms(),
                            body_bytes: len,
                            limit: cap as u64,
                        };
                        self.complete(lease, n.to_outcome(), Event::NotStored).await;
                    }
                }
                live.finish(true);
                self.shared.live.remove(&self.id, &live);
                // The record is settled: the server may stop now; the client's end
                // (dropping the sender) follows.
                drop(self);
                drop(client);
            }
            Some(reason) => {
                observer.event(Event::Truncated);
                tracing::warn!(record = %self.id, %reason, "response broke mid-stream");
                self.settle_ambiguous(lease, &reason).await;
                live.finish(false);
                self.shared.live.remove(&self.id, &live);
                let err: BoxError = Box::new(Truncated::Upstream(reason));
                drop(self);
                if let Some(tx) = client {
                    let _ = tx.send(Err(err)).await;
                }
            }
        }
    }

    async fn complete(&self, lease: Lease, outcome: Outcome, event: Event) {
        let observer = &self.config().observer;
        match lease.complete_outcome(outcome).await {
            Ok(()) => observer.event(event),
            Err(GuardError::LeaseLost { token, .. }) => {
                tracing::warn!(record = %self.id, token, "completion fenced: the key was taken over while the handler ran");
                observer.event(Event::Fenced);
            }
            Err(e) => {
                tracing::error!(record = %self.id, error = %e, "could not record the response; the record stays in progress until its lease passes, then is ambiguous");
            }
        }
    }

    async fn release(&self, lease: Lease) {
        let observer = &self.config().observer;
        match lease.release().await {
            Ok(()) => observer.event(Event::Released),
            Err(GuardError::LeaseLost { .. }) => observer.event(Event::Fenced),
            Err(e) => {
                tracing::warn!(record = %self.id, error = %e, "could not release the claim; it becomes ambiguous when its lease passes");
            }
        }
    }

    /// The outcome was lost after the request may have reached the side effect.
    async fn settle_ambiguous(&self, lease: Lease, why: &str) {
        let observer = &self.config().observer;
        observer.event(Event::Ambiguous);
        if self.policy.retakes() {
            tracing::warn!(record = %self.id, why, "outcome lost; releasing (retake: the retry runs again)");
            self.release(lease).await;
            return;
        }
        tracing::warn!(record = %self.id, why, "outcome lost; the record is ambiguous");
        match lease.mark_ambiguous().await {
            Ok(()) => {}
            Err(GuardError::LeaseLost { .. }) => observer.event(Event::Fenced),
            Err(e) => {
                tracing::warn!(record = %self.id, error = %e, "could not mark the record ambiguous; it becomes so when its lease passes");
            }
        }
    }
}

/// The store is down and the layer fails open.
struct FailOpen;

fn lease_until(record: &Record) -> u64 {
    match record.state {
        State::InProgress { lease_until } => lease_until,
        _ => record.updated_at,
    }
}
