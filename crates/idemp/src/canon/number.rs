//! Number formatting: Python `repr(float)` and the ECMAScript `Number.prototype.toString`
//! form that RFC 8785 requires.
//!
//! Both start from the same place: the shortest decimal digit string that round-trips
//! to the same `f64` (computed by `ryu`), and differ only in where they switch to
//! exponent notation and how they spell it.

/// The shortest round-trip decimal form of a finite, non-zero `f64`:
/// `value = 0.DIGITS × 10^point` (digits without leading or trailing zeros).
struct Shortest {
    negative: bool,
    digits: [u8; 24],
    len: usize,
    point: i32,
}

impl Shortest {
    fn of(value: f64) -> Shortest {
        debug_assert!(value.is_finite() && value != 0.0);
        let mut buffer = ryu::Buffer::new();
        let text = buffer.format_finite(value).as_bytes();
        let (negative, text) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, text),
        };
        let (mantissa, exponent) = match text.iter().position(|&b| b == b'e') {
            Some(e) => (&text[..e], parse_small_int(&text[e + 1..])),
            None => (text, 0),
        };
        let mut digits = [0u8; 24];
        let mut len = 0usize;
        let mut int_digits = 0i32;
        let mut seen_point = false;
        for &b in mantissa {
            if b == b'.' {
                seen_point = true;
                continue;
            }
            if !seen_point {
                int_digits += 1;
            }
            if len < digits.len() {
                digits[len] = b;
                len += 1;
            }
        }
        let mut point = int_digits + exponent;
        // Strip leading zeros (0.001 -> "1", point moves left).
        let lead = digits[..len].iter().take_while(|&&d| d == b'0').count();
        digits.copy_within(lead..len, 0);
        len -= lead;
        point -= lead as i32;
        // Strip trailing zeros (100.0 -> "1").
        while len > 1 && digits[len - 1] == b'0' {
            len -= 1;
        }
        Shortest {
            negative,
            digits,
            len,
            point,
        }
    }

    fn digits(&self) -> &[u8] {
        &self.digits[..self.len]
    }
}

fn parse_small_int(text: &[u8]) -> i32 {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, text),
    };
    let magnitude = digits
        .iter()
        .fold(0i32, |acc, &d| acc * 10 + i32::from(d - b'0'));
    if negative { -magnitude } else { magnitude }
}

fn push_zeros(out: &mut Vec<u8>, count: i32) {
    for _ in 0..count.max(0) {
        out.push(b'0');
    }
}

fn push_exponent(out: &mut Vec<u8>, exponent: i32, min_digits: usize) {
    out.push(if exponent < 0 { b'-' } else { b'+' });
    let magnitude = exponent.unsigned_abs();
    let text = magnitude.to_string();
    for _ in text.len()..min_digits {
        out.push(b'0');
    }
    out.extend_from_slice(text.as_bytes());
}

/// Appends Python's `repr(value)` as `json.dumps` writes it: `1e-07`, `1e+16`, `-0.0`,
/// `100.0`, `0.30000000000000004`; `NaN`, `Infinity` and `-Infinity` for the
/// non-finite values.
pub fn write_python_float(value: f64, out: &mut Vec<u8>) {
    if value.is_nan() {
        out.extend_from_slice(b"NaN");
        return;
    }
    if value.is_infinite() {
        out.extend_from_slice(if value > 0.0 {
            b"Infinity"
        } else {
            b"-Infinity"
        });
        return;
    }
    if value == 0.0 {
        out.extend_from_slice(if value.is_sign_negative() {
            b"-0.0"
        } else {
            b"0.0"
        });
        return;
    }
    let s = Shortest::of(value);
    if s.negative {
        out.push(b'-');
    }
    let digits = s.digits();
    let n = digits.len() as i32;
    let point = s.point;
    // CPython format_float_short, mode 'r': exponent when decpt <= -4 or decpt > 16.
    if point <= -4 || point > 16 {
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'e');
        push_exponent(out, point - 1, 2);
    } else if point <= 0 {
        out.extend_from_slice(b"0.");
        push_zeros(out, -point);
        out.extend_from_slice(digits);
    } else if point >= n {
        out.extend_from_slice(digits);
        push_zeros(out, point - n);
        out.extend_from_slice(b".0");
    } else {
        let split = point as usize;
        out.extend_from_slice(&digits[..split]);
        out.push(b'.');
        out.extend_from_slice(&digits[split..]);
    }
}

