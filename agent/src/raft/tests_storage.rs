//! The Raft storage under concurrency and across snapshots: reads that do
//! not wait for applies, consumers that keep their watermark across a
//! snapshot install and retention, the snapshot served as a reader over
//! frozen files, and the Raft log's purge crash window.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};

use super::tests::{entry, membership};
use super::{Entry, LogId, Request, Response, StateMachine, TypeConfig};
use crate::log::LogConfig;
use crate::server::CommitError;

/// How long any single wait in these tests may take before it fails.
const DEADLINE: Duration = Duration::from_secs(20);

/// Tiny segments: a roll every few records.
fn tiny() -> LogConfig {
    LogConfig {
        max_store_bytes: 256,
        max_index_bytes: 16 + 12 * 4,
        prealloc_bytes: 64,
        ..LogConfig::default()
    }
}

fn log_id(index: u64) -> LogId {
    openraft::LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn append(records: Vec<Bytes>) -> EntryPayload<TypeConfig> {
    EntryPayload::Normal(Request::Append {
        records,
        producer: None,
        at_ms: 1,
    })
}

/// The record every test stores at `offset`.
fn value(offset: u64) -> Bytes {
    Bytes::from(format!("record-{offset:06}"))
}

fn values(from: u64, to: u64) -> Vec<Bytes> {
    (from..to).map(value).collect()
}

/// On a state machine from `leader_with_snapshot(_, 50)`: applies
/// `batches` entries of 5 records each (from offset 50 on, entries 2..),
/// then a `Retain` down to `lowest`.
async fn apply_batches_then_retain(sm: &mut StateMachine, batches: u64, lowest: u64) {
    for b in 0..batches {
        let from = 50 + b * 5;
        sm.apply(vec![entry(2 + b, append(values(from, from + 5)))])
            .await
            .unwrap();
    }
    sm.apply(vec![entry(
        2 + batches,
        EntryPayload::Normal(Request::Retain { lowest }),
    )])
    .await
    .unwrap();
}

/// Reads `from..to` on a consumer's terms: waits on the watermark at the
/// end of the log (as the server's ConsumeStream does), then reads.
async fn consume(sm: StateMachine, mut from: u64, to: u64) -> Vec<Bytes> {
    let mut watermark = sm.subscribe();
    let mut got = Vec::new();
    while from < to {
        while from >= *watermark.borrow_and_update() {
            watermark.changed().await.expect("the watermark lives on");
        }
        got.push(sm.read(from).expect("a record below the watermark reads"));
        from += 1;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_complete_while_an_apply_holds_the_apply_lock() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path(), tiny()).unwrap();
    sm.apply(vec![entry(0, append(values(0, 10)))])
        .await
        .unwrap();

    // A slow apply: the applied-state lock held on another thread.
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let holder = {
        let sm = sm.clone();
        std::thread::spawn(move || {
            let _guard = sm.hold_apply_lock();
            held_tx.send(()).unwrap();
            let _ = release_rx.recv();
        })
    };
    held_rx.recv_timeout(DEADLINE).unwrap();
    let mut applier = sm.clone();
    let apply =
        tokio::spawn(async move { applier.apply(vec![entry(1, append(values(10, 11)))]).await });

    // Reads run on their own thread so that a read stuck on the lock
    // fails the test by the deadline instead of hanging it.
    let (done_tx, done_rx) = mpsc::channel();
    let reader = sm.clone();
    std::thread::spawn(move || {
        let reads: Vec<_> = (0..11).map(|o| reader.read(o)).collect();
        let _ = done_tx.send((reads, reader.lowest_offset(), reader.next_offset()));
    });
    let (reads, lowest, next) = done_rx
        .recv_timeout(DEADLINE)
        .expect("reads completed while the apply lock was held");
    for (o, read) in reads.iter().take(10).enumerate() {
        assert_eq!(read.as_ref().unwrap(), &value(o as u64));
    }
    assert!(matches!(
        reads[10],
        Err(CommitError::OutOfRange {
            offset: 10,
            lowest: 0,
            next: 10
        })
    ));
    assert_eq!((lowest, next), (0, 10));
    assert!(!apply.is_finished(), "the apply waits for the lock");

    release_tx.send(()).unwrap();
    holder.join().unwrap();
    tokio::time::timeout(DEADLINE, apply)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(sm.read(10).unwrap(), value(10));
    assert_eq!(sm.next_offset(), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_while_applies_roll_segments_and_snapshots_build_are_all_correct() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path(), tiny()).unwrap();
    const BATCHES: u64 = 300;
    const PER_BATCH: u64 = 3;
    let reader = sm.clone();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let reads = std::thread::spawn(move || {
        let mut checked = 0u64;
        let mut probe = 0u64;
        loop {
            let stopping = stop_rx.try_recv().is_ok();
            let next = reader.next_offset();
            if next > 0 {
                // The newest record, and one spread over the rest.
                probe = (probe + 7919) % next;
                for o in [next - 1, probe] {
                    match reader.read(o) {
                        Ok(v) => assert_eq!(v, value(o), "offset {o}"),
                        Err(e) => panic!("read {o} below watermark {next}: {e}"),
                    }
                    checked += 1;
                }
            }
            if stopping {
                return checked;
            }
        }
    });
    let started = Instant::now();
    for b in 0..BATCHES {
        let first = b * PER_BATCH;
        sm.apply(vec![entry(b, append(values(first, first + PER_BATCH)))])
            .await
            .unwrap();
        if b % 50 == 49 {
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
        }
        assert!(started.elapsed() < 3 * DEADLINE, "applies too slow");
    }
    stop_tx.send(()).unwrap();
    let checked = reads.join().expect("every read was correct");
    assert!(checked > 0);
    assert!(sm.written().segments().len() > 100, "segments rolled");
    for o in 0..BATCHES * PER_BATCH {
        assert_eq!(sm.read(o).unwrap(), value(o));
    }
}

/// A leader state machine holding `count` records, with a snapshot built.
async fn leader_with_snapshot(dir: &std::path::Path, count: u64) -> StateMachine {
    leader_with_snapshot_in(dir, count, tiny()).await
}

/// [`leader_with_snapshot`] with the data log's settings given.
async fn leader_with_snapshot_in(
    dir: &std::path::Path,
    count: u64,
    config: LogConfig,
) -> StateMachine {
    let mut leader = StateMachine::open(dir, config).unwrap();
    leader
        .apply(vec![
            entry(0, membership()),
            entry(1, append(values(0, count))),
        ])
        .await
        .unwrap();
    leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    leader
}

/// Sends the leader's current snapshot to `follower` as openraft does over
/// the network: streamed into the follower's receiving form, installed.
async fn transfer(leader: &mut StateMachine, follower: &mut StateMachine) {
    let snap = leader.get_current_snapshot().await.unwrap().unwrap();
    let mut receiving = follower.begin_receiving_snapshot().await.unwrap();
    let mut source = snap.snapshot;
    tokio::io::copy(&mut source, &mut *receiving).await.unwrap();
    tokio::io::AsyncWriteExt::shutdown(&mut *receiving)
        .await
        .unwrap();
    follower
        .install_snapshot(&snap.meta, receiving)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_keeps_receiving_across_a_snapshot_install() {
    let leader_dir = tempfile::tempdir().unwrap();
    let mut leader = leader_with_snapshot(leader_dir.path(), 200).await;

    let follower_dir = tempfile::tempdir().unwrap();
    let mut follower = StateMachine::open(follower_dir.path(), tiny()).unwrap();
    follower
        .apply(vec![entry(0, append(values(0, 10)))])
        .await
        .unwrap();
    let old_log = follower.data();
    // A consumer at the end of the follower's log, waiting.
    let consumer = tokio::spawn(consume(follower.clone(), 10, 201));

    transfer(&mut leader, &mut follower).await;
    assert!(
        !std::sync::Arc::ptr_eq(&old_log, &follower.data()),
        "the install replaced the data log"
    );
    assert_eq!(follower.next_offset(), 200);
    follower
        .apply(vec![entry(2, append(values(200, 201)))])
        .await
        .unwrap();

    let got = tokio::time::timeout(DEADLINE, consumer)
        .await
        .expect("the consumer kept receiving after the install")
        .unwrap();
    assert_eq!(got, values(10, 201));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_keeps_receiving_across_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path(), tiny()).unwrap();
    sm.apply(vec![entry(0, append(values(0, 100)))])
        .await
        .unwrap();
    let consumer = tokio::spawn(consume(sm.clone(), 95, 110));
    let retained = sm
        .apply(vec![entry(
            1,
            EntryPayload::Normal(Request::Retain { lowest: 60 }),
        )])
        .await
        .unwrap();
    assert_eq!(retained, vec![Response::Retained { lowest: 60 }]);
    sm.apply(vec![entry(2, append(values(100, 110)))])
        .await
        .unwrap();
    let got = tokio::time::timeout(DEADLINE, consumer)
        .await
        .expect("the consumer kept receiving after retention")
        .unwrap();
    assert_eq!(got, values(95, 110));
    assert!(matches!(
        sm.read(59),
        Err(CommitError::OutOfRange {
            offset: 59,
            lowest: 60,
            next: 110
        })
    ));
    assert_eq!(sm.read(60).unwrap(), value(60));
}

/// Every file under `dir` with its length and inode: what a copy would
/// change.
fn listing(dir: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, (u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                todo.push(e.path());
            } else {
                out.insert(e.path(), (m.len(), m.ino()));
            }
        }
    }
    out
}

