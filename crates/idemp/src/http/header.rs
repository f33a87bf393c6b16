//! The `Idempotency-Key` request header, read into the one key type of the crate,
//! [`Key`].
//!
//! The IETF draft (draft-ietf-httpapi-idempotency-key-header) defines the field as a
//! structured-field *string* item (`Idempotency-Key: "8e03978e-40d5-43e8"`). Many
//! clients (Stripe's, most SDKs) send the bare value instead, so both forms are
//! accepted:
//!
//! * `"abc"`: an RFC 8941 string (`\"` and `\\` escapes), then nothing but optional
//!   parameters (`;name=value`, ignored) and whitespace;
//! * `abc`: a bare value without `"`, `\`, `;` or `,`.
//!
//! Either way the key itself must be a valid [`Key`]: 1–255 bytes
//! of **visible** ASCII (`0x21..=0x7e`). A space is refused even inside quotes (`"a
//! b"`), exactly as the guard and the client refuse it, so one key means the same
//! thing everywhere. Errors say what is wrong, with the key's real length and the
//! byte's real position.
//!
//! ```
//! use idemp::http::header;
//! let k = header::parse(br#""order-42""#).unwrap();
//! assert_eq!(k.as_str(), "order-42");
//! assert_eq!(header::parse(b"order-42").unwrap(), k);
//! assert!(header::parse(b"\"order 42\"").is_err());
//! assert_eq!(
//!     header::parse("x".repeat(10_000).as_bytes()).unwrap_err().to_string(),
//!     "idempotency key is 10000 bytes long; the maximum is 255"
//! );
//! assert_eq!(header::to_header_value(&k), "order-42");
//! ```

use http::HeaderValue;

use crate::key::{self, Key};

/// The header's name, lowercase: `idempotency-key`.
pub const IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// The response header set on replays: `idempotent-replayed: true`.
pub const IDEMPOTENT_REPLAYED: http::HeaderName =
    http::HeaderName::from_static("idempotent-replayed");

/// The longest key accepted, in bytes ([`key::MAX_LEN`]).
pub const MAX_KEY_LEN: usize = key::MAX_LEN;

/// Why an `Idempotency-Key` header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The value is not a valid key (empty, too long, a byte outside visible ASCII).
    #[error(transparent)]
    Key(#[from] key::KeyError),
    /// A quoted string without its closing quote, a bad escape, or junk after it.
    #[error("malformed structured-field string: {0}")]
    Malformed(&'static str),
    /// A bare value holding `"`, `\`, `;` or `,` (quote the key to send those).
    #[error("a bare key cannot hold {0:?}; send it as a quoted string")]
    Delimiter(char),
    /// The request carries more than one `Idempotency-Key` field.
    #[error("more than one Idempotency-Key header")]
    Multiple,
}

/// Parses a header value in either accepted form (see the [module docs](self)).
pub fn parse(value: &[u8]) -> Result<Key, KeyError> {
    let trimmed = trim_ows(value);
    let raw = if trimmed.first() == Some(&b'"') {
        parse_sf_string(trimmed)?
    } else {
        parse_bare(trimmed)?
    };
    Ok(to_key(&raw)?)
}

/// Validates the decoded bytes as [`Key`] does (same order of checks, same errors),
/// on bytes rather than text, so the offending byte is reported as it was sent.
fn to_key(raw: &[u8]) -> Result<Key, key::KeyError> {
    if raw.is_empty() {
        return Err(key::KeyError::Empty);
    }
    if raw.len() > key::MAX_LEN {
        return Err(key::KeyError::TooLong { len: raw.len() });
    }
    if let Some(position) = raw.iter().position(|b| !(0x21..=0x7e).contains(b)) {
        return Err(key::KeyError::InvalidByte {
            byte: raw[position],
            position,
        });
    }
    // Visible ASCII: valid UTF-8 and a valid key.
    Key::new(String::from_utf8_lossy(raw).into_owned())
}

/// Reads the key from request headers: `Ok(None)` when absent, an error when invalid
/// or repeated.
pub fn from_headers(headers: &http::HeaderMap) -> Result<Option<Key>, KeyError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(KeyError::Multiple);
    }
    parse(first.as_bytes()).map(Some)
}

