//! The Raft entries appended last, kept decoded in memory. openraft's core
//! reads every entry back from the log store to apply it, right after
//! appending it; serving those reads from memory spares the core a trip to
//! a blocking thread and a decode, and the disk a read. Bounded in entries
//! and bytes; always a contiguous run of indexes ending at the last append.

use std::collections::VecDeque;

use super::Entry;

/// The most entries kept.
const MAX_ENTRIES: usize = 4096;
/// The most record bytes kept (an entry larger than this is not kept).
const MAX_BYTES: usize = 32 << 20;
/// What an entry costs beside its records, roughly.
const ENTRY_OVERHEAD: usize = 64;

/// A contiguous run of recent entries: indexes `first..first + len`.
#[derive(Debug, Default)]
pub(super) struct RecentEntries {
    first: u64,
    entries: VecDeque<Entry>,
    bytes: usize,
}

fn entry_bytes(entry: &Entry) -> usize {
    ENTRY_OVERHEAD + super::entry_bytes(&entry.payload)
}

impl RecentEntries {
    fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    /// Remembers entries just written to the log (contiguous, in order).
    /// Entries that do not follow the run start a new one.
    pub fn push(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            let index = entry.log_id.index;
            if index != self.end() {
                self.truncate_from(index);
                if index != self.end() {
                    self.clear_at(index);
                }
            }
            let bytes = entry_bytes(&entry);
            if bytes > MAX_BYTES {
                self.clear_at(index + 1);
                continue;
            }
            self.entries.push_back(entry);
            self.bytes += bytes;
            while self.entries.len() > MAX_ENTRIES || self.bytes > MAX_BYTES {
                self.pop_front();
            }
        }
    }

    /// Clones of the entries `from..to`, if all of them are here.
    pub fn get(&self, from: u64, to: u64) -> Option<Vec<Entry>> {
        if from < self.first || to > self.end() || from >= to {
            return None;
        }
        let skip = (from - self.first) as usize;
        let take = (to - from) as usize;
        Some(self.entries.iter().skip(skip).take(take).cloned().collect())
    }

    /// Forgets entries at and after `index` (the log was truncated there).
    pub fn truncate_from(&mut self, index: u64) {
        while self.end() > index.max(self.first) {
            if let Some(entry) = self.entries.pop_back() {
                self.bytes -= entry_bytes(&entry);
            }
        }
        if self.entries.is_empty() {
            self.first = index.min(self.first);
        }
    }

    /// Forgets entries at and before `index` (purged).
    pub fn purge_through(&mut self, index: u64) {
        while !self.entries.is_empty() && self.first <= index {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            self.bytes -= entry_bytes(&entry);
            self.first += 1;
        }
    }

    fn clear_at(&mut self, index: u64) {
        self.entries.clear();
        self.bytes = 0;
        self.first = index;
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;
    use crate::raft::Request;

    fn entry(index: u64, size: usize) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request::Append {
                records: vec![vec![index as u8; size].into()],
                producer: None,
                at_ms: 0,
            }),
        }
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|e| e.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn serves_only_whole_contiguous_ranges_it_holds() {
        let mut r = RecentEntries::default();
        r.push((5..10).map(|i| entry(i, 1)).collect());
        assert_eq!(indexes(r.get(6, 9)), Some(vec![6, 7, 8]));
        assert_eq!(r.get(4, 6), None, "5 is held, 4 is not");
        assert_eq!(r.get(9, 11), None);
        r.push(vec![entry(10, 1)]);
        assert_eq!(indexes(r.get(9, 11)), Some(vec![9, 10]));
    }

    #[test]
    fn truncation_purge_and_gaps_keep_the_run_true() {
        let mut r = RecentEntries::default();
        r.push((0..10).map(|i| entry(i, 1)).collect());
        r.truncate_from(7);
        assert_eq!(r.get(6, 8), None, "7 was truncated");
        // The log's new entry 7 replaces the old one.
        r.push(vec![entry(7, 2)]);
        let got = r.get(7, 8).unwrap();
        assert_eq!(got[0], entry(7, 2));
        r.purge_through(3);
        assert_eq!(r.get(3, 5), None);
        assert_eq!(indexes(r.get(4, 8)), Some(vec![4, 5, 6, 7]));
        // A jump (the log was reset elsewhere) starts a new run.
        r.push(vec![entry(100, 1)]);
        assert_eq!(r.get(7, 8), None);
        assert_eq!(indexes(r.get(100, 101)), Some(vec![100]));
    }

    #[test]
    fn bounded_in_bytes_and_entries() {
        let mut r = RecentEntries::default();
        r.push(vec![entry(0, MAX_BYTES + 1)]);
        assert_eq!(r.get(0, 1), None, "too large to keep");
        r.push(vec![entry(1, 1)]);
        assert_eq!(indexes(r.get(1, 2)), Some(vec![1]));
        r.push(
            (2..2 + MAX_ENTRIES as u64 + 10)
                .map(|i| entry(i, 1))
                .collect(),
        );
        assert!(r.entries.len() <= MAX_ENTRIES);
        assert_eq!(r.get(1, 2), None, "the oldest went first");
        r.push((0..40).map(|i| entry(10_000 + i, MAX_BYTES / 16)).collect());
        assert!(r.bytes <= MAX_BYTES);
    }
}
