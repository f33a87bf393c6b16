//! Properties of keys and batch custom_ids: builder injectivity and domain separation,
//! `Key` validation, custom_id charset/length/uniqueness/stability.

use std::collections::{HashMap, HashSet};

use idemp::{
    Key,
    batch::{CustomIds, MAX_PREFIX_LEN, custom_ids, custom_ids_from_bytes, validate_custom_id},
    key::{self, KeyError},
};
use proptest::prelude::*;
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Part {
    Bytes(Vec<u8>),
    Str(String),
    U64(u64),
    I64(i64),
}

/// The value a part stands for: a string is its UTF-8 bytes (documented), numbers are
/// typed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Meaning {
    Bytes(Vec<u8>),
    U64(u64),
    I64(i64),
}

impl Part {
    fn meaning(&self) -> Meaning {
        match self {
            Part::Bytes(b) => Meaning::Bytes(b.clone()),
            Part::Str(s) => Meaning::Bytes(s.as_bytes().to_vec()),
            Part::U64(n) => Meaning::U64(*n),
            Part::I64(n) => Meaning::I64(*n),
        }
    }
}

fn part() -> impl Strategy<Value = Part> {
    prop_oneof![
        proptest::collection::vec(prop_oneof![Just(0u8), Just(b'a'), any::<u8>()], 0..6)
            .prop_map(Part::Bytes),
        "[a\\x00b]{0,4}".prop_map(Part::Str),
        prop_oneof![Just(0u64), Just(7), Just(u64::MAX), any::<u64>()].prop_map(Part::U64),
        prop_oneof![Just(0i64), Just(-1), Just(7), any::<i64>()].prop_map(Part::I64),
    ]
}

fn build(scope: &str, parts: &[Part]) -> Key {
    parts
        .iter()
        .fold(Key::builder(scope), |b, p| match p {
            Part::Bytes(x) => b.part(x),
            Part::Str(s) => b.part_str(s),
            Part::U64(n) => b.part_u64(*n),
            Part::I64(n) => b.part_i64(*n),
        })
        .build()
}

