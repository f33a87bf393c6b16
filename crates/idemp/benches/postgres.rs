//! Benchmark `postgres` (being written).
fn main() {}
