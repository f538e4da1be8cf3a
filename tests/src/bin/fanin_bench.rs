//! fan-in benchmark
fn main() {}
