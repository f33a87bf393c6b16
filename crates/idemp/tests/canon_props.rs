//! Properties of canonicalization (proptest).

use idemp::canon::{Canonicalizer, Format, Preset, write_jcs_value, write_python_value};
use proptest::prelude::*;
use serde_json::{Map, Number, Value};

/// Keys chosen to collide in interesting ways: ASCII case, prefixes, code-point vs
/// UTF-16 order (U+FF61 vs U+1F600), preset keys.
const KEYS: &[&str] = &[
    "a",
    "A",
    "ab",
    "b",
    "_",
    "",
    "id",
    "usage",
    "cache_control",
    "é",
    "\u{ff61}",
    "\u{1f600}",
    "\u{e000}",
    "中",
    "\n",
    "k\u{2028}",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(KEYS).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| Value::Number(i.into())),
        any::<u64>().prop_map(|u| Value::Number(u.into())),
        prop_oneof![
            any::<f64>(),
            prop::sample::select(vec![
                0.0, -0.0, 1e-7, 1e16, 1e21, 1e-6, 5e-324, 0.1, 1.0, 100.0, 1e22
            ]),
        ]
        .prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        any::<String>().prop_map(Value::String),
        prop::sample::select(KEYS).prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A small deterministic generator for layout choices.
struct Layout(u64);

impl Layout {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn ws(&mut self, out: &mut String) {
        for _ in 0..self.next() % 3 {
            out.push([' ', '\t', '\n', '\r'][(self.next() % 4) as usize]);
        }
    }
}

/// Renders `value` as JSON text with random whitespace, random member order and random
/// escaping of characters: the same value, spelled differently.
fn render(value: &Value, layout: &mut Layout, out: &mut String) {
    layout.ws(out);
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                // Both spellings keep it a float (a '.' or an 'e').
                if layout.next().is_multiple_of(2) {
                    out.push_str(&format!("{f:?}"));
                } else {
                    out.push_str(&format!("{f:e}"));
                }
            } else {
                out.push_str(&n.to_string());
            }
        }
        Value::String(s) => render_str(s, layout, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                render(item, layout, out);
                layout.ws(out);
            }
            if items.is_empty() {
                layout.ws(out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            for i in (1..members.len()).rev() {
                let j = (layout.next() % (i as u64 + 1)) as usize;
                members.swap(i, j);
            }
            out.push('{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                layout.ws(out);
                render_str(k, layout, out);
                layout.ws(out);
                out.push(':');
                render(v, layout, out);
                layout.ws(out);
            }
            out.push('}');
        }
    }
    layout.ws(out);
}

fn render_str(s: &str, layout: &mut Layout, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        let must = c < ' ' || c == '"' || c == '\\';
        if must || layout.next().is_multiple_of(4) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                if layout.next().is_multiple_of(2) {
                    out.push_str(&format!("\\u{unit:04x}"));
                } else {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
        } else {
            out.push(c);
        }
    }
    out.push('"');
}

/// Canonicalizers under test, each with whether applying it twice is the same as once
/// (dropping an array element by index shifts the next one into its place, so that one
/// is not idempotent).
fn all_canonicalizers() -> Vec<(Canonicalizer, bool)> {
    let mut all = Vec::new();
    for format in [Format::Python, Format::Jcs] {
        all.push((Canonicalizer::new(format), true));
        all.push((Canonicalizer::new(format).preset(Preset::Anthropic), true));
        all.push((
            Canonicalizer::new(format)
                .drop_key("é")
                .drop_path("[*].a")
                .unwrap()
                .drop_path("*.b[0]")
                .unwrap(),
            false,
        ));
    }
    all
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Permuting members, changing whitespace and escaping never changes the canonical
    /// form, in either format and under any drop rules.
    #[test]
    fn layout_never_changes_the_canonical_form(value in json_value(), a in any::<u64>(), b in any::<u64>()) {
        let mut first = String::new();
        render(&value, &mut Layout(a), &mut first);
        let mut second = String::new();
        render(&value, &mut Layout(b), &mut second);
        for (canon, _) in all_canonicalizers() {
            let x = canon.canonicalize(&first).unwrap();
            let y = canon.canonicalize(&second).unwrap();
            prop_assert_eq!(&x, &y, "{:?} vs {:?}", first, second);
            prop_assert_eq!(canon.hash(&first).unwrap(), canon.hash(&second).unwrap());
        }
    }

    /// The parsing path agrees with the `serde_json::Value` writers, and the canonical
    /// output re-parses to itself (a fixed point).
    #[test]
    fn tape_agrees_with_value_writers_and_is_a_fixed_point(value in json_value(), seed in any::<u64>()) {
        let mut text = String::new();
        render(&value, &mut Layout(seed), &mut text);

        let python = Canonicalizer::new(Format::Python).canonicalize(&text).unwrap();
        let mut from_value = Vec::new();
        write_python_value(&value, &mut from_value);
        prop_assert_eq!(python.as_bytes(), &from_value[..]);
        prop_assert!(python.is_ascii());
        prop_assert_eq!(&Canonicalizer::new(Format::Python).canonicalize(&python).unwrap(), &python);

        let jcs = Canonicalizer::new(Format::Jcs).canonicalize(&text).unwrap();
        let mut from_value = Vec::new();
        write_jcs_value(&value, &mut from_value);
        prop_assert_eq!(jcs.as_bytes(), &from_value[..]);
        prop_assert_eq!(&Canonicalizer::new(Format::Jcs).canonicalize(&jcs).unwrap(), &jcs);

    }

    /// The parser never panics, whatever the bytes; errors carry a position inside
    /// the input.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        for (canon, _) in all_canonicalizers() {
            if let Err(e) = canon.canonicalize(&bytes)
                && let Some(at) = e.position()
            {
                prop_assert!(at.offset <= bytes.len());
            }
        }
    }

    /// Mutations of valid JSON (a byte replaced, inserted or removed) never panic, and
    /// whatever is accepted is canonical afterwards.
    #[test]
    fn mutated_json_never_panics(value in json_value(), seed in any::<u64>(), at in any::<prop::sample::Index>(), byte in any::<u8>(), op in 0u8..3) {
        let mut text = String::new();
        render(&value, &mut Layout(seed), &mut text);
        let mut bytes = text.into_bytes();
        let i = at.index(bytes.len() + 1);
        match op {
            0 if i < bytes.len() => bytes[i] = byte,
            1 => bytes.insert(i, byte),
            _ if i < bytes.len() => { bytes.remove(i); }
            _ => bytes.push(byte),
        }
        for (canon, idempotent) in all_canonicalizers() {
            if let (Ok(out), true) = (canon.canonicalize(&bytes), idempotent) {
                prop_assert_eq!(&canon.canonicalize(&out).unwrap(), &out);
            }
        }
    }
}
