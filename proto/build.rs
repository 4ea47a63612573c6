//! Compiles the protos with protox (pure Rust), so no `protoc` is needed:
//! `log.proto` and `admin.proto` (the client port's services, whose
//! descriptor set is saved for gRPC server reflection) and `raft.proto`
//! (the peers' service, kept out of reflection: it is not served there).
//!
//! Two passes: messages and clients into `OUT_DIR` with tonic's prost
//! codec, then the servers alone into `OUT_DIR/server` with
//! [`RequestCodec`](../src/codec.rs), which answers a request that is not a
//! valid message with INVALID_ARGUMENT (the caller's fault) where tonic's
//! codec says INTERNAL. Clients keep INTERNAL for a malformed response:
//! that one is the server's fault.

use prost::Message;

/// Fields decoded as `bytes::Bytes` (a slice of the received buffer, no
/// copy): record values, which then travel as they are through Raft to the
/// WAL, and the peers' payloads.
const BYTES_FIELDS: &[&str] = &[
    ".log.v1.Record.value",
    ".raft.v1.Payload.data",
    ".raft.v1.ForwardRequest.records",
];

/// Rust paths of each package's messages, for the server-only pass.
const PACKAGES: &[(&str, &str)] = &[
    (".log.v1", "crate::v1"),
    (".proglog.admin.v1", "crate::admin"),
    (".raft.v1", "crate::raft"),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let public = protox::compile(["proto/log.proto", "proto/admin.proto"], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("log_descriptor.bin"), public.encode_to_vec())?;
    let peers = protox::compile(["proto/raft.proto"], ["proto"])?;
    let servers = out.join("server");
    std::fs::create_dir_all(&servers)?;
    for descriptors in [public, peers] {
        BYTES_FIELDS
            .iter()
            .fold(tonic_prost_build::configure(), |config, field| {
                config.bytes(field)
            })
            .build_client(true)
            .build_server(false)
            .compile_fds(descriptors.clone())?;
        let mut server = tonic_prost_build::configure()
            .build_client(false)
            .build_server(true)
            .codec_path("crate::codec::RequestCodec")
            .out_dir(&servers);
        for (package, path) in PACKAGES {
            server = server.extern_path(*package, *path);
        }
        server.compile_fds(descriptors)?;
    }
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
