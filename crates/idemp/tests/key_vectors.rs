//! Every vector of `tests/vectors/keys.json` (produced by `scripts/gen-key-vectors.py`
//! from agentidemp-py 0.1.0 and llm-message-hash-py 0.1.0), plus a cross-check against
//! the `agentidemp` 0.1.0 crate on random inputs.

use idemp::{
    Key,
    batch::CustomIds,
    key::{self, Uuid},
};
use proptest::prelude::*;
use serde_json::Value;

const VECTORS: &str = include_str!("vectors/keys.json");

fn vectors(section: &str) -> Vec<Value> {
    let doc: Value = serde_json::from_str(VECTORS).expect("keys.json parses");
    let list = doc[section]
        .as_array()
        .unwrap_or_else(|| panic!("section {section} missing"))
        .clone();
    assert!(!list.is_empty(), "section {section} is empty");
    list
}

/// Decodes the file's data encoding: text, `{"hex"}` or `{"repeat","times"}`.
fn data(d: &Value) -> Vec<u8> {
    match d {
        Value::String(s) => s.as_bytes().to_vec(),
        Value::Object(o) if o.contains_key("hex") => {
            hex::decode(o["hex"].as_str().unwrap()).unwrap()
        }
        Value::Object(o) if o.contains_key("repeat") => o["repeat"]
            .as_str()
            .unwrap()
            .repeat(usize::try_from(o["times"].as_u64().unwrap()).unwrap())
            .into_bytes(),
        other => panic!("bad data {other}"),
    }
}

