//! The idempotent-producer table: per producer id, the last sequences
//! applied with their offsets. Part of the replicated state (and of
//! snapshots), so every node answers a retry the same way.
//!
//! Time here is the table's own clock: the largest `at_ms` any applied
//! entry carried (leaders stamp it from their wall clock). It never goes
//! back, so a leader whose clock is behind evicts nothing; it is in the
//! snapshot, so every node measures idleness the same way. Producers are
//! kept in least-recently-used order, so forgetting the idle ones and
//! holding the table to its bound costs O(log n) per evicted producer, not
//! a scan per append.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Sequences remembered per producer.
pub const WINDOW: usize = 32;
/// A producer idle this long (by the table's clock) is forgotten.
pub const IDLE_TTL_MS: u64 = 24 * 3600 * 1000;
/// Producers remembered unless a `ProducerLimit` command says otherwise.
pub const DEFAULT_MAX_PRODUCERS: u64 = 100_000;

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
    /// Time of the last append, ms (the table's clock).
    last_ms: u64,
    /// Order of the last append among producers with the same `last_ms`.
    #[serde(default)]
    stamp: u64,
}

/// Position of a producer in the least-recently-used order.
type Recency = (u64, u64);

fn default_max() -> u64 {
    DEFAULT_MAX_PRODUCERS
}

/// The serialized form: the LRU order is rebuilt from the producers.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    producers: BTreeMap<String, Producer>,
    #[serde(default)]
    clock_ms: u64,
    #[serde(default)]
    next_stamp: u64,
    #[serde(default = "default_max")]
    max_producers: u64,
}

/// All producers, bounded by the window, the idle TTL and a count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Stored", into = "Stored")]
pub struct ProducerTable {
    producers: BTreeMap<String, Producer>,
    /// Least recently used first: (last_ms, stamp) -> producer id.
    order: BTreeMap<Recency, String>,
    /// The largest `at_ms` seen: the table's monotonic notion of now.
    clock_ms: u64,
    /// Next stamp handed out (stamps are unique, so `order` keys are).
    next_stamp: u64,
    /// At most this many producers; the least recently used go first.
    max_producers: u64,
}

impl Default for ProducerTable {
    fn default() -> Self {
        ProducerTable {
            producers: BTreeMap::new(),
            order: BTreeMap::new(),
            clock_ms: 0,
            next_stamp: 0,
            max_producers: DEFAULT_MAX_PRODUCERS,
        }
    }
}

impl From<Stored> for ProducerTable {
    /// Rebuilds the LRU order from the producers' (last_ms, stamp). Tables
    /// written before stamps existed (all 0) are renumbered in (last_ms,
    /// id) order, which is deterministic.
    fn from(stored: Stored) -> Self {
        let mut producers = stored.producers;
        let mut order: BTreeMap<Recency, String> = producers
            .iter()
            .map(|(id, p)| ((p.last_ms, p.stamp), id.clone()))
            .collect();
        if order.len() < producers.len() {
            let mut ranked: Vec<(u64, u64, String)> = producers
                .iter()
                .map(|(id, p)| (p.last_ms, p.stamp, id.clone()))
                .collect();
            ranked.sort();
            order.clear();
            for (stamp, (last_ms, _, id)) in ranked.into_iter().enumerate() {
                let stamp = stamp as u64;
                if let Some(p) = producers.get_mut(&id) {
                    p.stamp = stamp;
                }
                order.insert((last_ms, stamp), id);
            }
        }
        let next_stamp = producers
            .values()
            .map(|p| p.stamp + 1)
            .max()
            .unwrap_or(0)
            .max(stored.next_stamp);
        ProducerTable {
            producers,
            order,
            clock_ms: stored.clock_ms,
            next_stamp,
            max_producers: stored.max_producers.max(1),
        }
    }
}

impl From<ProducerTable> for Stored {
    fn from(table: ProducerTable) -> Self {
        Stored {
            producers: table.producers,
            clock_ms: table.clock_ms,
            next_stamp: table.next_stamp,
            max_producers: table.max_producers,
        }
    }
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

    /// Remembers an applied append stamped `at_ms` by its leader, then
    /// forgets producers idle past the TTL and the least recently used
    /// beyond the bound. The clock only moves forward.
    pub fn record(
        &mut self,
        producer: &str,
        sequence: u64,
        first_offset: u64,
        count: u64,
        at_ms: u64,
    ) {
        self.clock_ms = self.clock_ms.max(at_ms);
        let now = self.clock_ms;
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        let p = self.producers.entry(producer.to_string()).or_default();
        let before = (p.last_ms, p.stamp);
        p.recent.push_back((sequence, first_offset, count));
        p.last_ms = now;
        p.stamp = stamp;
        while p.recent.len() > WINDOW {
            if let Some((old, _, _)) = p.recent.pop_front() {
                p.evicted_max = Some(p.evicted_max.map_or(old, |m| m.max(old)));
            }
        }
        if self.order.get(&before).is_some_and(|id| id == producer) {
            self.order.remove(&before);
        }
        self.order.insert((now, stamp), producer.to_string());
        self.evict();
    }

