//! Python objects to JSON text and back.
//!
//! Writing walks `dict` / `list` / `tuple` / `str` / `int` / `float` / `bool` / `None`
//! (and their subclasses, as `json.dumps` does) straight into a byte buffer; anything
//! else is a `TypeError` that names where in the value it was found. This is only
//! *serialization*: canonical forms and hashes come from `idemp::canon` afterwards.
//! Reading uses Python's own `json.loads`, so integers of any size and every float
//! come back exactly as Python would parse them.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

/// Deeper values are refused (it also stops circular references). Equal to
/// `idemp::canon::MAX_DEPTH`, so whatever is written here can be canonicalized.
const MAX_DEPTH: usize = idemp::canon::MAX_DEPTH;

/// How dict keys that are not `str` become JSON strings.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// As `json.dumps`: `int`, `float`, `bool` and `None` keys are converted
    /// (`True` → `"true"`), anything else is a `TypeError`.
    Json,
    /// As llm-message-hash-py: `str(key)` for every non-`str` key (`True` → `"True"`).
    Str,
}

/// What the writer accepts.
#[derive(Clone, Copy)]
pub struct Rules {
    pub keys: Keys,
    /// Write NaN and ±Infinity as Python does (`NaN`, `Infinity`); when false they
    /// are an error (strict JSON cannot hold them).
    pub allow_nan: bool,
}

/// Strict JSON, `json.dumps` key rules: for stored results and derived keys.
pub const STRICT: Rules = Rules {
    keys: Keys::Json,
    allow_nan: false,
};

/// What `json.dumps(obj, allow_nan=True)` accepts, with llm-message-hash-py's keys:
/// the input of the python canonical form.
pub const CANON: Rules = Rules {
    keys: Keys::Str,
    allow_nan: true,
};

/// A value that cannot be written, with the path to it (built while unwinding).
struct Unwritable {
    path: Vec<String>,
    kind: ErrorKind,
}

enum ErrorKind {
    Type(String),
    Value(String),
    Python(PyErr),
}

/// Writes `obj` as JSON text. `what` names the value in errors (`"result"`,
/// `"argument 'order'"`, `"args"`).
pub fn to_json(obj: &Bound<'_, PyAny>, rules: Rules, what: &str) -> PyResult<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    write_json(obj, rules, what, &mut out)?;
    Ok(out)
}

/// [`to_json`] appending to `out` (left as it was on error... up to the error point:
/// callers discard it).
pub fn write_json(
    obj: &Bound<'_, PyAny>,
    rules: Rules,
    what: &str,
    out: &mut Vec<u8>,
) -> PyResult<()> {
    match write(obj, rules, 0, out) {
        Ok(()) => Ok(()),
        Err(e) => {
            let mut at = String::from(what);
            let n = e.path.len();
            for (i, seg) in e.path.iter().rev().enumerate() {
                if n > 12 && (6..n - 4).contains(&i) {
                    if i == 6 {
                        at.push('…');
                    }
                    continue;
                }
                at.push_str(seg);
            }
            Err(match e.kind {
                ErrorKind::Type(msg) => PyTypeError::new_err(format!("{at}: {msg}")),
                ErrorKind::Value(msg) => PyValueError::new_err(format!("{at}: {msg}")),
                ErrorKind::Python(err) => err,
            })
        }
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .qualname()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_owned())
}

fn not_json(obj: &Bound<'_, PyAny>) -> Unwritable {
    Unwritable {
        path: Vec::new(),
        kind: ErrorKind::Type(format!(
            "object of type {} is not JSON serializable (JSON holds dict, list, tuple, str, int, float, bool and None; convert it first, e.g. to a dict or str)",
            type_name(obj)
        )),
    }
}

fn py_err(e: PyErr) -> Unwritable {
    Unwritable {
        path: Vec::new(),
        kind: ErrorKind::Python(e),
    }
}

