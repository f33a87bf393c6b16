//! The request fingerprint: what "the same request" means.
//!
//! SHA-256 over, in order and each length-prefixed (so no two different requests
//! frame to the same bytes):
//!
//! 1. a domain tag (`idemp-http-fingerprint-v2`);
//! 2. the method, and the `X-HTTP-Method-Override` header if present (a `POST`
//!    overridden to `DELETE` is not the `POST` it looks like);
//! 3. the [normalised path](super::path::normalize): `//v1/charges/`,
//!    `/v1/%63harges` and `/v1/./charges` are one resource;
//! 4. the query, its parameters sorted by **name only** with a stable sort, so
//!    `?b=1&a=2` = `?a=2&b=1` but `?amount=100&amount=1` ≠ `?amount=1&amount=100`
//!    (repeated parameters keep their order, which servers read as a list);
//! 5. the media type of `Content-Type` (lowercase, without parameters);
//! 6. the chosen headers (name and every value, in the configured order);
//! 7. the body, **decoded** from its `Content-Encoding` by the caller (see
//!    [`encoding`](super::encoding)), then, when the media type is JSON
//!    (`application/json`, `application/*+json`) and it parses, in the
//!    [exact canonical form](crate::canon::Format::Exact): object keys sorted,
//!    whitespace dropped, strings compared by value, **numbers exactly as sent**
//!    (`9007199254740993` ≠ `9007199254740992`, `0.1` ≠ `0.10000000000000000001`,
//!    `1.0` ≠ `1`). Anything else is hashed as its bytes.
//!
//! Derived keys are built from the fingerprint, so they follow the same rules.
//!
//! ```
//! use idemp::http::fingerprint::request_fingerprint;
//! use http::{Method, HeaderMap, HeaderValue};
//! let mut h = HeaderMap::new();
//! h.insert("content-type", HeaderValue::from_static("application/json"));
//! let fp = |uri: &str, body: &[u8]| {
//!     request_fingerprint(&Method::POST, &uri.parse().unwrap(), &h, &[], body).unwrap()
//! };
//! assert_eq!(fp("/pay?b=2&a=1", br#"{"x":1,"y":2}"#), fp("//pay/?a=1&b=2", br#"{ "y":2, "x":1 }"#));
//! assert_ne!(fp("/pay", br#"{"to":9007199254740993}"#), fp("/pay", br#"{"to":9007199254740992}"#));
//! assert_ne!(fp("/pay?a=100&a=1", b"{}"), fp("/pay?a=1&a=100", b"{}"));
//! ```

use http::{HeaderMap, HeaderName, Method, Uri, header};
use sha2::{Digest, Sha256};

use super::path::{PathError, normalize};
use crate::canon::{Canonicalizer, Format};
use crate::store::Fingerprint;

const DOMAIN: &[u8] = b"idemp-http-fingerprint-v2";

/// `X-HTTP-Method-Override`: the method a server that honours it will run.
pub const METHOD_OVERRIDE: HeaderName = HeaderName::from_static("x-http-method-override");

