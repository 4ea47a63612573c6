//! Recovery: torn and corrupt tails, zero fill, damaged sealed segments.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use super::super::segment::store_path;
use super::super::store;
use super::super::{Log, LogConfig, LogError};
use super::{copy_dir, read_all, tiny};

fn records() -> Vec<Vec<u8>> {
    (0..10u8).map(|i| vec![i; 3 + 4 * i as usize]).collect()
}

fn config() -> LogConfig {
    // Segments of 4 records: [0..4) [4..8) [8..10).
    tiny(1 << 20, 4)
}

/// Returns (a copy made while the log was open, a copy after a clean close).
fn pristine(root: &Path) -> (PathBuf, PathBuf) {
    let live = root.join("live");
    let (unclean, clean) = (root.join("unclean"), root.join("clean"));
    let log = Log::open(&live, config()).unwrap();
    for r in records() {
        log.append(&r).unwrap();
    }
    copy_dir(&live, &unclean);
    log.close().unwrap();
    copy_dir(&live, &clean);
    (unclean, clean)
}

/// Damages a copy of `from` with `damage(store file)`, reopens it and
/// checks that exactly the first nine records survive and appends go on.
fn check_last_record_lost(from: &Path, scratch: &Path, damage: impl FnOnce(&Path)) {
    let _ = std::fs::remove_dir_all(scratch);
    copy_dir(from, scratch);
    damage(&store_path(scratch, 8));
    let log = Log::open(scratch, config()).unwrap();
    let expected = &records()[..9];
    assert_eq!(read_all(&log), expected);
    assert_eq!(log.append(b"again").unwrap(), 9);
    assert_eq!(log.read(9).unwrap(), b"again");
    log.close().unwrap();
    drop(log);
    let log = Log::open(scratch, config()).unwrap();
    assert_eq!(log.read(9).unwrap(), b"again");
}

/// Byte range of the last record (offset 9, the second of segment 8).
fn last_record_span() -> (u64, u64) {
    let r = records();
    let start = store::HEADER_LEN + store::framed_len(r[8].len());
    (start, start + store::framed_len(r[9].len()))
}

#[test]
fn cutting_the_last_record_at_every_byte_keeps_all_earlier_records() {
    let root = tempfile::tempdir().unwrap();
    let (unclean, clean) = pristine(root.path());
    let (start, end) = last_record_span();
    for from in [&unclean, &clean] {
        for cut in start..end {
            check_last_record_lost(from, &root.path().join("scratch"), |store| {
                let f = OpenOptions::new().write(true).open(store).unwrap();
                f.set_len(cut).unwrap();
            });
        }
    }
}

#[test]
fn flipping_any_byte_of_the_last_record_keeps_all_earlier_records() {
    let root = tempfile::tempdir().unwrap();
    let (unclean, clean) = pristine(root.path());
    let (start, end) = last_record_span();
    for from in [&unclean, &clean] {
        for at in start..end {
            check_last_record_lost(from, &root.path().join("scratch"), |store| {
                let mut bytes = std::fs::read(store).unwrap();
                bytes[at as usize] ^= 0x5a;
                std::fs::write(store, bytes).unwrap();
            });
        }
    }
}

#[test]
fn a_zero_filled_tail_parses_as_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (unclean, clean) = pristine(root.path());
    for from in [&unclean, &clean] {
        let scratch = root.path().join("scratch");
        let _ = std::fs::remove_dir_all(&scratch);
        copy_dir(from, &scratch);
        let store = store_path(&scratch, 8);
        let len = std::fs::metadata(&store).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&store)
            .unwrap()
            .set_len(len + 8192)
            .unwrap();
        let log = Log::open(&scratch, config()).unwrap();
        assert_eq!(read_all(&log), records());
        assert_eq!(log.append(b"next").unwrap(), 10);
    }
}

