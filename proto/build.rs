//! Compiles the protos with protox (pure Rust), so no `protoc` is needed:
//! `log.proto` and `admin.proto` (the client port's services, whose
//! descriptor set is saved for gRPC server reflection) and `raft.proto`
//! (the peers' service, kept out of reflection: it is not served there).

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let public = protox::compile(["proto/log.proto", "proto/admin.proto"], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("log_descriptor.bin"), public.encode_to_vec())?;
    let peers = protox::compile(["proto/raft.proto"], ["proto"])?;
    for descriptors in [public, peers] {
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(true)
            .compile_fds(descriptors)?;
    }
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
