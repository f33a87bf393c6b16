//! The exact writer (fingerprints): the python form's strings and literals, numbers as
//! their input text.

use super::parse::{LeafWriter, Node, Str, Tape};
use super::python::Python;

/// Leaves in the exact form.
pub(crate) struct Exact;

impl LeafWriter for Exact {
    fn scalar(tape: &Tape<'_>, node: Node, out: &mut Vec<u8>) {
        match node {
            // The parser keeps every number of the exact form as its text.
            Node::Int { start, len } => {
                out.extend_from_slice(&tape.input[start as usize..(start + len) as usize]);
            }
            other => Python::scalar(tape, other, out),
        }
    }

    fn string(tape: &Tape<'_>, s: Str, out: &mut Vec<u8>) {
        Python::string(tape, s, out);
    }
}

/// Writes node `index` of a parsed tape in the exact form.
pub(crate) fn write_tape(tape: &Tape<'_>, index: u32, out: &mut Vec<u8>) {
    super::parse::write_tape::<Exact>(tape, index, out);
}

#[cfg(test)]
mod tests {
    use crate::canon::{Canonicalizer, Format};

    fn exact(s: &str) -> String {
        Canonicalizer::new(Format::Exact).canonicalize(s).unwrap()
    }

    #[test]
    fn numbers_stay_as_sent() {
        for (a, b) in [
            ("9007199254740993", "9007199254740992"),
            ("0.1", "0.10000000000000000001"),
            ("18446744073709551616", "18446744073709551615"),
            ("1.0", "1"),
            ("1e2", "100"),
            ("-0", "0"),
        ] {
            assert_ne!(exact(a), exact(b), "{a} vs {b}");
            assert_eq!(exact(a), a);
        }
    }

    #[test]
    fn keys_sorted_whitespace_dropped_strings_by_value() {
        assert_eq!(
            exact("{ \"b\" : [ 1 , 2.50 ] ,\n \"a\" : \"\\u0041\\/\" }"),
            r#"{"a":"A/","b":[1,2.50]}"#
        );
        assert_eq!(exact(r#""é""#), exact(r#""\u00e9""#));
    }

    #[test]
    fn duplicate_keys_are_kept_in_input_order() {
        assert_eq!(exact(r#"{"a":2,"b":0,"a":1}"#), r#"{"a":2,"a":1,"b":0}"#);
        assert_ne!(exact(r#"{"a":1,"a":2}"#), exact(r#"{"a":2}"#));
        assert_ne!(exact(r#"{"a":1,"a":2}"#), exact(r#"{"a":2,"a":1}"#));
    }
}
