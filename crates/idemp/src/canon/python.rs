//! The python-compat writer: what CPython's
//! `json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)` prints.
//!
//! Strings are handled as *generalized UTF-8*: UTF-8 that may also hold encoded lone
//! surrogates (`ED A0 80` for U+D800), because a Python `str` can hold them (from a
//! `"\ud800"` escape or from `json.loads(bytes)`, which decodes with `surrogatepass`).
//! Byte order of generalized UTF-8 is code-point order, which is how Python sorts keys.

use serde_json::Value;

use super::number::{write_i64, write_python_float, write_u64};
use super::parse::{LeafWriter, Node, Str, Tape};
use super::swar::skip_printable_ascii;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// For each ASCII byte: 0 if printed as is, else the letter after the backslash
/// (`u` for a `\u00XX` escape). Non-ASCII bytes are marked `u` as well.
static ESCAPE: [u8; 256] = {
    let mut table = [b'u'; 256];
    let mut b = 0x20;
    while b < 0x7f {
        table[b] = 0;
        b += 1;
    }
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table[0x08] = b'b';
    table[0x0c] = b'f';
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table
};

fn push_u_escape(unit: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&[
        b'\\',
        b'u',
        HEX[((unit >> 12) & 0xf) as usize],
        HEX[((unit >> 8) & 0xf) as usize],
        HEX[((unit >> 4) & 0xf) as usize],
        HEX[(unit & 0xf) as usize],
    ]);
}

/// Appends `s` (generalized UTF-8, already validated) as a JSON string with
/// `ensure_ascii=True` escaping, quotes included.
pub(crate) fn write_str(s: &[u8], out: &mut Vec<u8>) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let mut i = 0;
    let mut run = 0;
    loop {
        i = skip_printable_ascii(s, i);
        if i >= s.len() {
            break;
        }
        out.extend_from_slice(&s[run..i]);
        let b = s[i];
        if b < 0x80 {
            let esc = ESCAPE[b as usize];
            if esc == b'u' {
                push_u_escape(u32::from(b), out);
            } else {
                out.extend_from_slice(&[b'\\', esc]);
            }
            i += 1;
        } else {
            let (cp, len) = decode_generalized(s, i);
            if cp >= 0x10000 {
                let v = cp - 0x10000;
                push_u_escape(0xd800 | (v >> 10), out);
                push_u_escape(0xdc00 | (v & 0x3ff), out);
            } else {
                push_u_escape(cp, out);
            }
            i += len;
        }
        run = i;
    }
    out.extend_from_slice(&s[run..]);
    out.push(b'"');
}

/// Decodes one code point of generalized UTF-8 at `i` (validated input: a lead byte
/// followed by its continuation bytes). Returns the code point and its byte length.
pub(crate) fn decode_generalized(s: &[u8], i: usize) -> (u32, usize) {
    let b0 = u32::from(s[i]);
    let cont = |k: usize| u32::from(s.get(i + k).copied().unwrap_or(0x80) & 0x3f);
    if b0 < 0x80 {
        (b0, 1)
    } else if b0 < 0xe0 {
        (((b0 & 0x1f) << 6) | cont(1), 2)
    } else if b0 < 0xf0 {
        (((b0 & 0x0f) << 12) | (cont(1) << 6) | cont(2), 3)
    } else {
        (
            ((b0 & 0x07) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3),
            4,
        )
    }
}

/// Writes the python-compat canonical form of `value` (as llm-message-hash-py
/// `canonical_json(value)` with no preset) into `out`.
///
/// Object keys are sorted by code point, strings are escaped to ASCII, integers are
/// written exactly and floats as Python's `repr`. `serde_json::Value` cannot hold NaN,
/// infinities, lone surrogates or integers beyond 64 bits, so none of those appear here;
/// parse the raw text with [`Canonicalizer`](super::Canonicalizer) to keep them.
///
/// ```
/// let value = serde_json::json!({"b": [1, 1.0, 1e-7], "a": "é"});
/// let mut out = Vec::new();
/// idemp::canon::write_python_value(&value, &mut out);
/// assert_eq!(out, br#"{"a":"\u00e9","b":[1,1.0,1e-07]}"#);
/// ```
pub fn write_python_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                write_i64(i, out);
            } else if let Some(u) = n.as_u64() {
                write_u64(u, out);
            } else {
                write_python_float(n.as_f64().unwrap_or(f64::NAN), out);
            }
        }
        Value::String(s) => write_str(s.as_bytes(), out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_python_value(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            if !members.is_sorted_by(|a, b| a.0.as_bytes() <= b.0.as_bytes()) {
                members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            }
            out.push(b'{');
            for (i, (key, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(key.as_bytes(), out);
                out.push(b':');
                write_python_value(item, out);
            }
            out.push(b'}');
        }
    }
}

/// Leaves in the python-compat form.
pub(crate) struct Python;

impl LeafWriter for Python {
    fn scalar(tape: &Tape<'_>, node: Node, out: &mut Vec<u8>) {
        match node {
            Node::Null => out.extend_from_slice(b"null"),
            Node::True => out.extend_from_slice(b"true"),
            Node::False => out.extend_from_slice(b"false"),
            Node::NaN => out.extend_from_slice(b"NaN"),
            Node::Infinity => out.extend_from_slice(b"Infinity"),
            Node::NegInfinity => out.extend_from_slice(b"-Infinity"),
            Node::Int { start, len } => {
                let text = &tape.input[start as usize..(start + len) as usize];
                // `-0` is the only integer text Python prints differently (`int("-0") == 0`).
                out.extend_from_slice(if text == b"-0" { b"0" } else { text });
            }
            Node::Float(v) => write_python_float(v, out),
            // `parse::write_tape` writes these itself and never passes them here.
            Node::Str(_) | Node::Array { .. } | Node::Object { .. } => {
                unreachable!("strings and containers are not leaves of LeafWriter::scalar")
            }
        }
    }

    fn string(tape: &Tape<'_>, s: Str, out: &mut Vec<u8>) {
        if s.plain {
            tape.write_raw_quoted(s, out);
        } else {
            write_str(tape.str(s), out);
        }
    }
}

/// Writes node `index` of a parsed tape in the python-compat form.
pub(crate) fn write_tape(tape: &Tape<'_>, index: u32, out: &mut Vec<u8>) {
    super::parse::write_tape::<Python>(tape, index, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(s: &[u8]) -> String {
        let mut out = Vec::new();
        write_str(s, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_like_ensure_ascii() {
        assert_eq!(
            esc(b"a\"\\/\x08\x0c\n\r\t\x01\x1f\x7f"),
            r#""a\"\\/\b\f\n\r\t\u0001\u001f\u007f""#
        );
        assert_eq!(
            esc("é€😀\u{2028}".as_bytes()),
            r#""\u00e9\u20ac\ud83d\ude00\u2028""#
        );
        // A lone surrogate in generalized UTF-8.
        assert_eq!(esc(b"\xed\xa0\x80x"), r#""\ud800x""#);
    }

    #[test]
    fn value_keys_in_code_point_order() {
        let value = serde_json::json!({"\u{ff61}": 1, "\u{1f600}": 2, "a": 3});
        let mut out = Vec::new();
        write_python_value(&value, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":3,"\uff61":1,"\ud83d\ude00":2}"#
        );
    }
}
