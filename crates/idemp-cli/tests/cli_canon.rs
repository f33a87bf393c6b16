//! `idemp canon` and `idemp hash`, run as the real binary.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn idemp(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_idemp"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn idemp");
    // The binary may exit before reading (a bad flag): a broken pipe is fine then.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().expect("wait idemp")
}

fn ok(args: &[&str], stdin: &[u8]) -> String {
    let out = idemp(args, stdin);
    assert!(
        out.status.success(),
        "idemp {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty());
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

fn fails(args: &[&str], stdin: &[u8]) -> String {
    let out = idemp(args, stdin);
    assert!(!out.status.success(), "idemp {args:?} should fail");
    assert!(out.stdout.is_empty(), "nothing on stdout on error");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "one-line error, got {err:?}");
    err
}

fn repo_file(rel: &str) -> String {
    format!("{}/../../{rel}", env!("CARGO_MANIFEST_DIR"))
}

/// The vector of the shared canon vectors with this name.
fn vector(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(repo_file("crates/idemp/tests/vectors/canon.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no vector {name}"))
}

#[test]
fn canon_prints_the_python_form_from_stdin() {
    let input = br#"{"b": 1e-7, "a": ["\u00e9", 1E2, -0, 18446744073709551616]}"#;
    assert_eq!(
        ok(&["canon"], input),
        "{\"a\":[\"\\u00e9\",100.0,0,18446744073709551616],\"b\":1e-07}\n"
    );
    assert_eq!(ok(&["canon", "-"], input), ok(&["canon"], input));
}

#[test]
fn hash_of_a_file_matches_llm_message_hash_py_for_every_preset() {
    let file = repo_file("bench/data/anthropic_request.json");
    for preset in ["anthropic", "openai", "bedrock", "gemini"] {
        let want = vector(&format!("anthropic_request_{preset}"));
        let hash = ok(&["hash", "--preset", preset, &file], b"");
        assert_eq!(
            hash,
            format!("{}\n", want["python"]["hash"].as_str().unwrap())
        );
        let canonical = ok(&["canon", "--preset", preset, &file], b"");
        assert_eq!(
            canonical,
            format!("{}\n", want["python"]["canonical"].as_str().unwrap())
        );
    }
    let none = vector("anthropic_request_nopreset");
    assert_eq!(
        ok(&["hash", "--format", "python", &file], b""),
        format!("{}\n", none["python"]["hash"].as_str().unwrap())
    );
}

#[test]
fn hash_is_sha256_of_the_canonical_form() {
    let input = br#"{"z":[1,2],"a":"x"}"#;
    let canonical = ok(&["canon", "--format", "jcs"], input);
    let hash = ok(&["hash", "--format", "jcs"], input);
    assert_eq!(canonical, "{\"a\":\"x\",\"z\":[1,2]}\n");
    assert_eq!(hash.len(), 65);
    assert!(
        hash.trim_end()
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    // SHA-256 of {"a":"x","z":[1,2]} (Python hashlib).
    let expected = "650284ec8e0488e98e5610bb22fcc932f8914df53077cf99e42e3ba8ea049d64";
    assert_eq!(hash.trim_end(), expected);
}

#[test]
fn jcs_format_and_drop_flags() {
    let input =
        r#"{"id":"keep","meta":{"user_id":"u","trace":1},"x":[{"trace":2,"v":"é"}]}"#.as_bytes();
    assert_eq!(
        ok(
            &[
                "canon",
                "--format",
                "jcs",
                "--drop",
                "trace",
                "--drop-path",
                "meta.user_id"
            ],
            input
        ),
        "{\"id\":\"keep\",\"meta\":{},\"x\":[{\"v\":\"é\"}]}\n"
    );
    assert_eq!(
        ok(
            &[
                "canon",
                "--preset",
                "anthropic",
                "--drop",
                "trace",
                "--drop",
                "v"
            ],
            input
        ),
        "{\"meta\":{\"user_id\":\"u\"},\"x\":[{}]}\n"
    );
}

#[test]
fn errors_are_one_line_and_non_zero() {
    let err = fails(&["canon"], b"{\"a\":1,}");
    assert!(
        err.contains("invalid input in standard input")
            && err.contains("Expecting property name enclosed in double quotes: line 1 column 8"),
        "{err}"
    );
    let err = fails(&["hash"], b"");
    assert!(err.contains("Expecting value"), "{err}");
    let err = fails(&["hash", "--preset", "azure"], b"{}");
    assert!(err.contains("unknown preset \"azure\""), "{err}");
    let err = fails(&["canon", "--format", "yaml"], b"{}");
    assert!(err.contains("unknown format \"yaml\""), "{err}");
    let err = fails(&["canon", "--drop-path", "a..b"], b"{}");
    assert!(err.contains("invalid drop path"), "{err}");
    let err = fails(&["hash", "/nonexistent/request.json"], b"");
    assert!(
        err.contains("cannot read /nonexistent/request.json"),
        "{err}"
    );
    let err = fails(&["canon", "--format", "jcs"], b"{\"a\":1,\"a\":2}");
    assert!(err.contains("duplicate key"), "{err}");
    let err = fails(&["canon"], b"\"\xff\"");
    assert!(err.contains("invalid UTF-8"), "{err}");
}
