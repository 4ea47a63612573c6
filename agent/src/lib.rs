//! proglog agent library: the WAL today; Raft, gossip, the gRPC server and
//! the agent wiring build on it (see DESIGN.md).

pub mod bench;
pub mod log;
pub mod units;
