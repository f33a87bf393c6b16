//! A one-pass JSON parser into a compact tape, with the drop rules applied on the way.
//!
//! The tape holds no owned string per node: a string without escapes is a slice of the
//! input; one with escapes is decoded once into a shared buffer. Integers of the python
//! format stay as their input text (exact at any size); floats are parsed to `f64`.
//! Each object's members are sorted (and de-duplicated) when the object closes, so the
//! writers only walk the tape.
//!
//! Accepted syntax is CPython's `json.loads` (strict mode): `NaN`, `Infinity`,
//! `-Infinity`, JSON whitespace only, no control characters inside strings, UTF-8 input
//! (with encoded lone surrogates allowed in the python format, as `json.loads(bytes)`
//! decodes with `surrogatepass`) and an optional UTF-8 byte order mark.

use std::cell::Cell;
use std::cmp::Ordering;
use std::ops::Range;

use super::error::{CanonError, Position};
use super::jcs::cmp_utf16;
use super::path::Path;
use super::swar::{skip_json_plain, skip_json_plain_ascii};

/// The deepest nesting of objects and arrays accepted.
///
/// CPython has no fixed limit: `json.loads` followed by `hash_request` raises
/// `RecursionError` at a depth that depends on the caller's stack (about 495 nested
/// arrays or 990 nested objects from an empty stack, with the default recursion limit
/// of 1000 on Python 3.11). 256 stays below that from any reasonable call site.
pub const MAX_DEPTH: usize = 256;

/// The most digits an integer may have (CPython's default
/// `sys.get_int_max_str_digits()`; `json.loads` raises `ValueError` beyond it).
pub const MAX_INT_DIGITS: usize = 4300;

/// A string of the tape: a slice of the input, or of the decoded-strings buffer when
/// the input spelled it with escapes. Its bytes are generalized UTF-8 (python format:
/// lone surrogates possible) or UTF-8 (JCS).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Str {
    start: u32,
    len: u32,
    /// Held in the decoded-strings buffer (the input spelled it with escapes).
    pub(crate) decoded: bool,
    /// A slice of the input made only of printable ASCII below DEL: written as is by
    /// both writers.
    pub(crate) plain: bool,
}

/// One value of the tape.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Node {
    Null,
    True,
    False,
    NaN,
    Infinity,
    NegInfinity,
    /// An integer, as its input text (python format only).
    Int {
        start: u32,
        len: u32,
    },
    Float(f64),
    Str(Str),
    /// `len` element node indexes at `items[start..]`.
    Array {
        start: u32,
        len: u32,
    },
    /// `len` members at `members[start..]`, sorted, without duplicate keys.
    Object {
        start: u32,
        len: u32,
    },
}

/// The value index of a member that is dropped but kept for duplicate detection (JCS).
const DROPPED: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Member {
    pub(crate) key: Str,
    /// The first 8 bytes of the key, big-endian, zero-padded: most comparisons end here.
    prefix: u64,
    pub(crate) value: u32,
    /// Byte offset of the key in the input (for error messages).
    at: u32,
}

/// The parsed input.
pub(crate) struct Tape<'a> {
    pub(crate) input: &'a [u8],
    pub(crate) nodes: Vec<Node>,
    pub(crate) decoded: Vec<u8>,
    pub(crate) members: Vec<Member>,
    pub(crate) items: Vec<u32>,
    pub(crate) root: u32,
    /// The rest of the reusable buffers (see [`Tape::recycle`]).
    pub(crate) scratch: Box<Scratch>,
}

