//! Leadership transfer. openraft 0.9 has none, and its leader lease gets
//! in the way of the obvious one: a follower (any node whose vote is
//! committed) rejects vote requests until `election_timeout_max` after it
//! last heard from the leader (`Engine::handle_vote_req`), so a follower
//! told to campaign while the leader heartbeats loses. So the leader:
//!
//! 1. waits until the target lacks at most [`CLOSE_ENOUGH`] entries of
//!    its log, produces going on,
//! 2. stops proposing (it holds the propose gate: produces wait, for the
//!    rest of the transfer, normally under a second) and waits, at most
//!    [`PAUSED_CATCH_UP`], until the target has every entry of its log,
//! 3. stops heartbeating and waits out the followers' lease,
//! 4. asks the target to campaign ([`Forward::campaign`](super::Forward::campaign)),
//! 5. waits until it hears of a new leader, and heartbeats again (which
//!    only matters if it still leads: the transfer failed).
//!
//! The target, with the longest log and a higher term, gets every vote:
//! followers' leases have expired, and the old leader's own lease check
//! uses the time its vote last changed (its election), so it grants too;
//! granting a higher vote makes it a follower. The other followers would
//! start their own election only `lease + election_timeout` after the last
//! heartbeat, later than the target's campaign. The router tests
//! (`tests_cluster.rs`) check that the target, not another node, wins and
//! that the old leader follows it.

use std::time::Duration;

use openraft::{Raft, RaftMetrics};
use tokio::time::Instant;
use tracing::info;

use super::super::{Member, TypeConfig};
use super::{MembershipError, RaftNode};
use crate::server::CommitError;

/// How long a whole transfer may take (catching the target up, the lease,
/// the election) before it answers [`MembershipError::Timeout`]. New
/// produces wait meanwhile, so it is kept short.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);

/// How many entries the target may lack when proposals pause: it
/// catches up on those while produces wait, a round trip or two.
const CLOSE_ENOUGH: u64 = 64;

/// The longest the final catch-up may keep proposals paused.
const PAUSED_CATCH_UP: Duration = Duration::from_secs(2);

/// Margin added to the leader lease: a heartbeat already on its way when
/// heartbeats stop still renews the followers' lease on arrival.
const LEASE_MARGIN: Duration = Duration::from_millis(150);

impl RaftNode {
    /// Hands leadership to voter `to`, or with `None` to the voter whose
    /// log matches the leader's furthest (lowest id on a tie). Only on the
    /// leader; one membership change or transfer at a time. Produces on
    /// this node wait for the transfer, then answer UNAVAILABLE (not the
    /// leader) and are retried by the client. Returns the new leader's id,
    /// normally `to`'s (this node's own if `to` is this node: a no-op).
    pub async fn transfer_leadership(&self, to: Option<u64>) -> Result<u64, MembershipError> {
        let _one = self.membership_lock.lock().await;
        self.check_leader()?;
        let deadline = Instant::now() + TRANSFER_TIMEOUT;
        let metrics = self.raft.metrics().borrow().clone();
        let (target, member) = choose_target(&metrics, self.id, to)?;
        if target == self.id {
            return Ok(self.id);
        }
        info!(node_id = target, %member, "transferring leadership");
        // Close to the leader while produces go on, then exactly with them
        // paused: a slow or unreachable target does not stall produces for
        // the whole timeout.
        self.wait_caught_up(target, CLOSE_ENOUGH, deadline).await?;
        let _paused = tokio::time::timeout_at(deadline, self.lane.gate.write())
            .await
            .map_err(|_| MembershipError::Timeout("pausing proposals".into()))?;
        let paused_until = deadline.min(Instant::now() + PAUSED_CATCH_UP);
        self.wait_caught_up(target, 0, paused_until).await?;
        let silent = HeartbeatsOff::new(&self.raft);
        let handed = self.hand_over(target, &member, deadline).await;
        drop(silent);
        let leader = handed?;
        info!(node_id = leader, "leadership transferred");
        Ok(leader)
    }

