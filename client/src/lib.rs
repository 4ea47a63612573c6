//! Client library for proglog.
//!
//! Today it re-exports the wire types; the typed `Client`, the leader-aware
//! resolver and the picker land with the server (issue 4) and the cluster.

pub use proglog_proto as proto;
