//! Gossip on loopback (members see each other join with their tags, a
//! leaver as left, a stopped one as failed; the gossip key) and the
//! reconcile plan (what the leader adds and removes).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::reconcile::{Change, Reconciler};
use super::*;
use crate::raft::node::{ClusterStatus, MemberStatus};
use crate::raft::Member;

const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `check` every 20 ms until it holds, or panics naming `what`.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config(i: u64, seeds: Vec<String>, key: Option<GossipKey>) -> MembershipConfig {
    MembershipConfig {
        node_name: format!("node{i}"),
        bind_addr: "127.0.0.1:0".parse().unwrap(),
        tags: BTreeMap::from([
            (TAG_RPC_ADDR.to_string(), format!("127.0.0.1:{}", 9000 + i)),
            (TAG_ID.to_string(), i.to_string()),
        ]),
        start_join_addrs: seeds,
        key,
    }
}

async fn status_of(m: &Membership, name: &str) -> Option<GossipStatus> {
    m.members()
        .await
        .into_iter()
        .find(|g| g.name == name)
        .map(|g| g.status)
}

async fn alive(m: &Membership) -> usize {
    m.members()
        .await
        .iter()
        .filter(|g| g.status == GossipStatus::Alive)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_with_tags_and_see_a_leaver_left_and_a_stopped_one_failed() {
    let first = Membership::start(config(1, vec![], None)).await.unwrap();
    let seed = vec![first.addr().to_string()];
    let second = Membership::start(config(2, seed.clone(), None))
        .await
        .unwrap();
    let third = Membership::start(config(3, seed, None)).await.unwrap();
    for m in [&first, &second, &third] {
        eventually(&format!("{} to see 3 alive", m.name()), || async {
            alive(m).await == 3
        })
        .await;
    }
    let seen = first.members().await;
    let two = seen.iter().find(|g| g.name == "node2").unwrap();
    assert_eq!(two.addr, second.addr());
    assert_eq!(two.raft_id(), Some(2));
    assert_eq!(two.tags[TAG_RPC_ADDR], "127.0.0.1:9002");
    assert_eq!(two.cluster_id(), None);

    // A tag set later reaches the others.
    second.set_tag(TAG_CLUSTER, "77").await.unwrap();
    eventually("node1 to see node2's cluster tag", || async {
        first
            .members()
            .await
            .iter()
            .any(|g| g.name == "node2" && g.cluster_id() == Some(77))
    })
    .await;

    // A graceful leave is seen as left.
    second.leave().await.unwrap();
    second.shutdown().await.unwrap();
    eventually("node1 to see node2 left", || async {
        status_of(&first, "node2").await == Some(GossipStatus::Left)
    })
    .await;

    // Stopping without a leave is seen as a failure, fast.
    let stopped = Instant::now();
    third.shutdown().await.unwrap();
    eventually("node1 to see node3 failed", || async {
        status_of(&first, "node3").await == Some(GossipStatus::Failed)
    })
    .await;
    let took = stopped.elapsed();
    let failed = first
        .members()
        .await
        .into_iter()
        .find(|g| g.name == "node3")
        .unwrap();
    assert!(failed.failed_since.is_some());
    assert!(
        took < Duration::from_secs(5),
        "failure detection took {took:?}"
    );
    first.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_with_a_key_admits_only_members_with_that_key() {
    let key = GossipKey::from_bytes([7; 32]);
    let first = Membership::start(config(1, vec![], Some(key.clone())))
        .await
        .unwrap();
    let seed = vec![first.addr().to_string()];
    let same = Membership::start(config(2, vec![], Some(key)))
        .await
        .unwrap();
    assert_eq!(same.join(&seed).await.unwrap(), 1);
    eventually("both to see each other", || async {
        alive(&first).await == 2 && alive(&same).await == 2
    })
    .await;

    let other = Membership::start(config(3, vec![], Some(GossipKey::from_bytes([8; 32]))))
        .await
        .unwrap();
    assert!(
        other.join(&seed).await.is_err(),
        "a wrong key must not join"
    );
    let plain = Membership::start(config(4, vec![], None)).await.unwrap();
    assert!(plain.join(&seed).await.is_err(), "no key must not join");
    assert_eq!(alive(&other).await, 1);
    assert!(first
        .members()
        .await
        .iter()
        .all(|g| g.name != "node3" && g.name != "node4"));
    for m in [first, same, other, plain] {
        m.shutdown().await.unwrap();
    }
}

#[test]
fn a_gossip_key_file_must_hold_base64_of_32_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gossip.key");
    // 32 bytes of 0x07, base64, with a trailing newline.
    std::fs::write(&path, "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n").unwrap();
    GossipKey::from_file(&path).unwrap();
    std::fs::write(&path, "BwcHBwcHBwcHBwcHBwcHBw==\n").unwrap();
    let short = GossipKey::from_file(&path).unwrap_err().to_string();
    assert!(
        short.contains("gossip.key") && short.contains("32 bytes"),
        "{short}"
    );
    std::fs::write(&path, "not base64!").unwrap();
    let bad = GossipKey::from_file(&path).unwrap_err().to_string();
    assert!(
        bad.contains("gossip.key") && bad.contains("base64"),
        "{bad}"
    );
    let missing = GossipKey::from_file(&dir.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("nope"), "{missing}");
}

#[test]
fn a_gossip_key_file_over_the_limit_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.log");
    // A valid key followed by a large tail: refused for its size, not
    // read whole and not parsed.
    let mut text = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n".to_string();
    text.push_str(&" ".repeat(1 << 20));
    std::fs::write(&path, &text).unwrap();
    let big = GossipKey::from_file(&path).unwrap_err().to_string();
    assert!(
        big.contains("big.log")
            && big.contains(&text.len().to_string())
            && big.contains(&GOSSIP_KEY_FILE_LIMIT.to_string()),
        "{big}"
    );
    // At the limit exactly it is still read (whitespace around the key).
    text.truncate(GOSSIP_KEY_FILE_LIMIT as usize);
    std::fs::write(&path, &text).unwrap();
    GossipKey::from_file(&path).unwrap();
    // An endless file has no size to name: "more than" the limit.
    let endless = GossipKey::from_file(Path::new("/dev/zero"))
        .unwrap_err()
        .to_string();
    assert!(
        endless.contains("/dev/zero") && endless.contains("more than 4096 bytes"),
        "{endless}"
    );
}

