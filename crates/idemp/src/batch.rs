//! Stable `custom_id`s for Anthropic Message Batches.
//!
//! A batch request needs a `custom_id` (1–64 characters of `[A-Za-z0-9_-]`, unique
//! within the batch) to match results to requests. Deriving it from the request's
//! content instead of a counter or a random string means a batch resubmitted after
//! a crash or a timeout gets the **same** ids, so results already received can be
//! matched and nothing needs to be remembered between attempts.
//!
//! # The rule (stable; reproducible in any language)
//!
//! For the request at position *i*:
//!
//! ```text
//! custom_id = prefix ‖ hex32(SHA-256(content)) ‖ "-" ‖ n
//! ```
//!
//! - `content` is the python-compat canonical JSON of the request
//!   ([`canon::write_python_value`](crate::canon::write_python_value): sorted keys, no
//!   spaces, ASCII escapes), or the bytes given as is by [`CustomIds::for_bytes`];
//! - `hex32` is the lowercase hex of the first 16 bytes of the digest;
//! - `n` is the number of *earlier* requests in the batch with the same content
//!   (0 for the first occurrence, 1 for the first duplicate, …), in decimal.
//!
//! So an id depends only on the request itself and on how many equal requests come
//! before it: reordering or removing *different* requests never changes an id; only
//! removing or moving one of several equal requests renumbers the later equal ones.
//! The prefix is optional, at most [`MAX_PREFIX_LEN`] characters of `[A-Za-z0-9_-]`;
//! ids are then at most 20 + 32 + 1 + 11 = 64 characters for any batch of fewer than
//! 10¹¹ equal requests (far beyond what fits in memory).
//!
//! In Python (values):
//! ```python
//! import hashlib, json
//! def custom_ids(requests, prefix=""):
//!     seen = {}
//!     out = []
//!     for r in requests:
//!         c = json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
//!         h = hashlib.sha256(c.encode()).hexdigest()[:32]
//!         n = seen.get(h, 0); seen[h] = n + 1
//!         out.append(f"{prefix}{h}-{n}")
//!     return out
//! ```
//!
//! ```
//! use idemp::batch::custom_ids;
//! use serde_json::json;
//!
//! let requests = [
//!     json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}),
//!     json!({"max_tokens": 64, "model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}),
//! ];
//! let ids = custom_ids(&requests);
//! // Same content (key order does not matter): same hash, distinct occurrence index.
//! assert_eq!(ids[0][..32], ids[1][..32]);
//! assert!(ids[0].ends_with("-0") && ids[1].ends_with("-1"));
//! ```

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// The longest `custom_id` Anthropic accepts.
pub const MAX_CUSTOM_ID_LEN: usize = 64;

/// The longest prefix [`CustomIds::with_prefix`] accepts, so that every id fits in
/// [`MAX_CUSTOM_ID_LEN`].
pub const MAX_PREFIX_LEN: usize = 20;

/// Length of the content hash in an id (hex digits).
const HASH_HEX_LEN: usize = 32;

/// Why a `custom_id` or a prefix is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CustomIdError {
    /// A `custom_id` must have at least one character.
    #[error("custom_id is empty")]
    Empty,
    /// The id or the prefix is too long.
    #[error("{what} is {len} characters long; the maximum is {max}")]
    TooLong {
        /// `"custom_id"` or `"custom_id prefix"`.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The maximum allowed.
        max: usize,
    },
    /// A character outside `[A-Za-z0-9_-]`.
    #[error("{what} has {ch:?} at byte {position}; only A-Z, a-z, 0-9, '_' and '-' are allowed")]
    InvalidChar {
        /// `"custom_id"` or `"custom_id prefix"`.
        what: &'static str,
        /// The offending character.
        ch: char,
        /// Its 0-based byte offset.
        position: usize,
    },
}

/// Checks a `custom_id` against Anthropic's rules: 1–64 characters of `[A-Za-z0-9_-]`.
///
/// ```
/// use idemp::batch::{validate_custom_id, CustomIdError};
///
/// assert_eq!(validate_custom_id("req_1-a"), Ok(()));
/// assert!(matches!(validate_custom_id("req 1"), Err(CustomIdError::InvalidChar { ch: ' ', position: 3, .. })));
/// ```
pub fn validate_custom_id(id: &str) -> Result<(), CustomIdError> {
    if id.is_empty() {
        return Err(CustomIdError::Empty);
    }
    check_chars("custom_id", id, MAX_CUSTOM_ID_LEN)
}

fn check_chars(what: &'static str, s: &str, max: usize) -> Result<(), CustomIdError> {
    if let Some((position, ch)) = s
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        return Err(CustomIdError::InvalidChar { what, ch, position });
    }
    if s.len() > max {
        return Err(CustomIdError::TooLong {
            what,
            len: s.len(),
            max,
        });
    }
    Ok(())
}

/// Assigns stable `custom_id`s to the requests of a batch, with an optional prefix.
///
/// See the [module docs](self) for the rule.
///
/// ```
/// use idemp::batch::CustomIds;
///
/// let ids = CustomIds::with_prefix("nightly_")?.for_bytes([&b"a"[..], b"b", b"a"]);
/// assert_eq!(ids[0], "nightly_ca978112ca1bbdcafac231b39a23dc4d-0");
/// assert_eq!(ids[2], "nightly_ca978112ca1bbdcafac231b39a23dc4d-1");
/// # Ok::<(), idemp::batch::CustomIdError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomIds {
    prefix: String,
}

