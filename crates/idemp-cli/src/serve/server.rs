//! The HTTP server of `idemp serve`: accepting connections, their limits, and
//! shutdown.
//!
//! Every connection is watched, so that whoever can connect cannot exhaust the proxy:
//!
//! | limit | flag | what happens |
//! |---|---|---|
//! | a request head must arrive whole within | `--header-timeout` (10 s) | the connection is closed |
//! | a connection with no request may stay open | `--idle-timeout` (60 s) | the connection is closed |
//! | a request body must arrive within, from the end of its head | `--body-timeout` (60 s) | the body fails (the layer answers, nothing is claimed or forwarded whole) and the connection is closed |
//! | connections open at once | `--max-connections` (4096) | the excess gets `503` + `Connection: close` at once, never a stall |
//!
//! The accept loop survives running out of file descriptors: it keeps one in reserve,
//! and when `accept` fails for want of descriptors it frees the reserve, accepts the
//! waiting connection, refuses it, and takes the reserve back. At start the soft
//! `RLIMIT_NOFILE` is raised to the hard limit.
//!
//! On shutdown the listener closes; connections with no request in progress (idle
//! keep-alives, half-sent heads) are closed at once; requests in progress finish
//! (their connections close after the response) within the shutdown timeout.
//!
//! HTTP/2 connections (prior knowledge) get the idle limit between requests but no
//! head limit: their frames are not request heads.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, Sleep};

use super::config::Limits;
use super::forward::BoxError;

/// Most refusals (503 to connections over the cap) being written at once; beyond,
/// excess connections are closed without a word.
const MAX_REFUSING: usize = 256;

/// The request body handed to the handler: the client's, under `--body-timeout`.
pub struct TimedBody {
    inner: Incoming,
    deadline: Instant,
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    failed: bool,
}

impl std::fmt::Debug for TimedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedBody")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// A request body that did not arrive within `--body-timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?} (--body-timeout)")]
pub struct BodyTimeout(Duration);

