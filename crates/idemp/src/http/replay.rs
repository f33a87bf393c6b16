//! What is stored of a response, and how it is replayed.
//!
//! A stored response is its status, the headers that may be replayed, and the body,
//! encoded with postcard ([`Codec::Postcard`]) as the record's [`Outcome`].
//!
//! Headers that are **never** stored, whatever the configuration: `Set-Cookie`
//! (a session must not be handed to whoever replays), `Authorization`,
//! `Proxy-Authorization`, `WWW-Authenticate`, `Proxy-Authenticate`, the hop-by-hop
//! headers of RFC 9110 section 7.6.1 (`Connection`, `Keep-Alive`, `TE`, `Trailer`,
//! `Transfer-Encoding`, `Upgrade`, and any header the `Connection` field names),
//! and the per-message `Date` and `Content-Length` (recomputed on replay).

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};

use crate::store::{Codec, Compression, Outcome};

/// Which response headers are stored and replayed.
#[derive(Clone, Debug, Default)]
pub enum ReplayHeaders {
    /// Every end-to-end header except the never-stored ones (the default): a proxy
    /// in front of an arbitrary API cannot know which of its headers matter.
    #[default]
    AllSafe,
    /// Only these headers (lowercase names), and never the never-stored ones.
    Only(Vec<HeaderName>),
}

impl ReplayHeaders {
    /// An allow-list.
    pub fn only<I, N>(names: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: Into<HeaderName>,
    {
        Self::Only(names.into_iter().map(Into::into).collect())
    }

    fn allows(&self, name: &HeaderName) -> bool {
        match self {
            ReplayHeaders::AllSafe => true,
            ReplayHeaders::Only(list) => list.contains(name),
        }
    }
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1), plus the legacy `proxy-connection`.
pub const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
];

/// Whether `name` is hop-by-hop, either by definition or because the message's
/// `Connection` header lists it.
pub fn is_hop_by_hop(name: &HeaderName, headers: &HeaderMap) -> bool {
    HOP_BY_HOP.contains(name)
        || headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case(name.as_str()))
            })
        })
}

/// Removes the hop-by-hop headers (and those named by `Connection`) in place.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(n);
    }
}

/// Whether a response header may ever be stored.
pub fn is_never_stored(name: &HeaderName, headers: &HeaderMap) -> bool {
    *name == header::SET_COOKIE
        || name.as_str() == "set-cookie2"
        || *name == header::AUTHORIZATION
        || *name == header::WWW_AUTHENTICATE
        || *name == header::PROXY_AUTHENTICATE
        || *name == header::DATE
        || *name == header::CONTENT_LENGTH
        || is_hop_by_hop(name, headers)
}

/// A response as stored for replay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// The status code.
    pub status: u16,
    /// Stored headers, in order (names lowercase).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

/// Why a stored outcome could not be turned back into a response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The outcome was not written by this middleware.
    #[error("the stored outcome has codec {0:?}, not an HTTP response")]
    Codec(Codec),
    /// Compressed with an algorithm this build cannot read.
    #[error("the stored outcome is compressed with {0:?}, which this build cannot read")]
    Compression(Compression),
    /// The bytes do not decode.
    #[error("the stored response does not decode: {0}")]
    Decode(String),
}

const FORMAT_VERSION: u8 = 1;

impl StoredResponse {
    /// Captures what may be stored of a response.
    pub fn capture(
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        policy: &ReplayHeaders,
    ) -> Self {
        let headers = headers
            .iter()
            .filter(|(n, _)| !is_never_stored(n, headers) && policy.allows(n))
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        Self {
            status: status.as_u16(),
            headers,
            body: body.to_vec(),
        }
    }

    /// Encodes as a store [`Outcome`] (a version byte, then postcard).
    pub fn to_outcome(&self) -> Outcome {
        let mut bytes = vec![FORMAT_VERSION];
        match postcard::to_extend(self, bytes) {
            Ok(b) => bytes = b,
            Err(_) => bytes = vec![FORMAT_VERSION],
        }
        Outcome::new(Codec::Postcard, bytes)
    }

    /// Decodes a stored [`Outcome`].
    pub fn from_outcome(outcome: &Outcome) -> Result<Self, ReplayError> {
        if outcome.codec != Codec::Postcard {
            return Err(ReplayError::Codec(outcome.codec));
        }
        let raw: std::borrow::Cow<'_, [u8]> = match outcome.compression {
            Compression::None => (&outcome.bytes[..]).into(),
            #[cfg(feature = "compression")]
            Compression::Lz4 => lz4_flex::decompress_size_prepended(&outcome.bytes)
                .map_err(|e| ReplayError::Decode(e.to_string()))?
                .into(),
            other => return Err(ReplayError::Compression(other)),
        };
        match raw.split_first() {
            Some((&FORMAT_VERSION, rest)) => {
                postcard::from_bytes(rest).map_err(|e| ReplayError::Decode(e.to_string()))
            }
            Some((v, _)) => Err(ReplayError::Decode(format!("unknown format version {v}"))),
            None => Err(ReplayError::Decode("empty".into())),
        }
    }

    /// Rebuilds the response, with `Idempotent-Replayed: true`. Headers that fail to
    /// parse are skipped.
    pub fn to_response(&self) -> http::Response<Bytes> {
        let mut res = http::Response::new(Bytes::from(self.body.clone()));
        *res.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let h = res.headers_mut();
        for (n, v) in &self.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_bytes(v),
            ) {
                h.append(n, v);
            }
        }
        h.insert(
            super::header::IDEMPOTENT_REPLAYED,
            HeaderValue::from_static("true"),
        );
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_stores_credentials_or_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.append("set-cookie", HeaderValue::from_static("s=1"));
        h.append("set-cookie", HeaderValue::from_static("t=2"));
        h.insert("authorization", HeaderValue::from_static("Bearer x"));
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-request-id", HeaderValue::from_static("r1"));
        let s = StoredResponse::capture(StatusCode::CREATED, &h, b"{}", &ReplayHeaders::AllSafe);
        let names: Vec<&str> = s.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type", "x-request-id"]);
        let only = StoredResponse::capture(
            StatusCode::CREATED,
            &h,
            b"{}",
            &ReplayHeaders::only([header::CONTENT_TYPE, header::SET_COOKIE]),
        );
        let names: Vec<&str> = only.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type"]);
    }

    #[test]
    fn round_trips_through_an_outcome() {
        let s = StoredResponse {
            status: 201,
            headers: vec![("x-a".into(), b"1".to_vec())],
            body: b"hello".to_vec(),
        };
        let back = StoredResponse::from_outcome(&s.to_outcome()).unwrap();
        assert_eq!(back, s);
        let res = back.to_response();
        assert_eq!(res.status(), 201);
        assert_eq!(res.headers()["idempotent-replayed"], "true");
        assert_eq!(&res.body()[..], b"hello");
        assert!(StoredResponse::from_outcome(&Outcome::new(Codec::Json, vec![])).is_err());
        assert!(StoredResponse::from_outcome(&Outcome::new(Codec::Postcard, vec![9])).is_err());
    }
}
