//! `idemp.keys`: the agentidemp-compatible functions, the injective builder and
//! `for_args`, over `idemp::key`.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use idemp::key::{self, Key, KeyBuilder, Uuid};

use crate::{errors, json};

/// Inputs this long are hashed with the GIL released.
const DETACH_ABOVE: usize = 64 * 1024;

/// `str` (as UTF-8) or `bytes`; anything else is a `TypeError`, as in agentidemp.
pub fn content<'a>(obj: &'a Bound<'_, PyAny>, name: &str) -> PyResult<&'a [u8]> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(b.as_bytes());
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(s.to_str()?.as_bytes());
    }
    Err(PyTypeError::new_err(format!(
        "{name} must be str or bytes, got {}",
        obj.get_type()
            .qualname()
            .map(|n| n.to_string())
            .unwrap_or_default()
    )))
}

fn scope_str<'a>(obj: &'a Bound<'_, PyAny>) -> PyResult<&'a str> {
    match obj.cast::<PyString>() {
        Ok(s) => s.to_str(),
        Err(_) => Err(PyTypeError::new_err(format!(
            "scope must be str, got {}",
            obj.get_type()
                .qualname()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))),
    }
}

/// `"ik_"` + the lowercase hex of the first 16 bytes of SHA-256(content): 35
/// characters, as ``agentidemp.sha256_hex``. ``str`` is hashed as UTF-8.
#[pyfunction]
pub fn sha256_hex(py: Python<'_>, content: &Bound<'_, PyAny>) -> PyResult<String> {
    let bytes = self::content(content, "content")?;
    if bytes.len() > DETACH_ABOVE {
        Ok(py.detach(|| key::sha256_hex(bytes)))
    } else {
        Ok(key::sha256_hex(bytes))
    }
}

/// ``sha256_hex(scope ‖ 0x00 ‖ content)``, as ``agentidemp.scoped_sha256_hex``.
#[pyfunction]
pub fn scoped_sha256_hex(
    py: Python<'_>,
    scope: &Bound<'_, PyAny>,
    content: &Bound<'_, PyAny>,
) -> PyResult<String> {
    let scope = scope_str(scope)?;
    let bytes = self::content(content, "content")?;
    if bytes.len() > DETACH_ABOVE {
        Ok(py.detach(|| key::scoped_sha256_hex(scope, bytes)))
    } else {
        Ok(key::scoped_sha256_hex(scope, bytes))
    }
}

/// ``sha256_hex(scope ‖ 0x00 ‖ p0 ‖ 0x00 ‖ p1 …)``, as ``agentidemp.scoped_key``.
/// Not injective (a NUL inside a part looks like a separator): prefer ``KeyBuilder``
/// in new code.
#[pyfunction]
#[pyo3(signature = (scope, *parts))]
pub fn scoped_key(
    py: Python<'_>,
    scope: &Bound<'_, PyAny>,
    parts: Vec<Bound<'_, PyAny>>,
) -> PyResult<String> {
    let scope = scope_str(scope)?;
    let mut slices = Vec::with_capacity(parts.len());
    for (i, p) in parts.iter().enumerate() {
        slices.push(self::content(p, &format!("parts[{i}]"))?);
    }
    let total: usize = slices.iter().map(|s| s.len()).sum();
    if total > DETACH_ABOVE {
        Ok(py.detach(|| key::scoped_key(scope, &slices)))
    } else {
        Ok(key::scoped_key(scope, &slices))
    }
}

/// A namespace given as ``uuid.UUID`` (its ``bytes``) or as a UUID string.
pub fn namespace(obj: &Bound<'_, PyAny>) -> PyResult<Uuid> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Uuid::parse_str(s.to_str()?)
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(format!("namespace {s}: {e}")));
    }
    let uuid_type = obj.py().import("uuid")?.getattr("UUID")?;
    if obj.is_instance(&uuid_type)? {
        let bytes: Vec<u8> = obj.getattr("bytes")?.extract()?;
        let arr: [u8; 16] = bytes
            .try_into()
            .map_err(|_| PyTypeError::new_err("namespace.bytes is not 16 bytes"))?;
        return Ok(Uuid::from_bytes(arr));
    }
    Err(PyTypeError::new_err(format!(
        "namespace must be uuid.UUID, got {}",
        obj.get_type()
            .qualname()
            .map(|n| n.to_string())
            .unwrap_or_default()
    )))
}

/// The RFC 4122 version-5 UUID of ``name`` in ``namespace`` (lowercase, 36
/// characters), as ``agentidemp.uuid5_key``. Invalid UTF-8 ``bytes`` are hashed as
/// they are (RFC 4122), where agentidemp raises ``UnicodeDecodeError``.
#[pyfunction]
pub fn uuid5_key(namespace: &Bound<'_, PyAny>, name: &Bound<'_, PyAny>) -> PyResult<String> {
    let ns = self::namespace(namespace)?;
    let bytes = self::content(name, "name")?;
    Ok(key::uuid5_key(&ns, bytes))
}

/// A fresh random UUIDv4 string. Only for a first attempt with nothing to derive a
/// key from: keep it and send it again on every retry.
#[pyfunction]
pub fn random_key() -> String {
    key::random_key()
}

