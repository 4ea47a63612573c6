//! Injected faults on the simulated disk: a failed write or fsync fails the
//! log for good, wakes every waiter, and makes nothing unsynced visible;
//! sync rounds in flight are fenced by truncation; two syncs under `Never`
//! both return.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::super::fs::{Faults, SimFs};
use super::super::segment::index_path;
use super::super::{Log, LogConfig, LogError, SyncPolicy};
use super::tiny;

const DEADLINE: Duration = Duration::from_secs(20);

fn sim(fs: &SimFs, sync: SyncPolicy) -> LogConfig {
    LogConfig {
        sync,
        fs: Arc::new(fs.clone()),
        ..tiny(4096, 64)
    }
}

/// Polls `cond` until it holds or the deadline passes.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn index_flags(fs: &SimFs, dir: &Path, base: u64) -> u16 {
    let bytes = fs.contents(&index_path(dir, base)).unwrap();
    u16::from_le_bytes([bytes[10], bytes[11]])
}

#[test]
fn a_failed_fsync_fails_the_log_for_good() {
    let fs = SimFs::new();
    let dir = PathBuf::from("/sim/fsync");
    let log = Log::open(&dir, sim(&fs, SyncPolicy::Always)).unwrap();
    assert_eq!(log.append(b"durable").unwrap(), 0);
    fs.set_faults(Faults {
        sync: true,
        ..Faults::default()
    });
    assert!(matches!(log.append(b"lost"), Err(LogError::SyncFailed)));
    assert!(log.is_failed());
    assert_eq!(log.next_offset(), 1, "the unsynced record stays invisible");
    // The disk answers again, but the kernel may have dropped the pages of
    // the failed sync: the log must not trust a later success.
    fs.set_faults(Faults::default());
    assert!(matches!(log.append(b"later"), Err(LogError::SyncFailed)));
    assert!(matches!(log.sync(), Err(LogError::SyncFailed)));
    assert!(matches!(
        block_on(log.wait_durable(1)),
        Err(LogError::SyncFailed)
    ));
    assert_eq!(log.read(0).unwrap(), b"durable", "reads keep working");
    assert!(matches!(log.close(), Err(LogError::SyncFailed)));
    assert_eq!(
        index_flags(&fs, &dir, 0),
        0,
        "no clean mark after a failure"
    );
    fs.crash(7);
    drop(log);
    let log = Log::open(&dir, sim(&fs, SyncPolicy::Always)).unwrap();
    assert_eq!(log.read(0).unwrap(), b"durable");
    assert!(log.next_offset() <= 2);
    assert_eq!(log.append(b"after restart").unwrap(), log.next_offset() - 1);
}

#[test]
fn a_failed_write_wakes_every_waiter() {
    let fs = SimFs::new();
    let dir = PathBuf::from("/sim/write");
    let log = Arc::new(Log::open(&dir, sim(&fs, SyncPolicy::Always)).unwrap());
    fs.hold_syncs(true);
    let (done_tx, done) = mpsc::channel();
    for i in 0..4u8 {
        let (log, done_tx) = (Arc::clone(&log), done_tx.clone());
        std::thread::spawn(move || {
            let _ = done_tx.send(log.append(&[i; 8]).map(|_| ()));
        });
    }
    {
        let (log, done_tx) = (Arc::clone(&log), done_tx.clone());
        std::thread::spawn(move || {
            let appended = log.append_batch_nowait(&[b"async"]).unwrap();
            let _ = done_tx.send(block_on(log.wait_durable(appended.next)));
        });
    }
    wait_until("a sync round in flight", || fs.held_syncs() >= 1);
    wait_until("every appender written", || log.written_offset() >= 5);
    fs.set_faults(Faults {
        write: true,
        ..Faults::default()
    });
    assert!(matches!(log.append(b"x"), Err(LogError::Io { .. })));
    assert!(log.is_failed());
    // The round is still held: the waiters must be woken by the failure.
    for _ in 0..5 {
        let result = done.recv_timeout(DEADLINE).expect("a waiter hung");
        assert!(matches!(result, Err(LogError::SyncFailed)), "{result:?}");
    }
    fs.hold_syncs(false);
    assert_eq!(log.next_offset(), 0, "nothing unsynced became visible");
}

