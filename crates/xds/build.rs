//! Compiles `proto/` with a pure-Rust protobuf compiler, so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/weir/config/v1/config.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        // Deterministic encoding: resource versions are hashes of the encoded bytes.
        .btree_map(".")
        .compile_fds(descriptors)?;
    Ok(())
}