/// Bytes on disk of the distinct inodes under `dir`.
fn disk_use(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::BTreeSet::new();
    listing(dir)
        .keys()
        .map(|p| std::fs::metadata(p).unwrap())
        .filter(|m| seen.insert(m.ino()))
        .map(|m| m.blocks() * 512)
        .sum()
}

async fn read_all(mut data: Box<super::transfer::SnapshotData>) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut *data, &mut out)
        .await
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_the_current_snapshot_copies_nothing_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // No pre-writing: a background pre-write of the active store (which the
    // snapshot links) would change its length and blocks while we look.
    let no_prewrite = LogConfig {
        prealloc_bytes: 0,
        ..tiny()
    };
    let mut sm = leader_with_snapshot_in(dir.path(), 300, no_prewrite.clone()).await;
    let before = listing(dir.path());
    // Blocks of the snapshot's files only (all synced by the build): the
    // data log's index pages may still be written back meanwhile.
    let snapshots = dir.path().join("snapshots");
    let used = disk_use(&snapshots);
    let snap = sm.get_current_snapshot().await.unwrap().unwrap();
    let again = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(listing(dir.path()), before, "no file created or changed");
    assert_eq!(disk_use(&snapshots), used);
    assert!(!dir.path().join("snapshots/packed").exists());

    // Its size is the header, meta.json and the frozen store lengths.
    let file = super::snapshot::SnapshotDir::open(dir.path().join("snapshots"))
        .unwrap()
        .load_current()
        .unwrap()
        .unwrap();
    let frozen: u64 = file.files.iter().map(|f| 2 + 26 + 8 + f.len).sum();
    let bytes = read_all(snap.snapshot).await;
    let meta_len = serde_json::to_vec(&file).unwrap().len() as u64;
    assert_eq!(
        bytes.len() as u64,
        super::transfer::HEADER_LEN as u64 + 2 + 9 + 8 + meta_len + frozen
    );
    assert_eq!(read_all(again.snapshot).await, bytes);

    // openraft asks for the current snapshot at startup: still no copy.
    sm.close().await.unwrap();
    drop(sm);
    let mut sm = StateMachine::open(dir.path(), no_prewrite).unwrap();
    let before = listing(dir.path());
    let snap = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(listing(dir.path()), before);
    assert_eq!(read_all(snap.snapshot).await, bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_read_while_the_data_log_rolls_and_retains_yields_its_frozen_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = leader_with_snapshot(dir.path(), 50).await;
    let first = read_all(
        leader
            .get_current_snapshot()
            .await
            .unwrap()
            .unwrap()
            .snapshot,
    )
    .await;
    let lazy = leader.get_current_snapshot().await.unwrap().unwrap();

    // The data log appends past the frozen lengths, seals the active
    // segment (dropping its pre-written tail) and rolls many times, and
    // retention deletes the oldest segments.
    apply_batches_then_retain(&mut leader, 40, 150).await;
    assert!(
        leader.written().lowest_offset() > 0,
        "segments were deleted"
    );

    // Read the way openraft sends it: seek to the end, then chunks by
    // position (here backwards, to exercise seeking).
    let mut data = lazy.snapshot;
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let end = data.seek(std::io::SeekFrom::End(0)).await.unwrap();
    assert_eq!(end, first.len() as u64);
    let mut streamed = vec![0u8; end as usize];
    let chunk = 1000u64;
    let starts: Vec<u64> = (0..end).step_by(chunk as usize).collect();
    for &start in starts.iter().rev() {
        data.seek(std::io::SeekFrom::Start(start)).await.unwrap();
        let stop = (start + chunk).min(end);
        data.read_exact(&mut streamed[start as usize..stop as usize])
            .await
            .unwrap();
    }
    assert_eq!(streamed, first, "exactly the frozen bytes");
    assert_eq!(
        read_all(
            leader
                .get_current_snapshot()
                .await
                .unwrap()
                .unwrap()
                .snapshot
        )
        .await,
        first
    );

    // Installed elsewhere, it holds exactly the snapshot's records.
    let follower_dir = tempfile::tempdir().unwrap();
    let mut follower = StateMachine::open(follower_dir.path(), tiny()).unwrap();
    let meta = lazy.meta.clone();
    let mut receiving = follower.begin_receiving_snapshot().await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut *receiving, &streamed)
        .await
        .unwrap();
    follower.install_snapshot(&meta, receiving).await.unwrap();
    assert_eq!(follower.next_offset(), 50);
    for o in 0..50 {
        assert_eq!(follower.read(o).unwrap(), value(o));
    }
    assert!(follower.read(50).is_err());
    assert_eq!(
        follower.data().next_offset(),
        50,
        "nothing past the snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installed_stream_reproduces_the_records_and_bad_streams_are_refused() {
    let leader_dir = tempfile::tempdir().unwrap();
    let mut leader = leader_with_snapshot(leader_dir.path(), 120).await;
    let snap = leader.get_current_snapshot().await.unwrap().unwrap();
    let meta = snap.meta.clone();
    let good = read_all(snap.snapshot).await;

    let follower_dir = tempfile::tempdir().unwrap();
    let mut follower = StateMachine::open(follower_dir.path(), tiny()).unwrap();
    follower
        .apply(vec![entry(0, append(values(0, 3)))])
        .await
        .unwrap();
    let meta_at = super::transfer::HEADER_LEN + 2 + 9 + 8;
    let meta_len = u64::from_le_bytes(good[meta_at - 8..meta_at].try_into().unwrap()) as usize;
    let first_file = meta_at + meta_len;
    let mut bad: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut b = good.clone();
    b[0] ^= 1;
    bad.push(("bad magic", b));
    bad.push(("truncated", good[..good.len() - 1].to_vec()));
    let mut b = good.clone();
    b.push(0);
    bad.push(("trailing byte", b));
    // The first store entry renamed to a path outside the directory.
    let mut b = good.clone();
    b[first_file + 2..first_file + 2 + 26].copy_from_slice(b"../../../../../../../x.sto");
    bad.push(("path as name", b));
    // The first store entry claims one more byte than meta.json lists.
    let mut b = good.clone();
    let len_at = first_file + 2 + 26;
    let len = u64::from_le_bytes(b[len_at..len_at + 8].try_into().unwrap()) + 1;
    b[len_at..len_at + 8].copy_from_slice(&len.to_le_bytes());
    bad.push(("length mismatch", b));
    // Well-formed streams whose files are not a valid data log: a flipped
    // payload byte in the first (sealed) store and in the last (active)
    // one. The second would open, cut short of the snapshot's offsets.
    let payload = 2 + 26 + 8 + 16 + 16;
    let mut b = good.clone();
    b[first_file + payload] ^= 1;
    bad.push(("corrupt record in a sealed store", b));
    let mut b = good.clone();
    let at = b.len() - 2;
    b[at] ^= 1;
    bad.push(("corrupt record in the last store", b));
    for (what, bytes) in bad {
        let mut receiving = follower.begin_receiving_snapshot().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut *receiving, &bytes)
            .await
            .unwrap();
        assert!(
            follower.install_snapshot(&meta, receiving).await.is_err(),
            "{what} refused"
        );
        assert_eq!(follower.next_offset(), 3, "{what}: state unchanged");
        assert_eq!(follower.read(2).unwrap(), value(2));
    }
    // Nothing of the refused streams became current: a restart finds the
    // follower as it was.
    follower.close().await.unwrap();
    drop(follower);
    let mut follower = StateMachine::open(follower_dir.path(), tiny()).unwrap();
    assert_eq!(
        follower.next_offset(),
        0,
        "no snapshot: replayed from raft later"
    );

    let mut receiving = follower.begin_receiving_snapshot().await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut *receiving, &good)
        .await
        .unwrap();
    follower.install_snapshot(&meta, receiving).await.unwrap();
    for o in 0..120 {
        assert_eq!(follower.read(o).unwrap(), value(o));
    }
    // The follower serves the same snapshot on (e.g. to a third node).
    let served = follower.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(served.meta, meta);
    let third_dir = tempfile::tempdir().unwrap();
    let mut third = StateMachine::open(third_dir.path(), tiny()).unwrap();
    let mut receiving = third.begin_receiving_snapshot().await.unwrap();
    let mut source = served.snapshot;
    tokio::io::copy(&mut source, &mut *receiving).await.unwrap();
    third.install_snapshot(&meta, receiving).await.unwrap();
    assert_eq!(third.read(119).unwrap(), value(119));
    assert_eq!(third.next_offset(), 120);
}