#[test]
fn garbage_after_the_last_record_is_cut() {
    let root = tempfile::tempdir().unwrap();
    let (_, clean) = pristine(root.path());
    let scratch = root.path().join("scratch");
    copy_dir(&clean, &scratch);
    let store = store_path(&scratch, 8);
    let mut bytes = std::fs::read(&store).unwrap();
    let size = bytes.len() as u64;
    bytes.extend((0..100u32).map(|i| (i * 37 + 11) as u8));
    std::fs::write(&store, bytes).unwrap();
    let log = Log::open(&scratch, config()).unwrap();
    assert_eq!(read_all(&log), records());
    assert_eq!(std::fs::metadata(&store).unwrap().len(), size);
}

#[test]
fn a_lost_index_is_rebuilt_from_the_store() {
    let root = tempfile::tempdir().unwrap();
    let (unclean, _) = pristine(root.path());
    for base in [0, 4, 8] {
        std::fs::remove_file(super::super::segment::index_path(&unclean, base)).unwrap();
    }
    let log = Log::open(&unclean, config()).unwrap();
    assert_eq!(read_all(&log), records());
    assert_eq!(log.append(b"x").unwrap(), 10);
}

#[test]
fn a_garbled_index_is_rebuilt_from_the_store() {
    let root = tempfile::tempdir().unwrap();
    let (unclean, clean) = pristine(root.path());
    for dir in [&unclean, &clean] {
        let index = super::super::segment::index_path(dir, 8);
        let mut bytes = std::fs::read(&index).unwrap();
        for b in &mut bytes[16..40] {
            *b ^= 0xff;
        }
        std::fs::write(&index, bytes).unwrap();
        let log = Log::open(dir, config()).unwrap();
        assert_eq!(read_all(&log), records());
    }
}

#[test]
fn a_sealed_segment_missing_records_is_an_error_not_a_silent_loss() {
    let root = tempfile::tempdir().unwrap();
    let (_, clean) = pristine(root.path());
    let store = store_path(&clean, 4);
    let len = std::fs::metadata(&store).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&store)
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    match Log::open(&clean, config()) {
        Err(LogError::Corrupt { segment, .. }) => assert_eq!(segment, store),
        other => panic!("expected a corrupt segment error, got {other:?}"),
    }
}

#[test]
fn a_flipped_byte_inside_a_sealed_segment_fails_that_read_only() {
    let root = tempfile::tempdir().unwrap();
    let (_, clean) = pristine(root.path());
    let store = store_path(&clean, 0);
    let mut bytes = std::fs::read(&store).unwrap();
    let at = (store::HEADER_LEN + store::framed_len(3) + 20) as usize; // inside record 1
    bytes[at] ^= 1;
    std::fs::write(&store, bytes).unwrap();
    let log = Log::open(&clean, config()).unwrap();
    assert!(matches!(log.read(1), Err(LogError::Corrupt { .. })));
    assert_eq!(log.read(0).unwrap(), records()[0]);
    assert_eq!(log.read(2).unwrap(), records()[2]);
}

#[test]
fn a_half_created_segment_is_started_again() {
    let root = tempfile::tempdir().unwrap();
    let (_, clean) = pristine(root.path());
    // A crash while rolling: the new store exists with a partial header.
    std::fs::write(store_path(&clean, 10), b"PLOG").unwrap();
    let log = Log::open(&clean, config()).unwrap();
    assert_eq!(read_all(&log), records());
    assert_eq!(log.append(b"x").unwrap(), 10);
}

#[test]
fn a_foreign_file_is_refused_with_its_name() {
    let root = tempfile::tempdir().unwrap();
    let (_, clean) = pristine(root.path());
    let store = store_path(&clean, 0);
    std::fs::write(&store, vec![b'#'; 200]).unwrap();
    let err = Log::open(&clean, config()).unwrap_err();
    assert!(
        err.to_string().contains(&store.display().to_string()),
        "{err}"
    );
    assert!(err.to_string().contains("bad magic"), "{err}");
}

