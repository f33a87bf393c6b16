//! The Streamable HTTP transport: `idemp mcp --upstream URL [--listen ADDR]`.
//!
//! Agents connect to `--listen` (any path); every request goes to the `--upstream`
//! endpoint with its headers (the session header `Mcp-Session-Id`,
//! `MCP-Protocol-Version`, the 2026 revision's `Mcp-Method` / `Mcp-Name`,
//! credentials…) and its body untouched, and the answer comes back the same way:
//! `GET` event streams, `DELETE`, and every POST that is not a `tools/call` or a
//! `tools/list` stream through without being parsed (a POST that says
//! `Mcp-Method: X` is not even read when X is neither).
//!
//! A `tools/call` goes through [`Core::decide`]: a replay or a refusal is answered
//! here (`200`, `application/json`); a forwarded call waits for its answer, which
//! comes as JSON or as an SSE stream. An SSE stream is relayed event by event as it
//! arrives (progress notifications and server requests included), and the event that
//! carries the call's response is held back until the result is settled in the
//! store. The stream is read to its end even when the agent hangs up, so the call
//! is settled either way. An answer that never comes (connection lost after the
//! call was sent) leaves a guarded call ambiguous.
//!
//! Scopes over HTTP also hash the caller's credentials, read as `idemp serve` reads
//! them ([`CredentialHeaders`]: `Authorization`, `Proxy-Authorization`, `x-api-key`,
//! `api-key`, `x-goog-api-key`, the auth scheme case-insensitive), so two tenants of
//! one proxy never share a record.
//!
//! The server may be `http://` or `https://`: the connection is made by the
//! connector of `idemp serve` ([`UpstreamConnector`]: rustls with `ring`, HTTP/2 or
//! HTTP/1.1 by ALPN, SNI, `--upstream-ca` / `--upstream-roots`), and its failures are
//! told apart the same way ([`forward::classify`]): a call that never left (refused
//! connection, untrusted certificate) releases its key; one that may have reached the
//! server is ambiguous.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Either, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use idemp::http::Delivery;
use idemp::http::replay::strip_hop_by_hop;
use idemp::http::scope::{CredentialHeaders, PrincipalExtractor};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::core::{Core, Decision, Ticket};
use super::line::{self, IdKey, Message};
use crate::serve::forward;
use crate::serve::tls::{UpstreamConnector, UpstreamTls};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;
type UpBody = Either<Full<Bytes>, Incoming>;

/// The longest wait for a connection (TCP and TLS) to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The JSON-RPC error code of the 2026 revision for headers that disagree with the
/// body.
const HEADER_MISMATCH: i64 = -32020;

struct Proxy {
    core: Arc<Core>,
    client: Client<UpstreamConnector, UpBody>,
    upstream: Uri,
    authority: Authority,
    /// Who is calling (the caller's credential headers).
    credentials: CredentialHeaders,
    max_message: usize,
}

/// What a forwarded request waits for in the server's answer.
enum Watch {
    /// The answer of a `tools/list`: learn the tools.
    List,
    /// The answer of a `tools/call`: settle it.
    Call(Ticket),
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut res = Response::new(Full::new(body.into()).map_err(|e| match e {}).boxed());
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

fn json(status: StatusCode, line: Vec<u8>) -> Response<Body> {
    full(status, "application/json", line)
}

/// Runs the HTTP proxy until SIGTERM or SIGINT.
pub async fn run(
    core: Arc<Core>,
    upstream: Uri,
    tls: &UpstreamTls,
    listen: SocketAddr,
    max_message: usize,
) -> anyhow::Result<()> {
    let authority = upstream
        .authority()
        .cloned()
        .context("--upstream has no host")?;
    let scheme = upstream
        .scheme()
        .cloned()
        .context("--upstream has no scheme")?;
    let connector = UpstreamConnector::new(tls, &scheme, CONNECT_TIMEOUT)?;
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .http1_max_headers(forward::MAX_RESPONSE_HEADERS)
        .http2_max_header_list_size(forward::MAX_RESPONSE_HEADER_LIST)
        .build(connector);
    let proxy = Arc::new(Proxy {
        core,
        client,
        upstream: upstream.clone(),
        authority,
        credentials: CredentialHeaders::default(),
        max_message,
    });
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(listen = %bound, %upstream, "idemp mcp relaying Streamable HTTP");
    // The one line a script (or a test) waits for.
    println!("idemp mcp listening on http://{bound} upstream {upstream}");

    let graceful = GracefulShutdown::new();
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let mut stop = std::pin::pin!(crate::serve::shutdown_signal());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let proxy = proxy.clone();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let proxy = proxy.clone();
                    async move { Ok::<_, Infallible>(proxy.handle(req).await) }
                });
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc).into_owned());
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut stop => break,
        }
    }
    tracing::info!("shutting down: waiting for in-flight requests");
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 10s");
    }
    Ok(())
}

