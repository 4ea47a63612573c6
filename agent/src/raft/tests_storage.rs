//! The Raft storage under concurrency and across snapshots: reads that do
//! not wait for applies, consumers that keep their watermark across a
//! snapshot install and retention, the snapshot served as a reader over
//! frozen files, and the Raft log's purge crash window.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftSnapshotBuilder};

use super::{Entry, LogId, Request, Response, StateMachine, TypeConfig};
use crate::log::{LogConfig, LogError};

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

fn entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry {
    Entry {
        log_id: log_id(index),
        payload,
    }
}

fn append(records: Vec<Vec<u8>>) -> EntryPayload<TypeConfig> {
    EntryPayload::Normal(Request::Append {
        records,
        producer: None,
        at_ms: 1,
    })
}

fn membership() -> EntryPayload<TypeConfig> {
    EntryPayload::Membership(Membership::new(vec![[1u64].into_iter().collect()], None))
}

/// The record every test stores at `offset`.
fn value(offset: u64) -> Vec<u8> {
    format!("record-{offset:06}").into_bytes()
}

fn values(from: u64, to: u64) -> Vec<Vec<u8>> {
    (from..to).map(value).collect()
}

/// Reads `from..to` on a consumer's terms: waits on the watermark at the
/// end of the log (as the server's ConsumeStream does), then reads.
async fn consume(sm: StateMachine, mut from: u64, to: u64) -> Vec<Vec<u8>> {
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
        Err(LogError::OffsetOutOfRange { offset: 10 })
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
        assert!(started.elapsed() < DEADLINE, "applies too slow");
    }
    stop_tx.send(()).unwrap();
    let checked = reads.join().expect("every read was correct");
    assert!(checked > 0);
    assert!(sm.data().segments().len() > 100, "segments rolled");
    for o in 0..BATCHES * PER_BATCH {
        assert_eq!(sm.read(o).unwrap(), value(o));
    }
}

/// A leader state machine holding `count` records, with a snapshot built.
async fn leader_with_snapshot(dir: &std::path::Path, count: u64) -> StateMachine {
    let mut leader = StateMachine::open(dir, tiny()).unwrap();
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
        Err(LogError::OffsetOutOfRange { offset: 59 })
    ));
    assert_eq!(sm.read(60).unwrap(), value(60));
}
