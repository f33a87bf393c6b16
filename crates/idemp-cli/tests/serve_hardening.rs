//! `idemp serve` against clients that hold its resources: half-sent heads, idle
//! keep-alives, slow bodies, more connections than the cap, running out of file
//! descriptors, and SIGTERM with all of those pending. The real binary and raw
//! sockets; assertions are on what happens (closed, refused, answered), with only
//! generous upper bounds on when.

mod faulty_upstream;
mod serve_support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use faulty_upstream::*;
use serve_support::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far above every limit a test sets: only a proxy that never closes fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// Reads until the proxy closes the connection (EOF or reset), returning what it sent;
/// `None` if it was still open after `PATIENCE`.
async fn until_closed(sock: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(PATIENCE, read).await.ok()?;
    Some(got)
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

fn status_of(bytes: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(bytes);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

async fn ok_upstream() -> FaultyUpstream {
    FaultyUpstream::start(vec![send(response(201, r#"{"ok":true}"#))]).await
}

/// 50 half-sent heads used to stay open (and hold memory) for as long as the client
/// liked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_heads_are_closed_after_the_header_timeout() {
    let up = ok_upstream().await;
    let proxy = Proxy::start(&up.url(), &["--store", "memory:", "--header-timeout", "1s"]);
    let mut socks = Vec::new();
    for i in 0..50 {
        let mut s = connect(proxy.addr).await;
        s.write_all(format!("POST /v1/charges HTTP/1.1\r\nhost: x\r\nx-slow-{i}: ").as_bytes())
            .await
            .unwrap();
        socks.push(s);
    }
    for s in &mut socks {
        assert!(
            until_closed(s).await.is_some(),
            "a half-sent head stayed open"
        );
    }
    // A client that keeps trickling bytes of its head is closed too.
    let mut s = connect(proxy.addr).await;
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let start = Instant::now();
    let mut closed = false;
    while start.elapsed() < PATIENCE {
        if s.write_all(b"x-a: b\r\n").await.is_err() {
            closed = true;
            break;
        }
        let mut b = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(200), s.read(&mut b)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "a trickled head stayed open");
    assert_eq!(up.executions(), 0);
    // Real clients are still served.
    let res = raw_request(proxy.addr, "GET /ok HTTP/1.1\nhost: x", b"")
        .await
        .unwrap();
    assert_eq!(res.status, 201);
}

/// 20 idle connections used to stay open indefinitely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let up = ok_upstream().await;
    let proxy = Proxy::start(&up.url(), &["--store", "memory:", "--idle-timeout", "1s"]);
    let mut socks = Vec::new();
    for _ in 0..20 {
        socks.push(connect(proxy.addr).await);
    }
    // A keep-alive connection after a complete request is idle too.
    let mut kept = connect(proxy.addr).await;
    kept.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(PATIENCE, kept.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status_of(&buf[..n]), Some(201));
    socks.push(kept);
    for s in &mut socks {
        assert!(
            until_closed(s).await.is_some(),
            "an idle connection stayed open"
        );
    }
}

/// 100 POSTs that stop one byte short of their body used to hold their buffers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_fail_after_the_body_timeout_and_nothing_runs() {
    let up = ok_upstream().await;
    let proxy = Proxy::start(
        &up.url(),
        &[
            "--store",
            "memory:",
            "--body-timeout",
            "1s",
            "--header-timeout",
            "60s",
        ],
    );
    let mut socks = Vec::new();
    for i in 0..20 {
        let mut s = connect(proxy.addr).await;
        // Guarded (keyed POST) and unguarded (PUT, streamed to the upstream) bodies.
        let head = if i % 2 == 0 {
            format!(
                "POST /v1/charges HTTP/1.1\r\nhost: x\r\nidempotency-key: slow-{i}\r\ncontent-length: 1000\r\n\r\n"
            )
        } else {
            "PUT /v1/files HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n".to_owned()
        };
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&[b'a'; 999]).await.unwrap();
        socks.push(s);
    }
    for s in &mut socks {
        let got = until_closed(s)
            .await
            .expect("a slow body kept its connection open");
        if let Some(status) = status_of(&got) {
            assert!(status >= 400, "{}", String::from_utf8_lossy(&got));
        }
    }
    assert_eq!(up.executions(), 0, "no request arrived whole upstream");
}

/// More connections than `--max-connections`: the excess is refused at once with a
/// 503, and the slots come back when connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_refused_at_once() {
    let up = ok_upstream().await;
    let proxy = Proxy::start(
        &up.url(),
        &[
            "--store",
            "memory:",
            "--max-connections",
            "5",
            "--idle-timeout",
            "60s",
        ],
    );
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = connect(proxy.addr).await;
        // A complete request on each, so that each is surely accepted and counted.
        s.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status_of(&buf[..n]), Some(201));
        held.push(s);
    }
    for _ in 0..3 {
        let mut extra = connect(proxy.addr).await;
        let got = until_closed(&mut extra)
            .await
            .expect("an excess connection was left hanging");
        assert_eq!(
            status_of(&got),
            Some(503),
            "{}",
            String::from_utf8_lossy(&got)
        );
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.contains("too-many-connections") && text.contains("retry-after"),
            "{text}"
        );
    }
    let executed = up.executions();
    drop(held);
    // The slots come back once the held connections are closed.
    let mut served = false;
    for _ in 0..100 {
        if let Some(r) = raw_request(proxy.addr, "GET /b HTTP/1.1\nhost: x", b"").await
            && r.status == 201
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "the proxy serves again after connections closed");
    assert_eq!(up.executions(), executed + 1);
}

