//! The `Idempotency-Key` header parser (structured-field string or bare token): never
//! panics; an accepted key is 1–255 printable ASCII characters.
#![no_main]

use idemp::http::IdempotencyKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(k) = IdempotencyKey::parse(data) {
        let s = k.as_str();
        assert!(!s.is_empty() && s.len() <= 255, "{s:?}");
        assert!(s.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{s:?}");
    }
});