/// The header value for a key: the bare key when it can be sent bare (what most
/// servers expect), else a structured-field string with `\"` / `\\` escapes.
/// [`parse`] reads either back to the same key.
pub fn to_header_value(key: &Key) -> HeaderValue {
    let s = key.as_str();
    if !s.bytes().any(|b| matches!(b, b'"' | b'\\' | b';' | b',')) {
        // A key is visible ASCII: always a valid header value.
        if let Ok(v) = HeaderValue::from_str(s) {
            return v;
        }
    }
    let mut out = Vec::with_capacity(s.len() + 2);
    out.push(b'"');
    for &b in s.as_bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| !is_ows(b)).unwrap_or(v.len());
    let v = &v[start..];
    let end = v.iter().rposition(|&b| !is_ows(b)).map_or(0, |i| i + 1);
    &v[..end]
}

/// A bare value: the key as is, without delimiters.
fn parse_bare(v: &[u8]) -> Result<Vec<u8>, KeyError> {
    if let Some(&d) = v.iter().find(|&&b| matches!(b, b'"' | b'\\' | b';' | b',')) {
        return Err(KeyError::Delimiter(char::from(d)));
    }
    Ok(v.to_vec())
}

/// RFC 8941 section 4.2.5 (strings), then optional parameters. The whole string is
/// decoded whatever its length, so a too-long key reports its real length.
fn parse_sf_string(v: &[u8]) -> Result<Vec<u8>, KeyError> {
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
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    check_params(&v[i..])?;
    Ok(out)
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

    fn err(v: &[u8]) -> KeyError {
        parse(v).unwrap_err()
    }

    #[test]
    fn accepts_both_forms() {
        assert_eq!(parse(b"abc").unwrap().as_str(), "abc");
        assert_eq!(parse(b"\"abc\"").unwrap().as_str(), "abc");
        assert_eq!(parse(b"  \"ab\"  ").unwrap().as_str(), "ab");
        assert_eq!(parse(br#""a\"b\\c""#).unwrap().as_str(), r#"a"b\c"#);
        assert_eq!(parse(b"\"k\";v=1").unwrap().as_str(), "k");
        let uuid = "8e03978e-40d5-43e8-bc93-6894a57f9324";
        assert_eq!(parse(uuid.as_bytes()).unwrap().as_str(), uuid);
    }

    #[test]
    fn refuses_what_the_key_type_refuses() {
        assert_eq!(err(b""), KeyError::Key(key::KeyError::Empty));
        assert_eq!(err(b"\"\""), KeyError::Key(key::KeyError::Empty));
        assert_eq!(
            err(&[b'a'; 256]),
            KeyError::Key(key::KeyError::TooLong { len: 256 })
        );
        let mut quoted = vec![b'"'];
        quoted.extend([b'a'; 10_000]);
        quoted.push(b'"');
        assert_eq!(
            err(&quoted),
            KeyError::Key(key::KeyError::TooLong { len: 10_000 })
        );
        assert!(parse(&[b'a'; 255]).is_ok());
        // Inner spaces are refused in both forms, as `Key` refuses them.
        assert_eq!(
            err(b"a b"),
            KeyError::Key(key::KeyError::InvalidByte {
                byte: b' ',
                position: 1
            })
        );
        assert_eq!(
            err(b"\"a b\""),
            KeyError::Key(key::KeyError::InvalidByte {
                byte: b' ',
                position: 1
            })
        );
        assert_eq!(
            err(b"ab\xff"),
            KeyError::Key(key::KeyError::InvalidByte {
                byte: 0xff,
                position: 2
            })
        );
        assert!(matches!(err(b"\"abc"), KeyError::Malformed(_)));
        assert!(matches!(err(b"\"a\\nb\""), KeyError::Malformed(_)));
        assert!(matches!(err(b"\"a\" x"), KeyError::Malformed(_)));
        assert_eq!(err(b"a,b"), KeyError::Delimiter(','));
    }

    #[test]
    fn header_values_round_trip() {
        for k in [
            "plain-key",
            r#"with"quote"#,
            r"back\slash",
            "semi;colon",
            "a,b",
        ] {
            let key = Key::new(k).unwrap();
            assert_eq!(parse(to_header_value(&key).as_bytes()).unwrap(), key);
        }
        assert_eq!(
            to_header_value(&Key::new("a;b").unwrap()),
            HeaderValue::from_static("\"a;b\"")
        );
    }

    #[test]
    fn multiple_headers_are_refused() {
        let mut h = http::HeaderMap::new();
        assert_eq!(from_headers(&h), Ok(None));
        h.append(IDEMPOTENCY_KEY, HeaderValue::from_static("a"));
        assert!(from_headers(&h).unwrap().is_some());
        h.append(IDEMPOTENCY_KEY, HeaderValue::from_static("b"));
        assert_eq!(from_headers(&h), Err(KeyError::Multiple));
    }
}
