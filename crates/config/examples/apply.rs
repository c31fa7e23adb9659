//! Applies each file or directory in turn and prints kubectl-style outcome lines, then the
//! analysis of the result: `cargo run -p config --example apply -- FILE...`.
fn main() {
    let mut set = config::ResourceSet::new();
    for a in std::env::args().skip(1) {
        let docs = match config::parse_path(std::path::Path::new(&a)) {
            Ok(d) => d,
            Err(e) => {
                println!("{e}");
                continue;
            }
        };
        match set.apply(docs) {
            Ok(outcomes) => outcomes.iter().for_each(|o| println!("{o}")),
            Err(e) => println!("{e}"),
        }
    }
    for d in set.analyze() {
        println!("{d}");
    }
}
