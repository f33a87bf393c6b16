//! Canonical JSON for request hashing: two requests that mean the same get the same
//! bytes, hence the same hash and the same idempotency key.
//!
//! Two formats ([`Format`]):
//!
//! - **python** (the default): byte-identical to llm-message-hash-py 0.1.0
//!   `canonical_json` / `hash_request`, that is CPython `json.loads` followed by
//!   `json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)`: keys in
//!   code-point order, everything outside printable ASCII escaped as `\uXXXX`
//!   (surrogate pairs above U+FFFF), floats as Python `repr` (`1e-07`, `1e+16`, `-0.0`),
//!   integers exact at any size, `NaN`/`Infinity` kept, duplicate keys: the last wins.
//! - **jcs**: RFC 8785, the JSON Canonicalization Scheme: keys in UTF-16 order, numbers
//!   as ECMAScript prints doubles, raw UTF-8, and errors on what I-JSON forbids
//!   (duplicate keys, NaN, lone surrogates) anywhere in the input, in dropped parts
//!   too: an input that is not I-JSON has no JCS form.
//!
//! Fields that change between attempts without changing the meaning (`id`, `usage`,
//! `cache_control`…) are dropped first: by name at any depth (a [`Preset`] or
//! [`Canonicalizer::drop_key`]) or by position ([`Canonicalizer::drop_path`], for a
//! field whose name is also used by user data).
//!
//! ## What is accepted
//!
//! Exactly what CPython's `json.loads(bytes)` accepts, for UTF-8 input: `NaN`,
//! `Infinity` and `-Infinity`; JSON whitespace only; no raw control characters in
//! strings; a leading UTF-8 byte order mark is skipped; encoded lone surrogates
//! (`ED A0 80`) are kept as lone surrogates, as Python's `surrogatepass` decoding does.
//! Documented limits where Python has none or a variable one: nesting deeper than
//! [`MAX_DEPTH`] (256) is an error (Python raises `RecursionError` somewhere between
//! about 490 and 990 levels); integers of more than [`MAX_INT_DIGITS`] (4300) digits are
//! an error, as in CPython 3.11+ (`ValueError`). UTF-16/32 input, which
//! `json.loads(bytes)` also auto-detects, is not supported. Errors carry a byte offset,
//! a line and a column ([`CanonError`]) and use Python's wording.
//!
//! ```
//! use idemp::canon::{self, Canonicalizer, Format, Preset};
//!
//! let a = br#"{"model":"claude","messages":[{"role":"user","content":"hi","cache_control":{"type":"ephemeral"}}]}"#;
//! let b = br#"{ "messages": [ {"content": "hi", "role": "user"} ], "model": "claude" }"#;
//! let hasher = Canonicalizer::new(Format::Python).preset(Preset::Anthropic);
//! assert_eq!(hasher.hash(a)?, hasher.hash(b)?);
//! assert_eq!(
//!     hasher.canonicalize(a)?,
//!     r#"{"messages":[{"content":"hi","role":"user"}],"model":"claude"}"#
//! );
//! // The free functions mirror the Python names.
//! assert_eq!(canon::hash_request(a, Some(Preset::Anthropic))?, hasher.hash(a)?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod exact;
mod jcs;
mod number;
mod parse;
mod path;
mod preset;
mod python;
mod swar;

use sha2::{Digest, Sha256};

pub use error::{CanonError, PathError, Position};
pub use jcs::write_jcs_value;
pub use parse::{MAX_DEPTH, MAX_INT_DIGITS};
pub use preset::{Preset, UnknownPreset};
pub use python::write_python_value;

use parse::Rules;
use path::Path;

/// The canonical form to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Format {
    /// Byte-compatible with llm-message-hash-py 0.1.0 (CPython `json.dumps` with sorted
    /// keys, compact separators and `ensure_ascii`).
    #[default]
    Python,
    /// RFC 8785, the JSON Canonicalization Scheme.
    Jcs,
    /// The exact form, for request fingerprints: object keys sorted by code point and
    /// insignificant whitespace dropped, strings compared by value (escapes decoded,
    /// then written as the python form writes them), but **every number kept exactly
    /// as sent** (`9007199254740993` ≠ `9007199254740992`, `0.1` ≠
    /// `0.10000000000000000001`, `1.0` ≠ `1`), and duplicate keys kept in input order.
    /// Two bodies with the same exact form mean the same to any JSON parser, whatever
    /// its number type. Not offered by the CLI's `--format`.
    ///
    /// ```
    /// use idemp::canon::{Canonicalizer, Format};
    /// let exact = Canonicalizer::new(Format::Exact);
    /// assert_eq!(exact.canonicalize(r#"{ "b": 1.0, "a": "\u00e9" }"#)?, r#"{"a":"\u00e9","b":1.0}"#);
    /// assert_ne!(exact.hash("9007199254740993")?, exact.hash("9007199254740992")?);
    /// assert_eq!(exact.hash(r#"{"a":"\u0041"}"#)?, exact.hash(r#"{"a":"A"}"#)?);
    /// # Ok::<(), idemp::canon::CanonError>(())
    /// ```
    Exact,
}

