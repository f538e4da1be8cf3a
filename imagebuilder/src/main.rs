//! molar-imagebuilder
fn main() {}