impl TimedBody {
    fn new(inner: Incoming, limit: Duration) -> Self {
        Self {
            inner,
            deadline: Instant::now() + limit,
            limit,
            sleep: None,
            failed: false,
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => Poll::Ready(r.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let deadline = this.deadline;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.as_mut().poll(cx).is_ready() {
                    this.failed = true;
                    return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.limit)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a connection is doing, shared by its socket, its service and its watcher.
#[derive(Debug)]
struct ConnState {
    /// Requests whose response is not finished.
    active: AtomicUsize,
    /// Bytes arrived while no request was active: a head has begun.
    head_begun: AtomicBool,
    /// The connection speaks HTTP/2 (its first bytes were the preface).
    h2: AtomicBool,
    /// Whether the first bytes were seen.
    sniffed: AtomicBool,
    times: Mutex<Times>,
}

#[derive(Debug, Clone, Copy)]
struct Times {
    /// When the connection last had no request in progress.
    idle_since: Instant,
    /// When the first byte of the current head arrived.
    head_at: Instant,
}

impl ConnState {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            active: AtomicUsize::new(0),
            head_begun: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            sniffed: AtomicBool::new(false),
            times: Mutex::new(Times {
                idle_since: now,
                head_at: now,
            }),
        }
    }

    fn times(&self) -> Times {
        match self.times.lock() {
            Ok(t) => *t,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    fn set_times(&self, f: impl FnOnce(&mut Times)) {
        match self.times.lock() {
            Ok(mut t) => f(&mut t),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Bytes arrived from the client.
    fn on_read(&self, first: &[u8]) {
        if !self.sniffed.swap(true, Ordering::AcqRel) && first.starts_with(b"PRI * HTTP/2") {
            self.h2.store(true, Ordering::Release);
        }
        if self.active.load(Ordering::Acquire) == 0
            && !self.h2.load(Ordering::Acquire)
            && !self.head_begun.swap(true, Ordering::AcqRel)
        {
            self.set_times(|t| t.head_at = Instant::now());
        }
    }

    /// A request head arrived whole: the service is called.
    fn enter(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.head_begun.store(false, Ordering::Release);
        Active(self.clone())
    }

    /// When the connection must be closed if nothing changes, and why.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, &'static str)> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let t = self.times();
        if self.head_begun.load(Ordering::Acquire) {
            Some((t.head_at + limits.header_timeout, "header"))
        } else {
            Some((t.idle_since + limits.idle_timeout, "idle"))
        }
    }

    /// When the watcher must look at the connection next, seen at `now`.
    ///
    /// Neither a request starting or ending nor a head beginning wakes the watcher
    /// (that was two wake-ups and two timers per request): none of them can bring a
    /// deadline closer than `now + header_timeout` or `now + idle_timeout` (a head
    /// that begins later has its deadline later; a request that ends later starts
    /// its idle time later). So the watcher sleeps until the current deadline, or
    /// for the shorter of the two limits when that comes first, and then looks
    /// again.
    fn next_check(&self, limits: &Limits, now: Instant) -> Instant {
        let horizon = now
            + (limits.header_timeout)
                .min(limits.idle_timeout)
                .max(Duration::from_millis(1));
        match self.deadline(limits) {
            Some((at, _)) => at.min(horizon),
            None => horizon,
        }
    }
}

/// One request in progress on a connection (dropped when its response ends).
struct Active(Arc<ConnState>);

impl Drop for Active {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.head_begun.store(false, Ordering::Release);
            self.0.set_times(|t| t.idle_since = Instant::now());
        }
    }
}

/// A response body that keeps its request counted as in progress until it ends.
pub struct Tracked<B> {
    inner: Pin<Box<B>>,
    active: Option<Active>,
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let r = this.inner.as_mut().poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.active = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client socket, reporting the bytes it reads to its [`ConnState`].
struct Watched {
    stream: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.state.on_read(&buf.filled()[before..]);
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Serves `listener` with `handler` until `stop` turns true, then closes idle
/// connections, lets requests in progress finish for up to `grace`, and returns.
pub async fn run<H, F, B>(
    listener: TcpListener,
    handler: H,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) where
    H: Fn(Request<TimedBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    raise_fd_limit(limits.max_connections);
    let permits = limits.max_connections.min(Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(permits));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let (kill, killed) = watch::channel(false);
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let mut reserve = Reserve::new();
    let mut warned = Warned::default();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if is_out_of_descriptors(&e) {
                    warned.warn("out of file descriptors: refusing connections", &e);
                    reserve.refuse_one(&listener).await;
                } else {
                    warned.warn("accept failed", &e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warned.warn(
                "--max-connections reached: refusing connections",
                &io::Error::other(format!("{} connections open", limits.max_connections)),
            );
            refuse(stream, &refusing);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = connection(
            stream,
            peer,
            handler.clone(),
            limits,
            builder.clone(),
            stop.clone(),
            killed.clone(),
        );
        tokio::spawn(async move {
            conn.await;
            drop(slot);
        });
    }
    drop(listener);
    reserve.release();
    tracing::info!("shutting down: closing idle connections, waiting for requests in progress");
    let all_closed = slots.acquire_many(u32::try_from(permits).unwrap_or(u32::MAX));
    if tokio::time::timeout(grace, all_closed).await.is_err() {
        tracing::warn!(
            ?grace,
            open = permits - slots.available_permits(),
            "connections still open after the shutdown timeout: closing them"
        );
        let _ = kill.send(true);
    }
}

/// Serves one connection under the limits.
async fn connection<H, F, B>(
    stream: TcpStream,
    peer: SocketAddr,
    handler: H,
    limits: Limits,
    builder: hyper_util::server::conn::auto::Builder<TokioExecutor>,
    mut stop: watch::Receiver<bool>,
    mut killed: watch::Receiver<bool>,
) where
    H: Fn(Request<TimedBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let state = Arc::new(ConnState::new());
    let io = TokioIo::new(Watched {
        stream,
        state: state.clone(),
    });
    let svc_state = state.clone();
    let body_timeout = limits.body_timeout;
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let active = svc_state.enter();
        let handler = handler.clone();
        async move {
            let req = req.map(|b| TimedBody::new(b, body_timeout));
            let res = handler(req, peer).await;
            Ok::<_, Infallible>(res.map(|inner| Tracked {
                inner: Box::pin(inner),
                active: Some(active),
            }))
        }
    });
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let mut stopping = *stop.borrow();
    // One timer watches the limits, re-armed only when it fires: requests starting
    // and ending do not wake this task (see `ConnState::next_check`).
    let watch = tokio::time::sleep_until(state.next_check(&limits, Instant::now()));
    tokio::pin!(watch);
    loop {
        if stopping {
            if state.active.load(Ordering::Acquire) == 0 {
                tracing::debug!(client = %peer, "shutdown: closing a connection with no request in progress");
                return;
            }
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = killed.changed() => {}
            }
            return;
        }
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, client = %peer, "connection ended with an error");
                }
                return;
            }
            () = watch.as_mut() => {
                let now = Instant::now();
                if let Some((at, why)) = state.deadline(&limits)
                    && at <= now
                {
                    let flag = if why == "header" { "--header-timeout" } else { "--idle-timeout" };
                    tracing::debug!(client = %peer, "closing the connection: {why} limit ({flag}) reached");
                    return;
                }
                watch.as_mut().reset(state.next_check(&limits, now));
            }
            _ = stop.changed() => stopping = true,
        }
    }
}