impl Format {
    /// The name used on the command line: `python` or `jcs`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Python => "python",
            Format::Jcs => "jcs",
            Format::Exact => "exact",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A format name that is not `python` or `jcs`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown format {0:?} (expected python or jcs)")]
pub struct UnknownFormat(pub String);

impl std::str::FromStr for Format {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "python" => Ok(Format::Python),
            "jcs" => Ok(Format::Jcs),
            _ => Err(UnknownFormat(s.to_owned())),
        }
    }
}

/// Turns JSON text into its canonical form or its SHA-256, with drop rules.
///
/// Built once (cheap to clone, `Send + Sync`), used for any number of inputs. Each call
/// parses the input once into a compact tape (strings stay slices of the input unless
/// they hold escapes, objects are sorted when they close) and writes the result
/// straight from it.
///
/// ```
/// use idemp::canon::{Canonicalizer, Format, Preset};
///
/// let canon = Canonicalizer::new(Format::Python)
///     .preset(Preset::Anthropic)
///     .drop_key("trace")
///     .drop_path("metadata.user_id")?;
/// let out = canon.canonicalize(br#"{"metadata":{"user_id":"u1","plan":"pro"},"trace":1,"id":"msg_1","x":1e-7}"#)?;
/// assert_eq!(out, r#"{"metadata":{"plan":"pro"},"x":1e-07}"#);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Canonicalizer {
    format: Format,
    drop_keys: Vec<Box<[u8]>>,
    paths: Vec<Path>,
}

impl Canonicalizer {
    /// A canonicalizer of `format` that drops nothing.
    pub fn new(format: Format) -> Self {
        Canonicalizer {
            format,
            drop_keys: Vec::new(),
            paths: Vec::new(),
        }
    }

    /// Also drops every key of `preset`, at any depth.
    pub fn preset(mut self, preset: Preset) -> Self {
        for key in preset.keys() {
            self = self.drop_key(*key);
        }
        self
    }

    /// Also drops `key` (exact, case-sensitive match on the decoded key) from every
    /// object at any depth.
    pub fn drop_key(mut self, key: impl AsRef<str>) -> Self {
        let key = key.as_ref().as_bytes();
        if !self.drop_keys.iter().any(|k| **k == *key) {
            self.drop_keys.push(key.into());
        }
        self
    }

