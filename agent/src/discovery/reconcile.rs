//! The leader's reconcile loop (as Consul's leader does): gossip members
//! against Raft membership, one change at a time.
//!
//! - alive in gossip, not a Raft voter: added ([`RaftNode::add_voter`]:
//!   a learner first, promoted once caught up); a voter whose `rpc_addr`
//!   tag differs from its Raft entry is added again, which updates it;
//! - failed in gossip for longer than `--reap-timeout`: removed;
//! - left gossip (a graceful leave): removed;
//! - in Raft but unknown to gossip for longer than `--reap-timeout` (it
//!   died while no leader was watching): removed;
//! - alive under a name that a Raft member of another id has (the node
//!   was wiped and came back with a new id): the stale id is removed first.
//!
//! The leader never removes itself, never adds a member whose `cluster`
//! tag names another cluster (it warns once per member), and does not add
//! back a member an operator removed (`proglog remove-peer`) until gossip
//! has seen it go and come back ([`Membership::hold_out`]). The
//! loop runs every [`RECONCILE_INTERVAL`], at once on a gossip event, and
//! at once when the leader or the Raft membership changes, so events seen
//! while this node was a follower are acted on as soon as it leads (the
//! failure times are kept on every node, leader or not).
//!
//! On every node, leader or not, the loop also learns the cluster id: a
//! node that has none yet and finds itself in the Raft membership adopts
//! the id in the leader's `cluster` tag, and from then on tags itself
//! with it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{GossipMember, GossipStatus, Membership, TAG_CLUSTER, TAG_RPC_ADDR};
use crate::raft::node::ClusterStatus;
use crate::raft::{Member, RaftNode};

/// How often the loop runs without a wake-up.
pub const RECONCILE_INTERVAL: Duration = Duration::from_millis(500);
/// How long one addition may take (the learner's catch-up included)
/// before the loop gives up on it and looks again.
const ADD_TIMEOUT: Duration = Duration::from_secs(300);
/// Changes made in one wake-up before the loop yields to its timers.
const MAX_CHANGES_PER_PASS: usize = 8;

/// One membership change the leader should make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Add (or promote) this node as a voter.
    Add {
        /// Its Raft id.
        id: u64,
        /// Its name and RPC address.
        member: Member,
    },
    /// Remove this node from Raft.
    Remove {
        /// Its Raft id.
        id: u64,
        /// Why, for the log.
        why: String,
    },
}

/// What the loop remembers between passes.
#[derive(Debug, Default)]
pub struct Reconciler {
    /// Raft members gossip does not know, and since when (leader only).
    missing_since: HashMap<u64, Instant>,
    /// Members already warned about (another cluster, no tags).
    warned: HashSet<String>,
}

impl Reconciler {
    /// The first change that would bring Raft membership (`raft`, as this
    /// node sees it) in line with `gossip`, if any. `own_cluster` is this
    /// node's cluster id. Updates the "missing since" times and warns
    /// (once per member) about members it will not add.
    pub fn plan(
        &mut self,
        raft: &ClusterStatus,
        own_cluster: Option<u64>,
        gossip: &[GossipMember],
        reap_timeout: Duration,
        now: Instant,
    ) -> Option<Change> {
        let voters: BTreeMap<u64, (&Member, bool)> = raft
            .members
            .iter()
            .map(|m| (m.id, (&m.member, m.voter)))
            .collect();
        let mut adds = Vec::new();
        for g in gossip {
            if g.name == raft.member.name {
                continue;
            }
            let Some(id) = g.raft_id() else {
                if self.warned.insert(g.name.clone()) {
                    warn!(member = %g.name, "gossip member without a Raft id tag; ignored");
                }
                continue;
            };
            if id == raft.id {
                continue;
            }
            if let (Some(theirs), Some(ours)) = (g.cluster_id(), own_cluster) {
                if theirs != ours {
                    if self.warned.insert(g.name.clone()) {
                        warn!(member = %g.name, theirs, ours, "gossip member of another cluster; not adding it");
                    }
                    continue;
                }
            }
            match g.status {
                GossipStatus::Alive => {
                    // The same name under another id: a wiped node that
                    // came back. Its old id can never answer again.
                    if let Some((&stale, _)) = voters.iter().find(|(&other, (m, _))| {
                        m.name == g.name && other != id && other != raft.id
                    }) {
                        return Some(Change::Remove {
                            id: stale,
                            why: format!("{} came back as node {id}", g.name),
                        });
                    }
                    // A voter recorded as it still is: nothing to do. One
                    // whose address changed (restarted elsewhere) is added
                    // again, which updates its entry.
                    let current =
                        |m: &Member| g.tags.get(TAG_RPC_ADDR).is_none_or(|a| *a == m.rpc_addr);
                    if voters
                        .get(&id)
                        .is_some_and(|(m, voter)| *voter && current(m))
                    {
                        continue;
                    }
                    match g.tags.get(TAG_RPC_ADDR) {
                        Some(rpc_addr) => adds.push(Change::Add {
                            id,
                            member: Member::new(g.name.clone(), rpc_addr.clone()),
                        }),
                        None => {
                            if self.warned.insert(g.name.clone()) {
                                warn!(member = %g.name, "gossip member without an rpc_addr tag; not adding it");
                            }
                        }
                    }
                }
                GossipStatus::Failed if voters.contains_key(&id) => {
                    let since = g.failed_since.unwrap_or(now);
                    if now.saturating_duration_since(since) >= reap_timeout {
                        return Some(Change::Remove {
                            id,
                            why: format!("{} failed over {reap_timeout:?} ago", g.name),
                        });
                    }
                }
                GossipStatus::Left if voters.contains_key(&id) => {
                    return Some(Change::Remove {
                        id,
                        why: format!("{} left", g.name),
                    });
                }
                _ => {}
            }
        }
        // Raft members gossip has never heard of (or has forgotten).
        let known: HashSet<u64> = gossip.iter().filter_map(GossipMember::raft_id).collect();
        let names: HashSet<&str> = gossip.iter().map(|g| g.name.as_str()).collect();
        self.missing_since.retain(|id, _| voters.contains_key(id));
        for (&id, (member, _)) in &voters {
            if id == raft.id || known.contains(&id) || names.contains(member.name.as_str()) {
                self.missing_since.remove(&id);
                continue;
            }
            let since = *self.missing_since.entry(id).or_insert(now);
            if now.saturating_duration_since(since) >= reap_timeout {
                return Some(Change::Remove {
                    id,
                    why: format!("{member} unknown to gossip for {reap_timeout:?}"),
                });
            }
        }
        adds.into_iter().next()
    }