impl CustomIds {
    /// No prefix.
    pub fn new() -> Self {
        CustomIds::default()
    }

    /// Ids start with `prefix`: at most [`MAX_PREFIX_LEN`] characters of
    /// `[A-Za-z0-9_-]` (may be empty).
    pub fn with_prefix(prefix: impl Into<String>) -> Result<Self, CustomIdError> {
        let prefix = prefix.into();
        check_chars("custom_id prefix", &prefix, MAX_PREFIX_LEN)?;
        Ok(CustomIds { prefix })
    }

    /// The prefix (empty when none).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// One id per request, in order; content is the python-compat canonical JSON of
    /// each request (object key order does not matter).
    ///
    /// Takes a slice or any iterator of `&Value`, e.g.
    /// `requests.iter().map(|r| &r.params)`.
    pub fn for_values<'a, I>(&self, requests: I) -> Vec<String>
    where
        I: IntoIterator<Item = &'a serde_json::Value>,
    {
        let mut canonical = Vec::with_capacity(1024);
        self.assign(requests.into_iter().map(|request| {
            canonical.clear();
            crate::canon::write_python_value(request, &mut canonical);
            Sha256::digest(&canonical)
        }))
    }

    /// One id per item, in order; content is each item's bytes exactly as given
    /// (canonicalize them first if equal requests may be serialized differently).
    pub fn for_bytes<I>(&self, contents: I) -> Vec<String>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        self.assign(
            contents
                .into_iter()
                .map(|content| Sha256::digest(content.as_ref())),
        )
    }

    fn assign<D: AsRef<[u8]>>(&self, digests: impl Iterator<Item = D>) -> Vec<String> {
        let mut seen: HashMap<[u8; 16], u64> = HashMap::new();
        let mut ids = Vec::with_capacity(digests.size_hint().0);
        for digest in digests {
            let mut head = [0u8; 16];
            head.copy_from_slice(&digest.as_ref()[..16]);
            let occurrence = seen.entry(head).or_insert(0);
            ids.push(self.format(&head, *occurrence));
            *occurrence += 1;
        }
        ids
    }

    fn format(&self, head: &[u8; 16], occurrence: u64) -> String {
        use std::fmt::Write;
        let mut id = String::with_capacity(self.prefix.len() + HASH_HEX_LEN + 8);
        id.push_str(&self.prefix);
        for b in head {
            // Writing to a String never fails.
            let _ = write!(id, "{b:02x}");
        }
        let _ = write!(id, "-{occurrence}");
        debug_assert!(validate_custom_id(&id).is_ok(), "{id}");
        id
    }
}

/// [`CustomIds::for_values`] without a prefix.
pub fn custom_ids(requests: &[serde_json::Value]) -> Vec<String> {
    CustomIds::new().for_values(requests)
}

/// [`CustomIds::for_bytes`] without a prefix.
///
/// ```
/// let ids = idemp::batch::custom_ids_from_bytes(["x", "y", "x"]);
/// assert_eq!(ids.len(), 3);
/// assert_ne!(ids[0], ids[2]);
/// assert_eq!(ids[0][..32], ids[2][..32]);
/// ```
pub fn custom_ids_from_bytes<I>(contents: I) -> Vec<String>
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    CustomIds::new().for_bytes(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rules() {
        assert!(CustomIds::with_prefix("").is_ok());
        assert!(CustomIds::with_prefix("a".repeat(MAX_PREFIX_LEN)).is_ok());
        assert_eq!(
            CustomIds::with_prefix("a".repeat(21)),
            Err(CustomIdError::TooLong {
                what: "custom_id prefix",
                len: 21,
                max: 20
            })
        );
        let err = CustomIds::with_prefix("run/1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "custom_id prefix has '/' at byte 3; only A-Z, a-z, 0-9, '_' and '-' are allowed"
        );
        assert!(matches!(
            CustomIds::with_prefix("é"),
            Err(CustomIdError::InvalidChar {
                ch: 'é',
                position: 0,
                ..
            })
        ));
    }

    #[test]
    fn validate_rules() {
        assert_eq!(validate_custom_id(""), Err(CustomIdError::Empty));
        assert!(validate_custom_id(&"a".repeat(64)).is_ok());
        assert!(matches!(
            validate_custom_id(&"a".repeat(65)),
            Err(CustomIdError::TooLong { len: 65, .. })
        ));
        assert!(validate_custom_id("A-z_09").is_ok());
        assert!(validate_custom_id("a.b").is_err());
    }

    #[test]
    fn longest_prefix_and_large_occurrence_fit() {
        let ids = CustomIds::with_prefix("p".repeat(MAX_PREFIX_LEN)).unwrap();
        let id = ids.format(&[0xab; 16], 99_999_999_999);
        assert_eq!(id.len(), 64);
        assert_eq!(validate_custom_id(&id), Ok(()));
    }

    #[test]
    fn bytes_rule_matches_the_documented_formula() {
        let ids = custom_ids_from_bytes(["abc", "", "abc", "abc"]);
        assert_eq!(
            ids,
            [
                "ba7816bf8f01cfea414140de5dae2223-0",
                "e3b0c44298fc1c149afbf4c8996fb924-0",
                "ba7816bf8f01cfea414140de5dae2223-1",
                "ba7816bf8f01cfea414140de5dae2223-2",
            ]
        );
    }
}
