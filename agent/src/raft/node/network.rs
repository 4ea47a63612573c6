//! The [`Forward`] half of a node's network, and the network of a node
//! with no peers.

use std::future::Future;
use std::pin::Pin;

use tokio::time::Instant;

use super::super::{Member, Request, Response, TypeConfig};
use crate::server::CommitError;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

/// A forwarded append's answer (see [`Forward`]).
pub type Forwarded = Pin<Box<dyn Future<Output = Result<Response, CommitError>> + Send>>;

/// Sends a follower's appends to the leader: the part of a node's network
/// that is not openraft's.
pub trait Forward: Send + Sync + 'static {
    /// Sends `request` (a `Request::Append`) to node `leader` at `member`
    /// and resolves to the leader's answer. `deadline` bounds the call.
    fn forward(
        &self,
        leader: u64,
        member: &Member,
        request: Request,
        deadline: Instant,
    ) -> Forwarded;

    /// Asks node `target` at `member` to start an election now (its
    /// remote side calls [`RaftNode::campaign`](super::RaftNode::campaign)):
    /// the last step of a leadership transfer. Resolves once the target
    /// has started campaigning, not once it won. `deadline` bounds the call.
    fn campaign(&self, target: u64, member: &Member, deadline: Instant) -> Campaigned;
}

/// The answer to a campaign request (see [`Forward::campaign`]).
pub type Campaigned = Pin<Box<dyn Future<Output = Result<(), CommitError>> + Send>>;

/// The network of a node with no peers (tests of a single node): calls
/// fail as unreachable, which a one-member cluster never makes.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoNetwork;

fn unreachable<E: std::error::Error>() -> RPCError<u64, Member, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(
        "this node has no network to its peers",
    )))
}

impl RaftNetworkFactory<TypeConfig> for NoNetwork {
    type Network = NoNetwork;

    async fn new_client(&mut self, _target: u64, _node: &Member) -> NoNetwork {
        NoNetwork
    }
}

impl RaftNetwork<TypeConfig> for NoNetwork {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        Err(unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        Err(unreachable())
    }
}

impl Forward for NoNetwork {
    fn forward(&self, leader: u64, _: &Member, _: Request, _: Instant) -> Forwarded {
        Box::pin(std::future::ready(Err(CommitError::Unavailable(format!(
            "node {leader} leads and this node has no network to reach it"
        )))))
    }

    fn campaign(&self, target: u64, _: &Member, _: Instant) -> Campaigned {
        Box::pin(std::future::ready(Err(CommitError::Unavailable(format!(
            "this node has no network to reach node {target}"
        )))))
    }
}
