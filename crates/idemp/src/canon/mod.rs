//! Canonical JSON for request hashing: the python-compat form of llm-message-hash-py
//! and RFC 8785 (JCS).

mod jcs;
mod number;
mod python;

pub use jcs::write_jcs_value;
pub use python::write_python_value;
