//! Tests of the WAL: the book's tests ported, recovery from torn and corrupt
//! tails, a model-based proptest, power loss and injected faults on a
//! simulated disk, and a SIGKILL crash test in a child process.

mod book;
mod crash;
mod faults;
mod model;
mod power;
mod recovery;

use std::path::Path;

use super::{Log, LogConfig, SyncPolicy};

/// A config with tiny segments so tests cross segment boundaries.
pub(super) fn tiny(max_store_bytes: u64, entries_per_index: u64) -> LogConfig {
    LogConfig {
        max_store_bytes,
        max_index_bytes: super::index::HEADER_LEN + entries_per_index * super::index::ENTRY_LEN,
        prealloc_bytes: 256,
        ..LogConfig::default()
    }
}

/// Copies every file of `from` into `to`: with the log still open this is
/// what a SIGKILL leaves behind (the page cache survives, the clean flags
/// are not written).
pub(super) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Reads every offset from lowest to next and returns the records.
pub(super) fn read_all(log: &Log) -> Vec<Vec<u8>> {
    (log.lowest_offset()..log.next_offset())
        .map(|o| log.read(o).unwrap())
        .collect()
}

#[test]
fn interval_policy_shows_records_only_after_a_sync() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        sync: SyncPolicy::Interval(std::time::Duration::from_secs(3600)),
        ..LogConfig::default()
    };
    let log = Log::open(dir.path(), config).unwrap();
    let off = log.append(b"later").unwrap();
    assert!(matches!(
        log.read(off),
        Err(super::LogError::OffsetOutOfRange { offset }) if offset == off
    ));
    let mut watermark = log.subscribe();
    log.sync().unwrap();
    assert!(watermark.has_changed().unwrap());
    assert_eq!(*watermark.borrow_and_update(), off + 1);
    assert_eq!(log.read(off).unwrap(), b"later");
}

#[test]
fn never_policy_shows_records_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        sync: SyncPolicy::Never,
        ..LogConfig::default()
    };
    let log = Log::open(dir.path(), config).unwrap();
    let first = log.append_batch(&[b"a", b"b"]).unwrap();
    assert_eq!(log.read(first + 1).unwrap(), b"b");
}

#[test]
fn concurrent_appenders_get_dense_distinct_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = std::sync::Arc::new(Log::open(dir.path(), tiny(4096, 64)).unwrap());
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..50u8)
                    .map(|i| (log.append(&[t, i]).unwrap(), vec![t, i]))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    acked.sort();
    let offsets: Vec<u64> = acked.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..400).collect::<Vec<_>>());
    for (offset, record) in acked {
        assert_eq!(log.read(offset).unwrap(), record);
    }
}

#[test]
fn empty_batch_returns_the_next_offset_and_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    log.append(b"x").unwrap();
    assert_eq!(log.append_batch::<&[u8]>(&[]).unwrap(), 1);
    assert_eq!(log.next_offset(), 1);
}

#[test]
fn an_oversized_record_fills_an_empty_segment_alone() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), tiny(64, 16)).unwrap();
    let big = vec![7u8; 500];
    assert_eq!(log.append(b"small").unwrap(), 0);
    assert_eq!(log.append(&big).unwrap(), 1);
    assert_eq!(log.append(b"after").unwrap(), 2);
    assert_eq!(log.read(1).unwrap(), big);
    assert_eq!(read_all(&log).len(), 3);
}

#[test]
fn many_async_appenders_all_become_durable() {
    // The runtime runs on its own thread so that a deadlock fails the test
    // (the watchdog below) instead of hanging it.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let _ = done_tx.send(runtime.block_on(async_appenders()));
    });
    let all = done_rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("async appenders hung");
    assert_eq!(all, (0..64 * 50).collect::<Vec<u64>>());
}

async fn async_appenders() -> Vec<u64> {
    let dir = tempfile::tempdir().unwrap();
    let log = std::sync::Arc::new(Log::open(dir.path(), tiny(64 << 10, 1024)).unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..64u8 {
        let log = log.clone();
        tasks.spawn(async move {
            let mut acked = Vec::new();
            for i in 0..50u8 {
                let appended = log.append_batch_nowait(&[[t, i]]).unwrap();
                log.wait_durable(appended.next).await.unwrap();
                // Durable means visible: readable at once.
                assert_eq!(log.read(appended.first).unwrap(), [t, i]);
                acked.push(appended.first);
            }
            acked
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.unwrap());
    }
    all.sort_unstable();
    all
}

#[test]
fn retention_point_drops_oldest_segments_by_size_and_age() {
    use std::time::{Duration, SystemTime};
    let now = SystemTime::now();
    let seg = |base: u64, bytes: u64, age_s: u64| super::SegmentInfo {
        base,
        next: base + 10,
        bytes,
        modified: Some(now - Duration::from_secs(age_s)),
    };
    let segments = [
        seg(0, 100, 300),
        seg(10, 100, 200),
        seg(20, 100, 100),
        seg(30, 50, 0),
    ];
    assert_eq!(super::retention_point(&segments, 0, None, now), 0);
    assert_eq!(super::retention_point(&segments, 250, None, now), 10);
    assert_eq!(
        super::retention_point(&segments, 1, None, now),
        30,
        "the active segment stays"
    );
    assert_eq!(
        super::retention_point(&segments, 0, Some(Duration::from_secs(150)), now),
        20
    );
    assert_eq!(
        super::retention_point(&segments, 300, Some(Duration::from_secs(250)), now),
        10
    );
}
