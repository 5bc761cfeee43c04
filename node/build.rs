//! Compiles node/proto with protox (pure Rust), so no system protoc is needed.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/unseen/v1/federation.proto",
        "proto/unseen/v1/jobs.proto",
        "proto/unseen/v1/scoring.proto",
        "proto/unseen/v1/workers.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("unseen_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