// ---- the reconcile plan ----

const REAP: Duration = Duration::from_secs(60);

fn raft(members: &[(u64, bool)]) -> ClusterStatus {
    ClusterStatus {
        id: 1,
        member: Member::new("node1", "127.0.0.1:9001"),
        term: 1,
        leader: Some(1),
        last_log_index: Some(1),
        applied_index: Some(1),
        members: members
            .iter()
            .map(|&(id, voter)| MemberStatus {
                id,
                member: Member::new(format!("node{id}"), format!("127.0.0.1:{}", 9000 + id)),
                voter,
                matched: None,
            })
            .collect(),
    }
}

fn gossip(
    id: u64,
    status: GossipStatus,
    cluster: Option<u64>,
    failed_since: Option<Instant>,
) -> GossipMember {
    let mut tags = BTreeMap::from([
        (TAG_RPC_ADDR.to_string(), format!("127.0.0.1:{}", 9000 + id)),
        (TAG_ID.to_string(), id.to_string()),
    ]);
    if let Some(c) = cluster {
        tags.insert(TAG_CLUSTER.to_string(), c.to_string());
    }
    GossipMember {
        name: format!("node{id}"),
        addr: SocketAddr::from(([127, 0, 0, 1], 8000 + id as u16)),
        status,
        tags,
        failed_since,
    }
}

fn add(id: u64) -> Option<Change> {
    Some(Change::Add {
        id,
        member: Member::new(format!("node{id}"), format!("127.0.0.1:{}", 9000 + id)),
    })
}

fn removes(change: Option<Change>) -> Option<u64> {
    match change {
        Some(Change::Remove { id, .. }) => Some(id),
        _ => None,
    }
}

