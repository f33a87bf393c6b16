//! `idemp records` through the real binary, on SQLite files.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use idemp::store::sqlite::{SqliteStore, rusqlite};
use idemp::store::{Claim, ClaimOutcome, Codec, Fingerprint, Outcome, RecordKey, Store};
use serde_json::Value;

const IDEMP: &str = env!("CARGO_BIN_EXE_idemp");

fn idemp(args: &[&str], cwd: &Path) -> Output {
    Command::new(IDEMP)
        .arg("records")
        .args(args)
        .current_dir(cwd)
        .env_remove("IDEMP_STORE")
        .output()
        .expect("run idemp")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn err(out: &Output) -> String {
    assert!(!out.status.success(), "unexpected success");
    let e = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(e.trim_end().lines().count(), 1, "one-line error: {e:?}");
    e
}

/// A store with: 3 completed JSON records in scope `charge`, 1 in progress, 1 failed
/// raw binary record in scope `mail`, 1 completed text record with an empty scope.
async fn fixture(path: &Path) {
    let store = SqliteStore::open(path).unwrap();
    let ttl = Duration::from_secs(3600);
    let put = |scope: &str, key: &str| Claim::new(RecordKey::new(scope, key));
    let acquire = async |c: Claim| match store.claim(&c).await.unwrap() {
        ClaimOutcome::Acquired { token, .. } => token,
        other => panic!("{other:?}"),
    };
    for i in 0..3 {
        let c = put("charge", &format!("order-{i}")).fingerprint(Some(Fingerprint::of(b"x")));
        let id = c.id.clone();
        let t = acquire(c).await;
        let body = format!(r#"{{"charged":{i},"ok":true}}"#);
        store
            .complete(&id, t, Outcome::new(Codec::Json, body.into_bytes()), ttl)
            .await
            .unwrap();
    }
    acquire(put("charge", "running")).await;
    let c = put("mail", "bin");
    let id = c.id.clone();
    let t = acquire(c).await;
    store
        .fail(
            &id,
            t,
            Outcome::new(Codec::Raw, vec![0xff, 0x00, 0xfe, 0x80]),
            ttl,
        )
        .await
        .unwrap();
    let c = put("", "plain");
    let id = c.id.clone();
    let t = acquire(c).await;
    store
        .complete(&id, t, Outcome::new(Codec::Raw, b"hello".to_vec()), ttl)
        .await
        .unwrap();
}

fn setup() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idemp.db");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(fixture(&path));
    let url = format!("sqlite://{}", path.display());
    (dir, url)
}

#[test]
fn ls_prints_an_aligned_table_and_json() {
    let (dir, url) = setup();
    let out = ok(&idemp(&["ls", "--store", &url], dir.path()));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 7, "{out}");
    assert!(lines[0].starts_with("SCOPE"), "{out}");
    // Aligned: the KEY column starts at the same offset on every line.
    let col = lines[0].find("KEY").unwrap();
    for l in &lines[1..] {
        assert!(l[..col].ends_with("  "), "{out}");
        assert!(!l.as_bytes()[col].is_ascii_whitespace(), "{out}");
    }
    assert!(
        out.contains("in_progress") && out.contains("failed"),
        "{out}"
    );
    assert!(out.contains("order-2") && out.contains("plain"), "{out}");

    let doc: Value =
        serde_json::from_str(&ok(&idemp(&["ls", "--json", "--store", &url], dir.path()))).unwrap();
    assert_eq!(doc["count"], 6);
    assert_eq!(doc["truncated"], false);
    let recs = doc["records"].as_array().unwrap();
    // Ordered by (scope, key): "" < "charge" < "mail".
    let ids: Vec<(String, String)> = recs
        .iter()
        .map(|r| {
            (
                r["scope"].as_str().unwrap().into(),
                r["key"].as_str().unwrap().into(),
            )
        })
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    let first_charge = &recs[1];
    assert_eq!(first_charge["state"], "completed");
    assert_eq!(first_charge["outcome"]["codec"], "json");
    assert_eq!(first_charge["outcome"]["size"], 23);
    assert_eq!(
        first_charge["fingerprint"],
        Fingerprint::of(b"x").to_hex().as_str()
    );
    assert!(first_charge["expires_at_ms"].as_u64().unwrap() > 0);
    let running = recs.iter().find(|r| r["key"] == "running").unwrap();
    assert_eq!(running["state"], "in_progress");
    assert!(running["outcome"].is_null());
    assert!(running["lease_until_ms"].as_u64().is_some());
}

#[test]
fn ls_filters_and_pages() {
    let (dir, url) = setup();
    let run = |args: &[&str]| -> Value {
        let mut all = vec!["ls", "--json", "--store", &url];
        all.extend_from_slice(args);
        serde_json::from_str(&ok(&idemp(&all, dir.path()))).unwrap()
    };
    assert_eq!(run(&["--scope", "charge"])["count"], 4);
    assert_eq!(
        run(&["--scope", "charge", "--prefix", "order-"])["count"],
        3
    );
    assert_eq!(run(&["--prefix", "b"])["count"], 1);
    let limited = run(&["--limit", "2"]);
    assert_eq!(limited["count"], 2);
    assert_eq!(limited["truncated"], true);
    assert_eq!(run(&["--scope", "nope"])["count"], 0);
}

