//! Benchmark `keys` (being written).
fn main() {}
