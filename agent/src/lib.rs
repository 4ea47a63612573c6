//! proglog agent library: the WAL, Raft storage and the Raft cluster, gossip
//! discovery and the leader's membership reconcile, the gRPC service with
//! its security and transports, configuration, telemetry (logs and traces), and the agent that wires
//! them (see ARCHITECTURE.md at the repository root).

pub mod agent;
pub mod bench;
pub mod certs;
pub mod cli;
pub mod config;
pub mod discovery;
#[doc(hidden)]
pub mod fuzz;
pub mod log;
pub mod raft;
pub mod sd_notify;
pub mod server;
pub mod telemetry;
pub mod transport;
pub mod units;
