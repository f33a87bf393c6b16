//! Content codings (RFC 9110 section 8.4): `gzip`, `deflate`, `br` and `zstd`.
//!
//! Two uses, both bounded in memory whatever the input:
//!
//! * **request bodies**, decoded before they are fingerprinted, so the same JSON sent
//!   once compressed and once not (or compressed at two levels) is the same request.
//!   [`decode_bounded`] stops at a limit *after* decoding: a few KiB that inflate to
//!   gigabytes (a "zip bomb") cost the limit, never more, and are refused;
//! * **stored responses**, replayed decoded to a client whose `Accept-Encoding` does
//!   not accept the stored coding ([`DecodingBody`] inflates it 64 KiB at a time as
//!   the client reads).
//!
//! The zstd decoder refuses frames whose window is larger than 16 MiB (a frame can
//! otherwise ask for a 2 GiB window).
//!
//! ```
//! use idemp::http::encoding::{content_codings, decode_bounded, Coding};
//! use std::io::Write;
//! let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
//! gz.write_all(br#"{"amount":100}"#).unwrap();
//! let body = gz.finish().unwrap();
//! let mut headers = http::HeaderMap::new();
//! headers.insert("content-encoding", "gzip".parse().unwrap());
//! let codings = content_codings(&headers).unwrap();
//! assert_eq!(codings, [Coding::Gzip]);
//! assert_eq!(decode_bounded(&body, &codings, 1024).unwrap(), br#"{"amount":100}"#);
//! assert!(decode_bounded(&body, &codings, 4).is_err()); // larger than 4 bytes once decoded
//! ```

use std::io::{self, Read};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING};
use http_body::{Body, Frame, SizeHint};

/// The largest zstd window accepted (log2): 16 MiB.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// How much a [`DecodingBody`] inflates per frame.
const CHUNK: usize = 64 << 10;

/// A content coding this module decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Coding {
    /// `gzip` (and `x-gzip`), RFC 1952; concatenated members are read as one stream.
    Gzip,
    /// `deflate`: zlib (RFC 1950) as the RFC says, or raw deflate as some clients send.
    Deflate,
    /// `br`, Brotli (RFC 7932).
    Brotli,
    /// `zstd` (RFC 8878).
    Zstd,
}

impl Coding {
    /// The coding named by a token (case-insensitive), if this module decodes it.
    pub fn from_token(token: &str) -> Option<Self> {
        let t = token.trim();
        if t.eq_ignore_ascii_case("gzip") || t.eq_ignore_ascii_case("x-gzip") {
            Some(Self::Gzip)
        } else if t.eq_ignore_ascii_case("deflate") {
            Some(Self::Deflate)
        } else if t.eq_ignore_ascii_case("br") {
            Some(Self::Brotli)
        } else if t.eq_ignore_ascii_case("zstd") {
            Some(Self::Zstd)
        } else {
            None
        }
    }

    /// The token: `gzip`, `deflate`, `br`, `zstd`.
    pub fn token(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Deflate => "deflate",
            Self::Brotli => "br",
            Self::Zstd => "zstd",
        }
    }

    /// A reader that decodes `inner`.
    fn decoder<'a>(
        self,
        inner: Box<dyn Read + Send + 'a>,
    ) -> io::Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            Self::Gzip => Box::new(flate2::read::MultiGzDecoder::new(inner)),
            Self::Deflate => Box::new(DeflateAuto::new(inner)),
            Self::Brotli => Box::new(brotli_decompressor::Decompressor::new(inner, 4096)),
            Self::Zstd => {
                let mut d = zstd::stream::read::Decoder::new(inner)?;
                d.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
                Box::new(d)
            }
        })
    }
}

/// A `Content-Encoding` this module cannot decode (e.g. `compress`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unsupported content coding {0:?} (gzip, deflate, br and zstd are decoded)")]
pub struct UnknownCoding(pub String);

/// The codings of a message's `Content-Encoding`, in the order they were applied
/// (`identity` entries skipped). Empty when the body is not encoded.
pub fn content_codings(headers: &HeaderMap) -> Result<Vec<Coding>, UnknownCoding> {
    let mut out = Vec::new();
    for value in headers.get_all(CONTENT_ENCODING) {
        let text = value
            .to_str()
            .map_err(|_| UnknownCoding(String::from_utf8_lossy(value.as_bytes()).into_owned()))?;
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if token.eq_ignore_ascii_case("identity") {
                continue;
            }
            out.push(Coding::from_token(token).ok_or_else(|| UnknownCoding(token.to_owned()))?);
        }
    }
    Ok(out)
}

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The decoded body is larger than the limit.
    #[error("the body is larger than {limit} bytes once decoded")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The body is not valid for its coding.
    #[error("the {coding} body does not decode: {message}")]
    Corrupt {
        /// The coding's token.
        coding: &'static str,
        /// What the decoder said.
        message: String,
    },
}