#[test]
fn show_decodes_json_text_and_binary() {
    let (dir, url) = setup();
    let out = ok(&idemp(
        &["show", "order-1", "--scope", "charge", "--store", &url],
        dir.path(),
    ));
    assert!(out.contains("state        completed"), "{out}");
    assert!(out.contains("\"charged\": 1"), "pretty JSON: {out}");

    let v: Value = serde_json::from_str(&ok(&idemp(
        &[
            "show", "order-1", "--scope", "charge", "--json", "--store", &url,
        ],
        dir.path(),
    )))
    .unwrap();
    assert_eq!(v["outcome"]["json"]["charged"], 1);

    let v: Value = serde_json::from_str(&ok(&idemp(
        &["show", "plain", "--json", "--store", &url],
        dir.path(),
    )))
    .unwrap();
    assert_eq!(v["outcome"]["text"], "hello");

    let out = ok(&idemp(
        &["show", "bin", "--scope", "mail", "--store", &url],
        dir.path(),
    ));
    assert!(out.contains("hex: ff00fe80"), "{out}");
    assert!(out.contains("state        failed"), "{out}");

    let e = err(&idemp(&["show", "nope", "--store", &url], dir.path()));
    assert!(e.contains("no record"), "{e}");
}

#[test]
fn purge_and_stats() {
    let (dir, url) = setup();
    let stats = |dir: &Path| -> Value {
        serde_json::from_str(&ok(&idemp(&["stats", "--json", "--store", &url], dir))).unwrap()
    };
    let s = stats(dir.path());
    assert_eq!(s["completed"], 4);
    assert_eq!(s["in_progress"], 1);
    assert_eq!(s["failed"], 1);
    assert_eq!(s["total"], 6);
    assert_eq!(s["ambiguous"], 0);

    let out = ok(&idemp(
        &["purge", "running", "--scope", "charge", "--store", &url],
        dir.path(),
    ));
    assert!(out.starts_with("purged"), "{out}");
    let s = stats(dir.path());
    assert_eq!(
        (s["in_progress"].as_u64(), s["total"].as_u64()),
        (Some(0), Some(5))
    );
    let e = err(&idemp(
        &["purge", "running", "--scope", "charge", "--store", &url],
        dir.path(),
    ));
    assert!(e.contains("no record"), "{e}");

    let table = ok(&idemp(&["stats", "--store", &url], dir.path()));
    assert!(
        table.contains("completed") && table.contains('4'),
        "{table}"
    );
}

#[test]
fn default_store_and_env() {
    let (dir, url) = setup();
    // No --store: sqlite://idemp.db in the working directory.
    let out = ok(&idemp(&["stats", "--json"], dir.path()));
    assert!(out.contains("\"total\":6"), "{out}");
    // IDEMP_STORE.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(IDEMP)
        .args(["records", "stats", "--json"])
        .current_dir(elsewhere.path())
        .env("IDEMP_STORE", &url)
        .output()
        .unwrap();
    assert!(ok(&out).contains("\"total\":6"));
}

#[test]
fn bad_stores_get_clear_errors_and_are_never_created_or_modified() {
    let dir = tempfile::tempdir().unwrap();
    // Missing file: "no such store", nothing created.
    let e = err(&idemp(&["ls"], dir.path()));
    assert!(e.contains("no such store"), "{e}");
    assert!(!dir.path().join("idemp.db").exists());
    let e = err(&idemp(&["ls", "--store", "sqlite://nope/x.db"], dir.path()));
    assert!(e.contains("no such store"), "{e}");

    // Malformed URLs.
    for bad in ["ftp://x", "sqlite:", "redis://h:99999", ""] {
        let e = err(&idemp(&["ls", "--store", bad], dir.path()));
        assert!(e.contains("invalid store URL"), "{bad}: {e}");
    }

    // Not SQLite at all.
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, b"hello, not a database\n".repeat(100)).unwrap();
    let before = std::fs::read(&notes).unwrap();
    let e = err(&idemp(
        &["ls", "--store", &format!("sqlite://{}", notes.display())],
        dir.path(),
    ));
    assert!(e.contains("not an SQLite database"), "{e}");
    assert_eq!(std::fs::read(&notes).unwrap(), before);

    // Another application's database, and an empty file: refused, untouched.
    let app = dir.path().join("app.db");
    rusqlite::Connection::open(&app)
        .unwrap()
        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    let before = std::fs::read(&app).unwrap();
    for cmd in [&["ls"][..], &["purge", "k"], &["stats"]] {
        let mut args = cmd.to_vec();
        let url = format!("sqlite://{}", app.display());
        args.extend(["--store", &url]);
        let e = err(&idemp(&args, dir.path()));
        assert!(e.contains("not an idemp store"), "{e}");
    }
    assert_eq!(std::fs::read(&app).unwrap(), before);
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let e = err(&idemp(
        &["ls", "--store", &format!("sqlite://{}", empty.display())],
        dir.path(),
    ));
    assert!(e.contains("empty database"), "{e}");
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
}
