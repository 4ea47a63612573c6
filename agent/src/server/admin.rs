//! The `proglog.admin.v1.Admin` gRPC service: membership changes, the
//! Raft view of the cluster and the gossip view, for operators (`proglog
//! status`, `members`, `add-voter`, `remove-peer`, `transfer-leader`).
//!
//! Every call is authorized by the ACL action [`ADMIN`]. The mutating
//! calls run on the leader only: a follower answers FAILED_PRECONDITION
//! naming the leader (in the message and in the `leader-name` and
//! `leader-addr` metadata, see `status.rs`) and never forwards, so the
//! caller retries there. This module turns requests into [`RaftNode`]
//! calls; it does not change membership itself.

use std::sync::{Arc, OnceLock};

use proglog_proto::admin::admin_server::Admin as AdminRpc;
use proglog_proto::admin::{
    AddVoterRequest, AddVoterResponse, ClusterMember, ClusterStatusRequest, ClusterStatusResponse,
    GossipMember, MembersRequest, MembersResponse, RemoveServerRequest, RemoveServerResponse,
    TransferLeadershipRequest, TransferLeadershipResponse,
};
use tonic::{Request, Response, Status};

use super::auth::{Authorizer, ADMIN};
use crate::discovery::Membership;
use crate::raft::node::MembershipError;
use crate::raft::{Member, RaftNode};

/// Why an admin request was refused before or while reaching Raft.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A request field is missing or malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No member has this name (a numeric id that is not a member is
    /// [`MembershipError::UnknownNode`]).
    #[error("no member is named {0:?}")]
    UnknownName(String),
    /// AddVoter with a name another member already has.
    #[error("name {name:?} is already used by node {id}; remove that node first")]
    NameTaken {
        /// The name asked for.
        name: String,
        /// The member that has it.
        id: u64,
    },
    /// The Raft node refused or failed the change.
    #[error(transparent)]
    Membership(#[from] MembershipError),
}

/// The `proglog.admin.v1.Admin` service over one Raft node. Cheap to clone.
#[derive(Clone)]
pub struct AdminService {
    node: RaftNode,
    auth: Arc<Authorizer>,
    /// Gossip, once started (never in dev mode).
    membership: Arc<OnceLock<Membership>>,
}

impl AdminService {
    /// A service that changes and reports `node`'s cluster, checking
    /// callers with `auth` (action [`ADMIN`]).
    pub fn new(node: RaftNode, auth: Arc<Authorizer>) -> AdminService {
        AdminService {
            node,
            auth,
            membership: Arc::default(),
        }
    }

    /// Answers Members from `membership` once it is set (gossip starts
    /// after the server does).
    pub fn with_membership(mut self, membership: Arc<OnceLock<Membership>>) -> AdminService {
        self.membership = membership;
        self
    }

    /// Refuses a mutating call on a node that does not lead, naming the
    /// leader it knows. The Raft node checks again under its membership
    /// lock; this early check makes a follower answer FAILED_PRECONDITION
    /// before it resolves names against a possibly stale membership.
    fn check_leader(&self) -> Result<(), AdminError> {
        match self.node.leader() {
            Some((id, _)) if id == self.node.id() => Ok(()),
            leader => Err(MembershipError::NotLeader { leader }.into()),
        }
    }
}

#[tonic::async_trait]
impl AdminRpc for AdminService {
    async fn add_voter(
        &self,
        req: Request<AddVoterRequest>,
    ) -> Result<Response<AddVoterResponse>, Status> {
        self.auth.authorize(&req, ADMIN)?;
        let req = req.into_inner();
        let member = check_add_voter(&req)?;
        self.check_leader()?;
        let members = members(&self.node);
        if let Some((id, _)) = members
            .iter()
            .find(|(id, m)| m.name == member.name && *id != req.id)
        {
            return Err(AdminError::NameTaken {
                name: member.name,
                id: *id,
            }
            .into());
        }
        self.node
            .add_voter(req.id, member)
            .await
            .map_err(AdminError::from)?;
        Ok(Response::new(AddVoterResponse {}))
    }

    async fn remove_server(
        &self,
        req: Request<RemoveServerRequest>,
    ) -> Result<Response<RemoveServerResponse>, Status> {
        self.auth.authorize(&req, ADMIN)?;
        let node = req.into_inner().node;
        if node.trim().is_empty() {
            return Err(AdminError::InvalidArgument("node is empty".into()).into());
        }
        self.check_leader()?;
        let members = members(&self.node);
        let id = resolve(&members, &node)?;
        // Gossip must not add an alive node straight back.
        if let (Some(gossip), Some((_, member))) = (
            self.membership.get(),
            members.iter().find(|(m, _)| *m == id),
        ) {
            gossip.hold_out(&member.name);
        }
        self.node
            .remove_member(id)
            .await
            .map_err(AdminError::from)?;
        Ok(Response::new(RemoveServerResponse {}))
    }

    async fn transfer_leadership(
        &self,
        req: Request<TransferLeadershipRequest>,
    ) -> Result<Response<TransferLeadershipResponse>, Status> {
        self.auth.authorize(&req, ADMIN)?;
        let node = req.into_inner().node;
        self.check_leader()?;
        let to = match node.trim() {
            "" => None,
            name => Some(resolve(&members(&self.node), name)?),
        };
        let new_leader_id = self
            .node
            .transfer_leadership(to)
            .await
            .map_err(AdminError::from)?;
        Ok(Response::new(TransferLeadershipResponse { new_leader_id }))
    }

