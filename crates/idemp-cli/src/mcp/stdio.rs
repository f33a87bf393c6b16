//! The stdio transport: spawn the server, relay newline-delimited JSON-RPC both ways.
//!
//! ```text
//! agent ─stdin─▶ client loop ──(line untouched)──────────────▶ server's stdin
//!                    │ tools/call: Core::decide (claim, replay, budget…)
//!                    └─ answered here: replay / tool error ─┐
//! agent ◀─stdout─ writer ◀──────────────────────────────────┴─ server loop ◀─ server's stdout
//!                                   (guarded answers settle in the store first)
//! ```
//!
//! Every line is relayed as it came, byte for byte, in both directions: requests,
//! notifications, responses, server-to-client requests (sampling, elicitation,
//! roots) and their answers, and lines that are not JSON-RPC at all. Only the
//! answers the proxy gives itself (a replay with the new request's id, a tool error)
//! are written by it. The server's stderr is inherited, so it passes through; the
//! proxy's own logs go to stderr too, never to stdout.
//!
//! A guarded call's answer is settled in the store before it is written to the
//! agent, so an answer the agent saw is always one a retry would get back. Lines
//! longer than `--max-message` pass through in pieces, neither parsed nor guarded.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::core::{Core, Decision, Ticket};
use super::line::{self, IdKey, Message};
use super::policy::Policy;

/// How long a guarded call cancelled by the agent waits for the server's answer
/// before it is left to become ambiguous.
const CANCEL_GRACE: Duration = Duration::from_secs(10);
/// How long the server gets to exit after its stdin is closed, before SIGKILL.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// Lines buffered towards each side before the relay waits for that side.
const QUEUE: usize = 1024;

/// What a request sent to the server waits for.
enum Pending {
    /// A `tools/list`: its answer teaches the policy table.
    List,
    /// A forwarded `tools/call` and its raw id.
    Call { ticket: Ticket, id: String },
}

type PendingMap = Arc<Mutex<HashMap<IdKey, Pending>>>;

/// One line read, or why not.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    /// A whole line (with its `\n`, unless it was the last one).
    Line,
    /// `max` bytes of a longer line; the rest follows.
    Partial,
    /// End of input.
    Eof,
}

/// Reads one line into `buf` (cleared first), at most `max` bytes at a time.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Read> {
    buf.clear();
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(if buf.is_empty() {
                Read::Eof
            } else {
                Read::Line
            });
        }
        let room = max.saturating_sub(buf.len());
        let (take, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(pos) if pos < room => (pos + 1, Read::Line),
            _ if avail.len() >= room => (room, Read::Partial),
            _ => (avail.len(), Read::Eof),
        };
        buf.extend_from_slice(&avail[..take]);
        r.consume(take);
        if done != Read::Eof {
            return Ok(done);
        }
    }
}

