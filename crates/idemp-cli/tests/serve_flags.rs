//! Every `idemp serve` setting is checked at start: a bad value is one line on stderr
//! and a non-zero exit, never a panic at request time (`--wait 18446744073709551615`
//! used to make every keyed request panic on "overflow when adding duration to
//! instant") nor a proxy that silently misbehaves (`--ttl 0` disabled replay,
//! `--upstream-timeout 0` answered 504 after running the upstream, a shutdown timeout
//! shorter than the upstream timeout cut running calls).

mod serve_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serve_support::*;

/// Runs `idemp serve` with `args` (and `env`), expecting it to refuse to start (a
/// proxy that starts instead is killed and the test fails).
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idemp"));
    cmd.args([
        "serve",
        "--upstream",
        "http://127.0.0.1:9",
        "--listen",
        "127.0.0.1:0",
    ])
    .args(["--admin", "off", "--store", "memory:"])
    .args(args)
    .env("IDEMP_LOG", "warn")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} {env:?}: the proxy started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{args:?} {env:?}: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {err}"
    );
    assert!(err.starts_with("idemp: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn durations_out_of_bounds_are_refused_at_start() {
    for (args, needle) in [
        (vec!["--wait", "18446744073709551615"], "--wait"),
        (vec!["--wait", "2h"], "--wait"),
        (
            vec!["--shutdown-timeout", "18446744073709551615"],
            "--shutdown-timeout",
        ),
        (vec!["--lease", "18446744073709551615"], "--lease"),
        (vec!["--ttl", "0"], "--ttl"),
        (vec!["--ttl", "500ms"], "--ttl"),
        (vec!["--ttl", "18446744073709551615"], "--ttl"),
        (vec!["--upstream-timeout", "0"], "--upstream-timeout"),
        (
            vec!["--upstream-idle-timeout", "0s"],
            "--upstream-idle-timeout",
        ),
        (vec!["--header-timeout", "0"], "--header-timeout"),
        (vec!["--idle-timeout", "0"], "--idle-timeout"),
        (vec!["--body-timeout", "0"], "--body-timeout"),
        (vec!["--sweep-interval", "0"], "--sweep-interval"),
        (vec!["--lease", "1ms"], "--lease"),
    ] {
        let err = refused(&args, &[]);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn the_shutdown_timeout_must_cover_the_upstream_timeout() {
    let err = refused(
        &["--upstream-timeout", "60s", "--shutdown-timeout", "30s"],
        &[],
    );
    assert!(
        err.contains("--shutdown-timeout 30s is shorter than --upstream-timeout 1m"),
        "{err}"
    );
    // The same through the environment.
    let err = refused(
        &[],
        &[
            ("IDEMP_UPSTREAM_TIMEOUT", "5m"),
            ("IDEMP_SHUTDOWN_TIMEOUT", "1m"),
        ],
    );
    assert!(err.contains("--shutdown-timeout"), "{err}");
}

#[test]
fn other_values_out_of_bounds_are_refused_at_start() {
    for (args, needle) in [
        (vec!["--max-connections", "0"], "--max-connections"),
        (vec!["--max-connections", "lots"], "--max-connections"),
        (
            vec!["--max-connections", "99999999999"],
            "--max-connections",
        ),
        (vec!["--max-body", "0"], "--max-body"),
    ] {
        let err = refused(&args, &[]);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn the_config_file_is_held_to_the_same_bounds() {
    let dir = tempfile::tempdir().unwrap();
    for (toml, needle) in [
        ("wait = 9223372036854775807", "--wait"),
        ("ttl = 0", "--ttl"),
        ("upstream_timeout = \"0s\"", "--upstream-timeout"),
        (
            "upstream_timeout = \"10m\"\nshutdown_timeout = \"1m\"",
            "--shutdown-timeout",
        ),
        ("max_connections = 0", "--max-connections"),
        ("header_timeout = \"forever\"", "--header-timeout"),
        ("upstream_roots = \"mozilla\"", "upstream_roots"),
    ] {
        let path = dir.path().join("idemp.toml");
        std::fs::write(&path, toml).unwrap();
        let err = refused(&["--config", path.to_str().unwrap()], &[]);
        assert!(err.contains(needle), "{toml}: {err}");
    }
}

/// The bounds leave every sensible value alone: a long upstream timeout alone derives
/// a shutdown timeout that covers it, and every new flag is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensible_values_start() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(
        &up.url(),
        &[
            "--store",
            "memory:",
            "--upstream-timeout",
            "15m",
            "--upstream-idle-timeout",
            "5m",
            "--ttl",
            "7d",
            "--wait",
            "30s",
            "--header-timeout",
            "30s",
            "--idle-timeout",
            "5m",
            "--body-timeout",
            "2m",
            "--max-connections",
            "10000",
            "--sweep-interval",
            "10m",
        ],
    );
    let res = post_until_settled(&client(), &proxy.url("/charge"), "sensible", "{}").await;
    assert_eq!(res.status(), 201);
}
