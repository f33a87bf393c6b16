//! Property tests of the `Idempotency-Key` parser: valid keys round-trip in both
//! forms, and no input, however malformed, makes it panic.
#![cfg(feature = "http")]

use idemp::http::{KeyError, header};
use idemp::key::Key;
use proptest::prelude::*;

/// 1–255 visible ASCII characters (quotes, backslashes and delimiters included).
fn printable_key() -> impl Strategy<Value = String> {
    proptest::collection::vec(0x21u8..=0x7e, 1..=255).prop_map(|b| String::from_utf8(b).unwrap())
}

/// 1–255 visible ASCII characters that a bare key may hold.
fn bare_key() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        (0x21u8..=0x7e).prop_filter("not a delimiter", |b| !b"\"\\;,".contains(b)),
        1..=255,
    )
    .prop_map(|b| String::from_utf8(b).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn structured_field_strings_round_trip(key in printable_key()) {
        let k = Key::new(key.clone()).unwrap();
        let value = header::to_header_value(&k);
        let back = header::parse(value.as_bytes()).unwrap();
        prop_assert_eq!(back.as_str(), key.as_str());
        prop_assert_eq!(back, k);
    }

    #[test]
    fn bare_keys_parse_to_themselves(key in bare_key()) {
        let k = header::parse(key.as_bytes()).unwrap();
        prop_assert_eq!(k.as_str(), key.as_str());
        // And the quoted form names the same key.
        let quoted = format!("\"{}\"", key);
        prop_assert_eq!(header::parse(quoted.as_bytes()).unwrap(), k);
    }

    #[test]
    fn surrounding_whitespace_is_ignored(key in bare_key(), pre in "[ \t]{0,3}", post in "[ \t]{0,3}") {
        let v = format!("{pre}{key}{post}");
        let parsed = header::parse(v.as_bytes()).unwrap();
        prop_assert_eq!(parsed.as_str(), key.as_str());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        match header::parse(&bytes) {
            Ok(k) => {
                // Whatever is accepted is a valid key (no spaces, even quoted).
                prop_assert!(!k.as_str().is_empty() && k.as_str().len() <= 255);
                prop_assert!(k.as_str().bytes().all(|b| (0x21..=0x7e).contains(&b)));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn quoted_noise_never_panics(inner in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut v = vec![b'"'];
        v.extend(inner);
        let _ = header::parse(&v);
        v.push(b'"');
        let _ = header::parse(&v);
    }

    #[test]
    fn keys_longer_than_255_are_refused(key in proptest::collection::vec(0x21u8..=0x7e, 256..400)) {
        let key: Vec<u8> = key.into_iter().map(|b| if b"\"\\;,".contains(&b) { b'x' } else { b }).collect();
        prop_assert_eq!(
            header::parse(&key),
            Err(KeyError::Key(idemp::key::KeyError::TooLong { len: key.len() }))
        );
    }
}
