//! Helpers shared by the multi-process tests: driving `idemp-worker` processes and
//! reading what they left behind, whatever the store.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use idemp::clock::{Clock, SystemClock};
use idemp::store::{RecordKey, State, Store};

/// The worker binary of this crate.
pub const WORKER: &str = env!("CARGO_BIN_EXE_idemp-worker");

/// The lines of an effects log (empty when no effect ran yet).
pub fn effect_lines(path: &Path) -> Vec<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => s.lines().map(str::to_string).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{e}"),
    }
}

/// Starts `crash-at POINT`, waits for its READY line, kills it with SIGKILL.
/// Returns the killed owner's token.
pub fn run_and_kill(point: &str, url: &str, key: &str, effects: &Path, lease_ms: u64) -> u64 {
    let mut child = Command::new(WORKER)
        .args(["crash-at", point, "--store", url, "--key", key])
        .args(["--lease-ms", &lease_ms.to_string(), "--effects-file"])
        .arg(effects)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn idemp-worker");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read the READY line");
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let parts: Vec<&str> = line.trim().split(' ').collect();
    assert_eq!(parts[..2], ["READY", point], "{line:?}");
    parts[2].parse().expect("token")
}

/// Polls until the killed owner's lease has passed by `margin_ms` on this machine's
/// clock (stores on server time run on this machine too; the margin absorbs the
/// difference). Panics if the record settles or disappears instead.
pub async fn until_ambiguous<S: Store + ?Sized>(store: &S, id: &RecordKey, margin_ms: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rec = store
            .get(id)
            .await
            .expect("store reachable")
            .expect("record survives the kill");
        let State::InProgress { lease_until } = rec.state else {
            panic!("expected an in-progress record, got {rec:?}");
        };
        if lease_until + margin_ms <= SystemClock.now_ms() {
            return;
        }
        assert!(Instant::now() < deadline, "lease never passed: {rec:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What `idemp-worker storm` processes reported: every value each key was answered
/// with (one per contender) and how many executions they ran in all.
#[derive(Debug, Default)]
pub struct StormReport {
    /// Key → the values the contenders got.
    pub values: HashMap<String, Vec<String>>,
    /// Executions the workers ran (they count their own).
    pub executed: usize,
}

impl StormReport {
    /// Adds one worker's output; panics if the worker failed or printed an unexpected
    /// line.
    pub fn add(&mut self, out: &Output) {
        assert!(
            out.status.success(),
            "worker failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["VALUE", key, value] => self
                    .values
                    .entry(key.to_string())
                    .or_default()
                    .push(value.to_string()),
                ["DONE", e, _] => {
                    self.executed += e
                        .trim_start_matches("executed=")
                        .parse::<usize>()
                        .expect("executed=N")
                }
                _ => panic!("unexpected line {line:?}"),
            }
        }
    }
}
