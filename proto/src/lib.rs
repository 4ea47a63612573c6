//! Generated types and gRPC stubs for `log.v1.Log`.
//!
//! The book's messages and RPCs keep their names, numbers and types; the
//! `ProduceBatch` RPC and the producer fields are proglog's extension, which
//! old clients never see.

#![allow(clippy::all, missing_docs)]

/// Messages, client and server of package `log.v1`.
pub mod v1 {
    tonic::include_proto!("log.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("log_descriptor");
}

pub use v1::*;

/// proglog's peer service `raft.v1.Raft` (Raft RPCs, forwarded appends,
/// joins), spoken only between nodes on the shared port's Raft path.
pub mod raft {
    tonic::include_proto!("raft.v1");
}