/// Writes queued lines, flushing when the queue is empty. Ends when every sender is
/// gone or the other side stops reading.
async fn write_loop<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(bytes) = rx.recv().await {
        if w.write_all(&bytes).await.is_err() {
            return;
        }
        if rx.is_empty() && w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// Relays between an agent (`client_in`/`client_out`) and a server
/// (`server_in`/`server_out`) until the server's output ends. Returns whether the
/// agent's input ended first (a normal shutdown).
pub async fn relay<CI, CO, SI, SO>(
    core: Arc<Core>,
    client_in: CI,
    client_out: CO,
    server_in: SI,
    server_out: SO,
    max_message: usize,
) -> bool
where
    CI: AsyncRead + Unpin + Send + 'static,
    CO: AsyncWrite + Unpin + Send + 'static,
    SI: AsyncWrite + Unpin + Send + 'static,
    SO: AsyncRead + Unpin + Send + 'static,
{
    let (to_client, client_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let (to_server, server_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let client_writer = tokio::spawn(write_loop(client_out, client_rx));
    let server_writer = tokio::spawn(write_loop(server_in, server_rx));
    let pending: PendingMap = Arc::default();
    let (client_done_tx, mut client_done) = tokio::sync::watch::channel(false);

    let client_loop = tokio::spawn(client_loop(
        core.clone(),
        BufReader::with_capacity(64 << 10, client_in),
        to_client.clone(),
        to_server,
        pending.clone(),
        max_message,
        client_done_tx,
    ));
    let server = server_loop(
        core.clone(),
        BufReader::with_capacity(64 << 10, server_out),
        to_client.clone(),
        pending.clone(),
        max_message,
    );
    // Until the server's output ends; or, once the agent has left (its input closed,
    // so the server's was closed too), for at most EXIT_GRACE more.
    let agent_left = {
        let mut done = client_done.clone();
        async move {
            let _ = done.wait_for(|d| *d).await;
            tokio::time::sleep(EXIT_GRACE).await;
        }
    };
    tokio::select! {
        () = server => {}
        () = agent_left => tracing::warn!(grace = ?EXIT_GRACE, "the server kept its output open after the agent left"),
    }
    let client_ended = *client_done.borrow_and_update();
    client_loop.abort();
    // The server's output ended: every call still waiting for it will never get
    // its answer.
    let lost: Vec<(Ticket, String)> = pending
        .lock()
        .map(|mut p| {
            p.drain()
                .filter_map(|(_, v)| match v {
                    Pending::Call { ticket, id } => Some((ticket, id)),
                    Pending::List => None,
                })
                .collect()
        })
        .unwrap_or_default();
    for (ticket, id) in lost {
        let line = core.lost(ticket, &id, "the server exited before answering");
        let _ = to_client.send(line).await;
    }
    drop(to_client);
    server_writer.abort();
    let _ = tokio::time::timeout(Duration::from_secs(5), client_writer).await;
    client_ended
}

async fn client_loop<R: AsyncBufRead + Unpin>(
    core: Arc<Core>,
    mut reader: R,
    to_client: mpsc::Sender<Vec<u8>>,
    to_server: mpsc::Sender<Vec<u8>>,
    pending: PendingMap,
    max_message: usize,
    done: tokio::sync::watch::Sender<bool>,
) {
    let mut buf = Vec::with_capacity(4096);
    let mut in_long_line = false;
    loop {
        let read = match read_line(&mut reader, &mut buf, max_message).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the agent's input");
                Read::Eof
            }
        };
        let whole = match read {
            Read::Eof => break,
            Read::Partial => {
                if !in_long_line {
                    tracing::warn!(
                        max_message,
                        "a message longer than --max-message from the agent passes through unguarded"
                    );
                }
                in_long_line = true;
                false
            }
            Read::Line => !std::mem::replace(&mut in_long_line, false),
        };
        let line = std::mem::replace(&mut buf, Vec::with_capacity(4096));
        core.metrics().to_server.increment(1);
        if !whole {
            if to_server.send(line).await.is_err() {
                break;
            }
            continue;
        }
        match line::classify(&line) {
            Message::Request {
                id,
                method,
                params: Some(params),
            } if method == "tools/call" => {
                let Some(call) = line::tool_call(params) else {
                    if to_server.send(line).await.is_err() {
                        break;
                    }
                    continue;
                };
                let tool = call.name.as_ref();
                // The fast path: a pass-through call with no budget goes out in order.
                if core.tools().policy(tool) == Policy::Pass && !core.has_budget(tool) {
                    core.metrics().call(Policy::Pass);
                    core.metrics().execution(Policy::Pass);
                    if to_server.send(line).await.is_err() {
                        break;
                    }
                    continue;
                }
                let Some(key) = IdKey::of(id) else {
                    // Unreachable for a classified request; relayed rather than lost.
                    if to_server.send(line).await.is_err() {
                        break;
                    }
                    continue;
                };
                tokio::spawn(guarded_call(
                    core.clone(),
                    line,
                    key,
                    to_client.clone(),
                    to_server.clone(),
                    pending.clone(),
                ));
            }
            Message::Request { id, method, .. } if method == "tools/list" => {
                if let (Some(key), Ok(mut p)) = (IdKey::of(id), pending.lock()) {
                    p.insert(key, Pending::List);
                }
                if to_server.send(line).await.is_err() {
                    break;
                }
            }
            Message::Notification {
                method,
                params: Some(params),
            } if method == "notifications/cancelled" => {
                watch_cancel(&core, params.get(), &pending);
                if to_server.send(line).await.is_err() {
                    break;
                }
            }
            _ => {
                if to_server.send(line).await.is_err() {
                    break;
                }
            }
        }
    }
    // The agent closed its input: close the server's (dropping `to_server` ends the
    // writer), and let the server finish and exit.
    let _ = done.send(true);
}

/// Decides a `tools/call` (claim, replay, budget…) and either answers it or sends it
/// on and records what its answer must settle.
async fn guarded_call(
    core: Arc<Core>,
    line: Vec<u8>,
    key: IdKey,
    to_client: mpsc::Sender<Vec<u8>>,
    to_server: mpsc::Sender<Vec<u8>>,
    pending: PendingMap,
) {
    let decision = {
        let Message::Request {
            id,
            params: Some(params),
            ..
        } = line::classify(&line)
        else {
            return;
        };
        let Some(call) = line::tool_call(params) else {
            return;
        };
        let id = id.get().to_owned();
        match core.decide(&id, &call, None).await {
            Decision::Forward(ticket) => {
                if let Ok(mut p) = pending.lock() {
                    p.insert(key, Pending::Call { ticket, id });
                }
                None
            }
            Decision::Answer(answer) => Some(answer),
        }
    };
    match decision {
        None => {
            let _ = to_server.send(line).await;
        }
        Some(answer) => {
            core.metrics().to_client.increment(1);
            let _ = to_client.send(answer).await;
        }
    }
}

/// The agent cancelled a request: if it is a forwarded guarded call, give the server
/// a grace period to answer anyway; after it, the call is left to become ambiguous.
fn watch_cancel(core: &Arc<Core>, params: &str, pending: &PendingMap) {
    #[derive(serde::Deserialize)]
    struct Cancelled<'a> {
        #[serde(borrow, rename = "requestId")]
        request_id: &'a serde_json::value::RawValue,
    }
    let Ok(c) = serde_json::from_str::<Cancelled<'_>>(params) else {
        return;
    };
    let Some(key) = IdKey::of(c.request_id) else {
        return;
    };
    let tracked = pending
        .lock()
        .map(|p| matches!(p.get(&key), Some(Pending::Call { .. })))
        .unwrap_or(false);
    if !tracked {
        return;
    }
    let (core, pending) = (core.clone(), pending.clone());
    tokio::spawn(async move {
        tokio::time::sleep(CANCEL_GRACE).await;
        let gone = pending.lock().ok().and_then(|mut p| p.remove(&key));
        if let Some(Pending::Call { ticket, id }) = gone {
            // The agent cancelled: it expects no answer, so none is written.
            let _ = core.lost(ticket, &id, "cancelled by the agent");
        }
    });
}

