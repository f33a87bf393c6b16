//! `idemp key …` end to end: the real binary against the Python-generated vectors
//! (crates/idemp/tests/vectors/keys.json), input modes (argument, stdin, `--hex`), and
//! error reporting (one line on stderr, non-zero exit).

use std::{
    ffi::OsString,
    io::Write,
    process::{Command, Output, Stdio},
};

use serde_json::Value;

const VECTORS: &str = include_str!("../../idemp/tests/vectors/keys.json");

/// argv's per-argument limit on Linux is 128 KiB; larger inputs go through stdin.
const MAX_ARG: usize = 100_000;

fn vectors(section: &str) -> Vec<Value> {
    let doc: Value = serde_json::from_str(VECTORS).unwrap();
    doc[section].as_array().unwrap().clone()
}

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

fn idemp<I, S>(args: I, stdin: Option<&[u8]>) -> Output
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idemp"));
    cmd.args(args.into_iter().map(Into::into))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn idemp");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Runs and returns stdout, asserting success, a single trailing newline and an
/// empty stderr.
fn ok<I, S>(args: I, stdin: Option<&[u8]>) -> String
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let out = idemp(args, stdin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "stderr: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let value = stdout.strip_suffix('\n').expect("newline after the value");
    assert!(!value.contains('\n'));
    value.to_string()
}

/// Runs and returns the single stderr line, asserting failure and an empty stdout.
fn err<I, S>(args: I, stdin: Option<&[u8]>) -> String
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let out = idemp(args, stdin);
    assert!(!out.status.success(), "expected failure");
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    stderr.trim_end().to_string()
}

/// Whether bytes can go on the command line as themselves (UTF-8 without NUL).
fn plain(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|s| !s.contains('\0') && s.len() <= MAX_ARG)
}

#[test]
fn hex_readme_example() {
    assert_eq!(
        ok(["key", "hex", "abc"], None),
        "ik_ba7816bf8f01cfea414140de5dae2223"
    );
}

#[test]
fn hex_vectors_by_argument_stdin_and_hex() {
    let mut by_arg = 0;
    for v in vectors("sha256_hex") {
        let input = data(&v["input"]);
        let want = v["key"].as_str().unwrap();
        // Raw stdin, always.
        assert_eq!(ok(["key", "hex"], Some(&input)), want, "{}", v["input"]);
        if let Some(text) = plain(&input) {
            assert_eq!(ok(["key", "hex", "--", text], None), want);
            by_arg += 1;
        }
        let hexed = hex::encode(&input);
        if hexed.len() <= MAX_ARG {
            assert_eq!(ok(["key", "hex", "--hex", "--", &hexed], None), want);
        } else {
            // Hex on stdin, with the surrounding whitespace a shell pipeline adds.
            let piped = format!("{hexed}\n");
            assert_eq!(ok(["key", "hex", "--hex"], Some(piped.as_bytes())), want);
        }
    }
    assert!(by_arg > 30, "only {by_arg} vectors went through argv");
}

#[cfg(unix)]
#[test]
fn hex_takes_non_utf8_arguments_as_raw_bytes() {
    use std::os::unix::ffi::OsStringExt;
    let raw = OsString::from_vec(vec![b'a', 0xff, b'b']);
    let out = ok([OsString::from("key"), "hex".into(), raw], None);
    assert_eq!(out, idemp::key::sha256_hex([b'a', 0xff, b'b']));
}

fn scoped_args(scope: &[u8], parts: &[Vec<u8>]) -> Option<Vec<String>> {
    let mut args = vec!["key".to_string(), "scoped".to_string()];
    let all_plain = plain(scope).is_some() && parts.iter().all(|p| plain(p).is_some());
    let fits = hex::encode(scope).len() <= MAX_ARG
        && parts.iter().all(|p| hex::encode(p).len() <= MAX_ARG);
    if all_plain {
        args.push("--".into());
        args.push(String::from_utf8(scope.to_vec()).unwrap());
        args.extend(parts.iter().map(|p| String::from_utf8(p.clone()).unwrap()));
    } else if fits {
        args.push("--hex".into());
        args.push("--".into());
        args.push(hex::encode(scope));
        args.extend(parts.iter().map(hex::encode));
    } else {
        return None;
    }
    Some(args)
}

