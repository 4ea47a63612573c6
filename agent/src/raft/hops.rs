//! Where a proposed entry's time goes on its leader, hop by hop: from the
//! proposer's hand-off to openraft, through the Raft log's write and
//! fsync, the commit, the state machine's apply, back to the proposer.
//!
//! Each stage stamps the entry's slot in a ring keyed by log index (a few
//! relaxed atomic stores, no lock, no allocation); once the proposer has
//! its entry's answer it reads the slot and hands the hops to a
//! [`HopObserver`] (the agent's `proglog_raft_hop_duration_seconds`).
//! Without an observer nothing is stamped. A slot reused by a later entry
//! before the answer is read (more than [`SLOTS`] entries in between), or
//! an entry this node did not stamp at every stage (one it replicated as a
//! follower, or a replay), reports nothing: the numbers are a sample,
//! never a guess.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The hops reported for each entry, in order.
pub const HOPS: [&str; 7] = [
    // Proposer to the Raft log's append (openraft's core task in between).
    "submit",
    // The append's write to the WAL (a blocking thread and back).
    "write",
    // Written until a group-commit fsync covers the entry and the flush
    // callback fires.
    "sync",
    // Flushed until the state machine is asked to apply it: the commit
    // (with peers, their write, fsync and answer) and openraft's dispatch.
    "commit",
    // Waiting for room in the data writer's queue and for the
    // applied-state lock (the apply runs on openraft's task; no hand-off).
    "apply_handoff",
    // The apply itself: offsets and the producer table, in memory (the
    // data log write follows on the data writer's thread).
    "apply",
    // Applied until the proposer holds the answer.
    "answer",
];

/// A stamp each entry gets, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// The Raft log's append was called with the entry.
    Append,
    /// The entry is written to the WAL (not yet synced).
    Written,
    /// The flush callback fired for it.
    Flushed,
    /// The state machine's apply was called with it.
    Apply,
    /// Its apply began (room queued for, lock taken).
    ApplyStart,
    /// Its apply ended (answers ready, writes queued).
    ApplyEnd,
    /// The state machine's apply returned.
    Applied,
}

const STAGES: usize = 7;

/// Entries whose stamps are kept; far more than can be in flight.
pub const SLOTS: usize = 1024;

/// Hears the hops of each answered entry (metrics). Called on the
/// proposer's task: it must be cheap and must not block.
pub trait HopObserver: Send + Sync + std::fmt::Debug {
    /// One entry's hops, in the order of [`HOPS`].
    fn hops(&self, hops: &[Duration; HOPS.len()]);
}

#[derive(Debug, Default)]
struct Slot {
    /// The log index whose stamps these are.
    index: AtomicU64,
    /// Nanoseconds since the clock's base, plus one (zero: not stamped).
    stamps: [AtomicU64; STAGES],
}

/// The stamps of recent entries, shared by the Raft log, the state
/// machine and the proposer of one node.
#[derive(Debug)]
pub struct HopClock {
    base: Instant,
    slots: Box<[Slot]>,
    observer: Option<Arc<dyn HopObserver>>,
}

impl HopClock {
    /// A clock reporting to `observer`; with `None` it stamps nothing.
    pub fn new(observer: Option<Arc<dyn HopObserver>>) -> Arc<HopClock> {
        let slots = match observer {
            Some(_) => (0..SLOTS).map(|_| Slot::default()).collect(),
            None => Box::default(),
        };
        Arc::new(HopClock {
            base: Instant::now(),
            slots,
            observer,
        })
    }

    /// A clock that stamps and reports nothing.
    pub fn off() -> Arc<HopClock> {
        HopClock::new(None)
    }

    fn slot(&self, index: u64) -> Option<&Slot> {
        self.observer.as_ref()?;
        Some(&self.slots[(index % SLOTS as u64) as usize])
    }

    fn now(&self) -> u64 {
        self.at(Instant::now())
    }

    fn at(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64 + 1
    }

    /// Stamps `stage` now on each entry of `indexes`. [`Stage::Append`]
    /// claims the slot for the entry; later stages stamp only a slot that
    /// entry still holds.
    pub(crate) fn stamp(&self, indexes: impl IntoIterator<Item = u64>, stage: Stage) {
        if self.observer.is_none() {
            return;
        }
        let now = self.now();
        for index in indexes {
            let Some(slot) = self.slot(index) else { return };
            if stage == Stage::Append {
                slot.index.store(index, Ordering::Relaxed);
                for s in &slot.stamps {
                    s.store(0, Ordering::Relaxed);
                }
            } else if slot.index.load(Ordering::Relaxed) != index {
                continue;
            }
            slot.stamps[stage as usize].store(now, Ordering::Release);
        }
    }