impl Tape<'_> {
    pub(crate) fn str(&self, s: Str) -> &[u8] {
        str_bytes(self.input, &self.decoded, s)
    }

    /// Appends a raw (not decoded) string between quotes. Short strings are copied as
    /// a fixed 16-byte block from the input and cut back, which avoids a `memcpy` call
    /// per string.
    pub(crate) fn write_raw_quoted(&self, s: Str, out: &mut Vec<u8>) {
        debug_assert!(!s.decoded);
        let (start, len) = (s.start as usize, s.len as usize);
        out.reserve(len + 18);
        out.push(b'"');
        let at = out.len();
        match self.input.get(start..).and_then(<[u8]>::first_chunk::<16>) {
            Some(block) if len <= 16 => {
                out.extend_from_slice(block);
                out.truncate(at + len);
            }
            _ => out.extend_from_slice(&self.input[start..start + len]),
        }
        out.push(b'"');
    }

    /// Gives the buffers back to this thread's pool for the next call (unless a huge
    /// input made them too big to keep around).
    pub(crate) fn recycle(self) {
        let Tape {
            mut nodes,
            mut decoded,
            mut members,
            mut items,
            mut scratch,
            ..
        } = self;
        if nodes.capacity() > KEEP_NODES
            || decoded.capacity() > KEEP_BYTES
            || scratch.out.capacity() > KEEP_BYTES
        {
            return;
        }
        nodes.clear();
        decoded.clear();
        members.clear();
        items.clear();
        scratch.nodes = nodes;
        scratch.decoded = decoded;
        scratch.members = members;
        scratch.items = items;
        scratch.out.clear();
        SCRATCH.with(|cell| cell.set(Some(scratch)));
    }
}

/// Buffers reused from call to call on one thread, so that a steady stream of requests
/// allocates nothing per call.
#[derive(Default)]
pub(crate) struct Scratch {
    nodes: Vec<Node>,
    decoded: Vec<u8>,
    members: Vec<Member>,
    items: Vec<u32>,
    member_stack: Vec<Member>,
    item_stack: Vec<u32>,
    states: Vec<(u32, u32)>,
    /// An output buffer for callers that only need the hash.
    pub(crate) out: Vec<u8>,
}

const KEEP_NODES: usize = 1 << 16;
const KEEP_BYTES: usize = 1 << 20;

thread_local! {
    static SCRATCH: Cell<Option<Box<Scratch>>> = const { Cell::new(None) };
}

fn str_bytes<'t>(input: &'t [u8], decoded: &'t [u8], s: Str) -> &'t [u8] {
    let range = s.start as usize..(s.start + s.len) as usize;
    if s.decoded {
        &decoded[range]
    } else {
        &input[range]
    }
}

/// What to parse and what to drop.
pub(crate) struct Rules<'c> {
    pub(crate) jcs: bool,
    /// The exact form: every number stays as its input text, duplicate keys are kept.
    pub(crate) exact: bool,
    pub(crate) drop_keys: &'c [Box<[u8]>],
    /// Bit `min(len, 63)` is set for the length of every drop key: a quick reject.
    pub(crate) drop_key_lengths: u64,
    pub(crate) paths: &'c [Path],
}

/// The bit of [`Rules::drop_key_lengths`] for a key of `len` bytes.
pub(crate) fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

/// Parses `input` under `rules`.
pub(crate) fn parse<'a>(input: &'a [u8], rules: &Rules<'_>) -> Result<Tape<'a>, CanonError> {
    if u32::try_from(input.len()).is_err() {
        return Err(CanonError::InputTooLarge { len: input.len() });
    }
    validate_utf8(input, !rules.jcs)?;
    let mut scratch = SCRATCH.with(Cell::take).unwrap_or_default();
    let estimate = input.len() / 8 + 4;
    let mut nodes = std::mem::take(&mut scratch.nodes);
    nodes.reserve(estimate);
    let mut parser = Parser {
        input,
        pos: 0,
        rules,
        member_stack: std::mem::take(&mut scratch.member_stack),
        item_stack: std::mem::take(&mut scratch.item_stack),
        states: std::mem::take(&mut scratch.states),
        tape: Tape {
            input,
            nodes,
            decoded: std::mem::take(&mut scratch.decoded),
            members: std::mem::take(&mut scratch.members),
            items: std::mem::take(&mut scratch.items),
            root: 0,
            scratch,
        },
    };
    if input.starts_with(b"\xef\xbb\xbf") {
        parser.pos = 3;
    }
    let root_states = 0..rules.paths.len();
    parser
        .states
        .extend((0..rules.paths.len()).map(|p| (p as u32, 0u32)));
    parser.skip_ws();
    let root = parser.parse_value(0, root_states)?;
    parser.skip_ws();
    if parser.pos != input.len() {
        return Err(parser.syntax("Extra data", parser.pos));
    }
    let Parser {
        mut tape,
        mut member_stack,
        mut item_stack,
        mut states,
        ..
    } = parser;
    member_stack.clear();
    item_stack.clear();
    states.clear();
    tape.scratch.member_stack = member_stack;
    tape.scratch.item_stack = item_stack;
    tape.scratch.states = states;
    tape.root = root;
    Ok(tape)
}

