//! `idemp.canon`: canonical JSON (python-compat and RFC 8785) and request hashes,
//! over `idemp::canon`, from Python objects or raw JSON bytes.

use std::sync::OnceLock;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};

use idemp::canon::{Canonicalizer, Format, Preset};

use crate::{errors, json};

/// Work this large runs with the GIL released.
const DETACH_ABOVE: usize = 64 * 1024;

/// The input of a canonicalizer: JSON text (``bytes``, ``bytearray``, ``memoryview``)
/// or a Python value written as JSON text.
pub enum Input<'py> {
    Text(Bound<'py, PyBytes>),
    Owned(Vec<u8>),
}

impl Input<'_> {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Input::Text(b) => b.as_bytes(),
            Input::Owned(v) => v,
        }
    }
}

pub fn input<'py>(obj: &Bound<'py, PyAny>, format: Format) -> PyResult<Input<'py>> {
    let py = obj.py();
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Input::Text(b.clone()));
    }
    if obj.is_instance_of::<PyByteArray>() || obj.is_instance_of::<PyMemoryView>() {
        let b = PyBytes::new(
            py,
            &obj.call_method0("__bytes__")
                .or_else(|_| py.import("builtins")?.getattr("bytes")?.call1((obj,)))?
                .extract::<Vec<u8>>()?,
        );
        return Ok(Input::Text(b));
    }
    let rules = match format {
        Format::Jcs => json::STRICT,
        _ => json::CANON,
    };
    Ok(Input::Owned(
        json::to_json(obj, rules, "value").map_err(|e| errors::not_json(py, e))?,
    ))
}

fn format_of(name: &str) -> PyResult<Format> {
    name.parse::<Format>()
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

fn preset_of(name: &str) -> PyResult<Preset> {
    name.parse::<Preset>()
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// The canonicalizers without custom drops, built once.
fn stock(format: Format, preset: Option<Preset>) -> &'static Canonicalizer {
    static STOCK: OnceLock<Vec<(Format, Option<Preset>, Canonicalizer)>> = OnceLock::new();
    let all = STOCK.get_or_init(|| {
        let mut v = Vec::new();
        for f in [Format::Python, Format::Jcs] {
            v.push((f, None, Canonicalizer::new(f)));
            for p in Preset::ALL {
                v.push((f, Some(p), Canonicalizer::new(f).preset(p)));
            }
        }
        v
    });
    all.iter()
        .find(|(f, p, _)| *f == format && *p == preset)
        .map(|(_, _, c)| c)
        .unwrap_or(&all[0].2)
}

/// A reusable canonical form: format, preset, drop keys and drop paths.
///
/// >>> c = Canonicalizer(preset="anthropic", drop_paths=["metadata.user_id"])  # doctest: +SKIP
/// >>> c.hash({"model": "m", "id": "msg_1"}) == c.hash(b'{"model":"m"}')     # doctest: +SKIP
/// True
#[pyclass(frozen, module = "idemp._core", name = "Canonicalizer")]
pub struct PyCanonicalizer {
    inner: Canonicalizer,
    direct: Option<Vec<String>>,
}

/// The drop keys of a python-format canonicalizer without drop paths: such a
/// canonicalizer can take a Python value straight to a `serde_json::Value` (dropping
/// these keys on the way) and write it with `canon::write_python_value`, instead of
/// writing JSON text and parsing it again. `None` for other canonicalizers.
fn direct_keys(
    format: &str,
    preset: Option<&str>,
    drop_keys: &Option<Vec<String>>,
    drop_paths: &Option<Vec<String>>,
) -> PyResult<Option<Vec<String>>> {
    if format_of(format)? != Format::Python || drop_paths.as_ref().is_some_and(|p| !p.is_empty()) {
        return Ok(None);
    }
    let mut keys: Vec<String> = match preset {
        Some(p) => preset_of(p)?
            .keys()
            .iter()
            .map(|k| (*k).to_owned())
            .collect(),
        None => Vec::new(),
    };
    keys.extend(drop_keys.iter().flatten().cloned());
    Ok(Some(keys))
}

/// The python-compat canonical bytes of a Python value through `serde_json::Value`, or
/// `None` when the value must take the text path (bytes input, NaN, huge integers,
/// lone surrogates, an unsupported type: the text path reports it).
fn direct(value: &Bound<'_, PyAny>, drop: Option<&[String]>) -> PyResult<Option<Vec<u8>>> {
    let Some(drop) = drop else { return Ok(None) };
    if value.is_instance_of::<PyBytes>()
        || value.is_instance_of::<PyByteArray>()
        || value.is_instance_of::<PyMemoryView>()
    {
        return Ok(None);
    }
    let names: Vec<&str> = drop.iter().map(String::as_str).collect();
    let v = match json::to_value(value, &names, 0)? {
        Ok(v) => v,
        Err(json::NeedsText) => return Ok(None),
    };
    let mut out = Vec::with_capacity(1024);
    idemp::canon::write_python_value(&v, &mut out);
    Ok(Some(out))
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

impl PyCanonicalizer {
    pub fn build(
        format: &str,
        preset: Option<&str>,
        drop_keys: Option<Vec<String>>,
        drop_paths: Option<Vec<String>>,
    ) -> PyResult<Canonicalizer> {
        let mut c = Canonicalizer::new(format_of(format)?);
        if let Some(p) = preset {
            c = c.preset(preset_of(p)?);
        }
        for k in drop_keys.unwrap_or_default() {
            c = c.drop_key(k);
        }
        for p in drop_paths.unwrap_or_default() {
            c = c
                .drop_path(&p)
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
        }
        Ok(c)
    }
}

fn run<'py, T: Send>(
    py: Python<'py>,
    canon: &Canonicalizer,
    value: &Bound<'py, PyAny>,
    op: impl Fn(&Canonicalizer, &[u8]) -> Result<T, idemp::canon::CanonError> + Send + Sync,
) -> PyResult<T> {
    let input = input(value, canon.format())?;
    let bytes = input.bytes();
    let res = if bytes.len() > DETACH_ABOVE {
        py.detach(|| op(canon, bytes))
    } else {
        op(canon, bytes)
    };
    res.map_err(|e| errors::canon_error(py, e))
}

#[pymethods]
impl PyCanonicalizer {
    #[new]
    #[pyo3(signature = (format = "python", *, preset = None, drop_keys = None, drop_paths = None))]
    fn new(
        format: &str,
        preset: Option<&str>,
        drop_keys: Option<Vec<String>>,
        drop_paths: Option<Vec<String>>,
    ) -> PyResult<Self> {
        let direct = direct_keys(format, preset, &drop_keys, &drop_paths)?;
        Ok(Self {
            inner: Self::build(format, preset, drop_keys, drop_paths)?,
            direct,
        })
    }

    /// The canonical JSON text of ``value`` (a Python value, or JSON text as bytes).
    fn canonicalize(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<String> {
        if let Some(out) = direct(value, self.direct.as_deref())? {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        run(py, &self.inner, value, |c, b| c.canonicalize(b))
    }

    /// The SHA-256 of the canonical form, 64 lowercase hex digits.
    fn hash(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<String> {
        if let Some(out) = direct(value, self.direct.as_deref())? {
            return Ok(hex_sha256(&out));
        }
        run(py, &self.inner, value, |c, b| c.hash(b))
    }

    /// The SHA-256 of the canonical form, 32 bytes.
    fn digest<'py>(
        &self,
        py: Python<'py>,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let d = run(py, &self.inner, value, |c, b| c.digest(b))?;
        Ok(PyBytes::new(py, &d))
    }

    /// ``"python"`` or ``"jcs"``.
    #[getter]
    fn format(&self) -> &'static str {
        self.inner.format().name()
    }
}

fn pick<'a>(
    holder: &'a mut Option<Canonicalizer>,
    format: &str,
    preset: Option<&str>,
    drop_keys: Option<Vec<String>>,
    drop_paths: Option<Vec<String>>,
) -> PyResult<&'a Canonicalizer> {
    let custom = drop_keys.as_ref().is_some_and(|d| !d.is_empty())
        || drop_paths.as_ref().is_some_and(|d| !d.is_empty());
    if !custom {
        let f = format_of(format)?;
        let p = preset.map(preset_of).transpose()?;
        return Ok(stock(f, p));
    }
    Ok(holder.insert(PyCanonicalizer::build(
        format, preset, drop_keys, drop_paths,
    )?))
}

