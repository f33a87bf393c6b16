//! What is stored of a response, and how it is replayed.
//!
//! A stored response is its status, the headers that may be replayed, and the body,
//! encoded with postcard ([`Codec::Postcard`]) as the record's [`Outcome`].
//!
//! Headers that are **never** stored, whatever the configuration: `Set-Cookie`
//! (a session must not be handed to whoever replays), `Authorization`,
//! `Proxy-Authorization`, `WWW-Authenticate`, `Proxy-Authenticate`,
//! `Authentication-Info`, `Proxy-Authentication-Info`, the hop-by-hop headers of
//! RFC 9110 section 7.6.1 (`Connection`, `Keep-Alive`, `TE`, `Trailer`,
//! `Transfer-Encoding`, `Upgrade`, and any header the `Connection` field names), the
//! per-message `Date` and `Content-Length` (recomputed on replay), and an upstream's
//! own `Idempotent-Replayed` (the layer says itself whether it replayed; it strips
//! the upstream's from first responses too, see [`strip_upstream_replayed`]).
//!
//! A record holds one of two things ([`Recorded`]): the response ([`StoredResponse`]),
//! or, when the response was larger than the stored-response limit, the fact that the
//! request was executed, its status and when ([`NotStored`]), so that a retry is told
//! so instead of running again.
//!
//! A stored body with a `Content-Encoding` the replaying client does not accept is
//! decoded on the way out ([`StoredResponse::into_response_for`]).

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};

use super::encoding::{self, DecodingBody};
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
        || matches!(
            name.as_str(),
            "set-cookie2" | "authentication-info" | "proxy-authentication-info"
        )
        || *name == header::AUTHORIZATION
        || *name == header::WWW_AUTHENTICATE
        || *name == header::PROXY_AUTHENTICATE
        || *name == header::DATE
        || *name == header::CONTENT_LENGTH
        || *name == super::header::IDEMPOTENT_REPLAYED
        || is_hop_by_hop(name, headers)
}

/// Removes an upstream's own `Idempotent-Replayed` from a response: only the layer
/// says whether *it* replayed.
pub fn strip_upstream_replayed(headers: &mut HeaderMap) {
    headers.remove(super::header::IDEMPOTENT_REPLAYED);
}

/// The stored headers of a response: what [`is_never_stored`] and `policy` allow,
/// in order, names lowercase.
pub fn storable_headers(headers: &HeaderMap, policy: &ReplayHeaders) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .filter(|(n, _)| !is_never_stored(n, headers) && policy.allows(n))
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
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

/// The format byte of a stored response (then postcard of [`StoredResponse`]).
const FORMAT_RESPONSE: u8 = 1;
/// The format byte of a "not stored" record (then postcard of [`NotStored`]).
const FORMAT_NOT_STORED: u8 = 2;

/// The head of a stored response, serialized exactly as the first two fields of
/// [`StoredResponse`]: postcard of a `StoredResponse` is postcard of its head, then
/// the body's length as a varint, then the body. The layer writes records from a head
/// and a body streamed into one buffer without a second copy ([`StoredHead::prefix`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredHead {
    /// The status code.
    pub status: u16,
    /// Stored headers, in order (names lowercase).
    pub headers: Vec<(String, Vec<u8>)>,
}

impl StoredHead {
    /// What may be stored of a response's head.
    pub fn capture(status: StatusCode, headers: &HeaderMap, policy: &ReplayHeaders) -> Self {
        Self {
            status: status.as_u16(),
            headers: storable_headers(headers, policy),
        }
    }

    /// The bytes of a record before its body: the format byte, the head, and the
    /// body's length as a postcard varint. `prefix(n) ‖ body` (with `body.len() == n`)
    /// is the [`Outcome`] bytes of the [`StoredResponse`] made of this head and body.
    pub fn prefix(&self, body_len: usize) -> Vec<u8> {
        let mut out = vec![FORMAT_RESPONSE];
        out = postcard::to_extend(self, out).unwrap_or_else(|_| vec![FORMAT_RESPONSE]);
        let mut n = body_len as u64;
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
        out
    }

    /// The longest [`prefix`](Self::prefix) this head can have (any body length).
    pub fn max_prefix_len(&self) -> usize {
        self.prefix(0).len() + 9
    }

