//! The request fingerprint: what "the same request" means.
//!
//! SHA-256 over, in order and each length-prefixed (so no two different requests
//! frame to the same bytes): a domain tag, the method, the path, the canonical query
//! (parameters sorted, order of repeated names kept stable by value), the chosen
//! headers (name and every value, in the configured order), and the body. A body whose
//! `Content-Type` is JSON (`application/json` or `*/*+json`) and parses is hashed in
//! its RFC 8785 (JCS) canonical form, so key order and whitespace do not matter;
//! anything else is hashed as raw bytes.
//!
//! ```
//! use idemp::http::fingerprint::request_fingerprint;
//! use http::{Method, HeaderMap, HeaderValue};
//! let mut h = HeaderMap::new();
//! h.insert("content-type", HeaderValue::from_static("application/json"));
//! let u1: http::Uri = "/pay?b=2&a=1".parse().unwrap();
//! let u2: http::Uri = "/pay?a=1&b=2".parse().unwrap();
//! let a = request_fingerprint(&Method::POST, &u1, &h, &[], br#"{"x":1,"y":2}"#);
//! let b = request_fingerprint(&Method::POST, &u2, &h, &[], br#"{ "y":2, "x":1 }"#);
//! assert_eq!(a, b);
//! ```

use http::{HeaderMap, HeaderName, Method, Uri, header};
use sha2::{Digest, Sha256};

use crate::store::Fingerprint;

const DOMAIN: &[u8] = b"idemp-http-fingerprint-v1";

fn frame(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// The query with its `&`-separated parameters sorted (byte order), joined by `&`.
/// Empty parameters (`a=1&&b=2`) are dropped.
pub fn canonical_query(query: &str) -> String {
    let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    params.sort_unstable();
    params.join("&")
}

/// Whether the `Content-Type` names JSON (`application/json`, `application/*+json`).
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or("").trim();
    let Some((ty, sub)) = essence.split_once('/') else {
        return false;
    };
    ty.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json")
            || sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// The bytes hashed for the body: the JCS form of a JSON body that parses, else the
/// body itself.
pub fn canonical_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
    if !body.is_empty()
        && is_json(headers)
        && let Ok(value) = serde_json::from_slice::<serde_json::Value>(body)
    {
        let mut out = Vec::with_capacity(body.len());
        crate::canon::write_jcs_value(&value, &mut out);
        return out.into();
    }
    body.into()
}

/// The fingerprint of a request (see the [module docs](self)). `chosen` lists the
/// headers that take part.
pub fn request_fingerprint(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    chosen: &[HeaderName],
    body: &[u8],
) -> Fingerprint {
    let mut h = Sha256::new();
    frame(&mut h, DOMAIN);
    frame(&mut h, method.as_str().as_bytes());
    frame(&mut h, uri.path().as_bytes());
    frame(
        &mut h,
        canonical_query(uri.query().unwrap_or("")).as_bytes(),
    );
    h.update((chosen.len() as u64).to_be_bytes());
    for name in chosen {
        frame(&mut h, name.as_str().as_bytes());
        let values = headers.get_all(name);
        h.update((values.iter().count() as u64).to_be_bytes());
        for v in values {
            frame(&mut h, v.as_bytes());
        }
    }
    frame(&mut h, &canonical_body(headers, body));
    Fingerprint(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn fp(method: Method, uri: &str, ct: Option<&str>, body: &[u8]) -> Fingerprint {
        let mut h = HeaderMap::new();
        if let Some(ct) = ct {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        }
        request_fingerprint(&method, &uri.parse().unwrap(), &h, &[], body)
    }

    #[test]
    fn distinguishes_what_matters() {
        let base = fp(Method::POST, "/a?x=1", None, b"body");
        assert_ne!(base, fp(Method::PATCH, "/a?x=1", None, b"body"));
        assert_ne!(base, fp(Method::POST, "/b?x=1", None, b"body"));
        assert_ne!(base, fp(Method::POST, "/a?x=2", None, b"body"));
        assert_ne!(base, fp(Method::POST, "/a?x=1", None, b"bodz"));
        assert_eq!(base, fp(Method::POST, "/a?x=1&", None, b"body"));
        // Non-JSON bodies are hashed raw, whitespace included.
        assert_ne!(
            fp(Method::POST, "/a", Some("text/plain"), b"{\"a\":1}"),
            fp(Method::POST, "/a", Some("text/plain"), b"{ \"a\":1}")
        );
    }

    #[test]
    fn chosen_headers_take_part() {
        let uri: Uri = "/a".parse().unwrap();
        let mut h1 = HeaderMap::new();
        h1.insert("x-tenant", HeaderValue::from_static("1"));
        let mut h2 = HeaderMap::new();
        h2.insert("x-tenant", HeaderValue::from_static("2"));
        let chosen = [HeaderName::from_static("x-tenant")];
        assert_ne!(
            request_fingerprint(&Method::POST, &uri, &h1, &chosen, b""),
            request_fingerprint(&Method::POST, &uri, &h2, &chosen, b"")
        );
        assert_eq!(
            request_fingerprint(&Method::POST, &uri, &h1, &[], b""),
            request_fingerprint(&Method::POST, &uri, &h2, &[], b"")
        );
    }

    #[test]
    fn json_detection() {
        let mut h = HeaderMap::new();
        for (ct, yes) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/problem+json", true),
            ("text/json", false),
            ("application/jsonx", false),
            ("application/x-www-form-urlencoded", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            assert_eq!(is_json(&h), yes, "{ct}");
        }
    }
}
