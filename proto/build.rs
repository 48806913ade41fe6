//! Generates the gRPC code from `citytwin/v1/*.proto` with `protox` (a protobuf compiler in
//! Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["citytwin/v1/cloudevent.proto", "citytwin/v1/twin.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("citytwin_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // A handful of attributes per event: a B-tree decodes them without hashing (SipHash
        // and a random seed per map cost about a tenth of decoding an ingest request).
        .btree_map(".citytwin.v1.CloudEvent.attributes")
        .compile_fds(descriptors)?;
    Ok(())
}