impl Proxy {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        if parts.method != Method::POST {
            return self.send(parts, Either::Right(body), None).await;
        }
        // The 2026 revision names the method in a header: what is neither a call nor
        // a list streams through unread.
        let method_header = parts
            .headers
            .get("mcp-method")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if method_header
            .as_deref()
            .is_some_and(|m| m != "tools/call" && m != "tools/list")
        {
            core_count(&self.core);
            return self.send(parts, Either::Right(body), None).await;
        }
        let bytes = match Limited::new(body, self.max_message).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                let too_large = e
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some();
                return if too_large {
                    json(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        line::error_line(
                            "null",
                            -32600,
                            &format!(
                                "idemp: the message is larger than --max-message ({} bytes)",
                                self.max_message
                            ),
                        ),
                    )
                } else {
                    json(
                        StatusCode::BAD_REQUEST,
                        line::error_line("null", -32700, "idemp: cannot read the request body"),
                    )
                };
            }
        };
        core_count(&self.core);
        match line::classify(&bytes) {
            Message::Request {
                id,
                method,
                params: Some(params),
            } if method == "tools/call" => {
                let Some(call) = line::tool_call(params) else {
                    return self
                        .send(parts, Either::Left(Full::new(bytes.clone())), None)
                        .await;
                };
                if let Some(name) = parts.headers.get("mcp-name").and_then(|v| v.to_str().ok())
                    && !name.starts_with("=?base64?")
                    && name != call.name
                {
                    return json(
                        StatusCode::BAD_REQUEST,
                        line::error_line(
                            id.get(),
                            HEADER_MISMATCH,
                            "mcp-name header does not match the request body's 'name' parameter",
                        ),
                    );
                }
                let Some(key) = IdKey::of(id) else {
                    return self
                        .send(parts, Either::Left(Full::new(bytes.clone())), None)
                        .await;
                };
                let id = id.get().to_owned();
                let who = self.credentials.principal(&parts);
                match self.core.decide(&id, &call, who.as_deref()).await {
                    Decision::Answer(line) => json(StatusCode::OK, line),
                    Decision::Forward(ticket) => {
                        let body = Either::Left(Full::new(bytes.clone()));
                        self.send(parts, body, Some((key, id, Watch::Call(ticket))))
                            .await
                    }
                }
            }
            Message::Request { id, method, .. } if method == "tools/list" => {
                let watch = IdKey::of(id).map(|k| (k, id.get().to_owned(), Watch::List));
                self.send(parts, Either::Left(Full::new(bytes.clone())), watch)
                    .await
            }
            _ => {
                self.send(parts, Either::Left(Full::new(bytes.clone())), None)
                    .await
            }
        }
    }

    fn upstream_uri(&self, uri: &Uri) -> Result<Uri, http::Error> {
        let path = self.upstream.path();
        let pq = match uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        let scheme = self
            .upstream
            .scheme()
            .cloned()
            .unwrap_or(http::uri::Scheme::HTTP);
        Uri::builder()
            .scheme(scheme)
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::try_from(pq)?)
            .build()
    }

    /// Sends the request upstream and relays the answer, settling `watch` with it.
    async fn send(
        &self,
        mut parts: http::request::Parts,
        body: UpBody,
        watch: Option<(IdKey, String, Watch)>,
    ) -> Response<Body> {
        parts.uri = match self.upstream_uri(&parts.uri) {
            Ok(u) => u,
            Err(e) => {
                return self
                    .unsent(watch, format!("cannot build the upstream URI: {e}"))
                    .await;
            }
        };
        // The client picks the version the connection negotiated (ALPN), and sets
        // `Host` (HTTP/1.1) or `:authority` (HTTP/2) from the URI.
        parts.version = http::Version::HTTP_11;
        parts.headers.remove(header::HOST);
        strip_hop_by_hop(&mut parts.headers);
        let res = match self.client.request(Request::from_parts(parts, body)).await {
            Ok(res) => res,
            Err(e) => {
                let failure = forward::classify(&e, &self.authority);
                tracing::warn!(
                    upstream = %self.authority,
                    delivery = ?failure.delivery,
                    "upstream request failed: {}", failure.detail
                );
                if failure.delivery == Delivery::NotSent {
                    return self.unsent(watch, failure.detail).await;
                }
                return match watch {
                    Some((_, id, Watch::Call(ticket))) => {
                        let line =
                            self.core
                                .lost(ticket, &id, "the connection to the server failed");
                        json(StatusCode::OK, line)
                    }
                    _ => json(
                        StatusCode::BAD_GATEWAY,
                        line::error_line("null", -32603, &format!("idemp: {}", failure.detail)),
                    ),
                };
            }
        };
        let (mut head, body) = res.into_parts();
        strip_hop_by_hop(&mut head.headers);
        self.core.metrics().to_client.increment(1);
        let Some((key, id, watch)) = watch else {
            return Response::from_parts(head, body.map_err(BoxError::from).boxed());
        };
        if !head.status.is_success() {
            // No JSON-RPC answer to the call (session expired, bad request…): the
            // server refused it, so it did not run.
            self.settle(watch, None, true).await;
            return Response::from_parts(head, body.map_err(BoxError::from).boxed());
        }
        let sse = head
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.trim_start().starts_with("text/event-stream"));
        if sse {
            head.headers.remove(header::CONTENT_LENGTH);
            let (tx, rx) = mpsc::channel::<Bytes>(64);
            let core = self.core.clone();
            let max = self.max_message;
            tokio::spawn(relay_sse(core, body, tx, key, id, watch, max));
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
            });
            return Response::from_parts(head, BodyExt::boxed(StreamBody::new(stream)));
        }
        let bytes = match Limited::new(body, self.max_message).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                if let Watch::Call(ticket) = watch {
                    let line = self.core.lost(ticket, &id, "its answer could not be read");
                    return json(StatusCode::OK, line);
                }
                return json(
                    StatusCode::BAD_GATEWAY,
                    line::error_line(
                        &id,
                        -32603,
                        &format!("idemp: cannot read the MCP server's answer: {e}"),
                    ),
                );
            }
        };
        match line::classify(&bytes) {
            Message::Response {
                id: rid,
                result,
                error,
            } if IdKey::of(rid).as_ref() == Some(&key) => {
                apply(&self.core, watch, result, error).await;
            }
            _ => {
                // 202 for a notification-like answer, or something unreadable: a call
                // that was sent and got no readable answer may have run.
                self.lost(
                    watch,
                    &id,
                    "the server's answer is not a JSON-RPC response to it",
                );
            }
        }
        Response::from_parts(head, Full::new(bytes).map_err(|e| match e {}).boxed())
    }

    /// The request never reached the server: the call did not run.
    async fn unsent(&self, watch: Option<(IdKey, String, Watch)>, why: String) -> Response<Body> {
        let id = watch
            .as_ref()
            .map_or_else(|| "null".to_owned(), |w| w.1.clone());
        if let Some((_, _, w)) = watch {
            self.settle(w, None, true).await;
        }
        json(
            StatusCode::BAD_GATEWAY,
            line::error_line(&id, -32603, &format!("idemp: {why}; the call was not sent")),
        )
    }

    async fn settle(
        &self,
        watch: Watch,
        result: Option<&serde_json::value::RawValue>,
        refused: bool,
    ) {
        if let Watch::Call(ticket) = watch {
            let err = refused
                .then(|| serde_json::value::RawValue::from_string("{}".into()).ok())
                .flatten();
            self.core.settle(ticket, result, err.as_deref()).await;
        }
    }

    fn lost(&self, watch: Watch, id: &str, why: &str) {
        if let Watch::Call(ticket) = watch {
            let _ = self.core.lost(ticket, id, why);
        }
    }
}

