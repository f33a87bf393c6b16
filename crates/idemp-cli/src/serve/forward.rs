//! Forwarding to the upstream: the inner service behind the idempotency layer.
//!
//! Rewrites the URI onto the upstream (its base path prefixed to the request's
//! [normalised](idemp::http::path::normalize) path, which can never climb out of it),
//! strips hop-by-hop headers both ways, lets the client set `Host` (HTTP/1.1) or
//! `:authority` (HTTP/2) from the upstream URL, and appends the client to
//! `X-Forwarded-For`. Bodies stream in both directions.
//!
//! `https://` upstreams speak TLS through rustls (see [`tls`](super::tls)), with
//! HTTP/2 or HTTP/1.1 chosen by ALPN; `http://` upstreams get HTTP/1.1.
//!
//! ## Failures, and how far the request got
//!
//! An error response made here in place of an upstream answer carries an
//! [`idemp::http::Delivery`] so that the layer knows whether the upstream may have run
//! the request:
//!
//! | what happened | status | `Delivery` |
//! |---|---|---|
//! | connection refused, DNS failure, connect timeout, TLS handshake refused (untrusted certificate…) | 502 | `NotSent` |
//! | the connection closed before the request was written | 502 | `NotSent` |
//! | sent, then reset, closed early, or an answer that does not parse (too many header lines, a folded header, two `Content-Length`s…) | 502 | `MaybeSent` |
//! | sent, and no response head within `--upstream-timeout` | 504 | `MaybeSent` |
//!
//! Every detail names the real cause ("tcp connect error: Connection refused", "invalid
//! peer certificate: UnknownIssuer", "invalid HTTP header parsed"…).
//!
//! The response body is bounded in time too: it must end within `--upstream-timeout`
//! of the request's start, and no more than `--upstream-idle-timeout` may pass
//! between two chunks while the proxy waits for the upstream. Either limit, a reset or
//! a truncated body ends the body with an **error** ([`UpstreamBodyError`]), never a
//! clean end, so the client sees a broken response and the layer treats the outcome
//! as ambiguous.
//!
//! Response heads may have up to [`MAX_RESPONSE_HEADERS`] header lines (hyper's
//! default of 100 is below what some real APIs send behind a CDN).

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use idemp::http::path::{PathError, normalize};
use idemp::http::replay::strip_hop_by_hop;
use idemp::http::{Delivery, Problem, ProblemKind};
use tokio::time::{Instant, Sleep};

use super::tls::{UpstreamConnector, UpstreamTls};

/// A type-erased error.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The most header lines accepted in an upstream's response head.
pub const MAX_RESPONSE_HEADERS: usize = 512;

/// The largest HTTP/2 header list accepted from an upstream (bytes).
pub const MAX_RESPONSE_HEADER_LIST: u32 = 256 << 10;

/// The longest wait for a connection (TCP and TLS) to the upstream (and at most 80%
/// of `--upstream-timeout`).
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The client's address, put into request extensions by the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// The body the forwarder answers with: a problem (`Left`) or the upstream's body,
/// streamed under the time limits (`Right`).
pub type ForwardBody = Either<Full<Bytes>, UpstreamBody>;

/// What a [`Forward`] needs to know.
#[derive(Clone, Debug)]
pub struct ForwardOptions {
    /// The upstream base URL (`http://` or `https://`, checked by the config).
    pub upstream: Uri,
    /// The whole exchange, response body included (`--upstream-timeout`).
    pub timeout: Duration,
    /// The longest pause between two chunks of a response body
    /// (`--upstream-idle-timeout`).
    pub idle_timeout: Duration,
    /// How `https://` upstreams are trusted.
    pub tls: UpstreamTls,
}

impl ForwardOptions {
    /// Options with the defaults of `idemp serve` (120 s exchange, 60 s idle,
    /// webpki roots).
    pub fn new(upstream: Uri) -> Self {
        Self {
            upstream,
            timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(60),
            tls: UpstreamTls::default(),
        }
    }
}

/// The forwarding service. Cheap to clone (one reference count): the middleware
/// and the server clone it for every request.
#[derive(Clone)]
pub struct Forward {
    inner: Arc<ForwardInner>,
}

