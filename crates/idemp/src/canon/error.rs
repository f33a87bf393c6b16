//! Errors of canonicalization and of drop-path parsing.

use std::fmt;

/// Where in the input an error was found.
///
/// `offset` is a byte offset; `line` and `column` are 1-based, the column counted in
/// characters (as Python's `json` module reports it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Byte offset from the start of the input.
    pub offset: usize,
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

impl Position {
    /// Computes the line and column of byte `offset` in `input`.
    pub(crate) fn locate(input: &[u8], offset: usize) -> Position {
        let offset = offset.min(input.len());
        let before = &input[..offset];
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = before[line_start..]
            .iter()
            .filter(|&&b| (b & 0xc0) != 0x80)
            .count()
            + 1;
        Position {
            offset,
            line,
            column,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {} column {} (byte {})",
            self.line, self.column, self.offset
        )
    }
}

/// Why the input could not be canonicalized.
///
/// The python-compat format accepts exactly what CPython's `json.loads` accepts (UTF-8
/// input), so every input rejected here is rejected by llm-message-hash-py callers too;
/// the JCS format additionally rejects what RFC 8785 / I-JSON forbid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CanonError {
    /// The input is not JSON. `reason` uses the words of Python's `json` module
    /// (`Expecting ',' delimiter`, `Expecting value`, `Extra data`…).
    #[error("{reason}: {at}")]
    Syntax {
        /// What was expected or found.
        reason: &'static str,
        /// Where.
        at: Position,
    },
    /// The input is not UTF-8 (the python format also accepts encoded lone surrogates,
    /// as `json.loads(bytes)` does).
    #[error("invalid UTF-8: {at}")]
    InvalidUtf8 {
        /// Where the first invalid byte is.
        at: Position,
    },
    /// Objects and arrays nest deeper than [`MAX_DEPTH`](super::MAX_DEPTH).
    #[error("nesting deeper than {limit}: {at}")]
    TooDeep {
        /// The limit.
        limit: usize,
        /// Where the container that exceeds it opens.
        at: Position,
    },
    /// An integer with more digits than CPython converts (`sys.get_int_max_str_digits()`,
    /// 4300 by default: `json.loads` raises `ValueError` on it).
    #[error("integer with {digits} digits exceeds the limit of {limit}: {at}")]
    IntegerTooLong {
        /// Its number of digits.
        digits: usize,
        /// The limit.
        limit: usize,
        /// Where the integer starts.
        at: Position,
    },
    /// The input is JSON but not representable in RFC 8785: NaN or Infinity, a number
    /// outside the range of a double, or a lone surrogate.
    #[error("not allowed in RFC 8785: {reason}: {at}")]
    NotJcs {
        /// What was found.
        reason: &'static str,
        /// Where.
        at: Position,
    },
    /// The same key twice in one object (JCS only: I-JSON forbids it; the python
    /// format keeps the last one, as a Python `dict` does).
    #[error("duplicate key {key:?}: {at}")]
    DuplicateKey {
        /// The key (lossy if it held a lone surrogate).
        key: String,
        /// Where the second occurrence starts.
        at: Position,
    },
    /// The input is larger than 4 GiB.
    #[error("input of {len} bytes is larger than 4 GiB")]
    InputTooLarge {
        /// Its length.
        len: usize,
    },
}

impl CanonError {
    /// The position of the error in the input, when it has one.
    pub fn position(&self) -> Option<Position> {
        match self {
            CanonError::Syntax { at, .. }
            | CanonError::InvalidUtf8 { at }
            | CanonError::TooDeep { at, .. }
            | CanonError::IntegerTooLong { at, .. }
            | CanonError::NotJcs { at, .. }
            | CanonError::DuplicateKey { at, .. } => Some(*at),
            CanonError::InputTooLarge { .. } => None,
        }
    }
}

/// A drop path (see [`Canonicalizer::drop_path`](super::Canonicalizer::drop_path)) that
/// does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid drop path {path:?} at character {column}: {reason}")]
pub struct PathError {
    /// The path as given.
    pub path: String,
    /// 1-based character position of the problem.
    pub column: usize,
    /// What is wrong.
    pub reason: &'static str,
}