#[test]
fn a_lost_middle_record_of_the_active_segment_cuts_the_log_there() {
    let root = tempfile::tempdir().unwrap();
    let (unclean, _) = pristine(root.path());
    // Power loss: the page holding record 8 (first of the active segment)
    // never reached the disk, the one holding record 9 did. The index,
    // which is not synced, still lists both.
    let store = store_path(&unclean, 8);
    let mut bytes = std::fs::read(&store).unwrap();
    let start = store::HEADER_LEN as usize;
    let end = start + store::framed_len(records()[8].len()) as usize;
    bytes[start..end].fill(0);
    std::fs::write(&store, bytes).unwrap();
    let log = Log::open(&unclean, config()).unwrap();
    assert_eq!(log.next_offset(), 8, "cut at the first bad record");
    assert_eq!(read_all(&log), &records()[..8]);
    assert_eq!(log.append(b"again").unwrap(), 8);
    assert_eq!(log.read(8).unwrap(), b"again");
}

#[test]
fn a_damaged_sealed_segment_without_index_is_reported_with_its_bytes_untouched() {
    let root = tempfile::tempdir().unwrap();
    let (_, clean) = pristine(root.path());
    let store = store_path(&clean, 0);
    std::fs::remove_file(super::super::segment::index_path(&clean, 0)).unwrap();
    let mut bytes = std::fs::read(&store).unwrap();
    let at = (store::HEADER_LEN + store::framed_len(records()[0].len()) + 20) as usize;
    bytes[at] ^= 1; // inside record 1 of 4
    std::fs::write(&store, &bytes).unwrap();
    match Log::open(&clean, config()) {
        Err(e @ LogError::Corrupt { .. }) => {
            let LogError::Corrupt {
                segment, position, ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(segment, &store);
            assert_eq!(
                *position,
                store::HEADER_LEN + store::framed_len(records()[0].len()),
                "names the first bad record"
            );
            assert!(e.to_string().contains("sealed segment is damaged"), "{e}");
        }
        other => panic!("expected a corrupt segment error, got {other:?}"),
    }
    assert_eq!(std::fs::read(&store).unwrap(), bytes, "store left as found");
}

#[test]
fn a_sealed_segment_with_a_lost_index_is_rebuilt_when_intact() {
    let root = tempfile::tempdir().unwrap();
    let (_, clean) = pristine(root.path());
    std::fs::remove_file(super::super::segment::index_path(&clean, 4)).unwrap();
    let log = Log::open(&clean, config()).unwrap();
    assert_eq!(read_all(&log), records());
}

#[test]
fn truncating_after_the_largest_offset_is_a_no_op() {
    let root = tempfile::tempdir().unwrap();
    let (_, clean) = pristine(root.path());
    let log = Log::open(&clean, config()).unwrap();
    log.truncate_suffix(u64::MAX).unwrap();
    assert_eq!(read_all(&log), records());
    assert!(matches!(
        log.read(u64::MAX),
        Err(LogError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn offsets_end_at_the_largest_u64_without_wrapping() {
    let root = tempfile::tempdir().unwrap();
    let config = LogConfig {
        initial_offset: u64::MAX - 2,
        ..config()
    };
    let log = Log::open(root.path(), config.clone()).unwrap();
    assert_eq!(log.append_batch(&[b"a", b"b"]).unwrap(), u64::MAX - 2);
    assert!(matches!(
        log.append(b"c"),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert!(!log.is_failed(), "a refused append does not fail the log");
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("unclean");
    copy_dir(root.path(), &copy);
    log.close().unwrap();
    drop(log);
    for dir in [root.path(), copy.as_path()] {
        let log = Log::open(dir, config.clone()).unwrap();
        assert_eq!(log.next_offset(), u64::MAX);
        assert_eq!(log.read(u64::MAX - 1).unwrap(), b"b");
    }
}