/// Checks the whole input up front (as `json.loads(bytes)` decodes it first), so the
/// string scanner only looks for quotes, backslashes and control characters.
fn validate_utf8(input: &[u8], surrogatepass: bool) -> Result<(), CanonError> {
    let from = match std::str::from_utf8(input) {
        Ok(_) => return Ok(()),
        Err(e) => e.valid_up_to(),
    };
    let bad = |at: usize| CanonError::InvalidUtf8 {
        at: Position::locate(input, at),
    };
    if !surrogatepass {
        return Err(bad(from));
    }
    let mut i = from;
    while i < input.len() {
        let b0 = input[i];
        if b0 < 0x80 {
            i += 1;
            continue;
        }
        let (extra, min) = match b0 {
            0xc2..=0xdf => (1, 0x80),
            0xe0..=0xef => (2, 0x800),
            0xf0..=0xf4 => (3, 0x10000),
            _ => return Err(bad(i)),
        };
        let mut cp = u32::from(b0) & (0x3f >> extra);
        for k in 1..=extra {
            match input.get(i + k) {
                Some(&b) if b & 0xc0 == 0x80 => cp = (cp << 6) | u32::from(b & 0x3f),
                _ => return Err(bad(i)),
            }
        }
        if cp < min || cp > 0x10ffff {
            return Err(bad(i));
        }
        i += extra + 1;
    }
    Ok(())
}

struct Parser<'a, 'c> {
    input: &'a [u8],
    pos: usize,
    rules: &'c Rules<'c>,
    tape: Tape<'a>,
    member_stack: Vec<Member>,
    item_stack: Vec<u32>,
    /// Live drop-path states `(path index, next segment)`; each container works on a
    /// range of it.
    states: Vec<(u32, u32)>,
}

