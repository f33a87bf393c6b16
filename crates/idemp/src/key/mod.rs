//! Idempotency keys: the same key on every attempt.
//!
//! A retry must carry the key of the first attempt, so keys are derived from what
//! the request *is*, never drawn fresh per attempt. This module has three layers:
//!
//! - **agentidemp-compatible functions** returning `String`: [`sha256_hex`],
//!   [`scoped_sha256_hex`], [`scoped_key`], [`uuid5_key`], [`random_key`] and the
//!   namespaces ([`NAMESPACE_ANTHROPIC`], [`NAMESPACE_DNS`], …). They are byte-identical
//!   to the Python package `agentidemp-py` 0.1.0 and the crate `agentidemp` 0.1.0
//!   (checked against vectors produced by the Python package and, on random inputs,
//!   against the crate), so a Python agent and a Rust service agree on keys.
//! - **[`Key`]**: a validated key (1–255 visible ASCII bytes) with constructors for
//!   each of the above ([`Key::sha256`], [`Key::scoped`], [`Key::uuid5`], …), for
//!   tool calls ([`for_args`]), and from untrusted text ([`Key::new`], `parse`).
//! - **[`Key::builder`]**: the recommended way for new code: injective (length-prefixed
//!   typed parts) and domain-separated, still `ik_` + 32 hex.
//!
//! Strings are hashed as their UTF-8 bytes, without Unicode normalization: `"é"`
//! precomposed and `"e\u{301}"` are different keys.
//!
//! ```
//! use idemp::key::{self, Key};
//!
//! // Compatible with `agentidemp.sha256_hex(b"abc")` in Python.
//! assert_eq!(key::sha256_hex("abc"), "ik_ba7816bf8f01cfea414140de5dae2223");
//!
//! // New code: a typed, injective key.
//! let k: Key = Key::builder("send_email").part_str("alice@example.com").part_u64(42).build();
//! assert!(k.as_str().starts_with("ik_"));
//!
//! // Untrusted text (e.g. an `Idempotency-Key` header) is validated.
//! assert!("a b".parse::<Key>().is_err());
//! ```

mod builder;
mod compat;
mod error;

use std::{borrow::Borrow, fmt, str::FromStr};

pub use builder::{BUILDER_DOMAIN, KeyBuilder};
pub use compat::{
    HASHED_KEY_LEN, NAMESPACE_ANTHROPIC, NAMESPACE_DNS, NAMESPACE_OID, NAMESPACE_URL,
    NAMESPACE_X500, random_key, scoped_key, scoped_sha256_hex, sha256_hex, uuid5_key,
};
pub use error::KeyError;
pub use uuid::Uuid;

/// The longest valid key, in bytes (as the IETF Idempotency-Key draft and Stripe).
pub const MAX_LEN: usize = 255;

