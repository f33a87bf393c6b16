//! Key validation and the key builder: never panic; an accepted key is 1–255 bytes of
//! visible ASCII and survives a round trip through its text.
#![no_main]

use idemp::key::{Key, MAX_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(k) = text.parse::<Key>() {
        let s = k.as_str();
        assert!(!s.is_empty() && s.len() <= MAX_LEN);
        assert!(s.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        assert_eq!(s.parse::<Key>().ok().as_ref(), Some(&k));
    }
    // Builder: parts split anywhere give distinct, well-formed keys.
    let mid = data.len() / 2;
    let a = Key::builder("fuzz").part(&data[..mid]).part(&data[mid..]).build();
    let b = Key::builder("fuzz").part(data).build();
    assert_ne!(a, b);
    assert_eq!(a.as_str().len(), 35);
    let _ = idemp::key::scoped_key(&text, [data]);
});