    async fn cluster_status(
        &self,
        req: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        self.auth.authorize(&req, ADMIN)?;
        Ok(Response::new(cluster_status(&self.node)))
    }

    async fn members(
        &self,
        req: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        self.auth.authorize(&req, ADMIN)?;
        let Some(membership) = self.membership.get() else {
            return Err(Status::failed_precondition(
                "gossip is not running on this agent (dev mode, or still starting)",
            ));
        };
        let members = membership
            .members()
            .await
            .into_iter()
            .map(|m| GossipMember {
                name: m.name,
                addr: m.addr.to_string(),
                status: m.status.to_string(),
                tags: m.tags.into_iter().collect(),
            })
            .collect();
        Ok(Response::new(MembersResponse { members }))
    }
}

/// Validates an AddVoter request; returns the member to add.
fn check_add_voter(req: &AddVoterRequest) -> Result<Member, AdminError> {
    let bad = |why: &str| Err(AdminError::InvalidArgument(why.into()));
    if req.id == 0 {
        return bad("id is 0 (node ids are never 0: see the node's data dir, file node-id)");
    }
    if req.name.trim().is_empty() {
        return bad("name is empty");
    }
    if req.rpc_addr.trim().is_empty() {
        return bad("rpc_addr is empty");
    }
    match req.rpc_addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
        _ => {
            return Err(AdminError::InvalidArgument(format!(
                "rpc_addr {:?} is not host:port",
                req.rpc_addr
            )))
        }
    }
    Ok(Member::new(req.name.clone(), req.rpc_addr.clone()))
}

/// The members of the membership this node knows, by id.
fn members(node: &RaftNode) -> Vec<(u64, Member)> {
    node.status()
        .members
        .into_iter()
        .map(|m| (m.id, m.member))
        .collect()
}

/// The id of the member that `node` names: a member's numeric id first,
/// else its name. A number that is no member's id nor name is
/// [`MembershipError::UnknownNode`].
fn resolve(members: &[(u64, Member)], node: &str) -> Result<u64, AdminError> {
    let node = node.trim();
    let number = node.parse::<u64>().ok();
    if let Some(id) = number.filter(|n| members.iter().any(|(id, _)| id == n)) {
        return Ok(id);
    }
    let mut named = members.iter().filter(|(_, m)| m.name == node);
    match (named.next(), named.next()) {
        (Some((id, _)), None) => Ok(*id),
        (Some(_), Some(_)) => Err(AdminError::InvalidArgument(format!(
            "more than one member is named {node:?}: name it by id"
        ))),
        (None, _) => match number {
            Some(id) => Err(MembershipError::UnknownNode(id).into()),
            None => Err(AdminError::UnknownName(node.into())),
        },
    }
}

/// This node's Raft view: its identity, term, leader, log and applied
/// indexes, and each member with its role and, on the leader, how far its
/// log is known to match.
fn cluster_status(node: &RaftNode) -> ClusterStatusResponse {
    let status = node.status();
    let leader_name = status
        .members
        .iter()
        .find(|m| Some(m.id) == status.leader)
        .map(|m| m.member.name.clone())
        .unwrap_or_default();
    let members = status
        .members
        .into_iter()
        .map(|m| ClusterMember {
            id: m.id,
            name: m.member.name,
            rpc_addr: m.member.rpc_addr,
            voter: m.voter,
            matched_index: m.matched.unwrap_or(0),
        })
        .collect();
    ClusterStatusResponse {
        id: status.id,
        name: status.member.name,
        term: status.term,
        leader_id: status.leader.unwrap_or(0),
        leader_name,
        last_log_index: status.last_log_index.unwrap_or(0),
        applied_index: status.applied_index.unwrap_or(0),
        members,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members() -> Vec<(u64, Member)> {
        vec![
            (7, Member::new("a", "h:1")),
            (9, Member::new("7", "h:2")),
            (11, Member::new("b", "h:3")),
            (12, Member::new("b", "h:4")),
        ]
    }

    #[test]
    fn resolve_takes_an_id_before_a_name() {
        assert_eq!(resolve(&members(), "7").unwrap(), 7);
        assert_eq!(resolve(&members(), " a ").unwrap(), 7);
        assert_eq!(resolve(&members(), "9").unwrap(), 9);
    }

    #[test]
    fn resolve_reports_unknown_and_ambiguous_names() {
        assert!(matches!(
            resolve(&members(), "c"),
            Err(AdminError::UnknownName(n)) if n == "c"
        ));
        assert!(matches!(
            resolve(&members(), "42"),
            Err(AdminError::Membership(MembershipError::UnknownNode(42)))
        ));
        assert!(matches!(
            resolve(&members(), "b"),
            Err(AdminError::InvalidArgument(_))
        ));
    }

    #[test]
    fn add_voter_needs_an_id_a_name_and_host_port() {
        let req = |id, name: &str, addr: &str| AddVoterRequest {
            id,
            name: name.into(),
            rpc_addr: addr.into(),
        };
        assert!(check_add_voter(&req(3, "n", "127.0.0.1:8400")).is_ok());
        assert!(check_add_voter(&req(3, "n", "[::1]:8400")).is_ok());
        for bad in [
            req(0, "n", "h:1"),
            req(3, "", "h:1"),
            req(3, "n", ""),
            req(3, "n", "host"),
            req(3, "n", ":80"),
            req(3, "n", "h:0"),
            req(3, "n", "h:http"),
        ] {
            assert!(
                matches!(check_add_voter(&bad), Err(AdminError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }
}