/// The answer to a connection over `--max-connections`.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/problem+json\r\n\
cache-control: no-store\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 168\r\n\r\n\
{\"type\":\"https://idemp.dev/problems/too-many-connections\",\"title\":\"Too many connections\",\"status\":503,\"detail\":\"the proxy has reached --max-connections; retry shortly\"}";

/// Refuses a connection over the cap: 503 and close, in a short task (bounded in
/// number and time), or at once when too many refusals are being written.
fn refuse(mut stream: TcpStream, refusing: &Arc<Semaphore>) {
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        drop(stream);
        return;
    };
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = stream.write_all(REFUSAL).await;
            let _ = stream.shutdown().await;
            // Read what the client sent, so that closing does not reset the
            // connection before it reads the answer.
            let mut sink = [0u8; 4096];
            loop {
                match tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        drop(permit);
    });
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// One file descriptor kept in reserve, to refuse a connection when there are none.
struct Reserve(Option<std::fs::File>);

impl Reserve {
    fn new() -> Self {
        Self(Self::open())
    }

    fn open() -> Option<std::fs::File> {
        std::fs::File::open(if cfg!(unix) { "/dev/null" } else { "NUL" }).ok()
    }

    fn release(&mut self) {
        self.0 = None;
    }

    /// Frees the reserve, accepts and closes one waiting connection, takes the
    /// reserve back; without a reserve, backs off a little.
    async fn refuse_one(&mut self, listener: &TcpListener) {
        if self.0.take().is_some() {
            if let Ok(Ok((stream, _))) =
                tokio::time::timeout(Duration::from_millis(5), listener.accept()).await
            {
                let _ = stream.try_write(REFUSAL);
                drop(stream);
            }
            self.0 = Self::open();
        }
        if self.0.is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Rate-limits a repeated warning to one a second.
#[derive(Default)]
struct Warned {
    last: Option<Instant>,
    suppressed: u64,
}

impl Warned {
    fn warn(&mut self, what: &str, e: &io::Error) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(error = %e, suppressed = self.suppressed, "{what}");
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Raises the soft limit on open files to the hard limit, and warns when
/// `--max-connections` cannot fit under it.
fn raise_fd_limit(max_connections: usize) {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write the struct passed by pointer.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return;
            }
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim = raised;
                }
            }
        }
        // Each connection may also hold one to the upstream, plus the store's.
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
        let limit = lim.rlim_cur as u64;
        let needed = (max_connections as u64)
            .saturating_mul(2)
            .saturating_add(64);
        if limit < needed {
            tracing::warn!(
                max_connections,
                open_files_limit = limit,
                "the open-files limit is below what --max-connections may need; connections beyond it are refused (raise `ulimit -n`)"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = max_connections;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_well_formed_response() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), len);
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["status"], 503);
    }

    #[tokio::test]
    async fn deadlines_follow_the_connection_state() {
        let limits = Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        };
        let s = Arc::new(ConnState::new());
        let (at, why) = s.deadline(&limits).unwrap();
        assert_eq!(why, "idle");
        assert!(at > Instant::now() + Duration::from_secs(50));
        s.on_read(b"POST / HT");
        assert_eq!(s.deadline(&limits).unwrap().1, "header");
        let active = s.enter();
        assert!(
            s.deadline(&limits).is_none(),
            "no limit while a request runs"
        );
        drop(active);
        assert_eq!(s.deadline(&limits).unwrap().1, "idle");

        // The watcher is not woken by any of this: from any state it looks again by
        // the shorter limit from now, or at the deadline when that comes first.
        let now = Instant::now();
        let s = Arc::new(ConnState::new());
        let idle_at = s.deadline(&limits).unwrap().0;
        assert_eq!(s.next_check(&limits, now), now + limits.header_timeout);
        s.on_read(b"POST / HT");
        let head_at = s.deadline(&limits).unwrap().0;
        assert_eq!(
            s.next_check(&limits, now),
            head_at.min(now + limits.header_timeout)
        );
        let active = s.enter();
        assert_eq!(s.next_check(&limits, now), now + limits.header_timeout);
        drop(active);
        let short = Limits {
            idle_timeout: Duration::from_secs(1),
            ..limits
        };
        let idle_at_short = s.deadline(&short).unwrap().0;
        assert!(idle_at_short < now + Duration::from_secs(2));
        assert_eq!(
            s.next_check(&short, now),
            idle_at_short.min(now + short.idle_timeout)
        );
        assert!(idle_at > now);

        let h2 = ConnState::new();
        h2.on_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert_eq!(
            h2.deadline(&limits).unwrap().1,
            "idle",
            "h2 frames are not heads"
        );
    }
}
