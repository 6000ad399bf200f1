//! Generates the spyglass.v1 messages and the Collector service from the
//! .proto files (needs `protoc`; `cargo xtask setup` installs it).
include!("boxed.rs");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=spyglass");
    println!("cargo:rerun-if-changed=boxed.rs");
    let mut build = tonic_prost_build::configure();
    for path in BOXED {
        build = build.boxed(path);
    }
    build
        // prost's codec plus a bound on a batch's events, checked before
        // the batch is decoded
        .codec_path("crate::codec::BoundedCodec")
        // the schema the codec's pre-decode scan walks (crate::scan)
        .file_descriptor_set_path(
            std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("spyglass.v1.bin"),
        )
        .compile_protos(
            &["spyglass/v1/events.proto", "spyglass/v1/collector.proto"],
            &["."],
        )?;
    Ok(())
}
