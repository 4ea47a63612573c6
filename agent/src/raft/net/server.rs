//! The accepting side: the `raft.v1.Raft` service, served on admitted peer
//! connections only (see `crate::transport::RaftRoute`). Delta snapshot
//! chunks ([`super::delta`]) are rebuilt here, on a blocking thread, from
//! this node's data log files, and installed as openraft's ordinary chunks.

use proglog_proto::raft::raft_server::Raft as RaftRpc;
use proglog_proto::raft::{
    snapshot_chunk_reply, CampaignRequest, CampaignResponse, ClusterInfoRequest,
    ClusterInfoResponse, ForwardRequest, ForwardResponse, LeaveRequest, LeaveResponse, Payload,
    SnapshotChunk, SnapshotChunkReply, SnapshotInventoryRequest, SnapshotInventoryResponse,
    StoreFile,
};
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::info;

use super::client::PeerNetwork;
use super::delta::{self, DeltaError, StoreFiles};
use super::{LEAVE_TIMEOUT, MAX_MESSAGE_BYTES};
use crate::raft::node::MembershipError;
use crate::raft::snapshot::store_name;
use crate::raft::{codec, RaftNode};

/// The peer service of one node.
pub struct RaftService {
    node: RaftNode,
    network: PeerNetwork,
}

impl RaftService {
    /// The service of `node`; `network` passes leaves on to the leader.
    pub fn new(node: RaftNode, network: PeerNetwork) -> RaftService {
        RaftService { node, network }
    }
}

fn decode<T: serde::de::DeserializeOwned>(req: Request<Payload>) -> Result<T, Status> {
    codec::decode_msg(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("raft message: {e}")))
}

fn join_error(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("blocking task failed: {e}"))
}

fn reply<T: serde::Serialize>(result: &T) -> Result<Response<Payload>, Status> {
    Ok(Response::new(Payload {
        data: codec::encode_msg(result).into(),
    }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        reply(&self.node.raft().append_entries(decode(req)?).await)
    }

    async fn vote(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        reply(&self.node.raft().vote(decode(req)?).await)
    }

    async fn install_snapshot(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        reply(&self.node.raft().install_snapshot(decode(req)?).await)
    }

    /// This node's data-log store files and the record bytes each holds
    /// now: what a snapshot sender may reference. A hint only; every
    /// reference is checked when its chunk is rebuilt.
    async fn snapshot_inventory(
        &self,
        _req: Request<SnapshotInventoryRequest>,
    ) -> Result<Response<SnapshotInventoryResponse>, Status> {
        let sm = self.node.state_machine().clone();
        // The segment list is behind the data log's lock, which an apply
        // may hold across its disk write.
        let segments = tokio::task::spawn_blocking(move || sm.data().segments())
            .await
            .map_err(join_error)?;
        let files = segments
            .into_iter()
            .map(|s| StoreFile {
                name: store_name(s.base),
                len: s.bytes,
            })
            .collect();
        Ok(Response::new(SnapshotInventoryResponse { files }))
    }

    /// A snapshot chunk whose bytes are partly references into this
    /// node's store files: rebuilt (and each reference checked) on a
    /// blocking thread, then installed as openraft's ordinary chunk. A
    /// reference that does not hold answers `stale_file` and installs
    /// nothing.
    async fn install_snapshot_chunk(
        &self,
        req: Request<SnapshotChunk>,
    ) -> Result<Response<SnapshotChunkReply>, Status> {
        let SnapshotChunk { request, parts } = req.into_inner();
        let mut rpc: openraft::raft::InstallSnapshotRequest<crate::raft::TypeConfig> =
            codec::decode_msg(&request)
                .map_err(|e| Status::invalid_argument(format!("raft message: {e}")))?;
        let dir = self.node.state_machine().data().dir().to_path_buf();
        let rebuilt = tokio::task::spawn_blocking(move || {
            let mut files = StoreFiles::new(dir);
            delta::assemble(&parts, MAX_MESSAGE_BYTES as u64, |name, offset, buf| {
                files.read(name, offset, buf)
            })
        })
        .await
        .map_err(join_error)?;
        let result = match rebuilt {
            Ok(data) => {
                rpc.data = data;
                snapshot_chunk_reply::Result::Reply(codec::encode_msg(
                    &self.node.raft().install_snapshot(rpc).await,
                ))
            }
            Err(DeltaError::Stale(name)) => {
                info!(file = %name, "a referenced store file is stale; asking for its bytes");
                snapshot_chunk_reply::Result::StaleFile(name)
            }
            Err(e) => return Err(Status::invalid_argument(e.to_string())),
        };
        Ok(Response::new(SnapshotChunkReply {
            result: Some(result),
        }))
    }

    /// A follower's client append: this node must lead (it never forwards
    /// again). The follower authorized the client; the peer is trusted.
    async fn forward(
        &self,
        req: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        let req = req.into_inner();
        let producer = (!req.producer_id.is_empty()).then_some((req.producer_id, req.sequence));
        let deadline = Instant::now() + self.node.produce_timeout();
        let durable = self
            .node
            .append_local(req.records, producer, deadline)
            .await?;
        let (first_offset, count) = durable.await?;
        Ok(Response::new(ForwardResponse {
            first_offset,
            count,
        }))
    }

    /// Starts an election on this node (leadership transfer).
    async fn campaign(
        &self,
        _req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        self.node.campaign().await?;
        Ok(Response::new(CampaignResponse {}))
    }

    /// Removes the asking node from the membership: on the leader (even
    /// itself, which then steps down), or passed on to the leader. A node
    /// that is not a member has left already: that is a success.
    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<LeaveResponse>, Status> {
        let req = req.into_inner();
        match self.node.leader() {
            Some((leader, _)) if leader == self.node.id() => {}
            Some((_, member)) => {
                return self
                    .network
                    .leave(&member.rpc_addr, req, LEAVE_TIMEOUT)
                    .await
                    .map(Response::new)
            }
            None => return Err(Status::unavailable("no leader known yet")),
        }
        info!(node_id = req.node_id, "leave requested");
        match self.node.remove_member(req.node_id).await {
            Ok(()) | Err(MembershipError::UnknownNode(_)) => Ok(Response::new(LeaveResponse {})),
            Err(e) => Err(e.into()),
        }
    }

    /// The cluster this node belongs to, if any, and the leader it knows.
    async fn cluster_info(
        &self,
        _req: Request<ClusterInfoRequest>,
    ) -> Result<Response<ClusterInfoResponse>, Status> {
        let initialized = self
            .node
            .raft()
            .is_initialized()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let (leader_id, leader) = self.node.leader().unwrap_or_default();
        Ok(Response::new(ClusterInfoResponse {
            cluster_id: self.node.cluster_id().unwrap_or(0),
            initialized,
            leader_id,
            leader_name: leader.name,
            leader_addr: leader.rpc_addr,
        }))
    }
}
