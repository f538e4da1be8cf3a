//! molar
fn main() {}