/// Out of file descriptors, the accept loop refuses and keeps going; once
/// connections close, clients are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accept_loop_survives_running_out_of_file_descriptors() {
    let up = ok_upstream().await;
    let script = format!(
        "ulimit -n 64 && exec \"$0\" serve --upstream {} --listen 127.0.0.1:0 --admin off --store memory: --max-connections 1000 --idle-timeout 60s",
        up.url()
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_idemp"))
        .env("IDEMP_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let addr = listening_addr(&mut child);
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(child);

    // Far more connections than descriptors.
    let mut socks = Vec::new();
    for _ in 0..150 {
        if let Ok(s) = TcpStream::connect(addr).await {
            socks.push(s);
        }
    }
    // Every connection is either served or refused, none hangs: ask each for a page.
    let mut served = 0;
    let mut refused = 0;
    for s in &mut socks {
        let _ = s
            .write_all(b"GET /x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await;
        match until_closed(s).await {
            Some(got) if status_of(&got) == Some(201) => served += 1,
            Some(_) => refused += 1,
            None => panic!("a connection hung while descriptors ran out"),
        }
    }
    assert!(refused > 0, "64 descriptors cannot hold 150 connections");
    assert!(served > 0);
    drop(socks);
    let mut ok = false;
    for _ in 0..100 {
        if let Some(r) = raw_request(addr, "GET /y HTTP/1.1\nhost: x", b"").await
            && r.status == 201
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the proxy serves again once descriptors are free");
}

fn listening_addr(child: &mut std::process::Child) -> SocketAddr {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("no listening line: {line:?}"))
        .parse()
        .unwrap()
}

/// One half-sent head used to make SIGTERM wait the whole shutdown timeout. Now idle
/// and half-sent connections are dropped at once, and only requests in progress are
/// waited for (they finish).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drops_idle_and_half_sent_connections_and_finishes_requests_in_progress() {
    let up = FaultyUpstream::start_with(vec![vec![
        Step::Sleep(Duration::from_millis(1500)),
        send(response(201, r#"{"done":true}"#)),
    ]])
    .await;
    // Limits far above the test's patience: only the shutdown can close these.
    let proxy = Proxy::start(
        &up.url(),
        &[
            "--store",
            "memory:",
            "--header-timeout",
            "1h",
            "--idle-timeout",
            "1h",
            "--upstream-timeout",
            "10m",
        ],
    );
    let mut half = connect(proxy.addr).await;
    half.write_all(b"POST /v1/charges HTTP/1.1\r\nhost: x\r\nidempotency-key: ")
        .await
        .unwrap();
    let mut idle = connect(proxy.addr).await;
    let running = tokio::spawn(raw_request(
        proxy.addr,
        "POST /v1/charges HTTP/1.1\nhost: x\nidempotency-key: running",
        b"{}",
    ));
    // Wait until the running request reached the upstream.
    let start = Instant::now();
    while up.executions() == 0 {
        assert!(
            start.elapsed() < PATIENCE,
            "the request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut child = proxy;
    let pid = child.pid().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        until_closed(&mut half).await.is_some(),
        "the half-sent head was kept"
    );
    assert!(
        until_closed(&mut idle).await.is_some(),
        "the idle connection was kept"
    );
    let res = running
        .await
        .unwrap()
        .expect("the request in progress was answered");
    assert_eq!(res.status, 201);
    assert_eq!(res.body, br#"{"done":true}"#);
    // And the process exits (far sooner than the hour-long limits or the 10 min
    // shutdown timeout).
    let start = Instant::now();
    loop {
        if let Some(status) = child.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(start.elapsed() < PATIENCE, "the proxy did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
