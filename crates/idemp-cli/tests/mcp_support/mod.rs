//! Fixtures of the `idemp mcp` tests: the real binary, the official Python SDK
//! (`mcp` 2.x, in the `.venvs/mcp` environment) as agent and tool server, a scripted
//! standard-library fake server, and a count of the tools' side effects.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Generous, for waiting only (the machine may be loaded).
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn idemp() -> &'static str {
    env!("CARGO_BIN_EXE_idemp")
}

/// The SDK environment's python.
pub fn venv_python() -> PathBuf {
    let py = repo().join(".venvs/mcp/bin/python");
    assert!(
        py.exists(),
        "the MCP tests need the official Python SDK: run scripts/pyenv.sh mcp (missing {})",
        py.display()
    );
    py
}

pub fn support(file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/mcp_support")
        .join(file)
        .display()
        .to_string()
}

/// The side effects the test server recorded, one JSON object each.
pub struct Effects {
    pub path: PathBuf,
}

impl Effects {
    pub fn new(dir: &Path) -> Self {
        let path = dir.join("effects.jsonl");
        std::fs::write(&path, "").unwrap();
        Self { path }
    }
    pub fn all(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
    pub fn count(&self, tool: &str) -> usize {
        self.all().iter().filter(|e| e["tool"] == tool).count()
    }
    /// Waits until `tool` ran `n` times.
    pub fn wait_for(&self, tool: &str, n: usize) {
        let start = Instant::now();
        while self.count(tool) < n {
            assert!(
                start.elapsed() < PATIENCE,
                "{tool} never ran {n} times: {:?}",
                self.all()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    /// Kills every test server that recorded an effect (they may outlive a proxy
    /// killed with SIGKILL).
    pub fn kill_servers(&self) {
        for e in self.all() {
            if let Some(pid) = e["pid"].as_i64() {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        }
    }
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
    /// Waits for the exit, with patience.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "process {} did not exit",
                self.0.id()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs the SDK agent (`agent.py`) and returns its results, one per call.
pub fn run_agent(target: &[String], calls: &Value, env: &[(&str, String)]) -> Vec<Value> {
    let mut cmd = Command::new(venv_python());
    cmd.arg(support("agent.py"));
    if target[0].starts_with("http") {
        cmd.arg("--url").arg(&target[0]).arg(calls.to_string());
    } else {
        cmd.arg("--stdio")
            .arg(calls.to_string())
            .arg("--")
            .args(target);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(PATIENCE)
        .expect("the agent finished in time")
        .unwrap();
    assert!(
        out.status.success(),
        "agent failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `idemp mcp FLAGS -- python server.py` as argv for the agent.
pub fn stdio_target(flags: &[&str]) -> Vec<String> {
    let mut v = vec![idemp().to_string(), "mcp".into()];
    v.extend(flags.iter().map(|s| s.to_string()));
    v.push("--".into());
    v.push(venv_python().display().to_string());
    v.push(support("server.py"));
    v
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `port`.
pub fn wait_port(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < PATIENCE, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `idemp mcp` run by the test itself, which plays the agent line by line.
pub struct RawProxy {
    pub proc: Proc,
    pub stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Drop for RawProxy {
    /// Closes the proxy's stdin, as an agent does: it closes its server's, and both
    /// exit (killed if they do not within the patience).
    fn drop(&mut self) {
        drop(self.stdin.take());
        let start = Instant::now();
        while start.elapsed() < PATIENCE {
            if let Ok(Some(_)) = self.proc.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl RawProxy {
    pub fn start(flags: &[&str], server: &[String], env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(idemp());
        cmd.arg("mcp").args(flags).arg("--").args(server);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut line = String::new();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Self {
            proc: Proc(child),
            stdin,
            lines: rx,
        }
    }

    pub fn send(&mut self, line: &str) {
        let w = self.stdin.as_mut().unwrap();
        w.write_all(line.as_bytes()).unwrap();
        w.flush().unwrap();
    }

    pub fn send_json(&mut self, v: &Value) {
        self.send(&format!("{v}\n"));
    }

    /// The next line from the proxy (with its newline).
    pub fn line(&self) -> String {
        self.lines
            .recv_timeout(PATIENCE)
            .expect("a line from idemp mcp")
    }

    pub fn json(&self) -> Value {
        let l = self.line();
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"))
    }

    /// The proxy's stdout closed.
    pub fn closed(&self) -> bool {
        matches!(
            self.lines.recv_timeout(PATIENCE),
            Err(mpsc::RecvTimeoutError::Disconnected)
        )
    }
}

/// A `tools/call` as the 2026 revision of the SDK sends it.
pub fn sdk_call(id: i64, tool: &str, args: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args,
        "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}})
}

pub fn text_of(result: &Value) -> String {
    result["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}
