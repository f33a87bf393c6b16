//! What one MCP message line is: the classifier of the relay.
//!
//! The relay never rewrites what it passes through: it only needs to know, for each
//! newline-delimited line, whether it is a JSON-RPC request (and which method), a
//! notification, a response (and to which id), or anything else. Anything else —
//! a batch (an array), a line that is not JSON, an object that is not JSON-RPC, an
//! empty line — is [`Message::Other`] and goes through untouched and unguarded.
//!
//! Parsing borrows from the line (`RawValue`s for `id`, `params`, `result` and
//! `error`), so classifying a line costs one validating scan and no copy of its
//! payload. This module depends on serde alone so the fuzz target can include it.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// One classified line (see the [module docs](self)).
#[derive(Debug, Clone)]
pub enum Message<'a> {
    /// A request: it has an `id` and a `method`.
    Request {
        /// The raw JSON of the id (a string or a number).
        id: &'a RawValue,
        /// The method name (decoded).
        method: Cow<'a, str>,
        /// The raw JSON of `params`, if any.
        params: Option<&'a RawValue>,
    },
    /// A notification: a `method` without an `id`.
    Notification {
        /// The method name (decoded).
        method: Cow<'a, str>,
        /// The raw JSON of `params`, if any.
        params: Option<&'a RawValue>,
    },
    /// A response: an `id` and a `result` or an `error`.
    Response {
        /// The raw JSON of the id.
        id: &'a RawValue,
        /// The raw JSON of `result`, for a success.
        result: Option<&'a RawValue>,
        /// The raw JSON of `error`, for a JSON-RPC error.
        error: Option<&'a RawValue>,
    },
    /// Anything else: passed through untouched.
    Other,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<&'a RawValue>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

/// Strips the line terminator (`\n` or `\r\n`) and surrounding JSON whitespace.
pub fn trim(line: &[u8]) -> &[u8] {
    let start = line
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .unwrap_or(line.len());
    let end = line
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .map_or(start, |p| p + 1);
    &line[start..end]
}

/// Classifies one line (with or without its terminator). Never fails: what is not a
/// JSON-RPC message is [`Message::Other`].
///
/// A method name is decoded (`"tools\/call"` is `tools/call`, as the server reads
/// it); a `method` that is not a string makes the line `Other`. A request whose id
/// is `null` is read as a notification (it cannot be answered).
pub fn classify(line: &[u8]) -> Message<'_> {
    let text = trim(line);
    if text.first() != Some(&b'{') {
        return Message::Other;
    }
    let Ok(env) = serde_json::from_slice::<Envelope<'_>>(text) else {
        return Message::Other;
    };
    let id = env.id.filter(|id| is_valid_id(id));
    let method = match env.method {
        None => None,
        Some(raw) => match decode_str(raw) {
            Some(m) => Some(m),
            None => return Message::Other,
        },
    };
    match (method, id) {
        (Some(method), Some(id)) => Message::Request {
            id,
            method,
            params: env.params,
        },
        (Some(method), None) if env.id.is_none() => Message::Notification {
            method,
            params: env.params,
        },
        (None, Some(id)) if env.result.is_some() != env.error.is_some() => Message::Response {
            id,
            result: env.result,
            error: env.error,
        },
        _ => Message::Other,
    }
}

/// A JSON string, borrowed when it holds no escape.
fn decode_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

/// A JSON-RPC id the relay can route: a number, or a string that is Unicode (not
/// null, not an object or array, not a string with a lone surrogate escape such as
/// `"\udc00"`, which has no [`IdKey`]): what [`IdKey::of`] reads.
fn is_valid_id(id: &RawValue) -> bool {
    match id.get().as_bytes().first() {
        Some(b'"') => decode_str(id).is_some(),
        Some(b'-' | b'0'..=b'9') => true,
        _ => false,
    }
}

/// A JSON-RPC id in a normal form, for matching a response to its request: the
/// decoded string, or the number's text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IdKey {
    /// A string id, decoded.
    Str(String),
    /// A number id, as written.
    Num(String),
}

