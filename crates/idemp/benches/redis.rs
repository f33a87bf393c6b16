//! Benchmark `redis` (being written).
fn main() {}
