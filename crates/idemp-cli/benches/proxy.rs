//! Benchmark `proxy` (being written).
fn main() {}
