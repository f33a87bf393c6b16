//! How typed results become stored [`Outcome`]s and back.
//!
//! The guard encodes every result, stores the bytes, and decodes the **stored** bytes
//! on the first call too, so the first caller and every replay get the same type and
//! the same value (a field the codec drops is dropped for everyone, and a type that
//! cannot round-trip fails on the first call instead of on a replay weeks later).
//!
//! Replays decode with the codec recorded in the outcome, not the guard's current
//! one, so changing the codec does not break records already stored.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::{Codec, Compression, Outcome};

use super::compress;

/// The serde format of stored results.
///
/// JSON is the default: it round-trips every serde type (including
/// `serde_json::Value`, untagged enums and `#[serde(flatten)]`, which postcard
/// cannot decode), and stored records stay readable with `idemp records`.
/// Postcard is smaller and faster for plain structs: on a 3-field receipt, 13 bytes
/// instead of 50, and an encode+decode round trip of ~90 ns instead of ~185 ns of
/// thread CPU time (`benches/guard.rs`, group `codec`); through the whole guard a
/// fresh claim+complete costs about the same with either (~0.9 µs) and a replay
/// ~360 ns instead of ~430 ns. Choose it when results are plain structs and every
/// nanosecond counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ValueCodec {
    /// serde_json.
    #[default]
    Json,
    /// postcard (compact binary; not self-describing).
    Postcard,
}

impl ValueCodec {
    /// The codec tag stored with the outcome.
    pub fn store_codec(self) -> Codec {
        match self {
            ValueCodec::Json => Codec::Json,
            ValueCodec::Postcard => Codec::Postcard,
        }
    }
}

/// A value could not be encoded, or a stored outcome could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Serializing the result failed.
    #[error("cannot encode the result as {codec:?}: {message}")]
    Encode {
        /// The codec.
        codec: Codec,
        /// The serializer's message.
        message: String,
    },
    /// Deserializing a stored outcome failed (wrong type, or a type the codec cannot
    /// round-trip).
    #[error("cannot decode the stored {codec:?} outcome: {message}")]
    Decode {
        /// The codec.
        codec: Codec,
        /// The deserializer's message.
        message: String,
    },
    /// A `Raw` outcome (stored by the HTTP layer or a raw [`Lease`](super::Lease)) was
    /// asked for as a typed value.
    #[error("the stored outcome is raw bytes, not a serde value")]
    RawOutcome,
    /// The stored outcome is compressed in a way this build cannot read.
    #[error("the stored outcome uses {0:?} compression, which this build does not support")]
    UnsupportedCompression(Compression),
    /// Decompression failed (corrupt bytes).
    #[error("cannot decompress the stored outcome: {0}")]
    Decompress(String),
    /// The outcome is larger than the configured limit.
    #[error("outcome of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The (uncompressed) size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// Encoding settings of a guard.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EncodeSettings {
    pub codec: ValueCodec,
    /// Compress encoded bytes longer than this (only with the `compression` feature).
    pub compress_above: Option<usize>,
    /// Refuse outcomes (uncompressed) larger than this.
    pub max_outcome_bytes: usize,
}

impl EncodeSettings {
    /// Encodes `value` into an outcome (compressed above the threshold).
    pub(crate) fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Outcome, CodecError> {
        let codec = self.codec.store_codec();
        let bytes = match self.codec {
            ValueCodec::Json => serde_json::to_vec(value).map_err(|e| CodecError::Encode {
                codec,
                message: e.to_string(),
            })?,
            ValueCodec::Postcard => {
                postcard::to_allocvec(value).map_err(|e| CodecError::Encode {
                    codec,
                    message: e.to_string(),
                })?
            }
        };
        self.wrap(codec, bytes)
    }

    /// Wraps already-encoded bytes, compressing them above the threshold.
    pub(crate) fn wrap(&self, codec: Codec, bytes: Vec<u8>) -> Result<Outcome, CodecError> {
        if bytes.len() > self.max_outcome_bytes {
            return Err(CodecError::TooLarge {
                size: bytes.len(),
                limit: self.max_outcome_bytes,
            });
        }
        match self.compress_above {
            Some(threshold) if bytes.len() > threshold => Ok(compress::compress(codec, bytes)),
            _ => Ok(Outcome::new(codec, bytes)),
        }
    }
}

/// The uncompressed bytes of an outcome (borrowed when it was not compressed).
pub(crate) fn plain_bytes(
    outcome: &Outcome,
    max_outcome_bytes: usize,
) -> Result<std::borrow::Cow<'_, [u8]>, CodecError> {
    match outcome.compression {
        Compression::None => Ok(std::borrow::Cow::Borrowed(&outcome.bytes)),
        other => compress::decompress(other, &outcome.bytes, max_outcome_bytes)
            .map(std::borrow::Cow::Owned),
    }
}

/// Decodes a stored outcome as `T`, with the codec it was stored with.
pub(crate) fn decode<T: DeserializeOwned>(
    outcome: &Outcome,
    max_outcome_bytes: usize,
) -> Result<T, CodecError> {
    let bytes = plain_bytes(outcome, max_outcome_bytes)?;
    let codec = outcome.codec;
    match codec {
        Codec::Json => serde_json::from_slice(&bytes).map_err(|e| CodecError::Decode {
            codec,
            message: e.to_string(),
        }),
        Codec::Postcard => postcard::from_bytes(&bytes).map_err(|e| CodecError::Decode {
            codec,
            message: e.to_string(),
        }),
        Codec::Raw => Err(CodecError::RawOutcome),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Invoice {
        id: u64,
        lines: Vec<String>,
    }

    fn settings(codec: ValueCodec) -> EncodeSettings {
        EncodeSettings {
            codec,
            compress_above: None,
            max_outcome_bytes: 1 << 20,
        }
    }

    #[test]
    fn json_and_postcard_round_trip() {
        let v = Invoice {
            id: 7,
            lines: vec!["a".into(), "é".into()],
        };
        for codec in [ValueCodec::Json, ValueCodec::Postcard] {
            let out = settings(codec).encode(&v).unwrap();
            assert_eq!(out.codec, codec.store_codec());
            assert_eq!(decode::<Invoice>(&out, 1 << 20).unwrap(), v);
        }
    }

    #[test]
    fn postcard_cannot_round_trip_json_values_and_says_so() {
        let v = serde_json::json!({"a": [1, "x"]});
        let out = settings(ValueCodec::Postcard).encode(&v).unwrap();
        assert!(matches!(
            decode::<serde_json::Value>(&out, 1 << 20),
            Err(CodecError::Decode { .. })
        ));
        let out = settings(ValueCodec::Json).encode(&v).unwrap();
        assert_eq!(decode::<serde_json::Value>(&out, 1 << 20).unwrap(), v);
    }

    #[test]
    fn raw_outcomes_are_not_typed_values() {
        let out = Outcome::new(Codec::Raw, b"hi".to_vec());
        assert!(matches!(
            decode::<String>(&out, 10),
            Err(CodecError::RawOutcome)
        ));
    }

    #[test]
    fn too_large_is_refused() {
        let s = EncodeSettings {
            max_outcome_bytes: 4,
            ..settings(ValueCodec::Json)
        };
        assert!(matches!(
            s.encode(&"long string"),
            Err(CodecError::TooLarge { .. })
        ));
    }
}