/// What a [`Forward`] shares between its clones.
pub struct ForwardInner {
    client: Client<UpstreamConnector, UnsyncBoxBody<Bytes, BoxError>>,
    scheme: Scheme,
    authority: Authority,
    base_path: Arc<str>,
    timeout: Duration,
    idle_timeout: Duration,
}

impl std::ops::Deref for Forward {
    type Target = ForwardInner;
    fn deref(&self) -> &ForwardInner {
        &self.inner
    }
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field(
                "upstream",
                &format_args!("{}://{}", self.scheme, self.authority),
            )
            .field("base_path", &self.base_path)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Forward {
    /// A forwarder to `options.upstream`. Reads the `--upstream-ca` files and, for
    /// `--upstream-roots native`, the system store.
    pub fn new(options: &ForwardOptions) -> anyhow::Result<Self> {
        let upstream = &options.upstream;
        let authority = upstream
            .authority()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("upstream `{upstream}` has no host"))?;
        let scheme = upstream.scheme().cloned().unwrap_or(Scheme::HTTP);
        // Below the exchange deadline, so that a connect that never completes is
        // reported as such (not sent) rather than as a timeout of the exchange.
        let connector = UpstreamConnector::new(
            &options.tls,
            &scheme,
            options.timeout.mul_f64(0.8).min(MAX_CONNECT_TIMEOUT),
        )?;
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .http1_max_headers(MAX_RESPONSE_HEADERS)
            .http2_max_header_list_size(MAX_RESPONSE_HEADER_LIST)
            .build(connector);
        Ok(Self {
            inner: Arc::new(ForwardInner {
                client,
                scheme,
                authority,
                base_path: upstream.path().trim_end_matches('/').into(),
                timeout: options.timeout,
                idle_timeout: options.idle_timeout,
            }),
        })
    }

    /// The upstream URI of a request: the base path, then the request's normalised
    /// path, then its query as sent.
    pub fn upstream_uri(&self, uri: &Uri) -> Result<Uri, UpstreamUriError> {
        let path = normalize(uri.path()).map_err(UpstreamUriError::Path)?;
        let mut pq = String::with_capacity(self.base_path.len() + path.len() + 16);
        pq.push_str(&self.base_path);
        if path != "/" || self.base_path.is_empty() {
            pq.push_str(&path);
        }
        if pq.is_empty() {
            pq.push('/');
        }
        if let Some(q) = uri.query() {
            pq.push('?');
            pq.push_str(q);
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|e| UpstreamUriError::Build(e.to_string()))
    }
}

/// Why a request has no upstream URI.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamUriError {
    /// The path has no normal form (it climbs above the base path, or has a
    /// malformed escape).
    #[error("{0}")]
    Path(PathError),
    /// The URI does not build (should not happen for a parsed request).
    #[error("cannot build the upstream URI: {0}")]
    Build(String),
}

/// The normal form of a request URI (path normalised, query kept as sent), or why
/// it has none. The accept loop applies it before the layer sees the request, so
/// that keying and forwarding agree.
pub fn normalize_request_uri(uri: &Uri) -> Result<Option<Uri>, PathError> {
    if idemp::http::path::is_normal(uri.path()) {
        return Ok(None);
    }
    let path = normalize(uri.path())?;
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let Ok(pq) = PathAndQuery::try_from(pq) else {
        return Ok(None);
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq);
    Ok(Uri::from_parts(parts).ok())
}

/// The 400 problem (`invalid-path`) for a path with no normal form.
pub fn invalid_path_response(e: &PathError) -> Response<Bytes> {
    let detail = match e {
        PathError::AboveRoot => {
            "the path climbs above the upstream's base path with `..`; it is never forwarded"
                .to_owned()
        }
        other => format!("the request path is invalid: {other}"),
    };
    Problem::new(ProblemKind::InvalidPath)
        .detail(detail)
        .to_response()
}

fn problem(p: Problem, delivery: Delivery) -> Response<ForwardBody> {
    let mut res = p.to_response().map(|b| Either::Left(Full::new(b)));
    res.extensions_mut().insert(delivery);
    res
}

