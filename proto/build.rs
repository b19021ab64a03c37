//! Generates the Rust code for `chatai/v1/*.proto` with protox, a pure-Rust
//! protobuf compiler, so building needs no system `protoc`. Also writes the
//! file descriptor set that the services serve through gRPC reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "chatai/v1/events.proto",
    "chatai/v1/chat.proto",
    "chatai/v1/handoff.proto",
    "chatai/v1/presence.proto",
    "chatai/v1/notification.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("chatai_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_server(env::var_os("CARGO_FEATURE_SERVER").is_some())
        .build_client(env::var_os("CARGO_FEATURE_CLIENT").is_some())
        .compile_fds(descriptors)?;
    Ok(())
}