async fn server_loop<R: AsyncBufRead + Unpin>(
    core: Arc<Core>,
    mut reader: R,
    to_client: mpsc::Sender<Vec<u8>>,
    pending: PendingMap,
    max_message: usize,
) {
    let mut buf = Vec::with_capacity(4096);
    let mut in_long_line = false;
    loop {
        let read = match read_line(&mut reader, &mut buf, max_message).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the server's output");
                Read::Eof
            }
        };
        let whole = match read {
            Read::Eof => return,
            Read::Partial => {
                in_long_line = true;
                false
            }
            Read::Line => !std::mem::replace(&mut in_long_line, false),
        };
        let line = std::mem::replace(&mut buf, Vec::with_capacity(4096));
        core.metrics().to_client.increment(1);
        let waiting = whole && pending.lock().map(|p| !p.is_empty()).unwrap_or(false);
        if waiting
            && let Message::Response { id, result, .. } = line::classify(&line)
            && let Some(key) = IdKey::of(id)
        {
            let entry = pending.lock().ok().and_then(|mut p| p.remove(&key));
            match entry {
                Some(Pending::List) => {
                    if let Some(result) = result {
                        core.learn_tools(result);
                    }
                }
                Some(Pending::Call { ticket, .. }) if ticket.needs_settle() => {
                    // Settle first, then answer: an answer the agent saw is one a
                    // retry gets back.
                    let (core, to_client) = (core.clone(), to_client.clone());
                    tokio::spawn(async move {
                        if let Message::Response { result, error, .. } = line::classify(&line) {
                            core.settle(ticket, result, error).await;
                        }
                        let _ = to_client.send(line).await;
                    });
                    continue;
                }
                Some(Pending::Call { .. }) | None => {}
            }
        }
        if to_client.send(line).await.is_err() {
            return;
        }
    }
}

/// Spawns `command` and relays the process's stdin/stdout to it until it exits;
/// returns its exit code.
pub async fn run(core: Arc<Core>, command: &[String], max_message: usize) -> anyhow::Result<i32> {
    let (program, args) = command
        .split_first()
        .context("no command to run after `--`")?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start the MCP server `{program}`"))?;
    let (Some(server_in), Some(server_out)) = (child.stdin.take(), child.stdout.take()) else {
        anyhow::bail!("cannot talk to the MCP server `{program}`: no pipes");
    };
    tracing::info!(command = %command.join(" "), pid = child.id().unwrap_or(0), "idemp mcp relaying stdio");
    let client_ended = match super::pipe::Pipe::stdio() {
        Some((input, output)) => {
            relay(core, input, output, server_in, server_out, max_message).await
        }
        None => {
            tracing::debug!("stdin/stdout are not private pipes: relaying through tokio's stdio");
            let (input, output) = (tokio::io::stdin(), tokio::io::stdout());
            relay(core, input, output, server_in, server_out, max_message).await
        }
    };
    // The server closed its output: it is exiting (or the agent left and its stdin
    // was closed). Give it a moment, then make sure it is gone.
    let status = match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
        Ok(status) => status.context("cannot wait for the MCP server")?,
        Err(_) => {
            tracing::warn!("the MCP server did not exit after its output closed: killing it");
            let _ = child.start_kill();
            child
                .wait()
                .await
                .context("cannot wait for the MCP server")?
        }
    };
    if !client_ended {
        tracing::warn!(%status, "the MCP server exited");
    }
    Ok(status.code().unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_lines_within_a_bound() {
        let input: &[u8] = b"short\nthis one is long\n\nlast";
        let mut r = BufReader::with_capacity(4, input);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        loop {
            let read = read_line(&mut r, &mut buf, 8).await.unwrap();
            if read == Read::Eof {
                break;
            }
            got.push((read, String::from_utf8(buf.clone()).unwrap()));
        }
        assert_eq!(
            got,
            vec![
                (Read::Line, "short\n".into()),
                (Read::Partial, "this one".into()),
                (Read::Partial, " is long".into()),
                (Read::Line, "\n".into()),
                (Read::Line, "\n".into()),
                (Read::Line, "last".into()),
            ]
        );
    }
}
