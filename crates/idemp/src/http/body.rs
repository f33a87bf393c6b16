//! The response body the middleware returns.
//!
//! One type for every path a response can take: the inner service's own body
//! (requests passed through, or whose record was released), a response streamed
//! from the inner service through the layer's tee, a duplicate following a live
//! stream, a replay from the store (decoded when the client needs it), or a problem.
//! A stream that breaks mid-way ends with an error, never a clean end: hyper then
//! aborts the connection, so the client sees a truncated response.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use super::encoding::DecodingBody;

/// A type-erased error, as tower and hyper use.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a guarded response ended before its end (the client sees a truncated
/// response).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Truncated {
    /// The inner service's body failed after the head was sent.
    #[error("the response body broke mid-stream: {0}")]
    Upstream(String),
    /// A duplicate following a live stream fell too far behind it.
    #[error("this duplicate fell too far behind the live response it joined and was cut off")]
    Lagged,
    /// The server is shutting down.
    #[error("the server shut down before the response ended")]
    Shutdown,
}

pub(crate) type FrameResult = Result<Frame<Bytes>, BoxError>;
pub(crate) type FrameStream = Pin<Box<dyn Stream<Item = FrameResult> + Send>>;

/// The body of every response of the middleware (see the [module docs](self)).
pub struct ResponseBody<B> {
    kind: Kind<B>,
}

enum Kind<B> {
    Full(Option<Bytes>),
    Inner(Pin<Box<B>>),
    Channel {
        rx: mpsc::Receiver<FrameResult>,
        hint: SizeHint,
        done: bool,
    },
    Stream(FrameStream),
    Decoding(Pin<Box<DecodingBody>>),
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Full(_) => "full",
            Kind::Inner(_) => "inner",
            Kind::Channel { .. } => "tee",
            Kind::Stream(_) => "joined",
            Kind::Decoding(_) => "decoding",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

impl<B> ResponseBody<B> {
    /// A body of these bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self {
            kind: Kind::Full(Some(bytes.into())),
        }
    }
    /// The inner service's own body, untouched.
    pub fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner(Box::pin(body)),
        }
    }
    pub(crate) fn channel(rx: mpsc::Receiver<FrameResult>, hint: SizeHint) -> Self {
        Self {
            kind: Kind::Channel {
                rx,
                hint,
                done: false,
            },
        }
    }
    pub(crate) fn stream(s: FrameStream) -> Self {
        Self {
            kind: Kind::Stream(s),
        }
    }
    pub(crate) fn decoding(d: DecodingBody) -> Self {
        Self {
            kind: Kind::Decoding(Box::pin(d)),
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Inner(body) => body.as_mut().poll_frame(cx).map_err(Into::into),
            Kind::Channel { rx, done, .. } => {
                if *done {
                    return Poll::Ready(None);
                }
                match rx.poll_recv(cx) {
                    Poll::Ready(None) => {
                        *done = true;
                        Poll::Ready(None)
                    }
                    Poll::Ready(Some(Err(e))) => {
                        *done = true;
                        Poll::Ready(Some(Err(e)))
                    }
                    other => other,
                }
            }
            Kind::Stream(s) => s.as_mut().poll_next(cx),
            Kind::Decoding(d) => d.as_mut().poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.as_ref().is_none_or(Bytes::is_empty),
            Kind::Inner(body) => body.is_end_stream(),
            Kind::Channel { done, .. } => *done,
            Kind::Stream(_) => false,
            Kind::Decoding(d) => d.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Inner(body) => body.size_hint(),
            Kind::Channel { hint, .. } => *hint,
            Kind::Stream(_) | Kind::Decoding(_) => SizeHint::default(),
        }
    }
}
