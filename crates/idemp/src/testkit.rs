//! store conformance test kit (being written)
