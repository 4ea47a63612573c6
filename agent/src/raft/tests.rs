//! openraft's storage suite on our log store and state machine, and the
//! offset and idempotence rules of the state machine.

use bytes::Bytes;
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftSnapshotBuilder};

use super::{Entry, LogId, LogStore, Request, Response, StateMachine, StorageError, TypeConfig};
use crate::log::LogConfig;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::open(&dir.path().join("raft"), small()).unwrap();
        let sm = StateMachine::open(&dir.path().join("sm"), small()).unwrap();
        Ok((dir, log, sm))
    }
}

fn small() -> LogConfig {
    LogConfig {
        max_store_bytes: 4096,
        max_index_bytes: 16 + 12 * 8,
        prealloc_bytes: 1024,
        ..LogConfig::default()
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).unwrap();
}

fn log_id(term: u64, index: u64) -> LogId {
    openraft::LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// An entry of term 1 at `index` (shared with the storage tests).
pub(super) fn entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry {
    Entry {
        log_id: log_id(1, index),
        payload,
    }
}

fn append(records: &[&[u8]], producer: Option<(&str, u64)>) -> EntryPayload<TypeConfig> {
    EntryPayload::Normal(Request::Append {
        records: records.iter().map(|r| Bytes::copy_from_slice(r)).collect(),
        producer: producer.map(|(p, s)| (p.to_string(), s)),
        at_ms: 1,
    })
}

/// A one-voter membership (node 1).
pub(super) fn membership() -> EntryPayload<TypeConfig> {
    EntryPayload::Membership(Membership::new(vec![[1u64].into_iter().collect()], None))
}

#[tokio::test]
async fn offsets_are_dense_across_blank_and_membership_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path(), small()).unwrap();
    let replies = sm
        .apply(vec![
            entry(0, membership()),
            entry(1, EntryPayload::Blank),
            entry(2, append(&[b"a", b"b"], None)),
            entry(3, EntryPayload::Blank),
            entry(4, append(&[b"c"], None)),
        ])
        .await
        .unwrap();
    assert_eq!(
        replies[2],
        Response::Appended {
            first_offset: 0,
            count: 2
        }
    );
    assert_eq!(
        replies[4],
        Response::Appended {
            first_offset: 2,
            count: 1
        }
    );
    assert_eq!(sm.written().read(2).unwrap(), &b"c"[..]);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 4)));
}

#[tokio::test]
async fn a_retried_sequence_appends_once_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path(), small()).unwrap();
    let first = sm
        .apply(vec![entry(0, append(&[b"x", b"y"], Some(("p", 0))))])
        .await
        .unwrap();
    let retry = sm
        .apply(vec![entry(1, append(&[b"x", b"y"], Some(("p", 0))))])
        .await
        .unwrap();
    assert_eq!(first, retry);
    assert_eq!(sm.written().next_offset(), 2);
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    // Entries after the snapshot are replayed from the Raft log on restart.
    sm.apply(vec![entry(2, append(&[b"z"], Some(("p", 1))))])
        .await
        .unwrap();
    drop(sm);

    let mut sm = StateMachine::open(dir.path(), small()).unwrap();
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 1)));
    assert_eq!(sm.written().next_offset(), 2, "cut back to the snapshot");
    let replay = sm
        .apply(vec![entry(2, append(&[b"z"], Some(("p", 1))))])
        .await
        .unwrap();
    assert_eq!(
        replay,
        vec![Response::Appended {
            first_offset: 2,
            count: 1
        }]
    );
    let again = sm
        .apply(vec![entry(3, append(&[b"x", b"y"], Some(("p", 0))))])
        .await
        .unwrap();
    assert_eq!(again, first, "the producer table survived in the snapshot");
    assert_eq!(sm.written().next_offset(), 3);
}

#[tokio::test]
async fn an_installed_snapshot_carries_records_and_the_next_offset() {
    let leader_dir = tempfile::tempdir().unwrap();
    let mut leader = StateMachine::open(leader_dir.path(), small()).unwrap();
    let records: Vec<Vec<u8>> = (0..200u32).map(|i| i.to_le_bytes().to_vec()).collect();
    let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    leader
        .apply(vec![entry(0, membership()), entry(1, append(&refs, None))])
        .await
        .unwrap();
    leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    // As openraft does when it sends a snapshot: the current one, streamed.
    let snap = leader.get_current_snapshot().await.unwrap().unwrap();

    let follower_dir = tempfile::tempdir().unwrap();
    let mut follower = StateMachine::open(follower_dir.path(), small()).unwrap();
    let mut receiving = follower.begin_receiving_snapshot().await.unwrap();
    let mut source = snap.snapshot;
    tokio::io::copy(&mut source, &mut *receiving).await.unwrap();
    follower
        .install_snapshot(&snap.meta, receiving)
        .await
        .unwrap();

    assert_eq!(
        follower.applied_state().await.unwrap().0,
        Some(log_id(1, 1))
    );
    for (i, r) in records.iter().enumerate() {
        assert_eq!(&follower.data().read(i as u64).unwrap(), r);
    }
    let next = follower
        .apply(vec![entry(2, append(&[b"after"], None))])
        .await
        .unwrap();
    assert_eq!(
        next,
        vec![Response::Appended {
            first_offset: 200,
            count: 1
        }]
    );
}

