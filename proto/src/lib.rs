//! Generated types and gRPC stubs for `log.v1.Log`, for proglog's
//! operator API, `proglog.admin.v1.Admin` (module [`admin`]), and for the
//! peers' `raft.v1.Raft` (module [`raft`]).
//!
//! The book's messages and RPCs keep their names, numbers and types; the
//! `ProduceBatch` RPC and the producer fields are proglog's extension, which
//! old clients never see.

#![allow(clippy::all, missing_docs)]

pub mod codec;

/// Includes the servers of `package`, generated into `OUT_DIR/server` with
/// [`codec::RequestCodec`] (see `build.rs`).
macro_rules! include_servers {
    ($package:literal) => {
        include!(concat!(env!("OUT_DIR"), "/server/", $package, ".rs"));
    };
}

/// Messages, client and server of package `log.v1`.
pub mod v1 {
    tonic::include_proto!("log.v1");
    include_servers!("log.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("log_descriptor");

    /// Response metadata key of an OUT_OF_RANGE from `Consume` or
    /// `ConsumeStream`: the lowest offset the log holds (decimal), so a
    /// reader whose offset retention removed knows where the log now
    /// starts without parsing the message.
    pub const LOWEST_OFFSET_METADATA: &str = "lowest-offset";
    /// Response metadata key of an OUT_OF_RANGE from `Consume` or
    /// `ConsumeStream`: the offset the next record gets (decimal), the
    /// end of the log; an offset at or past it is not written yet.
    pub const NEXT_OFFSET_METADATA: &str = "next-offset";
}

pub use v1::*;

/// Messages, client and server of package `proglog.admin.v1`: membership
/// changes and the Raft view of the cluster, for operators. Its
/// descriptors are in [`v1::FILE_DESCRIPTOR_SET`] too.
pub mod admin {
    tonic::include_proto!("proglog.admin.v1");
    include_servers!("proglog.admin.v1");

    /// Response metadata key of a FAILED_PRECONDITION from a follower: the
    /// leader's node name.
    pub const LEADER_NAME_METADATA: &str = "leader-name";
    /// Response metadata key of a FAILED_PRECONDITION from a follower: the
    /// leader's advertised RPC address (`host:port`), where to retry.
    pub const LEADER_ADDR_METADATA: &str = "leader-addr";
}

/// proglog's peer service `raft.v1.Raft` (Raft RPCs, forwarded appends,
/// joins), spoken only between nodes on the shared port's Raft path.
pub mod raft {
    tonic::include_proto!("raft.v1");
    include_servers!("raft.v1");
}
