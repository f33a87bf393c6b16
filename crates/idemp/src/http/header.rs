//! The `Idempotency-Key` request header.
//!
//! The IETF draft (draft-ietf-httpapi-idempotency-key-header) defines the field as a
//! structured-field *string* item (`Idempotency-Key: "8e03978e-40d5-43e8"`). Many
//! clients (Stripe's, most SDKs) send the bare value instead, so both forms are
//! accepted:
//!
//! * `"abc"`: an RFC 8941 string: printable ASCII, `\"` and `\\` escapes, nothing
//!   after the closing quote but optional parameters (`;name=value`, ignored) and
//!   whitespace;
//! * `abc`: a bare value of visible ASCII without `"`, `\`, `;` or `,`.
//!
//! Either way the key is 1–255 characters of printable ASCII (0x20–0x7E; a bare key
//! cannot contain spaces).
//!
//! ```
//! use idemp::http::IdempotencyKey;
//! let k = IdempotencyKey::parse(br#""order-42""#).unwrap();
//! assert_eq!(k.as_str(), "order-42");
//! assert_eq!(IdempotencyKey::parse(b"order-42").unwrap(), k);
//! assert!(IdempotencyKey::parse(b"").is_err());
//! assert_eq!(k.to_header_value().to_str().unwrap(), r#""order-42""#);
//! ```

use std::fmt;

use http::HeaderValue;

/// The header's name, lowercase: `idempotency-key`.
pub const IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// The response header set on replays: `idempotent-replayed: true`.
pub const IDEMPOTENT_REPLAYED: http::HeaderName =
    http::HeaderName::from_static("idempotent-replayed");

/// The longest key accepted, in characters.
pub const MAX_KEY_LEN: usize = 255;

/// A validated idempotency key: 1–255 printable ASCII characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(String);

/// Why an `Idempotency-Key` header value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The value (or the string inside the quotes) is empty.
    #[error("the key is empty")]
    Empty,
    /// More than [`MAX_KEY_LEN`] characters.
    #[error("the key is {0} characters long; the limit is 255")]
    TooLong(usize),
    /// A byte outside printable ASCII (or a space in a bare key).
    #[error("the key contains byte 0x{byte:02x} at position {at}, outside printable ASCII")]
    InvalidByte {
        /// The offending byte.
        byte: u8,
        /// Its position in the header value.
        at: usize,
    },
    /// A quoted string without its closing quote, or a bad escape.
    #[error("malformed structured-field string: {0}")]
    Malformed(&'static str),
    /// The request carries more than one `Idempotency-Key` field.
    #[error("more than one Idempotency-Key header")]
    Multiple,
}

impl IdempotencyKey {
    /// Parses a header value in either accepted form (see the [module docs](self)).
    pub fn parse(value: &[u8]) -> Result<Self, KeyError> {
        let trimmed = trim_ows(value);
        let offset = value.len() - trim_ows_start(value).len();
        if trimmed.first() == Some(&b'"') {
            parse_sf_string(trimmed, offset)
        } else {
            parse_bare(trimmed, offset)
        }
    }

    /// A key from a string, checked like a bare key but allowing inner spaces
    /// (as a structured-field string would).
    pub fn new(key: impl Into<String>) -> Result<Self, KeyError> {
        let key = key.into();
        check_content(key.as_bytes(), 0, true)?;
        Ok(Self(key))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key serialized as a structured-field string (`"…"` with `\"`/`\\` escapes),
    /// the form the draft specifies.
    pub fn to_header_value(&self) -> HeaderValue {
        let mut out = Vec::with_capacity(self.0.len() + 2);
        out.push(b'"');
        for &b in self.0.as_bytes() {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
        // Printable ASCII only, so always a valid header value.
        HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
    }

    /// Reads the key from request headers: `Ok(None)` when absent, an error when
    /// invalid or repeated.
    pub fn from_headers(headers: &http::HeaderMap) -> Result<Option<Self>, KeyError> {
        let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
        let Some(first) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(KeyError::Multiple);
        }
        Self::parse(first.as_bytes()).map(Some)
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey({:?})", self.0)
    }
}

impl std::str::FromStr for IdempotencyKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes())
    }
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows_start(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| !is_ows(b)).unwrap_or(v.len());
    &v[start..]
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let v = trim_ows_start(v);
    let end = v.iter().rposition(|&b| !is_ows(b)).map_or(0, |i| i + 1);
    &v[..end]
}

/// Checks length and characters of a decoded key.
fn check_content(key: &[u8], offset: usize, allow_space: bool) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    for (i, &b) in key.iter().enumerate() {
        let ok = (0x21..=0x7e).contains(&b) || (allow_space && b == b' ');
        if !ok {
            return Err(KeyError::InvalidByte {
                byte: b,
                at: offset + i,
            });
        }
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong(key.len()));
    }
    Ok(())
}

