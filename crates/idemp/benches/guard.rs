//! Benchmark `guard` (being written).
fn main() {}