impl<'a> Parser<'a, '_> {
    fn syntax(&self, reason: &'static str, at: usize) -> CanonError {
        CanonError::Syntax {
            reason,
            at: Position::locate(self.input, at),
        }
    }

    fn not_jcs(&self, reason: &'static str, at: usize) -> CanonError {
        CanonError::NotJcs {
            reason,
            at: Position::locate(self.input, at),
        }
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.input.get(self.pos) {
            self.pos += 1;
        }
    }

    fn push(&mut self, node: Node) -> u32 {
        self.tape.nodes.push(node);
        (self.tape.nodes.len() - 1) as u32
    }

    fn parse_value(&mut self, depth: usize, states: Range<usize>) -> Result<u32, CanonError> {
        let start = self.pos;
        match self.input.get(start) {
            Some(b'{') => self.parse_object(depth + 1, states),
            Some(b'[') => self.parse_array(depth + 1, states),
            Some(b'"') => {
                let s = self.parse_string()?;
                Ok(self.push(Node::Str(s)))
            }
            Some(b'-' | b'0'..=b'9') => self.parse_number(),
            Some(b'n') => self.literal(b"null", Node::Null),
            Some(b't') => self.literal(b"true", Node::True),
            Some(b'f') => self.literal(b"false", Node::False),
            Some(b'N') => self.literal(b"NaN", Node::NaN),
            Some(b'I') => self.literal(b"Infinity", Node::Infinity),
            _ => Err(self.syntax("Expecting value", start)),
        }
    }

    fn literal(&mut self, word: &'static [u8], node: Node) -> Result<u32, CanonError> {
        if !self.input[self.pos..].starts_with(word) {
            return Err(self.syntax("Expecting value", self.pos));
        }
        if self.rules.jcs && matches!(node, Node::NaN | Node::Infinity) {
            return Err(self.not_jcs("NaN and Infinity have no JSON form", self.pos));
        }
        self.pos += word.len();
        Ok(self.push(node))
    }

    fn parse_number(&mut self) -> Result<u32, CanonError> {
        let input = self.input;
        let start = self.pos;
        let mut i = start;
        let negative = input[i] == b'-';
        if negative {
            i += 1;
            if input[i..].starts_with(b"Infinity") {
                if self.rules.jcs {
                    return Err(self.not_jcs("NaN and Infinity have no JSON form", start));
                }
                self.pos = i + 8;
                return Ok(self.push(Node::NegInfinity));
            }
        }
        match input.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                i += 1;
                while let Some(b'0'..=b'9') = input.get(i) {
                    i += 1;
                }
            }
            _ => return Err(self.syntax("Expecting value", start)),
        }
        let int_end = i;
        let mut is_float = false;
        if input.get(i) == Some(&b'.') && matches!(input.get(i + 1), Some(b'0'..=b'9')) {
            i += 2;
            while let Some(b'0'..=b'9') = input.get(i) {
                i += 1;
            }
            is_float = true;
        }
        if let Some(b'e' | b'E') = input.get(i) {
            let mut j = i + 1;
            if let Some(b'+' | b'-') = input.get(j) {
                j += 1;
            }
            if let Some(b'0'..=b'9') = input.get(j) {
                while let Some(b'0'..=b'9') = input.get(j) {
                    j += 1;
                }
                i = j;
                is_float = true;
            }
            // Otherwise the number ends before the `e`, as in CPython's scanner.
        }
        self.pos = i;
        if self.rules.exact {
            // Numbers exactly as sent, floats too: no conversion through a double.
            return Ok(self.push(Node::Int {
                start: start as u32,
                len: (i - start) as u32,
            }));
        }
        if !is_float && !self.rules.jcs {
            let digits = int_end - start - usize::from(negative);
            if digits > MAX_INT_DIGITS {
                return Err(CanonError::IntegerTooLong {
                    digits,
                    limit: MAX_INT_DIGITS,
                    at: Position::locate(input, start),
                });
            }
            return Ok(self.push(Node::Int {
                start: start as u32,
                len: (i - start) as u32,
            }));
        }
        let text = std::str::from_utf8(&input[start..i])
            .map_err(|_| self.syntax("Expecting value", start))?;
        let value: f64 = text
            .parse()
            .map_err(|_| self.syntax("Expecting value", start))?;
        if self.rules.jcs && !value.is_finite() {
            return Err(self.not_jcs("number out of the range of a double", start));
        }
        Ok(self.push(Node::Float(value)))
    }

    /// Parses the string at `self.pos` (an opening quote).
    fn parse_string(&mut self) -> Result<Str, CanonError> {
        let input = self.input;
        let open = self.pos;
        let start = open + 1;
        let (i, plain) = skip_json_plain_ascii(input, start);
        match input.get(i) {
            None => Err(self.syntax("Unterminated string starting at", open)),
            Some(b'"') => {
                self.pos = i + 1;
                Ok(Str {
                    start: start as u32,
                    len: (i - start) as u32,
                    decoded: false,
                    plain,
                })
            }
            Some(b'\\') => self.parse_escaped_string(open, i),
            Some(_) => Err(self.syntax("Invalid control character at", i)),
        }
    }

    /// Continues [`parse_string`](Self::parse_string) from the first backslash at `i`,
    /// decoding into the shared buffer.
    fn parse_escaped_string(&mut self, open: usize, mut i: usize) -> Result<Str, CanonError> {
        let input = self.input;
        let out_start = self.tape.decoded.len();
        self.tape.decoded.extend_from_slice(&input[open + 1..i]);
        loop {
            // input[i] is a backslash.
            let Some(&escape) = input.get(i + 1) else {
                return Err(self.syntax("Unterminated string starting at", open));
            };
            let byte = match escape {
                b'"' => b'"',
                b'\\' => b'\\',
                b'/' => b'/',
                b'b' => 0x08,
                b'f' => 0x0c,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'u' => {
                    let mut cp = self.hex4(i + 2, i + 1)?;
                    let mut len = 6;
                    if (0xd800..0xdc00).contains(&cp) && input[i + 6..].starts_with(b"\\u") {
                        let low = self.hex4(i + 8, i + 7)?;
                        if (0xdc00..0xe000).contains(&low) {
                            cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
                            len = 12;
                        }
                    }
                    if self.rules.jcs && (0xd800..0xe000).contains(&cp) {
                        return Err(self.not_jcs("lone surrogate", i));
                    }
                    push_generalized_utf8(cp, &mut self.tape.decoded);
                    i += len;
                    0
                }
                _ => return Err(self.syntax("Invalid \\escape", i)),
            };
            if escape != b'u' {
                self.tape.decoded.push(byte);
                i += 2;
            }
            let run = i;
            i = skip_json_plain(input, i);
            self.tape.decoded.extend_from_slice(&input[run..i]);
            match input.get(i) {
                None => return Err(self.syntax("Unterminated string starting at", open)),
                Some(b'"') => {
                    self.pos = i + 1;
                    return Ok(Str {
                        start: out_start as u32,
                        len: (self.tape.decoded.len() - out_start) as u32,
                        decoded: true,
                        plain: false,
                    });
                }
                Some(b'\\') => {}
                Some(_) => return Err(self.syntax("Invalid control character at", i)),
            }
        }
    }

    fn hex4(&self, at: usize, report: usize) -> Result<u32, CanonError> {
        let digits = self
            .input
            .get(at..at + 4)
            .ok_or_else(|| self.syntax("Invalid \\uXXXX escape", report))?;
        let mut value = 0u32;
        for &d in digits {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(self.syntax("Invalid \\uXXXX escape", report)),
            };
            value = (value << 4) | u32::from(v);
        }
        Ok(value)
    }

    fn parse_object(&mut self, depth: usize, states: Range<usize>) -> Result<u32, CanonError> {
        let open = self.pos;
        if depth > MAX_DEPTH {
            return Err(CanonError::TooDeep {
                limit: MAX_DEPTH,
                at: Position::locate(self.input, open),
            });
        }
        self.pos += 1;
        let base = self.member_stack.len();
        self.skip_ws();
        if self.input.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Ok(self.push(Node::Object { start: 0, len: 0 }));
        }
        loop {
            if self.input.get(self.pos) != Some(&b'"') {
                return Err(self.syntax(
                    "Expecting property name enclosed in double quotes",
                    self.pos,
                ));
            }
            let key_at = self.pos;
            let saved_decoded = self.tape.decoded.len();
            let key = self.parse_string()?;
            self.skip_ws();
            if self.input.get(self.pos) != Some(&b':') {
                return Err(self.syntax("Expecting ':' delimiter", self.pos));
            }
            self.pos += 1;
            self.skip_ws();

            let key_bytes = str_bytes(self.input, &self.tape.decoded, key);
            let prefix = key_prefix(key_bytes);
            let mut drop = self.rules.drop_key_lengths & length_bit(key_bytes.len()) != 0
                && self.rules.drop_keys.iter().any(|k| **k == *key_bytes);
            let child_lo = self.states.len();
            if !drop && !states.is_empty() {
                for k in states.clone() {
                    let (p, s) = self.states[k];
                    let segments = &self.rules.paths[p as usize].segments;
                    if segments[s as usize].matches_key(key_bytes) {
                        if s as usize + 1 == segments.len() {
                            drop = true;
                        } else {
                            self.states.push((p, s + 1));
                        }
                    }
                }
            }
            if drop {
                self.states.truncate(child_lo);
                self.parse_dropped(depth)?;
                if self.rules.jcs {
                    // Kept until the object closes, to reject a duplicate of it: an
                    // input with duplicate keys is not I-JSON, dropped or not.
                    self.member_stack.push(Member {
                        key,
                        prefix,
                        value: DROPPED,
                        at: key_at as u32,
                    });
                } else {
                    self.tape.decoded.truncate(saved_decoded);
                }
            } else {
                let child_states = child_lo..self.states.len();
                let value = self.parse_value(depth, child_states)?;
                self.states.truncate(child_lo);
                self.member_stack.push(Member {
                    key,
                    prefix,
                    value,
                    at: key_at as u32,
                });
            }

            self.skip_ws();
            match self.input.get(self.pos) {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(self.syntax("Expecting ',' delimiter", self.pos)),
            }
        }
        self.finish_object(base)
    }

    /// Parses (validates) a value that is dropped, then forgets what it added.
    fn parse_dropped(&mut self, depth: usize) -> Result<(), CanonError> {
        let (nodes, members, items, decoded) = (
            self.tape.nodes.len(),
            self.tape.members.len(),
            self.tape.items.len(),
            self.tape.decoded.len(),
        );
        let empty = self.states.len()..self.states.len();
        self.parse_value(depth, empty)?;
        self.tape.nodes.truncate(nodes);
        self.tape.members.truncate(members);
        self.tape.items.truncate(items);
        self.tape.decoded.truncate(decoded);
        Ok(())
    }

    /// Sorts the members of the object being closed (`member_stack[base..]`), removes
    /// duplicate keys (python: the last wins; JCS: an error) and moves them to the tape.
    fn finish_object(&mut self, base: usize) -> Result<u32, CanonError> {
        let (input, decoded) = (self.input, &self.tape.decoded);
        let members = &mut self.member_stack[base..];
        let key = |m: &Member| str_bytes(input, decoded, m.key);
        let jcs = self.rules.jcs;
        let cmp = |a: &Member, b: &Member| {
            // Byte order is code-point order; UTF-16 order agrees with it on ASCII.
            if a.prefix != b.prefix && (!jcs || (a.prefix | b.prefix) & ASCII_MASK == 0) {
                a.prefix.cmp(&b.prefix)
            } else if jcs {
                cmp_utf16(key(a), key(b))
            } else {
                key(a).cmp(key(b))
            }
        };
        let strictly_sorted = members
            .windows(2)
            .all(|w| cmp(&w[0], &w[1]) == Ordering::Less);
        // The exact form keeps duplicate keys (in input order): servers disagree on
        // which one wins, so two bodies that differ only there must not match.
        let dedup = !self.rules.exact;
        let mut len = members.len();
        if !strictly_sorted {
            // The tie-break keeps equal keys in input order, so the last of a run is
            // the one a Python dict keeps.
            let order = |a: &Member, b: &Member| cmp(a, b).then(a.at.cmp(&b.at));
            if members.len() <= 16 {
                // Request objects are small and often nearly sorted.
                for i in 1..members.len() {
                    let mut j = i;
                    while j > 0 && order(&members[j], &members[j - 1]) == Ordering::Less {
                        members.swap(j, j - 1);
                        j -= 1;
                    }
                }
            } else {
                members.sort_unstable_by(order);
            }
        }
        // Duplicates are only possible when the keys were not strictly sorted; dropped
        // members (JCS only) are removed here.
        if (!strictly_sorted && dedup) || self.rules.jcs {
            let mut kept = 0;
            for i in 0..members.len() {
                if i + 1 < members.len() && key(&members[i]) == key(&members[i + 1]) {
                    if self.rules.jcs {
                        let dup = members[i + 1];
                        return Err(CanonError::DuplicateKey {
                            key: String::from_utf8_lossy(key(&dup)).into_owned(),
                            at: Position::locate(input, dup.at as usize),
                        });
                    }
                    continue;
                }
                if members[i].value != DROPPED {
                    members[kept] = members[i];
                    kept += 1;
                }
            }
            len = kept;
        }
        let start = self.tape.members.len() as u32;
        self.tape
            .members
            .extend_from_slice(&self.member_stack[base..base + len]);
        self.member_stack.truncate(base);
        Ok(self.push(Node::Object {
            start,
            len: len as u32,
        }))
    }

    fn parse_array(&mut self, depth: usize, states: Range<usize>) -> Result<u32, CanonError> {
        let open = self.pos;
        if depth > MAX_DEPTH {
            return Err(CanonError::TooDeep {
                limit: MAX_DEPTH,
                at: Position::locate(self.input, open),
            });
        }
        self.pos += 1;
        let base = self.item_stack.len();
        self.skip_ws();
        if self.input.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Ok(self.push(Node::Array { start: 0, len: 0 }));
        }
        let mut index = 0usize;
        loop {
            let mut drop = false;
            let child_lo = self.states.len();
            for k in states.clone() {
                let (p, s) = self.states[k];
                let segments = &self.rules.paths[p as usize].segments;
                if segments[s as usize].matches_index(index) {
                    if s as usize + 1 == segments.len() {
                        drop = true;
                    } else {
                        self.states.push((p, s + 1));
                    }
                }
            }
            if drop {
                self.states.truncate(child_lo);
                self.parse_dropped(depth)?;
            } else {
                let child_states = child_lo..self.states.len();
                let value = self.parse_value(depth, child_states)?;
                self.states.truncate(child_lo);
                self.item_stack.push(value);
            }
            index += 1;
            self.skip_ws();
            match self.input.get(self.pos) {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b']') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(self.syntax("Expecting ',' delimiter", self.pos)),
            }
        }
        let start = self.tape.items.len() as u32;
        let len = (self.item_stack.len() - base) as u32;
        self.tape.items.extend_from_slice(&self.item_stack[base..]);
        self.item_stack.truncate(base);
        Ok(self.push(Node::Array { start, len }))
    }
}

