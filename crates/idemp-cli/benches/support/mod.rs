//! What the proxy benchmarks share: the `idemp serve` process under test.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// A running `idemp serve`, killed when dropped.
pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `idemp serve` in front of `upstream` on `store` (no admin listener, errors
/// only in the log) and waits for the address it prints.
pub fn proxy(upstream: SocketAddr, store: &str) -> Proxy {
    let mut child = Command::new(env!("CARGO_BIN_EXE_idemp"))
        .args([
            "serve",
            "--upstream",
            &format!("http://{upstream}"),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--admin", "off", "--store", store])
        .env("IDEMP_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn idemp serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read idemp serve's address");
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("idemp serve did not start: {line:?}"))
        .parse()
        .expect("idemp serve's address");
    Proxy { child, addr }
}