/// Checks that ``key`` is a valid idempotency key (1–255 bytes of visible ASCII, no
/// spaces) and returns it; raises ``InvalidKeyError`` otherwise.
#[pyfunction]
pub fn validate_key(py: Python<'_>, key: &str) -> PyResult<String> {
    key::validate(key).map_err(|e| errors::key_error(py, key, e))?;
    Ok(key.to_owned())
}

/// The key of a tool call: ``scoped_key(scope, tool, canonical_args)`` where
/// ``canonical_args`` is ``json.dumps(args, sort_keys=True, separators=(",", ":"))``:
/// argument order never matters.
#[pyfunction]
#[pyo3(signature = (scope, tool, args))]
pub fn for_args(
    py: Python<'_>,
    scope: &str,
    tool: &str,
    args: &Bound<'_, PyAny>,
) -> PyResult<String> {
    let text = json::to_json(args, json::STRICT, "args").map_err(|e| errors::not_json(py, e))?;
    key::for_args_json(scope, tool, &text)
        .map(Key::into_string)
        .map_err(|e| errors::canon_error(py, e))
}

/// The key ``@idempotent`` derives from a call's arguments (``idemp::Guard::key_for_args``:
/// the injective builder over the RFC 8785 form of the arguments).
#[pyfunction]
pub fn key_for_args(py: Python<'_>, args: &Bound<'_, PyAny>) -> PyResult<String> {
    let raw = json::to_raw(args, "args").map_err(|e| errors::not_json(py, e))?;
    idemp::Guard::key_for_args(&*raw)
        .map_err(|e| errors::make(py, "NotJSONError", format!("args: {e}"), &[]))
}

/// Builds an ``ik_`` + 32 hex key from a scope and typed parts, injectively: two
/// different part lists never hash the same input (unlike ``scoped_key``).
///
/// >>> KeyBuilder("refund").part("cus_42").part_int(2500).build()  # doctest: +SKIP
#[pyclass(module = "idemp._core", name = "KeyBuilder")]
pub struct PyKeyBuilder {
    inner: KeyBuilder,
}

impl PyKeyBuilder {
    fn take(&mut self) -> KeyBuilder {
        std::mem::replace(&mut self.inner, Key::builder(""))
    }
}

#[pymethods]
impl PyKeyBuilder {
    #[new]
    fn new(scope: &str) -> Self {
        Self {
            inner: Key::builder(scope),
        }
    }

    /// Appends a ``str`` (UTF-8) or ``bytes`` part.
    fn part<'py>(
        mut slf: PyRefMut<'py, Self>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<PyRefMut<'py, Self>> {
        let bytes = content(value, "part")?;
        let b = slf.take().part(bytes);
        slf.inner = b;
        Ok(slf)
    }

    /// Appends an integer part: ``part_u64`` when ``n >= 0``, else ``part_i64``.
    fn part_int<'py>(mut slf: PyRefMut<'py, Self>, n: i128) -> PyResult<PyRefMut<'py, Self>> {
        let b = slf.take();
        slf.inner = if n >= 0 {
            b.part_u64(u64::try_from(n).map_err(|_| {
                pyo3::exceptions::PyOverflowError::new_err("part_int: beyond 64 bits")
            })?)
        } else {
            b.part_i64(i64::try_from(n).map_err(|_| {
                pyo3::exceptions::PyOverflowError::new_err("part_int: beyond 64 bits")
            })?)
        };
        Ok(slf)
    }

    /// Appends an unsigned 64-bit part (Rust ``part_u64``).
    fn part_u64(mut slf: PyRefMut<'_, Self>, n: u64) -> PyRefMut<'_, Self> {
        let b = slf.take().part_u64(n);
        slf.inner = b;
        slf
    }

    /// Appends a signed 64-bit part (Rust ``part_i64``).
    fn part_i64(mut slf: PyRefMut<'_, Self>, n: i64) -> PyRefMut<'_, Self> {
        let b = slf.take().part_i64(n);
        slf.inner = b;
        slf
    }

    /// Appends a JSON value (its python-compat canonical form: key order never matters).
    fn part_json<'py>(
        mut slf: PyRefMut<'py, Self>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<PyRefMut<'py, Self>> {
        let py = slf.py();
        let text =
            json::to_json(value, json::STRICT, "value").map_err(|e| errors::not_json(py, e))?;
        let v: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| errors::make(py, "NotJSONError", format!("value: {e}"), &[]))?;
        let b = slf.take().part_json(&v);
        slf.inner = b;
        Ok(slf)
    }

    /// How many parts were appended.
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// The key: ``"ik_"`` + 32 lowercase hex digits. The builder can go on.
    fn build(&self) -> String {
        self.inner.clone().build().into_string()
    }
}

pub const NAMESPACES: [(&str, Uuid); 5] = [
    ("NAMESPACE_ANTHROPIC", key::NAMESPACE_ANTHROPIC),
    ("NAMESPACE_DNS", key::NAMESPACE_DNS),
    ("NAMESPACE_URL", key::NAMESPACE_URL),
    ("NAMESPACE_OID", key::NAMESPACE_OID),
    ("NAMESPACE_X500", key::NAMESPACE_X500),
];