    /// The response head as a replay sends it: the stored headers and
    /// `Idempotent-Replayed: true`. Headers that fail to parse are skipped.
    pub fn to_parts(&self) -> http::response::Parts {
        let mut res = http::Response::new(());
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
        res.into_parts().0
    }
}

/// A request that was executed, whose response was not stored (it was larger than the
/// stored-response limit, or the record was settled outside the layer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotStored {
    /// The status the handler answered (0 when unknown).
    pub status: u16,
    /// When the execution ended, ms since the epoch (0 when unknown).
    pub at_ms: u64,
    /// How many body bytes the response had.
    pub body_bytes: u64,
    /// The stored-response limit it went over.
    pub limit: u64,
}

impl NotStored {
    /// Encodes as a store [`Outcome`].
    pub fn to_outcome(&self) -> Outcome {
        let bytes = postcard::to_extend(self, vec![FORMAT_NOT_STORED])
            .unwrap_or_else(|_| vec![FORMAT_NOT_STORED]);
        Outcome::new(Codec::Postcard, bytes)
    }
}

/// What a completed record holds.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recorded {
    /// The response, to replay.
    Response(StoredResponse),
    /// Executed, response not stored.
    NotStored(NotStored),
}

impl Recorded {
    /// Reads a completed record's outcome. A postcard outcome is one written by the
    /// layer; a JSON one holds a [`StoredResponse`] given by an `OnAmbiguous::Verify`
    /// reconcile function. Any other outcome (a record completed by an operator with
    /// `idemp records resolve --executed`, say) means "executed, response unknown":
    /// [`Recorded::NotStored`] with status 0.
    pub fn from_outcome(outcome: &Outcome) -> Result<Self, ReplayError> {
        let raw = uncompressed(outcome)?;
        match outcome.codec {
            Codec::Postcard => match raw.split_first() {
                Some((&FORMAT_RESPONSE, rest)) => postcard::from_bytes(rest)
                    .map(Recorded::Response)
                    .map_err(|e| ReplayError::Decode(e.to_string())),
                Some((&FORMAT_NOT_STORED, rest)) => postcard::from_bytes(rest)
                    .map(Recorded::NotStored)
                    .map_err(|e| ReplayError::Decode(e.to_string())),
                Some((v, _)) => Err(ReplayError::Decode(format!("unknown format version {v}"))),
                None => Err(ReplayError::Decode("empty".into())),
            },
            Codec::Json => Ok(match serde_json::from_slice::<StoredResponse>(&raw) {
                Ok(r) => Recorded::Response(r),
                Err(_) => Recorded::NotStored(NotStored {
                    status: 0,
                    at_ms: 0,
                    body_bytes: 0,
                    limit: 0,
                }),
            }),
            Codec::Raw => Ok(Recorded::NotStored(NotStored {
                status: 0,
                at_ms: 0,
                body_bytes: 0,
                limit: 0,
            })),
        }
    }
}

fn uncompressed(outcome: &Outcome) -> Result<std::borrow::Cow<'_, [u8]>, ReplayError> {
    Ok(match outcome.compression {
        Compression::None => (&outcome.bytes[..]).into(),
        #[cfg(feature = "compression")]
        Compression::Lz4 => lz4_flex::decompress_size_prepended(&outcome.bytes)
            .map_err(|e| ReplayError::Decode(e.to_string()))?
            .into(),
        other => return Err(ReplayError::Compression(other)),
    })
}

/// The body of a replayed response: the stored bytes, or the stored bytes decoded as
/// the client reads them.
#[derive(Debug)]
pub enum ReplayBody {
    /// The stored body as is.
    Stored(Bytes),
    /// The stored body decoded from its `Content-Encoding`.
    Decoded(DecodingBody),
}

impl ReplayBody {
    /// The stored bytes, or everything decoded (bounded by `limit`).
    pub async fn collect(self, limit: usize) -> Result<Bytes, encoding::DecodeError> {
        use http_body_util::BodyExt;
        match self {
            ReplayBody::Stored(b) => Ok(b),
            ReplayBody::Decoded(d) => {
                let mut out = Vec::new();
                let mut d = std::pin::pin!(d);
                while let Some(frame) = d.frame().await {
                    if let Ok(data) = frame?.into_data() {
                        out.extend_from_slice(&data);
                        if out.len() > limit {
                            return Err(encoding::DecodeError::TooLarge { limit });
                        }
                    }
                }
                Ok(Bytes::from(out))
            }
        }
    }
}