fn blank(index: u64) -> Entry {
    entry(index, EntryPayload::Blank)
}

/// A crash between the purge's metadata update and the WAL reset leaves a
/// WAL that ends before the purge point; appends after the restart start
/// where the leader's entries start, with no padding (here the gap is
/// larger than any padding the old code allowed).
#[tokio::test]
async fn appends_work_after_a_crash_between_purge_metadata_and_reset() {
    use openraft::storage::RaftLogStorageExt;
    use openraft::RaftLogReader;
    for purged in [20u64, 5_000_000] {
        let dir = tempfile::tempdir().unwrap();
        let mut store = super::LogStore::open(dir.path(), tiny()).unwrap();
        store
            .blocking_append((0..10).map(blank).collect::<Vec<_>>())
            .await
            .unwrap();
        store.purge_metadata_only(log_id(purged)).await.unwrap();
        drop(store); // the crash: no reset, no close

        let mut store = super::LogStore::open(dir.path(), tiny()).unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(purged)));
        assert_eq!(state.last_log_id, Some(log_id(purged)));
        assert!(store.try_get_log_entries(0..10).await.unwrap().is_empty());

        let next: Vec<Entry> = (purged + 1..purged + 6).map(blank).collect();
        store.blocking_append(next.clone()).await.unwrap();
        assert_eq!(
            store.try_get_log_entries(0..u64::MAX).await.unwrap(),
            next,
            "purge point {purged}"
        );
        let entries_dir = dir.path().join("entries");
        let bytes: u64 = std::fs::read_dir(&entries_dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(bytes < 1 << 20, "no padding written ({bytes} bytes)");
        store.close().unwrap();
        drop(store);

        let mut store = super::LogStore::open(dir.path(), tiny()).unwrap();
        assert_eq!(
            store.get_log_state().await.unwrap().last_log_id,
            Some(log_id(purged + 5))
        );
        assert_eq!(store.try_get_log_entries(0..u64::MAX).await.unwrap(), next);
    }
}