    /// Bounds the table to `max` producers (at least 1), forgetting the
    /// least recently used beyond it.
    pub fn set_limit(&mut self, max: u64) {
        self.max_producers = max.max(1);
        self.evict();
    }

    /// The bound on producers.
    pub fn limit(&self) -> u64 {
        self.max_producers
    }

    /// The table's clock: the largest `at_ms` applied, in ms.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// Drops producers idle past the TTL, then the oldest beyond the
    /// bound; stops at the first one that may stay.
    fn evict(&mut self) {
        while let Some(entry) = self.order.first_entry() {
            let (last_ms, _) = *entry.key();
            let idle = self.clock_ms.saturating_sub(last_ms) > IDLE_TTL_MS;
            let over = self.producers.len() as u64 > self.max_producers;
            if !idle && !over {
                break;
            }
            let id = entry.remove();
            self.producers.remove(&id);
        }
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

    #[test]
    fn a_clock_going_backwards_evicts_nothing_and_time_stays_monotonic() {
        let mut t = ProducerTable::default();
        let now = 1_000 * IDLE_TTL_MS;
        t.record("a", 1, 0, 1, now);
        // A leader whose clock is two days behind.
        t.record("b", 1, 1, 1, now - 2 * IDLE_TTL_MS);
        assert_eq!(t.len(), 2);
        assert_eq!(t.clock_ms(), now, "the clock never goes back");
        // Even far behind, a later append evicts nothing: b counts as
        // active at the table's time, not at its leader's.
        t.record("b", 2, 2, 1, 0);
        assert_eq!(t.len(), 2);
        assert!(matches!(t.check("a", 1), Verdict::Duplicate { .. }));
    }

    #[test]
    fn a_jump_forward_evicts_only_producers_idle_by_the_table_clock() {
        let mut t = ProducerTable::default();
        t.record("idle", 1, 0, 1, 0);
        t.record("busy", 1, 1, 1, 0);
        t.record("busy", 2, 2, 1, IDLE_TTL_MS - 10);
        // One TTL after "idle"'s last append, but not after "busy"'s.
        t.record("new", 1, 3, 1, IDLE_TTL_MS + 5);
        assert_eq!(t.check("idle", 1), Verdict::New, "idle one forgotten");
        assert_eq!(
            t.check("busy", 2),
            Verdict::Duplicate {
                first_offset: 2,
                count: 1
            }
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn the_least_recently_used_producer_goes_beyond_the_bound() {
        let mut t = ProducerTable::default();
        t.set_limit(3);
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            t.record(id, 0, i as u64, 1, 5);
        }
        // Same timestamp everywhere: order of application decides.
        t.record("a", 1, 10, 1, 5);
        t.record("d", 0, 11, 1, 5);
        assert_eq!(t.len(), 3);
        assert_eq!(t.check("b", 0), Verdict::New, "b was least recently used");
        for id in ["a", "c", "d"] {
            assert!(
                matches!(t.check(id, 0), Verdict::Duplicate { .. }),
                "{id} stays"
            );
        }
        t.set_limit(1);
        assert_eq!(t.len(), 1);
        assert!(matches!(t.check("d", 0), Verdict::Duplicate { .. }));
    }

    #[test]
    fn a_table_survives_serialization_with_its_clock_bound_and_order() {
        let mut t = ProducerTable::default();
        t.set_limit(2);
        t.record("a", 0, 0, 1, 100);
        t.record("b", 0, 1, 1, 50);
        let json = serde_json::to_string(&t).unwrap();
        let mut back: ProducerTable = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.clock_ms(), 100);
        assert_eq!(back.limit(), 2);
        // "a" is older than "b" in use order, so it goes first in both.
        t.record("c", 0, 2, 1, 0);
        back.record("c", 0, 2, 1, 0);
        assert_eq!(back.check("a", 0), Verdict::New);
        assert_eq!(t.check("a", 0), Verdict::New);
        assert_eq!(back.check("b", 0), t.check("b", 0));
        assert_eq!(back.len(), 2);
    }

    #[test]
    fn a_table_from_before_the_clock_and_bound_still_loads() {
        let old = r#"{"producers":{"p":{"recent":[[3,7,2]],"evicted_max":null,"last_ms":9}}}"#;
        let t: ProducerTable = serde_json::from_str(old).unwrap();
        assert_eq!(t.limit(), DEFAULT_MAX_PRODUCERS);
        assert_eq!(
            t.check("p", 3),
            Verdict::Duplicate {
                first_offset: 7,
                count: 2
            }
        );
    }
}