impl StoredResponse {
    /// Captures what may be stored of a response.
    pub fn capture(
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        policy: &ReplayHeaders,
    ) -> Self {
        Self {
            status: status.as_u16(),
            headers: storable_headers(headers, policy),
            body: body.to_vec(),
        }
    }

    /// Encodes as a store [`Outcome`] (a version byte, then postcard).
    pub fn to_outcome(&self) -> Outcome {
        let bytes = postcard::to_extend(self, vec![FORMAT_RESPONSE])
            .unwrap_or_else(|_| vec![FORMAT_RESPONSE]);
        Outcome::new(Codec::Postcard, bytes)
    }

    /// Decodes a stored [`Outcome`] holding a response.
    pub fn from_outcome(outcome: &Outcome) -> Result<Self, ReplayError> {
        match Recorded::from_outcome(outcome)? {
            Recorded::Response(r) => Ok(r),
            Recorded::NotStored(_) => Err(ReplayError::Decode(
                "the record says the response was not stored".into(),
            )),
        }
    }

    fn head(&self) -> StoredHead {
        StoredHead {
            status: self.status,
            headers: self.headers.clone(),
        }
    }

    /// Rebuilds the response, with `Idempotent-Replayed: true`. Headers that fail to
    /// parse are skipped.
    pub fn to_response(&self) -> http::Response<Bytes> {
        let parts = self.head().to_parts();
        http::Response::from_parts(parts, Bytes::from(self.body.clone()))
    }

    /// Rebuilds the response for a client with these request headers: a body whose
    /// `Content-Encoding` (gzip, deflate, br, zstd) the client's `Accept-Encoding`
    /// does not accept is decoded as it is sent (and the header removed).
    pub fn into_response_for(self, request: &HeaderMap) -> http::Response<ReplayBody> {
        let mut parts = self.head().to_parts();
        let body = Bytes::from(self.body);
        let codings = encoding::content_codings(&parts.headers).unwrap_or_default();
        if !codings.is_empty()
            && !codings.iter().all(|c| encoding::accepts(request, *c))
            && let Ok(decoded) = DecodingBody::new(body.clone(), &codings)
        {
            parts.headers.remove(header::CONTENT_ENCODING);
            return http::Response::from_parts(parts, ReplayBody::Decoded(decoded));
        }
        http::Response::from_parts(parts, ReplayBody::Stored(body))
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
        for never in [
            "authentication-info",
            "proxy-authentication-info",
            "idempotent-replayed",
        ] {
            h.insert(
                HeaderName::from_static(never),
                HeaderValue::from_static("x"),
            );
        }
        let s = StoredResponse::capture(StatusCode::CREATED, &h, b"{}", &ReplayHeaders::AllSafe);
        let names: Vec<&str> = s.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type", "x-request-id"]);
    }

    #[test]
    fn a_head_prefix_and_a_body_are_the_postcard_of_the_response() {
        for len in [0usize, 1, 127, 128, 300, 16_384, 70_000] {
            let s = StoredResponse {
                status: 201,
                headers: vec![("content-type".into(), b"text/event-stream".to_vec())],
                body: vec![b'x'; len],
            };
            let mut bytes = s.head().prefix(len);
            assert!(bytes.len() <= s.head().max_prefix_len());
            bytes.extend_from_slice(&s.body);
            assert_eq!(bytes, s.to_outcome().bytes, "len {len}");
        }
    }

    #[test]
    fn not_stored_records_round_trip() {
        let n = NotStored {
            status: 200,
            at_ms: 1_700_000_000_000,
            body_bytes: 64 << 20,
            limit: 8 << 20,
        };
        assert_eq!(
            Recorded::from_outcome(&n.to_outcome()).unwrap(),
            Recorded::NotStored(n)
        );
        let resolved = Outcome::new(Codec::Json, b"true".to_vec());
        assert!(matches!(
            Recorded::from_outcome(&resolved).unwrap(),
            Recorded::NotStored(NotStored { status: 0, .. })
        ));
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