    /// Also drops the member or array element at `path`, counted from the top-level
    /// value: `metadata.user_id`, `messages[*].cache_control`, `a.b[0].c`, `tools[*].*`
    /// (`*` after a dot: any key; `[*]`: any index; `["a.b"]`: a key with dots or
    /// brackets). Dropping an array element removes it from the array.
    ///
    /// ```
    /// use idemp::canon::{Canonicalizer, Format};
    /// let canon = Canonicalizer::new(Format::Python).drop_path("messages[*].id")?;
    /// let out = canon.canonicalize(br#"{"id":7,"messages":[{"id":1,"text":"a"},{"id":2}]}"#)?;
    /// assert_eq!(out, r#"{"id":7,"messages":[{"text":"a"},{}]}"#);
    /// assert!(Canonicalizer::new(Format::Python).drop_path("a..b").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn drop_path(mut self, path: &str) -> Result<Self, PathError> {
        let path = Path::parse(path)?;
        if !self.paths.contains(&path) {
            self.paths.push(path);
        }
        Ok(self)
    }

    /// The format this canonicalizer produces.
    pub fn format(&self) -> Format {
        self.format
    }

    fn rules(&self) -> Rules<'_> {
        Rules {
            jcs: self.format == Format::Jcs,
            exact: self.format == Format::Exact,
            drop_keys: &self.drop_keys,
            drop_key_lengths: self
                .drop_keys
                .iter()
                .fold(0, |mask, k| mask | parse::length_bit(k.len())),
            paths: &self.paths,
        }
    }

    /// Appends the canonical form of the JSON text `input` to `out`. On error, `out` is
    /// left as it was.
    pub fn write(&self, input: impl AsRef<[u8]>, out: &mut Vec<u8>) -> Result<(), CanonError> {
        let tape = parse::parse(input.as_ref(), &self.rules())?;
        out.reserve(input.as_ref().len());
        self.write_tape(&tape, out);
        tape.recycle();
        Ok(())
    }

    fn write_tape(&self, tape: &parse::Tape<'_>, out: &mut Vec<u8>) {
        match self.format {
            Format::Python => python::write_tape(tape, tape.root, out),
            Format::Jcs => jcs::write_tape(tape, tape.root, out),
            Format::Exact => exact::write_tape(tape, tape.root, out),
        }
    }

    /// The canonical form of the JSON text `input`.
    pub fn canonicalize(&self, input: impl AsRef<[u8]>) -> Result<String, CanonError> {
        let mut out = Vec::new();
        self.write(input, &mut out)?;
        // Python output is ASCII; JCS output is UTF-8 (lone surrogates are rejected).
        Ok(String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    /// The SHA-256 of the canonical form (its UTF-8 bytes).
    pub fn digest(&self, input: impl AsRef<[u8]>) -> Result<[u8; 32], CanonError> {
        let mut tape = parse::parse(input.as_ref(), &self.rules())?;
        let mut out = std::mem::take(&mut tape.scratch.out);
        self.write_tape(&tape, &mut out);
        let digest = Sha256::digest(&out).into();
        tape.scratch.out = out;
        tape.recycle();
        Ok(digest)
    }

    /// The SHA-256 of the canonical form as 64 lowercase hex digits (what
    /// llm-message-hash-py `hash_request` returns in the python format).
    pub fn hash(&self, input: impl AsRef<[u8]>) -> Result<String, CanonError> {
        Ok(hex::encode(self.digest(input)?))
    }
}

impl Canonicalizer {
    /// The canonical form of an already-parsed `serde_json::Value`, with this
    /// canonicalizer's drop rules. (It is serialized and parsed again; without drop
    /// rules, [`write_python_value`] and [`write_jcs_value`] write a `Value` directly.)
    ///
    /// ```
    /// use idemp::canon::{Canonicalizer, Format, Preset};
    /// let value = serde_json::json!({"id": "msg_1", "content": "hé"});
    /// let canon = Canonicalizer::new(Format::Python).preset(Preset::Anthropic);
    /// assert_eq!(canon.canonicalize_value(&value)?, r#"{"content":"h\u00e9"}"#);
    /// # Ok::<(), idemp::canon::CanonError>(())
    /// ```
    pub fn canonicalize_value(&self, value: &serde_json::Value) -> Result<String, CanonError> {
        self.canonicalize(value_text(value))
    }

    /// The SHA-256 hex of [`canonicalize_value`](Self::canonicalize_value).
    pub fn hash_value(&self, value: &serde_json::Value) -> Result<String, CanonError> {
        self.hash(value_text(value))
    }
}

fn value_text(value: &serde_json::Value) -> Vec<u8> {
    // Serializing a Value cannot fail (its map keys are strings); its floats are
    // written in shortest round-trip form, so they parse back to the same doubles.
    serde_json::to_vec(value).unwrap_or_default()
}

/// llm-message-hash-py `canonical_json(json.loads(input))`: the python-compat canonical
/// form with nothing dropped.
///
/// ```
/// assert_eq!(idemp::canon::canonical_json(r#"{"b":1e16,"a":"😀"}"#)?, r#"{"a":"\ud83d\ude00","b":1e+16}"#);
/// # Ok::<(), idemp::canon::CanonError>(())
/// ```
pub fn canonical_json(input: impl AsRef<[u8]>) -> Result<String, CanonError> {
    Canonicalizer::new(Format::Python).canonicalize(input)
}

/// llm-message-hash-py `hash_request(json.loads(input), HashOpts.for_<preset>())`
/// (`HashOpts()` for `None`): 64 lowercase hex digits.
///
/// ```
/// use idemp::canon::{hash_request, Preset};
/// let a = hash_request(r#"{"id":"msg_1","content":"hi"}"#, Some(Preset::Anthropic))?;
/// let b = hash_request(r#"{"content":"hi","id":"msg_2"}"#, Some(Preset::Anthropic))?;
/// assert_eq!(a, b);
/// assert_eq!(a.len(), 64);
/// # Ok::<(), idemp::canon::CanonError>(())
/// ```
pub fn hash_request(input: impl AsRef<[u8]>, preset: Option<Preset>) -> Result<String, CanonError> {
    let mut canon = Canonicalizer::new(Format::Python);
    if let Some(preset) = preset {
        canon = canon.preset(preset);
    }
    canon.hash(input)
}
