//! Benchmark `sqlite` (being written).
fn main() {}