impl IdKey {
    /// The id's normal form; `None` when it is not a string or a number.
    pub fn of(id: &RawValue) -> Option<Self> {
        let raw = id.get();
        match raw.as_bytes().first()? {
            b'"' => serde_json::from_str::<String>(raw).ok().map(IdKey::Str),
            b'-' | b'0'..=b'9' => Some(IdKey::Num(raw.to_owned())),
            _ => None,
        }
    }
}

/// The parts of `tools/call` params the proxy reads. Everything else in them (other
/// `_meta` keys, `progressToken`, the 2026 revision's `inputResponses` and
/// `requestState`) is ignored for keys and passed through as sent.
#[derive(Debug)]
pub struct ToolCall<'a> {
    /// The tool's name.
    pub name: Cow<'a, str>,
    /// The raw JSON of `arguments` (`None` when absent or `null`).
    pub arguments: Option<&'a RawValue>,
    /// `_meta["dev.idemp/key"]`, when the agent gave a key: `Ok(key)` when it is a
    /// string, `Err(raw)` when it is something else.
    pub key: Option<Result<String, String>>,
}

/// The `_meta` key by which an agent gives its own idempotency key.
pub const KEY_META: &str = "dev.idemp/key";

#[derive(Deserialize)]
struct CallParams<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "_meta")]
    meta: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow, default, rename = "dev.idemp/key")]
    key: Option<&'a RawValue>,
}

/// Reads the params of a `tools/call`; `None` when they are not an object with a
/// string `name` (the server will refuse such a call; the proxy passes it through).
pub fn tool_call(params: &RawValue) -> Option<ToolCall<'_>> {
    let p: CallParams<'_> = serde_json::from_str(params.get()).ok()?;
    let arguments = p.arguments.filter(|a| a.get() != "null");
    let key = match p.meta {
        None => None,
        Some(meta) => {
            let meta: Meta<'_> = serde_json::from_str(meta.get()).ok()?;
            meta.key.map(|raw| {
                serde_json::from_str::<String>(raw.get()).map_err(|_| raw.get().to_owned())
            })
        }
    };
    Some(ToolCall {
        name: p.name,
        arguments,
        key,
    })
}

/// Writes `{"jsonrpc":"2.0","id":<id>,"result":<result>}` followed by a newline.
pub fn response_line(id: &str, result: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(result.len() + id.len() + 40);
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b",\"result\":");
    out.extend_from_slice(result.as_bytes());
    out.extend_from_slice(b"}\n");
    out
}

/// Writes a JSON-RPC error response followed by a newline.
pub fn error_line(id: &str, code: i64, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + id.len() + 64);
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b",\"error\":{\"code\":");
    out.extend_from_slice(code.to_string().as_bytes());
    out.extend_from_slice(b",\"message\":");
    out.extend_from_slice(serde_json::Value::from(message).to_string().as_bytes());
    out.extend_from_slice(b"}}\n");
    out
}

/// The result of a tool that failed (`isError: true`) with one text block, as the
/// raw JSON of a `result`. It says `"resultType":"complete"`, which the 2026
/// revision requires (its clients refuse a result without it) and earlier revisions
/// ignore.
pub fn tool_error_result(text: &str) -> String {
    format!(
        "{{\"content\":[{{\"type\":\"text\",\"text\":{}}}],\"isError\":true,\"resultType\":\"complete\"}}",
        serde_json::Value::from(text)
    )
}

/// What a `tools/call` result says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultKind {
    /// A final result (`resultType` absent or `"complete"`), not an error.
    Complete,
    /// A final result with `isError: true`: the tool ran and reported a failure.
    ToolError,
    /// An interim result (`resultType` other than `"complete"`, e.g. the 2026
    /// revision's `"input_required"`): the call is not finished.
    Interim,
}

#[derive(Deserialize)]
struct ResultHead<'a> {
    #[serde(borrow, default, rename = "resultType")]
    result_type: Option<Cow<'a, str>>,
    #[serde(default, rename = "isError")]
    is_error: Option<serde_json::Value>,
}