#[test]
fn two_syncs_under_never_both_return() {
    let fs = SimFs::new();
    let dir = PathBuf::from("/sim/never");
    let log = Arc::new(Log::open(&dir, sim(&fs, SyncPolicy::Never)).unwrap());
    log.append(b"first").unwrap();
    fs.hold_syncs(true);
    let (done_tx, done) = mpsc::channel();
    let first = {
        let (log, done_tx) = (Arc::clone(&log), done_tx.clone());
        std::thread::spawn(move || done_tx.send(log.sync()))
    };
    wait_until("the first sync in flight", || fs.held_syncs() == 1);
    // Written after the round in flight started: it needs another round,
    // which nobody but the caller itself can run under Never.
    log.append(b"second").unwrap();
    let second = {
        let (log, done_tx) = (Arc::clone(&log), done_tx.clone());
        std::thread::spawn(move || done_tx.send(log.sync()))
    };
    wait_until("the second sync waiting", || log.sync_stats().waiting == 1);
    fs.hold_syncs(false);
    for _ in 0..2 {
        done.recv_timeout(DEADLINE).expect("a sync hung").unwrap();
    }
    first.join().unwrap().unwrap();
    second.join().unwrap().unwrap();
}

#[test]
fn truncation_fences_a_sync_round_in_flight() {
    let fs = SimFs::new();
    let dir = PathBuf::from("/sim/fence");
    let log = Log::open(&dir, sim(&fs, SyncPolicy::Always)).unwrap();
    fs.hold_syncs(true);
    let old: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 4]).collect();
    log.append_batch_nowait(&old).unwrap();
    wait_until("a round covering 10 records", || fs.held_syncs() == 1);
    log.truncate_suffix(2).unwrap();
    let new: Vec<Vec<u8>> = (0..3u8).map(|i| vec![100 + i; 4]).collect();
    let appended = log.append_batch_nowait(&new).unwrap();
    assert_eq!((appended.first, appended.next), (3, 6));
    fs.hold_syncs(false);
    block_on(log.wait_durable(6)).unwrap();
    // The round that started before the truncation must not have raised
    // the watermark to its old target.
    assert_eq!(log.next_offset(), 6);
    assert!(matches!(
        log.read(6),
        Err(LogError::OffsetOutOfRange { offset: 6 })
    ));
    for (i, record) in new.iter().enumerate() {
        assert_eq!(&log.read(3 + i as u64).unwrap(), record);
    }
    assert_eq!(log.read(2).unwrap(), old[2]);
}

/// A writer that syncs on its own thread (`append_batch_unsynced`, then
/// `sync_here`): its records become visible only once its fdatasync
/// completes, and a failed fdatasync fails that sync and the log.
#[test]
fn a_sync_on_the_writers_thread_publishes_after_its_fdatasync_or_fails_the_log() {
    let fs = SimFs::new();
    let dir = PathBuf::from("/sim/caller");
    let log = Arc::new(Log::open(&dir, sim(&fs, SyncPolicy::Always)).unwrap());

    fs.hold_syncs(true);
    let appended = log.append_batch_unsynced(&[b"one", b"two"]).unwrap();
    assert_eq!((appended.first, appended.next), (0, 2));
    let (tx, synced) = mpsc::channel();
    let writer = Arc::clone(&log);
    let thread = std::thread::spawn(move || {
        let _ = tx.send(writer.sync_here());
    });
    wait_until("the writer's fdatasync in flight", || fs.held_syncs() >= 1);
    assert!(synced.try_recv().is_err(), "returned before its fdatasync");
    assert_eq!(log.next_offset(), 0, "visible before its fdatasync");
    fs.hold_syncs(false);
    synced.recv_timeout(DEADLINE).unwrap().unwrap();
    thread.join().unwrap();
    assert_eq!(log.next_offset(), 2);
    assert_eq!(log.read(1).unwrap(), b"two");

    fs.set_faults(Faults {
        sync: true,
        ..Faults::default()
    });
    log.append_batch_unsynced(&[b"lost"]).unwrap();
    assert!(matches!(log.sync_here(), Err(LogError::SyncFailed)));
    assert!(log.is_failed());
    assert_eq!(log.next_offset(), 2, "the unsynced record stays invisible");
    assert!(matches!(
        log.append_batch_unsynced(&[b"after"]),
        Err(LogError::SyncFailed)
    ));
}