#[test]
fn scoped_vectors() {
    let mut checked = 0;
    let mut cases: Vec<(Vec<u8>, Vec<Vec<u8>>, String)> = Vec::new();
    for v in vectors("scoped_key") {
        let parts = v["parts"].as_array().unwrap().iter().map(data).collect();
        cases.push((data(&v["scope"]), parts, v["key"].as_str().unwrap().into()));
    }
    for v in vectors("scoped_sha256_hex") {
        let parts = vec![data(&v["content"])];
        cases.push((data(&v["scope"]), parts, v["key"].as_str().unwrap().into()));
    }
    for (scope, parts, want) in &cases {
        let Some(args) = scoped_args(scope, parts) else {
            continue; // a 1 MiB part does not fit in argv
        };
        assert_eq!(&ok(&args, None), want, "{args:?}");
        checked += 1;
    }
    assert!(checked + 3 >= cases.len(), "{checked} of {}", cases.len());
}

#[test]
fn scoped_scope_must_be_utf8() {
    let e = err(["key", "scoped", "--hex", "61ff", "00"], None);
    assert_eq!(
        e,
        "idemp: SCOPE is not valid UTF-8 (byte 0xff at position 1)"
    );
}

#[test]
fn uuid5_vectors() {
    for v in vectors("uuid5_key") {
        let ns = v["namespace"].as_str().unwrap();
        let name = data(&v["name"]);
        let want = v["key"].as_str().unwrap();
        let namespace = format!("--namespace={ns}");
        match plain(&name) {
            Some(text) => assert_eq!(ok(["key", "uuid5", &namespace, "--", text], None), want),
            None => assert_eq!(
                ok(
                    [
                        "key",
                        "uuid5",
                        "--hex",
                        &namespace,
                        "--",
                        &hex::encode(&name)
                    ],
                    None
                ),
                want
            ),
        }
    }
}

#[test]
fn uuid5_default_namespace_is_anthropic_dns() {
    let default = ok(["key", "uuid5", "python.org"], None);
    assert_eq!(default, "886313e1-3b8a-5372-9b90-0c9aee199e5d");
    assert_eq!(
        ok(["key", "uuid5", "--namespace", "dns", "python.org"], None),
        default
    );
    assert_eq!(
        ok(
            [
                "key",
                "uuid5",
                "--namespace",
                "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
                "python.org"
            ],
            None
        ),
        default
    );
}

#[test]
fn uuid5_unknown_namespace_is_an_error() {
    let e = err(["key", "uuid5", "--namespace", "isbn", "x"], None);
    assert_eq!(
        e,
        "idemp: unknown namespace \"isbn\": expected dns, url, oid, x500, anthropic or a UUID"
    );
}

#[test]
fn random_is_a_fresh_v4() {
    let a = ok(["key", "random"], None);
    let b = ok(["key", "random"], None);
    assert_ne!(a, b);
    let uuid = uuid_parts(&a);
    assert_eq!(uuid.len(), 5);
    assert!(uuid[2].starts_with('4'), "version 4: {a}");
    assert!(
        matches!(uuid[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
        "variant: {a}"
    );
}

fn uuid_parts(s: &str) -> Vec<&str> {
    assert_eq!(s.len(), 36, "{s}");
    assert_eq!(s, s.to_lowercase());
    s.split('-').collect()
}

#[test]
fn invalid_hex_names_the_character_and_position() {
    assert_eq!(
        err(["key", "hex", "--hex", "00zz"], None),
        "idemp: invalid hex in TEXT: 'z' at position 2 is not a hex digit"
    );
    assert_eq!(
        err(["key", "hex", "--hex", "abc"], None),
        "idemp: invalid hex in TEXT: odd number of hex digits (3)"
    );
    assert_eq!(
        err(["key", "scoped", "--hex", "00", "0g"], None),
        "idemp: invalid hex in PART 1: 'g' at position 1 is not a hex digit"
    );
    assert_eq!(
        err(["key", "hex", "--hex"], Some(b"12 34\n")),
        "idemp: invalid hex in stdin: byte 0x20 at position 2 is not a hex digit"
    );
}

#[test]
fn empty_inputs() {
    let empty = "ik_e3b0c44298fc1c149afbf4c8996fb924";
    assert_eq!(ok(["key", "hex", ""], None), empty);
    assert_eq!(ok(["key", "hex"], Some(b"")), empty);
    assert_eq!(ok(["key", "hex", "--hex", ""], None), empty);
    assert_eq!(ok(["key", "scoped", ""], None), empty);
}

#[test]
fn usage_errors_fail() {
    let out = idemp(["key", "scoped"], None);
    assert!(!out.status.success());
    let out = idemp(["key", "nope"], None);
    assert!(!out.status.success());
}
