//! Word-at-a-time scanning of string bytes: eight bytes per step over the long runs of
//! plain text that make up most of a request.

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

#[inline(always)]
fn word(s: &[u8], i: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&s[i..i + 8]);
    u64::from_le_bytes(bytes)
}

/// Whether some byte of `w` is below `n` (exact for `n <= 128`).
#[inline(always)]
fn any_below(w: u64, n: u8) -> bool {
    w.wrapping_sub(LO * u64::from(n)) & !w & HI != 0
}

/// Whether some byte of `w` equals `b`.
#[inline(always)]
fn any_eq(w: u64, b: u8) -> bool {
    let x = w ^ (LO * u64::from(b));
    x.wrapping_sub(LO) & !x & HI != 0
}

/// Whether `b` ends a run of plain JSON string bytes: `"`, `\` or a control character.
#[inline(always)]
pub(crate) fn is_json_special(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// The index of the first byte at or after `from` that is `"`, `\` or a control
/// character, or `s.len()`.
#[inline]
pub(crate) fn skip_json_plain(s: &[u8], from: usize) -> usize {
    let mut i = from;
    while i + 8 <= s.len() {
        let w = word(s, i);
        if any_below(w, 0x20) || any_eq(w, b'"') || any_eq(w, b'\\') {
            break;
        }
        i += 8;
    }
    while i < s.len() && !is_json_special(s[i]) {
        i += 1;
    }
    i
}

/// Like [`skip_json_plain`], and also tells whether every byte skipped is printable
/// ASCII below DEL (so `ensure_ascii` output is the same bytes).
#[inline]
pub(crate) fn skip_json_plain_ascii(s: &[u8], from: usize) -> (usize, bool) {
    let mut i = from;
    let mut high = 0u64;
    while i + 8 <= s.len() {
        let w = word(s, i);
        if any_below(w, 0x20) || any_eq(w, b'"') || any_eq(w, b'\\') {
            break;
        }
        // A byte is >= 0x7f iff its top bit is set or its low seven bits are all ones.
        high |= (((w & !HI) + LO) | w) & HI;
        i += 8;
    }
    let mut ascii = high == 0;
    while i < s.len() && !is_json_special(s[i]) {
        ascii &= s[i] < 0x7f;
        i += 1;
    }
    (i, ascii)
}

/// The index of the first byte at or after `from` that `ensure_ascii` escapes (`"`,
/// `\`, a control character, DEL or any non-ASCII byte), or `s.len()`.
#[inline]
pub(crate) fn skip_printable_ascii(s: &[u8], from: usize) -> usize {
    let mut i = from;
    while i + 8 <= s.len() {
        let w = word(s, i);
        if w & HI != 0
            || any_below(w, 0x20)
            || any_eq(w, b'"')
            || any_eq(w, b'\\')
            || any_eq(w, 0x7f)
        {
            break;
        }
        i += 8;
    }
    while i < s.len() && !(is_json_special(s[i]) || s[i] >= 0x7f) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_special_byte_at_every_position() {
        for special in [0u8, 0x1f, b'"', b'\\', 0x7f, 0x80, 0xff] {
            for len in 0..20 {
                for at in 0..len {
                    let mut s = vec![b'a'; len];
                    s[at] = special;
                    let want_ascii = at;
                    assert_eq!(
                        skip_printable_ascii(&s, 0),
                        want_ascii,
                        "{special:x} {len} {at}"
                    );
                    let want_json = if is_json_special(special) { at } else { len };
                    assert_eq!(skip_json_plain(&s, 0), want_json, "{special:x} {len} {at}");
                }
                let plain = vec![b' '; len];
                assert_eq!(skip_json_plain(&plain, 0), len);
                assert_eq!(skip_printable_ascii(&plain, 0), len);
            }
        }
        for len in 0..20 {
            for at in 0..len {
                for b in [0x7eu8, 0x7f, 0x80, 0xc3, 0xff] {
                    let mut s = vec![b'a'; len];
                    s[at] = b;
                    assert_eq!(
                        skip_json_plain_ascii(&s, 0),
                        (len, b < 0x7f),
                        "{b:x} {len} {at}"
                    );
                }
                let mut s = vec![b'a'; len];
                s[at] = b'"';
                assert_eq!(skip_json_plain_ascii(&s, 0), (at, true));
            }
        }
        // Bytes that look close to specials but are not.
        let s = b"!#[]~ 0123456789abcdefABCDEF{}";
        assert_eq!(skip_printable_ascii(s, 0), s.len());
        assert_eq!(skip_json_plain(s, 3), s.len());
    }
}
