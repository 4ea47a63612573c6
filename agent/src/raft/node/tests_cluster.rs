//! Node-level cluster tests on the in-process router: replication to every
//! node, forwarding, failover, a cut-off leader, restarts and catch-up
//! through a snapshot, leadership transfer. Each runs under a deadline.

use std::time::Duration;

use openraft::ServerState;

use super::router::{read_range, retrying_producer, wait_applied, Cluster};
use super::*;

/// Produces `n` one-record appends `"{tag}-{i}"` through `via`, one at a
/// time; returns the records and checks they are at `from..from + n`.
async fn produce_n(via: &RaftNode, tag: &str, from: u64, n: u64) -> Vec<Bytes> {
    let mut records = Vec::new();
    for i in 0..n {
        let record = Bytes::from(format!("{tag}-{i}"));
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
async fn check_everywhere(cluster: &Cluster, from: u64, records: &[Bytes]) {
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

/// Checks acknowledged (offset, record) pairs are dense from 0, each
/// once; returns the records in offset order.
fn dense(mut acked: Vec<(u64, Bytes)>) -> Vec<Bytes> {
    acked.sort();
    for (i, (first, _)) in acked.iter().enumerate() {
        assert_eq!(*first, i as u64, "{acked:?}");
    }
    acked.into_iter().map(|(_, r)| r).collect()
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

/// Runs a test body under a deadline.
async fn within<F: std::future::Future<Output = ()>>(secs: u64, body: F) {
    tokio::time::timeout(Duration::from_secs(secs), body)
        .await
        .expect("the test finished within its deadline");
}

#[tokio::test]
async fn a_every_node_returns_the_records_and_a_removed_node_stops_receiving() {
    within(90, async {
        let cluster = Cluster::start(3, |s| s).await;
        let leader = cluster.leader_node();
        let mut records = produce_n(&leader, "a", 0, 20).await;
        check_everywhere(&cluster, 0, &records).await;

        leader.remove_member(3).await.unwrap();
        let removed = cluster.nodes[&3].clone();
        let had = removed.sm.next_offset();
        assert_eq!(had, 20);
        records.extend(produce_n(&leader, "b", 20, 10).await);
        for id in [1, 2] {
            wait_applied(&cluster.nodes[&id], 30).await;
            assert_eq!(read_range(&cluster.nodes[&id], 0, 30).await, records);
        }
        // Node 2 applied the new records (so they were replicated); node 3
        // got none of them.
        assert_eq!(removed.sm.next_offset(), had);
        let voters: Vec<u64> = leader.status().members.iter().map(|m| m.id).collect();
        assert_eq!(voters, [1, 2]);
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn b_a_produce_on_a_follower_is_forwarded_and_answered_with_the_leaders_offset() {
    within(60, async {
        let cluster = Cluster::start(3, |s| s).await;
        let leader = cluster.leader_node();
        produce_n(&leader, "a", 0, 3).await;
        let follower = cluster.nodes[&2].clone();
        let at = follower
            .append(
                vec![Bytes::from_static(b"x"), Bytes::from_static(b"y")],
                Some(("p".into(), 7)),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(at, (3, 2));
        assert_eq!(
            read_range(&leader, 3, 5).await,
            [Bytes::from_static(b"x"), Bytes::from_static(b"y")]
        );
        // A retried forward is answered with the first attempt's offsets.
        let again = cluster.nodes[&3]
            .append(
                vec![Bytes::from_static(b"x"), Bytes::from_static(b"y")],
                Some(("p".into(), 7)),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(again, (3, 2));
        assert_eq!(leader.sm.next_offset(), 5);
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn c_after_the_leader_stops_a_new_one_serves_every_acked_record_and_retries_append_once() {
    within(120, async {
        let mut cluster = Cluster::start(3, |s| s).await;
        let old = cluster.leader_node().id();
        let survivors: Vec<RaftNode> = cluster
            .nodes
            .values()
            .filter(|n| n.id() != old)
            .cloned()
            .collect();
        // Producers through the survivors (forwarded to the leader), each
        // retrying a failed request with the same sequence until it is
        // acknowledged, while the leader is shut down under them.
        let producers: Vec<_> = survivors
            .iter()
            .cycle()
            .take(4)
            .enumerate()
            .map(|(i, via)| retrying_producer(via.clone(), format!("p{i}"), 0..30))
            .collect();
        // Kill once some records are in.
        let first = &survivors[0];
        let mut watermark = first.subscribe();
        watermark.wait_for(|w| *w >= 20).await.unwrap();
        let killed_at = Instant::now();
        cluster.stop_node(old).await;
        let new = cluster
            .wait_leader(&survivors.iter().map(|n| n.id()).collect::<Vec<_>>())
            .await;
        let failover = killed_at.elapsed();
        eprintln!("new leader {new} after {failover:?}");
        // Election timeout at most 600 ms plus the lease of 600 ms the
        // followers honour after the last heartbeat; well under 5 s.
        assert!(failover < Duration::from_secs(5), "{failover:?}");

        let mut acked = Vec::new();
        for p in producers {
            acked.extend(p.await.unwrap());
        }
        assert_eq!(acked.len(), 4 * 30);
        let end = acked.len() as u64;
        // Each (producer, sequence) once, offsets dense: no double append.
        let records = dense(acked);
        check_everywhere(&cluster, 0, &records).await;
        for node in cluster.nodes.values() {
            assert_eq!(node.sm.next_offset(), end, "node {}", node.id());
        }
        // A retry after the failover is answered from the replicated
        // producer table, not appended again.
        let again = cluster.nodes[&new]
            .append(vec![Bytes::from_static(b"p0-29")], Some(("p0".into(), 29)))
            .await
            .unwrap()
            .await
            .unwrap();
        let at = records.iter().position(|r| r == &b"p0-29"[..]).unwrap() as u64;
        assert_eq!(again, (at, 1));
        assert_eq!(cluster.nodes[&new].sm.next_offset(), end);
        // Writes resume.
        produce_n(&cluster.nodes[&new], "after", end, 5).await;
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn d_a_leader_cut_off_from_its_quorum_stops_acking_within_its_deadline() {
    let timeout = Duration::from_millis(800);
    within(90, async {
        let cluster = Cluster::start(3, |s| NodeSettings {
            produce_timeout: timeout,
            ..s
        })
        .await;
        let leader = cluster.leader_node();
        let records = produce_n(&leader, "a", 0, 5).await;
        cluster.router.isolate(leader.id());
        for _ in 0..3 {
            let started = Instant::now();
            let answer = leader.append(vec![Bytes::from_static(b"lost")], None).await;
            let answer = match answer {
                Ok(durable) => durable.await,
                Err(e) => Err(e),
            };
            assert!(
                matches!(answer, Err(CommitError::Unavailable(_))),
                "{answer:?}"
            );
            assert!(
                started.elapsed() < timeout + Duration::from_millis(500),
                "{:?}",
                started.elapsed()
            );
        }
        // The others elect a leader and take writes.
        let others: Vec<u64> = cluster
            .nodes
            .keys()
            .copied()
            .filter(|id| *id != leader.id())
            .collect();
        let new = cluster.wait_leader(&others).await;
        produce_n(&cluster.nodes[&new], "b", 5, 3).await;
        // Healed, the old leader follows and drops its unacked entries.
        cluster.router.heal(leader.id());
        assert_eq!(cluster.wait_agreed_leader().await, new);
        let mut expected = records;
        expected.extend((0..3).map(|i| Bytes::from(format!("b-{i}"))));
        check_everywhere(&cluster, 0, &expected).await;
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn e_a_restarted_follower_catches_up() {
    within(90, async {
        let mut cluster = Cluster::start(3, |s| s).await;
        let leader = cluster.leader_node();
        let mut records = produce_n(&leader, "a", 0, 10).await;
        check_everywhere(&cluster, 0, &records).await;
        cluster.stop_node(3).await;
        records.extend(produce_n(&leader, "b", 10, 20).await);
        let back = cluster.start_node(3).await;
        assert_eq!(cluster.wait_agreed_leader().await, leader.id());
        wait_applied(&back, 30).await;
        assert_eq!(read_range(&back, 0, 30).await, records);
        check_everywhere(&cluster, 0, &records).await;
        cluster.shutdown().await;
    })
    .await;
}

/// Follows `node`'s watermark from offset 0 to `end`, reading each record
/// once it is applied; returns them in order. Reads that fail while the
/// node is replaying or installing are retried on the next watermark.
async fn follow(node: RaftNode, end: u64) -> Vec<Bytes> {
    let mut watermark = node.subscribe();
    let mut records = Vec::new();
    while (records.len() as u64) < end {
        let next = records.len() as u64;
        let applied = *watermark.borrow_and_update();
        if applied > next {
            match node.read(next, (applied - next) as usize).await {
                Ok(got) => records.extend(got),
                // Replaying after the restart: wait for more.
                Err(CommitError::Unavailable(_)) => {
                    watermark.changed().await.unwrap();
                }
                Err(e) => panic!("read at {next}: {e}"),
            }
        } else {
            watermark.changed().await.unwrap();
        }
    }
    records
}

#[tokio::test]
async fn f_a_follower_behind_the_purge_point_catches_up_through_a_snapshot_and_readers_see_every_record(
) {
    within(120, async {
        let mut cluster = Cluster::start(3, |s| NodeSettings {
            snapshot_threshold: 10,
            max_in_snapshot_log_to_keep: 0,
            ..s
        })
        .await;
        let leader = cluster.leader_node();
        let mut records = produce_n(&leader, "a", 0, 15).await;
        check_everywhere(&cluster, 0, &records).await;
        cluster.stop_node(3).await;
        records.extend(produce_n(&leader, "b", 15, 45).await);
        let end = records.len() as u64;
        // The leader purged its log past everything node 3 holds.
        let stopped_at = {
            let m = leader.raft.metrics().borrow().clone();
            m.replication.as_ref().unwrap()[&3].map(|l| l.index)
        };
        super::router::eventually("the leader to purge past node 3", || {
            let purged = leader.raft.metrics().borrow().purged.map(|l| l.index);
            purged > stopped_at
        })
        .await;

        // Restarted node 3, and a new node 4, each with a reader from 0.
        let back = cluster.start_node(3).await;
        let reader_3 = tokio::spawn(follow(back.clone(), end));
        cluster.prepare(4);
        let fresh = cluster.start_node(4).await;
        let reader_4 = tokio::spawn(follow(fresh.clone(), end));
        cluster.add(4).await;
        for node in [&back, &fresh] {
            wait_applied(node, end).await;
            // Our watermark moves inside the install; openraft publishes the
            // snapshot in its metrics a moment later.
            let what = format!("node {} to report a snapshot past its log", node.id());
            super::router::eventually(&what, || {
                let snapshot = node.raft.metrics().borrow().snapshot;
                snapshot.is_some_and(|s| Some(s.index) > stopped_at)
            })
            .await;
        }
        assert_eq!(reader_3.await.unwrap(), records);
        assert_eq!(reader_4.await.unwrap(), records);
        // And they keep replicating after the install.
        records.extend(produce_n(&leader, "c", end, 5).await);
        check_everywhere(&cluster, 0, &records).await;
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn g_a_transfer_under_load_loses_and_duplicates_nothing() {
    within(120, async {
        let cluster = Cluster::start(3, |s| s).await;
        let producers: Vec<_> = cluster
            .nodes
            .values()
            .map(|via| retrying_producer(via.clone(), format!("p{}", via.id()), 0..40))
            .collect();
        let old = cluster.nodes[&1].clone();
        let mut watermark = old.subscribe();
        watermark.wait_for(|w| *w >= 15).await.unwrap();
        assert_eq!(old.transfer_leadership(Some(2)).await.unwrap(), 2);
        assert_eq!(cluster.wait_agreed_leader().await, 2);
        let mut acked = Vec::new();
        for p in producers {
            acked.extend(p.await.unwrap());
        }
        assert_eq!(acked.len(), 3 * 40);
        let records = dense(acked);
        check_everywhere(&cluster, 0, &records).await;
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn g_a_transfer_given_up_by_its_caller_leaves_the_leader_heartbeating() {
    within(60, async {
        let cluster = Cluster::start(3, |s| s).await;
        let leader = cluster.nodes[&1].clone();
        let term = leader.raft.metrics().borrow().current_term;
        // Dropped while waiting out the lease, heartbeats off.
        let gave_up = tokio::time::timeout(
            Duration::from_millis(300),
            leader.transfer_leadership(Some(2)),
        )
        .await;
        assert!(gave_up.is_err(), "{gave_up:?}");
        // Were heartbeats still off, the followers would elect a leader
        // within lease + election timeout (1.2 s): no term change in 3 s.
        let changed = cluster.nodes[&2]
            .raft
            .wait(Some(Duration::from_secs(3)))
            .metrics(|m| m.current_term != term, "a new term")
            .await;
        assert!(changed.is_err(), "an election happened: {changed:?}");
        assert_eq!(cluster.wait_agreed_leader().await, 1);
        produce_n(&leader, "a", 0, 3).await;
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn g_a_transfer_to_an_unreachable_voter_fails_and_the_leader_keeps_leading() {
    within(60, async {
        let cluster = Cluster::start(3, |s| s).await;
        let leader = cluster.nodes[&1].clone();
        produce_n(&leader, "a", 0, 3).await;
        cluster.router.isolate(3);
        let started = Instant::now();
        let failed = leader.transfer_leadership(Some(3)).await;
        assert!(
            matches!(
                failed,
                Err(MembershipError::Raft(_) | MembershipError::Timeout(_))
            ),
            "{failed:?}"
        );
        assert!(
            started.elapsed() < transfer::TRANSFER_TIMEOUT + Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        // Heartbeats are back: node 2 keeps following node 1, writes go on.
        let term = leader.raft.metrics().borrow().current_term;
        produce_n(&leader, "b", 3, 3).await;
        assert_eq!(leader.raft.metrics().borrow().current_term, term);
        assert_eq!(cluster.nodes[&2].leader().map(|(id, _)| id), Some(1));
        cluster.router.heal(3);
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn adding_a_member_again_under_a_new_address_updates_it() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let cluster = Cluster::start(3, |s| s).await;
        let leader = cluster.nodes[&1].clone();
        let moved = Member::new("n3", "n3-new-host:1");
        leader.add_voter(3, moved.clone()).await.unwrap();
        for node in cluster.nodes.values() {
            super::router::eventually("every node to record the new address", || {
                node.status()
                    .members
                    .iter()
                    .any(|m| m.id == 3 && m.member == moved && m.voter)
            })
            .await;
        }
        // Adding it again as it is now changes nothing.
        leader.add_voter(3, moved).await.unwrap();
        assert_eq!(leader.status().members.len(), 3);
        cluster.shutdown().await;
    })
    .await
    .expect("within the test's deadline");
}
