//! tower server middleware: the `Idempotency-Key` header, done as the IETF draft
//! (draft-ietf-httpapi-idempotency-key-header) and Stripe do it.
//!
//! Wrap a service (an axum `Router`, a hyper service, the `idemp serve` proxy) in an
//! [`IdempotencyLayer`]. For guarded methods (POST and PATCH by default):
//!
//! * a request with an `Idempotency-Key` claims `(scope, key)` in the [store](crate::store);
//!   the first one runs the handler and its response is stored;
//! * a retry with the same key and the same request gets the stored response again,
//!   with `Idempotent-Replayed: true`, without running the handler;
//! * a retry while the first still runs waits for it (up to [`Builder::wait`]), then
//!   gets `409` with `Retry-After`;
//! * the same key with a different request (method, path, query, body, chosen headers:
//!   see [`fingerprint`]) gets `422`;
//! * keys are scoped by the caller ([`scope`]): one tenant never sees another's
//!   response.
//!
//! Errors are RFC 9457 problem documents ([`Problem`]). What is stored and replayed,
//! and what never is (`Set-Cookie`, `Authorization`, hop-by-hop headers): see
//! [`replay`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use idemp::http::IdempotencyLayer;
//!
//! let store = idemp::store::open("sqlite://idemp.db").await?;
//! let layer = IdempotencyLayer::builder(store)
//!     .require_key(true)
//!     .wait(Duration::from_secs(10))
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
