//! proglog agent library: the WAL, Raft storage and the one-node Raft, the
//! gRPC service with its security and transports, configuration, and the
//! agent that wires them. Gossip and the cluster build on these (see
//! ARCHITECTURE.md at the repository root).

pub mod agent;
pub mod bench;
pub mod certs;
pub mod cli;
pub mod config;
pub mod log;
pub mod raft;
pub mod sd_notify;
pub mod server;
pub mod transport;
pub mod units;
