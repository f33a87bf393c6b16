//! RFC 8785 (JSON Canonicalization Scheme): the RFC's own examples.

use idemp::canon::{CanonError, Canonicalizer, Format};

fn jcs(input: &str) -> Result<String, CanonError> {
    Canonicalizer::new(Format::Jcs).canonicalize(input)
}

/// Section 3.2.2, the sample input and its canonical form (section 3.2.4 lists the
/// UTF-8 bytes of this output).
#[test]
fn section_3_2_2_sample() {
    let input = r#"{
  "numbers": [333333333.33333329, 1E30, 4.50,
              2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}"#;
    let want = r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#;
    let got = jcs(input).unwrap();
    assert_eq!(got, want);
    // Section 3.2.4: the same, as the hex of its UTF-8 bytes.
    let hex = "7b 22 6c 69 74 65 72 61 6c 73 22 3a 5b 6e 75 6c 6c 2c 74 72 \
               75 65 2c 66 61 6c 73 65 5d 2c 22 6e 75 6d 62 65 72 73 22 3a \
               5b 33 33 33 33 33 33 33 33 33 2e 33 33 33 33 33 33 33 2c 31 \
               65 2b 33 30 2c 34 2e 35 2c 30 2e 30 30 32 2c 31 65 2d 32 37 \
               5d 2c 22 73 74 72 69 6e 67 22 3a 22 e2 82 ac 24 5c 75 30 30 \
               30 66 5c 6e 41 27 42 5c 22 5c 5c 5c 5c 5c 22 2f 22 7d";
    let bytes = hex::decode(hex.split_whitespace().collect::<String>()).unwrap();
    assert_eq!(got.as_bytes(), &bytes[..]);
}

/// Section 3.2.3, the sorting example: UTF-16 code unit order.
#[test]
fn section_3_2_3_sorting() {
    let input = r#"{
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "1": "One",
  "\ud83d\ude00": "Emoji: Grinning Face",
  "\u0080": "Control",
  "\u00f6": "Latin Small Letter O With Diaeresis"
}"#;
    let got = jcs(input).unwrap();
    let want = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\
                \"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\
                \"\u{1f600}\":\"Emoji: Grinning Face\",\
                \"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}";
    assert_eq!(got, want);
}

/// Appendix B, the number serialization samples (IEEE 754 bits -> JCS text).
#[test]
fn appendix_b_numbers() {
    let table: &[(u64, Option<&str>)] = &[
        (0x0000000000000000, Some("0")),
        (0x8000000000000000, Some("0")),
        (0x0000000000000001, Some("5e-324")),
        (0x8000000000000001, Some("-5e-324")),
        (0x7fefffffffffffff, Some("1.7976931348623157e+308")),
        (0xffefffffffffffff, Some("-1.7976931348623157e+308")),
        (0x4340000000000000, Some("9007199254740992")),
        (0xc340000000000000, Some("-9007199254740992")),
        (0x4430000000000000, Some("295147905179352830000")),
        (0x7fffffffffffffff, None), // NaN: error
        (0x7ff0000000000000, None), // Infinity: error
        (0x44b52d02c7e14af5, Some("9.999999999999997e+22")),
        (0x44b52d02c7e14af6, Some("1e+23")),
        (0x44b52d02c7e14af7, Some("1.0000000000000001e+23")),
        (0x444b1ae4d6e2ef4e, Some("999999999999999700000")),
        (0x444b1ae4d6e2ef4f, Some("999999999999999900000")),
        (0x444b1ae4d6e2ef50, Some("1e+21")),
        (0x3eb0c6f7a0b5ed8c, Some("9.999999999999997e-7")),
        (0x3eb0c6f7a0b5ed8d, Some("0.000001")),
        (0x41b3de4355555553, Some("333333333.3333332")),
        (0x41b3de4355555554, Some("333333333.33333325")),
        (0x41b3de4355555555, Some("333333333.3333333")),
        (0x41b3de4355555556, Some("333333333.3333334")),
        (0x41b3de4355555557, Some("333333333.33333343")),
        (0xbecbf647612f3696, Some("-0.0000033333333333333333")),
        (0x43143ff3c1cb0959, Some("1424953923781206.2")),
    ];
    for &(bits, want) in table {
        let value = f64::from_bits(bits);
        // Spell the input three ways: Rust's shortest `{:?}`, exponent form, and 17
        // significant digits; all denote the same double.
        let spellings = if value.is_finite() {
            vec![
                format!("{value:?}"),
                format!("{value:e}"),
                format!("{value:.16e}"),
            ]
        } else if value.is_nan() {
            vec!["NaN".to_owned()]
        } else {
            vec!["Infinity".to_owned(), "1e400".to_owned()]
        };
        for text in spellings {
            let got = jcs(&format!("[{text}]"));
            match want {
                Some(want) => {
                    assert_eq!(got.unwrap(), format!("[{want}]"), "{bits:016x} as {text}")
                }
                None => assert!(
                    matches!(got, Err(CanonError::NotJcs { .. })),
                    "{bits:016x}: {got:?}"
                ),
            }
        }
    }
}

/// Section 3.2.2.3: integers are IEEE doubles, so beyond 2^53 they round as in
/// JavaScript (`Number("9007199254740993")` is 9007199254740992).
#[test]
fn large_integers_round_like_javascript() {
    assert_eq!(
        jcs("[9007199254740993,18446744073709551615,-0,100,1E2,10000000000000000000000]").unwrap(),
        "[9007199254740992,18446744073709552000,0,100,100,1e+22]"
    );
}

/// Section 3.1: I-JSON. Duplicate keys, lone surrogates and non-finite numbers are
/// errors, not silently repaired.
#[test]
fn i_json_violations_are_errors() {
    assert!(matches!(
        jcs(r#"{"a":1,"a":1}"#),
        Err(CanonError::DuplicateKey { .. })
    ));
    assert!(matches!(
        jcs(r#"{"\u0061":1,"a":1}"#),
        Err(CanonError::DuplicateKey { .. })
    ));
    for bad in [r#"["\udead"]"#, "NaN", "-Infinity", "[1e999]"] {
        assert!(matches!(jcs(bad), Err(CanonError::NotJcs { .. })), "{bad}");
    }
    // Raw encoded surrogates are not UTF-8 (the python format accepts them).
    assert!(matches!(
        Canonicalizer::new(Format::Jcs).canonicalize(b"\"\xed\xa0\x80\""),
        Err(CanonError::InvalidUtf8 { .. })
    ));
}

/// Section 3.2.2.2: only `"`, `\` and C0 controls are escaped (the short forms where
/// JSON has them, else `\u00xx` lowercase); DEL, U+2028 and non-ASCII stay raw.
#[test]
fn string_escaping_is_minimal() {
    assert_eq!(
        jcs(r#""\u0000\u0008\u0009\u000a\u000c\u000d\u001f\u007f\u2028\u00e9\/""#).unwrap(),
        "\"\\u0000\\b\\t\\n\\f\\r\\u001f\u{7f}\u{2028}é/\""
    );
}
