//! The Raft node: produce deadlines, batch and snapshot bounds in bytes,
//! the producer bound it replicates, the sync policy, identity files.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::{ChangeMembers, EntryPayload, RaftLogReader};

use super::*;
use crate::log::{SegmentInfo, SyncPolicy};
use crate::raft::hops::{HopObserver, HOPS};

fn settings(dir: &Path) -> NodeSettings {
    super::router::node_settings(dir, "test")
}

/// Starts and bootstraps a node; waits until it leads.
async fn leader(settings: NodeSettings) -> RaftNode {
    let node = RaftNode::start(settings, NoNetwork).await.unwrap();
    node.bootstrap().await.unwrap();
    node.raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.current_leader == Some(node.id), "leading")
        .await
        .unwrap();
    node
}

async fn produce(node: &RaftNode, records: Vec<Bytes>) -> Result<(u64, u64), CommitError> {
    node.append(records, None).await?.await
}

/// Polls `check` until it holds, failing after 20 s.
async fn eventually(what: &str, check: impl FnMut() -> bool) {
    super::router::eventually_within(Duration::from_secs(20), what, check).await
}

#[test]
fn ids_are_never_zero() {
    for hash in [0, 1, 2, 3, u64::MAX] {
        assert_ne!(id_from_hash(hash), 0, "hash {hash}");
    }
    assert_eq!(id_from_hash(u64::MAX), u64::MAX >> 1);
}

#[tokio::test]
async fn produce_on_a_node_without_a_cluster_is_unavailable_within_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let node = RaftNode::start(
        NodeSettings {
            produce_timeout: Duration::from_millis(300),
            ..settings(dir.path())
        },
        NoNetwork,
    )
    .await
    .unwrap();
    assert_unavailable_by_deadline(&node).await;
    node.shutdown().await.unwrap();
}

/// A produce answers UNAVAILABLE, well within a generous outer bound.
async fn assert_unavailable_by_deadline(node: &RaftNode) {
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        produce(node, vec![Bytes::from_static(b"x")]),
    )
    .await
    .expect("produce gave up by its deadline");
    assert!(
        matches!(answer, Err(CommitError::Unavailable(_))),
        "{answer:?}"
    );
}