    /// The entry at `index`, handed to openraft at `submitted`, has been
    /// answered: reports its hops, if every stage stamped it.
    pub(crate) fn answered(&self, index: u64, submitted: Instant) {
        let (Some(observer), Some(slot)) = (&self.observer, self.slot(index)) else {
            return;
        };
        let now = self.now();
        let mut at = [0u64; STAGES + 2];
        at[0] = self.at(submitted);
        for (t, s) in at[1..=STAGES].iter_mut().zip(&slot.stamps) {
            *t = s.load(Ordering::Acquire);
        }
        at[STAGES + 1] = now;
        if slot.index.load(Ordering::Relaxed) != index || at.contains(&0) {
            return;
        }
        let between =
            |from: usize, to: usize| Duration::from_nanos(at[to].saturating_sub(at[from]));
        // at: 0 submitted, 1 append, 2 written, 3 flushed, 4 apply,
        // 5 apply start, 6 apply end, 7 applied, 8 answered.
        let hops = [
            between(0, 1),
            between(1, 2),
            between(2, 3),
            between(3, 4),
            between(4, 5) + between(6, 7),
            between(5, 6),
            between(7, 8),
        ];
        observer.hops(&hops);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Debug, Default)]
    struct Seen(Mutex<Vec<[Duration; HOPS.len()]>>);

    impl HopObserver for Seen {
        fn hops(&self, hops: &[Duration; HOPS.len()]) {
            self.0.lock().unwrap().push(*hops);
        }
    }

    const ALL: [Stage; STAGES] = [
        Stage::Append,
        Stage::Written,
        Stage::Flushed,
        Stage::Apply,
        Stage::ApplyStart,
        Stage::ApplyEnd,
        Stage::Applied,
    ];

    fn clock() -> (Arc<Seen>, Arc<HopClock>) {
        let seen = Arc::new(Seen::default());
        let clock = HopClock::new(Some(Arc::clone(&seen) as Arc<dyn HopObserver>));
        (seen, clock)
    }

    #[test]
    fn an_entry_stamped_at_every_stage_reports_hops_that_add_up_to_its_time() {
        let (seen, clock) = clock();
        let submitted = Instant::now();
        for stage in ALL {
            clock.stamp([7, 8], stage);
            std::thread::sleep(Duration::from_millis(1));
        }
        clock.answered(8, submitted);
        let took = submitted.elapsed();
        let seen = seen.0.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let hops = seen[0];
        // Every hop but the first spans at least one pause; together
        // they are the entry's whole time, at most.
        assert!(
            hops[1..].iter().all(|h| *h >= Duration::from_millis(1)),
            "{hops:?}"
        );
        assert!(
            hops[4] >= Duration::from_millis(2),
            "two hand-offs: {hops:?}"
        );
        assert!(hops.iter().sum::<Duration>() <= took, "{hops:?} > {took:?}");
    }

    #[test]
    fn a_missing_stage_or_a_reused_slot_reports_nothing() {
        let (seen, clock) = clock();
        let submitted = Instant::now();
        // Replicated as a follower: never stamped at append.
        for stage in &ALL[1..] {
            clock.stamp([3], *stage);
        }
        clock.answered(3, submitted);
        // Stamped in full, then its slot taken by an entry SLOTS later.
        for stage in ALL {
            clock.stamp([4], stage);
        }
        clock.stamp([4 + SLOTS as u64], Stage::Append);
        clock.answered(4, submitted);
        assert!(seen.0.lock().unwrap().is_empty());
        // The newer entry, completed, reports.
        for stage in &ALL[1..] {
            clock.stamp([4 + SLOTS as u64], *stage);
        }
        clock.answered(4 + SLOTS as u64, submitted);
        assert_eq!(seen.0.lock().unwrap().len(), 1);
    }

    #[test]
    fn without_an_observer_nothing_is_kept() {
        let clock = HopClock::off();
        clock.stamp([1], Stage::Append);
        clock.answered(1, Instant::now());
        assert!(clock.slots.is_empty());
    }
}