fn write(
    obj: &Bound<'_, PyAny>,
    rules: Rules,
    depth: usize,
    out: &mut Vec<u8>,
) -> Result<(), Unwritable> {
    if let Ok(s) = obj.cast::<PyString>() {
        write_str(s, out).map_err(py_err)?;
        return Ok(());
    }
    if obj.is_none() {
        out.extend_from_slice(b"null");
        return Ok(());
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        out.extend_from_slice(if b.is_true() { b"true" } else { b"false" });
        return Ok(());
    }
    if obj.is_instance_of::<PyInt>() {
        write_int(obj, out).map_err(py_err)?;
        return Ok(());
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return write_float(f.value(), rules, out);
    }
    if depth >= MAX_DEPTH {
        return Err(Unwritable {
            path: Vec::new(),
            kind: ErrorKind::Value(format!(
                "nested deeper than {MAX_DEPTH} levels (or a circular reference)"
            )),
        });
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        out.push(b'{');
        let mut first = true;
        for (k, v) in d.iter() {
            if !first {
                out.push(b',');
            }
            first = false;
            write_key(&k, rules, out)?;
            out.push(b':');
            write(&v, rules, depth + 1, out).map_err(|mut e| {
                e.path.push(format!("[{}]", key_repr(&k)));
                e
            })?;
        }
        out.push(b'}');
        return Ok(());
    }
    if let Ok(l) = obj.cast::<PyList>() {
        out.push(b'[');
        // Index access so a list changed by another thread mid-walk cannot panic.
        let mut i = 0;
        while let Ok(item) = l.get_item(i) {
            if i > 0 {
                out.push(b',');
            }
            write(&item, rules, depth + 1, out).map_err(|mut e| {
                e.path.push(format!("[{i}]"));
                e
            })?;
            i += 1;
        }
        out.push(b']');
        return Ok(());
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        out.push(b'[');
        for (i, item) in t.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write(&item, rules, depth + 1, out).map_err(|mut e| {
                e.path.push(format!("[{i}]"));
                e
            })?;
        }
        out.push(b']');
        return Ok(());
    }
    Err(not_json(obj))
}

fn key_repr(k: &Bound<'_, PyAny>) -> String {
    k.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "?".to_owned())
}

fn write_key(k: &Bound<'_, PyAny>, rules: Rules, out: &mut Vec<u8>) -> Result<(), Unwritable> {
    if let Ok(s) = k.cast::<PyString>() {
        return write_str(s, out).map_err(py_err);
    }
    match rules.keys {
        Keys::Str => {
            let s = k.str().map_err(py_err)?;
            write_str(&s, out).map_err(py_err)
        }
        Keys::Json => {
            let text: String = if k.is_none() {
                "null".into()
            } else if let Ok(b) = k.cast::<PyBool>() {
                if b.is_true() { "true" } else { "false" }.into()
            } else if k.is_instance_of::<PyInt>() {
                let mut buf = Vec::new();
                write_int(k, &mut buf).map_err(py_err)?;
                String::from_utf8_lossy(&buf).into_owned()
            } else if let Ok(f) = k.cast::<PyFloat>() {
                let v = f.value();
                if v.is_finite() {
                    // float.__repr__, as json.dumps does for float keys.
                    k.repr().map_err(py_err)?.to_string()
                } else if v.is_nan() {
                    "NaN".into()
                } else if v > 0.0 {
                    "Infinity".into()
                } else {
                    "-Infinity".into()
                }
            } else {
                return Err(Unwritable {
                    path: Vec::new(),
                    kind: ErrorKind::Type(format!(
                        "dict key {} of type {} is not JSON serializable (keys must be str, int, float, bool or None)",
                        key_repr(k),
                        type_name(k)
                    )),
                });
            };
            write_escaped(text.as_bytes(), out);
            Ok(())
        }
    }
}

fn write_int(obj: &Bound<'_, PyAny>, out: &mut Vec<u8>) -> PyResult<()> {
    if let Ok(v) = obj.extract::<i64>() {
        let mut b = itoa_buf(v);
        out.append(&mut b);
        return Ok(());
    }
    // Beyond 64 bits: Python's own decimal text (int.__repr__, as json.dumps).
    let text = obj
        .call_method0(pyo3::intern!(obj.py(), "__index__"))?
        .repr()?;
    out.extend_from_slice(text.to_str()?.as_bytes());
    Ok(())
}

fn itoa_buf(v: i64) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn write_float(v: f64, rules: Rules, out: &mut Vec<u8>) -> Result<(), Unwritable> {
    if v.is_finite() {
        let mut buf = ryu::Buffer::new();
        out.extend_from_slice(buf.format_finite(v).as_bytes());
        return Ok(());
    }
    if !rules.allow_nan {
        return Err(Unwritable {
            path: Vec::new(),
            kind: ErrorKind::Value(format!(
                "float {} is not valid JSON (use None or a string)",
                if v.is_nan() {
                    "nan"
                } else if v > 0.0 {
                    "inf"
                } else {
                    "-inf"
                }
            )),
        });
    }
    out.extend_from_slice(if v.is_nan() {
        b"NaN"
    } else if v > 0.0 {
        b"Infinity"
    } else {
        b"-Infinity"
    });
    Ok(())
}