/// Decodes `body`, encoded with `codings` (in the order applied), refusing to produce
/// more than `limit` bytes.
pub fn decode_bounded(
    body: &[u8],
    codings: &[Coding],
    limit: usize,
) -> Result<Vec<u8>, DecodeError> {
    let Some(outer) = codings.last() else {
        if body.len() > limit {
            return Err(DecodeError::TooLarge { limit });
        }
        return Ok(body.to_vec());
    };
    let corrupt = |e: io::Error| DecodeError::Corrupt {
        coding: outer.token(),
        message: e.to_string(),
    };
    let mut reader: Box<dyn Read + Send + '_> = Box::new(body);
    for coding in codings.iter().rev() {
        reader = coding.decoder(reader).map_err(corrupt)?;
    }
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit.saturating_add(1)));
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(corrupt)?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge { limit });
    }
    Ok(out)
}

/// Whether a request's `Accept-Encoding` accepts `coding` (RFC 9110 section 12.5.3).
///
/// A request without `Accept-Encoding` is taken to accept only `identity`: the RFC
/// allows any coding then, but the clients that omit the header (scripts, `curl`
/// without `--compressed`) are the ones that cannot decode.
pub fn accepts(headers: &HeaderMap, coding: Coding) -> bool {
    let mut star: Option<bool> = None;
    let mut seen = false;
    for value in headers.get_all(ACCEPT_ENCODING) {
        seen = true;
        let Ok(text) = value.to_str() else { continue };
        for item in text.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            if name.is_empty() {
                continue;
            }
            let q = parts
                .filter_map(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .or_else(|| p.trim().strip_prefix("Q="))
                })
                .filter_map(|v| v.trim().parse::<f32>().ok())
                .next()
                .unwrap_or(1.0);
            if name == "*" {
                star = Some(q > 0.0);
            } else if Coding::from_token(name) == Some(coding) {
                return q > 0.0;
            }
        }
    }
    seen && star.unwrap_or(false)
}

/// `deflate` as sent in practice: zlib-wrapped (what RFC 9110 means), or raw deflate
/// (what some clients send), told apart by the zlib header.
struct DeflateAuto<'a> {
    state: DeflateState<'a>,
}

/// The first bytes read back, then the rest of the input.
type Peeked<'a> = io::Chain<io::Cursor<Vec<u8>>, Box<dyn Read + Send + 'a>>;

enum DeflateState<'a> {
    Start(Option<Box<dyn Read + Send + 'a>>),
    Zlib(flate2::read::ZlibDecoder<Peeked<'a>>),
    Raw(flate2::read::DeflateDecoder<Peeked<'a>>),
}

impl<'a> DeflateAuto<'a> {
    fn new(inner: Box<dyn Read + Send + 'a>) -> Self {
        Self {
            state: DeflateState::Start(Some(inner)),
        }
    }
}

impl Read for DeflateAuto<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let DeflateState::Start(inner) = &mut self.state {
            let Some(mut inner) = inner.take() else {
                return Ok(0);
            };
            let mut head = [0u8; 2];
            let mut got = 0;
            while got < 2 {
                let n = inner.read(&mut head[got..])?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            let zlib = got == 2
                && head[0] & 0x0f == 8
                && head[0] >> 4 <= 7
                && (u16::from(head[0]) << 8 | u16::from(head[1])) % 31 == 0;
            let chained = io::Cursor::new(head[..got].to_vec()).chain(inner);
            self.state = if zlib {
                DeflateState::Zlib(flate2::read::ZlibDecoder::new(chained))
            } else {
                DeflateState::Raw(flate2::read::DeflateDecoder::new(chained))
            };
        }
        match &mut self.state {
            DeflateState::Start(_) => Ok(0),
            DeflateState::Zlib(d) => d.read(buf),
            DeflateState::Raw(d) => d.read(buf),
        }
    }
}

/// A response body that decodes a stored, encoded body as the client reads it, 64 KiB
/// per frame: memory stays bounded however far the body inflates.
pub struct DecodingBody {
    reader: Option<Box<dyn Read + Send + 'static>>,
    coding: Coding,
}

impl std::fmt::Debug for DecodingBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodingBody")
            .field("coding", &self.coding)
            .finish_non_exhaustive()
    }
}

