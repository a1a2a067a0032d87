//! The `cvmem` command.
fn main() {}
