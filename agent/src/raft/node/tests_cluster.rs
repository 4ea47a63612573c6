//! Node-level cluster tests on the in-process router: replication to every
//! node, forwarding, failover, a cut-off leader, restarts and catch-up
//! through a snapshot, leadership transfer. Each runs under a deadline.

use std::time::Duration;

use openraft::ServerState;

use super::router::{read_range, wait_applied, Cluster};
use super::*;

/// Produces `n` one-record appends `"{tag}-{i}"` through `via`, one at a
/// time; returns the records and checks they are at `from..from + n`.
async fn produce_n(via: &RaftNode, tag: &str, from: u64, n: u64) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    for i in 0..n {
        let record = format!("{tag}-{i}").into_bytes();
        let at = via
            .append(vec![record.clone()], None)
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(at, (from + i, 1), "{tag}-{i}");
        records.push(record);
    }
    records
}

/// Checks every running node holds `records` at `from..`.
async fn check_everywhere(cluster: &Cluster, from: u64, records: &[Vec<u8>]) {
    let end = from + records.len() as u64;
    for node in cluster.nodes.values() {
        wait_applied(node, end).await;
        assert_eq!(
            read_range(node, from, end).await,
            records,
            "node {}",
            node.id()
        );
    }
}

fn state(node: &RaftNode) -> ServerState {
    node.raft.metrics().borrow().state
}

#[tokio::test]
async fn g_transfer_moves_leadership_to_the_chosen_voter_and_acked_records_stay() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let cluster = Cluster::start(3, |s| s).await;
        let old = cluster.nodes[&1].clone();
        let term = old.raft.metrics().borrow().current_term;
        let mut records = produce_n(&old, "a", 0, 10).await;

        // Errors: not on a follower, not to a stranger.
        let follower = cluster.nodes[&2].clone();
        assert!(matches!(
            follower.transfer_leadership(Some(3)).await,
            Err(MembershipError::NotLeader {
                leader: Some((1, _))
            })
        ));
        assert!(matches!(
            old.transfer_leadership(Some(99)).await,
            Err(MembershipError::UnknownNode(99))
        ));
        assert_eq!(old.transfer_leadership(Some(1)).await.unwrap(), 1);

        let started = Instant::now();
        assert_eq!(old.transfer_leadership(Some(3)).await.unwrap(), 3);
        let took = started.elapsed();
        assert_eq!(cluster.wait_agreed_leader().await, 3);
        // The old leader stepped down and follows; one election, won by
        // the target at the first try.
        assert_eq!(state(&old), ServerState::Follower);
        assert_eq!(
            cluster.nodes[&3].raft.metrics().borrow().current_term,
            term + 1
        );
        eprintln!("transfer to node 3 took {took:?}");

        // Writes resume on the new leader (and through the old one).
        let new = cluster.nodes[&3].clone();
        records.extend(produce_n(&new, "b", 10, 5).await);
        records.extend(produce_n(&old, "c", 15, 5).await);
        check_everywhere(&cluster, 0, &records).await;

        // Without a target: the most caught-up other voter.
        let next = new.transfer_leadership(None).await.unwrap();
        assert_ne!(next, 3);
        assert_eq!(cluster.wait_agreed_leader().await, next);
        records.extend(produce_n(&cluster.nodes[&next], "d", 20, 5).await);
        check_everywhere(&cluster, 0, &records).await;
        cluster.shutdown().await;
    })
    .await
    .expect("within the test's deadline");
}

#[tokio::test]
async fn transfer_refuses_a_learner() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut cluster = Cluster::start(2, |s| s).await;
        cluster.prepare(3);
        cluster.start_node(3).await;
        let leader = cluster.nodes[&1].clone();
        leader
            .raft
            .add_learner(3, cluster.settings[&3].member.clone(), true)
            .await
            .unwrap();
        assert!(matches!(
            leader.transfer_leadership(Some(3)).await,
            Err(MembershipError::NotVoter(3))
        ));
        // None picks the voter, never the learner.
        assert_eq!(leader.transfer_leadership(None).await.unwrap(), 2);
        cluster.shutdown().await;
    })
    .await
    .expect("within the test's deadline");
}

#[tokio::test]
async fn a_single_voter_has_no_one_to_transfer_to() {
    let cluster = Cluster::start(1, |s| s).await;
    assert!(matches!(
        cluster.nodes[&1].transfer_leadership(None).await,
        Err(MembershipError::NoOtherVoter)
    ));
    cluster.shutdown().await;
}

#[tokio::test]
async fn status_shows_the_term_leader_positions_and_members() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut cluster = Cluster::start(3, |s| s).await;
        cluster.prepare(4);
        cluster.start_node(4).await;
        let leader = cluster.nodes[&1].clone();
        leader
            .raft
            .add_learner(4, cluster.settings[&4].member.clone(), true)
            .await
            .unwrap();
        produce_n(&leader, "a", 0, 5).await;
        let last = leader.raft.metrics().borrow().last_log_index;
        // Wait until the leader knows every member has everything.
        let mut status = leader.status();
        super::router::eventually("the leader to see every member caught up", || {
            status = leader.status();
            status.members.iter().all(|m| m.matched == last)
        })
        .await;
        assert_eq!(status.id, 1);
        assert_eq!(status.member.name, "n1");
        assert_eq!(status.leader, Some(1));
        assert!(status.term >= 1);
        assert_eq!(status.last_log_index, last);
        let members: Vec<(u64, &str, bool)> = status
            .members
            .iter()
            .map(|m| (m.id, m.member.name.as_str(), m.voter))
            .collect();
        assert_eq!(
            members,
            [
                (1, "n1", true),
                (2, "n2", true),
                (3, "n3", true),
                (4, "n4", false)
            ]
        );

        let follower = cluster.nodes[&2].clone();
        wait_applied(&follower, 5).await;
        let seen = follower.status();
        assert_eq!((seen.id, seen.leader, seen.term), (2, Some(1), status.term));
        assert_eq!(seen.members.len(), 4);
        assert!(seen.members.iter().all(|m| m.matched.is_none()));
        assert!(seen.applied_index.is_some());
        cluster.shutdown().await;
    })
    .await
    .expect("within the test's deadline");
}
