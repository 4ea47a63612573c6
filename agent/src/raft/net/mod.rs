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
//!
//! Around a node's life: [`existing_cluster`] asks the members a node
//! about to bootstrap found by gossip whether they belong to a cluster already
//! (the agent then refuses to start a second one), and [`leave_cluster`]
//! has a stopping node removed from the membership
//! (`--leave-on-terminate`).

pub mod client;
pub mod delta;
pub mod server;

#[cfg(test)]
mod tests;

use std::time::Duration;

use proglog_proto::raft::{ClusterInfoResponse, LeaveRequest};
use tokio::time::Instant;
use tracing::{info, warn};

pub use crate::transport::RAFT_RPC;
pub use client::PeerNetwork;
pub use server::RaftService;

use super::node::MembershipError;
use super::RaftNode;

/// The largest peer message: an AppendEntries of `MAX_PAYLOAD_ENTRIES`
/// entries of at most 8 MiB of records each, plus framing; a snapshot
/// chunk is smaller.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;
/// How long the leader may take to remove a leaving node (two membership
/// changes, joint then final).
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The wait between leave attempts (the leader moved, none known yet).
const LEAVE_RETRY: Duration = Duration::from_millis(200);
/// Asks each of `seeds` (at once, each for at most `timeout`) which
/// cluster it belongs to; returns the first that belongs to one (a
/// cluster id, or Raft state of a join in progress), with its answer.
/// Seeds that do not answer (not up yet, unreachable, refusing our
/// certificate) count as no cluster; `own_addr` (this node) is skipped.
pub async fn existing_cluster(
    network: &PeerNetwork,
    seeds: &[String],
    own_addr: &str,
    timeout: Duration,
) -> Option<(String, ClusterInfoResponse)> {
    let mut asks = tokio::task::JoinSet::new();
    for seed in seeds.iter().filter(|s| s.as_str() != own_addr) {
        let (network, seed) = (network.clone(), seed.clone());
        asks.spawn(async move {
            let answer = network.cluster_info(&seed, timeout).await;
            (seed, answer)
        });
    }
    while let Some(asked) = asks.join_next().await {
        let Ok((seed, answer)) = asked else { continue };
        match answer {
            Ok(info) if info.cluster_id != 0 || info.initialized => return Some((seed, info)),
            Ok(_) => info!(%seed, "seed belongs to no cluster yet"),
            Err(status) => {
                info!(%seed, error = %status.message(), "seed did not answer which cluster it is in")
            }
        }
    }
    None
}

/// Has `node` removed from its cluster's membership before it stops: on
/// the leader directly (it steps down once the change commits), else by
/// asking the leader, retrying while the leader is unknown or moves,
/// until `deadline`. Returns why it failed. A node that is not a member
/// succeeds.
pub async fn leave_cluster(
    node: &RaftNode,
    network: &PeerNetwork,
    deadline: Instant,
) -> Result<(), String> {
    loop {
        let left = match node.leader() {
            Some((leader, _)) if leader == node.id() => {
                match tokio::time::timeout_at(deadline, node.remove_member(node.id())).await {
                    Ok(Ok(()) | Err(MembershipError::UnknownNode(_))) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("removing this leader timed out".to_string()),
                }
            }
            Some((_, member)) => {
                let wait = deadline
                    .saturating_duration_since(Instant::now())
                    .min(LEAVE_TIMEOUT);
                let req = LeaveRequest { node_id: node.id() };
                match network.leave(&member.rpc_addr, req, wait).await {
                    Ok(_) => Ok(()),
                    Err(status) => Err(format!("leader {member}: {}", status.message())),
                }
            }
            None => Err("no leader known".to_string()),
        };
        match left {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() + LEAVE_RETRY < deadline => {
                warn!(error = %e, "leaving the cluster failed; retrying");
                tokio::time::sleep(LEAVE_RETRY).await;
            }
            Err(e) => return Err(e),
        }
    }
}