#[tokio::test]
async fn entries_that_leave_a_hole_or_overlap_are_refused() {
    use openraft::storage::RaftLogStorageExt;
    use openraft::RaftLogReader;
    let dir = tempfile::tempdir().unwrap();
    let mut store = super::LogStore::open(dir.path(), tiny()).unwrap();
    let first: Vec<Entry> = (0..10).map(blank).collect();
    store.blocking_append(first.clone()).await.unwrap();
    assert!(store.blocking_append([blank(11)]).await.is_err(), "a hole");
    assert!(
        store.blocking_append([blank(5)]).await.is_err(),
        "an overlap"
    );
    assert_eq!(
        store.try_get_log_entries(0..u64::MAX).await.unwrap(),
        first,
        "nothing written by the refused appends"
    );
    // Purged past its end, the log starts where the next entries start.
    store.purge(log_id(9)).await.unwrap();
    store.blocking_append([blank(10)]).await.unwrap();
    assert!(store.blocking_append([blank(12)]).await.is_err(), "a hole");
    assert_eq!(
        store.try_get_log_entries(0..u64::MAX).await.unwrap(),
        vec![blank(10)]
    );
}

/// A crash inside an install, after the old data log was moved aside and
/// before the new one took its place, leaves no data log: open restores
/// it from the (already current) snapshot's store files, rebuilding their
/// indexes, and removes the leftovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_restores_the_data_log_after_a_crash_inside_an_install() {
    let leader_dir = tempfile::tempdir().unwrap();
    let mut leader = leader_with_snapshot(leader_dir.path(), 80).await;
    let dir = tempfile::tempdir().unwrap();
    let mut follower = StateMachine::open(dir.path(), tiny()).unwrap();
    transfer(&mut leader, &mut follower).await;
    follower.close().await.unwrap();
    drop(follower);
    let sm_dir = dir.path();
    std::fs::rename(sm_dir.join("data"), sm_dir.join("data.old")).unwrap();
    std::fs::create_dir(sm_dir.join("snapshots/installing")).unwrap();
    std::fs::write(sm_dir.join("snapshots/receiving"), b"half a stream").unwrap();

    let follower = StateMachine::open(sm_dir, tiny()).unwrap();
    assert_eq!(follower.next_offset(), 80);
    for o in 0..80 {
        assert_eq!(follower.read(o).unwrap(), value(o));
    }
    for leftover in ["data.old", "snapshots/installing", "snapshots/receiving"] {
        assert!(!sm_dir.join(leftover).exists(), "{leftover} removed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_in_transfer_survives_a_newer_snapshot_and_retention_removing_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = leader_with_snapshot(dir.path(), 50).await;
    let served = leader.get_current_snapshot().await.unwrap().unwrap();
    let mut lazy = served.snapshot;
    // The transfer has begun: part of the pack is read.
    use tokio::io::AsyncReadExt;
    let mut streamed = vec![0u8; 100];
    lazy.read_exact(&mut streamed).await.unwrap();
    // Meanwhile the node applies more, retention drops every record of
    // the old snapshot, and a newer snapshot replaces it (its directory,
    // and with it the old links, is removed).
    apply_batches_then_retain(&mut leader, 20, 140).await;
    leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let newer = leader.get_current_snapshot().await.unwrap().unwrap();
    assert_ne!(newer.meta.snapshot_id, served.meta.snapshot_id);
    assert!(
        leader.written().segments()[0].base >= 50,
        "every segment of the old snapshot was deleted"
    );
    // The transfer in progress still yields the old snapshot whole, and
    // it installs to exactly its records.
    lazy.read_to_end(&mut streamed).await.unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let mut follower = StateMachine::open(follower_dir.path(), tiny()).unwrap();
    let mut receiving = follower.begin_receiving_snapshot().await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut *receiving, &streamed)
        .await
        .unwrap();
    follower
        .install_snapshot(&served.meta, receiving)
        .await
        .unwrap();
    assert_eq!(follower.next_offset(), 50);
    for o in 0..50 {
        assert_eq!(follower.read(o).unwrap(), value(o));
    }
}