fn text(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

fn namespace(name: &str) -> Uuid {
    match name {
        "dns" => key::NAMESPACE_DNS,
        "url" => key::NAMESPACE_URL,
        "oid" => key::NAMESPACE_OID,
        "x500" => key::NAMESPACE_X500,
        "anthropic" => key::NAMESPACE_ANTHROPIC,
        uuid => Uuid::parse_str(uuid).unwrap(),
    }
}

#[test]
fn vector_file_is_large_enough() {
    let total: usize = [
        "sha256_hex",
        "scoped_sha256_hex",
        "scoped_key",
        "uuid5_key",
        "builder",
        "for_args",
        "custom_ids",
    ]
    .iter()
    .map(|s| vectors(s).len())
    .sum();
    assert!(total >= 150, "only {total} vectors");
}

#[test]
fn sha256_hex_vectors() {
    for v in vectors("sha256_hex") {
        let input = data(&v["input"]);
        let want = text(&v["key"]);
        assert_eq!(key::sha256_hex(&input), want, "{}", v["input"]);
        assert_eq!(Key::sha256(&input), want);
        if let Ok(s) = std::str::from_utf8(&input) {
            assert_eq!(key::sha256_hex(s), want);
        }
        assert_eq!(
            agentidemp::sha256_hex(&input),
            want,
            "agentidemp crate disagrees"
        );
    }
}

#[test]
fn scoped_sha256_hex_vectors() {
    for v in vectors("scoped_sha256_hex") {
        let scope = text(&v["scope"]);
        let content = data(&v["content"]);
        let want = text(&v["key"]);
        assert_eq!(key::scoped_sha256_hex(scope, &content), want, "{v}");
        assert_eq!(Key::scoped_sha256(scope, &content), want);
        assert_eq!(key::scoped_key(scope, [&content]), want);
        assert_eq!(agentidemp::scoped_sha256_hex(scope, &content), want);
    }
}

#[test]
fn scoped_key_vectors() {
    for v in vectors("scoped_key") {
        let scope = text(&v["scope"]);
        let parts: Vec<Vec<u8>> = v["parts"].as_array().unwrap().iter().map(data).collect();
        let want = text(&v["key"]);
        assert_eq!(key::scoped_key(scope, &parts), want, "{scope:?} {parts:?}");
        assert_eq!(Key::scoped(scope, parts.iter().map(Vec::as_slice)), want);
        if parts.is_empty() {
            assert_eq!(key::sha256_hex(scope), want);
        }
    }
}

#[test]
fn scoped_key_is_not_injective_as_documented() {
    assert_eq!(
        key::scoped_key("a\0b", ["c"]),
        key::scoped_key("a", ["b", "c"])
    );
    assert_eq!(
        key::scoped_key("a", ["b\0c"]),
        key::scoped_key("a", ["b", "c"])
    );
}

#[test]
fn uuid5_key_vectors() {
    let mut invalid_utf8 = 0;
    for v in vectors("uuid5_key") {
        let ns = namespace(text(&v["namespace"]));
        let name = data(&v["name"]);
        let want = text(&v["key"]);
        assert_eq!(key::uuid5_key(&ns, &name), want, "{v}");
        assert_eq!(Key::uuid5(&ns, &name), want);
        assert_eq!(agentidemp::uuid_v5(&ns, &name).to_string(), want);
        let parsed = Uuid::parse_str(want).unwrap();
        assert_eq!(parsed.get_version_num(), 5);
        if v.get("python_error").is_some() {
            // Documented choice: raw bytes are hashed (as the crate does); the Python
            // package raises on these names.
            assert!(std::str::from_utf8(&name).is_err());
            invalid_utf8 += 1;
        }
    }
    assert!(invalid_utf8 > 0);
}

#[test]
fn namespace_constants() {
    assert_eq!(key::NAMESPACE_ANTHROPIC, agentidemp::NAMESPACE_ANTHROPIC);
    assert_eq!(
        key::NAMESPACE_ANTHROPIC.to_string(),
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
    );
    assert_eq!(
        key::NAMESPACE_URL.to_string(),
        "6ba7b811-9dad-11d1-80b4-00c04fd430c8"
    );
    assert_eq!(
        key::NAMESPACE_OID.to_string(),
        "6ba7b812-9dad-11d1-80b4-00c04fd430c8"
    );
    assert_eq!(
        key::NAMESPACE_X500.to_string(),
        "6ba7b814-9dad-11d1-80b4-00c04fd430c8"
    );
}

#[test]
fn builder_vectors() {
    for v in vectors("builder") {
        let mut b = Key::builder(text(&v["scope"]));
        for part in v["parts"].as_array().unwrap() {
            let (kind, value) = part.as_object().unwrap().iter().next().unwrap();
            b = match kind.as_str() {
                "str" => b.part_str(text(value)),
                "bytes" => b.part(data(value)),
                "u64" => b.part_u64(value.as_u64().unwrap()),
                "i64" => b.part_i64(value.as_i64().unwrap()),
                "json" => b.part_json(&serde_json::from_str(text(value)).unwrap()),
                other => panic!("unknown part kind {other}"),
            };
        }
        assert_eq!(b.build(), text(&v["key"]), "{v}");
    }
}

#[test]
fn for_args_vectors() {
    for v in vectors("for_args") {
        let scope = text(&v["scope"]);
        let tool = text(&v["tool"]);
        let want = text(&v["key"]);
        let variants = v["args_json"].as_array().unwrap();
        for args_json in variants {
            let args: Value = serde_json::from_str(text(args_json)).unwrap();
            let mut canonical = Vec::new();
            idemp::canon::write_python_value(&args, &mut canonical);
            assert_eq!(
                String::from_utf8(canonical).unwrap(),
                text(&v["canonical"]),
                "canonical form of {args_json}"
            );
            assert_eq!(key::for_args(scope, tool, &args), want, "{args_json}");
            assert_eq!(Key::for_args(scope, tool, &args), want);
        }
        // The definition, independent of canon: scoped_key(scope, [tool, canonical]).
        assert_eq!(key::scoped_key(scope, [tool, text(&v["canonical"])]), want);
    }
}

#[test]
fn custom_ids_vectors() {
    for v in vectors("custom_ids") {
        let requests: Vec<Value> = v["requests_json"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| serde_json::from_str(text(t)).unwrap())
            .collect();
        let want: Vec<&str> = v["ids"].as_array().unwrap().iter().map(text).collect();
        let ids = CustomIds::with_prefix(text(&v["prefix"]))
            .unwrap()
            .for_values(&requests);
        assert_eq!(ids, want, "{v}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// idemp agrees with the `agentidemp` crate on arbitrary bytes and scopes.
    #[test]
    fn agrees_with_agentidemp_crate(
        content in proptest::collection::vec(any::<u8>(), 0..600),
        scope in ".{0,24}",
        ns in any::<[u8; 16]>(),
    ) {
        prop_assert_eq!(key::sha256_hex(&content), agentidemp::sha256_hex(&content));
        prop_assert_eq!(
            key::scoped_sha256_hex(&scope, &content),
            agentidemp::scoped_sha256_hex(&scope, &content)
        );
        prop_assert_eq!(
            key::scoped_key(&scope, [&content]),
            agentidemp::scoped_sha256_hex(&scope, &content)
        );
        let ns = Uuid::from_bytes(ns);
        prop_assert_eq!(key::uuid5_key(&ns, &content), agentidemp::uuid_v5(&ns, &content).to_string());
        for ns in [key::NAMESPACE_ANTHROPIC, key::NAMESPACE_URL] {
            prop_assert_eq!(key::uuid5_key(&ns, &content), agentidemp::uuid_v5(&ns, &content).to_string());
        }
    }

    /// Multi-part scoped keys are the NUL-joined single hash, as in the Python package.
    #[test]
    fn scoped_key_is_nul_joined(
        scope in ".{0,12}",
        parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6),
    ) {
        let mut joined = scope.as_bytes().to_vec();
        for p in &parts {
            joined.push(0);
            joined.extend_from_slice(p);
        }
        prop_assert_eq!(key::scoped_key(&scope, &parts), agentidemp::sha256_hex(&joined));
    }
}