impl<B> tower::Service<Request<B>> for Forward
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ForwardBody>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(req).await) })
    }
}

impl Forward {
    async fn forward<B>(self, req: Request<B>) -> Response<ForwardBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let start = Instant::now();
        let deadline = start + self.timeout;
        let (mut parts, body) = req.into_parts();
        parts.uri = match self.upstream_uri(&parts.uri) {
            Ok(u) => u,
            Err(UpstreamUriError::Path(e)) => {
                let mut res = invalid_path_response(&e).map(|b| Either::Left(Full::new(b)));
                res.extensions_mut().insert(Delivery::NotSent);
                return res;
            }
            Err(e) => {
                return problem(
                    Problem::new(ProblemKind::UpstreamUnreachable).detail(e.to_string()),
                    Delivery::NotSent,
                );
            }
        };
        // The client picks the version the connection negotiated (ALPN).
        parts.version = http::Version::HTTP_11;
        let original_host = parts.headers.remove(header::HOST);
        strip_hop_by_hop(&mut parts.headers);
        if let Some(ClientAddr(addr)) = parts.extensions.get::<ClientAddr>().copied() {
            let ip = addr.ip().to_string();
            let xff = match parts.headers.get("x-forwarded-for").map(|v| v.to_str()) {
                Some(Ok(prev)) if !prev.is_empty() => format!("{prev}, {ip}"),
                _ => ip,
            };
            if let Ok(v) = HeaderValue::from_str(&xff) {
                parts.headers.insert("x-forwarded-for", v);
            }
        }
        if let Some(host) = original_host {
            parts.headers.insert("x-forwarded-host", host);
        }
        // What the client spoke to this proxy (its listener is plain HTTP), whatever
        // the scheme of the upstream.
        parts
            .headers
            .insert("x-forwarded-proto", HeaderValue::from_static("http"));
        let req = Request::from_parts(parts, body.map_err(Into::into).boxed_unsync());

        match tokio::time::timeout_at(deadline, self.client.request(req)).await {
            Ok(Ok(res)) => {
                let (mut parts, body) = res.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let body = UpstreamBody::new(
                    body,
                    deadline,
                    self.timeout,
                    self.idle_timeout,
                    self.authority.clone(),
                );
                Response::from_parts(parts, Either::Right(body))
            }
            Ok(Err(e)) => {
                let failure = classify(&e, &self.authority);
                tracing::warn!(
                    upstream = %self.authority,
                    delivery = ?failure.delivery,
                    "upstream request failed: {}", failure.detail
                );
                let mut p = Problem::new(ProblemKind::UpstreamUnreachable).detail(failure.detail);
                if failure.delivery == Delivery::NotSent {
                    p = p.retry_after(Duration::from_secs(1));
                }
                problem(p, failure.delivery)
            }
            Err(_) => {
                tracing::warn!(upstream = %self.authority, timeout = ?self.timeout, "upstream timed out");
                problem(
                    Problem::new(ProblemKind::UpstreamTimeout).detail(format!(
                        "the request was sent to the upstream {}, which sent no response within {:?} (--upstream-timeout); it may have been executed",
                        self.authority, self.timeout
                    )),
                    Delivery::MaybeSent,
                )
            }
        }
    }
}

/// How a failed upstream call is reported: how far the request got, and the real
/// cause in words.
#[derive(Debug)]
pub struct Failure {
    /// Whether the upstream may have received the request.
    pub delivery: Delivery,
    /// What happened, naming the upstream and the cause (with a hint for TLS
    /// failures).
    pub detail: String,
}

/// Every error of a chain, descending into `io::Error`s that wrap another error
/// (their `source()` skips the wrapped error itself).
fn chain<'a>(top: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut out = Vec::new();
    let mut next = Some(top);
    while let Some(e) = next {
        if out.len() > 16 {
            break;
        }
        out.push(e);
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    out
}