/// An apply answers before its records are written (the writer thread
/// writes them); the watermark waits for the write, and a read of an
/// answered offset waits for it too instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_an_answered_offset_waits_for_its_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path(), tiny()).unwrap();
    sm.apply(vec![entry(0, append(values(0, 5)))])
        .await
        .unwrap();
    assert_eq!(sm.read(4).unwrap(), value(4));

    let release = sm.stall_writer();
    let replies = sm
        .apply(vec![entry(1, append(values(5, 40)))])
        .await
        .unwrap();
    assert_eq!(
        replies,
        vec![Response::Appended {
            first_offset: 5,
            count: 35
        }]
    );
    assert_eq!(
        sm.next_offset(),
        5,
        "the watermark passed unwritten records"
    );
    let reader = sm.clone();
    let (tx, read) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(reader.read(39));
    });
    assert!(
        read.recv_timeout(Duration::from_millis(200)).is_err(),
        "read a record before it was written"
    );
    drop(release);
    assert_eq!(read.recv_timeout(DEADLINE).unwrap().unwrap(), value(39));
    assert_eq!(sm.next_offset(), 40);
    assert!(matches!(
        sm.read(40),
        Err(CommitError::OutOfRange { next: 40, .. })
    ));
}

/// A write the writer fails: the reads waiting for it get an error, not a
/// hang, and the state machine refuses the next apply (openraft stops).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_fails_its_readers_and_the_next_apply() {
    use crate::log::fs::{Faults, SimFs};
    let dir = tempfile::tempdir().unwrap();
    let disk = SimFs::new();
    let config = LogConfig {
        fs: std::sync::Arc::new(disk.clone()),
        ..tiny()
    };
    let mut sm = StateMachine::open(dir.path(), config).unwrap();
    sm.apply(vec![entry(0, append(values(0, 2)))])
        .await
        .unwrap();
    let _written = sm.written();
    disk.set_faults(Faults {
        write: true,
        ..Faults::default()
    });
    sm.apply(vec![entry(1, append(values(2, 4)))])
        .await
        .unwrap();
    let reader = sm.clone();
    let read = tokio::task::spawn_blocking(move || reader.read(3));
    let read = tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the read hung")
        .unwrap();
    assert!(matches!(read, Err(CommitError::Unavailable(_))), "{read:?}");
    assert!(sm.failure().is_some());
    assert!(sm
        .apply(vec![entry(2, append(values(4, 5)))])
        .await
        .is_err());
    assert_eq!(
        sm.read(1).unwrap(),
        value(1),
        "written records stay readable"
    );
}
