//! The `Idempotency-Key` header parser (structured-field string or bare token): never
//! panics; an accepted key is a valid `idemp::key::Key` (1–255 visible ASCII bytes),
//! and its header value parses back to the same key.
#![no_main]

use idemp::http::header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(k) = header::parse(data) {
        let s = k.as_str();
        assert!(!s.is_empty() && s.len() <= 255, "{s:?}");
        assert!(s.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{s:?}");
        assert_eq!(header::parse(header::to_header_value(&k).as_bytes()).as_ref(), Ok(&k));
    }
});
