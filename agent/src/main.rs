//! molar-agent
fn main() {}
