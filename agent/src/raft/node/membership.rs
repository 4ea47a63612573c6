//! Membership changes on the leader: add a node (as a learner, promoted to
//! voter once caught up), remove one. One change at a time. And the
//! cluster's status as a node sees it.

use std::collections::BTreeSet;

use openraft::ChangeMembers;
use tracing::info;

use super::super::Member;
use super::{NodeError, RaftNode};

/// The cluster as one node sees it (the admin ClusterStatus call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// This node's Raft id.
    pub id: u64,
    /// This node's name and advertised address.
    pub member: Member,
    /// The current Raft term.
    pub term: u64,
    /// The leader this node knows, if any.
    pub leader: Option<u64>,
    /// Index of the last entry in this node's Raft log (`None`: empty).
    pub last_log_index: Option<u64>,
    /// Index of the last entry this node applied (`None`: none yet).
    pub applied_index: Option<u64>,
    /// Every voter and learner of the effective membership, by id.
    pub members: Vec<MemberStatus>,
}

/// One member in a [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// Its Raft id.
    pub id: u64,
    /// Its name and advertised address.
    pub member: Member,
    /// A voter (else a learner, which replicates but neither votes nor
    /// counts for commit).
    pub voter: bool,
    /// On the leader: the last log index known to be on that member (the
    /// leader's own last index for itself; `None` while unknown). On a
    /// follower: `None`, followers do not track each other.
    pub matched: Option<u64>,
}

/// Wakes on a change of leader, role or membership (see
/// [`RaftNode::role_watch`]).
pub struct RoleWatch(
    tokio::sync::watch::Receiver<openraft::metrics::RaftServerMetrics<u64, Member>>,
);

impl RoleWatch {
    /// Waits for the next change; never returns once the node has stopped.
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Why a membership change was not made.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// Only the leader changes membership; `leader` is the one known.
    #[error("not the leader{}", leader.as_ref().map(|(id, m)| format!(": {m} (node {id}) leads")).unwrap_or_default())]
    NotLeader {
        /// The leader, if one is known.
        leader: Option<(u64, Member)>,
    },
    /// The node is not a member.
    #[error("node {0} is not a member")]
    UnknownNode(u64),
    /// The node is a member but not a voter (a learner cannot lead).
    #[error("node {0} is not a voter")]
    NotVoter(u64),
    /// A leadership transfer found no other voter to hand over to.
    #[error("no other voter to hand leadership to")]
    NoOtherVoter,
    /// A leadership transfer did not complete in time: `0` says which
    /// step. Leadership may have moved anyway or stayed; the leader known
    /// afterwards says which.
    #[error("leadership transfer timed out: {0}")]
    Timeout(String),
    /// openraft refused or failed the change.
    #[error("membership change failed: {0}")]
    Raft(String),
}

impl RaftNode {
    /// This node's Raft id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// This node's member entry (name and advertised address).
    pub fn member(&self) -> &Member {
        &self.member
    }

    /// Adds node `id` as a voter: first as a learner, which waits until it
    /// has caught up with the leader's log, then promoted. Adding a
    /// current voter again is a no-op, except that a changed name or
    /// address replaces the recorded one.
    pub async fn add_voter(&self, id: u64, member: Member) -> Result<(), MembershipError> {
        let _one = self.membership_lock.lock().await;
        self.check_leader()?;
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        if let Some(known) = membership.get_node(&id).filter(|known| **known != member) {
            // The same node (same id, same data) under a new name or
            // address, e.g. restarted on another host: the address peers
            // dial must follow it. Safe because the id and its log are the
            // same node's (openraft's "update node").
            info!(node_id = id, old = %known, new = %member, "updating a member's address");
            self.raft
                .change_membership(
                    ChangeMembers::SetNodes([(id, member.clone())].into()),
                    false,
                )
                .await
                .map_err(|e| MembershipError::Raft(e.to_string()))?;
        }
        if membership.voter_ids().any(|v| v == id) {
            return Ok(());
        }
        if membership.get_node(&id).is_none() {
            info!(node_id = id, %member, "adding a learner");
            self.raft
                .add_learner(id, member.clone(), true)
                .await
                .map_err(|e| MembershipError::Raft(e.to_string()))?;
        }
        info!(node_id = id, %member, "promoting to voter");
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| MembershipError::Raft(e.to_string()))?;
        Ok(())
    }

    /// Removes node `id` (voter or learner) from the cluster.
    pub async fn remove_member(&self, id: u64) -> Result<(), MembershipError> {
        let _one = self.membership_lock.lock().await;
        self.check_leader()?;
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(MembershipError::UnknownNode(id));
        }
        info!(node_id = id, "removing a member");
        if membership.voter_ids().any(|v| v == id) {
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(|e| MembershipError::Raft(e.to_string()))?;
        } else {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(|e| MembershipError::Raft(e.to_string()))?;
        }
        Ok(())
    }

    /// Whether this node has Raft state (it bootstrapped or was added to
    /// a cluster): then `bootstrap` is a no-op.
    pub async fn initialized(&self) -> Result<bool, NodeError> {
        self.raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))
    }

    /// Stops this node from starting elections. A node leaving the
    /// cluster stops hearing from the leader once it is removed: it must
    /// not campaign (with a higher term) while it shuts down.
    pub fn stop_campaigning(&self) {
        self.raft.runtime_config().elect(false);
    }

    /// openraft's metrics of this node (term, leader, log indexes,
    /// purge point, snapshot, replication progress on the leader): a copy
    /// of the latest values, for tests that wait on Raft's progress.
    #[cfg(test)]
    pub(crate) fn raft_metrics(&self) -> openraft::RaftMetrics<u64, Member> {
        self.raft.metrics().borrow().clone()
    }

    /// The cluster as this node sees it: its term, the leader, its log and
    /// apply positions, and each member with, on the leader, how far its
    /// log is known to match.
    pub fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let leading = m.current_leader == Some(self.id);
        let members = membership
            .nodes()
            .map(|(id, member)| MemberStatus {
                id: *id,
                member: member.clone(),
                voter: membership.voter_ids().any(|v| v == *id),
                matched: match (leading, *id == self.id) {
                    (true, true) => m.last_log_index,
                    (true, false) => m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(id).cloned().flatten())
                        .map(|log_id| log_id.index),
                    (false, _) => None,
                },
            })
            .collect();
        ClusterStatus {
            id: self.id,
            member: self.member.clone(),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|log_id| log_id.index),
            members,
        }
    }

    /// The leader as this node knows it.
    pub fn leader(&self) -> Option<(u64, Member)> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let member = metrics.membership_config.membership().get_node(&leader)?;
        Some((leader, member.clone()))
    }

    /// A watch that wakes on a change of leader, Raft role or
    /// membership (not on every applied entry), for loops that act when
    /// this node starts leading or joins the membership.
    pub fn role_watch(&self) -> RoleWatch {
        RoleWatch(self.raft.server_metrics())
    }

    pub(super) fn check_leader(&self) -> Result<(), MembershipError> {
        match self.leader() {
            Some((id, _)) if id == self.id => Ok(()),
            leader => Err(MembershipError::NotLeader { leader }),
        }
    }
}
