//! Whether a failed request may have reached the code with the side effect.
//!
//! When the handler behind the layer is a proxy's forwarder, a 502 or 504 is not the
//! upstream's answer but an error made in its place, and what the retry may do depends
//! on how far the request got. Connection refused: the upstream never saw it, so the
//! key is released and the retry runs. A timeout, a reset or an unparsable answer after
//! the request was sent: the upstream may have executed it, so the outcome is
//! **ambiguous** and the layer's ambiguity policy decides.
//!
//! A handler says which by putting a [`Delivery`] into the extensions of the error
//! response it returns in place of an answer. A response without one is the handler's
//! own answer (a 5xx releases, a stored status completes). An error of a response
//! *body* after its head was sent is always treated as [`Delivery::MaybeSent`].
//!
//! ```
//! use idemp::http::Delivery;
//! let mut res = http::Response::new(());
//! *res.status_mut() = http::StatusCode::BAD_GATEWAY;
//! res.extensions_mut().insert(Delivery::NotSent);
//! assert_eq!(res.extensions().get::<Delivery>(), Some(&Delivery::NotSent));
//! ```

/// How far a request got before it failed (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Delivery {
    /// The request never left: connection refused, name resolution failed, the TLS
    /// handshake was refused. Nothing can have run; the key is released.
    NotSent,
    /// The request was, or may have been, sent, and no definitive answer came back:
    /// a timeout, a reset, a truncated or unparsable answer, a shutdown. The outcome
    /// is ambiguous.
    MaybeSent,
}
