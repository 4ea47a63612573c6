//! Model-based test: random batches, reopens, crashes and truncations
//! against a `Vec` model; and arbitrary file contents never panic open.

use proptest::prelude::*;

use super::super::Log;
use super::{copy_dir, read_all, tiny};

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Vec<u8>>),
    Reopen,
    Crash,
    TruncateSuffix(u16),
    TruncatePrefix(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..6).prop_map(Op::Append),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
        1 => any::<u16>().prop_map(Op::TruncateSuffix),
        1 => any::<u16>().prop_map(Op::TruncatePrefix),
    ]
}

/// What the log must hold: records from `lowest` on.
struct Model {
    lowest: u64,
    records: Vec<Vec<u8>>,
}

impl Model {
    fn next(&self) -> u64 {
        self.lowest + self.records.len() as u64
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_a_vec_model(ops in prop::collection::vec(op(), 1..40)) {
        let root = tempfile::tempdir().unwrap();
        let config = tiny(200, 5);
        let mut generation = 0;
        let mut dir = root.path().join("0");
        let mut log = Some(Log::open(&dir, config.clone()).unwrap());
        let mut model = Model { lowest: 0, records: Vec::new() };
        for op in ops {
            let l = log.as_ref().unwrap();
            match op {
                Op::Append(batch) => {
                    let first = l.append_batch(&batch).unwrap();
                    prop_assert_eq!(first, model.next());
                    model.records.extend(batch);
                }
                Op::Reopen => {
                    log.take().unwrap().close().unwrap();
                    log = Some(Log::open(&dir, config.clone()).unwrap());
                }
                Op::Crash => {
                    generation += 1;
                    let copy = root.path().join(generation.to_string());
                    copy_dir(&dir, &copy);
                    drop(log.take());
                    dir = copy;
                    log = Some(Log::open(&dir, config.clone()).unwrap());
                }
                Op::TruncateSuffix(pick) => {
                    let span = model.records.len() as u64 + 1;
                    let after = (model.lowest + u64::from(pick) % span).checked_sub(1);
                    if let Some(after) = after {
                        l.truncate_suffix(after).unwrap();
                        model.records.truncate((after + 1 - model.lowest) as usize);
                    }
                }
                Op::TruncatePrefix(pick) => {
                    let want = model.lowest + u64::from(pick) % (model.records.len() as u64 + 1);
                    let lowest = l.truncate_prefix(want).unwrap();
                    prop_assert!(lowest >= model.lowest && lowest <= want.max(model.lowest));
                    model.records.drain(..(lowest - model.lowest) as usize);
                    model.lowest = lowest;
                }
            }
            let l = log.as_ref().unwrap();
            prop_assert_eq!(l.lowest_offset(), model.lowest);
            prop_assert_eq!(l.next_offset(), model.next());
            prop_assert_eq!(read_all(l), model.records.clone());
        }
    }

    #[test]
    fn arbitrary_segment_bytes_never_panic_open(
        store in prop::collection::vec(any::<u8>(), 0..300),
        index in prop::collection::vec(any::<u8>(), 0..200),
        keep_header in any::<bool>(),
        clean in proptest::option::of((0u32..8, prop::collection::vec(any::<u64>(), 0..8), any::<bool>())),
    ) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let mut store_bytes = store;
        let mut index_bytes = index;
        if keep_header {
            let mut s = b"PLOGSTOR\x01\0\0\0\0\0\0\0".to_vec();
            s.extend(store_bytes);
            store_bytes = s;
            let mut i = b"PLOGIDX\0\x01\0".to_vec();
            i.extend(index_bytes);
            index_bytes = i;
        }
        if let Some((count, steps, huge)) = clean {
            // A clean header with a plausible count over increasing
            // positions, some near the end of the u64 range.
            let mut i = b"PLOGIDX\0\x01\0\x01\0".to_vec();
            i.extend(count.to_le_bytes());
            let mut pos = if huge { u64::MAX - 64 } else { 16 };
            for (rel, step) in steps.iter().enumerate() {
                i.extend((rel as u32).to_le_bytes());
                i.extend(pos.to_le_bytes());
                pos = pos.wrapping_add(step % 64 + 16);
            }
            i.resize(16 + 5 * 12, 0);
            index_bytes = i;
        }
        std::fs::write(super::super::segment::store_path(dir, 0), store_bytes).unwrap();
        std::fs::write(super::super::segment::index_path(dir, 0), index_bytes).unwrap();
        if let Ok(log) = Log::open(dir, tiny(200, 5)) {
            let records: Vec<_> = (log.lowest_offset()..log.next_offset())
                .map(|o| log.read(o))
                .collect();
            prop_assert!(records.iter().all(Result::is_ok), "{:?}", records);
            let _ = log.read(u64::MAX);
            let _ = log.truncate_suffix(u64::MAX);
            let next = log.append(b"after").unwrap();
            prop_assert_eq!(next, records.len() as u64);
        }
    }
}
