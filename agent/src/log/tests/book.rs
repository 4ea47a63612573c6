//! Ports of the book's store, index, segment and log tests.

use std::io::Read;

use super::super::fs::RealFs;
use super::super::index::{self, Index};
use super::super::segment::{Role, Segment, SegmentLimits};
use super::super::store::{self, Store};
use super::super::{Log, LogConfig, LogError};
use super::tiny;

const WRITE: &[u8] = b"hello world";

#[test]
fn store_append_read_and_read_at() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.store");
    let mut s = Store::create(&RealFs, &path).unwrap();
    let mut positions = Vec::new();
    for i in 1..4u64 {
        let mut buf = Vec::new();
        store::encode(&mut buf, i, WRITE);
        positions.push(s.append(&buf, store::Prealloc::default()).unwrap());
        assert_eq!(
            s.size(),
            store::HEADER_LEN + i * store::framed_len(WRITE.len())
        );
    }
    for (i, &pos) in positions.iter().enumerate() {
        assert_eq!(s.read(pos, i as u64 + 1).unwrap(), WRITE);
        // read_at: the raw frame carries the length and offset.
        let raw = std::fs::read(&path).unwrap();
        let at = pos as usize;
        assert_eq!(raw[at + 4..at + 8], (WRITE.len() as u32).to_le_bytes());
        assert_eq!(raw[at + 8..at + 16], (i as u64 + 1).to_le_bytes());
        assert_eq!(&raw[at + 16..at + 16 + WRITE.len()], WRITE);
    }
    assert!(matches!(
        s.read(positions[0], 9),
        Err(LogError::Corrupt { .. })
    ));
    drop(s);
    let reopened = Store::open(&RealFs, &path).unwrap();
    let (found, end, _) = reopened.scan(store::HEADER_LEN, 1).unwrap();
    assert_eq!(found, positions);
    assert_eq!(end, store::HEADER_LEN + 3 * store::framed_len(WRITE.len()));
}

#[test]
fn store_close_drops_preallocated_space_and_keeps_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.store");
    let mut s = Store::create(&RealFs, &path).unwrap();
    let mut buf = Vec::new();
    store::encode(&mut buf, 0, WRITE);
    let ahead = store::Prealloc {
        chunk: 4096,
        max: 1 << 20,
    };
    s.append(&buf, ahead).unwrap();
    s.wait_prewrite().unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len >= 4096, "pre-written to {len}");
    s.seal().unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), s.size());
    assert_eq!(s.read(store::HEADER_LEN, 0).unwrap(), WRITE);
}

#[test]
fn index_write_read_full_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.index");
    let mut idx = Index::create(&RealFs, &path, index::HEADER_LEN + 3 * index::ENTRY_LEN).unwrap();
    assert_eq!(idx.position(0), None);
    let positions = [16u64, 43, 70];
    for p in positions {
        assert!(!idx.is_full());
        idx.push(p);
    }
    assert!(idx.is_full());
    assert_eq!(idx.room(), 0);
    for (rel, p) in positions.iter().enumerate() {
        assert_eq!(idx.position(rel as u64), Some(*p));
    }
    assert_eq!(idx.position(3), None);
    idx.mark_clean().unwrap();
    drop(idx);
    let mut idx = Index::open(&RealFs, &path).unwrap();
    assert_eq!(idx.clean_count(), Some(3));
    assert_eq!(idx.position(2), Some(70));
}

fn real() -> std::sync::Arc<dyn super::super::fs::FileSystem> {
    std::sync::Arc::new(RealFs)
}

fn limits(max_store_bytes: u64, entries: u64) -> SegmentLimits {
    SegmentLimits {
        max_store_bytes,
        max_index_bytes: index::HEADER_LEN + entries * index::ENTRY_LEN,
        prealloc_bytes: 0,
    }
}

#[test]
fn segment_fills_by_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut seg = Segment::create(&real(), dir.path(), 16, limits(1024, 3)).unwrap();
    let mut buf = Vec::new();
    assert_eq!(seg.next_offset(), 16);
    for i in 0..3 {
        assert_eq!(seg.fit([WRITE.len()]), 1);
        assert_eq!(seg.append(&[WRITE], &mut buf).unwrap(), 16 + i);
        assert_eq!(seg.read(16 + i).unwrap(), WRITE);
    }
    assert_eq!(seg.fit([WRITE.len()]), 0, "index is full");
    seg.seal().unwrap();
    drop(seg);
    let seg = Segment::open(&real(), dir.path(), 16, limits(1024, 3), Role::Active).unwrap();
    assert_eq!(seg.next_offset(), 19);
}

