//! Where a record lives in Redis: key names, the hash tag, the notification channel.
//!
//! ```text
//! <prefix>:<scope digest, 16 hex>:{<record digest, 32 hex>}   one hash per record
//! <prefix>:settled                                           pub/sub channel
//! ```
//!
//! Scope and key are arbitrary strings (they may contain `{`, `}`, `:` or anything
//! else), so they never appear in the key name: the name carries digests, and the
//! hash keeps the real scope and key (checked by every script, so a digest collision
//! is an error instead of a shared record). The record digest is the Cluster hash tag,
//! so everything of one record maps to one slot whatever its bytes. The scope digest
//! outside the tag lets `list` of one scope filter with `SCAN MATCH` server-side.

use sha2::{Digest, Sha256};

use crate::store::RecordKey;

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "idemp";

/// Key names under one prefix.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    prefix: String,
    channel: String,
}

impl Layout {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            channel: format!("{prefix}:settled"),
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The pub/sub channel that carries the digest of every settled, released or
    /// purged record.
    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    /// The record's Redis key.
    pub(crate) fn record_key(&self, id: &RecordKey) -> String {
        format!(
            "{}:{}:{{{}}}",
            self.prefix,
            scope_digest(&id.scope),
            record_digest(id)
        )
    }

    /// The record's Redis key and its digest (the hash tag and notification message),
    /// computing the digest once.
    pub(crate) fn locate(&self, id: &RecordKey) -> (String, String) {
        let digest = record_digest(id);
        let key = format!("{}:{}:{{{digest}}}", self.prefix, scope_digest(&id.scope));
        (key, digest)
    }

    /// `SCAN MATCH` pattern of every record (of one scope when given).
    pub(crate) fn match_pattern(&self, scope: Option<&str>) -> String {
        match scope {
            Some(s) => format!("{}:{}:{{*}}", glob_escape(&self.prefix), scope_digest(s)),
            None => format!("{}:*:{{*}}", glob_escape(&self.prefix)),
        }
    }
}

/// 16 hex characters (64 bits) of SHA-256 of the scope: only a server-side filter,
/// collisions just let `list` see (and then drop) another scope's records.
pub(crate) fn scope_digest(scope: &str) -> String {
    hex::encode(&Sha256::digest(scope.as_bytes())[..8])
}

/// 32 hex characters (128 bits) of SHA-256 of the length-prefixed scope and the key;
/// used as the record's notification message too.
pub(crate) fn record_digest(id: &RecordKey) -> String {
    let mut h = Sha256::new();
    h.update((id.scope.len() as u64).to_be_bytes());
    h.update(id.scope.as_bytes());
    h.update(id.key.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// Escapes glob metacharacters of `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
/// The digest inside a record key's hash tag.
pub(crate) fn digest_of_key(key: &[u8]) -> Option<&str> {
    let open = key.iter().rposition(|&b| b == b'{')?;
    let inner = key.get(open + 1..key.len().checked_sub(1)?)?;
    std::str::from_utf8(inner).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arbitrary_bytes_never_reach_the_tag() {
        let l = Layout::new("app");
        for (scope, key) in [
            ("a{b", "}c"),
            ("", "{}"),
            ("x:y", "{z}:{w}"),
            ("\u{1f}", "\0"),
        ] {
            let k = l.record_key(&RecordKey::new(scope, key));
            assert_eq!(k.matches('{').count(), 1, "{k}");
            assert_eq!(k.matches('}').count(), 1, "{k}");
            assert!(k.ends_with('}'));
            assert_eq!(digest_of_key(k.as_bytes()).map(str::len), Some(32));
        }
    }

    #[test]
    fn scripts_find_channel_and_digest_in_the_key() {
        // `announce` in lua/prelude.lua: prefix = all but the last 52 bytes, digest =
        // the 32 bytes before the closing brace.
        for prefix in ["idemp", "p", "a:b{c}", "\u{e9}t\u{e9}"] {
            let l = Layout::new(prefix);
            let id = RecordKey::new("s", "k");
            let (key, digest) = l.locate(&id);
            let n = key.len();
            assert_eq!(format!("{}:settled", &key[..n - 52]), l.channel());
            assert_eq!(&key[n - 33..n - 1], digest);
        }
    }

    #[test]
    fn scope_and_key_boundary_is_unambiguous() {
        assert_ne!(
            record_digest(&RecordKey::new("ab", "c")),
            record_digest(&RecordKey::new("a", "bc"))
        );
    }

    #[test]
    fn match_pattern_selects_scope() {
        let l = Layout::new("p*x");
        let k = l.record_key(&RecordKey::new("s", "k"));
        assert!(k.starts_with("p*x:"));
        assert!(l.match_pattern(Some("s")).starts_with("p\\*x:"));
        assert!(l.match_pattern(Some("s")).contains(&scope_digest("s")));
    }
}
