//! The Raft network over the shared port.
//!
//! A peer connection is the node's RPC port with first byte `0x01`, then
//! mutual TLS with the peer certificates; each side admits the other only
//! if its certificate's CN is a peer name (`crate::transport::tls::PeerTls`).
//! On that stream the peers speak gRPC, the `raft.v1.Raft` service of
//! `proto/raft.proto`: HTTP/2 frames the messages, multiplexes openraft's
//! concurrent RPCs (heartbeats beside a snapshot chunk) over one
//! long-lived connection per peer, and gives flow control, so nothing here
//! is hand-framed. openraft's messages travel as versioned bincode
//! ([`crate::raft::codec`]).
//!
//! [`client::PeerNetwork`] dials (openraft's network factory, and the
//! node's forwarding to the leader); [`server::RaftService`] answers. A
//! node joins a cluster through gossip (`crate::discovery`): the leader
//! sees it and adds it. Snapshot chunks travel as [`delta`] chunks: the
//! bytes of store files the receiver already holds are sent as references
//! to them.

pub mod client;
pub mod delta;
pub mod server;

#[cfg(test)]
mod tests;

pub use crate::transport::RAFT_RPC;
pub use client::PeerNetwork;
pub use server::RaftService;

/// The largest peer message: an AppendEntries of `MAX_PAYLOAD_ENTRIES`
/// entries of at most 8 MiB of records each, plus framing; a snapshot
/// chunk is smaller.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;
