//! The key functions of `agentidemp-py` 0.1.0 and the `agentidemp` 0.1.0 crate,
//! byte for byte.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The RFC 4122 DNS namespace `6ba7b810-9dad-11d1-80b4-00c04fd430c8`.
///
/// The name is historical: `agentidemp` (Python and Rust) exports the DNS namespace
/// under this name as "a convenient anchor". It is kept so code ported from
/// `agentidemp` gives the same UUIDs; it equals [`NAMESPACE_DNS`].
///
/// ```
/// assert_eq!(idemp::key::NAMESPACE_ANTHROPIC, idemp::key::NAMESPACE_DNS);
/// ```
pub const NAMESPACE_ANTHROPIC: Uuid = Uuid::NAMESPACE_DNS;

/// The RFC 4122 DNS namespace `6ba7b810-9dad-11d1-80b4-00c04fd430c8`.
pub const NAMESPACE_DNS: Uuid = Uuid::NAMESPACE_DNS;

/// The RFC 4122 URL namespace `6ba7b811-9dad-11d1-80b4-00c04fd430c8`.
pub const NAMESPACE_URL: Uuid = Uuid::NAMESPACE_URL;

/// The RFC 4122 ISO OID namespace `6ba7b812-9dad-11d1-80b4-00c04fd430c8`.
pub const NAMESPACE_OID: Uuid = Uuid::NAMESPACE_OID;

/// The RFC 4122 X.500 DN namespace `6ba7b814-9dad-11d1-80b4-00c04fd430c8`.
pub const NAMESPACE_X500: Uuid = Uuid::NAMESPACE_X500;

/// The prefix of every hashed key.
pub(crate) const IK_PREFIX: &str = "ik_";

/// Length of a hashed key: `"ik_"` + 32 lowercase hex digits.
pub const HASHED_KEY_LEN: usize = 35;

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// `"ik_"` + lowercase hex of the first 16 bytes of `digest`, formatted in a stack
/// buffer and copied into one exactly-sized `String` allocation.
pub(crate) fn ik_hex(digest: &[u8]) -> String {
    let mut buf = [0u8; HASHED_KEY_LEN];
    buf[..3].copy_from_slice(IK_PREFIX.as_bytes());
    for (i, &b) in digest.iter().take(16).enumerate() {
        buf[3 + 2 * i] = HEX_DIGITS[usize::from(b >> 4)];
        buf[4 + 2 * i] = HEX_DIGITS[usize::from(b & 0x0f)];
    }
    // Every byte written is ASCII, so this never fails; an empty string would only be
    // returned if that invariant were broken.
    std::str::from_utf8(&buf)
        .map(str::to_owned)
        .unwrap_or_default()
}

/// `"ik_"` + lowercase hex of the first 16 bytes of SHA-256(`content`): 35 characters.
///
/// Same as `agentidemp.sha256_hex` (Python, for `str` and `bytes`) and
/// `agentidemp::sha256_hex` (Rust). A `&str` is hashed as its UTF-8 bytes, with no
/// Unicode normalization.
///
/// ```
/// use idemp::key::sha256_hex;
///
/// assert_eq!(sha256_hex("abc"), "ik_ba7816bf8f01cfea414140de5dae2223");
/// assert_eq!(sha256_hex(b"abc"), sha256_hex("abc"));
/// ```
pub fn sha256_hex(content: impl AsRef<[u8]>) -> String {
    ik_hex(&Sha256::digest(content.as_ref()))
}

/// [`sha256_hex`] over `scope_utf8 ‖ 0x00 ‖ content`.
///
/// Same as `agentidemp.scoped_sha256_hex` and `agentidemp::scoped_sha256_hex`, and
/// the same as [`scoped_key`] with one part.
///
/// ```
/// use idemp::key::{scoped_key, scoped_sha256_hex, sha256_hex};
///
/// let k = scoped_sha256_hex("tenant-7", b"{\"amount\":100}");
/// assert_eq!(k, sha256_hex(b"tenant-7\0{\"amount\":100}"));
/// assert_eq!(k, scoped_key("tenant-7", ["{\"amount\":100}"]));
/// ```
pub fn scoped_sha256_hex(scope: &str, content: impl AsRef<[u8]>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(scope.as_bytes());
    hasher.update([0u8]);
    hasher.update(content.as_ref());
    ik_hex(&hasher.finalize())
}

/// [`sha256_hex`] over `scope ‖ 0x00 ‖ p0 ‖ 0x00 ‖ p1 ‖ …`; with no parts, that is
/// `sha256_hex(scope)`.
///
/// Same as Python's `agentidemp.scoped_key(scope, *parts)`. Parts may be `&str`,
/// `String`, `&[u8]`, `Vec<u8>`… (anything `AsRef<[u8]>`).
///
/// **Not injective**: a NUL byte inside the scope or a part cannot be told apart
/// from a separator, so `scoped_key("a\0b", ["c"]) == scoped_key("a", ["b", "c"])`,
/// and `scoped_key("a", [""])` is the key of the bytes `a\0` while
/// `scoped_key("a", [] as [&str; 0])` is the key of `a`. It is kept for
/// compatibility with agentidemp; new code should use [`Key::builder`](super::Key::builder),
/// which is injective and domain-separated.
///
/// ```
/// use idemp::key::{scoped_key, sha256_hex};
///
/// assert_eq!(scoped_key("billing", ["user-1", "order-9"]), sha256_hex("billing\0user-1\0order-9"));
/// assert_eq!(scoped_key("billing", [] as [&str; 0]), sha256_hex("billing"));
/// // The collision the builder avoids:
/// assert_eq!(scoped_key("a\0b", ["c"]), scoped_key("a", ["b", "c"]));
/// ```
pub fn scoped_key<I>(scope: &str, parts: I) -> String
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    let mut hasher = Sha256::new();
    hasher.update(scope.as_bytes());
    for part in parts {
        hasher.update([0u8]);
        hasher.update(part.as_ref());
    }
    ik_hex(&hasher.finalize())
}

/// The RFC 4122 version-5 (SHA-1, name-based) UUID of `name` in `namespace`, as a
/// lowercase hyphenated string (36 characters).
///
/// Same as Python's `agentidemp.uuid5_key(namespace, name)` and
/// `agentidemp::uuid_v5(&namespace, name).to_string()` for every `&str`, and for every
/// byte string that is valid UTF-8.
///
/// **Invalid UTF-8**: the name is hashed as raw bytes, as RFC 4122 (a name is a
/// sequence of octets) and the `agentidemp` crate do. The Python package instead
/// decodes `bytes` as UTF-8 first and raises `UnicodeDecodeError`, so for such names
/// there is no Python value to match; this function still returns the crate's value
/// rather than failing.
///
/// ```
/// use idemp::key::{uuid5_key, NAMESPACE_DNS};
///
/// assert_eq!(uuid5_key(&NAMESPACE_DNS, "python.org"), "886313e1-3b8a-5372-9b90-0c9aee199e5d");
/// ```
pub fn uuid5_key(namespace: &Uuid, name: impl AsRef<[u8]>) -> String {
    Uuid::new_v5(namespace, name.as_ref()).to_string()
}

/// A fresh random version-4 UUID string (lowercase, hyphenated), as
/// `agentidemp.random_key()`.
///
/// Only for the very first attempt of something that has no content to derive a key
/// from: store it and send the same key on every retry.
pub fn random_key() -> String {
    Uuid::new_v4().to_string()
}