impl DecodingBody {
    /// Decodes `body`, encoded with `codings` (in the order applied).
    pub fn new(body: Bytes, codings: &[Coding]) -> Result<Self, DecodeError> {
        let outer = codings.last().copied().unwrap_or(Coding::Gzip);
        let mut reader: Box<dyn Read + Send + 'static> = Box::new(io::Cursor::new(body));
        for coding in codings.iter().rev() {
            reader = coding.decoder(reader).map_err(|e| DecodeError::Corrupt {
                coding: coding.token(),
                message: e.to_string(),
            })?;
        }
        Ok(Self {
            reader: Some(reader),
            coding: outer,
        })
    }
}

impl Body for DecodingBody {
    type Data = Bytes;
    type Error = DecodeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DecodeError>>> {
        let this = self.get_mut();
        let Some(reader) = this.reader.as_mut() else {
            return Poll::Ready(None);
        };
        let mut buf = vec![0u8; CHUNK];
        let mut filled = 0;
        while filled < CHUNK {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    this.reader = None;
                    return Poll::Ready(Some(Err(DecodeError::Corrupt {
                        coding: this.coding.token(),
                        message: e.to_string(),
                    })));
                }
            }
        }
        if filled == 0 {
            this.reader = None;
            return Poll::Ready(None);
        }
        buf.truncate(filled);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
    }

    fn is_end_stream(&self) -> bool {
        self.reader.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn headers(ce: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_ENCODING, ce.parse().unwrap());
        h
    }

    #[test]
    fn every_coding_decodes() {
        let data = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#.repeat(10);
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zlib.write_all(&data).unwrap();
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(&data).unwrap();
        let zstd = zstd::encode_all(&data[..], 19).unwrap();
        for (coding, body) in [
            (Coding::Gzip, gzip(&data)),
            (Coding::Deflate, zlib.finish().unwrap()),
            (Coding::Deflate, raw.finish().unwrap()),
            (Coding::Zstd, zstd),
        ] {
            assert_eq!(
                decode_bounded(&body, &[coding], 1 << 20).unwrap(),
                data,
                "{coding:?}"
            );
        }
    }

    #[test]
    fn stacked_codings_decode_in_reverse_order() {
        let data = b"hello hello hello";
        let twice = zstd::encode_all(&gzip(data)[..], 3).unwrap();
        let codings = content_codings(&headers("gzip, zstd")).unwrap();
        assert_eq!(codings, [Coding::Gzip, Coding::Zstd]);
        assert_eq!(decode_bounded(&twice, &codings, 100).unwrap(), data);
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 128 << 10, "{}", bomb.len());
        assert!(matches!(
            decode_bounded(&bomb, &[Coding::Gzip], 1 << 20),
            Err(DecodeError::TooLarge { limit }) if limit == 1 << 20
        ));
    }

    #[test]
    fn corrupt_and_unknown_codings_are_errors() {
        assert!(matches!(
            decode_bounded(b"not gzip", &[Coding::Gzip], 100),
            Err(DecodeError::Corrupt { coding: "gzip", .. })
        ));
        assert_eq!(
            content_codings(&headers("compress")),
            Err(UnknownCoding("compress".into()))
        );
        assert_eq!(content_codings(&headers("identity")).unwrap(), []);
    }

    #[test]
    fn accept_encoding() {
        let mut h = HeaderMap::new();
        assert!(!accepts(&h, Coding::Gzip), "no header: identity only");
        h.insert(ACCEPT_ENCODING, "gzip, deflate, br".parse().unwrap());
        assert!(accepts(&h, Coding::Gzip));
        assert!(!accepts(&h, Coding::Zstd));
        h.insert(ACCEPT_ENCODING, "identity".parse().unwrap());
        assert!(!accepts(&h, Coding::Gzip));
        h.insert(ACCEPT_ENCODING, "*;q=0.5, gzip;q=0".parse().unwrap());
        assert!(!accepts(&h, Coding::Gzip));
        assert!(accepts(&h, Coding::Brotli));
    }

    #[tokio::test]
    async fn decoding_body_streams_in_bounded_frames() {
        let data = vec![7u8; 300 << 10];
        let body = DecodingBody::new(Bytes::from(gzip(&data)), &[Coding::Gzip]).unwrap();
        let mut body = std::pin::pin!(body);
        let mut total = Vec::new();
        while let Some(frame) = body.frame().await {
            let chunk = frame.unwrap().into_data().unwrap();
            assert!(chunk.len() <= CHUNK);
            total.extend_from_slice(&chunk);
        }
        assert_eq!(total, data);
    }
}
