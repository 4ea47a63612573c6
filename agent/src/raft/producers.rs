//! The idempotent-producer table: per producer id, the last sequences
//! applied with their offsets. Part of the replicated state (and of
//! snapshots), so every node answers a retry the same way.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Sequences remembered per producer.
pub const WINDOW: usize = 32;
/// A producer idle this long (by the proposing leader's clock) is forgotten.
pub const IDLE_TTL_MS: u64 = 24 * 3600 * 1000;

/// What the table says about an incoming (producer, sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen: append, then [`ProducerTable::record`].
    New,
    /// Seen: answer with the original offsets.
    Duplicate {
        /// First offset of the original append.
        first_offset: u64,
        /// Records in it.
        count: u64,
    },
    /// Older than the window: can't tell, refuse.
    Stale {
        /// Oldest sequence still remembered.
        oldest: u64,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Producer {
    /// (sequence, first offset, count), oldest first, at most [`WINDOW`].
    recent: VecDeque<(u64, u64, u64)>,
    /// Highest sequence dropped from the window, if any.
    evicted_max: Option<u64>,
    /// Time of the last append, ms (leader clock).
    last_ms: u64,
}

/// All producers, bounded by the window and the idle TTL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerTable {
    producers: BTreeMap<String, Producer>,
}

impl ProducerTable {
    /// Classifies `sequence` from `producer`.
    pub fn check(&self, producer: &str, sequence: u64) -> Verdict {
        let Some(p) = self.producers.get(producer) else {
            return Verdict::New;
        };
        if let Some(&(_, first_offset, count)) = p.recent.iter().find(|(s, _, _)| *s == sequence) {
            return Verdict::Duplicate {
                first_offset,
                count,
            };
        }
        match p.evicted_max {
            Some(max) if sequence <= max => Verdict::Stale {
                oldest: p.recent.front().map_or(max + 1, |r| r.0),
            },
            _ => Verdict::New,
        }
    }

    /// Remembers an applied append and forgets producers idle past the TTL.
    pub fn record(
        &mut self,
        producer: &str,
        sequence: u64,
        first_offset: u64,
        count: u64,
        now_ms: u64,
    ) {
        let p = self.producers.entry(producer.to_string()).or_default();
        p.recent.push_back((sequence, first_offset, count));
        p.last_ms = now_ms;
        while p.recent.len() > WINDOW {
            let (old, _, _) = p.recent.pop_front().expect("non-empty");
            p.evicted_max = Some(p.evicted_max.map_or(old, |m| m.max(old)));
        }
        self.producers
            .retain(|_, p| now_ms.saturating_sub(p.last_ms) <= IDLE_TTL_MS);
    }

    /// Number of producers remembered.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Whether no producer is remembered.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_return_the_original_offsets_and_old_sequences_are_stale() {
        let mut t = ProducerTable::default();
        assert_eq!(t.check("p", 0), Verdict::New);
        t.record("p", 0, 10, 2, 1);
        assert_eq!(
            t.check("p", 0),
            Verdict::Duplicate {
                first_offset: 10,
                count: 2
            }
        );
        // Gaps are allowed.
        assert_eq!(t.check("p", 5), Verdict::New);
        for s in 5..5 + WINDOW as u64 {
            t.record("p", s, 100 + s, 1, 2);
        }
        // 0 fell out of the window: stale, not new.
        assert_eq!(t.check("p", 0), Verdict::Stale { oldest: 5 });
        assert_eq!(
            t.check("p", 6),
            Verdict::Duplicate {
                first_offset: 106,
                count: 1
            }
        );
        assert_eq!(t.check("other", 0), Verdict::New);
    }

    #[test]
    fn idle_producers_are_forgotten() {
        let mut t = ProducerTable::default();
        t.record("old", 1, 0, 1, 0);
        t.record("new", 1, 1, 1, IDLE_TTL_MS + 1);
        assert_eq!(t.len(), 1);
        assert_eq!(t.check("old", 1), Verdict::New);
    }
}
