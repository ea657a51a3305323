//! Generates the ONNX protobuf types from `proto/onnx.proto` (kept in the repository, from the
//! onnx 1.20.1 release) with protox, a pure-Rust protobuf compiler: no system `protoc` needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let descriptors = protox::compile(["proto/onnx.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