/// The messages of a chain joined with ": ", each said once.
fn cause_text(errors: &[&(dyn StdError + 'static)]) -> String {
    let mut out = String::new();
    for e in errors {
        let msg = e.to_string();
        if msg.is_empty() || out.contains(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    if out.is_empty() {
        "unknown error".to_owned()
    } else {
        out
    }
}

/// The kind of a hyper-util client error, from its `client error (Kind)` text (the
/// kinds are not public).
fn legacy_kind(e: &hyper_util::client::legacy::Error) -> String {
    let text = e.to_string();
    text.strip_prefix("client error (")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or(&text)
        .to_owned()
}

/// Classifies an error of a hyper-util client built on
/// [`UpstreamConnector`]: never sent (connect, TLS,
/// cancelled before writing) or maybe sent (everything after the request left).
pub fn classify(e: &hyper_util::client::legacy::Error, upstream: &Authority) -> Failure {
    let below: Vec<&(dyn StdError + 'static)> = e.source().map(chain).unwrap_or_default();
    let cause = cause_text(&below);
    let tls = below.iter().find_map(|e| e.downcast_ref::<rustls::Error>());
    let io_kind = below
        .iter()
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    let hyper_err = below.iter().find_map(|e| e.downcast_ref::<hyper::Error>());

    if e.is_connect() {
        let detail = if let Some(t) = tls {
            use rustls::CertificateError as C;
            let hint = match t {
                rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
                    " (trust its CA with --upstream-ca FILE, or check --upstream-roots)"
                }
                rustls::Error::InvalidCertificate(
                    C::NotValidForName | C::NotValidForNameContext { .. },
                ) => " (the certificate must name the host of --upstream)",
                _ => "",
            };
            format!("the TLS handshake with the upstream {upstream} failed: {cause}{hint}")
        } else {
            format!("cannot connect to the upstream {upstream}: {cause}")
        };
        return Failure {
            delivery: Delivery::NotSent,
            detail,
        };
    }
    let kind = legacy_kind(e);
    if matches!(
        kind.as_str(),
        "Canceled"
            | "ChannelClosed"
            | "UserUnsupportedRequestMethod"
            | "UserUnsupportedVersion"
            | "UserAbsoluteUriRequired"
    ) {
        return Failure {
            delivery: Delivery::NotSent,
            detail: format!("the request could not be sent to the upstream {upstream}: {cause}"),
        };
    }
    let what = match (hyper_err, io_kind) {
        (Some(h), _) if h.is_parse_too_large() => format!(
            "sent a response head that is too large (more than {MAX_RESPONSE_HEADERS} header lines or too many bytes)"
        ),
        (Some(h), _) if h.is_parse() || h.is_parse_status() => {
            "sent a response that cannot be parsed".to_owned()
        }
        (Some(h), _) if h.is_incomplete_message() => {
            "closed the connection before a complete response".to_owned()
        }
        (_, Some(std::io::ErrorKind::ConnectionReset)) => "reset the connection".to_owned(),
        (Some(h), _) if h.is_timeout() => "timed out".to_owned(),
        _ => "failed".to_owned(),
    };
    Failure {
        delivery: Delivery::MaybeSent,
        detail: format!(
            "the request was sent to the upstream {upstream}, which then {what}: {cause}; it may have been executed"
        ),
    }
}

/// Why an upstream response body ended with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamBodyErrorKind {
    /// The whole exchange passed `--upstream-timeout`.
    Timeout,
    /// No chunk within `--upstream-idle-timeout`.
    Idle,
    /// The upstream reset, truncated or garbled the body.
    Broken,
}

/// An upstream response body that did not end cleanly.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct UpstreamBodyError {
    kind: UpstreamBodyErrorKind,
    message: String,
}

impl UpstreamBodyError {
    /// Why the body ended.
    pub fn kind(&self) -> UpstreamBodyErrorKind {
        self.kind
    }
}

/// An upstream response body under the exchange deadline and the idle limit.
pub struct UpstreamBody {
    inner: Incoming,
    deadline_at: Instant,
    /// The timers are made the first time the body waits for the upstream: a small
    /// body that came with its head never needs one.
    deadline: Option<Pin<Box<Sleep>>>,
    idle: Option<Pin<Box<Sleep>>>,
    idle_armed: bool,
    timeout: Duration,
    idle_timeout: Duration,
    upstream: Authority,
    done: bool,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("upstream", &self.upstream)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl UpstreamBody {
    fn new(
        inner: Incoming,
        deadline: Instant,
        timeout: Duration,
        idle_timeout: Duration,
        upstream: Authority,
    ) -> Self {
        Self {
            inner,
            deadline_at: deadline,
            deadline: None,
            idle: None,
            idle_armed: false,
            timeout,
            idle_timeout,
            upstream,
            done: false,
        }
    }

    fn fail(&mut self, kind: UpstreamBodyErrorKind, message: String) -> UpstreamBodyError {
        self.done = true;
        tracing::warn!(upstream = %self.upstream, "upstream response body failed: {message}");
        UpstreamBodyError { kind, message }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle_armed = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let cause = cause_text(&chain(&e));
                let what = if e.is_incomplete_message() {
                    "was cut short (the connection closed before its end)"
                } else if e.is_parse() {
                    "is malformed"
                } else {
                    "failed"
                };
                let msg = format!(
                    "the response body from the upstream {} {what}: {cause}",
                    this.upstream
                );
                Poll::Ready(Some(Err(this.fail(UpstreamBodyErrorKind::Broken, msg))))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let at = this.deadline_at;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                if deadline.as_mut().poll(cx).is_ready() {
                    let msg = format!(
                        "the response body from the upstream {} did not end within {:?} (--upstream-timeout)",
                        this.upstream, this.timeout
                    );
                    return Poll::Ready(Some(Err(this.fail(UpstreamBodyErrorKind::Timeout, msg))));
                }
                // The idle clock runs while this body waits for the upstream, not while
                // its reader is busy elsewhere.
                let idle_at = || Instant::now() + this.idle_timeout;
                let idle = match &mut this.idle {
                    Some(idle) => {
                        if !this.idle_armed {
                            idle.as_mut().reset(idle_at());
                        }
                        idle
                    }
                    None => this
                        .idle
                        .insert(Box::pin(tokio::time::sleep_until(idle_at()))),
                };
                this.idle_armed = true;
                if idle.as_mut().poll(cx).is_ready() {
                    let msg = format!(
                        "the upstream {} sent no response data for {:?} (--upstream-idle-timeout)",
                        this.upstream, this.idle_timeout
                    );
                    return Poll::Ready(Some(Err(this.fail(UpstreamBodyErrorKind::Idle, msg))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(upstream: &str) -> Forward {
        Forward::new(&ForwardOptions::new(upstream.parse().unwrap())).unwrap()
    }

    #[test]
    fn joins_the_base_path() {
        let f = fwd("http://h:1/v1/");
        let uri = |s: &str| f.upstream_uri(&s.parse().unwrap()).map(|u| u.to_string());
        assert_eq!(uri("/messages?x=1").unwrap(), "http://h:1/v1/messages?x=1");
        assert_eq!(uri("/").unwrap(), "http://h:1/v1");
        assert_eq!(
            uri("//messages/./a/../b/").unwrap(),
            "http://h:1/v1/messages/b"
        );
        assert!(matches!(
            f.upstream_uri(&"/../admin".parse().unwrap()),
            Err(UpstreamUriError::Path(PathError::AboveRoot))
        ));
        let g = fwd("http://h:1");
        assert_eq!(
            g.upstream_uri(&"/a".parse().unwrap()).unwrap(),
            "http://h:1/a"
        );
        assert_eq!(
            g.upstream_uri(&"/".parse().unwrap()).unwrap(),
            "http://h:1/"
        );
        let s = fwd("https://api.example.com/base");
        assert_eq!(
            s.upstream_uri(&"/%63harges?a=1&a=2".parse().unwrap())
                .unwrap(),
            "https://api.example.com/base/charges?a=1&a=2"
        );
    }

    #[test]
    fn request_uris_are_normalised_in_place() {
        let n = |s: &str| normalize_request_uri(&s.parse().unwrap());
        assert_eq!(n("/v1/charges?x=1").unwrap(), None, "already normal");
        assert_eq!(
            n("//v1/%63harges/?x=%2e").unwrap().unwrap(),
            "/v1/charges?x=%2e"
        );
        assert_eq!(n("/a/../../b"), Err(PathError::AboveRoot));
    }
}
