//! The accepting side: the `raft.v1.Raft` service, served on admitted peer
//! connections only (see `crate::transport::RaftRoute`).

use proglog_proto::raft::raft_server::Raft as RaftRpc;
use proglog_proto::raft::{
    CampaignRequest, CampaignResponse, ForwardRequest, ForwardResponse, JoinRequest, JoinResponse,
    Payload,
};
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::client::PeerNetwork;
use super::JOIN_TIMEOUT;
use crate::raft::{codec, Member, RaftNode};

/// The peer service of one node.
pub struct RaftService {
    node: RaftNode,
    network: PeerNetwork,
}

impl RaftService {
    /// The service of `node`; `network` passes joins on to the leader.
    pub fn new(node: RaftNode, network: PeerNetwork) -> RaftService {
        RaftService { node, network }
    }
}

fn decode<T: serde::de::DeserializeOwned>(req: Request<Payload>) -> Result<T, Status> {
    codec::decode_msg(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("raft message: {e}")))
}

fn reply<T: serde::Serialize>(result: &T) -> Result<Response<Payload>, Status> {
    Ok(Response::new(Payload {
        data: codec::encode_msg(result),
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

    /// Adds the asking node: on the leader, as a learner promoted once
    /// caught up; elsewhere, passed on to the leader. A node that belongs
    /// to another cluster is refused.
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let req = req.into_inner();
        if req.name.is_empty() || req.rpc_addr.is_empty() || req.node_id == 0 {
            return Err(Status::invalid_argument(
                "a join needs the node's id, name and rpc_addr",
            ));
        }
        match self.node.leader() {
            Some((leader, _)) if leader == self.node.id() => {}
            Some((_, member)) => {
                return self
                    .network
                    .join(&member.rpc_addr, req, JOIN_TIMEOUT)
                    .await
                    .map(Response::new)
            }
            None => return Err(Status::unavailable("no leader known yet")),
        }
        let cluster = self
            .node
            .cluster_id()
            .ok_or_else(|| Status::unavailable("this leader has no cluster id"))?;
        if req.cluster_id != 0 && req.cluster_id != cluster {
            warn!(node = %req.name, theirs = req.cluster_id, ours = cluster, "join refused: another cluster");
            return Err(Status::failed_precondition(format!(
                "node {} belongs to cluster {}, not {cluster}",
                req.name, req.cluster_id
            )));
        }
        let member = Member::new(req.name, req.rpc_addr);
        info!(node_id = req.node_id, %member, "join requested");
        self.node.add_voter(req.node_id, member).await?;
        Ok(Response::new(JoinResponse {
            cluster_id: cluster,
        }))
    }

    /// Starts an election on this node (leadership transfer).
    async fn campaign(
        &self,
        _req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        self.node
            .raft()
            .trigger()
            .elect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(CampaignResponse {}))
    }
}
