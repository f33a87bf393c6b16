//! Compression of large stored outcomes (feature `compression`: LZ4 via `lz4_flex`).
//!
//! LZ4 was chosen over zstd after measuring both on a 64 KiB JSON outcome (see
//! `benches/guard.rs`, group `compress`, thread CPU time): LZ4 compresses in ~38 µs
//! and decompresses in ~18 µs, zstd level 1 in ~100 µs and ~44 µs (2.4–2.6× slower);
//! zstd's output is half the size (11.8 % of the input against 22.5 %). LZ4 is also
//! pure Rust (no C toolchain), and the guard's goal is latency, not the last bytes of
//! storage. Records compressed with zstd by another writer are reported as
//! [`CodecError::UnsupportedCompression`].

use crate::store::{Codec, Compression, Outcome};

use super::codec::CodecError;

/// Compresses `bytes`; keeps them uncompressed when that does not save space or the
/// feature is off.
pub(crate) fn compress(codec: Codec, bytes: Vec<u8>) -> Outcome {
    #[cfg(feature = "compression")]
    {
        let packed = lz4_flex::compress_prepend_size(&bytes);
        if packed.len() < bytes.len() {
            return Outcome {
                codec,
                compression: Compression::Lz4,
                bytes: packed,
            };
        }
    }
    Outcome::new(codec, bytes)
}

/// Decompresses stored bytes, refusing to allocate more than `limit` bytes.
pub(crate) fn decompress(
    compression: Compression,
    bytes: &[u8],
    limit: usize,
) -> Result<Vec<u8>, CodecError> {
    match compression {
        Compression::None => Ok(bytes.to_vec()),
        #[cfg(feature = "compression")]
        Compression::Lz4 => {
            let header: [u8; 4] = bytes
                .get(..4)
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| CodecError::Decompress("truncated LZ4 header".into()))?;
            let size = u32::from_le_bytes(header) as usize;
            if size > limit {
                return Err(CodecError::TooLarge { size, limit });
            }
            lz4_flex::decompress_size_prepended(bytes)
                .map_err(|e| CodecError::Decompress(e.to_string()))
        }
        other => {
            let _ = limit;
            Err(CodecError::UnsupportedCompression(other))
        }
    }
}

#[cfg(all(test, feature = "compression"))]
mod tests {
    use super::*;

    #[test]
    fn lz4_round_trips_and_bounds_allocation() {
        let data = b"abcabcabcabcabcabcabcabcabcabcabcabc".repeat(100);
        let out = compress(Codec::Json, data.clone());
        assert_eq!(out.compression, Compression::Lz4);
        assert!(out.bytes.len() < data.len());
        assert_eq!(
            decompress(out.compression, &out.bytes, 1 << 20).unwrap(),
            data
        );
        assert!(matches!(
            decompress(out.compression, &out.bytes, 10),
            Err(CodecError::TooLarge { .. })
        ));
        assert!(decompress(Compression::Lz4, &[1, 2], 100).is_err());
        assert!(matches!(
            decompress(Compression::Zstd, &out.bytes, 100),
            Err(CodecError::UnsupportedCompression(Compression::Zstd))
        ));
    }

    #[test]
    fn incompressible_bytes_stay_plain() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let data: Vec<u8> = (0..64)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let out = compress(Codec::Raw, data.clone());
        assert_eq!(out.compression, Compression::None);
        assert_eq!(out.bytes, data);
    }
}
