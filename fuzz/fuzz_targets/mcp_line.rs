//! The line classifier of `idemp mcp` (crates/idemp-cli/src/mcp/line.rs): never
//! panics on any bytes, and what it builds from a classified line is itself a
//! well-formed JSON-RPC response that classifies back to the same id.
#![no_main]

#[path = "../../crates/idemp-cli/src/mcp/line.rs"]
#[allow(dead_code)]
mod line;

use libfuzzer_sys::fuzz_target;
use line::{IdKey, Message};

fn check_response(bytes: &[u8], id: &IdKey) {
    match line::classify(bytes) {
        Message::Response { id: back, .. } => assert_eq!(IdKey::of(back).as_ref(), Some(id)),
        other => panic!("not a response: {other:?}: {}", String::from_utf8_lossy(bytes)),
    }
}

fuzz_target!(|data: &[u8]| {
    match line::classify(data) {
        Message::Request { id, method, params } => {
            let key = IdKey::of(id).expect("a request's id is routable");
            if method == "tools/call"
                && let Some(params) = params
                && let Some(call) = line::tool_call(params)
            {
                let _ = (call.name.len(), call.arguments, call.key);
            }
            check_response(&line::error_line(id.get(), -32602, "bad \"input\"\n"), &key);
            let result = line::tool_error_result(&String::from_utf8_lossy(data));
            check_response(&line::response_line(id.get(), &result), &key);
        }
        Message::Response { id, result, error } => {
            let key = IdKey::of(id).expect("a response's id is routable");
            assert!(result.is_some() != error.is_some());
            if let Some(result) = result {
                let _ = line::result_kind(result);
                // A replay is the stored result under a new id.
                check_response(&line::response_line("\"replay\"", result.get()), &IdKey::Str("replay".into()));
                check_response(&line::response_line(id.get(), result.get()), &key);
            }
        }
        Message::Notification { .. } | Message::Other => {}
    }
});