    /// Forgets what only a leader tracks (when this node stops leading).
    pub fn step_down(&mut self) {
        self.missing_since.clear();
    }
}

/// Runs until `stop`: on every node, learns the cluster id; on the
/// leader, reconciles gossip with Raft membership (see the module doc).
pub async fn reconcile_loop(
    node: RaftNode,
    membership: Membership,
    reap_timeout: Duration,
    stop: CancellationToken,
) {
    let mut changes = membership.changes();
    let mut roles = node.role_watch();
    let mut state = Reconciler::default();
    let mut tagged = false;
    loop {
        if !tagged {
            tagged = learn_cluster_id(&node, &membership).await;
        }
        if node.leader().is_some_and(|(id, _)| id == node.id()) {
            for _ in 0..MAX_CHANGES_PER_PASS {
                let mut gossip = membership.members().await;
                gossip.retain(|g| {
                    !(g.status == GossipStatus::Alive && membership.is_held_out(&g.name))
                });
                let change = state.plan(
                    &node.status(),
                    node.cluster_id(),
                    &gossip,
                    reap_timeout,
                    Instant::now(),
                );
                let Some(change) = change else { break };
                let applied = tokio::select! {
                    _ = stop.cancelled() => return,
                    applied = apply(&node, change) => applied,
                };
                if !applied {
                    break;
                }
            }
        } else {
            state.step_down();
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RECONCILE_INTERVAL) => {}
            _ = changed(&mut changes) => {}
            _ = roles.changed() => {}
        }
    }
}

/// Makes `change`; whether it was made.
async fn apply(node: &RaftNode, change: Change) -> bool {
    match change {
        Change::Add { id, member } => {
            info!(node_id = id, %member, "reconcile: adding a gossip member to raft");
            match tokio::time::timeout(ADD_TIMEOUT, node.add_voter(id, member.clone())).await {
                Ok(Ok(())) => {
                    info!(node_id = id, %member, "reconcile: now a voter");
                    true
                }
                Ok(Err(e)) => {
                    warn!(node_id = id, %member, error = %e, "reconcile: adding failed; will retry");
                    false
                }
                Err(_) => {
                    warn!(node_id = id, %member, "reconcile: the learner did not catch up in time; will retry");
                    false
                }
            }
        }
        Change::Remove { id, why } => {
            info!(node_id = id, %why, "reconcile: removing from raft");
            match node.remove_member(id).await {
                Ok(()) => true,
                Err(e) => {
                    warn!(node_id = id, error = %e, "reconcile: removing failed; will retry");
                    false
                }
            }
        }
    }
}

/// Adopts the leader's cluster id once this node is a Raft member and has
/// none, and tags this node with its cluster id. Returns whether the tag
/// is set (nothing left to do).
async fn learn_cluster_id(node: &RaftNode, membership: &Membership) -> bool {
    if node.cluster_id().is_none() {
        let status = node.status();
        let member = status.members.iter().any(|m| m.id == status.id);
        let leader = status.leader.filter(|l| *l != status.id);
        let (true, Some(leader)) = (member, leader) else {
            return false;
        };
        let gossip = membership.members().await;
        let Some(cluster) = gossip
            .iter()
            .find(|g| g.raft_id() == Some(leader))
            .and_then(GossipMember::cluster_id)
        else {
            return false;
        };
        match node.adopt_cluster_id(cluster).await {
            Ok(()) => info!(cluster_id = cluster, "joined the cluster"),
            Err(e) => {
                warn!(error = %e, "cannot adopt the leader's cluster id");
                return false;
            }
        }
    }
    let Some(cluster) = node.cluster_id() else {
        return false;
    };
    match membership.set_tag(TAG_CLUSTER, &cluster.to_string()).await {
        Ok(()) => true,
        Err(e) => {
            warn!(error = %e, "cannot tag this node with its cluster id");
            false
        }
    }
}

/// Waits for the next change on `rx`; forever once its sender is gone.
async fn changed(rx: &mut watch::Receiver<u64>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}