/// Appends the ECMAScript `Number::toString(value)` form required by RFC 8785
/// section 3.2.2.3. `value` must be finite (JCS has no NaN or Infinity); `-0` is `0`.
pub fn write_es_number(value: f64, out: &mut Vec<u8>) {
    debug_assert!(value.is_finite());
    if value == 0.0 || !value.is_finite() {
        out.push(b'0');
        return;
    }
    let s = Shortest::of(value);
    if s.negative {
        out.push(b'-');
    }
    let digits = s.digits();
    let k = digits.len() as i32;
    let n = s.point;
    if k <= n && n <= 21 {
        out.extend_from_slice(digits);
        push_zeros(out, n - k);
    } else if 0 < n && n <= 21 {
        let split = n as usize;
        out.extend_from_slice(&digits[..split]);
        out.push(b'.');
        out.extend_from_slice(&digits[split..]);
    } else if -6 < n && n <= 0 {
        out.extend_from_slice(b"0.");
        push_zeros(out, -n);
        out.extend_from_slice(digits);
    } else {
        out.push(digits[0]);
        if k > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'e');
        push_exponent(out, n - 1, 1);
    }
}

/// Appends an `i64` in decimal.
pub fn write_i64(value: i64, out: &mut Vec<u8>) {
    let mut buffer = itoa_buffer();
    out.extend_from_slice(format_u64(value.unsigned_abs(), value < 0, &mut buffer));
}

/// Appends a `u64` in decimal.
pub fn write_u64(value: u64, out: &mut Vec<u8>) {
    let mut buffer = itoa_buffer();
    out.extend_from_slice(format_u64(value, false, &mut buffer));
}

fn itoa_buffer() -> [u8; 21] {
    [0u8; 21]
}

fn format_u64(mut value: u64, negative: bool, buffer: &mut [u8; 21]) -> &[u8] {
    let mut pos = buffer.len();
    loop {
        pos -= 1;
        buffer[pos] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    if negative {
        pos -= 1;
        buffer[pos] = b'-';
    }
    &buffer[pos..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py(v: f64) -> String {
        let mut out = Vec::new();
        write_python_float(v, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn es(v: f64) -> String {
        let mut out = Vec::new();
        write_es_number(v, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn python_repr_matches_cpython() {
        let cases: &[(f64, &str)] = &[
            (1e-7, "1e-07"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (5e-324, "5e-324"),
            (1.797_693_134_862_315_7e308, "1.7976931348623157e+308"),
            (0.1 + 0.2, "0.30000000000000004"),
            (123_456_789_012_345_680_000.0, "1.2345678901234568e+20"),
            (100.0, "100.0"),
            (1.0, "1.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5, "1.5"),
            (-2.5e-300, "-2.5e-300"),
            (1e22, "1e+22"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
            (f64::NAN, "NaN"),
            (123.456, "123.456"),
            (9_007_199_254_740_993.0, "9007199254740992.0"),
        ];
        for &(v, want) in cases {
            assert_eq!(py(v), want, "repr of {v:e}");
        }
    }

    #[test]
    fn es_number_matches_rfc8785_examples() {
        let cases: &[(u64, &str)] = &[
            (0x0000000000000000, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ];
        for &(bits, want) in cases {
            assert_eq!(es(f64::from_bits(bits)), want, "bits {bits:016x}");
        }
    }

    #[test]
    fn integers() {
        let mut out = Vec::new();
        write_i64(i64::MIN, &mut out);
        out.push(b' ');
        write_u64(u64::MAX, &mut out);
        out.push(b' ');
        write_i64(0, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "-9223372036854775808 18446744073709551615 0"
        );
    }
}
