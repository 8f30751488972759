//! The `probe` command (in progress).

fn main() {}