/// Splits `bytes` at the given cut points (sorted, deduplicated).
fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut parts = Vec::new();
    let mut start = 0;
    for c in cuts {
        parts.push(bytes[start..c].to_vec());
        start = c;
    }
    parts.push(bytes[start..].to_vec());
    parts
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Two different (scope, part list) inputs never give the same builder key; equal
    /// meanings always do. Parts come from tiny alphabets (NUL, 'a', 'b') so that
    /// near-collisions (same bytes, other boundaries) are frequent.
    #[test]
    fn builder_is_injective(
        s1 in "[a\\x00]{0,3}", p1 in proptest::collection::vec(part(), 0..5),
        s2 in "[a\\x00]{0,3}", p2 in proptest::collection::vec(part(), 0..5),
    ) {
        let m1: Vec<Meaning> = p1.iter().map(Part::meaning).collect();
        let m2: Vec<Meaning> = p2.iter().map(Part::meaning).collect();
        let same = s1 == s2 && m1 == m2;
        prop_assert_eq!(build(&s1, &p1) == build(&s2, &p2), same);
    }

    /// The same bytes cut at different places give different keys (the legacy
    /// NUL-joined form cannot promise this once parts hold NULs).
    #[test]
    fn builder_boundaries_matter(
        bytes in proptest::collection::vec(prop_oneof![Just(0u8), Just(b'x')], 0..12),
        cuts1 in proptest::collection::vec(any::<usize>(), 0..4),
        cuts2 in proptest::collection::vec(any::<usize>(), 0..4),
    ) {
        let a = split(&bytes, &cuts1);
        let b = split(&bytes, &cuts2);
        let ka = a.iter().fold(Key::builder("s"), |k, p| k.part(p)).build();
        let kb = b.iter().fold(Key::builder("s"), |k, p| k.part(p)).build();
        prop_assert_eq!(ka == kb, a == b);
    }

    /// The builder never equals the legacy scoped_key of the same inputs, and its
    /// output has the same `ik_` + 32 hex shape.
    #[test]
    fn builder_is_domain_separated(
        scope in ".{0,8}",
        parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..10), 0..5),
    ) {
        let built = parts.iter().fold(Key::builder(&scope), |k, p| k.part(p)).build();
        prop_assert_ne!(built.as_str(), key::scoped_key(&scope, &parts));
        prop_assert_ne!(built.as_str(), key::sha256_hex(scope.as_bytes()));
        prop_assert_eq!(built.as_str().len(), key::HASHED_KEY_LEN);
        prop_assert!(built.as_str().starts_with("ik_"));
        prop_assert!(built.as_str()[3..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    /// `Key::new` accepts exactly 1..=255 bytes of 0x21..=0x7e and reports the first
    /// offending byte and its position.
    #[test]
    fn key_validation_matches_the_rule(s in "[\\x00-\\x7f\u{e9}]{0,300}") {
        let result = Key::new(s.clone());
        let bad = s.bytes().position(|b| !(0x21..=0x7e).contains(&b));
        match (s.len(), bad) {
            (0, _) => prop_assert_eq!(result, Err(KeyError::Empty)),
            (n, _) if n > 255 => prop_assert_eq!(result, Err(KeyError::TooLong { len: n })),
            (_, Some(position)) => prop_assert_eq!(
                result,
                Err(KeyError::InvalidByte { byte: s.as_bytes()[position], position })
            ),
            (_, None) => {
                let k = result.unwrap();
                prop_assert_eq!(k.as_str(), s.as_str());
                prop_assert_eq!(k.to_string().parse::<Key>().unwrap(), k.clone());
                let json = serde_json::to_string(&k).unwrap();
                prop_assert_eq!(serde_json::from_str::<Key>(&json).unwrap(), k);
            }
        }
    }

    /// Batch ids: valid charset and length, unique within the batch, the same on
    /// resubmission, and per request independent of the order of different requests.
    #[test]
    fn custom_ids_are_valid_unique_and_stable(
        picks in proptest::collection::vec(0usize..6, 0..40),
        prefix in "[A-Za-z0-9_-]{0,20}",
        seed in any::<u64>(),
    ) {
        let pool: [&[u8]; 6] = [b"", b"a", b"b", b"{\"x\":1}", b"\0", "\u{1F980}".as_bytes()];
        let batch: Vec<&[u8]> = picks.iter().map(|&i| pool[i]).collect();
        let assigner = CustomIds::with_prefix(prefix.clone()).unwrap();
        let ids = assigner.for_bytes(&batch);
        prop_assert_eq!(ids.len(), batch.len());
        for id in &ids {
            prop_assert_eq!(validate_custom_id(id), Ok(()));
            prop_assert!(id.starts_with(&prefix));
        }
        prop_assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
        // Resubmission: same batch, same ids.
        prop_assert_eq!(assigner.for_bytes(&batch), ids.clone());
        // Equal requests share the hash and are numbered 0, 1, 2… in batch order.
        let mut count: HashMap<&[u8], usize> = HashMap::new();
        for (req, id) in batch.iter().zip(&ids) {
            let n = count.entry(req).or_insert(0);
            let expected_prefix = format!("{prefix}{}", &key::sha256_hex(req)[3..]);
            prop_assert_eq!(id, &format!("{expected_prefix}-{n}"));
            *n += 1;
        }
        // Reordering: a rotation of the batch keeps the id of every request whose
        // content occurs once.
        if !batch.is_empty() {
            let k = usize::try_from(seed % batch.len() as u64).unwrap();
            let mut rotated = batch.clone();
            rotated.rotate_left(k);
            let rotated_ids = assigner.for_bytes(&rotated);
            for (i, req) in batch.iter().enumerate() {
                if count[req] == 1 {
                    let j = (i + batch.len() - k) % batch.len();
                    prop_assert_eq!(&rotated_ids[j], &ids[i]);
                }
            }
        }
    }

    /// A prefix is accepted exactly when it is at most 20 characters of [A-Za-z0-9_-].
    #[test]
    fn custom_id_prefix_validation(prefix in "[A-Za-z0-9_ ./\u{e9}-]{0,24}") {
        let ok = prefix.len() <= MAX_PREFIX_LEN
            && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        prop_assert_eq!(CustomIds::with_prefix(prefix).is_ok(), ok);
    }
}

#[test]
fn removing_a_different_request_keeps_ids() {
    let full = custom_ids_from_bytes(["a", "b", "a", "c"]);
    let without_b = custom_ids_from_bytes(["a", "a", "c"]);
    assert_eq!(
        without_b,
        [full[0].clone(), full[2].clone(), full[3].clone()]
    );
}

#[test]
fn custom_ids_ignore_json_key_order() {
    let ids = custom_ids(&[
        json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}),
        json!({"messages": [{"content": "hi", "role": "user"}], "max_tokens": 1, "model": "m"}),
        json!({"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}),
    ]);
    assert_eq!(ids[0][..32], ids[1][..32]);
    assert!(ids[0].ends_with("-0") && ids[1].ends_with("-1"));
    assert_ne!(ids[0][..32], ids[2][..32]);
}

#[test]
fn for_args_ignores_argument_order() {
    let a = key::for_args("s", "t", &json!({"a": 1, "b": {"y": [1, 2], "x": null}}));
    let b = key::for_args("s", "t", &json!({"b": {"x": null, "y": [1, 2]}, "a": 1}));
    let c = key::for_args("s", "t", &json!({"b": {"x": null, "y": [2, 1]}, "a": 1}));
    let other_tool = key::for_args("s", "u", &json!({"a": 1, "b": {"y": [1, 2], "x": null}}));
    assert_eq!(a, b);
    assert_ne!(a, c, "array order matters");
    assert_ne!(a, other_tool);
}
