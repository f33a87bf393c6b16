//! The RFC 8785 (JSON Canonicalization Scheme) writer.
//!
//! Keys sorted by UTF-16 code units (section 3.2.3), numbers in the ECMAScript form
//! (section 3.2.2.3), strings with the minimal escaping of section 3.2.2.2 and the rest
//! as raw UTF-8.

use std::cmp::Ordering;

use serde_json::Value;

use super::number::write_es_number;
use super::parse::{LeafWriter, Node, Str, Tape};
use super::python::decode_generalized;
use super::swar::skip_json_plain;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` (valid UTF-8) as an RFC 8785 string, quotes included.
pub(crate) fn write_str(s: &[u8], out: &mut Vec<u8>) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let mut run = 0;
    let mut i = 0;
    loop {
        i = skip_json_plain(s, i);
        let Some(&b) = s.get(i) else {
            break;
        };
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x09 => b't',
            0x0a => b'n',
            0x0c => b'f',
            0x0d => b'r',
            _ => b'u',
        };
        out.extend_from_slice(&s[run..i]);
        if short == b'u' {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', short]);
        }
        i += 1;
        run = i;
    }
    out.extend_from_slice(&s[run..]);
    out.push(b'"');
}

/// Compares two UTF-8 strings by their UTF-16 code units, as RFC 8785 sorts keys.
///
/// UTF-8 byte order is code-point order; the two orders differ only when the first
/// differing characters are one in U+E000..=U+FFFF and one above U+FFFF (a surrogate
/// pair, whose first unit 0xD800..=0xDBFF sorts below U+E000).
pub(crate) fn cmp_utf16(a: &[u8], b: &[u8]) -> Ordering {
    let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    if common == a.len() || common == b.len() {
        return a.len().cmp(&b.len());
    }
    // Back up to the start of the character that differs (shared prefix bytes).
    let mut start = common;
    while start > 0 && (a[start] & 0xc0) == 0x80 {
        start -= 1;
    }
    let (ca, _) = decode_generalized(a, start);
    let (cb, _) = decode_generalized(b, start);
    first_unit(ca).cmp(&first_unit(cb)).then(ca.cmp(&cb))
}

fn first_unit(cp: u32) -> u32 {
    if cp >= 0x10000 {
        0xd800 + ((cp - 0x10000) >> 10)
    } else {
        cp
    }
}

/// Writes the RFC 8785 (JCS) form of `value` into `out`.
///
/// Keys are sorted by UTF-16 code units and every number is written as the IEEE 754
/// double ECMAScript would hold (integers beyond 2^53 round as in JavaScript).
///
/// ```
/// let value = serde_json::json!({"b": [1, 1.0, 1e-7, 1e21], "a": "é"});
/// let mut out = Vec::new();
/// idemp::canon::write_jcs_value(&value, &mut out);
/// assert_eq!(String::from_utf8(out).unwrap(), r#"{"a":"é","b":[1,1,1e-7,1e+21]}"#);
/// ```
pub fn write_jcs_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            let v = if let Some(i) = n.as_i64() {
                i as f64
            } else if let Some(u) = n.as_u64() {
                u as f64
            } else {
                n.as_f64().unwrap_or(0.0)
            };
            write_es_number(v, out);
        }
        Value::String(s) => write_str(s.as_bytes(), out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_jcs_value(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| cmp_utf16(a.0.as_bytes(), b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(key.as_bytes(), out);
                out.push(b':');
                write_jcs_value(item, out);
            }
            out.push(b'}');
        }
    }
}

/// Leaves in RFC 8785 form.
pub(crate) struct Jcs;

impl LeafWriter for Jcs {
    fn scalar(tape: &Tape<'_>, node: Node, out: &mut Vec<u8>) {
        match node {
            Node::Null => out.extend_from_slice(b"null"),
            Node::True => out.extend_from_slice(b"true"),
            Node::False => out.extend_from_slice(b"false"),
            // The JCS parser rejects these and keeps integers as doubles; write what a
            // JavaScript `JSON.stringify` would, should a tape of the other format get here.
            Node::NaN | Node::Infinity | Node::NegInfinity => out.extend_from_slice(b"null"),
            Node::Int { start, len } => {
                let text = &tape.input[start as usize..(start + len) as usize];
                let v = std::str::from_utf8(text)
                    .ok()
                    .and_then(|t| t.parse::<f64>().ok())
                    .unwrap_or(0.0);
                write_es_number(v, out);
            }
            Node::Float(v) => write_es_number(v, out),
            // `parse::write_tape` writes these itself and never passes them here.
            Node::Str(_) | Node::Array { .. } | Node::Object { .. } => {
                unreachable!("strings and containers are not leaves of LeafWriter::scalar")
            }
        }
    }

    fn string(tape: &Tape<'_>, s: Str, out: &mut Vec<u8>) {
        if s.decoded {
            write_str(tape.str(s), out);
        } else {
            // A raw input slice holds no quote, backslash or control character.
            tape.write_raw_quoted(s, out);
        }
    }
}

/// Writes node `index` of a parsed tape (parsed with the JCS rules) in RFC 8785 form.
pub(crate) fn write_tape(tape: &Tape<'_>, index: u32, out: &mut Vec<u8>) {
    super::parse::write_tape::<Jcs>(tape, index, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf16_order_differs_from_code_point_order() {
        let smp = "\u{1f600}".as_bytes();
        let bmp = "\u{ff61}".as_bytes();
        assert_eq!(cmp_utf16(smp, bmp), Ordering::Less);
        assert_eq!(smp.cmp(bmp), Ordering::Greater);
        assert_eq!(cmp_utf16(b"ab", b"abc"), Ordering::Less);
        assert_eq!(
            cmp_utf16("a\u{e9}".as_bytes(), "a\u{e8}".as_bytes()),
            Ordering::Greater
        );
        assert_eq!(
            cmp_utf16("\u{10000}".as_bytes(), "\u{10001}".as_bytes()),
            Ordering::Less
        );
    }

    #[test]
    fn minimal_string_escapes() {
        let mut out = Vec::new();
        write_str("\u{7f}\u{2028}é\"\\\n\u{1}/".as_bytes(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"\u{7f}\u{2028}é\\\"\\\\\\n\\u0001/\""
        );
    }
}