/// The high bit of every byte of a key prefix: set where a byte is not ASCII.
const ASCII_MASK: u64 = 0x8080_8080_8080_8080;

/// The first 8 bytes of `key`, big-endian and zero-padded: comparing two prefixes
/// orders the keys as their bytes do, unless the prefixes are equal.
fn key_prefix(key: &[u8]) -> u64 {
    match key.first_chunk::<8>() {
        Some(first) => u64::from_be_bytes(*first),
        None => key
            .iter()
            .enumerate()
            .fold(0, |acc, (i, &b)| acc | u64::from(b) << (56 - 8 * i)),
    }
}

/// Appends `cp` as UTF-8, surrogate code points included (3 bytes, `ED A0 80`…).
fn push_generalized_utf8(cp: u32, out: &mut Vec<u8>) {
    if cp < 0x80 {
        out.push(cp as u8);
    } else if cp < 0x800 {
        out.extend_from_slice(&[0xc0 | (cp >> 6) as u8, 0x80 | (cp & 0x3f) as u8]);
    } else if cp < 0x10000 {
        out.extend_from_slice(&[
            0xe0 | (cp >> 12) as u8,
            0x80 | ((cp >> 6) & 0x3f) as u8,
            0x80 | (cp & 0x3f) as u8,
        ]);
    } else {
        out.extend_from_slice(&[
            0xf0 | (cp >> 18) as u8,
            0x80 | ((cp >> 12) & 0x3f) as u8,
            0x80 | ((cp >> 6) & 0x3f) as u8,
            0x80 | (cp & 0x3f) as u8,
        ]);
    }
}

