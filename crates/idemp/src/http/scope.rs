//! Principal scoping: whose key is it?
//!
//! Two tenants who happen to send the same `Idempotency-Key` (or one who guesses
//! another's) must never share a record, or the second would be replayed the first's
//! response. The record scope is therefore
//!
//! ```text
//! "http:" + hex(HMAC-SHA256(secret, len ‖ principal ‖ len ‖ route))[..32]
//! ```
//!
//! where the principal comes from a [`PrincipalExtractor`] (default: the raw
//! `Authorization` header, absent = the anonymous principal) and the route is the
//! request path. The hash is keyed so that whoever can read the store cannot test
//! guesses of credentials against the scopes: set your own secret with
//! [`Builder::scope_secret`](super::Builder::scope_secret); it must be the same on
//! every instance that shares a store, and stay the same across restarts.

use std::fmt;
use std::sync::Arc;

use hmac::{KeyInit, Mac};
use http::request::Parts;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The secret used when none is configured. Isolation between principals still
/// holds with it; only the protection of credentials against offline guessing
/// needs a secret of your own.
pub const DEFAULT_SCOPE_SECRET: &[u8] = b"idemp-http-scope-v1 default secret: set your own";

/// Extracts the principal (the caller's identity) from a request.
pub trait PrincipalExtractor: Send + Sync + 'static {
    /// The principal's bytes, or `None` for the anonymous principal.
    fn principal(&self, parts: &Parts) -> Option<Vec<u8>>;
}

impl<F> PrincipalExtractor for F
where
    F: Fn(&Parts) -> Option<Vec<u8>> + Send + Sync + 'static,
{
    fn principal(&self, parts: &Parts) -> Option<Vec<u8>> {
        self(parts)
    }
}

/// The default extractor: the raw `Authorization` header.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthorizationHeader;

impl PrincipalExtractor for AuthorizationHeader {
    fn principal(&self, parts: &Parts) -> Option<Vec<u8>> {
        parts
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec())
    }
}

/// Extracts the route from a request (default: the path).
pub trait RouteExtractor: Send + Sync + 'static {
    /// The route: requests on different routes never share records.
    fn route(&self, parts: &Parts) -> String;
}

impl<F> RouteExtractor for F
where
    F: Fn(&Parts) -> String + Send + Sync + 'static,
{
    fn route(&self, parts: &Parts) -> String {
        self(parts)
    }
}

/// The default route: the request path.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestPath;

impl RouteExtractor for RequestPath {
    fn route(&self, parts: &Parts) -> String {
        parts.uri.path().to_owned()
    }
}

/// Computes record scopes: a keyed hash of principal and route.
#[derive(Clone)]
pub struct Scoper {
    mac: HmacSha256,
    principal: Arc<dyn PrincipalExtractor>,
    route: Arc<dyn RouteExtractor>,
}

impl fmt::Debug for Scoper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scoper").finish_non_exhaustive()
    }
}

impl Scoper {
    /// A scoper with this secret and extractors.
    pub fn new(
        secret: &[u8],
        principal: Arc<dyn PrincipalExtractor>,
        route: Arc<dyn RouteExtractor>,
    ) -> Self {
        // HMAC accepts keys of any length.
        let mac = <HmacSha256 as KeyInit>::new_from_slice(secret)
            .unwrap_or_else(|_| <HmacSha256 as KeyInit>::new(&Default::default()));
        Self {
            mac,
            principal,
            route,
        }
    }

    /// The record scope of a request.
    pub fn scope(&self, parts: &Parts) -> String {
        let principal = self.principal.principal(parts);
        let route = self.route.route(parts);
        self.scope_of(principal.as_deref(), &route)
    }

    /// The scope of a principal (`None` = anonymous) and a route.
    pub fn scope_of(&self, principal: Option<&[u8]>, route: &str) -> String {
        let mut mac = self.mac.clone();
        match principal {
            Some(p) => {
                mac.update(&[1]);
                mac.update(&(p.len() as u64).to_be_bytes());
                mac.update(p);
            }
            None => mac.update(&[0]),
        }
        mac.update(&(route.len() as u64).to_be_bytes());
        mac.update(route.as_bytes());
        let tag = mac.finalize().into_bytes();
        format!("http:{}", hex::encode(&tag[..16]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scoper(secret: &[u8]) -> Scoper {
        Scoper::new(secret, Arc::new(AuthorizationHeader), Arc::new(RequestPath))
    }

    #[test]
    fn separates_principals_routes_and_secrets() {
        let s = scoper(b"k");
        let a = s.scope_of(Some(b"Bearer a"), "/pay");
        assert_eq!(a, s.scope_of(Some(b"Bearer a"), "/pay"));
        assert_eq!(a.len(), 5 + 32);
        assert_ne!(a, s.scope_of(Some(b"Bearer b"), "/pay"));
        assert_ne!(a, s.scope_of(Some(b"Bearer a"), "/refund"));
        assert_ne!(a, scoper(b"other").scope_of(Some(b"Bearer a"), "/pay"));
        assert_ne!(s.scope_of(None, "/pay"), s.scope_of(Some(b""), "/pay"));
    }

    #[test]
    fn reads_the_authorization_header() {
        let s = scoper(b"k");
        let req = http::Request::post("/pay")
            .header("authorization", "Bearer a")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        assert_eq!(s.scope(&parts), s.scope_of(Some(b"Bearer a"), "/pay"));
    }
}