fn core_count(core: &Core) {
    core.metrics().to_server.increment(1);
}

async fn apply(
    core: &Core,
    watch: Watch,
    result: Option<&serde_json::value::RawValue>,
    error: Option<&serde_json::value::RawValue>,
) {
    match watch {
        Watch::List => {
            if let Some(r) = result {
                core.learn_tools(r);
            }
        }
        Watch::Call(ticket) => core.settle(ticket, result, error).await,
    }
}

/// The end of one SSE event in `buf`, if it holds a whole event: the index just
/// past its blank line.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        match buf[i] {
            b'\n' => {
                match buf.get(i + 1) {
                    Some(b'\n') => return Some(i + 2),
                    Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
                    _ => {}
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// The data of one SSE event (its `data:` lines joined by `\n`).
fn event_data(event: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    let mut first = true;
    for raw in event.split(|&b| b == b'\n') {
        let l = raw.strip_suffix(b"\r").unwrap_or(raw);
        if let Some(rest) = l.strip_prefix(b"data:") {
            if !first {
                data.push(b'\n');
            }
            first = false;
            data.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
        }
    }
    data
}

/// Relays an SSE answer to the agent event by event, and settles the watched
/// request with the event that answers it (before that event is relayed). Reads to
/// the end even when the agent is gone.
async fn relay_sse(
    core: Arc<Core>,
    mut body: Incoming,
    tx: mpsc::Sender<Bytes>,
    key: IdKey,
    id: String,
    watch: Watch,
    max: usize,
) {
    let mut watch = Some(watch);
    let mut buf: Vec<u8> = Vec::new();
    let mut inspecting = true;
    loop {
        let frame = match body.frame().await {
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the server's event stream failed");
                break;
            }
            None => break,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if !inspecting || watch.is_none() {
            let _ = tx.send(data).await;
            continue;
        }
        buf.extend_from_slice(&data);
        while let Some(end) = event_end(&buf) {
            let event: Vec<u8> = buf.drain(..end).collect();
            if watch.is_some() {
                let payload = event_data(&event);
                if let Message::Response {
                    id: rid,
                    result,
                    error,
                } = line::classify(&payload)
                    && IdKey::of(rid).as_ref() == Some(&key)
                    && let Some(w) = watch.take()
                {
                    apply(&core, w, result, error).await;
                }
            }
            let _ = tx.send(Bytes::from(event)).await;
        }
        if buf.len() > max {
            tracing::warn!(
                max,
                "an event longer than --max-message: relayed without inspection"
            );
            inspecting = false;
            let _ = tx.send(Bytes::from(std::mem::take(&mut buf))).await;
        }
    }
    if !buf.is_empty() {
        let _ = tx.send(Bytes::from(buf)).await;
    }
    if let Some(Watch::Call(ticket)) = watch {
        let _ = core.lost(ticket, &id, "the event stream ended before the answer");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events() {
        let buf = b"event: message\ndata: {\"a\":\ndata: 1}\n\ndata: x\r\n\r\nrest";
        let end = event_end(buf).unwrap();
        assert_eq!(event_data(&buf[..end]), b"{\"a\":\n1}");
        let tail = &buf[end..];
        let end2 = event_end(tail).unwrap();
        assert_eq!(event_data(&tail[..end2]), b"x");
        assert_eq!(event_end(&tail[end2..]), None);
    }
}
