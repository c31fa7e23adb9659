//! The `weir` command line: thin, delegating to the library crates.

fn main() {
    println!("weir {}", env!("CARGO_PKG_VERSION"));
}
