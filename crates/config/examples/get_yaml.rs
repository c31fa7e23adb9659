//! Prints each resource of a file as `get -o yaml` would: `cargo run -p config --example get_yaml -- FILE`.
fn main() {
    for a in std::env::args().skip(1) {
        match config::parse_path(std::path::Path::new(&a)) {
            Ok(docs) => {
                for d in docs {
                    println!(
                        "---\n{}",
                        config::to_yaml(&d.resource).unwrap_or_else(|e| e.to_string())
                    );
                }
            }
            Err(e) => println!("{e}"),
        }
    }
}