fn parse_bare(v: &[u8], offset: usize) -> Result<IdempotencyKey, KeyError> {
    check_content(v, offset, false)?;
    if let Some(i) = v
        .iter()
        .position(|&b| matches!(b, b'"' | b'\\' | b';' | b','))
    {
        return Err(KeyError::InvalidByte {
            byte: v[i],
            at: offset + i,
        });
    }
    // check_content guarantees ASCII.
    Ok(IdempotencyKey(String::from_utf8_lossy(v).into_owned()))
}

/// RFC 8941 section 4.2.5 (strings), then optional parameters.
fn parse_sf_string(v: &[u8], offset: usize) -> Result<IdempotencyKey, KeyError> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 1;
    loop {
        let Some(&b) = v.get(i) else {
            return Err(KeyError::Malformed("missing closing quote"));
        };
        match b {
            b'\\' => {
                match v.get(i + 1) {
                    Some(&e @ (b'"' | b'\\')) => out.push(e),
                    Some(_) => return Err(KeyError::Malformed("only \\\" and \\\\ escapes")),
                    None => return Err(KeyError::Malformed("missing closing quote")),
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                break;
            }
            0x20..=0x7e => {
                out.push(b);
                i += 1;
            }
            _ => {
                return Err(KeyError::InvalidByte {
                    byte: b,
                    at: offset + i,
                });
            }
        }
        if out.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong(out.len()));
        }
    }
    check_params(&v[i..])?;
    check_content(&out, offset + 1, true)?;
    Ok(IdempotencyKey(String::from_utf8_lossy(&out).into_owned()))
}

/// After the string: nothing, or `;key[=value]` parameters (accepted and ignored).
fn check_params(rest: &[u8]) -> Result<(), KeyError> {
    let rest = trim_ows(rest);
    if rest.is_empty() {
        return Ok(());
    }
    if rest[0] != b';' {
        return Err(KeyError::Malformed(
            "unexpected characters after the string",
        ));
    }
    let ok = rest
        .iter()
        .all(|&b| (0x21..=0x7e).contains(&b) || b == b' ' || b == b'\t')
        && !rest.contains(&b',');
    if ok {
        Ok(())
    } else {
        Err(KeyError::Malformed("malformed parameters"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_both_forms() {
        assert_eq!(IdempotencyKey::parse(b"abc").unwrap().as_str(), "abc");
        assert_eq!(IdempotencyKey::parse(b"\"abc\"").unwrap().as_str(), "abc");
        assert_eq!(
            IdempotencyKey::parse(b"  \"a b\"  ").unwrap().as_str(),
            "a b"
        );
        assert_eq!(
            IdempotencyKey::parse(br#""a\"b\\c""#).unwrap().as_str(),
            r#"a"b\c"#
        );
        assert_eq!(IdempotencyKey::parse(b"\"k\";v=1").unwrap().as_str(), "k");
        let uuid = "8e03978e-40d5-43e8-bc93-6894a57f9324";
        assert_eq!(
            IdempotencyKey::parse(uuid.as_bytes()).unwrap().as_str(),
            uuid
        );
    }

    #[test]
    fn refuses_bad_values() {
        assert_eq!(IdempotencyKey::parse(b""), Err(KeyError::Empty));
        assert_eq!(IdempotencyKey::parse(b"\"\""), Err(KeyError::Empty));
        assert_eq!(
            IdempotencyKey::parse(&[b'a'; 256]),
            Err(KeyError::TooLong(256))
        );
        assert!(IdempotencyKey::parse(&[b'a'; 255]).is_ok());
        assert!(matches!(
            IdempotencyKey::parse(b"a b"),
            Err(KeyError::InvalidByte { byte: b' ', .. })
        ));
        assert!(matches!(
            IdempotencyKey::parse("é".as_bytes()),
            Err(KeyError::InvalidByte { .. })
        ));
        assert!(matches!(
            IdempotencyKey::parse(b"\"abc"),
            Err(KeyError::Malformed(_))
        ));
        assert!(matches!(
            IdempotencyKey::parse(b"\"a\\nb\""),
            Err(KeyError::Malformed(_))
        ));
        assert!(matches!(
            IdempotencyKey::parse(b"\"a\" x"),
            Err(KeyError::Malformed(_))
        ));
        assert!(matches!(
            IdempotencyKey::parse(b"a,b"),
            Err(KeyError::InvalidByte { byte: b',', .. })
        ));
    }

    #[test]
    fn multiple_headers_are_refused() {
        let mut h = http::HeaderMap::new();
        assert_eq!(IdempotencyKey::from_headers(&h), Ok(None));
        h.append(IDEMPOTENCY_KEY, HeaderValue::from_static("a"));
        assert!(IdempotencyKey::from_headers(&h).unwrap().is_some());
        h.append(IDEMPOTENCY_KEY, HeaderValue::from_static("b"));
        assert_eq!(IdempotencyKey::from_headers(&h), Err(KeyError::Multiple));
    }
}