#[tokio::test]
async fn retention_drops_old_records_on_apply() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path(), small()).unwrap();
    let records: Vec<Vec<u8>> = (0..100u32).map(|i| vec![i as u8; 50]).collect();
    let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    sm.apply(vec![entry(0, append(&refs, None))]).await.unwrap();
    let reply = sm
        .apply(vec![entry(
            1,
            EntryPayload::Normal(Request::Retain { lowest: 60 }),
        )])
        .await
        .unwrap();
    assert_eq!(reply, vec![Response::Retained { lowest: 60 }]);
    assert_eq!(sm.lowest_offset(), 60);
    assert!(
        sm.written().lowest_offset() <= 60 && sm.data().lowest_offset() > 0,
        "whole segments went"
    );
    assert_eq!(sm.written().read(60).unwrap(), records[60]);
}

#[tokio::test]
async fn the_log_store_keeps_its_vote_entries_and_purge_point_across_reopen() {
    use openraft::storage::RaftLogStorageExt;
    use openraft::RaftLogReader;
    let dir = tempfile::tempdir().unwrap();
    let mut store = LogStore::open(dir.path(), small()).unwrap();
    let vote = openraft::Vote::new(3, 1);
    store.save_vote(&vote).await.unwrap();
    let entries: Vec<Entry> = (0..40).map(|i| entry(i, append(&[b"r"], None))).collect();
    store.blocking_append(entries.clone()).await.unwrap();
    store.purge(log_id(1, 9)).await.unwrap();
    store.truncate(log_id(1, 30)).await.unwrap();
    store.save_committed(Some(log_id(1, 25))).await.unwrap();
    store.close().unwrap();
    drop(store);

    let mut store = LogStore::open(dir.path(), small()).unwrap();
    assert_eq!(store.read_vote().await.unwrap(), Some(vote));
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 25)));
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 9)));
    assert_eq!(state.last_log_id, Some(log_id(1, 29)));
    let read = store.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(read, entries[10..30].to_vec());
    // Appends continue after the truncation point.
    store
        .blocking_append([entry(30, EntryPayload::Blank)])
        .await
        .unwrap();
    assert_eq!(
        store.get_log_state().await.unwrap().last_log_id,
        Some(log_id(1, 30))
    );
}

#[tokio::test]
async fn a_batch_entry_answers_each_request_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path(), small()).unwrap();
    let one = |records: &[&[u8]], producer: Option<(&str, u64)>| match append(records, producer) {
        EntryPayload::Normal(req) => req,
        _ => unreachable!("append builds a normal entry"),
    };
    let appended = |first_offset, count| Response::Appended {
        first_offset,
        count,
    };
    let batch = Request::Batch(vec![
        one(&[b"a"], None),
        one(&[b"b", b"c"], Some(("p", 1))),
        one(&[b"b", b"c"], Some(("p", 1))),
        one(&[b"d"], None),
    ]);
    let replies = sm
        .apply(vec![entry(0, EntryPayload::Normal(batch))])
        .await
        .unwrap();
    assert_eq!(
        replies,
        vec![Response::Batch(vec![
            appended(0, 1),
            appended(1, 2),
            appended(1, 2),
            appended(3, 1),
        ])]
    );
    // The accepted records are in the data log, in order, each once.
    let logged: Vec<Vec<u8>> = (0..4).map(|o| sm.written().read(o).unwrap()).collect();
    assert_eq!(logged, [&b"a"[..], b"b", b"c", b"d"]);

    // A request that is not an append (the propose loop never batches one)
    // is applied in its place: the records before it are written first,
    // those after it get the offsets that follow.
    let batch = Request::Batch(vec![
        one(&[b"e"], None),
        Request::Retain { lowest: 2 },
        one(&[b"f"], Some(("p", 2))),
    ]);
    let replies = sm
        .apply(vec![entry(1, EntryPayload::Normal(batch))])
        .await
        .unwrap();
    assert_eq!(
        replies,
        vec![Response::Batch(vec![
            appended(4, 1),
            Response::Retained { lowest: 2 },
            appended(5, 1),
        ])]
    );
    assert_eq!(sm.lowest_offset(), 2);
    assert_eq!(sm.written().read(5).unwrap(), &b"f"[..]);
}

