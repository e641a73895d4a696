//! The `light` command.
fn main() {}
