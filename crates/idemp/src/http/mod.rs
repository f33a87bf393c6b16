//! tower server middleware: the `Idempotency-Key` header, done as the IETF draft
//! (draft-ietf-httpapi-idempotency-key-header) and Stripe do it, built on the
//! [guard](crate::guard).
//!
//! Wrap a service (an axum `Router`, a hyper service, the `idemp serve` proxy) in an
//! [`IdempotencyLayer`]. For guarded methods (POST and PATCH by default):
//!
//! * a request with an `Idempotency-Key` (or, with [`Builder::derive_key`], one derived
//!   from the request) claims `(scope, key)` through
//!   [`Guard::begin_scoped`](crate::guard::Guard::begin_scoped); the first one runs the
//!   handler, and its response **streams** to the client as it is produced while a
//!   copy (at most [`Builder::max_stored_response`]) is recorded;
//! * a retry with the same key and the same request gets the recorded response again,
//!   with `Idempotent-Replayed: true`, without running the handler; a retry arriving
//!   while the first is still streaming joins it live;
//! * a retry while the first still runs elsewhere waits for it (up to
//!   [`Builder::wait`]), then gets `409` with `Retry-After` and `retry-after-ms`;
//! * the same key with a different request (see [`fingerprint`]: numbers exactly as
//!   sent, bodies decoded from their `Content-Encoding`) gets `422`;
//! * keys are scoped by the caller ([`scope`]: every credential header) and the route:
//!   one tenant never sees another's response.
//!
//! ## When the outcome is lost
//!
//! A handler that is a proxy's forwarder tells the layer how far a failed request got
//! ([`Delivery`]). Never sent: the key is released and the retry runs. Maybe sent (a
//! timeout, a reset, an unparsable answer), a body that breaks mid-stream, a shutdown
//! mid-request, or a crashed process: the side effect may have happened, and the
//! record is left **ambiguous**. The ambiguity policy ([`Builder::on_ambiguous`])
//! decides what the retry gets: `Surface` (the default) answers `409
//! outcome-ambiguous` with `x-should-retry: false` until
//! [`Builder::ambiguous_hold`] passes (or an operator settles it with
//! [`Guard::resolve`](crate::guard::Guard::resolve)); `Retake` runs it again;
//! `Verify` asks your reconcile function.
//!
//! Errors are RFC 9457 problem documents ([`Problem`]). What is stored and replayed,
//! and what never is (`Set-Cookie`, `Authorization`, `Authentication-Info`,
//! hop-by-hop headers): see [`replay`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use idemp::guard::OnAmbiguous;
//! use idemp::http::{IdempotencyLayer, RouteSettings};
//!
//! let store = idemp::store::open("sqlite://idemp.db").await?;
//! let layer = IdempotencyLayer::builder(store)
//!     .require_key(true)
//!     .wait(Duration::from_secs(10))
//!     .on_ambiguous(OnAmbiguous::Surface)
//!     .route_settings("/v1/messages", RouteSettings::new().derive_key(true))
//!     .build();
//! // axum: let app = Router::new().route("/payments", post(pay)).layer(layer);
//! # let _ = layer; Ok(()) }
//! ```

pub mod body;
mod budget;
pub mod config;
pub mod delivery;
pub mod encoding;
pub mod fingerprint;
pub mod header;
mod layer;
mod live;
pub mod observe;
pub mod path;
pub mod problem;
pub mod replay;
pub mod scope;

pub use body::{BoxError, ResponseBody, Truncated};
pub use config::{Builder, Config, DEFAULT_MAX_BUFFERED_REQUEST_BYTES, RouteSettings, StatusSet};
pub use delivery::Delivery;
pub use header::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, KeyError};
pub use layer::{Disposition, Idempotency, IdempotencyLayer, InFlight, RequestBody};
pub use observe::{Event, NoopObserver, Observer, StoreOp};
pub use problem::{Problem, ProblemKind};
pub use replay::{NotStored, Recorded, ReplayHeaders, StoredResponse};
pub use scope::{CredentialHeaders, PrincipalExtractor, RouteExtractor};