/// How one output format writes the leaves of a tape (scalars and strings). Arrays and
/// objects are written the same way in every format, by [`write_tape`].
pub(crate) trait LeafWriter {
    /// Writes a node that is neither an array, an object nor a string.
    fn scalar(tape: &Tape<'_>, node: Node, out: &mut Vec<u8>);
    /// Writes a string node, quoted and escaped.
    fn string(tape: &Tape<'_>, s: Str, out: &mut Vec<u8>);
}

/// Writes node `index` of a tape: containers here, leaves by the format `W`.
pub(crate) fn write_tape<W: LeafWriter>(tape: &Tape<'_>, index: u32, out: &mut Vec<u8>) {
    match tape.nodes[index as usize] {
        Node::Str(s) => W::string(tape, s, out),
        Node::Array { start, len } => {
            out.push(b'[');
            let items = &tape.items[start as usize..(start + len) as usize];
            for (i, &item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_tape::<W>(tape, item, out);
            }
            out.push(b']');
        }
        Node::Object { start, len } => {
            out.push(b'{');
            let members = &tape.members[start as usize..(start + len) as usize];
            for (i, member) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                W::string(tape, member.key, out);
                out.push(b':');
                write_tape::<W>(tape, member.value, out);
            }
            out.push(b'}');
        }
        leaf => W::scalar(tape, leaf, out),
    }
}