fn write_str(s: &Bound<'_, PyString>, out: &mut Vec<u8>) -> PyResult<()> {
    match s.to_str() {
        Ok(text) => write_escaped(text.as_bytes(), out),
        Err(_) => {
            // A lone surrogate (a Python str may hold one): keep it as the
            // "surrogatepass" bytes, which idemp::canon reads as Python does.
            let b = s.call_method1(pyo3::intern!(s.py(), "encode"), ("utf-8", "surrogatepass"))?;
            let bytes: &[u8] = b.cast::<pyo3::types::PyBytes>()?.as_bytes();
            write_escaped(bytes, out);
        }
    }
    Ok(())
}

/// A JSON string literal; bytes ≥ 0x80 are copied as they are (UTF-8).
fn write_escaped(bytes: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

static JSON_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `json.loads(text)`.
pub fn from_json<'py>(py: Python<'py>, text: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let loads = JSON_LOADS.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py.import("json")?.getattr("loads")?.unbind())
    })?;
    let s = std::str::from_utf8(text)
        .map_err(|e| PyValueError::new_err(format!("stored JSON is not UTF-8: {e}")))?;
    loads.bind(py).call1((s,))
}

/// The value as strict JSON wrapped for serde (stored results, verify answers).
pub fn to_raw(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Box<serde_json::value::RawValue>> {
    let text = to_json(obj, STRICT, what)?;
    // The writer produces valid JSON; serde_json re-checks it (and refuses integers
    // it cannot hold? no: RawValue keeps the text as is).
    let s = String::from_utf8(text).map_err(|_| {
        PyValueError::new_err(format!(
            "{what}: holds a lone surrogate, which UTF-8 JSON cannot hold"
        ))
    })?;
    serde_json::value::RawValue::from_string(s)
        .map_err(|e| PyValueError::new_err(format!("{what}: not valid JSON: {e}")))
}

/// What [`to_value`] cannot hold in a `serde_json::Value` (the caller then takes the
/// JSON-text path, which keeps them): NaN/±Infinity, integers beyond 64 bits, lone
/// surrogates.
pub struct NeedsText;

/// A Python value as a `serde_json::Value` with llm-message-hash-py's rules
/// (`str(key)` for non-`str` keys, the last of equal keys wins), leaving out every
/// dict entry whose key is in `drop` at any depth (as the python format's drop keys
/// do). `Ok(Err(NeedsText))` when the value holds what a `Value` cannot.
pub fn to_value(
    obj: &Bound<'_, PyAny>,
    drop: &[&str],
    depth: usize,
) -> PyResult<Result<serde_json::Value, NeedsText>> {
    use serde_json::Value;
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(match s.to_str() {
            Ok(t) => Ok(Value::String(t.to_owned())),
            Err(_) => Err(NeedsText),
        });
    }
    if obj.is_none() {
        return Ok(Ok(Value::Null));
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Ok(Value::Bool(b.is_true())));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(v) = obj.extract::<i64>() {
            return Ok(Ok(Value::from(v)));
        }
        return Ok(match obj.extract::<u64>() {
            Ok(v) => Ok(Value::from(v)),
            Err(_) => Err(NeedsText),
        });
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        let v = f.value();
        return Ok(match serde_json::Number::from_f64(v) {
            Some(n) => Ok(Value::Number(n)),
            None => Err(NeedsText),
        });
    }
    if depth >= MAX_DEPTH {
        return Ok(Err(NeedsText)); // the text path reports it with the path
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut map = serde_json::Map::new();
        for (k, v) in d.iter() {
            let key: String = match k.cast::<PyString>() {
                Ok(s) => match s.to_str() {
                    Ok(t) => t.to_owned(),
                    Err(_) => return Ok(Err(NeedsText)),
                },
                Err(_) => k.str()?.to_str().map(str::to_owned).map_err(|_| {
                    pyo3::exceptions::PyValueError::new_err("dict key holds a lone surrogate")
                })?,
            };
            if drop.contains(&key.as_str()) {
                continue;
            }
            match to_value(&v, drop, depth + 1)? {
                Ok(v) => {
                    map.insert(key, v);
                }
                Err(e) => return Ok(Err(e)),
            }
        }
        return Ok(Ok(Value::Object(map)));
    }
    let items: Vec<Bound<'_, PyAny>> = if let Ok(l) = obj.cast::<PyList>() {
        l.iter().collect()
    } else if let Ok(t) = obj.cast::<PyTuple>() {
        t.iter().collect()
    } else {
        return Ok(Err(NeedsText)); // the text path names the offending value
    };
    let mut out = Vec::with_capacity(items.len());
    for item in &items {
        match to_value(item, drop, depth + 1)? {
            Ok(v) => out.push(v),
            Err(e) => return Ok(Err(e)),
        }
    }
    Ok(Ok(Value::Array(out)))
}
