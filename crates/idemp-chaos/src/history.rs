//! What workers record: history events (JSON lines) and side effects ("key token
//! worker" lines), both appended with `O_APPEND` and fsynced before the worker goes on.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// A fencing token (as in `idemp::store::Token`).
pub type Token = u64;

/// One observation of a worker, in the order it made them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// The worker acquired `key` with `token`; `takeover` is the previous owner's
    /// token when it took an ambiguous (expired) record over.
    Claim {
        /// Worker id.
        worker: String,
        /// The key.
        key: String,
        /// The token acquired.
        token: Token,
        /// The previous owner's token, on a takeover.
        takeover: Option<Token>,
    },
    /// The store acknowledged the completion of `key` with `value` by `token`.
    Ok {
        /// Worker id.
        worker: String,
        /// The key.
        key: String,
        /// The completing token.
        token: Token,
        /// The stored value.
        value: String,
    },
    /// The completion (or renewal) of `token` was refused: the lease was lost.
    Fenced {
        /// Worker id.
        worker: String,
        /// The key.
        key: String,
        /// The fenced token.
        token: Token,
    },
    /// The caller got a stored result (a replay, or a reconciled ambiguous key).
    Replay {
        /// Worker id.
        worker: String,
        /// The key.
        key: String,
        /// The record's token.
        token: Token,
        /// The value returned.
        value: String,
        /// Whether `Verify` reconciled an ambiguous record (rather than a replay).
        reconciled: bool,
    },
    /// The worker did not run the effect: its lease was lost or too old to be sure.
    Refused {
        /// Worker id.
        worker: String,
        /// The key.
        key: String,
        /// The token.
        token: Token,
    },
    /// Any other error (store unreachable, reconcile failed…): no result.
    Error {
        /// Worker id.
        worker: String,
        /// The key.
        key: String,
        /// The error.
        message: String,
    },
}

/// One side effect, as logged by the worker that ran it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effect {
    /// The key.
    pub key: String,
    /// The token of the execution that ran it.
    pub token: Token,
    /// The worker that ran it.
    pub worker: String,
}

impl Effect {
    /// The line written to the effects log (without the newline).
    pub fn line(&self) -> String {
        format!("{} {} {}", self.key, self.token, self.worker)
    }

    /// The value an execution that ran this effect completes with.
    pub fn value(&self) -> String {
        format!("{}:{}", self.worker, self.token)
    }

    /// Parses one effects-log line.
    pub fn parse(line: &str) -> Option<Effect> {
        let mut parts = line.split(' ');
        let key = parts.next()?.to_owned();
        let token = parts.next()?.parse().ok()?;
        let worker = parts.next()?.to_owned();
        if parts.next().is_some() || key.is_empty() || worker.is_empty() {
            return None;
        }
        Some(Effect { key, token, worker })
    }
}

/// What the store holds for a key at the end of a scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinalState {
    /// No record.
    Absent,
    /// Still in progress (a crashed owner, not taken over since).
    InProgress {
        /// Its token.
        token: Token,
    },
    /// Completed.
    Completed {
        /// The completing token.
        token: Token,
        /// The stored value.
        value: String,
    },
    /// Something else (failed, or an outcome that is not UTF-8).
    Other(String),
}

/// The final states of the keys, by key.
pub type Finals = BTreeMap<String, FinalState>;

/// Appends `line` plus a newline to `path` (`O_APPEND`) and fsyncs it.
pub fn append_line(path: &Path, line: &str) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    f.write_all(format!("{line}\n").as_bytes())?;
    f.sync_data()?;
    Ok(())
}

/// Reads an effects log. A torn last line (a worker killed mid-write) is skipped.
pub fn read_effects(path: &Path) -> anyhow::Result<Vec<Effect>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    // Only whole lines: an effect counts once its line (with the newline) is written.
    let whole = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    Ok(whole.lines().filter_map(Effect::parse).collect())
}

/// Reads every history file in `dir` (`*.jsonl`). Torn lines are skipped.
pub fn read_history(dir: &Path) -> anyhow::Result<Vec<Event>> {
    let mut events = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    paths.sort();
    for p in paths {
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        events.extend(
            text.lines()
                .filter_map(|l| serde_json::from_str::<Event>(l).ok()),
        );
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effect_lines_round_trip_and_torn_lines_are_rejected() {
        let e = Effect {
            key: "g1-k2".into(),
            token: 7,
            worker: "w3".into(),
        };
        assert_eq!(Effect::parse(&e.line()), Some(e.clone()));
        assert_eq!(e.value(), "w3:7");
        assert_eq!(Effect::parse("g1-k2 7"), None);
        assert_eq!(Effect::parse("g1-k2 x w"), None);
    }

    #[test]
    fn events_round_trip_as_json_lines() {
        let ev = Event::Claim {
            worker: "w1".into(),
            key: "k".into(),
            token: 3,
            takeover: Some(2),
        };
        let line = serde_json::to_string(&ev).unwrap();
        assert!(line.contains("\"ev\":\"claim\""));
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), ev);
    }
}
