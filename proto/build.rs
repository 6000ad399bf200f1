//! Generates the spyglass.v1 messages and the Collector service from the
//! .proto files (needs `protoc`; `cargo xtask setup` installs it).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=spyglass");
    tonic_prost_build::configure().compile_protos(
        &["spyglass/v1/events.proto", "spyglass/v1/collector.proto"],
        &["."],
    )?;
    Ok(())
}
