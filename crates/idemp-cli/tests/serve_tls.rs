//! `idemp serve` in front of HTTPS upstreams: the real binary, a real rustls server
//! with a certificate made in the test, HTTP/1.1 and HTTP/2 by ALPN, a private CA
//! trusted with `--upstream-ca`, an untrusted one refused with its reason.

mod serve_support;
mod tls_support;

use std::process::Command;

use serve_support::*;
use tls_support::*;

async fn post(c: &reqwest::Client, url: &str, key: &str) -> reqwest::Response {
    post_until_settled(c, url, key, r#"{"amount":100}"#).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_http1_upstream_with_a_private_ca() {
    let ca = TestCa::new("idemp test CA");
    let up = TlsUpstream::start(ca.leaf(&["localhost", "127.0.0.1"]), &[b"http/1.1"]).await;
    let ca_path = ca.pem_path.to_str().unwrap();
    let proxy = Proxy::start(&up.url(), &["--store", "memory:", "--upstream-ca", ca_path]);
    let c = client();

    let first = post(&c, &proxy.url("/charge"), "tls-1").await;
    assert_eq!(first.status(), 201);
    let body = first.text().await.unwrap();
    let again = post(&c, &proxy.url("/charge"), "tls-1").await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.text().await.unwrap(), body);
    assert_eq!(up.state.charges_of("tls-1"), 1, "one execution over TLS");

    let seen = up.state.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(
        s.sni.as_deref(),
        Some("localhost"),
        "SNI from the upstream URL"
    );
    assert_eq!(s.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(s.version, http::Version::HTTP_11);
    assert_eq!(
        s.headers.get("host").map(String::as_str),
        Some(format!("localhost:{}", up.addr.port()).as_str()),
        "Host is the upstream's"
    );
    assert_eq!(
        s.headers.get("x-forwarded-proto").map(String::as_str),
        Some("http"),
        "x-forwarded-proto says what the client spoke, not the upstream's scheme"
    );
    assert_eq!(
        s.headers.get("x-forwarded-host").map(String::as_str),
        Some(proxy.addr.to_string().as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_http2_upstream_is_chosen_by_alpn() {
    let ca = TestCa::new("idemp test CA");
    let up = TlsUpstream::start(ca.leaf(&["localhost", "127.0.0.1"]), &[b"h2", b"http/1.1"]).await;
    let ca_path = ca.pem_path.to_str().unwrap();
    let proxy = Proxy::start(&up.url(), &["--store", "memory:", "--upstream-ca", ca_path]);
    let c = client();

    for _ in 0..3 {
        let res = post(&c, &proxy.url("/charge"), "h2-1").await;
        assert_eq!(res.status(), 201);
    }
    let res = c.get(proxy.url("/v1/models")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "/v1/models");
    assert_eq!(up.state.charges_of("h2-1"), 1);

    let seen = up.state.seen();
    assert_eq!(seen.len(), 2, "one guarded execution and one GET: {seen:?}");
    for s in &seen {
        assert_eq!(s.version, http::Version::HTTP_2, "{s:?}");
        assert_eq!(s.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(s.sni.as_deref(), Some("localhost"));
        assert!(
            !s.headers.contains_key("connection") && !s.headers.contains_key("te"),
            "no connection-specific headers over h2: {s:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_address_upstream_is_verified_against_the_ip_without_sni() {
    let ca = TestCa::new("idemp test CA");
    let up = TlsUpstream::start(ca.leaf(&["127.0.0.1"]), &[b"http/1.1"]).await;
    let url = format!("https://127.0.0.1:{}", up.addr.port());
    let ca_path = ca.pem_path.to_str().unwrap();
    let proxy = Proxy::start(&url, &["--store", "memory:", "--upstream-ca", ca_path]);
    let res = post(&client(), &proxy.url("/charge"), "ip-1").await;
    assert_eq!(res.status(), 201);
    assert_eq!(up.state.seen()[0].sni, None, "no SNI for an IP address");
}

/// An untrusted certificate: 502 naming the reason, nothing reached the upstream,
/// and the key was released (a proxy that trusts the CA, on the same store, runs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_a_502_that_names_the_reason_and_releases_the_key() {
    let ca = TestCa::new("idemp private CA");
    let up = TlsUpstream::start(ca.leaf(&["localhost"]), &[b"h2", b"http/1.1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("idemp.db").display());
    let c = client();
    {
        // Default roots (webpki): the private CA is unknown.
        let proxy = Proxy::start(&up.url(), &["--store", &store]);
        let res = post(&c, &proxy.url("/charge"), "untrusted-1").await;
        assert_eq!(res.status(), 502);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let p: serde_json::Value = res.json().await.unwrap();
        let detail = p["detail"].as_str().unwrap();
        assert!(
            detail.contains("TLS handshake") && detail.contains("UnknownIssuer"),
            "{detail}"
        );
        assert!(
            detail.contains("--upstream-ca"),
            "says how to fix it: {detail}"
        );
        assert!(!detail.contains("client error"), "{detail}");
        assert!(up.state.seen().is_empty(), "nothing was sent");
    }
    // A certificate for another name is refused too.
    let other = TestCa::new("idemp test CA");
    let wrong = TlsUpstream::start(other.leaf(&["api.example.com"]), &[b"http/1.1"]).await;
    {
        let ca_path = other.pem_path.to_str().unwrap();
        let proxy = Proxy::start(
            &wrong.url(),
            &["--store", "memory:", "--upstream-ca", ca_path],
        );
        let res = post(&c, &proxy.url("/charge"), "wrong-name").await;
        assert_eq!(res.status(), 502);
        let p: serde_json::Value = res.json().await.unwrap();
        let detail = p["detail"].as_str().unwrap();
        assert!(
            detail.contains("not valid for name") && detail.contains("must name the host"),
            "{detail}"
        );
        assert!(wrong.state.seen().is_empty());
    }
    // The same key through a proxy that trusts the CA: it runs (it was released).
    let ca_path = ca.pem_path.to_str().unwrap();
    let proxy = Proxy::start(&up.url(), &["--store", &store, "--upstream-ca", ca_path]);
    let res = post(&c, &proxy.url("/charge"), "untrusted-1").await;
    assert_eq!(res.status(), 201);
    assert!(!res.headers().contains_key("idempotent-replayed"));
    assert_eq!(up.state.charges_of("untrusted-1"), 1);
}

#[test]
fn tls_flags_are_checked_at_start() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_idemp"))
            .arg("serve")
            .args(args)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "off",
                "--store",
                "memory:",
            ])
            .env("IDEMP_LOG", "off")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        err
    };
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let e = run(&[
        "--upstream",
        "https://localhost:1",
        "--upstream-ca",
        missing.to_str().unwrap(),
    ]);
    assert!(e.contains("cannot read --upstream-ca"), "{e}");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello\n").unwrap();
    let e = run(&[
        "--upstream",
        "https://localhost:1",
        "--upstream-ca",
        garbage.to_str().unwrap(),
    ]);
    assert!(e.contains("no PEM certificate"), "{e}");
    let ca = TestCa::new("x");
    let e = run(&[
        "--upstream",
        "http://localhost:1",
        "--upstream-ca",
        ca.pem_path.to_str().unwrap(),
    ]);
    assert!(e.contains("https:// upstreams only"), "{e}");
    // (clap's own error for an unknown value lists the possible ones.)
    let out = Command::new(env!("CARGO_BIN_EXE_idemp"))
        .args([
            "serve",
            "--upstream",
            "https://localhost:1",
            "--upstream-roots",
            "mozilla",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("webpki") && e.contains("native"), "{e}");
}

/// `--upstream-roots native` reads the system's store, which `SSL_CERT_FILE` names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_roots_come_from_the_system_store() {
    let ca = TestCa::new("idemp system CA");
    let up = TlsUpstream::start(ca.leaf(&["localhost"]), &[b"http/1.1"]).await;
    let ca_path = ca.pem_path.to_str().unwrap();
    let proxy = Proxy::start_with_env(
        &up.url(),
        &["--store", "memory:", "--upstream-roots", "native"],
        &[("SSL_CERT_FILE", ca_path)],
    );
    let res = post(&client(), &proxy.url("/charge"), "native-1").await;
    assert_eq!(res.status(), 201);
    assert_eq!(up.state.charges_of("native-1"), 1);
}