/// The canonical JSON text of ``value``.
///
/// ``value`` is a Python value (``dict``, ``list``, ``str``, numbers…; non-``str``
/// dict keys become ``str(key)``, as llm-message-hash-py does) or JSON text given as
/// ``bytes``. ``format="python"`` (default) is byte-identical to llm-message-hash-py's
/// ``canonical_json``; ``format="jcs"`` is RFC 8785. ``preset`` (``anthropic``,
/// ``openai``, ``bedrock``, ``gemini``) and ``drop_keys`` drop keys at any depth;
/// ``drop_paths`` drop by position (``"metadata.user_id"``, ``"messages[*].id"``).
#[pyfunction]
#[pyo3(signature = (value, *, format = "python", preset = None, drop_keys = None, drop_paths = None))]
pub fn canonical_json(
    py: Python<'_>,
    value: &Bound<'_, PyAny>,
    format: &str,
    preset: Option<&str>,
    drop_keys: Option<Vec<String>>,
    drop_paths: Option<Vec<String>>,
) -> PyResult<String> {
    if let Some(out) = direct(
        value,
        direct_keys(format, preset, &drop_keys, &drop_paths)?.as_deref(),
    )? {
        return Ok(String::from_utf8_lossy(&out).into_owned());
    }
    let mut holder = None;
    let c = pick(&mut holder, format, preset, drop_keys, drop_paths)?;
    run(py, c, value, |c, b| c.canonicalize(b))
}

/// The SHA-256 (64 lowercase hex digits) of ``canonical_json(value, …)``: the same
/// as llm-message-hash-py's ``hash_request`` in the python format.
#[pyfunction]
#[pyo3(signature = (value, *, preset = None, format = "python", drop_keys = None, drop_paths = None))]
pub fn hash_request(
    py: Python<'_>,
    value: &Bound<'_, PyAny>,
    preset: Option<&str>,
    format: &str,
    drop_keys: Option<Vec<String>>,
    drop_paths: Option<Vec<String>>,
) -> PyResult<String> {
    if let Some(out) = direct(
        value,
        direct_keys(format, preset, &drop_keys, &drop_paths)?.as_deref(),
    )? {
        return Ok(hex_sha256(&out));
    }
    let mut holder = None;
    let c = pick(&mut holder, format, preset, drop_keys, drop_paths)?;
    run(py, c, value, |c, b| c.hash(b))
}

/// The keys a preset drops.
#[pyfunction]
pub fn preset_keys(name: &str) -> PyResult<Vec<&'static str>> {
    Ok(preset_of(name)?.keys().to_vec())
}