    /// Starts an election on this node now (the remote side of
    /// [`Forward::campaign`](super::Forward::campaign)). A leader or a
    /// learner ignores it.
    pub async fn campaign(&self) -> Result<(), CommitError> {
        info!(node_id = self.id, "asked to campaign");
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| CommitError::Unavailable(e.to_string()))
    }

    /// Waits until `target` lacks at most `slack` entries of this
    /// leader's log.
    async fn wait_caught_up(
        &self,
        target: u64,
        slack: u64,
        deadline: Instant,
    ) -> Result<(), MembershipError> {
        let wait = deadline.saturating_duration_since(Instant::now());
        let id = self.id;
        let done = self
            .raft
            .wait(Some(wait))
            .metrics(
                |m| m.current_leader != Some(id) || lag(m, target).is_some_and(|l| l <= slack),
                "the target caught up",
            )
            .await
            .map_err(|_| MembershipError::Timeout(format!("node {target} catching up")))?;
        if done.current_leader != Some(id) {
            return Err(MembershipError::NotLeader {
                leader: self.leader(),
            });
        }
        Ok(())
    }

    /// With heartbeats off: waits out the lease, has `target` campaign and
    /// waits for a new leader.
    async fn hand_over(
        &self,
        target: u64,
        member: &Member,
        deadline: Instant,
    ) -> Result<u64, MembershipError> {
        let lease = Duration::from_millis(self.raft.config().election_timeout_max);
        tokio::time::sleep_until((Instant::now() + lease + LEASE_MARGIN).min(deadline)).await;
        // An entry proposed by another loop meanwhile (retention) must
        // reach the target too, or the others refuse it their vote.
        self.wait_caught_up(target, 0, deadline).await?;
        tokio::time::timeout_at(deadline, self.forward.campaign(target, member, deadline))
            .await
            .map_err(|_| MembershipError::Timeout(format!("asking node {target} to campaign")))?
            .map_err(|e| MembershipError::Raft(format!("node {target} did not campaign: {e}")))?;
        let wait = deadline.saturating_duration_since(Instant::now());
        let id = self.id;
        let elected = self
            .raft
            .wait(Some(wait))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != id),
                "a new leader",
            )
            .await
            .map_err(|_| MembershipError::Timeout(format!("electing node {target}")))?;
        Ok(elected.current_leader.unwrap_or(target))
    }
}

/// Entries `target` lacks of the leader's log, if known (`None` while
/// the leader has entries and does not know what the target holds).
fn lag(m: &RaftMetrics<u64, Member>, target: u64) -> Option<u64> {
    match (m.last_log_index, matched(m, target)) {
        (None, _) => Some(0),
        (Some(last), Some(held)) => Some(last.saturating_sub(held)),
        (Some(_), None) => None,
    }
}

/// Heartbeats off while it lives: dropped (the transfer done, failed, or
/// its caller gone and its future dropped), heartbeats are on again, so a
/// leader is never left silent.
struct HeartbeatsOff(Raft<TypeConfig>);

impl HeartbeatsOff {
    fn new(raft: &Raft<TypeConfig>) -> HeartbeatsOff {
        raft.runtime_config().heartbeat(false);
        HeartbeatsOff(raft.clone())
    }
}

impl Drop for HeartbeatsOff {
    fn drop(&mut self) {
        self.0.runtime_config().heartbeat(true);
    }
}

/// The log index `target` is known to hold, per the leader's replication
/// metrics.
fn matched(m: &RaftMetrics<u64, Member>, target: u64) -> Option<u64> {
    m.replication
        .as_ref()?
        .get(&target)?
        .as_ref()
        .map(|log_id| log_id.index)
}

/// The node to hand leadership to: `to` if it is a voter, else the other
/// voter with the highest matched index (lowest id on a tie).
fn choose_target(
    m: &RaftMetrics<u64, Member>,
    me: u64,
    to: Option<u64>,
) -> Result<(u64, Member), MembershipError> {
    let membership = m.membership_config.membership();
    let target = match to {
        Some(id) => {
            if membership.get_node(&id).is_none() {
                return Err(MembershipError::UnknownNode(id));
            }
            if !membership.voter_ids().any(|v| v == id) {
                return Err(MembershipError::NotVoter(id));
            }
            id
        }
        None => membership
            .voter_ids()
            .filter(|v| *v != me)
            .max_by_key(|v| (matched(m, *v), std::cmp::Reverse(*v)))
            .ok_or(MembershipError::NoOtherVoter)?,
    };
    let member = membership
        .get_node(&target)
        .cloned()
        .ok_or(MembershipError::UnknownNode(target))?;
    Ok((target, member))
}
