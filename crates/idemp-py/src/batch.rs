//! `idemp.batch`: stable Anthropic Batches `custom_id`s, over `idemp::batch`.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use idemp::batch::{self, CustomIds};
use idemp::canon::{Canonicalizer, Format};

use crate::{canon, errors};

/// One stable ``custom_id`` per request, in order: ``prefix`` + 32 hex of the
/// SHA-256 of the request's python-compat canonical JSON + ``-`` + how many equal
/// requests came before it. A resubmitted batch gets the same ids.
#[pyfunction]
#[pyo3(signature = (requests, *, prefix = ""))]
fn custom_ids(
    py: Python<'_>,
    requests: Vec<Bound<'_, PyAny>>,
    prefix: &str,
) -> PyResult<Vec<String>> {
    let ids = CustomIds::with_prefix(prefix).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let c = Canonicalizer::new(Format::Python);
    let mut canonical = Vec::with_capacity(requests.len());
    for r in &requests {
        let input = canon::input(r, Format::Python)?;
        let mut out = Vec::new();
        c.write(input.bytes(), &mut out)
            .map_err(|e| errors::canon_error(py, e))?;
        canonical.push(out);
    }
    // The content of each id is the canonical JSON: the same as `for_values`.
    Ok(ids.for_bytes(canonical))
}

/// Checks a ``custom_id`` (1–64 characters of ``[A-Za-z0-9_-]``); returns it.
#[pyfunction]
fn validate_custom_id(id: &str) -> PyResult<String> {
    batch::validate_custom_id(id).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(id.to_owned())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(custom_ids, m)?)?;
    m.add_function(wrap_pyfunction!(validate_custom_id, m)?)?;
    m.add("MAX_CUSTOM_ID_LEN", batch::MAX_CUSTOM_ID_LEN)?;
    Ok(())
}
