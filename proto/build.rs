//! Generates the spyglass.v1 messages and the Collector service from the
//! .proto files (needs `protoc`; `cargo xtask setup` installs it).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=spyglass");
    // Large, optional parts of an event are boxed so that an event without
    // them stays small: the collector decodes batches of a thousand events,
    // and each inline byte is moved as the batch's vector grows.
    tonic_prost_build::configure()
        .boxed(".spyglass.v1.Event.container")
        .boxed(".spyglass.v1.Event.detail.agent")
        // prost's codec plus a bound on a batch's events, checked before
        // the batch is decoded
        .codec_path("crate::codec::BoundedCodec")
        .compile_protos(
            &["spyglass/v1/events.proto", "spyglass/v1/collector.proto"],
            &["."],
        )?;
    Ok(())
}