/// A validated idempotency key: 1 to [`MAX_LEN`] bytes of visible ASCII
/// (`0x21..=0x7e`).
///
/// **Space (0x20) is not allowed.** HTTP trims spaces around header values, shells
/// and logs split on them, and a key copied with a trailing space would silently
/// become another key; every key this module derives (`ik_…`, UUIDs) is free of them.
/// Control characters, DEL and non-ASCII are rejected too.
///
/// A `Key` is a newtype over `String`: [`Display`](fmt::Display), [`AsRef<str>`],
/// [`Borrow<str>`] (so a `HashMap<Key, _>` can be looked up by `&str`), [`FromStr`],
/// `TryFrom<String>`/`TryFrom<&str>`, and serde (a JSON string, validated on
/// deserialization).
///
/// ```
/// use idemp::key::{Key, KeyError};
///
/// let k: Key = "ord_2024-11-22_0042".parse()?;
/// assert_eq!(k.as_str(), "ord_2024-11-22_0042");
/// assert_eq!(Key::new("x".repeat(256)), Err(KeyError::TooLong { len: 256 }));
///
/// let json = serde_json::to_string(&k).unwrap();
/// assert_eq!(json, "\"ord_2024-11-22_0042\"");
/// assert!(serde_json::from_str::<Key>("\"bad\\nkey\"").is_err());
/// # Ok::<(), KeyError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    /// Validates `key` and wraps it.
    pub fn new(key: impl Into<String>) -> Result<Key, KeyError> {
        let key = key.into();
        validate(&key)?;
        Ok(Key(key))
    }

    /// Wraps a string this module produced itself (always valid).
    pub(crate) fn from_trusted(key: String) -> Key {
        debug_assert!(validate(&key).is_ok(), "invalid derived key {key:?}");
        Key(key)
    }

    /// The key as `&str`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as its `String`.
    pub fn into_string(self) -> String {
        self.0
    }

    /// [`sha256_hex`] as a `Key`.
    pub fn sha256(content: impl AsRef<[u8]>) -> Key {
        Key::from_trusted(sha256_hex(content))
    }

    /// [`scoped_sha256_hex`] as a `Key`.
    pub fn scoped_sha256(scope: &str, content: impl AsRef<[u8]>) -> Key {
        Key::from_trusted(scoped_sha256_hex(scope, content))
    }

    /// [`scoped_key`] (agentidemp's NUL-joined form, not injective) as a `Key`.
    /// Prefer [`Key::builder`] in new code.
    pub fn scoped<I>(scope: &str, parts: I) -> Key
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        Key::from_trusted(scoped_key(scope, parts))
    }

    /// [`uuid5_key`] as a `Key`.
    pub fn uuid5(namespace: &Uuid, name: impl AsRef<[u8]>) -> Key {
        Key::from_trusted(uuid5_key(namespace, name))
    }

    /// [`random_key`] (a UUIDv4) as a `Key`.
    pub fn random() -> Key {
        Key::from_trusted(random_key())
    }

    /// [`for_args`]: the key of a tool call, independent of argument order.
    pub fn for_args(scope: &str, tool_name: &str, args: &serde_json::Value) -> Key {
        for_args(scope, tool_name, args)
    }

    /// Starts an injective, domain-separated key: see [`KeyBuilder`].
    ///
    /// ```
    /// use idemp::Key;
    ///
    /// let k = Key::builder("refund").part_str("cus_123").part_u64(2500).build();
    /// assert_eq!(k, Key::builder("refund").part(b"cus_123").part_u64(2500).build());
    /// assert_ne!(k, Key::builder("refund").part_str("cus_12").part_str("3").part_u64(2500).build());
    /// ```
    pub fn builder(scope: &str) -> KeyBuilder {
        KeyBuilder::new(scope)
    }
}

/// The key of a tool call: `scoped_key(scope, [tool_name, canonical_args])`, where
/// `canonical_args` is the python-compat canonical JSON of `args`
/// ([`canon::write_python_value`](crate::canon::write_python_value): keys sorted,
/// no spaces, ASCII-only escapes). Argument (object key) order never matters.
///
/// This is reproducible in Python with agentidemp-py alone:
/// ```python
/// import json, agentidemp
/// key = agentidemp.scoped_key(scope, tool_name,
///     json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=True))
/// ```
///
/// Like [`scoped_key`] it is not injective when `scope` or `tool_name` holds a NUL.
///
/// ```
/// use idemp::key::for_args;
/// use serde_json::json;
///
/// let a = for_args("agent-7", "send_email", &json!({"to": "a@example.com", "subject": "hi"}));
/// let b = for_args("agent-7", "send_email", &json!({"subject": "hi", "to": "a@example.com"}));
/// assert_eq!(a, b);
/// ```
pub fn for_args(scope: &str, tool_name: &str, args: &serde_json::Value) -> Key {
    let mut canonical = Vec::with_capacity(256);
    crate::canon::write_python_value(args, &mut canonical);
    Key::from_trusted(scoped_key(scope, [tool_name.as_bytes(), &canonical]))
}