fn frame(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// The query with its `&`-separated parameters stably sorted by name (the part before
/// `=`), joined by `&`. Empty parameters (`a=1&&b=2`) are dropped; repeated names keep
/// their relative order.
///
/// ```
/// use idemp::http::fingerprint::canonical_query;
/// assert_eq!(canonical_query("b=2&a=1&&b=1"), "a=1&b=2&b=1");
/// ```
pub fn canonical_query(query: &str) -> String {
    let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    params.sort_by_key(|p| p.split_once('=').map_or(*p, |(name, _)| name));
    params.join("&")
}

/// The media type of the `Content-Type` (lowercase, parameters and spaces dropped),
/// empty when absent or unreadable.
pub fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Whether a media type names JSON (`application/json`, `application/*+json`).
pub fn is_json_media_type(media_type: &str) -> bool {
    let Some((ty, sub)) = media_type.split_once('/') else {
        return false;
    };
    ty.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json")
            || sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// Whether the `Content-Type` names JSON.
pub fn is_json(headers: &HeaderMap) -> bool {
    is_json_media_type(&media_type(headers))
}

/// The bytes hashed for a (decoded) body: the exact canonical form of a JSON body
/// that parses, else the body itself. The first byte says which (`J` or `R`).
pub fn canonical_body(headers: &HeaderMap, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 1);
    if !body.is_empty() && is_json(headers) {
        out.push(b'J');
        if Canonicalizer::new(Format::Exact)
            .write(body, &mut out)
            .is_ok()
        {
            return out;
        }
        out.clear();
    }
    out.push(b'R');
    out.extend_from_slice(body);
    out
}

/// The fingerprint of a request (see the [module docs](self)). `body` is the body
/// decoded from its `Content-Encoding`; `chosen` lists the headers that take part.
/// Fails when the path has no normal form.
pub fn request_fingerprint(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    chosen: &[HeaderName],
    body: &[u8],
) -> Result<Fingerprint, PathError> {
    let path = normalize(uri.path())?;
    Ok(fingerprint_normalized(
        method,
        &path,
        uri.query(),
        headers,
        chosen,
        body,
    ))
}

/// [`request_fingerprint`] for a path already normalised.
pub fn fingerprint_normalized(
    method: &Method,
    normalized_path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    chosen: &[HeaderName],
    body: &[u8],
) -> Fingerprint {
    let mut h = Sha256::new();
    frame(&mut h, DOMAIN);
    frame(&mut h, method.as_str().as_bytes());
    let overrides = headers.get_all(METHOD_OVERRIDE);
    h.update((overrides.iter().count() as u64).to_be_bytes());
    for v in overrides {
        frame(&mut h, v.as_bytes().to_ascii_uppercase().as_slice());
    }
    frame(&mut h, normalized_path.as_bytes());
    frame(&mut h, canonical_query(query.unwrap_or("")).as_bytes());
    frame(&mut h, media_type(headers).as_bytes());
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

    fn fp_h(method: Method, uri: &str, headers: &[(&str, &str)], body: &[u8]) -> Fingerprint {
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        request_fingerprint(&method, &uri.parse().unwrap(), &h, &[], body).unwrap()
    }

    fn fp(method: Method, uri: &str, ct: Option<&str>, body: &[u8]) -> Fingerprint {
        match ct {
            Some(ct) => fp_h(method, uri, &[("content-type", ct)], body),
            None => fp_h(method, uri, &[], body),
        }
    }

    #[test]
    fn distinguishes_what_matters() {
        let base = fp(Method::POST, "/a?x=1", None, b"body");
        assert_ne!(base, fp(Method::PATCH, "/a?x=1", None, b"body"));
        assert_ne!(base, fp(Method::POST, "/b?x=1", None, b"body"));
        assert_ne!(base, fp(Method::POST, "/a?x=2", None, b"body"));
        assert_ne!(base, fp(Method::POST, "/a?x=1", None, b"bodz"));
        assert_eq!(base, fp(Method::POST, "/a?x=1&", None, b"body"));
        assert_eq!(base, fp(Method::POST, "//a/?x=1", None, b"body"));
        // Non-JSON bodies are hashed raw, whitespace included.
        assert_ne!(
            fp(Method::POST, "/a", Some("text/plain"), b"{\"a\":1}"),
            fp(Method::POST, "/a", Some("text/plain"), b"{ \"a\":1}")
        );
    }

    #[test]
    fn the_media_type_and_method_override_take_part() {
        let json = fp(Method::POST, "/a", Some("application/json"), b"{}");
        assert_ne!(json, fp(Method::POST, "/a", Some("text/plain"), b"{}"));
        assert_ne!(json, fp(Method::POST, "/a", None, b"{}"));
        assert_eq!(
            json,
            fp(
                Method::POST,
                "/a",
                Some("Application/JSON; charset=utf-8"),
                b"{}"
            )
        );
        let overridden = fp_h(
            Method::POST,
            "/a",
            &[
                ("content-type", "application/json"),
                ("x-http-method-override", "DELETE"),
            ],
            b"{}",
        );
        assert_ne!(json, overridden);
        assert_eq!(
            overridden,
            fp_h(
                Method::POST,
                "/a",
                &[
                    ("content-type", "application/json"),
                    ("x-http-method-override", "delete")
                ],
                b"{}",
            )
        );
    }

    #[test]
    fn repeated_parameters_keep_their_order() {
        let a = fp(Method::POST, "/a?amount=100&amount=1", None, b"");
        assert_ne!(a, fp(Method::POST, "/a?amount=1&amount=100", None, b""));
        assert_eq!(
            fp(Method::POST, "/a?b=1&amount=100&amount=1", None, b""),
            fp(Method::POST, "/a?amount=100&b=1&amount=1", None, b"")
        );
    }

    #[test]
    fn json_numbers_are_exact() {
        let j = |b: &str| fp(Method::POST, "/a", Some("application/json"), b.as_bytes());
        for (x, y) in [
            (
                r#"{"to_account":9007199254740993}"#,
                r#"{"to_account":9007199254740992}"#,
            ),
            (r#"{"amount":0.1}"#, r#"{"amount":0.10000000000000000001}"#),
            (
                r#"{"n":18446744073709551616}"#,
                r#"{"n":18446744073709551615}"#,
            ),
        ] {
            assert_ne!(j(x), j(y), "{x} vs {y}");
        }
        assert_eq!(
            j(r#"{"a":"\u00e9","b":[1, 2]}"#),
            j("{\"b\":[1,2],\"a\":\"é\"}")
        );
    }

    #[test]
    fn paths_without_a_normal_form_are_errors() {
        let h = HeaderMap::new();
        assert_eq!(
            request_fingerprint(&Method::POST, &"/../admin".parse().unwrap(), &h, &[], b""),
            Err(PathError::AboveRoot)
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
            request_fingerprint(&Method::POST, &uri, &h1, &chosen, b"").unwrap(),
            request_fingerprint(&Method::POST, &uri, &h2, &chosen, b"").unwrap()
        );
        assert_eq!(
            request_fingerprint(&Method::POST, &uri, &h1, &[], b"").unwrap(),
            request_fingerprint(&Method::POST, &uri, &h2, &[], b"").unwrap()
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