/// Reads `resultType` and `isError` of a tool result. A result that is not an
/// object counts as complete (the proxy stores what the server said).
pub fn result_kind(result: &RawValue) -> ResultKind {
    let Ok(head) = serde_json::from_str::<ResultHead<'_>>(result.get()) else {
        return ResultKind::Complete;
    };
    match head.result_type.as_deref() {
        None | Some("complete") => {}
        Some(_) => return ResultKind::Interim,
    }
    if head.is_error == Some(serde_json::Value::Bool(true)) {
        ResultKind::ToolError
    } else {
        ResultKind::Complete
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_four_kinds() {
        match classify(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x"}}"#) {
            Message::Request { id, method, params } => {
                assert_eq!(id.get(), "7");
                assert_eq!(method, "tools/call");
                assert_eq!(params.unwrap().get(), r#"{"name":"x"}"#);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\r\n"),
            Message::Notification { method, .. } if method == "notifications/initialized"
        ));
        match classify(br#"{"id":1,"method":"tools\/call"}"#) {
            Message::Request { method, .. } => assert_eq!(method, "tools/call"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(br#"{"id":null,"method":"tools/call"}"#),
            Message::Notification { .. }
        ));
        match classify(br#" {"jsonrpc":"2.0","id":"a\u0062","result":{"x":1}} "#) {
            Message::Response { id, result, error } => {
                assert_eq!(IdKey::of(id), Some(IdKey::Str("ab".into())));
                assert_eq!(result.unwrap().get(), r#"{"x":1}"#);
                assert!(error.is_none());
            }
            other => panic!("{other:?}"),
        }
        for other in [
            &b""[..],
            b"\n",
            b"not json",
            b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\"}]",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\"",
            b"{\"id\":{},\"method\":\"tools/call\"}",
            b"{\"id\":\"a\\udc00\",\"method\":\"tools/call\"}",
            b"{\"id\":\"\\ud800\",\"result\":{}}",
            b"{\"id\":1,\"result\":1,\"error\":{}}",
            b"{\"id\":1,\"method\":7}",
            b"{\"id\":1,\"id\":2,\"method\":\"tools/call\"}",
            b"42",
        ] {
            assert!(matches!(classify(other), Message::Other), "{other:?}");
        }
    }

    #[test]
    fn reads_tool_calls() {
        let p = RawValue::from_string(
            r#"{"name":"send","arguments":{"b":1,"a":2},"_meta":{"progressToken":3,"dev.idemp/key":"k1"}}"#
                .into(),
        )
        .unwrap();
        let call = tool_call(&p).unwrap();
        assert_eq!(call.name, "send");
        assert_eq!(call.arguments.unwrap().get(), r#"{"b":1,"a":2}"#);
        assert_eq!(call.key, Some(Ok("k1".into())));
        let p = RawValue::from_string(
            r#"{"name":"send","arguments":null,"_meta":{"dev.idemp/key":5}}"#.into(),
        )
        .unwrap();
        let call = tool_call(&p).unwrap();
        assert!(call.arguments.is_none());
        assert_eq!(call.key, Some(Err("5".into())));
        let p = RawValue::from_string(r#"{"arguments":{}}"#.into()).unwrap();
        assert!(tool_call(&p).is_none());
    }

    #[test]
    fn result_kinds() {
        let k = |s: &str| result_kind(&RawValue::from_string(s.into()).unwrap());
        assert_eq!(k(r#"{"content":[]}"#), ResultKind::Complete);
        assert_eq!(
            k(r#"{"content":[],"resultType":"complete"}"#),
            ResultKind::Complete
        );
        assert_eq!(k(r#"{"content":[],"isError":true}"#), ResultKind::ToolError);
        assert_eq!(
            k(r#"{"resultType":"input_required","requestState":"s"}"#),
            ResultKind::Interim
        );
        assert_eq!(k("[]"), ResultKind::Complete);
    }

    #[test]
    fn writes_responses() {
        let line = response_line("\"x\"", r#"{"a":1}"#);
        assert_eq!(
            line,
            b"{\"jsonrpc\":\"2.0\",\"id\":\"x\",\"result\":{\"a\":1}}\n"
        );
        let e = error_line("3", -32602, "bad \"key\"");
        let v: serde_json::Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(v["error"]["message"], "bad \"key\"");
        let r: serde_json::Value = serde_json::from_str(&tool_error_result("no")).unwrap();
        assert_eq!(r["isError"], true);
    }
}
