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
//! where the principal comes from a [`PrincipalExtractor`] and the route is the
//! request's [normalised path](super::path::normalize). The default principal is
//! [`CredentialHeaders`]: **every** credential header present, by name and value —
//! `Authorization`, `Proxy-Authorization`, `x-api-key` (Anthropic), `api-key` (Azure
//! OpenAI), `x-goog-api-key` (Google) — so two tenants that authenticate with an API
//! key header are two principals even when they send the same `Idempotency-Key`, or
//! the same body under derived keys. A request with none of them is the anonymous
//! principal. The scheme of `Authorization` is case-insensitive (RFC 9110 section
//! 11.1): `Bearer x` and `bearer x` are one principal.
//!
//! The hash is keyed so that whoever can read the store cannot test guesses of
//! credentials against the scopes: set your own secret with
//! [`Builder::scope_secret`](super::Builder::scope_secret); it must be the same on
//! every instance that shares a store, and stay the same across restarts.
//!
//! ```
//! use std::sync::Arc;
//! use idemp::http::scope::{CredentialHeaders, RequestPath, Scoper};
//! let scoper = Scoper::new(b"secret", Arc::new(CredentialHeaders::default()), Arc::new(RequestPath));
//! let req = |key: &str| http::Request::post("/v1/messages").header("x-api-key", key).body(()).unwrap().into_parts().0;
//! assert_ne!(scoper.scope(&req("sk-tenant-a")), scoper.scope(&req("sk-tenant-b")));
//! let bearer = |auth: &str| http::Request::post("/v1//messages/").header("authorization", auth).body(()).unwrap().into_parts().0;
//! assert_eq!(scoper.scope(&bearer("Bearer t")), scoper.scope(&bearer("bearer t")));
//! ```

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

/// The credential headers of [`CredentialHeaders::default`].
pub const DEFAULT_CREDENTIAL_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
];

/// The default principal: every credential header present (names and values, in a
/// fixed order), `None` when none is.
#[derive(Debug, Clone)]
pub struct CredentialHeaders {
    names: Vec<http::HeaderName>,
}

impl Default for CredentialHeaders {
    fn default() -> Self {
        Self {
            names: DEFAULT_CREDENTIAL_HEADERS
                .iter()
                .map(|n| http::HeaderName::from_static(n))
                .collect(),
        }
    }
}

impl CredentialHeaders {
    /// Exactly these headers (duplicates ignored).
    pub fn new<I: IntoIterator<Item = http::HeaderName>>(names: I) -> Self {
        let mut out: Vec<http::HeaderName> = Vec::new();
        for n in names {
            if !out.contains(&n) {
                out.push(n);
            }
        }
        Self { names: out }
    }

    /// The headers read.
    pub fn names(&self) -> &[http::HeaderName] {
        &self.names
    }
}

/// Appends `len ‖ bytes`.
fn frame(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// An `Authorization`-style value with its scheme lowercased (`Bearer x` → `bearer x`).
fn credentials(name: &http::HeaderName, value: &[u8]) -> Vec<u8> {
    let mut v = value.to_vec();
    if *name == http::header::AUTHORIZATION || *name == http::header::PROXY_AUTHORIZATION {
        let scheme_end = v.iter().position(|&b| b == b' ').unwrap_or(v.len());
        v[..scheme_end].make_ascii_lowercase();
    }
    v
}

impl PrincipalExtractor for CredentialHeaders {
    fn principal(&self, parts: &Parts) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut any = false;
        for name in &self.names {
            let values = parts.headers.get_all(name);
            let mut values = values.iter().peekable();
            if values.peek().is_none() {
                continue;
            }
            any = true;
            frame(&mut out, name.as_str().as_bytes());
            for v in values {
                frame(&mut out, &credentials(name, v.as_bytes()));
            }
            out.push(0xff);
        }
        any.then_some(out)
    }
}

/// Only the `Authorization` header (scheme case-insensitive). Prefer
/// [`CredentialHeaders`]: an API that authenticates with `x-api-key` would make
/// every caller the anonymous principal under this one.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthorizationHeader;

impl PrincipalExtractor for AuthorizationHeader {
    fn principal(&self, parts: &Parts) -> Option<Vec<u8>> {
        parts
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| credentials(&http::header::AUTHORIZATION, v.as_bytes()))
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

/// The default route: the request's normalised path (the raw path when it has no
/// normal form; the layer refuses those requests before scoping them).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestPath;

impl RouteExtractor for RequestPath {
    fn route(&self, parts: &Parts) -> String {
        super::path::normalize(parts.uri.path()).unwrap_or_else(|_| parts.uri.path().to_owned())
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
        Scoper::new(
            secret,
            Arc::new(CredentialHeaders::default()),
            Arc::new(RequestPath),
        )
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

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::post("/pay");
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn every_credential_header_separates_tenants() {
        let s = scoper(b"k");
        let anon = s.scope(&parts(&[]));
        let mut seen = vec![anon.clone()];
        for name in DEFAULT_CREDENTIAL_HEADERS {
            for secret in ["tenant-a", "tenant-b"] {
                let scope = s.scope(&parts(&[(name, secret)]));
                assert!(!seen.contains(&scope), "{name}: {secret}");
                seen.push(scope);
            }
        }
        // Other headers are not credentials.
        assert_eq!(s.scope(&parts(&[("x-request-id", "1")])), anon);
        // Two credentials together are another principal than either alone.
        let both = s.scope(&parts(&[("x-api-key", "a"), ("authorization", "Bearer a")]));
        assert!(!seen.contains(&both));
        // A custom list.
        let custom = Scoper::new(
            b"k",
            Arc::new(CredentialHeaders::new([http::HeaderName::from_static(
                "x-tenant",
            )])),
            Arc::new(RequestPath),
        );
        assert_ne!(
            custom.scope(&parts(&[("x-tenant", "1")])),
            custom.scope(&parts(&[("x-tenant", "2")]))
        );
        assert_eq!(
            custom.scope(&parts(&[("x-api-key", "1")])),
            custom.scope(&parts(&[("x-api-key", "2")]))
        );
    }

    #[test]
    fn the_auth_scheme_is_case_insensitive_and_the_credentials_are_not() {
        let s = scoper(b"k");
        let a = s.scope(&parts(&[("authorization", "Bearer tok")]));
        assert_eq!(a, s.scope(&parts(&[("authorization", "bearer tok")])));
        assert_eq!(a, s.scope(&parts(&[("authorization", "BEARER tok")])));
        assert_ne!(a, s.scope(&parts(&[("authorization", "Bearer TOK")])));
    }

    #[test]
    fn routes_are_normalised_paths() {
        let s = scoper(b"k");
        let at = |p: &str| s.scope(&http::Request::post(p).body(()).unwrap().into_parts().0);
        assert_eq!(at("/v1/charges"), at("//v1/%63harges/"));
        assert_ne!(at("/v1/charges"), at("/v1/refunds"));
    }
}
