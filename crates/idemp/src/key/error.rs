//! [`KeyError`]: why a string is not a valid [`Key`](super::Key).

use std::fmt;

/// Why a string is not a valid idempotency [`Key`](super::Key).
///
/// A key is 1 to [`MAX_LEN`](super::MAX_LEN) bytes, each a visible ASCII character
/// (`0x21..=0x7e`). Each variant says exactly what is wrong, so it can be shown to
/// the caller as is (for example in an HTTP 400 response).
///
/// ```
/// use idemp::key::{Key, KeyError};
///
/// assert_eq!("".parse::<Key>(), Err(KeyError::Empty));
/// assert_eq!(
///     "order 42".parse::<Key>(),
///     Err(KeyError::InvalidByte { byte: b' ', position: 5 })
/// );
/// assert_eq!(
///     "order 42".parse::<Key>().unwrap_err().to_string(),
///     "idempotency key has a space (0x20) at byte 5; only visible ASCII (0x21..=0x7e) is allowed"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key is the empty string.
    #[error("idempotency key is empty")]
    Empty,
    /// The key is longer than [`MAX_LEN`](super::MAX_LEN) bytes.
    #[error("idempotency key is {len} bytes long; the maximum is {max}", max = super::MAX_LEN)]
    TooLong {
        /// The key's length in bytes.
        len: usize,
    },
    /// The key holds a byte that is not visible ASCII. For a non-ASCII character,
    /// `byte` is the first byte of its UTF-8 encoding.
    #[error(
        "idempotency key has {} at byte {position}; only visible ASCII (0x21..=0x7e) is allowed",
        DescribeByte(*byte)
    )]
    InvalidByte {
        /// The offending byte.
        byte: u8,
        /// Its 0-based byte offset in the key.
        position: usize,
    },
}

/// Human description of a byte that a key may not hold.
struct DescribeByte(u8);

impl fmt::Display for DescribeByte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            b' ' => f.write_str("a space (0x20)"),
            0x7f => f.write_str("the control character DEL (0x7f)"),
            b if b < 0x20 => write!(f, "the control character 0x{b:02x}"),
            b if b >= 0x80 => write!(f, "the non-ASCII byte 0x{b:02x}"),
            b => write!(f, "the byte 0x{b:02x}"),
        }
    }
}
