//! Drop paths: `metadata.user_id`, `messages[*].cache_control`, `a.b[0].c`.
//!
//! Grammar (no whitespace allowed):
//!
//! ```text
//! path    = segment { "." key | "[" selector "]" }
//! segment = key | "[" selector "]"
//! key     = 1*( any character except "." "[" "]" "\"" )  ; "*" alone matches any key
//! selector = index | "*" | quoted                       ; "*" matches any array index
//! index   = "0" | [1-9] *DIGIT
//! quoted  = "\"" *( char | "\\\"" | "\\\\" ) "\""       ; a key with dots or brackets
//! ```

use super::error::PathError;

/// One step of a drop path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// An object member with exactly this key.
    Key(Box<[u8]>),
    /// Any object member (`.*`).
    AnyKey,
    /// The array element at this index.
    Index(u64),
    /// Any array element (`[*]`).
    AnyIndex,
}

/// A parsed drop path: the member or element it designates is removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Path {
    pub(crate) segments: Vec<Segment>,
}

impl Segment {
    pub(crate) fn matches_key(&self, key: &[u8]) -> bool {
        match self {
            Segment::Key(k) => **k == *key,
            Segment::AnyKey => true,
            _ => false,
        }
    }

    pub(crate) fn matches_index(&self, index: usize) -> bool {
        match self {
            Segment::Index(i) => *i == index as u64,
            Segment::AnyIndex => true,
            _ => false,
        }
    }
}

impl Path {
    /// Parses `text` with the grammar of this module.
    pub(crate) fn parse(text: &str) -> Result<Path, PathError> {
        let fail = |at: usize, reason: &'static str| PathError {
            path: text.to_owned(),
            column: text[..at.min(text.len())].chars().count() + 1,
            reason,
        };
        if text.is_empty() {
            return Err(fail(0, "empty path"));
        }
        let bytes = text.as_bytes();
        let mut segments = Vec::new();
        let mut i = 0;
        let mut expect_key = true;
        while i < bytes.len() {
            match bytes[i] {
                b'[' => {
                    let (segment, next) = parse_bracket(text, i, &fail)?;
                    segments.push(segment);
                    i = next;
                    expect_key = false;
                }
                b'.' if !expect_key => {
                    i += 1;
                    if i == bytes.len() {
                        return Err(fail(i, "expected a key after '.'"));
                    }
                    expect_key = true;
                }
                b'.' => return Err(fail(i, "expected a key, found '.'")),
                b']' => return Err(fail(i, "unexpected ']'")),
                b'"' => return Err(fail(i, "quoted keys go in brackets: [\"a.b\"]")),
                _ if expect_key => {
                    let end = bytes[i..]
                        .iter()
                        .position(|&b| matches!(b, b'.' | b'[' | b']' | b'"'))
                        .map_or(bytes.len(), |n| i + n);
                    let name = &text[i..end];
                    segments.push(if name == "*" {
                        Segment::AnyKey
                    } else {
                        Segment::Key(name.as_bytes().into())
                    });
                    i = end;
                    expect_key = false;
                }
                _ => return Err(fail(i, "expected '.' or '['")),
            }
        }
        Ok(Path { segments })
    }
}

fn parse_bracket(
    text: &str,
    open: usize,
    fail: &dyn Fn(usize, &'static str) -> PathError,
) -> Result<(Segment, usize), PathError> {
    let bytes = text.as_bytes();
    let i = open + 1;
    match bytes.get(i) {
        None => Err(fail(i, "unterminated '['")),
        Some(b'*') => match bytes.get(i + 1) {
            Some(b']') => Ok((Segment::AnyIndex, i + 2)),
            _ => Err(fail(i + 1, "expected ']' after '*'")),
        },
        Some(b'"') => {
            let mut key = Vec::new();
            let mut j = i + 1;
            loop {
                match bytes.get(j) {
                    None => return Err(fail(j, "unterminated quoted key")),
                    Some(b'"') => break,
                    Some(b'\\') => match bytes.get(j + 1) {
                        Some(&c @ (b'"' | b'\\')) => {
                            key.push(c);
                            j += 2;
                        }
                        _ => return Err(fail(j, "only \\\" and \\\\ escapes are allowed")),
                    },
                    Some(&c) => {
                        key.push(c);
                        j += 1;
                    }
                }
            }
            match bytes.get(j + 1) {
                Some(b']') => Ok((Segment::Key(key.into()), j + 2)),
                _ => Err(fail(j + 1, "expected ']' after the quoted key")),
            }
        }
        Some(b'0'..=b'9') => {
            let end = bytes[i..]
                .iter()
                .position(|b| !b.is_ascii_digit())
                .map_or(bytes.len(), |n| i + n);
            let digits = &text[i..end];
            if digits.len() > 1 && digits.starts_with('0') {
                return Err(fail(i, "leading zero in index"));
            }
            let index = digits
                .parse::<u64>()
                .map_err(|_| fail(i, "index too large"))?;
            match bytes.get(end) {
                Some(b']') => Ok((Segment::Index(index), end + 1)),
                _ => Err(fail(end, "expected ']' after the index")),
            }
        }
        Some(b']') => Err(fail(i, "empty brackets")),
        Some(_) => Err(fail(
            i,
            "expected an index, '*' or a quoted key in brackets",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Segment {
        Segment::Key(s.as_bytes().into())
    }

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(
            Path::parse("metadata.user_id").unwrap().segments,
            vec![key("metadata"), key("user_id")]
        );
        assert_eq!(
            Path::parse("messages[*].cache_control").unwrap().segments,
            vec![key("messages"), Segment::AnyIndex, key("cache_control")]
        );
        assert_eq!(
            Path::parse("a.b[0].c").unwrap().segments,
            vec![key("a"), key("b"), Segment::Index(0), key("c")]
        );
        assert_eq!(
            Path::parse("[12][\"x.y\\\"\"].*").unwrap().segments,
            vec![Segment::Index(12), key("x.y\""), Segment::AnyKey]
        );
        assert_eq!(
            Path::parse("é.ü").unwrap().segments,
            vec![key("é"), key("ü")]
        );
    }

    #[test]
    fn rejects_malformed_paths_with_a_position() {
        let cases = [
            ("", 1, "empty path"),
            ("a.", 3, "expected a key after '.'"),
            ("a..b", 3, "expected a key, found '.'"),
            (".a", 1, "expected a key, found '.'"),
            ("a[", 3, "unterminated '['"),
            ("a[01]", 3, "leading zero in index"),
            ("a[1", 4, "expected ']' after the index"),
            (
                "a[x]",
                3,
                "expected an index, '*' or a quoted key in brackets",
            ),
            ("a[]", 3, "empty brackets"),
            ("a]", 2, "unexpected ']'"),
            ("a[*]b", 5, "expected '.' or '['"),
            ("a[\"b", 5, "unterminated quoted key"),
            ("a[99999999999999999999999]", 3, "index too large"),
        ];
        for (text, column, reason) in cases {
            let err = Path::parse(text).unwrap_err();
            assert_eq!((err.column, err.reason), (column, reason), "{text:?}");
        }
    }
}
