//! Request paths in one canonical form, so that one resource is one record.
//!
//! `//v1/charges`, `/v1/charges/`, `/v1/%63harges` and `/v1/./charges` name the same
//! resource on most servers; keyed by their raw text they would be four records, and
//! a retry that a client library happens to spell differently would run again.
//! [`normalize`] gives one spelling:
//!
//! * empty segments are merged (`//a///b` → `/a/b`) and a trailing slash is dropped
//!   (`/a/` → `/a`; the root stays `/`);
//! * `.` segments are removed and `..` removes the segment before it (RFC 3986
//!   section 5.2.4); a `..` that would climb above the root is an error
//!   ([`PathError::AboveRoot`]), never clamped, so a proxy can refuse a path that
//!   tries to leave its upstream's base path;
//! * percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded
//!   (RFC 3986 section 6.2.2.2) and the other escapes are written in uppercase hex;
//!   an escape decoding to `.` takes part in dot-segment removal (`/%2e%2e/` is
//!   `..`), and an encoded `/` (`%2F`) stays encoded: it is data, not a separator.
//!
//! ```
//! use idemp::http::path::{normalize, PathError};
//! assert_eq!(normalize("//v1/charges/").unwrap(), "/v1/charges");
//! assert_eq!(normalize("/v1/%63harges").unwrap(), "/v1/charges");
//! assert_eq!(normalize("/v1/./x/../charges").unwrap(), "/v1/charges");
//! assert_eq!(normalize("/a%2fb").unwrap(), "/a%2Fb");
//! assert_eq!(normalize("/../admin"), Err(PathError::AboveRoot));
//! ```

use std::fmt::Write as _;

/// Why a path has no normal form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// A `..` segment climbs above the root (it would leave a proxy's base path).
    #[error("the path climbs above the root with `..`")]
    AboveRoot,
    /// A `%` is not followed by two hex digits.
    #[error("the path has a malformed percent escape at byte {0}")]
    BadEscape(usize),
    /// The path does not start with `/`.
    #[error("the path does not start with `/`")]
    NotAbsolute,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// One segment with unreserved escapes decoded and the others in uppercase.
fn normalize_segment(seg: &str, offset: usize, out: &mut String) -> Result<(), PathError> {
    let bytes = seg.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex_val),
                bytes.get(i + 2).copied().and_then(hex_val),
            ) else {
                return Err(PathError::BadEscape(offset + i));
            };
            let decoded = hi << 4 | lo;
            if is_unreserved(decoded) {
                out.push(decoded as char);
            } else {
                let _ = write!(out, "%{decoded:02X}");
            }
            i += 3;
        } else {
            // The `http` crate only lets visible ASCII (and some escapes) into a
            // path; anything else is copied as is.
            let ch_len = seg[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&seg[i..i + ch_len]);
            i += ch_len;
        }
    }
    Ok(())
}

/// The normal form of an absolute path (no query): see the [module docs](self).
pub fn normalize(path: &str) -> Result<String, PathError> {
    if path.is_empty() {
        return Ok("/".to_owned());
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let mut segments: Vec<String> = Vec::new();
    let mut offset = 1;
    for raw in path[1..].split('/') {
        let start = offset;
        offset += raw.len() + 1;
        if raw.is_empty() {
            continue;
        }
        let mut seg = String::with_capacity(raw.len());
        normalize_segment(raw, start, &mut seg)?;
        match seg.as_str() {
            "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            _ => segments.push(seg),
        }
    }
    if segments.is_empty() {
        return Ok("/".to_owned());
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    Ok(out)
}

/// A cheap check done before allocating: `true` means `path` is in normal form;
/// `false` means [`normalize`] must be asked (paths with escapes always answer
/// `false`).
pub fn is_normal(path: &str) -> bool {
    let b = path.as_bytes();
    if path == "/" {
        return true;
    }
    if b.first() != Some(&b'/') || b.last() == Some(&b'/') || path.contains("//") {
        return false;
    }
    if b.contains(&b'%') {
        return false;
    }
    !path
        .split('/')
        .skip(1)
        .any(|s| s == "." || s == ".." || s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spellings_of_one_resource_agree() {
        for p in [
            "/v1/charges",
            "//v1/charges",
            "/v1//charges",
            "/v1/charges/",
            "/v1/%63harges",
            "/v1/%63%68arges",
            "/v1/./charges",
            "/v1/x/../charges",
            "/v1/x/%2e%2E/charges",
            "/./v1/charges/.",
        ] {
            assert_eq!(normalize(p).unwrap(), "/v1/charges", "{p}");
        }
    }

    #[test]
    fn roots_and_escapes() {
        assert_eq!(normalize("").unwrap(), "/");
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("//").unwrap(), "/");
        assert_eq!(normalize("/a/..").unwrap(), "/");
        assert_eq!(normalize("/a%2fb").unwrap(), "/a%2Fb");
        assert_eq!(normalize("/a%20b").unwrap(), "/a%20b");
        assert_eq!(normalize("/%7Euser").unwrap(), "/~user");
        assert_eq!(normalize("/a/%2E%2E").unwrap(), "/");
    }

    #[test]
    fn refuses_what_has_no_normal_form() {
        assert_eq!(normalize("/.."), Err(PathError::AboveRoot));
        assert_eq!(normalize("/../admin"), Err(PathError::AboveRoot));
        assert_eq!(normalize("/a/../../b"), Err(PathError::AboveRoot));
        assert_eq!(normalize("/%2e%2e/admin"), Err(PathError::AboveRoot));
        assert_eq!(normalize("/a%2"), Err(PathError::BadEscape(2)));
        assert_eq!(normalize("/a/%zz"), Err(PathError::BadEscape(3)));
        assert_eq!(normalize("a/b"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn is_normal_agrees_with_normalize() {
        for p in [
            "/", "/a", "/a/b", "/a/", "//a", "/a/./b", "/a/../b", "/%41", "/a%2Fb", "/.a", "/..a",
        ] {
            let n = normalize(p);
            if is_normal(p) {
                assert_eq!(n.as_deref(), Ok(p), "{p}");
            } else if !p.contains('%') {
                assert_ne!(n.as_deref(), Ok(p), "{p}");
            }
        }
    }
}
