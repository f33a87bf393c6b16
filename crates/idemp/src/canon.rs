//! Canonical JSON (being written).

/// Writes the python-compat canonical form of `value` (as llm-message-hash-py
/// `canonical_json` with no preset) into `out`.
pub fn write_python_value(value: &serde_json::Value, out: &mut Vec<u8>) {
    let _ = (value, out);
    unimplemented!("canon is being written")
}

/// Writes the RFC 8785 (JCS) form of `value` into `out`.
pub fn write_jcs_value(value: &serde_json::Value, out: &mut Vec<u8>) {
    let _ = (value, out);
    unimplemented!("canon is being written")
}