#[test]
fn plan_adds_alive_members_not_yet_voters_and_only_of_this_cluster() {
    let now = Instant::now();
    let mut r = Reconciler::default();
    let me = gossip(1, GossipStatus::Alive, Some(5), None);
    let g = [me.clone(), gossip(2, GossipStatus::Alive, None, None)];
    assert_eq!(r.plan(&raft(&[(1, true)]), Some(5), &g, REAP, now), add(2));
    // A learner is promoted (add_voter does both steps).
    assert_eq!(
        r.plan(&raft(&[(1, true), (2, false)]), Some(5), &g, REAP, now),
        add(2)
    );
    // Already a voter: nothing to do.
    assert_eq!(
        r.plan(&raft(&[(1, true), (2, true)]), Some(5), &g, REAP, now),
        None
    );
    // A voter that moved (a new rpc_addr): added again, which updates
    // its address in Raft.
    let mut moved = gossip(2, GossipStatus::Alive, Some(5), None);
    moved
        .tags
        .insert(TAG_RPC_ADDR.to_string(), "10.0.0.2:8400".into());
    assert_eq!(
        r.plan(
            &raft(&[(1, true), (2, true)]),
            Some(5),
            &[me.clone(), moved],
            REAP,
            now
        ),
        Some(Change::Add {
            id: 2,
            member: Member::new("node2", "10.0.0.2:8400"),
        })
    );
    // Same cluster tag: added; another cluster's: never.
    let g = [me.clone(), gossip(3, GossipStatus::Alive, Some(5), None)];
    assert_eq!(r.plan(&raft(&[(1, true)]), Some(5), &g, REAP, now), add(3));
    let g = [me, gossip(4, GossipStatus::Alive, Some(6), None)];
    assert_eq!(r.plan(&raft(&[(1, true)]), Some(5), &g, REAP, now), None);
}

#[test]
fn plan_removes_a_member_failed_past_the_reap_timeout_or_left_but_never_itself() {
    let now = Instant::now();
    let mut r = Reconciler::default();
    let cluster = raft(&[(1, true), (2, true), (3, true)]);
    let me = gossip(1, GossipStatus::Alive, Some(5), None);
    let ok = gossip(3, GossipStatus::Alive, Some(5), None);
    let recent = gossip(2, GossipStatus::Failed, Some(5), Some(now - REAP / 2));
    assert_eq!(
        r.plan(
            &cluster,
            Some(5),
            &[me.clone(), recent, ok.clone()],
            REAP,
            now
        ),
        None
    );
    let old = gossip(2, GossipStatus::Failed, Some(5), Some(now - REAP));
    assert_eq!(
        removes(r.plan(&cluster, Some(5), &[me.clone(), old, ok.clone()], REAP, now)),
        Some(2)
    );
    let left = gossip(2, GossipStatus::Left, Some(5), None);
    assert_eq!(
        removes(r.plan(
            &cluster,
            Some(5),
            &[me.clone(), left.clone(), ok.clone()],
            REAP,
            now
        )),
        Some(2)
    );
    // Left and already removed: nothing.
    assert_eq!(
        r.plan(
            &raft(&[(1, true), (3, true)]),
            Some(5),
            &[me, left, ok],
            REAP,
            now
        ),
        None
    );
    // This node's own entry is never acted on, whatever gossip says.
    let me_failed = gossip(1, GossipStatus::Failed, Some(5), Some(now - REAP * 2));
    assert_eq!(
        r.plan(&raft(&[(1, true)]), Some(5), &[me_failed], REAP, now),
        None
    );
}

#[test]
fn plan_removes_a_stale_id_of_a_name_that_came_back_and_members_gossip_never_saw() {
    let now = Instant::now();
    let mut r = Reconciler::default();
    let me = gossip(1, GossipStatus::Alive, Some(5), None);
    // node2 was wiped and came back as id 9, same name.
    let mut back = gossip(9, GossipStatus::Alive, None, None);
    back.name = "node2".into();
    let cluster = raft(&[(1, true), (2, true)]);
    assert_eq!(
        removes(r.plan(&cluster, Some(5), &[me.clone(), back.clone()], REAP, now)),
        Some(2)
    );
    let change = r.plan(&raft(&[(1, true)]), Some(5), &[me.clone(), back], REAP, now);
    assert!(
        matches!(change, Some(Change::Add { id: 9, .. })),
        "{change:?}"
    );
    // node3 is in Raft but unknown to gossip: removed once the reap
    // timeout has passed since the leader first noticed.
    let cluster = raft(&[(1, true), (3, true)]);
    assert_eq!(
        r.plan(&cluster, Some(5), std::slice::from_ref(&me), REAP, now),
        None
    );
    assert_eq!(
        r.plan(
            &cluster,
            Some(5),
            std::slice::from_ref(&me),
            REAP,
            now + REAP / 2
        ),
        None
    );
    assert_eq!(
        removes(r.plan(&cluster, Some(5), &[me], REAP, now + REAP)),
        Some(3)
    );
}
