//! Power loss on the simulated disk: unlike a SIGKILL, which keeps the page
//! cache, a crash of [`SimFs`] loses, tears and reorders every write that no
//! fsync covered. A proptest appends, truncates, syncs, reopens and crashes
//! at random; after each crash every acknowledged record must read back
//! identical at its offset, offsets stay dense, and nothing is invented.

use std::path::PathBuf;
use std::sync::Arc;

use proptest::prelude::*;

use super::super::fs::SimFs;
use super::super::{Log, LogConfig, SyncPolicy};
use super::tiny;

#[derive(Debug, Clone)]
enum Op {
    /// A blocking append: acknowledged once it returns.
    Append(Vec<Vec<u8>>),
    /// Written, not waited for: may or may not survive a crash.
    AppendNowait(Vec<Vec<u8>>),
    Sync,
    TruncateSuffix(u16),
    TruncatePrefix(u16),
    Reset(u8),
    Reopen,
    Crash(u64),
}

fn records() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..60), 1..6)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => records().prop_map(Op::Append),
        4 => records().prop_map(Op::AppendNowait),
        1 => Just(Op::Sync),
        1 => any::<u16>().prop_map(Op::TruncateSuffix),
        1 => any::<u16>().prop_map(Op::TruncatePrefix),
        1 => any::<u8>().prop_map(Op::Reset),
        1 => Just(Op::Reopen),
        3 => any::<u64>().prop_map(Op::Crash),
    ]
}

/// What the log must hold: `records` from `lowest` on, of which those
/// below `acked` were acknowledged durable.
struct Model {
    lowest: u64,
    records: Vec<Vec<u8>>,
    acked: u64,
}

impl Model {
    fn next(&self) -> u64 {
        self.lowest + self.records.len() as u64
    }
}

fn sim_config(fs: &SimFs) -> LogConfig {
    LogConfig {
        sync: SyncPolicy::Always,
        prealloc_bytes: 96,
        fs: Arc::new(fs.clone()),
        ..tiny(300, 6)
    }
}

/// After a crash: the log must hold every acknowledged record, may hold
/// some of the unacknowledged ones (a prefix), and nothing else.
fn check_after_crash(log: &Log, model: &mut Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(log.lowest_offset(), model.lowest);
    let next = log.next_offset();
    prop_assert!(
        next >= model.acked,
        "acknowledged records lost: next {} < acked {}",
        next,
        model.acked
    );
    prop_assert!(
        next <= model.next(),
        "records invented: next {} > written {}",
        next,
        model.next()
    );
    for offset in model.lowest..next {
        let got = log.read(offset);
        prop_assert!(got.is_ok(), "offset {} unreadable: {:?}", offset, got);
        prop_assert_eq!(
            &got.unwrap(),
            &model.records[(offset - model.lowest) as usize],
            "offset {} holds another record",
            offset
        );
    }
    model.records.truncate((next - model.lowest) as usize);
    model.acked = next;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn acknowledged_records_survive_power_loss(ops in prop::collection::vec(op(), 1..48)) {
        let fs = SimFs::new();
        let dir = PathBuf::from("/sim/log");
        let config = sim_config(&fs);
        let mut log = Log::open(&dir, config.clone()).unwrap();
        let mut model = Model { lowest: 0, records: Vec::new(), acked: 0 };
        for op in ops {
            match op {
                Op::Append(batch) => {
                    let first = log.append_batch(&batch).unwrap();
                    prop_assert_eq!(first, model.next());
                    model.records.extend(batch);
                    model.acked = model.next();
                }
                Op::AppendNowait(batch) => {
                    let appended = log.append_batch_nowait(&batch).unwrap();
                    prop_assert_eq!(appended.first, model.next());
                    model.records.extend(batch);
                }
                Op::Sync => {
                    log.sync().unwrap();
                    model.acked = model.next();
                }
                Op::TruncateSuffix(pick) => {
                    let span = model.records.len() as u64 + 1;
                    if let Some(after) = (model.lowest + u64::from(pick) % span).checked_sub(1) {
                        log.truncate_suffix(after).unwrap();
                        let next = (after + 1).max(model.lowest);
                        if next <= model.lowest {
                            model.lowest = after + 1;
                            model.records.clear();
                        } else {
                            model.records.truncate((next - model.lowest) as usize);
                        }
                        model.acked = model.acked.min(model.next());
                    }
                }
                Op::TruncatePrefix(pick) => {
                    let want = model.lowest + u64::from(pick) % (model.records.len() as u64 + 1);
                    let lowest = log.truncate_prefix(want).unwrap();
                    model.records.drain(..(lowest - model.lowest) as usize);
                    model.lowest = lowest;
                }
                Op::Reset(to) => {
                    let base = model.next() + u64::from(to);
                    log.reset(base).unwrap();
                    model.lowest = base;
                    model.records.clear();
                    model.acked = base;
                }
                Op::Reopen => {
                    log.close().unwrap();
                    drop(log);
                    log = Log::open(&dir, config.clone()).unwrap();
                    // A clean close synced everything.
                    model.acked = model.next();
                }
                Op::Crash(seed) => {
                    fs.crash(seed);
                    // The old handles are dead; closing it changes nothing.
                    drop(log);
                    log = Log::open(&dir, config.clone()).unwrap();
                    check_after_crash(&log, &mut model)?;
                }
            }
            prop_assert_eq!(log.lowest_offset(), model.lowest);
            prop_assert_eq!(log.written_offset(), model.next());
        }
        fs.crash(0);
        drop(log);
        let log = Log::open(&dir, config).unwrap();
        check_after_crash(&log, &mut model)?;
    }
}

/// Without the fsync of an append, a crash of the simulated disk loses it:
/// the simulation does catch a missing fsync, which a SIGKILL cannot.
#[test]
fn the_simulation_loses_writes_that_were_never_synced() {
    let fs = SimFs::new();
    let dir = PathBuf::from("/sim/never");
    let config = LogConfig {
        sync: SyncPolicy::Never,
        ..sim_config(&fs)
    };
    let survivors: Vec<u64> = (0..16u64)
        .map(|seed| {
            // Each seed gets the same unsynced state in a directory of its own.
            let dir = dir.join(seed.to_string());
            let log = Log::open(&dir, config.clone()).unwrap();
            for i in 0..20u8 {
                log.append(&[i; 10]).unwrap();
            }
            assert_eq!(log.next_offset(), 20, "visible at once under Never");
            fs.crash(seed);
            drop(log);
            Log::open(&dir, config.clone()).unwrap().next_offset()
        })
        .collect();
    assert!(
        survivors.iter().any(|&n| n < 20),
        "some crash must lose unsynced records: {survivors:?}"
    );
}
