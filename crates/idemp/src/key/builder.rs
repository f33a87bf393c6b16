//! [`KeyBuilder`]: injective, domain-separated keys for new code.

use std::fmt;

use sha2::{Digest, Sha256};

use super::{Key, compat::ik_hex};

/// The domain tag every builder hash starts with. A new encoding gets a new tag.
pub const BUILDER_DOMAIN: &[u8] = b"idemp/key/v1\0";

/// Type tags of the parts; part of the encoding, never change them.
const TAG_BYTES: u8 = 0x01;
const TAG_U64: u8 = 0x02;
const TAG_I64: u8 = 0x03;
const TAG_JSON: u8 = 0x04;

/// Builds an `ik_` + 32 hex key from a scope and typed parts, injectively.
///
/// Made by [`Key::builder`]. Unlike the agentidemp-compatible
/// [`scoped_key`](super::scoped_key), two different part lists never give the same
/// input to the hash, whatever bytes (NULs included) they hold and wherever their
/// boundaries fall. Keys then differ unless SHA-256 truncated to 128 bits collides.
///
/// # Encoding (version 1, stable)
///
/// SHA-256 over, in order:
/// 1. the domain tag `b"idemp/key/v1\0"` ([`BUILDER_DOMAIN`]);
/// 2. the scope: `u64_be(len) ‖ scope_utf8`;
/// 3. each part: `tag ‖ u64_be(len) ‖ bytes`, where the tag is `0x01` for bytes and
///    strings ([`part`](Self::part), [`part_str`](Self::part_str); a string is its
///    UTF-8 bytes), `0x02` for [`part_u64`](Self::part_u64) and `0x03` for
///    [`part_i64`](Self::part_i64) (8 bytes, big-endian, two's complement), and `0x04`
///    for [`part_json`](Self::part_json) (the python-compat canonical JSON, as
///    `json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=True)`).
///
/// The key is `"ik_"` + lowercase hex of the first 16 bytes of the digest. The
/// encoding is prefix-free, so it decodes back to exactly one (scope, parts) list:
/// that is the injectivity. Because the tag makes every encoding start with
/// `idemp/key/v1\0` followed by 8 length bytes, and the encoding is always longer
/// than the `scope ‖ 0x00 ‖ p0 ‖ …` input of [`scoped_key`](super::scoped_key) for the
/// same scope and parts, a builder key never equals the legacy key of the same inputs.
///
/// In Python:
/// ```python
/// import hashlib
/// def builder_key(scope: str, parts: list[bytes]) -> str:   # byte/str parts only
///     h = hashlib.sha256(b"idemp/key/v1\0")
///     s = scope.encode()
///     h.update(len(s).to_bytes(8, "big") + s)
///     for p in parts:
///         h.update(b"\x01" + len(p).to_bytes(8, "big") + p)
///     return "ik_" + h.digest()[:16].hex()
/// ```
///
/// ```
/// use idemp::Key;
///
/// let a = Key::builder("payments").part_str("a\0b").part_str("c").build();
/// let b = Key::builder("payments").part_str("a").part_str("b\0c").build();
/// assert_ne!(a, b);
/// assert!(a.as_str().starts_with("ik_"));
/// assert_eq!(a.as_str().len(), 35);
/// ```
#[derive(Clone)]
pub struct KeyBuilder {
    hasher: Sha256,
    parts: usize,
}

impl KeyBuilder {
    pub(super) fn new(scope: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(BUILDER_DOMAIN);
        hasher.update(len_be(scope.len()));
        hasher.update(scope.as_bytes());
        KeyBuilder { hasher, parts: 0 }
    }

    fn tagged(mut self, tag: u8, bytes: &[u8]) -> Self {
        self.hasher.update([tag]);
        self.hasher.update(len_be(bytes.len()));
        self.hasher.update(bytes);
        self.parts += 1;
        self
    }

    /// Appends a part made of raw bytes.
    pub fn part(self, bytes: impl AsRef<[u8]>) -> Self {
        self.tagged(TAG_BYTES, bytes.as_ref())
    }

    /// Appends a text part (its UTF-8 bytes: `part_str(s)` equals `part(s)`).
    pub fn part_str(self, text: &str) -> Self {
        self.tagged(TAG_BYTES, text.as_bytes())
    }

    /// Appends an unsigned integer part. It never equals a byte or `i64` part.
    pub fn part_u64(self, n: u64) -> Self {
        self.tagged(TAG_U64, &n.to_be_bytes())
    }

    /// Appends a signed integer part. It never equals a byte or `u64` part, so
    /// `part_i64(-1)` and `part_u64(u64::MAX)` give different keys.
    pub fn part_i64(self, n: i64) -> Self {
        self.tagged(TAG_I64, &n.to_be_bytes())
    }

    /// Appends a JSON value as its python-compat canonical form
    /// ([`canon::write_python_value`](crate::canon::write_python_value)), so object key
    /// order does not matter. It never equals a byte or string part.
    ///
    /// ```
    /// use idemp::Key;
    /// use serde_json::json;
    ///
    /// let a = Key::builder("agent-7").part_str("send_email").part_json(&json!({"to": "a@x.io", "cc": []})).build();
    /// let b = Key::builder("agent-7").part_str("send_email").part_json(&json!({"cc": [], "to": "a@x.io"})).build();
    /// assert_eq!(a, b);
    /// ```
    pub fn part_json(self, value: &serde_json::Value) -> Self {
        let mut canonical = Vec::with_capacity(128);
        crate::canon::write_python_value(value, &mut canonical);
        self.tagged(TAG_JSON, &canonical)
    }

    /// How many parts were appended so far.
    pub fn len(&self) -> usize {
        self.parts
    }

    /// Whether no part was appended yet.
    pub fn is_empty(&self) -> bool {
        self.parts == 0
    }

    /// Finishes the key: `"ik_"` + 32 lowercase hex digits.
    pub fn build(self) -> Key {
        Key::from_trusted(ik_hex(&self.hasher.finalize()))
    }
}

impl fmt::Debug for KeyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyBuilder")
            .field("parts", &self.parts)
            .finish_non_exhaustive()
    }
}

fn len_be(len: usize) -> [u8; 8] {
    // usize is at most 64 bits on every supported target.
    (len as u64).to_be_bytes()
}