#[tokio::test]
async fn a_leader_cut_off_from_its_quorum_answers_unavailable_and_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let node = leader(NodeSettings {
        produce_timeout: Duration::from_millis(500),
        ..settings(dir.path())
    })
    .await;
    assert_eq!(
        produce(&node, vec![Bytes::from_static(b"a")])
            .await
            .unwrap(),
        (0, 1)
    );
    // A second voter that does not exist: the joint configuration needs it
    // for a quorum, so nothing commits any more while this node still
    // believes it leads (openraft 0.9 leaders never step down by themselves).
    node.raft
        .add_learner(2, Member::new("two", "127.0.0.1:2"), false)
        .await
        .unwrap();
    let raft = node.raft.clone();
    tokio::spawn(async move {
        let voters = ChangeMembers::AddVoterIds(BTreeSet::from([2]));
        let _ = raft.change_membership(voters, false).await;
    });
    // Once the joint configuration is in the log (an idle leader submits a
    // produce at once, so it could otherwise still commit alone).
    node.raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.membership_config.membership().voter_ids().any(|v| v == 2),
            "the joint configuration",
        )
        .await
        .unwrap();
    for _ in 0..3 {
        assert_unavailable_by_deadline(&node).await;
    }
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_batch_entry_stays_within_its_byte_cap_unless_one_request_is_larger() {
    let dir = tempfile::tempdir().unwrap();
    // Large entries are slow to encode in a debug build: a generous
    // deadline, so that only a wrong batch fails the test.
    let node = leader(NodeSettings {
        produce_timeout: Duration::from_secs(120),
        ..settings(dir.path())
    })
    .await;
    let mb = 1 << 20;
    // Seven 3 MiB requests at once: batched at most two to an entry (a
    // third would pass 8 MiB), then one 10 MiB request alone.
    let mut calls = Vec::new();
    for i in 0..7u8 {
        let node = node.clone();
        calls.push(tokio::spawn(async move {
            produce(&node, vec![vec![i; 3 * mb].into()]).await
        }));
    }
    for call in calls {
        call.await.unwrap().unwrap();
    }
    produce(&node, vec![vec![7; 10 * mb].into()]).await.unwrap();

    let mut reader = node.log.clone();
    let entries = reader.try_get_log_entries(0..u64::MAX).await.unwrap();
    let mut batches = 0;
    let mut largest = 0;
    for entry in entries {
        let EntryPayload::Normal(Request::Batch(requests)) = entry.payload else {
            continue;
        };
        let sizes: Vec<usize> = requests
            .iter()
            .map(|r| match r {
                Request::Append { records, .. } => records.iter().map(Bytes::len).sum(),
                _ => 0,
            })
            .collect();
        let total: usize = sizes.iter().sum();
        assert!(
            total <= MAX_BATCH_BYTES || sizes.len() == 1,
            "an entry of {} requests holds {total} bytes",
            sizes.len()
        );
        largest = largest.max(total);
        batches += 1;
    }
    assert!(batches >= 5, "8 requests in at least 5 entries: {batches}");
    assert_eq!(largest, 10 * mb, "the oversized request went alone");
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_snapshot_is_taken_after_enough_bytes_even_below_the_entry_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let node = leader(NodeSettings {
        snapshot_threshold: 1_000_000,
        snapshot_threshold_bytes: 256 << 10,
        ..settings(dir.path())
    })
    .await;
    assert_eq!(node.raft.metrics().borrow().snapshot, None);
    for _ in 0..40 {
        produce(&node, vec![vec![1; 8 << 10].into()]).await.unwrap();
    }
    let metrics = node.raft.metrics();
    eventually("a snapshot", || metrics.borrow().snapshot.is_some()).await;
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_leader_replicates_its_producer_bound() {
    let dir = tempfile::tempdir().unwrap();
    let node = leader(NodeSettings {
        max_producers: 2,
        ..settings(dir.path())
    })
    .await;
    let named = |p: &str| Some((p.to_string(), 0));
    let first = node
        .append(vec![Bytes::from_static(b"a")], named("a"))
        .await
        .unwrap()
        .await
        .unwrap();
    for p in ["b", "c"] {
        node.append(vec![Bytes::copy_from_slice(p.as_bytes())], named(p))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // "a" was the least recently used of three with room for two: its
    // retry is new again. "c" is remembered.
    let retry_a = node
        .append(vec![Bytes::from_static(b"a")], named("a"))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_ne!(retry_a, first);
    let retry_c = node
        .append(vec![Bytes::from_static(b"c")], named("c"))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(retry_c, (2, 1));
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_sync_interval_a_produce_is_acknowledged_before_the_interval_sync() {
    let dir = tempfile::tempdir().unwrap();
    let base = settings(dir.path());
    let node = leader(NodeSettings {
        log: LogConfig {
            sync: SyncPolicy::Interval(Duration::from_secs(3600)),
            ..base.log.clone()
        },
        ..base
    })
    .await;
    let acked = tokio::time::timeout(
        Duration::from_secs(10),
        produce(&node, vec![Bytes::from_static(b"x")]),
    )
    .await
    .expect("acknowledged without waiting an hour for the sync");
    assert_eq!(acked.unwrap(), (0, 1));
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_cluster_id_is_made_at_bootstrap_and_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let node = RaftNode::start(settings(dir.path()), NoNetwork)
        .await
        .unwrap();
    assert_eq!(node.cluster_id(), None);
    assert!(node.bootstrap().await.unwrap());
    let cluster = node.cluster_id().expect("set at bootstrap");
    assert_ne!(cluster, 0);
    node.shutdown().await.unwrap();
    drop(node);

    let node = RaftNode::start(settings(dir.path()), NoNetwork)
        .await
        .unwrap();
    assert_eq!(node.cluster_id(), Some(cluster));
    assert!(!node.bootstrap().await.unwrap(), "a no-op");
    assert_eq!(node.cluster_id(), Some(cluster));
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn after_a_failed_write_the_node_stops_for_good_and_refuses_produces() {
    use crate::log::fs::{Faults, SimFs};
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("raft")).unwrap();
    let disk = SimFs::new();
    let base = settings(dir.path());
    let node = leader(NodeSettings {
        log: LogConfig {
            fs: Arc::new(disk.clone()),
            ..base.log.clone()
        },
        produce_timeout: Duration::from_secs(3),
        ..base
    })
    .await;
    assert_eq!(
        produce(&node, vec![Bytes::from_static(b"a")])
            .await
            .unwrap(),
        (0, 1)
    );
    assert_eq!(node.failure(), None);

    disk.set_faults(Faults {
        write: true,
        ..Faults::default()
    });
    let failed = tokio::time::timeout(
        Duration::from_secs(20),
        produce(&node, vec![Bytes::from_static(b"b")]),
    )
    .await
    .expect("produce answered instead of hanging");
    assert!(failed.is_err(), "{failed:?}");
    let mut watch = node.failure_watch();
    tokio::time::timeout(Duration::from_secs(20), watch.wait_for(Option::is_some))
        .await
        .expect("the failure is published")
        .unwrap();
    // Raft stopped: this node no longer leads.
    assert!(node.raft.metrics().borrow().running_state.is_err());
    // The fault is gone, but the node stays failed until restarted.
    disk.set_faults(Faults::default());
    let started = Instant::now();
    let again = produce(&node, vec![Bytes::from_static(b"c")]).await;
    assert!(
        matches!(again, Err(CommitError::Unavailable(_))),
        "{again:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let _ = node.shutdown().await;
}

#[test]
fn bytes_since_a_mark_count_later_segments_and_survive_retention() {
    let seg = |base, bytes| SegmentInfo {
        base,
        next: base + 10,
        bytes,
        modified: None,
    };
    let at_mark = [seg(0, 100), seg(10, 40)];
    let mark = end_mark(&at_mark);
    assert_eq!(bytes_since(&at_mark, mark), 0);
    let grown = [seg(0, 100), seg(10, 100), seg(20, 70)];
    assert_eq!(bytes_since(&grown, mark), 60 + 70);
    // Retention dropped the marked segment: counted low, never wrapped.
    let retained = [seg(20, 70)];
    assert_eq!(bytes_since(&retained, mark), 30);
    assert_eq!(bytes_since(&[], mark), 0);
}

/// A read outside the records held names its side and the bounds; a read
/// past the end before the node replayed its Raft log stays UNAVAILABLE,
/// while one below the lowest offset is OUT_OF_RANGE either way.
#[tokio::test]
async fn reads_outside_the_range_say_which_side_and_replay_stays_unavailable() {
    use crate::raft::tests::entry;
    use openraft::storage::RaftStateMachine;
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path(), LogConfig::default()).unwrap();
    let append = |n: u64| {
        EntryPayload::Normal(Request::Append {
            records: (0..n).map(|i| Bytes::from(vec![i as u8])).collect(),
            producer: None,
            at_ms: 1,
        })
    };
    sm.apply(vec![
        entry(1, append(10)),
        entry(2, EntryPayload::Normal(Request::Retain { lowest: 4 })),
    ])
    .await
    .unwrap();
    let caught_up = AtomicBool::new(true);
    let range = |r: Result<Vec<Bytes>, CommitError>| match r {
        Err(e @ CommitError::OutOfRange { .. }) => {
            let CommitError::OutOfRange { lowest, next, .. } = e else {
                unreachable!()
            };
            (e.to_string(), lowest, next)
        }
        other => panic!("expected OutOfRange, got {other:?}"),
    };
    assert_eq!(
        range(read_applied(&sm, &caught_up, 3, 1)),
        (
            "offset 3 was removed by retention: the log starts at offset 4".into(),
            4,
            10
        )
    );
    assert_eq!(
        range(read_applied(&sm, &caught_up, 10, 1)),
        (
            "offset 10 is past the end of the log (next offset 10)".into(),
            4,
            10
        )
    );
    assert_eq!(
        read_applied(&sm, &caught_up, 4, 2).unwrap(),
        [&[4][..], &[5]]
    );
    // Replaying after a restart: past the end is not known to be the end.
    caught_up.store(false, Ordering::Release);
    assert!(matches!(
        read_applied(&sm, &caught_up, 10, 1),
        Err(CommitError::Unavailable(_))
    ));
    assert_eq!(range(read_applied(&sm, &caught_up, 0, 1)).1, 4);
}

/// Keeps every report of hops.
#[derive(Debug, Default)]
struct Hops(std::sync::Mutex<Vec<[Duration; HOPS.len()]>>);

impl HopObserver for Hops {
    fn hops(&self, hops: &[Duration; HOPS.len()]) {
        self.0.lock().unwrap().push(*hops);
    }
}

#[tokio::test]
async fn each_proposed_entry_reports_its_hops_within_its_produce_time() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Hops::default());
    let node = leader(NodeSettings {
        hop_observer: Some(Arc::clone(&seen) as Arc<dyn HopObserver>),
        ..settings(dir.path())
    })
    .await;
    // One at a time: each produce is one entry, submitted directly.
    for i in 0..5u64 {
        let started = std::time::Instant::now();
        assert_eq!(
            produce(&node, vec![Bytes::from_static(b"r")])
                .await
                .unwrap(),
            (i, 1)
        );
        let took = started.elapsed();
        let seen = seen.0.lock().unwrap();
        assert_eq!(seen.len() as u64, i + 1, "one report per entry");
        let hops = seen[i as usize];
        assert!(hops.iter().sum::<Duration>() <= took, "{hops:?} > {took:?}");
        // The sync hop holds the fdatasync (SyncPolicy::Always).
        assert!(hops[2] > Duration::ZERO, "{hops:?}");
    }
    // Concurrent producers: entries through the propose loop report too,
    // one report per entry (never more than the requests).
    let producers: Vec<_> = (0..32)
        .map(|_| {
            let node = node.clone();
            tokio::spawn(async move {
                produce(&node, vec![Bytes::from_static(b"c")])
                    .await
                    .unwrap()
            })
        })
        .collect();
    for p in producers {
        p.await.unwrap();
    }
    let reports = seen.0.lock().unwrap().len();
    assert!((6..=5 + 32).contains(&reports), "{reports} reports");
    node.shutdown().await.unwrap();
}