#[test]
fn segment_fills_by_store_without_orphan_entries() {
    let dir = tempfile::tempdir().unwrap();
    let per = store::framed_len(WRITE.len());
    let max = store::HEADER_LEN + 3 * per;
    let mut seg = Segment::create(&real(), dir.path(), 0, limits(max, 1000)).unwrap();
    assert_eq!(seg.fit([WRITE.len(); 5]), 3);
    let mut buf = Vec::new();
    seg.append(&[WRITE; 3], &mut buf).unwrap();
    assert_eq!(seg.fit([WRITE.len()]), 0, "store is full");
    assert_eq!(seg.store_size(), max);
}

#[test]
fn log_append_read_and_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), tiny(64, 3)).unwrap();
    assert_eq!(log.highest_offset(), None);
    let off = log.append(WRITE).unwrap();
    assert_eq!(off, 0);
    assert_eq!(log.read(off).unwrap(), WRITE);
    assert_eq!(log.highest_offset(), Some(0));
    for bad in [1, u64::MAX] {
        let err = log.read(bad).unwrap_err();
        assert!(matches!(err, LogError::OffsetOutOfRange { offset } if offset == bad));
        assert_eq!(err.to_string(), format!("offset out of range: {bad}"));
    }
}

#[test]
fn log_init_with_existing_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        initial_offset: 5,
        ..tiny(64, 3)
    };
    let log = Log::open(dir.path(), config.clone()).unwrap();
    for _ in 0..7 {
        log.append(WRITE).unwrap();
    }
    assert_eq!((log.lowest_offset(), log.highest_offset()), (5, Some(11)));
    log.close().unwrap();
    drop(log);
    let log = Log::open(dir.path(), config).unwrap();
    assert_eq!((log.lowest_offset(), log.highest_offset()), (5, Some(11)));
    assert_eq!(log.append(WRITE).unwrap(), 12);
}

#[test]
fn log_reader_streams_sealed_stores() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), tiny(1 << 20, 2)).unwrap();
    for _ in 0..5 {
        log.append(WRITE).unwrap();
    }
    // Segments hold 2 records: [0,1] [2,3] sealed, [4] active.
    let mut bytes = Vec::new();
    log.reader().unwrap().read_to_end(&mut bytes).unwrap();
    let per_store = (store::HEADER_LEN + 2 * store::framed_len(WRITE.len())) as usize;
    assert_eq!(bytes.len(), 2 * per_store);
    assert_eq!(&bytes[..8], b"PLOGSTOR");
    let first = store::HEADER_LEN as usize;
    assert_eq!(&bytes[first + 16..first + 16 + WRITE.len()], WRITE);
    assert_eq!(&bytes[per_store..per_store + 8], b"PLOGSTOR");
}

#[test]
fn log_truncate_prefix_removes_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), tiny(1 << 20, 2)).unwrap();
    for _ in 0..5 {
        log.append(WRITE).unwrap();
    }
    assert_eq!(log.truncate_prefix(3).unwrap(), 2);
    assert!(matches!(
        log.read(1),
        Err(LogError::OffsetOutOfRange { offset: 1 })
    ));
    assert_eq!(log.read(2).unwrap(), WRITE);
    assert_eq!(
        log.truncate_prefix(100).unwrap(),
        4,
        "the active segment stays"
    );
    assert_eq!(log.append(WRITE).unwrap(), 5);
}

#[test]
fn log_truncate_suffix_then_append_reuses_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), tiny(1 << 20, 2)).unwrap();
    for i in 0..7u8 {
        log.append(&[i]).unwrap();
    }
    log.truncate_suffix(2).unwrap();
    assert_eq!(log.next_offset(), 3);
    assert!(log.read(3).is_err());
    assert_eq!(log.append(b"new").unwrap(), 3);
    assert_eq!(log.read(2).unwrap(), [2]);
    assert_eq!(log.read(3).unwrap(), b"new");
    log.close().unwrap();
    drop(log);
    let log = Log::open(dir.path(), tiny(1 << 20, 2)).unwrap();
    assert_eq!(
        super::read_all(&log),
        vec![vec![0], vec![1], vec![2], b"new".to_vec()]
    );
}

#[test]
fn log_reset_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = Log::open(&path, tiny(1 << 20, 2)).unwrap();
    log.append_batch(&[WRITE; 5]).unwrap();
    log.reset(42).unwrap();
    assert_eq!((log.lowest_offset(), log.highest_offset()), (42, None));
    assert_eq!(log.append(WRITE).unwrap(), 42);
    log.remove().unwrap();
    assert!(!path.exists());
}

#[test]
fn closed_log_refuses_calls() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    log.append(WRITE).unwrap();
    log.close().unwrap();
    assert!(matches!(log.append(WRITE), Err(LogError::Closed)));
    assert!(matches!(log.read(0), Err(LogError::Closed)));
    log.close().unwrap();
}