#[tokio::test]
async fn a_saved_vote_and_purge_point_survive_a_power_cut_whole() {
    use crate::log::fs::SimFs;
    use openraft::storage::RaftLogStorageExt;
    for seed in 0..16 {
        let disk = SimFs::new();
        let config = LogConfig {
            fs: std::sync::Arc::new(disk.clone()),
            ..small()
        };
        let dir = std::path::Path::new("/sim/raft");
        let mut store = LogStore::open(dir, config.clone()).unwrap();
        let entries: Vec<Entry> = (0..20).map(|i| entry(i, append(&[b"r"], None))).collect();
        store.blocking_append(entries).await.unwrap();
        store.save_vote(&openraft::Vote::new(2, 1)).await.unwrap();
        store.purge(log_id(1, 4)).await.unwrap();
        let vote = openraft::Vote::new(5, 1);
        store.save_vote(&vote).await.unwrap();
        // The power goes: no close, nothing written after the last save.
        disk.crash(seed);
        drop(store);
        let mut store = LogStore::open(dir, config).unwrap();
        assert_eq!(store.read_vote().await.unwrap(), Some(vote), "seed {seed}");
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 4)), "seed {seed}");
        assert_eq!(state.last_log_id, Some(log_id(1, 19)), "seed {seed}");
    }
}

/// The Raft log's writer thread: entries handed to it are readable at once
/// (openraft replicates them while they are written), also those the
/// recent entries no longer hold while they still wait behind a sync; no
/// append is flushed before the fdatasync that covers it, and what was
/// flushed survives a power cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_entries_are_readable_and_flushed_only_once_synced() {
    use crate::log::fs::SimFs;
    use openraft::storage::RaftLogStorageExt;
    use openraft::RaftLogReader;
    async fn poll(what: &str, mut check: impl AsyncFnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !check().await {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    let disk = SimFs::new();
    let config = LogConfig {
        fs: std::sync::Arc::new(disk.clone()),
        prealloc_bytes: 0,
        ..LogConfig::default()
    };
    let dir = std::path::Path::new("/sim/writer");
    let store = LogStore::open(dir, config.clone()).unwrap();
    disk.hold_syncs(true);
    let mut first = store.clone();
    let one = tokio::spawn(async move {
        first
            .blocking_append([entry(0, append(&[b"a"], None))])
            .await
    });
    poll("the first append's fdatasync in flight", async || {
        disk.held_syncs() >= 1
    })
    .await;
    // More entries than the recent ones keep queue behind that sync.
    let many: Vec<Entry> = (1..5001).map(|i| entry(i, append(&[b"b"], None))).collect();
    let (mut second, expected) = (store.clone(), many.clone());
    let two = tokio::spawn(async move { second.blocking_append(many).await });
    let mut reader = store.clone();
    poll("the second append accepted", async || {
        reader.try_get_log_entries(4990..5001).await.unwrap().len() == 11
    })
    .await;
    // Evicted from the recent entries and not yet written: the read waits
    // for the writer (a read that does not wait would fail or come back
    // short at once).
    let mut early = store.clone();
    let mut evicted = tokio::spawn(async move { early.try_get_log_entries(1..101).await });
    let waited = std::time::Duration::from_millis(200);
    assert!(
        tokio::time::timeout(waited, &mut evicted).await.is_err(),
        "read entries the writer has not written"
    );
    assert!(!one.is_finished(), "flushed before its fdatasync");
    assert!(!two.is_finished(), "flushed before its fdatasync");
    disk.hold_syncs(false);
    one.await.unwrap().unwrap();
    two.await.unwrap().unwrap();
    assert_eq!(evicted.await.unwrap().unwrap(), expected[..100]);

    disk.crash(7);
    drop((store, reader));
    let mut store = LogStore::open(dir, config).unwrap();
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(1, 5000)));
    assert_eq!(
        store.try_get_log_entries(0..5001).await.unwrap()[1..],
        expected[..]
    );
}

/// Whether `part` lies inside `whole`'s memory.
fn within(part: &Bytes, whole: &Bytes) -> bool {
    let range = whole.as_ptr_range();
    range.start <= part.as_ptr() && part.as_ptr() < range.end
}

#[test]
fn small_requests_are_copied_off_their_receive_buffer_and_large_ones_are_not() {
    // A receive buffer, and records sliced from it as prost decodes them.
    let received = Bytes::from((0..200_000u32).map(|i| i as u8).collect::<Vec<_>>());
    let small = vec![
        received.slice(10..110),
        received.slice(200..200),
        received.slice(300..350),
    ];
    let owned = super::own_records(small.clone());
    assert_eq!(owned, small);
    for record in owned.iter().filter(|r| !r.is_empty()) {
        assert!(
            !within(record, &received),
            "a small record still pins the receive buffer"
        );
    }
    // One allocation for the request: the records are contiguous in it.
    assert_eq!(owned[0].as_ptr_range().end, owned[2].as_ptr());

    let large = vec![received.slice(0..60_000), received.slice(100_000..110_000)];
    let kept = super::own_records(large.clone());
    assert_eq!(kept, large);
    assert!(
        kept.iter().all(|r| within(r, &received)),
        "a large request was copied"
    );
}
