//! Benchmark `canon` (being written).
fn main() {}