/// Checks that `key` is a valid [`Key`] (1–255 bytes of visible ASCII) without
/// allocating.
///
/// ```
/// use idemp::key::{validate, KeyError};
///
/// assert_eq!(validate("ik_ba7816bf8f01cfea414140de5dae2223"), Ok(()));
/// assert_eq!(validate("caf\u{e9}"), Err(KeyError::InvalidByte { byte: 0xc3, position: 3 }));
/// ```
pub fn validate(key: &str) -> Result<(), KeyError> {
    let bytes = key.as_bytes();
    if bytes.is_empty() {
        return Err(KeyError::Empty);
    }
    if bytes.len() > MAX_LEN {
        return Err(KeyError::TooLong { len: bytes.len() });
    }
    match bytes.iter().position(|b| !(0x21..=0x7e).contains(b)) {
        Some(position) => Err(KeyError::InvalidByte {
            byte: bytes[position],
            position,
        }),
        None => Ok(()),
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl FromStr for Key {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Key, KeyError> {
        Key::new(s)
    }
}

impl TryFrom<String> for Key {
    type Error = KeyError;

    fn try_from(s: String) -> Result<Key, KeyError> {
        Key::new(s)
    }
}

impl TryFrom<&str> for Key {
    type Error = KeyError;

    fn try_from(s: &str) -> Result<Key, KeyError> {
        Key::new(s)
    }
}

impl From<Key> for String {
    fn from(key: Key) -> String {
        key.0
    }
}

impl PartialEq<str> for Key {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Key {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for Key {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Key, D::Error> {
        let s = String::deserialize(deserializer)?;
        Key::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_boundaries() {
        assert_eq!(validate("!"), Ok(()));
        assert_eq!(validate("~"), Ok(()));
        assert_eq!(validate(&"a".repeat(MAX_LEN)), Ok(()));
        assert_eq!(
            validate(&"a".repeat(MAX_LEN + 1)),
            Err(KeyError::TooLong { len: 256 })
        );
        for (s, byte, position) in [
            (" ", b' ', 0),
            ("ab\t", b'\t', 2),
            ("a\u{7f}", 0x7f, 1),
            ("a\0", 0, 1),
            ("k\u{1F600}", 0xf0, 1),
        ] {
            assert_eq!(
                validate(s),
                Err(KeyError::InvalidByte { byte, position }),
                "{s:?}"
            );
        }
    }

    #[test]
    fn error_messages_name_the_problem() {
        assert_eq!(KeyError::Empty.to_string(), "idempotency key is empty");
        assert_eq!(
            KeyError::TooLong { len: 300 }.to_string(),
            "idempotency key is 300 bytes long; the maximum is 255"
        );
        let msg = |byte, position| KeyError::InvalidByte { byte, position }.to_string();
        assert!(msg(b'\n', 4).contains("control character 0x0a at byte 4"));
        assert!(msg(0x7f, 0).contains("DEL (0x7f) at byte 0"));
        assert!(msg(0xe2, 9).contains("non-ASCII byte 0xe2 at byte 9"));
    }

    #[test]
    fn derived_keys_are_valid() {
        for k in [
            Key::sha256(""),
            Key::scoped("s", ["p"]),
            Key::scoped_sha256("s", "p"),
            Key::uuid5(&NAMESPACE_URL, "https://example.com"),
            Key::random(),
            Key::builder("").build(),
        ] {
            assert_eq!(validate(k.as_str()), Ok(()), "{k}");
        }
    }

    #[test]
    fn random_keys_are_v4_and_distinct() {
        let a = Key::random();
        let b = Key::random();
        assert_ne!(a, b);
        let uuid = Uuid::parse_str(a.as_str()).unwrap();
        assert_eq!(uuid.get_version_num(), 4);
        assert_eq!(a.as_str(), a.as_str().to_lowercase());
    }

    #[test]
    fn conversions_and_serde() {
        let k = Key::try_from(String::from("abc")).unwrap();
        assert_eq!(k, "abc");
        assert_eq!(String::from(k.clone()), "abc");
        let mut map = std::collections::HashMap::new();
        map.insert(k.clone(), 1);
        assert_eq!(map.get("abc"), Some(&1));
        assert_eq!(serde_json::to_value(&k).unwrap(), serde_json::json!("abc"));
        let err = serde_json::from_str::<Key>("\"a b\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("space (0x20) at byte 1"), "{err}");
        assert!(serde_json::from_str::<Key>("\"\"").is_err());
    }

    #[test]
    fn builder_types_are_separated() {
        let b = || Key::builder("s");
        assert_ne!(b().part_i64(-1).build(), b().part_u64(u64::MAX).build());
        assert_ne!(
            b().part_u64(7).build(),
            b().part(7u64.to_be_bytes()).build()
        );
        assert_eq!(b().part_str("x").build(), b().part(b"x").build());
        assert_ne!(b().build(), b().part("").build());
        assert_eq!(b().part("a").part("b").len(), 2);
    }
}
